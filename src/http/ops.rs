//! `/healthz` (alive), `/readyz` (dependencies answer, not draining), `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::log::Log;
use crate::store::Store;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub log: Arc<dyn Log>,
    pub draining: CancellationToken,
    pub metrics: PrometheusHandle,
    /// Redis, to find out why when the bus's ping only times out (its connections retry
    /// in the background, so their errors do not reach commands).
    pub redis: Option<crate::tls::RedisTarget>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", super::get_or_head().to(healthz))
        .route("/readyz", super::get_or_head().to(readyz))
        .route("/metrics", super::get_or_head().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

const NO_ANSWER: &str = "no answer within 2 s";

async fn check<E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<(), E>>,
) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(2), f).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(NO_ANSWER.into()),
    }
}

async fn readyz(r: web::Data<Readiness>) -> HttpResponse {
    if r.draining.is_cancelled() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"status": "draining", "failed": {}}));
    }
    let (db, bus, log) = tokio::join!(
        check(r.store.ping()),
        check(r.bus.ping()),
        check(r.log.ping())
    );
    let bus = match (bus, &r.redis) {
        (Some(e), Some(target)) if e == NO_ANSWER || e.contains("timed out") => {
            match crate::tls::redis_reason(target, Duration::from_secs(2)).await {
                Err(reason) => Some(reason),
                Ok(()) => Some(e),
            }
        }
        (bus, _) => bus,
    };
    // Each failed dependency: why, as a class (tls, auth, unreachable) and the message.
    let mut failed = serde_json::Map::new();
    for (name, e) in [("postgres", db), ("redis", bus), ("kafka", log)] {
        if let Some(e) = e {
            let class = crate::tls::classify(&e);
            failed.insert(name.into(), json!({"class": class.as_str(), "error": e}));
        }
    }
    if failed.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable", "failed": failed}))
    }
}

async fn metrics(r: web::Data<Readiness>) -> HttpResponse {
    let mut text = r.metrics.render();
    crate::telemetry::hops::render(&mut text);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}
