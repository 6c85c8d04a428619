//! One connection's outgoing side: the [`Out`] items of its queue (`queue.rs`) and the
//! writer task that owns the socket's `Session`.
//!
//! Everything a connection sends passes through the queue in order, so the writer is where
//! per-room ordering and the recovery seam are enforced, by the state machine of
//! `order.rs`: while a room recovers, its live messages are held back; then the backlog,
//! `subscribed`, and the held messages above the backlog follow; after that a message not
//! above the last delivered position is dropped (a duplicate from an overlapping relay or
//! the seam).
//!
//! The queue is bounded in items and in bytes (the text it holds): a client that does not
//! read is cut off once either bound is reached, and a backlog is queued a page at a time,
//! each only while the queue holds less than half its bytes, so recovery can neither
//! grow a connection's memory nor crowd out its live messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason, Session};
use bytestring::ByteString;
use tokio_util::sync::CancellationToken;

use super::frames::PongSlot;
use super::order::{Delivery, Order};
use super::queue::Weigh;
pub use super::queue::{channel_in, Budget, TrySendError};

/// The sending side of a connection's outbox.
pub type OutTx = super::queue::Tx<Out>;
/// The receiving side: the writer.
pub type OutRx = super::queue::Rx<Out>;

#[cfg(test)]
pub fn channel(capacity: usize, byte_capacity: usize) -> (OutTx, OutRx) {
    super::queue::channel(capacity, byte_capacity)
}
use crate::model::{Position, RoomId};
use crate::telemetry::hops::{self, Hop};

/// One item of a connection's queue, kept small (24 bytes): what is larger sits behind a
/// pointer, and what goes to many connections (a message, a typing or presence event) is
/// one allocation shared by all of them.
#[derive(Debug)]
pub enum Out {
    /// A frame written as is (answers, typing, presence, errors…).
    Frame(Arc<ByteString>),
    /// A live message of a room.
    Message(Arc<Live>),
    /// The ack of a send (written as is; its `ack_write` hop is recorded once written).
    Ack(Box<Acked>),
    /// Hold back the room's live messages until the last page of its backlog.
    BeginRecovery {
        room: RoomId,
    },
    /// One page of the messages missed (ascending, above every earlier page); the last
    /// page carries `subscribed`, after which the room is live.
    Backlog(Box<Backlog>),
    /// The room was unsubscribed: drop what still arrives for it.
    EndRoom {
        room: RoomId,
    },
    Ping,
    /// Answer the client's latest ping (the slot holds its payload; see `frames::Pongs`).
    Pong(Arc<PongSlot>),
    Close(Box<CloseReason>),
}

impl Out {
    pub fn frame(text: impl Into<ByteString>) -> Out {
        Out::Frame(Arc::new(text.into()))
    }

    pub fn close(reason: CloseReason) -> Out {
        Out::Close(Box::new(reason))
    }
}

impl Weigh for Out {
    /// The bytes this item holds (text to be written), for the queue's byte bound.
    fn weight(&self) -> usize {
        match self {
            Out::Frame(t) => t.len(),
            Out::Message(live) => live.text.len(),
            Out::Ack(a) => a.text.len(),
            Out::Backlog(b) => {
                b.messages.iter().map(|(_, t)| t.len()).sum::<usize>()
                    + b.subscribed.as_ref().map_or(0, |t| t.len())
            }
            Out::BeginRecovery { .. }
            | Out::EndRoom { .. }
            | Out::Ping
            | Out::Pong(_)
            | Out::Close(_) => 0,
        }
    }
}

/// A connection's outbox: a bounded queue from the hub, the session and its send worker to
/// the writer. `tokio::sync::mpsc` allocates a block of 32 slots and a cache-padded header
/// per channel up front (1.3 KiB); almost every connection of a chat is idle, so this one
/// is a `VecDeque` that allocates with its first item, grows with what is queued, and is
/// cut back to 8 slots (192 bytes) once drained. A slot freed while senders wait goes to
/// whoever queues first (tokio hands it to the oldest waiter); each freed slot wakes one.
/// A live message as every local subscriber of its room gets it: serialised once.
#[derive(Debug)]
pub struct Live {
    pub room: RoomId,
    pub position: Position,
    pub text: ByteString,
    /// When the gateway's bus pump got it: the start of the `fanout` hop.
    pub got: Instant,
}

/// An ack frame and when its send became durable (the start of the `ack_write` hop).
#[derive(Debug)]
pub struct Acked {
    pub text: ByteString,
    pub durable: Instant,
}

/// Boxed in [`Out`]: rare, and the largest item (every queue slot is as large as the
/// largest variant).
#[derive(Debug)]
pub struct Backlog {
    pub room: RoomId,
    /// The `since` of the subscribe: nothing at or below it is written.
    pub after: Option<Position>,
    pub messages: Vec<(Position, ByteString)>,
    /// On the last page: the `subscribed` frame, after which the room is live.
    pub subscribed: Option<ByteString>,
}

