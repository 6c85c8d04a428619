//! Test harness: `chat` processes spawned from the built binary on port 0, and a small
//! protocol client. Two modes ([`Mode`]): distributed, against the real PostgreSQL,
//! Redis and Kafka from scripts/services.sh (each `Env` has its own database, Kafka
//! topic and Redis prefix, so tests run in parallel against one set of services); and
//! embedded, one `chat serve` process on its own SQLite file with no services at all.
//! Protocol-level tests run in both ([`both_modes!`]), so the two cannot drift.

use std::process::Stdio;
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Tests register and log in many users from 127.0.0.1 at once: the harness relaxes the
/// login and registration limits (tests of those limits pass their own, which replace these).
pub const RELAXED_ACCOUNT_LIMITS: &[&str] = &[
    "--login-rate-per-account",
    "100000",
    "--login-burst-per-account",
    "100000",
    "--login-rate-per-address",
    "100000",
    "--login-burst-per-address",
    "100000",
    "--register-rate-per-address",
    "100000",
    "--register-burst-per-address",
    "100000",
    "--hash-queue",
    "100000",
    "--membership-changes-per-minute",
    "100000",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PostgreSQL, Redis, Kafka; gateways and consumers as separate processes.
    Distributed,
    /// `chat serve` with no services: SQLite, in-process bus, one process.
    Embedded,
    /// As `Distributed`, with PostgreSQL, Redis and Kafka of the TLS profile
    /// (`scripts/services.sh start-tls`): TLS only, verified against its CA file, with
    /// passwords, Redis as an ACL user limited to the prefix `tls*` and chat's commands,
    /// Kafka over SASL_SSL with SCRAM-SHA-512.
    Tls,
}

/// Runs `async fn $name(mode: Mode)` as two tests, `$name::distributed` and
/// `$name::embedded`; with `, tls` also as `$name::tls` ([`Mode::Tls`]).
#[macro_export]
macro_rules! both_modes {
    ($name:ident) => {
        $crate::both_modes!($name,);
    };
    ($name:ident, $($tls:ident)?) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn distributed() {
                super::$name($crate::harness::Mode::Distributed).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::harness::Mode::Embedded).await
            }
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $tls() {
                super::$name($crate::harness::Mode::Tls).await
            }
            )?
        }
    };
}

/// A connection to PostgreSQL the way chat makes them (TLS when the URL or `ca_file` asks
/// for it, verified).
pub async fn pg_connect(url: &str, ca_file: Option<&std::path::Path>) -> AsyncPgConnection {
    let target = chat::tls::PgTarget::parse(url, ca_file).expect("a PostgreSQL URL");
    chat::store::PgStore::connect_one(&target)
        .await
        .expect("connect to PostgreSQL")
}

/// The processes of one test's chat: `gateways` addresses to connect to (in the embedded
/// mode all of them are the one process) and, distributed, a consumer.
pub struct Cluster {
    procs: Vec<Proc>,
    gateways: usize,
}

impl Cluster {
    /// The i-th gateway (wrapping around the ones that exist).
    pub fn gw(&self, i: usize) -> &Proc {
        &self.procs[i % self.gateways]
    }

    /// SIGTERM to every process; waits for each drain.
    #[allow(dead_code)]
    pub async fn stop(mut self) {
        for p in &mut self.procs {
            let status = p.terminate().await;
            assert!(status.success(), "exit after SIGTERM: {status}");
        }
    }
}

/// The Redis Cluster's seed nodes (`scripts/services.sh start-redis-cluster`; test.sh
/// `env` prints them as CLUSTER_REDIS_NODES, or REDIS_CLUSTER_NODES), or None: the caller skips,
/// saying so.
pub fn redis_cluster_nodes(test: &str) -> Option<String> {
    let nodes = ["CLUSTER_REDIS_NODES", "REDIS_CLUSTER_NODES"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.trim().is_empty()));
    if nodes.is_none() {
        eprintln!(
            "SKIPPED {test}: no Redis Cluster (CLUSTER_REDIS_NODES unset; \
             scripts/services.sh start-redis-cluster starts one, scripts/test.sh does)"
        );
    }
    nodes
}

