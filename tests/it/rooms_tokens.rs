//! Issue 15, item 5: room creation limits and the paged room list, revoked and orphaned
//! tokens, client_msg_id per room, re-opening a DM, Unicode names (and the migration that
//! keys the names of existing rows).

use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

use crate::both_modes;
use crate::harness::{Account, Env, Http, Mode, Ws, SECRET};

/// `POST /api/rooms` with that name: the status and the answer.
async fn new_room(h: &Http, who: &Account, name: impl std::fmt::Display) -> (u16, Value) {
    h.call(
        Method::POST,
        "/api/rooms",
        Some(&who.token),
        Some(json!({"name": name.to_string()})),
    )
    .await
}

/// A request that also returns the answer's headers.
async fn raw(
    h: &Http,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, HeaderMap, Value) {
    let mut req = h.client.request(method, format!("{}{path}", h.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("http request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn login(h: &Http, username: &str) -> (u16, Value) {
    h.call(
        Method::POST,
        "/api/login",
        None,
        Some(json!({"username": username, "password": "correct horse battery"})),
    )
    .await
}

/// The close code a hello with this token gets (None: welcomed).
async fn hello_refused(chat: &crate::harness::Proc, token: &str) -> Option<u16> {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let mut ws = Ws::connect(chat).await;
    ws.send(json!({"type": "hello", "token": token})).await;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.stream.next())
            .await
            .expect("an answer to hello within 15 s");
        match m {
            Some(Ok(WsMessage::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                assert_eq!(v["type"], "welcome", "{v}");
                return None;
            }
            Some(Ok(WsMessage::Close(Some(f)))) => return Some(f.code.into()),
            Some(Ok(WsMessage::Close(None))) => return Some(1005),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error instead of a close frame: {e}"),
            None => panic!("socket ended without a close frame"),
        }
    }
}

/// Sends and waits for the ack, retrying while the first attempt is `in_flight` (its
/// result is recorded just after its ack).
async fn send_acked(ws: &mut Ws, room: &str, client_msg_id: &str, body: &str) -> Value {
    for _ in 0..50 {
        ws.send(
            json!({"type": "send", "room": room, "client_msg_id": client_msg_id, "body": body}),
        )
        .await;
        loop {
            let v = ws.next().await;
            match v["type"].as_str() {
                Some("ack") => return v["message"].clone(),
                Some("error") if v["code"] == "in_flight" => break,
                Some("error") => panic!("send refused: {v}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{client_msg_id} stayed in flight")
}

both_modes!(room_creation_is_limited_per_user);
/// One user cannot create rooms without bound: a rate per user (429 with Retry-After), and
/// a cap on the rooms one user has created (403).
async fn room_creation_is_limited_per_user(mode: Mode) {
    let env = Env::with_mode("roomlimit", mode).await;
    let chat = env.start(1).await;
    let h = Http::new(chat.gw(0));
    let spammer = h.register("spam").await;
    let other = h.register("other").await;
    let mut created = 0;
    let mut refused = None;
    for i in 0..40 {
        let (s, headers, v) = raw(
            &h,
            Method::POST,
            "/api/rooms",
            Some(&spammer.token),
            Some(json!({"name": format!("spam-{i}")})),
        )
        .await;
        match s {
            201 => created += 1,
            429 => {
                refused = Some((headers, v));
                break;
            }
            _ => panic!("create room: {s} {v}"),
        }
    }
    let (headers, v) = refused.expect("40 rooms in a row were all created");
    // The default: 10 a minute, a burst of 10 (one more may have been earned meanwhile).
    assert!(
        (10..=12).contains(&created),
        "{created} created before a 429"
    );
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    let wait: u64 = header(&headers, "retry-after")
        .and_then(|s| s.parse().ok())
        .expect("a Retry-After in whole seconds");
    assert!((1..=6).contains(&wait), "Retry-After {wait}");
    // Per user: another user is not held back.
    h.create_room(&other, "not-spam").await;

    // The cap on rooms created in all.
    let env = Env::with_mode("roomcap", mode).await;
    let chat = env
        .start_with(
            1,
            &[
                "--room-create-per-minute",
                "1000",
                "--max-rooms-per-user",
                "3",
            ],
        )
        .await;
    let h = Http::new(chat.gw(0));
    let alice = h.register("alice").await;
    for i in 0..3 {
        h.create_room(&alice, &format!("cap-{i}")).await;
    }
    let (s, v) = new_room(&h, &alice, "cap-3").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("too_many_rooms")),
        "{v}"
    );
}

both_modes!(the_room_list_is_paged_and_keeps_every_room_of_the_member);
/// `GET /api/rooms` stays a JSON array; other public rooms come in pages (oldest first,
/// `X-Next-Cursor` / `Link` to the next), the caller's own rooms always all on the first.
async fn the_room_list_is_paged_and_keeps_every_room_of_the_member(mode: Mode) {
    let env = Env::with_mode("roompages", mode).await;
    let chat = env
        .start_with(1, &["--room-create-per-minute", "1000"])
        .await;
    let h = Http::new(chat.gw(0));
    let spammer = h.register("spam").await;
    let mut spam = HashSet::new();
    for i in 0..12 {
        spam.insert(h.create_room(&spammer, &format!("s-{i:02}")).await);
    }
    let alice = h.register("alice").await;
    // Alice's own rooms come after all of them.
    let mine = h.create_room(&alice, "alice-late").await;
    let (s, dm) = h
        .call(
            Method::POST,
            "/api/dms",
            Some(&alice.token),
            Some(json!({"user": spammer.id})),
        )
        .await;
    assert_eq!(s, 201, "{dm}");
    let dm = dm["id"].as_str().expect("dm id").to_owned();

    let (s, headers, first) = raw(
        &h,
        Method::GET,
        "/api/rooms?limit=5",
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(s, 200, "{first}");
    let first = first.as_array().expect("the list is a JSON array").clone();
    let members: HashSet<&str> = first
        .iter()
        .filter(|r| r["member"] == true)
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(
        members,
        HashSet::from([mine.as_str(), dm.as_str()]),
        "{first:?}"
    );
    assert_eq!(first.len(), 2 + 5, "{first:?}");
    let mut cursor = header(&headers, "x-next-cursor")
        .expect("X-Next-Cursor on a page that has a next one")
        .to_owned();
    let link = header(&headers, "link").expect("a Link header").to_owned();
    assert_eq!(
        link,
        format!("</api/rooms?after={cursor}&limit=5>; rel=\"next\""),
        "{link}"
    );
    let mut others: Vec<String> = first
        .iter()
        .filter(|r| r["member"] == false)
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    let mut pages = 1;
    loop {
        let (s, headers, page) = raw(
            &h,
            Method::GET,
            &format!("/api/rooms?after={cursor}&limit=5"),
            Some(&alice.token),
            None,
        )
        .await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        let page = page.as_array().expect("array").clone();
        assert!(page.iter().all(|r| r["member"] == false), "{page:?}");
        others.extend(
            page.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned)),
        );
        match header(&headers, "x-next-cursor") {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
        assert!(pages < 10, "the pages do not end");
    }
    assert_eq!(pages, 3, "12 other rooms, 5 a page");
    assert_eq!(others.len(), 12, "a room listed twice: {others:?}");
    assert_eq!(others.into_iter().collect::<HashSet<_>>(), spam);

    // Without parameters: one page of up to 200 other rooms, as v1 clients expect.
    let (s, headers, all) = raw(&h, Method::GET, "/api/rooms", Some(&alice.token), None).await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(all.as_array().map(Vec::len), Some(14), "{all}");
    assert!(header(&headers, "x-next-cursor").is_none());
    // Someone else never sees alice's DM.
    let bob = h.register("bob").await;
    let (_, _, list) = raw(
        &h,
        Method::GET,
        "/api/rooms?limit=100",
        Some(&bob.token),
        None,
    )
    .await;
    let ids: HashSet<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 13);
    assert!(!ids.contains(dm.as_str()));
    for bad in ["limit=0", "limit=1001", "limit=x", "after=nope"] {
        let (s, v) = h
            .call(
                Method::GET,
                &format!("/api/rooms?{bad}"),
                Some(&bob.token),
                None,
            )
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
}

both_modes!(a_token_of_a_user_that_no_longer_exists_is_refused);
/// A validly signed token of a deleted user: 401 over HTTP (was 500, a foreign key), 4401
/// on the WebSocket.
async fn a_token_of_a_user_that_no_longer_exists_is_refused(mode: Mode) {
    let env = Env::with_mode("deleteduser", mode).await;
    let chat = env.start(1).await;
    let h = Http::new(chat.gw(0));
    let dave = h.register("dave").await;
    assert_eq!(hello_refused(chat.gw(0), &dave.token).await, None);
    env.exec(&format!("DELETE FROM users WHERE id = '{}'", dave.id))
        .await;
    let (s, v) = new_room(&h, &dave, "ghost").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    let (s, v) = h
        .call(Method::GET, "/api/rooms", Some(&dave.token), None)
        .await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(hello_refused(chat.gw(0), &dave.token).await, Some(4401));
}

/// A token as issued before token generations existed (no `gen` claim).
fn legacy_token(who: &Account) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        name: &'a str,
        iat: u64,
        exp: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: &who.id,
            name: &who.name,
            iat: now,
            exp: now + 3600,
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

both_modes!(logout_all_revokes_every_earlier_token);
/// `POST /api/logout-all` bumps the user's token generation: every token issued before
/// (this one, others, and tokens from before generations) is refused, HTTP and hello; a
/// new login works; other users are untouched.
async fn logout_all_revokes_every_earlier_token(mode: Mode) {
    let env = Env::with_mode("revoke", mode).await;
    let chat = env.start(2).await;
    let (h0, h1) = (Http::new(chat.gw(0)), Http::new(chat.gw(1)));
    let erin = h0.register("erin").await;
    let frank = h0.register("frank").await;
    let (s, v) = login(&h1, &erin.name).await;
    assert_eq!(s, 200, "{v}");
    let second = v["token"].as_str().expect("token").to_owned();
    let legacy = legacy_token(&erin);
    for t in [&erin.token, &second, &legacy] {
        let (s, v) = h1.call(Method::GET, "/api/rooms", Some(t), None).await;
        assert_eq!(s, 200, "before revocation: {v}");
        assert_eq!(hello_refused(chat.gw(1), t).await, None);
    }

    // Sockets open on both gateways are closed (4401) when the tokens are revoked.
    let mut open0 = Ws::login(chat.gw(0), &erin).await;
    let mut open1 = Ws::login(chat.gw(1), &erin).await;

    let (s, v) = h0
        .call(Method::POST, "/api/logout-all", Some(&second), None)
        .await;
    assert_eq!(s, 204, "{v}");
    for ws in [&mut open0, &mut open1] {
        assert_eq!(
            ws.close_code(Duration::from_secs(2)).await,
            Some(4401),
            "an open socket of a revoked user is closed at once"
        );
    }
    for t in [&erin.token, &second, &legacy] {
        for h in [&h0, &h1] {
            let (s, v) = h.call(Method::GET, "/api/rooms", Some(t), None).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{v}"
            );
        }
        let (s, _) = h0
            .call(Method::POST, "/api/logout-all", Some(t), None)
            .await;
        assert_eq!(s, 401);
        assert_eq!(hello_refused(chat.gw(1), t).await, Some(4401));
    }
    // A new login is of the new generation.
    let (s, v) = login(&h0, &erin.name).await;
    assert_eq!(s, 200, "{v}");
    let third = v["token"].as_str().expect("token").to_owned();
    let (s, v) = h1.call(Method::GET, "/api/rooms", Some(&third), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(hello_refused(chat.gw(0), &third).await, None);
    // Frank's tokens are his own.
    let (s, v) = h1
        .call(Method::GET, "/api/rooms", Some(&frank.token), None)
        .await;
    assert_eq!(s, 200, "{v}");
}

both_modes!(a_client_msg_id_is_per_room);
/// The same client_msg_id in two rooms is two messages, each delivered and stored in its
/// room; a resend in either room gets that room's message back.
async fn a_client_msg_id_is_per_room(mode: Mode) {
    let env = Env::with_mode("cmidroom", mode).await;
    let chat = env.start(2).await;
    let h = Http::new(chat.gw(0));
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let r1 = h.create_room(&alice, "one").await;
    let r2 = h.create_room(&alice, "two").await;
    h.join(&bob, &r1).await;
    h.join(&bob, &r2).await;
    let mut reader = Ws::login(chat.gw(1), &bob).await;
    reader.subscribe(&r1, None).await;
    reader.subscribe(&r2, None).await;
    let mut ws = Ws::login(chat.gw(0), &alice).await;

    let mut acked = Vec::new();
    for (room, body) in [(&r1, "in one"), (&r2, "in two")] {
        let m = send_acked(&mut ws, room, "same", body).await;
        assert_eq!(m["room"], room.as_str(), "{m}");
        assert_eq!(m["body"], body, "{m}");
        acked.push(m);
    }
    assert_ne!(acked[0]["id"], acked[1]["id"]);
    // Each delivered, in its room.
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        let m = reader
            .message_within(Duration::from_secs(15))
            .await
            .expect("both messages delivered");
        delivered.push(m["message"].clone());
    }
    for a in &acked {
        assert!(
            delivered
                .iter()
                .any(|d| d["id"] == a["id"] && d["room"] == a["room"]),
            "{a} not delivered: {delivered:?}"
        );
    }
    // Resends get their own room's message.
    for (i, room) in [&r1, &r2].into_iter().enumerate() {
        let m = send_acked(&mut ws, room, "same", "again").await;
        assert_eq!(m["id"], acked[i]["id"], "{m}");
    }
    // Each in its room's history (distributed: once the consumer has stored it).
    for (i, room) in [&r1, &r2].into_iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = h
                .call(
                    Method::GET,
                    &format!("/api/rooms/{room}/messages"),
                    Some(&alice.token),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            let msgs = v["messages"].as_array().cloned().unwrap_or_default();
            if !msgs.is_empty() {
                assert_eq!(msgs.len(), 1, "{v}");
                assert_eq!(msgs[0]["id"], acked[i]["id"], "{v}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not stored: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

both_modes!(reopening_a_dm_one_left_rejoins_it);
/// Leaving a DM and opening it again with `POST /api/dms` makes one a member again (was:
/// "member" in the answer, 403 on the history), announced like a join.
async fn reopening_a_dm_one_left_rejoins_it(mode: Mode) {
    let env = Env::with_mode("dmrejoin", mode).await;
    let chat = env.start(2).await;
    let (h0, h1) = (Http::new(chat.gw(0)), Http::new(chat.gw(1)));
    let alice = h0.register("alice").await;
    let bob = h1.register("bob").await;
    let (s, dm) = h0
        .call(
            Method::POST,
            "/api/dms",
            Some(&alice.token),
            Some(json!({"user": bob.id})),
        )
        .await;
    assert_eq!(s, 201, "{dm}");
    let dm = dm["id"].as_str().expect("id").to_owned();
    let mut wb = Ws::login(chat.gw(1), &bob).await;
    wb.subscribe(&dm, None).await;
    let history = format!("/api/rooms/{dm}/messages");

    let (s, v) = h0
        .call(
            Method::POST,
            &format!("/api/rooms/{dm}/leave"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let left = wb.expect("member").await;
    assert_eq!(left["event"], "left", "{left}");
    let (s, _) = h0
        .call(Method::GET, &history, Some(&alice.token), None)
        .await;
    assert_eq!(s, 403);

    let (s, v) = h0
        .call(
            Method::POST,
            "/api/dms",
            Some(&alice.token),
            Some(json!({"user": bob.id})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["id"].as_str(), v["member"].as_bool()),
        (Some(dm.as_str()), Some(true))
    );
    let (s, v) = h0
        .call(Method::GET, &history, Some(&alice.token), None)
        .await;
    assert_eq!(s, 200, "history after re-opening: {v}");
    let joined = wb.expect("member").await;
    assert_eq!(
        (joined["event"].as_str(), joined["user"]["id"].as_str()),
        (Some("joined"), Some(alice.id.as_str()))
    );
    // And she can talk there again.
    let mut wa = Ws::login(chat.gw(0), &alice).await;
    wa.subscribe(&dm, None).await;
    wa.send(json!({"type": "send", "room": dm, "client_msg_id": "back", "body": "back"}))
        .await;
    wa.expect("ack").await;
    let m = wb
        .message_within(Duration::from_secs(15))
        .await
        .expect("delivered");
    assert_eq!(m["message"]["body"], "back");
    // Opening it again while a member changes nothing and announces nothing.
    let (s, _) = h0
        .call(
            Method::POST,
            "/api/dms",
            Some(&alice.token),
            Some(json!({"user": bob.id})),
        )
        .await;
    assert_eq!(s, 200);
    if let Some(v) = wb.next_within(Duration::from_millis(500)).await {
        assert_ne!(v["type"], "member", "{v}");
    }
}

both_modes!(names_are_unique_by_unicode_case_and_invisible_characters_refused);
/// Room names and usernames are unique by NFKC + Unicode case folding in both backends
/// (SQLite's lower() folded ASCII only), and names with control, bidi or zero-width
/// characters are refused with `invalid_characters`.
async fn names_are_unique_by_unicode_case_and_invisible_characters_refused(mode: Mode) {
    let env = Env::with_mode("names", mode).await;
    let chat = env
        .start_with(1, &["--room-create-per-minute", "1000"])
        .await;
    let h = Http::new(chat.gw(0));
    let alice = h.register("alice").await;
    h.create_room(&alice, "Ärger").await;
    for same in ["ärger", "ÄRGER", "A\u{308}rger", " ärger  "] {
        let (s, v) = new_room(&h, &alice, same).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("room_name_taken")),
            "{same:?}: {v}"
        );
    }
    h.create_room(&alice, "ﬁsh").await;
    let (s, _) = new_room(&h, &alice, "FISH").await;
    assert_eq!(s, 409);
    for bad in [
        "\u{202E}evil",
        "ev\u{202E}il",
        "a\u{200B}b",
        "\u{200B}",
        "\u{2066}x\u{2069}",
        "zw\u{200D}j",
        "\u{FEFF}bom",
        "lrm\u{200E}",
        "arabic\u{61C}mark",
        "tab\there",
        "soft\u{AD}hyphen",
    ] {
        let (s, v) = new_room(&h, &alice, bad).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_characters")),
            "{bad:?}: {v}"
        );
        let (s, v) = h
            .call(
                Method::POST,
                "/api/register",
                None,
                Some(json!({"username": format!("u{bad}x"), "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_characters")),
            "{bad:?}: {v}"
        );
    }

    // Usernames: any case or normalisation of the name finds (and takes) the account.
    let upper = alice.name.to_uppercase();
    let wide: String = alice
        .name
        .chars()
        .map(|c| {
            char::from_u32(c as u32 - 0x21 + 0xFF01)
                .filter(|_| c.is_ascii_graphic())
                .unwrap_or(c)
        })
        .collect();
    for name in [&upper, &wide] {
        let (s, v) = login(&h, name).await;
        assert_eq!(s, 200, "login as {name:?}: {v}");
        assert_eq!(v["user"]["id"], alice.id.as_str(), "{v}");
        let (s, v) = h
            .call(
                Method::POST,
                "/api/register",
                None,
                Some(json!({"username": name, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("username_taken")),
            "{name:?}: {v}"
        );
    }
    // A full-width name is stored as its NFKC form.
    let (s, v) = h
        .call(
            Method::POST,
            "/api/register",
            None,
            Some(json!({"username": "ｚｅｄｚｅｄ", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(
        (s, v["user"]["name"].as_str()),
        (201, Some("zedzed")),
        "{v}"
    );
}

both_modes!(the_migration_keys_the_names_of_existing_rows);
/// A database of the first schema, with rows the old rules let in (`ﬁsh` and `FISH`; an
/// `Alice`; in SQLite, messages), migrated at start: the names are keyed in Rust (so
/// `ZÜRICH` is taken by `Zürich` in SQLite too), both old look-alikes stay, old tokens
/// are generation 0, and (embedded) the rebuilt messages table keeps rows and positions.
async fn the_migration_keys_the_names_of_existing_rows(mode: Mode) {
    let env = Env::with_mode("backfill", mode).await;
    let init = match mode {
        Mode::Distributed | Mode::Tls => {
            include_str!("../../migrations/postgres/2026-11-24-000001_init/up.sql")
        }
        Mode::Embedded => include_str!("../../migrations/sqlite/2026-11-24-000001_init/up.sql"),
    };
    let hash = {
        use argon2::password_hash::PasswordHasher as _;
        argon2::Argon2::default()
            .hash_password(b"correct horse battery")
            .expect("hash")
            .to_string()
    };
    let (u, r1, r2, r3) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    env.exec(&format!(
        "{init}
        CREATE TABLE __diesel_schema_migrations (
            version VARCHAR(50) PRIMARY KEY NOT NULL,
            run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
        INSERT INTO __diesel_schema_migrations (version) VALUES ('20261124000001');
        INSERT INTO users (id, name, password_hash) VALUES ('{u}', 'Alice', '{hash}');
        INSERT INTO rooms (id, name, kind, created_by) VALUES
            ('{r1}', 'ﬁsh', 'room', '{u}'), ('{r2}', 'FISH', 'room', '{u}'),
            ('{r3}', 'Zürich', 'room', '{u}');
        INSERT INTO memberships (room_id, user_id) VALUES ('{r1}', '{u}'), ('{r3}', '{u}');"
    ))
    .await;
    if mode == Mode::Embedded {
        env.exec(&format!(
            "INSERT INTO messages (id, room_id, sender_id, sender_name, client_msg_id, body, sent_at)
             VALUES ('{}', '{r3}', '{u}', 'Alice', 'c1', 'old one', '2026-01-01T00:00:00.000Z'),
                    ('{}', '{r3}', '{u}', 'Alice', 'c2', 'old two', '2026-01-01T00:00:01.000Z');",
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7()
        ))
        .await;
    }
    let chat = env.start(1).await;
    let h = Http::new(chat.gw(0));
    let (s, v) = login(&h, "ALICE").await;
    assert_eq!(s, 200, "{v}");
    let alice = Account {
        id: u.to_string(),
        name: "Alice".into(),
        token: v["token"].as_str().expect("token").to_owned(),
    };
    // A token of the old format still works (generation 0).
    let (s, list) = h
        .call(Method::GET, "/api/rooms", Some(&legacy_token(&alice)), None)
        .await;
    assert_eq!(s, 200, "{list}");
    let names: HashSet<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, HashSet::from(["ﬁsh", "FISH", "Zürich"]));
    for taken in ["ZÜRICH", "zürich", "fish", "Fish"] {
        let (s, v) = new_room(&h, &alice, taken).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("room_name_taken")),
            "{taken}: {v}"
        );
    }
    h.create_room(&alice, "fishes").await;

    if mode == Mode::Embedded {
        let (s, v) = h
            .call(
                Method::GET,
                &format!("/api/rooms/{r3}/messages"),
                Some(&alice.token),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let positions: Vec<i64> = v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["position"].as_i64())
            .collect();
        assert_eq!(positions, vec![1, 2], "{v}");
        let mut ws = Ws::login(chat.gw(0), &alice).await;
        // The old key (sender, client_msg_id) is gone: c1 in another room is new...
        ws.send(json!({"type": "send", "room": r1, "client_msg_id": "c1", "body": "new"}))
            .await;
        let ack = ws.expect("ack").await;
        assert_eq!(ack["message"]["position"], 3, "{ack}");
        // ... and the same room's c1 is still the old message.
        ws.send(json!({"type": "send", "room": r3, "client_msg_id": "c1", "body": "again"}))
            .await;
        let ack = ws.expect("ack").await;
        assert_eq!(
            (
                ack["message"]["position"].as_i64(),
                ack["message"]["body"].as_str()
            ),
            (Some(1), Some("old one")),
            "{ack}"
        );
    }
}

both_modes!(concurrent_writes_all_succeed);
/// Writes that read first (room creation checks the creator's count, then inserts) do not
/// fail when others write at the same moment: SQLite cannot upgrade a deferred read
/// transaction after another connection wrote ("database is locked" at once, whatever the
/// busy timeout), so its write transactions take the write lock first (`BEGIN IMMEDIATE`).
async fn concurrent_writes_all_succeed(mode: Mode) {
    let env = Env::with_mode("concurrentwrites", mode).await;
    let chat = env
        .start_with(
            1,
            &[
                "--register-rate-per-address",
                "1000",
                "--register-burst-per-address",
                "1000",
            ],
        )
        .await;
    let h = Http::new(chat.gw(0));
    let mut users = Vec::new();
    for _ in 0..12 {
        users.push(h.register("cw").await);
    }
    let mut creating = tokio::task::JoinSet::new();
    for (i, u) in users.iter().enumerate() {
        for j in 0..3 {
            let (h, token) = (h.clone(), u.token.clone());
            creating.spawn(async move {
                let (s, _, v) = raw(
                    &h,
                    Method::POST,
                    "/api/rooms",
                    Some(&token),
                    Some(json!({"name": format!("cw-{i}-{j}")})),
                )
                .await;
                (s, v)
            });
        }
    }
    let mut created = 0;
    while let Some(r) = creating.join_next().await {
        let (s, v) = r.expect("task");
        assert_eq!(s, 201, "create room: {v}");
        created += 1;
    }
    assert_eq!(created, 36);
}
