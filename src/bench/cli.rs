//! `chat-bench`'s command line (src/bin/chat-bench.rs): a scenario and the flags that
//! override its numbers. No environment fallbacks: a bench started in a server's pod must
//! not pick up the server's settings (above all its `DATABASE_URL`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Named load shapes; every number is overridable by a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// 1 room, 1 sender, 1000 readers (1001 connections), 50 sends/s.
    Fanout,
    /// 2000 connections in 200 rooms, every connection sends, 3000 sends/s in total.
    Chatty,
    /// As chatty, but of the sends 80% messages, 10% reactions, 5% edits of the sender's own
    /// messages and 5% replies; latencies and losses per kind.
    Mixed,
    /// 20000 idle subscribed connections held for the duration; RSS per connection (--pid).
    Connections,
    /// A burst of 50000 sends, then the time until PostgreSQL holds them, against a raw
    /// multi-row INSERT of the same rows (--database-url).
    Persist,
}

#[derive(Debug, Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Drive real WebSocket clients against running chat gateways and measure \
             (benches/README.md)"
)]
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
    /// A server process sampled together with all its descendants, as one (PostgreSQL: the
    /// postmaster, its backends and workers). Its CPU includes descendants that exited
    /// meanwhile once reaped; its RSS is the sum over the processes (shared pages counted
    /// in each).
    #[arg(long = "pid-tree")]
    pub pid_trees: Vec<u32>,
    /// A further `/metrics` to read before and after the measured window, beside every
    /// gateway's (a consumer's, e.g. http://127.0.0.1:8181/metrics); repeat for several.
    /// Per-hop latencies and requests per message come from their differences.
    #[arg(long = "metrics-url", value_name = "URL")]
    pub metrics_urls: Vec<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compare two JSON reports side by side (B/A ratios) instead of running.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<PathBuf>>,
    /// persist: PostgreSQL of the gateways and consumer (its messages table is polled, a
    /// scratch table created and dropped). Only a database of the bench's own: one it marked
    /// (benches/cluster.sh creates it marked) or a migrated one where no table holds a row
    /// yet (then marked); any other is refused. Deliberately no DATABASE_URL fallback.
    #[arg(long)]
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
        BenchArgs::command().debug_assert();
    }

    #[test]
    fn takes_repeated_gateways_and_a_compare_pair() {
        let a = BenchArgs::try_parse_from([
            "chat-bench",
            "--scenario",
            "fanout",
            "--gateway",
            "http://127.0.0.1:1",
            "--gateway",
            "http://127.0.0.1:2",
            "--pid",
            "7",
            "--metrics-url",
            "http://127.0.0.1:8181/metrics",
            "--metrics-url",
            "http://127.0.0.1:8182/metrics",
        ])
        .unwrap();
        assert_eq!(a.metrics_urls.len(), 2);
        assert_eq!(a.scenario, Scenario::Fanout);
        assert_eq!(a.gateways.len(), 2);
        assert_eq!(a.pids, vec![7]);
        let a = BenchArgs::try_parse_from(["chat-bench", "--compare", "a.json", "b.json"]).unwrap();
        assert_eq!(a.compare.map(|c| c.len()), Some(2));
    }

    #[test]
    fn reads_no_environment() {
        // Above all not DATABASE_URL: in a server's pod that is the production database.
        let cmd = BenchArgs::command();
        let with_env: Vec<_> = cmd
            .get_arguments()
            .filter(|a| a.get_env().is_some())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(
            with_env.is_empty(),
            "flags with an env fallback: {with_env:?}"
        );
    }
}
