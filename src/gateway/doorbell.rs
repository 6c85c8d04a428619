//! Waking a thread's writers from another thread, once per batch instead of once per queue.
//!
//! Connections live on the HTTP workers' threads (one single-threaded runtime each); their
//! messages are queued by the hub on the runtime that reads the bus. Waking a task of a
//! single-threaded runtime from another thread costs a system call (tokio writes to the
//! runtime's eventfd) and often a context switch, and it was paid per delivery: a message
//! to a room with 500 readers on a worker made 500 of them (`strace -c` of one gateway at
//! 5,000 deliveries/s: 28,878 `write`s in 5 s before, 9,818 after; benches/README.md,
//! "Issue 21").
//!
//! A [`Doorbell`] belongs to one such thread. The hub collects the queues it filled during
//! one dispatch in [`Rings`] and rings each thread's doorbell once; the doorbell's task,
//! on that thread, then wakes the writers there, which costs no system call.
//!
//! Contract: every queue handed to [`Rings::add`] is woken ([`Ring::wake`]) after
//! [`Rings::ring`] (or its drop): by the doorbell's task, or at once when the doorbell is
//! rung from its own thread or its task is gone (its runtime ended). A queue rung again
//! before its doorbell ran is woken once ([`Ring::mark`]).

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;

/// Something a doorbell wakes: a connection's queue.
pub trait Ring: Send + Sync {
    /// Marks it as waiting for its doorbell; false if it was already.
    fn mark(&self) -> bool;
    /// Clears the mark and wakes its reader.
    fn wake(&self);
}

/// The doorbell of one single-threaded runtime's thread.
pub struct Doorbell {
    state: Mutex<Bell>,
    task: Notify,
}

struct Bell {
    /// Queues to wake, each once (marked).
    waiting: Wakes,
    /// Whether the task has been told since it last took `waiting`.
    told: bool,
    /// False once the task is gone: ringing then wakes at once.
    alive: bool,
}

thread_local! {
    /// This thread's doorbell, if it runs a single-threaded runtime, and that runtime.
    static HERE: RefCell<Option<(tokio::runtime::Id, Arc<Doorbell>)>> = const { RefCell::new(None) };
}

impl Doorbell {
    /// The doorbell of the current thread, started on first use. None outside a
    /// single-threaded tokio runtime (a multi-threaded one moves tasks between threads:
    /// its queues are woken directly).
    pub fn here() -> Option<Arc<Doorbell>> {
        let handle = Handle::try_current().ok()?;
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return None;
        }
        let runtime = handle.id();
        HERE.with(|here| {
            let mut here = here.borrow_mut();
            if let Some((id, bell)) = here.as_ref() {
                if *id == runtime && bell.lock().alive {
                    return Some(bell.clone());
                }
            }
            // First use, or another runtime than the one this thread ran before.
            let bell = Arc::new(Doorbell {
                state: Mutex::new(Bell {
                    waiting: Vec::new(),
                    told: false,
                    alive: true,
                }),
                task: Notify::new(),
            });
            handle.spawn(run(Gone(bell.clone())));
            *here = Some((runtime, bell.clone()));
            Some(bell)
        })
    }

    fn lock(&self) -> MutexGuard<'_, Bell> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_here(self: &Arc<Self>) -> bool {
        HERE.with(|here| {
            here.borrow()
                .as_ref()
                .is_some_and(|(_, mine)| Arc::ptr_eq(mine, self))
        })
    }

    /// Hands `wakes` (marked queues) to the task, telling it once per batch.
    fn ring(self: &Arc<Self>, wakes: &mut Wakes) {
        if wakes.is_empty() {
            return;
        }
        let mut st = self.lock();
        if !st.alive {
            drop(st);
            wakes.drain(..).for_each(|w| w.wake());
            return;
        }
        st.waiting.append(wakes);
        let tell = !std::mem::replace(&mut st.told, true);
        drop(st);
        if tell {
            self.task.notify_one();
        }
    }
}

/// Dropped with the doorbell's task (its runtime shut down, whether or not the task ever
/// ran: it is the task's argument): nothing is left unwoken, and later rings wake at once.
struct Gone(Arc<Doorbell>);

impl Drop for Gone {
    fn drop(&mut self) {
        let left = {
            let mut st = self.0.lock();
            st.alive = false;
            std::mem::take(&mut st.waiting)
        };
        left.into_iter().for_each(|w| w.wake());
    }
}

