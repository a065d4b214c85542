//! The kube-runtime wiring: watches and reflector stores, the reconcile of one
//! Metal3Machine (observe -> plan -> apply), Events, metrics and the retry policy.
//!
//! Each watch scope (one namespace, or all) gets its own stores and Controller: a
//! reflector store is filled by exactly one watcher, and several watchers feeding one
//! store would wipe each other's objects at every re-list.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{StreamExt, TryStreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::apply;
use crate::certificate_expiry;
use crate::cleanup::Cleanup;
use crate::error::Error;
use crate::fake::lease;
use crate::fidelity::Fidelity;
use crate::http::Health;
use crate::kubelet::{self, Kubelets};
use crate::lock;
use crate::metrics::{Metrics, ReconcileResult, elapsed_seconds};
use crate::permissions;
use crate::plan::{self, Desired, Plan, Registration, Steps};
use crate::resources::{
    BMH_ANNOTATION, BareMetalHost, CLUSTER_NAME_LABEL, Machine, Metal3Machine, PROVISIONED,
};
use crate::shard::Shard;
use crate::stores::Stores;
use crate::tolerant::{Tolerant, View};
use crate::watch_health::{self, WatchHealth, WatchReporter};
use crate::workload::{Settings, WorkloadClients};

pub use crate::CONTROLLER_NAME;
/// After a Node is ensured, look again this much later if CAPM3 has not closed the loop
/// by then (someone may have deleted the Node).
const RECHECK_AFTER: Duration = Duration::from_secs(300);

/// What the controller watches and how hard it may push.
#[derive(Clone, Debug)]
pub struct Config {
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub selector: Option<String>,
    pub concurrency: u16,
    pub kube_qps: std::num::NonZeroU32,
    pub kube_burst: std::num::NonZeroU32,
    pub workload: Settings,
    pub max_retry_delay: Duration,
    /// Names this replica on Events (e.g. the Pod name).
    pub instance: Option<String>,
    /// Static pods, heartbeats, cleanup, startup delay, faults. `Default`: none of them.
    pub fidelity: Fidelity,
    /// The clusters this replica handles.
    pub shard: Shard,
    /// `/readyz` fails while a watch of the management cluster has been down this long.
    pub watch_down_grace: Duration,
    /// The fake Nodes' kubelet API, if served.
    pub kubelet: Option<crate::kubelet_api::Endpoint>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            selector: None,
            concurrency: 32,
            kube_qps: std::num::NonZeroU32::new(50).unwrap_or(std::num::NonZeroU32::MIN),
            kube_burst: std::num::NonZeroU32::new(100).unwrap_or(std::num::NonZeroU32::MIN),
            workload: Settings::default(),
            max_retry_delay: Duration::from_secs(300),
            instance: None,
            fidelity: Fidelity::default(),
            shard: Shard::default(),
            watch_down_grace: Duration::from_secs(15),
            kubelet: None,
        }
    }
}

/// The longest wait before retrying a Metal3Machine whose workload API server did not
/// answer.
const UNREACHABLE_RETRY_CAP: Duration = Duration::from_secs(30);

/// The longest a watch of the management cluster stays open before it is renewed (from
/// its resourceVersion, so cheaply). kube's watcher also gives up on a watch that stays
/// silent this long (plus a margin): a watch that silently died (a half-open connection,
/// an API server that came back without this watch) is noticed within about a minute
/// instead of kube's default five.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The client settings for the management cluster: a dead API server is noticed at the
/// connect (10 s) and a hung request after [`WATCH_TIMEOUT`] plus a margin (a read may
/// legitimately wait that long inside a quiet watch), not after kube's 295 s.
pub fn management_client(mut config: kube::Config) -> Result<Client, kube::Error> {
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(WATCH_TIMEOUT + Duration::from_secs(15));
    config.write_timeout = Some(Duration::from_secs(30));
    Client::try_from(config)
}

/// How often missing permissions are checked again (RBAC may be fixed while we run).
const PERMISSION_RECHECK: Duration = Duration::from_secs(10);

/// A task that ends with the controller even if the controller's future is dropped (a lost
/// leadership does that): heartbeats and deletes must not outlive it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Events waiting for the publisher; beyond this many, new ones are dropped (and counted).
const EVENT_QUEUE: usize = 1024;

/// State shared by every watch scope.
struct Shared {
    shard: Shard,
    /// Events are best-effort, as in client-go: queued for a rate-limited publisher so that
    /// a burst of Events never slows down the creation of Nodes.
    events: tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    workloads: Arc<WorkloadClients>,
    kubelets: Arc<Kubelets>,
    fidelity: Fidelity,
    /// The management cluster, for the few requests not served by the stores.
    client: Client,
    /// `--kube-qps`, shared by the Events and those requests.
    kube_limiter: Arc<DefaultDirectRateLimiter>,
    metrics: Arc<Metrics>,
    backoff: ExponentialBuilder,
    max_retry_delay: Duration,
    started: Timestamp,
    book: Bookkeeping,
}

/// What this process remembers per Metal3Machine of its own shard, forgotten when the
/// Metal3Machine is gone (so it stays as small as the watched set).
#[derive(Default)]
struct Bookkeeping {
    /// Consecutive failures per Metal3Machine, for the retry backoff.
    failures: Mutex<HashMap<M3mRef, usize>>,
    /// Latency bookkeeping per Metal3Machine (`namespace/name`).
    timings: Mutex<HashMap<String, Timing>>,
}

impl Bookkeeping {
    /// Notes when the watch first showed the Metal3Machine `key` needing a Node: the
    /// latency starts there, not when a worker gets to it, so queueing counts.
    fn saw_need(&self, key: String) {
        let mut timings = lock(&self.timings);
        let timing = timings.entry(key).or_default();
        if timing.needed.is_none() {
            timing.needed = Some(Timestamp::now());
            timing.queued = true;
        }
    }

    /// When a watch saw the need of the Metal3Machine `key`, if no reconcile has started
    /// since: given once, to the first reconcile after.
    fn take_queued(&self, key: &str) -> Option<Timestamp> {
        let mut timings = lock(&self.timings);
        let timing = timings.get_mut(key)?;
        std::mem::take(&mut timing.queued)
            .then_some(timing.needed)
            .flatten()
    }

    /// What this process remembers of the Metal3Machine `key`; its first sight is now,
    /// unless a watch saw it earlier.
    fn memory(&self, key: &str, now: Timestamp, process_started: Timestamp) -> plan::Memory {
        let mut timings = lock(&self.timings);
        let timing = timings.entry(key.to_string()).or_default();
        plan::Memory {
            first_seen: *timing.needed.get_or_insert(now),
            process_started,
            certificates_annotated: timing.certificates_annotated,
            registered: timing.registered,
        }
    }

