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
    started: Instant,
}

impl Scenario {
    /// Two gateways, two consumers, `USERS` clients in `ROOMS` shared rooms, each sending
    /// `messages` at one per `every`.
    async fn start(name: &str, messages: usize, every: Duration) -> Scenario {
        let env = Env::new(name).await;
        let gws = vec![
            env.spawn("gateway", "gw-0-m").await,
            env.spawn("gateway", "gw-1").await,
        ];
        let consumers = vec![
            env.spawn("consumer", "consumer-0").await,
            env.spawn("consumer", "consumer-1").await,
        ];
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
        let clients = users
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
            started: Instant::now(),
        }
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
                        let got: HashSet<&str> = r
                            .delivered
                            .values()
                            .flatten()
                            .map(|(_, id)| id.as_str())
                            .collect();
                        let miss: Vec<_> = acked
                            .iter()
                            .filter(|(id, _, _)| !got.contains(id.as_str()))
                            .map(|(_, room, p)| (room[..8].to_owned(), *p))
                            .collect();
                        eprintln!("{}: reconnects {} missing {:?}", c.name, r.reconnects, miss);
                        for (room, d) in &r.delivered {
                            eprintln!(
                                "   {}: {:?}",
                                &room[..8],
                                d.iter().map(|(p, _)| *p).collect::<Vec<_>>()
                            );
                        }
                    });
                }
                panic!(
                    "{fault}: {missing} deliveries missing after 60 s: {}",
                    self.progress()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let delivered_at = Instant::now();
        // 3. PostgreSQL has each exactly once
        let n = self
            .env
            .wait_count(
                "SELECT count(*) AS n FROM messages",
                acked.len() as i64,
                Duration::from_secs(60),
            )
            .await;
        let persisted_at = Instant::now();
        let distinct = self
            .env
            .count("SELECT count(DISTINCT (sender_id, client_msg_id)) AS n FROM messages")
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
            "FAULT {fault}: sent {sent}, acked {}, delivered {delivered} ({USERS} readers), persisted {n}, lost 0, duplicated {dups}, out of order {ooo}; reconnects {reconnects}, retryable errors {retryable}; longest ack stall {:.1} s; all delivered {:.1} s and persisted {:.1} s after the fault ended",
            acked.len(),
            stall.as_secs_f64(),
            delivered_at.saturating_duration_since(restored).as_secs_f64(),
            persisted_at.saturating_duration_since(restored).as_secs_f64(),
        );
        assert!(errors.is_empty(), "{fault}: errors: {errors:?}");
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

/// Acked messages a reader has not received.
fn missing(r: &load::Record, ids: &HashSet<&str>) -> usize {
    let got: HashSet<&str> = r
        .delivered
        .values()
        .flatten()
        .map(|(_, id)| id.as_str())
        .collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_10s() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("f-redis", 120, Duration::from_millis(100)).await;
    s.at(Duration::from_secs(1)).await;
    let down = Down::stop("redis");
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(down);
    s.finish("Redis down 10 s", Instant::now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_15s() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("f-postgres", 150, Duration::from_millis(100)).await;
    s.at(Duration::from_secs(1)).await;
    let down = Down::stop("postgres");
    tokio::time::sleep(Duration::from_secs(15)).await;
    drop(down);
    s.finish("PostgreSQL down 15 s", Instant::now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restarted() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("f-kafka", 80, Duration::from_millis(100)).await;
    s.at(Duration::from_secs(1)).await;
    let down = Down::stop("kafka");
    drop(down);
    s.finish("Kafka broker restarted", Instant::now()).await;
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
