//! A load of resilient protocol clients, as a careful real client behaves: each user
//! sends at a fixed pace into shared rooms and reads them all; when its connection drops
//! (or the server says `reconnect`) it connects to the next gateway, resubscribes with
//! `since` = the last position it saw per room, and resends every unacked message with
//! its original `client_msg_id`; retryable errors are retried. Everything is recorded, so
//! a test can check that every acked message reached every reader once and in order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::harness::Account;

/// Where the gateways are now (a restarted one comes back on another port).
pub type Gateways = Arc<Mutex<Vec<String>>>;

#[derive(Default, Debug)]
pub struct Record {
    pub sent: usize,
    /// client_msg_id → (message id, room, position)
    pub acked: HashMap<String, (String, String, i64)>,
    /// Ack instants, for the longest stall.
    pub ack_times: Vec<Instant>,
    /// room → delivered (position, id) in arrival order
    pub delivered: HashMap<String, Vec<(i64, String)>>,
    pub out_of_order: usize,
    pub duplicates: usize,
    pub reconnects: usize,
    pub retryable_errors: usize,
    pub other_errors: Vec<String>,
    pub done_sending: bool,
}

pub struct Client {
    pub name: String,
    pub record: Arc<Mutex<Record>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub struct Spec {
    pub rooms: Vec<String>,
    pub messages: usize,
    pub every: Duration,
    /// The gateway this client starts on (index into the list).
    pub first_gateway: usize,
}

impl Client {
    pub fn start(who: Account, gateways: Gateways, spec: Spec) -> Client {
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(run(
            who.clone(),
            gateways,
            spec,
            record.clone(),
            stop.clone(),
        ));
        Client {
            name: who.name,
            record,
            stop,
            task,
        }
    }

    pub async fn stop(self) -> Record {
        self.stop.cancel();
        let _ = self.task.await;
        Arc::try_unwrap(self.record)
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .unwrap_or_default()
    }

