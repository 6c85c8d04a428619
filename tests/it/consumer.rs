//! The consumer role under restarts and kills: no row lost, none duplicated; partition
//! leases spread fairly and move to survivors.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Env, Http, Mode, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_stream_neither_loses_nor_duplicates() {
    consumer_killed_mid_stream(Mode::Distributed).await
}

/// The same over TLS with authentication to PostgreSQL and Redis (the TLS profile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_stream_neither_loses_nor_duplicates_over_tls() {
    consumer_killed_mid_stream(Mode::Tls).await
}

async fn consumer_killed_mid_stream(mode: Mode) {
    let env = Env::with_mode("consumer-restart", mode).await;
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
            "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')",
            N as i64,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(n, N as i64, "rows lost");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')")
            .await,
        N as i64
    );
    assert_eq!(
        env.count("SELECT count(DISTINCT (sender_id, client_msg_id)) AS n FROM messages WHERE kind NOT IN ('member', 'room')")
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
            "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')",
            N as i64 + 100,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(n, N as i64 + 100);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')")
            .await,
        N as i64 + 100
    );
}

/// The partitions a consumer owns, from its /metrics.
async fn owned(p: &crate::harness::Proc) -> Option<i64> {
    let text = reqwest::get(p.url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("chat_consumer_partitions_owned "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
}

/// Polls until `p` owns `want` partitions; returns how long it took.
async fn until_owned(p: &crate::harness::Proc, want: i64, within: Duration) -> Duration {
    let t0 = std::time::Instant::now();
    loop {
        let got = owned(p).await;
        if got == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "owns {got:?}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Leases: two consumers split the partitions; when one is killed the survivor takes its
/// partitions over within seconds and live delivery resumes with nothing lost or
/// repeated; a third joins and gets its share; a drained one hands its share back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_leased_fairly_and_move_when_a_consumer_dies() {
    let env = Env::new("leases").await;
    let gw = env.spawn("gateway", "gw-m").await;
    let mut a = env.spawn("consumer", "consumer-a").await;
    let b = env.spawn("consumer", "consumer-b").await;
    until_owned(&b, 2, Duration::from_secs(15)).await;
    until_owned(&a, 2, Duration::from_secs(15)).await;

    let h = Http::new(&gw);
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let mut rooms = Vec::new();
    for i in 0..8 {
        let r = h.create_room(&alice, &format!("l{i}")).await;
        h.join(&bob, &r).await;
        rooms.push(r);
    }
    let mut reader = Ws::login(&gw, &bob).await;
    for r in &rooms {
        reader.subscribe(r, None).await;
    }
    let mut ws = Ws::login(&gw, &alice).await;
    const N: usize = 400;
    let mut takeover = Duration::ZERO;
    for i in 0..N {
        let room = &rooms[i % rooms.len()];
        ws.send(json!({"type": "send", "room": room, "client_msg_id": format!("c{i}"), "body": format!("n{i}")}))
            .await;
        ws.expect("ack").await;
        if i == N / 4 {
            a.kill9().await;
            takeover = until_owned(&b, 4, Duration::from_secs(15)).await;
        }
    }
    // Every message reaches the reader once, in order per room.
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N {
        let m = reader
            .message_within(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("only {} of {N} delivered", seen.len()));
        let m = &m["message"];
        let room = m["room"].as_str().unwrap_or_default().to_owned();
        let pos = m["position"].as_i64().unwrap_or(-1);
        assert!(
            pos > *last.get(&room).unwrap_or(&-1),
            "out of order in {room}"
        );
        last.insert(room, pos);
        assert!(seen.insert(m["id"].to_string()), "delivered twice: {m}");
    }
    let n = env
        .wait_count(
            "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')",
            N as i64,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(n, N as i64);
    eprintln!("leases: the survivor owned all partitions {takeover:?} after the kill");

    // A new consumer gets its share; a drained one gives it back without waiting for expiry.
    let mut c = env.spawn("consumer", "consumer-c").await;
    until_owned(&c, 2, Duration::from_secs(15)).await;
    until_owned(&b, 2, Duration::from_secs(15)).await;
    let t0 = std::time::Instant::now();
    assert!(c.terminate().await.success());
    let back = until_owned(&b, 4, Duration::from_secs(15)).await;
    eprintln!(
        "leases: after SIGTERM the survivor owned all again in {:?}",
        t0.elapsed()
    );
    assert!(
        back < Duration::from_secs(5),
        "a drained consumer's leases had to expire"
    );
}
