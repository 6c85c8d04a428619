//! The message path end to end: two gateways, one consumer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_modes;
use crate::harness::{percentile, Env, Http, Mode, Ws};

const ROWS: &str = "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')";

/// A message sent on gateway A reaches a subscriber on gateway B, in order, with the
/// position the sender's ack carried; PostgreSQL ends up with each message once; history
/// pages back through them. Prints the latencies it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_gateway_delivery_is_ordered_acked_and_persisted_once() {
    cross_gateway_delivery(Mode::Distributed).await
}

/// The same over TLS with authentication to PostgreSQL and Redis (the TLS profile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_gateway_delivery_is_ordered_acked_and_persisted_once_over_tls() {
    cross_gateway_delivery(Mode::Tls).await
}

async fn cross_gateway_delivery(mode: Mode) {
    let env = Env::with_mode("delivery", mode).await;
    let a = env.spawn("gateway", "gw-a-m").await;
    let b = env.spawn("gateway", "gw-b").await;
    let _consumer = env.spawn("consumer", "consumer").await;
    let (ha, hb) = (Http::new(&a), Http::new(&b));
    let alice = ha.register("alice").await;
    let bob = hb.register("bob").await;
    let room = ha.create_room(&alice, "general").await;
    hb.join(&bob, &room).await;

    let mut wa = Ws::login(&a, &alice).await;
    let mut wb = Ws::login(&b, &bob).await;
    wa.subscribe(&room, None).await;
    wb.subscribe(&room, None).await;

    const N: usize = 300;
    // Bob reads on his own task, so delivery times are taken when frames arrive.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N {
            let v = wb.expect("message").await;
            got.push((v["message"].clone(), Instant::now()));
        }
        let extra = wb.message_within(Duration::from_millis(300)).await;
        (got, extra)
    });
    let mut sent_at = HashMap::new();
    let mut acks = HashMap::new();
    let mut ack_ms = Vec::new();
    // One at a time, each after the previous ack: latency without queueing.
    for i in 0..N {
        let cmid = format!("m{i}");
        sent_at.insert(cmid.clone(), Instant::now());
        wa.send(json!({"type": "send", "room": room, "client_msg_id": cmid, "body": format!("hello {i}")}))
            .await;
        loop {
            let v = wa.next().await;
            match v["type"].as_str() {
                Some("ack") => {
                    let c = v["client_msg_id"].as_str().unwrap().to_owned();
                    ack_ms.push(sent_at[&c].elapsed().as_secs_f64() * 1e3);
                    assert!(
                        v["message"]["position"].is_i64(),
                        "ack without position: {v}"
                    );
                    acks.insert(c, v["message"].clone());
                    break;
                }
                Some("message") => {}
                // Bob's join, relayed in order with the messages.
                Some("event") if v["event"]["kind"] == "member" => {}
                _ => panic!("unexpected frame {v}"),
            }
        }
    }
    // Bob saw every message, in order, as acked, once.
    let (got, extra) = reader.await.expect("reader task");
    let mut deliver_ms = Vec::new();
    for (i, (m, at)) in got.iter().enumerate() {
        let c = format!("m{i}");
        assert_eq!(m["client_msg_id"], c.as_str(), "order broken at {i}");
        assert_eq!(m["id"], acks[&c]["id"]);
        assert_eq!(m["position"], acks[&c]["position"]);
        assert_eq!(m["sender"]["name"], alice.name.as_str());
        deliver_ms.push(at.duration_since(sent_at[&c]).as_secs_f64() * 1e3);
    }
    assert!(
        extra.is_none_or(|v| v["type"] != "message"),
        "a message was delivered twice"
    );
    // Persisted exactly once.
    let n = env
        .wait_count(ROWS, N as i64, Duration::from_secs(20))
        .await;
    assert_eq!(n, N as i64);
    assert_eq!(
        env.count(
            "SELECT count(DISTINCT id) AS n FROM messages WHERE kind NOT IN ('member', 'room')"
        )
        .await,
        N as i64
    );
    // History pages back through all of them, ascending within each page.
    let mut before: Option<i64> = None;
    let mut pages: Vec<Vec<serde_json::Value>> = Vec::new();
    loop {
        let q = match before {
            Some(p) => format!("/api/rooms/{room}/messages?limit=70&before={p}"),
            None => format!("/api/rooms/{room}/messages?limit=70"),
        };
        let (s, v) = hb
            .call(reqwest::Method::GET, &q, Some(&bob.token), None)
            .await;
        assert_eq!(s, 200, "{v}");
        let page = v["messages"].as_array().unwrap().clone();
        before = page.first().and_then(|m| m["position"].as_i64());
        let more = v["has_more"].as_bool().unwrap();
        pages.push(page);
        if !more {
            break;
        }
    }
    let all: Vec<_> = pages.into_iter().rev().flatten().collect();
    assert_eq!(all.len(), N);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m["client_msg_id"], format!("m{i}").as_str());
    }

    ack_ms.sort_by(f64::total_cmp);
    deliver_ms.sort_by(f64::total_cmp);
    println!(
        "latency over {N} sequential sends: send->ack p50 {:.2} ms p99 {:.2} ms max {:.2} ms; \
         send->deliver (other gateway) p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        percentile(&ack_ms, 50.0),
        percentile(&ack_ms, 99.0),
        percentile(&ack_ms, 100.0),
        percentile(&deliver_ms, 50.0),
        percentile(&deliver_ms, 99.0),
        percentile(&deliver_ms, 100.0),
    );
}

