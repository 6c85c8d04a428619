//! `Governance` (store/governance.rs) for both backends: compiled twice, like
//! queries.rs, against each backend's `schema`, `Conn` and `write_transaction!`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::schema::{
    bans, blocks, invite_links, invites, memberships, messages, mutes, rooms, users,
};
use super::{db_error, lock_room, Backend, Conn};
use crate::governance::Role;
use crate::model::{
    name_key, Message, Position, RoomChanges, RoomId, RoomKind, RoomView, User, UserId, Visibility,
};
use crate::store::governance::{
    forever_utc, Access, Account, BanInfo, Governance, Invite, InviteLink, MemberOp, Membership,
    RoomInfo, RoomSummary, MAX_BLOCKS, MAX_LINKS_PER_ROOM, MAX_PENDING_INVITES,
};
use crate::store::sql_types::Id;
use crate::store::{Room, StoreError};

use super::queries::{is_unique_violation, room_view_of, MessageRow};

/// Errors a governance transaction ends with.
enum TxError {
    Store(StoreError),
    Db(DieselError),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        TxError::Db(e)
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Store(s) => s,
            TxError::Db(d) => db_error(d),
        }
    }
}

fn kind_of(kind: &str, is_group: bool) -> RoomKind {
    match RoomKind::parse(kind) {
        Some(RoomKind::Room) if is_group => RoomKind::Group,
        Some(k) => k,
        None => RoomKind::Room,
    }
}

/// Whether the user has an active ban in the room (in the caller's transaction).
pub(super) async fn banned(c: &mut Conn, room: RoomId, user: UserId) -> QueryResult<bool> {
    let until: Option<Option<DateTime<Utc>>> = bans::table
        .find((Id(room), Id(user)))
        .select(bans::until)
        .first(c)
        .await
        .optional()?;
    Ok(matches!(until, Some(None)) || matches!(until, Some(Some(t)) if t > Utc::now()))
}

/// Makes the user a member (role member) unless banned, or the room is a group of
/// `group_cap` members already (`Conflict("group_full")`); whether they joined now. Takes
/// the room's turn first (`lock_room`): a ban or another join cannot come between.
async fn join_unless_banned(
    c: &mut Conn,
    room: RoomId,
    user: UserId,
    group_cap: i64,
) -> Result<bool, TxError> {
    lock_room(c, room).await?;
    if banned(c, room, user).await? {
        return Err(TxError::Store(StoreError::Banned));
    }
    let member: Option<Id> = memberships::table
        .find((Id(room), Id(user)))
        .select(memberships::user_id)
        .first(c)
        .await
        .optional()?;
    if member.is_some() {
        return Ok(false);
    }
    let is_group: bool = rooms::table
        .find(Id(room))
        .select(rooms::is_group)
        .first(c)
        .await
        .optional()?
        .unwrap_or(false);
    if is_group {
        let n: i64 = memberships::table
            .filter(memberships::room_id.eq(Id(room)))
            .count()
            .get_result(c)
            .await?;
        if n >= group_cap {
            return Err(TxError::Store(StoreError::Conflict("group_full")));
        }
    }
    let n = diesel::insert_into(memberships::table)
        .values((
            memberships::room_id.eq(Id(room)),
            memberships::user_id.eq(Id(user)),
        ))
        .on_conflict_do_nothing()
        .execute(c)
        .await?;
    Ok(n == 1)
}

async fn user_of(c: &mut Conn, id: UserId) -> QueryResult<User> {
    let name: Option<String> = users::table
        .find(Id(id))
        .select(users::name)
        .first(c)
        .await
        .optional()?;
    Ok(User {
        id,
        name: name.unwrap_or_default(),
    })
}

