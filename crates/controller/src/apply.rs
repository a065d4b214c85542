//! Makes a workload cluster hold what the plan says: create when missing, leave alone what
//! is already right, never overwrite what is not ours. Every request goes through the
//! cluster's rate limit and is counted by verb and status code.

use std::future::Future;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::debug;

use crate::error::Error;
use crate::fake::node::{self, endpoint_patch, host_uid, is_ready};
use crate::fake::{is_ours, lease, managed_by_selector, static_pods};
use crate::metrics::{Metrics, Purpose};
use crate::plan::Desired;
use crate::workload::{WorkloadClient, classify};

/// The field manager for everything written to workload clusters.
pub const FIELD_MANAGER: &str = "metal3-fakenode";

/// What ensuring a Metal3Machine's objects did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `Some(creationTimestamp)` when this call created the Node.
    pub node_created: Option<Time>,
    /// The Node existed (ours, same host) but its status was not Ready and was set again,
    /// e.g. after a restart between the create and the status update.
    pub status_repaired: bool,
    pub kubeadm_config_created: bool,
    /// The Node's UID and creation time, whoever created it.
    pub node_uid: Option<String>,
    pub node_since: Option<Time>,
}

/// Ensures the kubeadm-config (control planes) and the Ready Node.
pub async fn ensure(
    workload: &WorkloadClient,
    desired: &Desired,
    metrics: &Metrics,
) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    // The kubeadm-config does not wait for the Node: one round trip less on the latency
    // path of a control plane's first Node.
    let config = async {
        match &desired.kubeadm_config {
            Some(config) => ensure_kubeadm_config(workload, config, metrics).await,
            None => Ok(false),
        }
    };
    let (config, ensured) =
        futures::future::join(config, ensure_node(workload, &desired.node, metrics)).await;
    outcome.kubeadm_config_created = config?;
    let ensured = ensured?;
    outcome.node_created = ensured.created;
    outcome.status_repaired = ensured.repaired;
    outcome.node_uid = ensured.uid;
    outcome.node_since = ensured.since;
    Ok(outcome)
}

/// Creates `kube-system/kubeadm-config` unless it exists. An existing one is kubeadm's or
/// an earlier run's; either way it already marks the control plane initialized.
async fn ensure_kubeadm_config(
    workload: &WorkloadClient,
    config: &ConfigMap,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let namespace = config
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("kube-system");
    let api: Api<ConfigMap> = Api::namespaced(workload.client(), namespace);
    Ok(
        create_unless_exists(workload, metrics, Purpose::KubeadmConfig, &api, config)
            .await?
            .is_some(),
    )
}

/// What [`ensure_node`] found or did.
struct EnsuredNode {
    /// The creation time if this call created the Node.
    created: Option<Time>,
    /// An existing Node's status had to be set again.
    repaired: bool,
    uid: Option<String>,
    since: Option<Time>,
}

/// Creates the Node with its status, as a kubelet registers: the API server keeps a
/// Node's status on create (unlike most kinds). An existing Node of ours that is not Ready
/// gets its status set through the status subresource.
async fn ensure_node(
    workload: &WorkloadClient,
    node: &Node,
    metrics: &Metrics,
) -> Result<EnsuredNode, Error> {
    let api: Api<Node> = Api::all(workload.client());
    let name = node.metadata.name.clone().unwrap_or_default();
    let wanted = host_uid(node).unwrap_or_default().to_string();
    let created =
        create_unless_exists(workload, metrics, Purpose::Registration, &api, node).await?;
    let (existing, created_at) = match created {
        Some(n) => {
            let at = n.metadata.creation_timestamp.clone();
            (n, at)
        }
        None => {
            let existing = request(
                workload,
                metrics,
                Purpose::Registration,
                "get",
                api.get(&name),
            )
            .await
            .map_err(|e| classify(&workload.cluster, e))?;
            if host_uid(&existing) != Some(wanted.as_str()) {
                return Err(Error::NodeConflict {
                    cluster: workload.cluster.to_string(),
                    node: name,
                    found: host_uid(&existing).map(str::to_string),
                    wanted,
                });
            }
            (existing, None)
        }
    };
    // A server that dropped the status on create is answered like a Node found not Ready.
    if !is_ready(&existing) {
        set_status(
            workload,
            metrics,
            Purpose::Registration,
            &api,
            &name,
            &node.status,
        )
        .await?;
    } else if let Some(patch) = desired_endpoint(node)
        .and_then(|(addresses, port)| endpoint_patch(&existing, &addresses, port))
    {
        patch_endpoint(workload, metrics, &name, &patch).await?;
    }
    lift_startup_taints(workload, metrics, node, &existing).await?;
    // A create that reached the server but whose answer was lost leaves a Node without a
    // creation time here; the next reconcile finds it and it counts as existing.
    Ok(EnsuredNode {
        repaired: created_at.is_none() && !is_ready(&existing),
        created: created_at,
        uid: existing.metadata.uid.clone(),
        since: existing.metadata.creation_timestamp.clone(),
    })
}

