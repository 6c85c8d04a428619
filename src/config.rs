//! `ServeArgs` → a validated [`Config`], once. Nothing after this reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{
    KafkaCompression, KafkaSaslMechanism, MigrateArgs, Registration, Role, ServeArgs,
};
use crate::log::kafka::{Compression, KafkaSecurity, KafkaTlsError, Sasl, SaslMechanism};
use crate::tls::{CaFile, PgTarget, RedisTarget};

#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

/// The distributed services: PostgreSQL, Redis, Kafka.
#[derive(Clone)]
pub struct Services {
    /// The PostgreSQL URL as tokio-postgres takes it, and how to do TLS.
    pub database: PgTarget,
    /// The Redis URL and the CA file for `rediss://`.
    pub redis: RedisTarget,
    pub redis_prefix: String,
    pub kafka_brokers: Vec<String>,
    pub kafka_topic: String,
    pub kafka_partitions: i32,
    /// Copies of each partition for a topic created at start (None: as many as there
    /// are brokers, at most 3).
    pub kafka_replication_factor: Option<i16>,
    /// TLS and SASL to Kafka (none: plaintext, no authentication).
    pub kafka_security: KafkaSecurity,
    /// How produced record batches are compressed.
    pub kafka_compression: Compression,
    /// While records flow, a relay fetches at most once per this interval (zero: at once).
    pub relay_linger: Duration,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("database", &self.database)
            .field("redis", &self.redis)
            .field("redis_prefix", &self.redis_prefix)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_topic", &self.kafka_topic)
            .field("kafka_partitions", &self.kafka_partitions)
            .field("kafka_replication_factor", &self.kafka_replication_factor)
            .field("kafka_security", &self.kafka_security)
            .field("kafka_compression", &self.kafka_compression)
            .field("relay_linger", &self.relay_linger)
            .finish()
    }
}

/// A secret setting given directly or, by the Kubernetes/Docker secrets convention, in a
/// file (`NAME_FILE`): the file's contents with the trailing line end trimmed. Both at once
/// is refused. Neither the value nor the file's contents appear in any error.
pub fn secret(
    value: Option<&str>,
    file: Option<&Path>,
    setting: &'static str,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(bad(
            setting,
            "given both directly and as a file (…_FILE); give one",
        )),
        (Some(v), None) => Ok(Some(v.to_owned())),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(setting, format!("cannot read {}: {e}", path.display())))?;
            let v = text.trim_end_matches(['\n', '\r']);
            if v.is_empty() {
                return Err(bad(setting, format!("{} is empty", path.display())));
            }
            Ok(Some(v.to_owned()))
        }
    }
}

/// The PostgreSQL URL and CA file of `chat serve` or `chat migrate` → a [`PgTarget`].
pub fn pg_target(url: &str, ca_file: Option<&Path>) -> Result<PgTarget, ConfigError> {
    check_database_url(url)?;
    PgTarget::parse(url, ca_file).map_err(|e| {
        if e.starts_with("CA file") {
            bad("--database-ca-file / DATABASE_CA_FILE", e)
        } else {
            bad("--database-url / DATABASE_URL", e)
        }
    })
}

/// What `chat migrate` migrates.
pub enum MigrateTarget {
    Sqlite(PathBuf),
    Postgres(PgTarget),
}

impl MigrateTarget {
    pub fn from_args(a: &MigrateArgs) -> Result<MigrateTarget, ConfigError> {
        let url = secret(
            a.database_url.as_deref(),
            a.database_url_file.as_deref(),
            "--database-url / DATABASE_URL",
        )?
        .ok_or_else(|| bad("--database-url / DATABASE_URL", "missing"))?;
        match sqlite_path(&url) {
            Some(_) if a.database_ca_file.is_some() => Err(bad(
                "--database-ca-file / DATABASE_CA_FILE",
                "only with a postgres:// database",
            )),
            Some(p) => Ok(MigrateTarget::Sqlite(p)),
            None => pg_target(&url, a.database_ca_file.as_deref()).map(MigrateTarget::Postgres),
        }
    }
}

