//! The `Bus` seam: live fan-out between processes, one channel per room and one per user
//! (notices about that user's access, for the gateways holding their sockets). Redis pub/sub
//! (`redis.rs`; on one server or a Redis Cluster's sharded pub/sub, over the connection of
//! `conn.rs`, which the coordination state uses too) in distributed mode, an in-process
//! channel (`local.rs`) in the embedded one.
//!
//! The bus is at-most-once: a subscriber that was disconnected may have missed events.
//! It receives [`BusNotice::Lost`] when its connection breaks (the gateway holds off live
//! messages) and [`BusNotice::Resync`] once it is subscribed again (the gateway sends its
//! clients to recovery, which reads the gap from the log, and resumes live delivery). Messages reach the bus only through the relay, in log order.

mod conn;
mod local;
mod redis;

pub(crate) use self::conn::{ConnSpec as RedisConnSpec, RedisConn};
pub use self::local::LocalBus;
pub(crate) use self::redis::resp3_url;
pub use self::redis::{check_url as check_redis_url, RedisBus};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use std::collections::HashSet;
use std::time::Duration;

use crate::model::{Message, RoomId, User, UserId};

use crate::protocol::MemberEvent;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// What travels on a room's channel. Not a wire type: the gateway turns it into a
/// `ServerFrame` (once per event, not once per receiver).
// The large variant is the common one (a message): boxing it would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusEvent {
    Message {
        message: Message,
        /// When the relay handed it to the bus: wall-clock microseconds since the Unix
        /// epoch, on the relay's clock (the start of the `bus` hop, telemetry/hops.rs).
        /// Never on a client's frame. Absent from an older relay's events, and ignored by
        /// an older gateway (a rolling upgrade mixes both).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        published_us: Option<i64>,
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
    /// A member's read marker moved (read receipts: direct messages).
    Receipt {
        room: RoomId,
        user: User,
        position: i64,
    },
    /// On the user's channel: the user lost access (to one room, or every session).
    /// Every gateway holding a socket of theirs applies it at once.
    Revoked {
        user: UserId,
        what: Revocation,
    },
    /// On the user's channel: something every connection of theirs shows at once.
    Notice {
        user: UserId,
        notice: UserNotice,
    },
}

/// What a [`BusEvent::Notice`] tells a user's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum UserNotice {
    /// Their room list changed (`reason`: joined, left, created, dm_opened).
    RoomsChanged { room: RoomId, reason: String },
    /// Their read marker of the room moved (on any device).
    Read { room: RoomId, position: i64 },
    /// They were invited to a room.
    Invite {
        invite: crate::store::governance::Invite,
    },
}

/// What a [`BusEvent::Revoked`] takes away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Revocation {
    /// Membership of a room ended (left; kick and ban will come this way too): live
    /// delivery of the room stops, sends, subscribe, recovery and history are refused.
    Room { room: RoomId, reason: RevokeReason },
    /// The user's standing in the room changed (muted, unmuted, role lowered or raised):
    /// the cached standing is forgotten, the next frame reads it from the store; delivery
    /// goes on.
    Standing { room: RoomId },
    /// Every token issued so far is void: the user's sockets close with 4401.
    Sessions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Left,
    Kicked,
    Banned,
    RoomDeleted,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Left => "left",
            RevokeReason::Kicked => "kicked",
            RevokeReason::Banned => "banned",
            RevokeReason::RoomDeleted => "room_deleted",
        }
    }
}

/// A channel of the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Room(RoomId),
    User(UserId),
}

impl BusEvent {
    pub fn channel(&self) -> Channel {
        match self {
            BusEvent::Message { message, .. } => Channel::Room(message.room),
            BusEvent::Typing { room, .. }
            | BusEvent::Member { room, .. }
            | BusEvent::Presence { room, .. }
            | BusEvent::Receipt { room, .. } => Channel::Room(*room),
            BusEvent::Revoked { user, .. } | BusEvent::Notice { user, .. } => Channel::User(*user),
        }
    }
}

/// What a subscriber receives.
// The large variant is the common one (a message): boxing it would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusNotice {
    Event(BusEvent),
    /// The subscription connection was lost: events from now on may be missing.
    Lost,
    /// The subscription connection is back (subscribed again) after [`BusNotice::Lost`]:
    /// events in between are missing; anything after this notice arrives.
    Resync,
}

/// A presence entry not refreshed for this long counts as gone: a crashed gateway's
/// users go offline within it. Gateways refresh theirs every [`PRESENCE_REFRESH`].
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(10);

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes the events in order (one round trip for the batch).
    async fn publish(&self, events: &[BusEvent]) -> Result<(), BusError>;
    async fn subscribe(&self, channel: Channel) -> Result<(), BusError>;
    async fn unsubscribe(&self, channel: Channel) -> Result<(), BusError>;
    async fn ping(&self) -> Result<(), BusError>;

    /// Presence: a user is online while any of their connections, on any process, is.
    /// Records connection `conn` (globally unique) of `user`; true if it is the user's
    /// only live one (they just came online).
    async fn presence_join(&self, user: UserId, conn: &str) -> Result<bool, BusError>;
    /// Forgets the connection; true if the user has no live one left (went offline).
    async fn presence_leave(&self, user: UserId, conn: &str) -> Result<bool, BusError>;
    /// Keeps this process's connections alive (called every [`PRESENCE_REFRESH`]).
    async fn presence_refresh(&self, conns: &[(UserId, String)]) -> Result<(), BusError>;
    /// Which of `users` are online.
    async fn online(&self, users: &[UserId]) -> Result<HashSet<UserId>, BusError>;
}
