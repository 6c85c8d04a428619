//! The Kafka wire protocol: the one module that touches rskafka's `unstable-fuzzing` types
//! (`rskafka::messenger`, `rskafka::protocol`). Everything else in `log/kafka` speaks the
//! types defined here.
//!
//! rskafka (Cargo.toml pins the exact version, and says why) keeps its protocol types and
//! its `Messenger` (one broker connection: framing, correlation ids, version negotiation,
//! SASL) behind that feature. We use them because its `Client` sends one produce request
//! per partition and one fetch per partition, runs its own connections (no `TCP_NODELAY`,
//! no request time-out) and a metadata cache of its own; `cluster.rs` keeps ours.
//!
//! What this module offers: [`Conn`] (a broker connection over any byte stream, versions
//! synced and SASL done), and one method per request chat sends: Metadata, CreateTopics,
//! ListOffsets, Produce, Fetch. Their answers come back as plain data ([`Metadata`],
//! [`Produced`], [`Fetched`]) and per-partition refusals as [`Refusal`].

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::{Credentials, SaslConfig};
use rskafka::messenger::{Messenger, RequestError, SaslError};
use rskafka::protocol::error::Error as ProtocolError;
use rskafka::protocol::messages::{
    CreateTopicRequest, CreateTopicsRequest, FetchRequest as WireFetch, FetchRequestPartition,
    FetchRequestTopic, IsolationLevel, ListOffsetsRequest, ListOffsetsRequestPartition,
    ListOffsetsRequestTopic, MetadataRequest, MetadataRequestTopic, ProduceRequest as WireProduce,
    ProduceRequestPartitionData, ProduceRequestTopicData,
};
use rskafka::protocol::primitives::{
    Boolean, Int16, Int32, Int64, NullableString, Records, String_,
};
use rskafka::protocol::record::{
    ControlBatchOrRecords, Record as WireRecord, RecordBatch, RecordBatchCompression,
    RecordBatchTimestampType, RecordHeader,
};
use rskafka::record::Record;
use tokio::io::{AsyncRead, AsyncWrite, BufStream};

/// Largest response accepted (rskafka's default).
const MAX_MESSAGE_BYTES: usize = 100 * 1024 * 1024;

/// A byte stream to a broker: TCP, or TLS over TCP.
pub(super) trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// SASL mechanisms chat speaks to Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials (the password never reaches a log: no `Debug` of it).
#[derive(Clone)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish()
    }
}

/// A request that got no usable answer.
#[derive(Debug)]
pub(super) struct Failure {
    /// The connection itself failed (closed, reset, poisoned): drop it. Otherwise the
    /// answer could not be read and the connection is fine.
    pub broken: bool,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        let broken = matches!(
            e,
            RequestError::Poisoned(_)
                | RequestError::IO(_)
                | RequestError::WriteMessageError(_)
                | RequestError::ReadFramedMessageError(_)
        );
        Failure {
            broken,
            message: e.to_string(),
        }
    }
}

/// Why a connection could not be opened past TCP (and TLS).
#[derive(Debug)]
pub(super) enum OpenError {
    /// ApiVersions got no usable answer.
    Versions(String),
    /// SASL failed: the message says whether the broker refused the credentials.
    Sasl(String),
}

/// A broker's refusal for one partition or topic (a Kafka error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal(ProtocolError);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Refusal {
    /// The metadata is stale: another broker leads the partition now.
    pub fn stale(self) -> bool {
        matches!(
            self.0,
            ProtocolError::NotLeaderOrFollower
                | ProtocolError::LeaderNotAvailable
                | ProtocolError::UnknownTopicOrPartition
                | ProtocolError::FencedLeaderEpoch
                | ProtocolError::BrokerNotAvailable
                | ProtocolError::NotController
        )
    }

    pub fn out_of_range(self) -> bool {
        self.0 == ProtocolError::OffsetOutOfRange
    }

    pub fn already_exists(self) -> bool {
        self.0 == ProtocolError::TopicAlreadyExists
    }

    /// Broker-side trouble that a resend can get past; the rest (a record too large, no
    /// authorisation) is not.
    pub fn retryable(self) -> bool {
        self.stale()
            || matches!(
                self.0,
                ProtocolError::RequestTimedOut
                    | ProtocolError::NotEnoughReplicas
                    | ProtocolError::NotEnoughReplicasAfterAppend
                    | ProtocolError::KafkaStorageError
                    | ProtocolError::NetworkException
                    | ProtocolError::CoordinatorLoadInProgress
                    | ProtocolError::CorruptMessage
            )
    }

    #[cfg(test)]
    pub fn not_leader() -> Refusal {
        Refusal(ProtocolError::NotLeaderOrFollower)
    }

    #[cfg(test)]
    pub fn offset_out_of_range() -> Refusal {
        Refusal(ProtocolError::OffsetOutOfRange)
    }

    #[cfg(test)]
    pub fn message_too_large() -> Refusal {
        Refusal(ProtocolError::MessageTooLarge)
    }
}