/// Held by every test on the Redis Cluster: shared, except by the failover test, which
/// kills a master and holds it alone (across test processes: a file lock).
pub struct RedisClusterLock(#[allow(dead_code)] std::fs::File);

pub async fn redis_cluster_lock(exclusive: bool) -> RedisClusterLock {
    let path = std::env::temp_dir().join("chat-it-redis-cluster.lock");
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("the Redis Cluster tests' lock file");
        if exclusive { f.lock() } else { f.lock_shared() }.expect("lock");
        RedisClusterLock(f)
    })
    .await
    .expect("lock task")
}

pub fn service(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test.sh (it starts PostgreSQL, Redis and Kafka)")
    })
}

pub struct Env {
    pub mode: Mode,
    /// The CA file of the TLS profile's services ([`Mode::Tls`]).
    pub ca_file: Option<std::path::PathBuf>,
    pub admin_url: String,
    pub db_name: String,
    pub db_url: String,
    pub redis_url: String,
    /// A Redis Cluster's seed nodes instead of `redis_url` ([`Env::on_redis_cluster`]).
    pub redis_cluster: Option<String>,
    pub brokers: String,
    pub topic: String,
    pub prefix: String,
    pub partitions: i32,
    pub log_dir: std::path::PathBuf,
}

impl Env {
    /// A distributed-mode environment.
    pub async fn new(name: &str) -> Env {
        Env::with_mode(name, Mode::Distributed).await
    }

    pub async fn with_mode(name: &str, mode: Mode) -> Env {
        if mode == Mode::Embedded {
            let id = Uuid::new_v4().simple().to_string();
            let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("{name}-emb-{}", &id[..8]));
            std::fs::create_dir_all(&log_dir).expect("log dir");
            return Env {
                mode,
                ca_file: None,
                admin_url: String::new(),
                db_name: String::new(),
                db_url: format!("sqlite://{}", log_dir.join("data/chat.db").display()),
                redis_url: String::new(),
                redis_cluster: None,
                brokers: String::new(),
                topic: String::new(),
                prefix: String::new(),
                partitions: 1,
                log_dir,
            };
        }
        let tls = mode == Mode::Tls;
        let var = |name: &str| {
            service(&if tls {
                format!("TLS_{name}")
            } else {
                name.to_owned()
            })
        };
        let admin_url = var("DATABASE_URL");
        let ca_file = tls.then(|| std::path::PathBuf::from(service("TLS_CA_FILE")));
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("chat_t_{}", &id[..12]);
        let mut admin = pg_connect(&admin_url, ca_file.as_deref()).await;
        diesel::sql_query(format!("CREATE DATABASE {db_name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let (base, query) = match admin_url.find('?') {
            Some(i) => admin_url.split_at(i),
            None => (admin_url.as_str(), ""),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let db_url = format!("{base}/{db_name}{query}");
        let log_dir =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", &id[..8]));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        Env {
            mode,
            ca_file,
            admin_url,
            db_name,
            db_url,
            redis_url: var("REDIS_URL"),
            redis_cluster: None,
            brokers: var("KAFKA_BROKERS"),
            topic: format!("chat_t_{}", &id[..12]),
            // The TLS profile's Redis user may use keys and channels `tls*` only.
            prefix: format!("{}{}", if tls { "tls" } else { "t" }, &id[..12]),
            partitions: 4,
            log_dir,
        }
    }

    /// A distributed-mode environment whose processes use the Redis Cluster `nodes`
    /// (`--redis-cluster-nodes`) instead of the single Redis.
    pub async fn on_redis_cluster(name: &str, nodes: &str) -> Env {
        let mut env = Env::new(name).await;
        env.redis_cluster = Some(nodes.to_owned());
        env
    }

