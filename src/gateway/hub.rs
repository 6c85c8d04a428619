//! Room → local connections, and the bus subscription of each room that has any.
//!
//! The hub never awaits a socket or a queue: delivery is `try_send` into each
//! connection's bounded outbox, and a full outbox kicks the connection (close 1008).
//! Bus subscribe/unsubscribe commands go to one task, in the order the hub issued them,
//! so "first in, last out" cannot race into a wrong subscription state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::outbox::{Live, Out, OutTx, TrySendError};
use crate::bus::{Bus, BusEvent};
use crate::model::{Position, RoomId};
use crate::protocol::ServerFrame;
use crate::telemetry::names;

pub type ConnId = u64;

#[derive(Clone)]
pub struct ConnHandle {
    pub tx: OutTx,
    pub kick: CancellationToken,
}

impl ConnHandle {
    fn offer(&self, item: Out) -> bool {
        match self.tx.try_send(item) {
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

enum Ctl {
    Subscribe(RoomId, watch::Sender<bool>),
    Unsubscribe(RoomId),
}

pub struct Hub {
    rooms: Mutex<HashMap<RoomId, RoomEntry>>,
    ctl: mpsc::UnboundedSender<Ctl>,
    /// Set while the bus subscription is broken (from the loss until every client has
    /// been told to resync): live messages are held off then, so no client sees one that
    /// follows a gap before it is told to recover, which would move its `since` past it.
    suspended: AtomicBool,
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>) -> Arc<Hub> {
        let (ctl, rx) = mpsc::unbounded_channel();
        tokio::spawn(control(bus, rx));
        Arc::new(Hub {
            rooms: Mutex::new(HashMap::new()),
            ctl,
            suspended: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, RoomEntry>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection to a room; the receiver turns true once the room's bus
    /// subscription is active (at once if it already was).
    pub fn subscribe(&self, room: RoomId, conn: ConnId, h: ConnHandle) -> watch::Receiver<bool> {
        let mut rooms = self.lock();
        let entry = rooms.entry(room).or_insert_with(|| {
            let (tx, rx) = watch::channel(false);
            let _ = self.ctl.send(Ctl::Subscribe(room, tx));
            RoomEntry {
                conns: HashMap::new(),
                last_position: None,
                ready: rx,
            }
        });
        // A subscription attempt that gave up: try again.
        if !*entry.ready.borrow() && entry.ready.has_changed().is_err() {
            let (tx, rx) = watch::channel(false);
            let _ = self.ctl.send(Ctl::Subscribe(room, tx));
            entry.ready = rx;
        }
        entry.conns.insert(conn, h);
        entry.ready.clone()
    }

    pub fn unsubscribe(&self, room: RoomId, conn: ConnId) {
        let mut rooms = self.lock();
        if let Some(entry) = rooms.get_mut(&room) {
            entry.conns.remove(&conn);
            if entry.conns.is_empty() {
                rooms.remove(&room);
                let _ = self.ctl.send(Ctl::Unsubscribe(room));
            }
        }
    }

    pub fn local_connections(&self, room: RoomId) -> usize {
        self.lock().get(&room).map_or(0, |e| e.conns.len())
    }

    /// Delivers one bus event to the room's local connections.
    pub fn dispatch(&self, event: &BusEvent) {
        let room = event.room();
        if matches!(event, BusEvent::Message { .. }) && self.suspended.load(Ordering::Acquire) {
            // After a gap: the client recovers it (and this message) from the log.
            return;
        }
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(&room) else {
            return;
        };
        let text: ByteString = match event {
            BusEvent::Message { message } => {
                if entry.last_position.is_some_and(|l| message.position <= l) {
                    return;
                }
                entry.last_position = Some(message.position);
                let lag = chrono::Utc::now() - message.sent_at;
                metrics::histogram!(names::SEND_TO_DELIVER_SECONDS)
                    .record(lag.num_microseconds().unwrap_or(0) as f64 / 1e6);
                ServerFrame::Message { message }.to_text().into()
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
        };
        // One allocation shared by every local subscriber.
        enum Shared {
            Message(Arc<Live>),
            Frame(Arc<ByteString>),
        }
        let shared = match event {
            BusEvent::Message { message } => Shared::Message(Arc::new(Live {
                room,
                position: message.position,
                text,
            })),
            _ => Shared::Frame(Arc::new(text)),
        };
        let mut delivered = 0u64;
        for h in entry.conns.values() {
            let item = match &shared {
                Shared::Message(live) => Out::Message(live.clone()),
                Shared::Frame(frame) => Out::Frame(frame.clone()),
            };
            if h.offer(item) {
                delivered += 1;
            }
        }
        if matches!(event, BusEvent::Message { .. }) {
            metrics::counter!(names::MESSAGES_DELIVERED).increment(delivered);
        }
    }

    /// The bus subscription broke: events from now on may be missing. Live messages are
    /// held off until [`Hub::resync_all`].
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::Release);
    }

    /// The bus is subscribed again after losing events: every client is told to reconnect
    /// and resubscribe with `since`, which recovers the gap from the log; live delivery
    /// resumes behind that frame.
    pub fn resync_all(&self, frame: &ByteString) {
        let rooms = self.lock();
        self.suspended.store(false, Ordering::Release);
        let frame = Arc::new(frame.clone());
        let mut told = std::collections::HashSet::new();
        for entry in rooms.values() {
            for (id, h) in &entry.conns {
                if told.insert(*id) {
                    h.offer(Out::Frame(frame.clone()));
                }
            }
        }
    }
}

async fn control(bus: Arc<dyn Bus>, mut rx: mpsc::UnboundedReceiver<Ctl>) {
    while let Some(c) = rx.recv().await {
        match c {
            Ctl::Subscribe(room, ready) => {
                let mut delay = Duration::from_millis(50);
                for attempt in 1..=5 {
                    match bus.subscribe(room).await {
                        Ok(()) => {
                            let _ = ready.send(true);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(%room, attempt, error = %e, "bus subscribe failed");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
            Ctl::Unsubscribe(room) => {
                if let Err(e) = bus.unsubscribe(room).await {
                    tracing::warn!(%room, error = %e, "bus unsubscribe failed");
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
            },
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

    #[tokio::test]
    async fn after_a_bus_loss_no_live_message_overtakes_the_resync() {
        let (bus, _notices) = LocalBus::new();
        let hub = Hub::new(Arc::new(bus));
        let room = Uuid::now_v7();
        let (tx, mut rx) = crate::gateway::outbox::channel(16);
        let handle = ConnHandle {
            tx,
            kick: CancellationToken::new(),
        };
        let mut ready = hub.subscribe(room, 1, handle);
        ready.wait_for(|r| *r).await.unwrap();

        hub.dispatch(&message(room, 1));
        hub.suspend();
        // Published after the gap, before every client was told: held off.
        hub.dispatch(&message(room, 5));
        hub.resync_all(&ByteString::from_static("resync"));
        hub.dispatch(&message(room, 6));
        // A record relayed twice is dropped.
        hub.dispatch(&message(room, 6));
        assert_eq!(received(&mut rx), ["message 1", "resync", "message 6"]);
    }
}
