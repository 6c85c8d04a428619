//! The gateway's producer: a single produce request per partition *leader* (broker)
//! carries the records of every partition that broker leads
//! (docs/decisions/0003-multi-partition-produce.md).
//!
//! rskafka's `PartitionClient::produce` sends one request per partition. At chat rates a
//! (gateway, partition) pair sees a record every few milliseconds, so nearly every request
//! carried one record, and Kafka's cost per request was the largest single cost on the
//! message path. The Kafka protocol lets one request carry batches for many partitions;
//! this module builds that request (`wire.rs`, on rskafka's protocol types) and sends it on
//! the cluster's connections (`cluster.rs`: `TCP_NODELAY`, TLS and SASL when configured).
//!
//! One task keeps a queue per partition. Per broker, one request is in flight at a time,
//! and it carries everything queued while the previous one was out: a lone record goes at
//! once (no linger), and batches grow with the load. A partition has at most one request
//! in flight, and what fails retryably (a leader change, a broken connection, a broker
//! timeout) goes back in front of its later records, to whichever broker leads the
//! partition then: offsets follow submit order, which is what lets a connection pipeline
//! its sends. A record is retried until its sender stops waiting. A broker that cannot be
//! reached fails its records at once when it is the only one; in a cluster they wait for
//! another broker to lead the partition.
//!
//! The producer is idempotent (KIP-98) where the cluster allows it: it takes a producer id
//! (InitProducerId) and stamps each partition's batch with the sequence number of its first
//! record. A batch whose answer was lost (a leader killed after replicating it) is sent
//! again exactly as it was, and the new leader, which has the copy, answers with the
//! offset of that first write instead of writing it twice: the offset a sender is told is
//! the one readers see. When the brokers no longer agree with the producer's numbers (a
//! batch given up with its fate unknown, an expired id), it takes a new id and sends its
//! records again under it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use rskafka::record::Record;
use tokio::sync::{mpsc, oneshot};

use super::cluster::{unavailable, Cluster};
use super::wire::{self, Compression, Conn, Produced, Refusal, Stamp};
use crate::log::LogError;

/// One request's records, at most (the broker's default `message.max.bytes` is 1 MiB per
/// partition batch; a single larger record goes alone and the broker judges it).
const MAX_REQUEST_BYTES: usize = 512 * 1024;
/// Records waiting to be sent; a full queue refuses (retryably).
const PRODUCE_QUEUE: usize = 8_192;
/// After a failed connect, no request goes to that broker for this long (its records fail
/// at once meanwhile, so senders hear it quickly).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// Records that failed retryably go back in front of their partition's queue and are
/// sent again after this pause (to the new leader, if that was the error).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A record waiting for its produce request, and who waits for its offset.
pub(super) struct Queued {
    pub partition: i32,
    pub record: Record,
    pub size: usize,
    pub done: oneshot::Sender<Result<i64, LogError>>,
}

pub(super) struct Producer {
    tx: mpsc::Sender<Queued>,
}

impl Producer {
    /// Starts the producer task; its broker connections open with their first request.
    /// It runs until the cluster's tasks are cancelled (the last step of the drain, after
    /// every session has had its sends answered); records still queued then fail.
    pub fn new(cluster: Arc<Cluster>, timeout: Duration, compression: Compression) -> Self {
        let (tx, rx) = mpsc::channel(PRODUCE_QUEUE);
        let tasks = cluster.tasks.clone();
        tasks.spawn_until_cancelled(run(cluster, rx, timeout, compression));
        Producer { tx }
    }

    /// Queues a record; its waiter gets the offset once the broker acked it.
    pub fn enqueue(&self, q: Queued) -> Result<(), LogError> {
        match self.tx.try_send(q) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(LogError::Unavailable(
                "too many messages waiting for Kafka".into(),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(LogError::Unavailable("the Kafka producer stopped".into()))
            }
        }
    }
}

/// One partition's records in one request, with their stamp. After an error that leaves
/// its fate unknown, a stamped batch is sent again exactly as it was (records whose sender
/// stopped waiting included), so the broker can recognise a batch it already wrote.
struct Batch {
    records: Vec<Queued>,
    stamp: Option<Stamp>,
    /// An earlier attempt may have been written (its answer was lost or said time-out).
    unknown: bool,
}

impl Batch {
    fn size(&self) -> usize {
        self.records.iter().map(|q| q.size).sum()
    }

    fn abandoned(&self) -> bool {
        self.records.iter().all(|q| q.done.is_closed())
    }
}

