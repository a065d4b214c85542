//! Two workload clusters behind one tenancy front, on one real kube-apiserver: each
//! client, with a certificate of its own cluster's CA, writes objects of the same names as
//! the other, and each sees only its own; then one tries to break out of its view.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use metal3_fakenode_testkit::envtest::certs::{CertAndKey, ClusterCa};
use metal3_fakenode_testkit::envtest::{self, ApiServer, Assets, Etcd};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tenancy::{CLUSTER_LABEL, ClusterKey, Prefix};

use front::{Front, ServedCluster};

/// One served cluster as its clients know it.
struct Tenant {
    name: &'static str,
    ca: ClusterCa,
    prefix: Prefix,
    addr: SocketAddr,
    client: kube::Client,
}

impl Tenant {
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A client of this cluster's endpoint, trusting its CA, presenting `cert`.
    async fn client_with(&self, cert: &CertAndKey) -> kube::Client {
        let kubeconfig =
            envtest::kubeconfig(self.name, &self.url(), &self.ca.cert_pem(), "admin", cert);
        envtest::client_for(&kubeconfig).await.unwrap()
    }
}

/// A GET over HTTP/2 (negotiated by ALPN, as Go clients do) with `cert`: the status, the
/// body and the protocol agreed.
async fn h2_get(
    t: &Tenant,
    cert: &CertAndKey,
    path: &str,
    accept: &str,
) -> (http::StatusCode, String) {
    use http_body_util::{BodyExt, Empty};
    use rustls::pki_types::{PrivateKeyDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(t.ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("{}{path}", t.url()))
        .header("Accept", accept)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The front and its two clusters, with the backing server and its etcd (declared last:
/// dropped after what uses them).
struct Bench {
    front: Front,
    served: Vec<ServedCluster>,
    a: Tenant,
    b: Tenant,
    backing: ApiServer,
    _etcd: Etcd,
}

async fn bench() -> Bench {
    let assets = Assets::from_env().unwrap();
    let etcd = Etcd::start(&assets).await.unwrap();
    let backing = ApiServer::start(&assets, &etcd, "backing").await.unwrap();
    let front = Front::from_kubeconfig(backing.admin_kubeconfig())
        .await
        .unwrap();
    let ports = envtest::free_ports(2).unwrap();
    let cas = [
        ClusterCa::new("a-ca").unwrap(),
        ClusterCa::new("b-ca").unwrap(),
    ];
    let served: Vec<ServedCluster> = ["a", "b"]
        .iter()
        .zip(&cas)
        .zip(&ports)
        .map(|((name, ca), port)| ServedCluster {
            cluster: key(name),
            listen: SocketAddr::from(([127, 0, 0, 1], *port)),
            hosts: vec!["127.0.0.1".into()],
            ca_cert: ca.cert_pem(),
            ca_key: ca.key_pem().to_string(),
        })
        .collect();
    let outcome = front.reconcile(&served).await;
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    let endpoints = front.endpoints().await;
    let [ca_a, ca_b] = cas;
    let mut tenants = Vec::new();
    for (name, ca) in [("a", ca_a), ("b", ca_b)] {
        let endpoint = endpoints[&key(name)].clone();
        let admin = ca.client_cert("admin", Some("system:masters")).unwrap();
        let mut tenant = Tenant {
            name,
            ca,
            prefix: endpoint.prefix,
            addr: endpoint.local_addr,
            client: backing.client().await.unwrap(),
        };
        tenant.client = tenant.client_with(&admin).await;
        tenants.push(tenant);
    }
    let b = tenants.pop().unwrap();
    let a = tenants.pop().unwrap();
    Bench {
        front,
        served,
        a,
        b,
        backing,
        _etcd: etcd,
    }
}

fn key(name: &str) -> ClusterKey {
    ClusterKey {
        namespace: "metal3".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

fn node(name: &str, cluster: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"which": cluster}},
    }))
    .unwrap()
}

fn config_map(namespace: &str, name: &str, cluster: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "data": {"cluster": cluster},
    }))
    .unwrap()
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    let mut names: Vec<String> = items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect();
    names.sort();
    names
}

