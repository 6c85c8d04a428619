//! Wiring: build the three seams from the config, start the roles, run the drain.
//! Roles are wiring only: `gateway` and `consumer` never import each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::bus::{Bus, RedisBus};
use crate::cli::Role;
use crate::config::{redact, Config};
use crate::consumer::Consumer;
use crate::gateway::{self, Gateway, GatewayParts, Sender};
use crate::http::{self, ops::Readiness};
use crate::log::kafka::KafkaSettings;
use crate::log::{KafkaLog, Log};
use crate::store::{PgStore, Store};
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

/// Connects to the services (retrying Kafka for a while: it is often the slowest to come
/// up), binds, and starts the roles. `stop` begins the drain.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let s = &cfg.services;
    tracing::info!(role = ?cfg.role, listen = %cfg.listen, services = ?s, "starting");
    if cfg.migrate {
        let applied = PgStore::migrate(&s.database_url)
            .await
            .with_context(|| format!("migrating {}", redact(&s.database_url)))?;
        tracing::info!(?applied, "migrations done");
    }
    let store: Arc<dyn Store> =
        Arc::new(PgStore::connect(&s.database_url, cfg.database_pool_size)?);
    let (redis_bus, notices) = RedisBus::connect(&s.redis_url, &s.redis_prefix)
        .with_context(|| format!("connecting to Redis at {}", redact(&s.redis_url)))?;
    let redis = redis_bus.commands();
    let bus: Arc<dyn Bus> = Arc::new(redis_bus);
    let settings = KafkaSettings {
        brokers: s.kafka_brokers.clone(),
        topic: s.kafka_topic.clone(),
        partitions: s.kafka_partitions,
        linger: cfg.kafka_linger,
        produce_timeout: cfg.produce_timeout,
    };
    let log: Arc<dyn Log> = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match KafkaLog::connect(settings.clone()).await {
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

    let stop = CancellationToken::new();
    let drain = CancellationToken::new();
    let metrics = telemetry::metrics();
    {
        let (bus, metrics, stop) = (bus.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), bus.ping()).await;
                n += 1;
                if n % 5 == 0 {
                    metrics.run_upkeep();
                }
            }
        });
    }
    let readiness = web::Data::new(Readiness {
        store: store.clone(),
        bus: bus.clone(),
        log: log.clone(),
        draining: drain.clone(),
        metrics,
    });

    let gateway = matches!(cfg.role, Role::Gateway | Role::All).then(|| {
        Gateway::start(
            GatewayParts {
                store: store.clone(),
                log: log.clone(),
                bus: bus.clone(),
                sender: Sender::new(log.clone(), redis.clone(), &s.redis_prefix),
                topic: s.kafka_topic.clone(),
                auth: Auth::new(&cfg.jwt_secret.0, cfg.token_ttl),
                limits: cfg.limits.clone(),
                drain: drain.clone(),
                allowed_origins: cfg.allowed_origins.clone(),
            },
            notices,
        )
    });
    let consumer_stop = CancellationToken::new();
    let consumer = matches!(cfg.role, Role::Consumer | Role::All).then(|| {
        let c = Arc::new(Consumer {
            store: store.clone(),
            log: log.clone(),
            bus: bus.clone(),
            redis: redis.clone(),
            topic: s.kafka_topic.clone(),
            prefix: s.redis_prefix.clone(),
        });
        tokio::spawn(c.run(consumer_stop.clone()))
    });

    let static_dir = cfg.static_dir.clone();
    let gw_data = gateway.clone().map(web::Data::new);
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(readiness.clone())
            .wrap(actix_web::middleware::Compress::default())
            .configure(http::ops::routes);
        if let Some(gw) = &gw_data {
            app = app
                .app_data(gw.clone())
                .configure(http::api)
                .route("/ws", web::get().to(gateway::ws));
            app = match &static_dir {
                Some(dir) => {
                    app.service(actix_files::Files::new("/", dir).index_file("index.html"))
                }
                None => app
                    .route("/", web::get().to(index))
                    .route("/index.html", web::get().to(index))
                    .route("/app.js", web::get().to(app_js))
                    .route("/app.css", web::get().to(app_css)),
            };
        }
        app
    })
    // Frames are small and latency-bound: no Nagle on client sockets.
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    .disable_signals()
    .shutdown_timeout(5)
    .bind(cfg.listen)
    .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = server.addrs().first().copied().unwrap_or(cfg.listen);
    let server = server.run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    tracing::info!(%addr, "listening");
    // Tests and scripts read this line to learn the port.
    println!("chat listening on http://{addr}");

    let drain_timeout = cfg.drain_timeout;
    let stop2 = stop.clone();
    let done = tokio::spawn(async move {
        stop2.cancelled().await;
        tracing::info!("draining");
        // 1. readyz turns 503, 2. sessions send `reconnect` and finish in-flight sends.
        drain.cancel();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        if let Some(gw) = &gateway {
            let _ = gw; // sessions observe `drain` themselves
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // 3. stop accepting and wait for open requests.
        let stopping = handle.stop(true);
        // 4. the consumer finishes its batches.
        consumer_stop.cancel();
        if let Some(c) = consumer {
            if tokio::time::timeout_at(deadline, c).await.is_err() {
                tracing::warn!("consumer did not stop within the drain timeout");
            }
        }
        if tokio::time::timeout_at(deadline, stopping).await.is_err() {
            tracing::warn!("HTTP server did not stop within the drain timeout");
        }
        let _ = tokio::time::timeout_at(deadline, server_task).await;
        tracing::info!("stopped");
        Ok(())
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

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .body(gateway::assets::INDEX_HTML)
}

async fn app_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .body(gateway::assets::APP_JS)
}

async fn app_css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .body(gateway::assets::APP_CSS)
}