    fn args(&self, role: &str, migrate: bool) -> Vec<String> {
        if self.mode == Mode::Embedded {
            assert_eq!(role, "all", "the embedded mode runs only --role all");
            let data = self.log_dir.join("data");
            return [
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().expect("utf-8 path"),
                "--jwt-secret",
                SECRET,
                "--send-rate-per-sec",
                "1000",
                "--send-rate-burst",
                "1000",
            ]
            .iter()
            .chain(RELAXED_ACCOUNT_LIMITS)
            .map(|s| s.to_string())
            .collect();
        }
        let mut a: Vec<String> = [
            "serve",
            "--role",
            role,
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &self.db_url,
            "--redis-url",
            &self.redis_url,
            "--redis-prefix",
            &self.prefix,
            "--kafka-brokers",
            &self.brokers,
            "--kafka-topic",
            &self.topic,
            "--kafka-partitions",
            &self.partitions.to_string(),
            "--jwt-secret",
            SECRET,
            "--database-pool-size",
            "8",
            "--send-rate-per-sec",
            "1000",
            "--send-rate-burst",
            "1000",
        ]
        .iter()
        .chain(RELAXED_ACCOUNT_LIMITS)
        .map(|s| s.to_string())
        .collect();
        if let Some(nodes) = &self.redis_cluster {
            let i = a
                .iter()
                .position(|f| f == "--redis-url")
                .expect("--redis-url");
            a[i] = "--redis-cluster-nodes".into();
            a[i + 1] = nodes.clone();
        }
        if !migrate {
            a.push("--no-migrate".into());
        }
        if let Some(ca) = &self.ca_file {
            let ca = ca.to_str().expect("utf-8 path").to_owned();
            a.extend([
                "--database-ca-file".into(),
                ca.clone(),
                "--redis-ca-file".into(),
                ca.clone(),
                "--kafka-ca-file".into(),
                ca,
                "--kafka-sasl-mechanism".into(),
                "SCRAM-SHA-512".into(),
                "--kafka-username".into(),
                service("TLS_KAFKA_USERNAME"),
                "--kafka-password".into(),
                service("TLS_KAFKA_PASSWORD"),
            ]);
        }
        a
    }

    /// Starts `chat serve --role <role>` and waits until it listens.
    pub async fn spawn(&self, role: &str, label: &str) -> Proc {
        self.spawn_with(role, label, &[]).await
    }

    pub async fn spawn_with(&self, role: &str, label: &str, extra: &[&str]) -> Proc {
        self.spawn_with_env(role, label, extra, &[]).await
    }

