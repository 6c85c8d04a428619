//! The gateway role: WebSocket sessions, the HTTP API, the static client, and the bus
//! subscriber that feeds the hub.
//!
//! Invariant: the gateway never publishes a chat message to the bus; it appends to the
//! log, and the relay (consumer role) publishes in log order.

mod doorbell;
#[cfg(feature = "autobahn")]
pub mod echo;
mod frames;
mod hub;
mod order;
mod outbox;
mod presence;
mod queue;
mod recovery;
mod send;
mod session;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytestring::ByteString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::bus::{Bus, BusError, BusEvent, BusNotice, Revocation, UserNotice};
use crate::config::Limits;
use crate::coord::Coord;
use crate::http::error::ApiError;
use crate::log::Log;
use crate::model::{Change, RoomId, User, UserId};
use crate::protocol::ServerFrame;
use crate::shutdown::{Deadline, Shutdown};
use crate::store::{Store, StoreError};
pub use hub::Hub;
use presence::Presence;
use recovery::Recovery;
pub use send::Sender;

pub struct Gateway {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn Log>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub sender: Sender,
    recovery: Arc<Recovery>,
    pub presence: Arc<Presence>,
    pub auth: Auth,
    pub limits: Limits,
    /// What this gateway's connections hold queued, together (`Limits::max_queued_bytes`).
    pub queued: Arc<outbox::Budget>,
    /// Room creations per user on this gateway (`Limits::room_creations_per_minute`);
    /// its idle entries are dropped every minute, so it holds only the recent creators.
    pub room_creations: Arc<governor::DefaultKeyedRateLimiter<UserId>>,
    /// Membership changes per user on this gateway (join, leave, invite, accepting an
    /// invite, joining by link, creating a link: `Limits::membership_changes_per_minute`): each
    /// is a record of a room's log, relayed to every reader, so they are no free channel.
    pub membership_changes: Arc<governor::DefaultKeyedRateLimiter<UserId>>,
    /// Cancelled when the gateway drains: `/ws` refuses, sessions send `reconnect`, read
    /// on until their client closes, and refuse sends not yet started (`draining`).
    pub drain: CancellationToken,
    /// Cancelled when the drain stops waiting for clients to close: sessions close 1012
    /// (after their sends in flight are answered).
    closing: CancellationToken,
    /// The sessions with their writers and send workers, tracked apart so that the drain
    /// can wait for them; its token is the cut: what is left closes at once.
    sessions: Shutdown,
    /// Background tasks (bus pump, hub control, sweeps, revocation retries): they run
    /// until the process's last step.
    tasks: Shutdown,
    allowed_origins: Vec<String>,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid or expired token")]
    Invalid,
    /// The user is gone, or the token's generation is not the user's current one.
    #[error("this token was revoked")]
    Revoked,
    /// The signature is valid but the store could not say whether it was revoked.
    #[error("token generation unknown: {0}")]
    Unavailable(StoreError),
}

pub struct GatewayParts {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn Log>,
    pub bus: Arc<dyn Bus>,
    /// Send claims and tombstones.
    pub coord: Arc<dyn Coord>,
    pub auth: Auth,
    pub limits: Limits,
    /// The process's shutdown: the gateway's sessions are a group of it (shutdown.rs).
    pub shutdown: Shutdown,
    pub allowed_origins: Vec<String>,
}

