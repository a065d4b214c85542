//! Scale out: the leader-election and sharded overlays, run as their Pods would run.

use super::*;

const LEADER_ELECTION: &str = "deploy/overlays/leader-election";
const SHARDED: &str = "deploy/overlays/sharded-statefulset";

/// Really applies the overlay's Role and RoleBinding for the Lease (next to what
/// `service_account` applies), as `kubectl apply -k` of the overlay would.
async fn apply_lease_rbac(admin: &kube::Client, objects: &[Value]) {
    for kind_ in ["Role", "RoleBinding"] {
        apply(admin, one(objects, kind_), false)
            .await
            .unwrap_or_else(|e| panic!("applying the {kind_}: {e}"));
    }
}

/// The only container of a Deployment's or StatefulSet's Pod template.
fn container(workload: &Value) -> &Value {
    let containers = workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no containers", kind(workload)));
    assert_eq!(containers.len(), 1, "{}", kind(workload));
    &containers[0]
}

fn strings(value: &Value) -> Vec<String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// The `run` arguments of a workload's container, as the binary parses them.
fn run_args(workload: &Value) -> metal3_fakenode::cli::RunArgs {
    let mut argv = vec![NAME.to_string()];
    argv.extend(strings(&container(workload)["args"]));
    let Command::Run(args) = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the {}'s args {argv:?}: {e}", kind(workload)))
        .command;
    *args
}

