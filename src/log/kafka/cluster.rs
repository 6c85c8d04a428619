//! The one connection layer and metadata cache of everything Kafka: who leads which
//! partition (from a Metadata request, refreshed when an answer says it is stale), and
//! connections to brokers: TCP with `TCP_NODELAY`, TLS when asked (rustls, the system
//! roots or a CA file, an optional client certificate), then ApiVersions and SASL
//! ([`wire::Conn`]).
//!
//! Who holds which connections: the producer keeps one per broker (`produce.rs`), each
//! fetch task one per broker (`fetch.rs`), each recovery reader its own (`mod.rs`): Kafka
//! answers one connection's requests in order, so a long-polling fetch would hold up
//! whatever is queued behind it. Short requests (ListOffsets) share a control connection
//! per broker, kept here. Metadata and topic set-up open a connection of their own.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::wire::{Conn, Metadata, OffsetAt, OpenError, Sasl, Transport};
use super::KafkaSecurity;
use crate::log::LogError;
use crate::shutdown::Shutdown;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// ApiVersions and the SASL exchange (SCRAM takes a few round trips).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata is not asked for again sooner than this (many failing records, one refresh).
const REFRESH_INTERVAL: Duration = Duration::from_millis(200);
/// How long a short request (metadata, offsets, topic creation) may take.
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who leads which partition, and where the brokers are.
#[derive(Default)]
pub(super) struct Meta {
    /// Empty while the topic is unknown.
    leaders: Vec<Option<i32>>,
    addrs: HashMap<i32, String>,
    controller: Option<i32>,
}

/// A broker that could not be connected to, and why (the text a refused start and
/// `/readyz` classify: tls, auth, unreachable).
#[derive(Debug)]
pub(super) struct ConnectError {
    pub addr: String,
    pub reason: String,
}

impl From<ConnectError> for LogError {
    fn from(e: ConnectError) -> Self {
        LogError::Unavailable(format!("Kafka at {}: {}", e.addr, e.reason))
    }
}

pub(super) struct Cluster {
    pub topic: String,
    bootstrap: Vec<String>,
    client_id: Arc<str>,
    security: KafkaSecurity,
    meta: RwLock<Meta>,
    /// When metadata was last fetched; also makes refreshes single-flight.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    /// One connection per broker for short requests (ListOffsets).
    control: tokio::sync::Mutex<HashMap<i32, Arc<Conn>>>,
    /// Where the producer, fetch and refresh tasks are spawned (they end with it).
    pub tasks: Shutdown,
}

pub(super) fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("{what}: {e}"))
}

