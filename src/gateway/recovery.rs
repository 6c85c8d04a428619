//! Gap-free recovery for `subscribe{since}`: every message of the room above `since`,
//! from the store up to what the persist worker has committed, and from the log's tail
//! beyond it. Complete while the consumer lags, and while PostgreSQL is down (then the
//! log alone is read from `since`).
//!
//! A backlog is never materialised whole: [`Recovery::start`] checks its size (counting
//! ids, not reading bodies) and returns a [`Cursor`]; [`Recovery::next_page`] reads at
//! most [`PAGE_MESSAGES`] messages at a time, and the session asks for the next page only
//! once the client has drained the previous ones. What one `subscribe` makes the gateway
//! hold is one page, however long the room's history.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::Target;
use crate::log::{partition_of, Log, LogError, LogReader};
use crate::model::{Change, Message, MessageId, Position, RoomId, UserId};
use crate::store::Store;
use uuid::Uuid;

/// Log records scanned (all rooms of the partition) before giving up.
const MAX_SCAN: usize = 200_000;
/// [`Recovery::fresh_target`] reads running at once, at most (per gateway).
const MAX_LOOKUPS: usize = 4;
/// Messages read (and queued for the client) at a time, at most.
pub const PAGE_MESSAGES: usize = 64;
/// Bytes of message bodies in a page, at most (a page holds at least one message).
pub const PAGE_BYTES: usize = 32 * 1024;

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
    max_backlog: usize,
    /// Tail reads for a rule check ([`Recovery::fresh_target`]) at once, at most: what
    /// one gateway spends on events naming messages the store does not hold.
    lookups: tokio::sync::Semaphore,
    /// Idle log readers per partition (each owns a broker connection).
    readers: Mutex<HashMap<i32, Vec<Box<dyn LogReader>>>>,
}

/// Where a recovery stands: the last position handed out, and which source comes next.
pub struct Cursor {
    room: RoomId,
    partition: i32,
    /// The newest position returned so far (`since` before the first page).
    last: Position,
    /// Messages returned so far, against `max_backlog`.
    returned: usize,
    /// Their ids: a retried produce can be in the log twice (the relay drops the second
    /// copy, so must recovery). At most `max_backlog` of them.
    seen: HashSet<Uuid>,
    /// Messages of the room deleted in the log's tail (not yet in the store): their
    /// earlier records are returned without a body (docs/decisions/0004).
    deleted: HashSet<Uuid>,
    phase: Phase,
}

/// The recovery ends at the partition's end when it started (`end`): what comes later
/// reaches the connection live (held back meanwhile), so a busy room cannot keep a replay
/// going, nor push it over `max_backlog` half-way.
enum Phase {
    /// Store rows below `committed` (every record below it is in the store), then the
    /// log from there.
    Store {
        committed: i64,
        reader: Box<dyn LogReader>,
        earliest: i64,
        end: i64,
    },
    /// The log from `offset` up to `end`.
    Log {
        reader: Box<dyn LogReader>,
        offset: i64,
        end: i64,
        scanned: usize,
    },
    Done,
}

impl Cursor {
    /// The newest position returned so far (the `since` it started from before any).
    pub fn last(&self) -> Position {
        self.last
    }
}

/// Cuts a page of store rows (ascending, as read: at most [`PAGE_MESSAGES`]) to what the
/// store phase returns: rows below `committed` only (those from it on, persisted
/// meanwhile, are the log phase's), and at most [`PAGE_BYTES`] of bodies (at least one
/// row). Returns whether the store may hold more rows below `committed` after these:
/// false once the page reached `committed` or came back short without being cut.
fn store_page(rows: &mut Vec<Message>, committed: i64) -> bool {
    let beyond = rows.iter().position(|m| m.position >= committed);
    if let Some(n) = beyond {
        rows.truncate(n);
    }
    let mut more = beyond.is_none() && rows.len() == PAGE_MESSAGES;
    let mut bytes = 0;
    if let Some(n) = rows.iter().position(|m| {
        bytes += m.body.len();
        bytes > PAGE_BYTES
    }) {
        let keep = n.max(1);
        if keep < rows.len() {
            more = true;
        }
        rows.truncate(keep);
    }
    more
}

/// Deleted means gone: a message deleted further on in the tail loses its body here, and
/// so does an edit of it.
fn forget_deleted(m: &mut Message, deleted: &HashSet<Uuid>) {
    match &m.change {
        None if deleted.contains(&m.id) => m.tombstone(),
        Some(Change::Edit { message_id }) if deleted.contains(message_id) => m.body.clear(),
        _ => {}
    }
}

