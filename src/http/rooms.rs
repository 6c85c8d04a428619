//! Rooms, members, history and DMs, and revoking one's tokens. Joining and leaving (and
//! re-opening a DM one had left) announce a `member` event on the room's bus channel.

use std::sync::Arc;

use actix_web::http::header::{HeaderValue, LINK, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use governor::clock::{Clock, DefaultClock};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use super::Authed;
use crate::bus::{BusEvent, Revocation, RevokeReason, UserNotice};
use crate::gateway::Gateway;
use crate::model::{
    parse_room_name, Change, MemberAction, Position, Role, RoomKind, RoomView, User, Visibility,
};
use crate::protocol::MemberEvent;
use crate::store::Room;

/// The room as the caller sees it now (after a change: their role, the member count).
pub(super) async fn view(gw: &Gateway, room: Uuid, me: Uuid) -> Result<RoomView, ApiError> {
    gw.store
        .room_view(room, me)
        .await?
        .ok_or_else(ApiError::room_not_found)
}

/// Other public rooms per page of `GET /api/rooms`, unless `limit` says otherwise.
const ROOMS_PAGE: i64 = 200;
/// The largest `limit` of `GET /api/rooms`.
const MAX_ROOMS_PAGE: i64 = 1_000;

/// A page's `limit`: `default` when not given, else 1 to `max` (400 `invalid_limit`).
fn page_limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = given.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            format!("limit is 1 to {max}"),
        ))
    }
}

#[derive(Deserialize)]
pub struct RoomsQuery {
    after: Option<Uuid>,
    limit: Option<i64>,
}

/// `GET /api/rooms[?after=<cursor>&limit=N]`: a JSON array as in v1. The first page has
/// every room the caller belongs to, then the first `limit` other public rooms (oldest
/// first); when there are more, `X-Next-Cursor` holds the cursor and `Link` (rel="next")
/// the URL of the next page, which holds only further public rooms.
pub async fn list(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    q: web::Query<RoomsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(q.limit, ROOMS_PAGE, MAX_ROOMS_PAGE)?;
    let page = gw.store.rooms_for(me.0.id, q.after, limit).await?;
    let mut resp = HttpResponse::Ok();
    if let Some(next) = page.next {
        resp.insert_header(("x-next-cursor", next.to_string()));
        resp.insert_header((
            LINK,
            format!("</api/rooms?after={next}&limit={limit}>; rel=\"next\""),
        ));
    }
    Ok(resp.json(page.rooms))
}

/// 429 `rate_limited` with `Retry-After` (whole seconds, at least 1).
fn rate_limited(wait: std::time::Duration, message: &str) -> HttpResponse {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).error_response();
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

#[derive(Deserialize)]
pub struct NewRoom {
    name: String,
    #[serde(default)]
    visibility: Option<String>,
}

pub async fn create(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    body: web::Json<NewRoom>,
) -> Result<HttpResponse, ApiError> {
    // A refused name costs nothing and counts for nothing; every attempt on the store does.
    let name = parse_room_name(&body.name)?;
    let visibility = match body.visibility.as_deref() {
        None => Visibility::Public,
        Some(v) => Visibility::parse(v).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_visibility",
                "visibility is \"public\" or \"private\"",
            )
        })?,
    };
    if let Err(not_until) = gw.room_creations.check_key(&me.0.id) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Ok(rate_limited(wait, "too many rooms created; wait a moment"));
    }
    let room = Room {
        id: Uuid::now_v7(),
        name,
        kind: RoomKind::Room,
        visibility,
    };
    gw.store
        .create_room(&room, me.0.id, i64::from(gw.limits.max_rooms_per_user))
        .await?;
    rooms_changed(&gw, me.0.id, room.id, "created").await;
    Ok(HttpResponse::Created().json(view(&gw, room.id, me.0.id).await?))
}

/// Tells the user's other devices (every gateway) to refresh their room list.
pub(super) async fn rooms_changed(gw: &Gateway, user: Uuid, room: Uuid, reason: &str) {
    let notice = UserNotice::RoomsChanged {
        room,
        reason: reason.to_owned(),
    };
    gw.notify(user, notice).await;
}

