//! TLS and authentication to PostgreSQL, Redis and Kafka, against the TLS profile
//! (`scripts/services.sh start-tls`): a setting that cannot work stops the start with one
//! line naming the service, its address and why (no password in it); while running,
//! `/readyz` names the failing service and the class of the failure.
//! (The delivery, recovery, resend and consumer tests run over TLS too: `Mode::Tls`, with
//! Kafka over SASL_SSL.)

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

use crate::harness::{pg_connect, service, Env, Http, Mode, SECRET};

/// The commands README's "Redis ACL" section gives the user (scripts/services.sh too).
const CHAT_COMMANDS: &str = "+hello +auth +ping +publish +subscribe +unsubscribe +evalsha \
     +script|load +get +set +del +exists +incr +pexpire +zadd +zcard +zcount +zrange +zrem \
     +zremrangebyscore";

fn tls(var: &str) -> String {
    service(&format!("TLS_{var}"))
}

/// Runs `chat serve` with these services (and the plain Kafka) and returns what it printed
/// on stderr, asserting it refused to start (a failure exit, within 60 s).
async fn refused(database_url: &str, redis_url: &str, extra: &[&str]) -> String {
    refused_with_kafka(&service("KAFKA_BROKERS"), database_url, redis_url, extra).await
}

/// As [`refused`], with these Kafka brokers.
async fn refused_with_kafka(
    brokers: &str,
    database_url: &str,
    redis_url: &str,
    extra: &[&str],
) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"));
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_CLUSTER_NODES",
        "KAFKA_BROKERS",
        "JWT_SECRET",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-brokers",
            brokers,
            "--jwt-secret",
            SECRET,
            "--redis-prefix",
            "tlsrefused",
            "--database-url",
            database_url,
            "--redis-url",
            redis_url,
        ])
        .args(extra)
        // Only what the process prints itself: no log lines.
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chat");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chat exits within 60 s")
        .expect("chat output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "chat started: {stderr} {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The refusal is one line `chat: SERVICE at ADDRESS: CLASS: reason` holding `reason`, and
/// none of the passwords.
fn assert_one_line(stderr: &str, service: &str, address: &str, class: &str, reason: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    let want = format!("chat: {service} at {address}: {class}: ");
    assert!(
        lines[0].starts_with(&want),
        "{stderr:?} does not start {want:?}"
    );
    assert!(
        lines[0].contains(reason),
        "{stderr:?} does not say {reason:?}"
    );
    for secret in [
        "chat-redis-secret",
        "chat-kafka-secret",
        "postgres:postgres",
        "wrong-secret-",
        ":postgres@",
    ] {
        assert!(!lines[0].contains(secret), "{stderr:?} shows a password");
    }
}

/// `url` with `host` instead of 127.0.0.1.
fn with_host(url: &str, host: &str) -> String {
    url.replacen("@127.0.0.1:", &format!("@{host}:"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_stops_the_start() {
    let (db, redis, ca, other) = (
        tls("DATABASE_URL"),
        tls("REDIS_URL"),
        tls("CA_FILE"),
        tls("OTHER_CA_FILE"),
    );
    let pg_args = ["--database-ca-file", &other, "--redis-ca-file", &ca];
    let redis_args = ["--database-ca-file", &ca, "--redis-ca-file", &other];
    let (pg, rd) = tokio::join!(
        refused(&db, &redis, &pg_args),
        refused(&db, &redis, &redis_args),
    );
    assert_one_line(&pg, "PostgreSQL", "127.0.0.1:5441", "tls", "UnknownIssuer");
    assert_one_line(&rd, "Redis", "127.0.0.1:6390", "tls", "UnknownIssuer");
    // Without a CA file the system roots decide, and they do not know the test CA.
    let sys = refused(&db, &redis, &["--redis-ca-file", &ca]).await;
    assert_one_line(&sys, "PostgreSQL", "127.0.0.1:5441", "tls", "UnknownIssuer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_the_start() {
    let (db, redis, ca) = (tls("DATABASE_URL"), tls("REDIS_URL"), tls("CA_FILE"));
    let cas = [
        "--database-ca-file",
        ca.as_str(),
        "--redis-ca-file",
        ca.as_str(),
    ];
    let bad_db = db.replacen(":postgres@", ":wrong-secret-pg@", 1);
    let bad_redis = redis.replacen(":chat-redis-secret@", ":wrong-secret-redis@", 1);
    assert_ne!(bad_db, db);
    assert_ne!(bad_redis, redis);
    let (pg, rd) = tokio::join!(
        refused(&bad_db, &redis, &cas),
        refused(&db, &bad_redis, &cas)
    );
    assert_one_line(
        &pg,
        "PostgreSQL",
        "127.0.0.1:5441",
        "auth",
        "password authentication failed",
    );
    assert_one_line(&rd, "Redis", "127.0.0.1:6390", "auth", "WRONGPASS");
}

/// The test certificate names 127.0.0.1 only: `localhost` resolves there but is not it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_certificate_does_not_name_stops_the_start() {
    let (db, redis, ca) = (tls("DATABASE_URL"), tls("REDIS_URL"), tls("CA_FILE"));
    let cas = [
        "--database-ca-file",
        ca.as_str(),
        "--redis-ca-file",
        ca.as_str(),
    ];
    let (db_local, redis_local) = (with_host(&db, "localhost"), with_host(&redis, "localhost"));
    let (pg, rd) = tokio::join!(
        refused(&db_local, &redis, &cas),
        refused(&db, &redis_local, &cas),
    );
    assert_one_line(
        &pg,
        "PostgreSQL",
        "localhost:5441",
        "tls",
        "not valid for name \"localhost\"",
    );
    assert_one_line(
        &rd,
        "Redis",
        "localhost:6390",
        "tls",
        "not valid for name \"localhost\"",
    );
}

/// TLS asked of a plaintext port (the plain Redis), and plaintext offered to a server that
/// takes TLS only (the TLS profile's PostgreSQL rejects `hostnossl`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_mixed_up_stop_the_start() {
    let (db, redis, ca) = (tls("DATABASE_URL"), tls("REDIS_URL"), tls("CA_FILE"));
    let plain_redis = service("REDIS_URL");
    let plain_port = plain_redis
        .rsplit(':')
        .next()
        .expect("port")
        .trim_end_matches('/');
    let to_plain = format!("rediss://default:x@127.0.0.1:{plain_port}");
    let plaintext_db = db.replacen("sslmode=verify-full", "sslmode=disable", 1);
    assert_ne!(plaintext_db, db);
    let both = [
        "--database-ca-file",
        ca.as_str(),
        "--redis-ca-file",
        ca.as_str(),
    ];
    let redis_only = ["--redis-ca-file", ca.as_str()];
    let (rd, pg) = tokio::join!(
        refused(&db, &to_plain, &both),
        refused(&plaintext_db, &redis, &redis_only),
    );
    assert_one_line(
        &rd,
        "Redis",
        &format!("127.0.0.1:{plain_port}"),
        "tls",
        "did not answer the TLS handshake",
    );
    assert_one_line(&pg, "PostgreSQL", "127.0.0.1:5441", "tls", "no encryption");
}

/// A TCP forwarder whose destination can change; a change cuts the open connections.
struct Proxy {
    addr: SocketAddr,
    to: watch::Sender<SocketAddr>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (tx, rx) = watch::channel(to);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let to = *rx.borrow_and_update();
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, to: tx }
    }

    fn switch(&self, to: SocketAddr) {
        self.to.send_replace(to);
    }
}

fn addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().expect("host:port");
    hostport.parse().expect("an IP address and port")
}

/// Polls `/readyz` until it names `service` as failed with `class` (or, with None, answers
/// 200); returns the last body.
async fn readyz_until(h: &Http, service: &str, class: Option<&str>) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (status, v) = h.call(reqwest::Method::GET, "/readyz", None, None).await;
        let done = match class {
            None => status == 200,
            Some(c) => status == 503 && v["failed"][service]["class"] == c,
        };
        if done {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz did not report {service}: {class:?} within 40 s: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A running gateway over TLS whose PostgreSQL and Redis fail in each class in turn:
/// `/readyz` names the service and the class (tls, auth, unreachable), and recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_service_and_the_class_of_its_failure() {
    let env = Env::with_mode("tls-readyz", Mode::Tls).await;
    let ca = env.ca_file.clone().expect("CA file");
    let id = &Uuid::new_v4().simple().to_string()[..12];
    // PostgreSQL: a role of this test's own, owning its database.
    let role = format!("r{id}");
    let mut admin = pg_connect(&env.admin_url, Some(&ca)).await;
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'first-{id}'"),
        format!("ALTER DATABASE {} OWNER TO {role}", env.db_name),
    ] {
        diesel::sql_query(&sql)
            .execute(&mut admin)
            .await
            .expect(&sql);
    }
    // Redis: an ACL user of this test's own, limited to its prefix and chat's commands.
    let user = format!("u{id}");
    let redis_admin = chat::tls::RedisTarget {
        url: tls("REDIS_ADMIN_URL"),
        ca: Some(chat::tls::CaFile::read(&ca).expect("CA file")),
        cluster: Vec::new(),
    };
    let mut radmin = redis_admin
        .client(&redis_admin.url)
        .expect("redis admin client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis admin connection");
    let acl = |password: &str| {
        let mut c = redis::cmd("ACL");
        c.arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg("resetpass")
            .arg(format!(">{password}"));
        c.arg("resetkeys")
            .arg(format!("~{}:*", env.prefix))
            .arg("resetchannels")
            .arg(format!("&{}:*", env.prefix))
            .arg("-@all");
        for command in CHAT_COMMANDS.split_whitespace() {
            c.arg(command);
        }
        c
    };
    acl(&format!("first-{id}"))
        .query_async::<()>(&mut radmin)
        .await
        .expect("ACL SETUSER");

    let pg_real = addr_of(&env.admin_url);
    let redis_real = addr_of(&env.redis_url);
    let (pg_proxy, redis_proxy) = (Proxy::start(pg_real).await, Proxy::start(redis_real).await);
    let db_url = format!(
        "postgres://{role}:first-{id}@{}/{}?sslmode=verify-full",
        pg_proxy.addr, env.db_name
    );
    let redis_url = format!("rediss://{user}:first-{id}@{}", redis_proxy.addr);
    let gw = env
        .spawn_with(
            "gateway",
            "gw-m",
            &["--database-url", &db_url, "--redis-url", &redis_url],
        )
        .await;
    let h = Http::new(&gw);
    readyz_until(&h, "", None).await;
    // Works end to end as the restricted user (a registration writes PostgreSQL; the
    // session's subscriptions and presence use Redis).
    let alice = h.register("alice").await;
    let mut ws = crate::harness::Ws::login(&gw, &alice).await;
    let room = h.create_room(&alice, "tls").await;
    ws.subscribe(&room, None).await;

    // Redis, auth: the password changes and the connections are cut.
    acl(&format!("second-{id}"))
        .query_async::<()>(&mut radmin)
        .await
        .expect("ACL SETUSER");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(&user)
        .query_async::<i64>(&mut radmin)
        .await
        .expect("CLIENT KILL");
    let v = readyz_until(&h, "redis", Some("auth")).await;
    assert!(!v.to_string().contains(&format!("second-{id}")), "{v}");
    acl(&format!("first-{id}"))
        .query_async::<()>(&mut radmin)
        .await
        .expect("ACL SETUSER");
    readyz_until(&h, "", None).await;

    // Redis, unreachable: nothing answers behind the proxy.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("address")
    };
    redis_proxy.switch(closed);
    readyz_until(&h, "redis", Some("unreachable")).await;
    redis_proxy.switch(redis_real);
    readyz_until(&h, "", None).await;

    // PostgreSQL, tls: behind the proxy now is the plain cluster, whose certificate (Debian's
    // self-signed one) the CA file does not trust.
    let plain_pg = addr_of(&service("DATABASE_URL"));
    pg_proxy.switch(plain_pg);
    readyz_until(&h, "postgres", Some("tls")).await;
    // PostgreSQL, unreachable.
    pg_proxy.switch(closed);
    readyz_until(&h, "postgres", Some("unreachable")).await;
    pg_proxy.switch(pg_real);
    readyz_until(&h, "", None).await;
    // PostgreSQL, auth: the role's password changes and its sessions end.
    for sql in [
        format!("ALTER ROLE {role} PASSWORD 'second-{id}'"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"),
    ] {
        diesel::sql_query(&sql)
            .execute(&mut admin)
            .await
            .expect(&sql);
    }
    readyz_until(&h, "postgres", Some("auth")).await;
    drop(ws);
    drop(gw);
    // The database is dropped WITH (FORCE) by Env; the role after it.
    let drop_role = format!("DROP ROLE IF EXISTS {role}");
    drop(env);
    let _ = diesel::sql_query(&drop_role).execute(&mut admin).await;
    let _ = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async::<i64>(&mut radmin)
        .await;
}

