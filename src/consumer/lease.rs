//! Partition leasing (design.md, decided): rskafka has no consumer groups, so consumers
//! share the partitions through Redis.
//!
//! - Each consumer heartbeats into a sorted set of live consumers (score = expiry), so
//!   every one can compute the same fair share: `P / N`, one more for the first `P % N`
//!   consumers by id.
//! - A partition's lease is one key, set only if absent, with an expiry, renewed every
//!   [`TICK`]; its value `owner:epoch` carries a fencing epoch (a per-partition counter
//!   bumped on every acquisition). A consumer above its share stops its extra partitions'
//!   workers and then releases them; one below it takes free ones.
//! - A consumer that dies stops renewing: its leases expire after [`LEASE_TTL`] and the
//!   survivors take them over at their next tick.
//!
//! Two owners can still overlap briefly (a paused process, a Redis failover). That is
//! harmless: the relay saves its position only while its lease token is current
//! ([`Leases::save_offset`]), the persist worker's offset update in the store is a
//! compare-and-set, and gateways drop positions they have delivered already.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// How often leases are renewed and the share recomputed.
pub const TICK: Duration = Duration::from_secs(1);
/// A lease (and a consumer's heartbeat) not renewed for this long is free.
pub const LEASE_TTL: Duration = Duration::from_secs(5);

const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. e, 'PX', ARGV[2])
return e
";
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";
const FENCED_SET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
";
const HEARTBEAT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

#[derive(Debug, thiserror::Error)]
#[error("lease store unavailable: {0}")]
pub struct LeaseError(#[from] redis::RedisError);

/// One held lease: the fencing token is `owner:epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub partition: i32,
    pub epoch: i64,
    token: String,
}

#[derive(Clone)]
pub struct Leases {
    redis: ConnectionManager,
    /// `{prefix}:lease:{topic}`; keys below it per partition.
    base: String,
    pub me: String,
    scripts: [std::sync::Arc<redis::Script>; 5],
}

impl Leases {
    pub fn new(redis: ConnectionManager, prefix: &str, topic: &str) -> Self {
        Leases {
            redis,
            base: format!("{prefix}:lease:{topic}"),
            me: uuid::Uuid::new_v4().simple().to_string(),
            scripts: [ACQUIRE, RENEW, RELEASE, FENCED_SET, HEARTBEAT]
                .map(|s| std::sync::Arc::new(redis::Script::new(s))),
        }
    }

    fn key(&self, partition: i32) -> String {
        format!("{}:{partition}", self.base)
    }

    /// Records this consumer as alive; returns the live consumers' ids, sorted.
    pub async fn heartbeat(&self) -> Result<Vec<String>, LeaseError> {
        let now = chrono::Utc::now().timestamp_millis();
        let ttl = LEASE_TTL.as_millis() as i64;
        let mut c = self.redis.clone();
        let mut live: Vec<String> = self.scripts[4]
            .key(format!("{}:consumers", self.base))
            .arg(&self.me)
            .arg(now + ttl)
            .arg(now)
            .arg(4 * ttl)
            .invoke_async(&mut c)
            .await?;
        if !live.contains(&self.me) {
            live.push(self.me.clone());
        }
        live.sort();
        Ok(live)
    }

    /// Leaves the live set at once (a clean stop), so the others rebalance now.
    pub async fn leave(&self) -> Result<(), LeaseError> {
        let mut c = self.redis.clone();
        redis::cmd("ZREM")
            .arg(format!("{}:consumers", self.base))
            .arg(&self.me)
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// Takes the partition if nobody holds it.
    pub async fn acquire(&self, partition: i32) -> Result<Option<Lease>, LeaseError> {
        let key = self.key(partition);
        let mut c = self.redis.clone();
        let epoch: Option<i64> = self.scripts[0]
            .key(&key)
            .key(format!("{key}:epoch"))
            .arg(&self.me)
            .arg(LEASE_TTL.as_millis() as i64)
            .invoke_async(&mut c)
            .await?;
        Ok(epoch.map(|epoch| Lease {
            partition,
            epoch,
            token: format!("{}:{epoch}", self.me),
        }))
    }

    /// Extends the lease; false if it is no longer ours.
    pub async fn renew(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let mut c = self.redis.clone();
        let n: i64 = self.scripts[1]
            .key(self.key(lease.partition))
            .arg(&lease.token)
            .arg(LEASE_TTL.as_millis() as i64)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    pub async fn release(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let mut c = self.redis.clone();
        let n: i64 = self.scripts[2]
            .key(self.key(lease.partition))
            .arg(&lease.token)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Sets `key` to `value` only while `lease` is current (the fencing check); false if
    /// the lease has moved on.
    pub async fn save_offset(
        &self,
        lease: &Lease,
        key: &str,
        value: i64,
    ) -> Result<bool, LeaseError> {
        let mut c = self.redis.clone();
        let n: i64 = self.scripts[3]
            .key(self.key(lease.partition))
            .key(key)
            .arg(&lease.token)
            .arg(value)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }
}

/// How many of `partitions` the consumer at `index` among `live` consumers should own.
pub fn fair_share(partitions: i32, live: usize, index: usize) -> usize {
    let (p, n) = (partitions.max(0) as usize, live.max(1));
    p / n + usize::from(index < p % n)
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for p in [1, 4, 7, 8, 64] {
            for n in 1..10 {
                let shares: Vec<usize> = (0..n).map(|i| fair_share(p, n, i)).collect();
                assert_eq!(shares.iter().sum::<usize>(), p as usize, "{p}/{n}");
                let (lo, hi) = (shares.iter().min(), shares.iter().max());
                assert!(
                    hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
                    "{p}/{n}: {shares:?}"
                );
            }
        }
    }
}
