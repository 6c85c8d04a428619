//! Logging (tracing-subscriber: text or JSON, filtered by RUST_LOG) and metrics
//! (a Prometheus recorder rendered at /metrics).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

pub mod hops;

use crate::cli::LogFormat;

/// actix-http logs every request it cannot parse (a client's malformed HTTP) as an ERROR
/// (`stream error: request parse error: …`), so any client could fill the log with errors.
/// Its connection-level events are off unless RUST_LOG names `actix_http`.
const QUIET: [&str; 2] = [
    "actix_http::h1::dispatcher=off",
    "actix_http::h1::decoder=off",
];

pub fn init_logging(format: LogFormat) {
    let spec = std::env::var(crate::settings::env::RUST_LOG).unwrap_or_default();
    let mut filter = EnvFilter::try_new(if spec.trim().is_empty() {
        "info"
    } else {
        &spec
    })
    .unwrap_or_else(|_| EnvFilter::new("info"));
    if !spec.contains("actix_http") {
        for quiet in QUIET {
            if let Ok(d) = quiet.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the process-wide metrics recorder once and returns its handle.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ];
            // Batch sizes are counts, not seconds.
            let sizes = [
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::PRODUCE_BATCH.into()), &sizes)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::PERSIST_BATCH.into()), &sizes)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::FETCH_BATCH.into()), &sizes)
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Metric names, in one place.
pub mod names {
    pub const CONNECTIONS: &str = "chat_connections";
    pub const FRAMES_IN: &str = "chat_frames_in_total";
    pub const MESSAGES_SENT: &str = "chat_messages_sent_total";
    pub const MESSAGES_DELIVERED: &str = "chat_messages_delivered_total";
    pub const SEND_ERRORS: &str = "chat_send_errors_total";
    pub const SLOW_CLIENTS: &str = "chat_slow_clients_disconnected_total";
    pub const PRODUCE_SECONDS: &str = "chat_kafka_produce_seconds";
    /// Records per Kafka produce request (batched across the senders of a gateway).
    pub const PRODUCE_BATCH: &str = "chat_kafka_produce_batch_records";
    /// Records per Kafka fetch answer of a tailing reader group (all its partitions).
    pub const FETCH_BATCH: &str = "chat_kafka_fetch_batch_records";
    pub const SEND_TO_DELIVER_SECONDS: &str = "chat_send_to_deliver_seconds";
    pub const RELAYED: &str = "chat_relay_messages_total";
    pub const PERSISTED: &str = "chat_persisted_messages_total";
    pub const PERSIST_BATCH: &str = "chat_persist_batch_size";
    pub const CONSUMER_LAG: &str = "chat_consumer_lag";
    pub const PERSIST_ERRORS: &str = "chat_persist_errors_total";
    pub const PARTITIONS_OWNED: &str = "chat_consumer_partitions_owned";
}