both_modes!(resend_is_idempotent_across_gateways, tls);
/// Resending a client_msg_id, on the same or another gateway, returns the first message
/// and never creates a second one.
async fn resend_is_idempotent_across_gateways(mode: Mode) {
    let env = Env::with_mode("idempotent", mode).await;
    let chat = env.start(2).await;
    let (a, b) = (chat.gw(0), chat.gw(1));
    let ha = Http::new(a);
    let alice = ha.register("alice").await;
    let room = ha.create_room(&alice, "idem").await;
    let mut wa = Ws::login(a, &alice).await;
    let mut wb = Ws::login(b, &alice).await;
    let mut reader = Ws::login(b, &alice).await;
    reader.subscribe(&room, None).await;

    let send = json!({"type": "send", "room": room, "client_msg_id": "same-1", "body": "once"});
    wa.send(send.clone()).await;
    let first = wa.expect("ack").await;
    wa.send(send.clone()).await;
    let again = wa.expect("ack").await;
    wb.send(send).await;
    let other = wb.expect("ack").await;
    assert_eq!(first["message"], again["message"]);
    assert_eq!(first["message"], other["message"]);

    let m = reader.expect("message").await;
    assert_eq!(m["message"]["id"], first["message"]["id"]);
    assert!(
        reader
            .message_within(Duration::from_millis(500))
            .await
            .is_none(),
        "delivered more than once"
    );
    assert_eq!(env.wait_count(ROWS, 1, Duration::from_secs(10)).await, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.count(ROWS).await, 1);
}

both_modes!(subscribe_since_recovers_the_missed_messages, tls);
/// `subscribe{since}` returns exactly the missed messages in order, then `subscribed`,
/// then live ones.
async fn subscribe_since_recovers_the_missed_messages(mode: Mode) {
    let env = Env::with_mode("recovery", mode).await;
    let chat = env.start(1).await;
    let a = chat.gw(0);
    let h = Http::new(a);
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let room = h.create_room(&alice, "catchup").await;
    h.join(&bob, &room).await;
    let mut wa = Ws::login(a, &alice).await;
    let mut positions = Vec::new();
    for i in 0..20 {
        wa.send(json!({"type": "send", "room": room, "client_msg_id": format!("r{i}"), "body": format!("b{i}")}))
            .await;
        positions.push(
            wa.expect("ack").await["message"]["position"]
                .as_i64()
                .unwrap(),
        );
    }
    let mut wb = Ws::login(a, &bob).await;
    let backlog = wb.subscribe(&room, Some(positions[4])).await;
    let got: Vec<i64> = backlog
        .iter()
        .map(|m| m["position"].as_i64().unwrap())
        .collect();
    assert_eq!(got, positions[5..].to_vec());
    // And from the very start (the store and the log tail together).
    let mut wc = Ws::login(a, &bob).await;
    let all = wc.subscribe(&room, Some(-1)).await;
    assert_eq!(all.len(), 20);
    // Live afterwards.
    wa.send(json!({"type": "send", "room": room, "client_msg_id": "live", "body": "now"}))
        .await;
    let live = wb.expect("message").await;
    assert_eq!(live["message"]["client_msg_id"], "live");
}

