//! The consumer role: for each partition, a relay (log → bus, live fan-out in log order)
//! and a persist worker (log → store, exactly once). The two are separate tasks with
//! separate log connections, so chat stays live while PostgreSQL is down.
//!
//! Invariant: a persist worker never moves its offset past a batch that failed.
//! Partitions are leased (lease.rs, on the `Coord` seam): one consumer works a partition
//! at a time, in both modes.

pub mod lease;
mod persist;
mod relay;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::coord::{Coord, Lease};
use crate::log::{Log, LogReader, Pace};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::telemetry::names;

/// The workers of one partition: a group of the consumer's shutdown node (their own
/// token and tracker; the process's tracker counts them too).
struct Workers {
    lease: Lease,
    tasks: Shutdown,
}

impl Workers {
    /// Stops them after their current batch; returns the lease they worked under.
    async fn stop(self) -> Lease {
        self.tasks.cancel();
        self.tasks.wait().await;
        self.lease
    }
}

pub struct Consumer {
    pub log: Arc<dyn Log>,
    pub bus: Arc<dyn Bus>,
    /// Partition leases and relay positions.
    pub coord: Arc<dyn Coord>,
    /// The store persist workers copy the log into; none when the log is the store
    /// itself (the embedded mode's SQLite file).
    pub persist: Option<Arc<dyn Store>>,
    /// The rules persist workers check each event against again where they apply it.
    pub limits: crate::events::Limits,
    /// This consumer's id among the live ones.
    pub me: String,
}

impl Consumer {
    pub fn new(
        log: Arc<dyn Log>,
        bus: Arc<dyn Bus>,
        coord: Arc<dyn Coord>,
        persist: Option<Arc<dyn Store>>,
    ) -> Self {
        Consumer {
            log,
            bus,
            coord,
            persist,
            limits: crate::events::Limits::default(),
            me: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Starts the relay and (unless the log is the store) the persist worker of one
    /// partition, under `lease`.
    fn start(self: &Arc<Self>, lease: Lease, stop: &Shutdown) -> Workers {
        let tasks = stop.group();
        if let Some(store) = &self.persist {
            let (me, s, store) = (self.clone(), tasks.token().clone(), store.clone());
            let partition = lease.partition;
            tasks.spawn(async move { persist::run(&me, &*store, partition, s).await });
        }
        {
            let (me, s, lease) = (self.clone(), tasks.token().clone(), lease.clone());
            tasks.spawn(async move { relay::run(&me, lease, s).await });
        }
        Workers { lease, tasks }
    }

    /// Runs until `stop` is cancelled, then lets each worker finish its current batch and
    /// gives its leases back. The partitions are shared fairly among the live consumers
    /// and taken over when one dies (lease.rs).
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        let coord = &self.coord;
        let partitions = self.log.partitions();
        let mut owned: BTreeMap<i32, Workers> = BTreeMap::new();
        let mut tick = tokio::time::interval(lease::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(consumer = %self.me, partitions, "consumer running (leased partitions)");
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Renew; a lease someone else holds now means our workers must stop. While
            // the coordination store is unreachable nobody can take a lease over, so
            // work goes on.
            let mut lost = Vec::new();
            for (p, w) in &owned {
                match coord.renew(&w.lease).await {
                    Ok(true) => {}
                    Ok(false) => lost.push(*p),
                    Err(e) => tracing::warn!(partition = p, error = %e, "lease not renewed"),
                }
            }
            for p in lost {
                if let Some(w) = owned.remove(&p) {
                    tracing::warn!(partition = p, "lease lost; stopping its workers");
                    w.stop().await;
                }
            }
            let live = match coord.heartbeat(&self.me).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer heartbeat failed");
                    continue;
                }
            };
            let index = live.iter().position(|m| *m == self.me).unwrap_or(0);
            let share = lease::fair_share(partitions, live.len(), index);
            // Above the share (another consumer joined): hand the extras over.
            while owned.len() > share {
                let Some((p, w)) = owned.pop_last() else {
                    break;
                };
                let l = w.stop().await;
                let _ = coord.release(&l).await;
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
                    match coord.acquire(&self.me, p).await {
                        Ok(Some(l)) => {
                            tracing::info!(partition = p, epoch = l.epoch, "partition leased");
                            owned.insert(p, self.start(l, &stop));
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
            let l = w.stop().await;
            let _ = coord.release(&l).await;
        }
        let _ = coord.leave(&self.me).await;
        metrics::gauge!(names::PARTITIONS_OWNED).set(0.0);
        tracing::info!("consumer stopped; leases released");
    }

    /// A tailing log reader for one partition ([`Log::tail`]), retried until it connects
    /// or `stop`.
    async fn tail(
        &self,
        partition: i32,
        pace: Pace,
        stop: &CancellationToken,
    ) -> Option<Box<dyn LogReader>> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.log.tail(partition, pace).await {
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
