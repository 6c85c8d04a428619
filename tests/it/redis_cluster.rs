//! chat on a Redis Cluster (`--redis-cluster-nodes`; scripts/services.sh
//! start-redis-cluster: 3 masters + 3 replicas on 7000-7005): the bus's sharded pub/sub
//! across masters, presence across slots, the message path end to end, and a master killed
//! under load. (The Coord contract runs on the cluster in `coord::redis_cluster_coord`.)
//! Each test skips, saying so, when there is no cluster (CLUSTER_REDIS_NODES of `scripts/services.sh env` unset); they
//! share the cluster, except the failover test, which holds it alone.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chat::bus::{Bus, BusEvent, BusNotice, Channel, RedisBus};
use chat::model::{Message, User};
use chat::shutdown::Shutdown;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

use crate::harness::{redis_cluster_lock, redis_cluster_nodes, Env, Http, Ws};

/// The resilient clients of the fault tests.
#[path = "../faults/load.rs"]
#[allow(dead_code)]
mod load;

fn target(nodes: &str) -> chat::tls::RedisTarget {
    chat::tls::RedisTarget::cluster(nodes.split(',').map(str::to_owned).collect())
}

/// The cluster's slot of a key (CRC16 of the key or of its `{tag}`), asked of a node.
async fn slot(nodes: &str, key: &str) -> u16 {
    let client = redis::cluster::ClusterClient::new(nodes.split(',').collect::<Vec<_>>())
        .expect("cluster client");
    let mut c = client.get_async_connection().await.expect("cluster");
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("CLUSTER KEYSLOT")
}

/// Which of the three masters serves a slot (`redis-cli --cluster create` splits the
/// slots in three equal ranges; a failover keeps them).
fn shard(slot: u16) -> u16 {
    slot / 5_462
}

fn message(room: Uuid, i: usize) -> BusEvent {
    BusEvent::Message {
        message: Message {
            id: Uuid::now_v7(),
            room,
            sender: User {
                id: Uuid::from_u128(1),
                name: "ann".into(),
            },
            body: format!("m{i}"),
            client_msg_id: format!("c{i}"),
            position: i as i64,
            sent_at: chrono::Utc::now(),
            ..Default::default()
        },
        published_us: None,
    }
}

/// Receives events until `want` per channel arrived (or 20 s passed); returns them per
/// channel in arrival order.
async fn receive(
    rx: &mut UnboundedReceiver<BusNotice>,
    want: usize,
) -> HashMap<Channel, Vec<BusEvent>> {
    let mut got: HashMap<Channel, Vec<BusEvent>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.values().map(Vec::len).sum::<usize>() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(BusNotice::Event(e))) => got.entry(e.channel()).or_default().push(e),
            Ok(Some(other)) => panic!("unexpected notice {other:?}"),
            Ok(None) => panic!("bus closed"),
            Err(_) => break,
        }
    }
    got
}

