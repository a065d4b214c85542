//! The kubelet API against its real clients: the real kube-apiserver forwards
//! `pods/<pod>/portforward` to metal3-fakenode (the Node's InternalIP and kubelet port),
//! and the real client-go port-forward and etcd `clientv3` (the `kubelet-probe` program,
//! dialling as the KubeadmControlPlane controller does) talk to the fake etcd members and
//! read the kube-apiserver's certificate. Two clusters whose Nodes have the same names tell
//! the callers apart by the API server's kubelet client certificate.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    admin_yaml, cluster_with_kubeconfig, eventually, start_controller, test_config, unique,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use metal3_fakenode::fidelity::Fidelity;
use metal3_fakenode::kubelet_api::Endpoint;
use metal3_fakenode::kubelet_api::etcd_members::REMOVED_ANNOTATION;
use metal3_fakenode_testkit::envtest::certs::ClusterCa;
use metal3_fakenode_testkit::envtest::{self, ApiServer};
use metal3_fakenode_testkit::kubelet_probe::{EtcdOp, EtcdTls, KubeletProbe, Target};
use metal3_fakenode_testkit::simulate::world::{self, MachineSpec};

const LIMIT: Duration = Duration::from_secs(60);

/// One workload cluster of the test: its namespace, etcd client files and kubeconfig file.
struct Cluster {
    ns: String,
    tls: EtcdTls,
    kubeconfig: PathBuf,
}