/// Hides the password of a URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Bytes that never appear in logs.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Limits a session enforces (protocol.md's defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub sends_per_second: u32,
    pub send_burst: u32,
    /// Frames queued for one connection before it is cut off as too slow (close 1008).
    pub outbox_frames: usize,
    /// Bytes of text queued for one connection before it is cut off as too slow; a
    /// backlog is queued only while less than half of this is.
    pub outbox_bytes: usize,
    /// Bytes all connections of a gateway may hold queued together (`--max-queued-bytes`).
    pub max_queued_bytes: usize,
    pub max_subscriptions: usize,
    /// WebSocket connections one user may hold on one gateway.
    pub max_connections_per_user: usize,
    pub hello_timeout: Duration,
    /// A connection with no frame from the client for this long is closed.
    pub idle_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Messages `subscribe{since}` replays at most before answering `backlog_too_large`.
    pub max_backlog: usize,
    /// Rooms one user may create per minute on one gateway (the burst is as large).
    pub room_creations_per_minute: u32,
    /// Rooms one user may have created in all (0: no cap).
    pub max_rooms_per_user: u32,
    /// Members of a group DM at most (its creator included).
    pub max_group_members: usize,
    /// Membership changes per user per minute on one gateway (the burst is as large).
    pub membership_changes_per_minute: u32,
    /// Edits, deletes and reactions.
    pub events: crate::events::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            sends_per_second: 20,
            send_burst: 40,
            outbox_frames: 1024,
            outbox_bytes: 1 << 20,
            max_queued_bytes: 256 << 20,
            max_subscriptions: 500,
            max_connections_per_user: 32,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(20),
            max_backlog: 2_000,
            room_creations_per_minute: 10,
            max_rooms_per_user: 200,
            max_group_members: 10,
            membership_changes_per_minute: 30,
            events: crate::events::Limits::default(),
        }
    }
}

/// A rate: `per_minute` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

/// What protects logins and registrations (protocol.md, "Limits on accounts").
#[derive(Debug, Clone)]
pub struct AccountLimits {
    /// Login attempts for one account name, from anywhere.
    pub login_per_account: Rate,
    /// Login attempts from one client address.
    pub login_per_address: Rate,
    /// Registrations from one client address.
    pub register_per_address: Rate,
    /// Whether the client address comes from `X-Forwarded-For` (behind a proxy).
    pub trust_forwarded_for: bool,
    pub registration: Registration,
    /// Hashes that may wait for a hashing slot before more are refused with `busy`.
    pub hash_queue: usize,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            login_per_account: Rate {
                per_minute: 5,
                burst: 10,
            },
            login_per_address: Rate {
                per_minute: 20,
                burst: 30,
            },
            register_per_address: Rate {
                per_minute: 5,
                burst: 10,
            },
            trust_forwarded_for: false,
            registration: Registration::Open,
            hash_queue: 4 * crate::auth::hashing_cores(),
        }
    }
}

/// Which implementations the three seams get.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One process, no services: SQLite file (store and log), in-process bus.
    Embedded { database: PathBuf },
    /// PostgreSQL, Redis and Kafka.
    Distributed(Box<Services>),
}

/// The embedded mode's database file when none is given: `<data dir>/chat.db`.
pub const DEFAULT_DB_FILE: &str = "chat.db";
/// The embedded mode keeps a generated token secret beside its database.
pub const SECRET_FILE: &str = "jwt-secret";

#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    pub listen: SocketAddr,
    pub backend: Backend,
    /// None in the embedded mode without `--jwt-secret`: generated once and kept in the
    /// data directory, so tokens survive a restart.
    pub jwt_secret: Option<Secret>,
    pub token_ttl: Duration,
    pub migrate: bool,
    pub allowed_origins: Vec<String>,
    pub static_dir: Option<PathBuf>,
    pub database_pool_size: usize,
    pub drain_timeout: Duration,
    pub http_workers: Option<std::num::NonZeroUsize>,
    pub produce_timeout: Duration,
    pub limits: Limits,
    pub accounts: AccountLimits,
}

