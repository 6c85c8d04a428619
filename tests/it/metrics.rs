//! `/metrics`: the per-hop histograms (`chat_hop_seconds`) and the Kafka and Redis request
//! counters move when messages travel (counts only: no timing is asserted).

use std::time::Duration;

use serde_json::json;

use crate::both_modes;
use crate::harness::{Env, Http, Mode, Proc, Ws};

const HOPS: [&str; 7] = [
    "claim",
    "produce",
    "ack_write",
    "log_to_relay",
    "relay_publish",
    "bus",
    "fanout",
];

/// The value of one exact series (name and labels as rendered), summed over `procs`.
async fn sum(procs: &[&Proc], series: &str) -> f64 {
    let mut total = 0.0;
    for p in procs {
        let text = reqwest::get(p.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let prefix = format!("{series} ");
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} is not in {}'s /metrics", p.addr));
        total += v;
    }
    total
}

fn hop(name: &str) -> String {
    format!("chat_hop_seconds_count{{hop=\"{name}\"}}")
}

fn kafka(labels: &str) -> String {
    format!("chat_kafka_requests_total{{{labels}}}")
}

fn redis(purpose: &str) -> String {
    format!("chat_redis_requests_total{{purpose=\"{purpose}\"}}")
}

/// Every series the test reads.
fn series() -> Vec<String> {
    let mut all: Vec<String> = HOPS.iter().map(|h| hop(h)).collect();
    all.extend(
        [
            r#"api="produce""#,
            r#"api="fetch",reader="relay""#,
            r#"api="fetch",reader="persist""#,
        ]
        .map(kafka),
    );
    all.extend(["claim", "settle", "publish", "position"].map(redis));
    all
}

both_modes!(every_hop_is_timed_and_every_request_counted);
/// Messages sent on one gateway and read on another: every hop's histogram counts each of
/// them (fan-out once per delivery), and the produce, fetch, claim, settle, publish and
/// position requests are counted (distributed); the bus stamp stays off the client frame.
async fn every_hop_is_timed_and_every_request_counted(mode: Mode) {
    let env = Env::with_mode("hops", mode).await;
    let procs: Vec<Proc> = if mode == Mode::Embedded {
        vec![env.spawn("all", "all").await]
    } else {
        vec![
            env.spawn("gateway", "gw-a-m").await,
            env.spawn("gateway", "gw-b").await,
            env.spawn("consumer", "consumer").await,
        ]
    };
    let (a, b) = (&procs[0], &procs[(procs.len() - 1).min(1)]);
    let (ha, hb) = (Http::new(a), Http::new(b));
    let alice = ha.register("alice").await;
    let bob = hb.register("bob").await;
    let room = ha.create_room(&alice, "general").await;
    hb.join(&bob, &room).await;
    let mut wa = Ws::login(a, &alice).await;
    let mut wb = Ws::login(b, &bob).await;
    wa.subscribe(&room, None).await;
    wb.subscribe(&room, None).await;

    let all: Vec<&Proc> = procs.iter().collect();
    let names = series();
    let mut before = Vec::new();
    for s in &names {
        before.push(sum(&all, s).await);
    }

    const N: usize = 20;
    for i in 0..N {
        wa.send(json!({"type": "send", "room": room, "client_msg_id": format!("h{i}"), "body": format!("hop {i}")}))
            .await;
    }
    let mut acked = 0;
    while acked < N {
        let v = wa.next().await;
        match v["type"].as_str() {
            Some("ack") => acked += 1,
            Some("message") | Some("event") => {}
            _ => panic!("unexpected frame {v}"),
        }
    }
    let mut got = 0;
    while got < N {
        let v = wb.next().await;
        match v["type"].as_str() {
            Some("message") => {
                // The bus event's publish stamp is not part of the client's frame.
                assert!(
                    !v.to_string().contains("published"),
                    "a bus stamp on the wire: {v}"
                );
                got += 1;
            }
            Some("event") => {}
            _ => panic!("unexpected frame {v}"),
        }
    }

    // Counts only. The relay's and the settle's are recorded after what the clients saw:
    // poll a while for them.
    let want = |s: &str| -> f64 {
        if s.starts_with("chat_hop_seconds") {
            // Alice and Bob each got every message (fan-out and the bus: per gateway that
            // delivers; embedded, one gateway delivering twice).
            N as f64
        } else if s.contains("claim") {
            N as f64
        } else if s.contains("settle") {
            // Round trips: results that queue while one is written share the next
            // (gateway/send.rs, `Settles`), so at least one, at most one per message.
            1.0
        } else {
            1.0
        }
    };
    let distributed = mode != Mode::Embedded;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut missing = Vec::new();
        for (s, b0) in names.iter().zip(&before) {
            let grew = sum(&all, s).await - b0;
            let services = !s.starts_with("chat_hop_seconds");
            if services && !distributed {
                // The embedded mode talks to neither Kafka nor Redis.
                assert_eq!(grew, 0.0, "{s} moved in the embedded mode");
                continue;
            }
            if grew < want(s) {
                missing.push(format!("{s}: +{grew}"));
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counts that did not grow enough: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Fan-out counts each delivery: both connections got each message.
    let fanout = sum(&all, &hop("fanout")).await - before[6];
    assert!(fanout >= 2.0 * N as f64, "fanout +{fanout}");
}

/// `--relay-linger-ms`: messages sent one after the other (each after the last one's ack)
/// reach the relay in a few fetches rather than one each: after an answer with records,
/// the next fetch waits out the linger and brings what came meanwhile. Every message is
/// still delivered, in order. (Counts only: without the linger, this run makes about one
/// relay fetch per message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_linger_gathers_records_into_fewer_fetches() {
    let env = Env::new("linger").await;
    let gw = env.spawn("gateway", "gw-m").await;
    let consumer = env
        .spawn_with("consumer", "consumer", &["--relay-linger-ms", "100"])
        .await;
    let http = Http::new(&gw);
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let room = http.create_room(&alice, "general").await;
    http.join(&bob, &room).await;
    let mut wa = Ws::login(&gw, &alice).await;
    let mut wb = Ws::login(&gw, &bob).await;
    wb.subscribe(&room, None).await;
    // The relay is live before the count starts: a first message goes through.
    wa.send(json!({"type": "send", "room": room, "client_msg_id": "l-first", "body": "first"}))
        .await;
    wa.expect("ack").await;
    let first = wb.expect("message").await;
    assert_eq!(first["message"]["body"], "first");

    let fetches = kafka(r#"api="fetch",reader="relay""#);
    let before = sum(&[&consumer], &fetches).await;
    const N: usize = 20;
    for i in 0..N {
        wa.send(json!({"type": "send", "room": room, "client_msg_id": format!("l{i}"), "body": format!("linger {i}")}))
            .await;
        loop {
            let v = wa.next().await;
            match v["type"].as_str() {
                Some("ack") => break,
                Some("message") | Some("event") => {}
                _ => panic!("unexpected frame {v}"),
            }
        }
    }
    let mut last = first["message"]["position"].as_i64().expect("position");
    for i in 0..N {
        let m = wb.expect("message").await;
        assert_eq!(m["message"]["body"], format!("linger {i}"));
        let p = m["message"]["position"].as_i64().expect("position");
        assert!(p > last, "out of order: {p} after {last}");
        last = p;
    }
    let made = sum(&[&consumer], &fetches).await - before;
    assert!(
        made <= (N / 2) as f64,
        "{made} relay fetches for {N} messages sent one after the other"
    );
}