both_modes!(concurrent_senders_reach_every_reader_in_position_order);
/// Several senders at once, on different gateways: every reader gets every message once,
/// in strictly increasing position order, and the store holds each once. (In the
/// embedded mode this is the "commit rows 10 and 11, publish 11 then 10" race of
/// ARCHITECTURE.md, "Four seams, two modes".)
async fn concurrent_senders_reach_every_reader_in_position_order(mode: Mode) {
    const SENDERS: usize = 4;
    const EACH: usize = 50;
    let env = Env::with_mode("concurrent", mode).await;
    let chat = env.start(2).await;
    let h = Http::new(chat.gw(0));
    let owner = h.register("owner").await;
    let room = h.create_room(&owner, "busy").await;
    let mut readers = Vec::new();
    for i in 0..2 {
        let reader = h.register("reader").await;
        h.join(&reader, &room).await;
        let mut ws = Ws::login(chat.gw(i), &reader).await;
        ws.subscribe(&room, None).await;
        readers.push(ws);
    }
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let who = h.register("sender").await;
        h.join(&who, &room).await;
        let mut ws = Ws::login(chat.gw(s), &who).await;
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            // Pipelined: all sends go out before the first ack is read.
            for i in 0..EACH {
                ws.send(json!({"type": "send", "room": room, "client_msg_id": format!("c{i}"), "body": format!("{s}/{i}")}))
                    .await;
            }
            let mut acked = 0;
            while acked < EACH {
                let v = ws.next().await;
                assert_ne!(v["type"], "error", "{v}");
                if v["type"] == "ack" {
                    acked += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let total = SENDERS * EACH;
    for (r, ws) in readers.iter_mut().enumerate() {
        let mut last = -1;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < total {
            let v = ws.expect("message").await;
            let p = v["message"]["position"].as_i64().expect("position");
            assert!(p > last, "reader {r}: position {p} after {last}");
            last = p;
            assert!(
                seen.insert(v["message"]["id"].to_string()),
                "reader {r}: duplicate"
            );
        }
        let extra = ws.message_within(Duration::from_millis(300)).await;
        assert!(extra.is_none(), "reader {r}: more than {total}: {extra:?}");
    }
    assert_eq!(
        env.wait_count(ROWS, total as i64, Duration::from_secs(15))
            .await,
        total as i64
    );
}

both_modes!(one_connection_keeps_the_order_of_its_pipelined_sends);
/// One connection sends a burst without waiting for acks (the gateway has several of its
/// sends in flight at once): the acks come back in send order with increasing positions,
/// and a reader on the other gateway sees the messages in send order.
async fn one_connection_keeps_the_order_of_its_pipelined_sends(mode: Mode) {
    const N: usize = 40;
    let env = Env::with_mode("pipelined", mode).await;
    let chat = env.start(2).await;
    let h = Http::new(chat.gw(0));
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let room = h.create_room(&alice, "burst").await;
    h.join(&bob, &room).await;
    let mut reader = Ws::login(chat.gw(1), &bob).await;
    reader.subscribe(&room, None).await;
    let mut ws = Ws::login(chat.gw(0), &alice).await;
    for i in 0..N {
        ws.send(json!({"type": "send", "room": room, "client_msg_id": format!("p{i}"), "body": format!("burst {i}")}))
            .await;
    }
    let mut last = -1;
    for i in 0..N {
        let v = ws.expect("ack").await;
        assert_eq!(v["client_msg_id"], format!("p{i}").as_str(), "ack order");
        let p = v["message"]["position"].as_i64().expect("position");
        assert!(p > last, "ack {i}: position {p} after {last}");
        last = p;
    }
    for i in 0..N {
        let v = reader.expect("message").await;
        assert_eq!(
            v["message"]["client_msg_id"],
            format!("p{i}").as_str(),
            "delivery order"
        );
    }
}
