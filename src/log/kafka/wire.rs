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
//! [`Produced`], [`Fetched`]) and per-partition refusals as [`Refusal`]. Record batches
//! are encoded and decoded here, in every codec ([`Compression`]; pure-Rust codecs), with
//! their CRC-32C checked.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::{Credentials, SaslConfig};
use rskafka::messenger::{Messenger, RequestError, SaslError};
use rskafka::protocol::api_key::ApiKey;
use rskafka::protocol::api_version::{ApiVersion, ApiVersionRange};
use rskafka::protocol::error::Error as ProtocolError;
use rskafka::protocol::messages::{
    CreateTopicRequest, CreateTopicsRequest, FetchRequest as WireFetch, FetchRequestPartition,
    FetchRequestTopic, IsolationLevel, ListOffsetsRequest, ListOffsetsRequestPartition,
    ListOffsetsRequestTopic, MetadataRequest, MetadataRequestTopic, ProduceRequest as WireProduce,
    ProduceResponse,
};
use rskafka::protocol::messages::{
    ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError, WriteVersionedType,
};
use rskafka::protocol::primitives::{
    Boolean, Int16, Int32, Int64, NullableBytes, NullableString, String_,
};
use rskafka::protocol::record::{
    ControlBatchOrRecords, Record as WireRecord, RecordBatch, RecordBatchCompression,
    RecordBatchTimestampType, RecordHeader,
};
use rskafka::protocol::traits::{ReadError, ReadType, WriteType};
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

    /// The broker no longer agrees with the producer's id, epoch or sequence numbers (its
    /// state expired, or a batch whose fate was unknown was given up): the producer takes a
    /// new id and sends again.
    pub fn producer_state(self) -> bool {
        matches!(
            self.0,
            ProtocolError::OutOfOrderSequenceNumber
                | ProtocolError::InvalidProducerEpoch
                | ProtocolError::UnknownProducerId
                | ProtocolError::ProducerFenced
        )
    }

    /// A refusal after which the records may still be in the log (the leader appended
    /// them, then timed out waiting for the replicas); the others are given before any
    /// append.
    pub fn maybe_written(self) -> bool {
        matches!(
            self.0,
            ProtocolError::RequestTimedOut
                | ProtocolError::NotEnoughReplicasAfterAppend
                | ProtocolError::NetworkException
                | ProtocolError::KafkaStorageError
        )
    }

    /// The cluster does not give this client producer ids (it cannot be idempotent).
    pub fn not_offered(self) -> bool {
        matches!(
            self.0,
            ProtocolError::ClusterAuthorizationFailed
                | ProtocolError::TransactionalIdAuthorizationFailed
                | ProtocolError::UnsupportedVersion
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
    pub fn request_timed_out() -> Refusal {
        Refusal(ProtocolError::RequestTimedOut)
    }

    #[cfg(test)]
    pub fn out_of_order_sequence() -> Refusal {
        Refusal(ProtocolError::OutOfOrderSequenceNumber)
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

/// A produce request ready to send (and to send again, after a broken connection): its
/// record batches already encoded (and compressed).
pub(super) struct ProduceRequest {
    topic: String,
    acks: i16,
    timeout_ms: i32,
    /// Per partition: its index and one encoded record batch.
    batches: Vec<(i32, Vec<u8>)>,
}

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

    /// A producer id and epoch for an idempotent producer (no transactional id). `Ok(Err)`:
    /// the broker refused (e.g. `ClusterAuthorizationFailed` where idempotent writes are
    /// not allowed).
    pub async fn init_producer_id(&self) -> Result<Result<(i64, i16), Refusal>, Failure> {
        let response = match self
            .0
            .request(InitProducerIdRequest {
                transaction_timeout_ms: -1,
            })
            .await
        {
            Ok(r) => r,
            // The broker does not speak InitProducerId v0 or v1.
            Err(RequestError::NoVersionMatch { .. }) => {
                return Ok(Err(Refusal(ProtocolError::UnsupportedVersion)))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(match response.error {
            Some(e) => Err(Refusal(e)),
            None => Ok((response.producer_id, response.producer_epoch)),
        })
    }

    pub async fn produce(&self, request: &ProduceRequest) -> Result<Vec<Produced>, Failure> {
        let response = self.0.request(request).await?;
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

    /// A fetch; its batches are decoded here, compressed ones too. A batch that cannot be
    /// read fails the answer (the connection stays usable).
    pub async fn fetch(&self, request: &FetchRequest) -> Result<Vec<Fetched>, Failure> {
        let response = self.0.request(RawFetch(&request.0)).await?;
        response
            .0
            .into_iter()
            .map(|p| {
                let result =
                    match p.error {
                        Some(e) => Err(Refusal(e)),
                        None => Ok(decode_batches(&p.records, p.high_watermark).map_err(|m| {
                            Failure {
                                broken: false,
                                message: format!("partition {}: {m}", p.partition),
                            }
                        })?),
                    };
                Ok(Fetched {
                    partition: p.partition,
                    result,
                })
            })
            .collect()
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

/// One produce request (acks = all) with a record batch per partition, in the order given,
/// compressed with `compression`.
pub(super) fn produce_request(
    topic: &str,
    batches: Vec<(i32, Vec<Record>, Option<Stamp>)>,
    timeout: Duration,
    compression: Compression,
) -> Result<ProduceRequest, String> {
    let batches = batches
        .into_iter()
        .map(|(p, records, stamp)| {
            Ok((p, encode_batch(record_batch(records, stamp), compression)?))
        })
        .collect::<Result<_, String>>()?;
    Ok(ProduceRequest {
        topic: topic.to_owned(),
        acks: -1,
        timeout_ms: millis(timeout),
        batches,
    })
}

impl RequestBody for ProduceRequest {
    type ResponseBody = ProduceResponse;
    const API_KEY: ApiKey = <WireProduce as RequestBody>::API_KEY;
    const API_VERSION_RANGE: ApiVersionRange = <WireProduce as RequestBody>::API_VERSION_RANGE;
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        <WireProduce as RequestBody>::FIRST_TAGGED_FIELD_IN_REQUEST_VERSION;
    const FIRST_TAGGED_FIELD_IN_RESPONSE_VERSION: ApiVersion =
        <WireProduce as RequestBody>::FIRST_TAGGED_FIELD_IN_RESPONSE_VERSION;
}

impl<W: std::io::Write> WriteVersionedType<W> for ProduceRequest {
    /// Produce v3 to v7 (rskafka's range; the same layout): transactional id, acks,
    /// timeout, then per topic its name and per partition its index and records (bytes).
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0 .0;
        if !(3..=7).contains(&v) {
            return Err(WriteVersionedError::WriteError(
                rskafka::protocol::traits::WriteError::Malformed(
                    format!("Produce v{v} is not written here").into(),
                ),
            ));
        }
        let len = |n: usize| Int32(i32::try_from(n).unwrap_or(i32::MAX));
        NullableString(None).write(writer)?;
        Int16(self.acks).write(writer)?;
        Int32(self.timeout_ms).write(writer)?;
        len(1).write(writer)?;
        String_(self.topic.clone()).write(writer)?;
        len(self.batches.len()).write(writer)?;
        for (p, bytes) in &self.batches {
            Int32(*p).write(writer)?;
            len(bytes.len()).write(writer)?;
            writer
                .write_all(bytes)
                .map_err(|e| WriteVersionedError::WriteError(e.into()))?;
        }
        Ok(())
    }
}

impl ProduceRequest {
    /// (acks, timeout in ms, per partition: its index and the batch's record count).
    #[cfg(test)]
    pub fn summary(&self) -> (i16, i32, Vec<(i32, usize)>) {
        let parts = self
            .batches
            .iter()
            .map(|(p, b)| (*p, i32::from_be_bytes(take::<4>(&b[57..61])) as usize))
            .collect();
        (self.acks, self.timeout_ms, parts)
    }
}

/// A batch's bytes on the wire: rskafka writes it uncompressed; its records are then
/// compressed here and the length and CRC-32C set again.
fn encode_batch(batch: RecordBatch, compression: Compression) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    batch.write(&mut bytes).map_err(|e| e.to_string())?;
    if compression == Compression::None {
        return Ok(bytes);
    }
    let records = bytes.split_off(61);
    bytes.extend(compress(compression, &records)?);
    let attributes = i16::from_be_bytes(take::<2>(&bytes[21..23])) | compression.code();
    bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
    let len = i32::try_from(bytes.len() - 12).map_err(|e| e.to_string())?;
    bytes[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(bytes)
}

/// Compresses a batch's records as Kafka's Java producer does (snappy: xerial framing).
fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let io = |e: std::io::Error| e.to_string();
    Ok(match codec {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).map_err(io)?;
            e.finish().map_err(io)?
        }
        Compression::Snappy => {
            let mut out = b"\x82SNAPPY\x00".to_vec();
            out.extend(1i32.to_be_bytes());
            out.extend(1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for chunk in data.chunks(32 * 1024) {
                let block = encoder.compress_vec(chunk).map_err(|e| e.to_string())?;
                out.extend((block.len() as u32).to_be_bytes());
                out.extend(block);
            }
            out
        }
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data).map_err(io)?;
            e.finish().map_err(|e| e.to_string())?
        }
        Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
    })
}

/// An idempotent producer's stamp on a batch (KIP-98): who wrote it and the sequence number
/// of its first record in that partition. A broker that already wrote a batch with the same
/// stamp (the leader that failed over replicated it) does not write it again and answers
/// with the first write's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

/// A non-transactional, uncompressed batch, as rskafka's own producer writes it; stamped
/// when the producer is idempotent.
fn record_batch(records: Vec<Record>, stamp: Option<Stamp>) -> RecordBatch {
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
        base_sequence: stamp.map_or(-1, |s| s.base_sequence),
        compression: RecordBatchCompression::NoCompression,
        timestamp_type: RecordBatchTimestampType::CreateTime,
        producer_id: stamp.map_or(-1, |s| s.producer_id),
        producer_epoch: stamp.map_or(-1, |s| s.epoch),
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

// ---------------------------------------------------------------------------------------------
// Fetch answers, read here rather than by rskafka: its record batch reader decodes compressed
// batches only with its C codecs (lz4-sys, zstd-sys), which chat leaves out. This reads the
// Fetch v4 answer itself, keeps each partition's records as bytes, and decodes the batches
// (`decode_batches`) with pure-Rust codecs: gzip (flate2, miniz_oxide), snappy (snap; raw or
// Java's xerial framing), lz4 (lz4_flex, LZ4 frames), zstd (ruzstd). Each record is read
// with rskafka's `Record` reader.

/// The most one compressed batch may expand to (a broker's batch is at most
/// `message.max.bytes`, 1 MiB by default; this leaves room for a generous setting).
const MAX_BATCH_BYTES: u64 = 64 << 20;

/// InitProducerId v0 and v1 (the same layout, before tagged fields): transactional id
/// (null: an idempotent producer, no transactions), transaction timeout.
struct InitProducerIdRequest {
    transaction_timeout_ms: i32,
}

struct InitProducerIdResponse {
    error: Option<ProtocolError>,
    producer_id: i64,
    producer_epoch: i16,
}

impl RequestBody for InitProducerIdRequest {
    type ResponseBody = InitProducerIdResponse;
    const API_KEY: ApiKey = ApiKey::InitProducerId;
    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(0)), ApiVersion(Int16(1)));
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(2));
    const FIRST_TAGGED_FIELD_IN_RESPONSE_VERSION: ApiVersion = ApiVersion(Int16(2));
}

