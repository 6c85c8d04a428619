//! The HTTP API of protocol.md (accounts, rooms, history, DMs) and the operational
//! endpoints (healthz, readyz, metrics).

mod accounts;
pub mod assets;
pub mod error;
mod govern;
pub mod guard;
pub mod headers;
pub mod ops;
mod rooms;
pub mod server;

use std::sync::Arc;

use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use crate::gateway::{Gateway, TokenError};
use crate::model::User;
use error::ApiError;

pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.app_data(error::json_config())
        .app_data(error::query_config())
        .app_data(error::path_config())
        .service(
            web::scope("/api")
                .route("/register", web::post().to(accounts::register))
                .route("/login", web::post().to(accounts::login))
                .route("/logout-all", web::post().to(rooms::logout_all))
                .route("/rooms", get_or_head().to(rooms::list))
                .route("/rooms", web::post().to(rooms::create))
                .route("/rooms/{id}/join", web::post().to(rooms::join))
                .route("/rooms/{id}/leave", web::post().to(rooms::leave))
                .route("/rooms/{id}/members", get_or_head().to(rooms::members))
                .route("/rooms/{id}/messages", get_or_head().to(rooms::messages))
                .route(
                    "/rooms/{id}/messages/{mid}/replies",
                    get_or_head().to(rooms::replies),
                )
                .route(
                    "/rooms/{id}/messages/{mid}/edits",
                    get_or_head().to(rooms::edits),
                )
                .route("/rooms/{id}/receipts", get_or_head().to(rooms::receipts))
                .route("/dms", web::post().to(rooms::dm))
                .route("/me", get_or_head().to(govern::me))
                .route("/users", get_or_head().to(govern::search_users))
                .route("/rooms/{id}", web::patch().to(govern::settings))
                .route("/rooms/{id}", web::delete().to(govern::delete_room))
                .route("/rooms/{id}/owner", web::post().to(govern::transfer))
                .route(
                    "/rooms/{id}/moderation",
                    get_or_head().to(govern::moderation_log),
                )
                .route("/rooms/{id}/bans", get_or_head().to(govern::bans))
                .route("/rooms/{id}/invites", web::post().to(govern::invite))
                .route("/rooms/{id}/links", web::post().to(govern::create_link))
                .route("/rooms/{id}/links", get_or_head().to(govern::links))
                .route(
                    "/rooms/{id}/links/{code}",
                    web::delete().to(govern::revoke_link),
                )
                .route(
                    "/rooms/{id}/members/{user}/kick",
                    web::post().to(govern::kick),
                )
                .route(
                    "/rooms/{id}/members/{user}/ban",
                    web::post().to(govern::ban),
                )
                .route(
                    "/rooms/{id}/members/{user}/unban",
                    web::post().to(govern::unban),
                )
                .route(
                    "/rooms/{id}/members/{user}/mute",
                    web::post().to(govern::mute),
                )
                .route(
                    "/rooms/{id}/members/{user}/unmute",
                    web::post().to(govern::unmute),
                )
                .route(
                    "/rooms/{id}/members/{user}/role",
                    web::put().to(govern::set_role),
                )
                .route("/invites", get_or_head().to(govern::my_invites))
                .route("/invites/{id}/accept", web::post().to(govern::accept))
                .route("/invites/{id}/decline", web::post().to(govern::decline))
                .route("/invites/{id}", web::delete().to(govern::revoke_invite))
                .route("/links/{code}", get_or_head().to(govern::preview_link))
                .route("/links/{code}/join", web::post().to(govern::join_link))
                .route("/groups", web::post().to(govern::create_group))
                .route("/blocks", get_or_head().to(govern::blocks))
                .route("/blocks/{id}", web::put().to(govern::block))
                .route("/blocks/{id}", web::delete().to(govern::unblock))
                .route("/admin/users", get_or_head().to(govern::admin_users))
                .route("/admin/rooms", get_or_head().to(govern::admin_rooms))
                .route("/admin/users/{id}/suspend", web::post().to(govern::suspend))
                .route(
                    "/admin/users/{id}/reinstate",
                    web::post().to(govern::reinstate),
                )
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(ApiError::new(
                        actix_web::http::StatusCode::NOT_FOUND,
                        "not_found",
                        "no such endpoint",
                    ))
                })),
        );
}

/// A route for GET that answers HEAD too (the same status and headers, no body: actix-http
/// leaves the body out of an answer to HEAD).
pub fn get_or_head() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

/// The caller, from `Authorization: Bearer <token>`: a valid signature, and (one
/// primary-key look-up per request) a user that exists with the token's generation.
/// 401 otherwise; 503 if the store cannot tell (every API call needs the store anyway).
pub struct Authed(pub User);

impl FromRequest for Authed {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let found = (|| {
            let gw = req.app_data::<web::Data<Arc<Gateway>>>()?.get_ref().clone();
            let header = req.headers().get("authorization")?.to_str().ok()?;
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))?;
            Some((gw, token.trim().to_owned()))
        })();
        Box::pin(async move {
            let (gw, token) = found.ok_or_else(ApiError::unauthorized)?;
            match gw.authenticate(&token).await {
                Ok(user) => Ok(Authed(user)),
                Err(TokenError::Unavailable(e)) => Err(e.into()),
                Err(TokenError::Invalid | TokenError::Revoked) => Err(ApiError::unauthorized()),
            }
        })
    }
}
