//! In-process bus for the embedded mode: one process is the only subscriber, so publish
//! hands each event of a subscribed room straight to the gateway's notice stream, in the
//! order published. Nothing is lost in between, so it never sends `Resync`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Bus, BusError, BusEvent, BusNotice, Channel};
use crate::model::UserId;

pub struct LocalBus {
    channels: Mutex<HashSet<Channel>>,
    tx: mpsc::UnboundedSender<BusNotice>,
    /// Each online user's open connections (one process: nothing can go stale).
    presence: Mutex<HashMap<UserId, HashSet<String>>>,
}

impl LocalBus {
    /// The bus and the stream of events for the rooms subscribed.
    pub fn new() -> (LocalBus, mpsc::UnboundedReceiver<BusNotice>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            LocalBus {
                channels: Mutex::new(HashSet::new()),
                tx,
                presence: Mutex::new(HashMap::new()),
            },
            rx,
        )
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashSet<Channel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, HashSet<String>>> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, events: &[BusEvent]) -> Result<(), BusError> {
        let channels = self.channels();
        for e in events.iter().filter(|e| channels.contains(&e.channel())) {
            self.tx
                .send(BusNotice::Event(e.clone()))
                .map_err(|_| BusError::Unavailable("the gateway has stopped".into()))?;
        }
        Ok(())
    }

    async fn subscribe(&self, channel: Channel) -> Result<(), BusError> {
        self.channels().insert(channel);
        Ok(())
    }

    async fn unsubscribe(&self, channel: Channel) -> Result<(), BusError> {
        self.channels().remove(&channel);
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn presence_join(&self, user: UserId, conn: &str) -> Result<bool, BusError> {
        let mut p = self.presence();
        let conns = p.entry(user).or_default();
        Ok(conns.insert(conn.to_owned()) && conns.len() == 1)
    }

    async fn presence_leave(&self, user: UserId, conn: &str) -> Result<bool, BusError> {
        let mut p = self.presence();
        let Some(conns) = p.get_mut(&user) else {
            return Ok(false);
        };
        let removed = conns.remove(conn);
        let last = conns.is_empty();
        if last {
            p.remove(&user);
        }
        Ok(removed && last)
    }

    async fn presence_refresh(&self, _conns: &[(UserId, String)]) -> Result<(), BusError> {
        Ok(())
    }

    async fn online(&self, users: &[UserId]) -> Result<HashSet<UserId>, BusError> {
        let p = self.presence();
        Ok(users
            .iter()
            .filter(|u| p.contains_key(u))
            .copied()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RoomId, User};
    use uuid::Uuid;

    fn typing(room: RoomId) -> BusEvent {
        BusEvent::Typing {
            room,
            user: User {
                id: Uuid::new_v4(),
                name: "ann".into(),
            },
        }
    }

    #[tokio::test]
    async fn delivers_subscribed_rooms_in_order() {
        let (bus, mut rx) = LocalBus::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        bus.subscribe(Channel::Room(a)).await.unwrap();
        let events = [typing(a), typing(b), typing(a)];
        bus.publish(&events).await.unwrap();
        assert_eq!(rx.recv().await, Some(BusNotice::Event(events[0].clone())));
        assert_eq!(rx.recv().await, Some(BusNotice::Event(events[2].clone())));
        bus.unsubscribe(Channel::Room(a)).await.unwrap();
        bus.publish(&[typing(a)]).await.unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn presence_counts_connections() {
        let (bus, _rx) = LocalBus::new();
        let u = Uuid::new_v4();
        assert!(bus.presence_join(u, "c1").await.unwrap());
        assert!(!bus.presence_join(u, "c2").await.unwrap());
        assert_eq!(bus.online(&[u]).await.unwrap().len(), 1);
        assert!(!bus.presence_leave(u, "c1").await.unwrap());
        assert!(bus.presence_leave(u, "c2").await.unwrap());
        assert!(!bus.presence_leave(u, "c2").await.unwrap());
        assert!(bus.online(&[u]).await.unwrap().is_empty());
    }
}
