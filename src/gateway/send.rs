//! `send`: claim the (sender, room, client_msg_id) triple, append to the log, remember the
//! result, ack. The claim ([`SendClaims`], in the `Coord` seam) makes a resend (same or
//! another gateway, before or after the ack, while the first is in flight) yield the same
//! message and never a second one:
//! - pending (someone is producing it now) → `in_flight`, retryable;
//! - a produce failed or timed out and may still have landed → the next attempt reuses
//!   the same message id, so readers drop the copy by id;
//! - done → the ack is answered again from the record.
//!
//! Edits, deletes and reactions take the same path (they are records of the room's log
//! too); before anything is written, [`Sender`] checks them against the store's state of
//! the message they target ([`crate::events::check`]), as it checks a reply's parent and
//! resolves mentions. A refused record is never written: its claim is released.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::recovery::Recovery;
use crate::coord::{Claim, Coord, CoordError, SendKey, Settled};
use crate::events::{self, Limits, RuleError, Target};
use crate::log::{Log, LogError};
use crate::model::{Change, Message, MessageId, NewMessage, RoomId, User, UserId};
use crate::protocol::ErrorCode;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::telemetry::hops::{self, Hop};
use crate::telemetry::names;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("this message is being sent right now; retry shortly")]
    InFlight,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// Slow mode: the member's next turn in the room is this far away.
    #[error("this room is in slow mode: wait {}s before sending again", .0.as_secs().max(1))]
    SlowMode(std::time::Duration),
    /// The rules refuse it (see `events.rs`): nothing was written.
    #[error("{0}")]
    Refused(#[from] RuleError),
}

impl SendError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SendError::Refused(r) => r.code(),
            SendError::InFlight => ErrorCode::InFlight,
            SendError::Unavailable(_) => ErrorCode::Unavailable,
            SendError::Internal(_) => ErrorCode::Internal,
            SendError::SlowMode(_) => ErrorCode::SlowMode,
        }
    }
}

#[derive(Clone)]
pub struct Sender {
    log: Arc<dyn Log>,
    claims: Arc<dyn Coord>,
    /// Records acked sends' results, several per round trip.
    settles: Settles,
    store: Arc<dyn Store>,
    limits: Arc<Limits>,
    /// Reads the log's tail for a message not persisted yet.
    tail: Arc<Recovery>,
}

/// What a client asks to write: a message (`change` None) or an event.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub body: String,
    pub reply_to: Option<MessageId>,
    /// Mentioned explicitly by the client (the `@name`s in the body are added).
    pub mentions: Vec<UserId>,
    pub change: Option<Change>,
    /// The sender may delete others' messages (a moderator or above of the room).
    pub moderator: bool,
    /// The room's slow mode applies to this send: one per interval per member.
    pub slow_mode: Option<std::time::Duration>,
    /// When its frame was parsed: the start of the `claim` hop (telemetry/hops.rs).
    pub received: Option<Instant>,
}

fn store_error(e: StoreError) -> SendError {
    if e.retryable() {
        SendError::Unavailable(e.to_string())
    } else {
        SendError::Internal(e.to_string())
    }
}

fn coord_error(e: CoordError) -> SendError {
    match e {
        CoordError::Unavailable(m) => SendError::Unavailable(format!("dedup store: {m}")),
        CoordError::Corrupt(m) => SendError::Internal(m),
    }
}

impl Sender {
    pub fn new(
        log: Arc<dyn Log>,
        claims: Arc<dyn Coord>,
        store: Arc<dyn Store>,
        limits: Limits,
        tail: Arc<Recovery>,
    ) -> Self {
        Sender {
            log,
            settles: Settles::new(claims.clone()),
            claims,
            store,
            limits: Arc::new(limits),
            tail,
        }
    }

    /// Waits (until `until`) for the results of acked sends still being recorded.
    pub async fn flush(&self, until: tokio::time::Instant) {
        self.settles.flush(until).await;
    }