/// Writes queued items to the socket until the queue ends, a `Close` arrives, or the
/// connection is kicked (too slow: close 1008).
///
/// This runs once per delivered frame, so it is kept lean (and it lives as long as the
/// connection, so the rare awaits, close and ping, are boxed: inline, they would size the
/// task for its whole life): the kick is checked as a flag
/// between items rather than awaited beside the queue (a fresh cancellation future per
/// item cost a mutex and a waiter registration each time).
/// That loses nothing: the hub kicks only when the queue is full, so a kicked writer is
/// never idle in `recv` (it sees the flag after its current item), and the queue's end
/// (the session closing) wakes it as well.
///
/// `done` is cancelled when the writer ends, however it ends (the session's read loop
/// stops then: a connection that can no longer be written to is not read either).
pub async fn writer(
    mut session: Session,
    mut rx: OutRx,
    kick: CancellationToken,
    done: CancellationToken,
) {
    let _done = done.drop_guard();
    let mut order = Order::default();
    // Live messages held back while rooms recover count against the same bounds as the
    // queue (the connection's and the gateway's): they were in it a moment ago.
    let max_held = rx.byte_capacity();
    let mut holding = Held {
        budget: rx.budget().clone(),
        bytes: 0,
    };
    // `cooperative`: tokio's own channel spends the task's budget per item and so yields
    // now and then; ours does not, and items that are not written (held or dropped while a
    // room recovers) would otherwise never give the worker thread back.
    while let Some(item) = tokio::task::coop::cooperative(rx.recv()).await {
        if kick.is_cancelled() {
            return Box::pin(close(session, policy("too slow: outgoing queue full"))).await;
        }
        match item {
            Out::Frame(t) => {
                if !write(&mut session, Arc::unwrap_or_clone(t)).await {
                    return;
                }
            }
            Out::Ack(ack) => {
                let Acked { text, durable } = *ack;
                if !write(&mut session, text).await {
                    return;
                }
                hops::since(Hop::AckWrite, durable);
            }
            Out::Message(live) => match order.live(live.room, live.position, &live.text) {
                Delivery::Write => {
                    if !write(&mut session, live.text.clone()).await {
                        return;
                    }
                    hops::since(Hop::Fanout, live.got);
                }
                Delivery::Held(n) => {
                    holding.take(n);
                    if holding.bytes > max_held || holding.budget.used() > holding.budget.cap() {
                        metrics::counter!(crate::telemetry::names::SLOW_CLIENTS).increment(1);
                        return Box::pin(close(session, policy("too slow: recovery overrun")))
                            .await;
                    }
                }
                Delivery::Dropped => {}
            },
            Out::BeginRecovery { room } => holding.give(order.begin(room)),
            Out::Backlog(backlog) => {
                let Backlog {
                    room,
                    after,
                    messages,
                    subscribed,
                } = *backlog;
                let (texts, freed) = order.backlog(room, after, messages, subscribed);
                holding.give(freed);
                for t in texts {
                    if !write(&mut session, t).await {
                        return;
                    }
                }
            }
            Out::EndRoom { room } => holding.give(order.end(room)),
            Out::Ping => {
                match Box::pin(tokio::time::timeout(WRITE_WAIT, session.ping(b""))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => return Box::pin(close(session, policy("too slow"))).await,
                }
            }
            Out::Pong(slot) => {
                let Some(payload) = slot.take() else { continue };
                match Box::pin(tokio::time::timeout(WRITE_WAIT, session.pong(&payload))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => return Box::pin(close(session, policy("too slow"))).await,
                }
            }
            Out::Close(reason) => return Box::pin(close(session, *reason)).await,
        }
    }
    Box::pin(close(session, CloseCode::Normal.into())).await;
}

/// The bytes a writer holds back (live messages of recovering rooms), counted against
/// the gateway's budget until released, and at the latest when the writer ends.
struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    fn take(&mut self, n: usize) {
        self.bytes += n;
        self.budget.take(n);
    }

    fn give(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        self.budget.give(n);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// How long one frame may wait for room in the socket's queue before the client counts
/// as too slow.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// How long a close frame may wait for room in the socket's queue. A client that reads
/// nothing would make it wait forever, holding the session; after this the session is
/// dropped, which ends the connection without the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

async fn close(session: Session, reason: CloseReason) {
    let _ = tokio::time::timeout(CLOSE_WAIT, session.close(Some(reason))).await;
}

fn policy(text: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::Policy,
        description: Some(text.into()),
    }
}

/// Writes one frame; false once the connection is gone (or closed for being too slow).
async fn write(session: &mut Session, text: ByteString) -> bool {
    // A client that stops reading makes this wait; the bounded queue in front of us
    // fills, and the hub kicks the connection instead of waiting.
    match tokio::time::timeout(WRITE_WAIT, session.text(text)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            Box::pin(close(session.clone(), policy("too slow"))).await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_slot_stays_small() {
        // A queue holds up to 1,024 of them for a slow client.
        assert!(
            std::mem::size_of::<Out>() <= 24,
            "{}",
            std::mem::size_of::<Out>()
        );
    }
}
