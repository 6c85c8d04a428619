//! [`Coord`](super::Coord) on Redis, shared by every gateway and consumer of a deployment.
//!
//! Keys (all under the deployment's prefix; on one server unchanged from earlier versions,
//! so a rolling upgrade keeps its claims, leases and positions):
//! - `{prefix}:sent:{sender}:{room}:{client_msg_id}` = `pending:<id>` | `retry:<id>` |
//!   `done:<message json>`, with the TTL of its state;
//! - `{prefix}:lease:{topic}:{partition}` = `owner:epoch` (PX lease TTL), its counter
//!   `…:epoch`, and the live consumers `{prefix}:lease:{topic}:consumers` (sorted set,
//!   score = expiry);
//! - `{prefix}:relay:{topic}:{partition}` = the relay position;
//! - `{prefix}:tomb:{message id}` = `1` (EX tombstone TTL): a deleted message;
//! - `{prefix}:slow:{{room}}:{user}` = `next turn ms:message id` (PX interval): slow mode.
//!
//! Every multi-step change is one Lua script (in `lua/`), so it is atomic.
//!
//! On a Redis Cluster (`--redis-cluster-nodes`) a script's KEYS must hash to one slot.
//! Claims, tombstones, slow-mode turns and the bus's presence sets are one key each and
//! keep their names. The lease keys, their epoch counters, the consumers' set and the
//! relay positions of a topic share the hash tag `{prefix:topic}` (only the part between
//! the first braces chooses the slot), so acquire (lease + epoch) and save (lease +
//! position) stay in one slot:
//! - `{prefix}:lease:{{prefix}:{topic}}:{partition}` (and `…:epoch`),
//!   `{prefix}:lease:{{prefix}:{topic}}:consumers`;
//! - `{prefix}:relay:{{prefix}:{topic}}:{partition}`.
//!
//! (All of a topic's leases live on one master: a few commands per partition per lease
//! period.) A prefix with braces is refused in cluster mode (it would move the tags).

use std::sync::Arc;
use std::time::Duration;

use crate::bus::{RedisConn, RedisConnSpec};
use async_trait::async_trait;
use futures_util::StreamExt;

use super::{
    Claim, CoordError, Lease, Leases, Positions, SendClaims, SendKey, Settled, SlowMode, Timings,
    Tombstones,
};
use crate::model::{MessageId, RoomId, UserId};
use crate::telemetry::hops::{redis_request as count, Redis};

struct Scripts {
    claim: redis::Script,
    acquire: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    heartbeat: redis::Script,
    save: redis::Script,
}

#[derive(Clone)]
pub struct RedisCoord {
    conn: RedisConn,
    prefix: String,
    /// `{prefix}:lease:{topic}`.
    leases: String,
    /// `{prefix}:relay:{topic}`.
    positions: String,
    timings: Timings,
    scripts: Arc<Scripts>,
}