    /// Checks a claimed record before it is written: an event against its target, a
    /// reply against its parent; fills in the mentions (members only).
    async fn prepare(&self, new: &mut NewMessage, moderator: bool) -> Result<(), SendError> {
        let (room, actor) = (new.room, new.sender.id);
        match &new.change {
            // Decided by the permission table before the state changed (http/govern.rs).
            Some(change) if change.is_governance() => {}
            None => {
                if let Some(parent) = new.reply_to {
                    let t = self.target(room, parent, actor, None, true).await?;
                    events::check_parent(room, t.as_ref())?;
                }
                let names = events::mentioned_names(&new.body);
                if !names.is_empty() || !new.mentions.is_empty() {
                    new.mentions.truncate(events::MAX_MENTIONS);
                    new.mentions = self
                        .store
                        .resolve_mentions(room, &names, &new.mentions)
                        .await
                        .map_err(store_error)?;
                }
            }
            Some(change) => {
                let emoji = match change {
                    Change::Reaction { emoji, .. } => Some(emoji.as_str()),
                    _ => None,
                };
                let delete = matches!(change, Change::Delete { .. });
                let Some(target) = change.target() else {
                    return Ok(());
                };
                let t = self.target(room, target, actor, emoji, !delete).await?;
                events::check_as(
                    change,
                    actor,
                    moderator,
                    room,
                    new.sent_at,
                    t.as_ref(),
                    &self.limits,
                )?;
                if let Change::Delete { message_id } = change {
                    // Before it is written: what the client sends next (this
                    // connection's pipeline included) is refused on every gateway. A
                    // delete that then fails is retried by the client; until then the
                    // message takes no more changes.
                    self.claims.bury(*message_id).await.map_err(coord_error)?;
                }
            }
        }
        Ok(())
    }

    /// The store's state of message `id`. A message the store does not hold may be in
    /// the log's tail, acked a moment ago and not persisted yet: then its state comes from
    /// there (its record and the events after it), else the store is asked again (it may
    /// have persisted it meanwhile).
    /// `tombstones`: whether a tombstone counts as deleted (not for a delete: one that
    /// failed after burying the message is retried, and must get through).
    async fn target(
        &self,
        room: RoomId,
        id: MessageId,
        actor: UserId,
        emoji: Option<&str>,
        tombstones: bool,
    ) -> Result<Option<Target>, SendError> {
        let mut found = self
            .store
            .target(id, actor, emoji)
            .await
            .map_err(store_error)?;
        if found.is_none() && maybe_recent(id) {
            found = self
                .tail
                .fresh_target(room, id, actor, emoji)
                .await
                .map_err(|e| SendError::Unavailable(e.to_string()))?;
            if found.is_none() {
                // Persisted between the two looks.
                found = self
                    .store
                    .target(id, actor, emoji)
                    .await
                    .map_err(store_error)?;
            }
        }
        if let Some(t) = found.as_mut() {
            // A delete acked (or being written) a moment ago that the store has not
            // applied yet.
            if tombstones && !t.deleted && self.claims.buried(id).await.map_err(coord_error)? {
                t.deleted = true;
            }
        }
        Ok(found)
    }

    /// A resend answered from the claim's record: a message deleted since (or an edit of
    /// one) comes back without its body, as every API returns it.
    async fn forget_if_deleted(&self, mut m: Message) -> Message {
        let target = match &m.change {
            None => m.id,
            Some(Change::Edit { message_id }) => *message_id,
            Some(_) => return m,
        };
        let buried = self.claims.buried(target).await.unwrap_or(false);
        let deleted = buried
            || matches!(
                self.store.target(target, m.sender.id, None).await,
                Ok(Some(t)) if t.deleted
            );
        if deleted {
            match m.change {
                None => m.tombstone(),
                _ => m.body.clear(),
            }
        }
        m
    }

