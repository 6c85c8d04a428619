//! Where a message's time goes: one histogram per hop of its path (`chat_hop_seconds`)
//! and counters of the requests made to Kafka and Redis, for `/metrics` (rendered after
//! the recorder's own metrics, [`render`]).
//!
//! Kept in plain atomics rather than the `metrics` recorder: `fanout` is observed once per
//! delivered frame, and an observation here is a bucket search over 15 bounds and two
//! relaxed `fetch_add`s (no allocation, no lock, no key lookup, no syscall), where the
//! recorder would look the key up and queue every sample until its next upkeep.
//!
//! The hops (docs/protocol.md, "Metrics"):
//! - `claim`: the send frame parsed → claimed and checked (the send worker's queue, the
//!   claim, a slow-mode turn, reply and mention checks), ready to produce;
//! - `produce`: handed to the log → durable (Kafka acks=all; SQLite commit);
//! - `ack_write`: durable → its ack frame written to the socket (waits for the acks of
//!   earlier sends of the connection and for the outbox);
//! - `log_to_relay`: the record's create time (the message's `sent_at`, which the Kafka
//!   record's timestamp also carries, stamped once the claim is done) → a relay fetched
//!   it: it includes `produce`;
//! - `relay_publish`: fetched → the bus took the batch;
//! - `bus`: the relay handed it to the bus (a wall-clock stamp in the bus event) → a
//!   gateway's bus pump got it;
//! - `fanout`: the pump got it → written to a socket, once per delivery.
//!
//! `log_to_relay` and `bus` cross processes: they compare wall clocks of two machines and
//! are only as good as their synchronisation (a negative difference counts as 0).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// One hop of a message's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Claim,
    Produce,
    AckWrite,
    LogToRelay,
    RelayPublish,
    Bus,
    Fanout,
}

impl Hop {
    pub const ALL: [Hop; 7] = [
        Hop::Claim,
        Hop::Produce,
        Hop::AckWrite,
        Hop::LogToRelay,
        Hop::RelayPublish,
        Hop::Bus,
        Hop::Fanout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hop::Claim => "claim",
            Hop::Produce => "produce",
            Hop::AckWrite => "ack_write",
            Hop::LogToRelay => "log_to_relay",
            Hop::RelayPublish => "relay_publish",
            Hop::Bus => "bus",
            Hop::Fanout => "fanout",
        }
    }
}

/// A Kafka request, by what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kafka {
    /// A produce request (all partitions of one broker).
    Produce,
    /// A fetch of the relays' shared tailing reader (`Pace::Live`).
    FetchRelay,
    /// A fetch of the persist workers' shared tailing reader (`Pace::Batch`).
    FetchPersist,
    /// A fetch of a reader of its own (recovery, the tail of a send's target).
    FetchRead,
}

impl Kafka {
    pub const ALL: [Kafka; 4] = [
        Kafka::Produce,
        Kafka::FetchRelay,
        Kafka::FetchPersist,
        Kafka::FetchRead,
    ];

    pub fn labels(self) -> &'static str {
        match self {
            Kafka::Produce => r#"api="produce""#,
            Kafka::FetchRelay => r#"api="fetch",reader="relay""#,
            Kafka::FetchPersist => r#"api="fetch",reader="persist""#,
            Kafka::FetchRead => r#"api="fetch",reader="recovery""#,
        }
    }
}

/// A Redis round trip (one command, script or pipeline), by what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redis {
    /// A send's claim of its `client_msg_id`.
    Claim,
    /// Recording how a send ended.
    Settle,
    /// A slow-mode turn (one or two round trips).
    SlowMode,
    /// Tombstones of fresh deletes: bury and look up.
    Tombstone,
    /// Consumer membership and partition leases.
    Lease,
    /// A relay position: read at start, saved after each batch.
    Position,
    /// A bus publish (a pipeline of one or more events).
    Publish,
    /// Bus subscribe and unsubscribe.
    Subscribe,
    /// Presence: join, leave, refresh, online.
    Presence,
    /// Health pings.
    Ping,
}

impl Redis {
    pub const ALL: [Redis; 10] = [
        Redis::Claim,
        Redis::Settle,
        Redis::SlowMode,
        Redis::Tombstone,
        Redis::Lease,
        Redis::Position,
        Redis::Publish,
        Redis::Subscribe,
        Redis::Presence,
        Redis::Ping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Redis::Claim => "claim",
            Redis::Settle => "settle",
            Redis::SlowMode => "slow_mode",
            Redis::Tombstone => "tombstone",
            Redis::Lease => "lease",
            Redis::Position => "position",
            Redis::Publish => "publish",
            Redis::Subscribe => "subscribe",
            Redis::Presence => "presence",
            Redis::Ping => "ping",
        }
    }
}

/// Upper bounds of the buckets, in microseconds (0.0001 s … 5 s); one more bucket above.
pub const BOUNDS_US: [u64; 15] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000,
];

/// The bucket of a duration of `us` microseconds: the first bound at or above it, or the
/// one past the last (+Inf).
fn bucket(us: u64) -> usize {
    BOUNDS_US.partition_point(|b| *b < us)
}

