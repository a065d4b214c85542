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

use serde_json::Value;

#[test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
fn the_real_upstream_controllers_accept_metal3_fakenodes_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("e2e.json");
    let output = Command::new(env!("CARGO_BIN_EXE_metal3-fakenode-bench"))
        .args(["e2e", "--clusters", "1", "--step-timeout", "5m", "--report"])
        .arg(&report)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "e2e failed: {}\n{stderr}\n{stdout}",
        output.status
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
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
    let conditions = clusters[0]["final_kcp_conditions"].as_array().unwrap();
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
