//! Room → local connections, and the bus subscription of each room that has any; user →
//! local connections, with the rooms the user was found to be a member of, and the bus
//! subscription of each user that has any (the revocation path).
//!
//! **Revocation.** A membership looked up in the store is cached here, per user, while the
//! user has a socket on this gateway. Whoever ends it (`leave` now; kick and ban later)
//! publishes [`BusEvent::Revoked`] on the user's channel after the store changed, and
//! applies it locally first; every gateway holding a socket of the user is subscribed to
//! that channel and, on the notice, forgets the membership and removes the user's
//! connections from the room (they get `unsubscribed`), so live delivery stops and the
//! next send, subscribe or read goes to the store and is refused. Bound: the bus's delivery
//! time. While the bus link is down, no cached membership is trusted (every check asks the
//! store) and clients are sent to reconnect once it is back; a membership is re-checked
//! after [`MEMBERSHIP_RECHECK`] in any case, in case a notice was never published.
//!
//! The hub never awaits a socket or a queue: delivery is `try_send` into each
//! connection's bounded outbox, and a full outbox kicks the connection (close 1008).
//! Bus subscribe/unsubscribe commands go to one task, in the order the hub issued them,
//! so "first in, last out" cannot race into a wrong subscription state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason};

use bytestring::ByteString;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::doorbell::Rings;
use super::outbox::{Live, Out, OutTx, TrySendError};
use crate::bus::{Bus, BusEvent, Channel, Revocation, UserNotice};
use crate::model::{Position, RoomId, UserId};
use crate::protocol::{close, ServerFrame};
use crate::shutdown::Shutdown;
use crate::telemetry::hops::{self, Hop};
use crate::telemetry::names;

pub type ConnId = u64;

#[derive(Clone)]
pub struct ConnHandle {
    pub tx: OutTx,
    pub kick: CancellationToken,
    pub user: UserId,
}

/// A cached membership is checked against the store again after this long, whatever the
/// bus said (a backstop: revocations arrive as bus notices in milliseconds).
pub const MEMBERSHIP_RECHECK: Duration = Duration::from_secs(60);
/// Shards of the room map.
const SHARDS: usize = 16;

/// Memberships cached per user at most (beyond, each check asks the store).
const MAX_CACHED_ROOMS: usize = 1_024;

impl ConnHandle {
    fn offer(&self, item: Out) -> bool {
        let queued = self.tx.try_send(item);
        self.queued(queued)
    }

    /// Queues a fan-out item; the writer is woken when `rings` rings.
    fn offer_rung(&self, item: Out, rings: &mut Rings) -> bool {
        let queued = self.tx.try_send_rung(item, rings);
        self.queued(queued)
    }

    fn queued(&self, queued: Result<(), TrySendError>) -> bool {
        match queued {
            Ok(()) => true,
            Err(TrySendError::Full) => {
                metrics::counter!(names::SLOW_CLIENTS).increment(1);
                self.kick.cancel();
                false
            }
            Err(TrySendError::Closed) => false,
        }
    }
}

struct RoomEntry {
    conns: HashMap<ConnId, ConnHandle>,
    /// The newest position delivered here: a record relayed twice is dropped.
    last_position: Option<Position>,
    /// True once the bus subscription is active.
    ready: watch::Receiver<bool>,
}

/// What the send path needs of a member's standing in a room (from the store's
/// [`crate::store::governance::Access`]), cached with the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Read only until then.
    pub muted_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The room's slow mode, for this member (None: off, or a moderator or above).
    pub slow_mode: Option<Duration>,
    /// May delete others' messages.
    pub moderator: bool,
}

impl Standing {
    /// A member's standing from what the store said.
    pub fn of(a: &crate::store::governance::Access) -> Standing {
        use crate::governance::{allowed, Action};
        let moderator = allowed(
            a.actor(),
            Action::DeleteOthers,
            a.room.kind,
            a.room.visibility,
        );
        let secs = u64::try_from(a.room.slow_mode_secs).unwrap_or(0);
        Standing {
            muted_until: a.member.and_then(|m| m.muted_until),
            slow_mode: (secs > 0 && !moderator).then(|| Duration::from_secs(secs)),
            moderator,
        }
    }