/// The secrets from files (`…_FILE`, the Kubernetes/Docker secrets convention): a gateway
/// starts over TLS with its database URL, Redis URL and token secret read from files, and
/// neither its log nor a refused start shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_files_start_a_gateway_and_stay_unprinted() {
    let env = Env::with_mode("tls-secret-files", Mode::Tls).await;
    let ca = env.ca_file.clone().expect("CA file");
    let dir = env.log_dir.join("secrets");
    std::fs::create_dir_all(&dir).expect("secrets dir");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{text}\n")).expect("secret file");
        p.to_str().expect("utf-8 path").to_owned()
    };
    let db_file = write("database-url", &env.db_url);
    let redis_file = write("redis-url", &env.redis_url);
    let jwt_file = write("jwt-secret", SECRET);
    let kafka_file = write("kafka-password", &tls("KAFKA_PASSWORD"));
    let kafka_user = tls("KAFKA_USERNAME");
    let ca = ca.to_str().expect("utf-8 path");
    let vars = [
        ("DATABASE_URL_FILE", db_file.as_str()),
        ("REDIS_URL_FILE", redis_file.as_str()),
        ("JWT_SECRET_FILE", jwt_file.as_str()),
        ("DATABASE_CA_FILE", ca),
        ("REDIS_CA_FILE", ca),
        ("KAFKA_CA_FILE", ca),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
        ("KAFKA_USERNAME", &kafka_user),
        ("KAFKA_PASSWORD_FILE", kafka_file.as_str()),
        ("KAFKA_BROKERS", &env.brokers),
        ("KAFKA_TOPIC", &env.topic),
        ("REDIS_PREFIX", &env.prefix),
    ];
    let start = |vars: Vec<(&str, String)>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"));
        for var in [
            "DATABASE_URL",
            "REDIS_URL",
            "REDIS_CLUSTER_NODES",
            "KAFKA_BROKERS",
            "JWT_SECRET",
            "KAFKA_PASSWORD",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(["serve", "--role", "gateway", "--listen", "127.0.0.1:0"])
            .envs(vars)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chat")
    };
    let owned = |v: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        v.iter().map(|(k, v)| (*k, v.to_string())).collect()
    };
    let mut child = start(owned(&vars));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(a) = line.strip_prefix("chat listening on http://") {
                return a.to_owned();
            }
        }
        panic!("the gateway exited before listening")
    })
    .await
    .expect("listening within 60 s");
    let h = Http {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    };
    readyz_until(&h, "", None).await;
    h.register("filed").await;
    let _ = child.start_kill();
    let out = child.wait_with_output().await.expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("starting"), "{log}");
    for secret in [
        "chat-redis-secret",
        "chat-kafka-secret",
        ":postgres@",
        SECRET,
    ] {
        assert!(!log.contains(secret), "the log shows a secret ({secret})");
    }
    // A wrong password in the file: refused in one line, without the file's contents.
    let wrong = write(
        "database-url-wrong",
        &env.db_url
            .replacen(":postgres@", ":wrong-secret-in-file@", 1),
    );
    let mut bad = owned(&vars);
    bad[0].1 = wrong;
    let out = start(bad).wait_with_output().await.expect("output");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("chat: PostgreSQL at 127.0.0.1:5441: auth: "),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-secret-in-file"), "{stderr}");
}

