//! `chat-bench` (src/bin/chat-bench.rs, built only with the cargo feature `bench`): a load
//! generator that speaks the public protocol (protocol.md) to one or more running gateways
//! and measures what a client sees. Not in the server binary or its image.
//!
//! A run registers users and creates rooms over HTTP, opens the connections
//! (round-robin over gateways, rooms and users), subscribes them, then sends on a
//! clock (open loop: a send's latency counts from when it was *scheduled*, so a slow
//! server, or a bench that cannot keep up, shows as latency rather than as a lower rate).
//! Each body carries its scheduled time; every ack and delivery is recorded in HDR
//! histograms. Server processes given by `--pid` are sampled from /proc.
//!
//! - `cli`: the flags; `scenario`: presets and flags → [`scenario::Spec`], and each connection's plan.
//! - `client`: the HTTP set-up calls and one connection's life; `mixed`: the mixed
//!   scenario's sends (reactions, edits, replies) and per-kind matching.
//! - `stats`: counters and sharded histograms; `procs`: CPU and RSS sampling; `hops`: the
//!   servers' `/metrics` before and after (per-hop latencies, requests per message);
//!   `persist`: the PostgreSQL side of the `persist` scenario; `report`: JSON, summary
//!   table, `--compare`.

pub mod cli;
pub mod client;
pub mod hops;
pub mod mixed;
pub mod persist;
pub mod procs;
pub mod report;
pub mod scenario;
pub mod stats;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use cli::{BenchArgs, Scenario};
use client::{Account, Api, ConnPlan, Gateway, Shared, Times};
use report::{Connections, KindReport, Latency, Persist, Report};
use scenario::Spec;
use stats::{Counters, Kind, Recorder};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("WebSocket: {0}")]
    Ws(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("database: {0}")]
    Db(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a JSON report: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    if let Some(pair) = &args.compare {
        let (a, b) = match pair.as_slice() {
            [a, b] => (a, b),
            _ => return Err(BenchError::Setup("--compare takes two files".into())),
        };
        print!("{}", report::compare(&read_json(a)?, &read_json(b)?));
        return Ok(());
    }
    measure(&args).await.map(|_| ())
}

/// One run (not `--compare`): prints the summary, writes `--out`, returns the report.
pub async fn measure(args: &BenchArgs) -> Result<Report, BenchError> {
    let spec = Spec::from_args(args)?;
    if spec.scenario == Scenario::Persist {
        // Before anything is registered or sent: only a database of the bench's own.
        let Some(url) = &args.database_url else {
            return Err(BenchError::Setup(
                "the persist scenario needs --database-url, a database of its own \
                 (benches/cluster.sh creates one; DATABASE_URL is not read)"
                    .into(),
            ));
        };
        let mut db = persist::connect(url).await?;
        if persist::claim(&mut db).await? == persist::Claim::Marked {
            println!("database marked as the bench's own ({})", persist::MARKER);
        }
    }
    raise_fd_limit(spec.connections as u64 + 1024);
    let report = execute(&spec, args).await?;
    print!("{}", report.summary());
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&report).map_err(|e| BenchError::Json {
            path: path.display().to_string(),
            source: e,
        })?;
        std::fs::write(path, text).map_err(|e| BenchError::File {
            path: path.display().to_string(),
            source: e,
        })?;
        println!("report written to {}", path.display());
    }
    Ok(report)
}

fn read_json(path: &Path) -> Result<serde_json::Value, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::File {
        path: path.display().to_string(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| BenchError::Json {
        path: path.display().to_string(),
        source: e,
    })
}