impl<W: std::io::Write> WriteVersionedType<W> for InitProducerIdRequest {
    fn write_versioned(
        &self,
        writer: &mut W,
        _version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        NullableString(None).write(writer)?;
        Int32(self.transaction_timeout_ms).write(writer)?;
        Ok(())
    }
}

impl<R: std::io::Read> ReadVersionedType<R> for InitProducerIdResponse {
    /// v0 and v1: throttle time, error code, producer id, producer epoch.
    fn read_versioned(reader: &mut R, _version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let _throttle = Int32::read(reader)?;
        let error = ProtocolError::new(Int16::read(reader)?.0);
        let producer_id = Int64::read(reader)?.0;
        let producer_epoch = Int16::read(reader)?.0;
        Ok(InitProducerIdResponse {
            error,
            producer_id,
            producer_epoch,
        })
    }
}

/// A Fetch request whose answer keeps the records as bytes.
struct RawFetch<'a>(&'a WireFetch);

impl RequestBody for RawFetch<'_> {
    type ResponseBody = RawFetchResponse;
    const API_KEY: ApiKey = <WireFetch as RequestBody>::API_KEY;
    const API_VERSION_RANGE: ApiVersionRange = <WireFetch as RequestBody>::API_VERSION_RANGE;
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        <WireFetch as RequestBody>::FIRST_TAGGED_FIELD_IN_REQUEST_VERSION;
    const FIRST_TAGGED_FIELD_IN_RESPONSE_VERSION: ApiVersion =
        <WireFetch as RequestBody>::FIRST_TAGGED_FIELD_IN_RESPONSE_VERSION;
}

