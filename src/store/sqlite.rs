//! SQLite store for the embedded mode, through diesel-async's `SyncConnectionWrapper`
//! (each query runs on tokio's blocking pool) and a deadpool pool. The queries are the
//! shared ones in queries.rs; this file holds what is SQLite's own: the connection
//! settings, the UUID-as-text column type, error classification, and the messages table
//! as the durable log ([`SqliteLog`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use tokio::sync::watch;

use super::sql_types::{Id, UuidText};
use super::StoreError;
use crate::events::{Limits, RuleError};
use crate::log::{Appending, Log, LogBatch, LogError, LogReader, LogRecord, Pace};
use crate::model::{Message, NewMessage};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// A transaction that writes: `BEGIN IMMEDIATE`, which takes the write lock first (waiting
/// for it up to the busy timeout). A deferred transaction that reads before it writes
/// cannot be upgraded once another connection has written since its read began: SQLite
/// answers "database is locked" at once, whatever the busy timeout.
macro_rules! write_transaction {
    ($c:expr, $err:ty, $f:expr) => {
        $c.immediate_transaction::<_, $err, _>($f)
    };
}

// The shared queries (queries.rs) compile against these.
#[path = "gov_queries.rs"]
#[allow(clippy::duplicate_mod)] // the same: governance's queries, once per backend
mod gov_queries;
#[path = "queries.rs"]
#[allow(clippy::duplicate_mod)] // on purpose: one query file, compiled once per backend
mod queries;
use super::schema_sqlite as schema;
/// SQLite's writing transactions begin IMMEDIATE: they take turns already.
async fn lock_room(_c: &mut Conn, _room: uuid::Uuid) -> diesel::QueryResult<()> {
    Ok(())
}

/// The string aggregate of this SQL dialect (with its opening parenthesis).
const STRING_AGG: &str = "group_concat(";
type Backend = SqliteStore;
type SqlTime = diesel::sql_types::TimestamptzSqlite;
type SqlUuid = UuidText;
type Conn = SyncConnectionWrapper<SqliteConnection>;
type MigrationConn = SqliteConnection;

/// Per connection: wait for the write lock instead of failing at once, enforce the
/// foreign keys, and fsync every commit (an ack promises the message survives a crash
/// of the machine, not only of the process).
const CONNECTION_SETUP: &str = "
PRAGMA busy_timeout = 10000;
PRAGMA foreign_keys = ON;
PRAGMA synchronous = FULL;
";

/// The SQLite file behind the embedded mode.
#[derive(Clone)]
pub struct SqliteStore {
    pool: Pool<Conn>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its directory.
    pub fn open(path: &Path, max_size: usize) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data directory {}", dir.display()))?;
        }
        let url = path
            .to_str()
            .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
        let mut config = ManagerConfig::<Conn>::default();
        config.custom_setup = Box::new(|url| {
            Box::pin(async move {
                let mut c = Conn::establish(url).await?;
                c.batch_execute(CONNECTION_SETUP)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(c)
            })
        });
        let mgr = AsyncDieselConnectionManager::<Conn>::new_with_config(url, config);
        let pool = Pool::builder(mgr)
            .max_size(max_size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .context("building the SQLite pool")?;
        Ok(SqliteStore {
            pool,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the embedded SQLite migrations, fills the name keys of rows written before
    /// them (`backfill_name_keys`), and switches the file to WAL mode (readers then never
    /// block the writer; the setting stays with the file).
    pub async fn migrate(path: &Path) -> anyhow::Result<Vec<String>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data directory {}", dir.display()))?;
        }
        let path = path.to_owned();
        // Awaited here, before the process serves (so not tracked by shutdown.rs).
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let url = path
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
            let mut conn = <SqliteConnection as diesel::Connection>::establish(url)
                .with_context(|| format!("opening {}", path.display()))?;
            diesel::connection::SimpleConnection::batch_execute(
                &mut conn,
                "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL;",
            )
            .context("switching to WAL mode")?;
            let applied = conn
                .run_pending_migrations(MIGRATIONS)
                .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?
                .into_iter()
                .map(|v| v.to_string())
                .collect();
            let filled = queries::backfill_name_keys(&mut conn).context("filling the name keys")?;
            if filled > 0 {
                tracing::info!(filled, "name keys filled");
            }
            Ok(applied)
        })
        .await
        .context("migration task")?
    }

    async fn conn(&self) -> Result<Object<Conn>, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

