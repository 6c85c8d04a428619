//! Room events (protocol v1.1): edits, deletes, reactions, replies and mentions are records
//! of the room's log, delivered live and replayed by `subscribe{since}` in one sequence
//! with messages, applied to the store exactly once; the rules refuse what they must and
//! write nothing then; a deleted body is returned by no API.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::both_modes;
use crate::harness::{Env, Http, Mode, Ws};

/// Subscribes and returns the replayed records (message and event frames) in order.
async fn subscribe_all(ws: &mut Ws, room: &str, since: Option<i64>) -> Vec<Value> {
    ws.send(json!({"type": "subscribe", "room": room, "since": since}))
        .await;
    let mut backlog = Vec::new();
    loop {
        let v = ws.next().await;
        match v["type"].as_str() {
            Some("subscribed") => return backlog,
            Some("message") | Some("event") => backlog.push(v),
            Some("error") => panic!("subscribe refused: {v}"),
            _ => {}
        }
    }
}

/// The next frame of type `ty`, skipping presence, typing, member and read frames.
async fn next_of(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = ws.next().await;
        if v["type"] == ty {
            return v;
        }
        assert!(
            matches!(
                v["type"].as_str(),
                Some(
                    "presence"
                        | "typing"
                        | "member"
                        | "read"
                        | "rooms_changed"
                        | "message"
                        | "event"
                )
            ),
            "expected {ty}, got {v}"
        );
    }
}

/// Sends a frame and returns the answer to its client_msg_id (ack or error).
async fn call(ws: &mut Ws, frame: Value) -> Value {
    let cmid = frame["client_msg_id"]
        .as_str()
        .expect("client_msg_id")
        .to_owned();
    ws.send(frame).await;
    loop {
        let v = ws.next().await;
        let answers = (v["type"] == "ack" && v["client_msg_id"] == cmid.as_str())
            || (v["type"] == "error" && v["ref"] == cmid.as_str());
        if answers {
            return v;
        }
    }
}

/// The event frame with this id, skipping everything else.
async fn event_with(ws: &mut Ws, id: &Value) -> Value {
    loop {
        let v = ws.next().await;
        if v["type"] == "event" && v["event"]["id"] == *id {
            return v;
        }
    }
}

/// The message frame with this id, skipping everything else.
async fn message_with(ws: &mut Ws, id: &str) -> Value {
    loop {
        let v = ws.next().await;
        if v["type"] == "message" && v["message"]["id"] == id {
            return v;
        }
    }
}

fn refused(v: &Value, code: &str) {
    assert_eq!(v["type"], "error", "expected {code}: {v}");
    assert_eq!(v["code"], code, "{v}");
}

