//! `/metrics`, `/healthz` (the process serves) and `/readyz` (every permission granted and
//! every store synced).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

type ScrapeHook = Box<dyn Fn() + Send + Sync>;
type ReadinessCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the HTTP endpoints report on.
pub struct Health {
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    /// Brings gauges derived from the stores up to date just before a scrape.
    on_scrape: std::sync::Mutex<Option<ScrapeHook>>,
    /// Once ready: what still makes the process not ready (e.g. watches that are down).
    readiness_check: std::sync::Mutex<Option<ReadinessCheck>>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ready: AtomicBool::new(false),
            on_scrape: std::sync::Mutex::new(None),
            readiness_check: std::sync::Mutex::new(None),
        }
    }

    /// Sets the readiness check, replacing the previous one (a new term, new watches).
    pub fn set_readiness_check(
        &self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        *crate::lock(&self.readiness_check) = Some(Box::new(check));
    }

    /// The metrics as a scrape sees them: the gauges derived from the stores first.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        if let Some(hook) = crate::lock(&self.on_scrape).as_ref() {
            hook();
        }
        self.metrics.render()
    }

    /// Ready, or why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.is_ready() {
            return Err("stores not synced yet".into());
        }
        match crate::lock(&self.readiness_check).as_ref() {
            Some(check) => check(),
            None => Ok(()),
        }
    }

    /// Sets the scrape hook, replacing the previous one (a new leadership term has new stores).
    pub fn set_on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        *crate::lock(&self.on_scrape) = Some(Box::new(hook));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.render() {
        Ok(text) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string(),
        ),
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Binds first, so a busy port is an error at start-up rather than in the background.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown)
        .await
}