impl Recovery {
    pub fn new(store: Arc<dyn Store>, log: Arc<dyn Log>, max_backlog: usize) -> Self {
        Recovery {
            store,
            log,
            max_backlog,
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
            readers: Mutex::new(HashMap::new()),
        }
    }

    /// Begins the recovery of the room's messages with position > `after`. Refuses a
    /// store backlog over `max_backlog` here, before anything is sent; the log's tail
    /// beyond what the store has committed (consumer lag) is counted as it is read.
    pub async fn start(&self, room: RoomId, after: Position) -> Result<Cursor, RecoveryError> {
        let partition = partition_of(room, self.log.partitions());
        let mut cursor = Cursor {
            room,
            partition,
            last: after,
            returned: 0,
            seen: HashSet::new(),
            deleted: HashSet::new(),
            phase: Phase::Done,
        };
        let reader = self.take_reader(partition).await?;
        let bounds =
            async { Ok::<_, LogError>((reader.earliest().await?, reader.latest().await?)) };
        let (earliest, end) = bounds
            .await
            .map_err(|e| RecoveryError::Unavailable(e.to_string()))?;
        let stored = self.store.next_offset(self.log.topic(), partition).await;
        // Deletes the store has not applied yet: from what it has committed (or from
        // `since` without it) to the end.
        let tail_from = match &stored {
            Ok(c) => c.unwrap_or(0).min(end).max(after + 1),
            Err(_) => after + 1,
        }
        .max(earliest);
        cursor.deleted = self
            .deletes_in(reader.as_ref(), room, tail_from, end)
            .await?;
        match stored {
            Ok(committed) => {
                let committed = committed.unwrap_or(0).min(end);
                if committed > after + 1 {
                    let cap = self.max_backlog as i64 + 1;
                    let n = self
                        .store
                        .count_after(room, after, cap)
                        .await
                        .map_err(|e| RecoveryError::Unavailable(e.to_string()))?;
                    if n > self.max_backlog as i64 {
                        return Err(RecoveryError::TooFar(self.max_backlog));
                    }
                    cursor.phase = Phase::Store {
                        committed,
                        reader,
                        earliest,
                        end,
                    };
                    return Ok(cursor);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "store unavailable; recovering from the log alone")
            }
        }
        cursor.phase = self.log_phase(partition, reader, (after + 1).max(earliest), end);
        Ok(cursor)
    }

