//! `send`: claim the (sender, room, client_msg_id) triple, append to the log, remember the
//! result, ack. The claim makes a resend (same or another gateway, before or after the
//! ack, while the first is in flight) yield the same message and never a second one.
//!
//! Claim states in Redis, one key per (sender, room, client_msg_id): the same
//! client_msg_id in another room is another message.
//! - `pending:<id>` (short TTL): someone is producing it now → `in_flight`, retryable;
//! - `retry:<id>`: a produce failed or timed out and may still have landed → the next
//!   attempt reuses the same message id, so readers drop the copy by id;
//! - `done:<message json>` (24 h): the ack is answered again from here.
//!
//! A log whose append is itself idempotent (the embedded SQLite log: a unique key on
//! (sender, room, client_msg_id) inside the same write that makes the message durable) needs
//! no claim: [`Sender::direct`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use uuid::Uuid;

use futures_util::future::BoxFuture;

use crate::log::{Log, LogError};
use crate::model::{Message, NewMessage, RoomId, User};
use crate::protocol::ErrorCode;
use crate::shutdown::Shutdown;
use crate::telemetry::names;

const PENDING_TTL_SECS: u64 = 30;
const RETRY_TTL_SECS: u64 = 3_600;
const DONE_TTL_SECS: u64 = 86_400;

const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'EX', ARGV[2])
  return 'claimed:' .. ARGV[1]
end
if string.sub(v, 1, 6) == 'retry:' then
  local id = string.sub(v, 7)
  redis.call('SET', KEYS[1], 'pending:' .. id, 'EX', ARGV[2])
  return 'claimed:' .. id
end
return v
";

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
    claims: Option<Claims>,
}

/// The Redis dedup records in front of a log that does not deduplicate (Kafka).
#[derive(Clone)]
struct Claims {
    redis: ConnectionManager,
    prefix: String,
    script: Arc<redis::Script>,
}

enum Claim {
    Mine(Uuid),
    Done(Message),
    InFlight,
}

impl Sender {
    /// A sender that keeps its dedup records in Redis (for Kafka).
    pub fn new(log: Arc<dyn Log>, redis: ConnectionManager, prefix: &str) -> Self {
        Sender {
            log,
            claims: Some(Claims {
                redis,
                prefix: prefix.to_owned(),
                script: Arc::new(redis::Script::new(CLAIM)),
            }),
        }
    }

    /// A sender for a log that deduplicates by itself ([`Log::deduplicates`]).
    pub fn direct(log: Arc<dyn Log>) -> Self {
        debug_assert!(log.deduplicates());
        Sender { log, claims: None }
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
        match &self.claims {
            Some(claims) => {
                claims
                    .start(tasks, &self.log, sender, room, client_msg_id, body)
                    .await
            }
            None => {
                let new = NewMessage {
                    id: Uuid::now_v7(),
                    room,
                    sender: sender.clone(),
                    body: body.to_owned(),
                    client_msg_id: client_msg_id.to_owned(),
                    sent_at: chrono::Utc::now(),
                };
                Ok(Box::pin(submit(&self.log, &new).await?))
            }
        }
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

impl Claims {
    fn key(&self, sender: &User, room: RoomId, client_msg_id: &str) -> String {
        format!(
            "{}:sent:{}:{}:{}",
            self.prefix, sender.id, room, client_msg_id
        )
    }

    async fn claim(&self, key: &str) -> Result<Claim, SendError> {
        let mut c = self.redis.clone();
        let v: String = self
            .script
            .key(key)
            .arg(Uuid::now_v7().to_string())
            .arg(PENDING_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(|e| SendError::Unavailable(format!("dedup store unavailable: {e}")))?;
        if let Some(id) = v.strip_prefix("claimed:") {
            return Uuid::parse_str(id)
                .map(Claim::Mine)
                .map_err(|e| SendError::Internal(e.to_string()));
        }
        if let Some(json) = v.strip_prefix("done:") {
            return serde_json::from_str(json)
                .map(Claim::Done)
                .map_err(|e| SendError::Internal(e.to_string()));
        }
        Ok(Claim::InFlight)
    }

    async fn start(
        &self,
        tasks: &Shutdown,
        log: &Arc<dyn Log>,
        sender: &User,
        room: RoomId,
        client_msg_id: &str,
        body: &str,
    ) -> Result<Pending, SendError> {
        let key = self.key(sender, room, client_msg_id);
        let id = match self.claim(&key).await? {
            Claim::Done(m) => return Ok(Box::pin(futures_util::future::ready(Ok(m)))),
            Claim::InFlight => return Err(SendError::InFlight),
            Claim::Mine(id) => id,
        };
        let new = NewMessage {
            id,
            room,
            sender: sender.clone(),
            body: body.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            sent_at: chrono::Utc::now(),
        };
        let redis = self.redis.clone();
        let tasks = tasks.clone();
        let durable = match submit(log, &new).await {
            Ok(d) => d,
            Err(e) => {
                settle(redis, key, format!("retry:{id}"), RETRY_TTL_SECS).await;
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
                    let json = serde_json::to_string(&msg).unwrap_or_default();
                    tasks.spawn(settle(redis, key, format!("done:{json}"), DONE_TTL_SECS));
                    Ok(msg)
                }
                Err(e) => {
                    // Recorded before the error is answered, so that the client's retry
                    // reuses this message id (readers drop a copy that landed after all).
                    settle(redis, key, format!("retry:{id}"), RETRY_TTL_SECS).await;
                    Err(e)
                }
            }
        }))
    }
}

/// Records how a claimed send ended (`done:` or `retry:`).
async fn settle(mut redis: ConnectionManager, key: String, value: String, ttl: u64) {
    let r: redis::RedisResult<()> = redis::cmd("SET")
        .arg(&key)
        .arg(value)
        .arg("EX")
        .arg(ttl)
        .query_async(&mut redis)
        .await;
    if let Err(e) = r {
        // The pending claim expires by itself; a resend then reuses nothing and the
        // store's unique key still keeps one row.
        tracing::warn!(error = %e, "could not record the send result");
    }
}

/// How long a session waits for its queued sends when it closes.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
