//! The consumer role: for each partition, a relay (log → bus, live fan-out in log order)
//! and a persist worker (log → store, exactly once). The two are separate tasks with
//! separate log connections, so chat stays live while PostgreSQL is down.
//!
//! Invariant: a persist worker never moves its offset past a batch that failed.

mod persist;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::log::{Log, LogReader};
use crate::store::Store;

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
    /// Runs every partition's relay and persist worker until `stop` is cancelled, then
    /// lets each finish its current batch.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let tracker = TaskTracker::new();
        for p in 0..self.log.partitions() {
            let me = self.clone();
            let s = stop.clone();
            tracker.spawn(async move { relay::run(&me, p, s).await });
            if self.persist {
                let me = self.clone();
                let s = stop.clone();
                tracker.spawn(async move { persist::run(&me, p, s).await });
            }
        }
        tracker.close();
        tracing::info!(partitions = self.log.partitions(), "consumer running");
        tracker.wait().await;
        tracing::info!("consumer stopped");
    }

    /// A log reader for one partition, retried until it connects or `stop`.
    async fn reader(&self, partition: i32, stop: &CancellationToken) -> Option<Box<dyn LogReader>> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.log.reader(partition).await {
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
