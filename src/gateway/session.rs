//! One WebSocket connection: `hello` deadline, the read loop, limits, the send pipeline
//! and the drain. Errors become `error` frames or close codes here and nowhere else.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason, Session};
use bytestring::ByteString;
use futures_util::stream::{FuturesOrdered, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::frames::{self, Frames, Inbound, Pongs};
use super::hub::{ConnHandle, ConnId, Standing, MEMBERSHIP_RECHECK};
use super::outbox::{self, writer, Acked, Backlog, Out, OutTx};
use super::recovery::RecoveryError;
use super::send::{Draft, FLUSH_TIMEOUT};
use super::Gateway;
use crate::bus::{BusEvent, UserNotice};
use crate::model::{check_body, check_client_msg_id, Change, Position, RoomId, User};
use crate::protocol::{ack_frame, close, record_frame, ClientFrame, ErrorCode, ServerFrame};
use crate::store::StoreError;
use crate::telemetry::names;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Minimum time between two `typing` events of one connection in one room.
const TYPING_EVERY: Duration = Duration::from_millis(1500);

fn error_frame(code: ErrorCode, message: &str, reference: Option<&str>) -> ByteString {
    ServerFrame::Error {
        code,
        message,
        retryable: code.retryable(),
        reference,
    }
    .to_text()
    .into()
}

fn close_reason(code: CloseCode, text: &str) -> CloseReason {
    CloseReason {
        code,
        description: Some(text.to_owned()),
    }
}

fn reconnect_frame() -> String {
    ServerFrame::Reconnect { reason: "draining" }.to_text()
}

fn draining_close() -> CloseReason {
    close_reason(CloseCode::Restart, "server draining; reconnect")
}

/// How long a closing session waits to queue its close frame (the client reads too slowly
/// to make room); then the connection ends without it.
const CLOSE_QUEUE_WAIT: Duration = Duration::from_secs(2);

struct SendJob {
    room: RoomId,
    client_msg_id: String,
    draft: Draft,
}

struct Conn {
    gw: Arc<Gateway>,
    id: ConnId,
    user: User,
    /// This connection's presence entry.
    session_id: String,
    out: OutTx,
    handle: ConnHandle,
    rooms: HashSet<RoomId>,
    /// True once the user's bus channel is subscribed on this gateway: only then are
    /// memberships cached in the hub trusted (a revocation could not reach us before).
    revocations: tokio::sync::watch::Receiver<bool>,
    typing_at: HashMap<RoomId, Instant>,
    limiter: DefaultDirectRateLimiter,
    /// Started with the first send: an idle (reading-only) connection has no worker.
    sends: Option<SendPipe>,
    span: tracing::Span,
}

/// The connection's send queue and the worker that empties it.
struct SendPipe {
    jobs: mpsc::Sender<SendJob>,
    worker: tokio::task::JoinHandle<()>,
}

/// Sends of one connection waiting for the worker (beyond those in flight).
const SEND_QUEUE: usize = 64;

/// The message of a send refused because the gateway drains.
const DRAINING: &str = "this gateway is draining; send it again after reconnecting";

/// A connection's session, spawned by the `/ws` handler. It lives as long as the connection,
/// and a future is as large as its largest await (plus what it holds across it), so each
/// phase here is its own boxed future: what stays allocated while the connection idles is
/// the connection's state and the read loop, not the larger hello, open and close phases.
pub async fn run(gw: Arc<Gateway>, session: Session, mut stream: Frames) {
    let limits = &gw.limits;
    let (out, out_rx) =
        outbox::channel_in(limits.outbox_frames, limits.outbox_bytes, gw.queued.clone());
    let kick = CancellationToken::new();
    let writer_done = CancellationToken::new();
    let writer_task = actix_web::rt::spawn(gw.sessions.track(writer(
        session,
        out_rx,
        kick.clone(),
        writer_done.clone(),
    )));

    let (user, token) = match Box::pin(hello(&gw, &mut stream, &out)).await {
        Ok(hello) => hello,
        Err(reason) => return Box::pin(refuse(out, writer_task, reason)).await,
    };
    let mut conn = match Box::pin(Conn::open(&gw, user, &token, &out, &kick)).await {
        Ok(conn) => conn,
        Err(reason) => return Box::pin(refuse(out, writer_task, Some(reason))).await,
    };
    let span = conn.span.clone();
    let read = conn.read_loop(&mut stream, &kick, &writer_done);
    let reason = Box::pin(read.instrument(span)).await;
    drop(stream);
    Box::pin(conn.close(reason, out, writer_task)).await;
}

/// Closes a connection that never became a session (None: the client is gone already).
async fn refuse(out: OutTx, writer_task: tokio::task::JoinHandle<()>, reason: Option<CloseReason>) {
    if let Some(reason) = reason {
        let _ = out.send(Out::close(reason)).await;
    }
    drop(out);
    let _ = writer_task.await;
}

/// The first message must be a `hello` with a validly signed token, within the deadline;
/// returns its user and the token (its generation is checked by `Conn::open`). Pings
/// before it are answered (a client library may ping as soon as it is connected). Err: how
/// to close (None: the client is gone).
async fn hello(
    gw: &Gateway,
    stream: &mut Frames,
    out: &OutTx,
) -> Result<(User, String), Option<CloseReason>> {
    let unauthenticated = || {
        Some(close_reason(
            CloseCode::Other(close::UNAUTHENTICATED),
            "expected hello with a valid token first",
        ))
    };
    let deadline = tokio::time::Instant::now() + gw.limits.hello_timeout;
    let mut pongs = Pongs::default();
    loop {
        let msg = tokio::select! {
            msg = tokio::time::timeout_at(deadline, stream.recv()) => msg,
            _ = gw.drain.cancelled() => {
                let _ = out.send(Out::frame(reconnect_frame())).await;
                return Err(Some(draining_close()));
            }
        };
        let Ok(msg) = msg else {
            return Err(unauthenticated());
        };
        match msg {
            Some(Ok(Inbound::Text(t))) => {
                let Ok(ClientFrame::Hello { token }) = ClientFrame::parse(&t) else {
                    return Err(unauthenticated());
                };
                // The signature here; the token's generation once the connection listens
                // for revocations (`Conn::open`).
                return match gw.auth.verify(&token) {
                    Ok(v) => Ok((v.user, token)),
                    Err(_) => Err(unauthenticated()),
                };
            }
            Some(Ok(Inbound::Ping(p))) => pongs.answer(out, &p),
            Some(Ok(Inbound::Pong)) => {}
            Some(Ok(Inbound::Binary(_))) => return Err(unauthenticated()),
            Some(Ok(Inbound::Close(theirs))) => return Err(Some(frames::close_reply(theirs))),
            Some(Err(e)) => return Err(e.close_reason()),
            None => return Err(None),
        }
    }
}

impl Conn {
    /// An authenticated connection: online, welcomed, counted. Err: how to close (the
    /// user has `max_connections_per_user` here already, or the token was revoked).
    ///
    /// The token's generation is checked once the user's bus channel is subscribed here,
    /// not before: a `logout-all` in between would otherwise reach neither the check nor
    /// this connection.
    async fn open(
        gw: &Arc<Gateway>,
        user: User,
        token: &str,
        out: &OutTx,
        kick: &CancellationToken,
    ) -> Result<Conn, CloseReason> {
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let handle = ConnHandle {
            tx: out.clone(),
            kick: kick.clone(),
            user: user.id,
        };
        let Some(mut revocations) =
            gw.hub
                .open_user(id, handle.clone(), gw.limits.max_connections_per_user)
        else {
            let text = "too many connections of this user on this server";
            return Err(close_reason(CloseCode::Policy, text));
        };
        let listening = revocations.wait_for(|r| *r);
        let _ = tokio::time::timeout(Duration::from_secs(5), listening).await;
        match gw.authenticate(token).await {
            Ok(_) => {}
            // Chat goes on while the store is away: a valid signature is accepted then,
            // unchecked for revocation (docs/protocol.md).
            Err(super::TokenError::Unavailable(e)) => {
                tracing::warn!(error = %e, "token generation unknown; hello accepted");
            }
            Err(_) => {
                gw.hub.close_user(user.id, id);
                return Err(close_reason(
                    CloseCode::Other(close::UNAUTHENTICATED),
                    "expected hello with a valid token first",
                ));
            }
        }
        let span = tracing::info_span!("conn", conn = id, user = %user.name);
        metrics::gauge!(names::CONNECTIONS).increment(1.0);
        let session_id = Uuid::new_v4().to_string();
        // Online before the welcome: a client that asks for the member list next sees itself.
        gw.presence
            .opened(gw.bus.as_ref(), gw.store.as_ref(), &user, &session_id)
            .instrument(span.clone())
            .await;
        let welcome = ServerFrame::Welcome {
            user: &user,
            session: session_id.clone(),
        }
        .to_text();
        let _ = out.send(Out::frame(welcome)).await;

        let limits = &gw.limits;
        let burst = NonZeroU32::new(limits.send_burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let rate = NonZeroU32::new(limits.sends_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        Ok(Conn {
            handle,
            revocations,
            gw: gw.clone(),
            id,
            user,
            session_id,
            out: out.clone(),
            rooms: HashSet::new(),
            typing_at: HashMap::new(),
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            sends: None,
            span,
        })
    }

    /// Tear down: leave the hub, finish the queued sends (their acks go out first), then
    /// say why we close, and wait for the writer to have written it.
    async fn close(
        self,
        reason: Option<CloseReason>,
        out: OutTx,
        writer_task: tokio::task::JoinHandle<()>,
    ) {
        let gw = self.gw.clone();
        for room in &self.rooms {
            gw.hub.unsubscribe(*room, self.id);
        }
        gw.hub.close_user(self.user.id, self.id);
        // Drop the connection's own clones of the outbox sender now: the writer ends only
        // when every sender is gone, and `..` would keep them alive until this function
        // returns, i.e. past `writer_task.await` below: a client that went away first (no
        // Close to send) left the session, its socket (CLOSE-WAIT) and its fd forever.
        let Conn {
            sends,
            user,
            session_id,
            span,
            out: conn_out,
            handle,
            ..
        } = self;
        drop((conn_out, handle));
        gw.presence
            .closed(gw.bus.as_ref(), gw.store.as_ref(), &user, &session_id)
            .instrument(span.clone())
            .await;
        // Each wait below ends at the latest with the drain's cut (`gw.sessions`), which
        // closes whatever is left; the fixed bounds are for a connection closing alone.
        let cut = gw.sessions.token();
        if let Some(sends) = sends {
            let SendPipe { jobs, worker } = sends;
            drop(jobs);
            tokio::select! {
                _ = tokio::time::timeout(FLUSH_TIMEOUT, worker) => {}
                _ = cut.cancelled() => {}
            }
        }
        if let Some(reason) = reason {
            let close = Out::close(reason);
            if !cut.is_cancelled() {
                tokio::select! {
                    _ = tokio::time::timeout(CLOSE_QUEUE_WAIT, out.send(close)) => {}
                    _ = cut.cancelled() => {}
                }
            } else {
                let _ = out.try_send(close);
            }
        }
        drop(out);
        let mut writer_task = writer_task;
        tokio::select! {
            _ = &mut writer_task => {}
            _ = cut.cancelled() => {
                writer_task.abort();
                let _ = writer_task.await;
            }
        }
        metrics::gauge!(names::CONNECTIONS).decrement(1.0);
        tracing::debug!(parent: &span, "connection closed");
    }
    /// Reads frames until the client goes, the connection is kicked or the gateway
    /// drains. Returns how to close (None: the socket is gone already).
    async fn read_loop(
        &mut self,
        stream: &mut Frames,
        kick: &CancellationToken,
        writer_done: &CancellationToken,
    ) -> Option<CloseReason> {
        let limits = self.gw.limits.clone();
        let mut pongs = Pongs::default();
        let mut heartbeat = tokio::time::interval(limits.heartbeat_interval);
        heartbeat.tick().await;
        let mut last_seen = Instant::now();
        let drain = self.gw.drain.clone();
        // Made once, not per frame (each would take a lock and register a waiter).
        let (drained, kicked, unwritable) =
            (drain.cancelled(), kick.cancelled(), writer_done.cancelled());
        tokio::pin!(drained, kicked, unwritable);
        loop {
            tokio::select! {
                biased;
                _ = &mut drained => {
                    let _ = self.out.send(Out::frame(reconnect_frame())).await;
                    return Box::pin(self.linger(stream, &mut pongs, kick, writer_done)).await;
                }
                _ = &mut kicked => return None,
                _ = &mut unwritable => return None,
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > limits.idle_timeout {
                        return Some(close_reason(CloseCode::Away, "idle timeout"));
                    }
                    let _ = self.out.try_send(Out::Ping);
                }
                msg = stream.recv() => {
                    // Any frame counts, pings and pongs included.
                    last_seen = Instant::now();
                    match msg {
                        None => return None,
                        Some(Ok(Inbound::Text(text))) => {
                            metrics::counter!(names::FRAMES_IN).increment(1);
                            // Boxed: inline, the largest frame handler would size the read
                            // loop for the connection's life.
                            Box::pin(self.on_text(&text)).await;
                        }
                        Some(Ok(Inbound::Binary(_))) => {
                            return Some(close_reason(CloseCode::Unsupported, "text frames only"));
                        }
                        Some(Ok(Inbound::Ping(p))) => pongs.answer(&self.out, &p),
                        Some(Ok(Inbound::Pong)) => {}
                        Some(Ok(Inbound::Close(theirs))) => {
                            return Some(frames::close_reply(theirs));
                        }
                        Some(Err(e)) => return e.close_reason(),
                    }
                }
            }
        }
    }

    /// The drain, after `reconnect`: reads on until the client closes, so that every send
    /// it wrote before it saw the frame is answered (none is lost in the socket unread):
    /// the send worker answers the ones in flight, and refuses the rest `draining`
    /// (retryable), in send order. Ends with the client's close, or when the gateway
    /// stops waiting for it (`closing`: then close 1012).
    async fn linger(
        &mut self,
        stream: &mut Frames,
        pongs: &mut Pongs,
        kick: &CancellationToken,
        writer_done: &CancellationToken,
    ) -> Option<CloseReason> {
        let closing = self.gw.closing.clone();
        loop {
            tokio::select! {
                biased;
                _ = closing.cancelled() => return Some(draining_close()),
                _ = kick.cancelled() => return None,
                _ = writer_done.cancelled() => return None,
                msg = stream.recv() => match msg {
                    None => return None,
                    Some(Ok(Inbound::Text(text))) => match ClientFrame::parse(&text) {
                        Ok(
                            ClientFrame::Send { room, client_msg_id, .. }
                            | ClientFrame::Edit { room, client_msg_id, .. }
                            | ClientFrame::Delete { room, client_msg_id, .. }
                            | ClientFrame::React { room, client_msg_id, .. },
                        ) => {
                            self.refuse_send(room, client_msg_id).await;
                        }
                        Ok(ClientFrame::Subscribe { .. }) => {
                            let text = "this gateway is draining";
                            self.refuse(ErrorCode::Draining, text, Some("subscribe")).await;
                        }
                        Ok(ClientFrame::Ping) => {
                            self.reply(ServerFrame::Pong.to_text().into()).await;
                        }
                        // Nothing to answer (typing, read, unsubscribe are best effort).
                        Ok(_) => {}
                        Err(bad) => {
                            self.refuse(bad.code, &bad.message, bad.reference.as_deref()).await;
                        }
                    },
                    Some(Ok(Inbound::Binary(_))) => {
                        return Some(close_reason(CloseCode::Unsupported, "text frames only"));
                    }
                    Some(Ok(Inbound::Ping(p))) => pongs.answer(&self.out, &p),
                    Some(Ok(Inbound::Pong)) => {}
                    Some(Ok(Inbound::Close(theirs))) => return Some(frames::close_reply(theirs)),
                    Some(Err(e)) => return e.close_reason(),
                }
            }
        }
    }

    /// A send read while draining: answered `draining` by the send worker, behind the
    /// sends it has in flight (so answers keep the send order), or here if it has none.
    async fn refuse_send(&mut self, room: RoomId, client_msg_id: String) {
        if check_client_msg_id(&client_msg_id).is_err() {
            return self
                .refuse(
                    ErrorCode::Draining,
                    "this gateway is draining",
                    Some("send"),
                )
                .await;
        }
        let job = SendJob {
            room,
            client_msg_id,
            draft: Draft::default(),
        };
        let job = match &self.sends {
            Some(pipe) => match pipe.jobs.try_send(job) {
                Ok(()) => return,
                Err(
                    mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job),
                ) => job,
            },
            None => job,
        };
        let text = error_frame(ErrorCode::Draining, DRAINING, Some(&job.client_msg_id));
        self.reply(text).await;
    }

    async fn reply(&self, frame: ByteString) {
        // Our own queue: waiting here only slows this client's reads.
        let _ = self.out.send(Out::frame(frame)).await;
    }

    async fn refuse(&self, code: ErrorCode, message: &str, reference: Option<&str>) {
        self.reply(error_frame(code, message, reference)).await;
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(bad) => {
                return self
                    .refuse(bad.code, &bad.message, bad.reference.as_deref())
                    .await
            }
        };
        match frame {
            ClientFrame::Hello { .. } => {
                self.refuse(
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is authenticated already",
                    Some("hello"),
                )
                .await
            }
            ClientFrame::Ping => self.reply(ServerFrame::Pong.to_text().into()).await,
            ClientFrame::Subscribe { room, since } => self.subscribe(room, since).await,
            ClientFrame::Unsubscribe { room } => {
                if self.rooms.remove(&room) {
                    self.gw.hub.unsubscribe(room, self.id);
                    let _ = self.out.send(Out::EndRoom { room }).await;
                }
            }
            ClientFrame::Send {
                room,
                client_msg_id,
                body,
                reply_to,
                mentions,
            } => {
                let draft = Draft {
                    body,
                    reply_to,
                    mentions,
                    ..Draft::default()
                };
                self.send(room, client_msg_id, draft).await
            }
            ClientFrame::Edit {
                room,
                message_id,
                client_msg_id,
                body,
            } => {
                let draft = Draft {
                    body,
                    change: Some(Change::Edit { message_id }),
                    ..Draft::default()
                };
                self.send(room, client_msg_id, draft).await
            }
            ClientFrame::Delete {
                room,
                message_id,
                client_msg_id,
            } => {
                let draft = Draft {
                    change: Some(Change::Delete { message_id }),
                    ..Draft::default()
                };
                self.send(room, client_msg_id, draft).await
            }
            ClientFrame::React {
                room,
                message_id,
                client_msg_id,
                emoji,
                on,
            } => {
                let draft = Draft {
                    change: Some(Change::Reaction {
                        message_id,
                        emoji,
                        on,
                    }),
                    ..Draft::default()
                };
                self.send(room, client_msg_id, draft).await
            }
            ClientFrame::Typing { room } => self.typing(room).await,
            ClientFrame::Read { room, position } => {
                if let Err(e) = self.check_member(room).await {
                    return self.refuse(e.0, &e.1, Some("read")).await;
                }
                // A marker never goes past what the log holds (the partition's end
                // bounds every position in it), so a receipt cannot claim the future.
                let end = self
                    .gw
                    .log
                    .end(crate::log::partition_of(room, self.gw.log.partitions()))
                    .await;
                let position = match end {
                    Ok(end) => position.min(end - 1),
                    Err(e) => {
                        let text = e.to_string();
                        return self
                            .refuse(ErrorCode::Unavailable, &text, Some("read"))
                            .await;
                    }
                };
                match self.gw.store.mark_read(room, self.user.id, position).await {
                    Ok(false) => {}
                    // The user's other devices clear their badge at once.
                    Ok(true) => {
                        let notice = UserNotice::Read { room, position };
                        self.gw.notify(self.user.id, notice).await;
                        self.receipt(room, position).await;
                    }
                    Err(e) => {
                        self.refuse(store_code(&e), &e.to_string(), Some("read"))
                            .await;
                    }
                }
            }
        }
    }

    /// Read receipts: in a direct message, the other member sees how far this one read.
    async fn receipt(&self, room: RoomId, position: Position) {
        match self.gw.store.room(room).await {
            Ok(Some(r)) if r.kind == crate::model::RoomKind::Dm => {
                let event = BusEvent::Receipt {
                    room,
                    user: self.user.clone(),
                    position,
                };
                if let Err(e) = self.gw.bus.publish(std::slice::from_ref(&event)).await {
                    tracing::debug!(error = %e, "receipt not published");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "room kind unknown; no receipt"),
        }
    }

    /// Whether the user may use the room: from the hub's cache (kept while no revocation
    /// came, see `hub.rs`) or the store. While the store is unavailable, a membership
    /// known before is trusted past its re-check time (chat goes on while PostgreSQL is
    /// down); never while the bus link is down (a revocation could have been missed).
    async fn check_member(&mut self, room: RoomId) -> Result<Standing, (ErrorCode, String)> {
        let hub = &self.gw.hub;
        let user = self.user.id;
        let trusted = *self.revocations.borrow();
        let known = if trusted {
            hub.member_since(user, room)
        } else {
            None
        };
        if let Some((at, standing)) = known {
            if at.elapsed() < MEMBERSHIP_RECHECK {
                return Ok(standing);
            }
        }
        let revision = hub.revision();
        match self.gw.store.access(room, user).await {
            Ok(Some(access)) if access.member.is_some() => {
                let standing = Standing::of(&access);
                if trusted {
                    hub.remember_member(user, room, revision, standing);
                }
                Ok(standing)
            }
            Err(e) if e.retryable() && known.is_some() => {
                tracing::debug!(error = %e, "store unavailable; membership from the cache");
                Ok(known.map_or(Standing::PLAIN, |(_, s)| s))
            }
            Ok(found) => {
                hub.forget_member(user, room);
                // Still subscribed (a revocation that never reached this gateway): the
                // subscription ends here too.
                if self.rooms.contains(&room) {
                    self.end_room(room).await;
                    let frame = ServerFrame::Unsubscribed {
                        room,
                        reason: "not_member",
                    };
                    self.reply(frame.to_text().into()).await;
                }
                match found {
                    Some(a) if a.banned => {
                        Err((ErrorCode::Banned, "you are banned from this room".into()))
                    }
                    Some(_) => Err((ErrorCode::NotMember, "join the room first".into())),
                    None => Err((ErrorCode::RoomNotFound, "no such room".into())),
                }
            }
            Err(e) => Err((store_code(&e), e.to_string())),
        }
    }

    /// Ends the connection's subscription of the room (the writer drops what is queued).
    async fn end_room(&mut self, room: RoomId) {
        self.rooms.remove(&room);
        self.gw.hub.unsubscribe(room, self.id);
        let _ = self.out.send(Out::EndRoom { room }).await;
    }

    /// Subscribes the connection to the room, replaying what it missed since `since`. A
    /// second `subscribe` of a room replaces the first (recovery starts over from its
    /// `since`). The backlog is read and queued a page at a time, each once the client
    /// has drained the queue to half its bytes: this holds the connection's reads, so a
    /// client that does not read cannot make the gateway read further.
    async fn subscribe(&mut self, room: RoomId, since: Option<Position>) {
        // Live delivery only once a revocation can reach this connection: the user's bus
        // channel is subscribed.
        let listening = self.revocations.wait_for(|r| *r);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(5), listening).await,
            Ok(Ok(_))
        ) {
            return self
                .refuse(
                    ErrorCode::Unavailable,
                    "the fan-out bus is unavailable",
                    Some("subscribe"),
                )
                .await;
        }
        let revision = self.gw.hub.revision();
        if let Err((code, msg)) = self.check_member(room).await {
            return self.refuse(code, &msg, Some("subscribe")).await;
        }
        if !self.rooms.contains(&room) && self.rooms.len() >= self.gw.limits.max_subscriptions {
            return self
                .refuse(
                    ErrorCode::TooManySubscriptions,
                    "too many subscriptions on one connection",
                    Some("subscribe"),
                )
                .await;
        }
        let _ = self.out.send(Out::BeginRecovery { room }).await;
        let mut ready = self.gw.hub.subscribe(room, self.id, self.handle.clone());
        self.rooms.insert(room);
        let active = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
        if !matches!(active, Ok(Ok(_))) {
            self.end_room(room).await;
            return self
                .refuse(
                    ErrorCode::Unavailable,
                    "the fan-out bus is unavailable",
                    Some("subscribe"),
                )
                .await;
        }
        // A revocation between the check and joining the hub's room would have missed
        // this connection: ask the store once more.
        if self.gw.hub.revision() != revision {
            let refusal = match self.gw.store.access(room, self.user.id).await {
                Ok(Some(a)) if a.member.is_some() => None,
                Ok(Some(a)) if a.banned => Some((
                    ErrorCode::Banned,
                    "you are banned from this room".to_owned(),
                )),
                Ok(_) => Some((ErrorCode::NotMember, "join the room first".to_owned())),
                Err(e) => Some((store_code(&e), e.to_string())),
            };
            if let Some((code, message)) = refusal {
                self.end_room(room).await;
                return self.refuse(code, &message, Some("subscribe")).await;
            }
        }
        // Live delivery is active (and held back by the writer) before the backlog is
        // read: nothing can fall between the two.
        let latest = match since {
            None => None,
            Some(after) => match self.replay(room, after).await {
                Ok(last) => Some(last),
                Err(e) => {
                    self.end_room(room).await;
                    let code = match e {
                        RecoveryError::TooFar(_) => ErrorCode::BacklogTooLarge,
                        RecoveryError::Unavailable(_) => ErrorCode::Unavailable,
                    };
                    return self.refuse(code, &e.to_string(), Some("subscribe")).await;
                }
            },
        };
        let subscribed = ServerFrame::Subscribed {
            room,
            position: latest,
        }
        .to_text()
        .into();
        let _ = self
            .out
            .send(Out::Backlog(Box::new(Backlog {
                room,
                after: since,
                messages: Vec::new(),
                subscribed: Some(subscribed),
            })))
            .await;
    }

    /// Queues the room's messages above `after`, page by page; returns the last position
    /// queued (`after` if none).
    async fn replay(&self, room: RoomId, after: Position) -> Result<Position, RecoveryError> {
        let recovery = &self.gw.recovery;
        let mut cursor = recovery.start(room, after).await?;
        while let Some(page) = recovery.next_page(&mut cursor).await? {
            let messages = page
                .iter()
                .map(|m| {
                    let text = record_frame(m).to_text();
                    (m.position, ByteString::from(text))
                })
                .collect();
            let page = Out::Backlog(Box::new(Backlog {
                room,
                after: Some(after),
                messages,
                subscribed: None,
            }));
            if self.out.send_bulk(page).await.is_err() {
                break; // the connection is gone
            }
        }
        Ok(cursor.last())
    }

    /// A send, edit, delete or reaction: checked here as far as the frame alone allows,
    /// then queued for the connection's send worker (which checks it against the store).
    async fn send(&mut self, room: RoomId, client_msg_id: String, draft: Draft) {
        let received = Instant::now();
        if let Err(e) = check_client_msg_id(&client_msg_id) {
            // An id unfit to echo back (empty or over-long) is answered by the frame type.
            let kind = draft.change.as_ref().map_or("send", |c| match c {
                Change::Edit { .. } => "edit",
                Change::Delete { .. } => "delete",
                Change::Reaction { .. } => "react",
                Change::Member { .. } | Change::Room { .. } => "send",
            });
            return self
                .refuse(ErrorCode::InvalidClientMsgId, &e.to_string(), Some(kind))
                .await;
        }
        let reference = Some(client_msg_id.as_str());
        let has_body = matches!(draft.change, None | Some(Change::Edit { .. }));
        if has_body {
            if let Err(e) = check_body(&draft.body) {
                let code = match e {
                    crate::model::InputError::EmptyBody => ErrorCode::EmptyBody,
                    _ => ErrorCode::BodyTooLong,
                };
                return self.refuse(code, &e.to_string(), reference).await;
            }
        }
        if let Some(Change::Reaction { emoji, .. }) = &draft.change {
            if let Err(e) = crate::events::check_emoji(emoji) {
                return self.refuse(e.code(), &e.to_string(), reference).await;
            }
        }
        if self.limiter.check().is_err() {
            return self
                .refuse(
                    ErrorCode::RateLimited,
                    "too many messages; slow down",
                    reference,
                )
                .await;
        }
        let standing = match self.check_member(room).await {
            Ok(s) => s,
            Err((code, msg)) => return self.refuse(code, &msg, reference).await,
        };
        // Muted: read only. Deleting one's own message is still allowed (below, a muted
        // moderator's delete of another's message is refused as anyone's is).
        let delete = matches!(draft.change, Some(Change::Delete { .. }));
        if standing.muted() && !delete {
            let until = standing
                .muted_until
                .filter(|t| *t < crate::store::governance::forever_utc())
                .map_or("until a moderator lifts it".to_owned(), |t| {
                    format!("until {}", t.to_rfc3339())
                });
            return self
                .refuse(
                    ErrorCode::Muted,
                    &format!("you are muted here {until}"),
                    reference,
                )
                .await;
        }
        let mut draft = draft;
        draft.received = Some(received);
        // Muted: deleting one's own messages only.
        draft.moderator = standing.moderator && !standing.muted();
        if draft.change.is_none() {
            draft.slow_mode = standing.slow_mode;
        }
        let job = SendJob {
            room,
            client_msg_id,
            draft,
        };
        let gw = &self.gw;
        let (user, out, span) = (&self.user, &self.out, &self.span);
        let pipe = self.sends.get_or_insert_with(|| {
            let (jobs, rx) = mpsc::channel::<SendJob>(SEND_QUEUE);
            let worker = gw.sessions.spawn(
                send_worker(gw.clone(), user.clone(), rx, out.clone()).instrument(span.clone()),
            );
            SendPipe { jobs, worker }
        });
        if let Err(mpsc::error::TrySendError::Full(job)) = pipe.jobs.try_send(job) {
            self.refuse(
                ErrorCode::RateLimited,
                "too many sends in flight",
                Some(&job.client_msg_id),
            )
            .await;
        }
    }

    async fn typing(&mut self, room: RoomId) {
        if !self.rooms.contains(&room) {
            return self
                .refuse(
                    ErrorCode::NotSubscribed,
                    "subscribe to the room first",
                    Some("typing"),
                )
                .await;
        }
        if let Err((code, msg)) = self.check_member(room).await {
            return self.refuse(code, &msg, Some("typing")).await;
        }
        let now = Instant::now();
        if self
            .typing_at
            .get(&room)
            .is_some_and(|t| now.duration_since(*t) < TYPING_EVERY)
        {
            return; // throttled: the others still see the last one
        }
        self.typing_at.insert(room, now);
        let event = BusEvent::Typing {
            room,
            user: self.user.clone(),
        };
        if let Err(e) = self.gw.bus.publish(std::slice::from_ref(&event)).await {
            tracing::debug!(error = %e, "typing not published");
        }
    }
}

