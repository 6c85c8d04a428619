//! `ApiError` → `{"error":{"code","message"}}` with a fitting status: the one place where
//! HTTP errors meet the wire.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::model::InputError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }
    pub fn room_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "room_not_found", "no such room")
    }
    pub fn not_member() -> Self {
        Self::new(StatusCode::FORBIDDEN, "not_member", "join the room first")
    }
    pub fn banned() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "banned",
            "you are banned from this room",
        )
    }
    pub fn blocked() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "blocked",
            "this user does not accept that from you",
        )
    }
    pub fn forbidden(what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role in this room does not allow you to {what}"),
        )
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::new(
                StatusCode::CONFLICT,
                match what {
                    "username" => "username_taken",
                    "room name" => "room_name_taken",
                    "member" => "already_member",
                    "owner" => "owner_must_transfer",
                    "standing" => "conflict",
                    _ => "conflict",
                },
                match what {
                    "owner" => "the owner cannot leave: pass ownership on first".to_owned(),
                    "standing" => "the member's standing changed meanwhile; look again".to_owned(),
                    "member" => "already a member".to_owned(),
                    _ => format!("that {what} is taken"),
                },
            ),
            StoreError::Limit(what) => ApiError::new(
                StatusCode::FORBIDDEN,
                match what {
                    "rooms" => "too_many_rooms",
                    "invites" => "too_many_invites",
                    "links" => "too_many_links",
                    "blocks" => "too_many_blocks",
                    _ => "limit_reached",
                },
                format!("too many {what}"),
            ),
            StoreError::Gone(what) => ApiError::new(
                StatusCode::GONE,
                "invite_invalid",
                format!("this {what} is no longer valid (used, expired or revoked)"),
            ),
            StoreError::Banned => ApiError::banned(),
            StoreError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            e if e.retryable() => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; try again shortly",
                )
            }
            e => {
                // One line: the Debug form of an anyhow error carries its backtrace.
                tracing::error!(error = %e, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        // A client's mistake is no server error; server errors are logged where they
        // happen, with their cause.
        if self.status.is_client_error() {
            tracing::debug!(status = self.status.as_u16(), code = self.code, message = %self.message, "refused");
        }
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            res.insert_header((actix_web::http::header::RETRY_AFTER, secs));
        }
        res.json(json!({"error": {"code": self.code, "message": self.message}}))
    }
}

/// Malformed JSON bodies and query strings get the same error shape.
pub fn json_config() -> actix_web::web::JsonConfig {
    actix_web::web::JsonConfig::default()
        .limit(16 * 1024)
        .error_handler(|err, _| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", err.to_string()).into()
        })
}

pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default().error_handler(|err, _| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", err.to_string()).into()
    })
}

pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default().error_handler(|err, _| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", err.to_string()).into()
    })
}
