//! The `Bus` seam: live fan-out between processes, one channel per room. Redis pub/sub
//! (`redis.rs`) in distributed mode, an in-process channel (`local.rs`) in the embedded one.
//!
//! The bus is at-most-once: a subscriber that was disconnected may have missed events.
//! It then receives [`BusNotice::Resync`], and the gateway sends its clients to recovery,
//! which reads the log. Messages reach the bus only through the relay, in log order.

mod local;
mod redis;

pub use self::local::LocalBus;
pub use self::redis::RedisBus;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{Message, RoomId, User};
use crate::protocol::MemberEvent;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// What travels on a room's channel. Not a wire type: the gateway turns it into a
/// `ServerFrame` (once per event, not once per receiver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusEvent {
    Message {
        message: Message,
    },
    Typing {
        room: RoomId,
        user: User,
    },
    Member {
        room: RoomId,
        user: User,
        event: MemberEvent,
    },
    Presence {
        room: RoomId,
        user: User,
        online: bool,
    },
}

impl BusEvent {
    pub fn room(&self) -> RoomId {
        match self {
            BusEvent::Message { message } => message.room,
            BusEvent::Typing { room, .. }
            | BusEvent::Member { room, .. }
            | BusEvent::Presence { room, .. } => *room,
        }
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusNotice {
    Event(BusEvent),
    /// The subscription connection was lost and re-established: events may be missing.
    Resync,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes the events in order (one round trip for the batch).
    async fn publish(&self, events: &[BusEvent]) -> Result<(), BusError>;
    async fn subscribe(&self, room: RoomId) -> Result<(), BusError>;
    async fn unsubscribe(&self, room: RoomId) -> Result<(), BusError>;
    async fn ping(&self) -> Result<(), BusError>;
}
