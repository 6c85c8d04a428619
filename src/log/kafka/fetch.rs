//! Tailing readers that share one multi-partition fetch per broker.
//!
//! The relay and the persist worker each tail every partition their consumer leases.
//! With a fetch per partition, a consumer of 8 partitions kept 16 long polls going, and
//! at chat rates nearly every fetch returned one record. Here the readers of one kind
//! (one [`Tailer`]: the relay's, or the persist workers') share a task per partition
//! leader, which keeps one Fetch request in flight for all of their partitions and
//! hands each partition's records to its reader. The task reads ahead: it fetches a
//! partition again as soon as the previous batch is handed over, while the reader is
//! still busy with it, up to [`AHEAD`] batches. A relay's fetches may linger
//! (`--relay-linger-ms`): after an answer with records, the next fetch goes out only that
//! long after it did, so what comes meanwhile shares one answer. Off by default: each
//! record is fetched as soon as it is written.
//!
//! A reader that asks for another offset than the one its partition has reached (a
//! first read, a seek after an error or a fenced commit) re-opens its partition there;
//! what was read ahead is dropped. A partition whose answer is an error is closed, and
//! the reader gets the error; its next read opens it again (on the new leader, if that
//! was the error).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::cluster::{unavailable, Cluster};
use super::wire::{self, Conn, Fetched, FetchedData, OffsetAt};
use crate::log::{decode, LogBatch, LogError, LogReader, LogRecord};
use crate::telemetry::hops::{self, Kafka};

/// Batches read ahead per partition, at most.
const AHEAD: usize = 4;
/// The most one partition contributes to one fetch answer.
const PARTITION_MAX_BYTES: i32 = 1 << 20;
/// The most one fetch answer holds.
const FETCH_MAX_BYTES: i32 = 8 << 20;
/// While a partition waits for its reader to take a batch, fetches poll at most this long,
/// so that partition is fetched again soon after its reader catches up.
const SHORT_WAIT: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// How a [`Tailer`]'s fetches wait: until `min_bytes` are there, or `max_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Profile {
    pub min_bytes: i32,
    pub max_wait: Duration,
    /// After an answer with records, the next fetch goes no sooner than this after that
    /// one went out (zero: at once): records that come meanwhile share the next answer.
    pub linger: Duration,
    /// What its fetches count as (`chat_kafka_requests_total`).
    pub requests: Kafka,
}

impl Profile {
    /// The fetches of a tail of this pace: a live one returns at the first record (and
    /// lingers `linger` after an answer with records), a batch one waits up to 200 ms for
    /// [`BATCH_BYTES`](crate::log::BATCH_BYTES).
    pub fn of(pace: crate::log::Pace, linger: Duration) -> Profile {
        match pace {
            crate::log::Pace::Live => Profile {
                min_bytes: 1,
                max_wait: Duration::from_millis(500),
                linger,
                requests: Kafka::FetchRelay,
            },
            crate::log::Pace::Batch => Profile {
                min_bytes: i32::try_from(crate::log::BATCH_BYTES).unwrap_or(i32::MAX),
                max_wait: Duration::from_millis(200),
                linger: Duration::ZERO,
                requests: Kafka::FetchPersist,
            },
        }
    }
}

type Out = mpsc::Sender<Result<LogBatch, LogError>>;

enum Cmd {
    /// Tail `partition` from `offset` into `out` (replaces an earlier stream of it).
    Open {
        partition: i32,
        offset: i64,
        out: Out,
    },
}

/// The readers of one kind, and the fetch task per broker they share.
pub(super) struct Tailer {
    cluster: Arc<Cluster>,
    profile: Profile,
    brokers: Mutex<HashMap<i32, mpsc::UnboundedSender<Cmd>>>,
}

