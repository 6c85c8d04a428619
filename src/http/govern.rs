//! Governance over HTTP: invites and invite links, kick, ban, mute, roles, ownership,
//! room settings and deletion, the moderation log, group DMs, blocking, and the server
//! administrators' endpoints (docs/protocol.md, "Governance").
//!
//! Every handler follows one order: decide with the permission table
//! (`crate::governance`) on the store's state; change the store (one transaction); end
//! or refresh access on every gateway (`Gateway::revoke`, before answering); append the
//! `member` or `room` event to the room's log (`Gateway::record`); tell the users
//! concerned on their channel.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Duration as Span, Utc};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use super::rooms::{announce, joined, rooms_changed, view};
use super::Authed;
use crate::bus::{Revocation, RevokeReason, UserNotice};
use crate::gateway::Gateway;
use crate::governance::{allowed, may_act_on, may_set_role, Action, Role};
use crate::model::{
    parse_room_name, Change, MemberAction, RoomChanges, RoomKind, User, UserId, Visibility,
};
use crate::protocol::{EventView, MemberEvent};
use crate::store::governance::{Access, InviteLink, MemberOp};
use crate::store::Room;

/// Longest reason of a kick, ban or mute, in characters.
pub const MAX_REASON_CHARS: usize = 500;
pub const MAX_TOPIC_CHARS: usize = 250;
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
/// Longest slow mode: six hours.
pub const MAX_SLOW_MODE_SECS: i32 = 21_600;
/// Invite links: default and longest lifetime, most uses.
const LINK_DEFAULT_SECS: i64 = 7 * 24 * 3600;
const LINK_MAX_SECS: i64 = 30 * 24 * 3600;
const LINK_MAX_USES: i32 = 10_000;

/// An optional JSON body: none (or empty) is the default; anything else must parse
/// (`Option<web::Json<_>>` would take a malformed body for none).
fn body_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &web::Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad("bad_request", format!("invalid JSON body: {e}")))
}

/// 429 `rate_limited` once the user made `--membership-changes-per-minute` membership
/// changes in the last minute on this gateway.
pub(super) fn membership_change(gw: &Gateway, me: &User) -> Result<(), ApiError> {
    use governor::clock::{Clock, DefaultClock};
    gw.membership_changes
        .check_key(&me.id)
        .map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many membership changes; wait a moment",
            )
            .with_retry_after(wait.as_secs() + 1)
        })
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn user_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no such user")
}

fn member_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "member_not_found",
        "that user is not a member of this room",
    )
}

/// The caller's access to the room, which must allow `action` (`what`: for the message).
async fn permit(
    gw: &Gateway,
    room: Uuid,
    me: Uuid,
    action: Action,
    what: &str,
) -> Result<Access, ApiError> {
    let a = gw
        .store
        .access(room, me)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    if a.member.is_none() && !a.server_admin {
        return Err(if a.banned {
            ApiError::banned()
        } else {
            ApiError::not_member()
        });
    }
    if !allowed(a.actor(), action, a.room.kind, a.room.visibility) {
        return Err(ApiError::forbidden(what));
    }
    Ok(a)
}

fn reason_of(reason: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(r) = reason else { return Ok(None) };
    let r = r.trim().to_owned();
    if r.chars().count() > MAX_REASON_CHARS {
        return Err(bad(
            "reason_too_long",
            format!("a reason is at most {MAX_REASON_CHARS} characters"),
        ));
    }
    if r.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad(
            "invalid_reason",
            "a reason holds no control characters",
        ));
    }
    Ok((!r.is_empty()).then_some(r))
}

fn until_of(until: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match until {
        Some(t) if t <= Utc::now() => Err(bad("invalid_until", "`until` must be in the future")),
        // Four-digit years only (stored as text in SQLite, compared as text); leave it out
        // for "until lifted".
        Some(t) if t >= crate::store::governance::forever_utc() => Err(bad(
            "invalid_until",
            "`until` is before the year 9999; leave it out for \"until lifted\"",
        )),
        t => Ok(t),
    }
}

fn member_change(
    user: User,
    action: MemberAction,
    role: Option<Role>,
    until: Option<DateTime<Utc>>,
    reason: Option<String>,
) -> Change {
    Change::Member {
        user,
        action,
        role,
        until,
        reason,
    }
}

