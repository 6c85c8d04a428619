//! The store's half of governance: who stands where in a room (roles, mutes, bans),
//! invites and invite links, room settings, blocks between users and server
//! administrators. A seam of its own (`Governance`, a supertrait of `Store`), written once
//! for both backends in `gov_queries.rs`.
//!
//! This state is what the gateways decide on, so it is written here first, in one
//! transaction per change; the change is then also appended to the room's log as a
//! `member` or `room` event (the record of it, ordered with the messages), which the
//! persist step stores without applying again (docs/decisions/0005).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Room, StoreError};
use crate::governance::{Actor, Role};
use crate::model::{
    Message, Position, RoomChanges, RoomId, RoomKind, RoomView, User, UserId, Visibility,
};

/// A room's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub id: RoomId,
    pub name: String,
    pub kind: RoomKind,
    pub visibility: Visibility,
    pub slow_mode_secs: i32,
}

/// A member's standing in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub role: Role,
    pub muted_until: Option<DateTime<Utc>>,
}

impl Membership {
    pub fn muted(&self, now: DateTime<Utc>) -> bool {
        self.muted_until.is_some_and(|t| t > now)
    }
}

/// Everything a decision about one user in one room needs (one look-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub room: RoomInfo,
    pub member: Option<Membership>,
    /// An active ban (not expired).
    pub banned: bool,
    pub server_admin: bool,
}

impl Access {
    pub fn actor(&self) -> Actor {
        Actor {
            role: self.member.map(|m| m.role),
            server_admin: self.server_admin,
        }
    }
}

