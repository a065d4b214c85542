//! The controller against real API servers: one management cluster with the upstream
//! CRDs, two workload API servers. Each test owns its namespaces (the controller under
//! test watches only those) and its cluster and machine names, so tests share the
//! control planes and run in parallel.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use common::cluster_with_kubeconfig as cluster;
use common::{
    admin_yaml, events, eventually, ready_node, start_capm3, start_controller, test_config, unique,
    webhook,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use metal3_fakenode::resources::UUID_LABEL;
use metal3_fakenode_testkit::envtest::{self, ApiServer};
use metal3_fakenode_testkit::simulate::world::{self, MachineSpec};
use serde_json::json;

/// The data of a kubeconfig Secret.
type SecretData = BTreeMap<String, ByteString>;

const LIMIT: Duration = Duration::from_secs(60);

fn yaml(kubeconfig: &Kubeconfig) -> String {
    envtest::kubeconfig_yaml(kubeconfig).unwrap()
}

async fn get_node(server: &ApiServer, name: &str) -> Option<Node> {
    Api::<Node>::all(server.client().await.unwrap())
        .get_opt(name)
        .await
        .unwrap()
}

fn uuid(node: &Node) -> Option<&str> {
    metal3_fakenode::fake::node::host_uid(node)
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn every_provisioned_machine_gets_one_ready_node_in_its_own_workload_cluster() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let namespaces = [unique("loop-a"), unique("loop-b")];
    // Two namespaces x two clusters x (one control plane + two workers), the clusters
    // spread over both workload API servers.
    let mut expected = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        world::namespace(&mgmt, ns).await.unwrap();
        for c in 0..2 {
            let name = format!("{ns}-c{c}");
            let server = (i + c) % 2;
            cluster(&mgmt, ns, &name, &admin_yaml(&env.workloads[server])).await;
            for (suffix, control_plane) in [("cp-0", true), ("md-0", false), ("md-1", false)] {
                let spec = MachineSpec::new(&name, &format!("{name}-{suffix}"), control_plane);
                let created = world::machine(&mgmt, ns, &spec).await.unwrap();
                expected.push((ns.clone(), server, created));
            }
        }
    }
    let ctl = start_controller(test_config(&[&namespaces[0], &namespaces[1]])).await;
    let _capm3 = [
        start_capm3(&namespaces[0]).await,
        start_capm3(&namespaces[1]).await,
    ];

    for (ns, server, m) in &expected {
        // The loop closes: CAPM3 (the stand-in) found the Node by its uuid label.
        let want = format!("metal3://{ns}/{}/{}", m.spec.host(), m.spec.name);
        let got = eventually(&format!("providerID of {}", m.spec.name), LIMIT, || async {
            world::provider_id(&mgmt, ns, &m.spec.name).await.unwrap()
        })
        .await;
        assert_eq!(got, want);

        let node = ready_node(&env.workloads[*server], m).await;
        assert_eq!(
            node.spec.as_ref().and_then(|s| s.provider_id.as_deref()),
            Some(want.as_str())
        );
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let taints = node
            .spec
            .clone()
            .unwrap_or_default()
            .taints
            .unwrap_or_default();
        if m.spec.control_plane {
            assert_eq!(
                labels
                    .get("node-role.kubernetes.io/control-plane")
                    .map(String::as_str),
                Some("")
            );
            assert!(
                taints
                    .iter()
                    .any(|t| t.key == "node-role.kubernetes.io/control-plane"
                        && t.effect == "NoSchedule")
            );
        } else {
            assert!(!labels.contains_key("node-role.kubernetes.io/control-plane"));
            assert!(taints.is_empty());
        }
        let info = node
            .status
            .as_ref()
            .and_then(|s| s.node_info.clone())
            .unwrap();
        assert_eq!(info.kubelet_version, "v1.34.1");
        // Only in its own workload cluster.
        assert!(
            get_node(&env.workloads[1 - server], &m.spec.name)
                .await
                .is_none()
        );
        // A Normal Event on the Metal3Machine says what happened (published just after
        // the Node, so it may trail it a little).
        eventually("a FakeNodeCreated Event", LIMIT, || async {
            let found = events(&mgmt, ns, &m.spec.name, "FakeNodeCreated").await;
            (!found.is_empty()).then_some(found)
        })
        .await;
    }
    // Control planes initialized the clusters: kube-system/kubeadm-config in both servers
    // (shared by the clusters on each server, as in the original scale tests).
    for server in &env.workloads {
        let cm = Api::<ConfigMap>::namespaced(server.client().await.unwrap(), "kube-system")
            .get("kubeadm-config")
            .await
            .unwrap();
        assert!(cm.data.unwrap()["ClusterConfiguration"].contains("kind: ClusterConfiguration"));
    }
    let total = expected.len() as u64;
    eventually("every creation counted", LIMIT, || async {
        (ctl.metrics.nodes_created.get() == total).then_some(())
    })
    .await;
    assert_eq!(ctl.metrics.node_creation_latency.get_sample_count(), total);
    for (ns, _, m) in &expected {
        assert_eq!(
            events(&mgmt, ns, &m.spec.name, "FakeNodeCreated")
                .await
                .len(),
            1,
            "one Event per Node"
        );
    }
    let errors: u64 = metal3_fakenode::error::Error::REASONS
        .iter()
        .map(|r| ctl.errors(r))
        .sum();
    assert_eq!(errors, 0);
    assert!(ctl.health.is_ready());
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_host_becoming_provisioned_gets_its_node_without_waiting_for_a_resync() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("provisioning");
    world::namespace(&mgmt, &ns).await.unwrap();
    cluster(&mgmt, &ns, &ns, &admin_yaml(&env.workloads[0])).await;
    let mut spec = MachineSpec::new(&ns, &format!("{ns}-md-0"), false);
    spec.host_state = "provisioning".into();
    let m = world::machine(&mgmt, &ns, &spec).await.unwrap();
    let ctl = start_controller(test_config(&[&ns])).await;
    eventually("the stores to sync", LIMIT, || async {
        ctl.health.is_ready().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        get_node(&env.workloads[0], &spec.name).await.is_none(),
        "not provisioned: no Node yet"
    );
    let errors: u64 = metal3_fakenode::error::Error::REASONS
        .iter()
        .map(|r| ctl.errors(r))
        .sum();
    assert_eq!(errors, 0, "waiting for a host is not an error");

    // Only the host's watch event can wake the Metal3Machine: it was left waiting for a
    // change, and the periodic re-check is minutes away.
    world::set_host_state(&mgmt, &ns, &spec.host(), "provisioned")
        .await
        .unwrap();
    ready_node(&env.workloads[0], &m).await;
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_restarted_controller_duplicates_nothing_and_misses_nothing() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("restart");
    world::namespace(&mgmt, &ns).await.unwrap();
    let server = &env.workloads[0];
    cluster(&mgmt, &ns, &ns, &admin_yaml(server)).await;
    let mut machines = Vec::new();
    for i in 0..20 {
        let spec = MachineSpec::new(&ns, &format!("{ns}-md-{i}"), i == 0);
        machines.push(world::machine(&mgmt, &ns, &spec).await.unwrap());
    }
    // Stop the first controller as soon as it has created something: mid-run.
    let first = start_controller(test_config(&[&ns])).await;
    eventually("a first Node", LIMIT, || async {
        (first.metrics.nodes_created.get() > 0).then_some(())
    })
    .await;
    let first_metrics = first.metrics.clone();
    first.stop().await;
    let created_before = first_metrics.nodes_created.get();
    for i in 20..25 {
        let spec = MachineSpec::new(&ns, &format!("{ns}-md-{i}"), false);
        machines.push(world::machine(&mgmt, &ns, &spec).await.unwrap());
    }
    let second = start_controller(test_config(&[&ns])).await;
    for m in &machines {
        ready_node(server, m).await;
    }
    // Every Node was created exactly once, by one of the two runs. (A Node turns Ready
    // a moment before its reconcile finishes and counts it: wait for the count, then make
    // sure nothing is counted twice later.)
    let total = machines.len() as u64;
    let counted = || {
        (
            created_before + second.metrics.nodes_created.get(),
            first_metrics.node_creation_latency.get_sample_count()
                + second.metrics.node_creation_latency.get_sample_count(),
        )
    };
    eventually("every creation counted", LIMIT, || async {
        (counted() == (total, total)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        counted(),
        (total, total),
        "one creation and one latency sample per Node across the restart (first run: {created_before})"
    );
    assert_eq!(second.errors("node_conflict"), 0);
    // The loop still closes for all of them.
    let _capm3 = start_capm3(&ns).await;
    for m in &machines {
        eventually("providerID", LIMIT, || async {
            world::provider_id(&mgmt, &ns, &m.spec.name).await.unwrap()
        })
        .await;
    }
    second.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_rotated_kubeconfig_secret_is_used_at_once() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("rotation");
    world::namespace(&mgmt, &ns).await.unwrap();
    cluster(&mgmt, &ns, &ns, &admin_yaml(&env.workloads[0])).await;
    let a = world::machine(
        &mgmt,
        &ns,
        &MachineSpec::new(&ns, &format!("{ns}-md-a"), false),
    )
    .await
    .unwrap();
    let ctl = start_controller(test_config(&[&ns])).await;
    ready_node(&env.workloads[0], &a).await;

    // The cluster moves: new server, new credentials, same Secret.
    world::kubeconfig_secret(
        &mgmt,
        &ns,
        &ns,
        world::kubeconfig_data(&admin_yaml(&env.workloads[1])),
    )
    .await
    .unwrap();
    let b = world::machine(
        &mgmt,
        &ns,
        &MachineSpec::new(&ns, &format!("{ns}-md-b"), false),
    )
    .await
    .unwrap();
    ready_node(&env.workloads[1], &b).await;
    assert!(
        get_node(&env.workloads[0], &b.spec.name).await.is_none(),
        "the old server is not used any more"
    );
    // A, still without a providerID, is needed in the cluster's new server as well.
    ready_node(&env.workloads[1], &a).await;
    ctl.scrape();
    assert_eq!(
        ctl.metrics.workload_clients.get(),
        1,
        "one client per cluster, replaced"
    );
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_dead_workload_cluster_does_not_hold_up_the_others() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("dead");
    world::namespace(&mgmt, &ns).await.unwrap();
    // A server that accepts connections and never answers: the worst kind of dead.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut dead = env.workloads[0].admin_kubeconfig();
    dead.clusters[0].cluster.as_mut().unwrap().server =
        Some(format!("https://{}", blackhole.local_addr().unwrap()));
    cluster(&mgmt, &ns, &format!("{ns}-dead"), &yaml(&dead)).await;
    let mut dead_machines = Vec::new();
    for i in 0..4 {
        let spec = MachineSpec::new(&format!("{ns}-dead"), &format!("{ns}-dead-{i}"), false);
        dead_machines.push(world::machine(&mgmt, &ns, &spec).await.unwrap());
    }
    let mut healthy = Vec::new();
    for c in 0..3 {
        let name = format!("{ns}-ok{c}");
        cluster(&mgmt, &ns, &name, &admin_yaml(&env.workloads[c % 2])).await;
        for i in 0..2 {
            let spec = MachineSpec::new(&name, &format!("{name}-{i}"), false);
            healthy.push((c % 2, world::machine(&mgmt, &ns, &spec).await.unwrap()));
        }
    }
    let mut config = test_config(&[&ns]);
    // Fewer workers than dead machines: if a dead cluster held a worker for longer than
    // its timeout, the healthy clusters would starve.
    config.concurrency = 2;
    config.workload.connect_timeout = Duration::from_secs(1);
    config.workload.request_timeout = Duration::from_secs(2);
    let ctl = start_controller(config).await;
    for (server, m) in &healthy {
        ready_node(&env.workloads[*server], m).await;
    }
    eventually("the dead cluster's failures", LIMIT, || async {
        (ctl.errors("workload_unreachable") >= dead_machines.len() as u64).then_some(())
    })
    .await;
    for m in &dead_machines {
        assert!(get_node(&env.workloads[0], &m.spec.name).await.is_none());
    }
    assert_eq!(
        ctl.errors("workload_tls"),
        0,
        "a timeout is not a TLS failure"
    );
    drop(blackhole);
    ctl.stop().await;
}

/// A workload API server that answers 429 with Retry-After (as API Priority and Fairness
/// does) sets the pace: the controller sends that cluster nothing until then, and in the
/// end every Node is there once.
#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_server_asking_to_retry_later_is_obeyed_and_nothing_is_lost() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("retry-after");
    world::namespace(&mgmt, &ns).await.unwrap();
    let server = &env.workloads[1];
    cluster(&mgmt, &ns, &ns, &admin_yaml(server)).await;
    // Longer than any requeue of the test configuration (at most 2 s): a retry that came
    // sooner would not have waited for the server.
    const RETRY_AFTER: u32 = 4;
    let (url, ca, arrivals) = webhook::throttle_first(2, RETRY_AFTER).await;
    let throttled = format!("{ns}-0");
    node_webhook(server, &throttled, &url, Some(&ca)).await;
    let mut machines = Vec::new();
    for i in 0..5 {
        let spec = MachineSpec::new(&ns, &format!("{ns}-{i}"), false);
        machines.push(world::machine(&mgmt, &ns, &spec).await.unwrap());
    }
    let ctl = start_controller(test_config(&[&ns])).await;
    for m in &machines {
        ready_node(server, m).await;
    }
    let seen = arrivals.lock().unwrap().clone();
    let denied = seen.iter().filter(|(_, denied)| *denied).count();
    assert_eq!(denied, 2, "{seen:?}");
    assert_eq!(seen.len(), 3, "two refusals, then the Node: {seen:?}");
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_secs(RETRY_AFTER.into()),
            "a retry {gap:?} after a 429 asking for {RETRY_AFTER}s"
        );
    }
    assert!(ctl.errors("workload_throttled") >= 2);
    assert!(
        ctl.metrics.workload_server_wait.get() > 0.0,
        "the wait is counted"
    );
    // Nothing lost, nothing twice.
    let ours = Api::<Node>::all(server.client().await.unwrap())
        .list(
            &kube::api::ListParams::default()
                .labels(&metal3_fakenode::fake::node::cluster_selector(&ns, &ns)),
        )
        .await
        .unwrap();
    assert_eq!(ours.items.len(), machines.len());
    assert_eq!(ctl.metrics.nodes_created.get(), machines.len() as u64);
    ctl.stop().await;
}

