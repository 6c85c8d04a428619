//! One connection's outgoing side: a bounded queue of [`Out`] items and the writer task
//! that owns the socket's `Session`.
//!
//! Everything a connection sends passes through this queue in order, so the writer is
//! where per-room ordering and the recovery seam are enforced: while a room recovers,
//! its live messages are held back; then the backlog, `subscribed`, and the held messages
//! above the backlog follow; after that a message not above the last delivered position
//! is dropped (a duplicate from an overlapping relay or the seam).
//!
//! The queue is bounded in items and in bytes (the text it holds): a client that does not
//! read is cut off once either bound is reached, and a backlog is queued a page at a time,
//! each only while the queue holds less than half its bytes, so recovery can neither
//! grow a connection's memory nor crowd out its live messages.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason, Session};
use bytestring::ByteString;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::frames::PongSlot;
use crate::model::{Position, RoomId};

/// One item of a connection's queue, kept small (24 bytes): what is larger sits behind a
/// pointer, and what goes to many connections (a message, a typing or presence event) is
/// one allocation shared by all of them.
#[derive(Debug)]
pub enum Out {
    /// A frame written as is (answers, typing, presence, errors…).
    Frame(Arc<ByteString>),
    /// A live message of a room.
    Message(Arc<Live>),
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

    /// The bytes this item holds (text to be written), for the queue's byte bound.
    fn cost(&self) -> usize {
        match self {
            Out::Frame(t) => t.len(),
            Out::Message(live) => live.text.len(),
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
#[cfg(test)]
pub fn channel(capacity: usize, byte_capacity: usize) -> (OutTx, OutRx) {
    channel_in(capacity, byte_capacity, Budget::new(usize::MAX))
}

/// What the queues of a gateway (and the live messages their writers hold back) may hold
/// together, in bytes. A queue that is not empty takes no more once it is spent: live
/// delivery then cuts off the connections that have something queued (the ones not
/// keeping up), and a backlog page waits.
#[derive(Debug)]
pub struct Budget {
    used: std::sync::atomic::AtomicUsize,
    cap: usize,
}

impl Budget {
    pub fn new(cap: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: std::sync::atomic::AtomicUsize::new(0),
            cap,
        })
    }

    /// Bytes held now, across the gateway.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, n: usize) {
        self.used.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A queue whose bytes also count against a gateway-wide [`Budget`].
pub fn channel_in(capacity: usize, byte_capacity: usize, budget: Arc<Budget>) -> (OutTx, OutRx) {
    let shared = Arc::new(Shared {
        budget,
        state: std::sync::Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            byte_capacity: byte_capacity.max(1),
            capacity: capacity.max(1),
            senders: 1,
            receiver: true,
            waiting: 0,
        }),
        ready: Notify::new(),
        room: Notify::new(),
    });
    (OutTx(shared.clone()), OutRx(shared))
}

struct Shared {
    budget: Arc<Budget>,
    state: std::sync::Mutex<State>,
    /// The writer waits here for an item (or for the last sender to go).
    ready: Notify,
    /// Senders wait here for room (or for the writer to go).
    room: Notify,
}

struct State {
    items: VecDeque<Out>,
    /// The text queued, in bytes (`Out::cost`).
    bytes: usize,
    byte_capacity: usize,
    capacity: usize,
    senders: usize,
    receiver: bool,
    /// Senders waiting for room: each item taken wakes one.
    waiting: usize,
}

/// Counts a sender as waiting for room until it stops waiting (done or cancelled).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// A drained queue keeps at most this many slots.
const KEEP: usize = 8;

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why `try_send` did not queue (the item is dropped).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// At capacity (items or bytes): the client does not read fast enough.
    Full,
    /// The writer is gone.
    Closed,
}

pub struct OutTx(Arc<Shared>);

impl OutTx {
    /// Queues without waiting.
    pub fn try_send(&self, item: Out) -> Result<(), TrySendError> {
        self.push(item, false, usize::MAX).map_err(|(e, _)| e)
    }

    /// Queues, waiting for room; gives the item back if the writer is gone.
    pub async fn send(&self, item: Out) -> Result<(), Out> {
        self.send_within(item, usize::MAX).await
    }