pub(super) async fn announce(gw: &Gateway, room: Uuid, user: &User, event: MemberEvent) {
    let e = BusEvent::Member {
        room,
        user: user.clone(),
        event,
    };
    if let Err(err) = gw.bus.publish(std::slice::from_ref(&e)).await {
        tracing::warn!(error = %err, "member event not published");
    }
}

pub async fn join(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let access = gw
        .store
        .access(*id, me.0.id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    if access.member.is_none() {
        if access.banned {
            return Err(ApiError::banned());
        }
        match access.room.kind {
            RoomKind::Dm => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "direct message rooms cannot be joined; open the DM with POST /api/dms",
                ))
            }
            // Server administrators may join any room (to moderate it).
            _ if access.room.visibility == Visibility::Private && !access.server_admin => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this room is private: it is joined by invite",
                ))
            }
            _ => {}
        }
    }
    if access.member.is_none() {
        super::govern::membership_change(&gw, &me.0)?;
    }
    if gw.store.join(access.room.id, me.0.id).await? {
        joined(&gw, access.room.id, &me.0, &me.0).await;
    }
    Ok(HttpResponse::Ok().json(view(&gw, access.room.id, me.0.id).await?))
}

/// After `user` became a member (by `actor`): the log's `member` event, the v1 `member`
/// frame and the user's room list.
pub(super) async fn joined(gw: &Gateway, room: Uuid, user: &User, actor: &User) {
    let change = Change::Member {
        user: user.clone(),
        action: MemberAction::Joined,
        role: None,
        until: None,
        reason: None,
    };
    gw.record(actor, room, change).await;
    announce(gw, room, user, MemberEvent::Joined).await;
    rooms_changed(gw, user.id, room, "joined").await;
}

pub async fn leave(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let access = gw
        .store
        .access(*id, me.0.id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    if access.member.is_some_and(|m| m.role == Role::Owner) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "owner_must_transfer",
            "the owner cannot leave: pass ownership on first (POST /api/rooms/{id}/owner), or delete the room",
        ));
    }
    let room = access.room;
    if access.member.is_some() {
        super::govern::membership_change(&gw, &me.0)?;
    }
    let was_member = gw.store.leave(room.id, me.0.id).await?;
    // Access ends before the answer on this gateway, and on the others as the bus
    // delivers the notice; not reported done until it is published (a retry revokes again).
    let what = Revocation::Room {
        room: room.id,
        reason: RevokeReason::Left,
    };
    if let Err(e) = gw.revoke(me.0.id, what).await {
        tracing::warn!(error = %e, "revocation not published");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "left the room, but not every connection could be told yet; retry",
        ));
    }
    if was_member {
        let change = Change::Member {
            user: me.0.clone(),
            action: MemberAction::Left,
            role: None,
            until: None,
            reason: None,
        };
        gw.record(&me.0, room.id, change).await;
        announce(&gw, room.id, &me.0, MemberEvent::Left).await;
        rooms_changed(&gw, me.0.id, room.id, "left").await;
    }
    Ok(HttpResponse::Ok().json(view(&gw, room.id, me.0.id).await?))
}

/// The caller's access to a room they must be a member of (to read it).
pub(super) async fn require_member(
    gw: &Gateway,
    room: Uuid,
    user: Uuid,
) -> Result<crate::store::governance::Access, ApiError> {
    match gw.store.access(room, user).await? {
        Some(a) if a.member.is_some() => Ok(a),
        Some(a) if a.banned => Err(ApiError::banned()),
        Some(_) => Err(ApiError::not_member()),
        None => Err(ApiError::room_not_found()),
    }
}

pub async fn members(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    require_member(&gw, *id, me.0.id).await?;
    let mut members = gw.store.members(*id).await?;
    let ids: Vec<_> = members.iter().map(|m| m.id).collect();
    match gw.bus.online(&ids).await {
        Ok(online) => members
            .iter_mut()
            .for_each(|m| m.online = online.contains(&m.id)),
        Err(e) => tracing::warn!(error = %e, "presence unknown; members shown offline"),
    }
    Ok(HttpResponse::Ok().json(members))
}

#[derive(Deserialize)]
pub struct Page {
    before: Option<Position>,
    limit: Option<i64>,
}

