//! The `Coord` seam: the small shared state that lets several processes act as one.
//!
//! Three concerns, each a trait with its contract written on it:
//! - [`SendClaims`]: who is sending (sender, room, client_msg_id) right now, and what a
//!   finished send returned, so a resend yields the first message and never a second one;
//! - [`Leases`]: which consumer works which log partition (with a fencing epoch);
//! - [`Positions`]: how far each partition's relay has published, saved under its lease;
//! - [`Tombstones`]: which messages were deleted a moment ago, for the checks that come
//!   before the store has applied the delete;
//! - [`SlowMode`]: when each member of a slow room may send next.
//!
//! Implementations: [`RedisCoord`] (distributed mode: every gateway and consumer shares
//! it) and [`LocalCoord`] (embedded mode: one process, in memory). Both pass the one
//! contract suite in `tests/it/coord.rs`. Nothing outside `bus/` and `coord/` talks to
//! Redis.
//!
//! What a failure means, for every method: `Err(CoordError::Unavailable)` says the
//! state could not be read or written; the caller retries later or answers retryably,
//! and never assumes the write happened or did not.

mod local;
mod redis;

pub use self::local::LocalCoord;
pub use self::redis::RedisCoord;

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Message, MessageId, RoomId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The coordination store did not answer (or answered with an error).
    #[error("coordination store unavailable: {0}")]
    Unavailable(String),
    /// It answered with something this version cannot read (another version's record).
    #[error("unreadable coordination record: {0}")]
    Corrupt(String),
}

/// How long each kind of record lives. One set for the whole deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// A send claimed and not settled is given up after this (its claimer died).
    pub pending: Duration,
    /// A failed send's id is kept this long for the client's retry.
    pub retry: Duration,
    /// A finished send's message is returned to resends for this long.
    pub done: Duration,
    /// A lease (and a consumer's heartbeat) not renewed for this long is free.
    pub lease: Duration,
    /// A tombstone is kept this long: far longer than the store takes to apply a delete.
    pub tombstone: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            pending: Duration::from_secs(30),
            retry: Duration::from_secs(3_600),
            done: Duration::from_secs(86_400),
            lease: Duration::from_secs(5),
            tombstone: Duration::from_secs(3_600),
        }
    }
}

/// One send: the same `client_msg_id` in another room is another send.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendKey {
    pub sender: UserId,
    pub room: RoomId,
    pub client_msg_id: String,
}

/// What [`SendClaims::claim`] found.
// The large variant is the common one (a message): boxing it would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller now owns the send and appends it under this message id.
    Mine(MessageId),
    /// The send finished earlier: answer with this message.
    Done(Message),
    /// Someone else owns it right now.
    InFlight,
}

/// How a claimed send ended.
// The large variant is the common one (a message): boxing it would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Settled {
    /// Durable: resends get this message.
    Done(Message),
    /// Failed, and may still have landed: the next claim reuses this message id, so
    /// readers drop a copy by id.
    Retry(MessageId),
}

/// Send claims: at most one sender of a (sender, room, client_msg_id) at a time, and the
/// first result for every resend.
///
/// Contract, per key:
/// - no record: `claim` records it pending under `fresh` and returns `Mine(fresh)`;
/// - pending (not expired): `InFlight`;
/// - settled `Retry(id)`: `Mine(id)` (the same id), pending again;
/// - settled `Done(m)`: `Done(m)` until [`Timings::done`] passes;
/// - a pending record not settled within [`Timings::pending`] is gone: the next claim
///   is `Mine` with its own fresh id.
///
/// Records may also be forgotten early (Redis eviction, [`LocalCoord`]'s memory bound); a
/// forgotten `Done` makes a resend a new append, which the store's unique key on (sender,
/// room, client_msg_id) keeps to one row.
#[async_trait]
pub trait SendClaims: Send + Sync + 'static {
    async fn claim(&self, key: &SendKey, fresh: MessageId) -> Result<Claim, CoordError>;
    /// Records how the send ended. Settling a key nobody claimed records it all the same.
    async fn settle(&self, key: &SendKey, outcome: &Settled) -> Result<(), CoordError>;
    /// [`settle`](Self::settle) for each pair, in as few round trips as the
    /// implementation can. On an error some may be recorded and others not.
    async fn settle_many(&self, settled: &[(SendKey, Settled)]) -> Result<(), CoordError> {
        for (key, outcome) in settled {
            self.settle(key, outcome).await?;
        }
        Ok(())
    }
}