    /// As [`Bookkeeping::saw_need`], for the Metal3Machine `m3m` (the store's copy, if it
    /// has one) only if it is this shard's: another shard's, or one not watched here,
    /// would never be forgotten. One whose loop is closed needs nothing: every update of
    /// its host would otherwise note a need its reconcile drops at once.
    fn saw_need_of(&self, shard: &Shard, m3m: Option<&Tolerant<Metal3Machine>>, key: String) {
        let needs = m3m.is_some_and(|m| {
            shard.owns(
                m.namespace().as_deref().unwrap_or_default(),
                m.labels().get(CLUSTER_NAME_LABEL).map(String::as_str),
            ) && m.read().map_or(true, |m| !plan::has_provider_id(m))
        });
        if needs {
            self.saw_need(key);
        }
    }

    /// Forgets a Metal3Machine that is gone.
    fn forget(&self, namespace: &str, name: &str) {
        lock(&self.timings).remove(&timing_key(Some(namespace), name));
        lock(&self.failures).remove(&ObjectRef::new(name).within(namespace));
    }

    /// After a re-list (which may hide deletions): keeps, of the Metal3Machines in the
    /// namespaces `covers` accepts, only those `exists` knows.
    fn retain(&self, covers: impl Fn(&str) -> bool, exists: impl Fn(&str, &str) -> bool) {
        lock(&self.timings).retain(|key, _| {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            !covers(ns) || exists(ns, name)
        });
        lock(&self.failures).retain(|r, _| {
            let ns = r.namespace.as_deref().unwrap_or_default();
            !covers(ns) || exists(ns, &r.name)
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.timings).len() + lock(&self.failures).len()
    }
}

fn timing_key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or_default())
}

#[derive(Clone, Copy, Debug, Default)]
struct Timing {
    /// When this process first saw the Metal3Machine need a Node.
    needed: Option<Timestamp>,
    /// A watch saw the need (at `needed`) and no reconcile has started since: the
    /// queue's wait is still to be counted.
    queued: bool,
    /// When this process created its Node.
    node_created: Option<Timestamp>,
    /// A fault withholds its Node (counted once).
    withheld: bool,
    /// Its KubeadmConfig carries the certificates' expiry.
    certificates_annotated: bool,
    /// When it was last registered in full, and the registration's fingerprint.
    registered: Option<(Timestamp, u64)>,
}

struct Context {
    shared: Arc<Shared>,
    stores: Stores,
}

/// Runs the controller until `shutdown` resolves, then drains in-flight reconciles.
/// `health` turns ready once every store of every scope has synced.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let publisher = EventPublisher::new(client.clone(), config.instance.clone());
    let limiter = Arc::new(RateLimiter::direct(
        Quota::per_second(config.kube_qps).allow_burst(config.kube_burst),
    ));
    let (events, queue) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let publisher = tokio::spawn(publish_events(queue, publisher, limiter.clone()));
    // The one place the advertised kubelet endpoint comes from: the kubelet API served.
    let mut config = config;
    config.fidelity.kubelet_endpoint = config.kubelet.map(|k| k.advertise);
    let workloads = Arc::new(WorkloadClients::new(config.workload.clone(), &metrics));
    let kubelets = Arc::new(Kubelets::new(config.fidelity.clone()));
    let shared = Arc::new(Shared {
        shard: config.shard,
        events,
        workloads: workloads.clone(),
        kubelets: kubelets.clone(),
        fidelity: config.fidelity.clone(),
        client: client.clone(),
        kube_limiter: limiter,
        metrics: metrics.clone(),
        backoff: ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(config.max_retry_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times(),
        max_retry_delay: config.max_retry_delay,
        started: Timestamp::now(),
        book: Bookkeeping::default(),
    });
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let scope_names = scopes.clone();
    let control_planes = serves_control_planes(&client).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    // Woken by every deletion the watches see: the cleanup's cue.
    let deleted = Arc::new(Notify::new());
    let watch_health = Arc::new(WatchHealth::default());
    let mut scope_runs = Vec::new();
    let mut all_stores = Vec::new();
    for scope in scopes {
        let (stores, run) = scope_controller(
            &client,
            scope,
            &config,
            shared.clone(),
            Watches {
                deleted: deleted.clone(),
                health: watch_health.clone(),
                control_planes,
            },
            stopped(),
        );
        // kube's Controller holds its runner until its store is ready, and a graceful
        // shutdown waits for the runner: a scope that never synced (no permission, say)
        // would hold the stop forever. Nothing can run in it, so it stops at once.
        let never_synced = {
            let stores = stores.clone();
            let stop = stopped();
            async move {
                stop.await;
                if stores.is_synced() {
                    futures::future::pending::<()>().await;
                }
            }
        };
        all_stores.push(stores);
        scope_runs.push(async move {
            tokio::select! {
                () = run => {}
                () = never_synced => debug!("stopped a watch scope whose stores never synced"),
            }
        });
    }
    let fidelity = &config.fidelity;
    let posting = (fidelity.heartbeats() || fidelity.not_ready_fraction > 0.0).then(|| {
        AbortOnDrop(tokio::spawn(kubelets.clone().run(
            workloads.clone(),
            metrics.clone(),
            stopped(),
        )))
    });
    let _kubelet_api = config.kubelet.map(|endpoint| {
        AbortOnDrop(tokio::spawn(serve_kubelet_api(
            endpoint,
            all_stores.clone(),
            workloads.clone(),
            metrics.clone(),
            stopped(),
        )))
    });
    let cleanup = Cleanup {
        kubelets: kubelets.clone(),
        workloads,
        metrics: metrics.clone(),
        adopt: fidelity.tracks_nodes(),
        delete_orphans: fidelity.delete_orphans,
        all_metal3_machines: config.selector.is_none(),
        shard: config.shard,
    };
    let mut cleanup = AbortOnDrop(tokio::spawn(cleanup.run(
        all_stores.clone(),
        deleted,
        stopped(),
    )));
    // Gauges of the controller's state are set here, at each scrape, and nowhere else.
    health.set_on_scrape({
        let stores = all_stores.clone();
        // Weak: the hook outlives the controller, which must drop `shared` to stop.
        let shared = Arc::downgrade(&shared);
        let watch_health = watch_health.clone();
        move || {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let pending: usize = stores.iter().map(Stores::pending).sum();
            shared.metrics.pending_machines.set(pending as i64);
            let mut unreadable = std::collections::BTreeMap::<&str, usize>::new();
            for (resource, n) in stores.iter().flat_map(Stores::unreadable) {
                *unreadable.entry(resource).or_default() += n;
            }
            for (resource, n) in unreadable {
                shared
                    .metrics
                    .unreadable_objects
                    .with_label_values(&[resource])
                    .set(n as i64);
            }
            for (resource, down) in watch_health.resources(std::time::Instant::now()) {
                shared
                    .metrics
                    .watch_up
                    .with_label_values(&[resource])
                    .set(i64::from(!down));
            }
            shared
                .metrics
                .workload_clients
                .set(shared.workloads.len() as i64);
            shared.metrics.kubelets.set(shared.kubelets.len() as i64);
        }
    });
    health.set_readiness_check({
        let grace = config.watch_down_grace;
        move || {
            let down = watch_health.down_longer_than(grace, std::time::Instant::now());
            if down.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "watches of the management cluster down for over {}s: {}",
                    grace.as_secs(),
                    down.join(", ")
                ))
            }
        }
    });
    let needed = permissions::required(
        &scope_names,
        config.fidelity.annotate_certificate_expiry,
        control_planes,
    );
    let readiness = {
        let health = health.clone();
        let metrics = metrics.clone();
        let client = client.clone();
        async move {
            // First: without `list` the stores never sync, and this says why.
            wait_for_permissions(&client, &needed, &metrics).await;
            for stores in &all_stores {
                stores.wait_ready().await;
            }
            health.set_ready(true);
            info!("every permission granted and every store synced; ready");
        }
    };
    let forward_shutdown = async move {
        shutdown.await;
        info!("shutting down: finishing in-flight reconciles");
        let _ = stop_tx.send(true);
    };
    tokio::spawn(forward_shutdown);
    // Ends with this term: a later term's readiness is its own.
    let _readiness = AbortOnDrop(tokio::spawn(readiness));
    futures::future::join_all(scope_runs).await;
    let _ = (&mut cleanup.0).await;
    if let Some(mut posting) = posting {
        let _ = (&mut posting.0).await;
    }
    health.set_ready(false);
    // A standby watches nothing: no stale gauge may keep an alert firing.
    metrics.watch_up.reset();
    for resource in crate::metrics::WATCHED_RESOURCES {
        metrics
            .unreadable_objects
            .with_label_values(&[resource])
            .set(0);
    }
    // The last sender goes with `shared`; the publisher then drains the queue and stops.
    drop(shared);
    let _ = publisher.await;
}

