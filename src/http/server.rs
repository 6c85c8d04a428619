//! The HTTP server: actix-web's `App` on actix-http's HTTP/1 service, with WebSocket upgrades
//! taken out of the HTTP/1 dispatcher.
//!
//! actix-web's `HttpServer` keeps every connection in actix-http's HTTP/1 dispatcher for its
//! whole life, WebSockets included, and the dispatcher holds an 8 KiB read buffer and an 8 KiB
//! write buffer per connection (`HW_BUFFER_SIZE`, fixed). For a chat gateway whose connections
//! are almost all idle WebSockets, those two buffers were most of the memory a connection costs
//! (benches/README.md, "Memory per connection"). So this module builds the same server from the
//! same pieces (actix-server, actix-http's `HttpService`, the same `App`) and adds actix-http's
//! `upgrade` hook: a request with `Connection: upgrade` leaves the dispatcher together with its
//! socket. [`Upgraded`] then runs that one request through the same `App` (so `/ws`, its
//! checks and actix-ws's handshake are unchanged), writes the response head, and pumps bytes
//! between the socket and actix-ws ([`pump`]) without keeping any buffer while idle: a read
//! goes through a per-thread scratch buffer into a `Bytes` of its exact size, and a write sends
//! actix-ws's encoded frames as they are.
//!
//! Public, documented APIs only (issue 17, item 7): no semver-exempt item (hidden from the
//! docs, or named as private) of actix-web, actix-http, actix-server, actix-service or
//! actix-codec is called. The crates used directly are pinned in Cargo.toml to the exact versions actix-web uses (the
//! comment there says what to re-check on an upgrade). What `HttpServer` does through
//! non-public means is done here another way or left out:
//! - `AppConfig`: `HttpServer` builds it with a crate-private constructor; here it is the
//!   public default ([`config`]).
//! - Graceful stop: `HttpServer` hands actix-http a shutdown signal through a
//!   builder method hidden from the docs, so that idle keep-alive connections close at once
//!   when the server stops. Here, from the start of the drain, every HTTP response says
//!   `Connection: close` ([`Settings::draining`]), so a keep-alive client that makes a
//!   request while the pod drains is moved elsewhere after its answer; a keep-alive
//!   connection that stays idle is closed by its 5 s keep-alive timer or, at the latest,
//!   when the server's graceful stop times out (`shutdown_timeout`, D/8 of the drain).
//!
//! Measured (benches/README.md, "HTTP server on public APIs"): actix-web's plain `HttpServer`
//! costs 18.5 KiB of RSS per idle WebSocket against 10.2 KiB here.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_codec::{Encoder, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::h1;
use actix_http::{
    BoxedPayloadStream, ConnectionType, HttpService, KeepAlive, Method, Payload, Request, Response,
    StatusCode,
};
use actix_server::{Server, ServerBuilder};
use actix_service::{
    fn_factory, map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::App;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::LocalBoxFuture;
use futures_util::Stream;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A write that makes no progress for this long (the client's window stayed closed) ends the
/// connection. The session gives up on such a client sooner (outbox cut-off, close/ping
/// waits); this bounds how long the socket itself can outlive it.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a finished connection may take to flush its last bytes before it is dropped.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// The per-thread buffer a socket read goes through. A read takes at most this much, then the
/// loop yields to the frames already read.
const SCRATCH: usize = 16 * 1024;
/// Iterations of the pump before it yields to other connections on the worker.
const BUDGET: usize = 32;
/// How long an upgrade request may take to be answered and its answer written (actix-web's
/// request timeout is 5 s for the head alone).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer other than a 101 that an upgrade request gets (they are JSON errors;
/// a static file asked for with `Upgrade: websocket` is the largest expected).
const REFUSAL_LIMIT: usize = 1024 * 1024;

/// How the server is set up; the rest follows actix-web's `HttpServer` defaults.
pub struct Settings {
    pub listen: SocketAddr,
    pub workers: Option<usize>,
    /// Seconds a graceful stop waits for open connections.
    pub shutdown_timeout: u64,
    /// Cancelled when the drain starts: from then on every HTTP/1 response closes its
    /// connection (`Connection: close`; actix-http's HTTP/1 codec closes the connection once
    /// a response so marked is written).
    pub draining: CancellationToken,
}

/// Binds and starts the server. `app` is called once per worker for the HTTP/1 service and once
/// for the upgrade service (as with `HttpServer::new`).
pub fn serve<F, T, B>(settings: Settings, app: F) -> anyhow::Result<(Server, SocketAddr)>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let listener = bind(settings.listen)?;
    let addr = listener.local_addr()?;
    let mut builder = ServerBuilder::default()
        .backlog(1024)
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout);
    if let Some(n) = settings.workers {
        builder = builder.workers(n);
    }
    let draining = settings.draining;
    let builder = builder.listen("chat-http", listener, move || {
        let draining = draining.clone();
        let upgrade_app = app.clone();
        let upgrade = fn_factory(move || {
            let factory = upgrade_app().into_factory();
            async move {
                let service = factory.new_service(config()).await.map_err(|()| {
                    tracing::error!("the app service for upgrades could not be built");
                })?;
                Ok::<_, ()>(Upgraded {
                    app: Rc::new(service),
                })
            }
        });
        HttpService::build()
            .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
            .client_request_timeout(Duration::from_secs(5))
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(addr)
            // Frames are small and latency-bound: no Nagle on client sockets.
            .on_connect_ext(|io: &TcpStream, _| {
                let _ = io.set_nodelay(true);
            })
            .upgrade(upgrade)
            .finish({
                let on_error = draining.clone();
                map_config(app().into_factory(), |()| config())
                    .map(move |mut res: ServiceResponse<B>| {
                        if draining.is_cancelled() {
                            res.response_mut()
                                .head_mut()
                                .set_connection_type(ConnectionType::Close);
                        }
                        res
                    })
                    // An error the app did not turn into a response itself.
                    .map_err(move |e: actix_web::Error| {
                        let mut res = Response::from(e);
                        if on_error.is_cancelled() {
                            res.head_mut().set_connection_type(ConnectionType::Close);
                        }
                        res
                    })
            })
            .tcp()
    })?;
    Ok((builder.run(), addr))
}

