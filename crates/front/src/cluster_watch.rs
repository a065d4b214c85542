//! The Cluster watcher: the front serves what the management cluster says. Clusters and
//! their CA Secrets are kept in reflector stores; every change (debounced, so a burst of
//! a thousand Clusters is one pass) runs observe → plan → apply through
//! [`Front::reconcile`], then:
//!
//! - records each served cluster's prefix on its Cluster (an annotation), and hands the
//!   recorded prefixes back to the front on every pass, so a restarted front keeps them;
//! - says each distinct refusal once: an Event on the Cluster, a log line, a metric;
//! - removes from the backing server the objects of Clusters gone (deleted, or recreated
//!   under the same name) and retires their prefixes, with backoff on errors.
//!
//! The decisions are pure functions of the stores (this module's lower half); the loop
//! only reads the stores, calls them and carries out what they say.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use metal3_fakenode_api::resources::Cluster;
use tenancy::{CLUSTER_LABEL, ClusterKey, PREFIX_ANNOTATION, Prefix};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::front::{Endpoint, Front};
use crate::observe::{FrontAddress, observe};
use crate::plan::Refusal;

/// The label CAPI puts on the Secrets it generates for a Cluster, the `<cluster>-ca`
/// among them; only these Secrets are watched.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";

/// The reporting controller on the front's Events.
pub const REPORTER: &str = "metal3-fakenode-front";

/// How the watcher runs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Where the front is reached, as Clusters name it.
    pub address: FrontAddress,
    /// Changes arriving within this time of the first are handled in one pass.
    pub debounce: Duration,
    /// The reporting instance on Events (the Pod's name).
    pub instance: Option<String>,
}

