//! Redis pub/sub bus, on one server or a Redis Cluster ([`RedisConn`]).
//!
//! One server: classic PUBLISH/SUBSCRIBE, RESP3 push messages on a `ConnectionManager`
//! that re-subscribes by itself after a reconnect. The library's `Disconnection` push
//! becomes [`BusNotice::Lost`]; once the new connection answers (so it is subscribed
//! again), the bus sends [`BusNotice::Resync`].
//!
//! A cluster: the same channel names on sharded pub/sub (SSUBSCRIBE/SPUBLISH/SUNSUBSCRIBE,
//! each channel served by the master owning its slot; messages arrive as `smessage`
//! pushes). What the redis crate (1.8) does and does not do, read from its source
//! (`cluster_handling/async_connection`) and seen in `tests/it/redis_cluster.rs`: a node
//! connection that breaks sends a `Disconnection` push; the crate tracks subscriptions and
//! re-sends them, fire and forget, to the nodes owning their slots when it reconnects a
//! node or re-reads the slot map; a request to a node it has no connection for (a dead
//! master) makes it replace *every* node connection with new ones from the seed nodes,
//! which drops the subscriptions held on the old ones without a push; shard commands for a
//! failing master's slots are served by its replica meanwhile; and a `sunsubscribe` the
//! server sends by itself (the slot moved away) only removes the channel from what it
//! tracks. Killing a master under load, the crate alone lost every subscription of the
//! process for good. So the bus keeps the set of channels it wants itself: a
//! `Disconnection`, or a server `sunsubscribe` of a channel still wanted (not one
//! confirming our own SUNSUBSCRIBE), is [`BusNotice::Lost`]; it then waits until the
//! cluster has a live master for every slot (every master `CLUSTER SLOTS` names answers
//! `PING`: the failed one's replica took over), SSUBSCRIBEs every wanted channel again
//! (each at its slot's master), repeats if another loss came meanwhile, and then sends
//! [`BusNotice::Resync`]. Publishes of one batch are one pipeline per channel (a cluster
//! pipeline stays in one slot), in order per channel; presence reads and refreshes are one
//! command or one pipeline per user key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use redis::aio::ConnectionManagerConfig;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};

use super::conn::{ConnSpec, RedisConn};
use super::{Bus, BusError, BusEvent, BusNotice, Channel, PRESENCE_REFRESH, PRESENCE_TTL};
use crate::model::UserId;
use crate::shutdown::Shutdown;
use crate::telemetry::hops::{redis_request as count, Redis};

/// Presence lives in one sorted set per user (see `lua/presence_join.lua`).
const PRESENCE_JOIN: &str = include_str!("lua/presence_join.lua");
const PRESENCE_LEAVE: &str = include_str!("lua/presence_leave.lua");

/// Cluster mode: commands of one batch in flight at once (each its own slot's pipeline).
const CLUSTER_FANOUT: usize = 32;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Clone)]
pub struct RedisBus {
    prefix: String,
    commands: RedisConn,
    subscriber: RedisConn,
    /// Cluster mode: the channels this process is subscribed to (see the module doc).
    wanted: Arc<Mutex<HashSet<String>>>,
    /// Cluster mode: SUNSUBSCRIBEs of ours whose confirming push has not been read yet
    /// (so a channel unsubscribed and at once subscribed again is not taken for one the
    /// server dropped).
    leaving: Arc<Mutex<HashMap<String, usize>>>,
    join: std::sync::Arc<redis::Script>,
    leave: std::sync::Arc<redis::Script>,
}

