//! The servers' own view of a run: `/metrics` of every gateway and of every
//! `--metrics-url` (the consumers'), read when the measured window starts and again after
//! the drain. From the differences: each hop's p50 and p99 (`chat_hop_seconds`, and the
//! end-to-end `chat_send_to_deliver_seconds`), and the Kafka and Redis requests per
//! message made durable (`chat_kafka_requests_total`, `chat_redis_requests_total` over
//! `chat_messages_sent_total`).
//!
//! A quantile of a histogram's bucket deltas is interpolated linearly within its bucket
//! (as Prometheus' `histogram_quantile` does): it is exact only to the bucket's width, and
//! one in the last bucket (above its largest bound) reads as that bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One scrape: every sample, by its series (name and sorted labels).
pub type Samples = BTreeMap<Series, f64>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl Series {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus' text format (what `/metrics` serves): comments and malformed lines
/// are skipped.
pub fn parse(text: &str) -> Samples {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<(Series, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    labels.sort();
    Some((Series { name, labels }, value))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// `after` − `before`, series by series (a series missing before counts from 0).
pub fn delta(before: &Samples, after: &Samples) -> Samples {
    after
        .iter()
        .map(|(s, v)| (s.clone(), v - before.get(s).copied().unwrap_or(0.0)))
        .collect()
}

/// Adds `b` into `a` (the same series of several processes).
pub fn add(a: &mut Samples, b: &Samples) {
    for (s, v) in b {
        *a.entry(s.clone()).or_insert(0.0) += v;
    }
}

/// The cumulative buckets `(le, count)` of histogram `name` whose label `key` is `value`
/// (None: the histogram has no such label), ascending by `le`.
pub fn buckets(samples: &Samples, name: &str, key: Option<(&str, &str)>) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(s, _)| s.name == bucket)
        .filter(|(s, _)| key.is_none_or(|(k, v)| s.label(k) == Some(v)))
        .filter_map(|(s, v)| Some((parse_value(s.label("le")?)?, *v)))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile (0 < q ≤ 1) of cumulative buckets `(le, count)` ascending by `le`,
/// the last one `+Inf`: the bucket holding the rank, interpolated linearly between its
/// lower bound (the previous `le`, or 0) and its `le`; in the `+Inf` bucket, the largest
/// finite bound. None when the buckets hold nothing.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, cumulative) in buckets {
        if cumulative >= rank && cumulative > below {
            if le.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (le - lower) * (rank - below) / (cumulative - below));
        }
        if le.is_finite() {
            lower = le;
        }
        below = cumulative;
    }
    Some(lower)
}

/// One hop's figures over the window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HopLatency {
    pub name: String,
    /// Observations (over every process read).
    pub count: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The servers' view of a run (the bench's JSON report: `server`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerView {
    /// The `/metrics` read before and after.
    pub scraped: Vec<String>,
    /// Those that could not be read (left out of every figure).
    pub failed: Vec<String>,
    /// Messages made durable between the two reads (`chat_messages_sent_total`).
    pub messages: f64,
    /// In the order of the path, then `send_to_deliver` (claim done → the pump; coarser
    /// buckets).
    pub hops: Vec<HopLatency>,
    /// Requests per message, by kind (`produce`, `fetch_relay`, …) and `total`.
    pub kafka_per_message: BTreeMap<String, f64>,
    /// Round trips per message, by purpose (`claim`, `settle`, `publish`, …) and `total`.
    pub redis_per_message: BTreeMap<String, f64>,
}

pub const HOPS: [&str; 7] = [
    "claim",
    "produce",
    "ack_write",
    "log_to_relay",
    "relay_publish",
    "bus",
    "fanout",
];

