//! The `Log` seam: the durable, ordered record of every message. An append that returns
//! a position is the proof of durability the sender's ack stands on.
//!
//! Kafka (`kafka/`: `KafkaLog`, on rskafka) is the distributed backend: a room maps to one
//! partition ([`partition_of`]), and a message's position is its offset there. The
//! embedded mode uses the SQLite store's messages table (`store::SqliteLog`): one
//! partition, position = the row's order.
//!
//! Readers (relay, persist, recovery) each get their own [`LogReader`] with its own broker
//! connection: Kafka answers the requests of one connection in order, so a long-polling
//! fetch would otherwise hold up every produce and fetch queued behind it.

pub mod kafka;

pub use kafka::KafkaLog;

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::model::{Message, NewMessage, RoomId};

/// A submitted append: resolves once the message is durable, with its position.
pub type Appending = BoxFuture<'static, Result<Message, LogError>>;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Broker unreachable or too slow: the append may or may not have happened.
    #[error("message log unavailable: {0}")]
    Unavailable(String),
    /// The offset was deleted by retention (or is beyond the end).
    #[error("offset {offset} is out of range")]
    OutOfRange { offset: i64 },
    /// An event refused where it is applied (the embedded log, which is the store):
    /// nothing was written.
    #[error("{0}")]
    Refused(crate::events::RuleError),
    #[error("message log error: {0}")]
    Other(String),
}

impl LogError {
    pub fn retryable(&self) -> bool {
        matches!(self, LogError::Unavailable(_))
    }

    /// The same error for another waiter of one failed request (same kind and text).
    pub fn duplicate(&self) -> LogError {
        match self {
            LogError::Unavailable(m) => LogError::Unavailable(m.clone()),
            LogError::OutOfRange { offset } => LogError::OutOfRange { offset: *offset },
            LogError::Refused(r) => LogError::Refused(r.clone()),
            LogError::Other(m) => LogError::Other(m.clone()),
        }
    }
}

/// One record read back from the log. `message` is None for a record that is not a
/// `chat` message (written by something else, or by a newer incompatible version).
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub offset: i64,
    pub message: Option<Message>,
}

#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    pub records: Vec<LogRecord>,
    /// The offset to read next.
    pub next_offset: i64,
    /// The partition's end: the offset the next appended record will get.
    pub high_watermark: i64,
}

/// How a tailing reader ([`Log::tail`]) paces its reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pace {
    /// On the real-time path (relay): a read returns as soon as there is a record.
    Live,
    /// Off it (persist): a read may wait (up to its `max_wait`) until about
    /// [`BATCH_BYTES`] are there, so its worker takes fewer, larger batches.
    Batch,
}

/// What a [`Pace::Batch`] read waits for.
pub const BATCH_BYTES: usize = 256 * 1024;

#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// The log's name: the Kafka topic, or `embedded`. The store keeps its persisted
    /// positions under it.
    fn topic(&self) -> &str;
    fn partitions(&self) -> i32;
    /// Durable once this returns: the message's position is the proof.
    async fn append(&self, msg: &NewMessage) -> Result<Message, LogError> {
        self.submit(msg).await?.await
    }
    /// Queues the message and returns the wait for its position. Messages submitted one
    /// after the other (each `submit` awaited before the next) take positions in that
    /// order, even while their [`Appending`] futures are awaited together: this is what
    /// lets one connection have several sends in flight and still keep its order.
    async fn submit(&self, msg: &NewMessage) -> Result<Appending, LogError>;
    /// A reader of one partition with its own connection (recovery).
    async fn reader(&self, partition: i32) -> Result<Box<dyn LogReader>, LogError>;
    /// A reader for a worker that follows one partition in order (relay, persist). Tails
    /// of the same pace may share their fetches (Kafka: one request for many partitions).
    async fn tail(&self, partition: i32, pace: Pace) -> Result<Box<dyn LogReader>, LogError>;
    /// The offset the partition's next record will get (a short request on a shared
    /// connection: no reader needed).
    async fn end(&self, partition: i32) -> Result<i64, LogError>;
    async fn ping(&self) -> Result<(), LogError>;
}

#[async_trait]
pub trait LogReader: Send + Sync {
    /// Records from `offset` on, waiting up to `max_wait` until there are any (a tail of
    /// [`Pace::Batch`] may wait longer within `max_wait` for a fuller batch). An empty
    /// batch after `max_wait` is not an error.
    async fn read(&self, offset: i64, max_wait: Duration) -> Result<LogBatch, LogError>;
    /// The oldest offset still held.
    async fn earliest(&self) -> Result<i64, LogError>;
    /// The offset the next appended record will get.
    async fn latest(&self) -> Result<i64, LogError>;
}

/// The partition a room's messages go to: a stable hash (FNV-1a over the room id's
/// bytes), so every gateway and consumer agrees without coordination. Changing the
/// partition count moves rooms: it is fixed when the topic is created.
pub fn partition_of(room: RoomId, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as i32
}

/// What a record's value holds: the message without its position (the offset is that).
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    /// Format version of this payload.
    v: u32,
    #[serde(flatten)]
    message: NewMessage,
}

pub(crate) fn encode(msg: &NewMessage) -> Vec<u8> {
    #[derive(Serialize)]
    struct PayloadRef<'a> {
        v: u32,
        #[serde(flatten)]
        message: &'a NewMessage,
    }
    // v2: an event record (edit, delete, reaction). A reader of v1 only skips it as "not
    // a chat message" rather than taking it for a message (rolling upgrades).
    let v = if msg.change.is_some() { 2 } else { 1 };
    serde_json::to_vec(&PayloadRef { v, message: msg }).unwrap_or_default()
}

pub(crate) fn decode(bytes: &[u8], offset: i64) -> Option<Message> {
    let p: Payload = serde_json::from_slice(bytes).ok()?;
    let ok = match p.v {
        1 => p.message.change.is_none(),
        2 => p.message.change.is_some(),
        _ => false,
    };
    ok.then(|| p.message.at(offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;
    use uuid::Uuid;

    #[test]
    fn partition_is_stable_and_in_range() {
        let room = Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        let p = partition_of(room, 8);
        assert_eq!(p, partition_of(room, 8));
        assert!((0..8).contains(&p));
        let mut seen = [0; 8];
        for _ in 0..800 {
            seen[partition_of(Uuid::new_v4(), 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 40), "{seen:?}");
    }

    #[test]
    fn payload_roundtrip() {
        let m = NewMessage {
            id: Uuid::new_v4(),
            room: Uuid::new_v4(),
            sender: User {
                id: Uuid::new_v4(),
                name: "ann".into(),
            },
            body: "hé <b>".into(),
            client_msg_id: "c-1".into(),
            sent_at: chrono::Utc::now(),
            reply_to: None,
            mentions: Vec::new(),
            change: None,
        };
        let got = decode(&encode(&m), 42).unwrap();
        assert_eq!(got, m.clone().at(42));
        assert!(decode(b"garbage", 1).is_none());
        // Events are v2 records; a v1 record never carries a change.
        let e = NewMessage {
            change: Some(crate::model::Change::Delete {
                message_id: Uuid::new_v4(),
            }),
            ..m.clone()
        };
        let bytes = encode(&e);
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .starts_with(r#"{"v":2,"#));
        assert_eq!(decode(&bytes, 43).unwrap(), e.clone().at(43));
        let forged = String::from_utf8(bytes)
            .unwrap()
            .replace(r#""v":2"#, r#""v":1"#);
        assert!(decode(forged.as_bytes(), 43).is_none());
    }
}
