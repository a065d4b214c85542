//! The README's main command, small: the demo runs its own control planes, the controller
//! as a process and the CAPM3 stand-in, and its JSON report is exact.

use std::process::Command;

use serde_json::Value;

#[test]
fn a_small_demo_creates_every_node_once_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let plot = dir.path().join("demo.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_metal3-fakenode"))
        .args([
            "demo",
            "--clusters",
            "5",
            "--workers",
            "1",
            "--timeout",
            "3m",
        ])
        .arg("--report")
        .arg(&report)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {}\n{stderr}\n{stdout}",
        output.status
    );
    assert!(stdout.contains("metal3-fakenode demo report"), "{stdout}");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
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
    assert!(
        r["ceiling_nodes_per_second"].is_null(),
        "no --ceiling, no ceiling"
    );
    assert!(r["ratio_to_ceiling"].is_null());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("Nodes Ready over time"));
}
