//! chat on a Redis Cluster (`--redis-cluster-nodes`; scripts/services.sh
//! start-redis-cluster: 3 masters + 3 replicas on 7000-7005): the bus's sharded pub/sub
//! across masters, presence across slots, the message path end to end, and a master killed
//! under load. (The Coord contract runs on the cluster in `coord::redis_cluster_coord`.)
//! Each test skips, saying so, when there is no cluster (REDIS_CLUSTER_NODES unset); they
//! share the cluster, except the failover test, which holds it alone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chat::bus::{Bus, BusEvent, BusNotice, Channel, RedisBus};
use chat::model::{Message, User};
use chat::shutdown::Shutdown;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

use crate::harness::{redis_cluster_lock, redis_cluster_nodes, Env, Http, Ws};

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