/// Rooms and users whose channels hash to every master: one batch published on one
/// process reaches the subscribers of another, in order per channel; an unsubscribed
/// channel no longer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_publishes_and_subscribes_across_masters() {
    let Some(nodes) =
        redis_cluster_nodes("redis_cluster::the_bus_publishes_and_subscribes_across_masters")
    else {
        return;
    };
    let _shared = redis_cluster_lock(false).await;
    let prefix = format!("tb{}", &Uuid::new_v4().simple().to_string()[..12]);
    let tasks = Shutdown::new();
    let (publisher, _) = RedisBus::connect(&target(&nodes), &prefix, &tasks).expect("bus");
    let (reader, mut rx) = RedisBus::connect(&target(&nodes), &prefix, &tasks).expect("bus");
    // Six rooms and six users on at least two masters (three, almost always).
    let mut channels = Vec::new();
    let mut shards = HashSet::new();
    while channels.len() < 12 || shards.len() < 2 {
        let id = Uuid::now_v7();
        let (channel, name) = if channels.len() % 2 == 0 {
            (Channel::Room(id), format!("{prefix}:room:{id}"))
        } else {
            (Channel::User(id), format!("{prefix}:user:{id}"))
        };
        shards.insert(shard(slot(&nodes, &name).await));
        channels.push(channel);
    }
    for c in &channels {
        reader.subscribe(*c).await.expect("subscribe");
    }
    const PER: usize = 20;
    let mut batch = Vec::new();
    for i in 0..PER {
        for c in &channels {
            batch.push(match c {
                Channel::Room(room) => message(*room, i),
                Channel::User(user) => BusEvent::Revoked {
                    user: *user,
                    what: chat::bus::Revocation::Sessions,
                },
            });
        }
    }
    publisher.publish(&batch).await.expect("publish");
    let got = receive(&mut rx, PER * channels.len()).await;
    for c in &channels {
        let events = got.get(c).map(Vec::as_slice).unwrap_or_default();
        let want: Vec<&BusEvent> = batch.iter().filter(|e| e.channel() == *c).collect();
        assert_eq!(events.iter().collect::<Vec<_>>(), want, "{c:?}");
    }
    eprintln!(
        "bus on the cluster: {} events on {} channels over {} masters, each once and in order",
        batch.len(),
        channels.len(),
        shards.len()
    );
    // Unsubscribed: its events stop; the others' go on.
    let (gone, kept) = (channels[0], channels[2]);
    reader.unsubscribe(gone).await.expect("unsubscribe");
    let (Channel::Room(gone_room), Channel::Room(kept_room)) = (gone, kept) else {
        unreachable!("even indexes are rooms")
    };
    publisher
        .publish(&[message(gone_room, 99), message(kept_room, 99)])
        .await
        .expect("publish");
    let got = receive(&mut rx, 1).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), vec![&kept]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "an unsubscribed channel still delivers"
    );
    tasks.cancel();
}

/// Presence of users whose sets live on different masters: joins, reads of many at once,
/// refreshes and leaves, across two processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_works_across_slots() {
    let Some(nodes) = redis_cluster_nodes("redis_cluster::presence_works_across_slots") else {
        return;
    };
    let _shared = redis_cluster_lock(false).await;
    let prefix = format!("tp{}", &Uuid::new_v4().simple().to_string()[..12]);
    let tasks = Shutdown::new();
    let (a, _) = RedisBus::connect(&target(&nodes), &prefix, &tasks).expect("bus");
    let (b, _) = RedisBus::connect(&target(&nodes), &prefix, &tasks).expect("bus");
    let users: Vec<Uuid> = (0..24).map(|_| Uuid::now_v7()).collect();
    let mut shards = HashSet::new();
    for u in &users {
        shards.insert(shard(slot(&nodes, &format!("{prefix}:presence:{u}")).await));
    }
    assert!(shards.len() >= 2, "24 users on one master: {shards:?}");
    let online: Vec<Uuid> = users.iter().step_by(2).copied().collect();
    for u in &online {
        assert!(a.presence_join(*u, &format!("c-{u}")).await.expect("join"));
        assert!(!b.presence_join(*u, &format!("d-{u}")).await.expect("join"));
    }
    let conns: Vec<(Uuid, String)> = online.iter().map(|u| (*u, format!("c-{u}"))).collect();
    a.presence_refresh(&conns).await.expect("refresh");
    let seen = b.online(&users).await.expect("online");
    assert_eq!(seen, online.iter().copied().collect::<HashSet<_>>());
    // Leaving one of two connections keeps the user online; the last one does not.
    let u = online[0];
    assert!(!a.presence_leave(u, &format!("c-{u}")).await.expect("leave"));
    assert!(b.presence_leave(u, &format!("d-{u}")).await.expect("leave"));
    let seen = a.online(&users).await.expect("online");
    assert_eq!(seen.len(), online.len() - 1);
    assert!(!seen.contains(&u));
    tasks.cancel();
}

