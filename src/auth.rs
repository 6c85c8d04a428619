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

/// Cores that hash passwords at once: one per core.
pub fn hashing_cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Refused at once: more hashes are waiting than the queue holds.
#[derive(Debug, thiserror::Error)]
#[error("too many password checks are waiting")]
pub struct Busy;

/// The password hashing pool. Argon2 takes tens of milliseconds and 19 MiB per hash by
/// design: at most one runs per core, so a burst of registrations or logins can neither take
/// every blocking thread nor grow the heap by 19 MiB each. At most `queue` more wait for a
/// slot; beyond that [`Hashing::admit`] refuses at once ([`Busy`], answered 503 `busy`), so
/// an honest login never queues behind hundreds of bogus ones.
#[derive(Debug)]
pub struct Hashing {
    slots: tokio::sync::Semaphore,
    /// Admitted tickets: hashing or waiting for a slot.
    admitted: std::sync::atomic::AtomicUsize,
    max_admitted: usize,
}

impl Hashing {
    pub fn new(queue: usize) -> std::sync::Arc<Hashing> {
        let cores = hashing_cores();
        std::sync::Arc::new(Hashing {
            slots: tokio::sync::Semaphore::new(cores),
            admitted: std::sync::atomic::AtomicUsize::new(0),
            max_admitted: cores + queue,
        })
    }

    /// A place in the pool (a slot or the queue), or [`Busy`] when the queue is full. Take it
    /// before anything slow (a database lookup) so a refusal costs nothing.
    pub fn admit(self: &std::sync::Arc<Self>) -> Result<Ticket, Busy> {
        use std::sync::atomic::Ordering;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_admitted).then_some(n + 1)
            })
            .map_err(|_| Busy)?;
        Ok(Ticket { pool: self.clone() })
    }

    /// Computes the dummy hash now, on a blocking thread, so the first unknown-user login
    /// does not pay for it.
    pub fn warm_up(&self) {
        // Blocking hashing is not tracked by shutdown.rs: it cannot be cancelled, takes one
        // hash's time, and the runtime waits for blocking tasks when it shuts down.
        tokio::task::spawn_blocking(|| std::sync::LazyLock::force(&DUMMY_HASH));
    }
}

/// Admission to the hashing pool; its place is given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    pool: std::sync::Arc<Hashing>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pool
            .admitted
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A hash with the parameters of every stored one, of a password nobody knows: a login for
/// an unknown user is checked against it, so it takes as long as one for a known user.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .unwrap_or_default()
});

impl Ticket {
    /// Hashes on a blocking thread, within a hashing slot.
    pub async fn hash(self, password: String) -> Result<String, AuthError> {
        let _slot = self
            .pool
            .slots
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

    /// Whether `password` matches `hash`, within a hashing slot. `None` (no such user) is
    /// checked against the dummy hash, as long as a real check, and is always false. False
    /// too for an unreadable hash.
    pub async fn verify(self, password: String, hash: Option<String>) -> bool {
        let Ok(_slot) = self.pool.slots.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let hash = hash.as_deref().unwrap_or(DUMMY_HASH.as_str());
            let ok = Argon2::default()
                .verify_password(password.as_bytes(), hash)
                .is_ok();
            ok && known
        })
        .await
        .unwrap_or(false)
    }
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
        let pool = Hashing::new(4);
        let h = pool
            .admit()
            .unwrap()
            .hash("correct horse".into())
            .await
            .unwrap();
        assert!(
            pool.admit()
                .unwrap()
                .verify("correct horse".into(), Some(h.clone()))
                .await
        );
        assert!(
            !pool
                .admit()
                .unwrap()
                .verify("wrong horse".into(), Some(h))
                .await
        );
        // An unknown user is checked against the dummy hash, and never matches.
        assert!(!pool.admit().unwrap().verify("".into(), None).await);
        assert!(DUMMY_HASH.starts_with("$argon2id$"), "{}", *DUMMY_HASH);
    }

    #[test]
    fn the_queue_is_bounded() {
        let pool = Hashing::new(3);
        let held: Vec<Ticket> = (0..hashing_cores() + 3)
            .map(|_| pool.admit().unwrap())
            .collect();
        assert!(pool.admit().is_err());
        drop(held);
        assert!(pool.admit().is_ok());
    }
}
