//! Records that Kafka's own console producer wrote compressed (gzip, snappy, lz4, zstd):
//! read back through recovery (`subscribe{since}` while no consumer runs), the relay (live
//! delivery once a consumer starts) and persist (PostgreSQL rows).

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::harness::{Env, Http, Ws};

const ROWS: &str = "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')";

/// Writes `lines` (one record each) to `topic` with Kafka's console producer, compressed
/// with `codec`, acks=all.
async fn console_produce(brokers: &str, topic: &str, codec: &str, lines: &[String]) {
    let mut child = tokio::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
        .args([
            "kafka-class",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            brokers,
            "--topic",
            topic,
            "--compression-codec",
            codec,
            "--producer-property",
            "acks=all",
            "--producer-property",
            "linger.ms=50",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the console producer");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{}\n", lines.join("\n")).as_bytes())
        .await
        .expect("write records");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the console producer exits within 120 s")
        .expect("console producer output");
    assert!(
        out.status.success(),
        "console producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn compressed(codec: &str) {
    let mut env = Env::new(&format!("compressed-{codec}")).await;
    // One partition: the console producer's records land where chat reads the room.
    env.partitions = 1;
    let gw = env.spawn("gateway", "gw-m").await;
    let h = Http::new(&gw);
    let alice = h.register("alice").await;
    let room = h.create_room(&alice, codec).await;
    let mut live = Ws::login(&gw, &alice).await;
    live.subscribe(&room, None).await;
    // Offset 0: a message of chat's own.
    live.send(json!({"type": "send", "room": room, "client_msg_id": "own", "body": "own"}))
        .await;
    live.expect("ack").await;
    // Offsets 1-3: written compressed by Kafka's producer.
    let bodies: Vec<String> = (0..3).map(|i| format!("{codec} {i}")).collect();
    let lines: Vec<String> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            json!({
                "v": 1,
                "id": Uuid::now_v7(),
                "room": room,
                "sender": {"id": alice.id, "name": alice.name},
                "body": body,
                "client_msg_id": format!("console-{i}"),
                "sent_at": chrono::Utc::now().to_rfc3339(),
            })
            .to_string()
        })
        .collect();
    console_produce(&env.brokers, &env.topic, codec, &lines).await;

    // Recovery: no consumer has persisted anything, so the backlog comes from the log.
    let mut reader = Ws::login(&gw, &alice).await;
    let backlog = reader.subscribe(&room, Some(0)).await;
    let got: Vec<&str> = backlog.iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(got, bodies, "recovery of {codec} records");
    assert_eq!(backlog[0]["position"], 1, "{backlog:?}");

    // Relay and persist: a consumer starts and reads the partition from its start.
    let _consumer = env.spawn("consumer", "consumer").await;
    let mut relayed = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while relayed.len() < bodies.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = live.message_within(left).await else {
            panic!("relayed only {relayed:?} of the {codec} records within 60 s");
        };
        if let Some(b) = m["message"]["body"].as_str() {
            if b != "own" {
                relayed.push(b.to_owned());
            }
        }
    }
    assert_eq!(relayed, bodies, "relay of {codec} records");
    assert_eq!(env.wait_count(ROWS, 4, Duration::from_secs(60)).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_records_are_read_by_recovery_relay_and_persist() {
    compressed("gzip").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snappy_records_are_read_by_recovery_relay_and_persist() {
    compressed("snappy").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_records_are_read_by_recovery_relay_and_persist() {
    compressed("lz4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_records_are_read_by_recovery_relay_and_persist() {
    compressed("zstd").await
}

/// chat producing with `--kafka-compression codec`: the broker stores the batches in that
/// codec (Kafka's own log dump says so and reads the records), and chat reads them back
/// through the relay, persist and recovery.
async fn produced_compressed(codec: &str) {
    let mut env = Env::new(&format!("produce-{codec}")).await;
    env.partitions = 1;
    let gw = env
        .spawn_with("gateway", "gw-m", &["--kafka-compression", codec])
        .await;
    let _consumer = env.spawn("consumer", "consumer").await;
    let h = Http::new(&gw);
    let alice = h.register("alice").await;
    let room = h.create_room(&alice, codec).await;
    let mut live = Ws::login(&gw, &alice).await;
    live.subscribe(&room, None).await;
    // Another connection sends: `expect("ack")` skips the frames before the ack.
    let mut sender = Ws::login(&gw, &alice).await;
    // Once a first message comes through, the relay runs.
    sender
        .send(json!({"type": "send", "room": room, "client_msg_id": "warm", "body": "warm"}))
        .await;
    sender.expect("ack").await;
    let warm = live
        .message_within(Duration::from_secs(30))
        .await
        .expect("the relay delivers within 30 s");
    assert_eq!(warm["message"]["body"], "warm");
    let bodies: Vec<String> = (0..3).map(|i| format!("{codec} sent {i}")).collect();
    for (i, body) in bodies.iter().enumerate() {
        sender
            .send(json!({"type": "send", "room": room, "client_msg_id": format!("c{i}"), "body": body}))
            .await;
        sender.expect("ack").await;
    }
    let mut relayed = Vec::new();
    while relayed.len() < bodies.len() {
        let m = live
            .message_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("relayed only {relayed:?} within 30 s"));
        relayed.push(m["message"]["body"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(relayed, bodies, "relay");
    assert_eq!(env.wait_count(ROWS, 4, Duration::from_secs(60)).await, 4);
    let mut reader = Ws::login(&gw, &alice).await;
    let backlog = reader.subscribe(&room, Some(0)).await;
    let got: Vec<&str> = backlog.iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(got, bodies, "recovery");

    // What the broker stored: Kafka's log dump names the codec and decodes the records.
    let cache = std::env::var("CHAT_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/chat", std::env::var("HOME").unwrap_or_default()));
    let segment = format!(
        "{cache}/run/kafka/data/{}-0/00000000000000000000.log",
        env.topic
    );
    let out = tokio::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
        .args([
            "kafka-class",
            "kafka.tools.DumpLogSegments",
            "--deep-iteration",
            "--print-data-log",
            "--files",
            &segment,
        ])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the log dump within 120 s")
        .expect("run the log dump");
    let dump = String::from_utf8_lossy(&out.stdout);
    let want = format!("compresscodec: {codec} crc");
    assert!(dump.contains(&want), "no {want} in {dump}");
    assert!(!dump.contains("isvalid: false"), "{dump}");
    for body in &bodies {
        assert!(dump.contains(body.as_str()), "{body} not in {dump}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_produces_uncompressed_by_default() {
    produced_compressed("none").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_produces_gzip() {
    produced_compressed("gzip").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_produces_snappy() {
    produced_compressed("snappy").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_produces_lz4() {
    produced_compressed("lz4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_produces_zstd() {
    produced_compressed("zstd").await
}
