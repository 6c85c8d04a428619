//! `chat-bench`'s `persist` scenario against the real PostgreSQL (scripts/services.sh): it
//! takes its database only from `--database-url` and writes only to a database of its own.
//! Each test works in a database it creates (and drops when it passes). Needs the feature
//! `bench`: `cargo test --features bench --test bench` (scripts/test.sh runs it).

use clap::Parser;
use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use uuid::Uuid;

use chat::bench::{self, cli::BenchArgs, persist, BenchError};

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL is not set: run the tests with scripts/test.sh (it starts PostgreSQL)")
    })
}

/// A fresh database on the test PostgreSQL.
struct Db {
    admin: String,
    name: String,
    url: String,
}

impl Db {
    async fn new(migrated: bool) -> Db {
        let admin = admin_url();
        let name = format!("chat_bt_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let mut c = AsyncPgConnection::establish(&admin)
            .await
            .expect("connect to PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .expect("create the test database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        if migrated {
            chat::store::PgStore::migrate(&url).await.expect("migrate");
        }
        Db { admin, name, url }
    }

    async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to the test database")
    }

    async fn exec(&self, sql: &str) {
        self.conn().await.batch_execute(sql).await.expect(sql);
    }

    async fn count(&self, sql: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let rows: Vec<N> = diesel::sql_query(sql)
            .load(&mut self.conn().await)
            .await
            .expect(sql);
        rows.into_iter().next().map_or(0, |r| r.n)
    }

    async fn has_table(&self, table: &str) -> bool {
        self.count(&format!(
            "SELECT (to_regclass('{table}') IS NOT NULL)::int::int8 AS n"
        ))
        .await
            == 1
    }

    /// Drops the database (only when the test got this far: a failed one keeps it).
    async fn drop(self) {
        let mut c = AsyncPgConnection::establish(&self.admin)
            .await
            .expect("connect to PostgreSQL");
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut c)
        .await
        .expect("drop the test database");
    }
}

/// A persist run against `url` and a gateway nobody listens on: whatever the bench does
/// after its database check fails at its first HTTP call.
fn persist_args(url: Option<&str>) -> BenchArgs {
    let mut args = vec![
        "chat-bench",
        "--scenario",
        "persist",
        "--gateway",
        "http://127.0.0.1:1",
        "--connections",
        "2",
    ];
    if let Some(url) = url {
        args.extend(["--database-url", url]);
    }
    BenchArgs::try_parse_from(args).expect("bench flags")
}

const A_USER: &str = "INSERT INTO users (id, name, password_hash) \
                      VALUES ('00000000-0000-7000-8000-000000000001', 'alice', 'x')";

#[tokio::test]
async fn persist_refuses_a_database_holding_chat_data_it_did_not_create() {
    // A deployment's database: migrated, one user.
    let db = Db::new(true).await;
    db.exec(A_USER).await;
    let e = bench::run(persist_args(Some(&db.url)))
        .await
        .expect_err("a database with chat data");
    assert!(matches!(e, BenchError::Refused(_)), "{e}");
    assert!(e.to_string().contains("users"), "{e}");
    // Untouched: not marked, no scratch table, the user alone.
    assert!(!db.has_table(persist::MARKER).await);
    assert!(!db.has_table("chat_bench_scratch").await);
    assert_eq!(db.count("SELECT count(*) AS n FROM users").await, 1);
    db.drop().await;
}

#[tokio::test]
async fn persist_refuses_a_database_that_is_not_chat() {
    let db = Db::new(false).await;
    db.exec("CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
        .await;
    let e = persist::claim(&mut db.conn().await)
        .await
        .expect_err("not a chat database");
    assert!(matches!(e, BenchError::Refused(_)), "{e}");
    assert!(!db.has_table(persist::MARKER).await);
    db.drop().await;
}

#[tokio::test]
async fn persist_marks_an_empty_chat_database_and_keeps_it_as_its_own() {
    let db = Db::new(true).await;
    let mut c = db.conn().await;
    assert_eq!(
        persist::claim(&mut c).await.unwrap(),
        persist::Claim::Marked
    );
    assert!(db.has_table(persist::MARKER).await);
    // Its own runs leave users and messages behind: still its own.
    db.exec(A_USER).await;
    assert_eq!(persist::claim(&mut c).await.unwrap(), persist::Claim::Ours);
    // And a run gets past the check (to the gateway nobody listens on).
    let e = bench::run(persist_args(Some(&db.url)))
        .await
        .expect_err("no gateway");
    assert!(matches!(e, BenchError::Http(_)), "{e}");
    drop(c);
    db.drop().await;
}

#[tokio::test]
async fn persist_does_not_fall_back_to_database_url() {
    // scripts/test.sh sets DATABASE_URL, as a server's pod does.
    assert!(!admin_url().is_empty());
    let e = bench::run(persist_args(None))
        .await
        .expect_err("no --database-url");
    assert!(matches!(e, BenchError::Setup(_)), "{e}");
    assert!(e.to_string().contains("--database-url"), "{e}");
}
