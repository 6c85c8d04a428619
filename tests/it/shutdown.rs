//! The drain (src/shutdown.rs): SIGTERM to a gateway holding 1,000 WebSocket connections
//! with sends in flight. Every send gets an `ack` or a retryable `error` (never silence),
//! and the process exits cleanly (status 0: nothing was left running at the deadline)
//! before its drain deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::both_modes;
use crate::harness::{Account, Env, Http, Mode, Ws};

const CONNECTIONS: usize = 1_000;
const USERS: usize = 10;
/// Sends each connection keeps unanswered at once.
const WINDOW: usize = 3;
const DRAIN_SECS: u64 = 20;

/// What one connection saw.
#[derive(Debug, Default)]
struct Record {
    sent: usize,
    acked: usize,
    /// Retryable `error` frames (`draining`, `unavailable`, …).
    retried: usize,
    /// Answers (ack or error) that came after SIGTERM.
    after_signal: usize,
    /// Errors that are not retryable: a send refused for good.
    refused: Vec<Value>,
    /// Sends with no answer when the connection ended: silence.
    unanswered: usize,
    reconnect: bool,
}

/// Sends with `WINDOW` in flight until the server says `reconnect`; then sends nothing
/// more, waits for the answer of each send it wrote, and closes (as a client should).
async fn client(
    mut ws: Ws,
    label: usize,
    room: String,
    started: Arc<AtomicUsize>,
    signalled: Arc<std::sync::atomic::AtomicBool>,
) -> Record {
    let mut r = Record::default();
    let mut open: std::collections::HashSet<String> = Default::default();
    let mut first = true;
    loop {
        while !r.reconnect && open.len() < WINDOW {
            let id = format!("c{label}-{}", r.sent);
            let frame = json!({"type": "send", "room": room, "client_msg_id": id, "body": "x"});
            if ws
                .stream
                .send(WsMessage::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            open.insert(id);
            r.sent += 1;
        }
        if r.reconnect && open.is_empty() {
            // Every send answered: close, and read until the server's close.
            let _ = ws.stream.close(None).await;
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(Ok(_)) = ws.stream.next().await {}
            })
            .await;
            return r;
        }
        let Some(v) = ws.next_within(Duration::from_secs(60)).await else {
            // Closed (or silent for a minute) with sends unanswered.
            r.unanswered = open.len();
            return r;
        };
        let answered = match v["type"].as_str() {
            Some("ack") => {
                r.acked += 1;
                v["client_msg_id"].as_str()
            }
            Some("error") => {
                if v["retryable"] == true {
                    r.retried += 1;
                } else {
                    r.refused.push(v.clone());
                }
                v["ref"].as_str()
            }
            Some("reconnect") => {
                r.reconnect = true;
                None
            }
            _ => None,
        };
        if let Some(id) = answered {
            if open.remove(id) {
                if signalled.load(Ordering::Relaxed) {
                    r.after_signal += 1;
                }
                if first {
                    first = false;
                    started.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

async fn sigterm_answers_every_send_and_exits_before_the_deadline(mode: Mode) {
    let env = Env::with_mode("shutdown", mode).await;
    let drain = DRAIN_SECS.to_string();
    let extra = [
        "--max-connections-per-user",
        "1000",
        "--drain-timeout-secs",
        drain.as_str(),
    ];
    let (mut gw, consumer) = match mode {
        Mode::Distributed | Mode::Tls => (
            env.spawn_with("gateway", "gw-0-m", &extra).await,
            Some(env.spawn_with("consumer", "consumer", &extra).await),
        ),
        Mode::Embedded => (env.spawn_with("all", "all-0", &extra).await, None),
    };
    let http = Http::new(&gw);
    let mut users: Vec<Account> = Vec::new();
    for _ in 0..USERS {
        users.push(http.register("drain").await);
    }
    let room = http.create_room(&users[0], "drain").await;
    for u in &users[1..] {
        http.join(u, &room).await;
    }

    // 1,000 authenticated connections, opened 50 at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(50));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..CONNECTIONS {
        let (gate, addr, who) = (gate.clone(), gw.addr.clone(), users[i % USERS].clone());
        opening.spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore");
            (i, Ws::login_to(&addr, &who).await)
        });
    }
    let mut conns = Vec::new();
    while let Some(c) = opening.join_next().await {
        conns.push(c.expect("connection task"));
    }
    assert_eq!(conns.len(), CONNECTIONS);

    let started = Arc::new(AtomicUsize::new(0));
    let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for (i, ws) in conns {
        clients.spawn(client(
            ws,
            i,
            room.clone(),
            started.clone(),
            signalled.clone(),
        ));
    }
    // Every connection has had a send answered: sends are flowing on all of them.
    let until = Instant::now() + Duration::from_secs(120);
    while started.load(Ordering::Relaxed) < CONNECTIONS {
        assert!(
            Instant::now() < until,
            "only {} of {CONNECTIONS} connections had a send answered within 120 s",
            started.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    signalled.store(true, Ordering::Relaxed);
    let term = Instant::now();
    gw.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(DRAIN_SECS + 30), gw.child.wait())
        .await
        .expect("the gateway exits")
        .expect("exit status");
    let took = term.elapsed();

    let mut records = Vec::new();
    while let Some(r) = clients.join_next().await {
        records.push(r.expect("client task"));
    }
    let sum = |f: fn(&Record) -> usize| records.iter().map(f).sum::<usize>();
    let (sent, acked, retried, after, unanswered) = (
        sum(|r| r.sent),
        sum(|r| r.acked),
        sum(|r| r.retried),
        sum(|r| r.after_signal),
        sum(|r| r.unanswered),
    );
    let told = records.iter().filter(|r| r.reconnect).count();
    let refused: Vec<&Value> = records.iter().flat_map(|r| &r.refused).collect();
    eprintln!(
        "{mode:?}: sent {sent}, acked {acked}, retryable errors {retried}, answered after SIGTERM {after}, unanswered {unanswered}; {told} of {CONNECTIONS} told to reconnect; exit {status} after {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(unanswered, 0, "sends left without an answer");
    assert!(refused.is_empty(), "sends refused for good: {refused:?}");
    assert_eq!(sent, acked + retried, "every send answered once");
    assert!(after > 0, "no send was in flight at SIGTERM");
    assert_eq!(told, CONNECTIONS, "every connection told to reconnect");
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        took < Duration::from_secs(DRAIN_SECS + 5),
        "exited {:.1} s after SIGTERM (deadline {DRAIN_SECS} s)",
        took.as_secs_f64()
    );
    if let Some(mut c) = consumer {
        assert!(c.terminate().await.success(), "consumer exit");
    }
}

both_modes!(sigterm_answers_every_send_and_exits_before_the_deadline);

/// A client that ignores `reconnect` does not hold the drain: it is closed 1012 at a
/// quarter of the deadline, and the process still exits cleanly before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_reconnect_is_closed_and_the_drain_still_ends() {
    let env = Env::with_mode("shutdown-deaf", Mode::Embedded).await;
    let drain_secs = 8;
    let mut chat = env
        .spawn_with("all", "all-0", &["--drain-timeout-secs", "8"])
        .await;
    let http = Http::new(&chat);
    let who = http.register("deaf").await;
    let mut ws = Ws::login(&chat, &who).await;
    // And one still in its `hello` phase.
    let mut early = Ws::connect(&chat).await;

    let term = Instant::now();
    chat.signal("TERM");
    assert_eq!(ws.expect("reconnect").await["reason"], "draining");
    assert_eq!(early.expect("reconnect").await["reason"], "draining");
    assert_eq!(early.close_code(Duration::from_secs(10)).await, Some(1012));
    // The deaf client keeps its socket open and sends nothing: the server closes it.
    assert_eq!(ws.close_code(Duration::from_secs(30)).await, Some(1012));
    let closed = term.elapsed();
    let status = tokio::time::timeout(Duration::from_secs(drain_secs + 30), chat.child.wait())
        .await
        .expect("the process exits")
        .expect("exit status");
    let took = term.elapsed();
    eprintln!(
        "closed 1012 after {:.1} s, exit {status} after {:.1} s",
        closed.as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        took < Duration::from_secs(drain_secs + 5),
        "exited {:.1} s after SIGTERM (deadline {drain_secs} s)",
        took.as_secs_f64()
    );
}

/// Sends `GET path` on a raw HTTP/1.1 connection and returns the response head (lower-cased),
/// read until its blank line (any body bytes read with it are dropped).
async fn get_head(conn: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: chat.test\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(30), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read response");
            assert!(n > 0, "connection closed before the response head");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response head within 30 s");
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

/// From the start of the drain every HTTP answer closes its connection (`Connection: close`,
/// src/http/server.rs), so a keep-alive client moves to another gateway after its answer
/// instead of staying on the one that stops; an idle keep-alive connection does not hold
/// the stop past the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_close_their_connection_once_the_drain_starts() {
    let env = Env::with_mode("shutdown-keepalive", Mode::Embedded).await;
    let drain_secs = 40;
    let mut chat = env
        .spawn_with("all", "all-0", &["--drain-timeout-secs", "40"])
        .await;
    let http = Http::new(&chat);
    let who = http.register("keepalive").await;
    // A client that ignores `reconnect` keeps the drain in its session phase (until D/4,
    // 10 s), before the HTTP server stops accepting.
    let mut ws = Ws::login(&chat, &who).await;
    let mut idle = tokio::net::TcpStream::connect(&chat.addr)
        .await
        .expect("connect");
    let head = get_head(&mut idle, "/healthz").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // `idle` stays open, unused, through the drain.

    let term = Instant::now();
    chat.signal("TERM");
    assert_eq!(ws.expect("reconnect").await["reason"], "draining");
    let mut during = tokio::net::TcpStream::connect(&chat.addr)
        .await
        .expect("connect during the drain");
    let head = get_head(&mut during, "/readyz").await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncReadExt::read_to_end(&mut during, &mut rest),
    )
    .await
    .expect("the server closes the connection after its answer")
    .expect("read to the end");

    let status = tokio::time::timeout(Duration::from_secs(drain_secs + 30), chat.child.wait())
        .await
        .expect("the process exits")
        .expect("exit status");
    let took = term.elapsed();
    drop(idle);
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        took < Duration::from_secs(drain_secs + 5),
        "exited {:.1} s after SIGTERM (deadline {drain_secs} s)",
        took.as_secs_f64()
    );
}
