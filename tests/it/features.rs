//! The chat features around messages, across gateways: membership events, presence,
//! typing, unread counts and read markers, direct messages.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_modes;
use crate::harness::{Env, Http, Mode, Ws};

async fn rooms(h: &Http, token: &str) -> Vec<Value> {
    let (s, v) = h.call(Method::GET, "/api/rooms", Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Polls the room list until `ok` holds for the room (up to 10 s); returns the room.
async fn wait_for_room(h: &Http, token: &str, room: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = rooms(h, token).await.into_iter().find(|r| r["id"] == room);
        if let Some(v) = found {
            if ok(&v) || tokio::time::Instant::now() > deadline {
                return v;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{room} not listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn online(h: &Http, token: &str, room: &str, user: &str) -> bool {
    let (s, v) = h
        .call(
            Method::GET,
            &format!("/api/rooms/{room}/members"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == user))
        .map(|m| m["online"] == true)
        .unwrap_or_else(|| panic!("{user} not in {v}"))
}

both_modes!(presence_members_typing_unread_and_dms);
/// Two users on two gateways.
async fn presence_members_typing_unread_and_dms(mode: Mode) {
    let env = Env::with_mode("features", mode).await;
    let chat = env.start(2).await;
    let (h0, h1) = (Http::new(chat.gw(0)), Http::new(chat.gw(1)));
    let alice = h0.register("alice").await;
    let bob = h1.register("bob").await;
    let room = h0.create_room(&alice, "lobby").await;
    let mut wa = Ws::login(chat.gw(0), &alice).await;
    wa.subscribe(&room, None).await;

    // Membership events reach subscribers on other gateways.
    h1.join(&bob, &room).await;
    let m = wa.expect("member").await;
    assert_eq!(
        (m["event"].as_str(), m["user"]["id"].as_str()),
        (Some("joined"), Some(bob.id.as_str()))
    );

    // Presence: bob's first connection (on the other gateway) is announced.
    assert!(!online(&h0, &alice.token, &room, &bob.id).await);
    let mut wb = Ws::login(chat.gw(1), &bob).await;
    let p = wa.expect("presence").await;
    assert_eq!(p["user"]["id"], bob.id.as_str());
    assert_eq!(p["online"], true);
    assert!(online(&h0, &alice.token, &room, &bob.id).await);
    // A second connection of bob is not news; closing one of two is not either.
    let wb2 = Ws::login(chat.gw(0), &bob).await;
    drop(wb2);

    // Typing goes to the others.
    wb.subscribe(&room, None).await;
    wb.send(json!({"type": "typing", "room": room})).await;
    let t = loop {
        let v = wa.next().await;
        assert_ne!(
            v["type"], "presence",
            "bob's second connection was announced: {v}"
        );
        if v["type"] == "typing" {
            break v;
        }
    };
    assert_eq!(t["user"]["name"], bob.name.as_str());

    // Unread: alice's messages count for bob until he reads them.
    let mut last = 0;
    for i in 0..3 {
        wa.send(
            json!({"type": "send", "room": room, "client_msg_id": format!("u{i}"), "body": "hi"}),
        )
        .await;
        last = wa.expect("ack").await["message"]["position"]
            .as_i64()
            .unwrap();
    }
    // (Distributed, counts come from PostgreSQL, which the consumer fills a moment later.)
    let lobby = wait_for_room(&h1, &bob.token, &room, |r| r["last_position"] == last).await;
    assert_eq!(lobby["unread"], 3, "{lobby}");
    wb.send(json!({"type": "read", "room": room, "position": last}))
        .await;
    wb.send(json!({"type": "ping"})).await;
    wb.expect("pong").await;
    let r = rooms(&h1, &bob.token).await;
    let lobby = r
        .iter()
        .find(|r| r["id"] == room.as_str())
        .expect("lobby listed");
    assert_eq!(lobby["unread"], 0, "{lobby}");

    // Bob's last connection closes: offline, announced.
    drop(wb);
    let p = loop {
        let v = wa.next().await;
        if v["type"] == "presence" {
            break v;
        }
    };
    assert_eq!(
        (p["user"]["id"].as_str(), p["online"].as_bool()),
        (Some(bob.id.as_str()), Some(false))
    );
    assert!(!online(&h0, &alice.token, &room, &bob.id).await);

    // Leaving is announced, and a new session of bob can no longer send there.
    let (s, v) = h1
        .call(
            Method::POST,
            &format!("/api/rooms/{room}/leave"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let m = wa.expect("member").await;
    assert_eq!(m["event"], "left");
    let mut wb = Ws::login(chat.gw(1), &bob).await;
    wb.send(json!({"type": "send", "room": room, "client_msg_id": "late", "body": "x"}))
        .await;
    assert_eq!(wb.expect("error").await["code"], "not_member");

    // Direct messages: one room per pair, named after the other user, members only.
    let (s, dm) = h0
        .call(
            Method::POST,
            "/api/dms",
            Some(&alice.token),
            Some(json!({"user": bob.id})),
        )
        .await;
    assert_eq!(s, 201, "{dm}");
    assert_eq!(
        (dm["kind"].as_str(), dm["name"].as_str()),
        (Some("dm"), Some(bob.name.as_str()))
    );
    let (s, again) = h1
        .call(
            Method::POST,
            "/api/dms",
            Some(&bob.token),
            // By name: this server's extension.
            Some(json!({"username": alice.name.to_uppercase()})),
        )
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["id"], dm["id"]);
    assert_eq!(again["name"], alice.name.as_str());
    let listed = rooms(&h1, &bob.token).await;
    assert!(
        listed
            .iter()
            .any(|r| r["id"] == dm["id"] && r["name"] == alice.name.as_str()),
        "{listed:?}"
    );
    for (body, status) in [
        (json!({"username": "nobody-by-this-name"}), 404),
        (json!({"username": bob.name}), 400),
        (json!({}), 400),
    ] {
        let (s, v) = h0
            .call(Method::POST, "/api/dms", Some(&bob.token), Some(body))
            .await;
        assert_eq!(s, status, "{v}");
    }
    let carol = h0.register("carol").await;
    let (s, v) = h0
        .call(
            Method::POST,
            &format!("/api/rooms/{}/join", dm["id"].as_str().unwrap()),
            Some(&carol.token),
            None,
        )
        .await;
    assert!(s == 403 || s == 404, "a third user joined a DM: {s} {v}");
    drop(wa);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