impl<W: std::io::Write> WriteVersionedType<W> for RawFetch<'_> {
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        self.0.write_versioned(writer, version)
    }
}

struct RawPartition {
    partition: i32,
    error: Option<ProtocolError>,
    high_watermark: i64,
    records: Vec<u8>,
}

struct RawFetchResponse(Vec<RawPartition>);

impl<R: std::io::Read> ReadVersionedType<R> for RawFetchResponse {
    /// Fetch v4 (the only version rskafka's `FetchRequest` asks for): throttle time, then
    /// per topic its name and per partition: index, error, high watermark, last stable
    /// offset, aborted transactions, records (bytes).
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        if version.0 .0 != 4 {
            return Err(ReadVersionedError::ReadError(ReadError::Malformed(
                format!("Fetch v{} answers are not read here", version.0 .0).into(),
            )));
        }
        let count = |n: i32| usize::try_from(n.max(0)).map_err(ReadError::from);
        let _throttle = Int32::read(reader)?;
        let mut out = Vec::new();
        for _ in 0..count(Int32::read(reader)?.0)? {
            let _topic = String_::read(reader)?;
            for _ in 0..count(Int32::read(reader)?.0)? {
                let partition = Int32::read(reader)?.0;
                let error = ProtocolError::new(Int16::read(reader)?.0);
                let high_watermark = Int64::read(reader)?.0;
                let _last_stable = Int64::read(reader)?;
                for _ in 0..count(Int32::read(reader)?.0)? {
                    let _producer_id = Int64::read(reader)?;
                    let _first_offset = Int64::read(reader)?;
                }
                let records = NullableBytes::read(reader)?.0.unwrap_or_default();
                out.push(RawPartition {
                    partition,
                    error,
                    high_watermark,
                    records,
                });
            }
        }
        Ok(RawFetchResponse(out))
    }
}

