//! The bench's protocol client: the HTTP calls that set a run up (register, create and
//! join rooms) and one WebSocket connection's life (hello, subscribe, then an open-loop
//! send schedule and reading every frame).

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::mixed::{self, Arrival, Mixed, SendKind};
use super::stats::{Counters, Kind, Recorder};
use super::BenchError;

/// Every bench account has this password.
pub const PASSWORD: &str = "bench-password-0123";

/// A registered user and its token.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub token: String,
}

/// One gateway: its HTTP base and socket address.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub base: String,
    pub addr: SocketAddr,
    pub host: String,
}

impl Gateway {
    /// `http://host:port` (a trailing slash or path is ignored).
    pub async fn resolve(url: &str) -> Result<Gateway, BenchError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            BenchError::Setup(format!("gateway {url:?}: expected http://host:port"))
        })?;
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let addr = tokio::net::lookup_host(&host)
            .await
            .map_err(|e| BenchError::Setup(format!("gateway {url:?}: {e}")))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| BenchError::Setup(format!("gateway {url:?}: no IPv4 address")))?;
        Ok(Gateway {
            base: format!("http://{host}"),
            addr,
            host,
        })
    }
}

pub struct Api {
    http: reqwest::Client,
}

impl Api {
    pub fn new() -> Result<Api, BenchError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| BenchError::Http(format!("client: {e}")))?;
        Ok(Api { http })
    }

    async fn post(
        &self,
        gw: &Gateway,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), BenchError> {
        let mut req = self.http.post(format!("{}{path}", gw.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| BenchError::Http(format!("POST {path}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| BenchError::Http(format!("POST {path}: {e}")))?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    fn refused(what: &str, status: u16, v: &Value) -> BenchError {
        BenchError::Http(format!("{what}: HTTP {status}: {v}"))
    }

    pub async fn register(&self, gw: &Gateway, name: &str) -> Result<Account, BenchError> {
        let body = json!({"username": name, "password": PASSWORD});
        let (s, v) = self.post(gw, "/api/register", None, Some(body)).await?;
        if s != 201 {
            return Err(Api::refused("register", s, &v));
        }
        match (v["user"]["id"].as_str(), v["token"].as_str()) {
            (Some(id), Some(token)) => Ok(Account {
                id: id.to_owned(),
                token: token.to_owned(),
            }),
            _ => Err(Api::refused("register (no id or token)", s, &v)),
        }
    }

    pub async fn create_room(
        &self,
        gw: &Gateway,
        who: &Account,
        name: &str,
    ) -> Result<String, BenchError> {
        let body = json!({"name": name});
        let (s, v) = self
            .post(gw, "/api/rooms", Some(&who.token), Some(body))
            .await?;
        match (s, v["id"].as_str()) {
            (201, Some(id)) => Ok(id.to_owned()),
            _ => Err(Api::refused("create room", s, &v)),
        }
    }

    pub async fn join(&self, gw: &Gateway, who: &Account, room: &str) -> Result<(), BenchError> {
        let path = format!("/api/rooms/{room}/join");
        let (s, v) = self.post(gw, &path, Some(&who.token), None).await?;
        if s != 200 {
            return Err(Api::refused("join", s, &v));
        }
        Ok(())
    }
}

/// What one connection does.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub idx: usize,
    pub gateway: Gateway,
    pub token: String,
    /// The room (index and id) it subscribes to and sends into.
    pub room: Option<(usize, String)>,
    pub subscribe: bool,
    /// For a sender: its offset in the total schedule and the time between its sends.
    pub sends: Option<(Duration, Duration)>,
    pub source: Option<Ipv4Addr>,
    /// The mixed scenario: this connection's slot among those sharing its user and room
    /// (`Spec::same_member_slot`, picks its emoji). None: every send is a message.
    pub mixed: Option<usize>,
}

/// When the sending starts (set once every connection is open) and the windows.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub start: Instant,
    pub measure_from: Instant,
    pub send_end: Instant,
}

/// What every connection shares.
pub struct Shared {
    /// Body timestamps are microseconds since this instant.
    pub base: Instant,
    pub run_id: String,
    pub counters: Counters,
    pub recorder: Recorder,
    /// Subscribers per room (for the deliveries an ack owes).
    pub room_subs: Vec<std::sync::atomic::AtomicU64>,
    pub times: watch::Receiver<Option<Times>>,
    pub stop: CancellationToken,
    pub body_bytes: usize,
}

impl Shared {
    pub fn us_since_base(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_micros() as u64
    }

    /// `bench <conn> <seq> <µs since base>` padded with 'x' to `body_bytes`.
    pub fn body(&self, conn: usize, seq: u64, at_us: u64) -> String {
        let mut b = format!("bench {conn} {seq} {at_us} ");
        while b.len() < self.body_bytes {
            b.push('x');
        }
        b
    }
}

/// The scheduled send time (µs since base) in a bench body.
pub fn body_time_us(body: &str) -> Option<u64> {
    let mut w = body.strip_prefix("bench ")?.split(' ');
    w.nth(2)?.parse().ok()
}

type Ws = WebSocketStream<TcpStream>;

/// The frames the bench reads, borrowing from the text where it can.
#[derive(Deserialize)]
struct InFrame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Option<InMessage<'a>>,
    /// An `event` frame's event, or the event an `ack` of an edit or reaction answers with.
    #[serde(default, borrow)]
    event: Option<InEvent<'a>>,
    /// An `ack`'s.
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
}

