//! `send`: claim the (sender, client_msg_id) pair, append to the log, remember the
//! result, ack. The claim makes a resend (same or another gateway, before or after the
//! ack, while the first is in flight) yield the same message and never a second one.
//!
//! Claim states in Redis, one key per (sender, client_msg_id):
//! - `pending:<id>` (short TTL): someone is producing it now → `in_flight`, retryable;
//! - `retry:<id>`: a produce failed or timed out and may still have landed → the next
//!   attempt reuses the same message id, so readers drop the copy by id;
//! - `done:<message json>` (24 h): the ack is answered again from here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::log::{Log, LogError};
use crate::model::{Message, NewMessage, RoomId, User};
use crate::protocol::ErrorCode;
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
    redis: ConnectionManager,
    prefix: String,
    claim: Arc<redis::Script>,
}

enum Claim {
    Mine(Uuid),
    Done(Message),
    InFlight,
}

impl Sender {
    pub fn new(log: Arc<dyn Log>, redis: ConnectionManager, prefix: &str) -> Self {
        Sender {
            log,
            redis,
            prefix: prefix.to_owned(),
            claim: Arc::new(redis::Script::new(CLAIM)),
        }
    }

    fn key(&self, sender: &User, client_msg_id: &str) -> String {
        format!("{}:sent:{}:{}", self.prefix, sender.id, client_msg_id)
    }

    async fn claim(&self, key: &str) -> Result<Claim, SendError> {
        let mut c = self.redis.clone();
        let v: String = self
            .claim
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

    async fn settle(&self, key: &str, value: String, ttl: u64) {
        let mut c = self.redis.clone();
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(ttl)
            .query_async(&mut c)
            .await;
        if let Err(e) = r {
            // The pending claim expires by itself; a resend then reuses nothing and the
            // store's unique key still keeps one row.
            tracing::warn!(error = %e, "could not record the send result");
        }
    }

    /// Sends once; a resend returns the first message.
    pub async fn send(
        &self,
        sender: &User,
        room: RoomId,
        client_msg_id: &str,
        body: &str,
    ) -> Result<Message, SendError> {
        let key = self.key(sender, client_msg_id);
        let t0 = Instant::now();
        let claimed = self.claim(&key).await?;
        tracing::debug!(claim_us = t0.elapsed().as_micros() as u64, "claimed");
        let id = match claimed {
            Claim::Done(m) => return Ok(m),
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
        let started = Instant::now();
        match self.log.append(&new).await {
            Ok(position) => {
                metrics::histogram!(names::PRODUCE_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(names::MESSAGES_SENT).increment(1);
                let msg = new.at(position);
                let json = serde_json::to_string(&msg).unwrap_or_default();
                self.settle(&key, format!("done:{json}"), DONE_TTL_SECS)
                    .await;
                Ok(msg)
            }
            Err(e) => {
                metrics::counter!(names::SEND_ERRORS).increment(1);
                self.settle(&key, format!("retry:{id}"), RETRY_TTL_SECS)
                    .await;
                Err(match e {
                    LogError::Unavailable(m) => SendError::Unavailable(m),
                    other => SendError::Internal(other.to_string()),
                })
            }
        }
    }
}

/// How long a session waits for its queued sends when it closes.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