/// The holder of the Lease `name` in the controller's namespace, if it exists.
async fn lease_holder(admin: &kube::Client, name: &str) -> Option<String> {
    Api::<Lease>::namespaced(admin.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

/// The real binary run as a Pod of a rendered Deployment or StatefulSet would run it: the
/// container's args (plus `extra`), its environment with the downward API filled in and
/// `$(VAR)` expanded as the kubelet does, and a token of the ServiceAccount as its only
/// credential; nothing inherited.
struct Pod {
    child: std::sync::Mutex<tokio::process::Child>,
    name: String,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Pod {
    fn start(
        workload: &Value,
        pod_name: &str,
        uid: &str,
        extra: &[&str],
        identity: &Identity,
    ) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, &identity.kubeconfig).unwrap();
        let port = envtest::free_port().unwrap();
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container(workload)["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap().to_string();
            let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(value), _) => env.iter().fold(value.clone(), |v, (k, known)| {
                    v.replace(&format!("$({k})"), known)
                }),
                (_, Value::String(field)) => match field.as_str() {
                    "metadata.name" => pod_name.to_string(),
                    "metadata.namespace" => workload["metadata"]["namespace"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    "metadata.uid" => uid.to_string(),
                    // Loopback: the replicas of a test share this machine.
                    "status.podIP" => "127.0.0.1".to_string(),
                    other => panic!("{name}: the test does not fill in {other}"),
                },
                _ => panic!("{name}: neither a value nor a fieldRef: {var}"),
            };
            env.push((name, value));
        }
        let log = dir.path().join("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_metal3-fakenode"))
            .args(strings(&container(workload)["args"]))
            .args(extra)
            .arg("--metrics-bind-address")
            .arg(format!("127.0.0.1:{port}"))
            // Replicas of a test share this machine: each its own kubelet API port.
            .arg("--kubelet-bind-address")
            .arg("127.0.0.1:0")
            .env_clear()
            .envs(env)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Pod {
            child: std::sync::Mutex::new(child),
            name: pod_name.to_string(),
            port,
            log,
            _dir: dir,
        }
    }

    /// Fails the test at once, with the process's log, if it exited.
    fn running(&self) {
        let status = self.child.lock().unwrap().try_wait().unwrap();
        if let Some(status) = status {
            panic!(
                "Pod {} exited ({status}):\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// The sample `metric` with exactly `labels` from its `/metrics`.
    async fn metric(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (code, body) = http_get(self.port, "/metrics").await?;
        (code == 200).then(|| {
            metal3_fakenode_testkit::exposition::metric_value_with(&body, metric, labels)
        })?
    }

    /// SIGTERM, as the kubelet stops a Pod: it must exit cleanly.
    async fn stop(self) {
        let mut child = self.child.into_inner().unwrap();
        let pid = i32::try_from(child.id().expect("still running")).unwrap();
        // SAFETY: kill(2) on our own child's pid, which is not reaped before `wait` below.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the Pod exits within 30s of SIGTERM")
            .unwrap();
        assert!(
            status.success(),
            "{status}:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_scale_out_overlays_pass_a_strict_server_side_dry_run_and_fit_the_binary() {
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let base = render("deploy").await;
    let leader_election = render(LEADER_ELECTION).await;
    let sharded = render(SHARDED).await;
    assert_eq!(
        kinds(&leader_election),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Namespace",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    assert_eq!(
        kinds(&sharded),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Namespace",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "StatefulSet"
        ],
        "the StatefulSet replaces the Deployment"
    );
    apply(&admin, one(&base, "Namespace"), false).await.unwrap();
    for object in leader_election.iter().chain(&sharded) {
        let accepted = apply(&admin, object, true)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", kind(object), name(object)));
        assert_eq!(accepted.metadata.name.as_deref(), Some(name(object)));
        if kind(object) != "Namespace" {
            assert_eq!(
                object["metadata"]["namespace"]
                    .as_str()
                    .map_or(NAMESPACE, |n| n),
                NAMESPACE
            );
            assert_eq!(
                labels(object)
                    .get("app.kubernetes.io/name")
                    .map(String::as_str),
                Some(NAME),
                "{}",
                kind(object)
            );
        }
    }
    // Both overlays share the base's objects and the component's RBAC unchanged.
    for kind_ in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "ServiceAccount",
    ] {
        assert_eq!(one(&sharded, kind_), one(&base, kind_), "{kind_}");
    }
    for kind_ in ["Role", "RoleBinding"] {
        assert_eq!(
            one(&sharded, kind_),
            one(&leader_election, kind_),
            "{kind_}"
        );
    }
    // The Role is about Leases only, and bound to the controller's ServiceAccount.
    let role = one(&leader_election, "Role");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(
            strings(&rule["apiGroups"]),
            ["coordination.k8s.io"],
            "{rule}"
        );
        assert_eq!(strings(&rule["resources"]), ["leases"], "{rule}");
        assert!(rule.get("resourceNames").is_none(), "{rule}");
        // What the election uses, no more: the leader test below fails without any one.
        let mut verbs = strings(&rule["verbs"]);
        verbs.sort();
        assert_eq!(verbs, ["create", "get", "list", "patch", "watch"], "{rule}");
    }
    let binding = one(&leader_election, "RoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], name(role));
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}])
    );

    // The Deployment with standbys: one Lease, POD_NAMESPACE says where.
    let deployment = one(&leader_election, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args = run_args(deployment);
    assert!(args.leader_elect && args.shard_count == 1);
    let env_source = |workload: &Value, var: &str| {
        container(workload)["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("{var} is not set in the {}", kind(workload)))
            .clone()
    };
    assert_eq!(
        env_source(deployment, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    // The StatefulSet: one shard per replica, the index from the Pod name's ordinal.
    let statefulset = one(&sharded, "StatefulSet");
    let spec = &statefulset["spec"];
    let args = run_args(statefulset);
    assert!(args.leader_elect, "each shard on its own Lease");
    assert_eq!(
        spec["replicas"].as_u64(),
        Some(u64::from(args.shard_count)),
        "one replica per shard, no shard left without a replica"
    );
    assert!(args.shard_count > 1);
    assert_eq!(args.shard_index, None, "the index comes from POD_NAME");
    assert_eq!(
        env_source(statefulset, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // Its Pod is the Deployment's (probes, security context, resources, ServiceAccount):
    // the same template but for the shard count and the Lease identity.
    let mut template = spec["template"].clone();
    let mut expected = deployment["spec"]["template"].clone();
    let their = &mut expected["spec"]["containers"][0];
    their["args"]
        .as_array_mut()
        .unwrap()
        .push(json!(format!("--shard-count={}", args.shard_count)));
    let ours = &mut template["spec"]["containers"][0];
    let ours_env = ours["env"]
        .as_array_mut()
        .unwrap()
        .split_off(their["env"].as_array().unwrap().len());
    assert_eq!(template, expected);
    // A replacement Pod keeps the name: the UID keeps the old and new one apart in the
    // Lease (see the overlay).
    assert_eq!(
        ours_env
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["POD_UID", "FAKENODE_LEADER_ELECT_IDENTITY"]
    );
    assert_eq!(
        ours_env[0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.uid"
    );
    let identity = ours_env[1]["value"].as_str().unwrap();
    assert!(
        identity.contains("$(POD_NAME)") && identity.contains("$(POD_UID)"),
        "{identity}"
    );
    // Selected by its selector and by the metrics Service, which names it.
    let service = one(&sharded, "Service");
    assert_eq!(spec["serviceName"], name(service));
    let pod_labels = string_map(&spec["template"]["metadata"]["labels"]);
    for selector in [
        string_map(&spec["selector"]["matchLabels"]),
        string_map(&service["spec"]["selector"]),
    ] {
        assert!(!selector.is_empty());
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    }
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_leader_election_overlay_lets_the_service_account_lead_and_no_more() {
    let _turn = ONE_CONTROLLER.lock().await;
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let sa = service_account().await;
    let objects = render(LEADER_ELECTION).await;
    apply_lease_rbac(&admin, &objects).await;
    let deployment = one(&objects, "Deployment");
    let args = run_args(deployment);
    let lease = args.leader_election(args.shard().unwrap()).lease_name;

    let ns = unique("deploy-leader");
    world::namespace(&admin, &ns).await.unwrap();
    let server = &env.workloads[0];
    cluster(&admin, &ns, &ns, &admin_yaml(server)).await;
    let spec = MachineSpec::new(&ns, &format!("{ns}-cp-0"), true);
    let machine = world::machine(&admin, &ns, &spec).await.unwrap();

    // No Lease yet: the replica must get, create and patch it, and list and watch it to
    // see its own renewals, all as the ServiceAccount.
    assert_eq!(lease_holder(&admin, &lease).await, None);
    let pod_name = unique("metal3-fakenode-leader");
    let uid = unique("pod-uid");
    let pod = Pod::start(deployment, &pod_name, &uid, &["--namespace", &ns], &sa);
    eventually("the replica to hold the Lease and lead", LIMIT, || {
        pod.running();
        async {
            let holder = lease_holder(&admin, &lease).await;
            let leading = pod.metric("fakenode_leader", &[]).await == Some(1.0);
            (holder.as_deref() == Some(&*pod_name) && leading).then_some(())
        }
    })
    .await;
    // And, leading, it reconciles: the Node is this process's.
    ready_node(server, &machine).await;
    eventually("the replica to count the Node", LIMIT, || {
        pod.running();
        async { (pod.metric("fakenode_nodes_created_total", &[]).await == Some(1.0)).then_some(()) }
    })
    .await;

    // Its Leases, and no others: in another namespace every verb is a 403. (It reads its
    // own, so the token is good and the 403s are RBAC.)
    let sa_own: Api<Lease> = Api::namespaced(sa.client.clone(), NAMESPACE);
    assert!(sa_own.get(&lease).await.is_ok());
    let other: Lease = serde_json::from_value(json!({
        "metadata": {"name": "someone-elses"},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    Api::<Lease>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    let sa_other: Api<Lease> = Api::namespaced(sa.client.clone(), &ns);
    assert_forbidden(
        "getting a Lease elsewhere",
        sa_other.get("someone-elses").await,
    );
    assert_forbidden(
        "listing Leases elsewhere",
        sa_other.list(&ListParams::default()).await,
    );
    let mine = serde_json::from_value::<Lease>(json!({"metadata": {"name": "mine"}})).unwrap();
    assert_forbidden(
        "creating a Lease elsewhere",
        sa_other.create(&PostParams::default(), &mine).await,
    );
    assert_forbidden(
        "taking a Lease elsewhere",
        sa_other
            .patch(
                "someone-elses",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"holderIdentity": pod_name}})),
            )
            .await,
    );
    assert_forbidden(
        "deleting a Lease elsewhere",
        sa_other
            .delete("someone-elses", &DeleteParams::default())
            .await,
    );
    pod.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_statefulset_pod_runs_the_shard_of_its_ordinal_on_its_own_lease() {
    let _turn = ONE_CONTROLLER.lock().await;
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let sa = service_account().await;
    let objects = render(SHARDED).await;
    apply_lease_rbac(&admin, &objects).await;
    let statefulset = one(&objects, "StatefulSet");
    let args = run_args(statefulset);
    // The last Pod: its index is not the default 0, so only the ordinal can give it.
    let shard = Shard::new(args.shard_count - 1, args.shard_count).unwrap();
    let pod_name = format!("{}-{}", name(statefulset), shard.index);
    let lease = args.leader_election(shard).lease_name;

    let ns = unique("deploy-shard");
    world::namespace(&admin, &ns).await.unwrap();
    let server = &env.workloads[0];
    let cluster_name = (0..)
        .map(|c| format!("{ns}-c{c}"))
        .find(|c| Shard::of(&ns, c, shard.count) == shard.index)
        .unwrap();
    cluster(&admin, &ns, &cluster_name, &admin_yaml(server)).await;
    let spec = MachineSpec::new(&cluster_name, &format!("{cluster_name}-cp-0"), true);
    let machine = world::machine(&admin, &ns, &spec).await.unwrap();

    let uid = unique("pod-uid");
    let pod = Pod::start(statefulset, &pod_name, &uid, &["--namespace", &ns], &sa);
    let index = shard.index.to_string();
    let labels = [("shard", index.as_str())];
    eventually("the shard to hold its Lease and lead", LIMIT, || {
        pod.running();
        async {
            let holder = lease_holder(&admin, &lease).await;
            let leading = pod.metric("fakenode_leader", &labels).await == Some(1.0);
            (holder == Some(format!("{pod_name}_{uid}")) && leading).then_some(())
        }
    })
    .await;
    ready_node(server, &machine).await;
    eventually("the shard to count the Node", LIMIT, || {
        pod.running();
        async {
            (pod.metric("fakenode_nodes_created_total", &labels).await == Some(1.0)).then_some(())
        }
    })
    .await;
    pod.stop().await;
}
