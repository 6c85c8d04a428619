//! Fault tests (issue 3): a load of resilient clients on two gateways (with two consumers)
//! while one part of the system fails; then every acked message must have reached every
//! reader once and in order, and be in PostgreSQL exactly once. Each prints a summary line.
//!
//! These stop and start the shared services (scripts/services.sh), so they run one at a
//! time (a lock), in their own test binary (cargo runs binaries one after another).

#[path = "../it/harness.rs"]
#[allow(dead_code)]
mod harness;
mod load;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use harness::{Env, Http, Proc};
use load::{Client, Gateways, Spec};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const USERS: usize = 4;
const ROOMS: usize = 3;

struct Scenario {
    env: Env,
    gws: Vec<Proc>,
    consumers: Vec<Proc>,
    gateways: Gateways,
    clients: Vec<Client>,
    rooms: Vec<String>,
    started: Instant,
}

/// How many of each role a scenario runs, and on which Kafka.
struct Shape {
    gateways: usize,
    consumers: usize,
    /// Another Kafka than the single broker (the three-node cluster).
    kafka: Option<String>,
    /// The Redis Cluster's seed nodes instead of the single Redis.
    redis_cluster: Option<String>,
}

impl Shape {
    const PAIR: Shape = Shape {
        gateways: 2,
        consumers: 2,
        kafka: None,
        redis_cluster: None,
    };
}

impl Scenario {
    /// Two gateways, two consumers, `USERS` clients in `ROOMS` shared rooms, each sending
    /// `messages` at one per `every`.
    async fn start(name: &str, messages: usize, every: Duration) -> Scenario {
        Scenario::start_shaped(name, messages, every, Shape::PAIR).await
    }

    async fn start_shaped(name: &str, messages: usize, every: Duration, shape: Shape) -> Scenario {
        let mut env = match &shape.redis_cluster {
            Some(nodes) => Env::on_redis_cluster(name, nodes).await,
            None => Env::new(name).await,
        };
        if let Some(brokers) = shape.kafka {
            env.brokers = brokers;
            // Enough partitions for three and four consumers to share.
            env.partitions = 6;
        }
        let mut gws = Vec::new();
        for i in 0..shape.gateways {
            let label = if i == 0 {
                "gw-0-m".to_owned()
            } else {
                format!("gw-{i}")
            };
            gws.push(env.spawn("gateway", &label).await);
        }
        let mut consumers = Vec::new();
        for i in 0..shape.consumers {
            consumers.push(env.spawn("consumer", &format!("consumer-{i}")).await);
        }
        let h = Http::new(&gws[0]);
        let mut users = Vec::new();
        for _ in 0..USERS {
            users.push(h.register("u").await);
        }
        let mut rooms = Vec::new();
        for i in 0..ROOMS {
            let r = h.create_room(&users[0], &format!("{name}-{i}")).await;
            for u in &users[1..] {
                h.join(u, &r).await;
            }
            rooms.push(r);
        }
        let gateways: Gateways = std::sync::Arc::new(std::sync::Mutex::new(
            gws.iter().map(|g| g.addr.clone()).collect(),
        ));
        let clients: Vec<Client> = users
            .into_iter()
            .enumerate()
            .map(|(i, u)| {
                Client::start(
                    u,
                    gateways.clone(),
                    Spec {
                        rooms: rooms.clone(),
                        messages,
                        every,
                        first_gateway: i,
                    },
                )
            })
            .collect();
        Scenario {
            env,
            gws,
            consumers,
            gateways,
            clients,
            rooms,
            started: Instant::now(),
        }
    }

    /// At N: three gateways and three consumers on the three Kafka brokers and the Redis
    /// Cluster, each client sending `messages` at one per 100 ms; with the cluster's test
    /// lock (exclusive for a test that breaks the cluster).
    async fn at_n(
        name: &str,
        messages: usize,
        alone: bool,
    ) -> (Scenario, harness::RedisClusterLock) {
        let lock = harness::redis_cluster_lock(alone).await;
        let shape = Shape {
            gateways: 3,
            consumers: 3,
            kafka: Some(harness::service("CLUSTER_KAFKA_BROKERS")),
            redis_cluster: Some(harness::service("CLUSTER_REDIS_NODES")),
        };
        let s = Scenario::start_shaped(name, messages, Duration::from_millis(100), shape).await;
        (s, lock)
    }

