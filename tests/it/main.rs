//! Integration tests against real PostgreSQL, Redis and Kafka. Run them with
//! `scripts/test.sh`, which starts the services.

mod harness;

mod consumer;
mod delivery;
mod sessions;
