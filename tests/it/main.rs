//! Integration tests: the protocol against real processes, in the distributed mode (real
//! PostgreSQL, Redis and Kafka) and the embedded one (SQLite, no services). Run them with
//! `scripts/test.sh`, which starts the services.

mod harness;
mod rawws;

mod abuse;
mod compression;
mod conformance;
mod consumer;
mod coord;
mod delivery;
mod embedded;
mod events;
mod features;
mod governance;
mod hardening;
mod metrics;
mod moderation;
mod redis_cluster;
mod rooms_tokens;
mod sessions;
mod shutdown;
mod tls;