/// Re-checks every `PERMISSION_RECHECK` until the identity has every permission it needs,
/// saying which it lacks: the controller stays not ready meanwhile, rather than ready and
/// blind (a first list succeeds without `watch`). An API error counts as unknown and is
/// retried the same way.
async fn wait_for_permissions(
    client: &Client,
    needed: &[permissions::Permission],
    metrics: &Metrics,
) {
    loop {
        match permissions::missing(client, needed).await {
            Ok(lacking) if lacking.is_empty() => {
                metrics.missing_permissions.set(0);
                return;
            }
            Ok(lacking) => {
                metrics.missing_permissions.set(lacking.len() as i64);
                let lacking: Vec<String> = lacking.iter().map(ToString::to_string).collect();
                error!(
                    missing = %lacking.join(", "),
                    "not ready: this identity lacks permissions the controller needs (see deploy/base/clusterrole.yaml)"
                );
            }
            Err(e) => warn!(error = %e, "cannot check this identity's permissions; retrying"),
        }
        tokio::time::sleep(PERMISSION_RECHECK).await;
    }
}

async fn publish_events(
    mut queue: tokio::sync::mpsc::Receiver<(Event, ObjectReference)>,
    publisher: EventPublisher,
    limiter: Arc<DefaultDirectRateLimiter>,
) {
    while let Some((event, regarding)) = queue.recv().await {
        limiter.until_ready().await;
        if let Err(e) = publisher.publish(&event, &regarding).await {
            warn!(error = %e, reason = %event.reason, "cannot publish an Event");
        }
    }
}

/// Publishes Events through kube's recorders. A Warning goes through one shared recorder,
/// whose cache turns a repeated Warning into a series; a Normal Event (one per Node made)
/// does not repeat, so it goes through a recorder of its own that keeps nothing: kube's
/// recorder keeps every Event it made for six minutes (about 3 KiB each), 30 MiB at
/// 10,000 Nodes. Public for the demo's ceiling, which publishes the same way.
#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    recorder: Recorder,
}

impl EventPublisher {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
        }
    }

    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        match event.type_ {
            EventType::Warning => self.recorder.publish(event, regarding).await,
            EventType::Normal => {
                Recorder::new(self.client.clone(), self.reporter.clone())
                    .publish(event, regarding)
                    .await
            }
        }
    }
}

/// What a watch does besides filling its store, for each event (after the store has it).
type OnEvent<V> = Box<dyn Fn(&watcher::Event<Tolerant<V>>) + Send + Sync>;

/// Wakes the cleanup on every deletion, and on every re-list, which may hide deletions
/// the watch missed.
fn wake_on_deletions<V>(deleted: &Arc<Notify>) -> OnEvent<V> {
    let deleted = deleted.clone();
    Box::new(move |event| {
        if matches!(event, watcher::Event::Delete(_) | watcher::Event::InitDone) {
            deleted.notify_one();
        }
    })
}

/// What every watch reports to.
#[derive(Clone)]
struct Watches {
    /// Woken by every deletion (and re-list): the cleanup's cue.
    deleted: Arc<Notify>,
    health: Arc<WatchHealth>,
    /// The API server serves KubeadmControlPlanes (not every management cluster runs
    /// kubeadm's control-plane provider): only then are they watched.
    control_planes: bool,
}

/// Unreadable objects already logged, by UID, with the resourceVersion logged: each
/// version is said once. Bounded: when full it starts over (some are said again).
#[derive(Default)]
struct Logged(Mutex<HashMap<String, String>>);

const LOGGED_MAX: usize = 4096;

impl Logged {
    /// Whether `obj` (unreadable) at its version is new to the log.
    fn first_time(&self, key: String, version: String) -> bool {
        let mut logged = lock(&self.0);
        if logged.get(&key) == Some(&version) {
            return false;
        }
        if logged.len() >= LOGGED_MAX {
            logged.clear();
        }
        logged.insert(key, version);
        true
    }

    fn forget(&self, key: &str) {
        lock(&self.0).remove(key);
    }
}

/// Whether the management API server serves KubeadmControlPlanes. Only a definite "not
/// found" says no; any other answer (a transient error) counts as yes, and the watch
/// then retries like the others.
async fn serves_control_planes(client: &Client) -> bool {
    use crate::resources::KubeadmControlPlane;
    let group = KubeadmControlPlane::group(&());
    let version = KubeadmControlPlane::version(&());
    let plural = KubeadmControlPlane::plural(&());
    match client
        .list_api_group_resources(&format!("{group}/{version}"))
        .await
    {
        Ok(list) => {
            let served = list.resources.iter().any(|r| r.name == plural);
            if !served {
                info!(
                    "KubeadmControlPlanes are not served: stacked etcd is not detected (see --stacked-etcd-pods)"
                );
            }
            served
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            info!(
                "KubeadmControlPlanes are not served: stacked etcd is not detected (see --stacked-etcd-pods)"
            );
            false
        }
        Err(_) => true,
    }
}