/// The codec of a record batch (its attributes' low 3 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn code(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    fn of(attributes: i16) -> Result<Compression, String> {
        Ok(match attributes & 0x7 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(format!("unknown compression type {other}")),
        })
    }
}

/// The records of a partition's batches (as a fetch answer holds them: whole batches, the
/// last one possibly cut off, which is left for the next fetch).
fn decode_batches(bytes: &[u8], high_watermark: i64) -> Result<FetchedData, String> {
    let mut end: Option<i64> = None;
    let mut records = Vec::new();
    let mut rest = bytes;
    // base offset (8), length (4): the length counts what follows it.
    while rest.len() >= 12 {
        let base_offset = i64::from_be_bytes(take::<8>(&rest[0..8]));
        let len = i32::from_be_bytes(take::<4>(&rest[8..12]));
        let len = usize::try_from(len).map_err(|_| format!("batch length {len}"))?;
        if rest.len() < 12 + len {
            break;
        }
        let batch = &rest[12..12 + len];
        rest = &rest[12 + len..];
        // partition leader epoch (4), magic (1), crc (4), attributes (2), last offset delta
        // (4), first and max timestamps (16), producer id (8) and epoch (2), base sequence
        // (4), record count (4): 49 bytes, then the records.
        if batch.len() < 49 {
            return Err(format!("record batch at {base_offset} is too short"));
        }
        let magic = batch[4];
        if magic != 2 {
            return Err(format!(
                "record batch at {base_offset} has magic {magic} (only v2 batches are read)"
            ));
        }
        let crc = u32::from_be_bytes(take::<4>(&batch[5..9]));
        if crc32c::crc32c(&batch[9..]) != crc {
            return Err(format!("record batch at {base_offset}: CRC mismatch"));
        }
        let attributes = i16::from_be_bytes(take::<2>(&batch[9..11]));
        let last_offset_delta = i32::from_be_bytes(take::<4>(&batch[11..15]));
        let n = i32::from_be_bytes(take::<4>(&batch[45..49])).max(0);
        let after = base_offset + i64::from(last_offset_delta) + 1;
        end = Some(end.map_or(after, |e| e.max(after)));
        let is_control = attributes & 0x20 != 0;
        if is_control {
            continue;
        }
        let payload = &batch[49..];
        let codec = Compression::of(attributes)?;
        let unpacked: Vec<u8>;
        let plain: &[u8] = match codec {
            Compression::None => payload,
            _ => {
                unpacked = decompress(codec, payload)
                    .map_err(|e| format!("record batch at {base_offset} ({codec:?}): {e}"))?;
                &unpacked
            }
        };
        let mut cursor = std::io::Cursor::new(plain);
        for _ in 0..n {
            let r = WireRecord::read(&mut cursor)
                .map_err(|e| format!("record batch at {base_offset}: {e}"))?;
            records.push(RawRecord {
                offset: base_offset + i64::from(r.offset_delta),
                value: r.value,
            });
        }
    }
    Ok(FetchedData {
        high_watermark,
        records,
        end,
    })
}