/// Creates the static pods that are missing and sets the status of ours that are not
/// running and ready. A Pod of the same name without our label (a real kubelet's) is
/// left alone. Returns how many this call created.
pub async fn ensure_static_pods(
    workload: &WorkloadClient,
    pods: &[Pod],
    metrics: &Metrics,
) -> Result<usize, Error> {
    let api: Api<Pod> = Api::namespaced(workload.client(), static_pods::NAMESPACE);
    let mut created = 0;
    for pod in pods {
        let name = pod.name_any();
        let body = Pod {
            status: None,
            ..pod.clone()
        };
        let fresh = create_unless_exists(workload, metrics, Purpose::StaticPods, &api, &body)
            .await?
            .is_some();
        if !fresh {
            let existing = request(
                workload,
                metrics,
                Purpose::StaticPods,
                "get",
                api.get(&name),
            )
            .await
            .map_err(|e| classify(&workload.cluster, e))?;
            if !is_ours(&existing.metadata) {
                debug!(pod = %name, "a static pod that is not ours: left alone");
                continue;
            }
            if static_pods::is_running_and_ready(&existing) {
                continue;
            }
        }
        set_status(
            workload,
            metrics,
            Purpose::StaticPods,
            &api,
            &name,
            &pod.status,
        )
        .await?;
        created += usize::from(fresh);
    }
    Ok(created)
}

/// Creates the Node's Lease unless it exists (then its heartbeats renew it). Returns the
/// UID of the Lease this call created.
pub async fn ensure_lease(
    workload: &WorkloadClient,
    lease: &Lease,
    metrics: &Metrics,
) -> Result<Option<String>, Error> {
    let api: Api<Lease> = Api::namespaced(workload.client(), lease::NAMESPACE);
    Ok(
        create_unless_exists(workload, metrics, Purpose::Lease, &api, lease)
            .await?
            .and_then(|created| created.metadata.uid),
    )
}

/// Whose a Node's Lease is, as far as its kubelet knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOwner {
    /// Not looked at yet (e.g. created by an earlier run).
    Unknown,
    /// Ours, with this UID.
    Ours(String),
    /// Someone else's: never touched.
    Foreign,
}

/// What a kubelet's periodic post found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    Posted,
    /// The Node is gone (or replaced by another of the same name): nothing to post for.
    /// A real kubelet would register again; here the reconcile does, if the Machine
    /// still needs a Node.
    NodeGone,
}

/// What a heartbeat did, and whose the Lease turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    pub posted: Posted,
    pub lease: LeaseOwner,
}

/// Writes touch an object only if it is still the one we know: the UID in a patch is a
/// precondition (the API server refuses to change it, 422).
fn replaced(status: &kube::core::Status) -> bool {
    status.code == 404
        || (status.code == 422
            && status
                .details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.field == "metadata.uid")))
}

/// One heartbeat of one Node.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat<'a> {
    pub node: &'a str,
    pub node_uid: &'a str,
    /// Whose its Lease is, as last seen.
    pub lease: &'a LeaseOwner,
    /// Whether its conditions are reported too (not only its Lease renewed).
    pub report: bool,
}

