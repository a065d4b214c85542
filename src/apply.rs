//! Makes a workload cluster hold what the plan says: create when missing, leave alone what
//! is already right, never overwrite what is not ours. Every request goes through the
//! cluster's rate limit and is counted by verb and status code.

use std::future::Future;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::error::Error;
use crate::fake::node::{host_uid, is_ready};
use crate::metrics::Metrics;
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
}

/// Ensures the kubeadm-config (control planes) and then the Ready Node.
pub async fn ensure(
    workload: &WorkloadClient,
    desired: &Desired,
    metrics: &Metrics,
) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    if let Some(config) = &desired.kubeadm_config {
        outcome.kubeadm_config_created = ensure_kubeadm_config(workload, config, metrics).await?;
    }
    let (created, repaired) = ensure_node(workload, &desired.node, metrics).await?;
    outcome.node_created = created;
    outcome.status_repaired = repaired;
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
    let api: Api<ConfigMap> = Api::namespaced(workload.client.clone(), namespace);
    match request(
        workload,
        metrics,
        "create",
        api.create(&post_params(), config),
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
        Err(e) => Err(classify(&workload.cluster, e)),
    }
}

/// Creates the Node and sets its status through the status subresource (a create ignores
/// status). Returns (the creation time if this call created it, whether an existing
/// Node's status had to be set again).
async fn ensure_node(
    workload: &WorkloadClient,
    node: &Node,
    metrics: &Metrics,
) -> Result<(Option<Time>, bool), Error> {
    let api: Api<Node> = Api::all(workload.client.clone());
    let name = node.metadata.name.clone().unwrap_or_default();
    let wanted = host_uid(node).unwrap_or_default().to_string();
    let body = Node {
        status: None,
        ..node.clone()
    };
    let created = match request(
        workload,
        metrics,
        "create",
        api.create(&post_params(), &body),
    )
    .await
    {
        Ok(created) => Some(created),
        Err(kube::Error::Api(s)) if s.is_already_exists() => None,
        Err(e) => return Err(classify(&workload.cluster, e)),
    };
    let (existing, created_at) = match created {
        Some(n) => {
            let at = n.metadata.creation_timestamp.clone();
            (n, at)
        }
        None => {
            let existing = request(workload, metrics, "get", api.get(&name))
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
    if created_at.is_some() || !is_ready(&existing) {
        let patch = json!({ "status": node.status });
        request(
            workload,
            metrics,
            "patch",
            api.patch_status(&name, &field_manager(), &Patch::Merge(&patch)),
        )
        .await
        .map_err(|e| classify(&workload.cluster, e))?;
    }
    lift_startup_taints(workload, metrics, node, &existing).await?;
    let repaired = created_at.is_none() && !is_ready(&existing);
    // A create that reached the server but whose answer was lost leaves a Node without a
    // creation time here; the next reconcile finds it and it counts as existing.
    Ok((created_at, repaired))
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
    let api: Api<Node> = Api::all(workload.client.clone());
    let patch = json!({ "spec": { "taints": wanted } });
    request(
        workload,
        metrics,
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

fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    }
}

/// One workload request: rate-limited, timed and counted.
async fn request<T>(
    workload: &WorkloadClient,
    metrics: &Metrics,
    verb: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    workload.throttle().await;
    let started = Instant::now();
    let result = call.await;
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
        .with_label_values(&[verb, &code])
        .inc();
    result
}