/// Someone removed from a room (or no longer a moderator) loses what they handed out:
/// their invite links of the room and their pending invites to it.
async fn drop_authority(c: &mut Conn, room: RoomId, user: UserId) -> QueryResult<()> {
    diesel::update(
        invite_links::table
            .filter(invite_links::room_id.eq(Id(room)))
            .filter(invite_links::created_by.eq(Id(user)))
            .filter(invite_links::revoked_at.is_null()),
    )
    .set(invite_links::revoked_at.eq(Some(Utc::now())))
    .execute(c)
    .await?;
    diesel::update(
        invites::table
            .filter(invites::room_id.eq(Id(room)))
            .filter(invites::inviter_id.eq(Id(user)))
            .filter(invites::state.eq("pending")),
    )
    .set(invites::state.eq("revoked"))
    .execute(c)
    .await?;
    Ok(())
}

type InviteRow = (Id, Id, Id, Id, DateTime<Utc>);

async fn invite_of(c: &mut Conn, r: InviteRow) -> QueryResult<Invite> {
    let (id, room, user, inviter, created_at) = r;
    let room_name: String = rooms::table
        .find(room)
        .select(rooms::name)
        .first(c)
        .await
        .optional()?
        .unwrap_or_default();
    Ok(Invite {
        id: id.0,
        room: room.0,
        room_name,
        user: user_of(c, user.0).await?,
        from: user_of(c, inviter.0).await?,
        created_at,
    })
}

type LinkRow = (String, Id, Id, DateTime<Utc>, Option<i32>, i32);

async fn link_of(c: &mut Conn, r: LinkRow) -> QueryResult<InviteLink> {
    let (code, room, created_by, expires_at, max_uses, uses) = r;
    Ok(InviteLink {
        code,
        room: room.0,
        expires_at,
        max_uses,
        uses,
        created_by: user_of(c, created_by.0).await?,
    })
}

/// Links of the room (or the one code) that can still be used.
macro_rules! active_links {
    () => {
        invite_links::table
            .filter(invite_links::revoked_at.is_null())
            .filter(invite_links::expires_at.gt(Utc::now()))
            .filter(
                invite_links::max_uses
                    .is_null()
                    .or(invite_links::max_uses.gt(invite_links::uses.nullable())),
            )
            .select((
                invite_links::code,
                invite_links::room_id,
                invite_links::created_by,
                invite_links::expires_at,
                invite_links::max_uses,
                invite_links::uses,
            ))
    };
}

macro_rules! live_rooms {
    () => {
        rooms::table.filter(rooms::deleted_at.is_null())
    };
}

#[async_trait]
impl Governance for Backend {
    async fn access(&self, room: RoomId, user: UserId) -> Result<Option<Access>, StoreError> {
        let mut c = self.conn().await?;
        let c = &mut c;
        let row: Option<(Id, String, String, bool, String, i32)> = live_rooms!()
            .filter(rooms::id.eq(Id(room)))
            .select((
                rooms::id,
                rooms::name,
                rooms::kind,
                rooms::is_group,
                rooms::visibility,
                rooms::slow_mode_secs,
            ))
            .first(c)
            .await
            .optional()
            .map_err(db_error)?;
        let Some((id, name, kind, is_group, visibility, slow_mode_secs)) = row else {
            return Ok(None);
        };
        let role: Option<String> = memberships::table
            .find((Id(room), Id(user)))
            .select(memberships::role)
            .first(c)
            .await
            .optional()
            .map_err(db_error)?;
        let muted_until: Option<DateTime<Utc>> = mutes::table
            .find((Id(room), Id(user)))
            .filter(mutes::until.gt(Utc::now()))
            .select(mutes::until)
            .first(c)
            .await
            .optional()
            .map_err(db_error)?;
        let server_admin: bool = users::table
            .find(Id(user))
            .select(users::is_admin)
            .first(c)
            .await
            .optional()
            .map_err(db_error)?
            .unwrap_or(false);
        let banned = banned(c, room, user).await.map_err(db_error)?;
        Ok(Some(Access {
            room: RoomInfo {
                id: id.0,
                name,
                kind: kind_of(&kind, is_group),
                visibility: Visibility::parse(&visibility).unwrap_or_default(),
                slow_mode_secs,
            },
            // A ban wins over a membership row (none should be left beside one).
            member: role.filter(|_| !banned).map(|role| Membership {
                role: Role::parse(&role).unwrap_or(Role::Member),
                muted_until,
            }),
            banned,
            server_admin,
        }))
    }