/// One heartbeat: the Node's conditions' heartbeat times if they are due, then its
/// Lease's renewal (re-created, as a kubelet does, if it is gone and the Node is not).
/// One request once the Lease is known, two with a report.
pub async fn heartbeat(
    workload: &WorkloadClient,
    beat: &Heartbeat<'_>,
    metrics: &Metrics,
) -> Result<Beat, Error> {
    let now = jiff::Timestamp::now();
    let gone = || Beat {
        posted: Posted::NodeGone,
        lease: beat.lease.clone(),
    };
    let report = || async {
        let mut patch = node::heartbeat_patch(&Time(now));
        patch["metadata"] = json!({ "uid": beat.node_uid });
        post_node_status(workload, beat.node, &patch, metrics).await
    };
    if beat.report && report().await? == Posted::NodeGone {
        return Ok(gone());
    }
    let lease = match renew_lease(workload, beat, &MicroTime(now), metrics).await? {
        Renewal::Renewed(lease) => lease,
        // A missing Lease may mean a deleted Node (the garbage collector takes its Lease
        // with it): asked before a Lease is made for it again.
        Renewal::Missing => {
            if !beat.report && report().await? == Posted::NodeGone {
                return Ok(gone());
            }
            let fresh = lease::node_lease(beat.node, beat.node_uid, &MicroTime(now));
            let created = ensure_lease(workload, &fresh, metrics).await?;
            created.map_or(LeaseOwner::Unknown, LeaseOwner::Ours)
        }
    };
    Ok(Beat {
        posted: Posted::Posted,
        lease,
    })
}

async fn post_node_status(
    workload: &WorkloadClient,
    node: &str,
    patch: &serde_json::Value,
    metrics: &Metrics,
) -> Result<Posted, Error> {
    let patch = kube::core::Request::new(Node::url_path(&(), None)).patch_subresource(
        "status",
        node,
        &field_manager(),
        &Patch::Strategic(patch),
    );
    match request(
        workload,
        metrics,
        Purpose::Heartbeat,
        "patch",
        unread(workload, patch),
    )
    .await
    {
        Ok(_) => Ok(Posted::Posted),
        Err(kube::Error::Api(s)) if replaced(&s) => Ok(Posted::NodeGone),
        Err(e) => Err(classify(&workload.cluster, e)),
    }
}

/// What a Lease renewal found.
enum Renewal {
    /// Renewed if ours; whose it is.
    Renewed(LeaseOwner),
    /// There is no Lease.
    Missing,
}

/// Renews the Node's Lease if it is ours, finding out whose it is first if unknown.
async fn renew_lease(
    workload: &WorkloadClient,
    beat: &Heartbeat<'_>,
    now: &MicroTime,
    metrics: &Metrics,
) -> Result<Renewal, Error> {
    let uid = match beat.lease {
        LeaseOwner::Foreign => return Ok(Renewal::Renewed(LeaseOwner::Foreign)),
        LeaseOwner::Ours(uid) => uid.clone(),
        LeaseOwner::Unknown => {
            // Only here: each client made holds a request queue while it lives.
            let api: Api<Lease> = Api::namespaced(workload.client(), lease::NAMESPACE);
            match get_opt(workload, metrics, Purpose::Heartbeat, &api, beat.node).await? {
                None => return Ok(Renewal::Missing),
                Some(l) if !is_ours(&l.metadata) => {
                    return Ok(Renewal::Renewed(LeaseOwner::Foreign));
                }
                Some(l) => l.metadata.uid.unwrap_or_default(),
            }
        }
    };
    let mut renew = lease::renew_patch(beat.node, now);
    renew["metadata"] = json!({ "uid": uid });
    match request(
        workload,
        metrics,
        Purpose::Heartbeat,
        "patch",
        unread(
            workload,
            kube::core::Request::new(Lease::url_path(&(), Some(lease::NAMESPACE))).patch(
                beat.node,
                &field_manager(),
                &Patch::Merge(&renew),
            ),
        ),
    )
    .await
    {
        Ok(_) => Ok(Renewal::Renewed(LeaseOwner::Ours(uid))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Renewal::Missing),
        // Replaced by someone: look again next time.
        Err(kube::Error::Api(s)) if replaced(&s) => Ok(Renewal::Renewed(LeaseOwner::Unknown)),
        Err(e) => Err(classify(&workload.cluster, e)),
    }
}

/// The kubelet of `node` stops posting: every condition turns Unknown, as the node
/// lifecycle controller would make it (its Lease is simply no longer renewed).
pub async fn stop_posting(
    workload: &WorkloadClient,
    node: &str,
    node_uid: &str,
    metrics: &Metrics,
) -> Result<Posted, Error> {
    let mut patch = node::not_ready_patch(&Time(jiff::Timestamp::now()));
    patch["metadata"] = json!({ "uid": node_uid });
    post_node_status(workload, node, &patch, metrics).await
}

