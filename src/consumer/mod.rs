//! The consumer role: for each partition, a relay (log → bus, live fan-out in log order)
//! and a persist worker (log → store, exactly once). The two are separate tasks with
//! separate log connections, so chat stays live while PostgreSQL is down.
//!
//! Invariant: a persist worker never moves its offset past a batch that failed.
//! Partitions are leased (lease.rs): one consumer works a partition at a time.

pub mod lease;
mod persist;
mod relay;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::log::{Log, LogReader};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::telemetry::names;
use lease::{Lease, Leases};

/// The workers of one partition: a group of the consumer's shutdown node (their own
/// token and tracker; the process's tracker counts them too).
struct Workers {
    lease: Option<Lease>,
    tasks: Shutdown,
}

impl Workers {
    /// Stops them after their current batch; returns the lease they worked under.
    async fn stop(self) -> Option<Lease> {
        self.tasks.cancel();
        self.tasks.wait().await;
        self.lease
    }
}

pub struct Consumer {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn Log>,
    pub bus: Arc<dyn Bus>,
    /// Where relays keep their position (none in the embedded mode: a relay starts at the
    /// log's end, since nobody can have subscribed before the process started).
    pub redis: Option<ConnectionManager>,
    pub topic: String,
    pub prefix: String,
    /// Run persist workers (not when the log is the store itself).
    pub persist: bool,
}

impl Consumer {
    /// Runs until `stop` is cancelled, then lets each worker finish its current batch.
    /// With Redis, the partitions are leased (shared fairly among live consumers, taken
    /// over when one dies); without it (embedded mode) this process works all of them.
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        match self.redis.clone() {
            Some(redis) => {
                let leases = Leases::new(redis, &self.prefix, &self.topic);
                self.run_leased(leases, stop).await
            }
            None => {
                let all: Vec<Workers> = (0..self.log.partitions())
                    .map(|p| self.start(p, None, &stop))
                    .collect();
                tracing::info!(partitions = all.len(), "consumer running");
                stop.cancelled().await;
                for w in all {
                    w.stop().await;
                }
                tracing::info!("consumer stopped");
            }
        }
    }

    /// Starts the relay and (unless the log is the store) the persist worker of one
    /// partition.
    fn start(
        self: &Arc<Self>,
        partition: i32,
        fence: Option<(Leases, Lease)>,
        stop: &Shutdown,
    ) -> Workers {
        let tasks = stop.group();
        let lease = fence.as_ref().map(|(_, l)| l.clone());
        {
            let (me, s) = (self.clone(), tasks.token().clone());
            tasks.spawn(async move { relay::run(&me, partition, s, fence).await });
        }
        if self.persist {
            let (me, s) = (self.clone(), tasks.token().clone());
            tasks.spawn(async move { persist::run(&me, partition, s).await });
        }
        Workers { lease, tasks }
    }

    async fn run_leased(self: Arc<Self>, leases: Leases, stop: Shutdown) {
        let partitions = self.log.partitions();
        let mut owned: BTreeMap<i32, Workers> = BTreeMap::new();
        let mut tick = tokio::time::interval(lease::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(consumer = %leases.me, partitions, "consumer running (leased partitions)");
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Renew; a lease someone else holds now means our workers must stop. While
            // Redis is unreachable nobody can take a lease over, so work goes on.
            let mut lost = Vec::new();
            for (p, w) in &owned {
                if let Some(l) = &w.lease {
                    match leases.renew(l).await {
                        Ok(true) => {}
                        Ok(false) => lost.push(*p),
                        Err(e) => tracing::warn!(partition = p, error = %e, "lease not renewed"),
                    }
                }
            }
            for p in lost {
                if let Some(w) = owned.remove(&p) {
                    tracing::warn!(partition = p, "lease lost; stopping its workers");
                    w.stop().await;
                }
            }
            let live = match leases.heartbeat().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer heartbeat failed");
                    continue;
                }
            };
            let index = live.iter().position(|m| *m == leases.me).unwrap_or(0);
            let share = lease::fair_share(partitions, live.len(), index);
            // Above the share (another consumer joined): hand the extras over.
            while owned.len() > share {
                let Some((p, w)) = owned.pop_last() else {
                    break;
                };
                let l = w.stop().await;
                if let Some(l) = l {
                    let _ = leases.release(&l).await;
                }
                tracing::info!(
                    partition = p,
                    share,
                    live = live.len(),
                    "partition handed over"
                );
            }
            // Below it: take free partitions, starting at a different one per consumer.
            if owned.len() < share {
                let start = (index * partitions as usize / live.len().max(1)) as i32;
                for k in 0..partitions {
                    if owned.len() >= share {
                        break;
                    }
                    let p = (start + k) % partitions;
                    if owned.contains_key(&p) {
                        continue;
                    }
                    match leases.acquire(p).await {
                        Ok(Some(l)) => {
                            tracing::info!(partition = p, epoch = l.epoch, "partition leased");
                            owned.insert(p, self.start(p, Some((leases.clone(), l)), &stop));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot lease partitions now");
                            break;
                        }
                    }
                }
            }
            metrics::gauge!(names::PARTITIONS_OWNED).set(owned.len() as f64);
        }
        // Drain: finish the current batches, then give the leases back at once.
        for (_, w) in std::mem::take(&mut owned) {
            if let Some(l) = w.stop().await {
                let _ = leases.release(&l).await;
            }
        }
        let _ = leases.leave().await;
        metrics::gauge!(names::PARTITIONS_OWNED).set(0.0);
        tracing::info!("consumer stopped; leases released");
    }

    /// A tailing log reader for one partition ([`Log::tail`]), retried until it connects
    /// or `stop`.
    async fn tail(
        &self,
        partition: i32,
        min_bytes: usize,
        max_wait: Duration,
        stop: &CancellationToken,
    ) -> Option<Box<dyn LogReader>> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.log.tail(partition, min_bytes, max_wait).await {
                Ok(r) => return Some(r),
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot open the log; retrying");
                    if !backoff.sleep(stop).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// Capped exponential backoff whose sleep ends early on `stop`.
pub(crate) struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            next: first,
            first,
            max,
        }
    }
    pub fn reset(&mut self) {
        self.next = self.first;
    }
    /// False if `stop` was cancelled instead.
    pub async fn sleep(&mut self, stop: &CancellationToken) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}