pub async fn messages(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    require_member(&gw, *id, me.0.id).await?;
    let limit = page_limit(page.limit, 50, 200)?;
    let page = gw.store.history(*id, me.0.id, page.before, limit).await?;
    Ok(HttpResponse::Ok().json(json!({"messages": page.messages, "has_more": page.has_more})))
}

/// `GET /api/rooms/{id}/messages/{mid}/replies`: a thread, paged like history.
pub async fn replies(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, Uuid)>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let (room, parent) = path.into_inner();
    require_member(&gw, room, me.0.id).await?;
    let limit = page_limit(page.limit, 50, 200)?;
    let page = gw
        .store
        .replies(room, me.0.id, parent, page.before, limit)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"messages": page.messages, "has_more": page.has_more})))
}

/// `GET /api/rooms/{id}/messages/{mid}/edits`: the bodies a message had, oldest first
/// (empty once it is deleted).
pub async fn edits(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (room, message) = path.into_inner();
    require_member(&gw, room, me.0.id).await?;
    match gw.store.edits(room, message).await? {
        Some(edits) => Ok(HttpResponse::Ok().json(json!({ "edits": edits }))),
        None => Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "message_not_found",
            "no such message in this room",
        )),
    }
}

/// `GET /api/rooms/{id}/receipts`: how far each member read (direct messages only; rooms
/// opt in with room settings, which come with governance).
pub async fn receipts(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    require_member(&gw, *id, me.0.id).await?;
    let room = gw
        .store
        .room(*id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    if room.kind != RoomKind::Dm {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "receipts_off",
            "read receipts are shown in direct messages only",
        ));
    }
    let markers = gw.store.read_markers(room.id).await?;
    let list: Vec<_> = markers
        .into_iter()
        .map(|(user, position)| json!({"user": user, "position": position}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "receipts": list })))
}

/// `{"user": id}`, or (an extension) `{"username": name}`.
#[derive(Deserialize)]
pub struct NewDm {
    user: Option<Uuid>,
    username: Option<String>,
}

pub async fn dm(
    gw: web::Data<Arc<Gateway>>,
    me: Authed,
    body: web::Json<NewDm>,
) -> Result<HttpResponse, ApiError> {
    let other = match (body.user, body.username.as_deref()) {
        (Some(id), _) => gw.store.user(id).await?,
        (None, Some(name)) => gw.store.credentials(name).await?.map(|c| c.user),
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give the other user's `user` id or `username`",
            ))
        }
    };
    let other = other
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no such user"))?;
    if gw.store.blocked(other.id, me.0.id).await? {
        return Err(ApiError::blocked());
    }
    if other.id == me.0.id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user",
            "a direct message needs another user",
        ));
    }
    let (room, created) = gw.store.dm_room(me.0.id, other.id).await?;
    // Re-opening a DM one had left rejoins it (only the caller: the other user, if they
    // left, comes back by opening it themselves).
    if !created && gw.store.join(room.id, me.0.id).await? {
        joined(&gw, room.id, &me.0, &me.0).await;
    }
    // The other user sees the DM appear without reloading (and the caller's other devices).
    rooms_changed(&gw, me.0.id, room.id, "dm_opened").await;
    if created {
        rooms_changed(&gw, other.id, room.id, "dm_opened").await;
    }
    let v = view(&gw, room.id, me.0.id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(v))
}

/// `POST /api/logout-all`: revokes every token of the caller (this one too) by moving the
/// user's token generation on. 204; the next request with any earlier token is 401.
pub async fn logout_all(gw: web::Data<Arc<Gateway>>, me: Authed) -> Result<HttpResponse, ApiError> {
    if gw.store.revoke_tokens(me.0.id).await?.is_none() {
        return Err(ApiError::unauthorized());
    }
    // Open sockets of the user close with 4401, here and on every other gateway. If the
    // bus cannot take the notice now, it is published again in the background: the
    // caller cannot retry (this token is revoked too), and every token is void already.
    if let Err(e) = gw.revoke(me.0.id, Revocation::Sessions).await {
        tracing::warn!(error = %e, "revocation not published yet; retrying in the background");
    }
    Ok(HttpResponse::NoContent().finish())
}
