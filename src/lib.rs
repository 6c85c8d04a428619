//! `chat`: a horizontally scalable real-time chat server. ARCHITECTURE.md has the map.
//!
//! - `protocol`, `model`: the wire frames and the domain types both roles share.
//! - `store` (PostgreSQL / SQLite), `bus` (Redis pub/sub / in-process), `log` (Kafka /
//!   the SQLite table), `coord` (Redis / in memory: send claims, leases, relay
//!   positions): the four seams, each a trait with a distributed and an embedded
//!   implementation.
//! - `gateway`: WebSocket sessions, hub, send path, recovery; `http`: the REST API.
//! - `consumer`: relay (log → bus) and persist (log → store) per partition.
//! - `app`: wiring and drain; `shutdown`: the token tree, task tracker and deadline of the
//!   drain; `cli`/`config`: settings, `settings`: the list of them all
//!   (`chat config --list`); `auth`; `telemetry`.
//! - `bench` (cargo feature `bench`, off by default): the `chat-bench` binary, a load
//!   generator speaking the public protocol; not part of the server build.

pub mod admin;
pub mod app;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod bus;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod coord;
pub mod events;
pub mod gateway;
pub mod governance;
pub mod http;
pub mod log;
pub mod model;
pub mod protocol;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