fn status_code(result: Result<impl std::fmt::Debug, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Watches Nodes from `resource_version` until `wanted` is added; the names added before.
async fn added_until(client: &kube::Client, resource_version: &str, wanted: &str) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = WatchParams::default().timeout(30);
    let mut events = nodes
        .watch(&params, resource_version)
        .await
        .unwrap()
        .boxed();
    let mut added = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        if let WatchEvent::Added(node) = event.unwrap() {
            let name = node.metadata.name.unwrap_or_default();
            added.push(name.clone());
            if name == wanted {
                return added;
            }
        }
    }
    panic!("{wanted} never added; saw {added:?}");
}

const LABEL_NAME: &str = "which";

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn two_clusters_on_one_api_server_each_see_only_their_own_objects() {
    let bench = bench().await;
    let pp = PostParams::default();
    for t in [&bench.a, &bench.b] {
        let namespaces: Api<Namespace> = Api::all(t.client.clone());
        let apps: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap();
        namespaces.create(&pp, &apps).await.unwrap();
        let nodes: Api<Node> = Api::all(t.client.clone());
        nodes.create(&pp, &node("node-0", t.name)).await.unwrap();
        let kube_system: Api<ConfigMap> = Api::namespaced(t.client.clone(), "kube-system");
        kube_system
            .create(&pp, &config_map("kube-system", "kubeadm-config", t.name))
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), "apps");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "apps", "labels": {"which": t.name}},
            "spec": {"nodeName": "node-0", "containers": [{"name": "web", "image": "web"}]},
        }))
        .unwrap();
        pods.create(&pp, &pod).await.unwrap();
    }

    for t in [&bench.a, &bench.b] {
        let nodes: Api<Node> = Api::all(t.client.clone());
        let listed = nodes.list(&ListParams::default()).await.unwrap();
        assert_eq!(names(&listed.items), ["node-0"], "cluster {}", t.name);
        let got = nodes.get("node-0").await.unwrap();
        assert_eq!(got.metadata.labels.unwrap()[LABEL_NAME], t.name);

        let config = Api::<ConfigMap>::namespaced(t.client.clone(), "kube-system")
            .get("kubeadm-config")
            .await
            .unwrap();
        assert_eq!(config.data.unwrap()["cluster"], t.name);
        let all: Api<ConfigMap> = Api::all(t.client.clone());
        let listed = all.list(&ListParams::default()).await.unwrap();
        assert_eq!(
            names(&listed.items),
            ["kubeadm-config"],
            "cluster {}",
            t.name
        );
        assert_eq!(
            listed.items[0].metadata.namespace.as_deref(),
            Some("kube-system")
        );

        // Drain's query: every Pod on a Node, across namespaces.
        let pods: Api<Pod> = Api::all(t.client.clone());
        let on_node = pods
            .list(&ListParams::default().fields("spec.nodeName=node-0"))
            .await
            .unwrap();
        assert_eq!(names(&on_node.items), ["web"]);
        let pod = &on_node.items[0];
        assert_eq!(pod.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[LABEL_NAME], t.name);
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-0")
        );

        let namespaces = Api::<Namespace>::all(t.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap();
        assert_eq!(
            names(&namespaces.items),
            [
                "apps",
                "default",
                "kube-node-lease",
                "kube-public",
                "kube-system"
            ]
        );
    }

    // The backing server holds both, apart.
    let backing = bench.backing.client().await.unwrap();
    let stored = Api::<Node>::all(backing)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut expected = vec![
        format!("{}-node-0", bench.a.prefix),
        format!("{}-node-0", bench.b.prefix),
    ];
    expected.sort();
    assert_eq!(names(&stored.items), expected);

    // Watches: each cluster's stream carries its own Nodes only.
    let rv_a = Api::<Node>::all(bench.a.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let rv_b = Api::<Node>::all(bench.b.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let (a_client, b_client) = (bench.a.client.clone(), bench.b.client.clone());
    let watch_a = tokio::spawn(async move { added_until(&a_client, &rv_a, "node-a").await });
    let watch_b = tokio::spawn(async move { added_until(&b_client, &rv_b, "node-b").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    Api::<Node>::all(bench.b.client.clone())
        .create(&pp, &node("node-b", "b"))
        .await
        .unwrap();
    Api::<Node>::all(bench.a.client.clone())
        .create(&pp, &node("node-a", "a"))
        .await
        .unwrap();
    assert_eq!(watch_a.await.unwrap(), ["node-a"]);
    assert_eq!(watch_b.await.unwrap(), ["node-b"]);

    // The kubelet's status update, and drain's eviction, reach only the cluster's own.
    let a_nodes: Api<Node> = Api::all(bench.a.client.clone());
    let ready = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready"},
    ]}});
    let updated = a_nodes
        .patch_status("node-0", &PatchParams::default(), &Patch::Merge(ready))
        .await
        .unwrap();
    assert_eq!(
        updated.status.unwrap().conditions.unwrap()[0].type_,
        "Ready"
    );
    let b_node = Api::<Node>::all(bench.b.client.clone())
        .get("node-0")
        .await
        .unwrap();
    assert!(b_node.status.and_then(|s| s.conditions).is_none());
    Api::<Pod>::namespaced(bench.a.client.clone(), "apps")
        .evict("web", &EvictParams::default())
        .await
        .unwrap();
    for (t, evicted) in [(&bench.a, true), (&bench.b, false)] {
        let web = Api::<Pod>::namespaced(t.client.clone(), "apps")
            .get_opt("web")
            .await
            .unwrap();
        let terminating = web.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        assert_eq!(terminating, evicted, "cluster {}", t.name);
    }

    // Over HTTP/2, as Go clients speak: a protobuf list comes as JSON, a watch from the
    // start streams the cluster's own Nodes only, and ends when the server's timeout does.
    let admin = bench.a.ca.client_cert("admin", None).unwrap();
    let (status, list) = h2_get(
        &bench.a,
        &admin,
        "/api/v1/nodes",
        "application/vnd.kubernetes.protobuf, application/json",
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (status, events) = h2_get(
        &bench.a,
        &admin,
        "/api/v1/nodes?watch=true&resourceVersion=0&timeoutSeconds=2",
        "application/json",
    )
    .await;
    assert_eq!(status, 200, "{events}");
    let mut watched: Vec<String> = events
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["type"] == "ADDED")
        .map(|event| {
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    watched.sort();
    assert_eq!(watched, ["node-0", "node-a"]);

    // The server's own paths and discovery, as a real API server answers them.
    let client = &bench.a.client;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let root = client
        .request_text(http::Request::get("/").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert!(root.contains("/api/v1"), "{root}");
    let healthz = client
        .request_text(http::Request::get("/healthz").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(healthz, "ok");
    let core = client.list_core_api_resources("v1").await.unwrap();
    let core: Vec<&str> = core.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(
        core.contains(&"pods") && core.contains(&"nodes/status"),
        "{core:?}"
    );
    assert!(!core.contains(&"services"), "{core:?}");
    let groups = client.list_api_groups().await.unwrap();
    let groups: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert!(groups.contains(&"apps"), "{groups:?}");
    assert!(!groups.contains(&"apiextensions.k8s.io"), "{groups:?}");

    // A Table (kubectl's answer) is mapped too, and protobuf is negotiated down to JSON.
    let table = client
        .request_text(
            http::Request::get("/api/v1/nodes")
                .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let table: Value = serde_json::from_str(&table).unwrap();
    assert_eq!(table["kind"], "Table");
    let rows: Vec<&str> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["cells"][0].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["node-0", "node-a"]);
    let list = client
        .request_text(
            http::Request::get("/api/v1/namespaces/kube-system/configmaps")
                .header("Accept", "application/vnd.kubernetes.protobuf")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["items"][0]["metadata"]["namespace"], "kube-system");

    // A kind the front does not isolate is refused, not passed through.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    assert_eq!(
        status_code(services.list(&ListParams::default()).await),
        404
    );

    // A cluster no longer served loses its endpoint; the other keeps its own.
    let outcome = bench.front.reconcile(&bench.served[..1]).await;
    assert!(outcome.refused.is_empty() && outcome.failed.is_empty());
    assert!(bench.b.client.apiserver_version().await.is_err());
    assert!(bench.a.client.apiserver_version().await.is_ok());
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_cluster_cannot_break_out_of_its_view() {
    let bench = bench().await;
    let (a, b) = (&bench.a, &bench.b);
    let pp = PostParams::default();
    let backing = bench.backing.client().await.unwrap();

    // Cluster a's certificate on cluster b's endpoint: refused at the handshake.
    let a_cert = a.ca.client_cert("admin", Some("system:masters")).unwrap();
    let kubeconfig = envtest::kubeconfig("b", &b.url(), &b.ca.cert_pem(), "admin", &a_cert);
    let intruder = envtest::client_for(&kubeconfig).await.unwrap();
    let refused = intruder.apiserver_version().await;
    assert!(
        matches!(&refused, Err(e) if format!("{e:?}").contains("UnknownCA")),
        "{refused:?}"
    );
    // No certificate at all: refused alike.
    let mut anonymous = kube::Config::new(b.url().parse().unwrap());
    anonymous.root_cert = Some(vec![
        CertificateDer::from_pem_slice(b.ca.cert_pem().as_bytes())
            .unwrap()
            .to_vec(),
    ]);
    let anonymous = kube::Client::try_from(anonymous).unwrap();
    let refused = anonymous.apiserver_version().await;
    assert!(
        matches!(&refused, Err(e) if !matches!(e, kube::Error::Api(_))),
        "{refused:?}"
    );
    assert!(b.client.apiserver_version().await.is_ok());

    // The label saying whose a Node is cannot be removed or changed.
    let a_nodes: Api<Node> = Api::all(a.client.clone());
    a_nodes.create(&pp, &node("node-0", "a")).await.unwrap();
    Api::<Node>::all(b.client.clone())
        .create(&pp, &node("node-0", "b"))
        .await
        .unwrap();
    let pointer = format!("/metadata/labels/{}", CLUSTER_LABEL.replace('/', "~1"));
    for patch in [
        Patch::Merge(json!({"metadata": {"labels": {CLUSTER_LABEL: null}}})),
        Patch::Strategic(json!({"metadata": {"labels": {CLUSTER_LABEL: b.prefix.as_str()}}})),
        Patch::Json(serde_json::from_value(json!([{"op": "remove", "path": pointer}])).unwrap()),
    ] {
        let result = a_nodes
            .patch("node-0", &PatchParams::default(), &patch)
            .await;
        assert_eq!(status_code(result), 403);
    }
    let stored = Api::<Node>::all(backing.clone())
        .get(&format!("{}-node-0", a.prefix))
        .await
        .unwrap();
    assert_eq!(
        stored.metadata.labels.unwrap()[CLUSTER_LABEL],
        a.prefix.as_str()
    );
    // A patch of an ordinary label goes through, and the Node stays cluster a's.
    let patched = a_nodes
        .patch(
            "node-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "control-plane"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["role"], "control-plane");

    // Nor can a write set it, nor a selector choose another cluster by it.
    let labelled: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "moved", "labels": {CLUSTER_LABEL: b.prefix.as_str()}},
    }))
    .unwrap();
    let a_default: Api<ConfigMap> = Api::namespaced(a.client.clone(), "default");
    assert_eq!(status_code(a_default.create(&pp, &labelled).await), 403);
    let by_label = format!("{CLUSTER_LABEL}={}", b.prefix);
    let listed = Api::<Node>::all(a.client.clone())
        .list(&ListParams::default().labels(&by_label))
        .await;
    assert_eq!(status_code(listed), 403);

    // A field selector naming cluster b's backing namespace finds nothing of b.
    Api::<ConfigMap>::namespaced(b.client.clone(), "kube-system")
        .create(&pp, &config_map("kube-system", "only-b", "b"))
        .await
        .unwrap();
    let a_all: Api<ConfigMap> = Api::all(a.client.clone());
    for selector in [
        format!("metadata.namespace={}-kube-system", b.prefix),
        "metadata.name=only-b".to_string(),
    ] {
        let listed = a_all
            .list(&ListParams::default().fields(&selector))
            .await
            .unwrap();
        assert!(
            listed.items.is_empty(),
            "{selector}: {:?}",
            names(&listed.items)
        );
    }

    // A collection delete touches only the cluster's own objects.
    let a_kube_system: Api<ConfigMap> = Api::namespaced(a.client.clone(), "kube-system");
    a_kube_system
        .create(&pp, &config_map("kube-system", "only-a", "a"))
        .await
        .unwrap();
    a_kube_system
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    a_nodes
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    let b_config = Api::<ConfigMap>::namespaced(b.client.clone(), "kube-system");
    assert!(b_config.get_opt("only-b").await.unwrap().is_some());
    assert!(a_kube_system.get_opt("only-a").await.unwrap().is_none());
    let b_nodes = Api::<Node>::all(b.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(names(&b_nodes.items), ["node-0"]);

    // RBAC written through the front grants nothing in the backing server, and reads
    // back as written.
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "kubeadm:cluster-admins"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "kubeadm:cluster-admins"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"},
        ],
    }))
    .unwrap();
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "everything"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    }))
    .unwrap();
    let everything_binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "mallory-everything"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "everything"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
    }))
    .unwrap();
    let a_bindings: Api<ClusterRoleBinding> = Api::all(a.client.clone());
    a_bindings.create(&pp, &binding).await.unwrap();
    a_bindings.create(&pp, &everything_binding).await.unwrap();
    let a_roles: Api<ClusterRole> = Api::all(a.client.clone());
    a_roles.create(&pp, &role).await.unwrap();
    let read = a_bindings.get("kubeadm:cluster-admins").await.unwrap();
    assert_eq!(read.role_ref.name, "cluster-admin");
    assert_eq!(read.subjects, binding.subjects);
    assert_eq!(a_roles.get("everything").await.unwrap().rules, role.rules);

    let subject = |user: String, groups: Vec<String>| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user),
            groups: Some(groups),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("list".into()),
                resource: Some("secrets".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let backing_subject = |name: &str| tenancy::backing_subject(&a.prefix, name).unwrap();
    let reviews: Api<SubjectAccessReview> = Api::all(backing.clone());
    for review in [
        subject("mallory".into(), vec!["kubeadm:cluster-admins".into()]),
        subject(
            backing_subject("mallory"),
            vec![backing_subject("kubeadm:cluster-admins")],
        ),
    ] {
        let user = review.spec.user.clone();
        let answer = reviews.create(&pp, &review).await.unwrap();
        assert!(!answer.status.unwrap().allowed, "{user:?} may list Secrets");
    }
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_port_forward_is_an_upgrade_relayed_to_the_clusters_own_pod_or_a_status() {
    let bench = bench().await;
    let a = &bench.a;
    let path = "/api/v1/namespaces/kube-system/pods/etcd-node-0/portforward";
    let send = |upgrade: Option<&'static str>| {
        let mut request = http::Request::post(path);
        if let Some(upgrade) = upgrade {
            request = request
                .header("Connection", "Upgrade")
                .header("Upgrade", upgrade)
                .header("X-Stream-Protocol-Version", "portforward.k8s.io");
        }
        a.client
            .send(request.body(kube::client::Body::empty()).unwrap())
    };
    let status = |response: http::Response<kube::client::Body>| async move {
        let code = response.status();
        let body = response.into_body().collect_bytes().await.unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["kind"], "Status", "{value}");
        (code, value)
    };
    // Not an upgrade, or over HTTP/2 (which has none): a Status, as the API server says.
    let (code, value) = status(send(None).await.unwrap()).await;
    assert_eq!(code, http::StatusCode::BAD_REQUEST);
    assert!(
        value["message"].as_str().unwrap().contains("Upgrade"),
        "{value}"
    );
    let admin = a.ca.client_cert("admin", Some("system:masters")).unwrap();
    let (code, _) = h2_get(a, &admin, path, "*/*").await;
    assert_eq!(code, http::StatusCode::BAD_REQUEST);
    // A real upgrade reaches the backing server for the cluster's own Pod: there is no
    // such Pod, and the backing server's refusal comes back in the cluster's terms.
    let (code, value) = status(send(Some("SPDY/3.1")).await.unwrap()).await;
    assert_eq!(code, http::StatusCode::NOT_FOUND, "{value}");
    assert_eq!(value["reason"], "NotFound");
    assert!(
        !value.to_string().contains(a.prefix.as_str()),
        "the backing namespace shows: {value}"
    );
}

