//! Wiring: build the three seams from the config, start the roles, run the drain.
//! Roles are wiring only: `gateway` and `consumer` never import each other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App};
use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::bus::{Bus, BusNotice, LocalBus, RedisBus};
use crate::cli::Role;
use crate::config::{Backend, Config, Services, SECRET_FILE};
use crate::consumer::Consumer;
use crate::coord::{Coord, LocalCoord, RedisCoord, Timings};
use crate::gateway::{self, Gateway, GatewayParts};
use crate::http::{self, guard::Guard, ops::Readiness};
use crate::log::kafka::KafkaSettings;
use crate::log::{KafkaLog, Log};
use crate::shutdown::{Deadline, Shutdown};
use crate::store::{PgStore, SqliteLog, SqliteStore, Store};
use crate::telemetry;

/// A running process: its bound address and the handle that stops it.
pub struct Running {
    pub addr: SocketAddr,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Drains and stops, like SIGTERM.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.done.await.context("app task")?
    }

    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("app task")?
    }
}

/// The four seams, for one mode.
struct Seams {
    store: Arc<dyn Store>,
    log: Arc<dyn Log>,
    bus: Arc<dyn Bus>,
    notices: mpsc::UnboundedReceiver<BusNotice>,
    coord: Arc<dyn Coord>,
    /// Whether persist workers copy the log into the store (not when the store is the log).
    persist: bool,
}

/// Distributed: PostgreSQL, Redis and Kafka (retrying Kafka for a while: it is often the
/// slowest to come up). Their background tasks are spawned in `tasks`.
async fn distributed(cfg: &Config, s: &Services, tasks: &Shutdown) -> anyhow::Result<Seams> {
    let settings = KafkaSettings {
        brokers: s.kafka_brokers.clone(),
        topic: s.kafka_topic.clone(),
        partitions: s.kafka_partitions,
        replication_factor: s.kafka_replication_factor,
        produce_timeout: cfg.produce_timeout,
        security: s.kafka_security.clone(),
        compression: s.kafka_compression,
        relay_linger: s.relay_linger,
    };
    // A setting that cannot work (TLS, credentials) stops the start with one line naming
    // the service, its address and why; a service that is only unreachable does not
    // (Redis connects lazily; the migrations below need PostgreSQL anyway).
    for (service, probe) in [
        ("postgres", PgStore::probe(&s.database).await),
        ("redis", crate::tls::probe_redis(&s.redis).await),
        ("kafka", crate::log::kafka::probe(&settings).await),
    ] {
        if let Err(e) = probe {
            let line = e.to_string();
            if crate::tls::classify(&line) == crate::tls::Class::Unreachable {
                tracing::warn!(service, error = %line, "not reachable at start; retrying later");
            } else {
                return Err(e);
            }
        }
    }
    if cfg.migrate {
        let applied = PgStore::migrate_target(&s.database).await?;
        tracing::info!(?applied, "migrations done");
    }
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&s.database, cfg.database_pool_size)?);
    let (redis_bus, notices) = RedisBus::connect(&s.redis, &s.redis_prefix, tasks)
        .with_context(|| format!("connecting to Redis at {}", s.redis.address()))?;
    let bus: Arc<dyn Bus> = Arc::new(redis_bus);
    let coord = RedisCoord::connect(
        &s.redis,
        &s.redis_prefix,
        &s.kafka_topic,
        Timings::default(),
    )
    .with_context(|| format!("connecting to Redis at {}", s.redis.address()))?;
    let log: Arc<dyn Log> = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match KafkaLog::connect(settings.clone(), tasks.clone()).await {
                Ok(l) => break Arc::new(l),
                Err(e) if attempt < 6 => {
                    tracing::warn!(error = %e, attempt, "Kafka not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(e))
                        .with_context(|| format!("connecting to Kafka at {:?}", s.kafka_brokers))
                }
            }
        }
    };
    Ok(Seams {
        store,
        log,
        bus,
        notices,
        coord: Arc::new(coord),
        persist: true,
    })
}

