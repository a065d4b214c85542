//! The fidelity settings against real API servers: static control-plane pods as KCP reads
//! them, living Nodes (Leases and heartbeats), clean deletes, a rolling upgrade, the
//! startup delay and injected faults. Each test owns its namespace, cluster and machine
//! names, and the controller under test watches only that namespace.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{admin_yaml, eventually, start_controller, test_config, unique};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use metal3_fakenode::cli::{Cli, Command};
use metal3_fakenode::fake::node::{cluster_selector, is_ready};
use metal3_fakenode::fidelity::{self, Fate, Fault, Fidelity};
use metal3_fakenode_testkit::envtest::{self, ApiServer};
use metal3_fakenode_testkit::simulate::world::{self, CreatedMachine, MachineSpec};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// A namespace with one Cluster whose kubeconfig Secret points at `server`.
async fn namespace_with_cluster(client: &kube::Client, prefix: &str, server: &ApiServer) -> String {
    let ns = unique(prefix);
    world::namespace(client, &ns).await.unwrap();
    world::cluster(client, &ns, &ns).await.unwrap();
    world::kubeconfig_secret(
        client,
        &ns,
        &ns,
        world::kubeconfig_data(&admin_yaml(server)),
    )
    .await
    .unwrap();
    ns
}

async fn machine(
    client: &kube::Client,
    ns: &str,
    suffix: &str,
    control_plane: bool,
) -> CreatedMachine {
    let spec = MachineSpec::new(ns, &format!("{ns}-{suffix}"), control_plane);
    world::machine(client, ns, &spec).await.unwrap()
}

async fn nodes(server: &ApiServer) -> Api<Node> {
    Api::all(server.client().await.unwrap())
}

async fn pods(server: &ApiServer) -> Api<Pod> {
    Api::namespaced(server.client().await.unwrap(), "kube-system")
}

async fn leases(server: &ApiServer) -> Api<Lease> {
    Api::namespaced(server.client().await.unwrap(), "kube-node-lease")
}

async fn ready_node(server: &ApiServer, name: &str) -> Node {
    let api = nodes(server).await;
    eventually(&format!("Node {name} Ready"), LIMIT, || async {
        api.get_opt(name).await.unwrap().filter(is_ready)
    })
    .await
}

async fn gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} deleted"), LIMIT, || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// The Pods of one Node in kube-system (ours or not).
async fn pods_of(server: &ApiServer, node: &str) -> Vec<Pod> {
    pods(server)
        .await
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap()
        .items
}

/// Static pods, a heartbeat every second and clean deletes: Nodes that live and go.
fn living_nodes() -> Fidelity {
    Fidelity {
        static_pods: true,
        heartbeat_interval: Duration::from_secs(1),
        delete_orphans: true,
        ..Fidelity::default()
    }
}

fn with(fidelity: Fidelity, ns: &str) -> metal3_fakenode::controller::Config {
    let mut config = test_config(&[ns]);
    config.fidelity = fidelity;
    config
}

/// Waits for `fakenode_nodes_deleted_total` and `fakenode_kubelets` to reach these values
/// (a deletion is counted a moment after the API server has done it).
async fn counts(ctl: &common::RunningController, deleted: u64, kubelets: i64) {
    eventually(
        &format!("{deleted} Nodes deleted, {kubelets} kept"),
        LIMIT,
        || async {
            ctl.scrape();
            (ctl.metrics.nodes_deleted.get() == deleted && ctl.metrics.kubelets.get() == kubelets)
                .then_some(())
        },
    )
    .await;
}

