//! The control planes shared by the tests of one test binary. Tests isolate themselves
//! by namespace and by cluster name; a test that kills or restarts an API server starts
//! its own.

#![allow(dead_code)]

pub mod binary;
pub mod webhook;

use metal3_fakenode_testkit::envtest::{Assets, Environment};
use tokio::sync::OnceCell;

/// Workload API servers in the shared environment.
pub const WORKLOAD_SERVERS: usize = 2;

pub async fn env() -> &'static Environment {
    static ENV: OnceCell<Environment> = OnceCell::const_new();
    ENV.get_or_init(|| async {
        let assets = Assets::from_env().unwrap_or_else(|e| panic!("{e}"));
        Environment::start(assets, WORKLOAD_SERVERS)
            .await
            .unwrap_or_else(|e| panic!("starting the local control planes: {e}"))
    })
    .await
}

/// A namespace name unique to this test binary run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use metal3_fakenode::controller::{self, Config};
use metal3_fakenode::http::Health;
use metal3_fakenode::metrics::Metrics;

/// A controller running in this test's runtime; stopped (gracefully) on `stop()`.
pub struct RunningController {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningController {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the controller stops within 30s of its shutdown signal")
            .expect("the controller task did not panic");
    }

    /// Brings the gauges derived from the controller's state up to date, as a scrape
    /// does, and returns the exposition.
    pub fn scrape(&self) -> String {
        self.health.render().unwrap()
    }

    /// The current value of `fakenode_reconcile_errors_total{reason}`.
    pub fn errors(&self, reason: &str) -> u64 {
        self.metrics
            .reconcile_errors
            .with_label_values(&[reason])
            .get()
    }
}

type Stopped = std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

fn stop_signal() -> (tokio::sync::watch::Sender<bool>, impl Fn() -> Stopped) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let make = move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        }) as Stopped
    };
    (tx, make)
}

/// The controller's settings for tests: short retries, so that a test sees a retry.
pub fn test_config(namespaces: &[&str]) -> Config {
    Config {
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        concurrency: 8,
        max_retry_delay: Duration::from_secs(2),
        ..Config::default()
    }
}

/// Logs go through the test harness's capture (shown for failing tests); `RUST_LOG`
/// filters, default `warn`.
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub async fn start_controller(config: Config) -> RunningController {
    let client = env().await.management.client().await.unwrap();
    start_controller_as(client, config).await
}

/// The controller with the identity of `client` (e.g. the deploy's ServiceAccount).
pub async fn start_controller_as(client: kube::Client, config: Config) -> RunningController {
    logs();
    let metrics = Arc::new(Metrics::new().unwrap());
    let health = Arc::new(Health::new(metrics.clone()));
    let (stop, stopped) = stop_signal();
    let handle = tokio::spawn(controller::run(
        client,
        config,
        metrics.clone(),
        health.clone(),
        stopped(),
    ));
    RunningController {
        metrics,
        health,
        stop,
        handle,
    }
}

/// The CAPM3 stand-in over one namespace, stopped when the returned sender drops.
pub async fn start_capm3(namespace: &str) -> tokio::sync::watch::Sender<bool> {
    let client = env().await.management.client().await.unwrap();
    let (stop, stopped) = stop_signal();
    tokio::spawn(metal3_fakenode_testkit::simulate::capm3::run(
        client,
        Some(namespace.to_string()),
        stopped(),
    ));
    stop
}

/// Polls `check` until it returns `Some`, for at most `limit` (a bound against hanging,
/// not a timing assertion).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Events (events.k8s.io/v1) about the object `name` in `ns` with `reason`.
pub async fn events(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

/// The admin kubeconfig of `server`, as YAML (what a kubeconfig Secret or file holds).
pub fn admin_yaml(server: &metal3_fakenode_testkit::envtest::ApiServer) -> String {
    metal3_fakenode_testkit::envtest::kubeconfig_yaml(&server.admin_kubeconfig()).unwrap()
}

/// A CAPI Cluster and its kubeconfig Secret holding `kubeconfig` (YAML).
pub async fn cluster_with_kubeconfig(
    client: &kube::Client,
    ns: &str,
    name: &str,
    kubeconfig: &str,
) {
    use metal3_fakenode_testkit::simulate::world;
    world::cluster(client, ns, name).await.unwrap();
    world::kubeconfig_secret(client, ns, name, world::kubeconfig_data(kubeconfig))
        .await
        .unwrap();
}

/// Waits until the Node of `m` exists in `server`, Ready and labelled with its host's UID.
pub async fn ready_node(
    server: &metal3_fakenode_testkit::envtest::ApiServer,
    m: &metal3_fakenode_testkit::simulate::world::CreatedMachine,
) -> k8s_openapi::api::core::v1::Node {
    use metal3_fakenode::fake::node::{host_uid, is_ready};
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(server.client().await.unwrap());
    let name = &m.spec.name;
    let node = eventually(
        &format!("Node {name} in {}", server.name()),
        Duration::from_secs(60),
        || async { nodes.get_opt(name).await.unwrap().filter(is_ready) },
    )
    .await;
    assert_eq!(host_uid(&node), Some(m.host_uid.as_str()), "Node {name}");
    node
}