async fn cluster(
    mgmt: &kube::Client,
    server: &ApiServer,
    dir: &std::path::Path,
    control_planes: &[&str],
) -> Cluster {
    let ns = unique("kubelet");
    world::namespace(mgmt, &ns).await.unwrap();
    cluster_with_kubeconfig(mgmt, &ns, &ns, &admin_yaml(server)).await;
    // The etcd CA as CAPI keeps it (private key included: the controller must drop it),
    // and a client certificate signed by it, as KCP makes one.
    let etcd_ca = ClusterCa::new("etcd-ca").unwrap();
    world::ca_secret(
        mgmt,
        &ns,
        &ns,
        "etcd",
        &etcd_ca.cert_pem(),
        etcd_ca.key_pem(),
    )
    .await
    .unwrap();
    let client = etcd_ca.client_cert("kcp", None).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(format!("{ns}-{name}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let tls = EtcdTls {
        ca: file("etcd-ca.crt", &etcd_ca.cert_pem()),
        cert: file("etcd-client.crt", &client.cert_pem),
        key: file("etcd-client.key", &client.key_pem),
    };
    let kubeconfig = file("kubeconfig", &admin_yaml(server));
    for name in control_planes {
        world::machine(mgmt, &ns, &MachineSpec::new(&ns, name, true))
            .await
            .unwrap();
    }
    Cluster {
        ns,
        tls,
        kubeconfig,
    }
}

fn etcd_pod(c: &Cluster, node: &str) -> Target {
    Target::pod(&c.kubeconfig, "kube-system", &format!("etcd-{node}"))
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn port_forwards_reach_fake_etcd_members_and_the_api_server_certificate() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The same Node name in both clusters; cluster a has a second control-plane Node.
    let (same, second) = (unique("cp"), unique("cp"));
    let a = cluster(&mgmt, &env.workloads[0], dir.path(), &[&same, &second]).await;
    let b = cluster(&mgmt, &env.workloads[1], dir.path(), &[&same]).await;

    let port = envtest::free_port().unwrap();
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = test_config(&[&a.ns, &b.ns]);
    config.fidelity = Fidelity {
        static_pods: true,
        stacked_etcd_pods: true,
        ..Fidelity::default()
    };
    config.kubelet = Some(Endpoint {
        bind: address,
        advertise: address,
    });
    let ctl = start_controller(config).await;
    for (server, node) in [
        (&env.workloads[0], &same),
        (&env.workloads[0], &second),
        (&env.workloads[1], &same),
    ] {
        let pods: Api<Pod> = Api::namespaced(server.client().await.unwrap(), "kube-system");
        let name = format!("etcd-{node}");
        eventually(&format!("{name} in {}", server.name()), LIMIT, || async {
            pods.get_opt(&name).await.unwrap()
        })
        .await;
    }

    let probe = KubeletProbe::from_assets().unwrap();
    // Each cluster sees its own members, by Node name, with its own cluster ID.
    let listed_a = probe
        .etcd(&etcd_pod(&a, &same), &a.tls, EtcdOp::MemberList)
        .await
        .unwrap();
    let mut names: Vec<&str> = listed_a.members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    let mut wanted = vec![same.as_str(), second.as_str()];
    wanted.sort();
    assert_eq!(names, wanted);
    let listed_b = probe
        .etcd(&etcd_pod(&b, &same), &b.tls, EtcdOp::MemberList)
        .await
        .unwrap();
    let names_b: Vec<&str> = listed_b.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names_b, [same.as_str()]);
    assert_ne!(listed_a.header.cluster_id, listed_b.header.cluster_id);

    // Status: a leader among the members, no errors; no alarms.
    let status = probe
        .etcd(&etcd_pod(&a, &second), &a.tls, EtcdOp::Status)
        .await
        .unwrap();
    let ids: Vec<u64> = listed_a.members.iter().map(|m| m.id).collect();
    let leader = status.leader.expect("a leader");
    assert!(ids.contains(&leader), "leader {leader:x} among {ids:x?}");
    assert!(status.errors.unwrap_or_default().is_empty());
    let alarms = probe
        .etcd(&etcd_pod(&a, &same), &a.tls, EtcdOp::AlarmList)
        .await
        .unwrap();
    assert!(alarms.alarms.unwrap_or_default().is_empty());

    // KCP's scale-down: leadership moves off the member to remove, then it is removed,
    // as every member reports afterwards.
    let other = *ids.iter().find(|id| **id != leader).unwrap();
    let leader_node = listed_a
        .members
        .iter()
        .find(|m| m.id == leader)
        .unwrap()
        .name
        .clone();
    probe
        .etcd(
            &etcd_pod(&a, &leader_node),
            &a.tls,
            EtcdOp::MoveLeader(other),
        )
        .await
        .unwrap();
    let moved = probe
        .etcd(&etcd_pod(&a, &same), &a.tls, EtcdOp::Status)
        .await
        .unwrap();
    assert_eq!(moved.leader, Some(other));
    let remove_node = listed_a
        .members
        .iter()
        .find(|m| m.id == leader)
        .unwrap()
        .name
        .clone();
    let keep_node = listed_a
        .members
        .iter()
        .find(|m| m.id == other)
        .unwrap()
        .name
        .clone();
    probe
        .etcd(
            &etcd_pod(&a, &keep_node),
            &a.tls,
            EtcdOp::MemberRemove(leader),
        )
        .await
        .unwrap();
    let after = probe
        .etcd(&etcd_pod(&a, &keep_node), &a.tls, EtcdOp::MemberList)
        .await
        .unwrap();
    let names: Vec<&str> = after.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, [keep_node.as_str()]);
    // Kept in the workload cluster, not in this process.
    let pods: Api<Pod> = Api::namespaced(env.workloads[0].client().await.unwrap(), "kube-system");
    let removed = pods.get(&format!("etcd-{remove_node}")).await.unwrap();
    assert_eq!(
        removed
            .metadata
            .annotations
            .unwrap_or_default()
            .get(REMOVED_ANNOTATION)
            .map(String::as_str),
        Some("true")
    );
    // Cluster b is untouched by what happened in a.
    let still_b = probe
        .etcd(&etcd_pod(&b, &same), &b.tls, EtcdOp::MemberList)
        .await
        .unwrap();
    assert_eq!(still_b.members.len(), 1);

    // A client certificate of another cluster's etcd CA is refused at the handshake.
    let wrong = probe
        .etcd(&etcd_pod(&a, &keep_node), &b.tls, EtcdOp::MemberList)
        .await;
    assert!(wrong.is_err(), "{wrong:?}");

    // The kube-apiserver's certificate, as KCP reads its expiry: a year after the Node.
    let expiry = probe
        .cert_expiry(&Target::pod(
            &a.kubeconfig,
            "kube-system",
            &format!("kube-apiserver-{same}"),
        ))
        .await
        .unwrap();
    assert_eq!(expiry.common_name, "kube-apiserver");
    let days = expiry
        .not_after
        .duration_since(jiff::Timestamp::now())
        .as_secs()
        / 86_400;
    assert!((363..=365).contains(&days), "expires in {days} days");

    // A port no fake serves: a clear error on the port-forward's error stream.
    let none = probe
        .forward_echo(&etcd_pod(&a, &keep_node).with_port(2380), 16, 1)
        .await;
    let message = format!("{:?}", none.expect_err("port 2380 is served by no fake"));
    assert!(message.contains("no fake serves port 2380"), "{message}");

    let served = ctl
        .metrics
        .port_forward_sessions
        .with_label_values(&["served"])
        .get();
    assert!(served >= 10, "{served} sessions served");
    assert!(
        ctl.metrics
            .port_forward_streams
            .with_label_values(&["etcd"])
            .get()
            >= 8
    );
    let rpcs = |method: &str, code: &str| {
        ctl.metrics
            .etcd_rpcs
            .with_label_values(&[method, code])
            .get()
    };
    assert!(
        rpcs("MemberList", "Ok") >= 4,
        "{}",
        rpcs("MemberList", "Ok")
    );
    assert_eq!(
        (rpcs("MoveLeader", "Ok"), rpcs("MemberRemove", "Ok")),
        (1, 1)
    );
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn nodes_made_before_the_kubelet_api_get_its_address_and_port() {
    use k8s_openapi::api::core::v1::Node;
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = unique("kubelet-upgrade");
    world::namespace(&mgmt, &ns).await.unwrap();
    cluster_with_kubeconfig(&mgmt, &ns, &ns, &admin_yaml(server)).await;
    let name = unique("cp-old");
    world::machine(&mgmt, &ns, &MachineSpec::new(&ns, &name, true))
        .await
        .unwrap();
    // Heartbeats on: the controller keeps (and so takes over) the Nodes it finds.
    let living = Fidelity {
        heartbeat_interval: Duration::from_secs(30),
        ..Fidelity::default()
    };
    let mut before = test_config(&[&ns]);
    before.fidelity = living.clone();
    let ctl = start_controller(before).await;
    let nodes: Api<Node> = Api::all(server.client().await.unwrap());
    let endpoint = |n: &Node| {
        let status = n.status.clone().unwrap_or_default();
        let first = status
            .addresses
            .unwrap_or_default()
            .first()
            .map(|a| a.address.clone());
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port);
        (first, port)
    };
    let old = eventually("the Node of the earlier version", LIMIT, || async {
        nodes.get_opt(&name).await.unwrap()
    })
    .await;
    assert_eq!(endpoint(&old).1, Some(10250));
    ctl.stop().await;

    let port = envtest::free_port().unwrap();
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut after = test_config(&[&ns]);
    after.fidelity = living;
    after.kubelet = Some(Endpoint {
        bind: address,
        advertise: address,
    });
    let ctl = start_controller(after).await;
    eventually(
        "the kubelet API advertised on the old Node",
        LIMIT,
        || async {
            let n = nodes.get(&name).await.unwrap();
            (endpoint(&n) == (Some("127.0.0.1".to_string()), Some(i32::from(port)))).then_some(())
        },
    )
    .await;
    // The host's own address stays, after the kubelet API's.
    let n = nodes.get(&name).await.unwrap();
    let addresses = n.status.unwrap().addresses.unwrap();
    assert_eq!(
        addresses[1].address,
        old.status.unwrap().addresses.unwrap()[0].address
    );
    ctl.stop().await;
}