    /// The next page of at most [`PAGE_MESSAGES`] messages and [`PAGE_BYTES`] of bodies,
    /// ascending and above every earlier page; None when the recovery is complete.
    pub async fn next_page(&self, cur: &mut Cursor) -> Result<Option<Vec<Message>>, RecoveryError> {
        loop {
            let page = match &mut cur.phase {
                Phase::Done => return Ok(None),
                Phase::Store { committed, .. } => {
                    let committed = *committed;
                    let mut rows = self
                        .store
                        .messages_after(cur.room, cur.last, PAGE_MESSAGES as i64)
                        .await
                        .map_err(|e| RecoveryError::Unavailable(e.to_string()))?;
                    let more = store_page(&mut rows, committed);
                    if !more {
                        let from = committed.max(rows.last().map_or(cur.last, |m| m.position) + 1);
                        if let Phase::Store {
                            reader,
                            earliest,
                            end,
                            ..
                        } = std::mem::replace(&mut cur.phase, Phase::Done)
                        {
                            cur.phase =
                                self.log_phase(cur.partition, reader, from.max(earliest), end);
                        }
                    }
                    rows
                }
                Phase::Log {
                    reader,
                    offset,
                    end,
                    scanned,
                } => {
                    let unavailable = |e: LogError| RecoveryError::Unavailable(e.to_string());
                    let mut page = Vec::new();
                    let mut bytes = 0;
                    while *offset < *end && page.len() < PAGE_MESSAGES && bytes < PAGE_BYTES {
                        let batch = reader
                            .read(*offset, Duration::from_millis(0))
                            .await
                            .map_err(unavailable)?;
                        if batch.records.is_empty() {
                            *offset = *end;
                            break;
                        }
                        // A batch can begin before `offset` (Kafka returns whole record
                        // batches) and end after a full page: `offset` moves record by
                        // record, and to the batch's end only if all of it was read.
                        let mut full = false;
                        for r in batch.records {
                            if r.offset < *offset {
                                continue;
                            }
                            if r.offset >= *end {
                                *offset = *end;
                                break;
                            }
                            *scanned += 1;
                            *offset = r.offset + 1;
                            if let Some(m) = r.message {
                                if m.room == cur.room && m.position > cur.last {
                                    bytes += m.body.len();
                                    page.push(m);
                                    if page.len() == PAGE_MESSAGES || bytes >= PAGE_BYTES {
                                        full = true;
                                        break;
                                    }
                                }
                            }
                        }
                        if *scanned > MAX_SCAN {
                            return Err(RecoveryError::TooFar(self.max_backlog));
                        }
                        if !full {
                            *offset = (*offset).max(batch.next_offset.min(*end));
                        }
                    }
                    if *offset >= *end {
                        if let Phase::Log { reader, .. } =
                            std::mem::replace(&mut cur.phase, Phase::Done)
                        {
                            self.give_back(cur.partition, reader);
                        }
                    }
                    page
                }
            };
            // Ascending, above everything returned, each id once (a retried produce can
            // be in the log twice; a row can be in the store and the log's tail).
            let mut out = Vec::with_capacity(page.len());
            for mut m in page {
                if m.position > cur.last && cur.seen.insert(m.id) {
                    cur.last = m.position;
                    forget_deleted(&mut m, &cur.deleted);
                    out.push(m);
                }
            }
            cur.returned += out.len();
            if cur.returned > self.max_backlog {
                return Err(RecoveryError::TooFar(self.max_backlog));
            }
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }

    /// Calls `visit` with every record of the room in `[from, end)`, in order: one read
    /// of that part of the log, at most [`MAX_SCAN`] records (then `TooFar`).
    async fn scan(
        &self,
        reader: &dyn LogReader,
        room: RoomId,
        from: i64,
        end: i64,
        mut visit: impl FnMut(&Message),
    ) -> Result<(), RecoveryError> {
        let mut offset = from;
        let mut scanned = 0;
        while offset < end {
            let batch = reader
                .read(offset, Duration::from_millis(0))
                .await
                .map_err(|e| RecoveryError::Unavailable(e.to_string()))?;
            if batch.records.is_empty() {
                break;
            }
            for r in &batch.records {
                if r.offset < offset || r.offset >= end {
                    continue;
                }
                scanned += 1;
                if let Some(m) = r.message.as_ref().filter(|m| m.room == room) {
                    visit(m);
                }
            }
            if scanned > MAX_SCAN {
                return Err(RecoveryError::TooFar(self.max_backlog));
            }
            offset = batch.next_offset.max(offset + 1);
        }
        Ok(())
    }

    /// The ids of the room's messages deleted by records in `[from, end)`.
    async fn deletes_in(
        &self,
        reader: &dyn LogReader,
        room: RoomId,
        from: i64,
        end: i64,
    ) -> Result<HashSet<Uuid>, RecoveryError> {
        let mut deleted = HashSet::new();
        self.scan(reader, room, from, end, |m| {
            if let Some(Change::Delete { message_id }) = &m.change {
                deleted.insert(*message_id);
            }
        })
        .await?;
        Ok(deleted)
    }

    /// The state of message `id` of the room if it is in the log's tail, beyond what the
    /// store has committed (acked a moment ago, not persisted yet): what [`Target`] the
    /// rules need, from the message's record and the events after it in the tail. None:
    /// not in the tail (unknown, or persisted meanwhile: ask the store again).
    pub async fn fresh_target(
        &self,
        room: RoomId,
        id: MessageId,
        actor: UserId,
        emoji: Option<&str>,
    ) -> Result<Option<Target>, RecoveryError> {
        let partition = partition_of(room, self.log.partitions());
        // Everything the log holds is in the store: nothing to look for.
        let end = self
            .log
            .end(partition)
            .await
            .map_err(|e| RecoveryError::Unavailable(e.to_string()))?;
        let committed = self
            .store
            .next_offset(self.log.topic(), partition)
            .await
            .map_err(|e| RecoveryError::Unavailable(e.to_string()))?;
        if committed.is_some_and(|c| c >= end) {
            return Ok(None);
        }
        let _turn = self
            .lookups
            .acquire()
            .await
            .map_err(|e| RecoveryError::Unavailable(e.to_string()))?;
        let reader = self.take_reader(partition).await?;
        let unavailable = |e: LogError| RecoveryError::Unavailable(e.to_string());
        let found = async {
            // The bounds read above: the message was acked before it was named, so it is
            // below `end`; what was persisted since is read twice at worst.
            let earliest = reader.earliest().await.map_err(unavailable)?;
            let from = committed.unwrap_or(0).max(earliest);
            let mut target: Option<Target> = None;
            // (user, emoji) → on, in log order.
            let mut reactions: HashMap<(UserId, String), bool> = HashMap::new();
            // A retried produce can be in the log twice: each record counts once.
            let mut seen: HashSet<Uuid> = HashSet::new();
            self.scan(reader.as_ref(), room, from, end, |m| match &m.change {
                _ if (m.id == id || m.change.as_ref().is_some_and(|c| c.target() == Some(id)))
                    && !seen.insert(m.id) => {}
                None if m.id == id && target.is_none() => {
                    target = Some(Target {
                        room,
                        author: m.sender.id,
                        sent_at: m.sent_at,
                        deleted: false,
                        edit_count: 0,
                        reply_to: m.reply_to,
                        emoji_count: 0,
                        has_emoji: false,
                        my_reactions: 0,
                        mine: false,
                    })
                }
                Some(c) if c.target() == Some(id) => {
                    let Some(t) = target.as_mut() else { return };
                    match c {
                        Change::Edit { .. } => t.edit_count += 1,
                        Change::Delete { .. } => t.deleted = true,
                        Change::Reaction { emoji, on, .. } => {
                            reactions.insert((m.sender.id, emoji.clone()), *on);
                        }
                        Change::Member { .. } | Change::Room { .. } => {}
                    }
                }
                _ => {}
            })
            .await?;
            if let (Some(t), Some(emoji)) = (target.as_mut(), emoji) {
                let on: Vec<&(UserId, String)> = reactions
                    .iter()
                    .filter(|(_, on)| **on)
                    .map(|(k, _)| k)
                    .collect();
                let kinds: HashSet<&str> = on.iter().map(|(_, e)| e.as_str()).collect();
                t.emoji_count = kinds.len() as i64;
                t.has_emoji = kinds.contains(emoji);
                t.my_reactions = on.iter().filter(|(u, _)| *u == actor).count() as i64;
                t.mine = on.iter().any(|(u, e)| *u == actor && e == emoji);
            }
            Ok(target)
        }
        .await;
        self.give_back(partition, reader);
        found
    }

    /// The log phase from `from` to `end` (none if empty: the reader goes back).
    fn log_phase(&self, partition: i32, reader: Box<dyn LogReader>, from: i64, end: i64) -> Phase {
        if from >= end {
            self.give_back(partition, reader);
            return Phase::Done;
        }
        Phase::Log {
            reader,
            offset: from,
            end,
            scanned: 0,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;

    fn rows(positions: &[i64], body: usize) -> Vec<Message> {
        positions
            .iter()
            .map(|&p| Message {
                id: Uuid::now_v7(),
                room: Uuid::nil(),
                sender: User {
                    id: Uuid::nil(),
                    name: "ann".into(),
                },
                body: "x".repeat(body),
                client_msg_id: format!("c{p}"),
                position: p,
                sent_at: chrono::Utc::now(),
                ..Default::default()
            })
            .collect()
    }

    fn positions(rows: &[Message]) -> Vec<i64> {
        rows.iter().map(|m| m.position).collect()
    }

    #[test]
    fn store_pages_stop_at_committed_and_at_their_size() {
        let full: Vec<i64> = (0..PAGE_MESSAGES as i64).collect();
        // (case, rows read, body bytes each, committed, rows returned, more in store)
        type Case = (&'static str, Vec<i64>, usize, i64, Vec<i64>, bool);
        let cases: &[Case] = &[
            ("short page", vec![1, 2, 3], 10, 100, vec![1, 2, 3], false),
            ("empty", vec![], 10, 100, vec![], false),
            (
                "full page below committed",
                full.clone(),
                10,
                1_000,
                full.clone(),
                true,
            ),
            (
                "reaches committed",
                vec![5, 6, 7, 8],
                10,
                7,
                vec![5, 6],
                false,
            ),
            (
                "full page reaching committed",
                full.clone(),
                10,
                10,
                (0..10).collect(),
                false,
            ),
            (
                "cut for its size, below committed",
                vec![1, 2, 3, 4],
                PAGE_BYTES / 2,
                100,
                vec![1, 2],
                true,
            ),
            (
                // The rows cut off for size lie below `committed`: the store phase goes on
                // (the bug this table was written for: they were skipped).
                "cut for its size before reaching committed",
                vec![1, 2, 3, 4, 5],
                PAGE_BYTES / 2,
                5,
                vec![1, 2],
                true,
            ),
            (
                "one row over the size alone",
                vec![1, 2],
                PAGE_BYTES * 2,
                100,
                vec![1],
                true,
            ),
            (
                "the last row over the size alone",
                vec![1],
                PAGE_BYTES * 2,
                100,
                vec![1],
                false,
            ),
        ];
        for (case, read, body, committed, want, want_more) in cases {
            let mut page = rows(read, *body);
            let more = store_page(&mut page, *committed);
            assert_eq!(positions(&page), *want, "{case}");
            assert_eq!(more, *want_more, "{case}");
        }
    }
}
