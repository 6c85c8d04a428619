//! Kafka as the message log, through rskafka.
//!
//! Producing goes through `produce.rs`: one request per broker carries the records of all
//! the partitions it leads. Topic set-up, readers and health checks use rskafka's client.
//!
//! rskafka has no request timeout and retries connection errors until its backoff
//! deadline; every call here is also wrapped in `tokio::time::timeout`. Its produce is not
//! idempotent: after an I/O error a record can be written twice, which is why readers
//! drop a message id they have seen (relay) and the store has unique keys (persist).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use rskafka::BackoffConfig;

use tokio::sync::oneshot;

use super::{
    decode, encode, partition_of, Appending, Log, LogBatch, LogError, LogReader, LogRecord, Pace,
};
use crate::model::NewMessage;
use crate::shutdown::Shutdown;

mod cluster;
mod fetch;
mod produce;

use cluster::Cluster;
use fetch::{Profile, TailReader, Tailer};
use produce::{Producer, Queued};

/// Upper bound of one fetch response.
const MAX_FETCH_BYTES: i32 = 1 << 20;

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: Vec<String>,
    pub topic: String,
    pub partitions: i32,
    /// How long a sender waits for the broker's ack before giving up (retryably).
    pub produce_timeout: Duration,
}

pub struct KafkaLog {
    settings: KafkaSettings,
    partitions: i32,
    client: Client,
    /// Multi-partition produce requests, one producer per partition leader.
    producer: Producer,
    cluster: Arc<Cluster>,
    /// The shared fetches of tailing readers, one per fetch profile.
    tailers: Mutex<HashMap<Profile, Arc<Tailer>>>,
}

fn backoff() -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(Duration::from_secs(5)),
    }
}

fn map_err(e: KafkaError) -> LogError {
    match e {
        KafkaError::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            ..
        } => LogError::OutOfRange { offset: -1 },
        KafkaError::Connection(_) | KafkaError::RetryFailed(_) | KafkaError::Timeout => {
            LogError::Unavailable(e.to_string())
        }
        KafkaError::Request(_) => LogError::Unavailable(e.to_string()),
        other => LogError::Other(other.to_string()),
    }
}

impl From<KafkaError> for LogError {
    fn from(e: KafkaError) -> Self {
        map_err(e)
    }
}

async fn with_timeout<T, E: Into<LogError>>(
    d: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, LogError> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(LogError::Unavailable(format!(
            "{what}: no answer from Kafka within {d:?}"
        ))),
    }
}

async fn build_client(brokers: &[String]) -> Result<Client, LogError> {
    with_timeout(
        Duration::from_secs(10),
        "connecting",
        ClientBuilder::new(brokers.to_vec())
            .client_id("chat")
            .backoff_config(backoff())
            .build(),
    )
    .await
}

impl KafkaLog {
    /// Queues one record on its partition's producer; the receiver gets its offset once
    /// the broker acked it (acks=all), or the request's error.
    fn enqueue(
        &self,
        msg: &NewMessage,
    ) -> Result<oneshot::Receiver<Result<i64, LogError>>, LogError> {
        let p = partition_of(msg.room, self.partitions);
        let record = Record {
            key: Some(msg.room.as_bytes().to_vec()),
            value: Some(encode(msg)),
            headers: Default::default(),
            timestamp: msg.sent_at,
        };
        let (done, wait) = oneshot::channel();
        self.producer.enqueue(Queued {
            partition: p,
            size: record.approximate_size(),
            record,
            done,
        })?;
        Ok(wait)
    }

    /// Connects, creates the topic if it is missing, and prepares one batching producer
    /// per partition. The topic's real partition count wins over the configured one.
    /// Its tasks (producer, fetches) are spawned in `tasks` and end when it is cancelled.
    pub async fn connect(settings: KafkaSettings, tasks: Shutdown) -> Result<Self, LogError> {
        let client = build_client(&settings.brokers).await?;
        let controller = client.controller_client().map_err(map_err)?;
        let created = tokio::time::timeout(
            Duration::from_secs(20),
            controller.create_topic(settings.topic.clone(), settings.partitions, 1, 10_000),
        )
        .await
        .map_err(|_| LogError::Unavailable("creating the topic: no answer".into()))?;
        match created {
            Ok(()) => {
                tracing::info!(topic = %settings.topic, partitions = settings.partitions, "created the Kafka topic")
            }
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => {}
            Err(e) => return Err(map_err(e)),
        }
        let partitions = Self::partition_count(&client, &settings.topic).await?;
        if partitions != settings.partitions {
            tracing::warn!(
                topic = %settings.topic,
                configured = settings.partitions,
                actual = partitions,
                "the topic has another partition count than configured; using the topic's"
            );
        }
        let cluster =
            Cluster::start(settings.brokers.clone(), settings.topic.clone(), tasks).await?;
        let producer = Producer::new(Arc::clone(&cluster), settings.produce_timeout);
        Ok(KafkaLog {
            settings,
            partitions,
            client,
            producer,
            cluster,
            tailers: Mutex::new(HashMap::new()),
        })
    }

