//! A connection's outgoing queue: bounded in items and in bytes, and counted against a
//! gateway-wide [`Budget`]. The hub, the session and its send worker queue; the writer
//! takes. Not tokio's mpsc: that allocates a block of 32 slots and a cache-padded header per
//! channel up front (1.3 KiB), and almost every connection of a chat is idle; this one is a
//! `VecDeque` that allocates with its first item, grows with what is queued, and is cut
//! back to 8 slots once drained. A slot freed while senders wait goes to whoever queues
//! first; each freed slot wakes one.
//!
//! Contract: items come out in the order they went in; `try_send` never waits (Full when
//! the queue holds `capacity` items, or when the item would take the queue past its bytes
//! or the budget past its cap, an empty queue always taking one item); `send` waits for
//! room; `send_bulk` waits until the queue holds at most half its bytes; the receiver ends
//! (None) once every sender is gone and the queue is drained; senders learn (Closed / the
//! item back) once the receiver is gone, and its items leave the budget then.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use super::doorbell::{Doorbell, Ring, Rings};

/// What an item weighs against the queue's byte bound and the gateway's budget.
pub trait Weigh {
    fn weight(&self) -> usize;
}

#[cfg(test)]
pub fn channel<T: Weigh>(capacity: usize, byte_capacity: usize) -> (Tx<T>, Rx<T>) {
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

    /// The most it may hold.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes held now, across the gateway.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn take(&self, n: usize) {
        self.used.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn give(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A queue whose bytes also count against a gateway-wide [`Budget`].
pub fn channel_in<T: Weigh>(
    capacity: usize,
    byte_capacity: usize,
    budget: Arc<Budget>,
) -> (Tx<T>, Rx<T>) {
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
        // The writer runs where the queue is made (the session's worker thread).
        bell: Doorbell::here(),
        marked: AtomicBool::new(false),
    });
    (Tx(shared.clone()), Rx(shared))
}

struct Shared<T> {
    budget: Arc<Budget>,
    state: std::sync::Mutex<State<T>>,
    /// The writer waits here for an item (or for the last sender to go).
    ready: Notify,
    /// Senders wait here for room (or for the writer to go).
    room: Notify,
    /// The doorbell of the writer's thread, for [`Tx::try_send_rung`]
    /// (doorbell.rs). None: the writer is woken directly.
    bell: Option<Arc<Doorbell>>,
    /// Handed to `bell` and not woken yet.
    marked: AtomicBool,
}

impl<T: Send + 'static> Ring for Shared<T> {
    fn mark(&self) -> bool {
        !self.marked.swap(true, Ordering::AcqRel)
    }

    fn wake(&self) {
        // Acquires the release of the `mark` that handed it over (after its item).
        self.marked.swap(false, Ordering::AcqRel);
        self.ready.notify_one();
    }
}

struct State<T> {
    items: VecDeque<T>,
    /// What is queued, in bytes (`Weigh::weight`).
    bytes: usize,
    byte_capacity: usize,
    capacity: usize,
    senders: usize,
    receiver: bool,
    /// Senders waiting for room: each item taken wakes one.
    waiting: usize,
}

/// Counts a sender as waiting for room until it stops waiting (done or cancelled).
struct Waiting<'a, T>(&'a Shared<T>);

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// A drained queue keeps at most this many slots.
const KEEP: usize = 8;

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
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

/// The sending side of a connection's queue (the hub, the session, its send worker).
pub struct Tx<T>(Arc<Shared<T>>);

