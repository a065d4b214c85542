//! The end-to-end run, small: `metal3-fakenode-bench e2e --clusters 1` runs one workload cluster
//! with the real Cluster API, KCP, CABPK, CAPM3 and baremetal-operator as local processes
//! and metal3-fakenode as a process with its deploy/ RBAC (`make e2e` runs ten).
//!
//! The command exits non-zero unless every Machine reached Running with a nodeRef and
//! CAPM3's providerID, KCP and the Cluster were initialized with healthy control-plane
//! components, scaling the MachineDeployment 0→3→1 left exactly the Machines' Nodes, and
//! deleting the Cluster left nothing behind. It starts its own etcd and API servers: the
//! upstream controllers watch the whole management cluster, so it shares nothing.

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
    let clusters = r["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1);
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
