//! [`Coord`](super::Coord) in memory, for the embedded mode: one process is the whole
//! deployment, so its state is this process's. It keeps the contract of the Redis
//! implementation (the same suite runs against both), with one addition: the send
//! records are bounded in count and bytes, the oldest finished ones forgotten first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    Claim, CoordError, Lease, Leases, Positions, SendClaims, SendKey, Settled, SlowMode, Timings,
    Tombstones,
};
use crate::model::{Message, MessageId, RoomId, UserId};

/// At most this many send records...
const MAX_SENDS: usize = 100_000;
/// ...holding at most this many bytes of finished messages.
const MAX_SEND_BYTES: usize = 64 << 20;

// The large variant is the common one (a message): boxing it would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
enum State {
    Pending,
    Retry(MessageId),
    Done(Message),
}

struct Record {
    state: State,
    expires: Instant,
    /// Its entry in `Sends::by_expiry`.
    seq: u64,
    bytes: usize,
}

#[derive(Default)]
struct Sends {
    records: HashMap<SendKey, Record>,
    /// Every record by (expiry, seq): expired ones are swept from the front.
    by_expiry: BTreeMap<(Instant, u64), SendKey>,
    next_seq: u64,
    bytes: usize,
}

impl Sends {
    fn remove(&mut self, key: &SendKey) {
        if let Some(r) = self.records.remove(key) {
            self.by_expiry.remove(&(r.expires, r.seq));
            self.bytes -= r.bytes;
        }
    }

    fn put(&mut self, key: &SendKey, state: State, ttl: Duration, now: Instant) {
        self.remove(key);
        let bytes = match &state {
            State::Done(m) => m.body.len() + m.client_msg_id.len() + m.sender.name.len() + 160,
            _ => 64,
        } + key.client_msg_id.len();
        let seq = self.next_seq;
        self.next_seq += 1;
        let expires = now + ttl;
        self.by_expiry.insert((expires, seq), key.clone());
        self.bytes += bytes;
        self.records.insert(
            key.clone(),
            Record {
                state,
                expires,
                seq,
                bytes,
            },
        );
        self.bound();
    }

    /// Drops expired records, then (over the bounds) the finished ones that expire first.
    /// Pending and retry records are kept: they are what stops a second append.
    fn sweep(&mut self, now: Instant) {
        while let Some(((expires, _), key)) = self.by_expiry.first_key_value() {
            if *expires > now {
                break;
            }
            let key = key.clone();
            self.remove(&key);
        }
    }

    fn bound(&mut self) {
        while self.records.len() > MAX_SENDS || self.bytes > MAX_SEND_BYTES {
            let oldest_done = self.by_expiry.values().find(|k| {
                self.records
                    .get(*k)
                    .is_some_and(|r| matches!(r.state, State::Done(_)))
            });
            let Some(key) = oldest_done.cloned() else {
                break;
            };
            self.remove(&key);
        }
    }
}

#[derive(Default)]
struct LeaseState {
    /// partition → (owner, epoch, expires)
    held: HashMap<i32, (String, i64, Instant)>,
    epochs: HashMap<i32, i64>,
    /// consumer → expires
    live: HashMap<String, Instant>,
    positions: HashMap<i32, i64>,
}

impl LeaseState {
    fn current(&self, lease: &Lease, now: Instant) -> bool {
        self.held
            .get(&lease.partition)
            .is_some_and(|(o, e, exp)| *o == lease.owner && *e == lease.epoch && *exp > now)
    }
}

/// Tombstones kept at most (the oldest go first beyond it).
const MAX_TOMBSTONES: usize = 100_000;

/// Buried message → when it expires; and the same by expiry, to sweep and bound.
type Tombs = (
    HashMap<MessageId, Instant>,
    BTreeMap<(Instant, MessageId), ()>,
);

