//! One connection's outgoing side: a bounded queue of [`Out`] items and the writer task
//! that owns the socket's `Session`.
//!
//! Everything a connection sends passes through this queue in order, so the writer is
//! where per-room ordering and the recovery seam are enforced: while a room recovers,
//! its live messages are held back; then the backlog, `subscribed`, and the held messages
//! above the backlog follow; after that a message not above the last delivered position
//! is dropped (a duplicate from an overlapping relay or the seam).

use std::collections::HashMap;
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason, Session};
use bytestring::ByteString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{Position, RoomId};

#[derive(Debug)]
pub enum Out {
    /// A frame written as is (answers, typing, presence, errors…).
    Frame(ByteString),
    /// A live message of a room.
    Message {
        room: RoomId,
        position: Position,
        text: ByteString,
    },
    /// Hold back the room's live messages until its `Backlog` arrives.
    BeginRecovery {
        room: RoomId,
    },
    /// The messages missed (ascending, all above `after`), then `subscribed`.
    Backlog {
        room: RoomId,
        after: Option<Position>,
        messages: Vec<(Position, ByteString)>,
        subscribed: ByteString,
    },
    /// The room was unsubscribed: drop what still arrives for it.
    EndRoom {
        room: RoomId,
    },
    Ping,
    Close(CloseReason),
}

enum RoomState {
    Recovering(Vec<(Position, ByteString)>),
    Live(Option<Position>),
}

/// Writes queued items to the socket until the queue ends, a `Close` arrives, or the
/// connection is kicked (too slow: close 1008).
pub async fn writer(mut session: Session, mut rx: mpsc::Receiver<Out>, kick: CancellationToken) {
    let mut rooms: HashMap<RoomId, RoomState> = HashMap::new();
    loop {
        let item = tokio::select! {
            biased;
            _ = kick.cancelled() => {
                let _ = session.close(Some(CloseReason {
                    code: CloseCode::Policy,
                    description: Some("too slow: outgoing queue full".into()),
                })).await;
                return;
            }
            item = rx.recv() => item,
        };
        let Some(item) = item else {
            let _ = session.close(Some(CloseCode::Normal.into())).await;
            return;
        };
        let mut texts: Vec<ByteString> = Vec::new();
        match item {
            Out::Frame(t) => texts.push(t),
            Out::Message {
                room,
                position,
                text,
            } => match rooms.get_mut(&room) {
                Some(RoomState::Recovering(held)) => held.push((position, text)),
                Some(RoomState::Live(last)) if last.is_none_or(|l| position > l) => {
                    *last = Some(position);
                    texts.push(text);
                }
                _ => {}
            },
            Out::BeginRecovery { room } => {
                rooms.insert(room, RoomState::Recovering(Vec::new()));
            }
            Out::Backlog {
                room,
                after,
                messages,
                subscribed,
            } => {
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
            }
            Out::EndRoom { room } => {
                rooms.remove(&room);
            }
            Out::Ping => {
                if session.ping(b"").await.is_err() {
                    return;
                }
            }
            Out::Close(reason) => {
                let _ = session.close(Some(reason)).await;
                return;
            }
        }
        for t in texts {
            // A client that stops reading makes this wait; the bounded queue in front of
            // us fills, and the hub kicks the connection instead of waiting.
            match tokio::time::timeout(Duration::from_secs(10), session.text(t)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    let _ = session
                        .close(Some(CloseReason {
                            code: CloseCode::Policy,
                            description: Some("too slow".into()),
                        }))
                        .await;
                    return;
                }
            }
        }
    }
}