    /// `/readyz` of gateway `i`: the status and the names of the failed dependencies.
    async fn readyz(&self, i: usize) -> (u16, Vec<String>) {
        let (status, v) = Http::new(&self.gws[i])
            .call(reqwest::Method::GET, "/readyz", None, None)
            .await;
        let failed = v["failed"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        (status, failed)
    }

    /// Every gateway's `/readyz` names `dependency` as failed within 10 s.
    async fn expect_unready(&self, dependency: &str) {
        for i in 0..self.gws.len() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (status, failed) = self.readyz(i).await;
                if status == 503 && failed.iter().any(|f| f == dependency) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "gateway {i}: /readyz does not report {dependency}: {status} {failed:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// Waits until every gateway's `/readyz` answers 200; returns how long that took.
    async fn wait_ready(&self) -> Duration {
        let t0 = Instant::now();
        for i in 0..self.gws.len() {
            loop {
                let (status, failed) = self.readyz(i).await;
                if status == 200 {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "gateway {i}: not ready 60 s after the fault ended: {failed:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        t0.elapsed()
    }

    /// Waits until `at` after the start.
    async fn at(&self, at: Duration) {
        tokio::time::sleep_until((self.started + at).into()).await;
    }

    /// Waits for the load to finish and checks everything; prints the summary line.
    async fn finish(self, fault: &str, restored: Instant) {
        let deadline = Instant::now() + Duration::from_secs(120);
        // 1. every message sent and acked
        loop {
            let done = self
                .clients
                .iter()
                .all(|c| c.with(|r| r.done_sending && r.acked.len() == r.sent));
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{fault}: sends not all acked within 120 s: {}",
                self.progress()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let acked: Vec<(String, String, i64)> = self
            .clients
            .iter()
            .flat_map(|c| c.with(|r| r.acked.values().cloned().collect::<Vec<_>>()))
            .collect();
        let ids: HashSet<&str> = acked.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(
            ids.len(),
            acked.len(),
            "{fault}: two sends acked with one message id"
        );
        // 2. every reader got every acked message
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let missing: usize = self
                .clients
                .iter()
                .map(|c| c.with(|r| missing(r, &ids)))
                .sum();
            if missing == 0 {
                break;
            }
            if Instant::now() >= deadline {
                for c in &self.clients {
                    c.with(|r| {
                        let got = received_ids(r);
                        let miss: Vec<_> = acked
                            .iter()
                            .filter(|(id, _, _)| !got.contains(id.as_str()))
                            .map(|(_, room, p)| (room[room.len() - 8..].to_owned(), *p))
                            .collect();
                        eprintln!("{}: reconnects {} missing {:?}", c.name, r.reconnects, miss);
                        for (room, d) in &r.delivered {
                            eprintln!(
                                "   {}: {:?}",
                                &room[room.len() - 8..],
                                d.iter().map(|(p, _)| *p).collect::<Vec<_>>()
                            );
                        }
                    });
                }
                panic!(
                    "{fault}: {missing} deliveries missing 20 s after the last ack: {}",
                    self.progress()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let delivered_at = Instant::now();
        // 2b. every ack named the position readers saw the message at (a producer's retry
        //     that wrote a record twice must not hand its sender the copy's offset)
        let mut unseen_acks = Vec::new();
        for (id, room, position) in &acked {
            let seen = self.clients.iter().all(|c| {
                c.with(|r| {
                    r.delivered
                        .get(room)
                        .is_some_and(|d| d.iter().any(|(p, i)| p == position && i == id))
                })
            });
            if !seen {
                unseen_acks.push((id.clone(), *position));
            }
        }
        // 3. PostgreSQL has each exactly once
        let n = self
            .env
            .wait_count(
                "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')",
                acked.len() as i64,
                Duration::from_secs(60),
            )
            .await;
        let persisted_at = Instant::now();
        let distinct = self
            .env
            .count("SELECT count(DISTINCT (sender_id, client_msg_id)) AS n FROM messages WHERE kind NOT IN ('member', 'room')")
            .await;
        let sent: usize = self.clients.iter().map(|c| c.with(|r| r.sent)).sum();
        let mut ack_times: Vec<Instant> = self
            .clients
            .iter()
            .flat_map(|c| c.with(|r| r.ack_times.clone()))
            .collect();
        ack_times.sort();
        let stall = ack_times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        let mut records = Vec::new();
        for c in self.clients {
            records.push(c.stop().await);
        }
        let delivered: usize = records
            .iter()
            .map(|r| r.delivered.values().map(Vec::len).sum::<usize>())
            .sum();
        let dups: usize = records.iter().map(|r| r.duplicates).sum();
        let ooo: usize = records.iter().map(|r| r.out_of_order).sum();
        let reconnects: usize = records.iter().map(|r| r.reconnects).sum();
        let retryable: usize = records.iter().map(|r| r.retryable_errors).sum();
        let errors: Vec<&String> = records.iter().flat_map(|r| &r.other_errors).collect();
        eprintln!(
            "FAULT {fault}: sent {sent}, acked {}, delivered {delivered} ({USERS} readers), persisted {n}, lost 0, duplicated {dups}, out of order {ooo}, acks naming a position no reader saw {}; reconnects {reconnects}, retryable errors {retryable}; longest ack stall {:.1} s; all delivered {:.1} s and persisted {:.1} s after the fault ended",
            acked.len(),
            unseen_acks.len(),
            stall.as_secs_f64(),
            delivered_at.saturating_duration_since(restored).as_secs_f64(),
            persisted_at.saturating_duration_since(restored).as_secs_f64(),
        );
        assert!(errors.is_empty(), "{fault}: errors: {errors:?}");
        assert!(
            unseen_acks.is_empty(),
            "{fault}: acks name positions no reader saw (message id, acked position): {unseen_acks:?}"
        );
        assert_eq!(dups, 0, "{fault}: duplicated deliveries");
        assert_eq!(ooo, 0, "{fault}: out-of-order deliveries");
        assert_eq!(n, acked.len() as i64, "{fault}: rows");
        assert_eq!(distinct, acked.len() as i64, "{fault}: duplicate rows");
        drop(self.gws);
        drop(self.consumers);
    }

    fn progress(&self) -> String {
        self.clients
            .iter()
            .map(|c| {
                c.with(|r| {
                    format!(
                        "[{} sent {} acked {} reconnects {} errors {:?}]",
                        c.name,
                        r.sent,
                        r.acked.len(),
                        r.reconnects,
                        r.other_errors.first()
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The message ids a reader has received.
fn received_ids(r: &load::Record) -> HashSet<&str> {
    r.delivered
        .values()
        .flatten()
        .map(|(_, id)| id.as_str())
        .collect()
}

/// Acked messages a reader has not received.
fn missing(r: &load::Record, ids: &HashSet<&str>) -> usize {
    let got = received_ids(r);
    ids.iter().filter(|id| !got.contains(*id)).count()
}

/// A service stopped for the test; started again when dropped (also on a failure).
struct Down(&'static str);

fn services(cmd: &str, name: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let st = std::process::Command::new("bash")
        .args([script, cmd, name])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("services.sh");
    assert!(st.success(), "services.sh {cmd} {name}");
}

impl Down {
    fn stop(name: &'static str) -> Down {
        services("stop-one", name);
        Down(name)
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        services("start-one", self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start("f-gw-kill", 60, Duration::from_millis(50)).await;
    s.at(Duration::from_secs(1)).await;
    s.gws[0].kill9().await;
    s.gateways.lock().unwrap().remove(0);
    s.finish("kill -9 a gateway", Instant::now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start("f-consumer-kill", 60, Duration::from_millis(50)).await;
    s.at(Duration::from_secs(1)).await;
    s.consumers[0].kill9().await;
    s.finish("kill -9 a consumer", Instant::now()).await;
}

/// A consumer frozen (SIGSTOP, like a long GC pause or a stalled VM) past its leases'
/// expiry: the other takes its partitions over; when it thaws it must notice it lost them
/// and neither commit rows nor relay messages under the stale lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_paused_past_its_leases() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("f-consumer-pause", 120, Duration::from_millis(100)).await;
    s.at(Duration::from_secs(1)).await;
    s.consumers[0].signal("STOP");
    s.at(Duration::from_secs(9)).await;
    s.consumers[0].signal("CONT");
    s.finish("SIGSTOP a consumer for 8 s", Instant::now()).await;
}

/// Stops `service` 1 s into a load of `messages` per client (one per 100 ms), checks that
/// every gateway's `/readyz` names it, starts it again `down` after the start (at once if
/// zero), and checks the result.
async fn outage(name: &str, service: &'static str, down: Duration, messages: usize, fault: &str) {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start(name, messages, Duration::from_millis(100)).await;
    s.at(Duration::from_secs(1)).await;
    let stopped = Down::stop(service);
    s.expect_unready(service).await;
    s.at(Duration::from_secs(1) + down).await;
    drop(stopped);
    let restored = Instant::now();
    let ready = s.wait_ready().await;
    eprintln!(
        "FAULT {fault}: gateways ready {:.1} s after {service} was back",
        ready.as_secs_f64()
    );
    s.finish(fault, restored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_10s() {
    outage(
        "f-redis",
        "redis",
        Duration::from_secs(10),
        120,
        "Redis down 10 s",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_15s() {
    let fault = "PostgreSQL down 15 s";
    outage(
        "f-postgres",
        "postgres",
        Duration::from_secs(15),
        150,
        fault,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restarted() {
    let fault = "Kafka broker restarted";
    outage("f-kafka", "kafka", Duration::ZERO, 80, fault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_the_gateways() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start("f-rolling", 100, Duration::from_millis(50)).await;
    s.at(Duration::from_secs(1)).await;
    for i in 0..2 {
        let status = s.gws[i].terminate().await;
        assert!(status.success(), "gateway {i} after SIGTERM: {status}");
        let fresh = s.env.spawn("gateway", &format!("gw-{i}-again")).await;
        s.gateways.lock().unwrap()[i] = fresh.addr.clone();
        s.gws[i] = fresh;
    }
    s.finish("rolling restart (SIGTERM) of both gateways", Instant::now())
        .await;
}

/// A node of the three-broker Kafka cluster killed for a test; started again when dropped
/// (also on a failure), so the cluster is whole for the next test.
struct NodeDown(u32);

impl Drop for NodeDown {
    fn drop(&mut self) {
        cluster_node("start", self.0);
    }
}

fn cluster_node(action: &str, node: u32) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let st = std::process::Command::new("bash")
        .args([script, "kafka-cluster-node", action, &node.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("services.sh");
    assert!(
        st.success(),
        "services.sh kafka-cluster-node {action} {node}"
    );
}

/// The node that leads `partition` of `topic` (Kafka's TopicCommand).
fn leader_of(brokers: &str, topic: &str, partition: i32) -> u32 {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let bootstrap = brokers.split(',').next().unwrap_or(brokers);
    let out = std::process::Command::new("bash")
        .args([
            script,
            "kafka-class",
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--topic",
            topic,
        ])
        .output()
        .expect("TopicCommand");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let field = |name: &str| {
            line.split('\t')
                .find_map(|f| f.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        if field("Partition:").as_deref() == Some(&partition.to_string()) {
            if let Some(leader) = field("Leader:").and_then(|l| l.parse().ok()) {
                return leader;
            }
        }
    }
    panic!("no leader of {topic}/{partition} in:\n{text}");
}

/// Issue 20: kill -9 the leader of a busy partition of a three-broker cluster (replication
/// factor 3, min ISR 2) under load, with three gateways and three consumers. Another broker
/// takes the partition over; the idempotent producer sends the batch whose answer was lost
/// again, and the new leader answers with the first write's offset, so every ack names the
/// position readers see (before, 1 to 12 acks per run named a copy readers never got).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_leader_killed_in_a_cluster_of_three() {
    let _serial = SERIAL.lock().await;
    let (s, _cluster) = Scenario::at_n("f-kafka-leader", 150, false).await;
    s.at(Duration::from_secs(2)).await;
    let room: uuid::Uuid = s.rooms[0].parse().expect("room id");
    let partition = chat::log::partition_of(room, s.env.partitions);
    let leader = leader_of(&s.env.brokers, &s.env.topic, partition);
    cluster_node("kill", leader);
    let killed = Instant::now();
    let down = NodeDown(leader);
    eprintln!("FAULT kafka leader: killed node {leader}, leader of partition {partition}");
    // The load runs on for ~13 s; the node comes back near its end.
    s.at(Duration::from_secs(12)).await;
    drop(down);
    s.finish(
        "kill -9 the leader of a busy partition (3 Kafka brokers, Redis Cluster 3+3, 3 gateways, 3 consumers)",
        killed,
    )
    .await;
}

/// Who holds each partition's lease, sampled from Redis every 100 ms while a test runs:
/// the longest time a partition had no owner, and when the shares were last unfair.
struct LeaseWatch {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<LeaseLog>,
}

#[derive(Debug, Default)]
struct LeaseLog {
    /// Per partition, the longest stretch without an owner.
    longest_unowned: Vec<Duration>,
    /// (instant, owned partitions per owner) whenever that changed.
    changes: Vec<(Instant, Vec<usize>)>,
}

impl LeaseWatch {
    fn start(env: &Env) -> LeaseWatch {
        let url = env.redis_url.clone();
        let cluster = env.redis_cluster.clone();
        // The lease keys (src/coord/redis.rs): on a cluster, under one hash tag per topic,
        // so one MGET reads them all.
        let topic = match &cluster {
            Some(_) => format!("{{{}:{}}}", env.prefix, env.topic),
            None => env.topic.clone(),
        };
        let keys: Vec<String> = (0..env.partitions)
            .map(|p| format!("{}:lease:{topic}:{p}", env.prefix))
            .collect();
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let (mut one, mut many) = match cluster {
                Some(nodes) => (
                    None,
                    Some(
                        redis::cluster::ClusterClient::new(nodes.split(',').collect::<Vec<_>>())
                            .expect("cluster nodes")
                            .get_async_connection()
                            .await
                            .expect("redis cluster"),
                    ),
                ),
                None => (
                    Some(
                        redis::Client::open(url)
                            .expect("redis url")
                            .get_multiplexed_async_connection()
                            .await
                            .expect("redis"),
                    ),
                    None,
                ),
            };
            let mut log = LeaseLog {
                longest_unowned: vec![Duration::ZERO; keys.len()],
                ..LeaseLog::default()
            };
            let mut unowned_since: Vec<Option<Instant>> = vec![None; keys.len()];
            let mut last: Vec<usize> = Vec::new();
            while !until.is_cancelled() {
                let mget = redis::cmd("MGET").arg(&keys).clone();
                let owners: Vec<Option<String>> = match (&mut one, &mut many) {
                    (Some(c), _) => mget.query_async(c).await,
                    (_, Some(c)) => mget.query_async(c).await,
                    (None, None) => Ok(Vec::new()),
                }
                .unwrap_or_default();
                let now = Instant::now();
                let mut per_owner: std::collections::BTreeMap<String, usize> = Default::default();
                for (p, o) in owners.iter().enumerate() {
                    match o {
                        Some(v) => {
                            let owner = v.rsplit_once(':').map_or(v.as_str(), |(o, _)| o);
                            *per_owner.entry(owner.to_owned()).or_default() += 1;
                            if let Some(t) = unowned_since[p].take() {
                                log.longest_unowned[p] = log.longest_unowned[p].max(now - t);
                            }
                        }
                        None => {
                            unowned_since[p].get_or_insert(now);
                        }
                    }
                }
                let mut counts: Vec<usize> = per_owner.into_values().collect();
                counts.sort_unstable();
                let owned: usize = counts.iter().sum();
                counts.push(keys.len() - owned); // the last entry: unowned
                if counts != last {
                    log.changes.push((now, counts.clone()));
                    last = counts;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let now = Instant::now();
            for (p, since) in unowned_since.iter().enumerate() {
                if let Some(t) = since {
                    log.longest_unowned[p] = log.longest_unowned[p].max(now - *t);
                }
            }
            log
        });
        LeaseWatch { stop, task }
    }

    async fn finish(self) -> LeaseLog {
        self.stop.cancel();
        self.task.await.expect("lease watch")
    }
}

impl LeaseLog {
    /// How long after `since` the shares became fair (every partition owned by one of
    /// `consumers`, their counts differing by at most one) and stayed so until `until`.
    fn fair_after(&self, since: Instant, until: Instant, consumers: usize) -> Option<Duration> {
        let fair = |c: &Vec<usize>| {
            let (owners, unowned) = c.split_at(c.len() - 1);
            unowned[0] == 0
                && owners.len() == consumers
                && owners
                    .last()
                    .zip(owners.first())
                    .is_some_and(|(h, l)| h - l <= 1)
        };
        let mut fair_at = None;
        for (t, c) in self.changes.iter().filter(|(t, _)| *t < until) {
            if *t < since {
                continue;
            }
            if fair(c) {
                fair_at.get_or_insert(*t);
            } else {
                fair_at = None;
            }
        }
        fair_at.map(|t| t.saturating_duration_since(since))
    }

    fn longest_unowned(&self) -> Duration {
        self.longest_unowned
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
    }
}

/// Issue 20: one of three consumers is killed (kill -9) under load and a fourth starts;
/// the leases move (fair shares again within a lease period of each change, no partition
/// unowned longer than the lease expiry and a tick), and nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_and_another_added_at_n() {
    let _serial = SERIAL.lock().await;
    let (mut s, _cluster) = Scenario::at_n("f-consumers-n", 150, false).await;
    let watch = LeaseWatch::start(&s.env);
    s.at(Duration::from_secs(2)).await;
    s.consumers[0].kill9().await;
    let killed = Instant::now();
    s.at(Duration::from_secs(9)).await;
    let fourth = s.env.spawn("consumer", "consumer-3").await;
    let added = Instant::now();
    s.consumers.push(fourth);
    s.at(Duration::from_secs(14)).await;
    let leases = watch.finish().await;
    let end = Instant::now();
    // The kill: the two survivors own all 6 partitions once the dead one's leases expired
    // (the lease, 5 s, and a tick, 1 s); the fourth: 6 over three live ones within a
    // lease period.
    let after_kill = leases.fair_after(killed, added, 2);
    let after_add = leases.fair_after(added, end, 3);
    eprintln!(
        "FAULT consumers at N: the survivors owned every partition {after_kill:?} after the kill; shares fair {after_add:?} after the fourth started; longest a partition had no lease at all {:.1} s; owned per consumer (last: unowned) {:?}",
        leases.longest_unowned().as_secs_f64(),
        leases.changes.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
    );
    assert!(
        after_kill.is_some_and(|d| d < Duration::from_secs(9)),
        "the killed consumer's partitions were not taken over within the lease (5 s) and a tick: {after_kill:?}"
    );
    assert!(
        after_add.is_some_and(|d| d < Duration::from_secs(5)),
        "not fair within a lease period (5 s) of the fourth consumer's start: {after_add:?}"
    );
    assert!(
        leases.longest_unowned() < Duration::from_secs(3),
        "a partition had no lease for {:?}",
        leases.longest_unowned()
    );
    s.finish(
        "kill -9 one of three consumers, then start a fourth (3 Kafka brokers, Redis Cluster 3+3, 3 gateways)",
        killed,
    )
    .await;
}

/// Issue 20: a gateway is added and another removed (SIGTERM: the drain) during load, as
/// an autoscaler does; clients move to the others with nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_added_and_one_removed_at_n() {
    let _serial = SERIAL.lock().await;
    let (mut s, _cluster) = Scenario::at_n("f-gateways-n", 120, false).await;
    s.at(Duration::from_secs(2)).await;
    let added = s.env.spawn("gateway", "gw-3").await;
    s.gateways.lock().unwrap().push(added.addr.clone());
    s.gws.push(added);
    s.at(Duration::from_secs(4)).await;
    let removed = Instant::now();
    let status = s.gws[0].terminate().await;
    assert!(status.success(), "gateway 0 after SIGTERM: {status}");
    s.gateways.lock().unwrap().remove(0);
    s.gws.remove(0);
    s.finish(
        "a gateway added, another removed by SIGTERM (4 then 3 gateways, 3 consumers, 3 Kafka brokers, Redis Cluster 3+3)",
        removed,
    )
    .await;
}

/// A node of the Redis Cluster killed for a test; started again (it rejoins as a replica)
/// when dropped, also on a failure.
struct RedisNodeDown(String);

impl Drop for RedisNodeDown {
    fn drop(&mut self) {
        redis_cluster_cmd(&["redis-cluster-restart-node", &self.0]);
    }
}

fn redis_cluster_cmd(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("services.sh");
    assert!(out.status.success(), "services.sh {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Issue 20: kill -9 the Redis master that serves a busy room's channel, at N: a Redis
/// Cluster (3 masters, 3 replicas), three Kafka brokers, three gateways, three consumers.
/// Its replica takes over; every gateway's subscription is lost and resynced (clients go to
/// recovery), sends whose claims live on that master fail retryably meanwhile, and nothing
/// is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_killed_at_n() {
    let _serial = SERIAL.lock().await;
    // Alone on the cluster (tests/it's cluster tests take the same lock).
    let (s, _cluster) = Scenario::at_n("f-redis-master", 150, true).await;
    s.at(Duration::from_secs(2)).await;
    let channel = format!("{}:room:{}", s.env.prefix, s.rooms[0]);
    let port = redis_cluster_cmd(&["redis-cluster-kill-master", &format!("key:{channel}")]);
    let killed = Instant::now();
    let down = RedisNodeDown(port.clone());
    eprintln!("FAULT redis master: killed the master on port {port} (serving {channel})");
    s.at(Duration::from_secs(12)).await;
    drop(down);
    s.finish(
        "kill -9 the Redis master of a busy room (Redis Cluster 3+3, 3 Kafka brokers, 3 gateways, 3 consumers)",
        killed,
    )
    .await;
}
