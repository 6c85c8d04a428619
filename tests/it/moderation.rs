//! Governance taking effect: a ban under load across two gateways, and mute, slow mode,
//! role changes and moderators' deletes at the next frame; the events in the log.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::both_modes;
use crate::harness::{Account, Env, Http, Mode, Ws};

/// Sends `n` messages from one socket, paced under the per-connection rate limit, and
/// returns (client_msg_id → position) of the acked ones.
async fn send_paced(mut ws: Ws, room: String, tag: &'static str, n: usize) -> HashMap<String, i64> {
    let mut acked = HashMap::new();
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(70));
    while acked.len() < n {
        if sent < n {
            tick.tick().await;
            let id = format!("{tag}-{sent}");
            ws.send(json!({"type": "send", "room": room, "client_msg_id": id, "body": id}))
                .await;
            sent += 1;
        }
        while let Some(v) = ws.next_within(Duration::from_millis(1)).await {
            if v["type"] == "ack" {
                let pos = v["message"]["position"].as_i64().expect("position");
                acked.insert(v["client_msg_id"].as_str().unwrap_or("").to_owned(), pos);
            }
            assert_ne!(v["type"], "error", "send refused: {v}");
        }
        if sent == n && acked.len() < n {
            // Generous: a loaded 2-core box running other tests (SQLite waits its turn).
            let Some(v) = ws.next_within(Duration::from_secs(60)).await else {
                let missing: Vec<String> = (0..n)
                    .map(|i| format!("{tag}-{i}"))
                    .filter(|id| !acked.contains_key(id))
                    .collect();
                panic!("{tag}: no answer within 60 s; not acked: {missing:?}");
            };
            assert_ne!(v["type"], "error", "send refused: {v}");
            if v["type"] == "ack" {
                let pos = v["message"]["position"].as_i64().expect("position");
                acked.insert(v["client_msg_id"].as_str().unwrap_or("").to_owned(), pos);
            }
        }
    }
    acked
}

/// What one of the banned user's sockets saw: message positions before `unsubscribed`,
/// the `unsubscribed` frame (and when), and anything of the room after it.
struct Seen {
    before: Vec<i64>,
    told: Option<(Value, tokio::time::Instant)>,
    after: Vec<Value>,
}

async fn watch_banned(mut ws: Ws, stop: tokio::sync::watch::Receiver<bool>) -> (Ws, Seen) {
    let mut seen = Seen {
        before: Vec::new(),
        told: None,
        after: Vec::new(),
    };
    loop {
        if *stop.borrow() {
            return (ws, seen);
        }
        let Some(v) = ws.next_within(Duration::from_millis(100)).await else {
            continue;
        };
        match (v["type"].as_str(), &seen.told) {
            (Some("unsubscribed"), None) => seen.told = Some((v, tokio::time::Instant::now())),
            (Some("message" | "event"), Some(_)) => seen.after.push(v),
            (Some("message"), None) => seen
                .before
                .push(v["message"]["position"].as_i64().expect("position")),
            _ => {}
        }
    }
}