impl Config {
    pub fn from_args(a: &ServeArgs) -> Result<Config, ConfigError> {
        let secrets = Secrets {
            database_url: secret(
                a.database_url.as_deref(),
                a.database_url_file.as_deref(),
                "--database-url / DATABASE_URL",
            )?,
            redis_url: secret(
                a.redis_url.as_deref(),
                a.redis_url_file.as_deref(),
                "--redis-url / REDIS_URL",
            )?,
            redis_cluster_nodes: secret(
                a.redis_cluster_nodes.as_deref(),
                a.redis_cluster_nodes_file.as_deref(),
                REDIS_CLUSTER,
            )?,
            jwt_secret: secret(
                a.jwt_secret.as_deref(),
                a.jwt_secret_file.as_deref(),
                "--jwt-secret / JWT_SECRET",
            )?,
            kafka_password: secret(
                a.kafka_password.as_deref(),
                a.kafka_password_file.as_deref(),
                "--kafka-password / KAFKA_PASSWORD",
            )?,
        };
        let backend = backend(a, &secrets)?;
        let jwt_secret = match (&secrets.jwt_secret, &backend) {
            (Some(s), _) if s.len() < 32 => {
                return Err(bad(
                    "--jwt-secret / JWT_SECRET",
                    "at least 32 bytes, the same on every gateway",
                ))
            }
            (Some(s), _) => Some(Secret(s.clone().into_bytes())),
            (None, Backend::Embedded { .. }) => None,
            (None, Backend::Distributed(_)) => {
                return Err(bad(
                    "--jwt-secret / JWT_SECRET",
                    "missing (at least 32 bytes, the same on every gateway)",
                ))
            }
        };
        if a.token_ttl_hours == 0 {
            return Err(bad("--token-ttl-hours / TOKEN_TTL_HOURS", "at least 1"));
        }
        if a.database_pool_size == 0 {
            return Err(bad(
                "--database-pool-size / DATABASE_POOL_SIZE",
                "at least 1",
            ));
        }
        let rate = |setting: &'static str, per_minute: u32, burst: u32| {
            if per_minute == 0 || burst == 0 {
                Err(bad(setting, "at least 1"))
            } else {
                Ok(Rate { per_minute, burst })
            }
        };
        let accounts = AccountLimits {
            login_per_account: rate(
                "--login-rate-per-account / --login-burst-per-account",
                a.login_rate_per_account,
                a.login_burst_per_account,
            )?,
            login_per_address: rate(
                "--login-rate-per-address / --login-burst-per-address",
                a.login_rate_per_address,
                a.login_burst_per_address,
            )?,
            register_per_address: rate(
                "--register-rate-per-address / --register-burst-per-address",
                a.register_rate_per_address,
                a.register_burst_per_address,
            )?,
            trust_forwarded_for: a.trust_forwarded_for,
            registration: a.registration,
            hash_queue: a
                .hash_queue
                .unwrap_or_else(|| AccountLimits::default().hash_queue),
        };
        if let Some(dir) = &a.static_dir {
            if !dir.join("index.html").is_file() {
                return Err(bad(
                    "--static-dir / STATIC_DIR",
                    format!("{} has no index.html", dir.display()),
                ));
            }
        }
        Ok(Config {
            role: a.role,
            listen: a.listen,
            backend,
            jwt_secret,
            token_ttl: Duration::from_secs(a.token_ttl_hours * 3600),
            migrate: !a.no_migrate,
            allowed_origins: a
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            static_dir: a.static_dir.clone(),
            database_pool_size: a.database_pool_size,
            drain_timeout: Duration::from_secs(a.drain_timeout_secs),
            http_workers: a.http_workers,
            // Long enough to ride out a leader's failover in a Kafka cluster (the broker
            // session time-out, 9 s by default, then an election): the idempotent producer
            // sends a batch whose answer was lost again to the new leader, which answers
            // with the first write's offset. Short enough to fit in the drain's wait for
            // open sends (3/4 of the 20 s default drain time-out).
            produce_timeout: Duration::from_secs(12),
            limits: Limits {
                sends_per_second: a.send_rate_per_sec.max(1),
                send_burst: a.send_rate_burst.max(1),
                room_creations_per_minute: a.room_create_per_minute.max(1),
                max_rooms_per_user: a.max_rooms_per_user,
                max_group_members: a.max_group_members as usize,
                membership_changes_per_minute: a.membership_changes_per_minute.max(1),
                events: crate::events::Limits {
                    edit_window: (a.edit_window_secs > 0)
                        .then(|| Duration::from_secs(a.edit_window_secs)),
                    max_edits: a.max_edits_per_message.max(0),
                    max_emoji_per_message: a.max_emoji_per_message.max(0),
                    max_reactions_per_user: a.max_reactions_per_user.max(0),
                },
                max_queued_bytes: a.max_queued_mib.max(1).saturating_mul(1 << 20),
                max_connections_per_user: a.max_connections_per_user.max(1),
                ..Limits::default()
            },
            accounts,
        })
    }
}

/// The secret settings, each read from its flag, variable or `…_FILE`.
struct Secrets {
    database_url: Option<String>,
    redis_url: Option<String>,
    redis_cluster_nodes: Option<String>,
    jwt_secret: Option<String>,
    kafka_password: Option<String>,
}

const REDIS_CLUSTER: &str = "--redis-cluster-nodes / REDIS_CLUSTER_NODES";

