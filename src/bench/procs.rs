//! CPU and memory of server processes (`--pid`) and of the bench itself, sampled from
//! /proc once a second: CPU% from the utime+stime delta of /proc/PID/stat, RSS from VmRSS
//! in /proc/PID/status, and the time its threads spent runnable but waiting for a CPU from
//! each /proc/PID/task/TID/schedstat (the scheduler's `run_delay`), counted per thread
//! between samples so that a thread exiting does not take back what it waited (only its
//! last second's share is lost).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// /proc reports times in USER_HZ ticks, 100 per second on Linux's user-space ABI.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// utime + stime, in ticks.
    pub ticks: u64,
    pub rss_kib: u64,
    /// Running totals over the threads seen so far ([`Series::push`]): nanoseconds spent
    /// runnable but waiting for a CPU, and the times a thread was given a CPU (0 and 0
    /// where the kernel keeps no schedstat).
    pub wait_ns: u64,
    pub runs: u64,
}

/// utime + stime from the text of /proc/PID/stat. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields are counted from the
/// last ')'.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) 12.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// utime + stime + cutime + cstime (the process's own CPU time and that of its reaped
/// children) from the text of /proc/PID/stat.
pub fn parse_stat_ticks_with_children(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': utime, stime, cutime, cstime (fields 14–17) are indices 11–14.
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 4).then(|| f.iter().sum())
}

/// `run_delay` (ns waiting on a run queue) and `pcount` (times run) from the text of
/// /proc/PID/task/TID/schedstat: "on-CPU ns, run_delay ns, pcount".
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut f = text.split_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Each thread's [`parse_schedstat`], by thread id.
pub type Threads = HashMap<u32, (u64, u64)>;

/// Adds the threads of the process at `dir` (/proc/PID) to `into`.
fn threads_wait(dir: &str, into: &mut Threads) {
    let Ok(tasks) = std::fs::read_dir(format!("{dir}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(v) = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
        {
            into.insert(tid, v);
        }
    }
}

/// VmRSS in KiB from the text of /proc/PID/status.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `self` or a pid.
fn proc_dir(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    }
}

/// A sample of one process; its threads' schedstat go to `threads`.
pub fn sample(pid: Option<u32>, threads: &mut Threads) -> Option<Sample> {
    let dir = proc_dir(pid);
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    threads_wait(&dir, threads);
    Some(Sample {
        at: Instant::now(),
        ticks: parse_stat_ticks(&stat)?,
        rss_kib: parse_status_rss_kib(&status).unwrap_or(0),
        wait_ns: 0,
        runs: 0,
    })
}

/// A process and its descendants as one: the CPU time of each (reaped children's
/// included, so a backend that exits keeps counting through its parent) and the sum of
/// their RSS; the threads of each go to `threads`. None if the root is gone.
pub fn sample_tree(root: u32, threads: &mut Threads) -> Option<Sample> {
    let mut ticks = 0;
    let mut rss_kib = 0;
    let mut stack = vec![root];
    let mut seen = std::collections::HashSet::new();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        let dir = format!("/proc/{pid}");
        let Some(t) = std::fs::read_to_string(format!("{dir}/stat"))
            .ok()
            .and_then(|s| parse_stat_ticks_with_children(&s))
        else {
            if pid == root {
                return None;
            }
            continue;
        };
        ticks += t;
        rss_kib += std::fs::read_to_string(format!("{dir}/status"))
            .ok()
            .and_then(|s| parse_status_rss_kib(&s))
            .unwrap_or(0);
        threads_wait(&dir, threads);
        let Ok(tasks) = std::fs::read_dir(format!("{dir}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    Some(Sample {
        at: Instant::now(),
        ticks,
        rss_kib,
        wait_ns: 0,
        runs: 0,
    })
}