/// `chat serve` over the TLS profile's PostgreSQL and Redis (verified, with passwords) and
/// its Kafka with `kafka` (flags); asserts the refusal names Kafka.
async fn kafka_refused(brokers: &str, kafka: &[&str]) -> String {
    let (db, redis, ca) = (tls("DATABASE_URL"), tls("REDIS_URL"), tls("CA_FILE"));
    let mut args = vec!["--database-ca-file", &ca, "--redis-ca-file", &ca];
    args.extend_from_slice(kafka);
    refused_with_kafka(brokers, &db, &redis, &args).await
}

fn kafka_port() -> String {
    tls("KAFKA_BROKERS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_a_wrong_ca_stops_the_start() {
    let (brokers, other, user, pass) = (
        kafka_port(),
        tls("OTHER_CA_FILE"),
        tls("KAFKA_USERNAME"),
        tls("KAFKA_PASSWORD"),
    );
    let sasl = [
        "--kafka-sasl-mechanism",
        "SCRAM-SHA-512",
        "--kafka-username",
        user.as_str(),
        "--kafka-password",
        pass.as_str(),
    ];
    let mut wrong_ca = vec!["--kafka-ca-file", other.as_str()];
    wrong_ca.extend_from_slice(&sasl);
    // Without a CA file the system roots decide, and they do not know the test CA.
    let mut system = vec!["--kafka-tls"];
    system.extend_from_slice(&sasl);
    let (a, b) = tokio::join!(
        kafka_refused(&brokers, &wrong_ca),
        kafka_refused(&brokers, &system)
    );
    assert_one_line(&a, "Kafka", &brokers, "tls", "UnknownIssuer");
    assert_one_line(&b, "Kafka", &brokers, "tls", "UnknownIssuer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_a_wrong_password_stops_the_start() {
    let (brokers, ca, user) = (kafka_port(), tls("CA_FILE"), tls("KAFKA_USERNAME"));
    let with = |mechanism: &'static str| {
        [
            "--kafka-ca-file".to_owned(),
            ca.clone(),
            "--kafka-sasl-mechanism".to_owned(),
            mechanism.to_owned(),
            "--kafka-username".to_owned(),
            user.clone(),
            "--kafka-password".to_owned(),
            "wrong-secret-kafka".to_owned(),
        ]
    };
    let (scram, plain) = (with("SCRAM-SHA-512"), with("PLAIN"));
    let scram: Vec<&str> = scram.iter().map(String::as_str).collect();
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    let (a, b) = tokio::join!(
        kafka_refused(&brokers, &scram),
        kafka_refused(&brokers, &plain)
    );
    assert_one_line(
        &a,
        "Kafka",
        &brokers,
        "auth",
        "SASL SCRAM-SHA-512 authentication failed",
    );
    assert_one_line(
        &b,
        "Kafka",
        &brokers,
        "auth",
        "SASL PLAIN authentication failed",
    );
}

/// TLS asked of the plain broker's plaintext listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tls_to_a_plaintext_port_stops_the_start() {
    let (plain, ca) = (service("KAFKA_BROKERS"), tls("CA_FILE"));
    let out = kafka_refused(&plain, &["--kafka-ca-file", &ca]).await;
    assert_one_line(&out, "Kafka", &plain, "tls", "TLS handshake");
}

