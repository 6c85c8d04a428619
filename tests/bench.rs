//! `chat-bench`'s `persist` scenario against the real PostgreSQL (scripts/services.sh): it
//! takes its database only from `--database-url` and writes only to a database of its own.
//! Each test works in a database it creates (and drops when it passes). And short runs of
//! the `chatty` and `mixed` scenarios against a `chat serve` of their own (embedded mode,
//! a fresh data directory), counting everything and timing nothing. Needs the feature
//! `bench`: `cargo test --features bench --test bench` (scripts/test.sh runs it).

use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
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

/// A `chat serve` of the test's own in the embedded mode (no services: SQLite in a fresh
/// data directory), with the limits a bench from one address needs lifted.
struct Server {
    _child: tokio::process::Child,
    url: String,
}

async fn embedded_server(name: &str) -> Server {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "bench-{name}-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).expect("data dir");
    let log = std::fs::File::create(dir.join("chat.log")).expect("log file");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"));
    // The test environment points at the services; the embedded mode has none.
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "KAFKA_BROKERS",
        "JWT_SECRET",
        "DATA_DIR",
    ] {
        cmd.env_remove(var);
    }
    let data = dir.join("data");
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args([
            "--jwt-secret",
            "bench-test-secret-bench-test-secret-0123",
            "--send-rate-per-sec",
            "1000",
            "--send-rate-burst",
            "1000",
            "--register-rate-per-address",
            "100000",
            "--register-burst-per-address",
            "100000",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chat");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(a) = line.strip_prefix("chat listening on http://") {
                return a.to_owned();
            }
        }
        panic!(
            "chat exited before listening; see {}",
            dir.join("chat.log").display()
        )
    })
    .await
    .expect("chat did not start within 60 s");
    Server {
        _child: child,
        url: format!("http://{addr}"),
    }
}

/// A short run: `connections` in `rooms`, `rate` sends/s for 1 s of warmup and `secs`
/// measured, a generous drain (a loaded 2-core box), no latency asserted.
fn short_run(scenario: &str, url: &str, rate: &str, secs: &str) -> BenchArgs {
    BenchArgs::try_parse_from([
        "chat-bench",
        "--scenario",
        scenario,
        "--gateway",
        url,
        "--connections",
        "6",
        "--rooms",
        "2",
        "--rate",
        rate,
        "--warmup",
        "1",
        "--duration",
        secs,
        "--drain",
        "30",
    ])
    .expect("bench flags")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_chatty_against_an_embedded_server() {
    let server = embedded_server("chatty").await;
    let r = bench::measure(&short_run("chatty", &server.url, "30", "2"))
        .await
        .expect("a chatty run");
    assert!(r.sent >= 60, "{r:?}");
    assert_eq!((r.acked, r.send_errors), (r.sent, 0), "{:?}", r.errors);
    // 3 subscribers per room: every message reaches each of them once, in order.
    assert_eq!(r.expected_deliveries, 3 * r.acked);
    assert_eq!((r.missing_deliveries, r.out_of_order), (0, 0));
    assert_eq!(r.delivered, r.expected_deliveries);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.kinds.is_empty(), "per kind only for mixed");
    assert!(r.ack.count > 0 && r.deliver.count > 0);
    // The server's own view, from its /metrics before and after: every hop counted (the
    // embedded mode has them all), the messages made durable meanwhile.
    let s = r.server.as_ref().expect("the server's view");
    assert_eq!((s.scraped.len(), s.failed.len()), (1, 0), "{s:?}");
    assert!(s.messages > 0.0, "{s:?}");
    for h in &s.hops {
        assert!(h.count > 0.0 && h.p99_ms.is_some(), "{h:?}");
    }
}

// Needs the server side of edits and reactions (issue 18): a server without it answers
// `edit` and `react` with `unknown_type` errors, and this run fails on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_mixed_against_an_embedded_server() {
    let server = embedded_server("mixed").await;
    // 6 senders, 10 sends/s each for 5 s: 50 each, 2.5 rounds of the 20-send mix.
    let r = bench::measure(&short_run("mixed", &server.url, "60", "4"))
        .await
        .expect("a mixed run");
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert_eq!(r.acked, r.sent, "{r:?}");
    assert_eq!(r.expected_deliveries, 3 * r.acked);
    assert_eq!(
        (r.missing_deliveries, r.duplicates, r.out_of_order),
        (0, 0, 0),
        "{r:?}"
    );
    let names: Vec<&str> = r.kinds.keys().map(String::as_str).collect();
    assert_eq!(names, ["edits", "messages", "reactions", "replies"]);
    let mut sent = 0;
    for (name, k) in &r.kinds {
        assert!(k.sent > 0, "no {name} sent: {k:?}");
        assert_eq!((k.acked, k.send_errors), (k.sent, 0), "{name}: {k:?}");
        assert_eq!(k.expected_deliveries, 3 * k.acked, "{name}: {k:?}");
        assert_eq!(k.delivered, k.expected_deliveries, "{name}: {k:?}");
        assert_eq!((k.duplicates, k.out_of_order), (0, 0), "{name}: {k:?}");
        assert!(k.ack.count > 0 && k.deliver.count > 0, "{name}: {k:?}");
        sent += k.sent;
    }
    assert_eq!(sent, r.sent);
    // Messages are most of the mix (reactions and edits fall back to messages until there
    // is something to point at).
    assert!(r.kinds["messages"].sent * 2 > r.sent, "{r:?}");
}
