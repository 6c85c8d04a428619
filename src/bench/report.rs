//! The result of a run: the JSON written by `--out`, the summary table, and
//! `--compare a.json b.json` (every number of both side by side, with B/A).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::hops::ServerView;
use super::procs::ProcReport;
use super::scenario::Spec;
use super::stats::q_ms;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_ms: q_ms(h, 0.50),
            p90_ms: q_ms(h, 0.90),
            p99_ms: q_ms(h, 0.99),
            p999_ms: q_ms(h, 0.999),
            max_ms: h.max() as f64 / 1000.0,
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Connections {
    pub requested: u64,
    pub opened: u64,
    pub failed: u64,
    /// Closed by the server (or broken) before the bench stopped.
    pub closed_early: u64,
    /// Seconds to open them all (TCP, WebSocket handshake, hello, subscribe).
    pub open_s: f64,
    /// One connection's open time.
    pub open: Latency,
    /// Server RSS growth per connection: the sum of the --pid processes' VmRSS at the end
    /// of the window minus before opening, divided by the connections. Runs without
    /// senders (idle connections) count only the second half of the connections, opened
    /// after a sample: the marginal cost, free of what the set-up left in the heap.
    pub server_rss_per_conn_kib: Option<f64>,
    pub bench_rss_per_conn_kib: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Persist {
    /// Messages acked by the gateways (so in Kafka) that PostgreSQL must hold.
    pub messages: u64,
    /// First send → last ack.
    pub produce_s: f64,
    /// First send → the first of them seen in `messages`.
    pub first_row_s: f64,
    /// First send → all of them in `messages`.
    pub all_rows_s: f64,
    /// Last ack → all rows: how far the consumer was behind when producing stopped.
    pub lag_after_produce_s: f64,
    /// messages / (all rows − first row): the consumer's rate while it had work.
    pub persist_rows_per_s: f64,
    /// Highest rate between two polls at least 0.5 s apart.
    pub persist_peak_rows_per_s: f64,
    /// True when the consumer kept up with the producers (then the rate above is the
    /// producers', a lower bound of the consumer's).
    pub produce_bound: bool,
    /// The same rows as raw multi-row INSERTs into a scratch table with the same
    /// indexes and constraints.
    pub raw_rows: u64,
    pub raw_chunk: u64,
    pub raw_s: f64,
    pub raw_rows_per_s: f64,
    /// persist_rows_per_s / raw_rows_per_s.
    pub ratio: f64,
}

/// One kind of send in the mixed scenario (messages, reactions, edits, replies).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KindReport {
    pub sent: u64,
    pub acked: u64,
    /// Deliveries of this kind's frames (`message`, or `event` for edits and reactions) to
    /// the room's subscribed connections, each counted once per connection.
    pub delivered: u64,
    /// For each ack, the subscribers of its room.
    pub expected_deliveries: u64,
    pub missing_deliveries: u64,
    /// A frame a connection had already received (same position), received again.
    pub duplicates: u64,
    pub out_of_order: u64,
    /// `error` frames answering this kind's sends, and their codes.
    pub send_errors: u64,
    pub errors: BTreeMap<String, u64>,
    pub ack: Latency,
    pub deliver: Latency,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub version: u32,
    pub spec: Spec,
    pub started_at: String,
    /// /proc/loadavg at the start and at the end.
    pub load_start: String,
    pub load_end: String,
    /// The whole machine over the measured window: busy share of all cores (100 = every
    /// core busy), and the share the hypervisor gave to other guests (steal). A run near
    /// 100% busy measures the machine's limit, not the server's; steal makes runs noisy.
    #[serde(default)]
    pub machine_busy_pct: Option<f64>,
    #[serde(default)]
    pub machine_steal_pct: Option<f64>,
    pub measured_s: f64,
    pub connections: Connections,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub missing_deliveries: u64,
    pub out_of_order: u64,
    /// Frames delivered again to a connection that had them (counted in the mixed
    /// scenario, which tracks positions; not counted as deliveries).
    #[serde(default)]
    pub duplicates: u64,
    pub send_errors: u64,
    pub errors: BTreeMap<String, u64>,
    /// The mixed scenario: the same counts and latencies per kind of send, by name
    /// (`messages`, `reactions`, `edits`, `replies`). Empty for the other scenarios.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<String, KindReport>,
    /// In the measured window.
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub delivered_per_s: f64,
    /// Send (scheduled time) → ack on the sending connection.
    pub ack: Latency,
    /// Send (scheduled time) → message at each subscribed connection.
    pub deliver: Latency,
    /// Most a send was written after its scheduled time: large means the bench or the
    /// socket could not keep up, and the latencies include it.
    pub max_send_lag_ms: f64,
    /// How late sends were written after their scheduled time (the generator's share of
    /// the latencies above: its timer, waiting for a CPU, and a connection's previous
    /// send still being written). Absent in older reports.
    #[serde(default)]
    pub send_lag: Latency,
    pub bench: ProcReport,
    pub servers: Vec<ProcReport>,
    pub persist: Option<Persist>,
    /// The servers' view (their `/metrics` before and after the window): per-hop
    /// latencies and requests per message. Runs with senders only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerView>,
}

