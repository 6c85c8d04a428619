//! The `Coord` contract (src/coord/mod.rs), one suite run against both implementations:
//! Redis (a prefix of its own on the test services), the same on the Redis Cluster (lease
//! keys under one hash tag) and the in-process one.

use std::time::Duration;

use chat::coord::{Claim, Coord, Lease, LocalCoord, RedisCoord, SendKey, Settled, Timings};
use chat::model::{Message, User};
use uuid::Uuid;

use crate::harness::service;

/// Short lives, so expiry is seen within a test (Redis keeps send records in whole
/// seconds).
fn timings() -> Timings {
    Timings {
        pending: Duration::from_secs(1),
        retry: Duration::from_secs(60),
        done: Duration::from_secs(2),
        lease: Duration::from_millis(400),
        tombstone: Duration::from_secs(1),
    }
}

fn redis() -> RedisCoord {
    let prefix = format!("tc{}", &Uuid::new_v4().simple().to_string()[..12]);
    RedisCoord::connect(
        &chat::tls::RedisTarget::new(service("REDIS_URL")),
        &prefix,
        "topic",
        timings(),
    )
    .expect("redis coord")
}

/// The same on the Redis Cluster (None: no cluster, the test skips).
fn cluster(test: &str) -> Option<RedisCoord> {
    let nodes = crate::harness::redis_cluster_nodes(test)?;
    let prefix = format!("tc{}", &Uuid::new_v4().simple().to_string()[..12]);
    let target = chat::tls::RedisTarget::cluster(nodes.split(',').map(str::to_owned).collect());
    Some(RedisCoord::connect(&target, &prefix, "topic", timings()).expect("cluster coord"))
}

fn local() -> LocalCoord {
    LocalCoord::new(timings())
}

fn key(room: Uuid, cmid: &str) -> SendKey {
    SendKey {
        sender: Uuid::from_u128(7),
        room,
        client_msg_id: cmid.to_owned(),
    }
}

fn message(id: Uuid, key: &SendKey) -> Message {
    Message {
        id,
        room: key.room,
        sender: User {
            id: key.sender,
            name: "ann".into(),
        },
        body: "hello ✓".into(),
        client_msg_id: key.client_msg_id.clone(),
        position: 41,
        sent_at: chrono::Utc::now(),
        ..Default::default()
    }
}

async fn claim(c: &dyn Coord, k: &SendKey) -> (Claim, Uuid) {
    let fresh = Uuid::now_v7();
    (c.claim(k, fresh).await.expect("claim"), fresh)
}

async fn claims(c: &dyn Coord) {
    let room = Uuid::now_v7();
    let k = key(room, "m1");
    // No record: mine, under the fresh id.
    let (first, fresh) = claim(c, &k).await;
    assert_eq!(first, Claim::Mine(fresh));
    // Pending: in flight, for everyone.
    assert_eq!(claim(c, &k).await.0, Claim::InFlight);
    // The same client id in another room is another send.
    let other = key(Uuid::now_v7(), "m1");
    assert!(matches!(claim(c, &other).await.0, Claim::Mine(_)));
    // A failed send: the retry reuses the id, and is pending again.
    c.settle(&k, &Settled::Retry(fresh)).await.expect("settle");
    assert_eq!(claim(c, &k).await.0, Claim::Mine(fresh));
    assert_eq!(claim(c, &k).await.0, Claim::InFlight);
    // Done: every resend gets the first message.
    let m = message(fresh, &k);
    c.settle(&k, &Settled::Done(m.clone()))
        .await
        .expect("settle");
    for _ in 0..2 {
        match claim(c, &k).await.0 {
            Claim::Done(got) => {
                assert_eq!(got.id, m.id);
                assert_eq!(got.body, m.body);
                assert_eq!(got.position, m.position);
                assert_eq!(got.client_msg_id, m.client_msg_id);
            }
            other => panic!("expected done, got {other:?}"),
        }
    }
}

async fn claims_expire(c: &dyn Coord) {
    let room = Uuid::now_v7();
    // A claim never settled (its claimer died) is given up after the pending TTL, and
    // the next claim gets its own fresh id.
    let k = key(room, "abandoned");
    let (_, first) = claim(c, &k).await;
    // A finished send is answered for the done TTL, then forgotten.
    let d = key(room, "finished");
    let (_, id) = claim(c, &d).await;
    c.settle(&d, &Settled::Done(message(id, &d)))
        .await
        .expect("settle");
    assert!(matches!(claim(c, &d).await.0, Claim::Done(_)));
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let (again, fresh) = claim(c, &k).await;
    assert_eq!(again, Claim::Mine(fresh));
    assert_ne!(fresh, first);
    assert!(matches!(claim(c, &d).await.0, Claim::Mine(_)));
}

fn stale(l: &Lease) -> Lease {
    Lease {
        epoch: l.epoch - 1,
        ..l.clone()
    }
}

