//! The one Redis connection type of the bus and the coordination state: one server
//! (a `ConnectionManager`, as before the cluster mode: same URLs, same commands) or a Redis
//! Cluster (a `ClusterConnection`, which routes each command by its key's slot, follows
//! redirections and re-reads the slot map when a master fails over). Both are redis's
//! `aio::ConnectionLike`, so commands, pipelines whose keys share a slot and scripts whose
//! KEYS share a slot run unchanged on either; what differs (sharded pub/sub, pipelines across
//! slots) is decided by the callers with [`RedisConn::is_cluster`].

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, Value};
use tokio::sync::mpsc;

use crate::tls::RedisTarget;

#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How a connection talks: RESP3 (pushes: the bus) or the URL's own protocol (the
/// coordination state), and where its pushes go (the bus's subscriber).
pub(crate) struct ConnSpec {
    pub resp3: bool,
    pub push: Option<mpsc::UnboundedSender<PushInfo>>,
}

impl RedisConn {
    /// Connects lazily: it starts while Redis is down and connects (again) by itself.
    /// One server: a connection manager reconnecting forever (re-subscribing what it had
    /// when it has a push sender). A cluster: its seed nodes, the slot map read on the
    /// first command.
    pub(crate) fn connect(target: &RedisTarget, spec: ConnSpec) -> redis::RedisResult<RedisConn> {
        if target.is_cluster() {
            let client = target.cluster_client(spec.resp3, spec.push)?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(std::time::Duration::from_secs(2))
                .set_response_timeout(std::time::Duration::from_secs(2));
            return Ok(RedisConn::Cluster(
                client.get_pending_async_connection_with_config(config),
            ));
        }
        let url = if spec.resp3 {
            super::redis::resp3_url(&target.url)
        } else {
            target.url.clone()
        };
        let client = target.client(&url)?;
        let config = match spec.push {
            Some(tx) => super::redis::config()
                .set_push_sender(tx)
                .set_automatic_resubscription(),
            None => super::redis::config(),
        };
        ConnectionManager::new_lazy_with_config(client, config).map(RedisConn::Single)
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
