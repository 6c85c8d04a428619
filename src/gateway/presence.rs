//! Presence: a user is online while at least one of their connections is open on any
//! gateway. Each session registers here; the bus keeps the cross-gateway record (Redis:
//! one expiring entry per connection, refreshed every `PRESENCE_REFRESH`, so a crashed
//! gateway's users go offline within `PRESENCE_TTL`). A user's first connection and last
//! disconnection are announced as `presence` events to every room they belong to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::bus::{Bus, BusEvent, PRESENCE_REFRESH};
use crate::model::{User, UserId};
use crate::store::Store;

#[derive(Default)]
pub struct Presence {
    /// This gateway's open connections: connection id → user.
    local: Mutex<HashMap<String, UserId>>,
}

impl Presence {
    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserId>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection opened; announces the user if it is their first anywhere.
    pub async fn opened(&self, bus: &dyn Bus, store: &dyn Store, user: &User, conn: &str) {
        self.local().insert(conn.to_owned(), user.id);
        match bus.presence_join(user.id, conn).await {
            Ok(true) => announce(bus, store, user, true).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence not recorded"),
        }
    }

    /// A connection closed; announces the user if it was their last anywhere.
    pub async fn closed(&self, bus: &dyn Bus, store: &dyn Store, user: &User, conn: &str) {
        self.local().remove(conn);
        match bus.presence_leave(user.id, conn).await {
            Ok(true) => announce(bus, store, user, false).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence not cleared (it expires)"),
        }
    }

    /// Keeps this gateway's connections alive in the shared record until `stop`.
    pub async fn refresh_loop(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(PRESENCE_REFRESH);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let conns: Vec<(UserId, String)> =
                self.local().iter().map(|(c, u)| (*u, c.clone())).collect();
            if let Err(e) = bus.presence_refresh(&conns).await {
                tracing::warn!(error = %e, "presence refresh failed");
            }
        }
    }
}

async fn announce(bus: &dyn Bus, store: &dyn Store, user: &User, online: bool) {
    let rooms = match store.member_rooms(user.id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "presence not announced: rooms unknown");
            return;
        }
    };
    let events: Vec<BusEvent> = rooms
        .into_iter()
        .map(|room| BusEvent::Presence {
            room,
            user: user.clone(),
            online,
        })
        .collect();
    if let Err(e) = bus.publish(&events).await {
        tracing::warn!(error = %e, "presence not announced");
    }
}