/// A change of one member's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOp {
    Kick,
    Ban {
        until: Option<DateTime<Utc>>,
        reason: Option<String>,
        by: UserId,
    },
    Unban,
    Mute {
        until: Option<DateTime<Utc>>,
    },
    Unmute,
    SetRole(Role),
    /// Ownership moves to the user; the owner `from` becomes an admin.
    TakeOwnership {
        from: UserId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Invite {
    pub id: uuid::Uuid,
    pub room: RoomId,
    pub room_name: String,
    pub user: User,
    pub from: User,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InviteLink {
    pub code: String,
    pub room: RoomId,
    pub expires_at: DateTime<Utc>,
    pub max_uses: Option<i32>,
    pub uses: i32,
    pub created_by: User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BanInfo {
    pub user: User,
    pub until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub by: User,
    pub at: DateTime<Utc>,
}

/// An account as a server administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: UserId,
    pub name: String,
    pub admin: bool,
    pub suspended: bool,
}

/// A room as a server administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    pub id: RoomId,
    pub name: String,
    pub kind: RoomKind,
    pub visibility: Visibility,
    pub members: i64,
}

/// "Until lifted": the end a mute without one is stored with (one column for both).
pub fn forever_utc() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Pending invites one user may hold at most (older ones beyond are not shown).
pub const MAX_PENDING_INVITES: i64 = 100;
/// Active invite links per room at most.
pub const MAX_LINKS_PER_ROOM: i64 = 100;
/// Users one may block at most.
pub const MAX_BLOCKS: i64 = 1_000;

#[async_trait]
pub trait Governance: Send + Sync + 'static {
    /// The room's settings, the user's membership and ban, and whether the user is a
    /// server administrator. None: no such room (or a deleted one).
    async fn access(&self, room: RoomId, user: UserId) -> Result<Option<Access>, StoreError>;
    /// The room as the user sees it (None: no such room).
    async fn room_view(&self, room: RoomId, user: UserId) -> Result<Option<RoomView>, StoreError>;
    /// Applies `op` to the user's standing in the room, in one transaction; whether
    /// anything changed. `seen`: the user's role the caller decided on (None: not a
    /// member); if it is not the role now, nothing is done (`Conflict("standing")`).
    /// Kick and ban end the membership (and the links and invites the user made there);
    /// `TakeOwnership` moves it from the owner `from` (`Conflict("standing")` if `from` is
    /// not the owner, or is the user).
    async fn govern(
        &self,
        room: RoomId,
        user: UserId,
        op: MemberOp,
        seen: Option<Role>,
    ) -> Result<bool, StoreError>;
    /// Changes the settings given. `Conflict("room name")` if the name is taken.
    async fn update_room(&self, room: RoomId, changes: &RoomChanges) -> Result<(), StoreError>;
    /// Deletes the room (gone from every API, its name free); returns who were members.
    async fn delete_room(&self, room: RoomId) -> Result<Vec<UserId>, StoreError>;
    /// The room's `member` and `room` events below `before`, newest first, at most
    /// `limit`; and whether there are more.
    async fn governance_events(
        &self,
        room: RoomId,
        before: Option<Position>,
        limit: i64,
    ) -> Result<(Vec<Message>, bool), StoreError>;
    /// Active bans of the room, at most 1,000, newest first.
    async fn bans(&self, room: RoomId) -> Result<Vec<BanInfo>, StoreError>;

    /// A pending invite of the user to the room (the one already pending, if any: then
    /// `false`). `Banned` if the user is banned; `Conflict("member")` if a member;
    /// `Limit("invites")` if the user holds [`MAX_PENDING_INVITES`].
    async fn create_invite(
        &self,
        room: RoomId,
        user: UserId,
        inviter: UserId,
    ) -> Result<(Invite, bool), StoreError>;
    /// The user's pending invites, newest first.
    async fn invites_for(&self, user: UserId) -> Result<Vec<Invite>, StoreError>;
    /// A pending invite.
    async fn invite(&self, id: uuid::Uuid) -> Result<Option<Invite>, StoreError>;
    /// Accepts (joins the room: `Banned` if banned meanwhile; `Conflict("group_full")` if
    /// it is a group of `group_cap` members) or declines the user's pending invite;
    /// `Gone("invite")` if it is not pending (or not theirs). Returns the room and whether
    /// the user joined now.
    async fn answer_invite(
        &self,
        id: uuid::Uuid,
        user: UserId,
        accept: bool,
        group_cap: i64,
    ) -> Result<(RoomId, bool), StoreError>;
    /// Revokes a pending invite; whether it was pending.
    async fn revoke_invite(&self, id: uuid::Uuid) -> Result<bool, StoreError>;
    /// `Limit("links")` past [`MAX_LINKS_PER_ROOM`] active links.
    async fn create_link(&self, link: &InviteLink) -> Result<(), StoreError>;
    /// The room's active links (not revoked, not expired, not used up).
    async fn links(&self, room: RoomId) -> Result<Vec<InviteLink>, StoreError>;
    /// An active link.
    async fn link(&self, code: &str) -> Result<Option<InviteLink>, StoreError>;
    /// Joins through an active link, counting the use (a member already is not counted);
    /// `Gone("link")` if it is not active; `Banned` if banned; `Conflict("group_full")` if
    /// it is a group of `group_cap` members. Returns the room and whether the user joined
    /// now.
    async fn use_link(
        &self,
        code: &str,
        user: UserId,
        group_cap: i64,
    ) -> Result<(RoomId, bool), StoreError>;
    async fn revoke_link(&self, room: RoomId, code: &str) -> Result<bool, StoreError>;

    /// A group DM: the creator its owner, the others members. `Limit("rooms")` if the
    /// creator has created `max_per_user` rooms and groups already (0: no cap).
    async fn create_group(
        &self,
        room: &Room,
        creator: UserId,
        members: &[UserId],
        max_per_user: i64,
    ) -> Result<(), StoreError>;

    /// Blocks (`on`) or unblocks `other` for `user`; whether it changed.
    /// `Limit("blocks")` past [`MAX_BLOCKS`].
    async fn set_block(&self, user: UserId, other: UserId, on: bool) -> Result<bool, StoreError>;
    async fn blocks(&self, user: UserId) -> Result<Vec<User>, StoreError>;
    /// Whether `by` has blocked `whom`.
    async fn blocked(&self, by: UserId, whom: UserId) -> Result<bool, StoreError>;
    /// Users whose name starts with `prefix` (by name key), at most `limit`.
    async fn search_users(&self, prefix: &str, limit: i64) -> Result<Vec<User>, StoreError>;

    /// Makes the named user a server administrator or not; None: no such user.
    async fn set_admin(&self, name: &str, on: bool) -> Result<Option<User>, StoreError>;
    async fn is_admin(&self, user: UserId) -> Result<bool, StoreError>;
    /// Suspends or reinstates; whether it changed. Suspending also moves the token
    /// generation on (every token void).
    async fn set_suspended(&self, user: UserId, on: bool) -> Result<bool, StoreError>;
    async fn is_suspended(&self, user: UserId) -> Result<bool, StoreError>;
    async fn accounts(&self, after: Option<UserId>, limit: i64)
        -> Result<Vec<Account>, StoreError>;
    async fn all_rooms(
        &self,
        after: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<RoomSummary>, StoreError>;
}