    /// Starts a send: claims it (once per `client_msg_id`) and queues it in the log.
    /// The returned future resolves with the durable message (the ack). Sends started
    /// one after the other keep that order in the log while their futures are awaited
    /// together ([`Log::submit`]). A resend (same room and `client_msg_id`) returns the
    /// first message. `tasks`: where the recording of a result runs after the ack.
    pub async fn start(
        &self,
        tasks: &Shutdown,
        sender: &User,
        room: RoomId,
        client_msg_id: &str,
        draft: Draft,
    ) -> Result<Pending, SendError> {
        let key = SendKey {
            sender: sender.id,
            room,
            client_msg_id: client_msg_id.to_owned(),
        };
        let id = match self
            .claims
            .claim(&key, Uuid::now_v7())
            .await
            .map_err(coord_error)?
        {
            Claim::Done(m) => {
                let m = self.forget_if_deleted(m).await;
                return Ok(Box::pin(futures_util::future::ready(Ok(m))));
            }
            Claim::InFlight => return Err(SendError::InFlight),
            Claim::Mine(id) => id,
        };
        if let Some(interval) = draft.slow_mode {
            // Taken only by a send that is new (a resend above was answered already).
            let turn = self.claims.take_turn(room, sender.id, interval, id).await;
            let refusal = match turn {
                Ok(None) => None,
                Ok(Some(wait)) => Some(SendError::SlowMode(wait)),
                Err(e) => Some(coord_error(e)),
            };
            if let Some(e) = refusal {
                settle(&*self.claims, &key, Settled::Retry(id)).await;
                return Err(e);
            }
        }
        let mut new = NewMessage {
            id,
            room,
            sender: sender.clone(),
            body: draft.body,
            client_msg_id: key.client_msg_id.clone(),
            sent_at: chrono::Utc::now(),
            reply_to: draft.reply_to,
            mentions: draft.mentions,
            change: draft.change,
        };
        if let Err(e) = self.prepare(&mut new, draft.moderator).await {
            // Nothing was written: the claim goes (a resend is checked again).
            settle(&*self.claims, &key, Settled::Retry(id)).await;
            return Err(e);
        }
        if let Some(received) = draft.received {
            hops::since(Hop::Claim, received);
        }
        let claims = self.claims.clone();
        let settles = self.settles.clone();
        let tasks = tasks.clone();
        let durable = match submit(&self.log, &new).await {
            Ok(d) => d,
            Err(e) => {
                settle(&*claims, &key, Settled::Retry(id)).await;
                return Err(e);
            }
        };
        Ok(Box::pin(async move {
            match durable.await {
                Ok(msg) => {
                    // The message is durable: ack it now and record the result beside
                    // it. A resend that comes before this record finds the claim pending
                    // and is answered `in_flight` (retryable); the next attempt gets the
                    // ack again.
                    settles.record(key, Settled::Done(msg.clone()), &tasks);
                    Ok(msg)
                }
                Err(e) => {
                    // Recorded before the error is answered, so that the client's retry
                    // reuses this message id (readers drop a copy that landed after all).
                    settle(&*claims, &key, Settled::Retry(id)).await;
                    Err(e)
                }
            }
        }))
    }
}

/// Whether `id` can be a message written lately: gateways give UUIDv7 ids, whose time is
/// now. Any other id (or one from the future) is unknown without reading the log's tail.
fn maybe_recent(id: MessageId) -> bool {
    let Some(ts) = id.get_timestamp() else {
        return false;
    };
    let (secs, _) = ts.to_unix();
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    id.get_version_num() == 7 && secs <= now + 60
}

/// A started send: resolves once the message is durable.
pub type Pending = BoxFuture<'static, Result<Message, SendError>>;

fn log_error(e: LogError) -> SendError {
    match e {
        LogError::Unavailable(m) => SendError::Unavailable(m),
        LogError::Refused(r) => SendError::Refused(r),
        other => SendError::Internal(other.to_string()),
    }
}

/// Submits `new` to the log (in call order, see [`Log::submit`]); the returned future
/// resolves once it is durable. Counts sends, errors and the produce time.
async fn submit(
    log: &Arc<dyn Log>,
    new: &NewMessage,
) -> Result<impl Future<Output = Result<Message, SendError>> + Send + 'static, SendError> {
    let started = Instant::now();
    let failed = |e: LogError| {
        metrics::counter!(names::SEND_ERRORS).increment(1);
        log_error(e)
    };
    let appending = log.submit(new).await.map_err(failed)?;
    Ok(async move {
        let msg = appending.await.map_err(failed)?;
        let took = started.elapsed();
        hops::record(Hop::Produce, took);
        metrics::histogram!(names::PRODUCE_SECONDS).record(took.as_secs_f64());
        metrics::counter!(names::MESSAGES_SENT).increment(1);
        Ok(msg)
    })
}

/// Records how a claimed send ended.
async fn settle(claims: &dyn Coord, key: &SendKey, outcome: Settled) {
    if let Err(e) = claims.settle(key, &outcome).await {
        // The pending claim expires by itself; a resend then reuses nothing and the
        // store's unique key still keeps one row.
        tracing::warn!(error = %e, "could not record the send result");
    }
}

/// At most this many results per round trip.
const SETTLE_BATCH: usize = 128;
/// Results waiting for the write in flight. Each holds one message (at most
/// [`crate::model::MAX_BODY_CHARS`] characters and its metadata): about 16 MiB at worst.
/// When full, a result is recorded on its own.
const SETTLE_QUEUE: usize = 1024;