impl ServerView {
    /// The figures of `d`, the summed differences of every process read.
    pub fn of(d: &Samples) -> ServerView {
        let hop = |name: &str, b: Vec<(f64, f64)>| HopLatency {
            name: name.to_owned(),
            count: b.last().map_or(0.0, |x| x.1),
            p50_ms: quantile(&b, 0.50).map(|s| s * 1e3),
            p99_ms: quantile(&b, 0.99).map(|s| s * 1e3),
        };
        let mut hops: Vec<HopLatency> = HOPS
            .iter()
            .map(|h| hop(h, buckets(d, "chat_hop_seconds", Some(("hop", h)))))
            .collect();
        hops.push(hop(
            "send_to_deliver",
            buckets(d, "chat_send_to_deliver_seconds", None),
        ));
        let messages: f64 = d
            .iter()
            .filter(|(s, _)| s.name == "chat_messages_sent_total")
            .map(|(_, v)| v)
            .sum();
        let per = |n: f64| if messages > 0.0 { n / messages } else { 0.0 };
        let mut kafka = BTreeMap::new();
        let mut redis = BTreeMap::new();
        for (s, v) in d {
            let (map, key) = match s.name.as_str() {
                "chat_kafka_requests_total" => {
                    let api = s.label("api").unwrap_or("other");
                    let key = match s.label("reader") {
                        Some(r) => format!("{api}_{r}"),
                        None => api.to_owned(),
                    };
                    (&mut kafka, key)
                }
                "chat_redis_requests_total" => {
                    (&mut redis, s.label("purpose").unwrap_or("other").to_owned())
                }
                _ => continue,
            };
            *map.entry(key).or_insert(0.0) += v;
            *map.entry("total".to_owned()).or_insert(0.0) += v;
        }
        let per_message = |m: BTreeMap<String, f64>| -> BTreeMap<String, f64> {
            m.into_iter().map(|(k, v)| (k, per(v))).collect()
        };
        ServerView {
            scraped: Vec::new(),
            failed: Vec::new(),
            messages,
            hops,
            kafka_per_message: per_message(kafka),
            redis_per_message: per_message(redis),
        }
    }

    /// The summary's lines.
    pub fn summary(&self, out: &mut String) {
        let _ =
            writeln!(
            out,
            "server hops ({} /metrics read{}; p50/p99 from bucket deltas, linear within a bucket):",
            self.scraped.len(),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(", {} unreadable: {}", self.failed.len(), self.failed.join(" "))
            }
        );
        let _ = writeln!(out, "  hop                count    p50 ms    p99 ms");
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.2}"));
        for h in &self.hops {
            let _ = writeln!(
                out,
                "  {:<15} {:>8.0} {:>9} {:>9}",
                h.name,
                h.count,
                ms(h.p50_ms),
                ms(h.p99_ms)
            );
        }
        let line = |m: &BTreeMap<String, f64>| {
            let counted: Vec<String> = m
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect();
            if counted.is_empty() {
                "none counted (the embedded mode uses neither)".to_owned()
            } else {
                counted.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "requests per message ({:.0} messages made durable):\n  kafka: {}\n  redis: {}",
            self.messages,
            line(&self.kafka_per_message),
            line(&self.redis_per_message)
        );
    }
}

/// The `/metrics` URL of a gateway's base URL.
pub fn metrics_url(base: &str) -> String {
    format!("{}/metrics", base.trim_end_matches('/'))
}

/// Reads every URL (concurrently); None for one that could not be read.
pub async fn scrape(http: &reqwest::Client, urls: &[String]) -> Vec<Option<Samples>> {
    let reads = urls.iter().map(|u| async move {
        let r = http
            .get(u)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match r {
            Ok(r) => match r.text().await {
                Ok(t) => Some(parse(&t)),
                Err(e) => {
                    eprintln!("bench: {u}: {e}");
                    None
                }
            },
            Err(e) => {
                eprintln!("bench: {u}: {e}");
                None
            }
        }
    });
    futures_util::future::join_all(reads).await
}

