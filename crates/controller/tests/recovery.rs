//! Nothing wedges the controller: API servers that die and come back, and a SIGTERM in
//! any state. Each test kills API servers of its own (on the shared etcd), never the
//! shared ones.

mod common;

use std::time::{Duration, Instant};

use common::binary::Binary;
use common::{admin_yaml, env, eventually, start_controller_as, test_config, unique};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use metal3_fakenode::controller;
use metal3_fakenode::fidelity::Fidelity;
use metal3_fakenode::resources::UUID_LABEL;
use metal3_fakenode_testkit::envtest::{self, ApiServer, crds};
use metal3_fakenode_testkit::simulate::world::{self, CreatedMachine, MachineSpec};

const LIMIT: Duration = Duration::from_secs(60);
/// The bound: a host provisioned after an API server's return gets its Node
/// within this long.
const BACK_WITHIN: Duration = Duration::from_secs(30);

/// A management API server of the test's own, with the upstream CRDs.
async fn own_management(prefix: &str) -> ApiServer {
    let env = env().await;
    let server = ApiServer::start(&env.assets, env.etcd(), &unique(prefix))
        .await
        .unwrap();
    crds::install(&server.client().await.unwrap(), &env.assets)
        .await
        .unwrap();
    server
}

/// The admin client of `server`, with the controller's own client settings.
async fn controller_client(server: &ApiServer) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        server.admin_kubeconfig(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    controller::management_client(config).unwrap()
}

async fn cluster(client: &kube::Client, ns: &str, name: &str, workload: &ApiServer) {
    common::cluster_with_kubeconfig(client, ns, name, &admin_yaml(workload)).await;
}

async fn provisioned(client: &kube::Client, ns: &str, cluster: &str, name: &str) -> CreatedMachine {
    world::machine(client, ns, &MachineSpec::new(cluster, name, false))
        .await
        .unwrap()
}

