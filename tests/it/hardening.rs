//! What a hostile or careless client can make the server hold, and how fast access ends.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_modes;
use crate::harness::{Env, Http, Mode, Proc, Ws};

/// Resident memory of a process, in bytes (Linux `/proc`).
fn rss(p: &Proc) -> u64 {
    let pid = p.child.id().expect("process running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

const MIB: u64 = 1 << 20;

both_modes!(replaying_a_backlog_to_a_client_that_reads_nothing_is_bounded);
/// One user fills a room with long messages whose bodies grow sixfold when escaped, then
/// sockets that read nothing send `subscribe {since: -1}` for that room again and again.
/// Each such frame used to make the gateway read and queue the whole backlog (about 36 MB
/// here); now the backlog is read a page at a time as the client drains it, so the
/// gateway's memory stays within a small fixed bound and the server keeps serving.
async fn replaying_a_backlog_to_a_client_that_reads_nothing_is_bounded(mode: Mode) {
    let env = Env::with_mode("amplify", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let h = Http::new(gw);
    let mallory = h.register("mallory").await;
    let room = h.create_room(&mallory, "flood").await;

    // 1,500 messages of 4,000 characters, each 24 KB once JSON-escaped: 36 MB of backlog.
    let body: String = "\u{1}".repeat(3_999) + "x";
    let mut filler = Ws::login(gw, &mallory).await;
    let total = 1_500;
    let mut acked = 0;
    // In rounds of 50: a connection has at most 96 sends queued or in flight.
    for round in 0..total / 50 {
        for i in 0..50 {
            filler
                .send(json!({"type": "send", "room": room, "client_msg_id": format!("f{round}-{i}"), "body": body}))
                .await;
        }
        for _ in 0..50 {
            let v = filler.next().await;
            assert_eq!(v["type"], "ack", "{v}");
            acked += 1;
        }
    }
    assert_eq!(acked, total);
    drop(filler);

    // An honest client replays the whole backlog once (so what a replay allocates in the
    // normal course is part of the baseline), reading everything.
    let mut honest = Ws::login(gw, &mallory).await;
    let backlog = honest.subscribe(&room, Some(-1)).await;
    assert_eq!(backlog.len(), total);
    drop(honest);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(gw);

    // The attack: four sockets that never read, each asking for the backlog 200 times.
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let mut ws = Ws::login(gw, &mallory).await;
        let frame = json!({"type": "subscribe", "room": room, "since": -1}).to_string();
        for _ in 0..200 {
            // The gateway stops reading from a socket that does not drain its answers;
            // then our writes stop too (TCP): give up after a short wait.
            let sent = tokio::time::timeout(
                Duration::from_secs(2),
                futures_util::SinkExt::send(
                    &mut ws.stream,
                    tokio_tungstenite::tungstenite::Message::Text(frame.clone().into()),
                ),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
        attackers.push(ws);
    }
    let mut peak = rss(gw);
    // Longer than a stalled write may wait (10 s) before the writer gives up on a socket.
    let watch_until = Instant::now() + Duration::from_secs(14);
    while Instant::now() < watch_until {
        peak = peak.max(rss(gw));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "replay attack ({mode:?}): gateway RSS {} MiB before, {} MiB at the peak",
        before / MIB,
        peak / MIB
    );
    assert!(
        peak < before + 64 * MIB,
        "gateway RSS grew from {} MiB to {} MiB under the replay attack",
        before / MIB,
        peak / MIB
    );

    // The server is healthy: another user joins, subscribes and chats.
    let bob = h.register("bob").await;
    h.join(&bob, &room).await;
    let mut b = Ws::login(gw, &bob).await;
    b.subscribe(&room, None).await;
    b.send(json!({"type": "send", "room": room, "client_msg_id": "hi", "body": "still here?"}))
        .await;
    // The ack and the message itself, in either order.
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        let v = b.next().await;
        assert_ne!(v["type"], "error", "{v}");
        acked |= v["type"] == "ack";
        delivered |= v["type"] == "message" && v["message"]["body"] == "still here?";
    }
    let (status, _) = h.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200);
    drop(attackers);
    // What the attack made the gateway hold goes when its sockets go.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss(gw);
    eprintln!(
        "replay attack ({mode:?}): {} MiB after the sockets closed",
        after / MIB
    );
    assert!(
        after < before + 32 * MIB,
        "gateway RSS {} MiB after the attack's sockets closed ({} MiB before)",
        after / MIB,
        before / MIB
    );
}

both_modes!(a_second_subscribe_of_a_room_replaces_the_first);
/// Subscribing to a room already subscribed replays from the new `since` and does not
/// count twice against the subscription limit; live messages keep their order.
async fn a_second_subscribe_of_a_room_replaces_the_first(mode: Mode) {
    let env = Env::with_mode("resub", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let h = Http::new(gw);
    let ann = h.register("ann").await;
    let room = h.create_room(&ann, "again").await;
    let mut a = Ws::login(gw, &ann).await;
    a.subscribe(&room, None).await;
    let mut positions = Vec::new();
    for round in 0..3 {
        for i in 0..50 {
            a.send(json!({"type": "send", "room": room, "client_msg_id": format!("m{round}-{i}"), "body": format!("#{i}")}))
                .await;
        }
        while positions.len() < 50 * (round + 1) {
            let v = a.next().await;
            assert_ne!(v["type"], "error", "{v}");
            if v["type"] == "message" {
                positions.push(v["message"]["position"].as_i64().expect("position"));
            }
        }
    }
    // Several pages (64 messages each), then again from the middle.
    let all = a.subscribe(&room, Some(-1)).await;
    assert_eq!(
        all.iter()
            .map(|m| m["position"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        positions
    );
    let half = a.subscribe(&room, Some(positions[74])).await;
    assert_eq!(half.len(), 75);
    assert_eq!(half[0]["position"].as_i64(), Some(positions[75]));
    // Still one subscription: a new message arrives once.
    a.send(json!({"type": "send", "room": room, "client_msg_id": "last", "body": "last"}))
        .await;
    let m = a
        .message_within(Duration::from_secs(10))
        .await
        .expect("delivered");
    assert_eq!(m["message"]["body"], "last");
    assert!(
        a.message_within(Duration::from_millis(700)).await.is_none(),
        "delivered twice"
    );
}

both_modes!(leaving_ends_access_at_once_on_every_gateway);
/// After `POST /rooms/{id}/leave` answers, the user's sockets on every gateway stop
/// receiving the room (told with `unsubscribed`), their sends are refused with
/// `not_member`, and neither subscribe nor history replays the room to them.
async fn leaving_ends_access_at_once_on_every_gateway(mode: Mode) {
    let env = Env::with_mode("leave", mode).await;
    let chat = env.start(2).await;
    let (gw0, gw1) = (chat.gw(0), chat.gw(1));
    let (h0, h1) = (Http::new(gw0), Http::new(gw1));
    let alice = h0.register("alice").await;
    let bob = h0.register("bob").await;
    let room = h0.create_room(&alice, "private-ish").await;
    h0.join(&bob, &room).await;

    let mut a = Ws::login(gw0, &alice).await;
    a.subscribe(&room, None).await;
    let mut b0 = Ws::login(gw0, &bob).await;
    b0.subscribe(&room, None).await;
    let mut b1 = Ws::login(gw1, &bob).await;
    b1.subscribe(&room, None).await;
    // Bob's sockets have used the room (membership cached on both gateways).
    b1.send(json!({"type": "send", "room": room, "client_msg_id": "b-1", "body": "hi"}))
        .await;
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        let v = b1.next().await;
        assert_ne!(v["type"], "error", "{v}");
        acked |= v["type"] == "ack";
        echoed |= v["type"] == "message";
    }
    a.send(json!({"type": "send", "room": room, "client_msg_id": "a-1", "body": "before"}))
        .await;
    for ws in [&mut b0, &mut b1] {
        loop {
            let m = ws
                .message_within(Duration::from_secs(10))
                .await
                .expect("live before leaving");
            if m["message"]["body"] == "before" {
                break;
            }
        }
    }

    let (status, v) = h0
        .call(
            reqwest::Method::POST,
            &format!("/api/rooms/{room}/leave"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // Both sockets are told, the one on the other gateway within the stated bound.
    for ws in [&mut b0, &mut b1] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let told = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match ws.next_within(left).await {
                Some(v) if v["type"] == "unsubscribed" => break v,
                Some(v) => assert_ne!(v["type"], "message", "delivered after leaving: {v}"),
                None => panic!("no `unsubscribed` within 1 s of the leave"),
            }
        };
        assert_eq!(told["room"], room.as_str());
        assert_eq!(told["reason"], "left");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    a.send(json!({"type": "send", "room": room, "client_msg_id": "a-2", "body": "after"}))
        .await;
    a.expect("ack").await;
    for ws in [&mut b0, &mut b1] {
        assert!(
            ws.message_within(Duration::from_millis(1500))
                .await
                .is_none(),
            "a message of the room reached a socket of the user who left"
        );
    }
    b1.send(json!({"type": "send", "room": room, "client_msg_id": "b-2", "body": "sneaky"}))
        .await;
    let e = b1.expect_error().await;
    assert_eq!(e["code"], "not_member", "{e}");
    assert_eq!(e["ref"], "b-2");
    b1.send(json!({"type": "subscribe", "room": room, "since": -1}))
        .await;
    let e = b1.expect_error().await;
    assert_eq!(e["code"], "not_member", "{e}");
    b0.send(json!({"type": "read", "room": room, "position": 1}))
        .await;
    let e = b0.expect_error().await;
    assert_eq!(e["code"], "not_member", "{e}");
    let (status, v) = h1
        .call(
            reqwest::Method::GET,
            &format!("/api/rooms/{room}/messages"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(
        b1.message_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing replayed"
    );

    // Joining again restores access on every gateway.
    h1.join(&bob, &room).await;
    b0.subscribe(&room, None).await;
    a.send(json!({"type": "send", "room": room, "client_msg_id": "a-3", "body": "welcome back"}))
        .await;
    let m = b0
        .message_within(Duration::from_secs(10))
        .await
        .expect("live again after rejoining");
    assert_eq!(m["message"]["body"], "welcome back");
}

both_modes!(one_user_cannot_open_unbounded_connections);
/// A user holds at most 32 WebSocket connections on one gateway: the next one is closed
/// (1008) after its `hello`; closing one frees a place.
async fn one_user_cannot_open_unbounded_connections(mode: Mode) {
    let env = Env::with_mode("conns", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let h = Http::new(gw);
    let eve = h.register("eve").await;
    let mut open = Vec::new();
    for _ in 0..32 {
        open.push(Ws::login(gw, &eve).await);
    }
    let mut extra = Ws::connect(gw).await;
    extra
        .send(json!({"type": "hello", "token": eve.token}))
        .await;
    assert_eq!(
        extra.close_code(Duration::from_secs(10)).await,
        Some(1008),
        "the 33rd connection is refused"
    );
    // Another user is not affected; and a place freed is a place again.
    let other = h.register("other").await;
    Ws::login(gw, &other).await;
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Ws::connect(gw).await;
        again
            .send(json!({"type": "hello", "token": eve.token}))
            .await;
        if again
            .next_within(Duration::from_secs(5))
            .await
            .is_some_and(|v| v["type"] == "welcome")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
