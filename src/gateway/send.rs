//! `send`: claim the (sender, room, client_msg_id) triple, append to the log, remember the
//! result, ack. The claim ([`SendClaims`], in the `Coord` seam) makes a resend (same or
//! another gateway, before or after the ack, while the first is in flight) yield the same
//! message and never a second one:
//! - pending (someone is producing it now) → `in_flight`, retryable;
//! - a produce failed or timed out and may still have landed → the next attempt reuses
//!   the same message id, so readers drop the copy by id;
//! - done → the ack is answered again from the record.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use futures_util::future::BoxFuture;

use crate::coord::{Claim, Coord, CoordError, SendKey, Settled};
use crate::log::{Log, LogError};
use crate::model::{Message, NewMessage, RoomId, User};
use crate::protocol::ErrorCode;
use crate::shutdown::Shutdown;
use crate::telemetry::names;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("this message is being sent right now; retry shortly")]
    InFlight,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl SendError {
    pub fn code(&self) -> ErrorCode {
        match self {
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
}

fn coord_error(e: CoordError) -> SendError {
    match e {
        CoordError::Unavailable(m) => SendError::Unavailable(format!("dedup store: {m}")),
        CoordError::Corrupt(m) => SendError::Internal(m),
    }
}

impl Sender {
    pub fn new(log: Arc<dyn Log>, claims: Arc<dyn Coord>) -> Self {
        Sender { log, claims }
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
        body: &str,
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
        let new = NewMessage {
            id,
            room,
            sender: sender.clone(),
            body: body.to_owned(),
            client_msg_id: key.client_msg_id.clone(),
            sent_at: chrono::Utc::now(),
        };
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