/// The bad inputs of the issue, each next to the others and to a healthy machine: each
/// gets its typed reason as a Warning Event and a metric, and no Node; the healthy
/// machine is not held up; nothing spins.
#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn bad_inputs_are_reported_and_leave_every_other_machine_alone() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("bad");
    world::namespace(&mgmt, &ns).await.unwrap();
    let w0 = &env.workloads[0];
    let w1 = &env.workloads[1];
    // (Metal3Machine, expected Warning reason)
    let mut cases: Vec<(String, &str)> = Vec::new();
    let name = |case: &str| format!("{ns}-{case}");

    // A healthy cluster and machine.
    let good_cluster = name("good");
    cluster(&mgmt, &ns, &good_cluster, &admin_yaml(w0)).await;
    let good = world::machine(
        &mgmt,
        &ns,
        &MachineSpec::new(&good_cluster, &name("good-0"), false),
    )
    .await
    .unwrap();

    // Annotation problems.
    for (case, annotation, reason) in [
        ("no-annotation", None, "MissingAnnotation"),
        (
            "malformed",
            Some("no-slash".to_string()),
            "MalformedAnnotation",
        ),
        (
            "other-ns",
            Some("elsewhere/host".to_string()),
            "AnnotationNamespaceMismatch",
        ),
        (
            "no-host",
            Some(format!("{ns}/does-not-exist")),
            "HostNotFound",
        ),
    ] {
        world::metal3_machine(
            &mgmt,
            &ns,
            &name(case),
            &good_cluster,
            annotation.as_deref(),
            None,
        )
        .await
        .unwrap();
        cases.push((name(case), reason));
    }
    // A host that another Metal3Machine consumes; a Metal3Machine without an owning
    // Machine (its host is its own).
    for (case, consumer, reason) in [
        ("stolen", "someone-else".to_string(), "HostConsumedByOther"),
        ("orphan", name("orphan"), "NoOwnerMachine"),
    ] {
        let host = name(&format!("{case}-bmh"));
        world::host(&mgmt, &ns, &host, Some(&consumer), "provisioned")
            .await
            .unwrap();
        world::metal3_machine(
            &mgmt,
            &ns,
            &name(case),
            &good_cluster,
            Some(&format!("{ns}/{host}")),
            None,
        )
        .await
        .unwrap();
        cases.push((name(case), reason));
    }
    // A Machine without its cluster-name label.
    world::machine(
        &mgmt,
        &ns,
        &MachineSpec::new(&good_cluster, &name("unlabelled"), false),
    )
    .await
    .unwrap();
    world::patch_machine(
        &mgmt,
        &ns,
        &name("unlabelled"),
        json!({"metadata": {"labels": {"cluster.x-k8s.io/cluster-name": null}}}),
    )
    .await
    .unwrap();
    cases.push((name("unlabelled"), "NoClusterLabel"));

    // Kubeconfig Secret problems, one cluster each.
    let secret_cases: Vec<(&str, Option<SecretData>, &str)> = vec![
        ("no-secret", None, "KubeconfigSecretMissing"),
        (
            "no-value",
            Some(BTreeMap::from([(
                "kubeconfig".to_string(),
                ByteString(b"x".to_vec()),
            )])),
            "KubeconfigSecretNoValue",
        ),
        (
            "not-kubeconfig",
            Some(world::kubeconfig_data("this is not a kubeconfig")),
            "KubeconfigInvalid",
        ),
        (
            "no-context",
            Some(world::kubeconfig_data(&admin_yaml(w0).replace(
                "current-context: admin@workload-0",
                "current-context: nowhere",
            ))),
            "KubeconfigUnusable",
        ),
    ];
    for (case, data, reason) in secret_cases {
        let c = name(case);
        world::cluster(&mgmt, &ns, &c).await.unwrap();
        if let Some(data) = data {
            world::kubeconfig_secret(&mgmt, &ns, &c, data)
                .await
                .unwrap();
        }
        world::machine(&mgmt, &ns, &MachineSpec::new(&c, &format!("{c}-0"), false))
            .await
            .unwrap();
        cases.push((format!("{c}-0"), reason));
    }

    // Workload API server problems.
    let mut unreachable = w0.admin_kubeconfig();
    unreachable.clusters[0].cluster.as_mut().unwrap().server = Some(format!(
        "https://127.0.0.1:{}",
        envtest::free_port().unwrap()
    ));
    let mut wrong_ca = w0.admin_kubeconfig();
    wrong_ca.clusters[0]
        .cluster
        .as_mut()
        .unwrap()
        .certificate_authority_data =
        Some(base64::engine::general_purpose::STANDARD.encode(w1.ca_pem()));
    // A user with no RBAC grant at all.
    let forbidden = w0.kubeconfig_for_user(&name("nobody"), None).unwrap();
    // The server throttles this cluster's Node: an admission webhook denies it with 429.
    let (deny_url, deny_ca) = webhook::deny_with(429).await;
    node_webhook(w1, &name("throttled-0"), &deny_url, Some(&deny_ca)).await;
    // An admission webhook that cannot be reached fails Node creation with a 500.
    let nowhere = format!(
        "https://127.0.0.1:{}/validate",
        envtest::free_port().unwrap()
    );
    node_webhook(w1, &name("broken-0"), &nowhere, None).await;
    for (case, kubeconfig, reason) in [
        ("unreachable", unreachable, "WorkloadUnreachable"),
        ("wrong-ca", wrong_ca, "WorkloadTls"),
        ("forbidden", forbidden, "WorkloadForbidden"),
        ("throttled", w1.admin_kubeconfig(), "WorkloadThrottled"),
        ("broken", w1.admin_kubeconfig(), "WorkloadServerError"),
    ] {
        let c = name(case);
        cluster(&mgmt, &ns, &c, &yaml(&kubeconfig)).await;
        world::machine(&mgmt, &ns, &MachineSpec::new(&c, &format!("{c}-0"), false))
            .await
            .unwrap();
        cases.push((format!("{c}-0"), reason));
    }

    // A Node of the same name already exists for another host.
    let conflict = name("good-conflict");
    Api::<Node>::all(w0.client().await.unwrap())
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": conflict, "labels": {UUID_LABEL: "another-host"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    world::machine(
        &mgmt,
        &ns,
        &MachineSpec::new(&good_cluster, &conflict, false),
    )
    .await
    .unwrap();
    cases.push((conflict.clone(), "NodeConflict"));

    // A host still provisioning: a wait, not an error.
    let mut waiting = MachineSpec::new(&good_cluster, &name("waiting"), false);
    waiting.host_state = "provisioning".into();
    world::machine(&mgmt, &ns, &waiting).await.unwrap();

    let ctl = start_controller(test_config(&[&ns])).await;
    ready_node(w0, &good).await;
    for (m3m, reason) in &cases {
        let warnings = eventually(&format!("a {reason} Warning on {m3m}"), LIMIT, || async {
            let found = events(&mgmt, &ns, m3m, reason).await;
            (!found.is_empty()).then_some(found)
        })
        .await;
        assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
        let metric = reason_label(reason);
        assert!(
            ctl.errors(&metric) >= 1,
            "{m3m}: fakenode_reconcile_errors_total{{reason={metric:?}}}"
        );
        for server in [w0, w1] {
            if let Some(n) = get_node(server, m3m).await {
                assert_eq!(
                    m3m,
                    &conflict,
                    "{m3m}: no Node may be created in {}",
                    server.name()
                );
                assert_eq!(
                    uuid(&n),
                    Some("another-host"),
                    "the conflicting Node is left untouched"
                );
            }
        }
    }
    // The waiting machine: nothing reported, nothing created.
    assert!(get_node(w0, &waiting.name).await.is_none());
    let waiting_events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(mgmt.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(waiting.name.as_str())
        })
        .count();
    assert_eq!(waiting_events, 0);
    // Retries back off: a hot loop would have counted thousands by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (m3m, reason) in &cases {
        let count = ctl.errors(&reason_label(reason));
        assert!(
            count < 40,
            "{m3m}: {count} retries of {reason}: not backing off"
        );
    }
    // A Warning that comes back is one Event whose series counts it (kube's recorder
    // aggregates), never one Event per retry; the conflict is retried, so it repeats.
    for (m3m, reason) in &cases {
        let found = events(&mgmt, &ns, m3m, reason).await;
        assert_eq!(
            found.len(),
            1,
            "{m3m}: one {reason} Event, not one per retry"
        );
    }
    eventually(
        "the conflict's Warning counted as a series",
        LIMIT,
        || async {
            let found = events(&mgmt, &ns, &conflict, "NodeConflict").await;
            found
                .first()
                .and_then(|e| e.series.as_ref())
                .is_some_and(|s| s.count >= 2)
                .then_some(())
        },
    )
    .await;
    ctl.stop().await;
}

