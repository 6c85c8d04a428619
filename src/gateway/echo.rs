//! `GET /autobahn-echo`, compiled only with the cargo feature `autobahn` (never in a release
//! build or the image): the target of the Autobahn test suite (scripts/autobahn.sh), which
//! cannot speak the chat protocol. It echoes every message with its type, answers pings and
//! the close handshake, through the same upgrade, frame decoding and limits as `/ws`.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};

use super::frames::{close_reply, Inbound};
use super::Gateway;

pub async fn echo(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Arc<Gateway>>,
) -> Result<HttpResponse, actix_web::Error> {
    let (resp, mut session, mut frames) =
        super::upgrade(&req, body, gw.limits.max_frame_bytes).await?;
    actix_web::rt::spawn(gw.sessions.track(async move {
        let reason = loop {
            let sent = match frames.recv().await {
                Some(Ok(Inbound::Text(t))) => session.text(t).await,
                Some(Ok(Inbound::Binary(b))) => session.binary(b).await,
                Some(Ok(Inbound::Ping(p))) => session.pong(&p).await,
                Some(Ok(Inbound::Pong)) => Ok(()),
                Some(Ok(Inbound::Close(theirs))) => break Some(close_reply(theirs)),
                Some(Err(e)) => break e.close_reason(),
                None => break None,
            };
            if sent.is_err() {
                return;
            }
        };
        if let Some(reason) = reason {
            let _ = session.close(Some(reason)).await;
        }
    }));
    Ok(resp)
}