async fn history(h: &Http, token: &str, room: &str) -> Vec<Value> {
    let (s, v) = h
        .call(
            Method::GET,
            &format!("/api/rooms/{room}/messages?limit=200"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["messages"].as_array().cloned().unwrap_or_default()
}

/// History once `ok` holds for it (the persist worker may be a moment behind), up to 20 s.
async fn history_until(
    h: &Http,
    token: &str,
    room: &str,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = history(h, token, room).await;
        if ok(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never got there: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find<'a>(page: &'a [Value], id: &str) -> &'a Value {
    page.iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {page:?}"))
}

both_modes!(edits_deletes_reactions_and_replies_across_gateways);
async fn edits_deletes_reactions_and_replies_across_gateways(mode: Mode) {
    let env = Env::with_mode("events", mode).await;
    let chat = env.start(2).await;
    let (h0, h1) = (Http::new(chat.gw(0)), Http::new(chat.gw(1)));
    let alice = h0.register("alice").await;
    let bob = h1.register("bob").await;
    let room = h0.create_room(&alice, "events").await;
    let other_room = h0.create_room(&alice, "elsewhere").await;
    h1.join(&bob, &room).await;
    let mut wa = Ws::login(chat.gw(0), &alice).await;
    let mut wb = Ws::login(chat.gw(1), &bob).await;
    subscribe_all(&mut wa, &room, None).await;
    subscribe_all(&mut wb, &room, None).await;
    wa.send(json!({"type": "subscribe", "room": other_room}))
        .await;
    next_of(&mut wa, "subscribed").await;

    // A message that mentions bob, by name.
    let ack = call(
        &mut wa,
        json!({"type": "send", "room": room, "client_msg_id": "m1",
               "body": format!("hello @{} and @nobody_here", bob.name)}),
    )
    .await;
    let m1 = ack["message"].clone();
    let m1_id = m1["id"].as_str().unwrap().to_owned();
    assert_eq!(m1["mentions"], json!([bob.id]), "{ack}");
    let seen = message_with(&mut wb, &m1_id).await;
    assert_eq!(seen["message"]["mentions"], json!([bob.id]));
    let before = m1["position"].as_i64().unwrap() - 1;

    // A reply, a reaction and an edit: each acked with its record, delivered to the other.
    let ack = call(
        &mut wb,
        json!({"type": "send", "room": room, "client_msg_id": "r1", "body": "hi back",
               "reply_to": m1_id}),
    )
    .await;
    assert_eq!(ack["message"]["reply_to"], m1_id.as_str(), "{ack}");
    let r1_id = ack["message"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        message_with(&mut wa, &r1_id).await["message"]["reply_to"],
        m1_id.as_str()
    );

    let react = json!({"type": "react", "room": room, "message_id": m1_id,
                       "client_msg_id": "x1", "emoji": "👍", "on": true});
    let ack = call(&mut wb, react.clone()).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ev = &ack["event"];
    assert_eq!(
        (
            ev["kind"].as_str(),
            ev["message_id"].as_str(),
            ev["emoji"].as_str(),
            ev["on"].as_bool()
        ),
        (
            Some("reaction"),
            Some(m1_id.as_str()),
            Some("👍"),
            Some(true)
        ),
        "{ack}"
    );
    assert_eq!(ev["actor"]["id"], bob.id.as_str());
    let live = event_with(&mut wa, &ev["id"]).await;
    assert_eq!(live["event"], *ev);

    let edit = json!({"type": "edit", "room": room, "message_id": m1_id,
                      "client_msg_id": "e1", "body": "hello, edited"});
    let ack = call(&mut wa, edit.clone()).await;
    let edit_event = ack["event"].clone();
    assert_eq!(edit_event["kind"], "edit", "{ack}");
    assert_eq!(edit_event["body"], "hello, edited");
    let live = event_with(&mut wb, &edit_event["id"]).await;
    assert_eq!(live["event"], edit_event);
    // A resend of the same client_msg_id is the same event, never a second one.
    let again = call(&mut wa, edit).await;
    assert_eq!(again["event"], edit_event);
    let again = call(&mut wb, react).await;
    assert_eq!(again["event"]["id"], ev["id"]);

    // The rules: each refusal writes nothing.
    let last = edit_event["position"].as_i64().unwrap();
    let ghost = Uuid::new_v4().to_string();
    let cases = [
        (
            1,
            json!({"type": "edit", "room": room, "message_id": m1_id, "client_msg_id": "bad1", "body": "mine now"}),
            "forbidden",
        ),
        (
            1,
            json!({"type": "delete", "room": room, "message_id": m1_id, "client_msg_id": "bad2"}),
            "forbidden",
        ),
        (
            0,
            json!({"type": "edit", "room": room, "message_id": ghost, "client_msg_id": "bad3", "body": "x"}),
            "message_not_found",
        ),
        (
            0,
            json!({"type": "react", "room": other_room, "message_id": m1_id, "client_msg_id": "bad4", "emoji": "🎉", "on": true}),
            "message_not_found",
        ),
        (
            0,
            json!({"type": "edit", "room": room, "message_id": ev["id"], "client_msg_id": "bad5", "body": "an event is no message"}),
            "message_not_found",
        ),
        (
            1,
            json!({"type": "react", "room": room, "message_id": m1_id, "client_msg_id": "bad6", "emoji": "two words", "on": true}),
            "invalid_emoji",
        ),
        (
            0,
            json!({"type": "edit", "room": room, "message_id": m1_id, "client_msg_id": "bad7", "body": "  "}),
            "empty_body",
        ),
        (
            1,
            json!({"type": "send", "room": room, "client_msg_id": "bad8", "body": "re", "reply_to": ghost}),
            "message_not_found",
        ),
    ];
    for (who, frame, code) in cases {
        let ws = if who == 0 { &mut wa } else { &mut wb };
        let v = call(ws, frame.clone()).await;
        refused(&v, code);
        assert_eq!(v["retryable"], false, "{v}");
    }

    // History: the current state, once persisted.
    let page = history_until(&h1, &bob.token, &room, |p| {
        p.iter().any(|m| {
            m["id"] == m1_id.as_str()
                && m["edited_at"].is_string()
                && m["reactions"].as_array().is_some_and(|r| !r.is_empty())
                && m["reply_count"] == 1
        })
    })
    .await;
    assert_eq!(page.len(), 2, "events are not history entries: {page:?}");
    let m = find(&page, &m1_id);
    assert_eq!(m["body"], "hello, edited");
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": true, "users": [{"id": bob.id, "name": bob.name}]}])
    );
    assert_eq!(m["mentions"], json!([bob.id]));
    let alice_view = history(&h0, &alice.token, &room).await;
    assert_eq!(find(&alice_view, &m1_id)["reactions"][0]["me"], false);
    assert_eq!(find(&page, &r1_id)["reply_to"], m1_id.as_str());

    // The edit history and the thread.
    let (s, v) = h0
        .call(
            Method::GET,
            &format!("/api/rooms/{room}/messages/{m1_id}/edits"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let bodies: Vec<&str> = v["edits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"].as_str().unwrap())
        .collect();
    assert!(bodies[0].starts_with("hello @"), "{v}");
    assert_eq!(bodies[1..], ["hello, edited"]);
    let (s, v) = h1
        .call(
            Method::GET,
            &format!("/api/rooms/{room}/messages/{m1_id}/replies"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["messages"][0]["id"], r1_id.as_str());

    // Delete: a tombstone everywhere; nothing more may change it.
    let ack = call(
        &mut wa,
        json!({"type": "delete", "room": room, "message_id": m1_id, "client_msg_id": "d1"}),
    )
    .await;
    assert_eq!(ack["event"]["kind"], "delete", "{ack}");
    let live = event_with(&mut wb, &ack["event"]["id"]).await;
    assert_eq!(live["event"]["message_id"], m1_id.as_str());
    let v = call(&mut wa, json!({"type": "edit", "room": room, "message_id": m1_id, "client_msg_id": "late1", "body": "back"})).await;
    refused(&v, "message_deleted");
    let v = call(&mut wb, json!({"type": "react", "room": room, "message_id": m1_id, "client_msg_id": "late2", "emoji": "👎", "on": true})).await;
    refused(&v, "message_deleted");

    let page = history_until(&h1, &bob.token, &room, |p| {
        p.iter()
            .any(|m| m["id"] == m1_id.as_str() && m["deleted"] == true)
    })
    .await;
    let m = find(&page, &m1_id);
    assert_eq!(m["body"], "");
    assert!(m.get("mentions").is_none(), "{m}");
    assert_eq!(m["reactions"], json!([]));
    assert_eq!(find(&page, &r1_id)["reply_to"], m1_id.as_str());
    let (_, v) = h0
        .call(
            Method::GET,
            &format!("/api/rooms/{room}/messages/{m1_id}/edits"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(v["edits"], json!([]));

    // Recovery on another gateway replays all of it in position order, without the
    // deleted body; what a client builds from it is what history says.
    let mut wc = Ws::login(chat.gw(1), &alice).await;
    let replay = subscribe_all(&mut wc, &room, Some(before)).await;
    let kinds: Vec<String> = replay
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("message") => "message".to_owned(),
            _ => f["event"]["kind"].as_str().unwrap_or("?").to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        ["message", "message", "reaction", "edit", "delete"],
        "{replay:?}"
    );
    let positions: Vec<i64> = replay
        .iter()
        .map(|f| {
            f["message"]["position"]
                .as_i64()
                .or(f["event"]["position"].as_i64())
                .unwrap()
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(
        *positions.last().unwrap(),
        ack["event"]["position"].as_i64().unwrap()
    );
    assert!(positions
        .iter()
        .all(|&p| p > before && p <= ack["event"]["position"].as_i64().unwrap()));
    let text = serde_json::to_string(&replay).unwrap();
    assert!(!text.contains("hello"), "a deleted body came back: {text}");
    assert_eq!(replay[0]["message"]["deleted"], true);
    // Nothing refused was written: the records are exactly the five above.
    assert!(last < positions[4]);
}

both_modes!(unread_ignores_events_and_counts_mentions);
async fn unread_ignores_events_and_counts_mentions(mode: Mode) {
    let env = Env::with_mode("events-unread", mode).await;
    let chat = env.start(1).await;
    let h = Http::new(chat.gw(0));
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let room = h.create_room(&alice, "unread").await;
    h.join(&bob, &room).await;
    let mut wa = Ws::login(chat.gw(0), &alice).await;
    let a = call(&mut wa, json!({"type": "send", "room": room, "client_msg_id": "a", "body": format!("@{} look", bob.name)})).await;
    let b = call(
        &mut wa,
        json!({"type": "send", "room": room, "client_msg_id": "b", "body": "plain"}),
    )
    .await;
    let (a_id, b_id) = (a["message"]["id"].clone(), b["message"]["id"].clone());
    call(&mut wa, json!({"type": "edit", "room": room, "message_id": b_id, "client_msg_id": "c", "body": "plain, edited"})).await;
    call(&mut wa, json!({"type": "react", "room": room, "message_id": b_id, "client_msg_id": "d", "emoji": "✅", "on": true})).await;
    let listed = |want_unread: i64, want_mentions: i64| {
        let (h, token, room) = (&h, bob.token.clone(), room.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let (_, v) = h.call(Method::GET, "/api/rooms", Some(&token), None).await;
                let r = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["id"] == room.as_str())
                    .cloned()
                    .unwrap();
                if (r["unread"].as_i64(), r["unread_mentions"].as_i64())
                    == (Some(want_unread), Some(want_mentions))
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "want unread {want_unread}/{want_mentions}: {r}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Two messages; the edit and the reaction are not unread.
    listed(2, 1).await;
    // A deleted unread message stops counting, and so does its mention.
    call(
        &mut wa,
        json!({"type": "delete", "room": room, "message_id": a_id, "client_msg_id": "e"}),
    )
    .await;
    listed(1, 0).await;
}

both_modes!(per_user_channel_reaches_every_device);
async fn per_user_channel_reaches_every_device(mode: Mode) {
    let env = Env::with_mode("events-user", mode).await;
    let chat = env.start(2).await;
    let (h0, h1) = (Http::new(chat.gw(0)), Http::new(chat.gw(1)));
    let alice = h0.register("alice").await;
    let bob = h0.register("bob").await;
    // Bob on two devices, one per gateway.
    let mut phone = Ws::login(chat.gw(0), &bob).await;
    let mut laptop = Ws::login(chat.gw(1), &bob).await;
    // Alice opens a DM with bob: both of bob's devices hear of it without polling.
    let (s, v) = h1
        .call(
            Method::POST,
            "/api/dms",
            Some(&alice.token),
            Some(json!({"user": bob.id})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let dm = v["id"].as_str().unwrap().to_owned();
    for ws in [&mut phone, &mut laptop] {
        let n = next_of(ws, "rooms_changed").await;
        assert_eq!(
            (n["room"].as_str(), n["reason"].as_str()),
            (Some(dm.as_str()), Some("dm_opened"))
        );
    }
    // Reading on the phone clears the badge on the laptop at once.
    let mut wa = Ws::login(chat.gw(0), &alice).await;
    subscribe_all(&mut wa, &dm, None).await;
    let m = call(
        &mut wa,
        json!({"type": "send", "room": dm, "client_msg_id": "hi", "body": "hi bob"}),
    )
    .await;
    let pos = m["message"]["position"].as_i64().unwrap();
    phone
        .send(json!({"type": "read", "room": dm, "position": pos}))
        .await;
    let r = next_of(&mut laptop, "read").await;
    assert_eq!(
        (r["room"].as_str(), r["position"].as_i64()),
        (Some(dm.as_str()), Some(pos))
    );
    // In a DM, the other member sees it read ("seen"), live and over HTTP.
    let r = next_of(&mut wa, "receipt").await;
    assert_eq!(
        (r["user"]["id"].as_str(), r["position"].as_i64()),
        (Some(bob.id.as_str()), Some(pos))
    );
    // A marker is never beyond what the log holds: a read of "everything, forever" is
    // one up to the newest record (here the DM's message), and not news.
    phone
        .send(json!({"type": "read", "room": dm, "position": i64::MAX}))
        .await;
    phone.send(json!({"type": "ping"})).await;
    next_of(&mut phone, "pong").await;
    let clamped = pos;
    let (s, v) = h0
        .call(
            Method::GET,
            &format!("/api/rooms/{dm}/receipts"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["receipts"],
        json!([{"user": {"id": bob.id, "name": bob.name}, "position": clamped}])
    );
    // Joining a room (HTTP, any gateway) tells the user's devices too; rooms show no
    // receipts.
    let room = h0.create_room(&alice, "club").await;
    let (s, v) = h0
        .call(
            Method::GET,
            &format!("/api/rooms/{room}/receipts"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("receipts_off")),
        "{v}"
    );
    h1.join(&bob, &room).await;
    let n = next_of(&mut phone, "rooms_changed").await;
    assert_eq!(
        (n["room"].as_str(), n["reason"].as_str()),
        (Some(room.as_str()), Some("joined"))
    );
}

/// Deleted means gone from the log's tail too: with no consumer running (nothing
/// persisted), an edit and a delete of a fresh message are checked against the log's tail
/// and accepted, and recovery, reading the records from Kafka, returns no deleted body;
/// the same when the message is persisted and only its delete is in the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_body_is_not_recovered_from_the_log_tail() {
    let env = Env::with_mode("events-tail", Mode::Distributed).await;
    let gw = env.spawn("gateway", "gw-m").await;
    let h = Http::new(&gw);
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let room = h.create_room(&alice, "tail").await;
    h.join(&bob, &room).await;
    let mut wa = Ws::login(&gw, &alice).await;
    let mut wb = Ws::login(&gw, &bob).await;
    let m = call(
        &mut wa,
        json!({"type": "send", "room": room, "client_msg_id": "s", "body": "the secret"}),
    )
    .await;
    let id = m["message"]["id"].clone();
    let before = m["message"]["position"].as_i64().unwrap() - 1;
    call(
        &mut wa,
        json!({"type": "send", "room": room, "client_msg_id": "k", "body": "kept"}),
    )
    .await;
    // Nothing is persisted (no consumer): the rules read the message from the log's tail.
    let v = call(&mut wb, json!({"type": "edit", "room": room, "message_id": id, "client_msg_id": "x", "body": "mine"})).await;
    refused(&v, "forbidden");
    let v = call(&mut wa, json!({"type": "edit", "room": room, "message_id": id, "client_msg_id": "e", "body": "the secret, again"})).await;
    assert_eq!(v["type"], "ack", "{v}");
    let v = call(&mut wb, json!({"type": "react", "room": room, "message_id": id, "client_msg_id": "r", "emoji": "👀", "on": true})).await;
    assert_eq!(v["type"], "ack", "{v}");
    let d = call(
        &mut wa,
        json!({"type": "delete", "room": room, "message_id": id, "client_msg_id": "d"}),
    )
    .await;
    assert_eq!(d["type"], "ack", "{d}");
    let v = call(&mut wa, json!({"type": "edit", "room": room, "message_id": id, "client_msg_id": "e2", "body": "back"})).await;
    refused(&v, "message_deleted");
    let ghost = Uuid::new_v4().to_string();
    let v = call(&mut wb, json!({"type": "react", "room": room, "message_id": ghost, "client_msg_id": "g", "emoji": "👀", "on": true})).await;
    refused(&v, "message_not_found");
    let mut wc = Ws::login(&gw, &alice).await;
    let replay = subscribe_all(&mut wc, &room, Some(before)).await;
    let text = serde_json::to_string(&replay).unwrap();
    assert!(
        !text.contains("secret"),
        "a deleted body came back from the tail: {text}"
    );
    assert_eq!(replay.len(), 5, "{replay:?}");
    assert_eq!(replay[0]["message"]["deleted"], true, "{replay:?}");
    assert_eq!(replay[1]["message"]["body"], "kept");

    // Persisted, then deleted while the consumer is down: the store has the body, the
    // delete is in the tail only.
    let mut consumer = env.spawn("consumer", "consumer").await;
    let m2 = call(
        &mut wa,
        json!({"type": "send", "room": room, "client_msg_id": "s2", "body": "second secret"}),
    )
    .await;
    let id2 = m2["message"]["id"].clone();
    env.wait_count(
        "SELECT count(*) AS n FROM messages WHERE body = 'second secret'",
        1,
        Duration::from_secs(30),
    )
    .await;
    consumer.kill9().await;
    let d = call(
        &mut wa,
        json!({"type": "delete", "room": room, "message_id": id2, "client_msg_id": "d2"}),
    )
    .await;
    assert_eq!(d["type"], "ack", "{d}");
    let v = call(&mut wb, json!({"type": "react", "room": room, "message_id": id2, "client_msg_id": "r2", "emoji": "👀", "on": true})).await;
    refused(&v, "message_deleted");
    let mut wd = Ws::login(&gw, &bob).await;
    let replay = subscribe_all(&mut wd, &room, Some(before)).await;
    let text = serde_json::to_string(&replay).unwrap();
    assert!(!text.contains("secret"), "a deleted body came back: {text}");

    // And in PostgreSQL once persisted: tombstones, no edit keeps a body.
    let _consumer = env.spawn("consumer", "consumer-2").await;
    let n = env
        .wait_count(
            "SELECT count(*) AS n FROM messages WHERE deleted_at IS NOT NULL",
            2,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(n, 2);
    assert_eq!(
        env.count("SELECT count(*) AS n FROM messages WHERE body LIKE '%secret%' OR original_body LIKE '%secret%'")
            .await,
        0
    );
    assert_eq!(env.count("SELECT count(*) AS n FROM reactions").await, 0);
}

/// Sends the frames (one connection, in order) and waits for every ack; panics on an error.
async fn all_acked(ws: &mut Ws, frames: Vec<Value>) -> Vec<Value> {
    let mut want: Vec<String> = Vec::new();
    for f in frames {
        want.push(f["client_msg_id"].as_str().unwrap().to_owned());
        ws.send(f).await;
    }
    let mut acks = Vec::new();
    while acks.len() < want.len() {
        let v = ws.next().await;
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "ack" && want.iter().any(|w| v["client_msg_id"] == w.as_str()) {
            acks.push(v);
        }
    }
    acks
}

/// Exactly once for every kind: a mix of reactions, edits, replies and deletes while the
/// consumer is killed (-9) and restarted; every event is applied once (reaction rows,
/// edit counts and reply counts exact), none twice, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_kind_is_applied_once_when_the_consumer_is_killed() {
    let env = Env::with_mode("events-kill", Mode::Distributed).await;
    let gw = env.spawn("gateway", "gw-m").await;
    let mut consumer = env.spawn("consumer", "consumer-1").await;
    let h = Http::new(&gw);
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let rooms = [
        h.create_room(&alice, "k0").await,
        h.create_room(&alice, "k1").await,
        h.create_room(&alice, "k2").await,
    ];
    for r in &rooms {
        h.join(&bob, r).await;
    }
    let mut wa = Ws::login(&gw, &alice).await;
    let mut wb = Ws::login(&gw, &bob).await;
    const M: usize = 120;
    let mut acks = Vec::new();
    for chunk in (0..M).collect::<Vec<_>>().chunks(40) {
        let frames = chunk
            .iter()
            .map(|i| json!({"type": "send", "room": rooms[i % 3], "client_msg_id": format!("m{i}"), "body": format!("n{i}")}))
            .collect();
        acks.extend(all_acked(&mut wa, frames).await);
    }
    let mut ids = vec![String::new(); M];
    for a in &acks {
        let i: usize = a["client_msg_id"].as_str().unwrap()[1..].parse().unwrap();
        ids[i] = a["message"]["id"].as_str().unwrap().to_owned();
    }
    env.wait_count(
        "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')",
        M as i64,
        Duration::from_secs(30),
    )
    .await;
    // The mix: two reactions on 0..40, two edits on 40..80, a reply to 80..100, a delete
    // of 100..120; in rounds of ten, the consumer killed after a third and back at half.
    let mut a_frames = Vec::new();
    let mut b_frames = Vec::new();
    for j in 0..M {
        let (room, id) = (&rooms[j % 3], &ids[j]);
        match j {
            0..40 => {
                for (k, e) in ["👍", "🎉"].iter().enumerate() {
                    b_frames.push(json!({"type": "react", "room": room, "message_id": id, "client_msg_id": format!("r{j}-{k}"), "emoji": e, "on": true}));
                }
            }
            40..80 => {
                for k in 0..2 {
                    a_frames.push(json!({"type": "edit", "room": room, "message_id": id, "client_msg_id": format!("e{j}-{k}"), "body": format!("n{j} v{k}")}));
                }
            }
            80..100 => b_frames.push(json!({"type": "send", "room": room, "client_msg_id": format!("t{j}"), "body": "re", "reply_to": id})),
            _ => a_frames.push(json!({"type": "delete", "room": room, "message_id": id, "client_msg_id": format!("d{j}")})),
        }
    }
    let rounds = 10;
    let (a_chunk, b_chunk) = (
        a_frames.len().div_ceil(rounds),
        b_frames.len().div_ceil(rounds),
    );
    let mut a_iter = a_frames.into_iter();
    let mut b_iter = b_frames.into_iter();
    for round in 0..rounds {
        all_acked(&mut wa, a_iter.by_ref().take(a_chunk).collect()).await;
        all_acked(&mut wb, b_iter.by_ref().take(b_chunk).collect()).await;
        if round == rounds / 3 {
            consumer.kill9().await;
        }
        if round == rounds / 2 {
            consumer = env.spawn("consumer", "consumer-2").await;
        }
    }
    let total = M + 80 + 80 + 20 + 20;
    let n = env
        .wait_count(
            "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')",
            total as i64,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(n, total as i64, "records lost");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let checks = [
        (
            "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')",
            total as i64,
        ),
        ("SELECT count(*) AS n FROM reactions", 80),
        ("SELECT count(*) AS n FROM messages WHERE kind = 'edit'", 80),
        (
            "SELECT CAST(COALESCE(sum(edit_count), 0) AS BIGINT) AS n FROM messages",
            80,
        ),
        (
            "SELECT count(*) AS n FROM messages WHERE edit_count = 2 AND body LIKE '% v1'",
            40,
        ),
        (
            "SELECT CAST(COALESCE(sum(reply_count), 0) AS BIGINT) AS n FROM messages",
            20,
        ),
        (
            "SELECT count(*) AS n FROM messages WHERE deleted_at IS NOT NULL AND body = ''",
            20,
        ),
    ];
    for (sql, want) in checks {
        assert_eq!(env.count(sql).await, want, "{sql}");
    }
    drop(consumer);
}

/// The store applies each record once, in log order, whatever the batches: an edit that
/// comes after the delete of its message is refused where it is applied and kept as a
/// refused record, so a second copy of it later in the log (a retried produce) is skipped
/// rather than applied; a duplicate reaction counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_applies_each_record_once() {
    use chat::events::Limits;
    use chat::model::{Change, Message, NewMessage, User};
    use chat::store::{PgStore, Store};
    let env = Env::with_mode("events-store", Mode::Distributed).await;
    PgStore::migrate(&env.db_url).await.expect("migrate");
    let target = chat::tls::PgTarget::parse(&env.db_url, None).expect("url");
    let store = PgStore::connect(&target, 2).expect("store");
    let ann = User {
        id: Uuid::now_v7(),
        name: "ann".into(),
    };
    let room = Uuid::now_v7();
    let record = |cmid: &str, body: &str, change: Option<Change>, position: i64| -> Message {
        NewMessage {
            id: Uuid::now_v7(),
            room,
            sender: ann.clone(),
            body: body.into(),
            client_msg_id: cmid.into(),
            sent_at: chrono::Utc::now(),
            reply_to: None,
            mentions: Vec::new(),
            change,
        }
        .at(position)
    };
    let m = record("m", "secret", None, 0);
    let react = record(
        "r",
        "",
        Some(Change::Reaction {
            message_id: m.id,
            emoji: "👍".into(),
            on: true,
        }),
        1,
    );
    let del = record("d", "", Some(Change::Delete { message_id: m.id }), 2);
    let late = record(
        "e",
        "secret again",
        Some(Change::Edit { message_id: m.id }),
        3,
    );
    let limits = Limits::default();
    let n = store
        .commit_batch(
            "t",
            0,
            None,
            4,
            &[m.clone(), react.clone(), del, late.clone()],
            &limits,
        )
        .await
        .expect("commit");
    assert_eq!(n, 3, "the late edit is refused");
    // The same records again at later offsets (a retried produce): nothing changes.
    let mut again = late.clone();
    again.position = 4;
    let mut react2 = react.clone();
    react2.position = 5;
    let n = store
        .commit_batch("t", 0, Some(4), 6, &[again, react2], &limits)
        .await
        .expect("commit");
    assert_eq!(n, 0);
    let rows = store.messages_after(room, -1, 100).await.expect("rows");
    let kinds: Vec<_> = rows
        .iter()
        .map(|r| r.change.as_ref().map_or("message", |c| c.kind()))
        .collect();
    assert_eq!(kinds, ["message", "reaction", "delete"], "{rows:?}");
    assert!(rows[0].deleted && rows[0].body.is_empty());
    assert_eq!(
        env.count("SELECT count(*) AS n FROM messages WHERE kind = 'refused' AND body = ''")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) AS n FROM messages WHERE body LIKE '%secret%'")
            .await,
        0
    );
    assert_eq!(env.count("SELECT count(*) AS n FROM reactions").await, 0);
}