/// PLAIN and SCRAM-SHA-256 work too (the other `::tls` tests use SCRAM-SHA-512): a gateway
/// starts, `/readyz` answers 200 and a message is sent and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_plain_and_scram_sha_256_work() {
    let env = Env::with_mode("tls-kafka-mechanisms", Mode::Tls).await;
    for (i, mechanism) in ["PLAIN", "SCRAM-SHA-256"].iter().enumerate() {
        let label = if i == 0 {
            "gw-m".to_owned()
        } else {
            format!("gw{i}")
        };
        let gw = env
            .spawn_with("all", &label, &["--kafka-sasl-mechanism", mechanism])
            .await;
        let h = Http::new(&gw);
        readyz_until(&h, "", None).await;
        let alice = h.register(&format!("kafka{i}")).await;
        let room = h.create_room(&alice, &format!("sasl{i}")).await;
        let mut ws = crate::harness::Ws::login(&gw, &alice).await;
        ws.subscribe(&room, None).await;
        let body = format!("over {mechanism}");
        ws.send(
            serde_json::json!({"type": "send", "room": room, "client_msg_id": "m1", "body": body}),
        )
        .await;
        // The ack and the delivery, in either order (the relay can be first).
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            let v = ws.next().await;
            assert_ne!(v["type"], "error", "{v}");
            acked |= v["type"] == "ack";
            if v["type"] == "message" {
                assert_eq!(v["message"]["body"], body.as_str());
                delivered = true;
            }
        }
    }
}