fn row(out: &mut String, name: &str, l: &Latency) {
    let _ = writeln!(
        out,
        "  {name:<8} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    );
}

impl Report {
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let s = &self.spec;
        let _ = writeln!(
            o,
            "\n== chat bench {:?}: {} connections over {} gateway(s), {} rooms, {} senders, {} users, rate {}/s, {} s measured after {} s warmup",
            s.scenario, s.connections, s.gateways.len(), s.rooms, s.senders, s.users, s.rate, s.duration_s, s.warmup_s
        );
        let _ = writeln!(
            o,
            "   load average: start {} | end {}",
            self.load_start, self.load_end
        );
        if let (Some(busy), Some(steal)) = (self.machine_busy_pct, self.machine_steal_pct) {
            let _ = writeln!(
                o,
                "   machine over the measured window: {busy:.0}% of all cores busy, {steal:.1}% stolen by the hypervisor"
            );
        }
        let c = &self.connections;
        let _ = writeln!(
            o,
            "connections: {} opened, {} failed, {} closed early; opened in {:.1} s (one: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
            c.opened, c.failed, c.closed_early, c.open_s, c.open.p50_ms, c.open.p99_ms, c.open.max_ms
        );
        if let Some(k) = c.server_rss_per_conn_kib {
            let _ = writeln!(
                o,
                "  server RSS per connection: {k:.2} KiB (sum over --pid){}",
                if s.senders == 0 {
                    "; marginal, over the second half"
                } else {
                    ""
                }
            );
        }
        if let Some(k) = c.bench_rss_per_conn_kib {
            let _ = writeln!(o, "  bench RSS per connection:  {k:.2} KiB");
        }
        if s.senders > 0 {
            let _ = writeln!(
                o,
                "{}: sent {} acked {} delivered {} (expected {}, missing {}), out of order {}, send errors {}",
                if self.kinds.is_empty() { "messages" } else { "all kinds" },
                self.sent, self.acked, self.delivered, self.expected_deliveries,
                self.missing_deliveries, self.out_of_order, self.send_errors
            );
            let _ = writeln!(
                o,
                "rates (measured window): sent {:.0}/s acked {:.0}/s delivered {:.0}/s; max send lag {:.1} ms",
                self.sent_per_s, self.acked_per_s, self.delivered_per_s, self.max_send_lag_ms
            );
            let _ = writeln!(
                o,
                "  latency      count    p50 ms    p90 ms    p99 ms  p99.9 ms    max ms   mean ms"
            );
            row(&mut o, "ack", &self.ack);
            row(&mut o, "deliver", &self.deliver);
            if self.send_lag.count > 0 {
                row(&mut o, "send lag", &self.send_lag);
            }
        }
        if let Some(server) = &self.server {
            server.summary(&mut o);
        }
        if !self.kinds.is_empty() {
            let _ = writeln!(
                o,
                "per kind (duplicates in all: {}):\n  kind          sent    acked delivered  missing  dup  ooo  errors  ack p50  ack p99  dlv p50  dlv p99",
                self.duplicates
            );
            // In the order of the mix, then any other name.
            let order = ["messages", "reactions", "edits", "replies"];
            let mut names: Vec<&String> = self.kinds.keys().collect();
            names.sort_by_key(|n| (order.iter().position(|o| o == n).unwrap_or(order.len()), *n));
            for name in names {
                let k = &self.kinds[name];
                let _ = writeln!(
                    o,
                    "  {name:<10} {:>7} {:>8} {:>9} {:>8} {:>4} {:>4} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                    k.sent,
                    k.acked,
                    k.delivered,
                    k.missing_deliveries,
                    k.duplicates,
                    k.out_of_order,
                    k.send_errors,
                    k.ack.p50_ms,
                    k.ack.p99_ms,
                    k.deliver.p50_ms,
                    k.deliver.p99_ms
                );
                for (code, n) in &k.errors {
                    let _ = writeln!(o, "    {name} error {code}: {n}");
                }
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(o, "errors by code:");
            for (k, v) in &self.errors {
                let _ = writeln!(o, "  {k}: {v}");
            }
        }
        let _ = writeln!(
            o,
            "  process                                       pid   CPU avg   CPU max  RSS start    RSS end    RSS max  CPU wait ms/s  per run µs"
        );
        for p in std::iter::once(&self.bench).chain(&self.servers) {
            let _ = writeln!(
                o,
                "  {:<42} {:>6} {:>8.1}% {:>8.1}% {:>7} MiB {:>6} MiB {:>6} MiB {:>14.0} {:>11.0}",
                p.name.chars().take(42).collect::<String>(),
                p.pid,
                p.cpu_avg_pct,
                p.cpu_max_pct,
                p.rss_start_kib / 1024,
                p.rss_end_kib / 1024,
                p.rss_max_kib / 1024,
                p.cpu_wait_ms_per_s,
                p.cpu_wait_per_run_us
            );
        }
        if let Some(p) = &self.persist {
            let _ = writeln!(
                o,
                "persist: {} messages; produced in {:.2} s; first row after {:.2} s, all after {:.2} s ({:.2} s after the last ack)",
                p.messages, p.produce_s, p.first_row_s, p.all_rows_s, p.lag_after_produce_s
            );
            let _ = writeln!(
                o,
                "  consumer → PostgreSQL: {:.0} rows/s (peak {:.0}){}",
                p.persist_rows_per_s,
                p.persist_peak_rows_per_s,
                if p.produce_bound {
                    "; it kept up with the producers, so this is a lower bound"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                o,
                "  raw multi-row INSERT ceiling: {} rows in {:.3} s, chunks of {} = {:.0} rows/s",
                p.raw_rows, p.raw_s, p.raw_chunk, p.raw_rows_per_s
            );
            let _ = writeln!(o, "  ratio consumer / ceiling: {:.2}", p.ratio);
        }
        o
    }
}

/// Every number in a JSON value, by its dotted path (arrays by index, or by `name` when
/// their objects have one).
pub fn flatten(v: &Value) -> BTreeMap<String, f64> {
    fn walk(v: &Value, path: &str, out: &mut BTreeMap<String, f64>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_owned()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(path.to_owned(), f);
                }
            }
            Value::Bool(b) => {
                out.insert(path.to_owned(), if *b { 1.0 } else { 0.0 });
            }
            Value::Object(m) => {
                for (k, x) in m {
                    walk(x, &join(k), out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let key = match x.get("name").and_then(Value::as_str) {
                        Some(n) => format!("[{i}:{n}]"),
                        None => format!("[{i}]"),
                    };
                    walk(x, &format!("{path}{key}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(v, "", &mut out);
    out
}

/// B/A, or None when A is 0 (and B is not).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    if a == 0.0 {
        (b == 0.0).then_some(1.0)
    } else {
        Some(b / a)
    }
}

/// The side-by-side table of two reports; keys only one of them has are listed too.
pub fn compare(a: &Value, b: &Value) -> String {
    let (fa, fb) = (flatten(a), flatten(b));
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut o = String::new();
    let _ = writeln!(o, "{:<48} {:>14} {:>14} {:>8}", "metric", "A", "B", "B/A");
    for k in keys {
        let cell = |v: Option<&f64>| v.map_or("-".to_owned(), |x| format!("{x:.3}"));
        let r = match (fa.get(k), fb.get(k)) {
            (Some(x), Some(y)) => ratio(*x, *y).map_or("inf".to_owned(), |r| format!("{r:.3}")),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            o,
            "{k:<48} {:>14} {:>14} {r:>8}",
            cell(fa.get(k)),
            cell(fb.get(k))
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::histogram;
    use serde_json::json;

    #[test]
    fn latency_summary_of_a_known_distribution() {
        let mut h = histogram();
        for us in 1..=10_000u64 {
            h.record(us * 10).unwrap(); // 10 µs .. 100 ms, uniform
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 10_000);
        assert!((l.p50_ms - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.p999_ms - 99.9).abs() < 0.1, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 0.1, "{l:?}");
        assert!((l.mean_ms - 50.0).abs() < 0.1, "{l:?}");
        assert_eq!(Latency::of(&histogram()), Latency::default());
    }

    #[test]
    fn compare_lists_every_number_with_its_ratio() {
        let a = json!({"ack": {"p99_ms": 4.0}, "rate": 0, "servers": [{"name": "gw", "cpu": 50.0}], "x": "s"});
        let b = json!({"ack": {"p99_ms": 2.0}, "rate": 0, "servers": [{"name": "gw", "cpu": 75.0}], "y": 1});
        let f = flatten(&a);
        assert_eq!(f.get("ack.p99_ms"), Some(&4.0));
        assert_eq!(f.get("servers[0:gw].cpu"), Some(&50.0));
        assert!(!f.contains_key("x"));
        let t = compare(&a, &b);
        let line = |k: &str| t.lines().find(|l| l.starts_with(k)).unwrap().to_owned();
        assert!(line("ack.p99_ms").ends_with("0.500"), "{t}");
        assert!(line("servers[0:gw].cpu").ends_with("1.500"), "{t}");
        assert!(line("rate").ends_with("1.000"), "{t}");
        assert!(line("y").ends_with("-"), "{t}");
        assert_eq!(ratio(0.0, 3.0), None);
    }

    #[test]
    fn the_summary_lists_each_kind_in_the_order_of_the_mix() {
        let mut r = Report {
            sent: 20,
            ..Report::default()
        };
        r.spec.senders = 1;
        assert!(!r.summary().contains("per kind"));
        let kind = |sent: u64, p99: f64| KindReport {
            sent,
            acked: sent,
            ack: Latency {
                count: sent,
                p99_ms: p99,
                ..Latency::default()
            },
            ..KindReport::default()
        };
        r.kinds.insert("replies".into(), kind(1, 4.0));
        r.kinds.insert("messages".into(), kind(16, 1.5));
        r.kinds.insert("edits".into(), kind(1, 3.0));
        let mut reactions = kind(2, 2.0);
        reactions.send_errors = 1;
        reactions.errors.insert("too_many_reactions".into(), 1);
        r.kinds.insert("reactions".into(), reactions);
        let s = r.summary();
        let at = |k: &str| {
            s.find(&format!("\n  {k} "))
                .unwrap_or_else(|| panic!("{k}: {s}"))
        };
        assert!(
            at("messages") < at("reactions")
                && at("reactions") < at("edits")
                && at("edits") < at("replies"),
            "{s}"
        );
        assert!(s.contains("reactions error too_many_reactions: 1"), "{s}");
        // Per kind in the JSON and in --compare's flat names; absent when empty.
        let v = serde_json::to_value(&r).unwrap();
        assert!(flatten(&v).contains_key("kinds.edits.ack.p99_ms"));
        let plain = serde_json::to_value(Report::default()).unwrap();
        assert!(plain.get("kinds").is_none());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_report_round_trips_through_json() {
        let r = Report {
            version: 1,
            sent: 10,
            ..Report::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_report_from_before_the_send_lag_still_reads() {
        let mut r = Report::default();
        r.send_lag.count = 3;
        let mut v = serde_json::to_value(&r).unwrap();
        assert!(v.as_object_mut().unwrap().remove("send_lag").is_some());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.send_lag, Latency::default());
        assert!(!back.summary().contains("send lag"));
    }
}