/// Our Nodes of one workload cluster (by their cluster labels), e.g. to take them over
/// again after a restart.
pub async fn list_cluster_nodes(
    workload: &WorkloadClient,
    metrics: &Metrics,
) -> Result<Vec<Node>, Error> {
    let api: Api<Node> = Api::all(workload.client());
    let params = ListParams::default().labels(&node::cluster_selector(
        &workload.cluster.namespace,
        &workload.cluster.name,
    ));
    request(
        workload,
        metrics,
        Purpose::Adoption,
        "list",
        api.list(&params),
    )
    .await
    .map(|list| list.items)
    .map_err(|e| classify(&workload.cluster, e))
}

/// What [`remove_node`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub node: bool,
    pub static_pods: usize,
    pub lease: bool,
}

/// Deletes what stands for one host in the workload cluster: its static pods and its
/// Lease, then its Node (last, so that an interrupted removal leaves the Node by which it
/// is found again). Only objects with our label, and only the Node of that host; each
/// delete is conditional on the UID just read, so an object replaced meanwhile stays.
pub async fn remove_node(
    workload: &WorkloadClient,
    node: &str,
    host: &str,
    metrics: &Metrics,
) -> Result<Removed, Error> {
    let mut removed = Removed::default();
    let client = workload.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), static_pods::NAMESPACE);
    let params = ListParams::default()
        .labels(&managed_by_selector())
        .fields(&format!("spec.nodeName={node}"));
    let ours = request(
        workload,
        metrics,
        Purpose::Cleanup,
        "list",
        pods.list(&params),
    )
    .await
    .map_err(|e| classify(&workload.cluster, e))?;
    for pod in &ours.items {
        // Pods bound to a Node are deleted gracefully, i.e. by their kubelet, unless
        // deleted at once: there is no kubelet to confirm.
        removed.static_pods +=
            usize::from(delete_ours(workload, metrics, Purpose::Cleanup, &pods, pod).await?);
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease::NAMESPACE);
    if let Some(l) = get_opt(workload, metrics, Purpose::Cleanup, &leases, node).await? {
        removed.lease = delete_ours(workload, metrics, Purpose::Cleanup, &leases, &l).await?;
    }
    let nodes: Api<Node> = Api::all(client);
    if let Some(n) = get_opt(workload, metrics, Purpose::Cleanup, &nodes, node).await?
        && host_uid(&n) == Some(host)
    {
        removed.node = delete_ours(workload, metrics, Purpose::Cleanup, &nodes, &n).await?;
    }
    Ok(removed)
}

async fn get_opt<K>(
    workload: &WorkloadClient,
    metrics: &Metrics,
    purpose: Purpose,
    api: &Api<K>,
    name: &str,
) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    request(workload, metrics, purpose, "get", api.get_opt(name))
        .await
        .map_err(|e| classify(&workload.cluster, e))
}

/// Deletes `obj` at once if it carries our label and still has the same UID. Returns
/// whether this call deleted it.
async fn delete_ours<K>(
    workload: &WorkloadClient,
    metrics: &Metrics,
    purpose: Purpose,
    api: &Api<K>,
    obj: &K,
) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    if !is_ours(obj.meta()) {
        return Ok(false);
    }
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match request(
        workload,
        metrics,
        purpose,
        "delete",
        api.delete(&obj.name_any(), &params),
    )
    .await
    {
        Ok(_) => Ok(true),
        // Gone already, or replaced by another object of the same name.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(classify(&workload.cluster, e)),
    }
}