impl Tailer {
    pub fn new(cluster: Arc<Cluster>, profile: Profile) -> Self {
        Tailer {
            cluster,
            profile,
            brokers: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self, partition: i32, offset: i64, out: Out) -> Result<(), LogError> {
        let Some(node) = self.cluster.leader(partition) else {
            self.cluster.refresh_soon();
            return Err(LogError::Unavailable(format!(
                "no Kafka leader known for partition {partition}"
            )));
        };
        let mut cmd = Cmd::Open {
            partition,
            offset,
            out,
        };
        let mut brokers = self.brokers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = brokers.get(&node) {
            match tx.send(cmd) {
                Ok(()) => return Ok(()),
                // The task is gone (it only stops once nothing can reach it): start anew.
                Err(mpsc::error::SendError(c)) => cmd = c,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(cmd);
        self.cluster.tasks.spawn_until_cancelled(fetch_loop(
            node,
            Arc::clone(&self.cluster),
            self.profile,
            rx,
        ));
        brokers.insert(node, tx);
        Ok(())
    }
}

/// One partition's place in a fetch task.
struct Stream {
    /// The offset its next fetch starts at.
    offset: i64,
    out: Out,
}

/// One broker's fetch task: one Fetch request in flight for all partitions whose reader
/// has room for another batch.
async fn fetch_loop(
    node: i32,
    cluster: Arc<Cluster>,
    profile: Profile,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut streams: HashMap<i32, Stream> = HashMap::new();
    let mut conn: Option<Conn> = None;
    let mut reachable = true;
    let mut turn = 0usize;
    // Until when the next fetch lingers (the profile's `linger` after the last answer
    // with records went out); a reader opening meanwhile ends the wait.
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        if let Some(t) = linger_until.take() {
            if t > tokio::time::Instant::now() {
                tokio::select! {
                    _ = tokio::time::sleep_until(t) => {}
                    cmd = rx.recv(), if reachable => match cmd {
                        Some(cmd) => take(&mut streams, cmd),
                        None => reachable = false,
                    },
                }
            }
        }
        while reachable {
            match rx.try_recv() {
                Ok(cmd) => take(&mut streams, cmd),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => reachable = false,
            }
        }
        streams.retain(|_, s| !s.out.is_closed());
        if streams.is_empty() {
            match rx.recv().await {
                Some(cmd) => take(&mut streams, cmd),
                None => return,
            }
            continue;
        }
        let mut ready: Vec<(i32, i64)> = streams
            .iter()
            .filter(|(_, s)| s.out.capacity() > 0)
            .map(|(p, s)| (*p, s.offset))
            .collect();
        if ready.is_empty() {
            // Every reader has AHEAD batches waiting: give them time to take one.
            tokio::time::sleep(SHORT_WAIT).await;
            continue;
        }
        // Kafka fills an answer in request order: start at another partition each time.
        ready.sort_unstable();
        turn = turn.wrapping_add(1);
        let n = turn % ready.len();
        ready.rotate_left(n);
        // A live reader that has fallen behind is fetched again soon after it catches up;
        // a batching one (persist) keeps its long wait.
        let wait = if ready.len() < streams.len() && profile.min_bytes <= 1 {
            profile.max_wait.min(SHORT_WAIT)
        } else {
            profile.max_wait
        };
        // `min_bytes` counts the whole answer: scale it with the partitions asked for.
        let min_bytes = profile
            .min_bytes
            .saturating_mul(ready.len() as i32)
            .min(FETCH_MAX_BYTES / 2);
        let request = fetch_request(&cluster.topic, &ready, min_bytes, wait);
        let sent_at = tokio::time::Instant::now();
        // A partition opened meanwhile should not wait out this long poll: Kafka answers
        // a connection's requests in order, so drop the request with its connection and
        // ask again, with the new partition, on a new one (nothing is lost: offsets only
        // move with an answer).
        let answer = tokio::select! {
            r = send(&cluster, node, &mut conn, &request, wait, profile.requests) => r,
            cmd = rx.recv(), if reachable => {
                match cmd {
                    Some(cmd) => take(&mut streams, cmd),
                    None => reachable = false,
                }
                continue;
            }
        };
        match answer {
            Ok(response) => {
                if record_size(&response, profile) > 0 && !profile.linger.is_zero() {
                    linger_until = Some(sent_at + profile.linger);
                }
                if hand_over(&mut streams, response) {
                    cluster.refresh_soon();
                }
            }
            Err(Failure::Connection(e)) => {
                // Every reader re-opens after its backoff.
                tracing::warn!(node, error = %e, "kafka: fetch failed");
                close_all(&mut streams, &e);
                cluster.refresh_soon();
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
            Err(Failure::Answer(e)) => {
                // One partition's data could not be read (say, a batch in a codec this
                // build lacks): ask for each partition alone, so only that one stalls.
                tracing::warn!(node, error = %e, "kafka: fetch answer unreadable; fetching partitions one by one");
                for (p, offset) in ready {
                    let one = fetch_request(&cluster.topic, &[(p, offset)], 1, Duration::ZERO);
                    match send(
                        &cluster,
                        node,
                        &mut conn,
                        &one,
                        Duration::ZERO,
                        profile.requests,
                    )
                    .await
                    {
                        Ok(response) => {
                            if hand_over(&mut streams, response) {
                                cluster.refresh_soon();
                            }
                        }
                        Err(Failure::Answer(e)) => {
                            if let Some(s) = streams.remove(&p) {
                                let _ = s.out.try_send(Err(LogError::Other(format!(
                                    "partition {p} at offset {offset}: {e}"
                                ))));
                            }
                        }
                        Err(Failure::Connection(e)) => {
                            close_all(&mut streams, &e);
                            break;
                        }
                    }
                }
            }
        }
    }
}

enum Failure {
    /// The connection failed or the broker went silent: it was dropped.
    Connection(LogError),
    /// The answer arrived but could not be read; the connection is fine.
    Answer(LogError),
}

/// Sends a fetch on the task's connection (opened if needed). A connection found broken
/// (the broker closes idle ones) is replaced and the request sent once more.
async fn send(
    cluster: &Cluster,
    node: i32,
    conn: &mut Option<Conn>,
    request: &wire::FetchRequest,
    wait: Duration,
    counted: Kafka,
) -> Result<Vec<Fetched>, Failure> {
    let mut resent = false;
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None => cluster
                .connect_node(node)
                .await
                .map_err(Failure::Connection)?,
        };
        hops::kafka_request(counted);
        match tokio::time::timeout(wait + Duration::from_secs(10), c.fetch(request)).await {
            Ok(Ok(response)) => {
                *conn = Some(c);
                return Ok(response);
            }
            Ok(Err(e)) if e.broken && !resent => resent = true,
            Ok(Err(e)) if e.broken => return Err(Failure::Connection(unavailable("fetching", e))),
            Ok(Err(e)) => {
                *conn = Some(c);
                return Err(Failure::Answer(unavailable("fetching", e)));
            }
            Err(_) => {
                return Err(Failure::Connection(LogError::Unavailable(
                    "fetching: no answer from Kafka".into(),
                )))
            }
        }
    }
}

fn record_size(response: &[Fetched], profile: Profile) -> usize {
    let records: usize = response
        .iter()
        .filter_map(|p| p.result.as_ref().ok())
        .map(|d| d.records.len())
        .sum();
    metrics::histogram!(crate::telemetry::names::FETCH_BATCH, "wait_ms" => profile.max_wait.as_millis().to_string())
        .record(records as f64);
    records
}

fn take(streams: &mut HashMap<i32, Stream>, cmd: Cmd) {
    match cmd {
        Cmd::Open {
            partition,
            offset,
            out,
        } => {
            streams.insert(partition, Stream { offset, out });
        }
    }
}

/// Tells each reader (if it has room) and closes its stream; its next read re-opens it.
fn close_all(streams: &mut HashMap<i32, Stream>, e: &LogError) {
    for (_, s) in streams.drain() {
        let _ = s.out.try_send(Err(e.duplicate()));
    }
}

fn fetch_request(
    topic: &str,
    ready: &[(i32, i64)],
    min_bytes: i32,
    wait: Duration,
) -> wire::FetchRequest {
    wire::fetch_request(
        topic,
        ready,
        min_bytes,
        wait,
        FETCH_MAX_BYTES,
        PARTITION_MAX_BYTES,
    )
}

/// Gives each partition's new records to its reader. True if an error says the metadata
/// is stale.
fn hand_over(streams: &mut HashMap<i32, Stream>, response: Vec<Fetched>) -> bool {
    let mut stale = false;
    for p in response {
        let partition = p.partition;
        let Some(s) = streams.get_mut(&partition) else {
            continue;
        };
        let data = match p.result {
            Ok(data) => data,
            Err(e) => {
                stale |= e.stale();
                let err = if e.out_of_range() {
                    LogError::OutOfRange { offset: s.offset }
                } else {
                    LogError::Unavailable(format!("Kafka: {e}"))
                };
                let _ = s.out.try_send(Err(err));
                streams.remove(&partition);
                continue;
            }
        };
        let batch = records_from(data, s.offset);
        if batch.next_offset > s.offset {
            s.offset = batch.next_offset;
            if s.out.try_send(Ok(batch)).is_err() {
                streams.remove(&partition);
            }
        }
    }
    stale
}

/// The records at or after `from` (Kafka answers with whole batches, which can start
/// before it); the next offset is past every batch, control batches included.
pub(super) fn records_from(data: FetchedData, from: i64) -> LogBatch {
    let next_offset = data.end.map_or(from, |e| e.max(from));
    let records = data
        .records
        .into_iter()
        .filter(|r| r.offset >= from)
        .map(|r| LogRecord {
            offset: r.offset,
            message: r.value.as_deref().and_then(|v| decode(v, r.offset)),
        })
        .collect();
    LogBatch {
        records,
        next_offset,
        high_watermark: data.high_watermark,
    }
}

/// A reader of one partition that tails it through its [`Tailer`].
pub(super) struct TailReader {
    tailer: Arc<Tailer>,
    partition: i32,
    /// For the offsets (earliest, latest), on its control connections.
    cluster: Arc<Cluster>,
    state: tokio::sync::Mutex<TailState>,
}

#[derive(Default)]
struct TailState {
    /// The open stream, and the offset its next batch starts at.
    open: Option<(i64, mpsc::Receiver<Result<LogBatch, LogError>>)>,
    high_watermark: i64,
}

impl TailReader {
    pub fn new(tailer: Arc<Tailer>, partition: i32, cluster: Arc<Cluster>) -> Self {
        TailReader {
            tailer,
            partition,
            cluster,
            state: tokio::sync::Mutex::new(TailState::default()),
        }
    }
}

#[async_trait]
impl LogReader for TailReader {
    /// The batch size is the [`Tailer`]'s pace; `max_wait` bounds how long this read
    /// waits (an empty batch then).
    async fn read(&self, offset: i64, max_wait: Duration) -> Result<LogBatch, LogError> {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        let (next, rx) = match &mut st.open {
            Some((next, rx)) if *next == offset => (next, rx),
            open => {
                *open = None;
                let (tx, rx) = mpsc::channel(AHEAD);
                self.tailer.open(self.partition, offset, tx)?;
                let (next, rx) = open.insert((offset, rx));
                (next, rx)
            }
        };
        match tokio::time::timeout(max_wait.max(SHORT_WAIT), rx.recv()).await {
            Err(_) => Ok(LogBatch {
                records: Vec::new(),
                next_offset: offset,
                high_watermark: st.high_watermark,
            }),
            Ok(Some(Ok(batch))) => {
                *next = batch.next_offset;
                st.high_watermark = batch.high_watermark;
                Ok(batch)
            }
            Ok(Some(Err(e))) => {
                st.open = None;
                Err(e)
            }
            Ok(None) => {
                st.open = None;
                Err(LogError::Unavailable("the Kafka fetch task stopped".into()))
            }
        }
    }

