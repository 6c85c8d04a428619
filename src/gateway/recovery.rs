//! Gap-free recovery for `subscribe{since}`: every message of the room above `since`,
//! from the store up to what the persist worker has committed, and from the log's tail
//! beyond it. Complete while the consumer lags, and while PostgreSQL is down (then the
//! log alone is read from `since`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::log::{partition_of, Log, LogError, LogReader};
use crate::model::{Message, Position, RoomId};
use crate::store::Store;

/// Log records scanned (all rooms of the partition) before giving up.
const MAX_SCAN: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("more than {0} messages were missed; page the history over HTTP instead")]
    TooFar(usize),
    #[error("recovery source unavailable: {0}")]
    Unavailable(String),
}

pub struct Recovery {
    store: Arc<dyn Store>,
    log: Arc<dyn Log>,
    topic: String,
    max_backlog: usize,
    /// Idle log readers per partition (each owns a broker connection).
    readers: Mutex<HashMap<i32, Vec<Box<dyn LogReader>>>>,
}

impl Recovery {
    pub fn new(store: Arc<dyn Store>, log: Arc<dyn Log>, topic: &str, max_backlog: usize) -> Self {
        Recovery {
            store,
            log,
            topic: topic.to_owned(),
            max_backlog,
            readers: Mutex::new(HashMap::new()),
        }
    }

    /// The room's messages with position > `after`, ascending, without duplicates.
    pub async fn backlog(
        &self,
        room: RoomId,
        after: Position,
    ) -> Result<Vec<Message>, RecoveryError> {
        let partition = partition_of(room, self.log.partitions());
        let mut out: Vec<Message> = Vec::new();
        let mut tail_start = after + 1;
        match self.store.next_offset(&self.topic, partition).await {
            Ok(committed) => {
                let committed = committed.unwrap_or(0);
                if committed > after + 1 {
                    let rows = self
                        .store
                        .messages_after(room, after, self.max_backlog as i64 + 1)
                        .await
                        .map_err(|e| RecoveryError::Unavailable(e.to_string()))?;
                    if rows.len() > self.max_backlog {
                        return Err(RecoveryError::TooFar(self.max_backlog));
                    }
                    out = rows;
                    tail_start = committed.max(after + 1);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "store unavailable; recovering from the log alone")
            }
        }
        let tail = self
            .tail(partition, room, tail_start, self.max_backlog - out.len())
            .await?;
        let mut seen: HashSet<_> = out.iter().map(|m| m.id).collect();
        let mut last = out.last().map_or(after, |m| m.position);
        for m in tail {
            if m.position > last && seen.insert(m.id) {
                last = m.position;
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn tail(
        &self,
        partition: i32,
        room: RoomId,
        from: i64,
        budget: usize,
    ) -> Result<Vec<Message>, RecoveryError> {
        let reader = self.take_reader(partition).await?;
        let r = read_room(reader.as_ref(), room, from, budget).await;
        if r.is_ok() {
            self.give_back(partition, reader);
        }
        r
    }

    async fn take_reader(&self, partition: i32) -> Result<Box<dyn LogReader>, RecoveryError> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&partition)
            .and_then(Vec::pop);
        match idle {
            Some(r) => Ok(r),
            None => self
                .log
                .reader(partition)
                .await
                .map_err(|e| RecoveryError::Unavailable(e.to_string())),
        }
    }

    fn give_back(&self, partition: i32, reader: Box<dyn LogReader>) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let idle = readers.entry(partition).or_default();
        if idle.len() < 4 {
            idle.push(reader);
        }
    }
}

async fn read_room(
    reader: &dyn LogReader,
    room: RoomId,
    from: i64,
    budget: usize,
) -> Result<Vec<Message>, RecoveryError> {
    let unavailable = |e: LogError| RecoveryError::Unavailable(e.to_string());
    let end = reader.latest().await.map_err(unavailable)?;
    let mut offset = from.max(reader.earliest().await.map_err(unavailable)?);
    let mut out = Vec::new();
    let mut scanned = 0usize;
    while offset < end {
        let batch = reader
            .read(offset, 1, Duration::from_millis(0))
            .await
            .map_err(unavailable)?;
        if batch.records.is_empty() {
            break;
        }
        for r in batch.records {
            if r.offset >= end {
                break;
            }
            scanned += 1;
            if let Some(m) = r.message {
                if m.room == room {
                    out.push(m);
                    if out.len() > budget {
                        return Err(RecoveryError::TooFar(budget));
                    }
                }
            }
        }
        if scanned > MAX_SCAN {
            return Err(RecoveryError::TooFar(budget));
        }
        offset = batch.next_offset;
    }
    Ok(out)
}
