//! Clean deletes. kube-runtime never reconciles an object that is gone, so this runs
//! beside the controller: a sweep of the fake kubelets against the reflector stores. A
//! Node this process created whose Machine or Metal3Machine is gone is deleted with its
//! static pods and Lease (only objects with our label); a workload cluster that is gone
//! (its Cluster or kubeconfig Secret deleted) is forgotten: its cached client and its
//! kubelets. The sweep is woken by every deletion the watches see and after every
//! re-list (which can hide deletions), and runs every minute regardless; between those
//! it costs nothing, and it reads only memory until it has something to delete.
//!
//! After a restart the sweep also takes over, once per cluster, our Nodes of every
//! workload cluster the watched Metal3Machines belong to (see [`Kubelets::adopt`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::apply;
use crate::error::Error;
use crate::kubelet::{Kubelets, Tracked};
use crate::metrics::Metrics;
use crate::plan::{
    ClusterKey, Inventory, KubeconfigSource, Lookup, kubeconfig_source, owner_machine,
};
use crate::resources::{CLUSTER_NAME_LABEL, Metal3Machine};
use crate::shard::Shard;
use crate::stores::Stores;
use crate::workload::WorkloadClients;

/// A sweep runs at least this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Deletions come in bursts (a MachineDeployment scaled down): one sweep for a burst.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Clusters swept at once; within a cluster, deletes go one after the other (they share
/// its rate limit anyway).
const CLUSTERS_AT_ONCE: usize = 16;

/// Whether the Node `node` of `cluster` has lost its Machine (named like the Node, in the
/// cluster's namespace) or that Machine's Metal3Machine. With a label selector on the
/// Metal3Machines (`all_metal3_machines` false) a missing one may just be unselected, so
/// then only the Machine counts (CAPI deletes a Machine after its Metal3Machine).
pub fn orphaned(
    lookup: &impl Inventory,
    cluster: &ClusterKey,
    node: &str,
    all_metal3_machines: bool,
) -> bool {
    let Some(machine) = lookup.machine(&cluster.namespace, node) else {
        return true;
    };
    // A Machine that cannot be read still exists: its Node stays.
    let Ok(machine) = machine.read() else {
        return false;
    };
    let infra = &machine.spec.infrastructure_ref;
    all_metal3_machines
        && infra.kind == "Metal3Machine"
        && !infra.name.is_empty()
        && !lookup.metal3_machine_exists(&cluster.namespace, &infra.name)
}

/// Whether a workload cluster is gone: its Cluster deleted, or its kubeconfig Secret (or
/// the Secret's value), without which it cannot be reached any more. An object that
/// exists but cannot be read is no evidence of anything: the cluster stays.
pub fn cluster_gone(lookup: &impl Lookup, cluster: &ClusterKey) -> bool {
    lookup.cluster(&cluster.namespace, &cluster.name).is_none()
        || matches!(
            kubeconfig_source(lookup, &cluster.namespace, &cluster.name),
            Err(Error::KubeconfigSecretMissing { .. } | Error::KubeconfigSecretNoValue { .. })
        )
}