/// The sequence number after `n` records from `seq` (Kafka's wrap past `i32::MAX` to 0).
fn next_sequence(seq: i32, n: usize) -> i32 {
    ((i64::from(seq) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

/// A partition's producer id and epoch, and the sequence number of its next new record.
/// Kafka keeps sequence numbers per (producer id, partition), so a partition keeps its id
/// until the brokers disagree with it, and the others are not affected when one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sequence {
    producer: (i64, i16),
    next: i32,
}

/// Records not yet sent, per partition, in submit order.
#[derive(Default)]
struct Partitions {
    queues: HashMap<i32, VecDeque<Queued>>,
    queued: usize,
    /// Partitions with records in a request in flight: nothing else of theirs goes out
    /// until it is answered, so nothing overtakes it.
    in_flight: HashSet<i32>,
    /// Partitions whose records are waiting to be retried, until then.
    held: HashMap<i32, Instant>,
    /// The newest producer id, which a partition without one of its own takes (None:
    /// the cluster gives none, batches go unstamped).
    producer: Option<(i64, i16)>,
    /// Whether `producer` is known: until then (at start, and while a new one is asked
    /// for) partitions without an id of their own send nothing new.
    producer_known: bool,
    /// Per partition, its id and next sequence number.
    sequences: HashMap<i32, Sequence>,
    /// Per partition, a stamped batch to send again as it was, before anything newer.
    again: HashMap<i32, Batch>,
}

impl Partitions {
    fn push(&mut self, q: Queued) {
        self.queued += 1;
        self.queues.entry(q.partition).or_default().push_back(q);
    }

    /// Partitions with something to send and nothing in flight or held (new records only
    /// where there is an id to stamp them with).
    fn ready(&self) -> Vec<i32> {
        let mut ready: HashSet<i32> = self
            .queues
            .iter()
            .filter(|(p, q)| {
                !q.is_empty() && (self.producer_known || self.sequences.contains_key(*p))
            })
            .map(|(p, _)| *p)
            .collect();
        ready.extend(self.again.keys().copied());
        ready.retain(|p| !self.in_flight.contains(p) && !self.held.contains_key(p));
        ready.into_iter().collect()
    }

    fn idle(&self) -> bool {
        self.queued == 0 && self.again.is_empty()
    }

    /// Whether a partition waits for a new producer id.
    fn waits_for_id(&self) -> bool {
        !self.producer_known && !self.idle()
    }

    /// Whether `stamp` is the partition's current id (so its numbers are still in use).
    fn current(&self, partition: i32, stamp: Option<Stamp>) -> bool {
        match (stamp, self.sequences.get(&partition)) {
            (Some(s), Some(seq)) => (s.producer_id, s.epoch) == seq.producer,
            _ => false,
        }
    }

    /// A batch to send again after `at`, before what came after it: as it was if it is
    /// stamped with the partition's current id, else (unstamped, or the partition has
    /// taken a new id since) its records go back in front of the queue, to be stamped
    /// anew. A batch nobody waits for any more is dropped: its sequence numbers go to the
    /// next batch if it cannot have been written; if it may have been, they stay used, and
    /// should it not have been written after all, the next batch is out of sequence and
    /// the partition takes a new id.
    fn retry(&mut self, partition: i32, batch: Batch, at: Instant) {
        if batch.abandoned() {
            if !batch.unknown {
                self.unwind(partition, &batch);
            }
            return;
        }
        if self.current(partition, batch.stamp) {
            self.again.insert(partition, batch);
        } else {
            self.requeue(partition, batch.records);
        }
        self.held.insert(partition, at);
    }

    /// Puts records back in front of what came after them (to be stamped anew).
    fn requeue(&mut self, partition: i32, records: Vec<Queued>) {
        let q = self.queues.entry(partition).or_default();
        for r in records.into_iter().rev() {
            if !r.done.is_closed() {
                self.queued += 1;
                q.push_front(r);
            }
        }
    }

    /// A batch that was certainly not written: its sequence numbers go to the next one.
    /// (Never for a batch whose earlier attempt may have been written: the broker would
    /// take a later batch with the same numbers and size for that one, and answer it with
    /// the old offset without writing it.)
    fn unwind(&mut self, partition: i32, batch: &Batch) {
        let Some(stamp) = batch.stamp else { return };
        if !self.current(partition, batch.stamp) {
            return;
        }
        let after = next_sequence(stamp.base_sequence, batch.records.len());
        if let Some(seq) = self.sequences.get_mut(&partition) {
            if seq.next == after {
                seq.next = stamp.base_sequence;
            }
        }
    }

    /// The brokers disagree with the partition's numbers: it takes the next new id (and
    /// starts again at 0); until that is known it sends nothing new.
    fn renew(&mut self, partition: i32) {
        self.sequences.remove(&partition);
        self.producer_known = false;
    }

    /// A new producer id, or None where the cluster gives none. Partitions that have
    /// their own keep it.
    fn new_producer(&mut self, producer: Option<(i64, i16)>) {
        self.producer = producer;
        self.producer_known = true;
    }

    /// Drops the records nobody waits for any more from the queues (those of held or
    /// leaderless partitions would otherwise fill the queue).
    fn prune(&mut self) {
        let mut dropped = 0;
        for q in self.queues.values_mut() {
            let before = q.len();
            q.retain(|r| !r.done.is_closed());
            dropped += before - q.len();
        }
        self.queued -= dropped;
    }

    /// Fails the partition's records that were never sent. A batch whose fate is unknown
    /// stays, to be sent again until `until` (then its answer says where it is), while its
    /// senders wait.
    fn fail_unsent(&mut self, partition: i32, e: &LogError, until: Instant) {
        if let Some(q) = self.queues.get_mut(&partition) {
            self.queued -= q.len();
            fail(q.drain(..).collect(), e);
        }
        match self.again.remove(&partition) {
            Some(b) if b.unknown && !b.abandoned() => {
                self.again.insert(partition, b);
                self.held.insert(partition, until);
            }
            Some(b) => {
                if !b.unknown {
                    self.unwind(partition, &b);
                }
                fail(b.records, e);
            }
            None => {}
        }
    }

    /// The stamp of `n` new records of `partition` (None: unstamped).
    fn stamp(&mut self, partition: i32, n: usize) -> Option<Stamp> {
        let seq = match self.sequences.get_mut(&partition) {
            Some(seq) => seq,
            None => {
                let producer = self.producer?;
                self.sequences
                    .entry(partition)
                    .or_insert(Sequence { producer, next: 0 })
            }
        };
        let base_sequence = seq.next;
        seq.next = next_sequence(base_sequence, n);
        Some(Stamp {
            producer_id: seq.producer.0,
            epoch: seq.producer.1,
            base_sequence,
        })
    }

    /// Takes the next request's batches for one broker's partitions: from each partition
    /// in turn (starting at `start`, for fairness), a batch to send again as it was, else
    /// its oldest records, up to [`MAX_REQUEST_BYTES`]; new batches are stamped. Records
    /// whose sender stopped waiting are dropped (unless in a batch sent again).
    fn take(&mut self, mut partitions: Vec<i32>, start: usize) -> HashMap<i32, Batch> {
        partitions.sort_unstable();
        if !partitions.is_empty() {
            let n = start % partitions.len();
            partitions.rotate_left(n);
        }
        let mut groups: HashMap<i32, Batch> = HashMap::new();
        let mut bytes = 0;
        'partitions: for p in partitions {
            if let Some(b) = self.again.remove(&p) {
                let size = b.size();
                if bytes > 0 && bytes + size > MAX_REQUEST_BYTES {
                    self.again.insert(p, b);
                    break 'partitions;
                }
                bytes += size;
                groups.insert(p, b);
                continue;
            }
            let Some(q) = self.queues.get_mut(&p) else {
                continue;
            };
            let mut records = Vec::new();
            let mut full = false;
            while let Some(front) = q.front() {
                if !front.done.is_closed() && bytes > 0 && bytes + front.size > MAX_REQUEST_BYTES {
                    full = true;
                    break;
                }
                let Some(r) = q.pop_front() else { break };
                self.queued -= 1;
                if r.done.is_closed() {
                    continue;
                }
                bytes += r.size;
                records.push(r);
            }
            if !records.is_empty() {
                let stamp = self.stamp(p, records.len());
                groups.insert(
                    p,
                    Batch {
                        records,
                        stamp,
                        unknown: false,
                    },
                );
            }
            if full {
                break 'partitions;
            }
        }
        for p in groups.keys() {
            self.in_flight.insert(*p);
        }
        groups
    }
}

/// Why a request failed: the broker could not be reached (its records fail at once), or
/// the request got no usable answer (its records are retried: they may have been written,
/// and a duplicate is dropped downstream, but a reordering would not be).
enum FlightError {
    Connect(LogError),
    Request(LogError),
    /// The records could not be encoded (compressed): they fail.
    Encode(LogError),
}

struct Flight {
    node: i32,
    conn: Option<Conn>,
    groups: HashMap<i32, Batch>,
    result: Result<Vec<Produced>, FlightError>,
}

/// After a failed InitProducerId, the next attempt waits this long.
const IDENTITY_RETRY: Duration = Duration::from_millis(500);
/// An InitProducerId (trying the brokers in turn) gives up after this long.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(10);
/// Records nobody waits for are dropped from the queues this often.
const PRUNE_EVERY: Duration = Duration::from_millis(250);

type Asking = futures_util::future::BoxFuture<'static, Result<Option<(i64, i16)>, LogError>>;

/// The producer: per broker one request in flight, carrying every partition it leads.
async fn run(
    cluster: Arc<Cluster>,
    mut rx: mpsc::Receiver<Queued>,
    timeout: Duration,
    compression: Compression,
) {
    let mut parts = Partitions::default();
    let mut idle: HashMap<i32, Conn> = HashMap::new();
    let mut busy: HashSet<i32> = HashSet::new();
    let mut down_until: HashMap<i32, Instant> = HashMap::new();
    let mut flights = FuturesUnordered::new();
    // The InitProducerId in progress (at most one), and when the next may start.
    let mut asking: FuturesUnordered<Asking> = FuturesUnordered::new();
    let mut ask_at = Instant::now();
    let mut pruned = Instant::now();
    let mut refreshed: Option<Instant> = None;
    let mut open = true;
    let mut turn = 0usize;
    loop {
        while open && parts.queued < PRODUCE_QUEUE {
            match rx.try_recv() {
                Ok(q) => parts.push(q),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let now = Instant::now();
        if parts.waits_for_id() && asking.is_empty() && ask_at <= now {
            let c = Arc::clone(&cluster);
            asking.push(Box::pin(async move {
                tokio::time::timeout(IDENTITY_TIMEOUT, c.init_producer_id())
                    .await
                    .unwrap_or_else(|_| Err(unavailable("InitProducerId", "no answer in time")))
            }));
        }
        if now.duration_since(pruned) >= PRUNE_EVERY {
            parts.prune();
            pruned = now;
        }
        // Metadata refreshes asked for by this loop, at most one per RETRY_PAUSE.
        let mut refresh = || {
            if refreshed.is_none_or(|t| now.duration_since(t) >= RETRY_PAUSE) {
                cluster.refresh_soon();
                refreshed = Some(now);
            }
        };
        // Start a request on every idle broker that has records to send.
        parts.held.retain(|_, t| *t > now);
        // Another broker can take over a partition whose leader is gone when the metadata
        // lists one that is not known to be down: its records wait for that (until their
        // senders stop waiting). Otherwise (one broker, or all of them down) nobody can,
        // and senders hear at once.
        let brokers = cluster.broker_ids();
        let up = |b: &i32| down_until.get(b).is_none_or(|t| *t <= now);
        let taken_over = |node: Option<i32>| {
            brokers.len() > 1 && brokers.iter().any(|b| Some(*b) != node && up(b))
        };
        let mut by_node: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut leaderless = Vec::new();
        for p in parts.ready() {
            match cluster.leader(p) {
                Some(node) => by_node.entry(node).or_default().push(p),
                None => leaderless.push(p),
            }
        }
        if !leaderless.is_empty() {
            refresh();
        }
        for p in leaderless {
            if taken_over(None) {
                parts.held.insert(p, now + RETRY_PAUSE);
            } else {
                let e = LogError::Unavailable(format!("no Kafka leader known for partition {p}"));
                parts.fail_unsent(p, &e, now + RETRY_PAUSE);
            }
        }
        for (node, ps) in by_node {
            if busy.contains(&node) {
                continue;
            }
            if let Some(t) = down_until.get(&node).filter(|t| **t > now) {
                if taken_over(Some(node)) {
                    refresh();
                    for p in ps {
                        parts.held.insert(p, *t);
                    }
                } else {
                    let e = unavailable("Kafka", format!("broker {node} is unreachable"));
                    for p in ps {
                        parts.fail_unsent(p, &e, *t);
                    }
                }
                continue;
            }
            turn = turn.wrapping_add(1);
            let groups = parts.take(ps, turn);
            if groups.is_empty() {
                continue;
            }
            busy.insert(node);
            let conn = idle.remove(&node);
            flights.push(flight(
                Arc::clone(&cluster),
                node,
                conn,
                groups,
                timeout,
                compression,
            ));
        }
        if !open && flights.is_empty() && parts.idle() {
            return;
        }
        let mut next_retry = parts.held.values().min().copied();
        if parts.waits_for_id() && asking.is_empty() {
            next_retry = Some(next_retry.map_or(ask_at, |t| t.min(ask_at)));
        }
        if !parts.idle() {
            let prune_at = pruned + PRUNE_EVERY;
            next_retry = Some(next_retry.map_or(prune_at, |t| t.min(prune_at)));
        }
        tokio::select! {
            q = rx.recv(), if open && parts.queued < PRODUCE_QUEUE => match q {
                Some(q) => parts.push(q),
                None => open = false,
            },
            Some(f) = flights.next(), if !flights.is_empty() => {
                busy.remove(&f.node);
                for p in f.groups.keys() {
                    parts.in_flight.remove(p);
                }
                settle(&cluster, &mut parts, &mut idle, &mut down_until, f);
            }
            Some(id) = asking.next(), if !asking.is_empty() => match id {
                Ok(id) => {
                    if let Some((id, epoch)) = id {
                        tracing::debug!(producer_id = id, epoch, "kafka: idempotent producer");
                    }
                    parts.new_producer(id);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka: no producer id yet; retrying");
                    ask_at = Instant::now() + IDENTITY_RETRY;
                }
            },
            _ = tokio::time::sleep_until(next_retry.unwrap_or(now).into()), if next_retry.is_some() => {}
            else => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// Sends one request, on the broker's connection or a new one. A connection found broken
/// (the broker closes idle ones) is replaced and the request sent once more.
async fn flight(
    cluster: Arc<Cluster>,
    node: i32,
    mut conn: Option<Conn>,
    groups: HashMap<i32, Batch>,
    timeout: Duration,
    compression: Compression,
) -> Flight {
    let n: usize = groups.values().map(|b| b.records.len()).sum();
    metrics::histogram!(crate::telemetry::names::PRODUCE_BATCH).record(n as f64);
    // The broker answers within its timeout, partition by partition (one slow partition
    // gets RequestTimedOut, the rest their offsets); ours is only for a silent broker.
    let request = match build_request(
        &cluster.topic,
        &groups,
        broker_timeout(timeout),
        compression,
    ) {
        Ok(r) => r,
        Err(e) => {
            return Flight {
                node,
                conn,
                groups,
                result: Err(FlightError::Encode(LogError::Other(format!(
                    "encoding a produce request: {e}"
                )))),
            }
        }
    };
    // A second after the broker's own time-out, so that a leader gone silent (no reset)
    // frees its partitions for the new leader while their senders still wait.
    let client_timeout = broker_timeout(timeout) + Duration::from_secs(1);
    let mut resent = false;
    let result = loop {
        let c = match conn.take() {
            Some(c) => c,
            None => match cluster.connect_node(node).await {
                Ok(c) => c,
                // After a first attempt on a connection that broke, the broker may have
                // written the records: their fate is unknown, not "never sent".
                Err(e) if resent => break Err(FlightError::Request(e)),
                Err(e) => break Err(FlightError::Connect(e)),
            },
        };
        crate::telemetry::hops::kafka_request(crate::telemetry::hops::Kafka::Produce);
        match tokio::time::timeout(client_timeout, c.produce(&request)).await {
            Ok(Ok(response)) => {
                conn = Some(c);
                break Ok(response);
            }
            Ok(Err(e)) if !resent && e.broken => resent = true,
            Ok(Err(e)) => break Err(FlightError::Request(unavailable("producing", e))),
            Err(_) => {
                break Err(FlightError::Request(LogError::Unavailable(format!(
                    "producing: no answer from Kafka within {client_timeout:?}"
                ))))
            }
        }
    };
    Flight {
        node,
        conn,
        groups,
        result,
    }
}

/// The `timeout_ms` the broker is given: less than the senders wait, so it answers in time.
fn broker_timeout(timeout: Duration) -> Duration {
    (timeout * 3 / 4).max(Duration::from_millis(100))
}

/// Answers a request's waiters: offsets, a retry for what failed retryably (in front of
/// the partition's later records), the error for the rest.
fn settle(
    cluster: &Arc<Cluster>,
    parts: &mut Partitions,
    idle: &mut HashMap<i32, Conn>,
    down_until: &mut HashMap<i32, Instant>,
    f: Flight,
) {
    let retry_at = Instant::now() + RETRY_PAUSE;
    let mut groups = f.groups;
    match f.result {
        Ok(response) => {
            if let Some(c) = f.conn {
                idle.insert(f.node, c);
            }
            down_until.remove(&f.node);
            let mut stale = false;
            for p in response {
                let partition = p.partition;
                let Some(mut batch) = groups.remove(&partition) else {
                    continue;
                };
                match p.result {
                    Ok(base_offset) => {
                        for (i, q) in batch.records.into_iter().enumerate() {
                            let _ = q.done.send(Ok(base_offset + i as i64));
                        }
                    }
                    Err(e) if e.producer_state() && batch.stamp.is_some() => {
                        // The broker wrote nothing of it. If the partition still stamps
                        // with that id, it takes a new one; the records go again under it.
                        if parts.current(partition, batch.stamp) {
                            tracing::warn!(
                                node = f.node,
                                partition,
                                refusal = %e,
                                "kafka: the broker disagrees with the partition's sequence numbers; taking a new producer id"
                            );
                            parts.renew(partition);
                        }
                        parts.requeue(partition, batch.records);
                        parts.held.insert(partition, retry_at);
                    }
                    Err(e) => {
                        tracing::debug!(node = f.node, partition, error = %e, "kafka: produce refused");
                        stale |= e.stale();
                        // A time-out may have been written (not yet on enough replicas).
                        batch.unknown |= e.maybe_written();
                        let err = partition_error(e);
                        if err.retryable() {
                            parts.retry(partition, batch, retry_at);
                        } else {
                            if !batch.unknown {
                                parts.unwind(partition, &batch);
                            }
                            fail(batch.records, &err);
                        }
                    }
                }
            }
            // Partitions missing from the answer: their fate is unknown.
            for (p, mut b) in groups {
                tracing::warn!(
                    node = f.node,
                    partition = p,
                    "kafka: no answer for a partition; retrying"
                );
                b.unknown = true;
                parts.retry(p, b, retry_at);
            }
            if stale {
                cluster.refresh_soon();
            }
        }
        Err(FlightError::Connect(e)) => {
            tracing::warn!(node = f.node, error = %e, "kafka: cannot connect to the broker");
            let now = Instant::now();
            down_until.insert(f.node, now + RECONNECT_BACKOFF);
            cluster.refresh_soon();
            // This attempt reached no broker. If another broker can take the partitions
            // over, they wait for it; alone, the broker's senders hear at once, unless an
            // earlier attempt may have been written: that batch is sent again when the
            // broker is back (while its senders wait), so its answer names the first write.
            let others = cluster
                .broker_ids()
                .iter()
                .any(|b| *b != f.node && down_until.get(b).is_none_or(|t| *t <= now));
            for (p, b) in groups {
                if others || b.unknown {
                    parts.retry(p, b, now + RECONNECT_BACKOFF);
                } else {
                    parts.unwind(p, &b);
                    fail(b.records, &e);
                }
            }
        }
        Err(FlightError::Encode(e)) => {
            if let Some(c) = f.conn {
                idle.insert(f.node, c);
            }
            for (p, b) in groups {
                if !b.unknown {
                    parts.unwind(p, &b);
                }
                fail(b.records, &e);
            }
        }
        Err(FlightError::Request(e)) => {
            tracing::warn!(node = f.node, error = %e, "kafka: produce request failed; retrying its records");
            cluster.refresh_soon();
            for (p, mut b) in groups {
                b.unknown = true;
                parts.retry(p, b, retry_at);
            }
        }
    }
}

fn fail(records: Vec<Queued>, e: &LogError) {
    for q in records {
        let _ = q.done.send(Err(e.duplicate()));
    }
}

/// One produce request (acks = all) with a record batch per partition (in partition
/// order), in queue order within each.
fn build_request(
    topic: &str,
    groups: &HashMap<i32, Batch>,
    timeout: Duration,
    compression: Compression,
) -> Result<wire::ProduceRequest, String> {
    let mut order: Vec<i32> = groups.keys().copied().collect();
    order.sort_unstable();
    let batches = order
        .into_iter()
        .map(|p| {
            let b = &groups[&p];
            (
                p,
                b.records.iter().map(|q| q.record.clone()).collect(),
                b.stamp,
            )
        })
        .collect();
    wire::produce_request(topic, batches, timeout, compression)
}

/// Broker-side trouble that a resend can get past is retryable; the rest (a record too
/// large, a corrupt batch, no authorisation) is not.
fn partition_error(e: Refusal) -> LogError {
    if e.retryable() {
        LogError::Unavailable(format!("Kafka: {e}"))
    } else {
        LogError::Other(format!("Kafka refused the record: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(partition: i32, value: &[u8]) -> (Queued, oneshot::Receiver<Result<i64, LogError>>) {
        let (done, wait) = oneshot::channel();
        let record = Record {
            key: None,
            value: Some(value.to_vec()),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        };
        (
            Queued {
                partition,
                size: record.approximate_size(),
                record,
                done,
            },
            wait,
        )
    }

    fn values(g: &Batch) -> Vec<Vec<u8>> {
        g.records
            .iter()
            .map(|q| q.record.value.clone().unwrap_or_default())
            .collect()
    }

    fn seq(g: &Batch) -> Option<i32> {
        g.stamp.map(|s| s.base_sequence)
    }

    #[test]
    fn a_request_takes_each_partition_in_queue_order() {
        let mut parts = Partitions::default();
        let mut waits = Vec::new();
        for (p, v) in [(3, "a"), (1, "b"), (3, "c")] {
            let (q, w) = queued(p, v.as_bytes());
            parts.push(q);
            waits.push(w);
        }
        let groups = parts.take(vec![3, 1], 0);
        assert_eq!(values(&groups[&3]), vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(values(&groups[&1]), vec![b"b".to_vec()]);
        assert_eq!(parts.queued, 0);
        assert!(parts.in_flight.contains(&3) && parts.in_flight.contains(&1));

        let request = build_request(
            "t",
            &groups,
            broker_timeout(Duration::from_secs(5)),
            Compression::None,
        )
        .unwrap();
        let (acks, timeout_ms, parts) = request.summary();
        assert_eq!(parts, vec![(1, 1), (3, 2)]);
        assert_eq!(acks, -1, "acks=all");
        assert_eq!(
            timeout_ms, 3750,
            "the broker answers before senders give up"
        );
    }

    #[test]
    fn a_request_stops_at_the_size_limit_and_skips_abandoned_records() {
        let mut parts = Partitions::default();
        let big = vec![0u8; MAX_REQUEST_BYTES / 2 + 1];
        let (q1, _w1) = queued(0, &big);
        let (q2, w2) = queued(0, b"gone");
        drop(w2);
        let (q3, _w3) = queued(0, &big);
        for q in [q1, q2, q3] {
            parts.push(q);
        }
        let first = parts.take(vec![0], 0);
        assert_eq!(first[&0].records.len(), 1, "the second large record waits");
        parts.in_flight.clear();
        let second = parts.take(vec![0], 0);
        assert_eq!(second[&0].records.len(), 1);
        assert_eq!(parts.queued, 0);
    }

    #[test]
    fn a_retry_goes_before_the_records_queued_after_it() {
        let mut parts = Partitions::default();
        let (a, _wa) = queued(2, b"a");
        let (b, _wb) = queued(2, b"b");
        parts.push(a);
        parts.push(b);
        let mut sent = parts.take(vec![2], 0);
        // "c" is queued behind the request in flight; then the request fails.
        let (c, _wc) = queued(2, b"c");
        parts.push(c);
        parts.in_flight.remove(&2);
        let at = Instant::now() + RETRY_PAUSE;
        parts.retry(2, sent.remove(&2).expect("sent"), at);
        assert_eq!(
            parts.held.get(&2),
            Some(&at),
            "held back until the retry time"
        );
        let again = parts.take(vec![2], 0);
        assert_eq!(
            values(&again[&2]),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn a_stamped_batch_is_sent_again_as_it_was_and_later_records_follow_its_sequence() {
        let mut parts = Partitions::default();
        parts.new_producer(Some((7, 0)));
        let (a, _wa) = queued(2, b"a");
        let (b, wb) = queued(2, b"b");
        parts.push(a);
        parts.push(b);
        let mut sent = parts.take(vec![2], 0);
        assert_eq!(seq(&sent[&2]), Some(0));
        // "c" comes while the request is out; the answer is lost; "b"'s sender gives up.
        let (c, _wc) = queued(2, b"c");
        parts.push(c);
        drop(wb);
        parts.in_flight.remove(&2);
        let mut batch = sent.remove(&2).expect("sent");
        batch.unknown = true;
        parts.retry(2, batch, Instant::now());
        parts.held.clear();
        let again = parts.take(vec![2], 0);
        assert_eq!(
            values(&again[&2]),
            vec![b"a".to_vec(), b"b".to_vec()],
            "the same records, the abandoned one too, and nothing newer"
        );
        assert_eq!(seq(&again[&2]), Some(0), "the same stamp");
        parts.in_flight.remove(&2);
        let next = parts.take(vec![2], 0);
        assert_eq!(values(&next[&2]), vec![b"c".to_vec()]);
        assert_eq!(seq(&next[&2]), Some(2));
    }

    #[test]
    fn a_batch_refused_for_good_gives_its_sequence_back_unless_it_may_have_been_written() {
        let mut parts = Partitions::default();
        parts.new_producer(Some((7, 0)));
        let (a, _wa) = queued(1, b"a");
        parts.push(a);
        let mut sent = parts.take(vec![1], 0);
        parts.in_flight.remove(&1);
        parts.unwind(1, &sent.remove(&1).expect("sent"));
        let (b, _wb) = queued(1, b"b");
        parts.push(b);
        let mut next = parts.take(vec![1], 0);
        assert_eq!(seq(&next[&1]), Some(0), "the refused batch was not written");
        parts.in_flight.remove(&1);
        // "b"'s answer is lost, then its sender gives up: its numbers stay used (had it
        // been written, a later batch with the same numbers would be taken for it).
        let mut batch = next.remove(&1).expect("sent");
        batch.unknown = true;
        drop(_wb);
        parts.retry(1, batch, Instant::now());
        let (c, _wc) = queued(1, b"c");
        parts.push(c);
        parts.held.clear();
        let after = parts.take(vec![1], 0);
        assert_eq!(values(&after[&1]), vec![b"c".to_vec()]);
        assert_eq!(seq(&after[&1]), Some(1));
    }

    #[test]
    fn a_partition_the_brokers_disagree_with_takes_a_new_id_the_others_keep_theirs() {
        let mut parts = Partitions::default();
        parts.new_producer(Some((7, 0)));
        let (a, _wa) = queued(1, b"a");
        let (b, _wb) = queued(2, b"b");
        parts.push(a);
        parts.push(b);
        let mut sent = parts.take(vec![1, 2], 0);
        parts.in_flight.clear();
        // Partition 2's answer is lost (it is sent again as it was, under id 7); the
        // brokers refuse partition 1's numbers: it takes a new id.
        let mut two = sent.remove(&2).expect("sent");
        two.unknown = true;
        parts.retry(2, two, Instant::now());
        let one = sent.remove(&1).expect("sent");
        assert!(parts.current(1, one.stamp));
        parts.renew(1);
        parts.requeue(1, one.records);
        assert!(parts.ready().is_empty() || parts.ready() == vec![2]);
        parts.held.clear();
        assert_eq!(
            parts.ready(),
            vec![2],
            "partition 1 waits for the new id, partition 2 does not"
        );
        parts.new_producer(Some((8, 0)));
        let mut ready = parts.ready();
        ready.sort_unstable();
        assert_eq!(ready, vec![1, 2]);
        let again = parts.take(vec![1, 2], 0);
        assert_eq!(
            again[&1].stamp,
            Some(Stamp {
                producer_id: 8,
                epoch: 0,
                base_sequence: 0
            })
        );
        assert_eq!(
            again[&2].stamp,
            Some(Stamp {
                producer_id: 7,
                epoch: 0,
                base_sequence: 0
            }),
            "partition 2's batch goes again as it was"
        );
    }

    #[test]
    fn records_nobody_waits_for_are_pruned_from_held_partitions() {
        let mut parts = Partitions::default();
        let (a, wa) = queued(1, b"a");
        let (b, _wb) = queued(1, b"b");
        parts.push(a);
        parts.push(b);
        drop(wa);
        parts.prune();
        assert_eq!(parts.queued, 1);
        assert_eq!(parts.queues[&1].len(), 1);
    }

    #[test]
    fn sequences_wrap_past_the_largest_int32_to_zero() {
        assert_eq!(next_sequence(5, 3), 8);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn broker_trouble_is_retryable_a_bad_record_is_not() {
        assert!(Refusal::out_of_order_sequence().producer_state());
        assert!(!Refusal::not_leader().producer_state());
        assert!(Refusal::request_timed_out().maybe_written());
        assert!(!Refusal::not_leader().maybe_written());
        assert!(partition_error(Refusal::not_leader()).retryable());
        assert!(!partition_error(Refusal::message_too_large()).retryable());
    }
}
