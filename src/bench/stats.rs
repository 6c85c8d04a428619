//! What the connections record while the bench runs: counters (atomics) and latency
//! histograms (HDR, microseconds), sharded by connection so the two runtime threads
//! rarely meet on one lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, 1 µs ..= 120 s, 3 significant digits.
pub const MAX_US: u64 = 120_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant, valid histogram bounds")
}

#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    /// Deliveries the acked messages owe: for each ack, the subscribers of its room.
    pub expected: AtomicU64,
    /// The same, counting only messages scheduled inside the measured window.
    pub sent_measured: AtomicU64,
    pub acked_measured: AtomicU64,
    pub delivered_measured: AtomicU64,
    /// `error` frames answering a send (the rest are in `errors` too).
    pub send_errors: AtomicU64,
    /// A position not above the last one this connection saw in the room.
    pub out_of_order: AtomicU64,
    pub opened: AtomicU64,
    pub connect_failed: AtomicU64,
    /// Connections the server closed (or that broke) before the bench stopped.
    pub closed_early: AtomicU64,
    pub reconnect_frames: AtomicU64,
    /// Largest delay between a send's scheduled time and when the bench wrote it (µs):
    /// large values mean the bench (or the socket) could not keep the schedule.
    pub max_send_lag_us: AtomicU64,
    /// When the last ack arrived, µs since the run's base instant.
    pub last_ack_us: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn error(&self, code: &str) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(code.to_owned()).or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn error_total(&self) -> u64 {
        self.errors().values().sum()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

struct Shard {
    ack: Histogram<u64>,
    deliver: Histogram<u64>,
    ack_interval: Histogram<u64>,
    deliver_interval: Histogram<u64>,
    connect: Histogram<u64>,
}

pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
}

pub struct Totals {
    pub ack: Histogram<u64>,
    pub deliver: Histogram<u64>,
    pub connect: Histogram<u64>,
}

#[derive(Clone, Copy)]
pub enum Kind {
    Ack,
    Deliver,
    Connect,
}

impl Recorder {
    pub fn new(shards: usize) -> Recorder {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| {
                    Mutex::new(Shard {
                        ack: histogram(),
                        deliver: histogram(),
                        ack_interval: histogram(),
                        deliver_interval: histogram(),
                        connect: histogram(),
                    })
                })
                .collect(),
        }
    }

    pub fn record(&self, conn: usize, kind: Kind, us: u64) {
        let us = us.clamp(1, MAX_US);
        let mut s = self.shards[conn % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match kind {
            Kind::Ack => {
                s.ack.saturating_record(us);
                s.ack_interval.saturating_record(us);
            }
            Kind::Deliver => {
                s.deliver.saturating_record(us);
                s.deliver_interval.saturating_record(us);
            }
            Kind::Connect => s.connect.saturating_record(us),
        }
    }

    /// The ack and deliver histograms since the last call (for the progress line).
    pub fn take_interval(&self) -> (Histogram<u64>, Histogram<u64>) {
        let (mut a, mut d) = (histogram(), histogram());
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let _ = a.add(&s.ack_interval);
            let _ = d.add(&s.deliver_interval);
            s.ack_interval.reset();
            s.deliver_interval.reset();
        }
        (a, d)
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            ack: histogram(),
            deliver: histogram(),
            connect: histogram(),
        };
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            let _ = t.ack.add(&s.ack);
            let _ = t.deliver.add(&s.deliver);
            let _ = t.connect.add(&s.connect);
        }
        t
    }
}

/// Milliseconds of the `q` quantile of a µs histogram; 0 when it is empty.
pub fn q_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_intervals_reset() {
        let r = Recorder::new(4);
        for i in 0..1000u64 {
            r.record(i as usize, Kind::Deliver, 1000 + i);
        }
        r.record(0, Kind::Ack, 5_000);
        let (a, d) = r.take_interval();
        assert_eq!(a.len(), 1);
        assert_eq!(d.len(), 1000);
        let (a, d) = r.take_interval();
        assert!(a.is_empty() && d.is_empty());
        let t = r.totals();
        assert_eq!(t.deliver.len(), 1000);
        // p50 of 1000..1999 µs is about 1.5 ms (3 significant digits).
        assert!((q_ms(&t.deliver, 0.5) - 1.5).abs() < 0.01);
        assert_eq!(q_ms(&histogram(), 0.99), 0.0);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let r = Recorder::new(1);
        r.record(0, Kind::Ack, 0);
        r.record(0, Kind::Ack, u64::MAX);
        assert_eq!(r.totals().ack.len(), 2);
    }
}