async fn leases(c: &dyn Coord) {
    assert_eq!(c.heartbeat("b").await.expect("hb"), vec!["b"]);
    assert_eq!(c.heartbeat("a").await.expect("hb"), vec!["a", "b"]);
    // One holder at a time.
    let a = c.acquire("a", 0).await.expect("acquire").expect("free");
    assert_eq!((a.partition, a.owner.as_str()), (0, "a"));
    assert_eq!(c.acquire("b", 0).await.expect("acquire"), None);
    assert_eq!(c.acquire("a", 0).await.expect("acquire"), None);
    // Another partition is another lease.
    let b1 = c.acquire("b", 1).await.expect("acquire").expect("free");
    // Renew and release only by the current holder.
    assert!(c.renew(&a).await.expect("renew"));
    assert!(!c.renew(&stale(&a)).await.expect("renew"));
    let forged = Lease {
        owner: "b".into(),
        ..a.clone()
    };
    assert!(!c.renew(&forged).await.expect("renew"));
    assert!(!c.release(&forged).await.expect("release"));
    assert!(c.release(&a).await.expect("release"));
    assert!(!c.release(&a).await.expect("release"));
    // The next holder has a larger epoch; the old lease is dead.
    let b0 = c.acquire("b", 0).await.expect("acquire").expect("free");
    assert!(b0.epoch > a.epoch, "{} > {}", b0.epoch, a.epoch);
    assert!(!c.renew(&a).await.expect("renew"));
    // Not renewed for the TTL: free, with a larger epoch again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!c.renew(&b0).await.expect("renew"));
    assert!(!c.renew(&b1).await.expect("renew"));
    let a2 = c.acquire("a", 0).await.expect("acquire").expect("expired");
    assert!(a2.epoch > b0.epoch);
    // Heartbeats expire too; leaving is at once.
    assert_eq!(c.heartbeat("a").await.expect("hb"), vec!["a"]);
    assert_eq!(c.heartbeat("b").await.expect("hb"), vec!["a", "b"]);
    c.leave("a").await.expect("leave");
    assert_eq!(c.heartbeat("b").await.expect("hb"), vec!["b"]);
}

async fn positions(c: &dyn Coord) {
    assert_eq!(c.position(3).await.expect("position"), None);
    let l = c.acquire("a", 3).await.expect("acquire").expect("free");
    assert!(c.save(&l, 10).await.expect("save"));
    assert!(c.save(&l, 12).await.expect("save"));
    assert_eq!(c.position(3).await.expect("position"), Some(12));
    // Another partition has its own.
    assert_eq!(c.position(4).await.expect("position"), None);
    // Fenced: a stale lease writes nothing.
    assert!(!c.save(&stale(&l), 99).await.expect("save"));
    assert_eq!(c.position(3).await.expect("position"), Some(12));
    // A released lease writes nothing either; the position outlives the lease.
    assert!(c.release(&l).await.expect("release"));
    assert!(!c.save(&l, 99).await.expect("save"));
    let next = c.acquire("b", 3).await.expect("acquire").expect("free");
    assert_eq!(c.position(3).await.expect("position"), Some(12));
    assert!(c.save(&next, 13).await.expect("save"));
    assert_eq!(c.position(3).await.expect("position"), Some(13));
}

async fn tombstones(c: &dyn Coord) {
    let (m, other) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(!c.buried(m).await.expect("buried"));
    c.bury(m).await.expect("bury");
    assert!(c.buried(m).await.expect("buried"));
    assert!(!c.buried(other).await.expect("buried"));
    // Burying twice is harmless; a tombstone lives `tombstone` (1 s here), then goes.
    c.bury(m).await.expect("bury");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert!(!c.buried(m).await.expect("buried"));
}

async fn slow_mode(c: &dyn Coord) {
    let (room, ann, bob) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let every = Duration::from_millis(1_500);
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let turn = |room, user, id| c.take_turn(room, user, every, id);
    assert_eq!(turn(room, ann, first).await.expect("turn"), None);
    // Ann's next turn is up to 1.5 s away; Bob's and Ann's in another room are not; a
    // retry of the send that took the turn is not kept waiting.
    let wait = turn(room, ann, second).await.expect("turn");
    assert!(
        wait.is_some_and(|w| w > Duration::ZERO && w <= every),
        "{wait:?}"
    );
    assert_eq!(turn(room, ann, first).await.expect("turn"), None);
    assert_eq!(turn(room, bob, second).await.expect("turn"), None);
    assert_eq!(turn(Uuid::now_v7(), ann, second).await.expect("turn"), None);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(turn(room, ann, second).await.expect("turn"), None);
}

macro_rules! contract {
    ($($name:ident),*) => {
        mod redis_coord {
            $(#[tokio::test] async fn $name() { super::$name(&super::redis()).await })*
        }
        mod local_coord {
            $(#[tokio::test] async fn $name() { super::$name(&super::local()).await })*
        }
        mod redis_cluster_coord {
            $(#[tokio::test] async fn $name() {
                let Some(c) = super::cluster(concat!("coord::", stringify!($name))) else { return };
                let _shared = crate::harness::redis_cluster_lock(false).await;
                super::$name(&c).await
            })*
        }
    };
}

contract!(
    claims,
    claims_expire,
    leases,
    positions,
    tombstones,
    slow_mode
);