    pub fn with<R>(&self, f: impl FnOnce(&Record) -> R) -> R {
        f(&self.record.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Socket, v: &Value) -> bool {
    ws.send(WsMessage::Text(v.to_string().into())).await.is_ok()
}

/// Connects to some gateway, says hello, subscribes to every room with `since`.
async fn connect(
    who: &Account,
    gateways: &Gateways,
    next: &mut usize,
    rooms: &[String],
    since: &HashMap<String, i64>,
) -> Option<Socket> {
    let addr = {
        let g = gateways.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_empty() {
            return None;
        }
        g[*next % g.len()].clone()
    };
    *next += 1;
    let url = format!("ws://{addr}/ws");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await
    .ok()?
    .ok()?;
    if !send(&mut ws, &json!({"type": "hello", "token": who.token})).await {
        return None;
    }
    for room in rooms {
        // From the room's start the first time (the rooms are new): a reader must see
        // every message, also those sent before it first subscribed.
        let s = since.get(room).copied().unwrap_or(-1);
        if !send(
            &mut ws,
            &json!({"type": "subscribe", "room": room, "since": s}),
        )
        .await
        {
            return None;
        }
    }
    Some(ws)
}

async fn run(
    who: Account,
    gateways: Gateways,
    spec: Spec,
    record: Arc<Mutex<Record>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let rec =
        |f: &mut dyn FnMut(&mut Record)| f(&mut record.lock().unwrap_or_else(|p| p.into_inner()));
    let mut next_gw = spec.first_gateway;
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut seen_ids: HashSet<String> = HashSet::new();
    // client_msg_id → (room, body, last sent)
    let mut pending: BTreeMap<String, (String, String, Instant)> = BTreeMap::new();
    let mut to_send = spec.messages;
    let mut n = 0usize;
    let mut tick = tokio::time::interval(spec.every);
    let mut resend = tokio::time::interval(Duration::from_millis(500));
    let mut ws: Option<Socket> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let Some(sock) = ws.as_mut() else {
            match connect(&who, &gateways, &mut next_gw, &spec.rooms, &last).await {
                Some(mut s) => {
                    // Everything unacked goes again, with its original client_msg_id.
                    for (cmid, (room, body, at)) in pending.iter_mut() {
                        *at = Instant::now();
                        send(&mut s, &json!({"type": "send", "room": room, "client_msg_id": cmid, "body": body})).await;
                    }
                    ws = Some(s);
                }
                None => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
            continue;
        };
        let mut drop_conn = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick(), if to_send > 0 => {
                let room = spec.rooms[n % spec.rooms.len()].clone();
                let cmid = format!("{}-{n}", who.name);
                let body = format!("{} #{n}", who.name);
                n += 1;
                to_send -= 1;
                pending.insert(cmid.clone(), (room.clone(), body.clone(), Instant::now()));
                rec(&mut |r| { r.sent += 1; r.done_sending = to_send == 0; });
                if !send(sock, &json!({"type": "send", "room": room, "client_msg_id": cmid, "body": body})).await {
                    drop_conn = true;
                }
            }
            _ = resend.tick() => {
                // An ack lost with a dying gateway: ask again after a while.
                let now = Instant::now();
                for (cmid, (room, body, at)) in pending.iter_mut() {
                    if now.duration_since(*at) > Duration::from_secs(3) {
                        *at = now;
                        if !send(sock, &json!({"type": "send", "room": room, "client_msg_id": cmid, "body": body})).await {
                            drop_conn = true;
                            break;
                        }
                    }
                }
            }
            frame = sock.next() => {
                let text = match frame {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => { drop_conn = true; String::new().into() }
                    Some(Ok(_)) => String::new().into(),
                };
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    match v["type"].as_str() {
                        Some("message") => {
                            let m = &v["message"];
                            let room = m["room"].as_str().unwrap_or_default().to_owned();
                            let pos = m["position"].as_i64().unwrap_or(-1);
                            let id = m["id"].as_str().unwrap_or_default().to_owned();
                            let prev = last.get(&room).copied().unwrap_or(-1);
                            let dup = !seen_ids.insert(id.clone());
                            rec(&mut |r| {
                                if dup { r.duplicates += 1; }
                                else if pos <= prev { r.out_of_order += 1; }
                                r.delivered.entry(room.clone()).or_default().push((pos, id.clone()));
                            });
                            if pos > prev { last.insert(room, pos); }
                        }
                        Some("ack") => {
                            let cmid = v["client_msg_id"].as_str().unwrap_or_default().to_owned();
                            let m = &v["message"];
                            let entry = (
                                m["id"].as_str().unwrap_or_default().to_owned(),
                                m["room"].as_str().unwrap_or_default().to_owned(),
                                m["position"].as_i64().unwrap_or(-1),
                            );
                            let first = pending.remove(&cmid).is_some();
                            rec(&mut |r| match r.acked.get(&cmid) {
                                // A resend must be answered with the same message.
                                Some(prev) if *prev != entry => r.other_errors.push(format!("{cmid}: acked as {prev:?} and as {entry:?}")),
                                Some(_) => {}
                                None if first => { r.acked.insert(cmid.clone(), entry.clone()); r.ack_times.push(Instant::now()); }
                                None => r.other_errors.push(format!("{cmid}: ack for nothing sent")),
                            });
                        }
                        Some("error") => {
                            if v["retryable"] == true {
                                rec(&mut |r| r.retryable_errors += 1);
                                if v["ref"] == "subscribe" {
                                    // The bus was away: this subscription must be redone.
                                    drop_conn = true;
                                } else if let Some((_, _, at)) = v["ref"].as_str().and_then(|c| pending.get_mut(c)) {
                                    // Resend soon (the periodic resend picks it up).
                                    *at = Instant::now() - Duration::from_millis(2_600);
                                }
                            } else {
                                let e = v.to_string();
                                rec(&mut |r| r.other_errors.push(e.clone()));
                            }
                        }
                        Some("reconnect") => drop_conn = true,
                        _ => {}
                    }
                }
            }
        }
        if drop_conn {
            if let Some(mut s) = ws.take() {
                let _ = tokio::time::timeout(Duration::from_millis(200), s.close(None)).await;
            }
            rec(&mut |r| r.reconnects += 1);
        }
    }
}