/// Ends the user's access to the room on every gateway before the answer (503 if the
/// bus could not take it: the store changed already, a retry revokes again).
async fn end_access(
    gw: &Gateway,
    user: UserId,
    room: Uuid,
    reason: RevokeReason,
) -> Result<(), ApiError> {
    gw.revoke(user, Revocation::Room { room, reason })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "revocation not published");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "done, but not every connection could be told yet; retry",
            )
        })
}

/// The user's standing changed (mute, role): every gateway forgets what it cached, before
/// the answer (503 if the bus could not take it; it is published again in the
/// background, and a retry of the request publishes again).
async fn refresh_standing(gw: &Gateway, user: UserId, room: Uuid) -> Result<(), ApiError> {
    gw.revoke(user, Revocation::Standing { room })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "standing change not published");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "done, but not every connection could be told yet; retry",
            )
        })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Moderation {
    #[serde(default)]
    until: Option<DateTime<Utc>>,
    #[serde(default)]
    reason: Option<String>,
}

/// The target of a moderation action: a user, with their role in the room (None: not a
/// member), after checking the caller may act on them.
async fn target(
    gw: &Gateway,
    a: &Access,
    me: UserId,
    user: UserId,
    action: Action,
) -> Result<(User, Option<Role>), ApiError> {
    let u = gw.store.user(user).await?.ok_or_else(user_not_found)?;
    let their = gw
        .store
        .access(a.room.id, user)
        .await?
        .and_then(|t| t.member.map(|m| m.role));
    if !may_act_on(a.actor(), action, their, user == me) {
        return Err(ApiError::forbidden("act on this member"));
    }
    Ok((u, their))
}

