//! Command line: `chat serve`, `chat migrate`. Every setting is a flag with an
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
    /// Maximum database connections of this process.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
    /// Seconds a graceful drain may take before the rest is cut off.
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 20)]
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL, or sqlite://FILE.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
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
