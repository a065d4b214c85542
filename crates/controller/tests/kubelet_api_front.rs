//! Stacked etcd for workload clusters sharing one API server: two clusters behind the
//! tenancy front on one real kube-apiserver, with control-plane Nodes of the same names.
//! The real client-go port-forward and etcd `clientv3` (the `kubelet-probe` program, as
//! KCP dials) go through the front, which relays the upgrade to the backing server; the
//! backing server dials metal3-fakenode's kubelet API with its one kubelet client
//! certificate and a namespace carrying the cluster's prefix, which the prefix recorded
//! on the Cluster resolves. Each cluster's etcd lists its own members only.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{eventually, start_controller, test_config, unique};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use metal3_fakenode::fidelity::Fidelity;
use metal3_fakenode::kubelet_api::Endpoint;
use metal3_fakenode_testkit::envtest::certs::ClusterCa;
use metal3_fakenode_testkit::envtest::{self, ApiServer};
use metal3_fakenode_testkit::kubelet_probe::{EtcdOp, EtcdTls, KubeletProbe, Target, Transport};
use metal3_fakenode_testkit::simulate::world::{self, MachineSpec};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(90);

/// One workload cluster behind the front, as its clients know it.
struct Fronted {
    ns: String,
    tls: EtcdTls,
    /// Its kubeconfig, naming the front's endpoint for it.
    kubeconfig: PathBuf,
    client: kube::Client,
}

/// The Cluster, its CA, and what the front needs to serve it.
fn served(ns: &str, ca: &ClusterCa, port: u16) -> front::ServedCluster {
    front::ServedCluster {
        cluster: tenancy::ClusterKey {
            namespace: ns.to_string(),
            name: ns.to_string(),
            uid: format!("uid-{ns}"),
        },
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        hosts: vec!["127.0.0.1".into()],
        ca_cert: ca.cert_pem(),
        ca_key: ca.key_pem().to_string(),
    }
}

/// The cluster in the management cluster: its Cluster with the prefix the front gave it
/// (as the front records it), its kubeconfig naming the front, its etcd CA, and its
/// control-plane Machines.
async fn cluster(
    mgmt: &kube::Client,
    dir: &std::path::Path,
    ns: &str,
    ca: &ClusterCa,
    endpoint: &front::Endpoint,
    control_planes: &[&str],
) -> Fronted {
    world::namespace(mgmt, ns).await.unwrap();
    world::cluster(mgmt, ns, ns).await.unwrap();
    let annotation = json!({"metadata": {"annotations": {
        tenancy::PREFIX_ANNOTATION: endpoint.prefix.as_str(),
    }}});
    world::dynamic(mgmt, ns, "cluster.x-k8s.io", "v1beta2", "Cluster")
        .patch(ns, &PatchParams::default(), &Patch::Merge(&annotation))
        .await
        .unwrap();
    let admin = ca.client_cert("admin", Some("system:masters")).unwrap();
    let kubeconfig = envtest::kubeconfig(
        ns,
        &format!("https://{}", endpoint.local_addr),
        &ca.cert_pem(),
        "admin",
        &admin,
    );
    let yaml = envtest::kubeconfig_yaml(&kubeconfig).unwrap();
    world::kubeconfig_secret(mgmt, ns, ns, world::kubeconfig_data(&yaml))
        .await
        .unwrap();
    let etcd_ca = ClusterCa::new("etcd-ca").unwrap();
    world::ca_secret(mgmt, ns, ns, "etcd", &etcd_ca.cert_pem(), etcd_ca.key_pem())
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
    for name in control_planes {
        world::machine(mgmt, ns, &MachineSpec::new(ns, name, true))
            .await
            .unwrap();
    }
    Fronted {
        ns: ns.to_string(),
        tls,
        kubeconfig: file("kubeconfig", &yaml),
        client: envtest::client_for(&kubeconfig).await.unwrap(),
    }
}