    /// Queues once the queue holds at most half its bytes (waiting for the writer to
    /// drain it): for a backlog page, which must leave room for live messages.
    pub async fn send_bulk(&self, item: Out) -> Result<(), Out> {
        let half = self.0.lock().byte_capacity / 2;
        self.send_within(item, half).await
    }

    /// The byte capacity of the queue.
    pub fn byte_capacity(&self) -> usize {
        self.0.lock().byte_capacity
    }

    async fn send_within(&self, item: Out, max_bytes: usize) -> Result<(), Out> {
        // The busy path touches only the queue's lock.
        let mut item = match self.push(item, false, max_bytes) {
            Ok(()) => return Ok(()),
            Err((TrySendError::Closed, item)) => return Err(item),
            Err((TrySendError::Full, item)) => item,
        };
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            // Registered before the check: a `notify_waiters` in between is not missed.
            room.as_mut().enable();
            item = match self.push(item, true, max_bytes) {
                Ok(()) => return Ok(()),
                Err((TrySendError::Closed, item)) => return Err(item),
                Err((TrySendError::Full, item)) => item,
            };
            let _waiting = Waiting(&self.0);
            room.await;
        }
    }

    /// Queues if there is room, or gives the item back with the reason. A sender about to
    /// wait for room (`waiter`) is counted under the same lock as the check that found none.
    /// Room means: fewer items than the capacity, and the bytes queued with this item
    /// within the byte capacity and `max_bytes` (an item larger than that alone still
    /// goes into an empty queue).
    fn push(&self, item: Out, waiter: bool, max_bytes: usize) -> Result<(), (TrySendError, Out)> {
        let mut st = self.0.lock();
        if !st.receiver {
            return Err((TrySendError::Closed, item));
        }
        let cost = item.cost();
        let limit = st.byte_capacity.min(max_bytes);
        let budget = &self.0.budget;
        let over =
            !st.items.is_empty() && (st.bytes + cost > limit || budget.used() + cost > budget.cap);
        if st.items.len() >= st.capacity || over {
            if waiter {
                st.waiting += 1;
            }
            return Err((TrySendError::Full, item));
        }
        st.bytes += cost;
        budget.take(cost);
        st.items.push_back(item);
        drop(st);
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Clone for OutTx {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        OutTx(self.0.clone())
    }
}

impl Drop for OutTx {
    fn drop(&mut self) {
        let last = {
            let mut st = self.0.lock();
            st.senders -= 1;
            st.senders == 0
        };
        if last {
            self.0.ready.notify_one();
        }
    }
}

pub struct OutRx(Arc<Shared>);

impl OutRx {
    /// The next item; None once every sender is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Out> {
        loop {
            // The busy path touches only the queue's lock.
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(true) => return None,
                Err(false) => {}
            }
            let ready = self.0.ready.notified();
            tokio::pin!(ready);
            // Registered before the second look: an item queued in between wakes it.
            ready.as_mut().enable();
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(true) => return None,
                Err(false) => ready.await,
            }
        }
    }

    /// The next item if one is queued; `Err(true)` once every sender is gone.
    pub fn try_recv(&self) -> Result<Out, bool> {
        let mut st = self.0.lock();
        match st.items.pop_front() {
            Some(item) => {
                let cost = item.cost();
                st.bytes = st.bytes.saturating_sub(cost);
                self.0.budget.give(cost);
                if st.items.is_empty() && st.items.capacity() > KEEP {
                    st.items.shrink_to(KEEP);
                }
                let wake = st.waiting > 0;
                drop(st);
                if wake {
                    self.0.room.notify_one();
                }
                Ok(item)
            }
            None => Err(st.senders == 0),
        }
    }
}