/// Kills the front's process when the test ends, however it ends.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_binary_serves_the_clusters_of_its_file() {
    let assets = Assets::from_env().unwrap();
    let etcd = Etcd::start(&assets).await.unwrap();
    let backing = ApiServer::start(&assets, &etcd, "backing").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("backing.kubeconfig");
    std::fs::write(
        &kubeconfig,
        envtest::kubeconfig_yaml(&backing.admin_kubeconfig()).unwrap(),
    )
    .unwrap();
    let ca = ClusterCa::new("c-ca").unwrap();
    let port = envtest::free_port().unwrap();
    let clusters = dir.path().join("clusters.yaml");
    let list = json!({"clusters": [{
        "cluster": {"namespace": "metal3", "name": "c", "uid": "uid-c"},
        "listen": format!("127.0.0.1:{port}"),
        "hosts": ["127.0.0.1"],
        "caCert": ca.cert_pem(),
        "caKey": ca.key_pem(),
    }]});
    std::fs::write(&clusters, list.to_string()).unwrap();
    let _front = Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_metal3-fakenode-front"))
            .arg("--backing-kubeconfig")
            .arg(&kubeconfig)
            .arg("--clusters")
            .arg(&clusters)
            .arg("--metrics-address")
            .arg("127.0.0.1:0")
            .arg("--log")
            .arg("warn")
            .spawn()
            .unwrap(),
    );

    let cert = ca.client_cert("admin", Some("system:masters")).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let client = envtest::client_for(&envtest::kubeconfig(
        "c",
        &url,
        &ca.cert_pem(),
        "admin",
        &cert,
    ))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.apiserver_version().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the front never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Api::<Node>::all(client)
        .create(&PostParams::default(), &node("node-0", "c"))
        .await
        .unwrap();
    // A front started afresh gives a Cluster the first candidate of its UID.
    let prefix = tenancy::allocate(&key("c"), &Default::default())
        .unwrap()
        .prefix;
    Api::<Node>::all(backing.client().await.unwrap())
        .get(&format!("{prefix}-node-0"))
        .await
        .unwrap();
}

