//! The fake kubelets this process runs: one per Node it ensured (or, after a restart,
//! found labelled as its own in a workload cluster), by workload cluster. Each renews its
//! Node's Lease and condition heartbeats in a slot of its own within the heartbeat
//! interval, so the load stays flat however the Nodes arrived; stops posting when a
//! NotReady fault says so; and is what the cleanup retires when its Machine is gone.
//!
//! One task drives them all from a queue ordered by due time, waking at most once a tick
//! for every kubelet due by then; each post is a short task of its own, at most
//! [`IN_FLIGHT_PER_CLUSTER`] per cluster, so a dead workload cluster
//! holds up only its own kubelets.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use tokio::sync::{Notify, OnceCell, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::apply::{self, LeaseOwner, Posted};
use crate::error::Error;
use crate::fake::node::{self, host_uid, is_ready};
use crate::fake::stable_share;
use crate::fidelity::{Fate, Fidelity};
use crate::metrics::Metrics;
use crate::plan::ClusterKey;
use crate::workload::{WorkloadClient, WorkloadClients};

/// Posts in flight per workload cluster; a kubelet whose cluster is still busy with
/// earlier ones skips its turn.
pub const IN_FLIGHT_PER_CLUSTER: usize = 8;
/// The least wait before a kubelet tries again after a failed or skipped post.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A Node as the registry needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: String,
    pub node_uid: String,
    pub host_uid: String,
    pub created: Timestamp,
    pub lease: LeaseOwner,
}

impl NodeRecord {
    /// The record of a Node as read from its cluster (whose Lease is not known yet).
    pub fn of(node: &Node) -> Option<Self> {
        Some(Self {
            node: node.metadata.name.clone()?,
            node_uid: node.metadata.uid.clone()?,
            host_uid: host_uid(node)?.to_string(),
            created: node.metadata.creation_timestamp.as_ref()?.0,
            lease: LeaseOwner::Unknown,
        })
    }
}

/// Whether a kubelet posts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posting {
    Alive,
    /// Stopped by a NotReady fault: its Node stays NotReady.
    Stopped,
    /// Its Node was deleted by someone else.
    NodeGone,
}

/// Serialises a kubelet's posts with its retirement: once retired (its Node about to be
/// deleted, or its cluster forgotten) it never posts again, so no heartbeat re-creates a
/// Lease the cleanup has just deleted.
#[derive(Debug, Default)]
pub struct Guard {
    retired: AtomicBool,
    busy: tokio::sync::Mutex<()>,
}

impl Guard {
    /// Retires the kubelet and waits for a post in flight; hold the result while deleting.
    pub async fn retire(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.retired.store(true, Ordering::SeqCst);
        self.busy.lock().await
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }
}

/// One kubelet, as the cleanup sees it.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub node: String,
    pub host_uid: String,
    pub guard: Arc<Guard>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Queued(Instant),
    InFlight,
    Idle,
}

struct Kubelet {
    node_uid: String,
    host_uid: String,
    lease: LeaseOwner,
    /// When it stops posting (a NotReady fault).
    stops_at: Option<Instant>,
    /// Where its heartbeats fall within the interval.
    phase: Duration,
    /// When its conditions were last reported; `None`: not by this process yet.
    reported: Option<Instant>,
    posting: Posting,
    slot: Slot,
    guard: Arc<Guard>,
}

struct ClusterKubelets {
    adopted: Arc<OnceCell<()>>,
    in_flight: Arc<Semaphore>,
    kubelets: HashMap<String, Kubelet>,
}