/// Backoff of a failed removal: doubled from the first delay up to the last.
const REMOVAL_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// Watches the management cluster and keeps `front` serving what it says, until
/// `shutdown` completes.
/// `ready` turns true after the first pass, once both stores were listed.
pub async fn run(
    management: kube::Client,
    front: Arc<Front>,
    config: WatchConfig,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let changed = Arc::new(Notify::new());
    let (clusters, cluster_writer) = reflector::store::<Cluster>();
    let (secrets, secret_writer) = reflector::store::<Secret>();
    let cluster_events = watcher(
        Api::<Cluster>::all(management.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(cluster_writer)
    .map(|event| event.map(drop).map_err(|e| ("clusters", e)));
    let secret_events = watcher(
        Api::<Secret>::all(management.clone()),
        watcher::Config::default().labels(CLUSTER_NAME_LABEL),
    )
    .default_backoff()
    // Only the CA's keys are kept: the kubeconfigs and other keys CAPI labels alike are
    // never read, and need not sit in memory.
    .modify(|secret| {
        if !secret.name_any().ends_with("-ca") {
            secret.data = None;
        }
        secret.metadata.managed_fields = None;
    })
    .reflect(secret_writer)
    .map(|event| event.map(drop).map_err(|e| ("secrets", e)));
    let notify = changed.clone();
    let watches = futures::stream::select(cluster_events, secret_events).for_each(move |event| {
        match event {
            Ok(()) => notify.notify_one(),
            Err((resource, e)) => {
                tracing::warn!(resource, error = %e, "watch of the management cluster failing; retrying");
            }
        }
        futures::future::ready(())
    });
    let recorder = Recorder::new(
        management.clone(),
        Reporter {
            controller: REPORTER.into(),
            instance: config.instance.clone(),
        },
    );
    let shell = Shell {
        management,
        front,
        config,
        clusters,
        secrets,
        recorder,
        ready,
    };
    tokio::select! {
        () = watches => Ok(()),
        result = shell.run(changed) => result,
        () = shutdown => Ok(()),
    }
}

struct Shell {
    management: kube::Client,
    front: Arc<Front>,
    config: WatchConfig,
    clusters: Store<Cluster>,
    secrets: Store<Secret>,
    recorder: Recorder,
    ready: Arc<AtomicBool>,
}

/// What the loop carries from one pass to the next.
#[derive(Default)]
struct Memory {
    said: RefusalsSaid,
    /// Prefixes to remove, and when to try next after a failure.
    removals: BTreeMap<Prefix, Retry>,
    /// Prefixes found in the backing server at start that no Cluster records.
    strays: BTreeSet<Prefix>,
    /// When to pass again though nothing changed: a listener failed to start (a port
    /// taken may be freed) or a prefix could not be recorded.
    again: Option<Instant>,
}

/// How long a failed start or annotation waits for its retry when nothing changes.
const RETRY_PASS: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    delay: Duration,
}

impl Shell {
    async fn run(self, changed: Arc<Notify>) -> Result<()> {
        let ready = tokio::try_join!(
            self.clusters.wait_until_ready(),
            self.secrets.wait_until_ready()
        );
        if ready.is_err() {
            return Ok(());
        }
        tracing::info!("the management cluster's Clusters and CA Secrets are listed");
        let mut memory = Memory::default();
        self.pass(&mut memory).await;
        memory.strays = self.strays().await;
        for prefix in &memory.strays {
            tracing::info!(%prefix, "objects in the backing server recorded on no Cluster; removing them");
            memory.removals.insert(
                prefix.clone(),
                Retry {
                    at: Instant::now(),
                    delay: REMOVAL_BACKOFF.0,
                },
            );
        }
        self.ready.store(true, Ordering::Relaxed);
        loop {
            let wake = memory
                .removals
                .values()
                .map(|r| r.at)
                .chain(memory.again)
                .min();
            tokio::select! {
                () = changed.notified() => {
                    tokio::time::sleep(self.config.debounce).await;
                }
                () = sleep_until(wake) => {}
            }
            self.pass(&mut memory).await;
        }
    }

    #[tracing::instrument(skip_all)]
    async fn pass(&self, memory: &mut Memory) {
        let clusters: Vec<Arc<Cluster>> = self.clusters.state();
        let (recorded, unreadable) = recorded_prefixes(clusters.iter().map(Arc::as_ref));
        for (cluster, value) in unreadable {
            tracing::warn!(%cluster, value, annotation = PREFIX_ANNOTATION, "not a prefix; ignored");
        }
        self.front.remember(&recorded).await;
        let secret = |namespace: &str, name: &str| {
            self.secrets
                .get(&ObjectRef::new(name).within(namespace))
                .map(|s| (*s).clone())
        };
        let (wanted, mut refused) = observe(
            &self.config.address,
            clusters.iter().map(Arc::as_ref),
            secret,
        );
        let outcome = self.front.reconcile(&wanted).await;
        let mut retry = !outcome.failed.is_empty();
        refused.extend(outcome.refused);
        refused.extend(outcome.contested);
        refused.extend(outcome.failed.into_iter().map(|(cluster, e)| Refusal {
            cluster,
            reason: e.reason(),
            why: e.to_string(),
        }));
        for refusal in memory.said.update(&refused) {
            self.say(&refusal, &clusters).await;
        }
        let endpoints = self.front.endpoints().await;
        for (cluster, prefix) in annotations_to_write(clusters.iter().map(Arc::as_ref), &endpoints)
        {
            retry |= !self.annotate(&cluster, &prefix).await;
        }
        memory.again = retry.then(|| Instant::now() + RETRY_PASS);
        let live: BTreeSet<String> = clusters.iter().filter_map(|c| c.uid()).collect();
        let recorded = self.front.recorded().await;
        for prefix in gone(&recorded, &live)
            .into_iter()
            .chain(memory.strays.clone())
        {
            memory.removals.entry(prefix).or_insert(Retry {
                at: Instant::now(),
                delay: REMOVAL_BACKOFF.0,
            });
        }
        self.remove_due(memory).await;
    }

    /// One refusal, said once: an Event on the Cluster, a log line, a metric. (A contested
    /// endpoint is said the same way, though its Cluster stays served.)
    async fn say(&self, refusal: &Refusal, clusters: &[Arc<Cluster>]) {
        tracing::warn!(cluster = %refusal.cluster, reason = refusal.reason, why = %refusal.why, "not served");
        self.front
            .metrics()
            .refusals
            .with_label_values(&[refusal.reason])
            .inc();
        let Some(cluster) = clusters
            .iter()
            .find(|c| c.uid().as_deref() == Some(refusal.cluster.uid.as_str()))
        else {
            return;
        };
        let reference: ObjectReference = cluster.object_ref(&());
        let event = Event {
            type_: EventType::Warning,
            reason: event_reason(refusal.reason),
            note: Some(truncate(&refusal.why, 1000)),
            action: "Serve".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(cluster = %refusal.cluster, error = %e, "cannot publish an Event");
        }
    }

    /// Records a served cluster's prefix on its Cluster; false when that failed, to be
    /// retried on a later pass (the annotation still differs then).
    async fn annotate(&self, cluster: &ClusterKey, prefix: &Prefix) -> bool {
        let api: Api<Cluster> = Api::namespaced(self.management.clone(), &cluster.namespace);
        let patch = serde_json::json!({
            "metadata": {
                // The UID guards against annotating a recreated Cluster of the same name.
                "uid": cluster.uid,
                "annotations": {PREFIX_ANNOTATION: prefix.as_str()},
            }
        });
        match api
            .patch(
                &cluster.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(%cluster, %prefix, "prefix recorded on the Cluster");
                true
            }
            Err(e) => {
                let e = Error::Management(e);
                tracing::warn!(%cluster, reason = e.reason(), error = %e, "cannot record the prefix; retrying");
                false
            }
        }
    }

    async fn remove_due(&self, memory: &mut Memory) {
        let now = Instant::now();
        let due: Vec<Prefix> = memory
            .removals
            .iter()
            .filter(|(_, retry)| retry.at <= now)
            .map(|(prefix, _)| prefix.clone())
            .collect();
        for prefix in due {
            let removal = crate::removal::remove_cluster_objects(self.front.backing(), &prefix)
                .instrument(tracing::info_span!("removal", %prefix));
            match removal.await {
                Ok(deleted) => {
                    if self.front.retire(&prefix).await {
                        tracing::info!(%prefix, deleted, "a removed cluster's objects are gone; prefix retired");
                        self.front.metrics().clusters_removed.inc();
                        memory.removals.remove(&prefix);
                        memory.strays.remove(&prefix);
                    }
                }
                Err(e) => {
                    self.front
                        .metrics()
                        .removal_errors
                        .with_label_values(&[e.reason()])
                        .inc();
                    if let Some(retry) = memory.removals.get_mut(&prefix) {
                        retry.delay = (retry.delay * 2).min(REMOVAL_BACKOFF.1);
                        retry.at = Instant::now() + retry.delay;
                        tracing::warn!(%prefix, reason = e.reason(), error = %e, retry_in = ?retry.delay, "cannot remove a removed cluster's objects yet");
                    }
                }
            }
        }
    }

    /// Prefixes whose namespaces are in the backing server but which no Cluster records:
    /// a front stopped between a Cluster's deletion and the removal of its objects.
    async fn strays(&self) -> BTreeSet<Prefix> {
        let api: Api<Namespace> = Api::all(self.front.backing().clone());
        let namespaces = match api
            .list_metadata(&ListParams::default().labels(CLUSTER_LABEL))
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the backing server's namespaces; objects of Clusters deleted while the front was down stay");
                return BTreeSet::new();
            }
        };
        let mut found = BTreeSet::new();
        for namespace in &namespaces {
            let Some(value) = namespace.labels().get(CLUSTER_LABEL) else {
                continue;
            };
            match Prefix::parse(value) {
                Ok(prefix) => {
                    found.insert(prefix);
                }
                // Not written by a front: left alone.
                Err(e) => tracing::warn!(
                    namespace = %namespace.name_any(), value, error = %e,
                    "a backing namespace carries the tenancy label with no prefix; left alone"
                ),
            }
        }
        let recorded = self.front.recorded().await;
        found
            .into_iter()
            .filter(|p| !recorded.contains_key(p))
            .collect()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---- the pure half ---------------------------------------------------------------------