both_modes!(a_ban_under_load_ends_access_at_once_on_every_gateway);
/// Two members send steadily while a moderator bans a third member who has a socket on
/// each gateway: both sockets are told (`unsubscribed`, reason `banned`) within 1 s of
/// the answer and get nothing of the room from then on; nothing they got is at or after
/// the ban's position; their sends, recovery and history are refused with `banned`; a
/// reader on the other gateway gets every acked message once, in order, with the ban
/// event in its place.
async fn a_ban_under_load_ends_access_at_once_on_every_gateway(mode: Mode) {
    let env = Env::with_mode("ban", mode).await;
    let chat = env.start(2).await;
    let (gw0, gw1) = (chat.gw(0), chat.gw(1));
    let (h0, h1) = (Http::new(gw0), Http::new(gw1));
    let alice = h0.register("alice").await;
    let bob = h0.register("bob").await;
    let carol = h0.register("carol").await;
    let dave = h0.register("dave").await;
    let room = h0.create_room(&alice, "banroom").await;
    for who in [&bob, &carol, &dave] {
        h0.join(who, &room).await;
    }

    let mut reader = Ws::login(gw1, &carol).await;
    reader.subscribe(&room, None).await;
    let mut b0 = Ws::login(gw0, &bob).await;
    b0.subscribe(&room, None).await;
    let mut b1 = Ws::login(gw1, &bob).await;
    b1.subscribe(&room, None).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let watch0 = tokio::spawn(watch_banned(b0, stop.clone()));
    let watch1 = tokio::spawn(watch_banned(b1, stop.clone()));

    let n = 60;
    let mut a = Ws::login(gw0, &alice).await;
    a.subscribe(&room, None).await;
    let mut d = Ws::login(gw1, &dave).await;
    d.subscribe(&room, None).await;
    let send_a = tokio::spawn(send_paced(a, room.clone(), "a", n));
    let send_d = tokio::spawn(send_paced(d, room.clone(), "d", n));

    // The reader collects every record of the room until it has them all.
    let collect = tokio::spawn(async move {
        let mut records: Vec<Value> = Vec::new();
        let mut messages = 0;
        while messages < 2 * n {
            let v = reader.next().await;
            match v["type"].as_str() {
                Some("message") => {
                    messages += 1;
                    records.push(v["message"].clone());
                }
                Some("event") => records.push(v["event"].clone()),
                _ => {}
            }
        }
        (reader, records)
    });

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let asked = tokio::time::Instant::now();
    let (status, v) = h0
        .call(
            reqwest::Method::POST,
            &format!("/api/rooms/{room}/members/{}/ban", bob.id),
            Some(&alice.token),
            Some(json!({"reason": "spam"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let answered = tokio::time::Instant::now();

    let acked_a = send_a.await.expect("sender a");
    let acked_d = send_d.await.expect("sender d");
    let (_reader, records) = collect.await.expect("reader");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).expect("stop");
    let (mut b0, seen0) = watch0.await.expect("watch 0");
    let (mut b1, seen1) = watch1.await.expect("watch 1");

    // The reader: every acked message once, positions strictly increasing, the ban event
    // among them.
    let positions: Vec<i64> = records
        .iter()
        .map(|r| r["position"].as_i64().expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {positions:?}"
    );
    for (id, pos) in acked_a.iter().chain(acked_d.iter()) {
        let got = records
            .iter()
            .filter(|r| r["client_msg_id"] == id.as_str() && r.get("kind").is_none())
            .count();
        assert_eq!(got, 1, "message {id} at {pos} delivered {got} times");
    }
    let ban = records
        .iter()
        .find(|r| r["kind"] == "member" && r["action"] == "banned")
        .unwrap_or_else(|| panic!("no ban event among {} records", records.len()));
    assert_eq!(ban["user"]["id"], bob.id.as_str());
    assert_eq!(ban["actor"]["id"], alice.id.as_str());
    assert_eq!(ban["reason"], "spam");
    let ban_at = ban["position"].as_i64().expect("ban position");

    // The banned user's sockets, on both gateways.
    for (i, seen) in [seen0, seen1].into_iter().enumerate() {
        let (told, at) = seen
            .told
            .unwrap_or_else(|| panic!("socket {i}: never told it was banned"));
        assert_eq!(told["reason"], "banned", "{told}");
        eprintln!(
            "ban: socket {i} told {:?} after the request was sent (answered after {:?})",
            at.saturating_duration_since(asked),
            answered.saturating_duration_since(asked)
        );
        assert_eq!(told["room"], room.as_str());
        assert!(
            at <= answered + Duration::from_secs(1),
            "socket {i}: told {:?} after the answer",
            at.saturating_duration_since(answered)
        );
        assert!(
            seen.after.is_empty(),
            "socket {i}: got {:?} after the ban",
            seen.after
        );
        assert!(
            seen.before.iter().all(|p| *p < ban_at),
            "socket {i}: got positions at or after the ban ({ban_at}): {:?}",
            seen.before
        );
    }

    // Everything else is refused with `banned`.
    b1.send(json!({"type": "send", "room": room, "client_msg_id": "b-x", "body": "sneaky"}))
        .await;
    let e = b1.expect_error().await;
    assert_eq!(e["code"], "banned", "{e}");
    assert_eq!(e["ref"], "b-x");
    b0.send(json!({"type": "subscribe", "room": room, "since": -1}))
        .await;
    let e = b0.expect_error().await;
    assert_eq!(e["code"], "banned", "{e}");
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/rooms/{room}/messages")),
        (reqwest::Method::POST, format!("/api/rooms/{room}/join")),
    ] {
        let (status, v) = h1.call(method, &path, Some(&bob.token), None).await;
        assert_eq!(status, 403, "{path}: {v}");
        assert_eq!(v["error"]["code"], "banned", "{path}: {v}");
    }
    let (status, v) = h1
        .call(
            reqwest::Method::POST,
            &format!("/api/rooms/{room}/invites"),
            Some(&alice.token),
            Some(json!({"username": bob.name})),
        )
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("banned")),
        "{v}"
    );
}

