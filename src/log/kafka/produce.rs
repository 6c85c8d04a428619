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
    /// The producer id and epoch batches are stamped with (None: unstamped, while no id is
    /// known or where the cluster gives none).
    producer: Option<(i64, i16)>,
    /// Per partition, the sequence number of its next new record under `producer`.
    sequences: HashMap<i32, i32>,
    /// Per partition, a stamped batch to send again as it was, before anything newer.
    again: HashMap<i32, Batch>,
}

impl Partitions {
    fn push(&mut self, q: Queued) {
        self.queued += 1;
        self.queues.entry(q.partition).or_default().push_back(q);
    }

    /// Partitions with something to send and nothing in flight or held.
    fn ready(&self) -> Vec<i32> {
        let mut ready: HashSet<i32> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(p, _)| *p)
            .collect();
        ready.extend(self.again.keys().copied());
        ready.retain(|p| !self.in_flight.contains(p) && !self.held.contains_key(p));
        ready.into_iter().collect()
    }

    fn idle(&self) -> bool {
        self.queued == 0 && self.again.is_empty()
    }

    /// A batch to send again after `at`, before what came after it: as it was if it is
    /// stamped with the current producer id, else its records go back in front of the
    /// queue (to be stamped anew). Records whose sender stopped waiting are dropped with
    /// it when nobody waits for any of them: its fate stays unknown, and should it not have
    /// been written, the next batch is out of sequence and the producer takes a new id.
    fn retry(&mut self, partition: i32, batch: Batch, at: Instant) {
        if batch.abandoned() {
            return;
        }
        let current =
            batch.stamp.is_some() && batch.stamp.map(|s| (s.producer_id, s.epoch)) == self.producer;
        if current {
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

    /// A batch refused for good was not written: its sequence numbers go to the next one.
    fn unwind(&mut self, partition: i32, batch: &Batch) {
        let Some(stamp) = batch.stamp else { return };
        if Some((stamp.producer_id, stamp.epoch)) != self.producer {
            return;
        }
        let after = next_sequence(stamp.base_sequence, batch.records.len());
        if self.sequences.get(&partition) == Some(&after) {
            self.sequences.insert(partition, stamp.base_sequence);
        }
    }

    /// A new producer id (or none): sequence numbers start again at 0, and batches waiting
    /// to be sent again go back to their queues to be stamped with it.
    fn new_producer(&mut self, producer: Option<(i64, i16)>) {
        self.producer = producer;
        self.sequences.clear();
        let again: Vec<(i32, Batch)> = self.again.drain().collect();
        for (p, b) in again {
            self.requeue(p, b.records);
        }
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
                let stamp = self.producer.map(|(producer_id, epoch)| {
                    let seq = self.sequences.entry(p).or_insert(0);
                    let base_sequence = *seq;
                    *seq = next_sequence(base_sequence, records.len());
                    Stamp {
                        producer_id,
                        epoch,
                        base_sequence,
                    }
                });
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

/// Whether the producer has its id.
enum Identity {
    /// Asked for at this instant (at once at first, again after a failed attempt).
    Wanted(Instant),
    /// Known, or known not to be offered: batches go out (stamped or not).
    Settled,
}

/// After a failed InitProducerId, the next attempt waits this long.
const IDENTITY_RETRY: Duration = Duration::from_millis(500);

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
    let mut open = true;
    let mut turn = 0usize;
    let mut identity = Identity::Wanted(Instant::now());
    loop {
        while open && parts.queued < PRODUCE_QUEUE {
            match rx.try_recv() {
                Ok(q) => parts.push(q),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if let Identity::Wanted(at) = identity {
            // Rare (at start, and when the brokers disagree with our numbers), so the
            // loop waits for it: nothing may go out unstamped meanwhile.
            if at <= Instant::now() && !parts.idle() {
                identity = match cluster.init_producer_id().await {
                    Ok(id) => {
                        if let Some((id, epoch)) = id {
                            tracing::debug!(producer_id = id, epoch, "kafka: idempotent producer");
                        }
                        parts.new_producer(id);
                        Identity::Settled
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka: no producer id yet; retrying");
                        Identity::Wanted(Instant::now() + IDENTITY_RETRY)
                    }
                };
            }
        }
        // Start a request on every idle broker that has records to send.
        let now = Instant::now();
        parts.held.retain(|_, t| *t > now);
        // With several brokers, another takes over a partition whose leader is gone: its
        // records wait for that (until their senders stop waiting). One broker alone has
        // no one to take over, so its senders hear at once.
        let cluster_of_many = cluster.broker_count() > 1;
        let mut by_node: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut leaderless = Vec::new();
        let ready = if matches!(identity, Identity::Settled) {
            parts.ready()
        } else {
            Vec::new()
        };
        for p in ready {
            match cluster.leader(p) {
                Some(node) => by_node.entry(node).or_default().push(p),
                None => leaderless.push(p),
            }
        }
        if !leaderless.is_empty() {
            cluster.refresh_soon();
        }
        for p in leaderless {
            if cluster_of_many {
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
                if cluster_of_many {
                    cluster.refresh_soon();
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
        if let Identity::Wanted(at) = identity {
            if !parts.idle() {
                next_retry = Some(next_retry.map_or(at, |t| t.min(at)));
            }
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
                if settle(&cluster, &mut parts, &mut idle, &mut down_until, f) {
                    identity = Identity::Wanted(Instant::now());
                }
            }
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
    let client_timeout = timeout + Duration::from_secs(1);
    let mut resent = false;
    let result = loop {
        let c = match conn.take() {
            Some(c) => c,
            None => match cluster.connect_node(node).await {
                Ok(c) => c,
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
/// the partition's later records), the error for the rest. True: the brokers disagree with
/// the producer's id or sequence numbers, so it needs a new id.
fn settle(
    cluster: &Arc<Cluster>,
    parts: &mut Partitions,
    idle: &mut HashMap<i32, Conn>,
    down_until: &mut HashMap<i32, Instant>,
    f: Flight,
) -> bool {
    let retry_at = Instant::now() + RETRY_PAUSE;
    let mut groups = f.groups;
    let mut new_id = false;
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
                    Err(e)
                        if e.producer_state()
                            && batch.stamp.map(|s| (s.producer_id, s.epoch)) == parts.producer
                            && parts.producer.is_some() =>
                    {
                        tracing::warn!(
                            node = f.node,
                            partition,
                            refusal = %e,
                            "kafka: the broker disagrees with the producer's sequence; taking a new producer id"
                        );
                        new_id = true;
                        parts.requeue(partition, batch.records);
                        parts.held.insert(partition, retry_at);
                    }
                    Err(e) => {
                        tracing::debug!(node = f.node, partition, error = %e, "kafka: produce refused");
                        stale |= e.stale();
                        let err = partition_error(e);
                        if err.retryable() {
                            // A time-out may have been written (not yet on enough replicas).
                            batch.unknown = true;
                            parts.retry(partition, batch, retry_at);
                        } else {
                            parts.unwind(partition, &batch);
                            fail(batch.records, &err);
                        }
                    }
                }
            }
            for (p, b) in groups {
                fail(
                    b.records,
                    &LogError::Other(format!("Kafka did not answer for partition {p}")),
                );
            }
            if stale {
                cluster.refresh_soon();
            }
        }
        Err(FlightError::Connect(e)) => {
            tracing::warn!(node = f.node, error = %e, "kafka: cannot connect to the broker");
            down_until.insert(f.node, Instant::now() + RECONNECT_BACKOFF);
            cluster.refresh_soon();
            // This attempt reached no broker. In a cluster, another broker will lead these
            // partitions; alone, the broker's senders hear at once, unless an earlier
            // attempt may have been written: that batch is sent again when the broker is
            // back (while its senders wait), so its answer names the first write.
            let cluster_of_many = cluster.broker_count() > 1;
            for (p, b) in groups {
                if cluster_of_many || b.unknown {
                    parts.retry(p, b, Instant::now() + RECONNECT_BACKOFF);
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
    new_id
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
    fn a_batch_refused_for_good_gives_its_sequence_back_and_a_new_id_starts_at_zero() {
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
        // Its answer is lost, then the brokers disagree: a new id, the records again at 0.
        let mut batch = next.remove(&1).expect("sent");
        batch.unknown = true;
        parts.retry(1, batch, Instant::now());
        parts.new_producer(Some((8, 0)));
        parts.held.clear();
        let renewed = parts.take(vec![1], 0);
        assert_eq!(values(&renewed[&1]), vec![b"b".to_vec()]);
        assert_eq!(
            renewed[&1].stamp,
            Some(Stamp {
                producer_id: 8,
                epoch: 0,
                base_sequence: 0
            })
        );
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
        assert!(partition_error(Refusal::not_leader()).retryable());
        assert!(!partition_error(Refusal::message_too_large()).retryable());
    }
}
