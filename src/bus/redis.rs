//! Redis pub/sub bus: RESP3 push messages on a `ConnectionManager` that re-subscribes
//! by itself after a reconnect. The library's `Disconnection` push becomes
//! [`BusNotice::Lost`]; once the new connection answers (so it is subscribed again), the
//! bus sends [`BusNotice::Resync`].

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{Bus, BusError, BusEvent, BusNotice, Channel, PRESENCE_TTL};
use crate::model::UserId;
use crate::shutdown::Shutdown;
use crate::telemetry::hops::{redis_request as count, Redis};

/// Presence lives in one sorted set per user (see `lua/presence_join.lua`).
const PRESENCE_JOIN: &str = include_str!("lua/presence_join.lua");
const PRESENCE_LEAVE: &str = include_str!("lua/presence_leave.lua");

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Clone)]
pub struct RedisBus {
    prefix: String,
    commands: ConnectionManager,
    subscriber: ConnectionManager,
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

impl RedisBus {
    /// Connects lazily (it starts while Redis is down) and returns the bus and the
    /// stream of notices for the channels this process subscribes to. Its tasks (the push
    /// reader, the probe after a loss) are spawned in `tasks` and end when it is cancelled.
    pub fn connect(
        target: &crate::tls::RedisTarget,
        prefix: &str,
        tasks: &Shutdown,
    ) -> Result<(RedisBus, mpsc::UnboundedReceiver<BusNotice>), BusError> {
        let client = target
            .client(&resp3_url(&target.url))
            .map_err(unavailable)?;
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config())
            .map_err(unavailable)?;
        let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let subscriber = ConnectionManager::new_lazy_with_config(
            client,
            config()
                .set_push_sender(push_tx)
                .set_automatic_resubscription(),
        )
        .map_err(unavailable)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let channel_prefix = format!("{prefix}:");
        let probe_conn = subscriber.clone();
        // Drains the (unbounded) push channel promptly into typed notices.
        let probes = tasks.clone();
        tasks.spawn_until_cancelled(async move {
            let mut probing: Option<tokio::task::JoinHandle<Option<()>>> = None;
            while let Some(push) = push_rx.recv().await {
                let notice = match push.kind {
                    PushKind::Disconnection => {
                        // Events published while the subscription is down are lost to it.
                        // The library reconnects and re-subscribes by itself; once that is
                        // done (a command on the new connection succeeds), `Resync` sends the
                        // gateway's clients to recovery, which fills the gap from the log.
                        // Telling them earlier would only recover up to the moment Redis
                        // came back. This push stream is ordered: `Lost` precedes every event
                        // of the new connection.
                        if probing.as_ref().is_none_or(|p| p.is_finished()) {
                            probing = Some(probes.spawn_until_cancelled(announce_restored(
                                probe_conn.clone(),
                                tx.clone(),
                            )));
                        }
                        Some(BusNotice::Lost)
                    }
                    PushKind::Message => decode_message(&push.data, &channel_prefix),
                    _ => None,
                };
                if let Some(n) = notice {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
            }
        });
        Ok((
            RedisBus {
                prefix: prefix.to_owned(),
                commands,
                subscriber,
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

    fn presence_key(&self, user: UserId) -> String {
        format!("{}:presence:{user}", self.prefix)
    }
}

/// Waits until the subscription connection works again (the library re-subscribes every
/// channel before it hands out the new connection), then sends [`BusNotice::Resync`].
async fn announce_restored(mut conn: ConnectionManager, tx: mpsc::UnboundedSender<BusNotice>) {
    let down = std::time::Instant::now();
    loop {
        match redis::cmd("PING").query_async::<Value>(&mut conn).await {
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(error = %e, "bus subscription still down");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    tracing::warn!(
        down_ms = down.elapsed().as_millis() as u64,
        "bus subscription restored; clients resubscribe to recover what it missed"
    );
    let _ = tx.send(BusNotice::Resync);
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
        let mut c = self.subscriber.clone();
        c.subscribe(self.channel(channel))
            .await
            .map_err(unavailable)
    }

    async fn unsubscribe(&self, channel: Channel) -> Result<(), BusError> {
        count(Redis::Subscribe);
        let mut c = self.subscriber.clone();
        c.unsubscribe(self.channel(channel))
            .await
            .map_err(unavailable)
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
        let ttl = PRESENCE_TTL.as_millis() as i64;
        let expires = now_ms() + ttl;
        for chunk in conns.chunks(1_000) {
            let mut pipe = redis::pipe();
            for (user, conn) in chunk {
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
            count(Redis::Presence);
            let mut c = self.commands.clone();
            pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn online(&self, users: &[UserId]) -> Result<HashSet<UserId>, BusError> {
        if users.is_empty() {
            return Ok(HashSet::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("ZCOUNT")
                .arg(self.presence_key(*u))
                .arg(now)
                .arg("+inf");
        }
        count(Redis::Presence);
        let mut c = self.commands.clone();
        let counts: Vec<i64> = pipe.query_async(&mut c).await.map_err(unavailable)?;
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
