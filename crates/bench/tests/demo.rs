//! The README's main command, small: the demo runs its own control planes, the controller
//! as a process (or one process per shard) and the CAPM3 stand-in, and its JSON report is
//! exact.

use std::process::{Command, Output};

use serde_json::Value;

/// `metal3-fakenode-bench demo ARGS --report <tmp> --plot <tmp>`: its report, printed summary
/// and SVG, once it succeeded.
fn demo(args: &[&str]) -> (Value, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let plot = dir.path().join("demo.svg");
    let output: Output = Command::new(env!("CARGO_BIN_EXE_metal3-fakenode-bench"))
        .arg("demo")
        .args(args)
        .arg("--report")
        .arg(&report)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "demo failed: {}\n{stderr}\n{stdout}",
        output.status
    );
    assert!(stdout.contains("metal3-fakenode demo report"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let svg = std::fs::read_to_string(&plot).unwrap();
    (r, stdout, svg)
}

#[test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
fn a_small_demo_creates_every_node_once_and_reports_it() {
    let (r, _, svg) = demo(&["--clusters", "5", "--workers", "1", "--timeout", "3m"]);
    assert_eq!(r["clusters"], 5);
    assert_eq!(r["nodes_expected"], 10);
    assert_eq!(r["nodes_created"], 10);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["missing"], 0);
    // The controller's own histogram saw each Node exactly once.
    assert_eq!(r["controller_histogram"]["count"], 10.0);
    assert_eq!(r["controller_nodes_created_total"], 10.0);
    assert_eq!(r["workload_clients"], 5.0, "one client per cluster");
    assert_eq!(
        r["loop_closed"], 10,
        "the CAPM3 stand-in set every providerID"
    );
    let l = &r["latency_seconds"];
    let (p50, p90, p99, max) = (
        l["p50"].as_f64().unwrap(),
        l["p90"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{l}");
    assert!(r["elapsed_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["nodes_per_second"].as_f64().unwrap() > 0.0);
    assert!(r["controller_peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(r["controller_cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["ceiling"].is_null(), "no --ceiling, no ceiling");
    assert!(r["ratio_to_ceiling"].is_null());
    assert_eq!(r["arrival"], "burst");
    // Each Node: create (with its status), taints; the kubeadm-config once per control
    // plane.
    let per_node = r["requests_per_node"].as_f64().unwrap();
    assert!((2.0..=3.0).contains(&per_node), "{per_node}");
    assert!(r["controller_cpu_seconds_per_1000_nodes"].as_f64().unwrap() > 0.0);
    assert_eq!(r["runs"].as_array().unwrap().len(), 1);
    assert!(svg.contains("Nodes Ready over time"));
    // One unsharded controller: its own figures are the totals.
    assert_eq!(r["shard_count"], 1);
    let shards = r["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0]["nodes_created"], 10.0);
    assert_eq!(shards[0]["nodes_expected"], 10);
}

#[test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
fn a_sharded_demo_splits_the_nodes_between_shards_and_reports_each() {
    let (r, stdout, _) = demo(&["--clusters", "20", "--shards", "2", "--timeout", "3m"]);
    // Every Node once, across both processes, as with one.
    assert_eq!(r["nodes_expected"], 20);
    assert_eq!(r["nodes_created"], 20);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["missing"], 0);
    assert_eq!(r["loop_closed"], 20);
    assert_eq!(r["shard_count"], 2);

    let shards = r["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "{shards:?}");
    let number = |s: &Value, key: &str| s[key].as_f64().unwrap_or_else(|| panic!("{key} in {s}"));
    let mut created = 0.0;
    let mut clusters = 0.0;
    let mut rate = 0.0;
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s["index"], i, "{s}");
        // Read from that process's `fakenode_nodes_created_total{shard="i"}`: an
        // unsharded process, or one of another index, has no such sample and reads 0.
        let n = number(s, "nodes_created");
        assert!(n > 0.0, "shard {i} created no Node: {s}");
        // Exactly the Nodes of the clusters that hash to it, by no other shard.
        assert_eq!(n, number(s, "nodes_expected"), "shard {i}: {s}");
        assert!(number(s, "nodes_per_second") > 0.0, "{s}");
        assert!(number(s, "peak_rss_bytes") > 0.0, "{s}");
        // Each shard's clients are for its own clusters only.
        assert_eq!(
            number(s, "workload_clients"),
            number(s, "clusters"),
            "shard {i}: {s}"
        );
        created += n;
        clusters += number(s, "clusters");
        rate += number(s, "nodes_per_second");
        assert!(
            stdout.contains(&format!("shard {i} of 2")),
            "the summary has shard {i}: {stdout}"
        );
    }
    // The shards' counts add up to the total, which is every Machine's Node.
    assert_eq!(created, 20.0, "{shards:?}");
    assert_eq!(r["controller_nodes_created_total"], created);
    assert_eq!(clusters, 20.0, "every cluster in exactly one shard");
    assert_eq!(r["workload_clients"], 20.0);
    assert_eq!(r["controller_histogram"]["count"], 20.0);
    let total_rate = number(&r, "nodes_per_second");
    assert!(
        (rate - total_rate).abs() < 1e-6 * total_rate.max(1.0),
        "the shards' rates add up to the run's: {rate} vs {total_rate}"
    );
    assert!(stdout.contains("shards total"), "{stdout}");
}

#[test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
fn a_drain_is_timed_from_the_controllers_start_against_a_ceiling_sending_the_same_requests() {
    let (r, stdout, _) = demo(&[
        "--clusters",
        "3",
        "--workers",
        "2",
        "--arrival",
        "provisioned",
        "--ceiling",
        "--repeat",
        "2",
        "--timeout",
        "3m",
    ]);
    assert_eq!(r["arrival"], "provisioned");
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "every run is reported");
    for run in runs {
        assert_eq!(run["nodes_created"], 9, "{run}");
        assert_eq!(run["duplicates"], 0, "{run}");
        assert_eq!(run["missing"], 0, "{run}");
        assert!(
            run["controller_ready_seconds"].as_f64().unwrap() > 0.0,
            "{run}"
        );
        let ceiling = &run["ceiling"];
        assert_eq!(ceiling["nodes_created"], 9, "{run}");
        assert_eq!(ceiling["missing"], 0, "{run}");
        // The controller's registration, once per machine: each Node created with its
        // status, then its startup taint lifted; each control plane's kubeadm-config.
        assert_eq!(ceiling["workload_requests"], 3.0 * 3.0 + 6.0 * 2.0, "{run}");
        // The controller sends exactly as much: a machine reconciled again right after its
        // registration sends nothing again.
        assert_eq!(
            run["workload_requests"], ceiling["workload_requests"],
            "{run}"
        );
        // Counted by purpose: two per Node, one kubeadm-config per cluster, nothing else
        // (no heartbeats, static pods or leases without --full-fidelity).
        assert_eq!(
            run["requests_by_purpose"],
            serde_json::json!({"registration": 18.0, "kubeadm_config": 3.0}),
            "{run}"
        );
        assert!(run["ratio_to_ceiling"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["latency_p50_ratio_to_ceiling"].is_null(), "{run}");
    }
    assert!(
        stdout.contains("2: each figure is the median") && stdout.contains("run 2"),
        "{stdout}"
    );
    assert!(stdout.contains("nodes/s: ratio"), "{stdout}");
}
