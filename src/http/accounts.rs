//! `POST /api/register`, `POST /api/login`.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use super::guard::Guard;
use crate::gateway::Gateway;
use crate::model::{check_password, name_key, parse_username, User};

#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

pub async fn register(
    gw: web::Data<Arc<Gateway>>,
    guard: web::Data<Arc<Guard>>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let address = guard.client_address(&req);
    guard.register(address)?;
    let Credentials { username, password } = body.into_inner();
    let username = parse_username(&username)?;
    check_password(&password)?;
    let hash = guard.hashing()?.hash(password).await.map_err(|e| {
        tracing::error!(error = %e, "hashing failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    let user = User {
        id: Uuid::now_v7(),
        name: username,
    };
    gw.store.create_user(&user, &hash).await?;
    guard.succeeded(address, &name_key(&user.name));
    let token = gw.auth.issue(&user);
    Ok(HttpResponse::Created().json(json!({"user": user, "token": token})))
}

/// Checked in this order, cheapest refusal first: the address's limit, then (for a name and
/// password that could exist at all) the account's limit, a place in the hashing pool, and
/// only then the database and the hash. An unknown user's password is checked against a
/// dummy hash, so the answer takes as long as for a known user with a wrong password.
pub async fn login(
    gw: web::Data<Arc<Gateway>>,
    guard: web::Data<Arc<Guard>>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let Credentials { username, password } = body.into_inner();
    let bad = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        )
    };
    // No account has such a name or password: nothing to guess, nothing to hash (and an
    // account key is at most 32 bytes).
    // The account is counted by its name's key: every case and normal form of a name is
    // one account.
    let account = parse_username(&username)
        .ok()
        .filter(|_| check_password(&password).is_ok())
        .map(|name| name_key(&name));
    let address = guard.client_address(&req);
    guard.login(address, account.as_deref())?;
    let Some(account) = account else {
        return Err(bad());
    };
    let ticket = guard.hashing()?;
    let creds = gw.store.credentials(&username).await?;
    let suspended = creds.as_ref().is_some_and(|c| c.suspended);
    let (user, hash) = match creds {
        Some(c) => (Some((c.user, c.token_generation)), Some(c.password_hash)),
        None => (None, None),
    };
    if !ticket.verify(password, hash).await {
        return Err(bad());
    }
    // Told only to whoever knows the password.
    if suspended {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "suspended",
            "this account is suspended",
        ));
    }
    let (user, generation) = user.ok_or_else(bad)?;
    guard.succeeded(address, &account);
    let token = gw.auth.issue_at(&user, generation);
    Ok(HttpResponse::Ok().json(json!({"user": user, "token": token})))
}
