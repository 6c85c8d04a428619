//! What the producer and the tailing readers share: who leads which partition (from a
//! Metadata request, refreshed when an answer says it is stale), and connections to
//! brokers on rskafka's `Messenger` over our own TCP stream with `TCP_NODELAY`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rskafka::messenger::{Messenger, RequestError};
use rskafka::protocol::error::Error as ProtocolError;
use rskafka::protocol::messages::{MetadataRequest, MetadataRequestTopic};
use rskafka::protocol::primitives::{Boolean, String_};
use tokio::io::BufStream;
use tokio::net::TcpStream;

use crate::log::LogError;
use crate::shutdown::Shutdown;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (rskafka's default).
const MAX_MESSAGE_BYTES: usize = 100 * 1024 * 1024;
/// Metadata is not asked for again sooner than this (many failing records, one refresh).
const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

pub(super) type Conn = Messenger<BufStream<TcpStream>>;

/// Who leads which partition, and where the brokers are.
#[derive(Default)]
pub(super) struct Meta {
    leaders: Vec<Option<i32>>,
    addrs: HashMap<i32, String>,
}

pub(super) struct Cluster {
    pub topic: String,
    bootstrap: Vec<String>,
    client_id: Arc<str>,
    meta: RwLock<Meta>,
    /// When metadata was last fetched; also makes refreshes single-flight.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    /// Where the producer, fetch and refresh tasks are spawned (they end with it).
    pub tasks: Shutdown,
}

pub(super) fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("{what}: {e}"))
}

impl Cluster {
    pub(super) async fn start(
        bootstrap: Vec<String>,
        topic: String,
        tasks: Shutdown,
    ) -> Result<Arc<Self>, LogError> {
        let cluster = Arc::new(Cluster {
            topic,
            tasks,
            bootstrap,
            client_id: Arc::from("chat"),
            meta: RwLock::new(Meta::default()),
            refreshed: tokio::sync::Mutex::new(None),
        });
        cluster.refresh().await?;
        Ok(cluster)
    }

    pub(super) fn leader(&self, partition: i32) -> Option<i32> {
        let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
        meta.leaders.get(partition as usize).copied().flatten()
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
            Some(addr) => self.connect(&addr).await,
            None => Err(LogError::Unavailable(format!(
                "Kafka broker {node} unknown"
            ))),
        }
    }

    pub(super) async fn connect(&self, addr: &str) -> Result<Conn, LogError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| unavailable(addr, "connect timed out"))?
            .map_err(|e| unavailable(addr, e))?;
        // Without it, a request written in two segments waits for the delayed ACK.
        stream.set_nodelay(true).map_err(|e| unavailable(addr, e))?;
        let mut conn = Messenger::new(
            BufStream::with_capacity(64 * 1024, 64 * 1024, stream),
            MAX_MESSAGE_BYTES,
            Arc::clone(&self.client_id),
        );
        tokio::time::timeout(CONNECT_TIMEOUT, conn.sync_versions())
            .await
            .map_err(|_| unavailable(addr, "no ApiVersions answer"))?
            .map_err(|e| unavailable(addr, e))?;
        Ok(conn)
    }

    /// Asks a broker (a known one, else a bootstrap one) who leads each partition.
    pub(super) async fn refresh(&self) -> Result<(), LogError> {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
            return Ok(());
        }
        let mut candidates: Vec<String> = {
            let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
            meta.addrs.values().cloned().collect()
        };
        candidates.extend(self.bootstrap.iter().cloned());
        // A failed attempt counts too: during an outage, one attempt per interval.
        *refreshed = Some(Instant::now());
        let mut last = LogError::Unavailable("no Kafka broker given".into());
        for addr in candidates {
            match self.metadata(&addr).await {
                Ok(meta) => {
                    *self.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
                    *refreshed = Some(Instant::now());
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn metadata(&self, addr: &str) -> Result<Meta, LogError> {
        let conn = self.connect(addr).await?;
        let request = MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: String_(self.topic.clone()),
            }]),
            allow_auto_topic_creation: Some(Boolean(false)),
        };
        let response = tokio::time::timeout(CONNECT_TIMEOUT, conn.request(request))
            .await
            .map_err(|_| unavailable(addr, "no metadata answer"))?
            .map_err(|e| unavailable(addr, e))?;
        let addrs = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.0, b.port.0)))
            .collect();
        let topic = response
            .topics
            .into_iter()
            .find(|t| t.name.0 == self.topic)
            .ok_or_else(|| unavailable(addr, "the topic is not in the metadata"))?;
        if let Some(e) = topic.error {
            return Err(unavailable(addr, e));
        }
        let n = topic
            .partitions
            .iter()
            .map(|p| p.partition_index.0 + 1)
            .max()
            .unwrap_or(0)
            .max(0) as usize;
        let mut leaders = vec![None; n];
        for p in topic.partitions {
            if p.error.is_none() && p.leader_id.0 >= 0 {
                leaders[p.partition_index.0 as usize] = Some(p.leader_id.0);
            }
        }
        Ok(Meta { leaders, addrs })
    }
}

/// An error in a partition's answer that says the metadata is stale (another broker
/// leads the partition now).
pub(super) fn is_stale(e: &ProtocolError) -> bool {
    matches!(
        e,
        ProtocolError::NotLeaderOrFollower
            | ProtocolError::LeaderNotAvailable
            | ProtocolError::UnknownTopicOrPartition
            | ProtocolError::FencedLeaderEpoch
            | ProtocolError::BrokerNotAvailable
    )
}

/// Whether the connection itself failed (closed, reset), as opposed to an answer that
/// could not be read.
pub(super) fn is_broken(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::Poisoned(_)
            | RequestError::IO(_)
            | RequestError::WriteMessageError(_)
            | RequestError::ReadFramedMessageError(_)
    )
}