pub fn name(pid: Option<u32>) -> String {
    let dir = proc_dir(pid);
    let cmd = std::fs::read(format!("{dir}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmd
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    // "chat serve --role gateway --listen 127.0.0.1:8081 …" → keep role and listen.
    let mut out = words
        .first()
        .map(|w| w.rsplit('/').next().unwrap_or(w).to_owned())
        .unwrap_or_default();
    for key in ["--role", "--listen"] {
        if let Some(i) = words.iter().position(|w| w == key) {
            if let Some(v) = words.get(i + 1) {
                out.push(' ');
                out.push_str(v);
            }
        }
    }
    out
}

/// CPU% between two samples (100 = one core busy).
pub fn cpu_pct(a: &Sample, b: &Sample) -> f64 {
    let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    b.ticks.saturating_sub(a.ticks) as f64 / TICKS_PER_SEC / secs * 100.0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcReport {
    pub pid: u32,
    pub name: String,
    /// Average over the measured window.
    pub cpu_avg_pct: f64,
    /// Highest one-second value in the measured window.
    pub cpu_max_pct: f64,
    /// Before the bench opened its connections.
    pub rss_start_kib: u64,
    /// At the end of the measured window.
    pub rss_end_kib: u64,
    pub rss_max_kib: u64,
    /// Over the measured window, summed over its threads: milliseconds per second spent
    /// runnable but waiting for a CPU (1000 = one thread always waiting), and the average
    /// wait each time a thread was given a CPU. Absent from reports before they were kept.
    #[serde(default)]
    pub cpu_wait_ms_per_s: f64,
    #[serde(default)]
    pub cpu_wait_per_run_us: f64,
}

/// One sampled process: its samples so far.
pub struct Series {
    pub pid: Option<u32>,
    /// Sampled with its descendants ([`sample_tree`]).
    pub tree: bool,
    pub name: String,
    pub samples: Vec<Sample>,
    /// Every thread seen so far, with its values when last seen, and the running totals
    /// of what they waited and ran ([`Series::push`]).
    threads: Threads,
    wait_total: (u64, u64),
}

impl Series {
    pub fn new(pid: Option<u32>, tree: bool, name: String) -> Series {
        Series {
            pid,
            tree,
            name,
            samples: Vec::new(),
            threads: Threads::new(),
            wait_total: (0, 0),
        }
    }

    /// Adds a sample taken with `threads`: what each thread waited and ran since it was
    /// last seen (all of it for a thread not seen before) adds to the running totals,
    /// which the sample carries. A thread that exited takes nothing back with it; what it
    /// waited after its last sample is lost.
    pub fn push(&mut self, mut s: Sample, threads: Threads) {
        for (tid, &(w, r)) in &threads {
            let (pw, pr) = self.threads.get(tid).copied().unwrap_or((0, 0));
            // Lower than before: the id was reused by a new thread; count it from zero.
            let (dw, dr) = if w >= pw && r >= pr {
                (w - pw, r - pr)
            } else {
                (w, r)
            };
            self.wait_total.0 += dw;
            self.wait_total.1 += dr;
        }
        // Merged, never replaced: a thread missing from one sample (a tree walk racing a
        // fork, a read that failed) is not counted from its birth again when it is back.
        self.threads.extend(threads);
        (s.wait_ns, s.runs) = self.wait_total;
        self.samples.push(s);
    }

    /// The report over [from, to]: samples outside the window are ignored, except the
    /// first sample overall (RSS before the run).
    pub fn report(&self, from: Instant, to: Instant) -> ProcReport {
        let inside: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .collect();
        let mut r = ProcReport {
            pid: self.pid.unwrap_or_else(std::process::id),
            name: self.name.clone(),
            rss_start_kib: self.samples.first().map_or(0, |s| s.rss_kib),
            ..ProcReport::default()
        };
        if let (Some(a), Some(b)) = (inside.first(), inside.last()) {
            r.cpu_avg_pct = cpu_pct(a, b);
            r.rss_end_kib = b.rss_kib;
            let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
            let waited = b.wait_ns.saturating_sub(a.wait_ns) as f64;
            if secs > 0.0 {
                r.cpu_wait_ms_per_s = waited / 1e6 / secs;
            }
            r.cpu_wait_per_run_us = waited / 1e3 / (b.runs.saturating_sub(a.runs).max(1)) as f64;
        }
        r.cpu_max_pct = inside
            .windows(2)
            .map(|w| cpu_pct(w[0], w[1]))
            .fold(0.0, f64::max);
        r.rss_max_kib = inside.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        r
    }

    /// CPU% over the last second or so (for the progress line).
    pub fn last_cpu(&self) -> f64 {
        match self.samples.as_slice() {
            [.., a, b] => cpu_pct(a, b),
            _ => 0.0,
        }
    }
}

/// The sampled processes: index 0 is the bench itself, then the `--pid`s in order, then
/// the `--pid-tree`s.
pub type Sampled = Arc<Mutex<Vec<Series>>>;

pub fn start(pids: &[u32], trees: &[u32], stop: CancellationToken) -> Sampled {
    let mut all = vec![Series::new(
        None,
        false,
        "chat bench (this process)".to_owned(),
    )];
    all.extend(
        pids.iter()
            .map(|&p| Series::new(Some(p), false, name(Some(p)))),
    );
    all.extend(trees.iter().map(|&p| {
        Series::new(
            Some(p),
            true,
            format!("{} and its descendants", name(Some(p))),
        )
    }));
    let sampled = Arc::new(Mutex::new(all));
    let s = sampled.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            sample_now(&s);
        }
    });
    sampled
}