impl<T: Weigh + Send + 'static> Tx<T> {
    /// Queues without waiting.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError> {
        self.push(item, false, usize::MAX).map_err(|(e, _)| e)
    }

    /// [`try_send`](Self::try_send) for one of many queues filled at once (the hub's
    /// fan-out): the writer is woken when `rings` rings, with the other writers of its
    /// thread (doorbell.rs).
    pub fn try_send_rung(&self, item: T, rings: &mut Rings) -> Result<(), TrySendError> {
        self.queue(item, false, usize::MAX).map_err(|(e, _)| e)?;
        match &self.0.bell {
            Some(bell) => rings.add(bell, self.0.clone()),
            None => self.0.ready.notify_one(),
        }
        Ok(())
    }

    /// Queues, waiting for room; gives the item back if the writer is gone.
    pub async fn send(&self, item: T) -> Result<(), T> {
        self.send_within(item, usize::MAX).await
    }

    /// Queues once the queue holds at most half its bytes (waiting for the writer to
    /// drain it): for a backlog page, which must leave room for live messages.
    pub async fn send_bulk(&self, item: T) -> Result<(), T> {
        let half = self.0.lock().byte_capacity / 2;
        self.send_within(item, half).await
    }

    /// The byte capacity of the queue.
    pub fn byte_capacity(&self) -> usize {
        self.0.lock().byte_capacity
    }

    async fn send_within(&self, item: T, max_bytes: usize) -> Result<(), T> {
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
    fn push(&self, item: T, waiter: bool, max_bytes: usize) -> Result<(), (TrySendError, T)> {
        self.queue(item, waiter, max_bytes)?;
        self.0.ready.notify_one();
        Ok(())
    }

    /// `push` without waking the writer.
    fn queue(&self, item: T, waiter: bool, max_bytes: usize) -> Result<(), (TrySendError, T)> {
        let mut st = self.0.lock();
        if !st.receiver {
            return Err((TrySendError::Closed, item));
        }
        let cost = item.weight();
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
        Ok(())
    }
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Tx(self.0.clone())
    }
}

impl<T> Drop for Tx<T> {
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

/// The receiving side: the connection's writer.
pub struct Rx<T>(Arc<Shared<T>>);

impl<T: Weigh> Rx<T> {
    /// The next item; None once every sender is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<T> {
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

    /// The byte capacity of the queue.
    pub fn byte_capacity(&self) -> usize {
        self.0.lock().byte_capacity
    }

    /// The gateway-wide budget the queue counts against.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.0.budget
    }

    /// The next item if one is queued; `Err(true)` once every sender is gone.
    pub fn try_recv(&self) -> Result<T, bool> {
        let mut st = self.0.lock();
        match st.items.pop_front() {
            Some(item) => {
                let cost = item.weight();
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

impl<T> Drop for Rx<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Item(String);

    impl Weigh for Item {
        fn weight(&self) -> usize {
            self.0.len()
        }
    }

    fn frame(i: usize) -> Item {
        Item(format!("f{i}"))
    }

    fn text(o: Item) -> String {
        o.0
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
        let sized = |n: usize| Item("x".repeat(n));
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
        let sized = |n: usize| Item("x".repeat(n));
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

    /// Filled from another thread as the hub does: writers waiting on a single-threaded
    /// runtime get every item, in order, woken through their thread's doorbell.
    #[test]
    fn rung_sends_reach_writers_waiting_on_their_own_thread() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| channel::<Item>(16, 1_000)).unzip();
            assert!(txs.iter().all(|tx| tx.0.bell.is_some()));
            let writers: Vec<_> = rxs
                .into_iter()
                .map(|mut rx| {
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        while let Some(item) = rx.recv().await {
                            got.push(text(item));
                        }
                        got
                    })
                })
                .collect();
            // The writers wait before anything is queued.
            tokio::task::yield_now().await;
            tokio::task::spawn_blocking(move || {
                for round in 0..4 {
                    let mut rings = Rings::default();
                    for tx in &txs {
                        tx.try_send_rung(frame(round), &mut rings).unwrap();
                    }
                    rings.ring();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
            .await
            .unwrap();
            let want: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
            for w in writers {
                let got = tokio::time::timeout(std::time::Duration::from_secs(5), w)
                    .await
                    .expect("every writer woken")
                    .unwrap();
                assert_eq!(got, want);
            }
        });
    }

    /// Outside a single-threaded runtime there is no doorbell: a rung send wakes at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn without_a_doorbell_rung_sends_wake_directly() {
        let (tx, mut rx) = channel::<Item>(16, 1_000);
        assert!(tx.0.bell.is_none());
        let mut rings = Rings::default();
        tx.try_send_rung(frame(1), &mut rings).unwrap();
        // Not rung yet, and still delivered.
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.expect("woken").map(text).as_deref(), Some("f1"));
        drop(rings);
    }
}