/// An `error` frame: its `message` is text, not a message object, so it fails to parse
/// as an [`InFrame`] and is read again as this (errors are rare; the hot path parses once).
#[derive(Deserialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<Cow<'a, str>>,
}

/// Parses a server frame; an `error` frame comes back with `message: None`.
fn parse_frame(text: &str) -> Option<InFrame<'_>> {
    match serde_json::from_str::<InFrame>(text) {
        Ok(f) => Some(f),
        Err(_) => {
            let e: ErrorFrame = serde_json::from_str(text).ok()?;
            Some(InFrame {
                ty: e.ty,
                message: None,
                event: None,
                client_msg_id: None,
                code: e.code,
                reference: e.reference,
                reason: None,
            })
        }
    }
}

#[derive(Deserialize)]
struct InMessage<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
    position: i64,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
}

/// A room event (v1.1: edit, delete, reaction, …): its position is in the sequence of the
/// room's messages.
#[derive(Deserialize)]
struct InEvent<'a> {
    position: i64,
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: tens of thousands of connections share the bench's memory.
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
}

/// Connects, says hello and subscribes; returns once the connection is ready, or fails
/// after 30 s (a gateway out of file descriptors accepts nothing, and says nothing).
pub async fn open(plan: &ConnPlan) -> Result<Ws, BenchError> {
    tokio::time::timeout(Duration::from_secs(30), open_now(plan))
        .await
        .map_err(|_| BenchError::Protocol("not ready within 30 s".into()))?
}

async fn open_now(plan: &ConnPlan) -> Result<Ws, BenchError> {
    let socket = TcpSocket::new_v4().map_err(BenchError::Connect)?;
    if let Some(ip) = plan.source {
        socket
            .bind(SocketAddr::new(ip.into(), 0))
            .map_err(BenchError::Connect)?;
    }
    let tcp = socket
        .connect(plan.gateway.addr)
        .await
        .map_err(BenchError::Connect)?;
    tcp.set_nodelay(true).map_err(BenchError::Connect)?;
    let url = format!("ws://{}/ws", plan.gateway.host);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
        .await
        .map_err(|e| BenchError::Ws(e.to_string()))?;
    let hello = json!({"type": "hello", "token": plan.token}).to_string();
    send_text(&mut ws, hello).await?;
    expect(&mut ws, "welcome").await?;
    if let (true, Some((_, room))) = (plan.subscribe, &plan.room) {
        let sub = json!({"type": "subscribe", "room": room, "since": null}).to_string();
        send_text(&mut ws, sub).await?;
        expect(&mut ws, "subscribed").await?;
    }
    Ok(ws)
}

async fn send_text(ws: &mut Ws, text: String) -> Result<(), BenchError> {
    ws.send(WsMessage::Text(text.into()))
        .await
        .map_err(|e| BenchError::Ws(e.to_string()))
}