    /// Nothing known beyond membership (the store was unavailable).
    pub const PLAIN: Standing = Standing {
        muted_until: None,
        slow_mode: None,
        moderator: false,
    };

    pub fn muted(&self) -> bool {
        self.muted_until.is_some_and(|t| t > chrono::Utc::now())
    }
}

struct UserEntry {
    conns: HashMap<ConnId, ConnHandle>,
    /// Rooms the store said the user is a member of, when, and their standing there.
    member_of: HashMap<RoomId, (Instant, Standing)>,
    /// True once the user's bus channel is subscribed.
    ready: watch::Receiver<bool>,
}

enum Ctl {
    Subscribe(Channel, watch::Sender<bool>),
    Unsubscribe(Channel),
}

pub struct Hub {
    /// Rooms in shards (by room id): a fan-out locks its room's shard only, so rooms on
    /// other shards are served meanwhile.
    rooms: Vec<Mutex<HashMap<RoomId, RoomEntry>>>,
    users: Mutex<HashMap<UserId, UserEntry>>,
    /// Moves on every revocation and bus loss: a membership read from the store before a
    /// move is not cached (it may predate the revocation).
    revision: AtomicU64,
    ctl: mpsc::UnboundedSender<Ctl>,
    /// Set while the bus subscription is broken (from the loss until every client has
    /// been told to resync): live messages are held off then, so no client sees one that
    /// follows a gap before it is told to recover, which would move its `since` past it.
    suspended: AtomicBool,
}

impl Hub {
    /// `tasks`: where the control task (bus subscriptions) runs, until it is cancelled.
    pub fn new(bus: Arc<dyn Bus>, tasks: &Shutdown) -> Arc<Hub> {
        let (ctl, rx) = mpsc::unbounded_channel();
        tasks.spawn_until_cancelled(control(bus, rx));
        Arc::new(Hub {
            rooms: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            users: Mutex::new(HashMap::new()),
            revision: AtomicU64::new(0),
            ctl,
            suspended: AtomicBool::new(false),
        })
    }

    /// The shard of the room.
    fn lock(&self, room: RoomId) -> std::sync::MutexGuard<'_, HashMap<RoomId, RoomEntry>> {
        let i = (room.as_u128() % SHARDS as u128) as usize;
        self.rooms[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the control task to subscribe the channel; the receiver turns true once it is.
    fn request(&self, channel: Channel) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let _ = self.ctl.send(Ctl::Subscribe(channel, tx));
        rx
    }