impl Gateway {
    /// Builds the gateway and starts feeding the hub from the bus notices.
    pub fn start(p: GatewayParts, notices: mpsc::UnboundedReceiver<BusNotice>) -> Arc<Gateway> {
        let tasks = p.shutdown.clone();
        let sessions = p.shutdown.group();
        let closing = sessions.token().child_token();
        let drain = closing.child_token();
        let hub = Hub::new(p.bus.clone(), &tasks);
        let presence = Arc::new(Presence::default());
        let per_minute =
            NonZeroU32::new(p.limits.room_creations_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let room_creations = Arc::new(governor::RateLimiter::keyed(governor::Quota::per_minute(
            per_minute,
        )));
        tasks.spawn(forget_idle_creators(
            room_creations.clone(),
            tasks.token().clone(),
        ));
        let per_minute = NonZeroU32::new(p.limits.membership_changes_per_minute.max(1))
            .unwrap_or(NonZeroU32::MIN);
        let membership_changes = Arc::new(governor::RateLimiter::keyed(
            governor::Quota::per_minute(per_minute),
        ));
        tasks.spawn(forget_idle_creators(
            membership_changes.clone(),
            tasks.token().clone(),
        ));
        // Until the end, not the drain: sessions are open while it lasts.
        tasks.spawn(
            presence
                .clone()
                .refresh_loop(p.bus.clone(), tasks.token().clone()),
        );
        let recovery = Arc::new(Recovery::new(
            p.store.clone(),
            p.log.clone(),
            p.limits.max_backlog,
        ));
        let sender = Sender::new(
            p.log.clone(),
            p.coord,
            p.store.clone(),
            p.limits.events.clone(),
            recovery.clone(),
        );
        let gw = Arc::new(Gateway {
            presence,
            recovery,
            store: p.store,
            log: p.log,
            bus: p.bus,
            hub: hub.clone(),
            sender,
            auth: p.auth,
            queued: outbox::Budget::new(p.limits.max_queued_bytes),
            limits: p.limits,
            room_creations,
            membership_changes,
            drain,
            closing,
            sessions,
            tasks: tasks.clone(),
            allowed_origins: p.allowed_origins,
        });
        tasks.spawn_until_cancelled(pump(hub, notices));
        gw
    }

    /// The gateway's part of the drain (shutdown.rs has the whole sequence): every session
    /// sends `reconnect` and ends once its client has closed and its sends in flight are
    /// answered; at D/4 the sessions left close 1012 (after their sends); at 3/4 D what is
    /// left is cut. Returns once every session task has ended, Err (how many tasks are
    /// left) if some still run at 7/8 D.
    pub async fn drain(&self, deadline: &Deadline) -> Result<(), usize> {
        let sessions = self.drain_sessions(deadline).await;
        // The results of the last sends are written by tasks on the HTTP workers' threads,
        // which stop with the HTTP server, next.
        self.sender.flush(deadline.share(7, 8)).await;
        sessions
    }

    async fn drain_sessions(&self, deadline: &Deadline) -> Result<(), usize> {
        self.drain.cancel();
        if self.sessions.wait_until(deadline.share(1, 4)).await.is_ok() {
            return Ok(());
        }
        tracing::info!(
            tasks = self.sessions.len(),
            "drain: closing the sessions whose client has not closed"
        );
        self.closing.cancel();
        if self.sessions.wait_until(deadline.share(3, 4)).await.is_ok() {
            return Ok(());
        }
        tracing::warn!(
            tasks = self.sessions.len(),
            "drain: sessions still open; closing them now"
        );
        self.sessions.cancel();
        self.sessions.wait_until(deadline.share(7, 8)).await
    }

    /// Tells every connection of the user, on every gateway (best effort: a client also
    /// refreshes on reconnect).
    pub async fn notify(&self, user: UserId, notice: UserNotice) {
        let event = BusEvent::Notice { user, notice };
        if let Err(e) = self.bus.publish(std::slice::from_ref(&event)).await {
            tracing::debug!(error = %e, "user notice not published");
        }
    }

    /// Ends the user's access (call it after the store changed): on this gateway before
    /// it returns, on every other one when the bus delivers the notice (hub.rs). An
    /// error means the other gateways may not have heard yet: the notice is published
    /// again in the background (for a minute), and the caller should not report success
    /// where a retry is possible (revoking twice is harmless).
    pub async fn revoke(&self, user: UserId, what: Revocation) -> Result<(), BusError> {
        self.hub.revoke(user, &what);
        let event = BusEvent::Revoked { user, what };
        let first = self.bus.publish(std::slice::from_ref(&event)).await;
        if first.is_err() {
            let bus = self.bus.clone();
            self.tasks.spawn_until_cancelled(async move {
                let mut delay = Duration::from_millis(250);
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(delay).await;
                    match bus.publish(std::slice::from_ref(&event)).await {
                        Ok(()) => return,
                        Err(e) => tracing::debug!(error = %e, "revocation not published yet"),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                tracing::error!(?event, "revocation never published to the bus");
            });
        }
        first
    }

    /// Appends a governance event (`member`, `room`) to the room's log, made by `actor`,
    /// after the store's state changed (http/govern.rs): the record readers see, in
    /// order with the messages. If the log cannot take it now, it is appended again in
    /// the background (for a minute, under the same client id: never twice); the change
    /// itself holds either way.
    pub async fn record(&self, actor: &User, room: RoomId, change: Change) {
        let client_msg_id = format!("gov:{}", uuid::Uuid::new_v4().simple());
        let draft = || send::Draft {
            change: Some(change.clone()),
            ..send::Draft::default()
        };
        let first = match self
            .sender
            .start(&self.tasks, actor, room, &client_msg_id, draft())
            .await
        {
            Ok(pending) => pending.await.map(|_| ()),
            Err(e) => Err(e),
        };
        let Err(e) = first else { return };
        tracing::warn!(error = %e, %room, "governance event not in the log yet; retrying");
        let (gw_sender, tasks, actor) = (self.sender.clone(), self.tasks.clone(), actor.clone());
        let change = change.clone();
        self.tasks.spawn_until_cancelled(async move {
            let mut delay = Duration::from_millis(250);
            let until = tokio::time::Instant::now() + Duration::from_secs(60);
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(delay).await;
                let draft = send::Draft {
                    change: Some(change.clone()),
                    ..send::Draft::default()
                };
                if let Ok(pending) = gw_sender
                    .start(&tasks, &actor, room, &client_msg_id, draft)
                    .await
                {
                    if pending.await.is_ok() {
                        return;
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            tracing::error!(%room, "governance event never reached the log");
        });
    }

    /// Checks a token: signature and expiry, then (one primary-key look-up, no cache) that
    /// the user exists and the token's generation is the user's current one. A token of
    /// a deleted user or of an older generation is `Revoked`.
    pub async fn authenticate(&self, token: &str) -> Result<User, TokenError> {
        let v = self.auth.verify(token).map_err(|_| TokenError::Invalid)?;
        // A task of its own, so that the look-up is never dropped half-way: the caller
        // may be (actix drops an extractor's future when another extractor of the same
        // handler fails), and a SQLite query dropped on an HTTP worker's current-thread
        // runtime panics (diesel-async waits for it with `block_in_place`).
        let (store, id) = (self.store.clone(), v.user.id);
        let current = (self.tasks)
            .spawn(async move { store.token_generation(id).await })
            .await
            .unwrap_or_else(|e| Err(StoreError::Unavailable(e.into())));
        match current {
            Ok(Some(current)) if current == v.generation => Ok(v.user),
            Ok(_) => Err(TokenError::Revoked),
            Err(e) => Err(TokenError::Unavailable(e)),
        }
    }

    /// Cross-site WebSocket hijacking guard: a browser's Origin must be the gateway's own
    /// host or an allowed origin. Non-browser clients send no Origin.
    fn origin_allowed(&self, req: &HttpRequest) -> bool {
        let Some(origin) = req.headers().get("origin").and_then(|o| o.to_str().ok()) else {
            return true;
        };
        let origin = origin.trim_end_matches('/');
        if self.allowed_origins.iter().any(|a| a == origin || a == "*") {
            return true;
        }
        let host = req.connection_info().host().to_owned();
        origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(&host))
    }
}

/// Drops the rate-limiter state of users who have not created a room for a while (their
/// state is the same as a new key's), so its memory follows the recent creators only.
async fn forget_idle_creators(
    limiter: Arc<governor::DefaultKeyedRateLimiter<UserId>>,
    drain: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = drain.cancelled() => return,
            _ = tick.tick() => {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
    }
}

async fn pump(hub: Arc<Hub>, mut notices: mpsc::UnboundedReceiver<BusNotice>) {
    let resync: ByteString = ServerFrame::Reconnect {
        reason: "bus_resync",
    }
    .to_text()
    .into();
    while let Some(n) = notices.recv().await {
        match n {
            BusNotice::Event(e) => hub.dispatch(&e),
            BusNotice::Lost => {
                tracing::warn!("bus connection lost; live messages held until it is back");
                hub.suspend();
            }
            BusNotice::Resync => {
                tracing::warn!("bus events were lost; clients resubscribe to recover");
                hub.resync_all(&resync);
            }
        }
    }
}

/// `GET /ws`: upgrade and hand the socket to a session task.
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, actix_web::Error> {
    if gw.drain.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this gateway is draining; connect to another",
        )
        .into());
    }
    if !gw.origin_allowed(&req) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open a WebSocket here",
        )
        .into());
    }
    let (resp, session, frames) = upgrade(&req, body, gw.limits.max_frame_bytes).await?;
    let gw = gw.get_ref().clone();
    // On the HTTP worker's thread (the socket is there), tracked with the sessions.
    let run = gw.sessions.track(session::run(gw.clone(), session, frames));
    actix_web::rt::spawn(run);
    Ok(resp)
}

/// The WebSocket handshake (actix-ws: the answer, and the `Session` that encodes what we
/// send), with the client's frames read by [`frames::Frames`] rather than actix-ws's
/// stream (which is given an empty payload and dropped). `max`: the largest message.
async fn upgrade(
    req: &HttpRequest,
    body: web::Payload,
    max: usize,
) -> Result<(HttpResponse, actix_ws::Session, frames::Frames), actix_web::Error> {
    use actix_web::FromRequest;
    let none = web::Payload::extract(req).await?;
    let (resp, session, _unused) = actix_ws::handle(req, none)?;
    Ok((resp, session, frames::Frames::new(body.into_inner(), max)))
}