/// Serves the kubelet API until `stop`. A port it cannot bind is said in the log; Nodes
/// are still made (their port-forwards fail, as they did before the kubelet API existed).
async fn serve_kubelet_api(
    endpoint: crate::kubelet_api::Endpoint,
    stores: Vec<Stores>,
    workloads: Arc<WorkloadClients>,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    use crate::kubelet_api::{self, KubeletApi, Limits};
    let api = match KubeletApi::new(endpoint, stores, workloads, metrics, Limits::default()) {
        Ok(api) => Arc::new(api),
        Err(e) => {
            error!(error = %e, "kubelet API: cannot set up TLS; port-forwards to fake Nodes will fail");
            return;
        }
    };
    match tokio::net::TcpListener::bind(endpoint.bind).await {
        Ok(listener) => {
            info!(bind = %endpoint.bind, advertised = %endpoint.advertise, "serving the kubelet API of the fake Nodes");
            kubelet_api::serve(listener, api, stop).await;
        }
        Err(e) => error!(
            bind = %endpoint.bind,
            error = %e,
            "kubelet API: cannot listen; port-forwards to fake Nodes will fail"
        ),
    }
}

/// The backoff of a failing watch: quick first retries, then at most every
/// [`watch_health::BACKOFF_MAX`] (kube's default grows to 30 s, which would leave the
/// controller blind that long after the management API server is back), starting over
/// once the watch has been fine for a minute.
fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    // Jitter adds up to the delay itself: half the bound, then.
    let builder = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(watch_health::BACKOFF_MAX / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(builder.into(), Duration::from_secs(60))
}

/// Objects per page of a watch's (re-)list. kube decodes a page through serde's buffered
/// path (its list type flattens its type fields), so every string and map of the page is
/// copied once before each object is read, and [`Tolerant`] reads each object twice more:
/// the transient memory of a list grows with its page, and what the allocator keeps of it
/// stays resident. kube's default of 500 (client-go's pager's) held about 9 MiB more
/// anonymous memory than 100 right after the first lists of a 1000-cluster drain, for 10
/// list requests per 1000 objects instead of 2.
const LIST_PAGE_SIZE: u32 = 100;

/// A watch over one scope, tolerant of API errors (retried with a bounded backoff) and
/// of objects its typed view cannot read (kept as unreadable, said once in the log), and
/// trimmed of what is never read (managedFields), so 10,000 objects stay small.
fn watch<V>(
    api: Api<Tolerant<V>>,
    config: watcher::Config,
    writer: reflector::store::Writer<Tolerant<V>>,
    trim: fn(&mut Tolerant<V>),
    synced: &mut Vec<tokio::sync::watch::Receiver<bool>>,
    watches: &Watches,
    on_event: Option<OnEvent<V>>,
) -> impl futures::Stream<Item = Result<Tolerant<V>, watcher::Error>> + Send + 'static
where
    V: View + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    synced.push(rx);
    let resource = crate::stores::resource_label::<V>();
    let reporter: WatchReporter = watches.health.register(resource);
    let logged = Logged::default();
    let timeout = u32::try_from(WATCH_TIMEOUT.as_secs()).unwrap_or(u32::MAX);
    watcher(api, config.timeout(timeout).page_size(LIST_PAGE_SIZE))
        .backoff(watch_backoff())
        .inspect(move |result| match result {
            Ok(_) => {
                if reporter.up() {
                    info!(resource, "watch of the management cluster up again");
                }
            }
            // Said once per outage; every retry at debug.
            Err(e) if reporter.failed(std::time::Instant::now()) => {
                warn!(resource, error = %e, "watch of the management cluster failing; retrying every few seconds");
            }
            Err(e) => debug!(resource, error = %e, "watch failed; retrying"),
        })
        .modify(trim)
        .reflect(writer)
        .inspect_ok(move |event| {
            match event {
                watcher::Event::InitDone => {
                    tx.send_replace(true);
                }
                watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                    report_unreadable(obj, resource, &logged);
                }
                watcher::Event::Delete(obj) => logged.forget(&identity(obj)),
                watcher::Event::Init => {}
            }
            if let Some(on_event) = &on_event {
                on_event(event);
            }
        })
        .applied_objects()
        // The errors were counted and retried above. Passed on, they would reach the
        // Controller's own trigger backoff (kube's default, up to 30 s and reset only
        // after two quiet minutes), which pauses every watch of the scope at once: that
        // blinded the controller for minutes after a management API server restart.
        .filter_map(|result| futures::future::ready(result.ok().map(Ok)))
}

fn identity<K: Resource>(obj: &K) -> String {
    obj.meta()
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()))
}

/// Says once per version that an object cannot be read, with where and why; the
/// Metal3Machines that need it say so again in their Events.
fn report_unreadable<V: View>(obj: &Tolerant<V>, resource: &str, logged: &Logged) {
    let Tolerant::Unreadable(u) = obj else {
        return;
    };
    let version = obj.resource_version().unwrap_or_default();
    if logged.first_time(identity(obj), version) {
        warn!(
            resource,
            namespace = obj.namespace().unwrap_or_default(),
            name = obj.name_any(),
            field = %u.problem.path,
            problem = %u.problem.message,
            "cannot read this object: kept as unreadable, every other object is unaffected"
        );
    }
}

fn trim_meta<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// Other CAPI Secrets carry the cluster-name label too (CA, etcd, bootstrap data): of
/// those only the etcd CA's certificate is kept (the fake etcd members check KCP's client
/// certificate against it). No private key of a CA stays in memory: RBAC cannot keep them
/// out of a list, so they are dropped on receipt. Kubeconfigs are kept whole (their client
/// key is how this process reaches the workload cluster).
pub(crate) fn trim_secret(secret: &mut Tolerant<Secret>) {
    trim_meta(secret);
    if let Tolerant::Read(secret) = secret {
        let name = secret.name_any();
        if name.ends_with("-kubeconfig") {
            return;
        }
        secret.string_data = None;
        if name.ends_with(crate::resources::ETCD_CA_SECRET_SUFFIX) {
            if let Some(data) = &mut secret.data {
                data.retain(|key, _| key == crate::resources::CA_CERTIFICATE_KEY);
            }
        } else {
            secret.data = None;
        }
    }
}