/// Raises the open-file limit to `want` (as root also the hard limit); a refusal only
/// warns: the connections beyond the limit will fail and be counted.
fn raise_fd_limit(want: u64) {
    use rlimit::Resource;
    let Ok((soft, hard)) = rlimit::getrlimit(Resource::NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    if rlimit::setrlimit(Resource::NOFILE, want, want.max(hard)).is_ok() {
        return;
    }
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => {
            eprintln!("bench: open files limited to {got} (wanted {want}); raise the hard limit")
        }
        Ok(_) => {}
        Err(e) => eprintln!("bench: could not raise the open-file limit: {e}"),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Users, rooms and memberships over HTTP. Returns the accounts and the room ids.
async fn set_up(
    spec: &Spec,
    api: &Api,
    gws: &[Gateway],
    run_id: &str,
) -> Result<(Vec<Account>, Vec<String>), BenchError> {
    let t = Instant::now();
    let gw = |i: usize| &gws[i % gws.len()];
    let users: Vec<Account> = stream::iter(0..spec.users)
        .map(|u| async move { api.register(gw(u), &format!("b{run_id}u{u}")).await })
        .buffered(16)
        .try_collect()
        .await?;
    println!(
        "registered {} users in {:.1} s",
        users.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    // Room r is created by the user of connection r (or user 0), who is then a member.
    let creator = |r: usize| {
        if r < spec.connections {
            spec.user_of(r)
        } else {
            0
        }
    };
    let users_ref = &users;
    let rooms: Vec<String> = stream::iter(0..spec.rooms)
        .map(|r| async move {
            api.create_room(gw(r), &users_ref[creator(r)], &format!("b{run_id}r{r}"))
                .await
        })
        .buffered(16)
        .try_collect()
        .await?;
    let rooms_ref = &rooms;
    let joins: Vec<(usize, usize)> = spec
        .memberships()
        .into_iter()
        .filter(|&(u, r)| creator(r) != u)
        .collect();
    let n_joins = joins.len();
    stream::iter(joins)
        .map(|(u, r)| async move { api.join(gw(u), &users_ref[u], &rooms_ref[r]).await })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "created {} rooms and {} memberships in {:.1} s",
        rooms.len(),
        n_joins,
        t.elapsed().as_secs_f64()
    );
    Ok((users, rooms))
}

/// Starts connection `i`: opens it (at most `connect_concurrency` at a time), then runs it.
fn spawn_conn(
    i: usize,
    spec: &Spec,
    gws: &[Gateway],
    users: &[Account],
    rooms: &[String],
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
) -> tokio::task::JoinHandle<()> {
    let room = spec.room_of(i);
    let plan = ConnPlan {
        idx: i,
        gateway: gws[spec.gateway_of(i)].clone(),
        token: users[spec.user_of(i)].token.clone(),
        room: Some((room, rooms[room].clone())),
        subscribe: spec.subscribe,
        sends: spec.schedule_of(i),
        source: spec.source_of(i),
        mixed: (spec.scenario == Scenario::Mixed).then(|| spec.same_member_slot(i)),
    };
    let (shared, permits) = (shared.clone(), permits.clone());
    tokio::spawn(async move {
        let Ok(permit) = permits.acquire_owned().await else {
            return;
        };
        let t = Instant::now();
        let opened = client::open(&plan).await;
        drop(permit);
        let c = &shared.counters;
        match opened {
            Ok(ws) => {
                shared
                    .recorder
                    .record(i, Kind::Connect, t.elapsed().as_micros() as u64);
                if plan.subscribe {
                    if let Some((r, _)) = &plan.room {
                        shared.room_subs[*r].fetch_add(1, Relaxed);
                    }
                }
                c.opened.fetch_add(1, Relaxed);
                client::run(plan, ws, shared).await;
            }
            Err(e) => {
                c.error(&short(&e));
                c.connect_failed.fetch_add(1, Relaxed);
            }
        }
    })
}

/// Waits until `target` connections were opened or failed, printing progress.
async fn wait_open(shared: &Shared, target: u64, total: usize, since: Instant) {
    let c = &shared.counters;
    let mut last_print = Instant::now();
    loop {
        let (o, f) = (Counters::get(&c.opened), Counters::get(&c.connect_failed));
        if o + f >= target {
            return;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            println!(
                "[open {:>5.1}s] {o}/{total} open, {f} failed",
                since.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The latest RSS of every sampled process (the bench first).
fn last_rss(s: &procs::Sampled) -> Vec<u64> {
    s.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|x| x.samples.last().map_or(0, |y| y.rss_kib))
        .collect()
}

fn short(e: &BenchError) -> String {
    let s = e.to_string();
    s.chars().take(80).collect()
}

async fn execute(spec: &Spec, args: &BenchArgs) -> Result<Report, BenchError> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let load_start = loadavg();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut gws = Vec::new();
    for g in &spec.gateways {
        gws.push(Gateway::resolve(g).await?);
    }
    let api = Api::new()?;
    let (users, rooms) = set_up(spec, &api, &gws, &run_id).await?;

    let (times_tx, times_rx) = watch::channel(None::<Times>);
    let shared = Arc::new(Shared {
        base: Instant::now(),
        run_id: run_id.clone(),
        counters: Counters::default(),
        recorder: Recorder::new(16),
        room_subs: (0..spec.rooms).map(|_| AtomicU64::new(0)).collect(),
        times: times_rx,
        stop: CancellationToken::new(),
        body_bytes: spec.body_bytes,
    });
    let c = &shared.counters;
    // The first samples (RSS before any connection) come after the bench's own set-up.
    let stop_sampling = CancellationToken::new();
    let sampled = procs::start(&args.pids, &args.pid_trees, stop_sampling.clone());
    procs::sample_now(&sampled);

    // Open every connection; each task then lives until `stop`. Idle runs open them in
    // two halves and sample RSS in between: the second half's growth is the marginal
    // cost of a connection, unaffected by what the set-up left in the server's heap
    // (argon2 hashing of the registrations, for one).
    let open_t = Instant::now();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(spec.connections);
    let half = if spec.senders == 0 && spec.connections >= 2 {
        spec.connections / 2
    } else {
        spec.connections
    };
    let mut mid_rss: Option<Vec<u64>> = None;
    for phase in [0..half, half..spec.connections] {
        let target = phase.end as u64;
        for i in phase {
            tasks.push(spawn_conn(i, spec, &gws, &users, &rooms, &shared, &permits));
        }
        wait_open(&shared, target, spec.connections, open_t).await;
        if target < spec.connections as u64 {
            procs::sample_now(&sampled);
            mid_rss = Some(last_rss(&sampled));
        }
    }
    let open_s = open_t.elapsed().as_secs_f64();
    println!(
        "{} connections open, {} failed, in {open_s:.1} s",
        Counters::get(&c.opened),
        Counters::get(&c.connect_failed)
    );
    let opened_first_half = (half as u64).min(Counters::get(&c.opened));

    // persist: count the rows from before the first send on.
    let (want_tx, want_rx) = watch::channel(None::<i64>);
    let start = Instant::now() + Duration::from_millis(200);
    let rows_watch = match (&args.database_url, spec.scenario) {
        (Some(url), Scenario::Persist) => {
            let ids: Vec<uuid::Uuid> = rooms
                .iter()
                .map(|r| uuid::Uuid::parse_str(r))
                .collect::<Result<_, _>>()
                .map_err(|e| BenchError::Protocol(format!("a room id is not a UUID: {e}")))?;
            let db = persist::connect(url).await?;
            let timeout = Duration::from_secs_f64(args.persist_timeout.max(0.0));
            Some(tokio::spawn(persist::watch_rows(
                db, ids, start, want_rx, timeout,
            )))
        }
        _ => None,
    };

    // The schedule: warmup, then the measured window.
    let measure_from = start + Duration::from_secs_f64(spec.warmup_s);
    let send_end = measure_from + Duration::from_secs_f64(spec.duration_s);
    let times = Times {
        start,
        measure_from,
        send_end,
    };
    let _ = times_tx.send(Some(times));
    let progress_stop = CancellationToken::new();
    let progress = tokio::spawn(progress_lines(
        shared.clone(),
        sampled.clone(),
        start,
        progress_stop.clone(),
    ));
    // The servers' own metrics: every gateway's and each --metrics-url.
    let metrics_urls: Vec<String> = gws
        .iter()
        .map(|g| hops::metrics_url(&g.base))
        .chain(args.metrics_urls.iter().cloned())
        .collect();
    let scraper = reqwest::Client::new();
    tokio::time::sleep_until(measure_from.into()).await;
    procs::sample_now(&sampled);
    let machine_from = procs::machine_ticks();
    let metrics_before = if spec.senders > 0 {
        hops::scrape(&scraper, &metrics_urls).await
    } else {
        Vec::new()
    };
    tokio::time::sleep_until(send_end.into()).await;
    procs::sample_now(&sampled);
    let machine = machine_from
        .zip(procs::machine_ticks())
        .and_then(|(a, b)| procs::machine_pct(a, b));
    let window_end = Instant::now();

    // Drain: wait for the acks and deliveries still owed.
    if spec.senders > 0 {
        let deadline = Instant::now() + Duration::from_secs_f64(args.drain.max(0.0));
        while Instant::now() < deadline {
            let answered = Counters::get(&c.acked) + Counters::get(&c.send_errors);
            let dead = Counters::get(&c.closed_early) > 0;
            if answered >= Counters::get(&c.sent)
                && Counters::get(&c.delivered) >= Counters::get(&c.expected)
                || dead && answered >= Counters::get(&c.sent)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let last_ack_us = Counters::get(&c.last_ack_us);
    // After the drain: what the window's sends cost on their way, on every hop.
    let server = if spec.senders > 0 {
        let after = hops::scrape(&scraper, &metrics_urls).await;
        Some(hops::view(&metrics_urls, &metrics_before, &after))
    } else {
        None
    };

    // persist: PostgreSQL must hold what the gateways acked.
    let persist = match (&args.database_url, rows_watch) {
        (Some(url), Some(watching)) => {
            let acked = Counters::get(&c.acked);
            let _ = want_tx.send(Some(acked as i64));
            println!("waiting for PostgreSQL to hold {acked} messages …");
            let p = watching
                .await
                .map_err(|e| BenchError::Db(format!("row watcher: {e}")))??;
            Some(measure_persist(url, &rooms, acked, p, &shared, start, last_ack_us, args).await?)
        }
        _ => None,
    };

    progress_stop.cancel();
    let _ = progress.await;
    shared.stop.cancel();
    let stop_wait = tokio::time::timeout(Duration::from_secs(10), async {
        for t in &mut tasks {
            let _ = t.await;
        }
    })
    .await;
    if stop_wait.is_err() {
        for t in &tasks {
            t.abort();
        }
    }
    stop_sampling.cancel();

    let totals = shared.recorder.totals();
    let (bench, servers) = {
        let all = sampled.lock().unwrap_or_else(|p| p.into_inner());
        let mut reps: Vec<procs::ProcReport> = all
            .iter()
            .map(|s| s.report(measure_from, window_end))
            .collect();
        let bench = reps.remove(0);
        (bench, reps)
    };
    let opened = Counters::get(&c.opened);
    // RSS growth per connection: over the second half when there was one (see above),
    // else over all of them.
    let (rss_from, conns): (Vec<u64>, u64) = match &mid_rss {
        Some(mid) => (mid.clone(), opened.saturating_sub(opened_first_half)),
        None => (
            std::iter::once(&bench)
                .chain(&servers)
                .map(|p| p.rss_start_kib)
                .collect(),
            opened,
        ),
    };
    let growth = |i: usize, end: u64| end as i64 - rss_from.get(i).copied().unwrap_or(0) as i64;
    let per_conn = |g: i64| (conns > 0).then(|| g as f64 / conns as f64);
    let server_growth: i64 = servers
        .iter()
        .enumerate()
        .map(|(i, p)| growth(i + 1, p.rss_end_kib))
        .sum();
    let measured_s = spec.duration_s.max(1e-9);
    let expected = Counters::get(&c.expected);
    let delivered = Counters::get(&c.delivered);
    Ok(Report {
        version: 1,
        spec: spec.clone(),
        started_at,
        load_start,
        load_end: loadavg(),
        machine_busy_pct: machine.map(|m| m.0),
        machine_steal_pct: machine.map(|m| m.1),
        measured_s: spec.duration_s,
        connections: Connections {
            requested: spec.connections as u64,
            opened,
            failed: Counters::get(&c.connect_failed),
            closed_early: Counters::get(&c.closed_early),
            open_s,
            open: Latency::of(&totals.connect),
            server_rss_per_conn_kib: if servers.is_empty() {
                None
            } else {
                per_conn(server_growth)
            },
            bench_rss_per_conn_kib: per_conn(growth(0, bench.rss_end_kib)),
        },
        sent: Counters::get(&c.sent),
        acked: Counters::get(&c.acked),
        delivered,
        expected_deliveries: expected,
        missing_deliveries: expected.saturating_sub(delivered),
        out_of_order: Counters::get(&c.out_of_order),
        duplicates: Counters::get(&c.duplicates),
        send_errors: Counters::get(&c.send_errors),
        errors: c.errors(),
        kinds: if spec.scenario == Scenario::Mixed {
            kind_reports(c, &totals)
        } else {
            Default::default()
        },
        sent_per_s: Counters::get(&c.sent_measured) as f64 / measured_s,
        acked_per_s: Counters::get(&c.acked_measured) as f64 / measured_s,
        delivered_per_s: Counters::get(&c.delivered_measured) as f64 / measured_s,
        ack: Latency::of(&totals.ack),
        deliver: Latency::of(&totals.deliver),
        max_send_lag_ms: Counters::get(&c.max_send_lag_us) as f64 / 1000.0,
        send_lag: Latency::of(&totals.send_lag),
        bench,
        servers,
        persist,
        server,
    })
}

/// The mixed scenario's per-kind counts and latencies, by kind name.
fn kind_reports(
    c: &Counters,
    totals: &stats::Totals,
) -> std::collections::BTreeMap<String, KindReport> {
    mixed::SendKind::ALL
        .into_iter()
        .map(|kind| {
            let k = &c.kinds[kind.index()];
            let (expected, delivered) = (Counters::get(&k.expected), Counters::get(&k.delivered));
            let (ack, deliver) = totals
                .kinds
                .get(kind.index())
                .map_or((Latency::default(), Latency::default()), |(a, d)| {
                    (Latency::of(a), Latency::of(d))
                });
            let r = KindReport {
                sent: Counters::get(&k.sent),
                acked: Counters::get(&k.acked),
                delivered,
                expected_deliveries: expected,
                missing_deliveries: expected.saturating_sub(delivered),
                duplicates: Counters::get(&k.duplicates),
                out_of_order: Counters::get(&k.out_of_order),
                send_errors: Counters::get(&k.send_errors),
                errors: k.errors(),
                ack,
                deliver,
            };
            (kind.name().to_owned(), r)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn measure_persist(
    url: &str,
    rooms: &[String],
    acked: u64,
    p: persist::Progress,
    shared: &Shared,
    start: Instant,
    last_ack_us: u64,
    args: &BenchArgs,
) -> Result<Persist, BenchError> {
    let ids: Vec<uuid::Uuid> = rooms
        .iter()
        .map(|r| uuid::Uuid::parse_str(r))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Protocol(format!("a room id is not a UUID: {e}")))?;
    let mut db = persist::connect(url).await?;
    let produce_s = shared
        .base
        .checked_add(Duration::from_micros(last_ack_us))
        .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let first_row_s = p.first_row.map_or(f64::NAN, |d| d.as_secs_f64());
    let all_rows_s = p.all_rows.map_or(f64::NAN, |d| d.as_secs_f64());
    if p.all_rows.is_none() {
        eprintln!(
            "bench: PostgreSQL held {} of {acked} messages after {} s",
            p.samples.last().map_or(0, |s| s.1),
            args.persist_timeout
        );
    }
    let persist_rows_per_s = acked as f64 / (all_rows_s - first_row_s).max(1e-3);
    println!("timing the raw multi-row INSERT ceiling …");
    let (raw_rows, raw_s) = persist::raw_ceiling(&mut db, &ids, args.persist_chunk).await?;
    let raw_rows_per_s = raw_rows as f64 / raw_s.max(1e-9);
    let lag_after_produce_s = all_rows_s - produce_s;
    Ok(Persist {
        messages: acked,
        produce_s,
        first_row_s,
        all_rows_s,
        lag_after_produce_s,
        persist_rows_per_s,
        persist_peak_rows_per_s: persist::peak_rate(&p.samples, Duration::from_millis(500)),
        produce_bound: lag_after_produce_s < 0.5,
        raw_rows,
        raw_chunk: args.persist_chunk as u64,
        raw_s,
        raw_rows_per_s,
        ratio: persist_rows_per_s / raw_rows_per_s.max(1e-9),
    })
}

/// A line a second: counts so far, the last second's rates and p99s, CPU.
async fn progress_lines(
    shared: Arc<Shared>,
    sampled: procs::Sampled,
    start: Instant,
    stop: CancellationToken,
) {
    let c = &shared.counters;
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last_delivered = 0;
    let mut last_acked = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (ack, del) = shared.recorder.take_interval();
        let (acked, delivered) = (Counters::get(&c.acked), Counters::get(&c.delivered));
        let cpus: Vec<String> = sampled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| format!("{:.0}%", s.last_cpu()))
            .collect();
        let p99 = |h: &hdrhistogram::Histogram<u64>| {
            if h.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", stats::q_ms(h, 0.99))
            }
        };
        println!(
            "[{:>5.0}s] sent {} acked {} (+{}/s) delivered {} (+{}/s) errors {} open {} | p99 ms: ack {} deliver {} | cpu bench,pids: {}",
            start.elapsed().as_secs_f64(),
            Counters::get(&c.sent),
            acked,
            acked - last_acked,
            delivered,
            delivered - last_delivered,
            c.error_total(),
            Counters::get(&c.opened) - Counters::get(&c.closed_early),
            p99(&ack),
            p99(&del),
            cpus.join(" "),
        );
        last_acked = acked;
        last_delivered = delivered;
    }
}