impl Cluster {
    /// The cluster of `topic`; no connection yet.
    pub(super) fn new(
        bootstrap: Vec<String>,
        topic: String,
        security: KafkaSecurity,
        tasks: Shutdown,
    ) -> Arc<Self> {
        Arc::new(Cluster {
            topic,
            tasks,
            bootstrap,
            client_id: Arc::from("chat"),
            security,
            meta: RwLock::new(Meta::default()),
            refreshed: tokio::sync::Mutex::new(None),
            control: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn leader(&self, partition: i32) -> Option<i32> {
        let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
        meta.leaders.get(partition as usize).copied().flatten()
    }

    /// The topic's partition count as last seen (0: the topic is not known yet).
    pub(super) fn partition_count(&self) -> i32 {
        let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
        meta.leaders.len() as i32
    }

    pub(super) fn addr(&self, node: i32) -> Option<String> {
        let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
        meta.addrs.get(&node).cloned()
    }

    /// Refreshes the metadata in the background (after an error that says it is stale).
    pub(super) fn refresh_soon(self: &Arc<Self>) {
        let me = Arc::clone(self);
        self.tasks.spawn_until_cancelled(async move {
            if let Err(e) = me.refresh().await {
                tracing::warn!(error = %e, "kafka: metadata refresh failed");
            }
        });
    }

    /// A new connection to a broker by its id.
    pub(super) async fn connect_node(&self, node: i32) -> Result<Conn, LogError> {
        match self.addr(node) {
            Some(addr) => Ok(self.connect(&addr).await?),
            None => Err(LogError::Unavailable(format!(
                "Kafka broker {node} unknown"
            ))),
        }
    }

    /// A new connection: TCP, TLS if configured, ApiVersions, SASL if configured.
    pub(super) async fn connect(&self, addr: &str) -> Result<Conn, ConnectError> {
        let fail = |reason: String| ConnectError {
            addr: addr.to_owned(),
            reason,
        };
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail(format!("cannot connect: {e}"))),
            Err(_) => {
                return Err(fail(format!(
                    "cannot connect: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        // Without it, a request written in two segments waits for the delayed ACK.
        tcp.set_nodelay(true)
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        let stream: Box<dyn Transport> = match &self.security.tls {
            None => Box::new(tcp),
            Some(config) => Box::new(tls_handshake(config, addr, tcp).await.map_err(fail)?),
        };
        let sasl: Option<&Sasl> = self.security.sasl.as_ref();
        match tokio::time::timeout(
            OPEN_TIMEOUT,
            Conn::open(stream, Arc::clone(&self.client_id), sasl),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(OpenError::Versions(m))) => Err(fail(format!("no ApiVersions answer: {m}"))),
            Ok(Err(OpenError::Sasl(m))) => Err(fail(m)),
            Err(_) => Err(fail(format!(
                "no ApiVersions{} answer within {} s",
                if sasl.is_some() { " or SASL" } else { "" },
                OPEN_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Asks a broker (a known one, else a bootstrap one) who leads each partition.
    pub(super) async fn refresh(&self) -> Result<(), LogError> {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
            return Ok(());
        }
        // A failed attempt counts too: during an outage, one attempt per interval.
        *refreshed = Some(Instant::now());
        let meta = self.fetch_metadata().await?;
        *self.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
        *refreshed = Some(Instant::now());
        Ok(())
    }

    /// Metadata from the first broker that answers (known ones first, then the bootstrap
    /// list); the error is the last broker's.
    async fn fetch_metadata(&self) -> Result<Meta, LogError> {
        let mut candidates: Vec<String> = {
            let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
            meta.addrs.values().cloned().collect()
        };
        candidates.extend(self.bootstrap.iter().cloned());
        let mut last = LogError::Unavailable("no Kafka broker given".into());
        for addr in candidates {
            match self.metadata(&addr).await {
                Ok(meta) => return Ok(meta),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether a broker answers a Metadata request on a new connection (which also checks
    /// TLS and the credentials, for `/readyz`).
    pub(super) async fn ping(&self) -> Result<(), LogError> {
        self.fetch_metadata().await.map(|_| ())
    }

    async fn metadata(&self, addr: &str) -> Result<Meta, LogError> {
        let conn = self.connect(addr).await?;
        let m: Metadata = tokio::time::timeout(SHORT_TIMEOUT, conn.metadata(&self.topic))
            .await
            .map_err(|_| unavailable(addr, "no metadata answer"))?
            .map_err(|e| unavailable(addr, e))?;
        let addrs = m.brokers.into_iter().collect();
        let mut leaders = Vec::new();
        if let Some(t) = m.topic {
            let n = t
                .partitions
                .iter()
                .map(|(p, _)| p + 1)
                .max()
                .unwrap_or(0)
                .max(0) as usize;
            leaders = vec![None; n];
            for (p, leader) in t.partitions {
                if p >= 0 {
                    leaders[p as usize] = leader;
                }
            }
        }
        Ok(Meta {
            leaders,
            addrs,
            controller: m.controller,
        })
    }

    /// Creates the topic unless it exists, with `replication` copies of each partition
    /// (None: [`default_replication`] of the brokers the metadata lists); the replication
    /// factor if it was created.
    pub(super) async fn create_topic(
        &self,
        partitions: i32,
        replication: Option<i16>,
    ) -> Result<Option<i16>, LogError> {
        self.refresh().await?;
        let replication = replication.unwrap_or_else(|| {
            let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
            default_replication(meta.addrs.len())
        });
        let addr = {
            let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
            meta.controller
                .and_then(|c| meta.addrs.get(&c).cloned())
                .or_else(|| meta.addrs.values().next().cloned())
        };
        let addr = match addr {
            Some(a) => a,
            None => self
                .bootstrap
                .first()
                .cloned()
                .ok_or_else(|| LogError::Unavailable("no Kafka broker given".into()))?,
        };
        let conn = self.connect(&addr).await?;
        let answer = tokio::time::timeout(
            SHORT_TIMEOUT * 2,
            conn.create_topic(&self.topic, partitions, replication, SHORT_TIMEOUT),
        )
        .await
        .map_err(|_| unavailable("creating the topic", "no answer"))?
        .map_err(|e| unavailable("creating the topic", e))?;
        match answer {
            Ok(()) => Ok(Some(replication)),
            Err(r) if r.already_exists() => Ok(None),
            Err(r) => Err(LogError::Other(format!(
                "creating the topic {} ({partitions} partitions, replication factor \
                 {replication}): Kafka answered {r}",
                self.topic
            ))),
        }
    }

    /// Waits until the metadata shows the topic's partitions (it lags a fresh topic).
    pub(super) async fn wait_for_partitions(&self) -> Result<i32, LogError> {
        for _ in 0..50 {
            self.refresh().await?;
            let n = self.partition_count();
            if n > 0 {
                return Ok(n);
            }
            tokio::time::sleep(REFRESH_INTERVAL).await;
        }
        Err(LogError::Other(format!(
            "topic {} has no partitions",
            self.topic
        )))
    }

    /// The broker's control connection, opened if needed.
    async fn control(&self, node: i32) -> Result<Arc<Conn>, LogError> {
        let mut control = self.control.lock().await;
        if let Some(c) = control.get(&node) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(self.connect_node(node).await?);
        control.insert(node, Arc::clone(&c));
        Ok(c)
    }

    async fn forget_control(&self, node: i32, conn: &Arc<Conn>) {
        let mut control = self.control.lock().await;
        if control.get(&node).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            control.remove(&node);
        }
    }

    /// A producer id and epoch for idempotent produce, from the first broker that gives
    /// one. `Ok(None)`: the cluster does not offer it (a broker too old, or a user not
    /// allowed idempotent writes); records are then sent unstamped.
    pub(super) async fn init_producer_id(&self) -> Result<Option<(i64, i16)>, LogError> {
        let mut nodes: Vec<i32> = {
            let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
            meta.addrs.keys().copied().collect()
        };
        if nodes.is_empty() {
            self.refresh().await?;
            let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
            nodes = meta.addrs.keys().copied().collect();
        }
        nodes.sort_unstable();
        let mut last = LogError::Unavailable("no Kafka broker known".into());
        for node in nodes {
            let conn = match self.control(node).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match tokio::time::timeout(SHORT_TIMEOUT, conn.init_producer_id()).await {
                Ok(Ok(Ok(id))) => return Ok(Some(id)),
                Ok(Ok(Err(r))) if !r.not_offered() => {
                    last = LogError::Unavailable(format!("Kafka: InitProducerId: {r}"));
                }
                Ok(Ok(Err(r))) => {
                    tracing::warn!(
                        refusal = %r,
                        "kafka: the cluster gives no producer id, so produce is not idempotent: \
                         a record sent again after a lost answer may be written twice (readers \
                         drop the copy; its sender's ack may name the copy's offset)"
                    );
                    return Ok(None);
                }
                Ok(Err(f)) => {
                    self.forget_control(node, &conn).await;
                    last = unavailable("InitProducerId", f);
                }
                Err(_) => {
                    self.forget_control(node, &conn).await;
                    last = unavailable("InitProducerId", "no answer in time");
                }
            }
        }
        Err(last)
    }

    /// The brokers the metadata lists (another can take over a partition only when there
    /// are more than one).
    pub(super) fn broker_ids(&self) -> Vec<i32> {
        let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
        meta.addrs.keys().copied().collect()
    }

    /// The partition's earliest offset still held, or the offset its next record gets,
    /// from its leader.
    pub(super) async fn list_offset(&self, partition: i32, at: OffsetAt) -> Result<i64, LogError> {
        let mut last =
            LogError::Unavailable(format!("no Kafka leader known for partition {partition}"));
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(REFRESH_INTERVAL).await;
            }
            let node = match self.leader(partition) {
                Some(n) => n,
                None => {
                    self.refresh().await?;
                    match self.leader(partition) {
                        Some(n) => n,
                        None => continue,
                    }
                }
            };
            let conn = self.control(node).await?;
            match tokio::time::timeout(SHORT_TIMEOUT, conn.list_offset(&self.topic, partition, at))
                .await
            {
                Ok(Ok(Ok(offset))) => return Ok(offset),
                Ok(Ok(Err(r))) if r.stale() => {
                    last = LogError::Unavailable(format!("Kafka: {r}"));
                    self.refresh().await?;
                }
                Ok(Ok(Err(r))) => return Err(LogError::Unavailable(format!("Kafka: {r}"))),
                // The broker closes idle connections: once more on a new one.
                Ok(Err(f)) if f.broken => {
                    self.forget_control(node, &conn).await;
                    last = unavailable("offsets", f);
                }
                Ok(Err(f)) => return Err(unavailable("offsets", f)),
                Err(_) => {
                    self.forget_control(node, &conn).await;
                    return Err(LogError::Unavailable(format!(
                        "offsets: no answer from Kafka within {} s",
                        SHORT_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        Err(last)
    }
}

/// The TLS handshake with a broker, its certificate checked against the broker's host as
/// given (bootstrap) or advertised (leaders). Errors are worded for
/// [`crate::tls::classify`].
async fn tls_handshake(
    config: &Arc<rustls::ClientConfig>,
    addr: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
    let connector = TlsConnector::from(Arc::clone(config));
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, UnexpectedEof};
            if matches!(
                e.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted
            ) {
                // What a plaintext Kafka listener does with a ClientHello: it reads it as
                // a request size far above its limit and closes the connection.
                Err(
                    "the port accepts connections but closed them during the TLS handshake \
                     (a plaintext listener?)"
                        .into(),
                )
            } else {
                Err(format!("TLS handshake: {}", crate::tls::error_chain(&e)))
            }
        }
        Err(_) => Err(format!(
            "the port accepts connections but did not answer the TLS handshake within {} s \
             (a plaintext port?)",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The replication factor of a topic chat creates when none is given: one copy per broker,
/// at most 3 (with `min.insync.replicas=2`, what survives one broker lost with acks=all).
pub(super) fn default_replication(brokers: usize) -> i16 {
    brokers.clamp(1, 3) as i16
}

#[cfg(test)]
mod replication_tests {
    use super::default_replication;

    #[test]
    fn one_copy_per_broker_up_to_three() {
        assert_eq!(default_replication(0), 1);
        assert_eq!(default_replication(1), 1);
        assert_eq!(default_replication(2), 2);
        assert_eq!(default_replication(3), 3);
        assert_eq!(default_replication(7), 3);
    }
}
