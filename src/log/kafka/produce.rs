//! The gateway's producer: one task per partition *leader* (broker), which sends a single
//! produce request carrying the records of every partition that broker leads
//! (docs/decisions/0003-multi-partition-produce.md).
//!
//! rskafka's `PartitionClient::produce` sends one request per partition. At chat rates a
//! (gateway, partition) pair sees a record every few milliseconds, so nearly every request
//! carried one record, and Kafka's cost per request was the largest single cost on the
//! message path. The Kafka protocol lets one request carry batches for many partitions;
//! this module builds that request with rskafka's protocol types (its `unstable-fuzzing`
//! feature makes them public; the version is pinned in Cargo.lock) and sends it over its
//! `Messenger`, on our own TCP connection with `TCP_NODELAY`.
//!
//! Per broker, one request is in flight at a time, and it carries everything queued while
//! the previous one was out: a lone record goes at once (no linger), batches grow with
//! the load, and offsets follow queue order, because nothing overtakes the request in
//! flight. A failed request fails its records (retryably where the broker or the network
//! is at fault); the sender's client resends them under the same id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::protocol::error::Error as ProtocolError;
use rskafka::protocol::messages::{
    ProduceRequest, ProduceRequestPartitionData, ProduceRequestTopicData, ProduceResponse,
};
use rskafka::protocol::primitives::{Int16, Int32, NullableString, Records, String_};
use rskafka::protocol::record::{
    ControlBatchOrRecords, Record as WireRecord, RecordBatch, RecordBatchCompression,
    RecordBatchTimestampType, RecordHeader,
};
use rskafka::record::Record;
use tokio::sync::{mpsc, oneshot};

use super::cluster::{is_stale, unavailable, Cluster, Conn};
use crate::log::LogError;

/// One request's records, at most (the broker's default `message.max.bytes` is 1 MiB per
/// partition batch; a single larger record goes alone and the broker judges it).
const MAX_REQUEST_BYTES: usize = 512 * 1024;
/// Records waiting for a broker's producer; a full queue refuses (retryably).
const PRODUCE_QUEUE: usize = 8_192;
/// After a failed connect, a broker's producer waits this long before the next attempt
/// (records queued meanwhile fail at once, so senders hear it quickly).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// A record waiting for its produce request, and who waits for its offset.
pub(super) struct Queued {
    pub partition: i32,
    pub record: Record,
    pub size: usize,
    pub done: oneshot::Sender<Result<i64, LogError>>,
}

pub(super) struct Producer {
    cluster: Arc<Cluster>,
    brokers: Mutex<HashMap<i32, mpsc::Sender<Queued>>>,
    timeout: Duration,
}

