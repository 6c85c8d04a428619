//! What stands between the login and registration endpoints and those who would abuse them:
//! per-account and per-address rate limits (governor, keyed, bounded in keys), whether
//! registration is open, and the password hashing pool with its bounded queue.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::Shutdown;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use crate::auth::{Busy, Hashing, Ticket};
use crate::cli::Registration;
use crate::config::{AccountLimits, Rate};

/// Keys one limiter keeps at most. An entry is a key and 8 bytes of state (an account name is
/// at most 32 bytes), so a full limiter holds a few MiB. Keys whose bucket is full again are
/// swept every [`SWEEP_EVERY`], and at once (at most once a second) when the cap is reached.
pub const MAX_KEYS: usize = 100_000;
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Retry-After when the hashing queue is full, or a limiter is full of live keys.
const BUSY_RETRY_SECS: u64 = 1;

/// A keyed rate limiter that holds at most [`MAX_KEYS`] keys.
struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    cap: usize,
    /// When the last sweep forced by the cap ran (nanoseconds of the limiter's clock).
    last_forced: AtomicU64,
}

/// Why a keyed check refused.
enum Refused {
    /// The key's bucket is empty: retry after this long.
    Limited(Duration),
    /// The limiter holds its cap of live keys (a flood of distinct names or addresses):
    /// every attempt is refused until a sweep forgets some. (Concurrent checks can each add
    /// a key past the cap: it is exceeded by at most the number of requests in flight.)
    Full,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate, cap: usize) -> Self {
        let per_minute = NonZeroU32::new(rate.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        Keyed {
            limiter: RateLimiter::dashmap(Quota::per_minute(per_minute).allow_burst(burst)),
            cap,
            last_forced: AtomicU64::new(0),
        }
    }

    fn check(&self, key: &K) -> Result<(), Refused> {
        if self.limiter.len() >= self.cap {
            let now = self.now_nanos();
            let last = self.last_forced.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1_000_000_000
                && self
                    .last_forced
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.sweep();
            }
            if self.limiter.len() >= self.cap {
                return Err(Refused::Full);
            }
        }
        let clock = self.limiter.clock();
        self.limiter
            .check_key(key)
            .map_err(|not_until| Refused::Limited(not_until.wait_time_from(clock.now())))
    }

    fn now_nanos(&self) -> u64 {
        static START: std::sync::LazyLock<std::time::Instant> =
            std::sync::LazyLock::new(std::time::Instant::now);
        u64::try_from(START.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Forgets the keys whose bucket is full again (indistinguishable from a new key).
    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// How long an address an account logged in from (or registered from) stays exempt from
/// the account's limit.
const KNOWN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// The login and registration guard of one gateway (limits are per gateway process).
pub struct Guard {
    login_per_account: Keyed<String>,
    /// (account, address) pairs that logged in (or registered) lately: an account's
    /// limit does not apply at its own known addresses, so whoever guesses a name from
    /// elsewhere cannot lock its owner out (the address's own limit still does). At most
    /// [`MAX_KEYS`] pairs; expired ones are swept.
    known: std::sync::Mutex<std::collections::HashMap<(String, IpAddr), std::time::Instant>>,
    login_per_address: Keyed<IpAddr>,
    register_per_address: Keyed<IpAddr>,
    trust_forwarded_for: bool,
    registration: Registration,
    hashing: Arc<Hashing>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Builds the guard and sweeps its limiters (a task of `tasks`, until it is cancelled).
    pub fn start(limits: &AccountLimits, tasks: &Shutdown) -> Arc<Guard> {
        let guard = Arc::new(Guard {
            login_per_account: Keyed::new(limits.login_per_account, MAX_KEYS),
            known: std::sync::Mutex::new(std::collections::HashMap::new()),
            login_per_address: Keyed::new(limits.login_per_address, MAX_KEYS),
            register_per_address: Keyed::new(limits.register_per_address, MAX_KEYS),
            trust_forwarded_for: limits.trust_forwarded_for,
            registration: limits.registration,
            hashing: Hashing::new(limits.hash_queue),
        });
        guard.hashing.warm_up();
        let weak = Arc::downgrade(&guard);
        tasks.spawn_until_cancelled(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(g) = weak.upgrade() else { return };
                g.login_per_account.sweep();
                g.known().retain(|_, at| at.elapsed() < KNOWN_FOR);
                g.login_per_address.sweep();
                g.register_per_address.sweep();
            }
        });
        guard
    }

    /// The client's address: the peer, or with `--trust-forwarded-for` the last entry of
    /// `X-Forwarded-For` (the one the proxy in front appended; earlier ones are the
    /// client's say). IPv6 addresses count by their /64, which one subscriber usually has.
    pub fn client_address(&self, req: &HttpRequest) -> IpAddr {
        let forwarded = self
            .trust_forwarded_for
            .then(|| forwarded_for(req))
            .flatten();
        let ip = forwarded
            .or_else(|| req.peer_addr().map(|a| a.ip()))
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        address_key(ip)
    }

    /// A login attempt for `account` from `address`: 429 when either is over its limit
    /// (the account's does not apply at an address it is known from).
    pub fn login(&self, address: IpAddr, account: Option<&str>) -> Result<(), ApiError> {
        refused(self.login_per_address.check(&address))?;
        if let Some(account) = account {
            let account = account.to_ascii_lowercase();
            if !self.is_known(&account, address) {
                refused(self.login_per_account.check(&account))?;
            }
        }
        Ok(())
    }

    /// The account logged in (or registered) from `address`: exempt it there from the
    /// account's limit for a while.
    pub fn succeeded(&self, address: IpAddr, account: &str) {
        let mut known = self.known();
        if known.len() < MAX_KEYS {
            known.insert(
                (account.to_ascii_lowercase(), address),
                std::time::Instant::now(),
            );
        }
    }

    fn is_known(&self, account: &str, address: IpAddr) -> bool {
        self.known()
            .get(&(account.to_owned(), address))
            .is_some_and(|at| at.elapsed() < KNOWN_FOR)
    }

    fn known(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, IpAddr), std::time::Instant>>
    {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A registration from `address`: 403 when registration is closed, 429 over the limit.
    pub fn register(&self, address: IpAddr) -> Result<(), ApiError> {
        if self.registration == Registration::Closed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "registration_closed",
                "registration is closed on this server",
            ));
        }
        refused(self.register_per_address.check(&address))
    }

    /// A place in the hashing pool, or 503 `busy` when too many hashes wait.
    pub fn hashing(&self) -> Result<Ticket, ApiError> {
        self.hashing.admit().map_err(|Busy| busy())
    }
}

