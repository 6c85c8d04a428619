//! Passwords (argon2id) and session tokens (HS256 JWT with expiry and the user's token
//! generation). Knows nothing about HTTP or the store: handlers and the WebSocket `hello`
//! both call [`Auth::verify`], then `Gateway::authenticate` checks the generation.

use std::time::Duration;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::User;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid or expired token")]
    BadToken,
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    name: String,
    iat: u64,
    exp: u64,
    /// The user's token generation when the token was issued; a token from before
    /// generations existed has none and counts as 0.
    #[serde(default)]
    gen: i64,
}

/// What a valid signature vouches for: the user, and the token generation it was issued
/// under (still to be compared with the user's current one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: User,
    pub generation: i64,
}

#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// A token of a new user (generation 0).
    pub fn issue(&self, user: &User) -> String {
        self.issue_at(user, 0)
    }

    /// A token under the user's current token generation.
    pub fn issue_at(&self, user: &User, generation: i64) -> String {
        let now = now_secs();
        let claims = Claims {
            sub: user.id,
            name: user.name.clone(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            gen: generation,
        };
        // HS256 over a serialisable struct does not fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Checks the signature and expiry (not the generation: that needs the store).
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| AuthError::BadToken)?;
        Ok(Verified {
            user: User {
                id: data.claims.sub,
                name: data.claims.name,
            },
            generation: data.claims.gen,
        })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Argon2 takes tens of milliseconds and 19 MiB per hash by design: at most this many run
/// at once (one per core), the rest wait their turn, so a burst of registrations or
/// logins can neither take every blocking thread nor grow the heap by 19 MiB each.
fn hashing_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// Hashes on a blocking thread, within the hashing slots.
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Hashing(e.to_string()))?
}

/// False for a wrong password or an unreadable hash.
pub async fn verify_password(password: String, hash: String) -> bool {
    let Ok(_slot) = hashing_slots().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_roundtrip_and_reject_tampering() {
        let auth = Auth::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let user = User {
            id: Uuid::new_v4(),
            name: "ann".into(),
        };
        let t = auth.issue(&user);
        assert_eq!(auth.verify(&t).unwrap().user, user);
        assert_eq!(auth.verify(&t).unwrap().generation, 0);
        let t = auth.issue_at(&user, 7);
        assert_eq!(auth.verify(&t).unwrap().generation, 7);
        let other = Auth::new(b"another-secret-another-secret-xx", Duration::from_secs(60));
        assert!(other.verify(&t).is_err());
        assert!(auth.verify("not.a.token").is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let auth = Auth::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(0));
        let claims = Claims {
            sub: Uuid::new_v4(),
            name: "ann".into(),
            iat: 1,
            exp: 2,
            gen: 0,
        };
        let t =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding).unwrap();
        assert!(auth.verify(&t).is_err());
    }

    #[test]
    fn tokens_without_a_generation_are_generation_0() {
        #[derive(Serialize)]
        struct OldClaims {
            sub: Uuid,
            name: String,
            iat: u64,
            exp: u64,
        }
        let auth = Auth::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let now = now_secs();
        let old = OldClaims {
            sub: Uuid::new_v4(),
            name: "ann".into(),
            iat: now,
            exp: now + 60,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &old, &auth.encoding).unwrap();
        let v = auth.verify(&t).unwrap();
        assert_eq!((v.user.id, v.generation), (old.sub, 0));
    }

    #[tokio::test]
    async fn passwords() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(verify_password("correct horse".into(), h.clone()).await);
        assert!(!verify_password("wrong horse".into(), h).await);
    }
}
