//! The fake etcd members' state, kept in the workload cluster: one member per etcd mirror
//! Pod of ours on a control-plane Node of the cluster; what KCP changes (a leader move, a
//! removed member) is an annotation on the member's Pod, so a restarted controller, a
//! standby taking over and every shard answer alike.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_etcd::{Backend, Candidate, Change, LocalView, View};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::{KubeletApi, Resolved};
use crate::apply::request;
use crate::fake::node::{CLUSTER_NAME_LABEL, CLUSTER_NAMESPACE_LABEL, CONTROL_PLANE_ROLE};
use crate::fake::static_pods::{Component, NAMESPACE, pod_name};
use crate::fake::{is_ours, managed_by_selector};
use crate::plan::ClusterKey;

/// Set on the etcd Pod once KCP removed the member (`MemberRemove`).
pub const REMOVED_ANNOTATION: &str = "fakenode.metal3.io/etcd-member-removed";
/// The marker of the latest `MoveLeader` to this member: the latest one leads.
pub const LEADER_SINCE_ANNOTATION: &str = "fakenode.metal3.io/etcd-leader-since";

/// The members' candidates (pure): our etcd Pods on the cluster's control-plane Nodes,
/// with what their annotations recorded. A marker that does not parse is ignored (said by
/// the caller's log, never an error for the others).
pub fn candidates(nodes: &[Node], pods: &[Pod]) -> Vec<Candidate> {
    let control_plane: BTreeSet<String> = nodes
        .iter()
        .filter(|n| n.labels().contains_key(CONTROL_PLANE_ROLE))
        .map(|n| n.name_any())
        .collect();
    let mut by_node = BTreeMap::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let is_etcd =
            pod.labels().get("component").map(String::as_str) == Some(Component::Etcd.name());
        if !is_etcd
            || !is_ours(&pod.metadata)
            || !control_plane.contains(&node)
            || pod.name_any() != pod_name(Component::Etcd, &node)
        {
            continue;
        }
        let annotations = pod.annotations();
        let address = pod
            .status
            .as_ref()
            .and_then(|s| s.host_ip.clone())
            .filter(|ip| !ip.is_empty());
        by_node.insert(
            node.clone(),
            Candidate {
                node,
                address,
                removed: annotations
                    .get(REMOVED_ANNOTATION)
                    .is_some_and(|v| v == "true"),
                leader_since: annotations
                    .get(LEADER_SINCE_ANNOTATION)
                    .and_then(|v| v.parse().ok()),
            },
        );
    }
    by_node.into_values().collect()
}

/// The Pod to annotate and the merge patch that records `change`.
pub fn change_patch(change: &Change) -> (String, serde_json::Value) {
    match change {
        Change::MarkLeader { node, since } => (
            pod_name(Component::Etcd, node),
            json!({"metadata": {"annotations": {LEADER_SINCE_ANNOTATION: since.to_string()}}}),
        ),
        Change::MarkRemoved { node } => (
            pod_name(Component::Etcd, node),
            json!({"metadata": {"annotations": {REMOVED_ANNOTATION: "true"}}}),
        ),
    }
}

/// The member a connection is for.
#[derive(Clone)]
pub struct Member {
    pub resolved: Arc<Resolved>,
    pub node: String,
}

/// Reads and stores the members' state in the workload cluster.
pub struct Members {
    pub api: Arc<KubeletApi>,
}

/// KCP asks each member for its status, members and alarms in a burst: one read of the
/// workload cluster serves them all, and a change of ours is seen at once.
const VIEW_TTL: Duration = Duration::from_secs(1);

impl Members {
    async fn read(&self, target: &Member) -> Result<View, tonic::Status> {
        let cluster = &target.resolved.cluster;
        if let Some((at, view)) = crate::lock(&self.api.fakes.etcd_views).get(cluster)
            && at.elapsed() < VIEW_TTL
        {
            return Ok(view.clone());
        }
        let workload = &target.resolved.workload;
        let unavailable = |what: &str, e: kube::Error| {
            tonic::Status::unavailable(format!(
                "reading the {what} of workload cluster {cluster}: {}",
                crate::tolerant::bounded(e.to_string(), 512)
            ))
        };
        let client = workload.client();
        let nodes: Api<Node> = Api::all(client.clone());
        let selector = format!(
            "{CLUSTER_NAMESPACE_LABEL}={},{CLUSTER_NAME_LABEL}={},{CONTROL_PLANE_ROLE}",
            cluster.namespace, cluster.name
        );
        let params = ListParams::default().labels(&selector);
        let listed = request(
            workload,
            &self.api.metrics,
            crate::metrics::Purpose::EtcdMembers,
            "list",
            nodes.list(&params),
        );
        let nodes = listed.await.map_err(|e| unavailable("Nodes", e))?;
        let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
        let selector = format!(
            "component={},{}",
            Component::Etcd.name(),
            managed_by_selector()
        );
        let params = ListParams::default().labels(&selector);
        let listed = request(
            workload,
            &self.api.metrics,
            crate::metrics::Purpose::EtcdMembers,
            "list",
            pods.list(&params),
        );
        let pods = listed.await.map_err(|e| unavailable("etcd Pods", e))?;
        let view = View::derive(
            &self.cluster_key(cluster),
            &candidates(&nodes.items, &pods.items),
        );
        crate::lock(&self.api.fakes.etcd_views)
            .insert(cluster.clone(), (Instant::now(), view.clone()));
        Ok(view)
    }

    /// What the member and cluster IDs derive from: the Cluster's UID, so a Cluster made
    /// again under the same name is a new etcd cluster.
    fn cluster_key(&self, cluster: &ClusterKey) -> String {
        let uid = self
            .api
            .stores
            .iter()
            .find(|s| s.covers(&cluster.namespace))
            .and_then(|s| {
                s.clusters
                    .get(&ObjectRef::new(&cluster.name).within(&cluster.namespace))
            })
            .and_then(|c| c.uid());
        uid.unwrap_or_else(|| cluster.to_string())
    }
}

impl Backend for Members {
    type Target = Member;

    fn observe(&self, method: &'static str, code: tonic::Code) {
        self.api
            .metrics
            .etcd_rpcs
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
    }

    async fn view(&self, target: &Member) -> Result<LocalView, tonic::Status> {
        Ok(LocalView {
            view: self.read(target).await?,
            local: target.node.clone(),
        })
    }

    async fn apply(&self, target: &Member, change: Change) -> Result<(), tonic::Status> {
        let (pod, patch) = change_patch(&change);
        let workload = &target.resolved.workload;
        let pods: Api<Pod> = Api::namespaced(workload.client(), NAMESPACE);
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        let patched = pods.patch(&pod, &params, &patch);
        let result = request(
            workload,
            &self.api.metrics,
            crate::metrics::Purpose::EtcdMembers,
            "patch",
            patched,
        )
        .await;
        crate::lock(&self.api.fakes.etcd_views).remove(&target.resolved.cluster);
        result.map(|_| ()).map_err(|e| {
            tonic::Status::unavailable(format!(
                "recording {change:?} in workload cluster {}: {}",
                target.resolved.cluster,
                crate::tolerant::bounded(e.to_string(), 512)
            ))
        })
    }
}
