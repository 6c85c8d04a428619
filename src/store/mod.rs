//! The `Store` seam: accounts, rooms, memberships, persisted messages and the persist
//! worker's offsets. PostgreSQL (`postgres.rs`, diesel-async) is the distributed backend,
//! SQLite (`sqlite.rs`, diesel-async's sync connection wrapper) the embedded one; both
//! run the same queries (`queries.rs`, compiled once per backend).
//!
//! The store is not on the real-time path: a message reaches readers through the log and
//! the bus whether or not it has been written here yet.

pub mod governance;
mod postgres;
pub mod schema;
mod schema_sqlite;
pub mod sql_types;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::{SqliteLog, SqliteStore};

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::events::{Limits, Target};
use crate::model::{
    Member, Message, MessageId, Position, RoomId, RoomKind, RoomView, User, UserId, Visibility,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection refused, pool timeout, server gone: back off and retry.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// An invite or invite link that is no longer valid (used, expired, revoked).
    #[error("this {0} is no longer valid")]
    Gone(&'static str),
    /// The user is banned from the room.
    #[error("banned from this room")]
    Banned,
    /// A per-user cap was reached (e.g. rooms created).
    #[error("too many {0}")]
    Limit(&'static str),
    /// The partition's offset moved under us: another worker owns it now.
    #[error("offset of partition {partition} is no longer {expected}: another consumer owns it")]
    Fenced { partition: i32, expected: i64 },
    #[error("database error: {0}")]
    Other(#[source] anyhow::Error),
}

impl StoreError {
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A user with the password hash, for login only.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
    /// The user's current token generation ([`Store::token_generation`]).
    pub token_generation: i64,
    /// A suspended account cannot log in.
    pub suspended: bool,
}

/// One page of `GET /api/rooms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomsPage {
    pub rooms: Vec<RoomView>,
    /// Where the next page of other public rooms starts (None: this was the last).
    pub next: Option<RoomId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub kind: RoomKind,
    pub visibility: Visibility,
}

/// One page of a room's history, ascending by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// One version of a message's body (`GET …/messages/{mid}/edits`): the original first
/// (`edited_at` = when it was sent), then each edit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EditEntry {
    pub body: String,
    pub edited_at: DateTime<Utc>,
    pub position: Position,
}

#[async_trait]
pub trait Store: governance::Governance + Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;

    /// `Conflict("username")` if the name is taken (by [`crate::model::name_key`]: any
    /// case or Unicode normalisation of it).
    async fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError>;
    /// The account whose name has the same [`crate::model::name_key`] as `name`.
    async fn credentials(&self, name: &str) -> Result<Option<Credentials>, StoreError>;
    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// The user's token generation (a primary-key look-up): tokens issued under an
    /// older one are revoked. None: no such user.
    async fn token_generation(&self, user: UserId) -> Result<Option<i64>, StoreError>;
    /// Moves the user's token generation on by one and returns the new one (None: no
    /// such user): every token issued before is revoked.
    async fn revoke_tokens(&self, user: UserId) -> Result<Option<i64>, StoreError>;

    /// One page of the user's room list. The first page (`after` None) holds every room
    /// the user belongs to, all of them, then the first `limit` other public rooms; a
    /// later page only the next `limit` other public rooms after the room `after`, in
    /// creation order (a room created later never pushes an older one off a page).
    async fn rooms_for(
        &self,
        user: UserId,
        after: Option<RoomId>,
        limit: i64,
    ) -> Result<RoomsPage, StoreError>;
    /// The ids of the rooms the user belongs to (DMs too).
    async fn member_rooms(&self, user: UserId) -> Result<Vec<RoomId>, StoreError>;
    async fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError>;
    /// Creates a room with the creator as its first member. `Conflict("room name")` if
    /// its [`crate::model::name_key`] is taken; `Limit("rooms")` if the creator has
    /// created `max_per_user` rooms already (0: no cap).
    async fn create_room(
        &self,
        room: &Room,
        creator: UserId,
        max_per_user: i64,
    ) -> Result<(), StoreError>;
    /// Returns whether the user was not a member before; `Banned` if the user is banned.
    async fn join(&self, room: RoomId, user: UserId) -> Result<bool, StoreError>;
    /// Returns whether the user was a member before.
    async fn leave(&self, room: RoomId, user: UserId) -> Result<bool, StoreError>;
    /// Members with `online: false`; presence is filled in by the caller.
    async fn members(&self, room: RoomId) -> Result<Vec<Member>, StoreError>;
    /// The members' read markers (members who read nothing yet are left out), at most
    /// 100: for read receipts.
    async fn read_markers(&self, room: RoomId) -> Result<Vec<(User, Position)>, StoreError>;
    /// The one DM room of the two users, created on first use. Returns (room, created).
    async fn dm_room(&self, a: UserId, b: UserId) -> Result<(Room, bool), StoreError>;
    /// Moves the user's read marker up to `position` (never back); whether it moved.
    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        position: Position,
    ) -> Result<bool, StoreError>;

    /// Messages (not event records) with position < `before` (all if None), the newest
    /// `limit` of them, returned ascending, each in its current state (body after edits,
    /// `edited_at`, a deleted one's tombstone, reactions as `me` sees them, reply count).
    async fn history(
        &self,
        room: RoomId,
        me: UserId,
        before: Option<Position>,
        limit: i64,
    ) -> Result<HistoryPage, StoreError>;
    /// The same for the replies to `parent` (its thread).
    async fn replies(
        &self,
        room: RoomId,
        me: UserId,
        parent: MessageId,
        before: Option<Position>,
        limit: i64,
    ) -> Result<HistoryPage, StoreError>;
    /// What the rules of an event need of the message it targets (`emoji`: for a
    /// reaction). None: no such message (an event record is none either).
    async fn target(
        &self,
        message: MessageId,
        actor: UserId,
        emoji: Option<&str>,
    ) -> Result<Option<Target>, StoreError>;
    /// The bodies a message had, oldest first (empty once deleted). None: no such message
    /// in the room.
    async fn edits(
        &self,
        room: RoomId,
        message: MessageId,
    ) -> Result<Option<Vec<EditEntry>>, StoreError>;
    /// The members of the room among the users named (by [`crate::model::name_key`]) or
    /// given by id: who a message mentions. At most [`crate::events::MAX_MENTIONS`].
    async fn resolve_mentions(
        &self,
        room: RoomId,
        names: &[String],
        ids: &[UserId],
    ) -> Result<Vec<UserId>, StoreError>;
    /// Log records (messages and events) with position > `after`, ascending, at most
    /// `limit`; messages in their current state (a deleted one as its tombstone, edits
    /// of it without their body).
    async fn messages_after(
        &self,
        room: RoomId,
        after: Position,
        limit: i64,
    ) -> Result<Vec<Message>, StoreError>;

    /// How many of the room's messages have position > `after`, counting at most `cap`
    /// (reads ids only: a size check before a backlog is replayed).
    async fn count_after(&self, room: RoomId, after: Position, cap: i64)
        -> Result<i64, StoreError>;

    /// Where the store's copy of a log partition ends: every record below this offset is
    /// in the store (None: nothing committed yet). For PostgreSQL, the persist worker's
    /// next offset; for SQLite, where the store is the log, the end of the table.
    async fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError>;
    /// Writes the batch and moves the partition's next offset from `from` (None: never
    /// committed) to `to`, in one transaction. Rows that exist already (same id, same
    /// (sender, room, client_msg_id) or same log record) are skipped. Each new record is
    /// applied in log order (an event to the message it changes, checked again against
    /// `limits`: one refused here is not stored). Returns records stored.
    /// `Fenced` if the stored offset is not `from`: nothing is written then.
    async fn commit_batch(
        &self,
        topic: &str,
        partition: i32,
        from: Option<i64>,
        to: i64,
        messages: &[Message],
        limits: &Limits,
    ) -> Result<usize, StoreError>;
}
