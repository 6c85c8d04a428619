//! Command line: `chat serve`, `chat migrate`, `chat config`. Every setting is a flag with an
//! environment fallback (12-factor); `config` turns them into a validated `Config`;
//! `chat config --list` prints them all (`settings`). (The load generator is its own binary,
//! `chat-bench`: `bench::cli`.)

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "chat",
    version,
    about = "A horizontally scalable real-time chat server"
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: gateway, consumer, or both.
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit.
    Migrate(MigrateArgs),
    /// List every setting (flag, environment variable, default), or check a command line
    /// and the environment without starting anything.
    Config(ConfigArgs),
    /// Server administrators: grant, revoke, list (against the configured store).
    Admin(AdminArgs),
}

/// `chat admin grant|revoke USERNAME`, `chat admin list`: against the store the server
/// uses (PostgreSQL with --database-url, else the embedded database in --data-dir).
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub action: AdminAction,
    /// PostgreSQL URL, or sqlite://FILE; none: `<data dir>/chat.db`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// File holding the database URL, instead of --database-url.
    #[arg(long, env = "DATABASE_URL_FILE", global = true)]
    pub database_url_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed PostgreSQL's certificate.
    #[arg(long, env = "DATABASE_CA_FILE", global = true)]
    pub database_ca_file: Option<PathBuf>,
    /// The embedded mode's data directory (default: the current directory).
    #[arg(long, env = "DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminAction {
    /// Make the user a server administrator.
    Grant { username: String },
    /// Take it back.
    Revoke { username: String },
    /// Print the server administrators, one a line.
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// HTTP API, WebSocket sessions, static client.
    Gateway,
    /// Kafka → Redis relay and Kafka → PostgreSQL persistence.
    Consumer,
    /// Both in one process.
    All,
}

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Registration {
    /// Anyone (within the per-address limit).
    Open,
    /// Nobody: `POST /api/register` answers 403 `registration_closed`.
    Closed,
}