    /// As [`Env::spawn_with`], with environment variables set for the process (after the
    /// harness's own, e.g. `RUST_LOG`, so they win).
    pub async fn spawn_with_env(
        &self,
        role: &str,
        label: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Proc {
        // Only the first process of an Env migrates; the others could race it harmlessly
        // (migrations take an advisory lock), but this keeps start-up quick.
        let migrate = label.ends_with("-m");
        // `extra` flags replace the defaults of the same name.
        let defaults = self.args(role, migrate);
        let mut args = vec![defaults[0].clone()];
        let mut i = 1;
        while i < defaults.len() {
            let flag = &defaults[i];
            let takes_value = i + 1 < defaults.len() && !defaults[i + 1].starts_with("--");
            if !extra.contains(&flag.as_str()) {
                args.push(flag.clone());
                if takes_value {
                    args.push(defaults[i + 1].clone());
                }
            }
            i += if takes_value { 2 } else { 1 };
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log =
            std::fs::File::create(self.log_dir.join(format!("{label}.log"))).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat"));
        // Redis is given by a flag: one server or a cluster, never both.
        cmd.env_remove("REDIS_CLUSTER_NODES");
        if self.redis_cluster.is_some() {
            cmd.env_remove("REDIS_URL");
        }
        if self.mode == Mode::Embedded {
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
        }
        let mut child = cmd
            .args(&args)
            .env("RUST_LOG", "info,chat=debug")
            .envs(vars.iter().copied())
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
                "{label} exited before listening; see {}",
                self.log_dir.join(format!("{label}.log")).display()
            )
        })
        .await
        .unwrap_or_else(|_| panic!("{label} did not start within 60 s"));
        Proc { child, addr }
    }

    /// The chat of a test: `gateways` gateways and a consumer (distributed), or the one
    /// process (embedded). The first process migrates.
    pub async fn start(&self, gateways: usize) -> Cluster {
        self.start_with(gateways, &[]).await
    }

    pub async fn start_with(&self, gateways: usize, extra: &[&str]) -> Cluster {
        if self.mode == Mode::Embedded {
            // A new log file per start (a restart test starts twice).
            static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = self.spawn_with("all", &format!("all-{n}"), extra).await;
            return Cluster {
                procs: vec![p],
                gateways: 1,
            };
        }
        let mut procs = Vec::new();
        for i in 0..gateways.max(1) {
            let label = if i == 0 {
                "gw-0-m".to_owned()
            } else {
                format!("gw-{i}")
            };
            procs.push(self.spawn_with("gateway", &label, extra).await);
        }
        procs.push(self.spawn_with("consumer", "consumer", extra).await);
        Cluster {
            gateways: gateways.max(1),
            procs,
        }
    }

    pub async fn db(&self) -> AsyncPgConnection {
        pg_connect(&self.db_url, self.ca_file.as_deref()).await
    }

    /// Runs a `SELECT … AS n` against the test's database (either backend).
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        if self.mode == Mode::Embedded {
            let path = self.log_dir.join("data/chat.db");
            let sql = sql.to_owned();
            return tokio::task::spawn_blocking(move || {
                use diesel::Connection as _;
                let mut c = diesel::SqliteConnection::establish(path.to_str().expect("utf-8"))
                    .expect("open the test's SQLite file");
                let rows: Vec<N> = diesel::RunQueryDsl::load(diesel::sql_query(&sql), &mut c)
                    .expect("count query");
                rows.into_iter().next().map_or(0, |r| r.n)
            })
            .await
            .expect("count task");
        }
        let mut c = self.db().await;
        let rows: Vec<N> = diesel::sql_query(sql).load(&mut c).await.expect(sql);
        rows.into_iter().next().map_or(0, |r| r.n)
    }

    /// Runs SQL statements against the test's database (either backend; the SQLite file
    /// and its directory are created if they do not exist yet).
    pub async fn exec(&self, sql: &str) {
        if self.mode == Mode::Embedded {
            let dir = self.log_dir.join("data");
            let sql = sql.to_owned();
            return tokio::task::spawn_blocking(move || {
                use diesel::connection::SimpleConnection as _;
                use diesel::Connection as _;
                std::fs::create_dir_all(&dir).expect("data dir");
                let path = dir.join("chat.db");
                let mut c = diesel::SqliteConnection::establish(path.to_str().expect("utf-8"))
                    .expect("open the test's SQLite file");
                c.batch_execute(&sql).expect("exec");
            })
            .await
            .expect("exec task");
        }
        use diesel_async::SimpleAsyncConnection as _;
        let mut c = self.db().await;
        c.batch_execute(sql).await.expect(sql);
    }

    /// Polls until `sql` counts `want` (or the deadline passes) and returns the last count.
    pub async fn wait_count(&self, sql: &str, want: i64, within: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.count(sql).await;
            if n >= want || tokio::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: leave no databases behind when the test passed.
        if std::thread::panicking() {
            eprintln!("logs of the failed test: {}", self.log_dir.display());
            return;
        }
        if self.mode == Mode::Embedded {
            let _ = std::fs::remove_dir_all(self.log_dir.join("data"));
            return;
        }
        let db = self.db_name.clone();
        let target = chat::tls::PgTarget::parse(&self.admin_url, self.ca_file.as_deref());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let Ok(target) = target else { return };
                    if let Ok(mut c) = chat::store::PgStore::connect_one(&target).await {
                        let _ =
                            diesel::sql_query(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                                .execute(&mut c)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

pub struct Proc {
    pub child: Child,
    pub addr: String,
}

impl Proc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: no drain, no goodbye.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends a signal by name (`STOP`, `CONT`, …) without waiting.
    #[allow(dead_code)]
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status();
        }
    }

    /// SIGTERM and wait for the drain to finish.
    #[allow(dead_code)]
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("drained within 30 s")
            .expect("exit status")
    }
}