struct Histogram {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS_US.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    fn record(&self, us: u64, n: u64) {
        self.buckets[bucket(us)].fetch_add(n, Relaxed);
        self.sum_us.fetch_add(us.saturating_mul(n), Relaxed);
    }
}

static HOPS: [Histogram; Hop::ALL.len()] = [const { Histogram::new() }; Hop::ALL.len()];
static KAFKA: [AtomicU64; Kafka::ALL.len()] = [const { AtomicU64::new(0) }; Kafka::ALL.len()];
static REDIS: [AtomicU64; Redis::ALL.len()] = [const { AtomicU64::new(0) }; Redis::ALL.len()];

/// Records `n` observations of `d` for the hop.
pub fn record_n(hop: Hop, d: Duration, n: u64) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    HOPS[hop as usize].record(us, n);
}

pub fn record(hop: Hop, d: Duration) {
    record_n(hop, d, 1);
}

/// Records the time from `since` to now.
pub fn since(hop: Hop, since: Instant) {
    record(hop, since.elapsed());
}

/// Records a hop that crosses processes: `now` − `then`, both wall-clock microseconds
/// since the Unix epoch (a negative difference, clocks out of step, counts as 0).
pub fn wall(hop: Hop, then_us: i64, now_us: i64) {
    let us = u64::try_from(now_us.saturating_sub(then_us)).unwrap_or(0);
    HOPS[hop as usize].record(us, 1);
}

/// Wall-clock microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Counts one Kafka request.
pub fn kafka_request(r: Kafka) {
    KAFKA[r as usize].fetch_add(1, Relaxed);
}

/// Counts one Redis round trip.
pub fn redis_request(r: Redis) {
    REDIS[r as usize].fetch_add(1, Relaxed);
}

/// Appends the hop histograms and request counters to `out`, in Prometheus' text format.
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP chat_hop_seconds Time a message spends on each hop of its path (docs/protocol.md).\n# TYPE chat_hop_seconds histogram"
    );
    for hop in Hop::ALL {
        let h = &HOPS[hop as usize];
        let name = hop.name();
        let mut cumulative = 0u64;
        for (i, b) in h.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            match BOUNDS_US.get(i) {
                Some(us) => {
                    let le = *us as f64 / 1e6;
                    let _ = writeln!(
                        out,
                        "chat_hop_seconds_bucket{{hop=\"{name}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "chat_hop_seconds_bucket{{hop=\"{name}\",le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = h.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "chat_hop_seconds_sum{{hop=\"{name}\"}} {sum}");
        let _ = writeln!(out, "chat_hop_seconds_count{{hop=\"{name}\"}} {cumulative}");
    }
    let _ = writeln!(
        out,
        "# HELP chat_kafka_requests_total Kafka requests sent, by API and reader.\n# TYPE chat_kafka_requests_total counter"
    );
    for k in Kafka::ALL {
        let n = KAFKA[k as usize].load(Relaxed);
        let _ = writeln!(out, "chat_kafka_requests_total{{{}}} {n}", k.labels());
    }
    let _ = writeln!(
        out,
        "# HELP chat_redis_requests_total Redis round trips (a command, script or pipeline), by purpose.\n# TYPE chat_redis_requests_total counter"
    );
    for r in Redis::ALL {
        let n = REDIS[r as usize].load(Relaxed);
        let _ = writeln!(
            out,
            "chat_redis_requests_total{{purpose=\"{}\"}} {n}",
            r.name()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_falls_in_the_first_bucket_at_or_above_it() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(100), 0);
        assert_eq!(bucket(101), 1);
        assert_eq!(bucket(5_000_000), 14);
        assert_eq!(bucket(5_000_001), 15);
        assert_eq!(bucket(u64::MAX), BOUNDS_US.len());
    }

    #[test]
    fn renders_cumulative_buckets_a_sum_and_a_count() {
        // The statics are shared with other tests of the process: compare before/after.
        let count = |text: &str, hop: &str| -> u64 {
            let prefix = format!("chat_hop_seconds_count{{hop=\"{hop}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        let mut before = String::new();
        render(&mut before);
        record_n(Hop::Bus, Duration::from_micros(150), 3);
        wall(Hop::Bus, 10, 5); // clocks out of step: 0
        kafka_request(Kafka::FetchPersist);
        redis_request(Redis::Claim);
        let mut after = String::new();
        render(&mut after);
        // At least: a test running beside this one may record too.
        assert!(count(&after, "bus") - count(&before, "bus") >= 4);
        assert!(after.contains("# TYPE chat_hop_seconds histogram"));
        assert!(after.contains("chat_hop_seconds_bucket{hop=\"fanout\",le=\"0.0001\"}"));
        assert!(after.contains("chat_hop_seconds_bucket{hop=\"fanout\",le=\"+Inf\"}"));
        assert!(after.contains("chat_kafka_requests_total{api=\"fetch\",reader=\"persist\"}"));
        assert!(after.contains("chat_redis_requests_total{purpose=\"claim\"}"));
        // Buckets are cumulative: never decreasing within a hop.
        let les: Vec<u64> = after
            .lines()
            .filter(|l| l.starts_with("chat_hop_seconds_bucket{hop=\"bus\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(les.len(), BOUNDS_US.len() + 1);
        assert!(les.windows(2).all(|w| w[0] <= w[1]), "{les:?}");
    }
}