impl Drop for OutRx {
    fn drop(&mut self) {
        let items = {
            let mut st = self.0.lock();
            st.receiver = false;
            self.0.budget.give(st.bytes);
            st.bytes = 0;
            std::mem::take(&mut st.items)
        };
        drop(items);
        self.0.room.notify_waiters();
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
    /// The `since` of the subscribe: nothing at or below it is written.
    pub after: Option<Position>,
    pub messages: Vec<(Position, ByteString)>,
    /// On the last page: the `subscribed` frame, after which the room is live.
    pub subscribed: Option<ByteString>,
}

enum RoomState {
    Recovering {
        /// The newest position written from the backlog.
        last: Option<Position>,
        /// Live messages held back meanwhile, and their bytes.
        held: Vec<(Position, ByteString)>,
        held_bytes: usize,
    },
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
    let mut rooms: HashMap<RoomId, RoomState> = HashMap::new();
    // Live messages held back while rooms recover count against the same bounds as the
    // queue (the connection's and the gateway's): they were in it a moment ago.
    let max_held = rx.0.lock().byte_capacity;
    let mut holding = Held {
        budget: rx.0.budget.clone(),
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
            Out::Message(live) => match rooms.get_mut(&live.room) {
                Some(RoomState::Recovering {
                    held, held_bytes, ..
                }) => {
                    *held_bytes += live.text.len();
                    holding.take(live.text.len());
                    if holding.bytes > max_held || holding.budget.used() > holding.budget.cap {
                        metrics::counter!(crate::telemetry::names::SLOW_CLIENTS).increment(1);
                        return Box::pin(close(session, policy("too slow: recovery overrun")))
                            .await;
                    }
                    held.push((live.position, live.text.clone()))
                }
                Some(RoomState::Live(last)) if last.is_none_or(|l| live.position > l) => {
                    *last = Some(live.position);
                    if !write(&mut session, live.text.clone()).await {
                        return;
                    }
                }
                _ => {}
            },
            Out::BeginRecovery { room } => {
                // A second `subscribe` of a room replaces the first: recovery starts over.
                let before = rooms.insert(
                    room,
                    RoomState::Recovering {
                        last: None,
                        held: Vec::new(),
                        held_bytes: 0,
                    },
                );
                holding.release(before);
            }
            Out::Backlog(backlog) => {
                let Backlog {
                    room,
                    after,
                    messages,
                    subscribed,
                } = *backlog;
                // A page of a room no longer recovering (unsubscribed, access revoked) is
                // dropped.
                let Some(RoomState::Recovering { last, .. }) = rooms.get_mut(&room) else {
                    continue;
                };
                if last.is_none() {
                    *last = after;
                }
                let mut texts = Vec::with_capacity(messages.len() + 1);
                for (p, t) in messages {
                    if last.is_none_or(|l| p > l) {
                        *last = Some(p);
                        texts.push(t);
                    }
                }
                if let Some(subscribed) = subscribed {
                    texts.push(subscribed);
                    if let Some(RoomState::Recovering {
                        mut last,
                        mut held,
                        held_bytes,
                    }) = rooms.remove(&room)
                    {
                        // Leaves the budget now: written next, not held any more.
                        holding.release(Some(RoomState::Recovering {
                            last,
                            held: Vec::new(),
                            held_bytes,
                        }));
                        held.sort_by_key(|(p, _)| *p);
                        for (p, t) in held {
                            if last.is_none_or(|l| p > l) {
                                last = Some(p);
                                texts.push(t);
                            }
                        }
                        rooms.insert(room, RoomState::Live(last));
                    }
                }
                for t in texts {
                    if !write(&mut session, t).await {
                        return;
                    }
                }
            }
            Out::EndRoom { room } => {
                holding.release(rooms.remove(&room));
            }
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

    /// Gives back what a room's state held (if it was recovering).
    fn release(&mut self, state: Option<RoomState>) {
        if let Some(RoomState::Recovering { held_bytes, .. }) = state {
            let n = held_bytes.min(self.bytes);
            self.bytes -= n;
            self.budget.give(n);
        }
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

    fn frame(i: usize) -> Out {
        Out::frame(format!("f{i}"))
    }

    fn text(o: Out) -> String {
        match o {
            Out::Frame(f) => f.to_string(),
            _ => "other".into(),
        }
    }

    #[tokio::test]
    async fn the_queue_keeps_order_bounds_and_ends_with_its_senders() {
        let (tx, mut rx) = channel(2, 1 << 20);
        tx.try_send(frame(1)).unwrap();
        tx.send(frame(2)).await.unwrap();
        assert_eq!(tx.try_send(frame(3)), Err(TrySendError::Full));
        // A sender waiting for room gets it when the writer takes an item.
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(frame(3)).await.is_ok() })
        };
        tokio::task::yield_now().await;
        assert_eq!(text(rx.recv().await.unwrap()), "f1");
        assert!(waiting.await.unwrap());
        assert_eq!(text(rx.recv().await.unwrap()), "f2");
        assert_eq!(text(rx.recv().await.unwrap()), "f3");
        // Drained: nothing kept beyond a few slots.
        assert!(rx.0.lock().items.capacity() <= KEEP);
        drop(tx);
        assert!(
            rx.recv().await.is_none(),
            "ends when the last sender is gone"
        );
    }