/// A registered user with a token.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub token: String,
}

#[derive(Clone)]
pub struct Http {
    pub base: String,
    pub client: reqwest::Client,
}

impl Http {
    /// One unlabelled value of the gateway's `/metrics` (0 when it is not there yet).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    pub fn new(p: &Proc) -> Http {
        Http {
            base: p.url(""),
            client: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn register(&self, prefix: &str) -> Account {
        let name = format!("{prefix}{}", &Uuid::new_v4().simple().to_string()[..8]);
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/api/register",
                None,
                Some(json!({"username": name, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(s, 201, "register: {v}");
        Account {
            id: v["user"]["id"].as_str().expect("user id").to_owned(),
            name: v["user"]["name"].as_str().expect("user name").to_owned(),
            token: v["token"].as_str().expect("token").to_owned(),
        }
    }

    pub async fn create_room(&self, who: &Account, name: &str) -> String {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/api/rooms",
                Some(&who.token),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, 201, "create room: {v}");
        v["id"].as_str().expect("room id").to_owned()
    }

    pub async fn join(&self, who: &Account, room: &str) {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/rooms/{room}/join"),
                Some(&who.token),
                None,
            )
            .await;
        assert_eq!(s, 200, "join: {v}");
    }
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(p: &Proc) -> Ws {
        Ws::connect_to(&p.addr).await
    }

    /// Connects to a gateway by its address (`host:port`).
    pub async fn connect_to(addr: &str) -> Ws {
        let (stream, _) =
            tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), None, true)
                .await
                .expect("websocket connect");
        Ws { stream }
    }

    /// Connects and authenticates.
    pub async fn login(p: &Proc, who: &Account) -> Ws {
        Ws::login_to(&p.addr, who).await
    }

    /// Connects to a gateway by its address and authenticates.
    pub async fn login_to(addr: &str, who: &Account) -> Ws {
        let mut ws = Ws::connect_to(addr).await;
        ws.send(json!({"type": "hello", "token": who.token})).await;
        let w = ws.expect("welcome").await;
        assert_eq!(w["user"]["id"], who.id.as_str());
        ws
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(WsMessage::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, m: WsMessage) {
        self.stream.send(m).await.expect("ws send");
    }

    /// The next JSON frame (skipping control frames), or None if the socket closed or
    /// nothing came within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match m {
                Ok(WsMessage::Text(t)) => return serde_json::from_str(&t).ok(),
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The first `message` frame within `within` (other frames, like presence, skipped).
    pub async fn message_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.next_within(left).await?;
            if v["type"] == "message" {
                return Some(v);
            }
        }
    }

    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(15))
            .await
            .expect("a frame within 15 s")
    }

    /// Skips frames until one of type `ty` arrives.
    pub async fn expect(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == ty {
                return v;
            }
            assert_ne!(v["type"], "error", "expected {ty}, got an error: {v}");
        }
    }

    /// Skips frames until an `error` arrives.
    #[allow(dead_code)]
    pub async fn expect_error(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == "error" {
                return v;
            }
        }
    }

    /// The close code the server sent, waiting up to `within`.
    pub async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match m {
                Ok(WsMessage::Close(Some(f))) => return Some(f.code.into()),
                Ok(WsMessage::Close(None)) => return Some(1005),
                Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn subscribe(&mut self, room: &str, since: Option<i64>) -> Vec<Value> {
        self.send(json!({"type": "subscribe", "room": room, "since": since}))
            .await;
        let mut backlog = Vec::new();
        loop {
            let v = self.next().await;
            match v["type"].as_str() {
                Some("subscribed") => return backlog,
                Some("message") => backlog.push(v["message"].clone()),
                Some("error") => panic!("subscribe refused: {v}"),
                _ => {}
            }
        }
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
