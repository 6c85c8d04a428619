//! Kafka as the message log, over rskafka's wire protocol.
//!
//! Every request goes through one connection layer and one metadata cache (`cluster.rs`),
//! with TLS and SASL when configured; rskafka's protocol types stay in `wire.rs`.
//! Producing goes through `produce.rs`: one request per broker carries the records of all
//! the partitions it leads. Tailing readers share a fetch per broker (`fetch.rs`); a
//! recovery reader ([`Log::reader`]) fetches on a connection of its own.
//!
//! Every request has a time-out. Produce is not idempotent: after an I/O error a record
//! can be written twice, which is why readers drop a message id they have seen (relay) and
//! the store has unique keys (persist).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rskafka::record::Record;

use tokio::sync::oneshot;

use super::{encode, partition_of, Appending, Log, LogBatch, LogError, LogReader, Pace};
use crate::model::NewMessage;
use crate::shutdown::Shutdown;

mod cluster;
mod fetch;
mod produce;
mod wire;

pub use wire::{Compression, Sasl, SaslMechanism};

use cluster::Cluster;
use fetch::{records_from, Profile, TailReader, Tailer};
use produce::{Producer, Queued};
use wire::{Conn, OffsetAt};

/// Upper bound of one fetch response.
const MAX_FETCH_BYTES: i32 = 1 << 20;

/// How chat talks to the brokers: TLS (rustls; the roots, and a client certificate for
/// mTLS, are in the configuration) and SASL credentials, on every connection.
#[derive(Clone, Default)]
pub struct KafkaSecurity {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub sasl: Option<Sasl>,
}

/// Why the TLS configuration for Kafka cannot be built (each names the file at fault).
#[derive(Debug, thiserror::Error)]
pub enum KafkaTlsError {
    #[error("{0}")]
    Roots(#[from] crate::tls::TlsError),
    #[error("{path}: {problem}")]
    ClientCert { path: String, problem: String },
    #[error("{path}: {problem}")]
    ClientKey { path: String, problem: String },
}

/// The rustls configuration of every Kafka connection: the brokers verified against the CA
/// file (else the system roots) and their host names checked; with `client` (certificate
/// chain, key; PEM files), mutual TLS.
pub fn tls_config(
    ca: Option<&crate::tls::CaFile>,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Arc<rustls::ClientConfig>, KafkaTlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crate::tls::install_provider();
    let roots = crate::tls::roots(ca)?;
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let cert_err = |problem: String| KafkaTlsError::ClientCert {
                path: cert.display().to_string(),
                problem,
            };
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| cert_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| cert_err(format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(cert_err("holds no PEM certificate".into()));
            }
            let key_err = |problem: String| KafkaTlsError::ClientKey {
                path: key.display().to_string(),
                problem,
            };
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| key_err(format!("no PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| key_err(format!("does not go with the client certificate: {e}")))?
        }
    };
    Ok(Arc::new(config))
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: Vec<String>,
    pub topic: String,
    pub partitions: i32,
    /// Copies of each partition for a topic created here (None: as many as there are
    /// brokers, at most 3).
    pub replication_factor: Option<i16>,
    /// How long a sender waits for the broker's ack before giving up (retryably).
    pub produce_timeout: Duration,
    pub security: KafkaSecurity,
    /// How produced record batches are compressed.
    pub compression: Compression,
    /// While records flow, the relay (the live tail) fetches at most once per this
    /// interval (zero: at once).
    pub relay_linger: Duration,
}

pub struct KafkaLog {
    settings: KafkaSettings,
    partitions: i32,
    /// Multi-partition produce requests, one producer per partition leader.
    producer: Producer,
    cluster: Arc<Cluster>,
    /// The shared fetches of tailing readers, one per fetch profile.
    tailers: Mutex<HashMap<Profile, Arc<Tailer>>>,
}

/// Connects to the bootstrap brokers as chat does (TLS, SASL) until one answers
/// ApiVersions: Err is the line a refused start prints, `Kafka at ADDRESS: CLASS: reason`.
pub async fn probe(settings: &KafkaSettings) -> anyhow::Result<()> {
    let cluster = Cluster::new(
        settings.brokers.clone(),
        settings.topic.clone(),
        settings.security.clone(),
        Shutdown::new(),
    );
    let mut last = None;
    for addr in &settings.brokers {
        match cluster.connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(anyhow::anyhow!(crate::tls::failure_line(
            "Kafka", &e.addr, &e.reason
        ))),
        None => Err(anyhow::anyhow!("Kafka: no broker given")),
    }
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
        let cluster = Cluster::new(
            settings.brokers.clone(),
            settings.topic.clone(),
            settings.security.clone(),
            tasks,
        );
        if let Some(replication) = cluster
            .create_topic(settings.partitions, settings.replication_factor)
            .await?
        {
            tracing::info!(topic = %settings.topic, partitions = settings.partitions, replication, "created the Kafka topic");
        }
        let partitions = cluster.wait_for_partitions().await?;
        if partitions != settings.partitions {
            tracing::warn!(
                topic = %settings.topic,
                configured = settings.partitions,
                actual = partitions,
                "the topic has another partition count than configured; using the topic's"
            );
        }
        let producer = Producer::new(
            Arc::clone(&cluster),
            settings.produce_timeout,
            settings.compression,
        );
        Ok(KafkaLog {
            settings,
            partitions,
            producer,
            cluster,
            tailers: Mutex::new(HashMap::new()),
        })
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
        Ok(Box::new(KafkaReader {
            cluster: Arc::clone(&self.cluster),
            partition,
            conn: tokio::sync::Mutex::new(None),
        }))
    }