fn scope_controller<S>(
    client: &Client,
    scope: Option<String>,
    config: &Config,
    shared: Arc<Shared>,
    watches: Watches,
    stopped: S,
) -> (Stores, impl Future<Output = ()> + Send + use<S>)
where
    S: Future<Output = ()> + Send + Sync + 'static,
{
    fn api<K>(client: &Client, scope: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let (metal3_machines, m3m_writer) = reflector::store();
    let (hosts, host_writer) = reflector::store();
    let (machines, machine_writer) = reflector::store();
    let (clusters, cluster_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let mut m3m_config = watcher::Config::default();
    if let Some(selector) = &config.selector {
        m3m_config = m3m_config.labels(selector);
    }
    let mut synced = Vec::new();
    // The cleanup's cue, and the bookkeeping of Metal3Machines that are gone.
    let m3m_events = {
        let wake = wake_on_deletions(&watches.deleted);
        let shared = shared.clone();
        let store = metal3_machines.clone();
        let scope = scope.clone();
        Box::new(move |event: &watcher::Event<Tolerant<Metal3Machine>>| {
            wake(event);
            match event {
                watcher::Event::Delete(m) => shared
                    .book
                    .forget(m.namespace().as_deref().unwrap_or_default(), &m.name_any()),
                watcher::Event::InitDone => shared.book.retain(
                    |ns| scope.as_deref().is_none_or(|s| s == ns),
                    |ns, name| store.get(&ObjectRef::new(name).within(ns)).is_some(),
                ),
                _ => {}
            }
        }) as OnEvent<Metal3Machine>
    };
    let m3m_stream = watch(
        api(client, &scope),
        m3m_config,
        m3m_writer,
        trim_meta,
        &mut synced,
        &watches,
        Some(m3m_events),
    );
    let host_stream = watch(
        api(client, &scope),
        watcher::Config::default(),
        host_writer,
        trim_meta,
        &mut synced,
        &watches,
        None,
    );
    let machine_stream = watch(
        api(client, &scope),
        watcher::Config::default(),
        machine_writer,
        trim_meta,
        &mut synced,
        &watches,
        Some(wake_on_deletions(&watches.deleted)),
    );
    let cluster_stream = watch(
        api(client, &scope),
        watcher::Config::default(),
        cluster_writer,
        trim_meta,
        &mut synced,
        &watches,
        Some(wake_on_deletions(&watches.deleted)),
    );
    let (control_planes, control_plane_writer) = reflector::store();
    // Read only when a control-plane Node is made (stacked etcd or not): no mapper.
    let control_plane_stream = watches.control_planes.then(|| {
        watch(
            api(client, &scope),
            watcher::Config::default(),
            control_plane_writer,
            trim_meta,
            &mut synced,
            &watches,
            None,
        )
    });
    // Only Secrets CAPI labels with a cluster name: unrelated Secrets are never cached.
    let secret_stream = watch(
        api(client, &scope),
        watcher::Config::default().labels(CLUSTER_NAME_LABEL),
        secret_writer,
        trim_secret,
        &mut synced,
        &watches,
        Some(wake_on_deletions(&watches.deleted)),
    );
    let stores = Stores {
        metal3_machines: metal3_machines.clone(),
        hosts,
        machines: machines.clone(),
        clusters,
        control_planes,
        secrets,
        namespace: scope,
        synced,
    };
    let clock = shared.clone();
    let ctx = Arc::new(Context {
        shared,
        stores: stores.clone(),
    });
    let mappers = Mappers {
        metal3_machines: metal3_machines.clone(),
        machines,
    };
    let (for_host, for_machine, for_secret, for_cluster) =
        (mappers.clone(), mappers.clone(), mappers.clone(), mappers);
    let run = Controller::for_stream(m3m_stream, metal3_machines)
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .watches_stream(host_stream, move |host| {
            let consumers = for_host.consumers_of(&host);
            if let Tolerant::Read(host) = &host
                && host
                    .status
                    .as_ref()
                    .is_some_and(|s| s.provisioning.state == PROVISIONED)
            {
                for m3m in &consumers {
                    clock.book.saw_need_of(
                        &clock.shard,
                        for_host.metal3_machines.get(m3m).as_deref(),
                        timing_key(m3m.namespace.as_deref(), &m3m.name),
                    );
                }
            }
            consumers
        })
        .watches_stream(machine_stream, move |machine| {
            for_machine.infrastructure_of(&machine)
        })
        .watches_stream(secret_stream, move |secret| {
            let cluster = secret.labels().get(CLUSTER_NAME_LABEL).cloned();
            match (secret.namespace(), cluster) {
                (Some(ns), Some(cluster)) => for_secret.machines_of_cluster(&ns, &cluster),
                _ => Vec::new(),
            }
        })
        .watches_stream(cluster_stream, move |cluster| match cluster.namespace() {
            Some(ns) => for_cluster.machines_of_cluster(&ns, &cluster.name_any()),
            None => Vec::new(),
        });
    let run = match control_plane_stream {
        Some(stream) => {
            run.watches_stream(stream, |_| Vec::<ObjectRef<Tolerant<Metal3Machine>>>::new())
        }
        None => run,
    };
    let run = run
        .graceful_shutdown_on(stopped)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                // Reconcile errors were logged with their context already; what is left
                // is the queue's own (e.g. an object gone before its turn).
                debug!(error = %e, "controller");
            }
            futures::future::ready(())
        });
    (stores, run)
}

type M3mRef = ObjectRef<Tolerant<Metal3Machine>>;

/// Which Metal3Machines a change of another object concerns. An object that cannot be
/// read still names its Metal3Machines: through what they say of it (their host
/// annotation, their owner), so that they report it, and are looked at again once it is
/// readable.
#[derive(Clone)]
struct Mappers {
    metal3_machines: Store<Tolerant<Metal3Machine>>,
    machines: Store<Tolerant<Machine>>,
}

impl Mappers {
    /// A host change concerns the Metal3Machine that consumes it.
    fn consumers_of(&self, host: &Tolerant<BareMetalHost>) -> Vec<M3mRef> {
        match host {
            Tolerant::Read(host) => consumer_of(host).into_iter().collect(),
            Tolerant::Unreadable(_) => {
                let (Some(ns), name) = (host.namespace(), host.name_any()) else {
                    return Vec::new();
                };
                let annotation = format!("{ns}/{name}");
                self.metal3_machines_where(&ns, |m| {
                    m.annotations().get(BMH_ANNOTATION) == Some(&annotation)
                })
            }
        }
    }

    /// A Machine change (e.g. its cluster label) concerns its Metal3Machine.
    fn infrastructure_of(&self, machine: &Tolerant<Machine>) -> Vec<M3mRef> {
        match machine {
            Tolerant::Read(machine) => infrastructure_of(machine).into_iter().collect(),
            Tolerant::Unreadable(_) => {
                let (Some(ns), name) = (machine.namespace(), machine.name_any()) else {
                    return Vec::new();
                };
                self.metal3_machines_where(&ns, |m| {
                    m.read()
                        .is_ok_and(|m| plan::owner_machine(m) == Some(name.as_str()))
                })
            }
        }
    }

    /// A kubeconfig Secret or Cluster change concerns every Metal3Machine of that cluster.
    fn machines_of_cluster(&self, namespace: &str, cluster: &str) -> Vec<M3mRef> {
        self.machines
            .state()
            .iter()
            .filter(|m| m.namespace().as_deref() == Some(namespace))
            .filter(|m| m.labels().get(CLUSTER_NAME_LABEL).map(String::as_str) == Some(cluster))
            .flat_map(|m| self.infrastructure_of(m))
            .collect()
    }

    fn metal3_machines_where(
        &self,
        namespace: &str,
        wanted: impl Fn(&Tolerant<Metal3Machine>) -> bool,
    ) -> Vec<M3mRef> {
        self.metal3_machines
            .state()
            .iter()
            .filter(|m| m.namespace().as_deref() == Some(namespace) && wanted(m))
            .map(|m| ObjectRef::from(m.as_ref()))
            .collect()
    }
}

/// The Metal3Machine a readable host's consumerRef names.
fn consumer_of(host: &BareMetalHost) -> Option<M3mRef> {
    let consumer = host.spec.consumer_ref.as_ref()?;
    if consumer.kind.as_deref() != Some("Metal3Machine") {
        return None;
    }
    let namespace = consumer.namespace.clone().or_else(|| host.namespace())?;
    Some(ObjectRef::new(consumer.name.as_deref()?).within(&namespace))
}