/// The Nodes labelled with the machine's host UID, once Ready; asserts there is at most
/// one (no duplicate ever).
async fn ready_node(server: &ApiServer, m: &CreatedMachine) -> Option<Node> {
    let nodes: Api<Node> = Api::all(server.client().await.ok()?);
    let mut found = nodes
        .list(&ListParams::default().labels(&format!("{UUID_LABEL}={}", m.host_uid)))
        .await
        .ok()?
        .items;
    assert!(found.len() <= 1, "a duplicated Node: {found:?}");
    found.pop().filter(|n| {
        n.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_management_api_server_restart_neither_blinds_nor_duplicates() {
    let env = env().await;
    let mut management = own_management("mgmt-restart").await;
    let admin = management.client().await.unwrap();
    let ns = unique("mgmt-restart");
    world::namespace(&admin, &ns).await.unwrap();
    let workload = &env.workloads[0];
    cluster(&admin, &ns, &ns, workload).await;
    let before = provisioned(&admin, &ns, &ns, &format!("{ns}-md-0")).await;
    let mut config = test_config(&[&ns]);
    config.watch_down_grace = Duration::from_secs(3);
    let ctl = start_controller_as(controller_client(&management).await, config).await;
    eventually("the Node before the restart", LIMIT, || {
        ready_node(workload, &before)
    })
    .await;
    eventually("ready", LIMIT, || async { ctl.health.readiness().ok() }).await;

    management.kill();
    let killed = Instant::now();
    let why = eventually("not ready while the watches are down", LIMIT, || async {
        ctl.health
            .readiness()
            .err()
            .filter(|why| why.contains("baremetalhosts"))
    })
    .await;
    println!(
        "not ready {:.1} s after the kill: {why}",
        killed.elapsed().as_secs_f64()
    );
    let down = Duration::from_secs(15).saturating_sub(killed.elapsed());
    tokio::time::sleep(down).await;

    management.restart().await.unwrap();
    let back = Instant::now();
    let admin = management.client().await.unwrap();
    let after = provisioned(&admin, &ns, &ns, &format!("{ns}-md-1")).await;
    eventually(
        "the Node of a host provisioned after the return",
        LIMIT,
        || ready_node(workload, &after),
    )
    .await;
    let took = back.elapsed();
    println!(
        "a host provisioned after the management API server's return got its Node {:.1} s later",
        took.as_secs_f64()
    );
    assert!(took < BACK_WITHIN, "{took:?}");
    eventually("ready again", LIMIT, || async {
        ctl.health.readiness().ok()
    })
    .await;
    // Neither Node lost nor duplicated (ready_node asserts at most one each).
    assert!(ready_node(workload, &before).await.is_some());
    assert!(ready_node(workload, &after).await.is_some());
    let metrics = ctl.health.render().unwrap();
    for resource in [
        "baremetalhosts",
        "machines",
        "clusters",
        "metal3machines",
        "secrets",
    ] {
        let up = metal3_fakenode_testkit::exposition::metric_value_with(
            &metrics,
            "fakenode_watch_up",
            &[("resource", resource)],
        );
        assert_eq!(up, Some(1.0), "{resource}: {metrics}");
    }
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_workload_api_server_restart_recovers_clients_and_heartbeats() {
    let env = env().await;
    let mut workload = ApiServer::start(&env.assets, env.etcd(), &unique("wl-restart"))
        .await
        .unwrap();
    let admin = env.management.client().await.unwrap();
    let ns = unique("wl-restart");
    world::namespace(&admin, &ns).await.unwrap();
    cluster(&admin, &ns, &ns, &workload).await;
    let before = provisioned(&admin, &ns, &ns, &format!("{ns}-md-0")).await;
    let mut config = test_config(&[&ns]);
    config.fidelity = Fidelity {
        heartbeat_interval: Duration::from_secs(1),
        ..Fidelity::default()
    };
    let ctl = start_controller_as(controller_client(&env.management).await, config).await;
    eventually("the Node before the restart", LIMIT, || {
        ready_node(&workload, &before)
    })
    .await;

    workload.kill();
    // Provisioned while its workload cluster is down: it fails, and is retried.
    let after = provisioned(&admin, &ns, &ns, &format!("{ns}-md-1")).await;
    eventually("a failed attempt", LIMIT, || async {
        (ctl.errors("workload_unreachable") > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarting = Instant::now();
    workload.restart().await.unwrap();
    let back = Instant::now();
    println!(
        "the workload API server serves again {:.1} s after its restart began",
        restarting.elapsed().as_secs_f64()
    );
    eventually(
        "the Node of the host provisioned while it was down",
        LIMIT,
        || ready_node(&workload, &after),
    )
    .await;
    let took = back.elapsed();
    println!(
        "a host provisioned while its workload API server was down got its Node {:.1} s after the server was back",
        took.as_secs_f64()
    );
    assert!(took < BACK_WITHIN, "{took:?}");
    // The heartbeats of the Node from before the restart go on, with the same client.
    let leases: Api<Lease> = Api::namespaced(workload.client().await.unwrap(), "kube-node-lease");
    let since = jiff::Timestamp::now();
    eventually("a heartbeat after the return", LIMIT, || async {
        let lease = leases.get_opt(&before.spec.name).await.ok()??;
        let renewed = lease.spec?.renew_time?.0;
        (renewed > since).then_some(())
    })
    .await;
    assert!(ready_node(&workload, &before).await.is_some());
    ctl.stop().await;
}

/// SIGTERM ends the process within its grace in states where it used to hang.
#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn sigterm_ends_a_controller_that_cannot_become_ready_or_whose_servers_are_gone() {
    let env = env().await;
    let grace = Duration::from_secs(3);
    let args = ["--shutdown-grace", "3s", "--namespace", "default"];

    // An identity without any permission: it never becomes ready.
    let nobody = env
        .management
        .kubeconfig_for_user(&unique("nobody"), None)
        .unwrap();
    let mut stuck = Binary::spawn(&envtest::kubeconfig_yaml(&nobody).unwrap(), &args, "info");
    eventually("it serves /healthz", LIMIT, || async {
        stuck.get("/healthz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !stuck.ready().await,
        "an identity without permissions is never ready"
    );

    // Its API servers gone: ready first, then the management and workload servers die.
    let mut management = own_management("gone").await;
    let mut workload = ApiServer::start(&env.assets, env.etcd(), &unique("gone-wl"))
        .await
        .unwrap();
    let admin = management.client().await.unwrap();
    let ns = unique("gone");
    world::namespace(&admin, &ns).await.unwrap();
    cluster(&admin, &ns, &ns, &workload).await;
    let m = provisioned(&admin, &ns, &ns, &format!("{ns}-md-0")).await;
    let orphaned_args = ["--shutdown-grace", "3s", "--namespace", &ns];
    let mut orphaned = Binary::spawn(&admin_yaml(&management), &orphaned_args, "info");
    eventually("its Node", LIMIT, || ready_node(&workload, &m)).await;
    management.kill();
    workload.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;

    for (what, binary) in [("not ready", &mut stuck), ("servers gone", &mut orphaned)] {
        let sent = Instant::now();
        binary.signal(libc::SIGTERM);
        let code = binary.exit_within(grace + Duration::from_secs(10)).await;
        let took = sent.elapsed();
        println!(
            "{what}: exited with {code:?} {:.2} s after SIGTERM",
            took.as_secs_f64()
        );
        assert!(
            code.is_some(),
            "{what}: still running {took:?} after SIGTERM"
        );
        assert!(took <= grace + Duration::from_secs(2), "{what}: {took:?}");
    }
}