/// Who leads what, from a Metadata answer.
#[derive(Debug, Default)]
pub(super) struct Metadata {
    /// Node id → `host:port`.
    pub brokers: Vec<(i32, String)>,
    pub controller: Option<i32>,
    /// The topic asked for; None when the broker does not know it.
    pub topic: Option<TopicMetadata>,
}

#[derive(Debug)]
pub(super) struct TopicMetadata {
    /// Partition index → its leader (None while it has none).
    pub partitions: Vec<(i32, Option<i32>)>,
}

/// Where [`Conn::list_offset`] looks.
#[derive(Debug, Clone, Copy)]
pub(super) enum OffsetAt {
    Earliest,
    Latest,
}

/// One partition's answer to a produce request: the offset of its first record.
#[derive(Debug)]
pub(super) struct Produced {
    pub partition: i32,
    pub result: Result<i64, Refusal>,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawRecord {
    pub offset: i64,
    pub value: Option<Vec<u8>>,
}

/// One partition's part of a fetch answer.
#[derive(Debug)]
pub(super) struct Fetched {
    pub partition: i32,
    pub result: Result<FetchedData, Refusal>,
}

#[derive(Debug, Default)]
pub(super) struct FetchedData {
    pub high_watermark: i64,
    /// The records of every batch, in offset order (a batch can start before the offset
    /// asked for).
    pub records: Vec<RawRecord>,
    /// The offset after the last batch, control batches included (None: no batch).
    pub end: Option<i64>,
}

/// A produce request ready to send (and to send again, after a broken connection).
pub(super) struct ProduceRequest(WireProduce);

/// A fetch request ready to send.
pub(super) struct FetchRequest(WireFetch);

/// One connection to a broker: versions synced, SASL done. Requests may be sent
/// concurrently (`&self`); Kafka answers them in order.
pub(super) struct Conn(Messenger<BufStream<Box<dyn Transport>>>);

impl Conn {
    /// Negotiates API versions and authenticates with `sasl`.
    pub async fn open(
        stream: Box<dyn Transport>,
        client_id: Arc<str>,
        sasl: Option<&Sasl>,
    ) -> Result<Conn, OpenError> {
        let mut m = Messenger::new(
            BufStream::with_capacity(64 * 1024, 64 * 1024, stream),
            MAX_MESSAGE_BYTES,
            client_id,
        );
        m.sync_versions()
            .await
            .map_err(|e| OpenError::Versions(crate::tls::error_chain(&e)))?;
        if let Some(s) = sasl {
            let credentials = Credentials::new(s.username.clone(), s.password.clone());
            let config = match s.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            };
            m.do_sasl(config)
                .await
                .map_err(|e| OpenError::Sasl(sasl_message(s.mechanism, &e)))?;
        }
        Ok(Conn(m))
    }