/// The Metal3Machine a readable Machine's infrastructureRef names.
fn infrastructure_of(machine: &Machine) -> Option<M3mRef> {
    let infra = &machine.spec.infrastructure_ref;
    if infra.kind != "Metal3Machine" || infra.name.is_empty() {
        return None;
    }
    Some(ObjectRef::new(&infra.name).within(&machine.namespace()?))
}

async fn reconcile(obj: Arc<Tolerant<Metal3Machine>>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The controller starts once the Metal3Machine store is ready; the lookups need the
    // others too, or a restart would report every host "not found".
    ctx.stores.wait_ready().await;
    // Another shard's Metal3Machine: not even a metric or a log line here.
    if !ctx.shared.shard.owns(
        obj.namespace().as_deref().unwrap_or_default(),
        obj.labels().get(CLUSTER_NAME_LABEL).map(String::as_str),
    ) {
        return Ok(Action::await_change());
    }
    let span = info_span!(
        "reconcile",
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any()
    );
    let started = Instant::now();
    let result = match obj.read() {
        Ok(m3m) => reconcile_one(m3m, &ctx).instrument(span.clone()).await,
        Err(problem) => Err(Error::Metal3MachineUnreadable {
            problem: problem.clone(),
        }),
    };
    let label = match &result {
        Ok((_, r)) => *r,
        Err(_) => ReconcileResult::Error,
    };
    let shared = &ctx.shared;
    shared
        .metrics
        .reconcile_duration
        .with_label_values(&[label.label()])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((action, _)) => {
            lock(&shared.book.failures).remove(&ObjectRef::from(obj.as_ref()));
            Ok(action)
        }
        Err(err) => {
            shared.metrics.reconcile_error(&err);
            warn!(parent: &span, reason = err.reason(), error = %err, "cannot give this Metal3Machine its Node");
            publish(
                shared,
                obj.object_ref(&()),
                event(EventType::Warning, err.event_reason(), err.to_string()),
            );
            Err(err)
        }
    }
}

async fn reconcile_one(
    m3m: &Metal3Machine,
    ctx: &Context,
) -> Result<(Action, ReconcileResult), Error> {
    let shared = &ctx.shared;
    let key = timing_key(m3m.namespace().as_deref(), &m3m.name_any());
    let now = Timestamp::now();
    if let Some(queued) = shared.book.take_queued(&key) {
        shared
            .metrics
            .reconcile_queue_wait
            .observe(elapsed_seconds(queued, now));
    }
    match plan::plan(
        m3m,
        &ctx.stores,
        shared.fidelity.kubelet_endpoint,
        &Time(now),
    )? {
        Plan::Closed => {
            let timing = lock(&shared.book.timings).remove(&key);
            if let Some(created) = timing.and_then(|t| t.node_created) {
                shared
                    .metrics
                    .provider_id_latency
                    .observe(elapsed_seconds(created, now));
                debug!("CAPM3 set the providerID");
            }
            Ok((Action::await_change(), ReconcileResult::Closed))
        }
        Plan::WaitForHost { host, state } => {
            debug!(%host, %state, "waiting for the host to be provisioned");
            Ok((Action::await_change(), ReconcileResult::Waiting))
        }
        Plan::Ensure(desired) => {
            let memory = shared.book.memory(&key, now, shared.started);
            match plan::steps(&desired, m3m, &shared.fidelity, &memory, now) {
                Steps::Withheld => {
                    withhold(shared, &key, &desired);
                    Ok((Action::await_change(), ReconcileResult::Waiting))
                }
                Steps::Booting { due } => {
                    let wait = Duration::try_from(due.duration_since(now)).unwrap_or_default();
                    debug!(
                        wait_seconds = wait.as_secs_f64(),
                        "startup delay: the host is still booting"
                    );
                    Ok((Action::requeue(wait), ReconcileResult::Waiting))
                }
                Steps::Register(steps) => {
                    register(m3m, &desired, &steps, ctx, &key).await?;
                    lock(&shared.book.timings)
                        .entry(key.to_string())
                        .or_default()
                        .registered = Some((now, plan::registration_fingerprint(&desired)));
                    Ok((Action::requeue(RECHECK_AFTER), ReconcileResult::Ensured))
                }
                Steps::Registered => {
                    debug!("registered moments ago with the same inputs: nothing to send");
                    Ok((Action::requeue(RECHECK_AFTER), ReconcileResult::Ensured))
                }
            }
        }
    }
}

/// A fault withholds the Node: said once.
fn withhold(shared: &Shared, key: &str, desired: &Desired) {
    let first = {
        let mut timings = lock(&shared.book.timings);
        let timing = timings.entry(key.to_string()).or_default();
        !std::mem::replace(&mut timing.withheld, true)
    };
    if first {
        shared
            .metrics
            .faults_injected
            .with_label_values(&["never_ready"])
            .inc();
        let node = desired.node.metadata.name.as_deref().unwrap_or_default();
        info!(cluster = %desired.cluster, %node, "fault injection: this machine never gets a Node");
    }
}

/// Apply: sends what the plan decided to the workload cluster, in its order, and says
/// what it did (metrics, the kubelet's record, Events).
async fn register(
    m3m: &Metal3Machine,
    desired: &Desired,
    steps: &Registration,
    ctx: &Context,
    key: &str,
) -> Result<(), Error> {
    let shared = &ctx.shared;
    let metrics = &shared.metrics;
    let node = desired.node.metadata.name.clone().unwrap_or_default();
    let workload = shared
        .workloads
        .client(&desired.cluster, &desired.kubeconfig)
        .await?;
    if steps.track {
        // After a restart, know first which of the cluster's Nodes are ours and which a
        // fault has stopped.
        shared.kubelets.adopt(&workload, metrics).await?;
        if shared.kubelets.is_stopped(&desired.cluster, &node) {
            debug!(%node, "its kubelet stopped posting (an injected fault): left NotReady");
            return Ok(());
        }
    }
    // From here on the requests are the kubelet's of this Node: its own budget.
    let workload = workload.for_kubelet(&node);
    if let Some(machine) = &steps.annotate_certificates {
        certificate_expiry::annotate(
            &shared.client,
            &shared.kube_limiter,
            &desired.cluster.namespace,
            machine,
            Timestamp::now(),
        )
        .await?;
        lock(&shared.book.timings)
            .entry(key.to_string())
            .or_default()
            .certificates_annotated = true;
    }
    if !steps.unpostable.is_empty() {
        let pods = steps.unpostable.join(", ");
        warn!(%node, %pods, "mirror Pods skipped: their names would exceed 253 characters");
        publish(
            shared,
            m3m.object_ref(&()),
            event(
                EventType::Warning,
                "MirrorPodNameInvalid".into(),
                format!(
                    "the mirror Pods {pods} were skipped: their names would exceed 253 characters \
                     (a kubelet fails them alone; the Node is registered)"
                ),
            ),
        );
    }
    if !steps.static_pods.is_empty() {
        let created = apply::ensure_static_pods(&workload, &steps.static_pods, metrics).await?;
        metrics.static_pods_created.inc_by(created as u64);
        if created > 0 {
            debug!(%node, created, "created static pods");
        }
    }
    let outcome = apply::ensure(&workload, desired, metrics).await?;
    let mut lease_owner = apply::LeaseOwner::Unknown;
    if steps.lease
        && let Some(node_uid) = &outcome.node_uid
    {
        let lease = lease::node_lease(&node, node_uid, &MicroTime(Timestamp::now()));
        if let Some(uid) = apply::ensure_lease(&workload, &lease, metrics).await? {
            lease_owner = apply::LeaseOwner::Ours(uid);
        }
    }
    if steps.track
        && let Some(record) = kubelet::record_of(
            &desired.node,
            outcome.node_uid.as_deref(),
            outcome.node_since.as_ref().map(|t| t.0),
            lease_owner,
        )
    {
        shared.kubelets.register(&desired.cluster, record);
    }
    if outcome.kubeadm_config_created {
        metrics.kubeadm_configs_created.inc();
        info!(cluster = %desired.cluster, "created kube-system/kubeadm-config");
    }
    // A Node counts once, by the process that makes it Ready: the one that created it,
    // or the one that finds it not Ready yet (its creator was cut short).
    if outcome.node_created.is_some() || outcome.status_repaired {
        report_created(m3m, desired, steps.needed_since, shared, key);
    }
    Ok(())
}

