//! The end-to-end run, small: `metal3-fakenode-bench e2e --clusters 1` runs one workload cluster
//! (stacked etcd, one control-plane replica) with the real Cluster API, KCP, CABPK, CAPM3
//! and baremetal-operator as local processes and metal3-fakenode as a process with its
//! deploy/ RBAC and its kubelet API (`make e2e` runs ten).
//!
//! The command exits non-zero unless every Machine reached Running with a nodeRef and
//! CAPM3's providerID, KCP and the Cluster were initialized, the KCP became Available with
//! healthy etcd and components (through port-forwards to the fake etcd member and
//! kube-apiserver), scaling the MachineDeployment 0→3→1 left exactly the Machines' Nodes,
//! the real etcd client listed the control-plane Node as the only member, and deleting the
//! Cluster left nothing behind. It starts its own etcd and API servers: the upstream
//! controllers watch the whole management cluster, so it shares nothing.

use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// One run at a time: each starts a whole management cluster and its controllers, and
/// two at once on two cores would each wait on the other.
static ONE_RUN: Mutex<()> = Mutex::new(());

/// Runs `metal3-fakenode-bench e2e` with `args`; its report, and its stdout.
fn e2e(args: &[&str]) -> (Value, String) {
    let _one = ONE_RUN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("e2e.json");
    let output = Command::new(env!("CARGO_BIN_EXE_metal3-fakenode-bench"))
        .arg("e2e")
        .args(args)
        .args(["--step-timeout", "5m", "--report"])
        .arg(&report)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "e2e failed: {}\n{stderr}\n{stdout}",
        output.status
    );
    let r = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (r, stdout)
}

/// The KubeadmControlPlane's conditions at the end include these, True.
fn assert_healthy(cluster: &Value) {
    let conditions = cluster["final_kcp_conditions"].as_array().unwrap();
    for healthy in [
        "Available",
        "EtcdClusterHealthy",
        "ControlPlaneComponentsHealthy",
    ] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == healthy && c["status"] == "True"),
            "{healthy} not True at the end: {conditions:?}"
        );
    }
}

#[test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
fn the_real_upstream_controllers_accept_metal3_fakenodes_nodes() {
    let (r, stdout) = e2e(&["--clusters", "1"]);
    assert_eq!(r["etcd"], "stacked");
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "clusters_up",
            "control_plane_healthy",
            "workers_scaled_to_3",
            "workers_scaled_to_1",
            "clusters_deleted"
        ]
    );
    let clusters = r["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1);
    assert_healthy(&clusters[0]);
    assert_eq!(
        clusters[0]["etcd_members"].as_array().map(Vec::len),
        Some(1),
        "one etcd member, the control-plane Node's: {}",
        clusters[0]["etcd_members"]
    );
    assert!(clusters[0]["seconds_to_running"].as_f64().unwrap() > 0.0);
    assert!(clusters[0]["apiserver_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        r["workload_clients_before_delete"], 1.0,
        "metal3-fakenode held one workload client before the Cluster was deleted"
    );
    assert_eq!(
        r["kubelets_before_delete"], 2.0,
        "a fake kubelet for the control-plane Node and the remaining worker's"
    );
    assert!(stdout.contains("e2e-000: Machines Running"), "{stdout}");
}

/// The same scenario for two clusters on one shared kube-apiserver behind the tenancy
/// front (`--workload-apiservers 1`): the real controllers reach each cluster only through
/// its own endpoint on the front (strategic merge patches with lists, protobuf bodies,
/// port-forwards to the fake etcd members included), and each cluster's etcd lists only
/// its own control-plane Node.
#[test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
fn behind_the_tenancy_front_two_clusters_share_one_api_server() {
    let (r, stdout) = e2e(&["--clusters", "2", "--workload-apiservers", "1"]);
    let serving = &r["serving"];
    assert_eq!(serving["layout"], "tenancy-front");
    assert_eq!(serving["api_servers"].as_array().unwrap().len(), 1);
    assert_eq!(serving["fronts"][0]["clusters"], 2);
    assert!(serving["fronts"][0]["rss_bytes"].as_u64().unwrap() > 0);
    let clusters = r["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2);
    let mut members = Vec::new();
    for cluster in clusters {
        assert_healthy(cluster);
        let listed = cluster["etcd_members"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "{}", cluster["etcd_members"]);
        members.push(listed[0].clone());
    }
    assert_ne!(members[0], members[1], "each cluster lists its own member");
    assert_eq!(r["workload_clients_before_delete"], 2.0);
    assert!(
        stdout.contains("1 kube-apiserver(s) and 1 front(s)"),
        "{stdout}"
    );
}