/// The recording of acked sends' results, several per round trip when they come faster
/// than one round trip ([`crate::coord::SendClaims::settle_many`]). No task of its own
/// and no waiting for more: the first result starts a write (a task where it was acked,
/// as a lone result always did); results acked while it is out queue here, and the same
/// task writes them next, until none are left. So a result is written at once or right
/// after the write in flight, a resend right after its ack finds it, and no thread wakes
/// another to hand a result over (a recorder task on another thread cost a wake-up per
/// send: about 3 % of a core more for two gateways at 1,000 sends/s, benches/README.md
/// "Issue 21").
#[derive(Clone)]
struct Settles {
    claims: Arc<dyn Coord>,
    state: Arc<std::sync::Mutex<SettleState>>,
}

#[derive(Default)]
struct SettleState {
    queued: Vec<(SendKey, Settled)>,
    /// A write is out; its task takes `queued` next.
    writing: bool,
}

impl Settles {
    fn new(claims: Arc<dyn Coord>) -> Settles {
        Settles {
            claims,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SettleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, key: SendKey, outcome: Settled, tasks: &Shutdown) {
        {
            let mut st = self.lock();
            if st.writing {
                if st.queued.len() < SETTLE_QUEUE {
                    st.queued.push((key, outcome));
                    return;
                }
                drop(st);
                let claims = self.claims.clone();
                tasks.spawn(async move { settle(&*claims, &key, outcome).await });
                return;
            }
            st.writing = true;
        }
        // Made before the task: a task dropped before it ever ran (its runtime shut
        // down) still ends the write, and the next result starts one.
        let done = Writing(self.clone(), std::cell::Cell::new(true));
        tasks.spawn(async move {
            let mut batch = vec![(key, outcome)];
            loop {
                settle_many(&*done.0.claims, &mut batch).await;
                let mut st = done.0.lock();
                if st.queued.is_empty() {
                    st.writing = false;
                    // Ended here, under the lock: the guard must not end a write that
                    // another result starts right after.
                    done.1.set(false);
                    // What it queued beyond the batch size is gone, not its capacity.
                    st.queued.shrink_to(SETTLE_BATCH);
                    return;
                }
                let n = st.queued.len().min(SETTLE_BATCH);
                batch.extend(st.queued.drain(..n));
            }
        });
    }

    /// Waits (until `until`) for the write out and what is queued behind it: the drain,
    /// before the worker threads whose tasks write them stop.
    pub async fn flush(&self, until: tokio::time::Instant) {
        while tokio::time::Instant::now() < until {
            {
                let st = self.lock();
                if !st.writing && st.queued.is_empty() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!("drain: send results still being recorded");
    }
}

/// A write of results is out while this lives armed (see [`Settles::record`]).
struct Writing(Settles, std::cell::Cell<bool>);

impl Drop for Writing {
    fn drop(&mut self) {
        if self.1.get() {
            self.0.lock().writing = false;
        }
    }
}

/// Writes a batch; after an error, each result once more on its own (one failure must not
/// cost the others: a lost result leaves its claim pending, and a resend after that
/// expires makes a second message).
async fn settle_many(claims: &dyn Coord, batch: &mut Vec<(SendKey, Settled)>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = claims.settle_many(batch).await {
        tracing::debug!(error = %e, results = batch.len(), "send results: batch failed; one by one");
        futures_util::stream::iter(batch.iter())
            .for_each_concurrent(SETTLE_RETRIES, |(key, outcome)| async move {
                if let Err(e) = claims.settle(key, outcome).await {
                    // As in `settle`: the pending claim expires by itself.
                    tracing::warn!(error = %e, "could not record the send result");
                }
            })
            .await;
    }
    batch.clear();
}

/// Results of a failed batch written again at once.
const SETTLE_RETRIES: usize = 16;

/// How long a session waits for its queued sends when it closes.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fresh_v7_ids_are_looked_up_in_the_log() {
        assert!(maybe_recent(Uuid::now_v7()));
        assert!(!maybe_recent(Uuid::new_v4()));
        assert!(!maybe_recent(Uuid::nil()));
        // A v7 id from the far future.
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 4_000_000_000, 0);
        assert!(!maybe_recent(Uuid::new_v7(ts)));
    }
}