/// Collects a room's records (messages and events) replayed after `since`.
async fn replay(ws: &mut Ws, room: &str, since: i64) -> Vec<Value> {
    ws.send(json!({"type": "subscribe", "room": room, "since": since}))
        .await;
    let mut records = Vec::new();
    loop {
        let v = ws.next().await;
        match v["type"].as_str() {
            Some("subscribed") => return records,
            Some("message") => records.push(v["message"].clone()),
            Some("event") => records.push(v["event"].clone()),
            Some("error") => panic!("subscribe refused: {v}"),
            _ => {}
        }
    }
}

async fn http_ok(
    h: &Http,
    method: reqwest::Method,
    path: &str,
    who: &Account,
    body: Option<Value>,
) -> Value {
    let (status, v) = h.call(method, path, Some(&who.token), body).await;
    assert!((200..300).contains(&status), "{path}: {status} {v}");
    v
}

/// The next `ack` or `error` answering `id` (other frames skipped).
async fn answer(ws: &mut Ws, id: &str) -> Value {
    loop {
        let v = ws.next().await;
        let mine = v["client_msg_id"] == id || v["ref"] == id;
        if mine && (v["type"] == "ack" || v["type"] == "error") {
            return v;
        }
    }
}

both_modes!(mutes_slow_mode_roles_and_moderators_take_effect_at_the_next_frame);
/// A mute made on one gateway refuses the member's next send on the other (`muted`),
/// and lifting it lets the next one through; slow mode refuses a second send within the
/// interval (`slow_mode`, retryable) but not a moderator's; a member may not delete
/// another's message, a member promoted to moderator may at once. Every change is an
/// event of the room's log, replayed by `since` in position order.
async fn mutes_slow_mode_roles_and_moderators_take_effect_at_the_next_frame(mode: Mode) {
    use reqwest::Method;
    let env = Env::with_mode("mute", mode).await;
    let chat = env.start(2).await;
    let (gw0, gw1) = (chat.gw(0), chat.gw(1));
    let (h0, h1) = (Http::new(gw0), Http::new(gw1));
    let alice = h0.register("alice").await;
    let dave = h0.register("dave").await;
    let room = h0.create_room(&alice, "rules").await;
    h0.join(&dave, &room).await;
    let mut a = Ws::login(gw0, &alice).await;
    a.subscribe(&room, None).await;
    let mut d = Ws::login(gw1, &dave).await;
    d.subscribe(&room, None).await;
    let send = |id: &str, body: &str| json!({"type": "send", "room": room, "client_msg_id": id, "body": body});

    // Dave's standing is cached on gateway 1 by a send.
    d.send(send("d-1", "hello")).await;
    assert_eq!(answer(&mut d, "d-1").await["type"], "ack");
    let member_path = |what: &str| format!("/api/rooms/{room}/members/{}/{what}", dave.id);
    http_ok(
        &h0,
        Method::POST,
        &member_path("mute"),
        &alice,
        Some(json!({"reason": "cool off"})),
    )
    .await;
    d.send(send("d-2", "still here?")).await;
    let e = answer(&mut d, "d-2").await;
    assert_eq!(e["code"], "muted", "{e}");
    assert_eq!(e["retryable"], false);
    let (_, rooms) = h1
        .call(Method::GET, "/api/rooms", Some(&dave.token), None)
        .await;
    let mine = rooms
        .as_array()
        .and_then(|l| l.iter().find(|r| r["id"] == room.as_str()))
        .cloned()
        .expect("the room in dave's list");
    assert!(mine["muted_until"].is_string(), "{mine}");
    http_ok(&h1, Method::POST, &member_path("unmute"), &alice, None).await;
    d.send(send("d-3", "back")).await;
    assert_eq!(answer(&mut d, "d-3").await["type"], "ack");

    // Slow mode: one message a minute for members; the owner is exempt.
    http_ok(
        &h0,
        Method::PATCH,
        &format!("/api/rooms/{room}"),
        &alice,
        Some(json!({"slow_mode_secs": 60, "topic": "slowly"})),
    )
    .await;
    // Another gateway learns of a settings change when the `room` event is relayed to
    // it (docs/protocol.md): wait for it on Dave's socket, then slow mode holds there.
    loop {
        let v = d.next().await;
        if v["type"] == "event" && v["event"]["kind"] == "room" {
            break;
        }
    }
    d.send(send("d-4", "one")).await;
    assert_eq!(answer(&mut d, "d-4").await["type"], "ack");
    d.send(send("d-5", "two")).await;
    let e = answer(&mut d, "d-5").await;
    assert_eq!(e["code"], "slow_mode", "{e}");
    assert_eq!(e["retryable"], true);
    for id in ["a-1", "a-2"] {
        a.send(send(id, "owner speaks")).await;
        assert_eq!(answer(&mut a, id).await["type"], "ack", "{id}");
    }
    http_ok(
        &h0,
        Method::PATCH,
        &format!("/api/rooms/{room}"),
        &alice,
        Some(json!({"slow_mode_secs": 0})),
    )
    .await;

    // Deleting another's message: refused to a member, allowed to a moderator at once.
    a.send(send("a-3", "delete me")).await;
    let target = answer(&mut a, "a-3").await["message"]["id"].clone();
    let del = |id: &str| json!({"type": "delete", "room": room, "message_id": target, "client_msg_id": id});
    d.send(del("d-del-1")).await;
    let e = answer(&mut d, "d-del-1").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    http_ok(
        &h0,
        Method::PUT,
        &member_path("role"),
        &alice,
        Some(json!({"role": "moderator"})),
    )
    .await;
    d.send(del("d-del-2")).await;
    let ack = answer(&mut d, "d-del-2").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["event"]["kind"], "delete");
    assert_eq!(ack["event"]["actor"]["id"], dave.id.as_str());
    // History shows the tombstone (in the distributed mode once the persist worker has
    // both records).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, page) = h1
            .call(
                Method::GET,
                &format!("/api/rooms/{room}/messages"),
                Some(&dave.token),
                None,
            )
            .await;
        let found = page["messages"]
            .as_array()
            .and_then(|l| l.iter().find(|m| m["id"] == target))
            .cloned();
        if let Some(gone) = found.filter(|m| m["deleted"] == true) {
            assert_eq!(gone["body"], "");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tombstone in history: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The log holds every change, in order, for anyone who recovers.
    let mut fresh = Ws::login(gw1, &alice).await;
    let records = replay(&mut fresh, &room, -1).await;
    let positions: Vec<i64> = records
        .iter()
        .filter_map(|r| r["position"].as_i64())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let governance: Vec<String> = records
        .iter()
        .filter(|r| r["kind"] == "member" || r["kind"] == "room")
        .map(|r| match r["kind"].as_str() {
            Some("member") => format!(
                "{}:{}",
                r["action"].as_str().unwrap_or("?"),
                r["user"]["name"].as_str().unwrap_or("?")
            ),
            _ => format!("room:{}", r["changes"]),
        })
        .collect();
    let joined = format!("joined:{}", dave.name);
    let expected = [
        joined.as_str(),
        &format!("muted:{}", dave.name),
        &format!("unmuted:{}", dave.name),
        r#"room:{"slow_mode_secs":60,"topic":"slowly"}"#,
        r#"room:{"slow_mode_secs":0}"#,
        &format!("role:{}", dave.name),
    ];
    let tail: Vec<&str> = governance
        .iter()
        .map(String::as_str)
        .skip_while(|g| !g.starts_with(&joined))
        .collect();
    assert_eq!(tail, expected, "all: {governance:?}");
    // The moderation log reads what is persisted (in the distributed mode, as soon as the
    // persist worker has it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, log) = h0
            .call(
                Method::GET,
                &format!("/api/rooms/{room}/moderation"),
                Some(&alice.token),
                None,
            )
            .await;
        let newest = &log["events"][0];
        if (newest["action"].clone(), newest["role"].clone()) == (json!("role"), json!("moderator"))
        {
            assert_eq!(newest["actor"]["id"], alice.id.as_str(), "{log}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the role change is not in the moderation log: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, v) = h1
        .call(
            Method::GET,
            &format!("/api/rooms/{room}/moderation"),
            Some(&dave.token),
            None,
        )
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("forbidden")),
        "{v}"
    );
}