    async fn room_view(&self, room: RoomId, user: UserId) -> Result<Option<RoomView>, StoreError> {
        let mut c = self.conn().await?;
        room_view_of(&mut c, room, user).await.map_err(db_error)
    }

    async fn govern(
        &self,
        room: RoomId,
        user: UserId,
        op: MemberOp,
        seen: Option<Role>,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let r = write_transaction!(c, TxError, async move |c| {
            lock_room(c, room).await?;
            let this = || memberships::table.find((Id(room), Id(user)));
            let now: Option<String> = this().select(memberships::role).first(c).await.optional()?;
            if now.as_deref().and_then(Role::parse) != seen {
                return Err(TxError::Store(StoreError::Conflict("standing")));
            }
            let changed = match op {
                MemberOp::Kick => {
                    let n = diesel::delete(this()).execute(c).await?;
                    drop_authority(c, room, user).await?;
                    n == 1
                }
                MemberOp::Ban { until, reason, by } => {
                    diesel::delete(this()).execute(c).await?;
                    diesel::delete(bans::table.find((Id(room), Id(user))))
                        .execute(c)
                        .await?;
                    diesel::insert_into(bans::table)
                        .values((
                            bans::room_id.eq(Id(room)),
                            bans::user_id.eq(Id(user)),
                            bans::until.eq(until),
                            bans::reason.eq(reason),
                            bans::banned_by.eq(Id(by)),
                            bans::banned_at.eq(Utc::now()),
                        ))
                        .execute(c)
                        .await?;
                    diesel::update(
                        invites::table
                            .filter(invites::room_id.eq(Id(room)))
                            .filter(invites::user_id.eq(Id(user)))
                            .filter(invites::state.eq("pending")),
                    )
                    .set(invites::state.eq("revoked"))
                    .execute(c)
                    .await?;
                    drop_authority(c, room, user).await?;
                    true
                }
                MemberOp::Unban => {
                    diesel::delete(bans::table.find((Id(room), Id(user))))
                        .execute(c)
                        .await?
                        == 1
                }
                MemberOp::Mute { until } => {
                    // No end given: muted until lifted. Kept apart from the membership:
                    // leaving and joining again does not lift it.
                    let until = until.unwrap_or_else(forever_utc);
                    diesel::delete(mutes::table.find((Id(room), Id(user))))
                        .execute(c)
                        .await?;
                    diesel::insert_into(mutes::table)
                        .values((
                            mutes::room_id.eq(Id(room)),
                            mutes::user_id.eq(Id(user)),
                            mutes::until.eq(until),
                        ))
                        .execute(c)
                        .await?;
                    true
                }
                MemberOp::Unmute => {
                    diesel::delete(mutes::table.find((Id(room), Id(user))))
                        .execute(c)
                        .await?
                        == 1
                }
                MemberOp::SetRole(role) => {
                    let n = diesel::update(this().filter(memberships::role.ne(role.as_str())))
                        .set(memberships::role.eq(role.as_str()))
                        .execute(c)
                        .await?;
                    if role < Role::Moderator {
                        drop_authority(c, room, user).await?;
                    }
                    n == 1
                }
                MemberOp::TakeOwnership { from } => {
                    if from == user {
                        return Err(TxError::Store(StoreError::Conflict("standing")));
                    }
                    // The owner first: of two transfers at once, the second finds no
                    // owner to move it from (a room has exactly one).
                    let n = diesel::update(
                        memberships::table
                            .find((Id(room), Id(from)))
                            .filter(memberships::role.eq(Role::Owner.as_str())),
                    )
                    .set(memberships::role.eq(Role::Admin.as_str()))
                    .execute(c)
                    .await?;
                    if n != 1 {
                        return Err(TxError::Store(StoreError::Conflict("standing")));
                    }
                    let n = diesel::update(this())
                        .set(memberships::role.eq(Role::Owner.as_str()))
                        .execute(c)
                        .await?;
                    if n != 1 {
                        return Err(TxError::Store(StoreError::NotFound("member")));
                    }
                    true
                }
            };
            Ok(changed)
        })
        .await;
        r.map_err(StoreError::from)
    }