/// Reads until a frame of type `ty` (others, like presence, are skipped); an `error`
/// frame or a close is an error.
async fn expect(ws: &mut Ws, ty: &str) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| BenchError::Protocol(format!("no {ty} within 30 s")))?;
        let text = match m {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(c))) => {
                return Err(BenchError::Protocol(format!(
                    "closed waiting for {ty}: {c:?}"
                )))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(BenchError::Ws(e.to_string())),
            None => return Err(BenchError::Protocol(format!("closed waiting for {ty}"))),
        };
        let f = parse_frame(&text)
            .ok_or_else(|| BenchError::Protocol(format!("unreadable frame {text:?}")))?;
        if f.ty == ty {
            return Ok(());
        }
        if f.ty == "error" {
            return Err(BenchError::Protocol(format!(
                "error waiting for {ty}: {}",
                f.code.as_deref().unwrap_or("?")
            )));
        }
    }
}

/// A ready connection's life: sends on its schedule (if a sender) and records every
/// ack and delivery until `stop`.
pub async fn run(plan: ConnPlan, mut ws: Ws, shared: Arc<Shared>) {
    let c = &shared.counters;
    let mut times_rx = shared.times.clone();
    let mut times: Option<Times> = *times_rx.borrow();
    let mut next_send: Option<Instant> = None;
    let mut seq: u64 = 0;
    let mut last_position: Option<i64> = None;
    let room_idx = plan.room.as_ref().map(|(i, _)| *i);
    let subs_of_room = |shared: &Shared| {
        room_idx
            .and_then(|i| shared.room_subs.get(i))
            .map_or(0, |n| n.load(Relaxed))
    };
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut sending = plan.sends.is_some();
    let mut mixed = plan.mixed.map(Mixed::new);
    if let (Some(t), Some((offset, _))) = (times, plan.sends) {
        next_send = Some(t.start + offset);
    }
    // Made once: a fresh cancellation future per frame costs a lock and a waiter
    // registration each time, and this loop runs once per received copy.
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            r = times_rx.changed(), if times.is_none() => {
                if r.is_err() {
                    break;
                }
                times = *times_rx.borrow();
                if let (Some(t), Some((offset, _))) = (times, plan.sends) {
                    next_send = Some(t.start + offset);
                }
            }
            _ = tokio::time::sleep_until(next_send.unwrap_or(far).into()), if sending && next_send.is_some() => {
                let (Some(at), Some(t), Some((_, every)), Some((_, room))) =
                    (next_send, times, plan.sends, plan.room.as_ref())
                else {
                    sending = false;
                    continue;
                };
                if at >= t.send_end {
                    sending = false;
                    continue;
                }
                let at_us = shared.us_since_base(at);
                let lag = Instant::now().saturating_duration_since(at).as_micros() as u64;
                c.max_send_lag_us.fetch_max(lag, Relaxed);
                if at >= t.measure_from {
                    shared.recorder.record(plan.idx, Kind::SendLag, lag);
                }
                let frame = match mixed.as_mut() {
                    Some(m) => {
                        let body = shared.body(plan.idx, seq, at_us);
                        let (kind, frame) = m.frame(&shared.run_id, plan.idx, seq, at_us, room, &body);
                        c.kinds[kind.index()].sent.fetch_add(1, Relaxed);
                        frame
                    }
                    None => format!(
                        r#"{{"type":"send","room":"{room}","client_msg_id":"{}-{}-{seq}","body":"{}"}}"#,
                        shared.run_id,
                        plan.idx,
                        shared.body(plan.idx, seq, at_us),
                    ),
                };
                seq += 1;
                next_send = Some(at + every);
                c.sent.fetch_add(1, Relaxed);
                if at >= t.measure_from {
                    c.sent_measured.fetch_add(1, Relaxed);
                }
                if let Err(e) = ws.send(WsMessage::Text(frame.into())).await {
                    c.error(&format!("ws_send: {e}"));
                    c.closed_early.fetch_add(1, Relaxed);
                    return;
                }
            }
            m = ws.next() => {
                let text = match m {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(f))) => {
                        if !shared.stop.is_cancelled() {
                            let code = f.map_or(1005, |f| u16::from(f.code));
                            c.error(&format!("close_{code}"));
                            c.closed_early.fetch_add(1, Relaxed);
                        }
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        if !shared.stop.is_cancelled() {
                            c.error(&format!("ws_read: {e}"));
                            c.closed_early.fetch_add(1, Relaxed);
                        }
                        return;
                    }
                    None => {
                        if !shared.stop.is_cancelled() {
                            c.error("ws_eof");
                            c.closed_early.fetch_add(1, Relaxed);
                        }
                        return;
                    }
                };
                let now_us = shared.us_since_base(Instant::now());
                let measure_from_us = times.map_or(u64::MAX, |t| shared.us_since_base(t.measure_from));
                let Some(f) = parse_frame(&text) else {
                    c.error("unreadable_frame");
                    continue;
                };
                if let Some(m) = mixed.as_mut() {
                    if matches!(f.ty.as_ref(), "message" | "event" | "ack") {
                        let at = Frame { now_us, measure_from_us, subs: subs_of_room(&shared) };
                        on_mixed_frame(&plan, &shared, m, f, at);
                        continue;
                    }
                }
                match f.ty.as_ref() {
                    "message" => {
                        let Some(m) = f.message else {
                            c.error("message_without_message");
                            continue;
                        };
                        if last_position.is_some_and(|p| m.position <= p) {
                            c.out_of_order.fetch_add(1, Relaxed);
                        } else {
                            last_position = Some(m.position);
                        }
                        let Some(at_us) = body_time_us(&m.body) else { continue };
                        c.delivered.fetch_add(1, Relaxed);
                        if at_us >= measure_from_us {
                            c.delivered_measured.fetch_add(1, Relaxed);
                            shared.recorder.record(plan.idx, Kind::Deliver, now_us.saturating_sub(at_us));
                        }
                    }
                    "ack" => {
                        let Some(at_us) = f.message.as_ref().and_then(|m| body_time_us(&m.body)) else {
                            c.error("ack_without_bench_body");
                            continue;
                        };
                        c.acked.fetch_add(1, Relaxed);
                        c.last_ack_us.fetch_max(now_us, Relaxed);
                        c.expected.fetch_add(subs_of_room(&shared), Relaxed);
                        if at_us >= measure_from_us {
                            c.acked_measured.fetch_add(1, Relaxed);
                            shared.recorder.record(plan.idx, Kind::Ack, now_us.saturating_sub(at_us));
                        }
                    }
                    "error" => {
                        let code = f.code.as_deref().unwrap_or("unknown");
                        c.error(code);
                        if f.reference.as_deref().is_some_and(|r| r.starts_with(&shared.run_id)) {
                            c.send_errors.fetch_add(1, Relaxed);
                            if let Some((kind, _)) = f
                                .reference
                                .as_deref()
                                .and_then(|r| mixed::parse_client_msg_id(&shared.run_id, r))
                            {
                                let k = &c.kinds[kind.index()];
                                k.send_errors.fetch_add(1, Relaxed);
                                k.error(code);
                            }
                        }
                    }
                    "reconnect" => {
                        c.reconnect_frames.fetch_add(1, Relaxed);
                        c.error(&format!("reconnect: {}", f.reason.as_deref().unwrap_or("")));
                    }
                    _ => {}
                }
            }
        }
    }
    // Stopping: say goodbye without waiting long for the answer.
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
}