/// Takes one sample of every process now (also called at phase boundaries).
pub fn sample_now(s: &Sampled) {
    let mut all = s.lock().unwrap_or_else(|p| p.into_inner());
    for series in all.iter_mut() {
        let mut threads = Threads::new();
        let x = match (series.tree, series.pid) {
            (true, Some(root)) => sample_tree(root, &mut threads),
            _ => sample(series.pid, &mut threads),
        };
        if let Some(x) = x {
            series.push(x, threads);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "1234 (chat (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let status = "Name:\tchat\nVmPeak:\t  9 kB\nVmRSS:\t   51234 kB\n";
        assert_eq!(parse_status_rss_kib(status), Some(51234));
    }

    #[test]
    fn cpu_of_one_busy_core_is_100() {
        let t = Instant::now();
        let a = Sample {
            at: t,
            ticks: 1000,
            rss_kib: 1,
            wait_ns: 0,
            runs: 0,
        };
        let b = Sample {
            at: t + Duration::from_secs(2),
            ticks: 1200,
            rss_kib: 1,
            wait_ns: 0,
            runs: 0,
        };
        assert!((cpu_pct(&a, &b) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let mut threads = Threads::new();
        let s = sample(None, &mut threads).expect("/proc/self");
        assert!(s.rss_kib > 0);
        // This test's thread has been given a CPU at least once (where schedstat is kept).
        if std::path::Path::new("/proc/self/schedstat").exists() {
            assert!(threads.values().any(|&(_, runs)| runs > 0), "{threads:?}");
        }
    }

    #[test]
    fn schedstat_gives_the_run_queue_wait_and_the_runs() {
        assert_eq!(parse_schedstat("123456 7890 42\n"), Some((7890, 42)));
        assert_eq!(parse_schedstat("123456"), None);
        let t = Instant::now();
        let at = |secs| Sample {
            at: t + Duration::from_secs(secs),
            ticks: 0,
            rss_kib: 1,
            wait_ns: 0,
            runs: 0,
        };
        let ms = 1_000_000;
        let mut series = Series::new(Some(1), false, "x".into());
        // Thread 7 had waited a lot before the window, then exits in it: what it waited
        // in the window stays counted. Thread 9 starts in the window.
        series.push(at(0), Threads::from([(5, (ms, 10)), (7, (900 * ms, 50))]));
        series.push(
            at(1),
            Threads::from([(5, (101 * ms, 1_010)), (7, (1000 * ms, 1_050))]),
        );
        series.push(
            at(2),
            Threads::from([(5, (201 * ms, 2_010)), (9, (100 * ms, 1_000))]),
        );
        let r = series.report(t, t + Duration::from_secs(2));
        // 100 + 100 (thread 5) + 100 (thread 7) + 100 (thread 9) ms over 2 s, 4,000 runs.
        assert!((r.cpu_wait_ms_per_s - 200.0).abs() < 1e-9, "{r:?}");
        assert!((r.cpu_wait_per_run_us - 100.0).abs() < 1e-9, "{r:?}");
        // Thread 5 missing from one sample and back in the next: only its growth counts.
        series.push(at(3), Threads::from([(9, (200 * ms, 2_000))]));
        series.push(
            at(4),
            Threads::from([(5, (301 * ms, 3_010)), (9, (300 * ms, 3_000))]),
        );
        let r = series.report(t + Duration::from_secs(2), t + Duration::from_secs(4));
        // 100 (thread 5) + 200 (thread 9) ms over 2 s, 3,000 runs.
        assert!((r.cpu_wait_ms_per_s - 150.0).abs() < 1e-9, "{r:?}");
        assert!((r.cpu_wait_per_run_us - 100.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn a_tree_counts_reaped_children_and_live_descendants() {
        // utime 250, stime 50, cutime 7, cstime 3.
        let stat = "1234 (postgres) S 1 2 3 4 5 6 7 8 9 10 250 50 7 3 20 0 4 0";
        assert_eq!(parse_stat_ticks_with_children(stat), Some(310));
        assert_eq!(parse_stat_ticks_with_children("9 (x) S 1 2"), None);
        // This process with a live child: the walk reaches the child (its main thread's
        // id is its pid). RSS is not compared: other tests running in this process move
        // ours by more than a child's.
        let me = std::process::id();
        let alone = sample_tree(me, &mut Threads::new()).expect("this process");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let mut threads = Threads::new();
        let with_child = sample_tree(me, &mut threads).expect("this process");
        let child_id = child.id();
        let _ = child.kill();
        let _ = child.wait();
        assert!(alone.rss_kib > 0);
        if std::path::Path::new("/proc/self/schedstat").exists() {
            assert!(threads.contains_key(&child_id), "{threads:?}");
        }
        assert!(with_child.ticks >= alone.ticks);
        assert!(sample_tree(u32::MAX, &mut Threads::new()).is_none());
    }
}

/// The machine's CPU counters (the `cpu` line of /proc/stat, in ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    pub busy: u64,
    pub idle: u64,
    pub steal: u64,
}

/// Parses the first (`cpu`) line of /proc/stat: user nice system idle iowait irq softirq
/// steal …; idle and iowait count as idle, steal (time the hypervisor gave to others) apart.
pub fn parse_machine_ticks(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(MachineTicks {
        busy: get(0) + get(1) + get(2) + get(5) + get(6),
        idle: get(3) + get(4),
        steal: get(7),
    })
}

pub fn machine_ticks() -> Option<MachineTicks> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Busy and stolen share (%) of all the machine's CPU time between two readings.
pub fn machine_pct(a: MachineTicks, b: MachineTicks) -> Option<(f64, f64)> {
    let busy = b.busy.checked_sub(a.busy)? as f64;
    let idle = b.idle.checked_sub(a.idle)? as f64;
    let steal = b.steal.checked_sub(a.steal)? as f64;
    let all = busy + idle + steal;
    (all > 0.0).then(|| (100.0 * busy / all, 100.0 * steal / all))
}

#[cfg(test)]
mod machine_tests {
    use super::*;

    #[test]
    fn machine_line_is_split_into_busy_idle_and_steal() {
        let t = parse_machine_ticks("cpu  10 1 5 80 4 0 2 3 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(
            t,
            MachineTicks {
                busy: 18,
                idle: 84,
                steal: 3
            }
        );
        let later = MachineTicks {
            busy: 118,
            idle: 184,
            steal: 3,
        };
        assert_eq!(machine_pct(t, later), Some((50.0, 0.0)));
        assert!(parse_machine_ticks("intr 1 2").is_none());
    }
}