/// The Node is Ready: its latency, its metric, its Event.
fn report_created(
    m3m: &Metal3Machine,
    desired: &Desired,
    needed_since: Timestamp,
    shared: &Shared,
    key: &str,
) {
    let node = desired.node.metadata.name.as_deref().unwrap_or_default();
    let created = Timestamp::now();
    let latency = elapsed_seconds(needed_since, created);
    shared.metrics.nodes_created.inc();
    shared.metrics.node_creation_latency.observe(latency);
    lock(&shared.book.timings)
        .entry(key.to_string())
        .or_default()
        .node_created = Some(created);
    info!(cluster = %desired.cluster, %node, latency_seconds = latency, "created Node");
    if !desired.ignored.is_empty() {
        let ignored = desired.ignored.join("; ");
        warn!(%node, %ignored, "values that make no sense for a Node were ignored; defaults used");
    }
    publish(shared, m3m.object_ref(&()), node_created_event(desired));
}

/// The Event about a Metal3Machine whose Node is Ready. Public for the demo's ceiling,
/// which publishes the very same Events so that its rate compares like with like.
pub fn node_created_event(desired: &Desired) -> Event {
    event(
        EventType::Normal,
        "FakeNodeCreated".into(),
        plan::node_created_note(desired),
    )
}

fn event(type_: EventType, reason: String, note: String) -> Event {
    Event {
        type_,
        reason,
        // The Events API caps a note at 1 kB.
        note: Some(crate::tolerant::bounded(note, 1024)),
        action: "EnsureNode".into(),
        secondary: None,
    }
}

/// Queues an Event about the Metal3Machine; drops it (counted) if the queue is full.
fn publish(shared: &Shared, regarding: ObjectReference, event: Event) {
    if shared.events.try_send((event, regarding)).is_err() {
        shared.metrics.events_dropped.inc();
        debug!("Event queue full: Event dropped");
    }
}

fn error_policy(m3m: Arc<Tolerant<Metal3Machine>>, err: &Error, ctx: Arc<Context>) -> Action {
    let shared = &ctx.shared;
    if err.is_permanent() {
        // The object at fault must change first; its change wakes this Metal3Machine.
        return Action::await_change();
    }
    // A 422 fails the same way until an input changes, but that input may be in the
    // workload cluster (an admission policy), which no watch here sees: a slow retry.
    if matches!(err, Error::WorkloadInvalid { .. }) {
        return Action::requeue(shared.max_retry_delay);
    }
    let attempt = {
        let mut failures = lock(&shared.book.failures);
        let n = failures.entry(ObjectRef::from(m3m.as_ref())).or_insert(0);
        *n += 1;
        *n
    };
    // Nothing says when a workload API server is back: look at least this often, as a
    // booting kubelet retries its registration.
    let cap = match err {
        Error::WorkloadUnreachable { .. } => shared.max_retry_delay.min(UNREACHABLE_RETRY_CAP),
        _ => shared.max_retry_delay,
    };
    Action::requeue(retry_delay(&shared.backoff, attempt, cap))
}