    pub async fn metadata(&self, topic: &str) -> Result<Metadata, Failure> {
        let response = self
            .0
            .request(MetadataRequest {
                topics: Some(vec![MetadataRequestTopic {
                    name: String_(topic.to_owned()),
                }]),
                allow_auto_topic_creation: Some(Boolean(false)),
            })
            .await?;
        let brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.0, b.port.0)))
            .collect();
        let topic = response
            .topics
            .into_iter()
            .find(|t| t.name.0 == topic && t.error.is_none())
            .map(|t| TopicMetadata {
                partitions: t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let leader =
                            (p.error.is_none() && p.leader_id.0 >= 0).then_some(p.leader_id.0);
                        (p.partition_index.0, leader)
                    })
                    .collect(),
            });
        Ok(Metadata {
            brokers,
            controller: response.controller_id.map(|c| c.0).filter(|c| *c >= 0),
            topic,
        })
    }

    /// Creates a topic (replication factor 1 or more); Ok(Err) is the broker's refusal
    /// (say, that it exists).
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i16,
        timeout: Duration,
    ) -> Result<Result<(), Refusal>, Failure> {
        let response = self
            .0
            .request(CreateTopicsRequest {
                topics: vec![CreateTopicRequest {
                    name: String_(topic.to_owned()),
                    num_partitions: Int32(partitions),
                    replication_factor: Int16(replication),
                    assignments: vec![],
                    configs: vec![],
                    tagged_fields: None,
                }],
                timeout_ms: Int32(millis(timeout)),
                validate_only: None,
                tagged_fields: None,
            })
            .await?;
        let t = response
            .topics
            .into_iter()
            .find(|t| t.name.0 == topic)
            .ok_or_else(|| Failure {
                broken: false,
                message: "CreateTopics: the topic is not in the answer".into(),
            })?;
        Ok(t.error.map_or(Ok(()), |e| Err(Refusal(e))))
    }

    /// The earliest offset still held, or the offset the next record will get.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        at: OffsetAt,
    ) -> Result<Result<i64, Refusal>, Failure> {
        let response = self
            .0
            .request(ListOffsetsRequest {
                replica_id: Int32(-1),
                isolation_level: Some(IsolationLevel::ReadCommitted),
                topics: vec![ListOffsetsRequestTopic {
                    name: String_(topic.to_owned()),
                    partitions: vec![ListOffsetsRequestPartition {
                        partition_index: Int32(partition),
                        timestamp: Int64(match at {
                            OffsetAt::Earliest => -2,
                            OffsetAt::Latest => -1,
                        }),
                        max_num_offsets: Some(Int32(1)),
                    }],
                }],
            })
            .await?;
        let unreadable = |what: &str| Failure {
            broken: false,
            message: format!("ListOffsets: {what}"),
        };
        let p = response
            .topics
            .into_iter()
            .filter(|t| t.name.0 == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index.0 == partition)
            .ok_or_else(|| unreadable("the partition is not in the answer"))?;
        if let Some(e) = p.error_code {
            return Ok(Err(Refusal(e)));
        }
        match (p.offset, p.old_style_offsets) {
            (Some(o), _) => Ok(Ok(o.0)),
            (None, Some(old)) => old
                .0
                .and_then(|v| v.first().map(|o| o.0))
                .map(Ok)
                .ok_or_else(|| unreadable("no offset in the answer")),
            (None, None) => Err(unreadable("no offset in the answer")),
        }
    }

    pub async fn produce(&self, request: &ProduceRequest) -> Result<Vec<Produced>, Failure> {
        let response = self.0.request(&request.0).await?;
        Ok(response
            .responses
            .into_iter()
            .flat_map(|t| t.partition_responses)
            .map(|p| Produced {
                partition: p.index.0,
                result: match p.error {
                    None => Ok(p.base_offset.0),
                    Some(e) => Err(Refusal(e)),
                },
            })
            .collect())
    }

    pub async fn fetch(&self, request: &FetchRequest) -> Result<Vec<Fetched>, Failure> {
        let response = self.0.request(&request.0).await?;
        Ok(response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .map(|p| Fetched {
                partition: p.partition_index.0,
                result: match p.error_code {
                    Some(e) => Err(Refusal(e)),
                    None => Ok(fetched_data(p.records.0, p.high_watermark.0)),
                },
            })
            .collect())
    }
}