impl Producer {
    /// The broker producers start with their first record.
    pub fn new(cluster: Arc<Cluster>, timeout: Duration) -> Self {
        Producer {
            cluster,
            brokers: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Queues a record on the producer of its partition's leader.
    pub fn enqueue(&self, q: Queued) -> Result<(), LogError> {
        let leader = self.cluster.leader(q.partition);
        let Some(node) = leader else {
            self.cluster.refresh_soon();
            return Err(LogError::Unavailable(format!(
                "no Kafka leader known for partition {}",
                q.partition
            )));
        };
        let tx = {
            let mut brokers = self.brokers.lock().unwrap_or_else(|e| e.into_inner());
            brokers
                .entry(node)
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(PRODUCE_QUEUE);
                    tokio::spawn(broker_loop(
                        node,
                        Arc::clone(&self.cluster),
                        rx,
                        self.timeout,
                    ));
                    tx
                })
                .clone()
        };
        match tx.try_send(q) {
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

/// Takes the next request's records: waits for one, then takes what else is queued, up to
/// [`MAX_REQUEST_BYTES`]; a record that does not fit is carried to the next request.
/// Records whose sender stopped waiting are dropped. None when the queue is closed.
async fn next_batch(
    rx: &mut mpsc::Receiver<Queued>,
    carried: &mut Option<Queued>,
) -> Option<Vec<Queued>> {
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => rx.recv().await?,
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(q) = next.take() {
            if !batch.is_empty() && bytes + q.size > MAX_REQUEST_BYTES {
                *carried = Some(q);
                break;
            }
            if !q.done.is_closed() {
                bytes += q.size;
                batch.push(q);
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            return Some(batch);
        }
    }
}

/// One broker's producer: one request in flight, carrying every partition's records.
async fn broker_loop(
    node: i32,
    cluster: Arc<Cluster>,
    mut rx: mpsc::Receiver<Queued>,
    timeout: Duration,
) {
    let mut conn: Option<Conn> = None;
    let mut carried = None;
    let mut retry_at: Option<Instant> = None;
    while let Some(batch) = next_batch(&mut rx, &mut carried).await {
        if conn.is_none() {
            if retry_at.is_some_and(|t| Instant::now() < t) {
                fail(batch, &unavailable("Kafka", "the broker is unreachable"));
                continue;
            }
            let connected = match cluster.addr(node) {
                Some(addr) => cluster.connect(&addr).await,
                None => Err(LogError::Unavailable(format!(
                    "Kafka broker {node} unknown"
                ))),
            };
            match connected {
                Ok(c) => {
                    retry_at = None;
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, "kafka: cannot connect to the broker");
                    retry_at = Some(Instant::now() + RECONNECT_BACKOFF);
                    cluster.refresh_soon();
                    fail(batch, &e);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_ref() else { continue };
        let n = batch.len();
        let (request, groups) = build_request(&cluster.topic, batch, timeout);
        let r = tokio::time::timeout(timeout, c.request(request)).await;
        metrics::histogram!(crate::telemetry::names::PRODUCE_BATCH).record(n as f64);
        match r {
            Ok(Ok(response)) => {
                if answer(groups, response, node) {
                    cluster.refresh_soon();
                }
            }
            Ok(Err(e)) => {
                // The connection is broken (or out of step): drop it, reconnect next time.
                conn = None;
                let e = unavailable("producing", e);
                for g in groups.into_values() {
                    fail(g, &e);
                }
            }
            Err(_) => {
                // A late answer would belong to a request nobody waits for: start afresh.
                conn = None;
                let e = LogError::Unavailable(format!(
                    "producing: no answer from Kafka within {timeout:?}"
                ));
                for g in groups.into_values() {
                    fail(g, &e);
                }
            }
        }
    }
}

fn fail(records: Vec<Queued>, e: &LogError) {
    for q in records {
        let _ = q.done.send(Err(e.duplicate()));
    }
}

/// One produce request (acks = all) with a record batch per partition, in queue order
/// within each; returns it with the waiters grouped the same way.
fn build_request(
    topic: &str,
    batch: Vec<Queued>,
    timeout: Duration,
) -> (ProduceRequest, HashMap<i32, Vec<Queued>>) {
    let mut groups: HashMap<i32, Vec<Queued>> = HashMap::new();
    let mut order = Vec::new();
    for q in batch {
        let g = groups.entry(q.partition).or_default();
        if g.is_empty() {
            order.push(q.partition);
        }
        g.push(q);
    }
    let mut partition_data = Vec::with_capacity(order.len());
    for p in order {
        let records: Vec<Record> = groups[&p].iter().map(|q| q.record.clone()).collect();
        partition_data.push(ProduceRequestPartitionData {
            index: Int32(p),
            records: Records(vec![record_batch(records)]),
        });
    }
    let request = ProduceRequest {
        transactional_id: NullableString(None),
        acks: Int16(-1),
        timeout_ms: Int32(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX)),
        topic_data: vec![ProduceRequestTopicData {
            name: String_(topic.to_owned()),
            partition_data,
        }],
    };
    (request, groups)
}

/// A non-transactional, uncompressed batch, as rskafka's own producer writes it.
pub(super) fn record_batch(records: Vec<Record>) -> RecordBatch {
    let n = records.len() as i32;
    let first = records.first().map(|r| r.timestamp).unwrap_or_default();
    let mut max = first;
    let records = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            max = max.max(r.timestamp);
            WireRecord {
                key: r.key,
                value: r.value,
                timestamp_delta: (r.timestamp - first).num_milliseconds(),
                offset_delta: i as i32,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(key, value)| RecordHeader { key, value })
                    .collect(),
            }
        })
        .collect();
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: 0,
        last_offset_delta: n - 1,
        is_transactional: false,
        base_sequence: -1,
        compression: RecordBatchCompression::NoCompression,
        timestamp_type: RecordBatchTimestampType::CreateTime,
        producer_id: -1,
        producer_epoch: -1,
        first_timestamp: first.timestamp_millis(),
        max_timestamp: max.timestamp_millis(),
        records: ControlBatchOrRecords::Records(records),
    }
}