/// Two gateways and a consumer on the cluster: messages from several senders in two rooms
/// reach readers on both gateways once and in order, with the acked positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_end_to_end_on_the_cluster() {
    let Some(nodes) = redis_cluster_nodes("redis_cluster::messages_flow_end_to_end_on_the_cluster")
    else {
        return;
    };
    let _shared = redis_cluster_lock(false).await;
    let env = Env::on_redis_cluster("rc-e2e", &nodes).await;
    let a = env.spawn("gateway", "gw-a-m").await;
    let b = env.spawn("gateway", "gw-b").await;
    let _consumer = env.spawn("consumer", "consumer").await;
    let (ha, hb) = (Http::new(&a), Http::new(&b));
    let alice = ha.register("alice").await;
    let bob = hb.register("bob").await;
    let rooms = [
        ha.create_room(&alice, "one").await,
        ha.create_room(&alice, "two").await,
    ];
    for r in &rooms {
        hb.join(&bob, r).await;
    }
    let mut readers = Vec::new();
    for (p, who) in [(&a, &alice), (&b, &bob)] {
        let mut w = Ws::login(p, who).await;
        for r in &rooms {
            w.subscribe(r, None).await;
        }
        readers.push(w);
    }
    let mut sa = Ws::login(&a, &alice).await;
    let mut sb = Ws::login(&b, &bob).await;
    const N: usize = 100;
    let mut acked: HashMap<String, (String, i64)> = HashMap::new();
    for i in 0..N {
        let (ws, who) = if i % 2 == 0 {
            (&mut sa, "a")
        } else {
            (&mut sb, "b")
        };
        let room = &rooms[i % 3 % 2];
        let cmid = format!("{who}{i}");
        ws.send(
            json!({"type": "send", "room": room, "client_msg_id": cmid, "body": format!("hi {i}")}),
        )
        .await;
        let v = ws.expect("ack").await;
        assert_eq!(v["client_msg_id"], cmid.as_str(), "{v}");
        acked.insert(
            v["message"]["id"].as_str().expect("id").to_owned(),
            (
                room.clone(),
                v["message"]["position"].as_i64().expect("position"),
            ),
        );
    }
    for (i, w) in readers.iter_mut().enumerate() {
        let mut got: HashMap<String, Vec<i64>> = HashMap::new();
        let mut ids = HashSet::new();
        while ids.len() < N {
            let v = w.expect("message").await;
            let m = &v["message"];
            let id = m["id"].as_str().expect("id").to_owned();
            assert!(ids.insert(id.clone()), "reader {i}: {id} twice");
            let (room, position) = acked.get(&id).expect("an acked message");
            assert_eq!(m["position"].as_i64(), Some(*position), "reader {i}");
            got.entry(room.clone()).or_default().push(*position);
        }
        for (room, positions) in &got {
            assert!(
                positions.windows(2).all(|p| p[0] < p[1]),
                "reader {i}: room {room} out of order: {positions:?}"
            );
        }
        assert!(
            w.message_within(Duration::from_millis(300)).await.is_none(),
            "reader {i}: more than sent"
        );
    }
    eprintln!("end to end on the cluster: {N} messages, 2 rooms, 2 gateways: each once, in order");
}