fn pool_error(e: PoolError) -> StoreError {
    StoreError::Unavailable(anyhow::anyhow!("SQLite connection pool: {e}"))
}

/// In SQLite the messages table is the log: everything in it is committed.
async fn committed_offset(c: &mut Conn, _topic: &str, _partition: i32) -> QueryResult<Option<i64>> {
    let last: Option<i64> = schema::messages::table
        .select(diesel::dsl::max(schema::messages::position))
        .first(c)
        .await?;
    Ok(Some(last.unwrap_or(0) + 1))
}

/// Inserts log records, skipping those already stored. One row at a time: diesel has no
/// multi-row INSERT … ON CONFLICT for SQLite, and a local file does not need one.
async fn insert_messages(c: &mut Conn, rows: &[queries::NewMessageRow<'_>]) -> QueryResult<usize> {
    let mut n = 0;
    for r in rows {
        n += diesel::insert_into(schema::messages::table)
            .values(r)
            .on_conflict_do_nothing()
            .execute(c)
            .await?;
    }
    Ok(n)
}

fn db_error(e: DieselError) -> StoreError {
    match e {
        // SQLITE_BUSY after the busy timeout: the file is locked by a long writer.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
            if info.message().contains("locked") || info.message().contains("busy") =>
        {
            StoreError::Unavailable(anyhow::anyhow!("{}", info.message()))
        }
        other => StoreError::Other(other.into()),
    }
}

/// Records one read returns at most.
const READ_BATCH: i64 = 500;

/// The store as the durable log of the embedded mode: one partition, position = the
/// row's `position`. An append is one committed row (durable before the ack) and is
/// idempotent by (sender, room, client_msg_id): a resend gets the first message back. SQLite
/// runs one write transaction at a time and positions grow in commit order, so a reader
/// of the table (the relay) sees them gap-free and in order.
#[derive(Clone)]
pub struct SqliteLog {
    store: SqliteStore,
    /// The rules an event is checked against where it is appended (and so applied).
    limits: Arc<Limits>,
    /// The next position to be assigned, for long-polling readers.
    head: Arc<watch::Sender<i64>>,
}

impl SqliteLog {
    pub async fn open(store: SqliteStore, limits: Limits) -> Result<Self, LogError> {
        let mut c = store.conn().await.map_err(unavailable)?;
        let head = committed_offset(&mut c, "", 0)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?
            .unwrap_or(1);
        Ok(SqliteLog {
            store,
            limits: Arc::new(limits),
            head: Arc::new(watch::Sender::new(head)),
        })
    }

    fn advance(&self, next: i64) {
        self.head.send_if_modified(|h| {
            let moved = next > *h;
            if moved {
                *h = next;
            }
            moved
        });
    }
}

fn unavailable(e: StoreError) -> LogError {
    LogError::Unavailable(e.to_string())
}

fn log_error(e: DieselError) -> LogError {
    match db_error(e) {
        StoreError::Unavailable(e) => LogError::Unavailable(e.to_string()),
        other => LogError::Other(other.to_string()),
    }
}

#[async_trait]
impl Log for SqliteLog {
    fn topic(&self) -> &str {
        "embedded"
    }

    fn partitions(&self) -> i32 {
        1
    }

    /// One write per message; the caller's next submit comes after it is committed.
    async fn submit(&self, msg: &NewMessage) -> Result<Appending, LogError> {
        let done = self.append(msg).await;
        Ok(Box::pin(futures_util::future::ready(done)))
    }

    /// The record and its effect (an event on its target, a reply on its parent) in one
    /// transaction: here the log is the store, so this is where an event is applied, and
    /// checked again under the write lock. A refused event writes nothing.
    async fn append(&self, msg: &NewMessage) -> Result<Message, LogError> {
        use schema::messages;
        enum TxError {
            Refused(RuleError),
            Db(DieselError),
        }
        impl From<DieselError> for TxError {
            fn from(e: DieselError) -> Self {
                TxError::Db(e)
            }
        }
        let mut c = self.store.conn().await.map_err(unavailable)?;
        let limits = self.limits.clone();
        let record = msg.clone().at(0);
        let r = write_transaction!(c, TxError, async |c| {
            let row = queries::NewMessageRow::of(&record, 0);
            let inserted: Option<i64> = diesel::insert_into(messages::table)
                .values(row.without_position())
                .on_conflict_do_nothing()
                .returning(messages::position)
                .get_result(c)
                .await
                .optional()?;
            let Some(position) = inserted else {
                // A resend: the first record stands.
                let first: queries::MessageRow = messages::table
                    .filter(messages::sender_id.eq(Id(record.sender.id)))
                    .filter(messages::room_id.eq(Id(record.room)))
                    .filter(messages::client_msg_id.eq(&record.client_msg_id))
                    .select(queries::MessageRow::as_select())
                    .first(c)
                    .await?;
                return Ok((Message::from(first), false));
            };
            let mut stored = record.clone();
            stored.position = position;
            queries::apply(c, &stored, &limits)
                .await?
                .map_err(TxError::Refused)?;
            Ok((stored, true))
        })
        .await;
        match r {
            Ok((m, fresh)) => {
                if fresh {
                    self.advance(m.position + 1);
                }
                Ok(m)
            }
            Err(TxError::Refused(rule)) => Err(LogError::Refused(rule)),
            Err(TxError::Db(e)) => Err(log_error(e)),
        }
    }

    async fn reader(&self, _partition: i32) -> Result<Box<dyn LogReader>, LogError> {
        Ok(Box::new(self.clone()))
    }

    /// Both paces read the same way: the SQLite file is local, and its rows are not
    /// copied anywhere (no persist worker), so there is no batch to gather.
    async fn tail(&self, _partition: i32, _pace: Pace) -> Result<Box<dyn LogReader>, LogError> {
        Ok(Box::new(self.clone()))
    }

    async fn end(&self, _partition: i32) -> Result<i64, LogError> {
        Ok(*self.head.borrow())
    }

    async fn ping(&self) -> Result<(), LogError> {
        use super::Store as _;
        self.store.ping().await.map_err(unavailable)
    }
}

#[async_trait]
impl LogReader for SqliteLog {
    async fn read(&self, offset: i64, max_wait: Duration) -> Result<LogBatch, LogError> {
        use schema::messages;
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut head = self.head.subscribe();
        loop {
            let end = *head.borrow_and_update();
            let rows: Vec<queries::MessageRow> = if offset < end {
                let mut c = self.store.conn().await.map_err(unavailable)?;
                messages::table
                    .filter(messages::position.ge(offset))
                    .order(messages::position.asc())
                    .limit(READ_BATCH)
                    .select(queries::MessageRow::as_select())
                    .load(&mut c)
                    .await
                    .map_err(log_error)?
            } else {
                Vec::new()
            };
            if !rows.is_empty() {
                let next_offset = rows.last().map_or(offset, |r| r.position + 1);
                return Ok(LogBatch {
                    records: rows
                        .into_iter()
                        .map(|r| {
                            let m = Message::from(r);
                            LogRecord {
                                offset: m.position,
                                message: Some(m),
                            }
                        })
                        .collect(),
                    next_offset,
                    high_watermark: end.max(next_offset),
                });
            }
            let woke = tokio::time::timeout_at(deadline, head.changed()).await;
            if !matches!(woke, Ok(Ok(()))) {
                return Ok(LogBatch {
                    records: Vec::new(),
                    next_offset: offset,
                    high_watermark: end,
                });
            }
        }
    }

    async fn earliest(&self) -> Result<i64, LogError> {
        Ok(1)
    }

    async fn latest(&self) -> Result<i64, LogError> {
        Ok(*self.head.borrow())
    }
}