/// Picks the mode from the URLs given. Nothing (or only a `sqlite://` database): the
/// embedded mode, role `all` only. PostgreSQL, Redis and Kafka: the distributed mode.
/// Anything in between is refused, naming what is missing.
fn backend(a: &ServeArgs, secrets: &Secrets) -> Result<Backend, ConfigError> {
    let sqlite = secrets.database_url.as_deref().and_then(sqlite_path);
    if secrets.redis_url.is_some() && secrets.redis_cluster_nodes.is_some() {
        return Err(bad(
            REDIS_CLUSTER,
            "give either one Redis (--redis-url / REDIS_URL) or a Redis Cluster \
             (--redis-cluster-nodes / REDIS_CLUSTER_NODES), not both",
        ));
    }
    let no_redis = secrets.redis_url.is_none() && secrets.redis_cluster_nodes.is_none();
    if no_redis && a.kafka_brokers.is_none() {
        for (given, setting) in [
            (
                a.database_ca_file.is_some(),
                "--database-ca-file / DATABASE_CA_FILE",
            ),
            (a.redis_ca_file.is_some(), "--redis-ca-file / REDIS_CA_FILE"),
            (a.kafka_tls, "--kafka-tls / KAFKA_TLS"),
            (a.kafka_ca_file.is_some(), "--kafka-ca-file / KAFKA_CA_FILE"),
            (
                a.kafka_client_cert.is_some(),
                "--kafka-client-cert / KAFKA_CLIENT_CERT",
            ),
            (
                a.kafka_sasl_mechanism.is_some(),
                "--kafka-sasl-mechanism / KAFKA_SASL_MECHANISM",
            ),
            (
                a.kafka_username.is_some(),
                "--kafka-username / KAFKA_USERNAME",
            ),
            (
                secrets.kafka_password.is_some(),
                "--kafka-password / KAFKA_PASSWORD",
            ),
        ] {
            if given {
                return Err(bad(
                    setting,
                    "only in the distributed mode (PostgreSQL, Redis, Kafka)",
                ));
            }
        }
        if secrets.database_url.is_some() && sqlite.is_none() {
            check_database_url(secrets.database_url.as_deref().unwrap_or_default())?;
            return Err(bad(
                "REDIS_URL, KAFKA_BROKERS",
                "missing: PostgreSQL is the distributed mode's store and needs Redis and \
                 Kafka beside it; unset DATABASE_URL (or give sqlite://FILE) for the \
                 embedded mode",
            ));
        }
        if a.role != Role::All {
            return Err(bad(
                "--role",
                format!(
                    "{} needs the distributed services (DATABASE_URL, REDIS_URL, \
                     KAFKA_BROKERS); without them only `--role all` runs (embedded mode)",
                    match a.role {
                        Role::Gateway => "gateway",
                        _ => "consumer",
                    }
                ),
            ));
        }
        if sqlite.is_some() && a.data_dir.is_some() {
            return Err(bad(
                "--data-dir / DATA_DIR",
                "give either a data directory or a sqlite:// database URL, not both",
            ));
        }
        let database = match sqlite {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(bad(
                    "--database-url / DATABASE_URL",
                    "sqlite:// needs a file path",
                ))
            }
            Some(p) => p,
            None => a
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("."))
                .join(DEFAULT_DB_FILE),
        };
        return Ok(Backend::Embedded { database });
    }
    if sqlite.is_some() {
        return Err(bad(
            "--database-url / DATABASE_URL",
            "a SQLite database runs only in the embedded mode, without REDIS_URL and \
             KAFKA_BROKERS; the distributed mode needs postgres://",
        ));
    }
    let missing: Vec<&str> = [
        (secrets.database_url.is_none(), "DATABASE_URL"),
        (no_redis, "REDIS_URL"),
        (a.kafka_brokers.is_none(), "KAFKA_BROKERS"),
    ]
    .iter()
    .filter(|(m, _)| *m)
    .map(|(_, n)| *n)
    .collect();
    if !missing.is_empty() {
        return Err(bad(
            "DATABASE_URL, REDIS_URL, KAFKA_BROKERS",
            format!(
                "{} missing: the distributed mode needs all three (or none of them for the \
                 embedded mode)",
                missing.join(", ")
            ),
        ));
    }
    let database = pg_target(
        secrets.database_url.as_deref().unwrap_or_default(),
        a.database_ca_file.as_deref(),
    )?;
    let cluster = match &secrets.redis_cluster_nodes {
        Some(nodes) => parse_redis_cluster(nodes)?,
        None => Vec::new(),
    };
    let redis_url = match cluster.first() {
        Some(first) => first.clone(),
        None => {
            let url = secrets.redis_url.clone().unwrap_or_default();
            check_redis_url(&url)?;
            url
        }
    };
    let redis = RedisTarget {
        ca: match &a.redis_ca_file {
            None => None,
            Some(_) if !redis_url.starts_with("rediss://") => {
                return Err(bad(
                    "--redis-ca-file / REDIS_CA_FILE",
                    "needs a rediss:// (TLS) Redis URL",
                ))
            }
            Some(p) => Some(
                CaFile::read(p)
                    .map_err(|e| bad("--redis-ca-file / REDIS_CA_FILE", e.to_string()))?,
            ),
        },
        url: redis_url,
        cluster,
    };
    let kafka_brokers = parse_brokers(a.kafka_brokers.as_deref().unwrap_or_default())?;
    if a.kafka_topic.is_empty()
        || a.kafka_topic.len() > 249
        || !a
            .kafka_topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad(
            "--kafka-topic / KAFKA_TOPIC",
            "1 to 249 characters of [a-zA-Z0-9._-]",
        ));
    }
    if !(1..=1024).contains(&a.kafka_partitions) {
        return Err(bad("--kafka-partitions / KAFKA_PARTITIONS", "1 to 1024"));
    }
    if a.kafka_replication_factor
        .is_some_and(|r| !(1..=32).contains(&r))
    {
        return Err(bad(
            "--kafka-replication-factor / KAFKA_REPLICATION_FACTOR",
            "1 to 32",
        ));
    }
    let kafka_security = kafka_security(a, secrets.kafka_password.as_deref())?;
    if a.redis_prefix.is_empty() || a.redis_prefix.contains(char::is_whitespace) {
        return Err(bad(
            "--redis-prefix / REDIS_PREFIX",
            "non-empty, no whitespace",
        ));
    }
    if redis.is_cluster() && a.redis_prefix.contains(['{', '}']) {
        return Err(bad(
            "--redis-prefix / REDIS_PREFIX",
            "no braces with a Redis Cluster (they choose a key's slot)",
        ));
    }
    Ok(Backend::Distributed(Box::new(Services {
        database,
        redis,
        redis_prefix: a.redis_prefix.clone(),
        kafka_brokers,
        kafka_topic: a.kafka_topic.clone(),
        kafka_partitions: a.kafka_partitions,
        kafka_replication_factor: a.kafka_replication_factor,
        kafka_security,
        kafka_compression: match a.kafka_compression {
            KafkaCompression::None => Compression::None,
            KafkaCompression::Gzip => Compression::Gzip,
            KafkaCompression::Snappy => Compression::Snappy,
            KafkaCompression::Lz4 => Compression::Lz4,
            KafkaCompression::Zstd => Compression::Zstd,
        },
        relay_linger: Duration::from_millis(a.relay_linger_ms),
    })))
}

