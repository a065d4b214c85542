//! The real binary as the ServiceAccount: it serves its endpoints, creates the Nodes, logs
//! no secret and stops cleanly on SIGTERM.

use super::*;
use common::binary::{Binary, sample as labelled};

/// What must never reach the logs: the ServiceAccount token and the credentials of the
/// workload kubeconfig (as the Secret stores them, and the decoded key).
fn secrets_of(token: &str, workload_kubeconfig: &str) -> Vec<(String, String)> {
    let config: Value = serde_saphyr::from_str(workload_kubeconfig).unwrap();
    let user = &config["users"][0]["user"];
    let mut secrets = vec![
        ("the ServiceAccount token".to_string(), token.to_string()),
        (
            "the kubeconfig Secret's value".to_string(),
            BASE64.encode(workload_kubeconfig),
        ),
    ];
    for field in ["client-certificate-data", "client-key-data"] {
        let data = user[field].as_str().unwrap_or_else(|| panic!("{field}"));
        secrets.push((format!("the kubeconfig's {field}"), data.to_string()));
        if field == "client-key-data" {
            let pem = String::from_utf8(BASE64.decode(data).unwrap()).unwrap();
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                secrets.push(("a line of the client key".to_string(), line.to_string()));
            }
        }
    }
    assert!(secrets.iter().all(|(_, s)| s.len() >= 32));
    secrets
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_binary_runs_as_the_service_account_and_stops_cleanly_on_sigterm() {
    let _turn = ONE_CONTROLLER.lock().await;
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let sa = service_account().await;
    let ns = unique("deploy-binary");
    world::namespace(&admin, &ns).await.unwrap();
    let server = &env.workloads[0];
    let workload_kubeconfig = admin_yaml(server);
    cluster(&admin, &ns, &ns, &workload_kubeconfig).await;
    let mut machines = Vec::new();
    for (suffix, control_plane) in [("cp-0", true), ("md-0", false)] {
        let spec = MachineSpec::new(&ns, &format!("{ns}-{suffix}"), control_plane);
        machines.push(world::machine(&admin, &ns, &spec).await.unwrap());
    }

    let pod_name = unique("metal3-fakenode-pod");
    // Nothing inherited: the token kubeconfig is its only way in, as in the Pod.
    let args = ["--log-format", "json", "--namespace", &ns];
    let mut binary =
        Binary::spawn_with_env(&sa.kubeconfig, &args, "info", &[("POD_NAME", &pod_name)]);
    let get = |path: &'static str| {
        let binary = &binary;
        async move {
            binary
                .get(path)
                .await
                .filter(|(code, _)| *code == 200)
                .map(|(_, body)| body)
        }
    };
    let health = eventually("/healthz to answer 200", LIMIT, || get("/healthz")).await;
    assert_eq!(health, "ok");
    eventually("/readyz to answer 200 (the stores synced)", LIMIT, || {
        get("/readyz")
    })
    .await;
    for m in &machines {
        ready_node(server, m).await;
        let created = eventually("a FakeNodeCreated Event", LIMIT, || async {
            let found = events(&admin, &ns, &m.spec.name, "FakeNodeCreated").await;
            (!found.is_empty()).then_some(found)
        })
        .await;
        assert_eq!(created[0].reporting_instance.as_deref(), Some(&*pod_name));
    }
    let want = machines.len() as f64;
    eventually(
        "fakenode_nodes_created_total to count both Nodes",
        LIMIT,
        || async {
            let metrics = get("/metrics").await?;
            (labelled(&metrics, "fakenode_nodes_created_total", &[])? == want).then_some(())
        },
    )
    .await;

    binary.signal(libc::SIGTERM);
    let code = binary.exit_within(Duration::from_secs(30)).await;
    let logs = binary.lines().join("\n");
    assert_eq!(
        code,
        Some(Some(0)),
        "the binary exits 0 within 30s of SIGTERM: {logs}"
    );
    let stdout = binary.stdout.lock().unwrap().clone();
    let records: Vec<Value> = stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = records
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    let created: Vec<&Value> = records
        .iter()
        .filter(|r| r["message"] == "created Node")
        .collect();
    assert_eq!(created.len(), machines.len(), "{messages:?}");
    assert!(messages.contains(&"stopped"), "{messages:?}");

    for (what, secret) in secrets_of(&sa.token, &workload_kubeconfig) {
        assert!(!logs.contains(&secret), "the logs contain {what}");
    }
}