/// One held lease of one partition. `epoch` grows with every acquisition of that
/// partition (by anyone): the fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub partition: i32,
    pub epoch: i64,
    pub owner: String,
}

/// Partition leases among the live consumers of one log.
///
/// Contract:
/// - `heartbeat(me)` records `me` alive for [`Timings::lease`] and returns every live
///   consumer's id, sorted, `me` included;
/// - `acquire` succeeds only if nobody holds the partition; each success has a larger
///   epoch than every earlier one of that partition;
/// - `renew` and `release` act only while the lease is the current one (same owner and
///   epoch) and say whether it was; a lease not renewed for [`Timings::lease`] is free;
/// - `leave` removes `me` from the live set at once.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    async fn heartbeat(&self, me: &str) -> Result<Vec<String>, CoordError>;
    async fn leave(&self, me: &str) -> Result<(), CoordError>;
    async fn acquire(&self, me: &str, partition: i32) -> Result<Option<Lease>, CoordError>;
    async fn renew(&self, lease: &Lease) -> Result<bool, CoordError>;
    async fn release(&self, lease: &Lease) -> Result<bool, CoordError>;
}

/// Relay positions: the next offset of each partition that its relay has not published.
///
/// Contract:
/// - `position` returns the last saved value, or `None` if there is none (never saved, or
///   the state was lost): the caller cannot know what was published;
/// - `save` writes only while `lease` is the partition's current lease and says whether
///   it did (false: fenced, the lease moved on and the value is unchanged).
#[async_trait]
pub trait Positions: Send + Sync + 'static {
    async fn position(&self, partition: i32) -> Result<Option<i64>, CoordError>;
    async fn save(&self, lease: &Lease, offset: i64) -> Result<bool, CoordError>;
}

/// Recently deleted messages. The gateway records a delete here before it acks it, so a
/// later edit, reaction or reply to the message is refused (`message_deleted`) on every
/// gateway even while the persist worker has not applied the delete to the store yet.
///
/// Contract: after `bury(m)` returned Ok, `buried(m)` is true for [`Timings::tombstone`]
/// (it may be forgotten early under [`LocalCoord`]'s memory bound or Redis eviction; the
/// store's own check still refuses the change where it is applied); `buried` is never
/// true for a message nobody buried.
#[async_trait]
pub trait Tombstones: Send + Sync + 'static {
    async fn bury(&self, message: MessageId) -> Result<(), CoordError>;
    async fn buried(&self, message: MessageId) -> Result<bool, CoordError>;
}

/// A room's slow mode: one message per member per interval, across every gateway.
#[async_trait]
pub trait SlowMode: Send + Sync + 'static {
    /// Takes the user's turn in the room for the send `id` if the last one was at least
    /// `interval` ago (None: send now; the next turn is `interval` away), else returns how
    /// long to wait. The turn taken by `id` is `id`'s again (a retry of the same send,
    /// after a failure, is not kept waiting).
    async fn take_turn(
        &self,
        room: RoomId,
        user: UserId,
        interval: Duration,
        id: MessageId,
    ) -> Result<Option<Duration>, CoordError>;
}

/// All five, as one handle: what the roles are given.
pub trait Coord: SendClaims + Leases + Positions + Tombstones + SlowMode {}

impl<T: SendClaims + Leases + Positions + Tombstones + SlowMode> Coord for T {}