    async fn partition_count(client: &Client, topic: &str) -> Result<i32, LogError> {
        // Metadata can lag a fresh topic for a moment.
        for _ in 0..50 {
            let topics = with_timeout(
                Duration::from_secs(10),
                "listing topics",
                client.list_topics(),
            )
            .await?;
            if let Some(t) = topics.iter().find(|t| t.name == topic) {
                if !t.partitions.is_empty() {
                    return Ok(t.partitions.len() as i32);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LogError::Other(format!("topic {topic} has no partitions")))
    }
}

#[async_trait]
impl Log for KafkaLog {
    fn topic(&self) -> &str {
        &self.settings.topic
    }

    fn partitions(&self) -> i32 {
        self.partitions
    }

    async fn submit(&self, msg: &NewMessage) -> Result<Appending, LogError> {
        let wait = self.enqueue(msg)?;
        let msg = msg.clone();
        let timeout = self.settings.produce_timeout;
        Ok(Box::pin(async move {
            let offset = match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(r)) => r?,
                Ok(Err(_)) => {
                    return Err(LogError::Unavailable("the Kafka producer stopped".into()))
                }
                Err(_) => {
                    return Err(LogError::Unavailable(format!(
                        "producing: no answer from Kafka within {timeout:?}"
                    )))
                }
            };
            Ok(msg.at(offset))
        }))
    }

    async fn reader(&self, partition: i32) -> Result<Box<dyn LogReader>, LogError> {
        let client = build_client(&self.settings.brokers).await?;
        let pc = with_timeout(
            Duration::from_secs(20),
            "opening a partition",
            client.partition_client(
                self.settings.topic.clone(),
                partition,
                UnknownTopicHandling::Retry,
            ),
        )
        .await?;
        Ok(Box::new(KafkaReader {
            _client: client,
            pc,
        }))
    }

    async fn tail(&self, partition: i32, pace: Pace) -> Result<Box<dyn LogReader>, LogError> {
        let profile = Profile::of(pace);
        let tailer = {
            let mut tailers = self.tailers.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                tailers
                    .entry(profile)
                    .or_insert_with(|| Arc::new(Tailer::new(Arc::clone(&self.cluster), profile))),
            )
        };
        // Offsets go over the shared client: short requests, never a long poll.
        let pc = with_timeout(
            Duration::from_secs(20),
            "opening a partition",
            self.client.partition_client(
                self.settings.topic.clone(),
                partition,
                UnknownTopicHandling::Retry,
            ),
        )
        .await?;
        Ok(Box::new(TailReader::new(tailer, partition, pc)))
    }

    async fn ping(&self) -> Result<(), LogError> {
        with_timeout(
            Duration::from_secs(2),
            "metadata",
            self.client.list_topics(),
        )
        .await
        .map(|_| ())
    }
}

struct KafkaReader {
    _client: Client,
    pc: PartitionClient,
}

#[async_trait]
impl LogReader for KafkaReader {
    async fn read(&self, offset: i64, max_wait: Duration) -> Result<LogBatch, LogError> {
        let wait_ms = max_wait.as_millis().min(30_000) as i32;
        let r = with_timeout(
            max_wait + Duration::from_secs(10),
            "fetching",
            self.pc.fetch_records(offset, 1..MAX_FETCH_BYTES, wait_ms),
        )
        .await;
        let (records, high_watermark) = match r {
            Ok(v) => v,
            Err(LogError::OutOfRange { .. }) => return Err(LogError::OutOfRange { offset }),
            Err(e) => return Err(e),
        };
        let mut next_offset = offset;
        let records = records
            .into_iter()
            .filter(|r| r.offset >= offset)
            .map(|r| {
                next_offset = next_offset.max(r.offset + 1);
                LogRecord {
                    offset: r.offset,
                    message: r.record.value.as_deref().and_then(|v| decode(v, r.offset)),
                }
            })
            .collect();
        Ok(LogBatch {
            records,
            next_offset,
            high_watermark,
        })
    }

    async fn earliest(&self) -> Result<i64, LogError> {
        with_timeout(
            Duration::from_secs(10),
            "offsets",
            self.pc.get_offset(OffsetAt::Earliest),
        )
        .await
    }

    async fn latest(&self) -> Result<i64, LogError> {
        with_timeout(
            Duration::from_secs(10),
            "offsets",
            self.pc.get_offset(OffsetAt::Latest),
        )
        .await
    }
}