/// Adds `protocol=resp3` to a Redis URL unless it names a protocol already.
pub fn resp3_url(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// Checks that `url` is a Redis URL this client understands (no connection is made).
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How every Redis connection of the process behaves: it starts while Redis is down,
/// reconnects forever with a short delay, and fails a command after 2 s without answer.
pub(crate) fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(usize::MAX)
}

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn lock<T>(set: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts an unsubscription of ours in flight (`add`), or takes one back: true if there was
/// one (the `sunsubscribe` push read, or the command failed).
fn leaving(map: &Mutex<HashMap<String, usize>>, channel: &str, add: bool) -> bool {
    let mut m = lock(map);
    if add {
        *m.entry(channel.to_owned()).or_default() += 1;
        return true;
    }
    match m.get_mut(channel) {
        Some(n) if *n > 1 => {
            *n -= 1;
            true
        }
        Some(_) => {
            m.remove(channel);
            true
        }
        None => false,
    }
}

impl RedisBus {
    /// Connects lazily (it starts while Redis is down) and returns the bus and the
    /// stream of notices for the channels this process subscribes to. Its tasks (the push
    /// reader, the recovery after a loss) are spawned in `tasks` and end when it is cancelled.
    pub fn connect(
        target: &crate::tls::RedisTarget,
        prefix: &str,
        tasks: &Shutdown,
    ) -> Result<(RedisBus, mpsc::UnboundedReceiver<BusNotice>), BusError> {
        let commands = RedisConn::connect(
            target,
            ConnSpec {
                resp3: true,
                push: None,
            },
        )
        .map_err(unavailable)?;
        let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let subscriber = RedisConn::connect(
            target,
            ConnSpec {
                resp3: true,
                push: Some(push_tx),
            },
        )
        .map_err(unavailable)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let channel_prefix = format!("{prefix}:");
        let wanted = Arc::new(Mutex::new(HashSet::new()));
        let unsubscribing = Arc::new(Mutex::new(HashMap::new()));
        let ours = unsubscribing.clone();
        // Each loss bumps the generation; the recovery task restores the subscription
        // until a pass succeeds with no loss since it began, then sends `Resync`.
        let (losses, generation) = watch::channel(0u64);
        tasks.spawn_until_cancelled(recover(
            subscriber.clone(),
            wanted.clone(),
            unsubscribing.clone(),
            generation,
            tx.clone(),
        ));
        let cluster = subscriber.is_cluster();
        let still_wanted = wanted.clone();
        // Drains the (unbounded) push channel promptly into typed notices.
        tasks.spawn_until_cancelled(async move {
            while let Some(push) = push_rx.recv().await {
                let notice = match push.kind {
                    // Events published while the subscription is down are lost to it.
                    // Once it is restored (see `recover`), `Resync` sends the gateway's
                    // clients to recovery, which fills the gap from the log. Telling them
                    // earlier would only recover up to the moment Redis came back. This push
                    // stream is ordered: `Lost` precedes every event of the new connection.
                    PushKind::Disconnection => Some(BusNotice::Lost),
                    // The server dropped a sharded subscription (its slot moved): lost
                    // unless it confirms an unsubscription of ours, or the channel is no
                    // longer wanted.
                    PushKind::SUnsubscribe if cluster => {
                        let channel = push
                            .data
                            .first()
                            .and_then(as_bytes)
                            .map(|c| String::from_utf8_lossy(c).into_owned())
                            .unwrap_or_default();
                        let dropped = !leaving(&ours, &channel, false)
                            && lock(&still_wanted).contains(&channel);
                        dropped.then_some(BusNotice::Lost)
                    }
                    PushKind::Message | PushKind::SMessage => {
                        decode_message(&push.data, &channel_prefix)
                    }
                    _ => None,
                };
                let lost = notice == Some(BusNotice::Lost);
                if lost {
                    tracing::warn!(kind = ?push.kind, "bus subscription lost");
                }
                if let Some(n) = notice {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                // After `Lost` is sent: the recovery this starts ends with `Resync`, which
                // must not overtake it.
                if lost {
                    losses.send_modify(|g| *g += 1);
                }
            }
        });
        Ok((
            RedisBus {
                prefix: prefix.to_owned(),
                commands,
                subscriber,
                wanted,
                leaving: unsubscribing,
                join: std::sync::Arc::new(redis::Script::new(PRESENCE_JOIN)),
                leave: std::sync::Arc::new(redis::Script::new(PRESENCE_LEAVE)),
            },
            rx,
        ))
    }

    fn channel(&self, channel: Channel) -> String {
        match channel {
            Channel::Room(room) => format!("{}:room:{room}", self.prefix),
            Channel::User(user) => format!("{}:user:{user}", self.prefix),
        }
    }

    /// Refreshes `entries` for a TTL from now: the expiry is taken when the pipeline is
    /// built, so one sent late in a slow refresh still holds its entries a whole TTL.
    fn presence_pipe(&self, entries: &[(UserId, String)]) -> redis::Pipeline {
        let ttl = PRESENCE_TTL.as_millis() as i64;
        let expires = now_ms() + ttl;
        let mut pipe = redis::pipe();
        for (user, conn) in entries {
            let key = self.presence_key(*user);
            pipe.cmd("ZADD")
                .arg(&key)
                .arg(expires)
                .arg(conn)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(2 * ttl)
                .ignore();
        }
        pipe
    }

    fn presence_key(&self, user: UserId) -> String {
        format!("{}:presence:{user}", self.prefix)
    }
}

/// After each loss: waits until the subscription works again, then sends
/// [`BusNotice::Resync`]. One server: the library re-subscribes every channel before it
/// hands out the new connection, so a command that succeeds on it is enough. A cluster:
/// every wanted channel is SSUBSCRIBEd again at its slot's master (see the module doc).
/// A loss during a pass makes another pass.
async fn recover(
    conn: RedisConn,
    wanted: Arc<Mutex<HashSet<String>>>,
    unsubscribing: Arc<Mutex<HashMap<String, usize>>>,
    mut generation: watch::Receiver<u64>,
    tx: mpsc::UnboundedSender<BusNotice>,
) {
    while generation.changed().await.is_ok() {
        let down = std::time::Instant::now();
        loop {
            generation.borrow_and_update();
            let restored = match &conn {
                RedisConn::Single(_) => redis::cmd("PING")
                    .query_async::<Value>(&mut conn.clone())
                    .await
                    .map(|_| ()),
                RedisConn::Cluster(c) => match settled(c).await {
                    Ok(()) => resubscribe(c, &wanted, &unsubscribing).await,
                    Err(e) => Err(e),
                },
            };
            match restored {
                Ok(()) if !generation.has_changed().unwrap_or(false) => break,
                Ok(()) => {}
                Err(e) => tracing::debug!(error = %e, "bus subscription still down"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!(
            down_ms = down.elapsed().as_millis() as u64,
            "bus subscription restored; clients resubscribe to recover what it missed"
        );
        if tx.send(BusNotice::Resync).is_err() {
            return;
        }
    }
}

/// Whether the cluster has a live master for every slot range: every master `CLUSTER
/// SLOTS` names answers `PING` (a failed one is named until its replica took over). Until
/// then a subscription may land on a replica's connection that the client replaces once
/// it re-reads the topology, silently losing it: the bus resubscribes only afterwards.
async fn settled(conn: &redis::cluster_async::ClusterConnection) -> redis::RedisResult<()> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    let mut c = conn.clone();
    let ranges: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await?;
    let mut masters = HashSet::new();
    for range in &ranges {
        // [start, end, [host, port, id, …], replicas…]
        let Value::Array(range) = range else { continue };
        let Some(Value::Array(master)) = range.get(2) else {
            continue;
        };
        let host = master
            .first()
            .and_then(as_bytes)
            .map(String::from_utf8_lossy);
        let port = match master.get(1) {
            Some(Value::Int(p)) => u16::try_from(*p).ok(),
            _ => None,
        };
        if let (Some(host), Some(port)) = (host, port) {
            masters.insert((host.into_owned(), port));
        }
    }
    if masters.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "CLUSTER SLOTS named no master",
        )));
    }
    for (host, port) in masters {
        c.route_command(
            redis::cmd("PING"),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
        )
        .await?;
    }
    Ok(())
}

