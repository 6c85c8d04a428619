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
//! its sends. A record is retried until its sender stops waiting; a broker that cannot be
//! reached fails its records at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use rskafka::record::Record;
use tokio::sync::{mpsc, oneshot};

use super::cluster::{unavailable, Cluster};
use super::wire::{self, Compression, Conn, Produced, Refusal};
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
}

impl Partitions {
    fn push(&mut self, q: Queued) {
        self.queued += 1;
        self.queues.entry(q.partition).or_default().push_back(q);
    }

    /// Puts a failed request's records back in front of what came after them.
    fn retry(&mut self, partition: i32, records: Vec<Queued>, at: Instant) {
        let q = self.queues.entry(partition).or_default();
        for r in records.into_iter().rev() {
            if !r.done.is_closed() {
                self.queued += 1;
                q.push_front(r);
            }
        }
        self.held.insert(partition, at);
    }

    fn fail_all(&mut self, partition: i32, e: &LogError) {
        if let Some(q) = self.queues.get_mut(&partition) {
            self.queued -= q.len();
            fail(q.drain(..).collect(), e);
        }
    }

    /// Takes the next request's records for one broker's partitions: from each partition
    /// in turn (starting at `start`, for fairness), oldest first, up to
    /// [`MAX_REQUEST_BYTES`]. Records whose sender stopped waiting are dropped.
    fn take(&mut self, mut partitions: Vec<i32>, start: usize) -> HashMap<i32, Vec<Queued>> {
        partitions.sort_unstable();
        if !partitions.is_empty() {
            let n = start % partitions.len();
            partitions.rotate_left(n);
        }
        let mut groups: HashMap<i32, Vec<Queued>> = HashMap::new();
        let mut bytes = 0;
        'partitions: for p in partitions {
            let Some(q) = self.queues.get_mut(&p) else {
                continue;
            };
            while let Some(front) = q.front() {
                if !front.done.is_closed() && bytes > 0 && bytes + front.size > MAX_REQUEST_BYTES {
                    break 'partitions;
                }
                let Some(r) = q.pop_front() else { break };
                self.queued -= 1;
                if r.done.is_closed() {
                    continue;
                }
                bytes += r.size;
                groups.entry(p).or_default().push(r);
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
    groups: HashMap<i32, Vec<Queued>>,
    result: Result<Vec<Produced>, FlightError>,
}

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
    loop {
        while open && parts.queued < PRODUCE_QUEUE {
            match rx.try_recv() {
                Ok(q) => parts.push(q),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        // Start a request on every idle broker that has records to send.
        let now = Instant::now();
        parts.held.retain(|_, t| *t > now);
        let mut by_node: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut leaderless = Vec::new();
        for (p, q) in &parts.queues {
            if q.is_empty() || parts.in_flight.contains(p) || parts.held.contains_key(p) {
                continue;
            }
            match cluster.leader(*p) {
                Some(node) => by_node.entry(node).or_default().push(*p),
                None => leaderless.push(*p),
            }
        }
        if !leaderless.is_empty() {
            cluster.refresh_soon();
        }
        for p in leaderless {
            let e = LogError::Unavailable(format!("no Kafka leader known for partition {p}"));
            parts.fail_all(p, &e);
        }
        for (node, ps) in by_node {
            if busy.contains(&node) {
                continue;
            }
            if down_until.get(&node).is_some_and(|t| *t > now) {
                let e = unavailable("Kafka", format!("broker {node} is unreachable"));
                for p in ps {
                    parts.fail_all(p, &e);
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
        if !open && flights.is_empty() && parts.queued == 0 {
            return;
        }
        let next_retry = parts.held.values().min().copied();
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
    groups: HashMap<i32, Vec<Queued>>,
    timeout: Duration,
    compression: Compression,
) -> Flight {
    let n: usize = groups.values().map(Vec::len).sum();
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
                let Some(g) = groups.remove(&partition) else {
                    continue;
                };
                match p.result {
                    Ok(base_offset) => {
                        for (i, q) in g.into_iter().enumerate() {
                            let _ = q.done.send(Ok(base_offset + i as i64));
                        }
                    }
                    Err(e) => {
                        tracing::debug!(node = f.node, partition, error = %e, "kafka: produce refused");
                        stale |= e.stale();
                        let err = partition_error(e);
                        if err.retryable() {
                            parts.retry(partition, g, retry_at);
                        } else {
                            fail(g, &err);
                        }
                    }
                }
            }
            for (p, g) in groups {
                fail(
                    g,
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
            for g in groups.into_values() {
                fail(g, &e);
            }
        }
        Err(FlightError::Encode(e)) => {
            if let Some(c) = f.conn {
                idle.insert(f.node, c);
            }
            for g in groups.into_values() {
                fail(g, &e);
            }
        }
        Err(FlightError::Request(e)) => {
            tracing::warn!(node = f.node, error = %e, "kafka: produce request failed; retrying its records");
            cluster.refresh_soon();
            for (p, g) in groups {
                parts.retry(p, g, retry_at);
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
    groups: &HashMap<i32, Vec<Queued>>,
    timeout: Duration,
    compression: Compression,
) -> Result<wire::ProduceRequest, String> {
    let mut order: Vec<i32> = groups.keys().copied().collect();
    order.sort_unstable();
    let batches = order
        .into_iter()
        .map(|p| (p, groups[&p].iter().map(|q| q.record.clone()).collect()))
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

    fn values(g: &[Queued]) -> Vec<Vec<u8>> {
        g.iter()
            .map(|q| q.record.value.clone().unwrap_or_default())
            .collect()
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
        assert_eq!(first[&0].len(), 1, "the second large record waits");
        parts.in_flight.clear();
        let second = parts.take(vec![0], 0);
        assert_eq!(second[&0].len(), 1);
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
        parts.retry(2, sent.remove(&2).unwrap_or_default(), at);
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
    fn broker_trouble_is_retryable_a_bad_record_is_not() {
        assert!(partition_error(Refusal::not_leader()).retryable());
        assert!(!partition_error(Refusal::message_too_large()).retryable());
    }
}