fn ready_condition(node: &Node) -> k8s_openapi::api::core::v1::NodeCondition {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .expect("a Ready condition")
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn control_plane_nodes_get_the_static_pods_kcp_reads() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "static-pods", server).await;
    let cp = machine(&mgmt, &ns, "cp-0", true).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    // A kube-scheduler Pod by that name that is not ours (a real kubelet's): left alone.
    let foreign = format!("kube-scheduler-{}", cp.spec.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": foreign, "namespace": "kube-system", "labels": {"component": "kube-scheduler"}},
        "spec": {"nodeName": cp.spec.name, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .unwrap();
    pods(server)
        .await
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    let ctl = start_controller(with(
        Fidelity {
            static_pods: true,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    ready_node(server, &cp.spec.name).await;
    ready_node(server, &worker.spec.name).await;

    let api = pods(server).await;
    for component in ["kube-apiserver", "kube-controller-manager"] {
        let name = format!("{component}-{}", cp.spec.name);
        let pod = api.get(&name).await.unwrap();
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["component"], component);
        assert_eq!(labels["tier"], "control-plane");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "metal3-fakenode");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(cp.spec.name.as_str()));
        // What KCP's health check reads: phase Running, condition Ready True.
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"), "{name}");
        let conditions = status.conditions.clone().unwrap_or_default();
        for wanted in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: {wanted} in {conditions:?}"
            );
        }
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert!(container.ready && container.started == Some(true));
        assert!(container.state.as_ref().unwrap().running.is_some());
        assert_eq!(
            container.image,
            format!("registry.k8s.io/{component}:v1.34.1")
        );
        // The API server took it as a mirror Pod of a static pod.
        assert!(
            pod.metadata
                .annotations
                .unwrap()
                .contains_key("kubernetes.io/config.mirror")
        );
    }
    let left_alone = api.get(&foreign).await.unwrap();
    assert!(!metal3_fakenode::fake::is_ours(&left_alone.metadata));
    assert_ne!(
        left_alone.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "its status is not ours to set"
    );
    assert!(
        api.get_opt(&format!("etcd-{}", cp.spec.name))
            .await
            .unwrap()
            .is_none(),
        "no etcd Pod without stacked etcd"
    );
    assert!(
        pods_of(server, &worker.spec.name).await.is_empty(),
        "workers have no static pods"
    );
    assert_eq!(ctl.metrics.static_pods_created.get(), 2);
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn stacked_etcd_adds_the_etcd_pod() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "stacked", server).await;
    let cp = machine(&mgmt, &ns, "cp-0", true).await;
    let ctl = start_controller(with(
        Fidelity {
            static_pods: true,
            stacked_etcd_pods: true,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    ready_node(server, &cp.spec.name).await;
    let names: BTreeSet<_> = pods_of(server, &cp.spec.name)
        .await
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    let want: BTreeSet<_> = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ]
    .iter()
    .map(|c| format!("{c}-{}", cp.spec.name))
    .collect();
    assert_eq!(names, want);
    let etcd = pods(server)
        .await
        .get(&format!("etcd-{}", cp.spec.name))
        .await
        .unwrap();
    assert_eq!(etcd.metadata.labels.unwrap()["component"], "etcd");
    assert_eq!(etcd.status.unwrap().phase.as_deref(), Some("Running"));
    ctl.stop().await;
}

/// resourceVersion and renewTime of a Lease.
async fn lease_version(api: &Api<Lease>, name: &str) -> Option<(String, String)> {
    let lease = api.get_opt(name).await.unwrap()?;
    let renewed = lease.spec?.renew_time?;
    Some((lease.metadata.resource_version?, renewed.0.to_string()))
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn nodes_live_until_their_machine_is_deleted() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "heartbeat", server).await;
    let cp = machine(&mgmt, &ns, "cp-0", true).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let ctl = start_controller(with(living_nodes(), &ns)).await;
    let node = ready_node(server, &worker.spec.name).await;
    ready_node(server, &cp.spec.name).await;
    let leases = leases(server).await;
    let lease = eventually("the worker's Lease", LIMIT, || async {
        leases.get_opt(&worker.spec.name).await.unwrap()
    })
    .await;
    let spec = lease.spec.clone().unwrap();
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(worker.spec.name.as_str())
    );
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &lease.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", node.metadata.uid.as_deref().unwrap())
    );
    // Renewed: resourceVersion and renewTime advance, twice.
    let mut seen = lease_version(&leases, &worker.spec.name).await.unwrap();
    for _ in 0..2 {
        let next = eventually("a Lease renewal", LIMIT, || async {
            lease_version(&leases, &worker.spec.name)
                .await
                .filter(|v| v.0 != seen.0 && v.1 > seen.1)
        })
        .await;
        seen = next;
    }
    // ...and so does the Ready condition's heartbeat.
    let beat = ready_condition(&node).last_heartbeat_time.unwrap().0;
    let api = nodes(server).await;
    eventually("a newer Ready heartbeat", LIMIT, || async {
        let n = api.get(&worker.spec.name).await.unwrap();
        let c = ready_condition(&n);
        (c.status == "True" && c.last_heartbeat_time.unwrap().0 > beat).then_some(())
    })
    .await;
    eventually("the heartbeats counted", LIMIT, || async {
        let posted = ctl.metrics.heartbeats.with_label_values(&["posted"]).get();
        (posted >= 2).then_some(())
    })
    .await;

    // The machines go: their Nodes, Leases and static pods with them, and nothing comes
    // back (no heartbeat re-creates a Lease).
    for m in [&worker, &cp] {
        world::delete_machine(&mgmt, &ns, &m.spec).await.unwrap();
    }
    for m in [&worker, &cp] {
        gone(&api, &m.spec.name).await;
        gone(&leases, &m.spec.name).await;
        eventually("the static pods deleted", LIMIT, || async {
            pods_of(server, &m.spec.name).await.is_empty().then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for m in [&worker, &cp] {
        assert!(leases.get_opt(&m.spec.name).await.unwrap().is_none());
        assert!(api.get_opt(&m.spec.name).await.unwrap().is_none());
    }
    counts(&ctl, 2, 0).await;
    ctl.stop().await;
}

#[test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
fn the_fidelity_flags_and_their_defaults() {
    let parse = |extra: &[&str]| {
        let args = ["metal3-fakenode", "run"].iter().chain(extra);
        match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Run(run)) => Ok(run.fidelity()),
            // Other subcommands may come.
            #[allow(unreachable_patterns)]
            Ok(_) => panic!("not run"),
            Err(e) => Err(e.to_string()),
        }
    };
    use clap::Parser;
    let defaults = parse(&[]).unwrap();
    assert_eq!(
        defaults,
        Fidelity {
            static_pods: true,
            stacked_etcd_pods: false,
            heartbeat_interval: Duration::from_secs(40),
            delete_orphans: true,
            startup_delay: Duration::ZERO,
            startup_jitter: Duration::ZERO,
            never_ready_fraction: 0.0,
            not_ready_fraction: 0.0,
            not_ready_after: Duration::from_secs(300),
            annotate_certificate_expiry: false,
        }
    );
    let set = parse(&[
        "--static-pods=false",
        "--stacked-etcd-pods",
        "--node-heartbeat-interval",
        "0",
        "--delete-orphaned-nodes=false",
        "--node-startup-delay",
        "2m",
        "--node-startup-jitter",
        "30s",
        "--never-ready-fraction",
        "0.1",
        "--not-ready-fraction",
        "0.2",
        "--not-ready-after",
        "10m",
        "--annotate-certificate-expiry",
    ])
    .unwrap();
    assert!(!set.static_pods && set.stacked_etcd_pods && !set.delete_orphans);
    assert!(!set.heartbeats());
    assert_eq!(set.startup_delay, Duration::from_secs(120));
    assert_eq!(set.startup_jitter, Duration::from_secs(30));
    assert_eq!(
        (set.never_ready_fraction, set.not_ready_fraction),
        (0.1, 0.2)
    );
    assert_eq!(set.not_ready_after, Duration::from_secs(600));
    assert!(set.annotate_certificate_expiry);
    assert!(parse(&["--never-ready-fraction", "1.5"]).is_err());
    assert!(parse(&["--node-heartbeat-interval", "soon"]).is_err());
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn cleanup_deletes_only_what_carries_our_label() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "cleanup", server).await;
    let cp = machine(&mgmt, &ns, "cp-0", true).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let stays = machine(&mgmt, &ns, "md-1", false).await;
    // Not ours: a Pod on the control-plane Node (kube-proxy, say), and the worker's Lease
    // taken by someone else before the controller came.
    let proxy = format!("kube-proxy-{}", cp.spec.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": proxy, "namespace": "kube-system"},
        "spec": {"nodeName": cp.spec.name, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .unwrap();
    pods(server)
        .await
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let leases = leases(server).await;
    let foreign: Lease = serde_json::from_value(json!({
        "metadata": {"name": worker.spec.name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "someone-else"},
    }))
    .unwrap();
    leases
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();

    let ctl = start_controller(with(living_nodes(), &ns)).await;
    for m in [&cp, &worker, &stays] {
        ready_node(server, &m.spec.name).await;
    }
    eventually("the Lease of the Node that stays", LIMIT, || async {
        leases.get_opt(&stays.spec.name).await.unwrap()
    })
    .await;
    for m in [&cp, &worker] {
        world::delete_machine(&mgmt, &ns, &m.spec).await.unwrap();
    }
    let api = nodes(server).await;
    gone(&api, &cp.spec.name).await;
    gone(&api, &worker.spec.name).await;
    eventually("our static pods deleted", LIMIT, || async {
        let left: Vec<_> = pods_of(server, &cp.spec.name)
            .await
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect();
        (left == [proxy.clone()]).then_some(())
    })
    .await;
    // What is not ours stays: the kube-proxy Pod, the foreign Lease, and the machine
    // that was not deleted keeps its Node and Lease.
    assert!(pods(server).await.get_opt(&proxy).await.unwrap().is_some());
    let lease = leases.get(&worker.spec.name).await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("someone-else")
    );
    assert!(api.get_opt(&stays.spec.name).await.unwrap().is_some());
    assert!(leases.get_opt(&stays.spec.name).await.unwrap().is_some());
    counts(&ctl, 2, 1).await;
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_cluster_whose_kubeconfig_is_gone_is_forgotten() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "forgotten", server).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let ctl = start_controller(with(
        Fidelity {
            heartbeat_interval: Duration::from_secs(1),
            delete_orphans: true,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    ready_node(server, &worker.spec.name).await;
    let leases = leases(server).await;
    let mut seen = eventually("a Lease", LIMIT, || async {
        lease_version(&leases, &worker.spec.name).await
    })
    .await;
    // A single Node's heartbeats go on, one after the other.
    for _ in 0..3 {
        seen = eventually("a renewal", LIMIT, || async {
            lease_version(&leases, &worker.spec.name)
                .await
                .filter(|v| v.0 != seen.0)
        })
        .await;
    }
    ctl.scrape();
    assert_eq!(ctl.metrics.workload_clients.get(), 1);

    world::delete_kubeconfig_secret(&mgmt, &ns, &ns)
        .await
        .unwrap();
    eventually("the client and kubelets forgotten", LIMIT, || async {
        ctl.scrape();
        (ctl.metrics.workload_clients.get() == 0 && ctl.metrics.kubelets.get() == 0).then_some(())
    })
    .await;
    // No more heartbeats: the Lease stays as it was over several intervals. The Node
    // itself stays (its Machine still exists; it is just no longer reachable). (A post in
    // flight when the cluster was forgotten may still land: wait it out.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = lease_version(&leases, &worker.spec.name).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        lease_version(&leases, &worker.spec.name).await.unwrap(),
        last
    );
    assert!(
        nodes(server)
            .await
            .get_opt(&worker.spec.name)
            .await
            .unwrap()
            .is_some()
    );
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_rolling_upgrade_leaves_exactly_the_new_nodes() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "rollout", server).await;
    let old_version = "v1.34.1";
    let new_version = "v1.35.0";
    let mut old = Vec::new();
    for (suffix, control_plane) in [
        ("cp-a", true),
        ("cp-b", true),
        ("cp-c", true),
        ("md-a", false),
        ("md-b", false),
    ] {
        old.push(machine(&mgmt, &ns, suffix, control_plane).await);
    }
    let ctl = start_controller(with(living_nodes(), &ns)).await;
    for m in &old {
        ready_node(server, &m.spec.name).await;
    }
    // As KCP and a MachineDeployment roll out (max surge 1): a new machine at the new
    // version, Ready, then the old one goes; one at a time.
    let mut new = Vec::new();
    for m in &old {
        let mut spec = MachineSpec::new(
            &ns,
            &format!("{}-{}", m.spec.name, "v135"),
            m.spec.control_plane,
        );
        spec.version = new_version.into();
        let created = world::machine(&mgmt, &ns, &spec).await.unwrap();
        ready_node(server, &spec.name).await;
        world::delete_machine(&mgmt, &ns, &m.spec).await.unwrap();
        new.push(created);
    }
    let want: BTreeSet<String> = new.iter().map(|m| m.spec.name.clone()).collect();
    let api = nodes(server).await;
    let listed = eventually("exactly the new Nodes", LIMIT, || async {
        let found = api
            .list(&ListParams::default().labels(&cluster_selector(&ns, &ns)))
            .await
            .unwrap()
            .items;
        let names: BTreeSet<String> = found
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        (names == want).then_some(found)
    })
    .await;
    for node in &listed {
        let info = node.status.as_ref().unwrap().node_info.as_ref().unwrap();
        assert_eq!(info.kubelet_version, new_version);
        assert!(is_ready(node));
    }
    // No leftovers of the old machines: no Node, no Lease, no static pod.
    let leases = leases(server).await;
    for m in &old {
        assert!(api.get_opt(&m.spec.name).await.unwrap().is_none());
        gone(&leases, &m.spec.name).await;
        assert!(
            pods_of(server, &m.spec.name).await.is_empty(),
            "{}",
            m.spec.name
        );
    }
    // The new control planes have their static pods at the new version.
    for m in new.iter().filter(|m| m.spec.control_plane) {
        let pods = pods_of(server, &m.spec.name).await;
        assert_eq!(pods.len(), 3, "{}", m.spec.name);
        for pod in pods {
            let image = pod.spec.unwrap().containers[0].image.clone().unwrap();
            assert!(image.ends_with(&format!(":{new_version}")), "{image}");
        }
        assert!(leases.get_opt(&m.spec.name).await.unwrap().is_some());
    }
    assert_ne!(old_version, new_version);
    counts(&ctl, old.len() as u64, new.len() as i64).await;
    ctl.stop().await;
}