/// SSUBSCRIBEs every wanted channel again (a channel subscribed already stays subscribed
/// once), each at its slot's current master; a channel unsubscribed meanwhile is
/// unsubscribed again.
async fn resubscribe(
    conn: &redis::cluster_async::ClusterConnection,
    wanted: &Mutex<HashSet<String>>,
    unsubscribing: &Mutex<HashMap<String, usize>>,
) -> redis::RedisResult<()> {
    let channels: Vec<String> = lock(wanted).iter().cloned().collect();
    futures_util::stream::iter(channels)
        .map(|channel| {
            let mut c = conn.clone();
            async move {
                c.ssubscribe(&channel).await?;
                if !lock(wanted).contains(&channel) {
                    leaving(unsubscribing, &channel, true);
                    if let Err(e) = c.sunsubscribe(&channel).await {
                        leaving(unsubscribing, &channel, false);
                        return Err(e);
                    }
                }
                Ok::<(), redis::RedisError>(())
            }
        })
        .buffer_unordered(CLUSTER_FANOUT)
        .try_collect::<()>()
        .await
}

fn decode_message(data: &[Value], prefix: &str) -> Option<BusNotice> {
    // A message push is [channel, payload].
    let [channel, payload] = data else {
        return None;
    };
    let channel = as_bytes(channel)?;
    if !channel.starts_with(prefix.as_bytes()) {
        return None;
    }
    match serde_json::from_slice::<BusEvent>(as_bytes(payload)?) {
        Ok(e) => Some(BusNotice::Event(e)),
        Err(err) => {
            tracing::warn!(%err, "dropping an undecodable bus event");
            None
        }
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, events: &[BusEvent]) -> Result<(), BusError> {
        if events.is_empty() {
            return Ok(());
        }
        if let RedisConn::Cluster(_) = &self.commands {
            // One pipeline per channel (one slot each), in order within it; channels in
            // parallel (their relative order is no promise of the bus).
            let mut pipes: Vec<redis::Pipeline> = Vec::new();
            let mut index: HashMap<String, usize> = HashMap::new();
            for e in events {
                let payload =
                    serde_json::to_vec(e).map_err(|e| BusError::Unavailable(e.to_string()))?;
                let channel = self.channel(e.channel());
                let i = *index.entry(channel.clone()).or_insert_with(|| {
                    pipes.push(redis::pipe());
                    pipes.len() - 1
                });
                pipes[i].cmd("SPUBLISH").arg(channel).arg(payload).ignore();
            }
            return futures_util::stream::iter(pipes)
                .map(|pipe| {
                    count(Redis::Publish);
                    let mut c = self.commands.clone();
                    async move { pipe.query_async::<()>(&mut c).await }
                })
                .buffer_unordered(CLUSTER_FANOUT)
                .try_collect::<()>()
                .await
                .map_err(unavailable);
        }
        count(Redis::Publish);
        let mut pipe = redis::pipe();
        for e in events {
            let payload =
                serde_json::to_vec(e).map_err(|e| BusError::Unavailable(e.to_string()))?;
            pipe.publish(self.channel(e.channel()), payload).ignore();
        }
        let mut c = self.commands.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn subscribe(&self, channel: Channel) -> Result<(), BusError> {
        count(Redis::Subscribe);
        let name = self.channel(channel);
        match &self.subscriber {
            RedisConn::Single(c) => c.clone().subscribe(name).await.map_err(unavailable),
            RedisConn::Cluster(c) => {
                lock(&self.wanted).insert(name.clone());
                let r = c.clone().ssubscribe(&name).await;
                if r.is_err() {
                    lock(&self.wanted).remove(&name);
                }
                r.map_err(unavailable)
            }
        }
    }

    async fn unsubscribe(&self, channel: Channel) -> Result<(), BusError> {
        count(Redis::Subscribe);
        let name = self.channel(channel);
        match &self.subscriber {
            RedisConn::Single(c) => c.clone().unsubscribe(name).await.map_err(unavailable),
            RedisConn::Cluster(c) => {
                lock(&self.wanted).remove(&name);
                leaving(&self.leaving, &name, true);
                let r = c.clone().sunsubscribe(&name).await;
                if r.is_err() {
                    // No confirmation will come (or came: then one genuine drop of this
                    // channel later goes unnoticed until the next loss; it is unwanted now).
                    leaving(&self.leaving, &name, false);
                }
                r.map_err(unavailable)
            }
        }
    }

    async fn presence_join(&self, user: UserId, conn: &str) -> Result<bool, BusError> {
        count(Redis::Presence);
        let now = now_ms();
        let ttl = PRESENCE_TTL.as_millis() as i64;
        let mut c = self.commands.clone();
        let before: i64 = self
            .join
            .key(self.presence_key(user))
            .arg(conn)
            .arg(now)
            .arg(now + ttl)
            .arg(2 * ttl)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(before == 0)
    }

    async fn presence_leave(&self, user: UserId, conn: &str) -> Result<bool, BusError> {
        count(Redis::Presence);
        let mut c = self.commands.clone();
        let (removed, after): (i64, i64) = self
            .leave
            .key(self.presence_key(user))
            .arg(conn)
            .arg(now_ms())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(removed == 1 && after == 0)
    }

    async fn presence_refresh(&self, conns: &[(UserId, String)]) -> Result<(), BusError> {
        if !self.commands.is_cluster() {
            // One server: an error is the server's, so the rest would fail too; the
            // next tick tries again.
            for chunk in conns.chunks(1_000) {
                count(Redis::Presence);
                let mut c = self.commands.clone();
                self.presence_pipe(chunk)
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(unavailable)?;
            }
            return Ok(());
        }
        // A cluster: each user's key is in its own slot, one pipeline per entry. Every
        // entry is attempted whatever fails first (a master in failover must not take the
        // users on the other masters offline), within one refresh period so the next tick
        // starts on time; the first error is returned.
        let attempts = futures_util::stream::iter(conns.iter().cloned())
            .map(|entry| {
                count(Redis::Presence);
                let pipe = self.presence_pipe(std::slice::from_ref(&entry));
                let mut c = self.commands.clone();
                async move { pipe.query_async::<()>(&mut c).await }
            })
            .buffer_unordered(CLUSTER_FANOUT)
            .collect::<Vec<redis::RedisResult<()>>>();
        match tokio::time::timeout(PRESENCE_REFRESH, attempts).await {
            Ok(results) => results
                .into_iter()
                .collect::<redis::RedisResult<()>>()
                .map_err(unavailable),
            Err(_) => Err(BusError::Unavailable(format!(
                "presence refresh not done within {PRESENCE_REFRESH:?}"
            ))),
        }
    }

    async fn online(&self, users: &[UserId]) -> Result<HashSet<UserId>, BusError> {
        if users.is_empty() {
            return Ok(HashSet::new());
        }
        let now = now_ms();
        let zcount = |u: &UserId| {
            let mut cmd = redis::cmd("ZCOUNT");
            cmd.arg(self.presence_key(*u)).arg(now).arg("+inf");
            cmd
        };
        let counts: Vec<i64> = if self.commands.is_cluster() {
            // One command per user (each key its own slot), in the users' order.
            let cmds: Vec<redis::Cmd> = users.iter().map(zcount).collect();
            futures_util::stream::iter(cmds)
                .map(|cmd| {
                    count(Redis::Presence);
                    let mut c = self.commands.clone();
                    async move { cmd.query_async::<i64>(&mut c).await }
                })
                .buffered(CLUSTER_FANOUT)
                .try_collect()
                .await
                .map_err(unavailable)?
        } else {
            let mut pipe = redis::pipe();
            for u in users {
                pipe.add_command(zcount(u));
            }
            count(Redis::Presence);
            let mut c = self.commands.clone();
            pipe.query_async(&mut c).await.map_err(unavailable)?
        };
        Ok(users
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(u, _)| *u)
            .collect())
    }

    /// Pings both connections; a periodic ping is also what makes a connection manager
    /// reconnect (and re-subscribe) after an outage without waiting for traffic.
    async fn ping(&self) -> Result<(), BusError> {
        // (On a cluster, PING goes to every master: down while one fails over.)
        for conn in [&self.commands, &self.subscriber] {
            let mut c = conn.clone();
            count(Redis::Ping);
            redis::cmd("PING")
                .query_async::<redis::Value>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}
