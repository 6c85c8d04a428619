//! The persist worker under restarts: no row lost, none duplicated.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Env, Http, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_stream_neither_loses_nor_duplicates() {
    let env = Env::new("consumer-restart").await;
    let gw = env.spawn("gateway", "gw-m").await;
    let mut consumer = env.spawn("consumer", "consumer-1").await;
    let h = Http::new(&gw);
    let alice = h.register("alice").await;
    let mut rooms = Vec::new();
    for i in 0..6 {
        rooms.push(h.create_room(&alice, &format!("r{i}")).await);
    }
    let mut ws = Ws::login(&gw, &alice).await;
    const N: usize = 600;
    let mut acked = 0;
    for i in 0..N {
        let room = &rooms[i % rooms.len()];
        ws.send(json!({"type": "send", "room": room, "client_msg_id": format!("c{i}"), "body": format!("n{i}")}))
            .await;
        if i % 50 == 49 {
            // keep the pipeline short: collect acks
            while acked <= i {
                ws.expect("ack").await;
                acked += 1;
            }
        }
        if i == N / 3 {
            consumer.kill9().await;
        }
        if i == N / 2 {
            consumer = env.spawn("consumer", "consumer-2").await;
        }
    }
    while acked < N {
        ws.expect("ack").await;
        acked += 1;
    }
    let n = env
        .wait_count(
            "SELECT count(*) AS n FROM messages",
            N as i64,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(n, N as i64, "rows lost");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM messages").await,
        N as i64
    );
    assert_eq!(
        env.count("SELECT count(DISTINCT (sender_id, client_msg_id)) AS n FROM messages")
            .await,
        N as i64
    );
    // A second consumer next to the first: the offset compare-and-set fences one of them,
    // and still nothing is written twice.
    let _other = env.spawn("consumer", "consumer-3").await;
    for i in N..N + 100 {
        let room = &rooms[i % rooms.len()];
        ws.send(
            json!({"type": "send", "room": room, "client_msg_id": format!("c{i}"), "body": "x"}),
        )
        .await;
        ws.expect("ack").await;
    }
    let n = env
        .wait_count(
            "SELECT count(*) AS n FROM messages",
            N as i64 + 100,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(n, N as i64 + 100);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM messages").await,
        N as i64 + 100
    );
}