/// The app's connection config. actix-web's `HttpServer` fills in the listening address,
/// but the constructor it uses is crate-private (its doc-hidden public twin is
/// semver-exempt), so this is the public default. Nothing here reads it: the host comes
/// from each request's `Host` header (`ConnectionInfo`), which every HTTP/1.1 client
/// sends; only URL generation (unused) and a request without `Host` would see
/// `localhost:8080`.
fn config() -> AppConfig {
    AppConfig::default()
}

/// A listening socket as `HttpServer::bind` makes it (address reuse, backlog 1024).
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// The upgrade service: one upgrade request, then the upgraded connection, on its socket.
struct Upgraded<S> {
    app: Rc<S>,
}

/// Why an upgraded connection ended early (logged at debug: clients vanish all the time).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("response body: {0}")]
    Body(String),
}

impl From<UpgradeError> for Response<BoxBody> {
    fn from(_: UpgradeError) -> Self {
        Response::new(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

fn body_error(e: impl Into<Box<dyn std::error::Error>>) -> UpgradeError {
    UpgradeError::Body(e.into().to_string())
}

impl<S, B> Service<(Request, Framed<TcpStream, h1::Codec>)> for Upgraded<S>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ();
    type Error = UpgradeError;
    type Future = LocalBoxFuture<'static, Result<(), UpgradeError>>;

    actix_service::always_ready!();

    fn call(&self, (req, framed): (Request, Framed<TcpStream, h1::Codec>)) -> Self::Future {
        // Set up outside the returned future: that future lives as long as the connection,
        // and whatever it captures or holds across an await stays in it (an async block is
        // as large as its largest await plus its captures).
        let parts = framed.into_parts();
        // `written`: a response to a request pipelined in front of this one may still be in
        // the dispatcher's write buffer (it hands over before flushing); it goes out first.
        let (io, codec, early, written) = (
            parts.io,
            Box::new(parts.codec),
            parts.read_buf,
            parts.write_buf,
        );
        let inbox = Rc::new(RefCell::new(Inbox::default()));
        // Only a GET can become a WebSocket (the handshake refuses other methods). Any other
        // request marked `Upgrade: websocket` has no body beyond what came with it: nothing
        // reads the socket before a 101, and a handler reading the body must not wait forever.
        let head_only = req.method() == Method::HEAD;
        if req.method() != Method::GET {
            inbox.borrow_mut().eof = true;
        }
        // Frames the client sent right behind its upgrade request. Dropped otherwise: an
        // empty remainder still holds the dispatcher's whole 8 KiB read buffer.
        if early.is_empty() {
            drop(early);
        } else {
            inbox.borrow_mut().push(Ok(early.freeze()));
        }
        let stream: BoxedPayloadStream = Box::pin(InboxStream(inbox.clone()));
        let (req, _) = req.replace_payload(Payload::from(stream));
        let response = Box::pin(self.app.call(req));
        Box::pin(async move {
            // However this ends, the handler's payload ends with it.
            let inbox = EndOfInput(inbox);
            // Boxed: its state is gone before the pump starts.
            let answered = tokio::time::timeout(
                ANSWER_TIMEOUT,
                Box::pin(answer(io, codec, written, head_only, response)),
            )
            .await;
            let (io, body) = match answered {
                Ok(Ok(Some(upgraded))) => upgraded,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => {
                    // Errors returned to actix-http are logged as errors; a client that
                    // left before its answer is none.
                    tracing::debug!(error = %e, "upgrade request not answered");
                    return Ok(());
                }
                Err(_) => {
                    tracing::debug!("upgrade request not answered within 10 s; dropped");
                    return Ok(());
                }
            };
            if let Err(e) = pump(io, &inbox.0, body).await {
                // Clients vanish all the time; that is no server error.
                tracing::debug!(error = %e, "upgraded connection ended");
            }
            Ok(())
        })
    }
}

/// Writes the app's answer to an upgrade request. A refusal (403, 404, 503, a bad handshake)
/// is answered in full and the connection closed (None); a 101 returns the socket and the
/// body to pump.
async fn answer<S, B>(
    mut io: TcpStream,
    mut codec: Box<h1::Codec>,
    mut out: BytesMut,
    head_only: bool,
    response: Pin<Box<S>>,
) -> Result<Option<(TcpStream, BoxBody)>, UpgradeError>
where
    S: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    B: MessageBody + 'static,
{
    let res: Response<BoxBody> = match response.await {
        Ok(res) => Response::from(res).map_into_boxed_body(),
        Err(err) => err.error_response().into(),
    };
    let (mut head, body) = res.into_parts();
    if head.status() == StatusCode::SWITCHING_PROTOCOLS {
        let size = body.size();
        codec.encode(h1::Message::Item((head, size)), &mut out)?;
        io.write_all(&out).await?;
        return Ok(Some((io, body)));
    }
    let body = if head_only {
        Bytes::new()
    } else {
        actix_http::body::to_bytes_limited(body, REFUSAL_LIMIT)
            .await
            .map_err(|_| UpgradeError::Body("answer larger than 1 MiB".into()))?
            .map_err(body_error)?
    };
    head.head_mut().set_connection_type(ConnectionType::Close);
    codec.encode(
        h1::Message::Item((head, BodySize::Sized(body.len() as u64))),
        &mut out,
    )?;
    out.extend_from_slice(&body);
    io.write_all(&out).await?;
    close(io).await;
    Ok(None)
}

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// What the client sent and the handler has not read yet: the request payload of an upgraded
/// connection, shared between [`pump`] (writes) and [`InboxStream`] (the handler's payload).
#[derive(Default)]
struct Inbox {
    chunks: VecDeque<Bytes>,
    len: usize,
    eof: bool,
    error: Option<io::Error>,
    /// The handler waiting for bytes.
    reader: Option<Waker>,
    /// The pump waiting for the handler to read (the inbox was full).
    pump: Option<Waker>,
}

/// The pump stops reading the socket while this much is unread (as actix-http's payload does).
const INBOX_LIMIT: usize = 32 * 1024;

impl Inbox {
    fn push(&mut self, item: Result<Bytes, io::Error>) {
        match item {
            Ok(b) if b.is_empty() => self.eof = true,
            Ok(b) => {
                self.len += b.len();
                self.chunks.push_back(b);
            }
            Err(e) => self.error = Some(e),
        }
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

struct InboxStream(Rc<RefCell<Inbox>>);

/// The connection's side of its [`Inbox`]: when the connection ends (the pump is done, or
/// the upgrade was never answered), the handler's payload ends too, so the session that reads
/// it learns that the socket is gone even when the client sent no FIN (actix-ws's own
/// stream learned it from its response body being dropped; the session reads the payload
/// itself, `gateway/frames.rs`).
struct EndOfInput(Rc<RefCell<Inbox>>);

impl Drop for EndOfInput {
    fn drop(&mut self) {
        let mut inbox = self.0.borrow_mut();
        inbox.eof = true;
        if let Some(w) = inbox.reader.take() {
            w.wake();
        }
    }
}

impl Stream for InboxStream {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut inbox = self.0.borrow_mut();
        if let Some(chunk) = inbox.chunks.pop_front() {
            inbox.len -= chunk.len();
            if inbox.chunks.is_empty() {
                // Keep nothing while idle.
                inbox.chunks = VecDeque::new();
            }
            if let Some(w) = inbox.pump.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if let Some(e) = inbox.error.take() {
            inbox.eof = true;
            return Poll::Ready(Some(Err(PayloadError::Io(e))));
        }
        if inbox.eof {
            return Poll::Ready(None);
        }
        inbox.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for InboxStream {
    fn drop(&mut self) {
        if let Some(w) = self.0.borrow_mut().pump.take() {
            w.wake();
        }
    }
}

/// Moves bytes between an upgraded socket and the handler that took it: what the client sends
/// goes into the request's payload (actix-ws's `MessageStream` reads it), what the response
/// body yields (actix-ws's encoded frames) goes to the socket. Ends when the body ends (the
/// session is over) and its bytes are written. Holds no buffer while idle.
async fn pump<B: MessageBody>(
    mut io: TcpStream,
    inbox: &Rc<RefCell<Inbox>>,
    body: B,
) -> Result<(), UpgradeError> {
    let mut body = pin!(body);
    let mut out: Option<Bytes> = None;
    let mut reading = true;
    let mut stall: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let done = poll_fn(|cx| -> Poll<Result<(), UpgradeError>> {
        for _ in 0..BUDGET {
            let mut progress = false;
            // Socket ← body.
            match &mut out {
                Some(chunk) => match Pin::new(&mut io).poll_write(cx, chunk) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        chunk.advance(n);
                        if chunk.is_empty() {
                            out = None;
                        }
                        stall = None;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {
                        let timer =
                            stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the client accepted no byte for 30 s",
                            )
                            .into()));
                        }
                    }
                },
                None => match body.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => {
                        if !chunk.is_empty() {
                            out = Some(chunk);
                        }
                        progress = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(body_error(e))),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => {}
                },
            }
            // Socket → payload.
            if reading {
                if Rc::strong_count(inbox) == 1 {
                    // The handler dropped its payload: nobody reads any more.
                    reading = false;
                } else if inbox.borrow().len >= INBOX_LIMIT {
                    inbox.borrow_mut().pump = Some(cx.waker().clone());
                } else {
                    match io.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let read = SCRATCH_BUF.with(|buf| {
                                let mut buf = buf.borrow_mut();
                                io.try_read(&mut buf[..])
                                    .map(|n| Bytes::copy_from_slice(&buf[..n]))
                            });
                            match read {
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                                Ok(b) => {
                                    reading = !b.is_empty();
                                    inbox.borrow_mut().push(Ok(b));
                                }
                                Err(e) => {
                                    reading = false;
                                    inbox.borrow_mut().push(Err(e));
                                }
                            }
                            // Poll readiness again: a `WouldBlock` cleared it and the next
                            // poll registers the waker.
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => {
                            reading = false;
                            inbox.borrow_mut().push(Err(e));
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    if done.is_ok() {
        close(io).await;
    }
    done
}

/// Ends a connection whose last bytes are written: sends FIN, then reads (and discards) until
/// the client closes too, for at most [`FINAL_FLUSH`]. Closing with unread bytes in the socket
/// would send a reset, and a reset can destroy the close frame before the client reads it.
async fn close(mut io: TcpStream) {
    let _ = tokio::time::timeout(FINAL_FLUSH, async {
        io.shutdown().await?;
        // On the heap: an array here would size the connection's future for its whole life.
        let mut sink = vec![0u8; 512];
        while tokio::io::AsyncReadExt::read(&mut io, &mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}