/// The delay before retry number `attempt` (1-based): exponential, jittered, capped.
pub fn retry_delay(backoff: &ExponentialBuilder, attempt: usize, max: Duration) -> Duration {
    backoff
        .build()
        .nth(attempt.saturating_sub(1))
        .unwrap_or(max)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ca_private_key_survives_the_trim() {
        let secret = |name: &str| -> Tolerant<Secret> {
            Tolerant::Read(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": "ns"},
                    "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5", "value": "a3ViZWNvbmZpZw=="},
                }))
                .unwrap(),
            )
        };
        let keys = |s: &Tolerant<Secret>| -> Vec<String> {
            let Tolerant::Read(s) = s else { return vec![] };
            s.data.iter().flat_map(|d| d.keys().cloned()).collect()
        };
        let mut etcd = secret("a-etcd");
        trim_secret(&mut etcd);
        assert_eq!(keys(&etcd), ["tls.crt"]);
        for name in ["a-ca", "a-sa", "a-proxy", "a-bootstrap-xyz"] {
            let mut other = secret(name);
            trim_secret(&mut other);
            assert!(keys(&other).is_empty(), "{name}");
        }
        let mut kubeconfig = secret("a-kubeconfig");
        trim_secret(&mut kubeconfig);
        assert_eq!(keys(&kubeconfig).len(), 3);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let max = Duration::from_secs(60);
        let b = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        let delays: Vec<_> = (1..=10)
            .map(|a| retry_delay(&b, a, max).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // With jitter, never above the cap and never zero.
        let j = b.with_jitter();
        for a in 1..50 {
            let d = retry_delay(&j, a, max);
            assert!(d >= Duration::from_secs(1) && d <= max, "{a}: {d:?}");
        }
    }

    #[test]
    fn a_host_maps_to_its_consumer_and_a_machine_to_its_infrastructure() {
        let host: BareMetalHost = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "namespace": "ns"},
            "spec": {"consumerRef": {"kind": "Metal3Machine", "name": "m3m"}}
        }))
        .unwrap();
        assert_eq!(consumer_of(&host), Some(ObjectRef::new("m3m").within("ns")));
        let other: BareMetalHost = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "namespace": "ns"},
            "spec": {"consumerRef": {"kind": "Pod", "name": "p"}}
        }))
        .unwrap();
        assert_eq!(consumer_of(&other), None);
        let machine: Machine = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {"clusterName": "c", "infrastructureRef":
                     {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "Metal3Machine", "name": "m3m"}}
        }))
        .unwrap();
        assert_eq!(
            infrastructure_of(&machine),
            Some(ObjectRef::new("m3m").within("ns"))
        );
    }

    fn tolerant<K: View>(value: serde_json::Value) -> Tolerant<K> {
        Tolerant::from_value(value).unwrap()
    }

    fn store_of<K>(objects: Vec<Tolerant<K>>) -> Store<Tolerant<K>>
    where
        K: View + Clone,
    {
        let (store, mut writer) = reflector::store();
        for obj in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        store
    }

    #[test]
    fn unreadable_hosts_and_machines_still_wake_their_metal3machines() {
        let m3m = |name: &str, host: &str, owner: &str| {
            tolerant::<Metal3Machine>(serde_json::json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2", "kind": "Metal3Machine",
                "metadata": {"name": name, "namespace": "ns",
                             "annotations": {BMH_ANNOTATION: format!("ns/{host}")},
                             "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2",
                                                  "kind": "Machine", "name": owner, "uid": "u"}]},
                "spec": {}
            }))
        };
        let machine = |name: &str, version: serde_json::Value| {
            tolerant::<Machine>(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {CLUSTER_NAME_LABEL: "c"}},
                "spec": {"clusterName": "c", "version": version,
                         "infrastructureRef": {"kind": "Metal3Machine", "name": format!("{name}-m3m")}}
            }))
        };
        let mappers = Mappers {
            metal3_machines: store_of(vec![
                m3m("a-m3m", "host-a", "a"),
                m3m("b-m3m", "host-b", "b"),
            ]),
            machines: store_of(vec![
                machine("a", serde_json::json!("v1.34.1")),
                machine("b", serde_json::json!({"not": "a version"})),
            ]),
        };
        let names = |refs: Vec<M3mRef>| {
            let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
            names.sort();
            names
        };
        // An unreadable host has no consumerRef to read: the annotation names it.
        let host = tolerant::<BareMetalHost>(serde_json::json!({
            "metadata": {"name": "host-b", "namespace": "ns"},
            "spec": {"consumerRef": {"kind": "Metal3Machine", "name": "b-m3m"}},
            "status": {"hardware": {"cpu": {"count": "many"}}}
        }));
        assert!(host.read().is_err());
        assert_eq!(names(mappers.consumers_of(&host)), ["b-m3m"]);
        // An unreadable Machine has no infrastructureRef to read: the owner names it.
        let b = machine("b", serde_json::json!({"not": "a version"}));
        assert!(b.read().is_err());
        assert_eq!(names(mappers.infrastructure_of(&b)), ["b-m3m"]);
        // A cluster's change reaches the Metal3Machines of readable and unreadable Machines.
        assert_eq!(
            names(mappers.machines_of_cluster("ns", "c")),
            ["a-m3m", "b-m3m"]
        );
        assert!(mappers.machines_of_cluster("other", "c").is_empty());
    }

    #[test]
    fn an_object_that_turns_unreadable_replaces_its_readable_copy() {
        let host = |count: serde_json::Value| {
            tolerant::<BareMetalHost>(serde_json::json!({
                "metadata": {"name": "h", "namespace": "ns", "uid": "u"},
                "spec": {}, "status": {"hardware": {"cpu": {"count": count}}}
            }))
        };
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(host(serde_json::json!(8))));
        let key = ObjectRef::new("h").within("ns");
        assert!(store.get(&key).unwrap().read().is_ok());
        writer.apply_watcher_event(&watcher::Event::Apply(host(serde_json::json!("eight"))));
        assert!(
            store.get(&key).unwrap().read().is_err(),
            "never the stale copy"
        );
        assert_eq!(store.state().len(), 1);
        writer.apply_watcher_event(&watcher::Event::Apply(host(serde_json::json!(4))));
        assert!(store.get(&key).unwrap().read().is_ok());
    }

    #[test]
    fn the_bookkeeping_holds_only_the_shards_own_metal3machines() {
        let m3m = tolerant::<Metal3Machine>(serde_json::json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2", "kind": "Metal3Machine",
            "metadata": {"name": "m", "namespace": "ns", "labels": {CLUSTER_NAME_LABEL: "c"}},
            "spec": {}
        }));
        let owner = Shard::of("ns", "c", 2);
        let (mine, theirs) = (
            Shard::new(owner, 2).unwrap(),
            Shard::new(1 - owner, 2).unwrap(),
        );
        let book = Bookkeeping::default();
        book.saw_need_of(&theirs, Some(&m3m), "ns/m".into());
        book.saw_need_of(&mine, None, "ns/m".into());
        assert_eq!(book.len(), 0, "another shard's, or one not in the store");
        book.saw_need_of(&mine, Some(&m3m), "ns/m".into());
        assert_eq!(book.len(), 1);
        let mut closed = m3m.clone();
        if let Tolerant::Read(m) = &mut closed {
            m.spec.provider_id = Some("metal3://ns/h/m".into());
        }
        book.saw_need_of(&mine, Some(&closed), "ns/closed".into());
        assert_eq!(book.len(), 1, "its loop is closed: nothing to note");
    }

    #[test]
    fn the_bookkeeping_forgets_metal3machines_that_are_gone() {
        let book = Bookkeeping::default();
        for (ns, name) in [("a", "m1"), ("a", "m2"), ("b", "m3")] {
            book.saw_need(timing_key(Some(ns), name));
            *lock(&book.failures)
                .entry(ObjectRef::new(name).within(ns))
                .or_default() += 1;
        }
        assert_eq!(book.len(), 6);
        book.forget("a", "m1");
        assert_eq!(book.len(), 4);
        // A re-list of namespace `a` that no longer holds m2: b's are not its to judge.
        book.retain(|ns| ns == "a", |_, _| false);
        assert_eq!(book.len(), 2);
        assert!(lock(&book.timings).contains_key("b/m3"));
        book.retain(|_| true, |ns, name| (ns, name) == ("b", "m3"));
        assert_eq!(book.len(), 2, "what exists stays");
    }

    #[test]
    fn the_queue_wait_is_given_once_per_need_a_watch_saw() {
        let book = Bookkeeping::default();
        let started = Timestamp::now();
        // Seen first by a reconcile (a restart, a resync): no watch event to count from.
        book.memory("ns/resynced", Timestamp::now(), started);
        assert_eq!(book.take_queued("ns/resynced"), None);
        book.saw_need("ns/resynced".into());
        assert_eq!(
            book.take_queued("ns/resynced"),
            None,
            "its need was known already"
        );

        book.saw_need("ns/m".into());
        let seen = book.take_queued("ns/m").expect("the watch's sight");
        assert_eq!(Some(seen), lock(&book.timings)["ns/m"].needed);
        assert_eq!(
            book.take_queued("ns/m"),
            None,
            "only the first reconcile after it"
        );
        book.saw_need("ns/m".into());
        assert_eq!(book.take_queued("ns/m"), None, "the same need seen again");
        assert_eq!(book.take_queued("ns/unknown"), None);
    }
}