/// TLS (with `--kafka-tls`, a CA file or a client certificate) and SASL (a mechanism, a
/// user name and a password, all three or none) to Kafka.
fn kafka_security(a: &ServeArgs, password: Option<&str>) -> Result<KafkaSecurity, ConfigError> {
    const CA: &str = "--kafka-ca-file / KAFKA_CA_FILE";
    let ca = a
        .kafka_ca_file
        .as_deref()
        .map(CaFile::read)
        .transpose()
        .map_err(|e| bad(CA, e.to_string()))?;
    let client = match (&a.kafka_client_cert, &a.kafka_client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        (Some(_), None) => return Err(bad("--kafka-client-key / KAFKA_CLIENT_KEY", "missing")),
        (None, Some(_)) => return Err(bad("--kafka-client-cert / KAFKA_CLIENT_CERT", "missing")),
    };
    let tls = if a.kafka_tls || ca.is_some() || client.is_some() {
        Some(
            crate::log::kafka::tls_config(ca.as_ref(), client).map_err(|e| match e {
                KafkaTlsError::Roots(e) => bad(CA, e.to_string()),
                e @ KafkaTlsError::ClientCert { .. } => {
                    bad("--kafka-client-cert / KAFKA_CLIENT_CERT", e.to_string())
                }
                e @ KafkaTlsError::ClientKey { .. } => {
                    bad("--kafka-client-key / KAFKA_CLIENT_KEY", e.to_string())
                }
            })?,
        )
    } else {
        None
    };
    let sasl = match (a.kafka_sasl_mechanism, &a.kafka_username, password) {
        (None, None, None) => None,
        (Some(m), Some(user), Some(password)) => Some(Sasl {
            mechanism: match m {
                KafkaSaslMechanism::Plain => SaslMechanism::Plain,
                KafkaSaslMechanism::ScramSha256 => SaslMechanism::ScramSha256,
                KafkaSaslMechanism::ScramSha512 => SaslMechanism::ScramSha512,
            },
            username: user.clone(),
            password: password.to_owned(),
        }),
        (None, _, _) => {
            return Err(bad(
                "--kafka-sasl-mechanism / KAFKA_SASL_MECHANISM",
                "missing: a Kafka user name or password needs a mechanism (PLAIN, \
                 SCRAM-SHA-256, SCRAM-SHA-512)",
            ))
        }
        (Some(_), None, _) => {
            return Err(bad(
                "--kafka-username / KAFKA_USERNAME",
                "missing: --kafka-sasl-mechanism needs a user name",
            ))
        }
        (Some(_), Some(_), None) => {
            return Err(bad(
                "--kafka-password / KAFKA_PASSWORD",
                "missing: --kafka-sasl-mechanism needs a password (or KAFKA_PASSWORD_FILE)",
            ))
        }
    };
    Ok(KafkaSecurity { tls, sasl })
}