/// The view from the reads before and after (by URL, in the order of `urls`).
pub fn view(urls: &[String], before: &[Option<Samples>], after: &[Option<Samples>]) -> ServerView {
    let mut sum = Samples::new();
    let (mut scraped, mut failed) = (Vec::new(), Vec::new());
    for (i, url) in urls.iter().enumerate() {
        match (before.get(i), after.get(i)) {
            (Some(Some(b)), Some(Some(a))) => {
                add(&mut sum, &delta(b, a));
                scraped.push(url.clone());
            }
            _ => failed.push(url.clone()),
        }
    }
    let mut v = ServerView::of(&sum);
    v.scraped = scraped;
    v.failed = failed;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP chat_hop_seconds x
# TYPE chat_hop_seconds histogram
chat_hop_seconds_bucket{hop="bus",le="0.001"} 10
chat_hop_seconds_bucket{hop="bus",le="0.002"} 20
chat_hop_seconds_bucket{hop="bus",le="+Inf"} 20
chat_hop_seconds_sum{hop="bus"} 0.03
chat_hop_seconds_count{hop="bus"} 20
chat_messages_sent_total 10
chat_kafka_requests_total{api="produce"} 5
chat_kafka_requests_total{api="fetch",reader="relay"} 8
chat_redis_requests_total{purpose="claim"} 10
odd_metric{a="x\"y\\z",b="2"} 7 1700000000000
broken{a="x} 1
"#;

    fn s(name: &str, labels: &[(&str, &str)]) -> Series {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        Series {
            name: name.to_owned(),
            labels,
        }
    }

    #[test]
    fn parses_names_labels_escapes_and_values() {
        let p = parse(TEXT);
        assert_eq!(p.get(&s("chat_messages_sent_total", &[])), Some(&10.0));
        assert_eq!(
            p.get(&s(
                "chat_hop_seconds_bucket",
                &[("hop", "bus"), ("le", "+Inf")]
            )),
            Some(&20.0)
        );
        // Escaped quote and backslash; a timestamp after the value is ignored.
        assert_eq!(
            p.get(&s("odd_metric", &[("a", "x\"y\\z"), ("b", "2")])),
            Some(&7.0)
        );
        // An unterminated label value is skipped, comments too.
        assert!(!p
            .keys()
            .any(|k| k.name == "broken" || k.name.starts_with('#')));
        assert_eq!(
            buckets(&p, "chat_hop_seconds", Some(("hop", "bus"))),
            vec![(0.001, 10.0), (0.002, 20.0), (f64::INFINITY, 20.0)]
        );
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let b = [(0.001, 10.0), (0.002, 20.0), (f64::INFINITY, 20.0)];
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-12;
        assert!(close(quantile(&b, 0.5), 0.001));
        assert!(close(quantile(&b, 0.75), 0.0015));
        assert!(close(quantile(&b, 0.25), 0.0005));
        assert!(close(quantile(&b, 1.0), 0.002));
        // Beyond the largest bound: that bound.
        let tail = [(0.001, 1.0), (f64::INFINITY, 100.0)];
        assert!(close(quantile(&tail, 0.99), 0.001));
        // Empty buckets before the rank are skipped.
        let gap = [
            (0.001, 0.0),
            (0.002, 0.0),
            (0.005, 4.0),
            (f64::INFINITY, 4.0),
        ];
        assert!(close(quantile(&gap, 0.5), 0.0035));
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_view_is_the_sum_of_each_process_difference() {
        let before = parse(TEXT);
        let after = parse(
            &TEXT
                .replace("\"0.001\"} 10", "\"0.001\"} 30")
                .replace("\"0.002\"} 20", "\"0.002\"} 60")
                .replace("\"+Inf\"} 20", "\"+Inf\"} 60")
                .replace("chat_messages_sent_total 10", "chat_messages_sent_total 30")
                .replace("{api=\"produce\"} 5", "{api=\"produce\"} 15")
                .replace("reader=\"relay\"} 8", "reader=\"relay\"} 28")
                .replace("{purpose=\"claim\"} 10", "{purpose=\"claim\"} 30"),
        );
        let urls = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        // Two processes alike; the third could not be read after.
        let v = view(
            &urls,
            &[Some(before.clone()), Some(before.clone()), Some(before)],
            &[Some(after.clone()), Some(after), None],
        );
        assert_eq!(v.scraped, ["a", "b"]);
        assert_eq!(v.failed, ["c"]);
        assert_eq!(v.messages, 40.0);
        let bus = v.hops.iter().find(|h| h.name == "bus").unwrap();
        // Deltas per process: 20 in (0, 1 ms], 20 in (1, 2 ms]; twice.
        assert_eq!(bus.count, 80.0);
        assert!((bus.p50_ms.unwrap() - 1.0).abs() < 1e-9, "{bus:?}");
        assert!((bus.p99_ms.unwrap() - 1.98).abs() < 1e-9, "{bus:?}");
        let claim = v.hops.iter().find(|h| h.name == "claim").unwrap();
        assert_eq!((claim.count, claim.p50_ms), (0.0, None));
        assert_eq!(v.kafka_per_message["produce"], 0.5);
        assert_eq!(v.kafka_per_message["fetch_relay"], 1.0);
        assert_eq!(v.kafka_per_message["total"], 1.5);
        assert_eq!(v.redis_per_message["claim"], 1.0);
        let mut out = String::new();
        v.summary(&mut out);
        assert!(out.contains("linear within a bucket"), "{out}");
        assert!(
            out.contains("kafka: fetch_relay 1.00, produce 0.50, total 1.50"),
            "{out}"
        );
    }

    #[test]
    fn a_gateway_metrics_url() {
        assert_eq!(metrics_url("http://h:1/"), "http://h:1/metrics");
        assert_eq!(metrics_url("http://h:1"), "http://h:1/metrics");
    }
}