/// The workload clusters the Metal3Machines belong to (through their Machine's cluster
/// label) that `wanted` accepts, with their kubeconfig. Asked before the kubeconfig is
/// copied: a sweep wants few of them (those not taken over yet), and copying every
/// cluster's each minute cost megabytes at 1000 clusters.
pub fn clusters_in_use<'a>(
    metal3_machines: impl IntoIterator<Item = &'a Metal3Machine>,
    lookup: &impl Lookup,
    wanted: impl Fn(&ClusterKey) -> bool,
) -> BTreeMap<ClusterKey, KubeconfigSource> {
    let mut clusters = BTreeMap::new();
    for m3m in metal3_machines {
        let namespace = m3m.namespace().unwrap_or_default();
        let Some(machine) = owner_machine(m3m).and_then(|m| lookup.machine(&namespace, m)) else {
            continue;
        };
        let Ok(machine) = machine.read() else {
            continue;
        };
        let Some(name) = machine.labels().get(CLUSTER_NAME_LABEL) else {
            continue;
        };
        let key = ClusterKey {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        if clusters.contains_key(&key) || !wanted(&key) {
            continue;
        }
        if let Ok(source) = kubeconfig_source(lookup, &namespace, name) {
            clusters.insert(key, source);
        }
    }
    clusters
}

/// The sweep and what it works on.
pub struct Cleanup {
    pub kubelets: Arc<Kubelets>,
    pub workloads: Arc<WorkloadClients>,
    pub metrics: Arc<Metrics>,
    /// Take over our Nodes after a restart (when Nodes are tracked at all).
    pub adopt: bool,
    pub delete_orphans: bool,
    /// No label selector on the Metal3Machines.
    pub all_metal3_machines: bool,
    /// Only this shard's clusters are taken over (the others' replicas keep theirs).
    pub shard: Shard,
}

impl Cleanup {
    /// Sweeps once every scope's stores have synced, then whenever `wake` says something
    /// was deleted, and every [`SWEEP_EVERY`], until `stopped` resolves.
    pub async fn run(
        self,
        scopes: Vec<Stores>,
        wake: Arc<Notify>,
        stopped: impl Future<Output = ()>,
    ) {
        tokio::pin!(stopped);
        let synced = async {
            for scope in &scopes {
                scope.wait_ready().await;
            }
        };
        tokio::select! {
            () = &mut stopped => return,
            () = synced => {}
        }
        loop {
            // A sweep stops half-way with the controller: what it left is found again.
            tokio::select! {
                () = &mut stopped => return,
                () = self.sweep(&scopes) => {}
            }
            tokio::select! {
                () = &mut stopped => return,
                () = wake.notified() => tokio::time::sleep(DEBOUNCE).await,
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }

    async fn sweep(&self, scopes: &[Stores]) {
        if self.adopt {
            let mut unknown = Vec::new();
            for scope in scopes {
                let m3ms = scope.metal3_machines.state();
                unknown.extend(clusters_in_use(
                    m3ms.iter().filter_map(|m| m.read().ok()),
                    scope,
                    |c| {
                        self.shard.owns(&c.namespace, Some(&c.name)) && !self.kubelets.is_adopted(c)
                    },
                ));
            }
            futures::stream::iter(unknown)
                .for_each_concurrent(CLUSTERS_AT_ONCE, |(cluster, source)| async move {
                    let adopted = async {
                        let workload = self.workloads.client(&cluster, &source).await?;
                        self.kubelets.adopt(&workload, &self.metrics).await
                    };
                    if let Err(e) = adopted.await {
                        debug!(%cluster, reason = e.reason(), error = %e, "cannot take over the Nodes of an earlier run yet");
                    }
                })
                .await;
        }
        let mut clusters = self.kubelets.clusters();
        clusters.extend(self.workloads.clusters());
        clusters.sort();
        clusters.dedup();
        futures::stream::iter(clusters)
            .for_each_concurrent(CLUSTERS_AT_ONCE, |cluster| async move {
                if let Some(scope) = scopes.iter().find(|s| s.covers(&cluster.namespace)) {
                    self.sweep_cluster(&cluster, scope).await;
                }
            })
            .await;
    }

    async fn sweep_cluster(&self, cluster: &ClusterKey, scope: &Stores) {
        if self.delete_orphans {
            for tracked in self.kubelets.kubelets_of(cluster) {
                if orphaned(scope, cluster, &tracked.node, self.all_metal3_machines) {
                    self.remove(cluster, &tracked).await;
                }
            }
        }
        if cluster_gone(scope, cluster) {
            self.workloads.forget(cluster);
            self.kubelets.forget(cluster);
            info!(%cluster, "the workload cluster is gone: forgot its client and its Nodes' heartbeats");
        }
    }

    async fn remove(&self, cluster: &ClusterKey, tracked: &Tracked) {
        let Some(workload) = self.workloads.cached(cluster) else {
            self.kubelets.remove(cluster, tracked);
            return;
        };
        let _busy = tracked.guard.retire().await;
        match apply::remove_node(&workload, &tracked.node, &tracked.host_uid, &self.metrics).await {
            Ok(removed) => {
                self.kubelets.remove(cluster, tracked);
                if removed.node {
                    self.metrics.nodes_deleted.inc();
                }
                info!(%cluster, node = %tracked.node, node_deleted = removed.node,
                      static_pods = removed.static_pods, lease = removed.lease,
                      "its Machine is gone: deleted its Node");
            }
            // The kubelet stays (retired): the next sweep tries again.
            Err(e) => warn!(%cluster, node = %tracked.node, reason = e.reason(), error = %e,
                            "cannot delete the Node of a Machine that is gone"),
        }
    }
}

#[cfg(test)]
mod tests {

    use k8s_openapi::api::core::v1::Secret;
    use serde_json::json;

    use super::*;
    use crate::fixtures::{World, key as k, read, unreadable};
    use crate::resources::{Cluster, Machine};
    use crate::tolerant::Tolerant;

    fn machine(name: &str, m3m: &str) -> Arc<Tolerant<Machine>> {
        read(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {CLUSTER_NAME_LABEL: "c"}},
                "spec": {"clusterName": "c", "infrastructureRef":
                         {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "Metal3Machine", "name": m3m}}
            }))
            .unwrap(),
        )
    }

    fn world() -> World {
        let mut w = World::default();
        w.machines
            .insert(k("ns", "c-cp-0"), machine("c-cp-0", "c-cp-0-m3m"));
        w.metal3_machines.insert(k("ns", "c-cp-0-m3m"));
        w.clusters
            .insert(k("ns", "c"), read(Cluster::new("c", Default::default())));
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "c-kubeconfig", "namespace": "ns"},
            "data": {"value": "YQ=="}
        }))
        .unwrap();
        w.secrets.insert(k("ns", "c-kubeconfig"), read(secret));
        w
    }

    fn cluster() -> ClusterKey {
        ClusterKey {
            namespace: "ns".into(),
            name: "c".into(),
        }
    }

    #[test]
    fn a_node_is_orphaned_once_its_machine_or_metal3machine_is_gone() {
        let mut w = world();
        assert!(!orphaned(&w, &cluster(), "c-cp-0", true));
        assert!(orphaned(&w, &cluster(), "c-md-9", true), "no such Machine");
        w.metal3_machines.clear();
        assert!(orphaned(&w, &cluster(), "c-cp-0", true));
        assert!(
            !orphaned(&w, &cluster(), "c-cp-0", false),
            "with a selector, a missing Metal3Machine may be unselected"
        );
        w.machines.clear();
        assert!(orphaned(&w, &cluster(), "c-cp-0", false));
        w.machines
            .insert(k("ns", "c-cp-0"), unreadable("ns", "c-cp-0", "spec"));
        assert!(
            !orphaned(&w, &cluster(), "c-cp-0", true),
            "a Machine that cannot be read still exists"
        );
    }

    #[test]
    fn a_cluster_is_gone_with_its_cluster_or_its_kubeconfig() {
        let mut w = world();
        assert!(!cluster_gone(&w, &cluster()));
        w.secrets.clear();
        assert!(cluster_gone(&w, &cluster()));
        let mut w = world();
        w.clusters.clear();
        assert!(cluster_gone(&w, &cluster()));
        let mut w = world();
        w.secrets.insert(
            k("ns", "c-kubeconfig"),
            unreadable("ns", "c-kubeconfig", "data"),
        );
        assert!(
            !cluster_gone(&w, &cluster()),
            "a kubeconfig Secret that cannot be read is no sign the cluster is gone"
        );
    }

    #[test]
    fn clusters_in_use_come_from_the_machines_of_the_metal3machines() {
        let w = world();
        let m3m: Metal3Machine = serde_json::from_value(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2", "kind": "Metal3Machine",
            "metadata": {"name": "c-cp-0-m3m", "namespace": "ns",
                         "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2",
                                              "kind": "Machine", "name": "c-cp-0", "uid": "u"}]},
            "spec": {}
        }))
        .unwrap();
        let mut orphan = m3m.clone();
        orphan.metadata.owner_references = None;
        let found = clusters_in_use([&m3m, &m3m, &orphan], &w, |_| true);
        assert_eq!(found.keys().collect::<Vec<_>>(), [&cluster()]);
        assert_eq!(found[&cluster()].secret, "ns/c-kubeconfig");
        assert!(clusters_in_use([&m3m], &w, |c| c != &cluster()).is_empty());
    }
}