/// The file of a `sqlite://FILE` (or `sqlite:FILE`) URL.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(PathBuf::from)
}

pub fn check_database_url(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(bad(
            "--database-url / DATABASE_URL",
            "expected postgres://user:password@host:port/database (or sqlite://FILE)",
        ))
    }
}

fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    crate::bus::check_redis_url(url).map_err(|e| bad("--redis-url / REDIS_URL", e))
}

/// `redis://h:7000,redis://h:7001` → the seed URLs: each a Redis URL, all `redis://` or
/// all `rediss://`, with the same credentials (the cluster client takes one set).
fn parse_redis_cluster(s: &str) -> Result<Vec<String>, ConfigError> {
    let nodes: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let Some(first) = nodes.first() else {
        return Err(bad(REDIS_CLUSTER, "empty"));
    };
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_owned());
    let credentials = |u: &str| {
        u.split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
            .and_then(|authority| authority.rsplit_once('@'))
            .map(|(userinfo, _)| userinfo.to_owned())
    };
    for n in &nodes {
        if !matches!(scheme(n).as_deref(), Some("redis" | "rediss")) {
            return Err(bad(
                REDIS_CLUSTER,
                format!(
                    "{} is not a redis:// or rediss:// URL",
                    crate::config::redact(n)
                ),
            ));
        }
        crate::bus::check_redis_url(n).map_err(|e| bad(REDIS_CLUSTER, e))?;
        if scheme(n) != scheme(first) {
            return Err(bad(
                REDIS_CLUSTER,
                "all nodes redis:// or all rediss://, not both",
            ));
        }
        if credentials(n) != credentials(first) {
            return Err(bad(
                REDIS_CLUSTER,
                "the same user and password on every node",
            ));
        }
    }
    Ok(nodes)
}