/// Codecs of produced Kafka record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KafkaCompression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// SASL mechanisms to Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KafkaSaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which subsystems to run.
    #[arg(long, value_enum, env = "CHAT_ROLE", default_value_t = Role::All)]
    pub role: Role,
    /// Address to listen on (HTTP, WebSocket, probes, metrics).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PostgreSQL URL (postgres://user:password@host:port/db), or sqlite://FILE for the
    /// embedded mode. Without DATABASE_URL, REDIS_URL and KAFKA_BROKERS, `chat serve` runs
    /// embedded: SQLite in --data-dir, in-process fan-out, role `all`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the database URL (Kubernetes/Docker secrets; trailing newline trimmed),
    /// instead of --database-url.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed PostgreSQL's certificate, instead of the system
    /// trust store; implies sslmode=require when the URL names none.
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Embedded mode: the directory of the SQLite database (chat.db) and the generated
    /// token secret (jwt-secret). Default: the current directory.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Redis URL (redis://host:port, or rediss://user:password@host:port for TLS).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// File holding the Redis URL (Kubernetes/Docker secrets; trailing newline trimmed),
    /// instead of --redis-url.
    #[arg(long, env = "REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,
    /// A Redis Cluster instead of one Redis: some of its nodes, comma separated
    /// (redis://host:7000,redis://host:7001; rediss://user:password@host:port for TLS, the
    /// same credentials on each). Not with --redis-url.
    #[arg(long, env = "REDIS_CLUSTER_NODES", hide_env_values = true)]
    pub redis_cluster_nodes: Option<String>,
    /// File holding the Redis Cluster nodes (Kubernetes/Docker secrets; trailing newline
    /// trimmed), instead of --redis-cluster-nodes.
    #[arg(long, env = "REDIS_CLUSTER_NODES_FILE")]
    pub redis_cluster_nodes_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed Redis's certificate (rediss://), instead of the
    /// system trust store.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key and channel, so deployments can share a Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "chat")]
    pub redis_prefix: String,
    /// Kafka bootstrap brokers, comma separated (host:port,host:port).
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic holding the messages.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "chat.messages")]
    pub kafka_topic: String,
    /// Partitions of the topic when it is created (an existing topic keeps its own).
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 8)]
    pub kafka_partitions: i32,
    /// Copies of each partition for a topic created at start (an existing topic keeps
    /// its own). Default: as many as the cluster has brokers, at most 3.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR")]
    pub kafka_replication_factor: Option<i16>,
    /// How the record batches chat produces are compressed (reading takes every codec).
    #[arg(long, value_enum, env = "KAFKA_COMPRESSION", default_value_t = KafkaCompression::None)]
    pub kafka_compression: KafkaCompression,
    /// A consumer's relay: after a fetch that brought records, the next one goes no
    /// sooner than this many milliseconds after it (0: at once). Fewer, fuller fetches
    /// and bus publishes for less CPU, at up to this much more delivery latency.
    #[arg(long, env = "RELAY_LINGER_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=100))]
    pub relay_linger_ms: u64,
    /// TLS to every Kafka broker (bootstrap and leaders), verified against the system
    /// trust store or --kafka-ca-file.
    #[arg(long, env = "KAFKA_TLS")]
    pub kafka_tls: bool,
    /// PEM file of the CA(s) that signed the brokers' certificates, instead of the system
    /// trust store; implies --kafka-tls.
    #[arg(long, env = "KAFKA_CA_FILE")]
    pub kafka_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS to Kafka, with --kafka-client-key;
    /// implies --kafka-tls.
    #[arg(long, env = "KAFKA_CLIENT_CERT", requires = "kafka_client_key")]
    pub kafka_client_cert: Option<PathBuf>,
    /// PEM private key of --kafka-client-cert.
    #[arg(long, env = "KAFKA_CLIENT_KEY", requires = "kafka_client_cert")]
    pub kafka_client_key: Option<PathBuf>,
    /// SASL mechanism to authenticate to Kafka with (needs --kafka-username and a
    /// password).
    #[arg(long, value_enum, ignore_case = true, env = "KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<KafkaSaslMechanism>,
    /// SASL user name.
    #[arg(long, env = "KAFKA_USERNAME")]
    pub kafka_username: Option<String>,
    /// SASL password.
    #[arg(long, env = "KAFKA_PASSWORD", hide_env_values = true)]
    pub kafka_password: Option<String>,
    /// File holding the SASL password (Kubernetes/Docker secrets; trailing newline
    /// trimmed), instead of --kafka-password.
    #[arg(long, env = "KAFKA_PASSWORD_FILE")]
    pub kafka_password_file: Option<PathBuf>,
    /// Secret that signs session tokens (HS256); at least 32 bytes, the same on every
    /// gateway. Embedded mode: generated and kept in the data directory if not given.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the token secret (Kubernetes/Docker secrets; trailing newline trimmed),
    /// instead of --jwt-secret.
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// How long a session token is valid, in hours.
    #[arg(long, env = "TOKEN_TTL_HOURS", default_value_t = 24 * 7)]
    pub token_ttl_hours: u64,
    /// Do not run the database migrations at start.
    #[arg(long, env = "NO_MIGRATE")]
    pub no_migrate: bool,
    /// Origins allowed to open a WebSocket, comma separated (besides the gateway's own).
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Serve the browser client from this directory instead of the copy built in.
    #[arg(long, env = "STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// Sends per second allowed on one connection (then `rate_limited`).
    #[arg(long, env = "SEND_RATE_PER_SEC", default_value_t = 20)]
    pub send_rate_per_sec: u32,
    /// Burst of sends allowed above the rate.
    #[arg(long, env = "SEND_RATE_BURST", default_value_t = 40)]
    pub send_rate_burst: u32,
    /// MiB that all WebSocket connections of this gateway may hold queued together (their
    /// outgoing queues and held-back live messages); past it, connections with something
    /// queued are cut off as too slow and backlog replays wait.
    #[arg(long, env = "MAX_QUEUED_MIB", default_value_t = 256)]
    pub max_queued_mib: usize,
    /// WebSocket connections one user may hold on one gateway (then close 1008).
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,
    /// Rooms one user may create per minute on one gateway, also the burst (then 429
    /// `rate_limited`).
    #[arg(long, env = "ROOM_CREATE_PER_MINUTE", default_value_t = 10)]
    pub room_create_per_minute: u32,
    /// Rooms one user may create in all (then 403 `too_many_rooms`); 0: no cap.
    #[arg(long, env = "MAX_ROOMS_PER_USER", default_value_t = 200)]
    pub max_rooms_per_user: u32,
    /// Membership changes one user may make per minute on one gateway, also the burst:
    /// join, leave, invite, accept an invite, join by link, create a link (then 429
    /// `rate_limited`).
    #[arg(long, env = "MEMBERSHIP_CHANGES_PER_MINUTE", default_value_t = 30)]
    pub membership_changes_per_minute: u32,
    /// Members of a group DM at most, its creator included (3 or more; then
    /// `group_size`/`group_full`).
    #[arg(long, env = "MAX_GROUP_MEMBERS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(3..=1000))]
    pub max_group_members: u32,
    /// How long after sending its author may edit a message, in seconds (then
    /// `edit_window_closed`); 0: always.
    #[arg(long, env = "EDIT_WINDOW_SECS", default_value_t = 0)]
    pub edit_window_secs: u64,
    /// Edits of one message, at most (then `too_many_edits`).
    #[arg(long, env = "MAX_EDITS_PER_MESSAGE", default_value_t = 50)]
    pub max_edits_per_message: i64,
    /// Different emoji on one message, at most (then `too_many_reactions`).
    #[arg(long, env = "MAX_EMOJI_PER_MESSAGE", default_value_t = 20)]
    pub max_emoji_per_message: i64,
    /// Reactions of one user on one message, at most (then `too_many_reactions`).
    #[arg(long, env = "MAX_REACTIONS_PER_USER", default_value_t = 10)]
    pub max_reactions_per_user: i64,
    /// Login attempts per minute for one account name, from any address (then 429
    /// `rate_limited` with Retry-After).
    #[arg(long, env = "LOGIN_RATE_PER_ACCOUNT", default_value_t = 5)]
    pub login_rate_per_account: u32,
    /// Burst of login attempts for one account name above its rate.
    #[arg(long, env = "LOGIN_BURST_PER_ACCOUNT", default_value_t = 10)]
    pub login_burst_per_account: u32,
    /// Login attempts per minute from one client address (IPv6: one /64).
    #[arg(long, env = "LOGIN_RATE_PER_ADDRESS", default_value_t = 20)]
    pub login_rate_per_address: u32,
    /// Burst of login attempts from one client address above its rate.
    #[arg(long, env = "LOGIN_BURST_PER_ADDRESS", default_value_t = 30)]
    pub login_burst_per_address: u32,
    /// Registrations per minute from one client address (IPv6: one /64).
    #[arg(long, env = "REGISTER_RATE_PER_ADDRESS", default_value_t = 5)]
    pub register_rate_per_address: u32,
    /// Burst of registrations from one client address above its rate.
    #[arg(long, env = "REGISTER_BURST_PER_ADDRESS", default_value_t = 10)]
    pub register_burst_per_address: u32,
    /// Take the client address from the last entry of `X-Forwarded-For` (the one the proxy
    /// in front appended). Only behind a proxy that sets it: otherwise clients choose
    /// their own address and escape the per-address limits.
    #[arg(long, env = "TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Whether anyone may register (`closed`: `POST /api/register` answers 403).
    #[arg(long, value_enum, env = "REGISTRATION", default_value_t = Registration::Open)]
    pub registration: Registration,
    /// Password hashes (logins, registrations) that may wait for a hashing slot (one slot
    /// per core); more are refused at once with 503 `busy`. Default: 4 per core.
    #[arg(long, env = "HASH_QUEUE")]
    pub hash_queue: Option<usize>,
    /// Maximum database connections of this process.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
    /// Seconds a graceful drain may take, in all: every wait of the drain is a share of it
    /// (shutdown.rs), and the process exits by then.
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 20)]
    pub drain_timeout_secs: u64,
    /// Threads that accept and serve HTTP and WebSocket connections (default: one per
    /// core; one for `--role consumer`, which serves only metrics and health checks).
    /// Each connection stays on one of them.
    #[arg(long, env = "HTTP_WORKERS")]
    pub http_workers: Option<std::num::NonZeroUsize>,
    /// Threads of the runtime that runs the bus, the log and the consumer (default: one
    /// per core). Fewer threads than cores leave the others to the co-located services.
    #[arg(long, env = "RUNTIME_THREADS")]
    pub runtime_threads: Option<std::num::NonZeroUsize>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL, or sqlite://FILE.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "database_url_file"
    )]
    pub database_url: Option<String>,
    /// File holding the database URL (Kubernetes/Docker secrets; trailing newline trimmed),
    /// instead of --database-url.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed PostgreSQL's certificate, instead of the system
    /// trust store; implies sslmode=require when the URL names none.
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
}

/// `chat config`: what the binary accepts, read by tools (scripts/check_deploy.py).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["list", "check"])))]
pub struct ConfigArgs {
    /// Print every setting, one a line: scope, flag, environment variable, kind, values,
    /// default, help (tab separated), or JSON with --format json.
    #[arg(long)]
    pub list: bool,
    /// Output format of --list.
    #[arg(long, value_enum, default_value_t = ListFormat::Text)]
    pub format: ListFormat,
    /// Parse the command after `--` (e.g. `-- serve --role gateway`) with the current
    /// environment and validate it as a start would, without connecting to anything.
    #[arg(long)]
    pub check: bool,
    /// The command line to check (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Tab separated, one setting a line.
    Text,
    /// A JSON array of objects.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn role_defaults_to_all() {
        let cli = Cli::try_parse_from(["chat", "serve"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(a.role, Role::All);
        assert_eq!(a.kafka_topic, "chat.messages");
    }
}
