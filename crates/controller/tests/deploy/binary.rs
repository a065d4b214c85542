//! The real binary as the ServiceAccount: it serves its endpoints, creates the Nodes, logs
//! no secret and stops cleanly on SIGTERM.

use super::*;

/// Every line of a child's stream, until it closes.
fn lines(stream: impl AsyncRead + Unpin + Send + 'static) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    })
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(exposition: &str, metric: &str) -> Option<f64> {
    metal3_fakenode_testkit::exposition::metric_value(exposition, metric)
}

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

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, &sa.kubeconfig).unwrap();
    let port = envtest::free_port().unwrap();
    let pod_name = unique("metal3-fakenode-pod");
    // Nothing inherited: the token kubeconfig is its only way in, as in the Pod.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_metal3-fakenode"))
        .args(["run", "--log-format", "json", "--namespace", &ns])
        .arg("--metrics-bind-address")
        .arg(format!("127.0.0.1:{port}"))
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", &pod_name)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());

    let get = |path: &'static str| async move {
        http_get(port, path)
            .await
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
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
            (sample(&metrics, "fakenode_nodes_created_total")? == want).then_some(())
        },
    )
    .await;

    let pid = i32::try_from(child.id().expect("still running")).unwrap();
    // SAFETY: kill(2) on our own child's pid, which is not reaped before `wait` below.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the binary exits within 30s of SIGTERM")
        .unwrap();
    let stdout = stdout.await.unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {}", stderr.join("\n"));

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

    let logs = [stdout.join("\n"), stderr.join("\n")].join("\n");
    for (what, secret) in secrets_of(&sa.token, &workload_kubeconfig) {
        assert!(!logs.contains(&secret), "the logs contain {what}");
    }
}