/// scripts/services.sh with `args`; its stdout.
fn services(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("services.sh");
    assert!(out.status.success(), "services.sh {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A cluster node killed by the test: started again when dropped (also on a failure),
/// then the test waits for the cluster to be whole (3 masters, 3 replicas) again.
struct Killed(String);

impl Killed {
    fn restart(&mut self) {
        if self.0.is_empty() {
            return;
        }
        services(&["redis-cluster-restart-node", &self.0]);
        self.0.clear();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !services(&["status"]).contains("redis-cluster: up") {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster is not whole again 60 s after the node's restart"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.restart();
    }
}

/// The message ids a reader has received.
fn received(r: &load::Record) -> HashSet<&str> {
    r.delivered
        .values()
        .flatten()
        .map(|(_, id)| id.as_str())
        .collect()
}

/// kill -9 of the master serving a busy room's channel while four resilient clients send
/// into three rooms and read them on two gateways: its replica takes over (node timeout
/// 2 s), the gateways' subscriptions are lost and restored (`Lost`/`Resync`: the readers
/// are sent to recovery), and every acked message reaches every reader once and in order,
/// and PostgreSQL once. Then the node is restarted (it rejoins as a replica). Prints sent,
/// acked, delivered, lost, duplicated, the longest ack stall and the recovery time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_nothing() {
    let Some(nodes) =
        redis_cluster_nodes("redis_cluster::a_master_killed_under_load_loses_nothing")
    else {
        return;
    };
    // Alone on the cluster: the other tests would see the failover too.
    let _alone = redis_cluster_lock(true).await;
    assert!(
        services(&["status"]).contains("redis-cluster: up"),
        "the Redis Cluster is not whole before the test"
    );
    const USERS: usize = 4;
    const ROOMS: usize = 3;
    const MESSAGES: usize = 150;
    let env = Env::on_redis_cluster("rc-failover", &nodes).await;
    let gws = [
        env.spawn("gateway", "gw-0-m").await,
        env.spawn("gateway", "gw-1").await,
    ];
    let _consumer = env.spawn("consumer", "consumer").await;
    let h = Http::new(&gws[0]);
    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(h.register("u").await);
    }
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        let r = h.create_room(&users[0], &format!("failover-{i}")).await;
        for u in &users[1..] {
            h.join(u, &r).await;
        }
        rooms.push(r);
    }
    let gateways: load::Gateways = std::sync::Arc::new(std::sync::Mutex::new(
        gws.iter().map(|g| g.addr.clone()).collect(),
    ));
    let clients: Vec<load::Client> = users
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            load::Client::start(
                u,
                gateways.clone(),
                load::Spec {
                    rooms: rooms.clone(),
                    messages: MESSAGES,
                    every: Duration::from_millis(40),
                    first_gateway: i,
                },
            )
        })
        .collect();
    let progress = |clients: &[load::Client]| {
        clients
            .iter()
            .map(|c| {
                c.with(|r| {
                    format!(
                        "[{} sent {} acked {} reconnects {}]",
                        c.name,
                        r.sent,
                        r.acked.len(),
                        r.reconnects
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Under way (every client connected and acked some), kill the busy room's master.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !clients.iter().all(|c| c.with(|r| r.acked.len() >= 20)) {
        assert!(Instant::now() < deadline, "no load: {}", progress(&clients));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channel = format!("{}:room:{}", env.prefix, rooms[0]);
    let killed_at = Instant::now();
    let mut killed = Killed(services(&[
        "redis-cluster-kill-master",
        &format!("key:{channel}"),
    ]));
    eprintln!("killed the master on port {} (serving {channel})", killed.0);
    // Recovered: a key of the channel's slot is writable again (its replica took over).
    let client = redis::cluster::ClusterClient::new(nodes.split(',').collect::<Vec<_>>())
        .expect("cluster client");
    let mut probe = client.get_async_connection().await.expect("cluster");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("{{{channel}}}:probe"))
            .arg(1)
            .arg("PX")
            .arg(1_000)
            .query_async(&mut probe)
            .await;
        if set.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot has no master 60 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = killed_at.elapsed();

    // 1. every message sent and acked
    let deadline = Instant::now() + Duration::from_secs(120);
    while !clients
        .iter()
        .all(|c| c.with(|r| r.done_sending && r.acked.len() == r.sent))
    {
        assert!(
            Instant::now() < deadline,
            "sends not all acked within 120 s: {}",
            progress(&clients)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked: Vec<(String, String, i64)> = clients
        .iter()
        .flat_map(|c| c.with(|r| r.acked.values().cloned().collect::<Vec<_>>()))
        .collect();
    let ids: HashSet<&str> = acked.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(
        ids.len(),
        acked.len(),
        "two sends acked with one message id"
    );
    // 2. every reader got every acked message
    let missing = |clients: &[load::Client]| -> usize {
        clients
            .iter()
            .map(|c| {
                c.with(|r| {
                    let got = received(r);
                    ids.iter().filter(|id| !got.contains(*id)).count()
                })
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while missing(&clients) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost = missing(&clients);
    if lost > 0 {
        let mut per_room: HashMap<&str, Vec<i64>> = HashMap::new();
        for (_, room, p) in &acked {
            per_room.entry(room.as_str()).or_default().push(*p);
        }
        for (room, ps) in &mut per_room {
            ps.sort();
            eprintln!(
                "acked in {}: {} up to {:?}",
                &room[room.len() - 8..],
                ps.len(),
                ps.last()
            );
        }
        for c in &clients {
            c.with(|r| {
                for (room, d) in &r.delivered {
                    let got: HashSet<i64> = d.iter().map(|(p, _)| *p).collect();
                    let miss: Vec<i64> = per_room[room.as_str()]
                        .iter()
                        .filter(|p| !got.contains(p))
                        .copied()
                        .collect();
                    eprintln!(
                        "{} in {}: got {} (last {:?}), missing {} from {:?} to {:?}; reconnects {}",
                        c.name,
                        &room[room.len() - 8..],
                        d.len(),
                        d.last().map(|(p, _)| *p),
                        miss.len(),
                        miss.first(),
                        miss.last(),
                        r.reconnects
                    );
                }
            });
        }
    }
    // 3. PostgreSQL has each once
    let rows = env
        .wait_count(
            "SELECT count(*) AS n FROM messages WHERE kind NOT IN ('member', 'room')",
            acked.len() as i64,
            Duration::from_secs(60),
        )
        .await;
    let sent: usize = clients.iter().map(|c| c.with(|r| r.sent)).sum();
    let mut ack_times: Vec<Instant> = clients
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
    for c in clients {
        records.push(c.stop().await);
    }
    let delivered: usize = records
        .iter()
        .map(|r| r.delivered.values().map(Vec::len).sum::<usize>())
        .sum();
    let dups: usize = records.iter().map(|r| r.duplicates).sum();
    let ooo: usize = records.iter().map(|r| r.out_of_order).sum();
    let reconnects: usize = records.iter().map(|r| r.reconnects).sum();
    let errors: Vec<&String> = records.iter().flat_map(|r| &r.other_errors).collect();
    eprintln!(
        "FAULT redis-cluster master killed: sent {sent}, acked {}, delivered {delivered} \
         ({USERS} readers), persisted {rows}, lost {lost}, duplicated {dups}, out of order \
         {ooo}; reconnects {reconnects}; longest ack stall {:.1} s; the slot's replica took \
         over {:.1} s after the kill",
        acked.len(),
        stall.as_secs_f64(),
        recovered.as_secs_f64(),
    );
    // How long each process's subscription was down (its log: "restored … down_ms=N").
    let mut down_ms: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(&env.log_dir).expect("log dir").flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("bus subscription restored"))
        {
            // Without the terminal colours (ESC [ … m).
            let mut plain = String::new();
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    let _ = chars.by_ref().find(|c| *c == 'm');
                } else {
                    plain.push(c);
                }
            }
            if let Some(ms) = plain.split("down_ms=").nth(1).and_then(|t| {
                t.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|d| d.parse().ok())
            }) {
                down_ms.push(ms);
            }
        }
    }
    eprintln!(
        "bus subscriptions restored (Resync) after {:?} ms in the {} processes",
        down_ms,
        gws.len() + 1
    );
    killed.restart();
    assert_eq!(lost, 0, "acked messages never delivered to some reader");
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert_eq!(dups, 0, "duplicated deliveries");
    assert_eq!(ooo, 0, "out-of-order deliveries");
    assert_eq!(rows, acked.len() as i64, "rows");
}

/// Unsubscribing a channel and subscribing it again at once (what a gateway does to every
/// room on a resync, and a user leaving and rejoining) is not mistaken for the server
/// dropping the subscription (its `sunsubscribe` push): no `Lost`, and the channel delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_at_once_is_not_a_loss() {
    let Some(nodes) = redis_cluster_nodes("redis_cluster::resubscribing_at_once_is_not_a_loss")
    else {
        return;
    };
    let _shared = redis_cluster_lock(false).await;
    let prefix = format!("tr{}", &Uuid::new_v4().simple().to_string()[..12]);
    let tasks = Shutdown::new();
    let (publisher, _) = RedisBus::connect(&target(&nodes), &prefix, &tasks).expect("bus");
    let (reader, mut rx) = RedisBus::connect(&target(&nodes), &prefix, &tasks).expect("bus");
    let rooms: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    for r in &rooms {
        reader
            .subscribe(Channel::Room(*r))
            .await
            .expect("subscribe");
    }
    for _ in 0..5 {
        for r in &rooms {
            reader
                .unsubscribe(Channel::Room(*r))
                .await
                .expect("unsubscribe");
            reader
                .subscribe(Channel::Room(*r))
                .await
                .expect("subscribe");
        }
    }
    let batch: Vec<BusEvent> = rooms.iter().map(|r| message(*r, 1)).collect();
    publisher.publish(&batch).await.expect("publish");
    let got = receive(&mut rx, rooms.len()).await;
    assert_eq!(got.len(), rooms.len(), "{got:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "a notice after the events"
    );
    tasks.cancel();
}

/// A single node's connection (for the cluster admin commands of a test).
async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("node url")
        .get_multiplexed_async_connection()
        .await
        .expect("node")
}

/// The port of the master owning `slot`, and of another master.
async fn owner_and_other(nodes: &str, slot: u16) -> (u16, u16) {
    let client = redis::cluster::ClusterClient::new(nodes.split(',').collect::<Vec<_>>())
        .expect("cluster client");
    let mut c = client.get_async_connection().await.expect("cluster");
    let ranges: Vec<(u16, u16, (String, u16))> = {
        let raw: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .expect("CLUSTER SLOTS");
        raw.into_iter()
            .filter_map(|r| match r {
                redis::Value::Array(r) => {
                    let int = |v: Option<&redis::Value>| match v {
                        Some(redis::Value::Int(i)) => Some(*i as u16),
                        _ => None,
                    };
                    let master = match r.get(2) {
                        Some(redis::Value::Array(m)) => m.clone(),
                        _ => return None,
                    };
                    Some((
                        int(r.first())?,
                        int(r.get(1))?,
                        (String::new(), int(master.get(1))?),
                    ))
                }
                _ => None,
            })
            .collect()
    };
    let owner = ranges
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
        .map(|(_, _, (_, p))| *p)
        .expect("an owner");
    let other = ranges
        .iter()
        .map(|(_, _, (_, p))| *p)
        .find(|p| *p != owner)
        .expect("another master");
    (owner, other)
}

/// Moves an empty slot from one master to another (CLUSTER SETSLOT IMPORTING, MIGRATING,
/// NODE), as `redis-cli --cluster reshard` does.
async fn move_slot(slot: u16, from: u16, to: u16) {
    let (mut src, mut dst) = (node(from).await, node(to).await);
    let id = |mut c: redis::aio::MultiplexedConnection| async move {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async::<String>(&mut c)
            .await
            .expect("CLUSTER MYID")
    };
    let (src_id, dst_id) = (id(src.clone()).await, id(dst.clone()).await);
    let setslot = |c: &mut redis::aio::MultiplexedConnection, how: &str, id: &str| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(how).arg(id);
        let mut c = c.clone();
        async move {
            cmd.query_async::<()>(&mut c)
                .await
                .expect("CLUSTER SETSLOT")
        }
    };
    setslot(&mut dst, "IMPORTING", &src_id).await;
    setslot(&mut src, "MIGRATING", &dst_id).await;
    setslot(&mut dst, "NODE", &dst_id).await;
    setslot(&mut src, "NODE", &dst_id).await;
}

/// A slot moved by a test: moved back when dropped (also on a failure), with redis-cli.
struct Moved {
    slot: u16,
    at: u16,
    home: u16,
}

impl Drop for Moved {
    fn drop(&mut self) {
        if self.at == self.home {
            return;
        }
        let cli = |port: u16, args: &[&str]| {
            let out = std::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let (from_id, to_id) = (
            cli(self.at, &["cluster", "myid"]),
            cli(self.home, &["cluster", "myid"]),
        );
        let slot = self.slot.to_string();
        cli(
            self.home,
            &["cluster", "setslot", &slot, "importing", &from_id],
        );
        cli(self.at, &["cluster", "setslot", &slot, "migrating", &to_id]);
        cli(self.home, &["cluster", "setslot", &slot, "node", &to_id]);
        cli(self.at, &["cluster", "setslot", &slot, "node", &to_id]);
    }
}

/// Publishes message `n` of `room` (retrying while the publisher's client still points at
/// the old master) and expects it to arrive.
async fn delivers(
    publisher: &RedisBus,
    rx: &mut UnboundedReceiver<BusNotice>,
    room: Uuid,
    n: usize,
    what: &str,
) {
    let e = message(room, n);
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(err) = publisher.publish(std::slice::from_ref(&e)).await {
        assert!(Instant::now() < deadline, "{what}: publish: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = receive(rx, 1).await;
    assert_eq!(got.get(&Channel::Room(room)), Some(&vec![e]), "{what}");
}

/// Waits for `Lost` and then `Resync` (events in between are allowed).
async fn lost_then_resync(rx: &mut UnboundedReceiver<BusNotice>, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut lost = false;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(BusNotice::Lost)) => lost = true,
            Ok(Some(BusNotice::Resync)) if lost => return,
            Ok(Some(n)) => assert!(lost, "{what}: {n:?} before Lost"),
            Ok(None) => panic!("{what}: bus closed"),
            Err(_) => panic!("{what}: no Lost then Resync within 30 s (lost: {lost})"),
        }
    }
}

/// A room's slot moving to another master (a reshard): the old master drops the
/// subscription (a `sunsubscribe` push), which is `Lost`; the bus subscribes at the new
/// master and says `Resync`; the room delivers again. And back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moving_to_another_master_is_lost_then_resynced() {
    let Some(nodes) =
        redis_cluster_nodes("redis_cluster::a_slot_moving_to_another_master_is_lost_then_resynced")
    else {
        return;
    };
    let _alone = redis_cluster_lock(true).await;
    let prefix = format!("tm{}", &Uuid::new_v4().simple().to_string()[..12]);
    let tasks = Shutdown::new();
    let (publisher, _) = RedisBus::connect(&target(&nodes), &prefix, &tasks).expect("bus");
    let (reader, mut rx) = RedisBus::connect(&target(&nodes), &prefix, &tasks).expect("bus");
    // A room whose slot holds no key (a slot with keys would need them migrated too).
    let (room, slot, owner, other) = loop {
        let room = Uuid::now_v7();
        let slot = slot(&nodes, &format!("{prefix}:room:{room}")).await;
        let (owner, other) = owner_and_other(&nodes, slot).await;
        let keys: i64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query_async(&mut node(owner).await)
            .await
            .expect("COUNTKEYSINSLOT");
        if keys == 0 {
            break (room, slot, owner, other);
        }
    };
    reader
        .subscribe(Channel::Room(room))
        .await
        .expect("subscribe");
    delivers(&publisher, &mut rx, room, 1, "before").await;
    let mut moved = Moved {
        slot,
        at: owner,
        home: owner,
    };
    move_slot(slot, owner, other).await;
    moved.at = other;
    lost_then_resync(&mut rx, "moved away").await;
    delivers(&publisher, &mut rx, room, 2, "at the new master").await;
    move_slot(slot, other, owner).await;
    moved.at = owner;
    lost_then_resync(&mut rx, "moved back").await;
    delivers(&publisher, &mut rx, room, 3, "back at the first master").await;
    eprintln!("slot {slot} moved {owner} → {other} → {owner}: Lost, Resync, delivered each time");
    tasks.cancel();
}

/// A cluster whose first seed node is down is still usable: the start probe (and
/// `/readyz`'s explanation of a time-out) try every seed and take the cluster when any
/// answers; a gateway given such a seed list starts and is ready. When no seed answers,
/// the first seed's reason is given and the others are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_seed_that_is_down_does_not_stop_a_start() {
    let Some(nodes) =
        redis_cluster_nodes("redis_cluster::a_first_seed_that_is_down_does_not_stop_a_start")
    else {
        return;
    };
    let _shared = redis_cluster_lock(false).await;
    let seeds = format!("redis://127.0.0.1:1,{nodes}");
    chat::tls::probe_redis(&target(&seeds))
        .await
        .expect("usable through its other seeds");
    let line = chat::tls::probe_redis(&target("redis://127.0.0.1:1,redis://127.0.0.1:2"))
        .await
        .expect_err("no seed answers")
        .to_string();
    assert!(
        line.contains("127.0.0.1:1") && line.contains("1 other seed"),
        "{line}"
    );

    let env = Env::on_redis_cluster("rc-seed", &seeds).await;
    let gw = env.spawn("gateway", "gw-m").await;
    let ready = reqwest::get(gw.url("/readyz")).await.expect("GET /readyz");
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);
}