impl ClusterKubelets {
    fn new() -> Self {
        Self {
            adopted: Arc::new(OnceCell::new()),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_PER_CLUSTER)),
            kubelets: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct State {
    clusters: HashMap<ClusterKey, ClusterKubelets>,
    /// Kubelets by due time. Entries are not removed when a kubelet is rescheduled or
    /// removed: one whose kubelet's slot no longer says the same time is stale.
    queue: BTreeSet<(Instant, ClusterKey, String)>,
    /// When the driving task will wake on its own; `None` while it waits for a wake-up
    /// only. A kubelet scheduled no sooner needs no wake-up.
    wakes_at: Option<Instant>,
}

impl State {
    /// Whether the driving task must be woken for a kubelet due at `at`.
    fn wakes_too_late_for(&self, at: Instant) -> bool {
        self.wakes_at.is_none_or(|w| at < w)
    }
}

/// The driving task wakes at most this many times per heartbeat interval (once a second
/// at the default 40 s), and posts for every kubelet due by then: each wake-up of a task
/// costs a context switch or two, most of a heartbeat's CPU when 1000 kubelets woke it
/// one by one. A post is late by at most one tick; its next one is still counted from
/// when it was due.
const TICKS_PER_INTERVAL: u32 = 40;

/// The tick of the driving task for heartbeats every `interval`.
fn tick(interval: Duration) -> Duration {
    (interval / TICKS_PER_INTERVAL).min(Duration::from_secs(1))
}

/// What a kubelet does when its time comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Heartbeat,
    StopPosting,
}

/// A kubelet whose time has come.
struct Due {
    cluster: ClusterKey,
    node: String,
    node_uid: String,
    lease: LeaseOwner,
    due: Instant,
    step: Step,
    /// Whether this heartbeat reports the Node's conditions too.
    report: bool,
    guard: Arc<Guard>,
    in_flight: Arc<Semaphore>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// With whose the Lease turned out to be.
    Posted(LeaseOwner),
    Stopped,
    NodeGone,
    Failed,
    Skipped,
    Retired,
}

/// When a kubelet acts next: its heartbeat slot after `last` (the first one `phase` into
/// the interval, so that Nodes created together spread over it), or the moment it stops
/// posting if that comes first. `None`: nothing left to do.
pub fn next_due(
    last: Option<Instant>,
    now: Instant,
    interval: Duration,
    phase: Duration,
    stops_at: Option<Instant>,
) -> Option<Instant> {
    let beat = (!interval.is_zero()).then(|| match last {
        None => now + phase,
        // Keep the slot; after a stall, go on from now rather than catch up in a burst.
        Some(last) => (last + interval).max(now),
    });
    match (beat, stops_at) {
        (Some(b), Some(s)) => Some(b.min(s)),
        (b, s) => b.or(s),
    }
}

/// Whether a heartbeat at `now` reports the Node's conditions: the first one at least
/// `every` after the last report (each one if `every` is zero).
pub fn reports_status(last: Option<Instant>, now: Instant, every: Duration) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= every)
}

/// What a kubelet due at `now` does.
pub fn step(now: Instant, stops_at: Option<Instant>) -> Step {
    if stops_at.is_some_and(|s| s <= now) {
        Step::StopPosting
    } else {
        Step::Heartbeat
    }
}

/// `created + after`, as an [`Instant`] (never before `now`).
fn instant_of(created: Timestamp, after: Duration, now_wall: Timestamp, now: Instant) -> Instant {
    let at = jiff::SignedDuration::try_from(after)
        .ok()
        .and_then(|a| created.checked_add(a).ok())
        .unwrap_or(Timestamp::MAX);
    let wait = Duration::try_from(at.duration_since(now_wall)).unwrap_or(Duration::ZERO);
    now + wait
}

/// The registry of fake kubelets, and the task that makes them post.
pub struct Kubelets {
    fidelity: Fidelity,
    state: Mutex<State>,
    wake: Notify,
}