/// A fraction that draws exactly `n` of `draws` (their midpoint around the n-th).
fn fraction_for(mut draws: Vec<f64>, n: usize) -> f64 {
    draws.sort_by(f64::total_cmp);
    (draws[n - 1] + draws[n]) / 2.0
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn injected_faults_hit_exactly_the_chosen_machines() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "faults", server).await;
    let mut machines = Vec::new();
    for i in 0..10 {
        machines.push(machine(&mgmt, &ns, &format!("md-{i}"), false).await);
    }
    // Fractions that choose exactly 3 never-ready machines and, of the other 7, exactly
    // 3 that go NotReady: the choice is the stable hash of each host's UID.
    let uids: Vec<&str> = machines.iter().map(|m| m.host_uid.as_str()).collect();
    let never_ready_fraction = fraction_for(
        uids.iter()
            .map(|u| fidelity::draw(Fault::NeverReady, u))
            .collect(),
        3,
    );
    let not_ready_fraction = fraction_for(
        uids.iter()
            .filter(|u| fidelity::draw(Fault::NeverReady, u) >= never_ready_fraction)
            .map(|u| fidelity::draw(Fault::NotReady, u))
            .collect(),
        3,
    );
    let after = Duration::from_secs(3);
    let settings = Fidelity {
        heartbeat_interval: Duration::from_secs(1),
        never_ready_fraction,
        not_ready_fraction,
        not_ready_after: after,
        ..Fidelity::default()
    };
    let fate = |m: &CreatedMachine| settings.fate(&m.host_uid);
    let of =
        |f: Fate| -> Vec<&CreatedMachine> { machines.iter().filter(|m| fate(m) == f).collect() };
    let (never, not_ready, healthy) = (
        of(Fate::NeverReady),
        of(Fate::NotReadyAfter(after)),
        of(Fate::Healthy),
    );
    assert_eq!((never.len(), not_ready.len(), healthy.len()), (3, 3, 4));

    let ctl = start_controller(with(settings.clone(), &ns)).await;
    let api = nodes(server).await;
    for m in &not_ready {
        // Ready first (maybe only briefly), then every condition Unknown, as the node
        // lifecycle controller marks a Node whose kubelet stopped posting.
        let node = eventually(&format!("{} NotReady", m.spec.name), LIMIT, || async {
            api.get_opt(&m.spec.name)
                .await
                .unwrap()
                .filter(|n| ready_condition(n).status == "Unknown")
        })
        .await;
        let ready = ready_condition(&node);
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        let created = node.metadata.creation_timestamp.unwrap().0;
        let went = ready.last_transition_time.unwrap().0;
        assert!(
            went.duration_since(created).as_secs_f64() >= after.as_secs_f64(),
            "NotReady {went} no sooner than {after:?} after its creation at {created}"
        );
    }
    for m in &healthy {
        ready_node(server, &m.spec.name).await;
    }
    eventually("the faults counted", LIMIT, || async {
        let counted = |f| ctl.metrics.faults_injected.with_label_values(&[f]).get();
        (counted("never_ready") == 3 && counted("not_ready") == 3).then_some(())
    })
    .await;
    // A while later: the never-ready machines still have no Node, the NotReady Nodes stay
    // NotReady (no heartbeat revives them, and no reconcile repairs them: a change to
    // their Machines makes sure one runs), the others stay Ready.
    for m in not_ready.iter().chain(&never) {
        world::patch_machine(
            &mgmt,
            &ns,
            &m.spec.name,
            json!({"metadata": {"labels": {"touched": "yes"}}}),
        )
        .await
        .unwrap();
    }
    let leases = leases(server).await;
    let stopped: Vec<_> = futures::future::join_all(
        not_ready
            .iter()
            .map(|m| lease_version(&leases, &m.spec.name)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for m in &never {
        assert!(
            api.get_opt(&m.spec.name).await.unwrap().is_none(),
            "{}",
            m.spec.name
        );
    }
    for (m, lease) in not_ready.iter().zip(stopped) {
        let node = api.get(&m.spec.name).await.unwrap();
        assert_eq!(ready_condition(&node).status, "Unknown", "{}", m.spec.name);
        assert_eq!(
            lease_version(&leases, &m.spec.name).await,
            lease,
            "no renewal"
        );
    }
    for m in &healthy {
        let node = api.get(&m.spec.name).await.unwrap();
        assert!(is_ready(&node), "{}", m.spec.name);
    }
    assert_eq!(ctl.metrics.nodes_created.get(), 7);
    let counted = |f| ctl.metrics.faults_injected.with_label_values(&[f]).get();
    assert_eq!(
        (counted("never_ready"), counted("not_ready")),
        (3, 3),
        "each fault counted once, however often its machine is reconciled"
    );
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_node_appears_only_after_its_startup_delay() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "startup", server).await;
    let delay = Duration::from_secs(4);
    let ctl = start_controller(with(
        Fidelity {
            startup_delay: delay,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    eventually("the stores to sync", LIMIT, || async {
        ctl.health.is_ready().then_some(())
    })
    .await;
    // The host is provisioned as the machine is created.
    let m = machine(&mgmt, &ns, "md-0", false).await;
    let provisioned = std::time::Instant::now();
    let api = nodes(server).await;
    // Well before the delay: no Node (the reconcile has long run by then).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(provisioned.elapsed() < delay);
    assert!(
        api.get_opt(&m.spec.name).await.unwrap().is_none(),
        "no Node before the startup delay"
    );
    let node = ready_node(server, &m.spec.name).await;
    // By the API servers' clocks too (whole seconds; the host's time is rounded).
    let created = node.metadata.creation_timestamp.unwrap().0;
    let end = host_provisioned_at(&mgmt, &ns, &m.spec.host()).await;
    assert!(
        created.duration_since(end).as_secs_f64() >= delay.as_secs_f64() - 1.0,
        "created at {created}, provisioned at {end}"
    );
    // The creation latency starts where it always does: the delay is part of it. (The
    // Node turns Ready a moment before its reconcile counts it.)
    eventually("the creation counted", LIMIT, || async {
        (ctl.metrics.node_creation_latency.get_sample_count() == 1).then_some(())
    })
    .await;
    assert!(ctl.metrics.node_creation_latency.get_sample_sum() >= delay.as_secs_f64());
    ctl.stop().await;
}

/// The host's `status.operationHistory.provision.end`.
async fn host_provisioned_at(client: &kube::Client, ns: &str, host: &str) -> jiff::Timestamp {
    let api: Api<metal3_fakenode::resources::BareMetalHost> = Api::namespaced(client.clone(), ns);
    api.get(host)
        .await
        .unwrap()
        .status
        .unwrap()
        .operation_history
        .provision
        .end
        .unwrap()
        .0
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_restarted_controller_takes_over_the_nodes_of_the_first() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "takeover", server).await;
    let mut machines = Vec::new();
    for i in 0..3 {
        machines.push(machine(&mgmt, &ns, &format!("md-{i}"), false).await);
    }
    let settings = Fidelity {
        heartbeat_interval: Duration::from_secs(1),
        delete_orphans: true,
        ..Fidelity::default()
    };
    let first = start_controller(with(settings.clone(), &ns)).await;
    // CAPM3 closes the loop: after the restart no Metal3Machine needs anything, so
    // nothing but the takeover can bring the Nodes back under the controller.
    let capm3 = common::start_capm3(&ns).await;
    for m in &machines {
        eventually("providerID", LIMIT, || async {
            world::provider_id(&mgmt, &ns, &m.spec.name).await.unwrap()
        })
        .await;
    }
    first.stop().await;
    drop(capm3);
    let leases = leases(server).await;
    let before = lease_version(&leases, &machines[0].spec.name)
        .await
        .expect("a Lease");
    // Deleted while no controller runs.
    world::delete_machine(&mgmt, &ns, &machines[2].spec)
        .await
        .unwrap();

    let second = start_controller(with(settings, &ns)).await;
    let api = nodes(server).await;
    gone(&api, &machines[2].spec.name).await;
    gone(&leases, &machines[2].spec.name).await;
    eventually("the heartbeats again", LIMIT, || async {
        lease_version(&leases, &machines[0].spec.name)
            .await
            .filter(|v| v.0 != before.0)
    })
    .await;
    world::delete_machine(&mgmt, &ns, &machines[1].spec)
        .await
        .unwrap();
    gone(&api, &machines[1].spec.name).await;
    assert!(api.get_opt(&machines[0].spec.name).await.unwrap().is_some());
    counts(&second, 2, 1).await;
    assert_eq!(
        second.metrics.nodes_created.get(),
        0,
        "nothing created twice"
    );
    second.stop().await;
}

const EXPIRY: &str = "machine.cluster.x-k8s.io/certificates-expiry";

/// A control-plane machine with its KubeadmConfig (carrying `annotations`).
async fn control_plane_with_config(
    client: &kube::Client,
    ns: &str,
    suffix: &str,
    annotations: &[(&str, &str)],
) -> CreatedMachine {
    let m = machine(client, ns, suffix, true).await;
    let annotations = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    world::kubeadm_config(client, ns, &m.spec.name, annotations)
        .await
        .unwrap();
    m
}

async fn expiry_of(client: &kube::Client, ns: &str, config: &str) -> Option<String> {
    world::kubeadm_config_annotations(client, ns, config)
        .await
        .unwrap()
        .get(EXPIRY)
        .cloned()
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn control_plane_kubeadm_configs_get_their_certificates_expiry() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "expiry", server).await;
    let cp = control_plane_with_config(&mgmt, &ns, "cp-0", &[]).await;
    // One that carries it already (CAPI's own, say) keeps it.
    let kept = "2030-01-01T00:00:00Z";
    let annotated = control_plane_with_config(&mgmt, &ns, "cp-1", &[(EXPIRY, kept)]).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let ctl = start_controller(with(
        Fidelity {
            annotate_certificate_expiry: true,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    for m in [&cp, &annotated, &worker] {
        ready_node(server, &m.spec.name).await;
    }
    // Annotated before the Node was created: by now it is there.
    let value = expiry_of(&mgmt, &ns, &cp.spec.name)
        .await
        .expect("the annotation");
    let expires: jiff::Timestamp = value.parse().expect("RFC 3339");
    let ahead = expires.duration_since(jiff::Timestamp::now()).as_hours();
    assert!(
        (364 * 24..=366 * 24).contains(&ahead),
        "{value}: {ahead}h ahead"
    );
    assert_eq!(
        expiry_of(&mgmt, &ns, &annotated.spec.name).await.as_deref(),
        Some(kept)
    );
    assert_eq!(ctl.errors("certificate_expiry_annotation_failed"), 0);
    ctl.stop().await;
}

/// `kustomize build` of the deploy base, with the given components, in `namespace` and
/// with a name suffix of its own (its ClusterRoles must not meet other tests' ones).
async fn render_deploy(
    namespace: &str,
    suffix: &str,
    components: &[&str],
) -> Vec<serde_json::Value> {
    let env = common::env().await;
    let kustomize = env.assets.crd_dir().with_file_name("kustomize");
    let repo = &metal3_fakenode_testkit::repo_root();
    // kustomize takes only relative paths to other kustomizations: from the temporary
    // directory up to the root, then down to the repository.
    let dir = tempfile::tempdir().unwrap();
    let depth = dir
        .path()
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count();
    let up = format!(
        "{}{}/",
        "../".repeat(depth),
        repo.strip_prefix("/").unwrap_or(repo).display()
    );
    let mut kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         namespace: {namespace}\nnameSuffix: {suffix}\nresources:\n  - {up}deploy/base\n"
    );
    if !components.is_empty() {
        kustomization.push_str("components:\n");
        for c in components {
            kustomization.push_str(&format!("  - {up}deploy/components/{c}\n"));
        }
    }
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).unwrap();
    let out = tokio::process::Command::new(&kustomize)
        .arg("build")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<serde_json::Value>(&String::from_utf8(out.stdout).unwrap())
        .unwrap()
        .into_iter()
        .filter(|o| !o.is_null())
        .collect()
}

/// Server-side applies the rendered objects of these kinds.
async fn apply_kinds(client: &kube::Client, objects: &[serde_json::Value], kinds: &[&str]) {
    for o in objects
        .iter()
        .filter(|o| kinds.contains(&o["kind"].as_str().unwrap_or("")))
    {
        let obj: kube::api::DynamicObject = serde_json::from_value(o.clone()).unwrap();
        let (group, version) = match o["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", o["apiVersion"].as_str().unwrap()),
        };
        let gvk = kube::core::GroupVersionKind::gvk(group, version, o["kind"].as_str().unwrap());
        let resource = kube::core::ApiResource::from_gvk(&gvk);
        let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &obj.metadata.name.clone().unwrap(),
            &kube::api::PatchParams::apply("fidelity-test").force(),
            &kube::api::Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e}", o["kind"]));
    }
}

