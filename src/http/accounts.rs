//! `POST /api/register`, `POST /api/login`.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use crate::auth;
use crate::gateway::Gateway;
use crate::model::{check_password, parse_username, User};

#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

pub async fn register(
    gw: web::Data<Arc<Gateway>>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let Credentials { username, password } = body.into_inner();
    let username = parse_username(&username)?;
    check_password(&password)?;
    let hash = auth::hash_password(password).await.map_err(|e| {
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
    let token = gw.auth.issue(&user);
    Ok(HttpResponse::Created().json(json!({"user": user, "token": token})))
}

pub async fn login(
    gw: web::Data<Arc<Gateway>>,
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
    let Some(creds) = gw.store.credentials(&username).await? else {
        return Err(bad());
    };
    if !auth::verify_password(password, creds.password_hash).await {
        return Err(bad());
    }
    let token = gw.auth.issue_at(&creds.user, creds.token_generation);
    Ok(HttpResponse::Ok().json(json!({"user": creds.user, "token": token})))
}