/// The doorbell's task: wakes what it is handed, on its thread.
async fn run(gone: Gone) {
    let bell = &gone.0;
    let mut batch: Wakes = Vec::new();
    loop {
        bell.task.notified().await;
        {
            let mut st = bell.lock();
            std::mem::swap(&mut st.waiting, &mut batch);
            st.told = false;
            // A burst's capacity is not kept for good.
            if st.waiting.capacity() > 1024 {
                st.waiting.shrink_to(64);
            }
        }
        batch.drain(..).for_each(|w| w.wake());
        if batch.capacity() > 1024 {
            batch.shrink_to(64);
        }
    }
}

/// Queues to wake.
type Wakes = Vec<Arc<dyn Ring>>;

/// Queues to wake, collected during one dispatch, by doorbell.
#[derive(Default)]
pub struct Rings {
    bells: Vec<(Arc<Doorbell>, Wakes)>,
}

impl Rings {
    /// `queue` has something new for its reader, which waits on the thread of `bell`.
    pub fn add(&mut self, bell: &Arc<Doorbell>, queue: Arc<dyn Ring>) {
        if !queue.mark() {
            // Already waiting for its doorbell, which will wake it.
            return;
        }
        match self.bells.iter_mut().find(|(b, _)| Arc::ptr_eq(b, bell)) {
            Some((_, wakes)) => wakes.push(queue),
            None => self.bells.push((bell.clone(), vec![queue])),
        }
    }

    /// Rings every doorbell with its queues (a queue whose doorbell is this thread's is
    /// woken now).
    pub fn ring(&mut self) {
        for (bell, mut wakes) in self.bells.drain(..) {
            if bell.is_here() {
                wakes.drain(..).for_each(|w| w.wake());
            } else {
                bell.ring(&mut wakes);
            }
        }
    }
}

impl Drop for Rings {
    fn drop(&mut self) {
        self.ring();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counted {
        marked: AtomicBool,
        woken: AtomicUsize,
        thread: Mutex<Option<std::thread::ThreadId>>,
    }

    impl Ring for Counted {
        fn mark(&self) -> bool {
            !self.marked.swap(true, Ordering::AcqRel)
        }
        fn wake(&self) {
            self.marked.swap(false, Ordering::AcqRel);
            self.woken.fetch_add(1, Ordering::AcqRel);
            *self.thread.lock().unwrap() = Some(std::thread::current().id());
        }
    }

    /// Rung from another thread: every queue is woken once, on the doorbell's thread.
    #[test]
    fn rings_from_another_thread_wake_on_the_doorbell_thread() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (bell, home) =
            rt.block_on(async { (Doorbell::here().unwrap(), std::thread::current().id()) });
        let queues: Vec<Arc<Counted>> = (0..5).map(|_| Arc::default()).collect();
        {
            let (bell, queues) = (bell.clone(), queues.clone());
            std::thread::spawn(move || {
                let mut rings = Rings::default();
                for q in &queues {
                    rings.add(&bell, q.clone());
                    // Twice before the doorbell ran: woken once.
                    rings.add(&bell, q.clone());
                }
                rings.ring();
            })
            .join()
            .unwrap();
        }
        rt.block_on(async {
            for _ in 0..100 {
                if queues.iter().all(|q| q.woken.load(Ordering::Acquire) == 1) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        for q in &queues {
            assert_eq!(q.woken.load(Ordering::Acquire), 1);
            assert_eq!(*q.thread.lock().unwrap(), Some(home));
        }
    }

    /// Once the doorbell's runtime has ended, what was rung and not woken is woken, and
    /// later rings wake at once; the thread's next runtime gets a new doorbell.
    #[test]
    fn a_doorbell_whose_runtime_ended_wakes_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bell = rt.block_on(async { Doorbell::here().unwrap() });
        let early: Arc<Counted> = Arc::default();
        let mut rings = Rings::default();
        rings.add(&bell, early.clone());
        // Rung from another thread: handed to the task, which never runs.
        std::thread::scope(|s| {
            s.spawn(|| rings.ring());
        });
        drop(rt);
        assert_eq!(early.woken.load(Ordering::Acquire), 1);
        let late: Arc<Counted> = Arc::default();
        let mut rings = Rings::default();
        rings.add(&bell, late.clone());
        std::thread::scope(|s| {
            s.spawn(|| rings.ring());
        });
        assert_eq!(late.woken.load(Ordering::Acquire), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let again = rt.block_on(async { Doorbell::here().unwrap() });
        assert!(!Arc::ptr_eq(&bell, &again));
    }

    #[test]
    fn no_doorbell_on_a_multi_threaded_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert!(rt.block_on(async { Doorbell::here() }).is_none());
        assert!(Doorbell::here().is_none());
    }
}