both_modes!(membership_changes_are_rate_limited_per_user);
/// Each join, leave or invite is a record every reader of the room receives: a user makes
/// at most `--membership-changes-per-minute` of them (429 `rate_limited`, `Retry-After`),
/// another user is not held back.
async fn membership_changes_are_rate_limited_per_user(mode: Mode) {
    use reqwest::Method;
    let env = Env::with_mode("memrate", mode).await;
    let chat = env
        .start_with(1, &["--membership-changes-per-minute", "3"])
        .await;
    let h = Http::new(chat.gw(0));
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let room = h.create_room(&alice, "revolving").await;
    let path = |what: &str| format!("/api/rooms/{room}/{what}");
    for what in ["join", "leave", "join"] {
        let (status, v) = h
            .call(Method::POST, &path(what), Some(&bob.token), None)
            .await;
        assert_eq!(status, 200, "{what}: {v}");
    }
    let (status, v) = h
        .call(Method::POST, &path("leave"), Some(&bob.token), None)
        .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    // Still a member: the refused leave changed nothing. Others are not held back.
    let (status, _) = h
        .call(Method::GET, &path("messages"), Some(&bob.token), None)
        .await;
    assert_eq!(status, 200);
    let (status, v) = h
        .call(Method::POST, &path("join"), Some(&carol.token), None)
        .await;
    assert_eq!(status, 200, "{v}");
}

