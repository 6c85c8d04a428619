//! PostgreSQL store through diesel-async and a deadpool pool.

use std::time::Duration;

use anyhow::Context as _;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::StoreError;
use crate::tls::PgTarget;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A transaction that writes: PostgreSQL's own (row locks serialise what must be).
macro_rules! write_transaction {
    ($c:expr, $err:ty, $f:expr) => {{
        use diesel_async::AsyncConnection as _;
        $c.transaction::<_, $err, _>($f)
    }};
}

// The shared queries (queries.rs) compile against these.
#[path = "gov_queries.rs"]
#[allow(clippy::duplicate_mod)] // the same: governance's queries, once per backend
mod gov_queries;
#[path = "queries.rs"]
#[allow(clippy::duplicate_mod)] // on purpose: one query file, compiled once per backend
mod queries;
use super::schema;
use diesel::sql_types::Timestamptz as SqlTime;
use diesel::sql_types::Uuid as SqlUuid;
/// Locks the room's row until the transaction ends: membership writes of one room
/// (join, ban, kick, roles) take their turns, so a check in one sees the others' writes.
async fn lock_room(c: &mut Conn, room: uuid::Uuid) -> diesel::QueryResult<()> {
    use diesel_async::RunQueryDsl as _;
    diesel::sql_query("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE")
        .bind::<SqlUuid, _>(crate::store::sql_types::Id(room))
        .execute(c)
        .await
        .map(drop)
}

/// The string aggregate of this SQL dialect (with its opening parenthesis).
const STRING_AGG: &str = "string_agg(";
type Backend = PgStore;
type Conn = AsyncPgConnection;
type MigrationConn =
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Any number stable across versions: serialises concurrent `migrate` runs.
const MIGRATION_LOCK: i64 = 0x6368_6174_6d69_6772; // "chatmigr"

#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
}

/// Opens connections to one PostgreSQL server, over TLS or not as its [`PgTarget`] says
/// (diesel-async's own `establish` knows no TLS).
#[derive(Clone)]
struct Connector {
    target: PgTarget,
    tls: Option<MakeRustlsConnect>,
}

impl Connector {
    fn new(target: &PgTarget) -> anyhow::Result<Connector> {
        let tls = target
            .tls_config()
            .map_err(|e| anyhow::anyhow!("PostgreSQL TLS: {e}"))?
            .map(MakeRustlsConnect::new);
        Ok(Connector {
            target: target.clone(),
            tls,
        })
    }

    /// One connection; the error is tokio-postgres's message (address and reason, never
    /// the password).
    async fn connect(&self) -> Result<AsyncPgConnection, String> {
        let url = self.target.url();
        let conn = match &self.tls {
            Some(tls) => {
                let (client, conn) = tokio_postgres::connect(url, tls.clone())
                    .await
                    .map_err(|e| crate::tls::error_chain(&e))?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
            None => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| crate::tls::error_chain(&e))?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
        };
        conn.map_err(|e| e.to_string())
    }

    /// One connection within [`CONNECT_TIMEOUT`], or the one-line failure (service,
    /// address, class, reason).
    async fn connect_or_explain(&self) -> anyhow::Result<AsyncPgConnection> {
        let failed = |m: &str| {
            anyhow::anyhow!(crate::tls::failure_line(
                "PostgreSQL",
                &self.target.address,
                m
            ))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(m)) => Err(failed(&m)),
            Err(_) => Err(failed(
                &crate::tls::silent_server(
                    &self.target.address,
                    self.tls.is_some(),
                    CONNECT_TIMEOUT,
                )
                .await,
            )),
        }
    }
}

/// How long a start waits for PostgreSQL to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl PgStore {
    /// Builds the pool; connects lazily, so this succeeds while PostgreSQL is down.
    pub fn connect(target: &PgTarget, max_size: usize) -> anyhow::Result<Self> {
        let connector = Connector::new(target)?;
        let mut config = ManagerConfig::default();
        config.custom_setup = Box::new(move |_url| {
            let connector = connector.clone();
            Box::pin(async move {
                connector
                    .connect()
                    .await
                    .map_err(diesel::ConnectionError::BadConnection)
            })
        });
        let mgr = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            target.url(),
            config,
        );
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

    /// Connects once: Err is the line a refused start prints (service, address, class —
    /// tls, auth, unreachable — and the reason).
    pub async fn probe(target: &PgTarget) -> anyhow::Result<()> {
        Connector::new(target)?.connect_or_explain().await.map(drop)
    }

    /// One connection outside the pool (tools and tests), made like the pool's.
    pub async fn connect_one(target: &PgTarget) -> anyhow::Result<AsyncPgConnection> {
        Connector::new(target)?.connect_or_explain().await
    }

    /// [`PgStore::migrate_target`] for a URL without a CA file.
    pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
        let target = PgTarget::parse(url, None).map_err(|e| anyhow::anyhow!(e))?;
        Self::migrate_target(&target).await
    }

    /// Runs the embedded migrations (under an advisory lock, so concurrent starts are safe),
    /// then fills the name keys of rows written before them (`backfill_name_keys`). The
    /// connection is made like the pool's (the same TLS settings).
    pub async fn migrate_target(target: &PgTarget) -> anyhow::Result<Vec<String>> {
        let conn = Connector::new(target)?.connect_or_explain().await?;
        // Awaited here, before the process serves (so not tracked by shutdown.rs).
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let mut conn = MigrationConn::from(conn);
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
