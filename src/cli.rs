//! Command line: `chat serve`, `chat migrate`, `chat bench`. Every setting is a flag with an
//! environment fallback (12-factor); `config` turns them into a validated `Config`.

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
    /// Drive real WebSocket clients against running gateways and measure (benches/README.md).
    Bench(Box<BenchArgs>),
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
    /// Embedded mode: the directory of the SQLite database (chat.db) and the generated
    /// token secret (jwt-secret). Default: the current directory.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Redis URL (redis://host:port).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
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
    /// Secret that signs session tokens (HS256); at least 32 bytes, the same on every
    /// gateway. Embedded mode: generated and kept in the data directory if not given.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
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
    /// Seconds a graceful drain may take before the rest is cut off.
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 20)]
    pub drain_timeout_secs: u64,
    /// Threads that accept and serve HTTP and WebSocket connections (default: one per
    /// core). Each connection stays on one of them.
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
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// Named load shapes of `chat bench`; every number is overridable by a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// 1 room, 1 sender, 1000 readers (1001 connections), 50 sends/s.
    Fanout,
    /// 2000 connections in 200 rooms, every connection sends, 3000 sends/s in total.
    Chatty,
    /// 20000 idle subscribed connections held for the duration; RSS per connection (--pid).
    Connections,
    /// A burst of 50000 sends, then the time until PostgreSQL holds them, against a raw
    /// multi-row INSERT of the same rows (--database-url).
    Persist,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Load shape; the flags below override its numbers.
    #[arg(long, value_enum, default_value_t = Scenario::Chatty)]
    pub scenario: Scenario,
    /// Gateway base URL; repeat for several (connections are spread round-robin).
    #[arg(long = "gateway", default_value = "http://127.0.0.1:8080")]
    pub gateways: Vec<String>,
    /// WebSocket connections to open (in total, over all gateways).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Rooms; connection i subscribes to room i mod rooms.
    #[arg(long)]
    pub rooms: Option<usize>,
    /// How many of the connections send (the first ones, spread over the rooms).
    #[arg(long)]
    pub senders: Option<usize>,
    /// Registered users; connection i logs in as user i mod users.
    #[arg(long)]
    pub users: Option<usize>,
    /// Total sends per second over all senders, scheduled by the clock (open loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds measured (connections: seconds the idle connections are held).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of sending before the measurement starts (not recorded).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Bytes of each message body (at least the timestamp header, about 40).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Bind client sockets to 127.0.0.2 .. 127.0.0.(N+1), round-robin (more ephemeral ports);
    /// 0: let the kernel choose.
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds to wait after the last send for outstanding acks and deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// A server process to sample (CPU% from /proc/PID/stat, RSS from /proc/PID/status).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compare two JSON reports side by side (B/A ratios) instead of running.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<PathBuf>>,
    /// persist: PostgreSQL of the gateways and consumer (the messages table is polled).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// persist: rows per multi-row INSERT of the raw ceiling.
    #[arg(long, default_value_t = 1000)]
    pub persist_chunk: usize,
    /// persist: seconds to wait for PostgreSQL to hold every acked message.
    #[arg(long, default_value_t = 300.0)]
    pub persist_timeout: f64,
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

    #[test]
    fn bench_takes_repeated_gateways_and_a_compare_pair() {
        let cli = Cli::try_parse_from([
            "chat",
            "bench",
            "--scenario",
            "fanout",
            "--gateway",
            "http://127.0.0.1:1",
            "--gateway",
            "http://127.0.0.1:2",
            "--pid",
            "7",
        ])
        .unwrap();
        let Command::Bench(a) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(a.scenario, Scenario::Fanout);
        assert_eq!(a.gateways.len(), 2);
        assert_eq!(a.pids, vec![7]);
        let cli = Cli::try_parse_from(["chat", "bench", "--compare", "a.json", "b.json"]).unwrap();
        let Command::Bench(a) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(a.compare.map(|c| c.len()), Some(2));
    }
}