/// A client with a token of the ServiceAccount `name` in `namespace`.
async fn service_account_client(
    env: &envtest::Environment,
    namespace: &str,
    name: &str,
) -> kube::Client {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let admin = env.management.client().await.unwrap();
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }))
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin, namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap();
    let mut kubeconfig = env.management.admin_kubeconfig();
    let user = kubeconfig.auth_infos[0].auth_info.as_mut().unwrap();
    *user = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    envtest::client_for(&kubeconfig).await.unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_certificate_expiry_component_grants_exactly_what_the_annotation_needs() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "expiry-rbac", server).await;
    let suffix = format!("-{ns}");
    let with_component = render_deploy(&ns, &suffix, &["certificate-expiry"]).await;
    // The component's role: get Machines, get and patch KubeadmConfigs; nothing more.
    let role = with_component
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRole"
                && o["metadata"]["name"] == format!("metal3-fakenode-certificate-expiry{suffix}")
        })
        .expect("the component's ClusterRole");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["cluster.x-k8s.io"], "resources": ["machines"], "verbs": ["get"]},
            {"apiGroups": ["bootstrap.cluster.x-k8s.io"], "resources": ["kubeadmconfigs"], "verbs": ["get", "patch"]},
        ])
    );
    // ...and it turns the flag on in the Deployment.
    let deployment = with_component
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    let env_vars = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env_vars
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "FAKENODE_ANNOTATE_CERTIFICATE_EXPIRY" && e["value"] == "true"),
        "{env_vars}"
    );

    // The base's RBAC alone does not allow it: the machine is reported, and no Node is
    // made (the annotation comes first).
    let base = render_deploy(&ns, &suffix, &[]).await;
    apply_kinds(
        &mgmt,
        &base,
        &["ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
    )
    .await;
    let cp = control_plane_with_config(&mgmt, &ns, "cp-0", &[]).await;
    let identity = service_account_client(env, &ns, &format!("metal3-fakenode{suffix}")).await;
    let ctl = common::start_controller_as(
        identity,
        with(
            Fidelity {
                annotate_certificate_expiry: true,
                ..Fidelity::default()
            },
            &ns,
        ),
    )
    .await;
    eventually("the annotation refused", LIMIT, || async {
        (ctl.errors("certificate_expiry_annotation_failed") > 0).then_some(())
    })
    .await;
    assert!(
        nodes(server)
            .await
            .get_opt(&cp.spec.name)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(expiry_of(&mgmt, &ns, &cp.spec.name).await, None);

    // With the component: the retry annotates, then the Node comes.
    apply_kinds(
        &mgmt,
        &with_component,
        &["ClusterRole", "ClusterRoleBinding"],
    )
    .await;
    ready_node(server, &cp.spec.name).await;
    assert!(expiry_of(&mgmt, &ns, &cp.spec.name).await.is_some());
    ctl.stop().await;
    // Cluster-scoped, so not cleaned up with the namespace.
    for o in with_component
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "ClusterRoleBinding")
    {
        let name = o["metadata"]["name"].as_str().unwrap();
        let result = if o["kind"] == "ClusterRole" {
            Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(mgmt.clone())
                .delete(name, &Default::default())
                .await
                .map(|_| ())
        } else {
            Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(mgmt.clone())
                .delete(name, &Default::default())
                .await
                .map(|_| ())
        };
        result.unwrap();
    }
}