pub async fn kick(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (room, user) = path.into_inner();
    let body: Moderation = body_or_default(&body)?;
    let reason = reason_of(body.reason)?;
    let a = permit(&gw, room, me.0.id, Action::Kick, "kick members").await?;
    let (u, role) = target(&gw, &a, me.0.id, user, Action::Kick).await?;
    if role.is_none() {
        return Err(member_not_found());
    }
    if !gw.store.govern(room, user, MemberOp::Kick, role).await? {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    // Recorded whether or not every gateway could be told yet (the kick stands).
    let told = end_access(&gw, user, room, RevokeReason::Kicked).await;
    let change = member_change(u.clone(), MemberAction::Kicked, None, None, reason);
    gw.record(&me.0, room, change).await;
    announce(&gw, room, &u, MemberEvent::Left).await;
    rooms_changed(&gw, user, room, "kicked").await;
    told?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn ban(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (room, user) = path.into_inner();
    let body: Moderation = body_or_default(&body)?;
    let (reason, until) = (reason_of(body.reason)?, until_of(body.until)?);
    let a = permit(&gw, room, me.0.id, Action::Ban, "ban members").await?;
    let (u, role) = target(&gw, &a, me.0.id, user, Action::Ban).await?;
    let op = MemberOp::Ban {
        until,
        reason: reason.clone(),
        by: me.0.id,
    };
    gw.store.govern(room, user, op, role).await?;
    let told = end_access(&gw, user, room, RevokeReason::Banned).await;
    let change = member_change(u.clone(), MemberAction::Banned, None, until, reason);
    gw.record(&me.0, room, change).await;
    if role.is_some() {
        announce(&gw, room, &u, MemberEvent::Left).await;
    }
    rooms_changed(&gw, user, room, "banned").await;
    told?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn unban(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (room, user) = path.into_inner();
    permit(&gw, room, me.0.id, Action::Ban, "unban members").await?;
    let u = gw.store.user(user).await?.ok_or_else(user_not_found)?;
    if gw.store.govern(room, user, MemberOp::Unban, None).await? {
        let change = member_change(u, MemberAction::Unbanned, None, None, None);
        gw.record(&me.0, room, change).await;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn mute(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (room, user) = path.into_inner();
    let body: Moderation = body_or_default(&body)?;
    let (reason, until) = (reason_of(body.reason)?, until_of(body.until)?);
    let a = permit(&gw, room, me.0.id, Action::Mute, "mute members").await?;
    let (u, role) = target(&gw, &a, me.0.id, user, Action::Mute).await?;
    if role.is_none() {
        return Err(member_not_found());
    }
    gw.store
        .govern(room, user, MemberOp::Mute { until }, role)
        .await?;
    let told = refresh_standing(&gw, user, room).await;
    let change = member_change(u, MemberAction::Muted, None, until, reason);
    gw.record(&me.0, room, change).await;
    rooms_changed(&gw, user, room, "muted").await;
    told?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn unmute(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (room, user) = path.into_inner();
    let a = permit(&gw, room, me.0.id, Action::Mute, "unmute members").await?;
    let (u, role) = target(&gw, &a, me.0.id, user, Action::Mute).await?;
    if gw.store.govern(room, user, MemberOp::Unmute, role).await? {
        let told = refresh_standing(&gw, user, room).await;
        let change = member_change(u, MemberAction::Unmuted, None, None, None);
        gw.record(&me.0, room, change).await;
        rooms_changed(&gw, user, room, "unmuted").await;
        told?;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct NewRole {
    role: String,
}

pub async fn set_role(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<NewRole>,
) -> Result<HttpResponse, ApiError> {
    let (room, user) = path.into_inner();
    let to = match Role::parse(&body.role) {
        Some(Role::Owner) => {
            return Err(bad(
                "invalid_role",
                "ownership is passed with POST /api/rooms/{id}/owner",
            ))
        }
        Some(r) => r,
        None => return Err(bad("invalid_role", "role is admin, moderator or member")),
    };
    let a = permit(&gw, room, me.0.id, Action::ChangeRoles, "change roles").await?;
    let u = gw.store.user(user).await?.ok_or_else(user_not_found)?;
    let their = gw
        .store
        .access(room, user)
        .await?
        .and_then(|t| t.member.map(|m| m.role))
        .ok_or_else(member_not_found)?;
    if !may_set_role(a.actor(), their, to, user == me.0.id) {
        return Err(ApiError::forbidden("give this role to this member"));
    }
    if gw
        .store
        .govern(room, user, MemberOp::SetRole(to), Some(their))
        .await?
    {
        let told = refresh_standing(&gw, user, room).await;
        let change = member_change(u, MemberAction::Role, Some(to), None, None);
        gw.record(&me.0, room, change).await;
        rooms_changed(&gw, user, room, "role").await;
        told?;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct NewOwner {
    user: Uuid,
}

/// `POST /api/rooms/{id}/owner {"user"}`: ownership passes to a member; the owner
/// becomes an admin.
pub async fn transfer(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
    body: web::Json<NewOwner>,
) -> Result<HttpResponse, ApiError> {
    let room = *id;
    let a = permit(
        &gw,
        room,
        me.0.id,
        Action::TransferOwnership,
        "pass ownership",
    )
    .await?;
    if body.user == me.0.id {
        return Err(bad("invalid_user", "you own this room already"));
    }
    // A server administrator acts for the owner.
    let owner = if a.member.is_some_and(|m| m.role == Role::Owner) {
        me.0.clone()
    } else {
        let members = gw.store.members(room).await?;
        let o = members.into_iter().find(|m| m.role == Role::Owner);
        match o {
            Some(o) => User {
                id: o.id,
                name: o.name,
            },
            None => me.0.clone(),
        }
    };
    // A server administrator naming the owner: the owner would become an admin and
    // the room be left without one.
    if body.user == owner.id {
        return Err(bad("invalid_user", "that user owns this room already"));
    }
    let new = gw.store.user(body.user).await?.ok_or_else(user_not_found)?;
    let seen = gw
        .store
        .access(room, new.id)
        .await?
        .and_then(|t| t.member.map(|m| m.role))
        .ok_or_else(member_not_found)?;
    gw.store
        .govern(
            room,
            new.id,
            MemberOp::TakeOwnership { from: owner.id },
            Some(seen),
        )
        .await?;
    let mut told = Ok(());
    for (u, role) in [(new.clone(), Role::Owner), (owner.clone(), Role::Admin)] {
        if let Err(e) = refresh_standing(&gw, u.id, room).await {
            told = Err(e);
        }
        let change = member_change(u.clone(), MemberAction::Role, Some(role), None, None);
        gw.record(&me.0, room, change).await;
        rooms_changed(&gw, u.id, room, "role").await;
    }
    told?;
    Ok(HttpResponse::Ok().json(view(&gw, room, me.0.id).await?))
}

#[derive(Deserialize)]
pub struct Settings {
    name: Option<String>,
    topic: Option<String>,
    description: Option<String>,
    visibility: Option<String>,
    slow_mode_secs: Option<i32>,
}

fn text_setting(
    v: Option<String>,
    max: usize,
    what: &'static str,
) -> Result<Option<String>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let v = v.trim().to_owned();
    if v.chars().count() > max {
        return Err(bad(
            "setting_too_long",
            format!("the {what} is at most {max} characters"),
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad(
            "invalid_setting",
            format!("the {what} holds no control characters"),
        ));
    }
    Ok(Some(v))
}

/// `PATCH /api/rooms/{id}`: name, topic, description, visibility, slow mode.
pub async fn settings(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
    body: web::Json<Settings>,
) -> Result<HttpResponse, ApiError> {
    let room = *id;
    let b = body.into_inner();
    let mut ch = RoomChanges {
        name: b.name.as_deref().map(parse_room_name).transpose()?,
        topic: text_setting(b.topic, MAX_TOPIC_CHARS, "topic")?,
        description: text_setting(b.description, MAX_DESCRIPTION_CHARS, "description")?,
        visibility: match b.visibility.as_deref() {
            None => None,
            Some(v) => Some(Visibility::parse(v).ok_or_else(|| {
                bad(
                    "invalid_visibility",
                    "visibility is \"public\" or \"private\"",
                )
            })?),
        },
        slow_mode_secs: b.slow_mode_secs,
    };
    if ch
        .slow_mode_secs
        .is_some_and(|s| !(0..=MAX_SLOW_MODE_SECS).contains(&s))
    {
        return Err(bad(
            "invalid_slow_mode",
            format!("slow_mode_secs is 0 to {MAX_SLOW_MODE_SECS}"),
        ));
    }
    let a = permit(
        &gw,
        room,
        me.0.id,
        Action::EditSettings,
        "change its settings",
    )
    .await?;
    if a.room.kind != RoomKind::Room {
        // A group's name may change; it stays private.
        ch.visibility = None;
    }
    if ch.is_empty() {
        return Ok(HttpResponse::Ok().json(view(&gw, room, me.0.id).await?));
    }
    gw.store.update_room(room, &ch).await?;
    // This gateway's cached standings (slow mode) at once; the others when the event is
    // relayed to them.
    gw.hub.forget_room(room);
    gw.record(&me.0, room, Change::Room { changes: ch }).await;
    Ok(HttpResponse::Ok().json(view(&gw, room, me.0.id).await?))
}

/// `DELETE /api/rooms/{id}`: the owner (or a server administrator) deletes the room.
pub async fn delete_room(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let room = *id;
    permit(&gw, room, me.0.id, Action::DeleteRoom, "delete it").await?;
    let members = gw.store.delete_room(room).await?;
    for user in members {
        if let Err(e) = gw
            .revoke(
                user,
                Revocation::Room {
                    room,
                    reason: RevokeReason::RoomDeleted,
                },
            )
            .await
        {
            tracing::warn!(error = %e, "room deletion not published yet; retried in the background");
        }
        rooms_changed(&gw, user, room, "room_deleted").await;
    }
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
pub struct LogPage {
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /api/rooms/{id}/moderation`: the room's `member` and `room` events, newest first.
pub async fn moderation_log(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
    q: web::Query<LogPage>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(bad("invalid_limit", "limit is 1 to 200"));
    }
    permit(
        &gw,
        *id,
        me.0.id,
        Action::ViewModLog,
        "read its moderation log",
    )
    .await?;
    let (events, has_more) = gw.store.governance_events(*id, q.before, limit).await?;
    let views: Vec<_> = events.iter().filter_map(EventView::of).collect();
    Ok(HttpResponse::Ok().json(json!({"events": views, "has_more": has_more})))
}

pub async fn bans(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    permit(&gw, *id, me.0.id, Action::Ban, "see its bans").await?;
    Ok(HttpResponse::Ok().json(gw.store.bans(*id).await?))
}

// ------------------------------------------------------------------------ invites

#[derive(Deserialize)]
pub struct NewInvite {
    username: Option<String>,
    user: Option<Uuid>,
}

async fn user_by(gw: &Gateway, id: Option<Uuid>, name: Option<&str>) -> Result<User, ApiError> {
    let found = match (id, name) {
        (Some(id), _) => gw.store.user(id).await?,
        (None, Some(name)) => gw.store.credentials(name).await?.map(|c| c.user),
        (None, None) => {
            return Err(bad(
                "bad_request",
                "give the user's `username` or `user` id",
            ));
        }
    };
    found.ok_or_else(user_not_found)
}

/// The store found the group full (checked in the join's transaction).
fn group_full(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::Conflict("group_full") => ApiError::new(
            StatusCode::CONFLICT,
            "group_full",
            "this group has as many members as it may",
        ),
        e => e.into(),
    }
}

/// A group's members, counted against `--max-group-members` (409 `group_full`).
async fn room_has_space(gw: &Gateway, a: &Access) -> Result<(), ApiError> {
    if a.room.kind != RoomKind::Group {
        return Ok(());
    }
    let n = gw.store.members(a.room.id).await?.len();
    if n >= gw.limits.max_group_members {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "group_full",
            format!(
                "a group has at most {} members",
                gw.limits.max_group_members
            ),
        ));
    }
    Ok(())
}

/// `POST /api/rooms/{id}/invites {"username"}`.
pub async fn invite(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
    body: web::Json<NewInvite>,
) -> Result<HttpResponse, ApiError> {
    let room = *id;
    let a = permit(&gw, room, me.0.id, Action::Invite, "invite people").await?;
    membership_change(&gw, &me.0)?;
    let user = user_by(&gw, body.user, body.username.as_deref()).await?;
    if user.id == me.0.id {
        return Err(bad("invalid_user", "you are in this room already"));
    }
    room_has_space(&gw, &a).await?;
    if gw.store.blocked(user.id, me.0.id).await? {
        // Dropped: stored nowhere, shown to nobody; the inviter is not told why.
        let dropped = crate::store::governance::Invite {
            id: Uuid::now_v7(),
            room,
            room_name: a.room.name.clone(),
            user,
            from: me.0.clone(),
            created_at: Utc::now(),
        };
        return Ok(HttpResponse::Created().json(dropped));
    }
    let (invite, created) = gw.store.create_invite(room, user.id, me.0.id).await?;
    if created {
        let change = member_change(user.clone(), MemberAction::Invited, None, None, None);
        gw.record(&me.0, room, change).await;
        let notice = UserNotice::Invite {
            invite: invite.clone(),
        };
        gw.notify(user.id, notice).await;
    }
    Ok(HttpResponse::Created().json(invite))
}

/// `GET /api/invites`: the caller's pending invites.
pub async fn my_invites(gw: web::Data<Arc<Gateway>>, me: Authed) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(gw.store.invites_for(me.0.id).await?))
}

pub async fn accept(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    gw.store
        .invite(*id)
        .await?
        .filter(|i| i.user.id == me.0.id)
        .ok_or(crate::store::StoreError::Gone("invite"))?;
    membership_change(&gw, &me.0)?;
    let cap = gw.limits.max_group_members as i64;
    let (room, now) = gw
        .store
        .answer_invite(*id, me.0.id, true, cap)
        .await
        .map_err(group_full)?;
    if now {
        joined(&gw, room, &me.0, &me.0).await;
    }
    Ok(HttpResponse::Ok().json(view(&gw, room, me.0.id).await?))
}

pub async fn decline(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let cap = gw.limits.max_group_members as i64;
    let (room, _) = gw.store.answer_invite(*id, me.0.id, false, cap).await?;
    rooms_changed(&gw, me.0.id, room, "invite_declined").await;
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /api/invites/{id}`: the inviter, or whoever may kick in the room, revokes it.
pub async fn revoke_invite(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let inv = gw
        .store
        .invite(*id)
        .await?
        .ok_or_else(|| crate::store::StoreError::Gone("invite"))?;
    if inv.from.id != me.0.id {
        permit(
            &gw,
            inv.room,
            me.0.id,
            Action::Kick,
            "revoke others' invites",
        )
        .await?;
    }
    gw.store.revoke_invite(*id).await?;
    rooms_changed(&gw, inv.user.id, inv.room, "invite_revoked").await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    expires_in_secs: Option<i64>,
    max_uses: Option<i32>,
}

pub async fn create_link(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let room = *id;
    let b: NewLink = body_or_default(&body)?;
    let secs = b.expires_in_secs.unwrap_or(LINK_DEFAULT_SECS);
    if !(60..=LINK_MAX_SECS).contains(&secs) {
        return Err(bad(
            "invalid_expiry",
            format!("expires_in_secs is 60 to {LINK_MAX_SECS}"),
        ));
    }
    if b.max_uses
        .is_some_and(|n| !(1..=LINK_MAX_USES).contains(&n))
    {
        return Err(bad(
            "invalid_max_uses",
            format!("max_uses is 1 to {LINK_MAX_USES}"),
        ));
    }
    permit(
        &gw,
        room,
        me.0.id,
        Action::ManageLinks,
        "create invite links",
    )
    .await?;
    let link = InviteLink {
        // 122 random bits: not guessable.
        code: Uuid::new_v4().simple().to_string(),
        room,
        expires_at: Utc::now() + Span::seconds(secs),
        max_uses: b.max_uses,
        uses: 0,
        created_by: me.0.clone(),
    };
    gw.store.create_link(&link).await?;
    Ok(HttpResponse::Created().json(link))
}

pub async fn links(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    permit(&gw, *id, me.0.id, Action::ManageLinks, "see invite links").await?;
    Ok(HttpResponse::Ok().json(gw.store.links(*id).await?))
}

pub async fn revoke_link(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, String)>,
) -> Result<HttpResponse, ApiError> {
    let (room, code) = path.into_inner();
    permit(
        &gw,
        room,
        me.0.id,
        Action::ManageLinks,
        "revoke invite links",
    )
    .await?;
    if !gw.store.revoke_link(room, &code).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such link",
        ));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /api/links/{code}`: what the link opens (for the page that accepts it).
pub async fn preview_link(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    code: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let link = gw
        .store
        .link(&code)
        .await?
        .ok_or(crate::store::StoreError::Gone("link"))?;
    let room = gw
        .store
        .room_view(link.room, me.0.id)
        .await?
        .ok_or(crate::store::StoreError::Gone("link"))?;
    Ok(HttpResponse::Ok().json(json!({
        "room": {"id": room.id, "name": room.name, "kind": room.kind,
                 "visibility": room.visibility, "members": room.members,
                 "member": room.member},
        "expires_at": link.expires_at,
    })))
}

pub async fn join_link(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    code: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    membership_change(&gw, &me.0)?;
    let cap = gw.limits.max_group_members as i64;
    let (room, now) = gw
        .store
        .use_link(&code, me.0.id, cap)
        .await
        .map_err(group_full)?;
    if now {
        joined(&gw, room, &me.0, &me.0).await;
    }
    Ok(HttpResponse::Ok().json(view(&gw, room, me.0.id).await?))
}

// ------------------------------------------------------------------------- groups

#[derive(Deserialize)]
pub struct NewGroup {
    #[serde(default)]
    users: Vec<Uuid>,
    #[serde(default)]
    usernames: Vec<String>,
    #[serde(default)]
    name: Option<String>,
}

/// `POST /api/groups`: a group DM of the caller and 2 to `max - 1` others.
pub async fn create_group(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    body: web::Json<NewGroup>,
) -> Result<HttpResponse, ApiError> {
    let max = gw.limits.max_group_members;
    let b = body.into_inner();
    // Groups count as rooms created: the same per-minute limit (and cap, in the store).
    if gw.room_creations.check_key(&me.0.id).is_err() {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many rooms created; wait a moment",
        )
        .with_retry_after(6));
    }
    if b.users.len() + b.usernames.len() > max {
        return Err(bad("group_size", format!("a group has 3 to {max} members")));
    }
    let mut others: Vec<User> = Vec::new();
    for id in b.users {
        others.push(user_by(&gw, Some(id), None).await?);
    }
    for name in &b.usernames {
        others.push(user_by(&gw, None, Some(name)).await?);
    }
    others.retain(|u| u.id != me.0.id);
    others.sort_by_key(|u| u.id);
    others.dedup_by_key(|u| u.id);
    if !(3..=max).contains(&(others.len() + 1)) {
        return Err(bad("group_size", format!("a group has 3 to {max} members")));
    }
    for u in &others {
        if gw.store.blocked(u.id, me.0.id).await? {
            return Err(ApiError::blocked());
        }
    }
    let name = match b.name.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(n) => parse_room_name(n)?,
    };
    let room = Room {
        id: Uuid::now_v7(),
        name,
        kind: RoomKind::Group,
        visibility: Visibility::Private,
    };
    let ids: Vec<UserId> = others.iter().map(|u| u.id).collect();
    gw.store
        .create_group(
            &room,
            me.0.id,
            &ids,
            i64::from(gw.limits.max_rooms_per_user),
        )
        .await?;
    for u in std::iter::once(&me.0).chain(others.iter()) {
        let change = member_change(u.clone(), MemberAction::Joined, None, None, None);
        gw.record(&me.0, room.id, change).await;
        rooms_changed(&gw, u.id, room.id, "group_created").await;
    }
    Ok(HttpResponse::Created().json(view(&gw, room.id, me.0.id).await?))
}

// ------------------------------------------------------------------ blocks, people

pub async fn blocks(gw: web::Data<Arc<Gateway>>, me: Authed) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(gw.store.blocks(me.0.id).await?))
}

pub async fn block(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if *id == me.0.id {
        return Err(bad("invalid_user", "you cannot block yourself"));
    }
    gw.store.user(*id).await?.ok_or_else(user_not_found)?;
    gw.store.set_block(me.0.id, *id, true).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn unblock(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    gw.store.set_block(me.0.id, *id, false).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
pub struct Search {
    q: String,
}

/// `GET /api/users?q=prefix`: at most 20 users (the people picker).
pub async fn search_users(
    gw: web::Data<Arc<Gateway>>,
    _me: Authed,
    q: web::Query<Search>,
) -> Result<HttpResponse, ApiError> {
    let n = q.q.chars().count();
    if !(1..=64).contains(&n) {
        return Err(bad("invalid_query", "q is 1 to 64 characters"));
    }
    Ok(HttpResponse::Ok().json(gw.store.search_users(&q.q, 20).await?))
}

/// `GET /api/me`.
pub async fn me(gw: web::Data<Arc<Gateway>>, me: Authed) -> Result<HttpResponse, ApiError> {
    let admin = gw.store.is_admin(me.0.id).await?;
    Ok(HttpResponse::Ok().json(json!({"id": me.0.id, "name": me.0.name, "admin": admin})))
}

// ------------------------------------------------------------------ server admins

async fn require_admin(gw: &Gateway, me: &User) -> Result<(), ApiError> {
    if gw.store.is_admin(me.id).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only server administrators may do this",
        ))
    }
}

#[derive(Deserialize)]
pub struct AdminPage {
    after: Option<Uuid>,
    limit: Option<i64>,
}

fn admin_limit(l: Option<i64>) -> Result<i64, ApiError> {
    let l = l.unwrap_or(100);
    if (1..=500).contains(&l) {
        Ok(l)
    } else {
        Err(bad("invalid_limit", "limit is 1 to 500"))
    }
}

pub async fn admin_users(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    q: web::Query<AdminPage>,
) -> Result<HttpResponse, ApiError> {
    let limit = admin_limit(q.limit)?;
    require_admin(&gw, &me.0).await?;
    Ok(HttpResponse::Ok().json(gw.store.accounts(q.after, limit).await?))
}

pub async fn admin_rooms(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    q: web::Query<AdminPage>,
) -> Result<HttpResponse, ApiError> {
    let limit = admin_limit(q.limit)?;
    require_admin(&gw, &me.0).await?;
    Ok(HttpResponse::Ok().json(gw.store.all_rooms(q.after, limit).await?))
}

pub async fn suspend(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&gw, &me.0).await?;
    if *id == me.0.id {
        return Err(bad("invalid_user", "you cannot suspend yourself"));
    }
    gw.store.user(*id).await?.ok_or_else(user_not_found)?;
    gw.store.set_suspended(*id, true).await?;
    // Every token is void already (the generation moved); open sockets close 4401 on
    // every gateway (retried in the background if the bus cannot take it now).
    if let Err(e) = gw.revoke(*id, Revocation::Sessions).await {
        tracing::warn!(error = %e, "suspension not published yet; retrying in the background");
    }
    Ok(HttpResponse::NoContent().finish())
}

pub async fn reinstate(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&gw, &me.0).await?;
    gw.store.user(*id).await?.ok_or_else(user_not_found)?;
    gw.store.set_suspended(*id, false).await?;
    Ok(HttpResponse::NoContent().finish())
}