/// The line a failed SASL exchange gives: the broker's refusal of the credentials says
/// "authentication failed" (class auth); anything else says what went wrong.
fn sasl_message(mechanism: SaslMechanism, e: &SaslError) -> String {
    let m = mechanism.as_str();
    match e {
        SaslError::ApiError(code) => format!(
            "SASL {m} authentication failed: the broker answered {code:?} (wrong user name \
             or password?)"
        ),
        SaslError::UnsupportedSaslMechanism => {
            format!("SASL {m} authentication failed: the broker does not enable {m}")
        }
        SaslError::RequestError(r) => format!("SASL {m}: {}", crate::tls::error_chain(r)),
        other => format!("SASL {m} authentication failed: {other}"),
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn fetched_data(batches: Vec<RecordBatch>, high_watermark: i64) -> FetchedData {
    let mut end: Option<i64> = None;
    let mut records = Vec::new();
    for b in batches {
        let after = b.base_offset + i64::from(b.last_offset_delta) + 1;
        end = Some(end.map_or(after, |e| e.max(after)));
        if let ControlBatchOrRecords::Records(rs) = b.records {
            records.extend(rs.into_iter().map(|r| RawRecord {
                offset: b.base_offset + i64::from(r.offset_delta),
                value: r.value,
            }));
        }
    }
    FetchedData {
        high_watermark,
        records,
        end,
    }
}

/// One produce request (acks = all) with a record batch per partition, in the order given.
pub(super) fn produce_request(
    topic: &str,
    batches: Vec<(i32, Vec<Record>)>,
    timeout: Duration,
) -> ProduceRequest {
    let partition_data = batches
        .into_iter()
        .map(|(p, records)| ProduceRequestPartitionData {
            index: Int32(p),
            records: Records(vec![record_batch(records)]),
        })
        .collect();
    ProduceRequest(WireProduce {
        transactional_id: NullableString(None),
        acks: Int16(-1),
        timeout_ms: Int32(millis(timeout)),
        topic_data: vec![ProduceRequestTopicData {
            name: String_(topic.to_owned()),
            partition_data,
        }],
    })
}

impl ProduceRequest {
    /// (acks, timeout in ms, per partition: its index and record count).
    #[cfg(test)]
    pub fn summary(&self) -> (i16, i32, Vec<(i32, usize)>) {
        let r = &self.0;
        let parts = r.topic_data[0]
            .partition_data
            .iter()
            .map(|p| {
                let n = p
                    .records
                    .0
                    .iter()
                    .map(|b| match &b.records {
                        ControlBatchOrRecords::Records(r) => r.len(),
                        ControlBatchOrRecords::ControlBatch(_) => 0,
                    })
                    .sum();
                (p.index.0, n)
            })
            .collect();
        (r.acks.0, r.timeout_ms.0, parts)
    }
}

/// A non-transactional, uncompressed batch, as rskafka's own producer writes it.
fn record_batch(records: Vec<Record>) -> RecordBatch {
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

/// A fetch of `ready` (partition, offset) pairs, read-uncommitted.
pub(super) fn fetch_request(
    topic: &str,
    ready: &[(i32, i64)],
    min_bytes: i32,
    wait: Duration,
    max_bytes: i32,
    partition_max_bytes: i32,
) -> FetchRequest {
    FetchRequest(WireFetch {
        replica_id: Int32(-1),
        max_wait_ms: Int32(millis(wait)),
        min_bytes: Int32(min_bytes),
        max_bytes: Some(Int32(max_bytes)),
        isolation_level: Some(IsolationLevel::ReadUncommitted),
        topics: vec![FetchRequestTopic {
            topic: String_(topic.to_owned()),
            partitions: ready
                .iter()
                .map(|(p, offset)| FetchRequestPartition {
                    partition: Int32(*p),
                    fetch_offset: Int64(*offset),
                    partition_max_bytes: Int32(partition_max_bytes),
                })
                .collect(),
        }],
    })
}

impl FetchRequest {
    /// (max wait in ms, the (partition, offset) pairs asked for).
    #[cfg(test)]
    pub fn summary(&self) -> (i32, Vec<(i32, i64)>) {
        let r = &self.0;
        let parts = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition.0, p.fetch_offset.0))
            .collect();
        (r.max_wait_ms.0, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                key: None,
                value: Some(format!("r{i}").into_bytes()),
                headers: Default::default(),
                timestamp: chrono::Utc::now(),
            })
            .collect()
    }

    #[test]
    fn fetched_batches_become_records_and_an_end() {
        let mut a = record_batch(records(3));
        a.base_offset = 10;
        let mut b = record_batch(records(2));
        b.base_offset = 13;
        let d = fetched_data(vec![a, b], 15);
        assert_eq!(
            d.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![10, 11, 12, 13, 14]
        );
        assert_eq!(d.records[1].value.as_deref(), Some(&b"r1"[..]));
        assert_eq!(d.end, Some(15));
        assert_eq!(d.high_watermark, 15);
        assert_eq!(fetched_data(vec![], 3).end, None);
    }

    #[test]
    fn a_produce_request_has_a_batch_per_partition() {
        let r = produce_request(
            "t",
            vec![(1, records(1)), (3, records(2))],
            Duration::from_millis(3750),
        );
        assert_eq!(r.summary(), (-1, 3750, vec![(1, 1), (3, 2)]));
        let ControlBatchOrRecords::Records(rs) =
            &r.0.topic_data[0].partition_data[1].records.0[0].records
        else {
            panic!("not records")
        };
        assert_eq!(rs[1].offset_delta, 1);
    }

    #[test]
    fn refusals_sort_into_stale_retryable_and_final() {
        assert!(Refusal::not_leader().stale());
        assert!(Refusal::not_leader().retryable());
        assert!(Refusal(ProtocolError::RequestTimedOut).retryable());
        assert!(!Refusal(ProtocolError::RequestTimedOut).stale());
        assert!(!Refusal::message_too_large().retryable());
        assert!(Refusal::offset_out_of_range().out_of_range());
        assert!(Refusal(ProtocolError::TopicAlreadyExists).already_exists());
    }

    #[test]
    fn a_refused_password_reads_as_an_auth_failure() {
        let m = sasl_message(
            SaslMechanism::ScramSha512,
            &SaslError::ApiError(ProtocolError::SaslAuthenticationFailed),
        );
        assert_eq!(crate::tls::classify(&m), crate::tls::Class::Auth, "{m}");
        let m = sasl_message(SaslMechanism::Plain, &SaslError::UnsupportedSaslMechanism);
        assert_eq!(crate::tls::classify(&m), crate::tls::Class::Auth, "{m}");
    }
}
