//! Partition leasing (ARCHITECTURE.md, "partition leasing, fencing"): rskafka has no
//! consumer groups, so consumers share the partitions through the `Coord` seam's
//! [`Leases`](crate::coord::Leases) (Redis in the distributed mode; in memory in the
//! embedded one, with one consumer).
//!
//! - Each consumer heartbeats into the set of live consumers, so every one can compute
//!   the same fair share: `P / N`, one more for the first `P % N` consumers by id.
//! - A partition's lease is taken only if free, renewed every [`TICK`], and carries a
//!   fencing epoch (bumped on every acquisition). A consumer above its share stops its
//!   extra partitions' workers and then releases them; one below it takes free ones.
//! - A consumer that dies stops renewing: its leases expire (after
//!   [`Timings::lease`](crate::coord::Timings)) and the survivors take them over at
//!   their next tick.
//!
//! Two owners can still overlap briefly (a paused process, a Redis failover). That is
//! harmless: the relay saves its position only while its lease is current
//! ([`Positions::save`](crate::coord::Positions::save)), the persist worker's offset
//! update in the store is a compare-and-set, and gateways drop positions they have
//! delivered already.

use std::time::Duration;

/// How often leases are renewed and the share recomputed; well under the lease TTL
/// ([`crate::coord::Timings::lease`], 5 s).
pub const TICK: Duration = Duration::from_secs(1);

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
