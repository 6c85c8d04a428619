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
    /// A frame delivered again to a connection that had it (mixed scenario: positions).
    pub duplicates: AtomicU64,
    /// The mixed scenario's counts per kind (the order of `SendKind::ALL`).
    pub kinds: [KindCounters; 4],
    errors: Mutex<BTreeMap<String, u64>>,
}

/// One kind's counts in the mixed scenario (its share of the totals above).
#[derive(Default)]
pub struct KindCounters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub expected: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub send_errors: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl KindCounters {
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
    send_lag: Histogram<u64>,
}

pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    /// Per kind (mixed scenario): ack and deliver histograms, in few shards of their own
    /// (each histogram is about 150 KiB), made on the first record.
    kinds: Vec<Mutex<Vec<[Histogram<u64>; 2]>>>,
}

pub struct Totals {
    pub ack: Histogram<u64>,
    pub deliver: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    /// Per kind, (ack, deliver); empty when nothing was recorded per kind.
    pub kinds: Vec<(Histogram<u64>, Histogram<u64>)>,
}

/// Shards of the per-kind histograms.
const KIND_SHARDS: usize = 4;
/// Kinds the per-kind histograms hold (`SendKind::ALL`).
pub const KINDS: usize = 4;

#[derive(Clone, Copy)]
pub enum Kind {
    Ack,
    Deliver,
    Connect,
    /// A send's write after its scheduled time (the generator's own lateness).
    SendLag,
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
                        send_lag: histogram(),
                    })
                })
                .collect(),
            kinds: (0..KIND_SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// A latency of kind `kind` (index into `SendKind::ALL`): `ack` true for send → ack,
    /// false for send → delivery.
    pub fn record_kind(&self, conn: usize, kind: usize, ack: bool, us: u64) {
        let us = us.clamp(1, MAX_US);
        let mut s = self.kinds[conn % KIND_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if s.is_empty() {
            *s = (0..KINDS).map(|_| [histogram(), histogram()]).collect();
        }
        if let Some(h) = s.get_mut(kind) {
            h[usize::from(!ack)].saturating_record(us);
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
            Kind::SendLag => s.send_lag.saturating_record(us),
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
            send_lag: histogram(),
            kinds: Vec::new(),
        };
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            let _ = t.ack.add(&s.ack);
            let _ = t.deliver.add(&s.deliver);
            let _ = t.connect.add(&s.connect);
            let _ = t.send_lag.add(&s.send_lag);
        }
        for s in &self.kinds {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            if s.is_empty() {
                continue;
            }
            if t.kinds.is_empty() {
                t.kinds = (0..KINDS).map(|_| (histogram(), histogram())).collect();
            }
            for (into, [a, d]) in t.kinds.iter_mut().zip(s.iter()) {
                let _ = into.0.add(a);
                let _ = into.1.add(d);
            }
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
    fn kinds_are_recorded_apart_and_only_when_used() {
        let r = Recorder::new(2);
        assert!(r.totals().kinds.is_empty());
        for conn in 0..10 {
            r.record_kind(conn, 1, true, 2_000);
            r.record_kind(conn, 1, false, 3_000);
        }
        r.record_kind(0, 3, false, 9_000);
        r.record_kind(0, 99, false, 9_000); // no such kind: ignored
        let t = r.totals();
        assert_eq!(t.kinds.len(), KINDS);
        assert_eq!((t.kinds[1].0.len(), t.kinds[1].1.len()), (10, 10));
        assert!((q_ms(&t.kinds[1].1, 0.5) - 3.0).abs() < 0.01);
        assert_eq!((t.kinds[3].0.len(), t.kinds[3].1.len()), (0, 1));
        assert!(t.kinds[0].0.is_empty());
        // The totals are not touched by per-kind records.
        assert!(t.ack.is_empty() && t.deliver.is_empty());
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let r = Recorder::new(1);
        r.record(0, Kind::Ack, 0);
        r.record(0, Kind::Ack, u64::MAX);
        assert_eq!(r.totals().ack.len(), 2);
    }
}