fn take<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// A compressed batch's records, at most [`MAX_BATCH_BYTES`].
fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let read = |r: &mut dyn Read, out: &mut Vec<u8>| -> Result<(), String> {
        let n = r
            .take(MAX_BATCH_BYTES + 1)
            .read_to_end(out)
            .map_err(|e| e.to_string())?;
        if n as u64 > MAX_BATCH_BYTES {
            return Err(format!("expands beyond {MAX_BATCH_BYTES} bytes"));
        }
        Ok(())
    };
    match codec {
        Compression::None => out.extend_from_slice(data),
        Compression::Gzip => read(&mut flate2::read::GzDecoder::new(data), &mut out)?,
        Compression::Lz4 => read(&mut lz4_flex::frame::FrameDecoder::new(data), &mut out)?,
        Compression::Zstd => {
            let mut d = ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| e.to_string())?;
            read(&mut d, &mut out)?
        }
        Compression::Snappy => out = snappy(data)?,
    }
    Ok(out)
}

/// Snappy as Kafka's producers write it: Java's (xerial) framing — a header, then blocks
/// of `length (i32) | raw snappy` — or one raw snappy block (librdkafka, rskafka).
fn snappy(data: &[u8]) -> Result<Vec<u8>, String> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let raw = |b: &[u8]| -> Result<Vec<u8>, String> {
        let n = snap::raw::decompress_len(b).map_err(|e| e.to_string())?;
        if n as u64 > MAX_BATCH_BYTES {
            return Err(format!("expands beyond {MAX_BATCH_BYTES} bytes"));
        }
        snap::raw::Decoder::new()
            .decompress_vec(b)
            .map_err(|e| e.to_string())
    };
    if !data.starts_with(XERIAL) {
        return raw(data);
    }
    // magic (8), version (4), compatible version (4)
    let mut rest = data.get(16..).ok_or("a cut-off xerial snappy header")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("a cut-off xerial snappy block".into());
        }
        let len = u32::from_be_bytes(take::<4>(&rest[..4])) as usize;
        let block = rest
            .get(4..4 + len)
            .ok_or("a cut-off xerial snappy block")?;
        out.extend(raw(block)?);
        if out.len() as u64 > MAX_BATCH_BYTES {
            return Err(format!("expands beyond {MAX_BATCH_BYTES} bytes"));
        }
        rest = &rest[4 + len..];
    }
    Ok(out)
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

    /// A batch of `n` records from `base_offset`, as bytes on the wire, its records
    /// compressed with `codec`.
    fn batch_bytes(base_offset: i64, n: usize, codec: Compression) -> Vec<u8> {
        let mut b = record_batch(records(n), None);
        b.base_offset = base_offset;
        encode_batch(b, codec).unwrap()
    }

    /// Sets a batch's length and CRC after its bytes were changed.
    fn reseal(bytes: &mut [u8]) {
        let len = (bytes.len() - 12) as i32;
        bytes[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn fetched_batches_become_records_and_an_end() {
        let mut bytes = batch_bytes(10, 3, Compression::None);
        bytes.extend(batch_bytes(13, 2, Compression::None));
        // A batch cut off at the end of the answer waits for the next fetch.
        let cut = batch_bytes(15, 2, Compression::None);
        bytes.extend(&cut[..cut.len() - 5]);
        let d = decode_batches(&bytes, 17).unwrap();
        assert_eq!(
            d.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![10, 11, 12, 13, 14]
        );
        assert_eq!(d.records[1].value.as_deref(), Some(&b"r1"[..]));
        assert_eq!(d.end, Some(15));
        assert_eq!(d.high_watermark, 17);
        assert_eq!(decode_batches(&[], 3).unwrap().end, None);
    }

    #[test]
    fn compressed_batches_are_decoded_with_every_codec() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut bytes = batch_bytes(7, 3, codec);
            bytes.extend(batch_bytes(10, 1, Compression::None));
            let d = decode_batches(&bytes, 11).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
            assert_eq!(
                d.records
                    .iter()
                    .map(|r| (r.offset, r.value.clone().unwrap()))
                    .collect::<Vec<_>>(),
                vec![
                    (7, b"r0".to_vec()),
                    (8, b"r1".to_vec()),
                    (9, b"r2".to_vec()),
                    (10, b"r0".to_vec())
                ],
                "{codec:?}"
            );
            assert_eq!(d.end, Some(11));
        }
        // Raw (unframed) snappy, as librdkafka writes it.
        let mut bytes = batch_bytes(0, 2, Compression::None);
        let plain = bytes.split_off(61);
        bytes.extend(snap::raw::Encoder::new().compress_vec(&plain).unwrap());
        bytes[21..23].copy_from_slice(&2i16.to_be_bytes());
        reseal(&mut bytes);
        assert_eq!(decode_batches(&bytes, 2).unwrap().records.len(), 2);
        // Garbage in a compressed batch, or a batch that does not match its CRC, is an
        // error, not a panic.
        let mut bad = batch_bytes(0, 2, Compression::Zstd);
        let n = bad.len();
        bad[61..n].fill(0xAB);
        let e = decode_batches(&bad, 2).unwrap_err();
        assert!(e.contains("CRC"), "{e}");
        reseal(&mut bad);
        let e = decode_batches(&bad, 2).unwrap_err();
        assert!(e.contains("Zstd"), "{e}");
    }

    #[test]
    fn a_produce_request_has_a_batch_per_partition() {
        for codec in [Compression::None, Compression::Lz4] {
            let r = produce_request(
                "t",
                vec![
                    (1, records(1), None),
                    (
                        3,
                        records(2),
                        Some(Stamp {
                            producer_id: 9,
                            epoch: 1,
                            base_sequence: 4,
                        }),
                    ),
                ],
                Duration::from_millis(3750),
                codec,
            )
            .unwrap();
            assert_eq!(r.summary(), (-1, 3750, vec![(1, 1), (3, 2)]));
            let d = decode_batches(&r.batches[1].1, 2).unwrap();
            assert_eq!(
                d.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                vec![0, 1]
            );
            let attributes = i16::from_be_bytes(take::<2>(&r.batches[1].1[21..23]));
            assert_eq!(attributes & 7, codec.code());
            // The idempotent producer's stamp: producer id, epoch, first sequence number;
            // the unstamped batch carries -1s.
            let b = &r.batches[1].1;
            assert_eq!(i64::from_be_bytes(take::<8>(&b[43..51])), 9);
            assert_eq!(i16::from_be_bytes(take::<2>(&b[51..53])), 1);
            assert_eq!(i32::from_be_bytes(take::<4>(&b[53..57])), 4);
            let b = &r.batches[0].1;
            assert_eq!(i64::from_be_bytes(take::<8>(&b[43..51])), -1);
            assert_eq!(i32::from_be_bytes(take::<4>(&b[53..57])), -1);
            // The request as the broker reads it (v7): ends with the last batch.
            let mut out = Vec::new();
            r.write_versioned(&mut out, ApiVersion(Int16(7))).unwrap();
            assert!(out.ends_with(&r.batches[1].1));
        }
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