fn key_of(cluster: &Cluster) -> Option<ClusterKey> {
    Some(ClusterKey {
        namespace: cluster.metadata.namespace.clone()?,
        name: cluster.metadata.name.clone()?,
        uid: cluster.metadata.uid.clone()?,
    })
}

/// The prefixes recorded on Clusters (any Cluster, served by this front or not: a prefix
/// in use elsewhere is never handed out again), and annotations that are no prefix.
pub fn recorded_prefixes<'a>(
    clusters: impl IntoIterator<Item = &'a Cluster>,
) -> (BTreeMap<Prefix, ClusterKey>, Vec<(ClusterKey, String)>) {
    let mut recorded = BTreeMap::new();
    let mut unreadable = Vec::new();
    for cluster in clusters {
        let (Some(key), Some(value)) = (
            key_of(cluster),
            cluster.annotations().get(PREFIX_ANNOTATION),
        ) else {
            continue;
        };
        match Prefix::parse(value) {
            Ok(prefix) => {
                recorded.insert(prefix, key);
            }
            Err(_) => unreadable.push((key, value.clone())),
        }
    }
    (recorded, unreadable)
}

/// The served Clusters whose annotation does not say the prefix they are served under.
pub fn annotations_to_write<'a>(
    clusters: impl IntoIterator<Item = &'a Cluster>,
    endpoints: &BTreeMap<ClusterKey, Endpoint>,
) -> Vec<(ClusterKey, Prefix)> {
    clusters
        .into_iter()
        .filter_map(|cluster| {
            let key = key_of(cluster)?;
            let endpoint = endpoints.get(&key)?;
            let current = cluster.annotations().get(PREFIX_ANNOTATION);
            (current.map(String::as_str) != Some(endpoint.prefix.as_str()))
                .then(|| (key, endpoint.prefix.clone()))
        })
        .collect()
}