    async fn tail(&self, partition: i32, pace: Pace) -> Result<Box<dyn LogReader>, LogError> {
        let profile = Profile::of(pace, self.settings.relay_linger);
        let tailer = {
            let mut tailers = self.tailers.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                tailers
                    .entry(profile)
                    .or_insert_with(|| Arc::new(Tailer::new(Arc::clone(&self.cluster), profile))),
            )
        };
        Ok(Box::new(TailReader::new(
            tailer,
            partition,
            Arc::clone(&self.cluster),
        )))
    }

    async fn end(&self, partition: i32) -> Result<i64, LogError> {
        self.cluster.list_offset(partition, OffsetAt::Latest).await
    }

    async fn ping(&self) -> Result<(), LogError> {
        self.cluster.ping().await
    }
}

/// A recovery reader: fetches one partition on a connection of its own to its leader.
struct KafkaReader {
    cluster: Arc<Cluster>,
    partition: i32,
    /// The leader it is connected to, and the connection.
    conn: tokio::sync::Mutex<Option<(i32, Conn)>>,
}

#[async_trait]
impl LogReader for KafkaReader {
    async fn read(&self, offset: i64, max_wait: Duration) -> Result<LogBatch, LogError> {
        let wait = max_wait.min(Duration::from_secs(30));
        let node = match self.cluster.leader(self.partition) {
            Some(n) => n,
            None => {
                self.cluster.refresh().await?;
                self.cluster.leader(self.partition).ok_or_else(|| {
                    LogError::Unavailable(format!(
                        "no Kafka leader known for partition {}",
                        self.partition
                    ))
                })?
            }
        };
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|(n, _)| *n != node) {
            *guard = None;
        }
        let request = wire::fetch_request(
            &self.cluster.topic,
            &[(self.partition, offset)],
            1,
            wait,
            MAX_FETCH_BYTES,
            MAX_FETCH_BYTES,
        );
        let mut resent = false;
        let answer = loop {
            let conn = match guard.take() {
                Some((_, c)) => c,
                None => self.cluster.connect_node(node).await?,
            };
            crate::telemetry::hops::kafka_request(crate::telemetry::hops::Kafka::FetchRead);
            match tokio::time::timeout(wait + Duration::from_secs(10), conn.fetch(&request)).await {
                Ok(Ok(a)) => {
                    *guard = Some((node, conn));
                    break a;
                }
                // The broker closes idle connections: once more on a new one.
                Ok(Err(f)) if f.broken && !resent => resent = true,
                Ok(Err(f)) => {
                    if !f.broken {
                        *guard = Some((node, conn));
                    }
                    return Err(cluster::unavailable("fetching", f));
                }
                Err(_) => {
                    return Err(LogError::Unavailable(
                        "fetching: no answer from Kafka".into(),
                    ))
                }
            }
        };
        drop(guard);
        let Some(p) = answer.into_iter().find(|p| p.partition == self.partition) else {
            return Ok(LogBatch {
                records: Vec::new(),
                next_offset: offset,
                high_watermark: offset,
            });
        };
        match p.result {
            Ok(data) => Ok(records_from(data, offset)),
            Err(r) if r.out_of_range() => Err(LogError::OutOfRange { offset }),
            Err(r) => {
                if r.stale() {
                    self.cluster.refresh_soon();
                }
                Err(LogError::Unavailable(format!("Kafka: {r}")))
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