fn unavailable(e: redis::RedisError) -> CoordError {
    CoordError::Unavailable(e.to_string())
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RedisCoord {
    /// Connects lazily (it starts while Redis is down, like the bus) on a connection of
    /// its own, so claims do not queue behind the bus's publishes.
    pub fn connect(
        target: &crate::tls::RedisTarget,
        prefix: &str,
        topic: &str,
        timings: Timings,
    ) -> Result<RedisCoord, CoordError> {
        let conn = RedisConn::connect(
            target,
            RedisConnSpec {
                resp3: false,
                push: None,
            },
        )
        .map_err(unavailable)?;
        // On a cluster, one hash tag per topic (see the module doc).
        let topic_key = if conn.is_cluster() {
            format!("{{{prefix}:{topic}}}")
        } else {
            topic.to_owned()
        };
        Ok(RedisCoord {
            conn,
            prefix: prefix.to_owned(),
            leases: format!("{prefix}:lease:{topic_key}"),
            positions: format!("{prefix}:relay:{topic_key}"),
            timings,
            scripts: Arc::new(Scripts {
                claim: redis::Script::new(include_str!("lua/claim.lua")),
                acquire: redis::Script::new(include_str!("lua/lease_acquire.lua")),
                renew: redis::Script::new(include_str!("lua/lease_renew.lua")),
                release: redis::Script::new(include_str!("lua/lease_release.lua")),
                heartbeat: redis::Script::new(include_str!("lua/lease_heartbeat.lua")),
                save: redis::Script::new(include_str!("lua/position_save.lua")),
            }),
        })
    }

    fn send_key(&self, k: &SendKey) -> String {
        format!(
            "{}:sent:{}:{}:{}",
            self.prefix, k.sender, k.room, k.client_msg_id
        )
    }

    fn lease_key(&self, partition: i32) -> String {
        format!("{}:{partition}", self.leases)
    }
}

fn token(lease: &Lease) -> String {
    format!("{}:{}", lease.owner, lease.epoch)
}

fn parse_id(s: &str) -> Result<MessageId, CoordError> {
    MessageId::parse_str(s).map_err(|e| CoordError::Corrupt(format!("message id {s:?}: {e}")))
}

#[async_trait]
impl SendClaims for RedisCoord {
    async fn claim(&self, key: &SendKey, fresh: MessageId) -> Result<Claim, CoordError> {
        count(Redis::Claim);
        let v: String = self
            .scripts
            .claim
            .key(self.send_key(key))
            .arg(fresh.to_string())
            .arg(self.timings.pending.as_secs().max(1))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if let Some(id) = v.strip_prefix("claimed:") {
            return parse_id(id).map(Claim::Mine);
        }
        if let Some(json) = v.strip_prefix("done:") {
            return serde_json::from_str(json)
                .map(Claim::Done)
                .map_err(|e| CoordError::Corrupt(format!("finished send: {e}")));
        }
        if v.starts_with("pending:") {
            return Ok(Claim::InFlight);
        }
        Err(CoordError::Corrupt(format!("send claim {v:?}")))
    }

    async fn settle(&self, key: &SendKey, outcome: &Settled) -> Result<(), CoordError> {
        count(Redis::Settle);
        self.settle_cmd(key, outcome)?
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn settle_many(&self, settled: &[(SendKey, Settled)]) -> Result<(), CoordError> {
        if settled.is_empty() {
            return Ok(());
        }
        if self.conn.is_cluster() {
            // Keys in many slots: one command each, several at a time (the cluster
            // connection pipelines them per node).
            let each: Vec<_> = settled
                .iter()
                .map(|(key, outcome)| self.settle(key, outcome))
                .collect();
            // Every one is attempted; the first error is returned.
            let results: Vec<Result<(), CoordError>> = futures_util::stream::iter(each)
                .buffer_unordered(SETTLE_FANOUT)
                .collect()
                .await;
            return results.into_iter().collect();
        }
        count(Redis::Settle);
        let mut pipe = redis::pipe();
        for (key, outcome) in settled {
            pipe.add_command(self.settle_cmd(key, outcome)?).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }
}

/// How many settles of one batch run at once on a Redis Cluster.
const SETTLE_FANOUT: usize = 16;

impl RedisCoord {
    fn settle_cmd(&self, key: &SendKey, outcome: &Settled) -> Result<redis::Cmd, CoordError> {
        let (value, ttl) = match outcome {
            Settled::Done(m) => {
                let json =
                    serde_json::to_string(m).map_err(|e| CoordError::Corrupt(e.to_string()))?;
                (format!("done:{json}"), self.timings.done)
            }
            Settled::Retry(id) => (format!("retry:{id}"), self.timings.retry),
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.send_key(key))
            .arg(value)
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        Ok(cmd)
    }
}

#[async_trait]
impl Leases for RedisCoord {
    async fn heartbeat(&self, me: &str) -> Result<Vec<String>, CoordError> {
        count(Redis::Lease);
        let now = chrono::Utc::now().timestamp_millis();
        let ttl = millis(self.timings.lease);
        let mut live: Vec<String> = self
            .scripts
            .heartbeat
            .key(format!("{}:consumers", self.leases))
            .arg(me)
            .arg(now.saturating_add(ttl))
            .arg(now)
            .arg(ttl.saturating_mul(4))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if !live.iter().any(|m| m == me) {
            live.push(me.to_owned());
        }
        live.sort();
        Ok(live)
    }

    async fn leave(&self, me: &str) -> Result<(), CoordError> {
        count(Redis::Lease);
        redis::cmd("ZREM")
            .arg(format!("{}:consumers", self.leases))
            .arg(me)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn acquire(&self, me: &str, partition: i32) -> Result<Option<Lease>, CoordError> {
        count(Redis::Lease);
        let key = self.lease_key(partition);
        let epoch: Option<i64> = self
            .scripts
            .acquire
            .key(&key)
            .key(format!("{key}:epoch"))
            .arg(me)
            .arg(millis(self.timings.lease))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(epoch.map(|epoch| Lease {
            partition,
            epoch,
            owner: me.to_owned(),
        }))
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, CoordError> {
        count(Redis::Lease);
        let n: i64 = self
            .scripts
            .renew
            .key(self.lease_key(lease.partition))
            .arg(token(lease))
            .arg(millis(self.timings.lease))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, CoordError> {
        count(Redis::Lease);
        let n: i64 = self
            .scripts
            .release
            .key(self.lease_key(lease.partition))
            .arg(token(lease))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

#[async_trait]
impl Positions for RedisCoord {
    async fn position(&self, partition: i32) -> Result<Option<i64>, CoordError> {
        count(Redis::Position);
        redis::cmd("GET")
            .arg(format!("{}:{partition}", self.positions))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn save(&self, lease: &Lease, offset: i64) -> Result<bool, CoordError> {
        count(Redis::Position);
        let n: i64 = self
            .scripts
            .save
            .key(self.lease_key(lease.partition))
            .key(format!("{}:{}", self.positions, lease.partition))
            .arg(token(lease))
            .arg(offset)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

#[async_trait]
impl Tombstones for RedisCoord {
    async fn bury(&self, message: MessageId) -> Result<(), CoordError> {
        count(Redis::Tombstone);
        redis::cmd("SET")
            .arg(format!("{}:tomb:{message}", self.prefix))
            .arg(1)
            .arg("EX")
            .arg(self.timings.tombstone.as_secs().max(1))
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn buried(&self, message: MessageId) -> Result<bool, CoordError> {
        count(Redis::Tombstone);
        let n: i64 = redis::cmd("EXISTS")
            .arg(format!("{}:tomb:{message}", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

#[async_trait]
impl SlowMode for RedisCoord {
    async fn take_turn(
        &self,
        room: RoomId,
        user: UserId,
        interval: Duration,
        id: MessageId,
    ) -> Result<Option<Duration>, CoordError> {
        let key = format!("{}:slow:{{{room}}}:{user}", self.prefix);
        let ms = interval.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
        // The value is when the next turn is (ms since the epoch): the wait is read back
        // with GET, which the ACL of a least-privilege user allows (README), unlike PTTL.
        let now = chrono::Utc::now().timestamp_millis();
        let next = now.saturating_add(ms as i64);
        let mut conn = self.conn.clone();
        count(Redis::SlowMode);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(format!("{next}:{id}"))
            .arg("PX")
            .arg(ms)
            .arg("NX")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if set.is_some() {
            return Ok(None);
        }
        count(Redis::SlowMode);
        let held: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some((at, holder)) = held.as_deref().and_then(|h| h.split_once(':')) else {
            // Expired between the two commands: wait a moment and try again.
            return Ok(Some(Duration::from_millis(1)));
        };
        if holder == id.to_string() {
            return Ok(None);
        }
        let left = at
            .parse::<i64>()
            .map_or(1, |t| t.saturating_sub(now).max(1));
        Ok(Some(Duration::from_millis(left as u64)))
    }
}