fn busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the server is busy checking passwords; try again shortly",
    )
    .with_retry_after(BUSY_RETRY_SECS)
}

fn refused(r: Result<(), Refused>) -> Result<(), ApiError> {
    match r {
        Ok(()) => Ok(()),
        Err(Refused::Limited(wait)) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many attempts; try again later",
        )
        .with_retry_after(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))),
        Err(Refused::Full) => Err(busy()),
    }
}

fn forwarded_for(req: &HttpRequest) -> Option<IpAddr> {
    let last = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|s| !s.is_empty())?;
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// What an address counts as: IPv4 (and IPv4-mapped IPv6) as is, IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_by_v4_or_v6_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_takes_the_last_entry_and_only_when_trusted() {
        let req = actix_web::test::TestRequest::default()
            .peer_addr("10.0.0.9:1234".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.1.1.1, 2.2.2.2"))
            .to_http_request();
        let mut limits = AccountLimits::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let g = Guard::start(&limits, &Shutdown::new());
            assert_eq!(
                g.client_address(&req),
                "10.0.0.9".parse::<IpAddr>().unwrap()
            );
            limits.trust_forwarded_for = true;
            let g = Guard::start(&limits, &Shutdown::new());
            assert_eq!(g.client_address(&req), "2.2.2.2".parse::<IpAddr>().unwrap());
        });
    }

    #[test]
    fn a_limiter_keeps_at_most_its_cap_of_keys() {
        let k: Keyed<String> = Keyed::new(
            Rate {
                per_minute: 1,
                burst: 1,
            },
            100,
        );
        for i in 0..1000 {
            let _ = k.check(&format!("user{i}"));
        }
        assert!(k.limiter.len() <= 100, "{}", k.limiter.len());
        // A key already over its limit is refused with how long to wait.
        assert!(matches!(
            k.check(&"user0".into()),
            Err(Refused::Limited(_) | Refused::Full)
        ));
    }

    #[test]
    fn over_the_limit_waits_a_minute_over_the_rate() {
        let k: Keyed<String> = Keyed::new(
            Rate {
                per_minute: 6,
                burst: 2,
            },
            100,
        );
        assert!(k.check(&"a".into()).is_ok());
        assert!(k.check(&"a".into()).is_ok());
        match k.check(&"a".into()) {
            Err(Refused::Limited(d)) => assert!(
                d > Duration::from_secs(5) && d <= Duration::from_secs(10),
                "{d:?}"
            ),
            _ => panic!("not limited"),
        }
        assert!(k.check(&"b".into()).is_ok());
    }
}