both_modes!(a_full_group_admits_no_one_more_however_many_join_at_once);
/// A group with one place left, eight people joining by one link at once: exactly one gets
/// in, the others get 409 `group_full` (the size is checked in the join's transaction).
async fn a_full_group_admits_no_one_more_however_many_join_at_once(mode: Mode) {
    use reqwest::Method;
    let env = Env::with_mode("groupcap", mode).await;
    let chat = env.start_with(1, &["--max-group-members", "4"]).await;
    let h = Http::new(chat.gw(0));
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let (status, group) = h
        .call(
            Method::POST,
            "/api/groups",
            Some(&alice.token),
            Some(json!({"usernames": [bob.name, carol.name]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let room = group["id"].as_str().expect("group id").to_owned();
    let (status, link) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{room}/links"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 201, "{link}");
    let code = link["code"].as_str().expect("code").to_owned();
    let mut joiners = Vec::new();
    for i in 0..8 {
        joiners.push(h.register(&format!("j{i}x")).await);
    }
    let attempts = joiners.iter().map(|who| {
        let (h, code) = (h.clone(), code.clone());
        async move {
            h.call(
                Method::POST,
                &format!("/api/links/{code}/join"),
                Some(&who.token),
                None,
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
    let full = answers
        .iter()
        .filter(|(s, v)| *s == 409 && v["error"]["code"] == "group_full")
        .count();
    assert_eq!((admitted, full), (1, 7), "{answers:?}");
    let (_, members) = h
        .call(
            Method::GET,
            &format!("/api/rooms/{room}/members"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(members.as_array().map(Vec::len), Some(4), "{members}");
}
