//! The fidelity settings against real API servers: static control-plane pods as KCP reads
//! them, living Nodes (Leases and heartbeats), clean deletes, a rolling upgrade, the
//! startup delay and injected faults. Each test owns its namespace, cluster and machine
//! names, and the controller under test watches only that namespace.

#[path = "../common/mod.rs"]
mod common;

mod certificate_expiry;
mod clean_deletes;
mod faults;
mod living_nodes;
mod static_pods;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{admin_yaml, eventually, start_controller, test_config, unique};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use metal3_fakenode::cli::{Cli, Command};
use metal3_fakenode::fake::node::{cluster_selector, is_ready};
use metal3_fakenode::fidelity::{self, Fate, Fault, Fidelity};
use metal3_fakenode_testkit::envtest::{self, ApiServer};
use metal3_fakenode_testkit::simulate::world::{self, CreatedMachine, MachineSpec};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// A namespace with one Cluster whose kubeconfig Secret points at `server`.
async fn namespace_with_cluster(client: &kube::Client, prefix: &str, server: &ApiServer) -> String {
    let ns = unique(prefix);
    world::namespace(client, &ns).await.unwrap();
    world::cluster(client, &ns, &ns).await.unwrap();
    world::kubeconfig_secret(
        client,
        &ns,
        &ns,
        world::kubeconfig_data(&admin_yaml(server)),
    )
    .await
    .unwrap();
    ns
}

async fn machine(
    client: &kube::Client,
    ns: &str,
    suffix: &str,
    control_plane: bool,
) -> CreatedMachine {
    let spec = MachineSpec::new(ns, &format!("{ns}-{suffix}"), control_plane);
    world::machine(client, ns, &spec).await.unwrap()
}

async fn nodes(server: &ApiServer) -> Api<Node> {
    Api::all(server.client().await.unwrap())
}

async fn pods(server: &ApiServer) -> Api<Pod> {
    Api::namespaced(server.client().await.unwrap(), "kube-system")
}

async fn leases(server: &ApiServer) -> Api<Lease> {
    Api::namespaced(server.client().await.unwrap(), "kube-node-lease")
}

async fn ready_node(server: &ApiServer, name: &str) -> Node {
    let api = nodes(server).await;
    eventually(&format!("Node {name} Ready"), LIMIT, || async {
        api.get_opt(name).await.unwrap().filter(is_ready)
    })
    .await
}

async fn gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} deleted"), LIMIT, || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// The Pods of one Node in kube-system (ours or not).
async fn pods_of(server: &ApiServer, node: &str) -> Vec<Pod> {
    pods(server)
        .await
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap()
        .items
}

/// Static pods, a heartbeat every second and clean deletes: Nodes that live and go.
fn living_nodes() -> Fidelity {
    Fidelity {
        static_pods: true,
        heartbeat_interval: Duration::from_secs(1),
        delete_orphans: true,
        ..Fidelity::default()
    }
}

fn with(fidelity: Fidelity, ns: &str) -> metal3_fakenode::controller::Config {
    let mut config = test_config(&[ns]);
    config.fidelity = fidelity;
    config
}

/// Waits for `fakenode_nodes_deleted_total` and `fakenode_kubelets` to reach these values
/// (a deletion is counted a moment after the API server has done it).
async fn counts(ctl: &common::RunningController, deleted: u64, kubelets: i64) {
    eventually(
        &format!("{deleted} Nodes deleted, {kubelets} kept"),
        LIMIT,
        || async {
            ctl.scrape();
            (ctl.metrics.nodes_deleted.get() == deleted && ctl.metrics.kubelets.get() == kubelets)
                .then_some(())
        },
    )
    .await;
}

fn ready_condition(node: &Node) -> k8s_openapi::api::core::v1::NodeCondition {
    posted_ready_condition(node).expect("a Ready condition")
}

/// The Ready condition, if the status has been posted: a Node is created first and gets
/// its conditions with the next request, as a kubelet registers it.
fn posted_ready_condition(node: &Node) -> Option<k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .cloned()
}

/// resourceVersion and renewTime of a Lease.
async fn lease_version(api: &Api<Lease>, name: &str) -> Option<(String, String)> {
    let lease = api.get_opt(name).await.unwrap()?;
    let renewed = lease.spec?.renew_time?;
    Some((lease.metadata.resource_version?, renewed.0.to_string()))
}

/// A Pod in `kube-system` on `node` that is not ours (a real kubelet's, or kube-proxy's),
/// with these labels.
async fn foreign_pod(server: &ApiServer, name: &str, node: &str, labels: serde_json::Value) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-system", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .unwrap();
    pods(server)
        .await
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}