pub struct LocalCoord {
    timings: Timings,
    sends: Mutex<Sends>,
    leases: Mutex<LeaseState>,
    tombs: Mutex<Tombs>,
    /// (room, user) → when the next turn is and the send that took it, for slow rooms;
    /// at most [`MAX_TURNS`].
    turns: Mutex<HashMap<(RoomId, UserId), (Instant, MessageId)>>,
}

/// Slow-mode turns held at most; past it, expired ones are dropped, and if none has
/// expired the oldest go (a member may then send early: memory stays bounded).
const MAX_TURNS: usize = 100_000;

impl LocalCoord {
    pub fn new(timings: Timings) -> Self {
        LocalCoord {
            timings,
            sends: Mutex::default(),
            leases: Mutex::default(),
            tombs: Mutex::default(),
            turns: Mutex::default(),
        }
    }

    fn sends(&self) -> std::sync::MutexGuard<'_, Sends> {
        // A panic while holding the lock leaves consistent maps (every change is one
        // insert/remove pair): go on with them.
        self.sends.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SendClaims for LocalCoord {
    async fn claim(&self, key: &SendKey, fresh: MessageId) -> Result<Claim, CoordError> {
        let now = Instant::now();
        let mut s = self.sends();
        s.sweep(now);
        let id = match s.records.get(key).map(|r| &r.state) {
            None => fresh,
            Some(State::Retry(id)) => *id,
            Some(State::Pending) => return Ok(Claim::InFlight),
            Some(State::Done(m)) => return Ok(Claim::Done(m.clone())),
        };
        s.put(key, State::Pending, self.timings.pending, now);
        Ok(Claim::Mine(id))
    }

    async fn settle(&self, key: &SendKey, outcome: &Settled) -> Result<(), CoordError> {
        let now = Instant::now();
        let mut s = self.sends();
        s.sweep(now);
        match outcome {
            Settled::Done(m) => s.put(key, State::Done(m.clone()), self.timings.done, now),
            Settled::Retry(id) => s.put(key, State::Retry(*id), self.timings.retry, now),
        }
        Ok(())
    }
}

#[async_trait]
impl Tombstones for LocalCoord {
    async fn bury(&self, message: MessageId) -> Result<(), CoordError> {
        let now = Instant::now();
        let mut guard = self.tombs.lock().unwrap_or_else(|p| p.into_inner());
        let (by_id, by_expiry) = &mut *guard;
        while let Some((&(at, id), ())) = by_expiry.first_key_value() {
            if at > now && by_id.len() < MAX_TOMBSTONES {
                break;
            }
            by_expiry.remove(&(at, id));
            by_id.remove(&id);
        }
        let expires = now + self.timings.tombstone;
        if let Some(old) = by_id.insert(message, expires) {
            by_expiry.remove(&(old, message));
        }
        by_expiry.insert((expires, message), ());
        Ok(())
    }

    async fn buried(&self, message: MessageId) -> Result<bool, CoordError> {
        let guard = self.tombs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard.0.get(&message).is_some_and(|at| *at > Instant::now()))
    }
}

#[async_trait]
impl Leases for LocalCoord {
    async fn heartbeat(&self, me: &str) -> Result<Vec<String>, CoordError> {
        let now = Instant::now();
        let mut l = self.leases();
        l.live.retain(|_, exp| *exp > now);
        l.live.insert(me.to_owned(), now + self.timings.lease);
        let mut live: Vec<String> = l.live.keys().cloned().collect();
        live.sort();
        Ok(live)
    }

    async fn leave(&self, me: &str) -> Result<(), CoordError> {
        self.leases().live.remove(me);
        Ok(())
    }