impl Kubelets {
    pub fn new(fidelity: Fidelity) -> Self {
        Self {
            fidelity,
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state whole before anything can panic.
        crate::lock(&self.state)
    }

    /// Takes over our Nodes of the workload cluster once per process (after a restart they
    /// are there, but nobody posts for them). Later calls return at once.
    pub async fn adopt(&self, workload: &WorkloadClient, metrics: &Metrics) -> Result<(), Error> {
        let cell = {
            let mut state = self.lock();
            let cluster = state
                .clusters
                .entry(workload.cluster.clone())
                .or_insert_with(ClusterKubelets::new);
            cluster.adopted.clone()
        };
        cell.get_or_try_init(|| async {
            let nodes = apply::list_cluster_nodes(workload, metrics).await?;
            let mut adopted = 0;
            for node in &nodes {
                let Some(record) = NodeRecord::of(node) else {
                    continue;
                };
                // Made by an earlier version or another replica: the kubelet API is here
                // now (or gone). Said, and left for the next adoption, if it fails.
                let patch = node::readvertised(node, self.fidelity.kubelet_endpoint)
                    .and_then(|(addresses, port)| node::endpoint_patch(node, &addresses, port));
                if let Some(patch) = patch
                    && let Err(e) = apply::patch_endpoint(workload, metrics, &record.node, &patch).await
                {
                    warn!(cluster = %workload.cluster, node = %record.node, error = %e, "could not advertise the kubelet API on a Node");
                }
                let stopped = matches!(
                    self.fidelity.fate(&record.host_uid),
                    Fate::NotReadyAfter(_)
                ) && !is_ready(node);
                let posting = if stopped {
                    Posting::Stopped
                } else {
                    Posting::Alive
                };
                adopted += usize::from(self.insert(&workload.cluster, record, posting, false));
            }
            if adopted > 0 {
                info!(cluster = %workload.cluster, adopted, "took over the Nodes of an earlier run");
            }
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Whether [`Kubelets::adopt`] has run for the cluster.
    pub fn is_adopted(&self, cluster: &ClusterKey) -> bool {
        self.lock()
            .clusters
            .get(cluster)
            .is_some_and(|c| c.adopted.initialized())
    }

    /// Records a Node this process ensured; its kubelet starts posting.
    pub fn register(&self, cluster: &ClusterKey, record: NodeRecord) {
        self.insert(cluster, record, Posting::Alive, true);
    }

    /// Inserts a kubelet unless one for the same Node (same UID) is there already; with
    /// `replace`, a kubelet of an earlier Node of the same name is replaced. Returns
    /// whether it inserted.
    fn insert(
        &self,
        cluster: &ClusterKey,
        record: NodeRecord,
        posting: Posting,
        replace: bool,
    ) -> bool {
        let now = Instant::now();
        let stops_at = match self.fidelity.fate(&record.host_uid) {
            Fate::NotReadyAfter(after) => {
                Some(instant_of(record.created, after, Timestamp::now(), now))
            }
            Fate::Healthy | Fate::NeverReady => None,
        };
        let phase = self
            .fidelity
            .heartbeat_interval
            .mul_f64(stable_share(&format!(
                "heartbeat/{cluster}/{}",
                record.node
            )));
        let mut state = self.lock();
        let kubelets = &mut state
            .clusters
            .entry(cluster.clone())
            .or_insert_with(ClusterKubelets::new)
            .kubelets;
        if let Some(k) = kubelets.get_mut(&record.node) {
            let same = k.node_uid == record.node_uid && !k.guard.is_retired();
            if same && matches!(record.lease, LeaseOwner::Ours(_)) {
                k.lease = record.lease;
                return false;
            }
            if same || !replace {
                return false;
            }
        }
        let next = match posting {
            Posting::Alive => {
                next_due(None, now, self.fidelity.heartbeat_interval, phase, stops_at)
            }
            Posting::Stopped | Posting::NodeGone => None,
        };
        kubelets.insert(
            record.node.clone(),
            Kubelet {
                node_uid: record.node_uid,
                host_uid: record.host_uid,
                lease: record.lease,
                stops_at,
                phase,
                reported: None,
                posting,
                slot: Slot::Idle,
                guard: Arc::default(),
            },
        );
        let wake = schedule(&mut state, cluster, &record.node, next);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// Whether the Node's kubelet was stopped by a fault: its Node must stay NotReady.
    pub fn is_stopped(&self, cluster: &ClusterKey, node: &str) -> bool {
        self.lock()
            .clusters
            .get(cluster)
            .and_then(|c| c.kubelets.get(node))
            .is_some_and(|k| k.posting == Posting::Stopped)
    }

    pub fn len(&self) -> usize {
        self.lock()
            .clusters
            .values()
            .map(|c| c.kubelets.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clusters(&self) -> Vec<ClusterKey> {
        self.lock().clusters.keys().cloned().collect()
    }

    pub fn kubelets_of(&self, cluster: &ClusterKey) -> Vec<Tracked> {
        self.lock()
            .clusters
            .get(cluster)
            .map(|c| {
                c.kubelets
                    .iter()
                    .map(|(node, k)| Tracked {
                        node: node.clone(),
                        host_uid: k.host_uid.clone(),
                        guard: k.guard.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets one kubelet (its Node is deleted), unless it was replaced meanwhile.
    pub fn remove(&self, cluster: &ClusterKey, tracked: &Tracked) {
        let mut state = self.lock();
        if let Some(c) = state.clusters.get_mut(cluster)
            && c.kubelets
                .get(&tracked.node)
                .is_some_and(|k| Arc::ptr_eq(&k.guard, &tracked.guard))
        {
            c.kubelets.remove(&tracked.node);
        }
    }

    /// Forgets a whole cluster (it is gone): its kubelets stop posting.
    pub fn forget(&self, cluster: &ClusterKey) {
        if let Some(c) = self.lock().clusters.remove(cluster) {
            for k in c.kubelets.values() {
                k.guard.retired.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Makes the kubelets post until `stopped` resolves.
    pub async fn run(
        self: Arc<Self>,
        workloads: Arc<WorkloadClients>,
        metrics: Arc<Metrics>,
        stopped: impl Future<Output = ()>,
    ) {
        let mut posts = JoinSet::new();
        let tick = tick(self.fidelity.heartbeat_interval);
        tokio::pin!(stopped);
        loop {
            let now = Instant::now();
            let (due, next) = self.take_due(now, now + tick);
            for d in due {
                self.dispatch(d, &workloads, &metrics, &mut posts);
            }
            while posts.try_join_next().is_some() {}
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut stopped => break,
                () = self.wake.notified() => {}
                () = sleep => {}
            }
        }
        posts.shutdown().await;
    }

    /// Takes the kubelets due by `now` off the queue; also returns when to look again:
    /// when the next one is due, but not before `not_before`.
    fn take_due(&self, now: Instant, not_before: Instant) -> (Vec<Due>, Option<Instant>) {
        let mut state = self.lock();
        let mut due = Vec::new();
        while let Some(first) = state.queue.first().cloned() {
            if first.0 > now {
                let wake = first.0.max(not_before);
                state.wakes_at = Some(wake);
                return (due, Some(wake));
            }
            state.queue.pop_first();
            let (at, cluster, node) = first;
            let Some(c) = state.clusters.get_mut(&cluster) else {
                continue;
            };
            let in_flight = c.in_flight.clone();
            let Some(k) = c.kubelets.get_mut(&node) else {
                continue;
            };
            if k.slot != Slot::Queued(at) {
                continue;
            }
            k.slot = Slot::InFlight;
            due.push(Due {
                step: step(now, k.stops_at),
                report: reports_status(k.reported, now, self.fidelity.status_report_interval),
                cluster,
                node,
                node_uid: k.node_uid.clone(),
                lease: k.lease.clone(),
                due: at,
                guard: k.guard.clone(),
                in_flight,
            });
        }
        state.wakes_at = None;
        (due, None)
    }

    fn dispatch(
        self: &Arc<Self>,
        due: Due,
        workloads: &WorkloadClients,
        metrics: &Arc<Metrics>,
        posts: &mut JoinSet<()>,
    ) {
        let workload = workloads.cached(&due.cluster);
        let permit = due.in_flight.clone().try_acquire_owned();
        let (Some(workload), Ok(permit)) = (workload, permit) else {
            metrics.heartbeats.with_label_values(&["skipped"]).inc();
            self.finished(&due, Outcome::Skipped);
            return;
        };
        let (kubelets, metrics) = (self.clone(), metrics.clone());
        posts.spawn(async move {
            let outcome = post(&workload, &due, &metrics).await;
            drop(permit);
            kubelets.finished(&due, outcome);
        });
    }

    /// Records what a post did and schedules the kubelet's next one.
    fn finished(&self, due: &Due, outcome: Outcome) {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(k) = state
            .clusters
            .get_mut(&due.cluster)
            .and_then(|c| c.kubelets.get_mut(&due.node))
            .filter(|k| Arc::ptr_eq(&k.guard, &due.guard) && k.slot == Slot::InFlight)
        else {
            return;
        };
        k.slot = Slot::Idle;
        let next = match outcome {
            Outcome::Retired => return,
            Outcome::Stopped => {
                k.posting = Posting::Stopped;
                return;
            }
            Outcome::NodeGone => {
                k.posting = Posting::NodeGone;
                return;
            }
            Outcome::Posted(lease) => {
                k.lease = lease;
                if due.report {
                    k.reported = Some(due.due);
                }
                next_due(
                    Some(due.due),
                    now,
                    self.fidelity.heartbeat_interval,
                    k.phase,
                    k.stops_at,
                )
            }
            Outcome::Failed | Outcome::Skipped => next_due(
                Some(due.due),
                now,
                self.fidelity.heartbeat_interval,
                k.phase,
                k.stops_at,
            )
            .map(|n| n.max(now + RETRY_AFTER)),
        };
        let wake = schedule(&mut state, &due.cluster, &due.node, next);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// Queues the kubelet at `at`; returns whether the driving task must be woken for it (it
/// may be asleep with nothing queued, or until a later time).
fn schedule(state: &mut State, cluster: &ClusterKey, node: &str, at: Option<Instant>) -> bool {
    let Some(at) = at else {
        return false;
    };
    if let Some(k) = state
        .clusters
        .get_mut(cluster)
        .and_then(|c| c.kubelets.get_mut(node))
    {
        k.slot = Slot::Queued(at);
        state.queue.insert((at, cluster.clone(), node.to_string()));
    }
    state.wakes_too_late_for(at)
}

/// One post of one kubelet.
async fn post(workload: &WorkloadClient, due: &Due, metrics: &Metrics) -> Outcome {
    let _busy = due.guard.busy.lock().await;
    if due.guard.is_retired() {
        return Outcome::Retired;
    }
    let workload = &workload.for_kubelet(&due.node);
    let result = match due.step {
        Step::Heartbeat => {
            let beat = apply::Heartbeat {
                node: &due.node,
                node_uid: &due.node_uid,
                lease: &due.lease,
                report: due.report,
            };
            apply::heartbeat(workload, &beat, metrics).await
        }
        Step::StopPosting => apply::stop_posting(workload, &due.node, &due.node_uid, metrics)
            .await
            .map(|posted| apply::Beat {
                posted,
                lease: due.lease.clone(),
            }),
    };
    match (due.step, result.map(|b| (b.posted, b.lease))) {
        (_, Ok((Posted::NodeGone, _))) => {
            debug!(cluster = %due.cluster, node = %due.node, "the Node is gone: its kubelet stops");
            Outcome::NodeGone
        }
        (Step::Heartbeat, Ok((Posted::Posted, lease))) => {
            metrics.heartbeats.with_label_values(&["posted"]).inc();
            Outcome::Posted(lease)
        }
        (Step::StopPosting, Ok((Posted::Posted, _))) => {
            metrics
                .faults_injected
                .with_label_values(&["not_ready"])
                .inc();
            info!(cluster = %due.cluster, node = %due.node, "fault injection: the Node's kubelet stopped posting (NotReady)");
            Outcome::Stopped
        }
        (_, Err(e)) => {
            metrics.heartbeats.with_label_values(&["failed"]).inc();
            debug!(cluster = %due.cluster, node = %due.node, reason = e.reason(), error = %e, "a kubelet could not post");
            Outcome::Failed
        }
    }
}

/// The record of a Node this process has just ensured, from what the apply returned.
pub fn record_of(
    node: &Node,
    uid: Option<&str>,
    since: Option<Timestamp>,
    lease: LeaseOwner,
) -> Option<NodeRecord> {
    Some(NodeRecord {
        node: node.name_any(),
        node_uid: uid?.to_string(),
        host_uid: host_uid(node)?.to_string(),
        created: since?,
        lease,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn conditions_are_reported_at_the_first_heartbeat_a_report_interval_on() {
        let t0 = Instant::now();
        let every = S(300);
        // Never reported by this process (new, or adopted after a restart): now.
        assert!(reports_status(None, t0, every));
        // 40 s heartbeats after a report at t0: the 8th (320 s), not the 7th (280 s).
        assert!(!reports_status(Some(t0), t0 + S(280), every));
        assert!(reports_status(Some(t0), t0 + S(320), every));
        assert!(reports_status(Some(t0), t0 + S(300), every));
        // Zero: with every heartbeat.
        assert!(reports_status(Some(t0), t0, Duration::ZERO));
    }

    #[test]
    fn heartbeats_keep_their_slot_and_the_fault_comes_first() {
        let t0 = Instant::now();
        let interval = S(40);
        // The first heartbeat comes `phase` into the interval...
        assert_eq!(next_due(None, t0, interval, S(13), None), Some(t0 + S(13)));
        // ...then one interval after the previous slot, even if that post was late.
        assert_eq!(
            next_due(Some(t0 + S(13)), t0 + S(15), interval, S(13), None),
            Some(t0 + S(53))
        );
        // After a stall longer than the interval: from now, no burst of catch-ups.
        assert_eq!(
            next_due(Some(t0), t0 + S(100), interval, S(0), None),
            Some(t0 + S(100))
        );
        // A fault due before the next heartbeat comes first.
        assert_eq!(
            next_due(Some(t0), t0 + S(1), interval, S(0), Some(t0 + S(30))),
            Some(t0 + S(30))
        );
        // Without heartbeats only the fault is ever due; without either, nothing.
        assert_eq!(
            next_due(None, t0, Duration::ZERO, S(0), Some(t0 + S(30))),
            Some(t0 + S(30))
        );
        assert_eq!(next_due(None, t0, Duration::ZERO, S(0), None), None);
    }

    #[test]
    fn a_kubelet_stops_posting_once_its_fault_is_due() {
        let t0 = Instant::now();
        assert_eq!(step(t0, None), Step::Heartbeat);
        assert_eq!(step(t0, Some(t0 + S(1))), Step::Heartbeat);
        assert_eq!(step(t0 + S(1), Some(t0 + S(1))), Step::StopPosting);
    }

    #[test]
    fn a_fault_is_timed_from_the_nodes_creation() {
        let now_wall: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let t0 = Instant::now();
        let created: Timestamp = "2026-11-26T09:59:50Z".parse().unwrap();
        assert_eq!(instant_of(created, S(30), now_wall, t0), t0 + S(20));
        // Already past (e.g. after a restart): now.
        assert_eq!(instant_of(created, S(5), now_wall, t0), t0);
    }

    fn record(node: &str, uid: &str) -> NodeRecord {
        NodeRecord {
            node: node.into(),
            node_uid: uid.into(),
            host_uid: format!("host-{node}"),
            created: Timestamp::now(),
            lease: LeaseOwner::Unknown,
        }
    }

    fn key() -> ClusterKey {
        ClusterKey {
            namespace: "ns".into(),
            name: "c".into(),
        }
    }

    #[test]
    fn the_driving_task_ticks_forty_times_an_interval_at_most_once_a_second() {
        assert_eq!(tick(S(40)), S(1));
        assert_eq!(tick(S(400)), S(1));
        assert_eq!(tick(S(1)), Duration::from_millis(25));
    }

    #[test]
    fn the_driving_task_is_woken_only_for_a_kubelet_due_before_it_wakes() {
        let t0 = Instant::now();
        let mut state = State::default();
        assert!(
            state.wakes_too_late_for(t0 + S(100)),
            "it waits to be woken"
        );
        state.wakes_at = Some(t0 + S(10));
        assert!(state.wakes_too_late_for(t0 + S(5)));
        assert!(!state.wakes_too_late_for(t0 + S(10)));
        assert!(!state.wakes_too_late_for(t0 + S(50)));
    }

    #[tokio::test]
    async fn the_driving_task_looks_again_when_the_next_is_due_but_not_before_its_tick() {
        let kubelets = Kubelets::new(Fidelity {
            heartbeat_interval: S(40),
            ..Fidelity::default()
        });
        kubelets.register(&key(), record("n0", "u0"));
        let start = Instant::now();
        let (due, next) = kubelets.take_due(start, start);
        let next = next.expect("a kubelet is queued");
        assert!(
            due.is_empty(),
            "its first heartbeat falls later in the interval"
        );
        assert!(next <= start + S(40), "within the interval: {next:?}");
        let (_, later) = kubelets.take_due(start, start + S(41));
        assert_eq!(later, Some(start + S(41)));
        assert_eq!(kubelets.lock().wakes_at, Some(start + S(41)));
    }

    #[tokio::test]
    async fn kubelets_spread_over_the_interval_and_are_due_once_each() {
        let kubelets = Kubelets::new(Fidelity {
            heartbeat_interval: S(40),
            ..Fidelity::default()
        });
        for i in 0..400 {
            kubelets.register(&key(), record(&format!("n{i}"), &format!("u{i}")));
        }
        // Registering the same Node again changes nothing.
        kubelets.register(&key(), record("n0", "u0"));
        assert_eq!(kubelets.len(), 400);
        let start = Instant::now();
        let mut per_tenth = [0usize; 10];
        for tenth in 1..=10 {
            let (due, _) = kubelets.take_due(start + S(4 * tenth), start);
            per_tenth[tenth as usize - 1] = due.len();
        }
        assert_eq!(per_tenth.iter().sum::<usize>(), 400, "{per_tenth:?}");
        assert!(
            per_tenth.iter().all(|n| (20..=60).contains(n)),
            "spread evenly: {per_tenth:?}"
        );
        // In flight, nobody is due twice.
        assert!(kubelets.take_due(start + S(200), start).0.is_empty());
    }

    #[tokio::test]
    async fn a_retired_kubelet_is_replaced_by_a_new_node_of_the_same_name() {
        let kubelets = Kubelets::new(Fidelity {
            heartbeat_interval: S(40),
            ..Fidelity::default()
        });
        kubelets.register(&key(), record("n", "u1"));
        let old = kubelets.kubelets_of(&key()).remove(0);
        drop(old.guard.retire().await);
        kubelets.register(&key(), record("n", "u1"));
        let new = kubelets.kubelets_of(&key()).remove(0);
        assert!(!Arc::ptr_eq(&old.guard, &new.guard));
        // Removing the old one leaves the new one.
        kubelets.remove(&key(), &old);
        assert_eq!(kubelets.len(), 1);
        kubelets.remove(&key(), &new);
        assert!(kubelets.is_empty());
        kubelets.register(&key(), record("n", "u2"));
        kubelets.forget(&key());
        assert!(kubelets.clusters().is_empty());
    }
}