fn etcd_pod(c: &Fronted, node: &str) -> Target {
    Target::pod(&c.kubeconfig, "kube-system", &format!("etcd-{node}"))
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(ToString::to_string).collect();
    names.sort();
    names
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn clusters_sharing_an_api_server_behind_the_front_each_reach_their_own_etcd() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The shared API server, with its one kubelet client certificate.
    let backing = ApiServer::start(&env.assets, env.etcd(), &unique("backing"))
        .await
        .unwrap();
    let front = front::Front::from_kubeconfig(backing.admin_kubeconfig())
        .await
        .unwrap();
    let (ns_a, ns_b) = (unique("fronted"), unique("fronted"));
    let (ca_a, ca_b) = (
        ClusterCa::new("a-ca").unwrap(),
        ClusterCa::new("b-ca").unwrap(),
    );
    let ports = envtest::free_ports(2).unwrap();
    let outcome = front
        .reconcile(&[
            served(&ns_a, &ca_a, ports[0]),
            served(&ns_b, &ca_b, ports[1]),
        ])
        .await;
    assert!(outcome.refused.is_empty() && outcome.failed.is_empty());
    let endpoints = front.endpoints().await;
    let endpoint = |ns: &str| {
        endpoints
            .iter()
            .find(|(key, _)| key.namespace == ns)
            .map(|(_, e)| e.clone())
            .unwrap()
    };

    // The same Node name in both clusters; cluster a has a second control-plane Node.
    let (same, second) = (unique("cp"), unique("cp"));
    let a = cluster(
        &mgmt,
        dir.path(),
        &ns_a,
        &ca_a,
        &endpoint(&ns_a),
        &[&same, &second],
    )
    .await;
    let b = cluster(&mgmt, dir.path(), &ns_b, &ca_b, &endpoint(&ns_b), &[&same]).await;

    let port = envtest::free_port().unwrap();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
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
    for (c, node) in [(&a, &same), (&a, &second), (&b, &same)] {
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), "kube-system");
        let name = format!("etcd-{node}");
        eventually(&format!("{name} in {}", c.ns), LIMIT, || async {
            pods.get_opt(&name).await.ok().flatten()
        })
        .await;
    }

    let probe = KubeletProbe::from_assets().unwrap();
    // Each cluster lists its own members, by its own Node names, whichever way client-go
    // upgrades the port-forward (WebSocket first, as KCP; plain SPDY).
    for transport in [Transport::Kcp, Transport::Spdy] {
        let listed_a = probe
            .etcd(
                &etcd_pod(&a, &same).with_transport(transport),
                &a.tls,
                EtcdOp::MemberList,
            )
            .await
            .unwrap();
        let names: Vec<&str> = listed_a.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(sorted(&names), sorted(&[&same, &second]), "{transport:?}");
        let listed_b = probe
            .etcd(
                &etcd_pod(&b, &same).with_transport(transport),
                &b.tls,
                EtcdOp::MemberList,
            )
            .await
            .unwrap();
        let names: Vec<&str> = listed_b.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, [same.as_str()], "{transport:?}");
        assert_ne!(listed_a.header.cluster_id, listed_b.header.cluster_id);
    }
    // The WebSocket handshake itself, as client-go starts it (rather than its fallback
    // to SPDY): the backing server's 101 and the subprotocol it chose come back.
    let path = format!("/api/v1/namespaces/kube-system/pods/etcd-{same}/portforward");
    let handshake = http::Request::get(path)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Protocol", "SPDY/3.1+portforward.k8s.io")
        .body(kube::client::Body::empty())
        .unwrap();
    let answer = a.client.send(handshake).await.unwrap();
    assert_eq!(answer.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        answer.headers()["sec-websocket-protocol"],
        "SPDY/3.1+portforward.k8s.io"
    );
    // RFC 6455's example key and its accept value: the backing server's, passed back.
    assert_eq!(
        answer.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    drop(answer);
    // Status through the front too: a leader among a's members.
    let status = probe
        .etcd(&etcd_pod(&a, &second), &a.tls, EtcdOp::Status)
        .await
        .unwrap();
    assert!(status.leader.is_some());
    // Another cluster's etcd client certificate is still refused at the member.
    let wrong = probe
        .etcd(&etcd_pod(&b, &same), &a.tls, EtcdOp::MemberList)
        .await;
    assert!(wrong.is_err(), "{wrong:?}");

    let served = ctl
        .metrics
        .port_forward_sessions
        .with_label_values(&["served"])
        .get();
    assert!(served >= 5, "{served} sessions served");
    ctl.stop().await;
    drop(front);
}
