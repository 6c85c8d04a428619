//! One shutdown for the whole process: a tree of cancellation tokens, a tracker that knows
//! every task the process spawned, and the one deadline that bounds the drain.
//!
//! The model is mini-redis's `shutdown.rs`: one signal (here a [`CancellationToken`], so a
//! part of the process can stop before the rest: a child token is cancelled with its
//! parent, or on its own) and a completion wait (here tokio-util's [`TaskTracker`]: the
//! drain closes it and waits until every tracked task has ended).
//!
//! Every task is spawned through a [`Shutdown`] (never bare `tokio::spawn`), so the final
//! wait in `app.rs` covers it. The tree, built in `app.rs` and `gateway/mod.rs`:
//!
//! ```text
//! root                         the rest (bus, Kafka, hub control, sweeps, HTTP server): last
//! ├── draining (app.rs)        `/readyz` answers 503
//! ├── consumer                 the lease loop
//! │   └── a group per partition    its relay and persist worker: finish their batch
//! └── gateway sessions: a group    cut: close what is left at once
//!     └── closing              stop waiting for clients to close; close them 1012
//!         └── drain            `reconnect` sent; sends not started yet refused `draining`
//! ```
//!
//! The drain sequence (`app.rs`), all within `--drain-timeout-secs` (D) of the signal:
//! 1. `/readyz` answers 503 and `/ws` refuses new connections; each session sends
//!    `reconnect`, keeps reading until its client closes (a `send` read now is answered
//!    `draining`, retryable), answers every send in flight (`ack` or a retryable error),
//!    then closes. The drain waits for the sessions (they are tracked on their own).
//! 2. At D/4, sessions whose client has not closed are closed 1012 (after their sends).
//! 3. At 3/4 D (`cut`), whatever is left is closed at once.
//! 4. The HTTP server stops (its own graceful timeout is D/8).
//! 5. The consumer finishes its batches and releases its leases.
//! 6. The root token is cancelled; the tracker is closed and waited on until D. A task
//!    still running then makes the process exit with an error.

use std::future::Future;
use std::time::Duration;

use futures_util::future::Either;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TrackedFuture;
use tokio_util::task::TaskTracker;

/// A node of the shutdown tree: its token, the tracker its tasks count in, and (for a
/// [`group`](Shutdown::group)) the process's tracker, which counts them too.
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
    /// The process's tracker, for a group (None: this is it).
    process: Option<TaskTracker>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

/// A future counted by a [`Shutdown`] (and its process) while it exists.
pub type Tracked<F> = Either<TrackedFuture<TrackedFuture<F>>, TrackedFuture<F>>;

impl Shutdown {
    /// The root: the process's token and tracker.
    pub fn new() -> Self {
        Shutdown {
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            process: None,
        }
    }

    /// A child: cancelled with this node or on its own; its tasks count where this node's do.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
            ..self.clone()
        }
    }

    /// A child with a tracker of its own, so that its tasks can be waited for apart (the
    /// gateway's sessions); they count in the process's tracker as well.
    pub fn group(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
            tasks: TaskTracker::new(),
            process: Some(self.process.clone().unwrap_or_else(|| self.tasks.clone())),
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The future, counted as a task of this node while it exists (for a task spawned by
    /// other means: actix's `spawn` on an HTTP worker's thread).
    pub fn track<F: Future>(&self, f: F) -> Tracked<F> {
        let f = self.tasks.track_future(f);
        match &self.process {
            Some(p) => Either::Left(p.track_future(f)),
            None => Either::Right(f),
        }
    }

    /// `tokio::spawn`, tracked.
    pub fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.track(f))
    }

    /// `spawn`, for a task that runs until this node is cancelled and is dropped then (at
    /// its current await): background loops that have nothing to finish.
    pub fn spawn_until_cancelled<F>(&self, f: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(self.token.clone().run_until_cancelled_owned(f))
    }

    /// Tasks of this node still running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Closes the tracker and waits until this node's tasks have ended.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Closes the tracker and waits until this node's tasks have ended or `until`; Err:
    /// how many are still running.
    pub async fn wait_until(&self, until: Instant) -> Result<(), usize> {
        self.tasks.close();
        match tokio::time::timeout_at(until, self.tasks.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.tasks.len()),
        }
    }
}

/// The one deadline of a drain: `--drain-timeout-secs` after it began. Every wait of the
/// drain ends at a fixed share of it (module docs).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    start: Instant,
    total: Duration,
}

impl Deadline {
    /// Starts now.
    pub fn after(total: Duration) -> Self {
        Deadline {
            start: Instant::now(),
            total,
        }
    }

    /// The deadline itself.
    pub fn at(&self) -> Instant {
        self.start + self.total
    }

    /// The point `num / den` of the way to the deadline.
    pub fn share(&self, num: u32, den: u32) -> Instant {
        self.start + self.total * num / den.max(1)
    }

    pub fn total(&self) -> Duration {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_counts_in_the_process_too_and_the_tree_cancels_downwards() {
        let root = Shutdown::new();
        let group = root.group();
        let leaf = group.child();
        let t = leaf.spawn({
            let leaf = leaf.clone();
            async move { leaf.cancelled().await }
        });
        assert_eq!((root.len(), group.len(), leaf.len()), (1, 1, 1));
        leaf.cancel();
        assert!(!group.is_cancelled() && !root.is_cancelled());
        t.await.unwrap();
        assert!(root.is_empty() && group.is_empty());

        let waiting = group.child();
        let t = root.spawn(async move { waiting.cancelled().await });
        let until = Instant::now() + Duration::from_millis(50);
        assert_eq!(root.wait_until(until).await, Err(1), "still waiting");
        root.cancel();
        assert!(group.is_cancelled());
        let until = Instant::now() + Duration::from_secs(10);
        assert_eq!(root.wait_until(until).await, Ok(()));
        t.await.unwrap();
    }

    #[test]
    fn shares_of_the_deadline() {
        let d = Deadline::after(Duration::from_secs(20));
        assert_eq!(d.share(1, 4) - d.start, Duration::from_secs(5));
        assert_eq!(d.share(3, 4) - d.start, Duration::from_secs(15));
        assert_eq!(d.at() - d.start, Duration::from_secs(20));
    }
}