    #[tokio::test]
    async fn senders_learn_that_the_writer_is_gone() {
        let (tx, rx) = channel(1, 1 << 20);
        tx.try_send(frame(1)).unwrap();
        let blocked = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(frame(2)).await.is_err() })
        };
        tokio::task::yield_now().await;
        drop(rx);
        assert!(blocked.await.unwrap(), "a sender waiting for room is told");
        assert_eq!(tx.try_send(frame(3)), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn many_waiting_senders_all_get_through() {
        let (tx, mut rx) = channel(1, 1 << 20);
        tx.try_send(frame(0)).unwrap();
        let senders: Vec<_> = (1..=5)
            .map(|i| {
                let tx = tx.clone();
                tokio::spawn(async move { tx.send(frame(i)).await.is_ok() })
            })
            .collect();
        drop(tx);
        let mut got = 0;
        while rx.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, 6);
        for s in senders {
            assert!(s.await.unwrap());
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_bulk_leaves_half_for_live() {
        let (tx, rx) = channel(100, 100);
        let sized = |n: usize| Out::frame("x".repeat(n));
        // An item larger than the bound alone still goes into an empty queue.
        tx.try_send(sized(150)).unwrap();
        assert_eq!(tx.try_send(sized(1)), Err(TrySendError::Full));
        rx.try_recv().unwrap();
        tx.try_send(sized(60)).unwrap();
        tx.try_send(sized(40)).unwrap();
        assert_eq!(
            tx.try_send(sized(1)),
            Err(TrySendError::Full),
            "100 bytes queued"
        );
        rx.try_recv().unwrap();
        // 40 bytes queued: a bulk item waits until at most half (50) would be queued.
        let bulk = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send_bulk(sized(20)).await.is_ok() })
        };
        tokio::task::yield_now().await;
        assert!(!bulk.is_finished(), "40 + 20 > 50: waits");
        tx.try_send(sized(30)).unwrap(); // a live item still fits (70 <= 100)
        rx.try_recv().unwrap();
        rx.try_recv().unwrap();
        assert!(bulk.await.unwrap(), "queued once drained");
        assert_eq!(rx.0.lock().bytes, 20);
    }

    #[tokio::test]
    async fn queues_share_the_gateway_budget() {
        let budget = Budget::new(100);
        let (a, ra) = channel_in(100, 1_000, budget.clone());
        let (b, rb) = channel_in(100, 1_000, budget.clone());
        let sized = |n: usize| Out::frame("x".repeat(n));
        a.try_send(sized(50)).unwrap();
        a.try_send(sized(30)).unwrap();
        b.try_send(sized(10)).unwrap();
        assert_eq!(budget.used(), 90);
        // Over the budget: a queue with something in it takes no more...
        assert_eq!(b.try_send(sized(20)), Err(TrySendError::Full));
        assert_eq!(a.try_send(sized(20)), Err(TrySendError::Full));
        // ...an empty one still takes one item (a client that keeps up is not cut off).
        rb.try_recv().unwrap();
        b.try_send(sized(20)).unwrap();
        assert_eq!(budget.used(), 100);
        ra.try_recv().unwrap();
        a.try_send(sized(20)).unwrap();
        assert_eq!(budget.used(), 70);
        // What a queue holds goes back when its writer goes.
        drop(ra);
        assert_eq!(budget.used(), 20);
        drop(rb);
        assert_eq!(budget.used(), 0);
    }

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