/// Sets the SCRAM-SHA-512 password of a Kafka user of the TLS profile's broker (made if
/// new), over its plaintext admin listener, with Kafka's own tool.
async fn kafka_scram_user(user: &str, password: &str) {
    let out = tokio::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
        .args([
            "kafka-class",
            "kafka.admin.ConfigCommand",
            "--bootstrap-server",
            &tls("KAFKA_ADMIN_BROKERS"),
            "--alter",
            "--add-config",
            &format!("SCRAM-SHA-512=[iterations=4096,password={password}]"),
            "--entity-type",
            "users",
            "--entity-name",
            user,
        ])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("kafka-configs within 90 s")
        .expect("run kafka-configs");
    assert!(
        out.status.success(),
        "kafka-configs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running gateway whose Kafka user's password changes: `/readyz` names Kafka and the
/// class (auth), and recovers when the password is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_kafka_and_the_class_of_its_failure() {
    let env = Env::with_mode("tls-readyz-kafka", Mode::Tls).await;
    let id = &Uuid::new_v4().simple().to_string()[..12];
    let user = format!("k{id}");
    let (first, second) = (format!("first-{id}"), format!("second-{id}"));
    kafka_scram_user(&user, &first).await;
    let gw = env
        .spawn_with(
            "gateway",
            "gw-m",
            &["--kafka-username", &user, "--kafka-password", &first],
        )
        .await;
    let h = Http::new(&gw);
    readyz_until(&h, "", None).await;
    kafka_scram_user(&user, &second).await;
    let v = readyz_until(&h, "kafka", Some("auth")).await;
    let text = v.to_string();
    assert!(text.contains("SCRAM-SHA-512"), "{v}");
    assert!(!text.contains(&second) && !text.contains(&first), "{v}");
    kafka_scram_user(&user, &first).await;
    readyz_until(&h, "", None).await;
}

/// A replication factor the cluster cannot hold (3 copies on the one test broker) stops
/// the start with the topic, the factor and Kafka's answer, and creates nothing; without
/// the flag the topic is created with one copy per broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_factor_the_cluster_cannot_hold_stops_the_start() {
    let env = Env::new("kafka-replication").await;
    let topic = env.topic.clone();
    let stderr = refused(
        &env.db_url,
        &service("REDIS_URL"),
        &["--kafka-topic", &topic, "--kafka-replication-factor", "3"],
    )
    .await;
    assert!(
        stderr.contains(&topic) && stderr.contains("replication factor 3"),
        "{stderr}"
    );
    assert!(stderr.lines().count() <= 2, "one line: {stderr}");
    // Nothing was created: the next start creates the topic, with the default.
    let gw = env.spawn("all", "gw-m").await;
    let log = std::fs::read_to_string(env.log_dir.join("gw-m.log")).unwrap_or_default();
    let plain: String = {
        // Without the terminal colours of the log lines.
        let mut out = String::new();
        let mut esc = false;
        for c in log.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    };
    let created = plain
        .lines()
        .find(|l| l.contains("created the Kafka topic"))
        .unwrap_or_else(|| panic!("{plain}"));
    assert!(created.contains("replication=1"), "{created}");
    drop(gw);
}