    async fn earliest(&self) -> Result<i64, LogError> {
        self.cluster
            .list_offset(self.partition, OffsetAt::Earliest)
            .await
    }

    async fn latest(&self) -> Result<i64, LogError> {
        self.cluster
            .list_offset(self.partition, OffsetAt::Latest)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::kafka::wire::{RawRecord, Refusal};

    /// Batches of `n` records from each base offset, as one partition's data.
    fn data(batches: &[(i64, usize)], high_watermark: i64) -> FetchedData {
        let mut records = Vec::new();
        let mut end = None;
        for (base, n) in batches {
            for i in 0..*n {
                records.push(RawRecord {
                    offset: base + i as i64,
                    value: Some(format!("r{i}").into_bytes()),
                });
            }
            end = Some(base + *n as i64);
        }
        FetchedData {
            high_watermark,
            records,
            end,
        }
    }

    fn part(p: i32, result: Result<FetchedData, Refusal>) -> Fetched {
        Fetched {
            partition: p,
            result,
        }
    }

    #[test]
    fn records_before_the_offset_are_dropped_and_the_next_offset_passes_every_batch() {
        let b = records_from(data(&[(10, 3), (13, 2)], 15), 11);
        assert_eq!(
            b.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![11, 12, 13, 14]
        );
        assert_eq!(b.next_offset, 15);
        assert_eq!(b.high_watermark, 15);
        // Records that are not chat messages are kept as positions without a message.
        assert!(b.records.iter().all(|r| r.message.is_none()));
        let empty = records_from(data(&[], 11), 11);
        assert_eq!(empty.next_offset, 11);
    }

    #[test]
    fn each_partition_gets_its_records_or_its_error() {
        let (tx0, mut rx0) = mpsc::channel(AHEAD);
        let (tx1, mut rx1) = mpsc::channel(AHEAD);
        let (tx2, mut rx2) = mpsc::channel(AHEAD);
        let mut streams = HashMap::from([
            (
                0,
                Stream {
                    offset: 5,
                    out: tx0,
                },
            ),
            (
                1,
                Stream {
                    offset: 7,
                    out: tx1,
                },
            ),
            (
                2,
                Stream {
                    offset: 9,
                    out: tx2,
                },
            ),
        ]);
        let stale = hand_over(
            &mut streams,
            vec![
                part(0, Ok(data(&[(5, 2)], 100))),
                part(1, Err(Refusal::offset_out_of_range())),
                part(2, Ok(data(&[], 100))),
            ],
        );
        assert!(!stale);
        match rx0.try_recv() {
            Ok(Ok(b)) => {
                assert_eq!(b.records.len(), 2);
                assert_eq!(b.next_offset, 7);
            }
            _ => panic!("partition 0 got no batch"),
        }
        assert_eq!(streams[&0].offset, 7, "the next fetch of 0 starts after it");
        assert!(matches!(
            rx1.try_recv(),
            Ok(Err(LogError::OutOfRange { offset: 7 }))
        ));
        assert!(!streams.contains_key(&1), "an error closes the stream");
        assert!(rx2.try_recv().is_err(), "nothing new: nothing handed over");
        assert_eq!(streams[&2].offset, 9);

        let stale = hand_over(&mut streams, vec![part(2, Err(Refusal::not_leader()))]);
        assert!(stale, "a leader change asks for new metadata");
        assert!(matches!(rx2.try_recv(), Ok(Err(e)) if e.retryable()));
    }

    #[test]
    fn a_fetch_asks_for_each_ready_partition_at_its_offset() {
        let r = fetch_request("t", &[(3, 40), (1, 7)], 1, Duration::from_millis(500));
        assert_eq!(r.summary(), (500, vec![(3, 40), (1, 7)]));
    }
}