    /// A subscription attempt that gave up (never ready, its sender gone): try again.
    fn renew(&self, channel: Channel, ready: &mut watch::Receiver<bool>) {
        if !*ready.borrow() && ready.has_changed().is_err() {
            *ready = self.request(channel);
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, UserEntry>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection of its user; the receiver turns true once the user's bus
    /// channel (revocations) is subscribed: trust no cached membership of the user before.
    /// None if the user has `max` connections here already.
    pub fn open_user(
        &self,
        conn: ConnId,
        h: ConnHandle,
        max: usize,
    ) -> Option<watch::Receiver<bool>> {
        let mut users = self.users();
        let user = h.user;
        if users.get(&user).is_some_and(|e| e.conns.len() >= max) {
            return None;
        }
        let channel = Channel::User(user);
        let entry = users.entry(user).or_insert_with(|| UserEntry {
            conns: HashMap::new(),
            member_of: HashMap::new(),
            ready: self.request(channel),
        });
        self.renew(channel, &mut entry.ready);
        entry.conns.insert(conn, h);
        Some(entry.ready.clone())
    }

    pub fn close_user(&self, user: UserId, conn: ConnId) {
        let mut users = self.users();
        if let Some(entry) = users.get_mut(&user) {
            entry.conns.remove(&conn);
            if entry.conns.is_empty() {
                users.remove(&user);
                let _ = self.ctl.send(Ctl::Unsubscribe(Channel::User(user)));
            }
        }
    }

    /// The current revision: read it before asking the store, hand it to
    /// [`Hub::remember_member`].
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// When the store last confirmed the user's membership of the room, and the standing
    /// it gave, if it is cached and the bus link is intact (None: ask the store).
    pub fn member_since(&self, user: UserId, room: RoomId) -> Option<(Instant, Standing)> {
        if self.suspended.load(Ordering::Acquire) {
            return None;
        }
        let users = self.users();
        users.get(&user)?.member_of.get(&room).copied()
    }

    /// Caches a membership the store confirmed, unless a revocation (or bus loss) came in
    /// since `revision` was read.
    pub fn remember_member(&self, user: UserId, room: RoomId, revision: u64, standing: Standing) {
        let mut users = self.users();
        if self.revision() != revision || self.suspended.load(Ordering::Acquire) {
            return;
        }
        if let Some(e) = users.get_mut(&user) {
            if e.member_of.len() < MAX_CACHED_ROOMS || e.member_of.contains_key(&room) {
                e.member_of.insert(room, (Instant::now(), standing));
            }
        }
    }

    /// Forgets every cached standing in the room (its settings changed: slow mode), so
    /// the next frame of each member reads it again.
    pub fn forget_room(&self, room: RoomId) {
        let mut users = self.users();
        for e in users.values_mut() {
            e.member_of.remove(&room);
        }
        self.revision.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets a membership (the store said no).
    pub fn forget_member(&self, user: UserId, room: RoomId) {
        if let Some(e) = self.users().get_mut(&user) {
            e.member_of.remove(&room);
        }
    }

    /// Shows a notice on this gateway's connections of the user.
    pub fn notify(&self, user: UserId, notice: &UserNotice) {
        let conns: Vec<ConnHandle> = match self.users().get(&user) {
            Some(entry) => entry.conns.values().cloned().collect(),
            None => return,
        };
        let text = match notice {
            UserNotice::RoomsChanged { room, reason } => ServerFrame::RoomsChanged {
                room: *room,
                reason,
            }
            .to_text(),
            UserNotice::Read { room, position } => ServerFrame::Read {
                room: *room,
                position: *position,
            }
            .to_text(),
            UserNotice::Invite { invite } => ServerFrame::Invite { invite }.to_text(),
        };
        let frame = Arc::new(ByteString::from(text));
        for h in conns {
            h.offer(Out::Frame(frame.clone()));
        }
    }

    /// What a relayed `member` or `room` event changes in this gateway's caches: the
    /// standing cached is forgotten, so the next frame asks the store. (Ending delivery is
    /// the user channel's job, published by the deciding gateway before it answers: an
    /// event relayed late must not end a membership that was granted again since.)
    fn learn(&self, record: &crate::model::Message) {
        use crate::model::Change;
        match &record.change {
            Some(Change::Member { user, .. }) => {
                self.revoke(user.id, &Revocation::Standing { room: record.room });
            }
            Some(Change::Room { .. }) => self.forget_room(record.room),
            _ => {}
        }
    }

    /// Applies a revocation to this gateway's connections of the user: see the module
    /// documentation. Idempotent.
    pub fn revoke(&self, user: UserId, what: &Revocation) {
        let conns: Vec<(ConnId, ConnHandle)> = {
            let mut users = self.users();
            // The cache first, then the revision, under the lock `remember_member` takes:
            // a check that saw the old revision either found no cached membership or will
            // see the new revision after joining the room (and ask the store again).
            let conns = match users.get_mut(&user) {
                Some(entry) => {
                    if let Revocation::Room { room, .. } | Revocation::Standing { room } = what {
                        entry.member_of.remove(room);
                    }
                    entry.conns.iter().map(|(id, h)| (*id, h.clone())).collect()
                }
                None => Vec::new(),
            };
            self.revision.fetch_add(1, Ordering::AcqRel);
            conns
        };
        if conns.is_empty() {
            return;
        }
        match what {
            Revocation::Room { room, reason } => {
                let mut rooms = self.lock(*room);
                let Some(entry) = rooms.get_mut(room) else {
                    return;
                };
                let frame = Arc::new(ByteString::from(
                    ServerFrame::Unsubscribed {
                        room: *room,
                        reason: reason.as_str(),
                    }
                    .to_text(),
                ));
                for (id, h) in &conns {
                    if entry.conns.remove(id).is_some() {
                        // The writer drops whatever of the room is still queued behind it.
                        h.offer(Out::EndRoom { room: *room });
                        h.offer(Out::Frame(frame.clone()));
                    }
                }
                if entry.conns.is_empty() {
                    rooms.remove(room);
                    let _ = self.ctl.send(Ctl::Unsubscribe(Channel::Room(*room)));
                }
            }
            // The cache is forgotten above: nothing else to do.
            Revocation::Standing { .. } => {}
            Revocation::Sessions => {
                for (_, h) in &conns {
                    let reason = CloseReason {
                        code: CloseCode::Other(close::UNAUTHENTICATED),
                        description: Some("token revoked; log in again".into()),
                    };
                    h.offer(Out::close(reason));
                }
            }
        }
    }

    /// Adds a connection to a room; the receiver turns true once the room's bus
    /// subscription is active (at once if it already was).
    pub fn subscribe(&self, room: RoomId, conn: ConnId, h: ConnHandle) -> watch::Receiver<bool> {
        let mut rooms = self.lock(room);
        let channel = Channel::Room(room);
        let entry = rooms.entry(room).or_insert_with(|| RoomEntry {
            conns: HashMap::new(),
            last_position: None,
            ready: self.request(channel),
        });
        self.renew(channel, &mut entry.ready);
        entry.conns.insert(conn, h);
        entry.ready.clone()
    }

    pub fn unsubscribe(&self, room: RoomId, conn: ConnId) {
        let mut rooms = self.lock(room);
        if let Some(entry) = rooms.get_mut(&room) {
            entry.conns.remove(&conn);
            if entry.conns.is_empty() {
                rooms.remove(&room);
                let _ = self.ctl.send(Ctl::Unsubscribe(Channel::Room(room)));
            }
        }
    }

    pub fn local_connections(&self, room: RoomId) -> usize {
        self.lock(room).get(&room).map_or(0, |e| e.conns.len())
    }

    /// Delivers one bus event to the room's local connections.
    pub fn dispatch(&self, event: &BusEvent) {
        let room = match event.channel() {
            Channel::Room(room) => room,
            Channel::User(_) => {
                match event {
                    BusEvent::Revoked { user, what } => self.revoke(*user, what),
                    BusEvent::Notice { user, notice } => self.notify(*user, notice),
                    _ => {}
                }
                return;
            }
        };
        // The start of the `fanout` hop (a clock read, no syscall).
        let got = Instant::now();
        // Governance events invalidate what this gateway cached (a second path beside the
        // user's channel, which the deciding gateway publishes on): before the room's
        // shard is locked (`revoke` locks users, then rooms).
        if let BusEvent::Message { message, .. } = event {
            self.learn(message);
        }
        if matches!(event, BusEvent::Message { .. }) && self.suspended.load(Ordering::Acquire) {
            // After a gap: the client recovers it (and this message) from the log.
            return;
        }
        let mut rooms = self.lock(room);
        let Some(entry) = rooms.get_mut(&room) else {
            return;
        };
        let text: ByteString = match event {
            BusEvent::Message {
                message,
                published_us,
            } => {
                if entry.last_position.is_some_and(|l| message.position <= l) {
                    return;
                }
                entry.last_position = Some(message.position);
                let now = chrono::Utc::now();
                if let Some(published) = published_us {
                    hops::wall(Hop::Bus, *published, now.timestamp_micros());
                }
                let lag = now - message.sent_at;
                metrics::histogram!(names::SEND_TO_DELIVER_SECONDS)
                    .record(lag.num_microseconds().unwrap_or(0) as f64 / 1e6);
                crate::protocol::record_frame(message).to_text().into()
            }
            BusEvent::Typing { room, user } => {
                ServerFrame::Typing { room: *room, user }.to_text().into()
            }
            BusEvent::Member { room, user, event } => ServerFrame::Member {
                room: *room,
                user,
                event: *event,
            }
            .to_text()
            .into(),
            BusEvent::Presence { room, user, online } => ServerFrame::Presence {
                room: *room,
                user,
                online: *online,
            }
            .to_text()
            .into(),
            BusEvent::Receipt {
                room,
                user,
                position,
            } => ServerFrame::Receipt {
                room: *room,
                user,
                position: *position,
            }
            .to_text()
            .into(),
            BusEvent::Revoked { .. } | BusEvent::Notice { .. } => return,
        };
        // One allocation shared by every local subscriber.
        enum Shared {
            Message(Arc<Live>),
            Frame(Arc<ByteString>),
        }
        let shared = match event {
            BusEvent::Message { message, .. } => Shared::Message(Arc::new(Live {
                room,
                position: message.position,
                text,
                got,
            })),
            _ => Shared::Frame(Arc::new(text)),
        };
        let mut delivered = 0u64;
        // One wake per worker thread for the whole room (doorbell.rs), after the lock.
        let mut rings = Rings::default();
        for h in entry.conns.values() {
            let item = match &shared {
                Shared::Message(live) => Out::Message(live.clone()),
                Shared::Frame(frame) => Out::Frame(frame.clone()),
            };
            if h.offer_rung(item, &mut rings) {
                delivered += 1;
            }
        }
        drop(rooms);
        rings.ring();
        if matches!(event, BusEvent::Message { .. }) {
            metrics::counter!(names::MESSAGES_DELIVERED).increment(delivered);
        }
    }

    /// The bus subscription broke: events from now on may be missing. Live messages are
    /// held off until [`Hub::resync_all`].
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::Release);
        // Revocations may be lost with the link: no membership cached so far is trusted.
        self.revision.fetch_add(1, Ordering::AcqRel);
        for e in self.users().values_mut() {
            e.member_of.clear();
        }
    }

    /// The bus is subscribed again after losing events: every client is told to reconnect
    /// and resubscribe with `since`, which recovers the gap from the log; live delivery
    /// resumes behind that frame.
    pub fn resync_all(&self, frame: &ByteString) {
        let frame = Arc::new(frame.clone());
        let mut told = std::collections::HashSet::new();
        // Every subscription ends here (the client resubscribes, which asks the store
        // again): a revocation published while the link was down never reached this
        // gateway, and a client that ignores `reconnect` must not go on receiving a room
        // it may have lost. Live delivery resumes once every shard is through.
        let mut ended_rooms = Vec::new();
        for shard in &self.rooms {
            let mut rooms = shard.lock().unwrap_or_else(|p| p.into_inner());
            ended_rooms.extend(rooms.drain());
        }
        for (room, entry) in ended_rooms {
            let ended = Arc::new(ByteString::from(
                ServerFrame::Unsubscribed {
                    room,
                    reason: "resync",
                }
                .to_text(),
            ));
            for (id, h) in &entry.conns {
                if told.insert(*id) {
                    h.offer(Out::Frame(frame.clone()));
                }
                h.offer(Out::EndRoom { room });
                h.offer(Out::Frame(ended.clone()));
            }
            let _ = self.ctl.send(Ctl::Unsubscribe(Channel::Room(room)));
        }
        self.suspended.store(false, Ordering::Release);
    }
}

async fn control(bus: Arc<dyn Bus>, mut rx: mpsc::UnboundedReceiver<Ctl>) {
    while let Some(c) = rx.recv().await {
        match c {
            Ctl::Subscribe(channel, ready) => {
                let mut delay = Duration::from_millis(50);
                for attempt in 1..=5 {
                    match bus.subscribe(channel).await {
                        Ok(()) => {
                            let _ = ready.send(true);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(?channel, attempt, error = %e, "bus subscribe failed");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
            Ctl::Unsubscribe(channel) => {
                if let Err(e) = bus.unsubscribe(channel).await {
                    tracing::warn!(?channel, error = %e, "bus unsubscribe failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::LocalBus;
    use crate::model::{Message, User};
    use uuid::Uuid;

    fn message(room: RoomId, position: Position) -> BusEvent {
        BusEvent::Message {
            message: Message {
                id: Uuid::now_v7(),
                room,
                sender: User {
                    id: Uuid::new_v4(),
                    name: "ann".into(),
                },
                body: format!("#{position}"),
                client_msg_id: format!("c{position}"),
                position,
                sent_at: chrono::Utc::now(),
                ..Default::default()
            },
            published_us: None,
        }
    }

    fn received(rx: &mut crate::gateway::outbox::OutRx) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(o) = rx.try_recv() {
            got.push(match o {
                Out::Message(live) => format!("message {}", live.position),
                Out::Frame(f) => f.to_string(),
                _ => "other".into(),
            });
        }
        got
    }

    #[test]
    fn the_publish_stamp_of_a_bus_event_survives_a_rolling_upgrade() {
        let room = Uuid::now_v7();
        let BusEvent::Message { message, .. } = message(room, 3) else {
            unreachable!()
        };
        let stamped = BusEvent::Message {
            message: message.clone(),
            published_us: Some(1_700_000_000_000_000),
        };
        let json = serde_json::to_value(&stamped).unwrap();
        assert_eq!(json["published_us"], 1_700_000_000_000_000i64);
        assert_eq!(
            serde_json::from_value::<BusEvent>(json.clone()).unwrap(),
            stamped
        );
        // From an older relay: no stamp.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("published_us");
        let read: BusEvent = serde_json::from_value(old).unwrap();
        assert!(matches!(
            read,
            BusEvent::Message {
                published_us: None,
                ..
            }
        ));
        // A newer relay's fields are ignored, as an older gateway ignores this stamp.
        let mut newer = json;
        newer["some_later_field"] = serde_json::json!(1);
        assert_eq!(serde_json::from_value::<BusEvent>(newer).unwrap(), stamped);
        // The stamp is never on the client's frame.
        let frame = crate::protocol::record_frame(&message).to_text();
        assert!(!frame.contains("published"), "{frame}");
    }

    #[tokio::test]
    async fn after_a_bus_loss_no_live_message_overtakes_the_resync() {
        let (bus, _notices) = LocalBus::new();
        let hub = Hub::new(Arc::new(bus), &Shutdown::new());
        let room = Uuid::now_v7();
        let (tx, mut rx) = crate::gateway::outbox::channel(16, 1 << 20);
        let handle = ConnHandle {
            tx,
            kick: CancellationToken::new(),
            user: Uuid::new_v4(),
        };
        let mut ready = hub.subscribe(room, 1, handle.clone());
        ready.wait_for(|r| *r).await.unwrap();

        hub.dispatch(&message(room, 1));
        hub.suspend();
        // Published after the gap, before every client was told: held off.
        hub.dispatch(&message(room, 5));
        hub.resync_all(&ByteString::from_static("resync"));
        // The subscription ended with the resync (the client resubscribes with `since`).
        hub.dispatch(&message(room, 6));
        let ended = format!(r#"{{"type":"unsubscribed","room":"{room}","reason":"resync"}}"#);
        assert_eq!(received(&mut rx), ["message 1", "resync", "other", &ended]);
        let mut ready = hub.subscribe(room, 1, handle);
        ready.wait_for(|r| *r).await.unwrap();
        hub.dispatch(&message(room, 7));
        // A record relayed twice is dropped.
        hub.dispatch(&message(room, 7));
        assert_eq!(received(&mut rx), ["message 7"]);
    }
}