    async fn update_room(&self, room: RoomId, ch: &RoomChanges) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let ch = ch.clone();
        let r = write_transaction!(c, TxError, async move |c| {
            let this = || rooms::table.find(Id(room));
            if let Some(name) = &ch.name {
                // Rooms' names are unique; a group's name is its own business.
                diesel::update(this().filter(rooms::is_group.eq(false)))
                    .set((rooms::name.eq(name), rooms::name_key.eq(name_key(name))))
                    .execute(c)
                    .await?;
                diesel::update(this().filter(rooms::is_group.eq(true)))
                    .set(rooms::name.eq(name))
                    .execute(c)
                    .await?;
            }
            if let Some(topic) = &ch.topic {
                diesel::update(this())
                    .set(rooms::topic.eq(topic))
                    .execute(c)
                    .await?;
            }
            if let Some(d) = &ch.description {
                diesel::update(this())
                    .set(rooms::description.eq(d))
                    .execute(c)
                    .await?;
            }
            if let Some(v) = ch.visibility {
                diesel::update(this())
                    .set(rooms::visibility.eq(v.as_str()))
                    .execute(c)
                    .await?;
            }
            if let Some(s) = ch.slow_mode_secs {
                diesel::update(this())
                    .set(rooms::slow_mode_secs.eq(s))
                    .execute(c)
                    .await?;
            }
            Ok(())
        })
        .await;
        match r {
            Err(TxError::Db(e)) if is_unique_violation(&e) => {
                Err(StoreError::Conflict("room name"))
            }
            r => r.map_err(StoreError::from),
        }
    }

    async fn delete_room(&self, room: RoomId) -> Result<Vec<UserId>, StoreError> {
        let mut c = self.conn().await?;
        let r = write_transaction!(c, TxError, async move |c| {
            let members: Vec<Id> = memberships::table
                .filter(memberships::room_id.eq(Id(room)))
                .select(memberships::user_id)
                .load(c)
                .await?;
            diesel::delete(memberships::table.filter(memberships::room_id.eq(Id(room))))
                .execute(c)
                .await?;
            diesel::update(rooms::table.find(Id(room)))
                .set((
                    rooms::deleted_at.eq(Some(Utc::now())),
                    rooms::name_key.eq(None::<String>),
                ))
                .execute(c)
                .await?;
            diesel::update(invites::table.filter(invites::room_id.eq(Id(room))))
                .set(invites::state.eq("revoked"))
                .execute(c)
                .await?;
            diesel::update(invite_links::table.filter(invite_links::room_id.eq(Id(room))))
                .set(invite_links::revoked_at.eq(Some(Utc::now())))
                .execute(c)
                .await?;
            Ok(members.into_iter().map(|i| i.0).collect())
        })
        .await;
        r.map_err(StoreError::from)
    }

    async fn governance_events(
        &self,
        room: RoomId,
        before: Option<Position>,
        limit: i64,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let mut c = self.conn().await?;
        let mut q = messages::table
            .filter(messages::room_id.eq(Id(room)))
            .filter(messages::kind.eq_any(["member", "room"]))
            .select(MessageRow::as_select())
            .order(messages::position.desc())
            .limit(limit + 1)
            .into_boxed();
        if let Some(b) = before {
            q = q.filter(messages::position.lt(b));
        }
        let mut rows: Vec<MessageRow> = q.load(&mut c).await.map_err(db_error)?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        Ok((rows.into_iter().map(Message::from).collect(), more))
    }

    async fn bans(&self, room: RoomId) -> Result<Vec<BanInfo>, StoreError> {
        let mut c = self.conn().await?;
        type Row = (Id, Option<DateTime<Utc>>, Option<String>, Id, DateTime<Utc>);
        let rows: Vec<Row> = bans::table
            .filter(bans::room_id.eq(Id(room)))
            .filter(bans::until.is_null().or(bans::until.gt(Utc::now())))
            .select((
                bans::user_id,
                bans::until,
                bans::reason,
                bans::banned_by,
                bans::banned_at,
            ))
            .order(bans::banned_at.desc())
            .limit(1_000)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for (user, until, reason, by, at) in rows {
            out.push(BanInfo {
                user: user_of(&mut c, user.0).await.map_err(db_error)?,
                until,
                reason,
                by: user_of(&mut c, by.0).await.map_err(db_error)?,
                at,
            });
        }
        Ok(out)
    }

    async fn create_invite(
        &self,
        room: RoomId,
        user: UserId,
        inviter: UserId,
    ) -> Result<(Invite, bool), StoreError> {
        let mut c = self.conn().await?;
        let id = Uuid::now_v7();
        let r = write_transaction!(c, TxError, async move |c| {
            lock_room(c, room).await?;
            if banned(c, room, user).await? {
                return Err(TxError::Store(StoreError::Banned));
            }
            let member: Option<Id> = memberships::table
                .find((Id(room), Id(user)))
                .select(memberships::user_id)
                .first(c)
                .await
                .optional()?;
            if member.is_some() {
                return Err(TxError::Store(StoreError::Conflict("member")));
            }
            let pending = || {
                invites::table
                    .filter(invites::room_id.eq(Id(room)))
                    .filter(invites::user_id.eq(Id(user)))
                    .filter(invites::state.eq("pending"))
            };
            let existing: Option<Id> = pending().select(invites::id).first(c).await.optional()?;
            if let Some(existing) = existing {
                return Ok((existing.0, false));
            }
            let held: i64 = invites::table
                .filter(invites::user_id.eq(Id(user)))
                .filter(invites::state.eq("pending"))
                .count()
                .get_result(c)
                .await?;
            if held >= MAX_PENDING_INVITES {
                return Err(TxError::Store(StoreError::Limit("invites")));
            }
            diesel::insert_into(invites::table)
                .values((
                    invites::id.eq(Id(id)),
                    invites::room_id.eq(Id(room)),
                    invites::user_id.eq(Id(user)),
                    invites::inviter_id.eq(Id(inviter)),
                    invites::created_at.eq(Utc::now()),
                ))
                .execute(c)
                .await?;
            Ok((id, true))
        })
        .await;
        let (id, created) = match r {
            // Two invites of the same user at once: the other one is the pending one.
            Err(TxError::Db(e)) if is_unique_violation(&e) => {
                let mut c = self.conn().await?;
                let existing: Id = invites::table
                    .filter(invites::room_id.eq(Id(room)))
                    .filter(invites::user_id.eq(Id(user)))
                    .filter(invites::state.eq("pending"))
                    .select(invites::id)
                    .first(&mut c)
                    .await
                    .map_err(db_error)?;
                (existing.0, false)
            }
            r => r.map_err(StoreError::from)?,
        };
        let invite = self
            .invite(id)
            .await?
            .ok_or(StoreError::NotFound("invite"))?;
        Ok((invite, created))
    }

    async fn invites_for(&self, user: UserId) -> Result<Vec<Invite>, StoreError> {
        let mut c = self.conn().await?;
        let rows: Vec<InviteRow> = invites::table
            .filter(invites::user_id.eq(Id(user)))
            .filter(invites::state.eq("pending"))
            .select((
                invites::id,
                invites::room_id,
                invites::user_id,
                invites::inviter_id,
                invites::created_at,
            ))
            .order(invites::created_at.desc())
            .limit(MAX_PENDING_INVITES)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(invite_of(&mut c, r).await.map_err(db_error)?);
        }
        Ok(out)
    }

    async fn invite(&self, id: Uuid) -> Result<Option<Invite>, StoreError> {
        let mut c = self.conn().await?;
        let row: Option<InviteRow> = invites::table
            .find(Id(id))
            .filter(invites::state.eq("pending"))
            .select((
                invites::id,
                invites::room_id,
                invites::user_id,
                invites::inviter_id,
                invites::created_at,
            ))
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        match row {
            Some(r) => Ok(Some(invite_of(&mut c, r).await.map_err(db_error)?)),
            None => Ok(None),
        }
    }

    async fn answer_invite(
        &self,
        id: Uuid,
        user: UserId,
        accept: bool,
        group_cap: i64,
    ) -> Result<(RoomId, bool), StoreError> {
        let mut c = self.conn().await?;
        let r = write_transaction!(c, TxError, async move |c| {
            let room: Option<Id> = invites::table
                .find(Id(id))
                .filter(invites::user_id.eq(Id(user)))
                .filter(invites::state.eq("pending"))
                .select(invites::room_id)
                .first(c)
                .await
                .optional()?;
            let Some(room) = room else {
                return Err(TxError::Store(StoreError::Gone("invite")));
            };
            let live: Option<Id> = live_rooms!()
                .filter(rooms::id.eq(room))
                .select(rooms::id)
                .first(c)
                .await
                .optional()?;
            if live.is_none() {
                return Err(TxError::Store(StoreError::Gone("invite")));
            }
            let state = if accept { "accepted" } else { "declined" };
            let n = diesel::update(
                invites::table
                    .find(Id(id))
                    .filter(invites::state.eq("pending")),
            )
            .set(invites::state.eq(state))
            .execute(c)
            .await?;
            if n != 1 {
                // Revoked meanwhile.
                return Err(TxError::Store(StoreError::Gone("invite")));
            }
            let joined = if accept {
                join_unless_banned(c, room.0, user, group_cap).await?
            } else {
                false
            };
            Ok((room.0, joined))
        })
        .await;
        r.map_err(StoreError::from)
    }

    async fn revoke_invite(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n = diesel::update(
            invites::table
                .find(Id(id))
                .filter(invites::state.eq("pending")),
        )
        .set(invites::state.eq("revoked"))
        .execute(&mut c)
        .await
        .map_err(db_error)?;
        Ok(n == 1)
    }

    async fn create_link(&self, link: &InviteLink) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let link = link.clone();
        let r = write_transaction!(c, TxError, async move |c| {
            let active: i64 = active_links!()
                .filter(invite_links::room_id.eq(Id(link.room)))
                .count()
                .get_result(c)
                .await?;
            if active >= MAX_LINKS_PER_ROOM {
                return Err(TxError::Store(StoreError::Limit("links")));
            }
            diesel::insert_into(invite_links::table)
                .values((
                    invite_links::code.eq(&link.code),
                    invite_links::room_id.eq(Id(link.room)),
                    invite_links::created_by.eq(Id(link.created_by.id)),
                    invite_links::created_at.eq(Utc::now()),
                    invite_links::expires_at.eq(link.expires_at),
                    invite_links::max_uses.eq(link.max_uses),
                ))
                .execute(c)
                .await?;
            Ok(())
        })
        .await;
        r.map_err(StoreError::from)
    }

    async fn links(&self, room: RoomId) -> Result<Vec<InviteLink>, StoreError> {
        let mut c = self.conn().await?;
        let rows: Vec<LinkRow> = active_links!()
            .filter(invite_links::room_id.eq(Id(room)))
            .order(invite_links::created_at.desc())
            .load(&mut c)
            .await
            .map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(link_of(&mut c, r).await.map_err(db_error)?);
        }
        Ok(out)
    }

    async fn link(&self, code: &str) -> Result<Option<InviteLink>, StoreError> {
        let mut c = self.conn().await?;
        let row: Option<LinkRow> = active_links!()
            .filter(invite_links::code.eq(code))
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        match row {
            Some(r) => Ok(Some(link_of(&mut c, r).await.map_err(db_error)?)),
            None => Ok(None),
        }
    }

    async fn use_link(
        &self,
        code: &str,
        user: UserId,
        group_cap: i64,
    ) -> Result<(RoomId, bool), StoreError> {
        let mut c = self.conn().await?;
        let code = code.to_owned();
        let r = write_transaction!(c, TxError, async move |c| {
            let row: Option<LinkRow> = active_links!()
                .filter(invite_links::code.eq(&code))
                .first(c)
                .await
                .optional()?;
            let Some((_, room, ..)) = row else {
                return Err(TxError::Store(StoreError::Gone("link")));
            };
            let live: Option<Id> = live_rooms!()
                .filter(rooms::id.eq(room))
                .select(rooms::id)
                .first(c)
                .await
                .optional()?;
            if live.is_none() {
                return Err(TxError::Store(StoreError::Gone("link")));
            }
            let joined = join_unless_banned(c, room.0, user, group_cap).await?;
            if joined {
                // Counted in the same transaction: two users racing for the last use
                // cannot both get in (the update re-checks the count).
                let n = diesel::update(
                    invite_links::table.find(&code).filter(
                        invite_links::max_uses
                            .is_null()
                            .or(invite_links::max_uses.gt(invite_links::uses.nullable())),
                    ),
                )
                .set(invite_links::uses.eq(invite_links::uses + 1))
                .execute(c)
                .await?;
                if n != 1 {
                    return Err(TxError::Store(StoreError::Gone("link")));
                }
            }
            Ok((room.0, joined))
        })
        .await;
        r.map_err(StoreError::from)
    }

    async fn revoke_link(&self, room: RoomId, code: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n = diesel::update(
            invite_links::table
                .find(code)
                .filter(invite_links::room_id.eq(Id(room)))
                .filter(invite_links::revoked_at.is_null()),
        )
        .set(invite_links::revoked_at.eq(Some(Utc::now())))
        .execute(&mut c)
        .await
        .map_err(db_error)?;
        Ok(n == 1)
    }

    async fn create_group(
        &self,
        room: &Room,
        creator: UserId,
        members: &[UserId],
        max_per_user: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let (room, members) = (room.clone(), members.to_vec());
        let r = write_transaction!(c, TxError, async move |c| {
            if max_per_user > 0 {
                let made: i64 = rooms::table
                    .filter(rooms::created_by.eq(Id(creator)))
                    .filter(rooms::kind.eq(RoomKind::Room.as_str()))
                    .count()
                    .get_result(c)
                    .await?;
                if made >= max_per_user {
                    return Err(TxError::Store(StoreError::Limit("rooms")));
                }
            }
            diesel::insert_into(rooms::table)
                .values((
                    rooms::id.eq(Id(room.id)),
                    rooms::name.eq(&room.name),
                    rooms::kind.eq(RoomKind::Room.as_str()),
                    rooms::is_group.eq(true),
                    rooms::visibility.eq(Visibility::Private.as_str()),
                    rooms::created_by.eq(Id(creator)),
                ))
                .execute(c)
                .await?;
            for (user, role) in std::iter::once((creator, Role::Owner))
                .chain(members.iter().map(|m| (*m, Role::Member)))
            {
                diesel::insert_into(memberships::table)
                    .values((
                        memberships::room_id.eq(Id(room.id)),
                        memberships::user_id.eq(Id(user)),
                        memberships::role.eq(role.as_str()),
                    ))
                    .on_conflict_do_nothing()
                    .execute(c)
                    .await?;
            }
            Ok(())
        })
        .await;
        r.map_err(StoreError::from)
    }

    async fn set_block(&self, user: UserId, other: UserId, on: bool) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let r = write_transaction!(c, TxError, async move |c| {
            let this = || blocks::table.find((Id(user), Id(other)));
            if !on {
                return Ok(diesel::delete(this()).execute(c).await? == 1);
            }
            let held: i64 = blocks::table
                .filter(blocks::user_id.eq(Id(user)))
                .count()
                .get_result(c)
                .await?;
            if held >= MAX_BLOCKS {
                return Err(TxError::Store(StoreError::Limit("blocks")));
            }
            let n = diesel::insert_into(blocks::table)
                .values((
                    blocks::user_id.eq(Id(user)),
                    blocks::blocked_id.eq(Id(other)),
                    blocks::created_at.eq(Utc::now()),
                ))
                .on_conflict_do_nothing()
                .execute(c)
                .await?;
            Ok(n == 1)
        })
        .await;
        r.map_err(StoreError::from)
    }

    async fn blocks(&self, user: UserId) -> Result<Vec<User>, StoreError> {
        let mut c = self.conn().await?;
        let rows: Vec<(Id, String)> = blocks::table
            .inner_join(users::table.on(users::id.eq(blocks::blocked_id)))
            .filter(blocks::user_id.eq(Id(user)))
            .select((users::id, users::name))
            .order(users::name.asc())
            .limit(MAX_BLOCKS)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| User { id: id.0, name })
            .collect())
    }

    async fn blocked(&self, by: UserId, whom: UserId) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let found: Option<Id> = blocks::table
            .find((Id(by), Id(whom)))
            .select(blocks::user_id)
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(found.is_some())
    }

    async fn search_users(&self, prefix: &str, limit: i64) -> Result<Vec<User>, StoreError> {
        let mut c = self.conn().await?;
        let key = name_key(prefix);
        // A range on the unique key: `key` up to the next string of that prefix.
        let end = format!("{key}\u{10FFFF}");
        let rows: Vec<(Id, String)> = users::table
            .filter(users::name_key.ge(&key))
            .filter(users::name_key.lt(&end))
            .filter(users::suspended_at.is_null())
            .select((users::id, users::name))
            .order(users::name_key.asc())
            .limit(limit)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| User { id: id.0, name })
            .collect())
    }

    async fn set_admin(&self, name: &str, on: bool) -> Result<Option<User>, StoreError> {
        let mut c = self.conn().await?;
        let row: Option<(Id, String)> =
            diesel::update(users::table.filter(users::name_key.eq(name_key(name))))
                .set(users::is_admin.eq(on))
                .returning((users::id, users::name))
                .get_result(&mut c)
                .await
                .optional()
                .map_err(db_error)?;
        Ok(row.map(|(id, name)| User { id: id.0, name }))
    }

    async fn is_admin(&self, user: UserId) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        Ok(users::table
            .find(Id(user))
            .select(users::is_admin)
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?
            .unwrap_or(false))
    }

    async fn set_suspended(&self, user: UserId, on: bool) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n = if on {
            diesel::update(
                users::table
                    .find(Id(user))
                    .filter(users::suspended_at.is_null()),
            )
            .set((
                users::suspended_at.eq(Some(Utc::now())),
                users::token_generation.eq(users::token_generation + 1),
            ))
            .execute(&mut c)
            .await
        } else {
            diesel::update(
                users::table
                    .find(Id(user))
                    .filter(users::suspended_at.is_not_null()),
            )
            .set(users::suspended_at.eq(None::<DateTime<Utc>>))
            .execute(&mut c)
            .await
        }
        .map_err(db_error)?;
        Ok(n == 1)
    }

    async fn is_suspended(&self, user: UserId) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let at: Option<Option<DateTime<Utc>>> = users::table
            .find(Id(user))
            .select(users::suspended_at)
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(matches!(at, Some(Some(_))))
    }

    async fn accounts(
        &self,
        after: Option<UserId>,
        limit: i64,
    ) -> Result<Vec<Account>, StoreError> {
        let mut c = self.conn().await?;
        let mut q = users::table
            .select((users::id, users::name, users::is_admin, users::suspended_at))
            .order(users::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(a) = after {
            q = q.filter(users::id.gt(Id(a)));
        }
        let rows: Vec<(Id, String, bool, Option<DateTime<Utc>>)> =
            q.load(&mut c).await.map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, name, admin, s)| Account {
                id: id.0,
                name,
                admin,
                suspended: s.is_some(),
            })
            .collect())
    }

    async fn all_rooms(
        &self,
        after: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        let mut c = self.conn().await?;
        let mut q = live_rooms!()
            .select((
                rooms::id,
                rooms::name,
                rooms::kind,
                rooms::is_group,
                rooms::visibility,
            ))
            .order(rooms::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(a) = after {
            q = q.filter(rooms::id.gt(Id(a)));
        }
        let rows: Vec<(Id, String, String, bool, String)> =
            q.load(&mut c).await.map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, name, kind, is_group, visibility) in rows {
            let members: i64 = memberships::table
                .filter(memberships::room_id.eq(id))
                .count()
                .get_result(&mut c)
                .await
                .map_err(db_error)?;
            out.push(RoomSummary {
                id: id.0,
                name,
                kind: kind_of(&kind, is_group),
                visibility: Visibility::parse(&visibility).unwrap_or_default(),
                members,
            });
        }
        Ok(out)
    }
}