/// Sends of one connection that may be in flight at once (claimed and queued in the log,
/// waiting for the broker's ack).
const SEND_PIPELINE: usize = 32;

/// Sends of one connection, in the order the client sent them: each is claimed and
/// queued in the log in turn (so positions follow that order), then up to
/// [`SEND_PIPELINE`] wait for durability together; acks and errors go out in send order.
/// One connection is not held to one broker round trip per message. Once the gateway
/// drains, sends not started yet are refused `draining` (retryable): only the ones in
/// flight are waited for.
async fn send_worker(gw: Arc<Gateway>, user: User, mut rx: mpsc::Receiver<SendJob>, out: OutTx) {
    /// With the time the message became durable (the start of its `ack_write` hop).
    type Answer = (
        String,
        Result<(crate::model::Message, Instant), (ErrorCode, String)>,
    );
    let mut in_flight: FuturesOrdered<futures_util::future::BoxFuture<'static, Answer>> =
        FuturesOrdered::new();
    let mut open = true;
    let mut gone = false;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some((client_msg_id, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let item = match result {
                    Ok((message, durable)) => Out::Ack(Box::new(Acked {
                        text: ack_frame(&client_msg_id, &message).to_text().into(),
                        durable,
                    })),
                    Err((code, message)) => {
                        Out::frame(error_frame(code, &message, Some(&client_msg_id)))
                    }
                };
                if !gone && out.send(item).await.is_err() {
                    // The connection is gone: take no more sends, but let the ones in
                    // flight finish, so each records how it ended (`done`/`retry`) and a
                    // resend after a reconnect gets its ack instead of `in_flight`.
                    gone = true;
                    open = false;
                }
            }
            job = rx.recv(), if open && in_flight.len() < SEND_PIPELINE => {
                let Some(job) = job else {
                    open = false;
                    continue;
                };
                if gw.drain.is_cancelled() {
                    let refused = Err((ErrorCode::Draining, DRAINING.to_owned()));
                    let answer = futures_util::future::ready((job.client_msg_id, refused));
                    in_flight.push_back(Box::pin(answer));
                    continue;
                }
                let started = gw
                    .sender
                    .start(&gw.tasks, &user, job.room, &job.client_msg_id, job.draft)
                    .await;
                let client_msg_id = job.client_msg_id;
                in_flight.push_back(Box::pin(async move {
                    let result = match started {
                        Ok(pending) => pending.await.map(|m| (m, Instant::now())),
                        Err(e) => Err(e),
                    };
                    (client_msg_id, result.map_err(|e| (e.code(), e.to_string())))
                }));
            }
        }
    }
}

fn store_code(e: &StoreError) -> ErrorCode {
    if e.retryable() {
        ErrorCode::Unavailable
    } else {
        ErrorCode::Internal
    }
}