/// `HostNotFound` -> `host_not_found`.
fn reason_label(event_reason: &str) -> String {
    let mut out = String::new();
    for (i, c) in event_reason.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A validating webhook at `url` for the creation of the Node `node` only (its hostname
/// label), failing closed.
async fn node_webhook(server: &ApiServer, node: &str, url: &str, ca_pem: Option<&str>) {
    let client = server.client().await.unwrap();
    let resource = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
    ));
    let mut client_config = json!({"url": url});
    if let Some(ca) = ca_pem {
        client_config["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(ca));
    }
    let webhook: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": node},
        "webhooks": [{
            "name": "deny.metal3-fakenode.test",
            "clientConfig": client_config,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["nodes"]}],
            "objectSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 2,
        }],
    }))
    .unwrap();
    Api::<kube::api::DynamicObject>::all_with(client, &resource)
        .patch(
            node,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&webhook),
        )
        .await
        .unwrap();
}

/// A ClusterRole as deploy/base's, minus `watch` on Metal3Machines when `without_watch`.
fn role(name: &str, without_watch: bool) -> serde_json::Value {
    let m3m_verbs = if without_watch {
        json!(["list"])
    } else {
        json!(["list", "watch"])
    };
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["infrastructure.cluster.x-k8s.io"], "resources": ["metal3machines"], "verbs": m3m_verbs},
            {"apiGroups": ["metal3.io"], "resources": ["baremetalhosts"], "verbs": ["list", "watch"]},
            {"apiGroups": ["cluster.x-k8s.io"], "resources": ["machines", "clusters"], "verbs": ["list", "watch"]},
            {"apiGroups": ["controlplane.cluster.x-k8s.io"], "resources": ["kubeadmcontrolplanes"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
    })
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_controller_without_watch_permission_stays_not_ready_and_says_what_it_lacks() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("rbac");
    world::namespace(&mgmt, &ns).await.unwrap();
    // The first list succeeds without `watch`: only the permission check can tell.
    let user = format!("{ns}-controller");
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(mgmt.clone());
    let apply = PatchParams::apply("controller-test").force();
    roles
        .patch(&user, &apply, &Patch::Apply(role(&user, true)))
        .await
        .unwrap();
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(mgmt.clone(), &ns);
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": user, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    });
    bindings
        .patch(&user, &apply, &Patch::Apply(binding))
        .await
        .unwrap();
    let kubeconfig = env.management.kubeconfig_for_user(&user, None).unwrap();
    let client = envtest::client_for(&kubeconfig).await.unwrap();
    let ctl = common::start_controller_as(client, test_config(&[&ns])).await;

    let missing = eventually("the missing permission to be counted", LIMIT, || async {
        let n = ctl.metrics.missing_permissions.get();
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(missing, 1, "exactly watch on metal3machines is missing");
    assert!(
        !ctl.health.is_ready(),
        "not ready while a permission is missing"
    );

    // Granting it is enough: the check runs again and the controller turns ready.
    roles
        .patch(&user, &apply, &Patch::Apply(role(&user, false)))
        .await
        .unwrap();
    eventually("readiness once watch is granted", LIMIT, || async {
        (ctl.health.is_ready() && ctl.metrics.missing_permissions.get() == 0).then_some(())
    })
    .await;
    ctl.stop().await;
}