    async fn acquire(&self, me: &str, partition: i32) -> Result<Option<Lease>, CoordError> {
        let now = Instant::now();
        let mut l = self.leases();
        if l.held.get(&partition).is_some_and(|(_, _, exp)| *exp > now) {
            return Ok(None);
        }
        let epoch = {
            let e = l.epochs.entry(partition).or_insert(0);
            *e += 1;
            *e
        };
        l.held
            .insert(partition, (me.to_owned(), epoch, now + self.timings.lease));
        Ok(Some(Lease {
            partition,
            epoch,
            owner: me.to_owned(),
        }))
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, CoordError> {
        let now = Instant::now();
        let mut l = self.leases();
        if !l.current(lease, now) {
            return Ok(false);
        }
        if let Some(h) = l.held.get_mut(&lease.partition) {
            h.2 = now + self.timings.lease;
        }
        Ok(true)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, CoordError> {
        let now = Instant::now();
        let mut l = self.leases();
        if !l.current(lease, now) {
            return Ok(false);
        }
        l.held.remove(&lease.partition);
        Ok(true)
    }
}

#[async_trait]
impl Positions for LocalCoord {
    async fn position(&self, partition: i32) -> Result<Option<i64>, CoordError> {
        Ok(self.leases().positions.get(&partition).copied())
    }

    async fn save(&self, lease: &Lease, offset: i64) -> Result<bool, CoordError> {
        let now = Instant::now();
        let mut l = self.leases();
        if !l.current(lease, now) {
            return Ok(false);
        }
        l.positions.insert(lease.partition, offset);
        Ok(true)
    }
}

#[async_trait]
impl SlowMode for LocalCoord {
    async fn take_turn(
        &self,
        room: RoomId,
        user: UserId,
        interval: Duration,
        id: MessageId,
    ) -> Result<Option<Duration>, CoordError> {
        let now = Instant::now();
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((next, holder)) = turns.get(&(room, user)) {
            if *holder == id {
                return Ok(None);
            }
            if *next > now {
                return Ok(Some(*next - now));
            }
        }
        if turns.len() >= MAX_TURNS {
            turns.retain(|_, (next, _)| *next > now);
            while turns.len() >= MAX_TURNS {
                let oldest = turns.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k);
                let Some(oldest) = oldest else { break };
                turns.remove(&oldest);
            }
        }
        turns.insert((room, user), (now + interval, id));
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;

    fn key(n: usize) -> SendKey {
        SendKey {
            sender: uuid::Uuid::nil(),
            room: uuid::Uuid::nil(),
            client_msg_id: format!("c{n}"),
        }
    }

    fn message(body: usize) -> Message {
        Message {
            id: uuid::Uuid::now_v7(),
            room: uuid::Uuid::nil(),
            sender: User {
                id: uuid::Uuid::nil(),
                name: "a".into(),
            },
            body: "x".repeat(body),
            client_msg_id: "c".into(),
            sent_at: chrono::Utc::now(),
            position: 0,
            ..Default::default()
        }
    }

    /// The memory bound forgets finished sends first, and never a pending one.
    #[tokio::test]
    async fn bounded_in_count_and_bytes_finished_first() {
        let c = LocalCoord::new(Timings::default());
        let pending = key(usize::MAX);
        assert!(matches!(
            c.claim(&pending, uuid::Uuid::now_v7()).await,
            Ok(Claim::Mine(_))
        ));
        let big = 4_000;
        let n = MAX_SEND_BYTES / big + 100;
        for i in 0..n {
            c.settle(&key(i), &Settled::Done(message(big))).await.ok();
        }
        {
            let s = c.sends();
            assert!(s.bytes <= MAX_SEND_BYTES, "{} bytes", s.bytes);
            assert!(s.records.len() <= MAX_SENDS);
            let bytes: usize = s.records.values().map(|r| r.bytes).sum();
            assert_eq!(bytes, s.bytes);
            assert_eq!(s.records.len(), s.by_expiry.len());
        }
        // The oldest finished one is gone (a resend would be a new claim), the newest is
        // there, and the pending claim still holds.
        assert!(matches!(
            c.claim(&key(0), uuid::Uuid::now_v7()).await,
            Ok(Claim::Mine(_))
        ));
        assert!(matches!(
            c.claim(&key(n - 1), uuid::Uuid::now_v7()).await,
            Ok(Claim::Done(_))
        ));
        assert!(matches!(
            c.claim(&pending, uuid::Uuid::now_v7()).await,
            Ok(Claim::InFlight)
        ));
    }
}
