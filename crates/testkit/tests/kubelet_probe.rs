//! The kubelet probe itself, proven against real servers: a real etcd with TLS and client
//! certificates (the probe's etcd calls and TLS handshake, dialed directly), an echo
//! server, and a real kube-apiserver whose port-forward finds no kubelet (the probe's
//! port-forward path, which must fail clearly).

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use metal3_fakenode_testkit::envtest::certs::ClusterCa;
use metal3_fakenode_testkit::envtest::process::Supervised;
use metal3_fakenode_testkit::envtest::{self, ApiServer, Assets, Etcd};
use metal3_fakenode_testkit::kubelet_probe::{
    EtcdOp, EtcdTls, KubeletProbe, ProbeError, Target, Transport,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A one-member etcd serving TLS on loopback and requiring client certificates signed by
/// `ca`, as a kubeadm etcd member does; its certificate has CN kube-apiserver (the
/// testkit's serving certificate), so KCP's expiry check can read it too.
fn start_etcd(assets: &Assets, ca: &ClusterCa, dir: &Path, name: &str) -> (Supervised, u16) {
    let serving = ca.serving_cert().unwrap();
    let ports = envtest::free_ports(2).unwrap();
    let (client, peer) = (ports[0], ports[1]);
    let arg = |flag: &str, value: &str| format!("--{flag}={value}");
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let args = vec![
        arg("name", name),
        arg("data-dir", &dir.join("data").display().to_string()),
        arg("listen-client-urls", &client_url),
        arg("advertise-client-urls", &client_url),
        arg("listen-peer-urls", &peer_url),
        arg("initial-advertise-peer-urls", &peer_url),
        arg("initial-cluster", &format!("{name}={peer_url}")),
        "--client-cert-auth".into(),
        arg(
            "trusted-ca-file",
            &write(dir, "ca.crt", &ca.cert_pem()).display().to_string(),
        ),
        arg(
            "cert-file",
            &write(dir, "server.crt", &serving.cert_pem)
                .display()
                .to_string(),
        ),
        arg(
            "key-file",
            &write(dir, "server.key", &serving.key_pem)
                .display()
                .to_string(),
        ),
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ];
    let mut etcd = Supervised::spawn("etcd", &assets.etcd(), &args, dir.join("etcd.log")).unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(etcd.exited().is_none(), "{}", etcd.log_tail(30));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "etcd did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (etcd, client)
}

fn client_tls(ca: &ClusterCa, dir: &Path, prefix: &str) -> EtcdTls {
    // KCP's own client certificate has this CN.
    let client = ca.client_cert("cluster-api.x-k8s.io", None).unwrap();
    EtcdTls {
        ca: write(dir, &format!("{prefix}ca.crt"), &ca.cert_pem()),
        cert: write(dir, &format!("{prefix}client.crt"), &client.cert_pem),
        key: write(dir, &format!("{prefix}client.key"), &client.key_pem),
    }
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn probe_speaks_etcd_to_a_real_etcd() {
    let assets = Assets::from_env().unwrap();
    let probe = KubeletProbe::from_assets().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::new("etcd-ca").unwrap();
    let (_etcd, port) = start_etcd(&assets, &ca, dir.path(), "node-0");
    let tls = client_tls(&ca, dir.path(), "");
    let target = Target::endpoint(format!("127.0.0.1:{port}"));

    let list = probe.etcd(&target, &tls, EtcdOp::MemberList).await.unwrap();
    assert_eq!(list.members.len(), 1, "{list:?}");
    let me = &list.members[0];
    assert_eq!(me.name, "node-0");
    assert_eq!(me.id, list.header.member_id);
    assert_eq!(me.client_urls, [format!("https://127.0.0.1:{port}")]);
    assert!(!me.is_learner);
    assert_ne!(list.header.cluster_id, 0);
    // clientv3 dials a connection of its own for the Status call KCP makes first.
    assert_eq!(list.dials, 2, "{list:?}");

    let status = probe.etcd(&target, &tls, EtcdOp::Status).await.unwrap();
    assert_eq!(status.leader, Some(me.id));
    assert_eq!(status.header.member_id, me.id);
    assert_eq!(status.errors.as_deref(), Some(&[][..]));
    assert_eq!(status.is_learner, Some(false));
    assert!(
        status
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with('3'))
    );

    let alarms = probe.etcd(&target, &tls, EtcdOp::AlarmList).await.unwrap();
    assert_eq!(alarms.alarms.as_deref().map(<[_]>::len), Some(0));

    // The one member leads already: moving the lead to it succeeds.
    let moved = probe
        .etcd(&target, &tls, EtcdOp::MoveLeader(me.id))
        .await
        .unwrap();
    assert_eq!(moved.leader, Some(me.id));

    let missing = probe
        .etcd(&target, &tls, EtcdOp::MemberRemove(me.id ^ 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, ProbeError::Failed { stderr, .. } if stderr.contains("member not found")),
        "{missing}"
    );

    // A client certificate from another CA is refused, and the probe says why.
    let stranger = client_tls(&ClusterCa::new("other").unwrap(), dir.path(), "other-");
    let refused = probe
        .clone()
        .with_timeout(Duration::from_secs(3))
        .etcd(&target, &stranger, EtcdOp::Status)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProbeError::Failed { stderr, .. } if stderr.contains("tls")),
        "{refused}"
    );

    // KCP's API server certificate check, on the same TLS listener.
    let expiry = probe.cert_expiry(&target).await.unwrap();
    assert_eq!(expiry.common_name, "kube-apiserver");
    assert_eq!(expiry.peer_certificates.len(), 1);
    assert!(expiry.not_after > jiff::Timestamp::now());
    assert_eq!(expiry.negotiated_protocol, "");
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn probe_echoes_over_many_connections() {
    let probe = KubeletProbe::from_assets().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let echo = probe
        .forward_echo(&Target::endpoint(address.to_string()), 256 << 10, 4)
        .await
        .unwrap();
    assert_eq!(echo.connections, 4);
    assert_eq!(echo.bytes_received, 4 * (256 << 10));

    // An echo that answers with other bytes is caught.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    buf[..n].iter_mut().for_each(|b| *b = !*b);
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let wrong = probe
        .forward_echo(&Target::endpoint(address.to_string()), 4096, 1)
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("differs"), "{wrong}");
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn probe_port_forward_fails_clearly_without_a_kubelet() {
    let assets = Assets::from_env().unwrap();
    let probe = KubeletProbe::from_assets().unwrap();
    let etcd = Etcd::start(&assets).await.unwrap();
    let server = ApiServer::start(&assets, &etcd, "workload").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write(
        dir.path(),
        "kubeconfig",
        &envtest::kubeconfig_yaml(&server.admin_kubeconfig()).unwrap(),
    );
    let client = server.client().await.unwrap();

    // A Node whose kubelet endpoint nobody serves, and the etcd Pod bound to it.
    let kubelet_port = envtest::free_port().unwrap();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "node-0"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        },
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "etcd-node-0", "namespace": "kube-system"},
        "spec": {"nodeName": "node-0", "containers": [{"name": "etcd", "image": "etcd"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client, "kube-system")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    let ca = ClusterCa::new("etcd-ca").unwrap();
    let tls = client_tls(&ca, dir.path(), "");
    let probe = probe.with_timeout(Duration::from_secs(10));
    for transport in [Transport::Kcp, Transport::Spdy] {
        let target =
            Target::pod(&kubeconfig, "kube-system", "etcd-node-0").with_transport(transport);
        let err = probe
            .etcd(&target, &tls, EtcdOp::MemberList)
            .await
            .unwrap_err();
        let ProbeError::Failed { stderr, .. } = &err else {
            panic!("{transport:?}: {err}");
        };
        assert!(
            stderr.contains("etcd-node-0") && stderr.contains(&kubelet_port.to_string()),
            "{transport:?}: {stderr}"
        );
        let err = probe
            .cert_expiry(&target.with_port(6443))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&kubelet_port.to_string()),
            "{transport:?}: {err}"
        );
    }

    // A Pod that does not exist: the API server says so.
    let target = Target::pod(&kubeconfig, "kube-system", "etcd-node-1");
    let err = probe.cert_expiry(&target).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}