/// Embedded: one SQLite file is the store and the log; the bus and the coordination state
/// are in-process.
async fn embedded(cfg: &Config, database: &Path) -> anyhow::Result<Seams> {
    if cfg.migrate {
        let applied = SqliteStore::migrate(database)
            .await
            .with_context(|| format!("migrating {}", database.display()))?;
        tracing::info!(?applied, "migrations done");
    }
    let sqlite = SqliteStore::open(database, cfg.database_pool_size.min(8))?;
    let log = SqliteLog::open(sqlite.clone(), cfg.limits.events.clone())
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| format!("opening {}", database.display()))?;
    let log: Arc<dyn Log> = Arc::new(log);
    let (bus, notices) = LocalBus::new();
    Ok(Seams {
        store: Arc::new(sqlite),
        log,
        bus: Arc::new(bus),
        notices,
        coord: Arc::new(LocalCoord::new(Timings::default())),
        persist: false,
    })
}

/// The token secret: given, or (embedded mode) generated once beside the database.
fn jwt_secret(cfg: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &cfg.jwt_secret {
        return Ok(s.0.clone());
    }
    let dir = match &cfg.backend {
        Backend::Embedded { database } => database
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        Backend::Distributed(_) => anyhow::bail!("JWT_SECRET is required"),
    };
    let path = dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => anyhow::bail!("{} holds fewer than 32 characters", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, secret.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated the token secret");
    Ok(secret.into_bytes())
}

/// Builds the seams for the configured mode, binds, and starts the roles. `stop` begins
/// the drain (shutdown.rs: the sequence and its deadline).
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    tracing::info!(role = ?cfg.role, listen = %cfg.listen, backend = ?cfg.backend, "starting");
    let secret = jwt_secret(&cfg)?;
    // The root of the shutdown tree: every task of the process is spawned under it.
    let shutdown = Shutdown::new();
    let Seams {
        store,
        log,
        bus,
        notices,
        coord,
        persist,
    } = match &cfg.backend {
        Backend::Distributed(s) => distributed(&cfg, s, &shutdown).await?,
        Backend::Embedded { database } => embedded(&cfg, database).await?,
    };

    // The signal (SIGTERM, `Running::stop`); `drain`: readyz answers 503 from then on.
    let stop = CancellationToken::new();
    let drain = shutdown.child();
    let metrics = telemetry::metrics();
    {
        let (bus, metrics) = (bus.clone(), metrics.clone());
        shutdown.spawn_until_cancelled(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), bus.ping()).await;
                n += 1;
                if n.is_multiple_of(5) {
                    metrics.run_upkeep();
                }
            }
        });
    }
    let readiness = web::Data::new(Readiness {
        store: store.clone(),
        bus: bus.clone(),
        log: log.clone(),
        draining: drain.token().clone(),
        metrics,
        redis: match &cfg.backend {
            Backend::Distributed(s) => Some(s.redis.clone()),
            Backend::Embedded { .. } => None,
        },
    });

    let gateway = matches!(cfg.role, Role::Gateway | Role::All).then(|| {
        Gateway::start(
            GatewayParts {
                store: store.clone(),
                log: log.clone(),
                bus: bus.clone(),
                coord: coord.clone(),
                auth: Auth::new(&secret, cfg.token_ttl),
                limits: cfg.limits.clone(),
                shutdown: shutdown.clone(),
                allowed_origins: cfg.allowed_origins.clone(),
            },
            notices,
        )
    });
    let consumer_stop = shutdown.child();
    let consumer = matches!(cfg.role, Role::Consumer | Role::All).then(|| {
        let mut c = Consumer::new(
            log.clone(),
            bus.clone(),
            coord.clone(),
            persist.then(|| store.clone()),
        );
        c.limits = cfg.limits.events.clone();
        let c = Arc::new(c);
        shutdown.spawn(c.run(consumer_stop.clone()))
    });

    let static_dir = cfg.static_dir.clone();
    let gw_data = gateway.clone().map(web::Data::new);
    let guard = gateway
        .is_some()
        .then(|| web::Data::new(Guard::start(&cfg.accounts, &shutdown)));
    let make_app = move || {
        let mut app = App::new()
            .app_data(readiness.clone())
            .wrap(actix_web::middleware::Compress::default())
            .wrap(http::headers::Security)
            .configure(http::ops::routes);
        if let (Some(gw), Some(guard)) = (&gw_data, &guard) {
            app = app
                .app_data(gw.clone())
                .app_data(guard.clone())
                .configure(http::api)
                .route("/ws", web::get().to(gateway::ws));
            #[cfg(feature = "autobahn")]
            {
                app = app.route("/autobahn-echo", web::get().to(gateway::echo::echo));
            }
            app = app.configure(|c| http::assets::routes(c, static_dir.as_deref()));
        }
        app
    };
    let settings = http::server::Settings {
        listen: cfg.listen,
        workers: http_workers(cfg.role, cfg.http_workers),
        // Step 4 of the drain: D/8 (at least a second) for open HTTP requests.
        shutdown_timeout: cfg.drain_timeout.as_secs().div_ceil(8).max(1),
        // From step 1 on, HTTP responses close their keep-alive connections.
        draining: drain.token().clone(),
    };
    let (server, addr) = http::server::serve(settings, make_app)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let handle = server.handle();
    shutdown.spawn(server);
    tracing::info!(%addr, "listening");
    // Tests and scripts read this line to learn the port.
    println!("chat listening on http://{addr}");

    let drain_timeout = cfg.drain_timeout;
    let stop2 = stop.clone();
    // The drain (shutdown.rs has the sequence). Not a tracked task: it is what waits for
    // them all.
    let done = tokio::spawn(async move {
        stop2.cancelled().await;
        let deadline = Deadline::after(drain_timeout);
        tracing::info!(timeout_secs = drain_timeout.as_secs_f64(), "draining");
        // 1-3. readyz turns 503; the sessions say `reconnect`, answer their sends and
        // close, and the gateway waits for them (or cuts them at 3/4 of the deadline).
        drain.cancel();
        if let Some(gw) = &gateway {
            if let Err(left) = gw.drain(&deadline).await {
                tracing::warn!(tasks = left, "drain: session tasks still running");
            }
        }
        // 4. stop accepting and wait for open requests.
        if tokio::time::timeout_at(deadline.at(), handle.stop(true))
            .await
            .is_err()
        {
            tracing::warn!("HTTP server did not stop within the drain timeout");
        }
        // 5. the consumer finishes its batches and releases its leases.
        consumer_stop.cancel();
        if let Some(c) = consumer {
            if tokio::time::timeout_at(deadline.at(), c).await.is_err() {
                tracing::warn!("consumer did not stop within the drain timeout");
            }
        }
        // 6. everything else; nothing may be left running.
        shutdown.cancel();
        match shutdown.wait_until(deadline.at()).await {
            Ok(()) => {
                tracing::info!("stopped");
                Ok(())
            }
            Err(left) => Err(anyhow::anyhow!(
                "{left} task(s) still running at the drain deadline ({drain_timeout:?})"
            )),
        }
    });
    Ok(Running { addr, stop, done })
}

/// Runs until SIGTERM or Ctrl-C, then drains.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let running = start(cfg).await?;
    shutdown_signal().await;
    running.stop().await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// HTTP worker threads: as given; else one per core where WebSocket sessions are served
/// (actix-web's default), and one for a consumer, whose HTTP is `/metrics` and the health
/// checks: a thread per core there only competes with its relays and persist workers.
fn http_workers(role: Role, given: Option<std::num::NonZeroUsize>) -> Option<usize> {
    match (given, role) {
        (Some(n), _) => Some(n.get()),
        (None, Role::Consumer) => Some(1),
        (None, Role::Gateway | Role::All) => None,
    }
}

#[cfg(test)]
mod http_worker_tests {
    use super::*;

    #[test]
    fn a_consumer_serves_http_on_one_thread_unless_told() {
        let four = std::num::NonZeroUsize::new(4);
        assert_eq!(http_workers(Role::Consumer, None), Some(1));
        assert_eq!(http_workers(Role::Consumer, four), Some(4));
        assert_eq!(http_workers(Role::Gateway, None), None);
        assert_eq!(http_workers(Role::All, four), Some(4));
    }
}
