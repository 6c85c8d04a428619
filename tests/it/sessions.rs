//! Session rules: hello first, errors as frames, membership, limits.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::both_modes;
use crate::harness::{Env, Http, Mode, Ws};

both_modes!(session_rules_and_errors);
async fn session_rules_and_errors(mode: Mode) {
    let env = Env::with_mode("sessions", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let h = Http::new(gw);

    // Anything before hello closes with 4401; so does a bad token.
    let mut ws = Ws::connect(gw).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(4401));
    let mut ws = Ws::connect(gw).await;
    ws.send(json!({"type": "hello", "token": "forged"})).await;
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(4401));

    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let room = h.create_room(&alice, "private-ish").await;
    let mut ws = Ws::login(gw, &bob).await;
    // Malformed frames are answered, and the session goes on.
    ws.send_raw(WsMessage::Text("{not json".into())).await;
    assert_eq!(ws.expect("error").await["code"], "bad_frame");
    ws.send(json!({"type": "dance"})).await;
    let e = ws.next().await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("unknown_type"), Some("dance"))
    );
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await["type"], "pong");
    // Not a member: refused.
    ws.send(json!({"type": "subscribe", "room": room})).await;
    assert_eq!(ws.next().await["code"], "not_member");
    ws.send(json!({"type": "send", "room": room, "client_msg_id": "x1", "body": "hi"}))
        .await;
    let e = ws.next().await;
    assert_eq!(
        (
            e["code"].as_str(),
            e["ref"].as_str(),
            e["retryable"].as_bool()
        ),
        (Some("not_member"), Some("x1"), Some(false))
    );
    // Bad input.
    h.join(&bob, &room).await;
    ws.send(json!({"type": "send", "room": room, "client_msg_id": "x2", "body": "   "}))
        .await;
    // (The join also tells bob's connections `rooms_changed`: skipped.)
    assert_eq!(ws.expect_error().await["code"], "empty_body");
    ws.send(json!({"type": "send", "room": room, "client_msg_id": "x3", "body": "y".repeat(4001)}))
        .await;
    assert_eq!(ws.next().await["code"], "body_too_long");
    // Oversize frame: 1009.
    ws.send_raw(WsMessage::Text("z".repeat(70 * 1024).into()))
        .await;
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(1009));

    // HTTP errors have the protocol's shape.
    let (s, v) = h.call(reqwest::Method::GET, "/api/rooms", None, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, v) = h
        .call(
            reqwest::Method::POST,
            "/api/register",
            None,
            Some(json!({"username": alice.name, "password": "another password"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("username_taken"))
    );
    let (s, v) = h
        .call(
            reqwest::Method::POST,
            "/api/login",
            None,
            Some(json!({"username": alice.name, "password": "wrong password"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (s, _) = h
        .call(
            reqwest::Method::POST,
            "/api/login",
            None,
            Some(json!({"username": alice.name, "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = h.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(s, 200, "{v}");
}

both_modes!(rate_limit_answers_retryable_errors);
async fn rate_limit_answers_retryable_errors(mode: Mode) {
    let env = Env::with_mode("ratelimit", mode).await;
    let chat = env
        .start_with(1, &["--send-rate-per-sec", "20", "--send-rate-burst", "40"])
        .await;
    let gw = chat.gw(0);
    let h = Http::new(gw);
    let alice = h.register("alice").await;
    let room = h.create_room(&alice, "flood").await;
    let mut ws = Ws::login(gw, &alice).await;
    for i in 0..60 {
        ws.send(
            json!({"type": "send", "room": room, "client_msg_id": format!("f{i}"), "body": "spam"}),
        )
        .await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 60 {
        let v = ws.next().await;
        match v["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited");
                assert_eq!(v["retryable"], true);
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(acks >= 40 && limited >= 1, "acks {acks}, limited {limited}");
}

both_modes!(connections_the_client_drops_are_released);
/// A client that goes away (no close handshake, or a close frame) must not leave its
/// session, socket and file descriptor behind (they once stayed in CLOSE-WAIT forever).
async fn connections_the_client_drops_are_released(mode: Mode) {
    let env = Env::with_mode("release", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let h = Http::new(gw);
    let alice = h.register("alice").await;
    let room = h.create_room(&alice, "leaky").await;
    let open = || h.metric("chat_connections");
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut ws = Ws::login(gw, &alice).await;
        ws.send(json!({"type": "subscribe", "room": room})).await;
        ws.expect("subscribed").await;
        conns.push(ws);
    }
    assert_eq!(open().await, 10.0);
    // Half say goodbye properly, half just drop the TCP connection.
    for (i, mut ws) in conns.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = ws.stream.close(None).await;
        }
        drop(ws);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = open().await;
        if n == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} connections still open 10 s after their clients left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both_modes!(a_client_that_stops_reading_is_cut_off);
/// A subscriber that stops reading while its room is busy is disconnected (1008) once
/// its outgoing queue is full, instead of the gateway buffering for it without bound;
/// the sender is not slowed down by it. One that never reads again (and never closes)
/// does not keep its session either.
async fn a_client_that_stops_reading_is_cut_off(mode: Mode) {
    let env = Env::with_mode("slow", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let h = Http::new(gw);
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let room = h.create_room(&alice, "firehose").await;
    h.join(&bob, &room).await;
    let carol = h.register("carol").await;
    h.join(&carol, &room).await;
    let mut slow = Ws::login(gw, &bob).await;
    slow.subscribe(&room, None).await;
    // Carol stops reading too, and never reads again nor closes her socket.
    let mut silent = Ws::login(gw, &carol).await;
    silent.subscribe(&room, None).await;
    let kicked = || async { h.metric("chat_slow_clients_disconnected_total").await >= 2.0 };
    // Bob reads nothing from here on. Alice floods the room with large messages, in
    // rounds of 50 (reading her own answers, so she is not a slow client herself), until
    // the gateway gives up on Bob: his socket buffers, then the 1,024-frame queue fill.
    let mut sender = Ws::login(gw, &alice).await;
    let body = "x".repeat(3_000);
    let mut acked = 0;
    let mut round = 0;
    while !kicked().await {
        round += 1;
        assert!(round <= 400, "not cut off after {acked} acked messages");
        for i in 0..50 {
            sender
                .send(json!({"type": "send", "room": room, "client_msg_id": format!("f{round}-{i}"), "body": body}))
                .await;
        }
        for _ in 0..50 {
            let v = sender.next().await;
            if v["type"] == "ack" {
                acked += 1;
            }
        }
    }
    // Now Bob reads: what was buffered for him, then the close, and fewer messages than
    // were sent.
    let mut got = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.stream.next()).await {
            Ok(Some(Ok(WsMessage::Text(_)))) => got += 1,
            Ok(Some(Ok(WsMessage::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("socket error before the close frame: {e}"),
            Ok(None) => panic!("socket ended without a close frame"),
            Err(_) => panic!("no close within 20 s after {got} frames"),
        }
    };
    assert_eq!(code, Some(1008), "close code after {got} frames");
    assert!(got < acked, "got {got} of {acked}: not cut off");
    // Carol's session is let go although her client neither reads nor closes (its close
    // frame cannot get through): only Alice's connection stays.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.metric("chat_connections").await > 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a client that reads nothing still holds its session 30 s after the cutoff"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(silent);
}

both_modes!(upgrades_are_checked_and_refusals_answered_over_http);
/// The WebSocket upgrade leaves the HTTP/1 dispatcher with its socket (src/http/server.rs);
/// the gateway's checks still run on it, and a refused upgrade gets its HTTP answer (status
/// and JSON error), not a dropped connection. A browser on another site is refused
/// (cross-site WebSocket hijacking); the gateway's own page is not.
async fn upgrades_are_checked_and_refusals_answered_over_http(mode: Mode) {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error as WsError};

    let env = Env::with_mode("upgrade", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let h = Http::new(gw);
    let alice = h.register("alice").await;
    let refused = |path: &'static str, origin: &'static str| {
        let mut req = format!("ws://{}{path}", gw.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("origin", origin.parse().expect("origin"));
        async move {
            match tokio_tungstenite::connect_async(req).await {
                Err(WsError::Http(res)) => {
                    let body = res.body().clone().unwrap_or_default();
                    let body: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    (res.status().as_u16(), body)
                }
                Err(e) => panic!("{path} from {origin}: {e}"),
                Ok(_) => panic!("{path} from {origin}: upgraded"),
            }
        }
    };
    let (status, body) = refused("/ws", "http://evil.example").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    let (status, _) = refused("/no-such-socket", "http://evil.example").await;
    assert_eq!(status, 404);

    // A request that is no WebSocket handshake but says `Upgrade: websocket` still gets its
    // answer, even from a handler that reads the body (it once waited for the body forever,
    // holding the connection).
    let raw = |request: String| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(gw.addr.as_str())
            .await
            .expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&got).contains("101 Switching Protocols") {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let host = gw.addr.clone();
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let answer = raw(format!(
        "POST /api/login HTTP/1.1\r\nHost: {host}\r\n{upgrade}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    ))
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "POST with Upgrade: {answer:?}"
    );
    // A request pipelined in front of the handshake keeps its answer, in order.
    let answer = raw(format!(
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\nGET /ws HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n"
    ))
    .await;
    let (first, second) = (
        answer.find("HTTP/1.1 200").expect("healthz answered"),
        answer.find("HTTP/1.1 101").expect("then upgraded"),
    );
    assert!(first < second, "{answer:?}");

    // The gateway's own page may connect, and the session works over the upgraded socket.
    let mut req = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "origin",
        format!("http://{}", gw.addr).parse().expect("origin"),
    );
    let (stream, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("same-origin upgrade");
    assert_eq!(res.status().as_u16(), 101);
    let mut ws = Ws { stream };
    ws.send(json!({"type": "hello", "token": alice.token}))
        .await;
    ws.expect("welcome").await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await["type"], "pong");
    // A frame too large for the session closes it with 1009, and the close frame arrives.
    ws.send_raw(WsMessage::Text("x".repeat(200_000).into()))
        .await;
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(1009));
}
