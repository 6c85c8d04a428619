//! The gateway role: WebSocket sessions, the HTTP API, the static client, and the bus
//! subscriber that feeds the hub.
//!
//! Invariant: the gateway never publishes a chat message to the bus; it appends to the
//! log, and the relay (consumer role) publishes in log order.

#[cfg(feature = "autobahn")]
pub mod echo;
mod frames;
mod hub;
mod outbox;
mod presence;
mod recovery;
mod send;
mod session;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytestring::ByteString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::bus::{Bus, BusNotice};
use crate::config::Limits;
use crate::http::error::ApiError;
use crate::log::Log;
use crate::protocol::ServerFrame;
use crate::store::Store;
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
    recovery: Recovery,
    pub presence: Arc<Presence>,
    pub auth: Auth,
    pub limits: Limits,
    /// Cancelled when the gateway drains: sessions send `reconnect` and close.
    pub drain: CancellationToken,
    allowed_origins: Vec<String>,
}

pub struct GatewayParts {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn Log>,
    pub bus: Arc<dyn Bus>,
    pub sender: Sender,
    pub topic: String,
    pub auth: Auth,
    pub limits: Limits,
    pub drain: CancellationToken,
    pub allowed_origins: Vec<String>,
}

impl Gateway {
    /// Builds the gateway and starts feeding the hub from the bus notices.
    pub fn start(p: GatewayParts, notices: mpsc::UnboundedReceiver<BusNotice>) -> Arc<Gateway> {
        let hub = Hub::new(p.bus.clone());
        let presence = Arc::new(Presence::default());
        tokio::spawn(
            presence
                .clone()
                .refresh_loop(p.bus.clone(), p.drain.clone()),
        );
        let gw = Arc::new(Gateway {
            presence,
            recovery: Recovery::new(
                p.store.clone(),
                p.log.clone(),
                &p.topic,
                p.limits.max_backlog,
            ),
            store: p.store,
            log: p.log,
            bus: p.bus,
            hub: hub.clone(),
            sender: p.sender,
            auth: p.auth,
            limits: p.limits,
            drain: p.drain,
            allowed_origins: p.allowed_origins,
        });
        tokio::spawn(pump(hub, notices));
        gw
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
    actix_web::rt::spawn(session::run(gw, session, frames));
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

/// The browser client, built into the binary (or read from `--static-dir`).
pub mod assets {
    pub const INDEX_HTML: &str = include_str!("../../static/index.html");
    pub const APP_JS: &str = include_str!("../../static/app.js");
    pub const APP_CSS: &str = include_str!("../../static/app.css");
}