/// A Node with what a kubelet and kubeadm leave on it: four conditions, two addresses,
/// two taints.
fn node_with_status(name: &str) -> Value {
    let condition = |kind: &str, status: &str| {
        json!({"type": kind, "status": status, "reason": "KubeletHasSufficient",
               "lastHeartbeatTime": "2026-01-01T00:00:00Z",
               "lastTransitionTime": "2026-01-01T00:00:00Z"})
    };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"role": "cp"}},
        "spec": {"taints": [
            {"key": "node.cluster.x-k8s.io/uninitialized", "effect": "NoSchedule"},
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
        ]},
        "status": {
            "conditions": [
                condition("MemoryPressure", "False"), condition("DiskPressure", "False"),
                condition("PIDPressure", "False"), condition("Ready", "False"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
        },
    })
}

/// What a patch may change on a Node, without what the server alone writes.
fn patched_fields(node: &Node) -> Value {
    let mut labels = node.metadata.labels.clone().unwrap_or_default();
    labels.remove(CLUSTER_LABEL);
    let status = node.status.clone().unwrap_or_default();
    json!({
        "labels": labels,
        "annotations": node.metadata.annotations,
        "taints": node.spec.as_ref().and_then(|s| s.taints.clone()),
        "conditions": status.conditions,
        "addresses": status.addresses,
    })
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn strategic_merge_patches_merge_as_the_api_server_merges_them() {
    let bench = bench().await;
    let a = &bench.a;
    let pp = PostParams::default();
    let backing = bench.backing.client().await.unwrap();
    // The oracle: the same Node and the same patches straight on the backing server.
    let fronted: Api<Node> = Api::all(a.client.clone());
    let reference: Api<Node> = Api::all(backing.clone());
    for (api, name) in [(&fronted, "smp"), (&reference, "smp-reference")] {
        let node: Node = serde_json::from_value(node_with_status(name)).unwrap();
        api.create(&pp, &node).await.unwrap();
        // The API server drops status on create through the main resource.
        let status = json!({"status": node_with_status(name)["status"]});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let status_patches = [
        // A kubelet's heartbeat: Ready's condition, merged by `type`.
        json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "reason": "KubeletReady", "lastHeartbeatTime": "2026-01-01T00:00:40Z"}]}}),
        // An address added and one changed, merged by `type`.
        json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"},
            {"type": "ExternalIP", "address": "192.0.2.1"}]}}),
        // Directives: an element deleted by key, the order set.
        json!({"status": {
            "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "MemoryPressure"},
                {"type": "PIDPressure"}],
            "conditions": [{"type": "DiskPressure", "$patch": "delete"}],
        }}),
    ];
    let object_patches = [
        // Cluster API's Node patch: labels and annotations from the Machine, the
        // uninitialized taint dropped (taints have no merge key: the list is replaced).
        json!({"metadata": {"labels": {"node-role.kubernetes.io/worker": ""},
            "annotations": {"cluster.x-k8s.io/labels-from-machine": "node-role.kubernetes.io/worker"}},
            "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
        json!({"metadata": {"labels": {"role": null}}}),
    ];
    for patch in &status_patches {
        let via_front = fronted
            .patch_status("smp", &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .unwrap();
        let direct = reference
            .patch_status(
                "smp-reference",
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .unwrap();
        let (mut want, got) = (patched_fields(&direct), patched_fields(&via_front));
        // The Hostname address is the Node's own name.
        want["addresses"] = json!(
            want["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| match a["type"].as_str() {
                    Some("Hostname") => json!({"type": "Hostname", "address": "smp"}),
                    _ => a.clone(),
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(got, want, "after {patch}");
    }
    for patch in &object_patches {
        let via_front = fronted
            .patch("smp", &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .unwrap();
        let direct = reference
            .patch(
                "smp-reference",
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .unwrap();
        assert_eq!(
            patched_fields(&via_front)["taints"],
            patched_fields(&direct)["taints"]
        );
        assert_eq!(
            patched_fields(&via_front)["labels"],
            patched_fields(&direct)["labels"]
        );
        assert_eq!(
            patched_fields(&via_front)["annotations"],
            patched_fields(&direct)["annotations"]
        );
    }
    // Optimistic locking, as Cluster API patches: a stale resourceVersion is a conflict.
    let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}});
    let result = fronted
        .patch("smp", &PatchParams::default(), &Patch::Strategic(&stale))
        .await;
    assert_eq!(status_code(result), 409);
    // A keyed item without its key is refused, as the API server refuses it (which
    // answers 500; the front says it is the client's fault).
    let keyless = json!({"status": {"conditions": [{"status": "True"}]}});
    let result = fronted
        .patch_status("smp", &PatchParams::default(), &Patch::Strategic(&keyless))
        .await;
    assert_eq!(status_code(result), 400);
    let direct = reference
        .patch_status(
            "smp-reference",
            &PatchParams::default(),
            &Patch::Strategic(&keyless),
        )
        .await;
    assert!(direct.is_err(), "{direct:?}");
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn protobuf_writes_of_a_real_client_land_in_the_clusters_view_only() {
    let bench = bench().await;
    let (a, b) = (&bench.a, &bench.b);
    let dir = tempfile::tempdir().unwrap();
    let admin = a.ca.client_cert("admin", Some("system:masters")).unwrap();
    let kubeconfig = dir.path().join("a.kubeconfig");
    std::fs::write(
        &kubeconfig,
        envtest::kubeconfig_yaml(&envtest::kubeconfig(
            "a",
            &a.url(),
            &a.ca.cert_pem(),
            "admin",
            &admin,
        ))
        .unwrap(),
    )
    .unwrap();
    // client-go with protobuf bodies, as controller-runtime writes built-in kinds.
    let written = metal3_fakenode_testkit::kubelet_probe::KubeletProbe::from_assets()
        .unwrap()
        .protobuf_writes(&kubeconfig)
        .await
        .unwrap();
    assert_eq!(written["secret"]["metadata"]["namespace"], "kube-system");
    assert_eq!(written["secret"]["type"], "bootstrap.kubernetes.io/token");
    assert_eq!(
        written["configMap"]["data"]["ClusterConfiguration"],
        "kubernetesVersion: v1.36.0\n"
    );
    assert_eq!(
        written["clusterRoleBinding"]["roleRef"]["name"],
        "cluster-admin"
    );
    assert_eq!(written["nodeDeleted"], true);

    // Cluster a reads them back as written; cluster b sees none of them.
    let secrets = |c: &kube::Client| {
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.clone(), "kube-system")
    };
    let secret = secrets(&a.client)
        .get("bootstrap-token-abcdef")
        .await
        .unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["token-id"].0, b"abcdef");
    assert_eq!(data["usage-bootstrap-authentication"].0, b"true");
    assert_eq!(
        status_code(secrets(&b.client).get("bootstrap-token-abcdef").await),
        404
    );
    let config_maps = |c: &kube::Client| Api::<ConfigMap>::namespaced(c.clone(), "kube-system");
    assert_eq!(
        config_maps(&a.client)
            .get("kubeadm-config")
            .await
            .unwrap()
            .data
            .unwrap()["ClusterConfiguration"],
        "kubernetesVersion: v1.36.0\n"
    );
    assert_eq!(
        status_code(config_maps(&b.client).get("kubeadm-config").await),
        404
    );
    assert!(
        Api::<Node>::all(a.client.clone())
            .get_opt("probe-node")
            .await
            .unwrap()
            .is_none()
    );

    // In the backing server: in cluster a's namespace, labelled as a's.
    let backing = bench.backing.client().await.unwrap();
    let stored = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        backing.clone(),
        &format!("{}-kube-system", a.prefix),
    )
    .get("bootstrap-token-abcdef")
    .await
    .unwrap();
    assert_eq!(
        stored.metadata.labels.unwrap()[CLUSTER_LABEL],
        a.prefix.as_str()
    );
    // The binding to cluster-admin, written in protobuf, grants nothing there either.
    let bindings: Vec<ClusterRoleBinding> = Api::<ClusterRoleBinding>::all(backing)
        .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={}", a.prefix)))
        .await
        .unwrap()
        .items;
    assert!(!bindings.is_empty());
    for binding in &bindings {
        assert_ne!(binding.role_ref.name, "cluster-admin", "{binding:?}");
    }
}

/// Hostile and malformed bodies on the new input surfaces (protobuf bodies, strategic
/// merge patches): each is refused with a client error for that request alone; the
/// cluster and its neighbour are served as before.
#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn malformed_protobuf_bodies_and_strategic_patches_are_refused_one_by_one() {
    let bench = bench().await;
    let (a, b) = (&bench.a, &bench.b);
    let pp = PostParams::default();
    Api::<Node>::all(a.client.clone())
        .create(&pp, &node("hostile", "a"))
        .await
        .unwrap();
    // A condition to merge into: a keyed item without its key is refused only then (on an
    // absent list the API server, and the front, take the patch's list as it is).
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    Api::<Node>::all(a.client.clone())
        .patch_status("hostile", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    let send = |method: http::Method, path: &str, content_type: &str, body: Vec<u8>| {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body)
            .unwrap();
        let client = a.client.clone();
        async move {
            let answer = client
                .send(request.map(kube::client::Body::from))
                .await
                .unwrap();
            answer.status().as_u16()
        }
    };
    let protobuf = "application/vnd.kubernetes.protobuf";
    let configmaps = "/api/v1/namespaces/kube-system/configmaps";
    // Not protobuf at all; the magic and then nothing; the magic and a truncated envelope;
    // a kind the decoder does not know (a Node, whose envelope names it).
    let mut unknown_kind = b"k8s\x00".to_vec();
    unknown_kind.extend([
        0x0a, 0x0a, 0x0a, 0x02, b'v', b'1', 0x12, 0x04, b'N', b'o', b'd', b'e',
    ]);
    for body in [
        b"garbage".to_vec(),
        b"k8s\x00".to_vec(),
        b"k8s\x00\x0a\xff\xff".to_vec(),
        unknown_kind,
    ] {
        let code = send(http::Method::POST, configmaps, protobuf, body.clone()).await;
        assert_eq!(code, 415, "{body:?}");
    }
    let smp = "application/strategic-merge-patch+json";
    let deep = format!(
        "{}{}",
        "{\"a\":".repeat(500),
        "1".to_string() + &"}".repeat(500)
    );
    for patch in [
        "[1, 2]".to_string(),
        "not json".to_string(),
        r#"{"metadata": {"$patch": "nonsense"}}"#.to_string(),
        r#"{"status": {"conditions": [{"status": "True"}]}}"#.to_string(),
        r#"{"status": {"conditions": [[1]]}}"#.to_string(),
        format!(r#"{{"spec": {deep}}}"#),
    ] {
        let code = send(
            http::Method::PATCH,
            "/api/v1/nodes/hostile/status",
            smp,
            patch.clone().into_bytes(),
        )
        .await;
        assert_eq!(code, 400, "{patch}");
    }
    // Nothing of it stuck: both clusters answer, and the Node is as it was.
    let stored = Api::<Node>::all(a.client.clone())
        .get("hostile")
        .await
        .unwrap();
    assert_eq!(stored.metadata.labels.unwrap()[LABEL_NAME], "a");
    let conditions = stored.status.and_then(|s| s.conditions).unwrap();
    assert_eq!(
        conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect::<Vec<_>>(),
        [("Ready", "False")]
    );
    assert!(
        Api::<Node>::all(b.client.clone())
            .list(&ListParams::default())
            .await
            .is_ok()
    );
}