/// The API server's TaintNodesByCondition admission adds `node.kubernetes.io/not-ready`
/// to every new Node; the node lifecycle controller lifts it once the kubelet reports
/// Ready. Workload clusters of scale tests rarely run that controller, so for our Ready
/// Node we lift it ourselves: the Node's taints become the desired ones. Only startup
/// taints are dropped; a taint someone else added is kept.
async fn lift_startup_taints(
    workload: &WorkloadClient,
    metrics: &Metrics,
    desired: &Node,
    existing: &Node,
) -> Result<(), Error> {
    let taints = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
    };
    let current = taints(existing);
    let kept: Vec<_> = current
        .iter()
        .filter(|t| !STARTUP_TAINTS.contains(&t.key.as_str()))
        .cloned()
        .collect();
    if kept.len() == current.len() {
        return Ok(());
    }
    let mut wanted = taints(desired);
    for t in kept {
        if !wanted
            .iter()
            .any(|w| w.key == t.key && w.effect == t.effect)
        {
            wanted.push(t);
        }
    }
    let name = existing.metadata.name.clone().unwrap_or_default();
    let api: Api<Node> = Api::all(workload.client());
    let patch = json!({ "spec": { "taints": wanted } });
    request(
        workload,
        metrics,
        Purpose::Registration,
        "patch",
        api.patch(&name, &field_manager(), &Patch::Merge(&patch)),
    )
    .await
    .map_err(|e| classify(&workload.cluster, e))?;
    Ok(())
}

/// Taints a Node carries only until its kubelet reports Ready.
const STARTUP_TAINTS: &[&str] = &[
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.cloudprovider.kubernetes.io/uninitialized",
];

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    }
}

/// Sends a request whose answer (the whole object written) is not needed: its body is
/// read, so that the connection goes back to the pool, but not parsed. A heartbeat's
/// answer is a whole Node or Lease, read 50 times a second for 1000 Nodes.
async fn unread(
    workload: &WorkloadClient,
    request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
) -> Result<(), kube::Error> {
    let request = request.map_err(kube::Error::BuildRequest)?;
    workload.client().request_text(request).await.map(|_| ())
}

fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    }
}

/// Creates `object`; `None` if one of that name exists already (whoever made it).
async fn create_unless_exists<K>(
    workload: &WorkloadClient,
    metrics: &Metrics,
    purpose: Purpose,
    api: &Api<K>,
    object: &K,
) -> Result<Option<K>, Error>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match request(
        workload,
        metrics,
        purpose,
        "create",
        api.create(&post_params(), object),
    )
    .await
    {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(None),
        Err(e) => Err(classify(&workload.cluster, e)),
    }
}

/// Sets an object's status through the status subresource, as its kubelet would.
async fn set_status<K>(
    workload: &WorkloadClient,
    metrics: &Metrics,
    purpose: Purpose,
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({ "status": status });
    request(
        workload,
        metrics,
        purpose,
        "patch",
        api.patch_status(name, &field_manager(), &Patch::Merge(&patch)),
    )
    .await
    .map_err(|e| classify(&workload.cluster, e))?;
    Ok(())
}

/// The addresses and kubelet port of a Node as planned.
fn desired_endpoint(node: &Node) -> Option<(Vec<k8s_openapi::api::core::v1::NodeAddress>, u16)> {
    let status = node.status.as_ref()?;
    let port = status
        .daemon_endpoints
        .as_ref()?
        .kubelet_endpoint
        .as_ref()?
        .port;
    Some((status.addresses.clone()?, u16::try_from(port).ok()?))
}

/// Sets a Node's addresses and kubelet port (a merge patch from
/// [`crate::fake::node::endpoint_patch`]).
pub async fn patch_endpoint(
    workload: &WorkloadClient,
    metrics: &Metrics,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(workload.client());
    request(
        workload,
        metrics,
        Purpose::Address,
        "patch",
        api.patch_status(name, &field_manager(), &Patch::Merge(patch)),
    )
    .await
    .map_err(|e| classify(&workload.cluster, e))?;
    Ok(())
}

/// One workload request: rate-limited, timed and counted by verb, code and purpose.
pub(crate) async fn request<T>(
    workload: &WorkloadClient,
    metrics: &Metrics,
    purpose: Purpose,
    verb: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    let waited = workload.throttle().await;
    if !waited.is_zero() {
        metrics.workload_server_wait.inc_by(waited.as_secs_f64());
    }
    let started = Instant::now();
    let result = workload.timed(call).await;
    metrics
        .workload_request_duration
        .with_label_values(&[verb])
        .observe(started.elapsed().as_secs_f64());
    let code = match &result {
        Ok(_) => if verb == "create" { "201" } else { "200" }.to_string(),
        Err(kube::Error::Api(s)) => s.code.to_string(),
        Err(_) => "error".to_string(),
    };
    metrics
        .workload_requests
        .with_label_values(&[verb, &code, purpose.as_str()])
        .inc();
    result
}