/// The steady cost of heartbeats, measured (not part of the suite: it takes minutes).
/// `FAKENODE_COST_NODES` Nodes (default 1000) over `FAKENODE_COST_CLUSTERS` clusters
/// (default 10) on the shared workload API servers, `FAKENODE_COST_INTERVAL` seconds
/// (default 40); then, over two intervals, requests per second (each second's count, to
/// show the load is flat) and this process's CPU time, of which the controller is all
/// that runs then.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: cargo test -p metal3-fakenode --test fidelity heartbeat_cost -- --ignored --nocapture"]
async fn heartbeat_cost() {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (total, clusters, interval) = (
        var("FAKENODE_COST_NODES", 1000),
        var("FAKENODE_COST_CLUSTERS", 10),
        Duration::from_secs(var("FAKENODE_COST_INTERVAL", 40)),
    );
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("cost");
    world::namespace(&mgmt, &ns).await.unwrap();
    let mut specs = Vec::new();
    for c in 0..clusters {
        let name = format!("{ns}-c{c}");
        let server = &env.workloads[c as usize % env.workloads.len()];
        world::cluster(&mgmt, &ns, &name).await.unwrap();
        world::kubeconfig_secret(
            &mgmt,
            &ns,
            &name,
            world::kubeconfig_data(&admin_yaml(server)),
        )
        .await
        .unwrap();
        for i in 0..total / clusters {
            specs.push(MachineSpec::new(&name, &format!("{name}-md-{i}"), false));
        }
    }
    futures::stream::iter(&specs)
        .for_each_concurrent(32, |spec| {
            let (mgmt, ns) = (&mgmt, &ns);
            async move {
                world::machine(mgmt, ns, spec).await.unwrap();
            }
        })
        .await;
    let mut config = with(
        Fidelity {
            heartbeat_interval: interval,
            ..Fidelity::default()
        },
        &ns,
    );
    config.concurrency = 32;
    config.workload.qps = std::num::NonZeroU32::new(100).unwrap();
    config.workload.burst = std::num::NonZeroU32::new(200).unwrap();
    let ctl = start_controller(config).await;
    eventually("every Node", Duration::from_secs(600), || async {
        (ctl.metrics.nodes_created.get() == specs.len() as u64).then_some(())
    })
    .await;
    // Settle one interval: the first heartbeats fall in the first one.
    tokio::time::sleep(interval).await;
    let patches = || {
        ctl.metrics
            .workload_requests
            .with_label_values(&["patch", "200"])
            .get()
    };
    let cpu = || {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(usage.ru_utime) + t(usage.ru_stime)
    };
    let (cpu0, patches0) = (cpu(), patches());
    let seconds = 2 * interval.as_secs();
    let mut per_second = Vec::new();
    let mut last = patches0;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = patches();
        per_second.push(now - last);
        last = now;
    }
    let window = seconds as f64;
    let rate = (last - patches0) as f64 / window;
    let cpu_share = (cpu() - cpu0) / window;
    let expected = 2.0 * specs.len() as f64 / interval.as_secs_f64();
    let (min, max) = (
        per_second.iter().min().copied().unwrap_or(0),
        per_second.iter().max().copied().unwrap_or(0),
    );
    let failed = ctl.metrics.heartbeats.with_label_values(&["failed"]).get();
    let skipped = ctl.metrics.heartbeats.with_label_values(&["skipped"]).get();
    println!(
        "heartbeat cost: {} Nodes, {clusters} clusters, interval {interval:?}: {rate:.1} \
         requests/s (expected {expected:.1}), per second min {min} max {max}, CPU {:.1}% of \
         one core, failed {failed}, skipped {skipped}\nper second: {per_second:?}",
        specs.len(),
        cpu_share * 100.0
    );
    assert!(
        (rate - expected).abs() < expected * 0.1,
        "{rate} vs {expected}"
    );
    assert_eq!(failed, 0);
    // Skips are the backpressure of a slow API server: a few, at most.
    let posted = ctl.metrics.heartbeats.with_label_values(&["posted"]).get();
    assert!(skipped * 100 <= posted, "{skipped} skipped of {posted}");
    ctl.stop().await;
}
