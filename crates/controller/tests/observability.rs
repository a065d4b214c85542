//! The metrics as users see them: a real Prometheus server (Debian's `prometheus`) scrapes
//! the controller and evaluates the shipped rules; every query of the dashboard and every
//! rule must parse and return data.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{eventually, start_controller, test_config, unique};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use metal3_fakenode::resources::UUID_LABEL;
use metal3_fakenode_testkit::envtest::{self, process::Supervised};
use metal3_fakenode_testkit::probe::{encode, get};
use metal3_fakenode_testkit::simulate::world::{self, MachineSpec};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    metal3_fakenode_testkit::repo_root().join(path)
}

/// Debian's prometheus, or `$PROMETHEUS`.
fn prometheus_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMETHEUS") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the prometheus server is missing: install Debian's `prometheus` package \
             (`make test` does) or set PROMETHEUS to its binary"
        )
    })
}

struct Prometheus {
    address: String,
    _process: Supervised,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates the shipped rules every second.
    async fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules = repo("deploy/prometheus/rules.yaml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: metal3-fakenode\n    \
                 static_configs: [{{targets: [{target:?}]}}]\n",
                rules = rules.display().to_string(),
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", envtest::free_port().unwrap());
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={address}"),
            "--log.level=warn".to_string(),
        ];
        let process = Supervised::spawn(
            "prometheus",
            &prometheus_binary(),
            &args,
            dir.path().join("prometheus.log"),
        )
        .unwrap();
        let prometheus = Self {
            address,
            _process: process,
            _dir: dir,
        };
        eventually("Prometheus to be ready", LIMIT, || async {
            matches!(get(&prometheus.address, "/-/ready").await, Ok((200, _))).then_some(())
        })
        .await;
        prometheus
    }

    /// `data.result` of an instant query; panics if Prometheus rejects the query.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let (status, body) = get(
            &self.address,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .await
        .unwrap();
        let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            status == 200 && parsed["status"] == "success",
            "Prometheus rejected {promql:?}: {status} {body}"
        );
        parsed["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of a query, once it has one.
    async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Every `expr` of the dashboard's panels (nested rows included).
fn dashboard_queries() -> Vec<String> {
    fn walk(panels: &[Value], out: &mut Vec<String>) {
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(expr.to_string());
                }
            }
            walk(
                panel["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                out,
            );
        }
    }
    let text = std::fs::read_to_string(repo("dashboards/metal3-fakenode.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    out
}

/// (record name or alert name, expr, is a recording rule) of the shipped rules.
fn rules() -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/rules.yaml")).unwrap();
    let rules: Value = serde_saphyr::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap().to_string();
            match (rule["record"].as_str(), rule["alert"].as_str()) {
                (Some(record), _) => out.push((record.to_string(), expr, true)),
                (_, Some(alert)) => out.push((alert.to_string(), expr, false)),
                _ => panic!("a rule that neither records nor alerts: {rule}"),
            }
        }
    }
    out
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn prometheus_scrapes_exact_counts_and_every_dashboard_query_and_rule_returns_data() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("metrics");
    world::namespace(&mgmt, &ns).await.unwrap();
    let server = &env.workloads[0];
    world::cluster(&mgmt, &ns, &ns).await.unwrap();
    let kubeconfig = envtest::kubeconfig_yaml(&server.admin_kubeconfig()).unwrap();
    world::kubeconfig_secret(&mgmt, &ns, &ns, world::kubeconfig_data(&kubeconfig))
        .await
        .unwrap();
    const N: usize = 5;
    for i in 0..N {
        let spec = MachineSpec::new(&ns, &format!("{ns}-m{i}"), i == 0);
        world::machine(&mgmt, &ns, &spec).await.unwrap();
    }
    // One injected bad input: a Node of the same name already exists for another host.
    let conflict = format!("{ns}-conflict");
    let taken: Node = serde_json::from_value(
        json!({"metadata": {"name": conflict, "labels": {UUID_LABEL: "x"}}}),
    )
    .unwrap();
    Api::<Node>::all(server.client().await.unwrap())
        .create(&PostParams::default(), &taken)
        .await
        .unwrap();
    world::machine(&mgmt, &ns, &MachineSpec::new(&ns, &conflict, false))
        .await
        .unwrap();

    let ctl = start_controller(test_config(&[&ns])).await;
    let listener = metal3_fakenode::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(metal3_fakenode::http::serve(
        listener,
        ctl.health.clone(),
        std::future::pending(),
    ));
    assert_eq!(get(&target, "/healthz").await.unwrap().0, 200);
    eventually("/readyz", LIMIT, || async {
        (get(&target, "/readyz").await.ok()?.0 == 200).then_some(())
    })
    .await;

    let prometheus = Prometheus::start(&target).await;
    // The histogram counts each Node once, as scraped by a real Prometheus.
    eventually("N latency samples in Prometheus", LIMIT, || async {
        let count = prometheus
            .value("fakenode_node_creation_latency_seconds_count")
            .await?;
        assert!(count <= N as f64, "{count} samples for {N} Nodes");
        (count == N as f64).then_some(())
    })
    .await;
    assert_eq!(
        prometheus.value("fakenode_nodes_created_total").await,
        Some(N as f64)
    );
    eventually("the conflict counted", LIMIT, || async {
        (prometheus
            .value(r#"fakenode_reconcile_errors_total{reason="node_conflict"}"#)
            .await?
            >= 1.0)
            .then_some(())
    })
    .await;
    // ... and only it: no other reason counts anything.
    assert_eq!(
        prometheus
            .value(r#"sum(fakenode_reconcile_errors_total{reason!="node_conflict"})"#)
            .await,
        Some(0.0)
    );
    // Every reason is exported from the start (bounded, known label values).
    assert_eq!(
        prometheus
            .query("fakenode_reconcile_errors_total")
            .await
            .len(),
        metal3_fakenode::error::Error::REASONS.len()
    );

    // Wait for enough samples for rate() windows, then ask every query and rule.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for expr in dashboard_queries() {
        let promql = expr.replace("$__rate_interval", "30s");
        let result = prometheus.query(&promql).await;
        assert!(
            !result.is_empty(),
            "dashboard query returns no data: {promql}"
        );
    }
    for (name, expr, recording) in rules() {
        // An alert's expression is empty unless it fires; that it parses is what counts.
        let result = prometheus.query(&expr).await;
        if recording {
            assert!(
                !result.is_empty(),
                "recording rule {name} returns no data: {expr}"
            );
            eventually(&format!("recorded series {name}"), LIMIT, || async {
                (!prometheus.query(&name).await.is_empty()).then_some(())
            })
            .await;
        }
    }
    // Prometheus itself evaluated every rule without error.
    let (_, body) = get(&prometheus.address, "/api/v1/rules").await.unwrap();
    let loaded: Value = serde_json::from_str(&body).unwrap();
    let mut evaluated = 0;
    for group in loaded["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {} failed: {}",
                rule["name"], rule["lastError"]
            );
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, rules().len());
    ctl.stop().await;
}
