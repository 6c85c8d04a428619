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

use crate::coord::{Claim, Coord, CoordError, SendKey, Settled};
use crate::events::{self, Limits, RuleError, Target};
use crate::log::{partition_of, Log, LogError};
use crate::model::{Change, Message, MessageId, NewMessage, RoomId, User, UserId};
use crate::protocol::ErrorCode;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::telemetry::names;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("this message is being sent right now; retry shortly")]
    InFlight,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
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
        }
    }
}

#[derive(Clone)]
pub struct Sender {
    log: Arc<dyn Log>,
    claims: Arc<dyn Coord>,
    store: Arc<dyn Store>,
    limits: Arc<Limits>,
}

/// What a client asks to write: a message (`change` None) or an event.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub body: String,
    pub reply_to: Option<MessageId>,
    /// Mentioned explicitly by the client (the `@name`s in the body are added).
    pub mentions: Vec<UserId>,
    pub change: Option<Change>,
}

/// How long a check waits for the store to catch up with the log when the message an
/// event names is not in it yet (acked, not yet persisted).
const CATCH_UP: Duration = Duration::from_secs(5);

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
    ) -> Self {
        Sender {
            log,
            claims,
            store,
            limits: Arc::new(limits),
        }
    }

    /// Checks a claimed record before it is written: an event against its target, a
    /// reply against its parent; fills in the mentions (members only).
    async fn prepare(&self, new: &mut NewMessage) -> Result<(), SendError> {
        let (room, actor) = (new.room, new.sender.id);
        match &new.change {
            None => {
                if let Some(parent) = new.reply_to {
                    let t = self.target(room, parent, actor, None).await?;
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
                let t = self.target(room, change.target(), actor, emoji).await?;
                events::check(change, actor, room, new.sent_at, t.as_ref(), &self.limits)?;
            }
        }
        Ok(())
    }

    /// The store's state of message `id`. A message the store does not hold may be in
    /// the log and not persisted yet (acked a moment ago): then this waits, up to
    /// [`CATCH_UP`], until the store holds everything the log held when asked, and
    /// answers from that.
    async fn target(
        &self,
        room: RoomId,
        id: MessageId,
        actor: UserId,
        emoji: Option<&str>,
    ) -> Result<Option<Target>, SendError> {
        let found = self
            .store
            .target(id, actor, emoji)
            .await
            .map_err(store_error)?;
        if let Some(mut t) = found {
            // A delete acked a moment ago that the store has not applied yet.
            if !t.deleted && self.claims.buried(id).await.map_err(coord_error)? {
                t.deleted = true;
            }
            return Ok(Some(t));
        }
        let partition = partition_of(room, self.log.partitions());
        let end = self.log.end(partition).await.map_err(log_error)?;
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let stored = self
                .store
                .next_offset(self.log.topic(), partition)
                .await
                .map_err(store_error)?;
            if stored.unwrap_or(0) >= end {
                return self
                    .store
                    .target(id, actor, emoji)
                    .await
                    .map_err(store_error);
            }
            if Instant::now() >= deadline {
                return Err(SendError::Unavailable(
                    "the store is behind the log; retry shortly".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
            Claim::Done(m) => return Ok(Box::pin(futures_util::future::ready(Ok(m)))),
            Claim::InFlight => return Err(SendError::InFlight),
            Claim::Mine(id) => id,
        };
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
        if let Err(e) = self.prepare(&mut new).await {
            // Nothing was written: the claim goes (a resend is checked again).
            settle(&*self.claims, &key, Settled::Retry(id)).await;
            return Err(e);
        }
        let claims = self.claims.clone();
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
                    if let Some(Change::Delete { message_id }) = &msg.change {
                        // Before the ack: whatever the client does next is refused on
                        // every gateway, whether or not the store applied the delete.
                        if let Err(e) = claims.bury(*message_id).await {
                            tracing::warn!(error = %e, "delete not recorded as a tombstone");
                        }
                    }
                    // The message is durable: ack it now and record the result beside
                    // it. A resend that comes before this record finds the claim pending
                    // and is answered `in_flight` (retryable); the next attempt gets the
                    // ack again.
                    let done = Settled::Done(msg.clone());
                    tasks.spawn(async move { settle(&*claims, &key, done).await });
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
        metrics::histogram!(names::PRODUCE_SECONDS).record(started.elapsed().as_secs_f64());
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

/// How long a session waits for its queued sends when it closes.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