/// When a frame arrived, and what its room owes.
#[derive(Clone, Copy)]
struct Frame {
    now_us: u64,
    measure_from_us: u64,
    /// Subscribers of the connection's room (the deliveries an ack owes).
    subs: u64,
}

/// The mixed scenario's `message`, `event` and `ack` frames: matched by the client_msg_id
/// (which carries kind and scheduled time), counted and timed per kind and in the totals.
fn on_mixed_frame(plan: &ConnPlan, shared: &Shared, m: &mut Mixed, f: InFrame<'_>, at: Frame) {
    let c = &shared.counters;
    let run = shared.run_id.as_str();
    let ours = |id: Option<&Cow<'_, str>>| id.and_then(|x| mixed::parse_client_msg_id(run, x));
    match f.ty.as_ref() {
        "ack" => {
            let Some((kind, at_us)) = ours(f.client_msg_id.as_ref()) else {
                c.error("ack_without_bench_id");
                return;
            };
            if matches!(kind, SendKind::Message | SendKind::Reply) {
                if let Some(id) = f.message.as_ref().and_then(|x| x.id.as_deref()) {
                    m.own_acked(id);
                }
            }
            let k = &c.kinds[kind.index()];
            k.acked.fetch_add(1, Relaxed);
            k.expected.fetch_add(at.subs, Relaxed);
            c.acked.fetch_add(1, Relaxed);
            c.last_ack_us.fetch_max(at.now_us, Relaxed);
            c.expected.fetch_add(at.subs, Relaxed);
            if at_us >= at.measure_from_us {
                let us = at.now_us.saturating_sub(at_us);
                c.acked_measured.fetch_add(1, Relaxed);
                shared.recorder.record(plan.idx, Kind::Ack, us);
                shared
                    .recorder
                    .record_kind(plan.idx, kind.index(), true, us);
            }
        }
        ty => {
            let (position, cmid) = match (ty, &f.message, &f.event) {
                ("message", Some(msg), _) => {
                    if let Some(id) = msg.id.as_deref() {
                        m.message_seen(id);
                    }
                    (msg.position, msg.client_msg_id.as_ref())
                }
                ("event", _, Some(ev)) => (ev.position, ev.client_msg_id.as_ref()),
                _ => {
                    c.error(&format!("{ty}_without_{ty}"));
                    return;
                }
            };
            let arrival = m.positions.arrive(position);
            let Some((kind, at_us)) = ours(cmid) else {
                return;
            };
            let k = &c.kinds[kind.index()];
            match arrival {
                Arrival::Duplicate => {
                    k.duplicates.fetch_add(1, Relaxed);
                    c.duplicates.fetch_add(1, Relaxed);
                    return;
                }
                Arrival::OutOfOrder => {
                    k.out_of_order.fetch_add(1, Relaxed);
                    c.out_of_order.fetch_add(1, Relaxed);
                }
                Arrival::InOrder => {}
            }
            k.delivered.fetch_add(1, Relaxed);
            c.delivered.fetch_add(1, Relaxed);
            if at_us >= at.measure_from_us {
                let us = at.now_us.saturating_sub(at_us);
                c.delivered_measured.fetch_add(1, Relaxed);
                shared.recorder.record(plan.idx, Kind::Deliver, us);
                shared
                    .recorder
                    .record_kind(plan.idx, kind.index(), false, us);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_shared(run: &str) -> Shared {
        let (_tx, rx) = watch::channel(None);
        Shared {
            base: Instant::now(),
            run_id: run.into(),
            counters: Counters::default(),
            recorder: Recorder::new(1),
            room_subs: Vec::new(),
            times: rx,
            stop: CancellationToken::new(),
            body_bytes: 64,
        }
    }

    #[test]
    fn mixed_frames_are_matched_per_kind() {
        let shared = test_shared("run1");
        let plan = ConnPlan {
            idx: 0,
            gateway: Gateway {
                base: "http://127.0.0.1:1".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                host: "127.0.0.1:1".into(),
            },
            token: String::new(),
            room: None,
            subscribe: true,
            sends: None,
            source: None,
            mixed: Some(0),
        };
        let mut m = Mixed::new(0);
        let feed = |m: &mut Mixed, text: &str, now_us: u64| {
            let f = parse_frame(text).expect("a frame");
            let at = Frame {
                now_us,
                measure_from_us: 1_000,
                subs: 3,
            };
            on_mixed_frame(&plan, &shared, m, f, at);
        };
        let mid = "0190b3d2-0000-7000-8000-000000000001";
        let reply = mixed::client_msg_id("run1", 0, 1, SendKind::Reply, 2_000);
        let react = mixed::client_msg_id("run1", 0, 2, SendKind::Reaction, 3_000);
        let early = mixed::client_msg_id("run1", 0, 0, SendKind::Message, 500);
        // The ack of a reply: its message is the connection's own (an edit target).
        feed(
            &mut m,
            &format!(
                r#"{{"type":"ack","client_msg_id":"{reply}","message":{{"id":"{mid}","body":"b","client_msg_id":"{reply}","position":5,"reply_to":"x"}}}}"#
            ),
            2_500,
        );
        assert_eq!(m.own.newest().map(|u| u.to_string()).as_deref(), Some(mid));
        // A reaction's ack carries an event, no message.
        feed(
            &mut m,
            &format!(
                r#"{{"type":"ack","client_msg_id":"{react}","event":{{"id":"e1","kind":"reaction","position":6,"client_msg_id":"{react}","message_id":"{mid}","emoji":"x","on":true}}}}"#
            ),
            4_000,
        );
        // Deliveries: the reply (a message frame), the reaction (an event frame) twice, a
        // message from before the window, and someone else's.
        let msg = |cmid: &str, pos: i64| {
            format!(
                r#"{{"type":"message","message":{{"id":"{mid}","body":"b","client_msg_id":"{cmid}","position":{pos}}}}}"#
            )
        };
        let ev = format!(
            r#"{{"type":"event","event":{{"id":"e1","kind":"reaction","position":6,"client_msg_id":"{react}"}}}}"#
        );
        feed(&mut m, &msg(&reply, 5), 2_600);
        feed(&mut m, &ev, 4_100);
        feed(&mut m, &ev, 4_200);
        feed(&mut m, &msg(&early, 4), 4_300);
        feed(&mut m, &msg("other-7", 7), 4_400);
        let c = &shared.counters;
        let (rp, rx, ms) = (
            &c.kinds[SendKind::Reply.index()],
            &c.kinds[SendKind::Reaction.index()],
            &c.kinds[SendKind::Message.index()],
        );
        let get = Counters::get;
        assert_eq!(
            (get(&rp.acked), get(&rp.expected), get(&rp.delivered)),
            (1, 3, 1)
        );
        assert_eq!(
            (get(&rx.acked), get(&rx.delivered), get(&rx.duplicates)),
            (1, 1, 1)
        );
        // The early message came after position 6: late, delivered, outside the window.
        assert_eq!((get(&ms.delivered), get(&ms.out_of_order)), (1, 1));
        assert_eq!(
            (
                get(&c.acked),
                get(&c.expected),
                get(&c.delivered),
                get(&c.duplicates)
            ),
            (2, 6, 3, 1)
        );
        let t = shared.recorder.totals();
        assert_eq!((t.ack.len(), t.deliver.len()), (2, 2));
        // Reply: ack 500 µs, delivery 600 µs after its scheduled time.
        assert_eq!(
            (
                t.kinds[SendKind::Reply.index()].0.max(),
                t.kinds[SendKind::Reply.index()].1.max()
            ),
            (500, 600)
        );
        assert_eq!(t.kinds[SendKind::Reaction.index()].1.len(), 1);
        // Every message frame's id is a reaction and reply target.
        assert_eq!(m.seen.len(), 3);
        assert!(c.errors().is_empty(), "{:?}", c.errors());
    }

    #[test]
    fn body_carries_its_schedule_time() {
        let (_tx, rx) = watch::channel(None);
        let s = Shared {
            base: Instant::now(),
            run_id: "r".into(),
            counters: Counters::default(),
            recorder: Recorder::new(1),
            room_subs: Vec::new(),
            times: rx,
            stop: CancellationToken::new(),
            body_bytes: 64,
        };
        let b = s.body(12, 3, 987_654);
        assert_eq!(b.len(), 64);
        assert_eq!(body_time_us(&b), Some(987_654));
        assert_eq!(body_time_us("hello there"), None);
        assert_eq!(body_time_us("bench 1 2 notanumber"), None);
        let text = format!(
            r#"{{"type":"message","message":{{"id":"x","body":"{b}","position":7,"room":"r"}}}}"#
        );
        let f: InFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(f.message.map(|m| m.position), Some(7));
        let e = parse_frame(
            r#"{"type":"error","code":"unavailable","message":"kafka: timed out","retryable":true,"ref":"r-1-2"}"#,
        )
        .unwrap();
        assert_eq!(
            (e.ty.as_ref(), e.code.as_deref()),
            ("error", Some("unavailable"))
        );
        assert_eq!(e.reference.as_deref(), Some("r-1-2"));
    }
}