/// The recorded prefixes whose Cluster incarnation no longer exists: deleted, or
/// recreated under the same name with a new UID.
pub fn gone(recorded: &BTreeMap<Prefix, ClusterKey>, live: &BTreeSet<String>) -> Vec<Prefix> {
    recorded
        .iter()
        .filter(|(_, key)| !live.contains(&key.uid))
        .map(|(prefix, _)| prefix.clone())
        .collect()
}

/// The refusals said so far, per Cluster incarnation, so each is said once; a Cluster
/// served again, or refused for another reason, is forgotten or said anew.
#[derive(Debug, Default)]
pub struct RefusalsSaid(BTreeMap<ClusterKey, (&'static str, String)>);

impl RefusalsSaid {
    /// The refusals not said yet; remembers the current ones only.
    pub fn update(&mut self, current: &[Refusal]) -> Vec<Refusal> {
        let mut next = BTreeMap::new();
        let mut new = Vec::new();
        for refusal in current {
            let said = (refusal.reason, refusal.why.clone());
            if self.0.get(&refusal.cluster) != Some(&said) && !next.contains_key(&refusal.cluster) {
                new.push(refusal.clone());
            }
            next.insert(refusal.cluster.clone(), said);
        }
        self.0 = next;
        new
    }
}

/// An Event reason (PascalCase, as Kubernetes writes them) from a refusal reason:
/// `NotServed…`, except for a contested endpoint, whose Cluster is still served.
pub fn event_reason(reason: &str) -> String {
    let mut out = String::from(if reason == "endpoint_contested" {
        ""
    } else {
        "NotServed"
    });
    for word in reason.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// At most `max` bytes (an Event note's limit), cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut at = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}…", &text[..at])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn cluster(name: &str, uid: &str, prefix: Option<&str>) -> Cluster {
        let mut cluster: Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
            "metadata": {"namespace": "metal3", "name": name, "uid": uid},
            "spec": {},
        }))
        .unwrap();
        if let Some(prefix) = prefix {
            cluster
                .annotations_mut()
                .insert(PREFIX_ANNOTATION.into(), prefix.into());
        }
        cluster
    }

    fn key(name: &str, uid: &str) -> ClusterKey {
        ClusterKey {
            namespace: "metal3".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn refusal(name: &str, reason: &'static str, why: &str) -> Refusal {
        Refusal {
            cluster: key(name, name),
            reason,
            why: why.into(),
        }
    }

    #[test]
    fn prefixes_recorded_on_clusters_are_read_back_and_bad_ones_reported() {
        let clusters = [
            cluster("a", "ua", Some("taaaaa")),
            cluster("b", "ub", None),
            cluster("c", "uc", Some("not-a-prefix")),
        ];
        let (recorded, unreadable) = recorded_prefixes(&clusters);
        assert_eq!(
            recorded,
            BTreeMap::from([(Prefix::parse("taaaaa").unwrap(), key("a", "ua"))])
        );
        assert_eq!(
            unreadable,
            vec![(key("c", "uc"), "not-a-prefix".to_string())]
        );
    }

    #[test]
    fn only_served_clusters_whose_annotation_differs_are_annotated() {
        let clusters = [
            cluster("a", "ua", Some("taaaaa")),
            cluster("b", "ub", None),
            cluster("c", "uc", None),
        ];
        let endpoint = |p: &str| Endpoint {
            prefix: Prefix::parse(p).unwrap(),
            local_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        };
        let endpoints = BTreeMap::from([
            (key("a", "ua"), endpoint("taaaaa")),
            (key("b", "ub"), endpoint("tbbbbb")),
        ]);
        assert_eq!(
            annotations_to_write(&clusters, &endpoints),
            vec![(key("b", "ub"), Prefix::parse("tbbbbb").unwrap())]
        );
    }

    #[test]
    fn a_deleted_or_recreated_clusters_prefix_is_gone() {
        let recorded = BTreeMap::from([
            (Prefix::parse("taaaaa").unwrap(), key("a", "ua")),
            (Prefix::parse("tbbbbb").unwrap(), key("b", "old-ub")),
            (Prefix::parse("tccccc").unwrap(), key("b", "ub")),
        ]);
        let live = BTreeSet::from(["ub".to_string()]);
        assert_eq!(
            gone(&recorded, &live),
            vec![
                Prefix::parse("taaaaa").unwrap(),
                Prefix::parse("tbbbbb").unwrap()
            ]
        );
    }

    #[test]
    fn each_distinct_refusal_is_said_once() {
        let mut said = RefusalsSaid::default();
        let shared = [
            refusal("a", "endpoint_shared", "7001 by a, b"),
            refusal("b", "endpoint_shared", "7001 by a, b"),
        ];
        assert_eq!(said.update(&shared).len(), 2);
        assert!(said.update(&shared).is_empty(), "said again");
        // Another reason for a is said; b, no longer refused, is forgotten...
        let other = [refusal("a", "ca", "bad CA")];
        assert_eq!(said.update(&other), other.to_vec());
        // ...so a new refusal of b is said again.
        assert_eq!(said.update(&shared).len(), 2);
    }

    #[test]
    fn event_reasons_are_pascal_case() {
        assert_eq!(event_reason("endpoint_shared"), "NotServedEndpointShared");
        assert_eq!(event_reason("ca"), "NotServedCa");
        assert_eq!(event_reason("endpoint_contested"), "EndpointContested");
        assert_eq!(truncate("abcdef", 4), "a…");
        assert_eq!(truncate("abc", 3), "abc");
        assert!(truncate(&"é".repeat(600), 1000).len() <= 1000);
    }
}