/// Gives each waiter its offset or its partition's error. True if an error says the
/// metadata is stale (another broker leads the partition now).
fn answer(mut groups: HashMap<i32, Vec<Queued>>, response: ProduceResponse, node: i32) -> bool {
    let mut stale = false;
    for topic in response.responses {
        for p in topic.partition_responses {
            let Some(g) = groups.remove(&p.index.0) else {
                continue;
            };
            match p.error {
                None => {
                    for (i, q) in g.into_iter().enumerate() {
                        let _ = q.done.send(Ok(p.base_offset.0 + i as i64));
                    }
                }
                Some(e) => {
                    stale |= is_stale(&e);
                    tracing::debug!(node, partition = p.index.0, error = %e, "kafka: produce refused");
                    fail(g, &partition_error(e));
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
    stale
}

/// Broker-side trouble that a resend can get past is retryable; the rest (a record too
/// large, a corrupt batch, no authorisation) is not.
fn partition_error(e: ProtocolError) -> LogError {
    let retryable = is_stale(&e)
        || matches!(
            e,
            ProtocolError::RequestTimedOut
                | ProtocolError::NotEnoughReplicas
                | ProtocolError::NotEnoughReplicasAfterAppend
                | ProtocolError::KafkaStorageError
                | ProtocolError::NetworkException
                | ProtocolError::CoordinatorLoadInProgress
        );
    if retryable {
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

    #[test]
    fn one_request_groups_partitions_in_queue_order() {
        let (a, _wa) = queued(3, b"a");
        let (b, _wb) = queued(1, b"b");
        let (c, _wc) = queued(3, b"c");
        let (request, groups) = build_request("t", vec![a, b, c], Duration::from_secs(5));
        let parts = &request.topic_data[0].partition_data;
        assert_eq!(
            parts.iter().map(|p| p.index.0).collect::<Vec<_>>(),
            vec![3, 1]
        );
        let ControlBatchOrRecords::Records(r) = &parts[0].records.0[0].records else {
            panic!("not records")
        };
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].value.as_deref(), Some(&b"a"[..]));
        assert_eq!(r[1].value.as_deref(), Some(&b"c"[..]));
        assert_eq!(r[1].offset_delta, 1);
        assert_eq!(groups[&3].len(), 2);
        assert_eq!(request.acks.0, -1);
    }

    #[tokio::test]
    async fn batches_stop_at_the_size_limit_and_skip_abandoned_records() {
        let (tx, mut rx) = mpsc::channel(16);
        let big = vec![0u8; MAX_REQUEST_BYTES / 2 + 1];
        let (q1, _w1) = queued(0, &big);
        let (q2, w2) = queued(0, b"gone");
        drop(w2);
        let (q3, _w3) = queued(0, &big);
        for q in [q1, q2, q3] {
            assert!(tx.try_send(q).is_ok());
        }
        let mut carried = None;
        let first = next_batch(&mut rx, &mut carried).await.unwrap_or_default();
        assert_eq!(first.len(), 1, "the second large record waits");
        assert!(carried.is_some());
        let second = next_batch(&mut rx, &mut carried).await.unwrap_or_default();
        assert_eq!(second.len(), 1);
    }

    #[test]
    fn broker_trouble_is_retryable_a_bad_record_is_not() {
        assert!(partition_error(ProtocolError::NotLeaderOrFollower).retryable());
        assert!(partition_error(ProtocolError::NotEnoughReplicas).retryable());
        assert!(!partition_error(ProtocolError::MessageTooLarge).retryable());
    }
}
