//! PostgreSQL store through diesel-async and a deadpool pool.

use std::time::Duration;

use anyhow::Context as _;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::StoreError;

// The shared queries (queries.rs) compile against these.
#[path = "queries.rs"]
#[allow(clippy::duplicate_mod)] // on purpose: one query file, compiled once per backend
mod queries;
use super::schema;
use diesel::sql_types::Uuid as SqlUuid;
type Backend = PgStore;
type MigrationConn =
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Any number stable across versions: serialises concurrent `migrate` runs.
const MIGRATION_LOCK: i64 = 0x6368_6174_6d69_6772; // "chatmigr"

#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
}

impl PgStore {
    /// Builds the pool; connects lazily, so this succeeds while PostgreSQL is down.
    pub fn connect(url: &str, max_size: usize) -> anyhow::Result<Self> {
        let mgr = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let pool = Pool::builder(mgr)
            .max_size(max_size)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .context("building the PostgreSQL pool")?;
        Ok(PgStore { pool })
    }

    /// Runs the embedded migrations (under an advisory lock, so concurrent starts are safe),
    /// then fills the name keys of rows written before them (`backfill_name_keys`).
    pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
        let url = url.to_owned();
        // Awaited here, before the process serves (so not tracked by shutdown.rs).
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let mut conn = <MigrationConn as diesel::Connection>::establish(&url)
                .context("connecting to PostgreSQL to run migrations")?;
            diesel::RunQueryDsl::execute(
                diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")),
                &mut conn,
            )
            .context("taking the migration lock")?;
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
            diesel::RunQueryDsl::execute(
                diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")),
                &mut conn,
            )
            .context("releasing the migration lock")?;
            Ok(applied)
        })
        .await
        .context("migration task")?
    }

    async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

fn pool_error(e: PoolError) -> StoreError {
    StoreError::Unavailable(anyhow::anyhow!("connection pool: {e}"))
}

/// Where the persist worker's committed log ends for a partition.
async fn committed_offset(
    c: &mut AsyncPgConnection,
    topic: &str,
    partition: i32,
) -> QueryResult<Option<i64>> {
    schema::consumer_offsets::table
        .find((topic, partition))
        .select(schema::consumer_offsets::next_offset)
        .first(c)
        .await
        .optional()
}

/// Inserts log records in one multi-row statement, skipping those already stored.
async fn insert_messages(
    c: &mut AsyncPgConnection,
    rows: &[queries::NewMessageRow<'_>],
) -> QueryResult<usize> {
    diesel::insert_into(schema::messages::table)
        .values(rows)
        .on_conflict_do_nothing()
        .execute(c)
        .await
}

fn db_error(e: DieselError) -> StoreError {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
            StoreError::Unavailable(anyhow::anyhow!("connection closed: {}", info.message()))
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::SerializationFailure,
            info,
        ) => StoreError::Unavailable(anyhow::anyhow!("{}", info.message())),
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
            if info.message().contains("connection")
                || info.message().contains("shutting down") =>
        {
            StoreError::Unavailable(anyhow::anyhow!("{}", info.message()))
        }
        other => StoreError::Other(other.into()),
    }
}
