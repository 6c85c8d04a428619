//! One connection's outgoing side: a bounded queue of [`Out`] items and the writer task
//! that owns the socket's `Session`.
//!
//! Everything a connection sends passes through this queue in order, so the writer is
//! where per-room ordering and the recovery seam are enforced: while a room recovers,
//! its live messages are held back; then the backlog, `subscribed`, and the held messages
//! above the backlog follow; after that a message not above the last delivered position
//! is dropped (a duplicate from an overlapping relay or the seam).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason, Session};
use bytestring::ByteString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{Position, RoomId};

/// One item of a connection's queue. Every connection's queue has a first block of 32
/// slots from the start, so the item is kept small (24 bytes): what is larger sits behind
/// a pointer, and what goes to many connections (a message, a typing or presence event) is
/// one allocation shared by all of them.
#[derive(Debug)]
pub enum Out {
    /// A frame written as is (answers, typing, presence, errors…).
    Frame(Arc<ByteString>),
    /// A live message of a room.
    Message(Arc<Live>),
    /// Hold back the room's live messages until its `Backlog` arrives.
    BeginRecovery {
        room: RoomId,
    },
    /// The messages missed (ascending, all above `after`), then `subscribed`.
    Backlog(Box<Backlog>),
    /// The room was unsubscribed: drop what still arrives for it.
    EndRoom {
        room: RoomId,
    },
    Ping,
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

/// A live message as every local subscriber of its room gets it: serialised once.
#[derive(Debug)]
pub struct Live {
    pub room: RoomId,
    pub position: Position,
    pub text: ByteString,
}

/// Boxed in [`Out`]: rare, and the largest item (every queue slot is as large as the
/// largest variant).
#[derive(Debug)]
pub struct Backlog {
    pub room: RoomId,
    pub after: Option<Position>,
    pub messages: Vec<(Position, ByteString)>,
    pub subscribed: ByteString,
}

enum RoomState {
    Recovering(Vec<(Position, ByteString)>),
    Live(Option<Position>),
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
pub async fn writer(mut session: Session, mut rx: mpsc::Receiver<Out>, kick: CancellationToken) {
    let mut rooms: HashMap<RoomId, RoomState> = HashMap::new();
    while let Some(item) = rx.recv().await {
        if kick.is_cancelled() {
            return Box::pin(close(session, policy("too slow: outgoing queue full"))).await;
        }
        match item {
            Out::Frame(t) => {
                if !write(&mut session, Arc::unwrap_or_clone(t)).await {
                    return;
                }
            }
            Out::Message(live) => match rooms.get_mut(&live.room) {
                Some(RoomState::Recovering(held)) => held.push((live.position, live.text.clone())),
                Some(RoomState::Live(last)) if last.is_none_or(|l| live.position > l) => {
                    *last = Some(live.position);
                    if !write(&mut session, live.text.clone()).await {
                        return;
                    }
                }
                _ => {}
            },
            Out::BeginRecovery { room } => {
                rooms.insert(room, RoomState::Recovering(Vec::new()));
            }
            Out::Backlog(backlog) => {
                let Backlog {
                    room,
                    after,
                    messages,
                    subscribed,
                } = *backlog;
                let mut texts = Vec::with_capacity(messages.len() + 1);
                let mut last = after;
                for (p, t) in messages {
                    if last.is_none_or(|l| p > l) {
                        last = Some(p);
                        texts.push(t);
                    }
                }
                texts.push(subscribed);
                if let Some(RoomState::Recovering(mut held)) = rooms.remove(&room) {
                    held.sort_by_key(|(p, _)| *p);
                    for (p, t) in held {
                        if last.is_none_or(|l| p > l) {
                            last = Some(p);
                            texts.push(t);
                        }
                    }
                }
                rooms.insert(room, RoomState::Live(last));
                for t in texts {
                    if !write(&mut session, t).await {
                        return;
                    }
                }
            }
            Out::EndRoom { room } => {
                rooms.remove(&room);
            }
            Out::Ping => {
                match Box::pin(tokio::time::timeout(WRITE_WAIT, session.ping(b""))).await {
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
        // 32 slots of every connection's queue are allocated up front.
        assert!(
            std::mem::size_of::<Out>() <= 24,
            "{}",
            std::mem::size_of::<Out>()
        );
    }
}