fn parse_brokers(s: &str) -> Result<Vec<String>, ConfigError> {
    let brokers: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect();
    if brokers.is_empty() {
        return Err(bad("--kafka-brokers / KAFKA_BROKERS", "empty"));
    }
    for b in &brokers {
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(bad(
                "--kafka-brokers / KAFKA_BROKERS",
                format!("{b:?} is not host:port"),
            ));
        }
    }
    Ok(brokers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> Box<ServeArgs> {
        let mut v = vec!["chat", "serve"];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).unwrap().command {
            Command::Serve(a) => a,
            _ => unreachable!(),
        }
    }

    const OK: [&str; 8] = [
        "--database-url",
        "postgres://u:p@h/db",
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--kafka-brokers",
        "127.0.0.1:9092",
        "--jwt-secret",
        "0123456789abcdef0123456789abcdef",
    ];

    #[test]
    fn accepts_a_complete_setup() {
        let c = Config::from_args(&args(&OK)).unwrap();
        let Backend::Distributed(s) = &c.backend else {
            panic!("not distributed: {c:?}")
        };
        assert_eq!(s.kafka_brokers, vec!["127.0.0.1:9092"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains(":p@"), "{shown}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }

    #[test]
    fn names_the_bad_setting() {
        let mut v = OK.to_vec();
        v[5] = "nohost";
        let e = Config::from_args(&args(&v)).unwrap_err();
        assert!(e.to_string().contains("KAFKA_BROKERS"), "{e}");
        let mut v = OK.to_vec();
        v[7] = "short";
        let e = Config::from_args(&args(&v)).unwrap_err();
        assert!(e.to_string().contains("JWT_SECRET"), "{e}");
        // (Not by omission: the test environment may set DATABASE_URL.)
        let mut v = OK.to_vec();
        v[1] = "mysql://u:p@h/db";
        let e = Config::from_args(&args(&v)).unwrap_err();
        assert!(e.to_string().contains("DATABASE_URL"), "{e}");
    }

    /// Parses with the service variables of the test environment cleared.
    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["chat", "serve"];
        v.extend_from_slice(extra);
        let mut cmd = <Cli as clap::CommandFactory>::command();
        // Flags given here win; unset env vars are not read at all for these ids.
        for id in [
            "database_url",
            "database_url_file",
            "database_ca_file",
            "redis_url",
            "redis_url_file",
            "redis_cluster_nodes",
            "redis_cluster_nodes_file",
            "redis_ca_file",
            "kafka_brokers",
            "kafka_tls",
            "kafka_ca_file",
            "kafka_client_cert",
            "kafka_client_key",
            "kafka_sasl_mechanism",
            "kafka_username",
            "kafka_password",
            "kafka_password_file",
            "jwt_secret",
            "jwt_secret_file",
            "data_dir",
        ] {
            cmd = cmd.mut_subcommand("serve", |s| s.mut_arg(id, |a| a.env(None::<&str>)));
        }
        let m = cmd.try_get_matches_from(v).unwrap();
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        match cli.command {
            Command::Serve(a) => Config::from_args(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn no_services_is_the_embedded_mode() {
        let c = parse(&[]).unwrap();
        assert!(
            matches!(&c.backend, Backend::Embedded { database } if database == &PathBuf::from("./chat.db")),
            "{c:?}"
        );
        assert!(c.jwt_secret.is_none());
        let c = parse(&["--data-dir", "/var/lib/chat"]).unwrap();
        assert!(
            matches!(&c.backend, Backend::Embedded { database } if database == &PathBuf::from("/var/lib/chat/chat.db"))
        );
        let c = parse(&["--database-url", "sqlite:///tmp/x.db"]).unwrap();
        assert!(
            matches!(&c.backend, Backend::Embedded { database } if database == &PathBuf::from("/tmp/x.db"))
        );
    }

    #[test]
    fn refuses_mixed_setups_and_split_roles_without_services() {
        let e = parse(&["--role", "gateway"]).unwrap_err();
        assert!(e.to_string().contains("--role"), "{e}");
        let e = parse(&["--database-url", "postgres://u:p@h/db"]).unwrap_err();
        assert!(e.to_string().contains("REDIS_URL"), "{e}");
        let e = parse(&["--redis-url", "redis://h:6379"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("DATABASE_URL, KAFKA_BROKERS missing"),
            "{e}"
        );
        let e = parse(&[
            "--database-url",
            "sqlite://x.db",
            "--redis-url",
            "redis://h",
            "--kafka-brokers",
            "h:9092",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("SQLite"), "{e}");
        let e = parse(&["--database-url", "sqlite://x.db", "--data-dir", "d"]).unwrap_err();
        assert!(e.to_string().contains("DATA_DIR"), "{e}");
    }

    #[test]
    fn a_redis_cluster_instead_of_one_redis() {
        let base = [
            "--database-url",
            "postgres://u:p@h/db",
            "--kafka-brokers",
            "h:9092",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        let c = with(&[
            "--redis-cluster-nodes",
            "redis://u:pw@h:7000, redis://u:pw@h:7001,",
        ])
        .unwrap();
        let Backend::Distributed(s) = &c.backend else {
            panic!("not distributed: {c:?}")
        };
        assert!(s.redis.is_cluster());
        assert_eq!(
            s.redis.cluster,
            ["redis://u:pw@h:7000", "redis://u:pw@h:7001"]
        );
        assert_eq!(s.redis.url, "redis://u:pw@h:7000");
        assert!(!format!("{c:?}").contains(":pw@"), "{c:?}");
        for (extra, says) in [
            (
                &[
                    "--redis-cluster-nodes",
                    "redis://h:7000",
                    "--redis-url",
                    "redis://h",
                ][..],
                "not both",
            ),
            (&["--redis-cluster-nodes", " , "][..], "empty"),
            (&["--redis-cluster-nodes", "h:7000"][..], "not a redis://"),
            (
                &["--redis-cluster-nodes", "redis://h:7000,rediss://h:7001"][..],
                "all rediss://",
            ),
            (
                &[
                    "--redis-cluster-nodes",
                    "redis://a:x@h:7000,redis://a:y@h:7001",
                ][..],
                "same user and password",
            ),
            (
                &[
                    "--redis-cluster-nodes",
                    "redis://h:7000",
                    "--redis-ca-file",
                    "/etc/hostname",
                ][..],
                "rediss://",
            ),
            (
                &[
                    "--redis-cluster-nodes",
                    "redis://h:7000",
                    "--redis-prefix",
                    "a{b}",
                ][..],
                "braces",
            ),
        ] {
            let e = with(extra).unwrap_err().to_string();
            assert!(e.contains(says), "{extra:?}: {e}");
        }
        // Alone it is still a Redis: the distributed mode, naming what is missing.
        let e = parse(&["--redis-cluster-nodes", "redis://h:7000"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("DATABASE_URL, KAFKA_BROKERS missing"),
            "{e}"
        );
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = std::env::temp_dir().join(format!("chat-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let db = write("db", "postgres://u:filepass@h/db\n");
        let redis = write("redis", "redis://default:redispass@127.0.0.1:6379\r\n");
        let jwt = write("jwt", "0123456789abcdef0123456789abcdef-from-file\n");
        let c = parse(&[
            "--database-url-file",
            &db,
            "--redis-url-file",
            &redis,
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--jwt-secret-file",
            &jwt,
        ])
        .unwrap();
        let Backend::Distributed(s) = &c.backend else {
            panic!("not distributed")
        };
        assert_eq!(
            s.database.url(),
            "postgres://u:filepass@h/db?sslmode=disable"
        );
        assert_eq!(s.redis.url, "redis://default:redispass@127.0.0.1:6379");
        assert_eq!(
            c.jwt_secret.as_ref().map(|s| s.0.clone()),
            Some(b"0123456789abcdef0123456789abcdef-from-file".to_vec())
        );
        let shown = format!("{c:?}");
        for secret in ["filepass", "redispass", "from-file"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // Both forms at once, a missing file, an empty file: refused, naming the setting
        // and never the value.
        let e = parse(&["--jwt-secret", "x", "--jwt-secret-file", &jwt]).unwrap_err();
        assert!(
            e.to_string().contains("JWT_SECRET") && e.to_string().contains("both"),
            "{e}"
        );
        let e = parse(&["--database-url-file", "/nonexistent/db"]).unwrap_err();
        assert!(e.to_string().contains("DATABASE_URL"), "{e}");
        let empty = write("empty", "\n");
        let e = parse(&["--jwt-secret-file", &empty]).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kafka_tls_and_sasl_settings() {
        let with = |extra: &[&str]| {
            let mut v = OK.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        let security = |c: &Config| match &c.backend {
            Backend::Distributed(s) => s.kafka_security.clone(),
            _ => panic!("not distributed"),
        };
        let plain = security(&with(&[]).unwrap());
        assert!(plain.tls.is_none() && plain.sasl.is_none());
        // TLS with the system roots; SASL with each mechanism, case-insensitive.
        let c = with(&[
            "--kafka-tls",
            "--kafka-sasl-mechanism",
            "scram-sha-512",
            "--kafka-username",
            "chat",
            "--kafka-password",
            "kafka-pass-secret",
        ])
        .unwrap();
        let s = security(&c);
        assert!(s.tls.is_some());
        let sasl = s.sasl.expect("sasl");
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.username, "chat");
        assert!(!format!("{c:?}").contains("kafka-pass-secret"));
        // A CA file implies TLS; a bad one is named.
        let e = with(&["--kafka-ca-file", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(e.to_string().starts_with("--kafka-ca-file"), "{e}");
        // Half a SASL setting is refused, naming what is missing.
        let e = with(&["--kafka-username", "chat", "--kafka-password", "x"]).unwrap_err();
        assert!(e.to_string().contains("KAFKA_SASL_MECHANISM"), "{e}");
        let e = with(&[
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-username",
            "chat",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("KAFKA_PASSWORD"), "{e}");
        let e = with(&["--kafka-sasl-mechanism", "PLAIN", "--kafka-password", "x"]).unwrap_err();
        assert!(e.to_string().contains("KAFKA_USERNAME"), "{e}");
        // A client key that is not one.
        let e = with(&[
            "--kafka-client-cert",
            "/etc/hostname",
            "--kafka-client-key",
            "/etc/hostname",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("KAFKA_CLIENT_CERT"), "{e}");
        // Kafka settings without the services: the embedded mode refuses them.
        let e = parse(&["--kafka-tls"]).unwrap_err();
        assert!(e.to_string().contains("KAFKA_TLS"), "{e}");
        // The password from a file.
        let dir = std::env::temp_dir().join(format!("chat-kafka-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("kafka-password");
        std::fs::write(&f, "from-a-file\n").unwrap();
        let c = with(&[
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-256",
            "--kafka-username",
            "chat",
            "--kafka-password-file",
            f.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(security(&c).sasl.expect("sasl").password, "from-a-file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ca_files_need_the_services_they_are_for() {
        let mut v = OK.to_vec();
        v.extend(["--redis-ca-file", "/etc/hostname"]);
        let e = parse(&v).unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        let e = parse(&["--database-ca-file", "/etc/hostname"]).unwrap_err();
        assert!(e.to_string().contains("DATABASE_CA_FILE"), "{e}");
        let mut v = OK.to_vec();
        v[1] = "postgres://u:p@h/db?sslmode=verify-full";
        v.extend(["--database-ca-file", "/nonexistent/ca.pem"]);
        let e = parse(&v).unwrap_err();
        assert!(e.to_string().starts_with("--database-ca-file"), "{e}");
        let mut v = OK.to_vec();
        v[1] = "postgres://u:p@h/db?sslmode=verify-full";
        let c = parse(&v).unwrap();
        let Backend::Distributed(s) = &c.backend else {
            panic!("not distributed")
        };
        assert_eq!(s.database.mode, crate::tls::SslMode::Require);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
