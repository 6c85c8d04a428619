//! What only the embedded mode has: it keeps everything across a restart, and it refuses
//! what only makes sense distributed.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Env, Http, Mode, Ws};

/// Users, rooms, memberships, history, positions and tokens survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_users_rooms_and_history() {
    let env = Env::with_mode("restart", Mode::Embedded).await;
    let chat = env.start(1).await;
    let h = Http::new(chat.gw(0));
    let alice = h.register("alice").await;
    let room = h.create_room(&alice, "durable").await;
    let mut ws = Ws::login(chat.gw(0), &alice).await;
    let mut acked = Vec::new();
    for i in 0..3 {
        ws.send(json!({"type": "send", "room": room, "client_msg_id": format!("k{i}"), "body": format!("kept {i}")}))
            .await;
        acked.push(ws.expect("ack").await["message"].clone());
    }
    drop(ws);
    chat.stop().await;

    let chat = env.start(1).await;
    let h = Http::new(chat.gw(0));
    // The same password logs in, and the old token still works (the secret was kept).
    let (s, v) = h
        .call(
            reqwest::Method::POST,
            "/api/login",
            None,
            Some(json!({"username": alice.name, "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(s, 200, "login after restart: {v}");
    let mut ws = Ws::login(chat.gw(0), &alice).await;
    let (s, rooms) = h
        .call(reqwest::Method::GET, "/api/rooms", Some(&alice.token), None)
        .await;
    assert_eq!(s, 200, "{rooms}");
    assert!(
        rooms.as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["id"] == room.as_str() && r["member"] == true)),
        "{rooms}"
    );
    let (s, hist) = h
        .call(
            reqwest::Method::GET,
            &format!("/api/rooms/{room}/messages"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{hist}");
    assert_eq!(hist["messages"].as_array().map(Vec::len), Some(3), "{hist}");
    assert_eq!(hist["messages"][2]["id"], acked[2]["id"]);
    assert_eq!(hist["messages"][2]["position"], acked[2]["position"]);
    // Recovery from before the restart, then a resend of an old client_msg_id, then new.
    let backlog = ws.subscribe(&room, Some(-1)).await;
    assert_eq!(backlog.len(), 3);
    ws.send(json!({"type": "send", "room": room, "client_msg_id": "k0", "body": "again"}))
        .await;
    let again = ws.expect("ack").await;
    assert_eq!(
        again["message"], acked[0],
        "a resend after a restart is still one message"
    );
    ws.send(json!({"type": "send", "room": room, "client_msg_id": "new", "body": "after"}))
        .await;
    // The ack and the sender's own copy of the message may come in either order.
    let (mut new, mut live) = (None, None);
    while new.is_none() || live.is_none() {
        let v = ws.next().await;
        match v["type"].as_str() {
            Some("ack") => new = Some(v["message"].clone()),
            Some("message") => live = Some(v["message"].clone()),
            _ => {}
        }
    }
    let (new, live) = (new.unwrap_or_default(), live.unwrap_or_default());
    assert!(new["position"].as_i64() > acked[2]["position"].as_i64());
    assert_eq!(live["id"], new["id"]);
    assert!(ws
        .message_within(Duration::from_millis(300))
        .await
        .is_none());
}

/// `--role gateway|consumer` and mixed setups without all the services are refused at
/// start with one line naming the problem.
#[tokio::test]
async fn split_roles_and_mixed_setups_are_refused() {
    let cases: [(&[&str], &str); 3] = [
        (&["serve", "--role", "gateway"], "--role"),
        (&["serve", "--role", "consumer"], "--role"),
        (
            &["serve", "--database-url", "postgres://u:p@127.0.0.1:1/x"],
            "REDIS_URL, KAFKA_BROKERS",
        ),
    ];
    for (args, names) in cases {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_NODES")
            .env_remove("KAFKA_BROKERS")
            .output()
            .await
            .expect("run chat");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    }
}
