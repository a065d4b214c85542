//! The Cluster watcher against real API servers: a management cluster with the upstream
//! CRDs, and a backing server. The watcher runs with nothing but a token of the deploy's
//! ServiceAccount for the front (deploy/components/tenancy-front), so every scenario
//! also proves its ClusterRole is enough. A Cluster naming the front is served on its
//! port with its CA and gets its prefix recorded; a prefix already recorded is kept; each
//! Cluster refused (two on one endpoint, an unusable CA) gets one Event, and one keeping
//! a contested endpoint is told; a deleted or recreated Cluster's objects leave the
//! backing server, also when it was deleted while no front ran. Last, the two identities: the front's reads Secrets, the
//! controller's role is unchanged and patches no Cluster.
//!
//! The scenarios take turns (`ONE_FRONT`): a front removes the objects of every Cluster
//! gone, whichever front served it, and they share one backing server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::AuthInfo;
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use metal3_fakenode_testkit::envtest::certs::ClusterCa;
use metal3_fakenode_testkit::envtest::{self, Assets, Environment};
use serde_json::{Value, json};
use tenancy::{CLUSTER_LABEL, PREFIX_ANNOTATION};
use tokio::sync::OnceCell;

use front::Front;
use front::cluster_watch::{self, CLUSTER_NAME_LABEL, WatchConfig};
use front::observe::FrontAddress;

const LIMIT: Duration = Duration::from_secs(60);
const DEPLOY_NAMESPACE: &str = "metal3";
const FRONT_IDENTITY: &str = "metal3-fakenode-front";
const CONTROLLER_IDENTITY: &str = "metal3-fakenode";

static ONE_FRONT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One management server with the CRDs, one backing server.
async fn env() -> &'static Environment {
    static ENV: OnceCell<Environment> = OnceCell::const_new();
    ENV.get_or_init(|| async {
        let assets = Assets::from_env().unwrap_or_else(|e| panic!("{e}"));
        Environment::start(assets, 1)
            .await
            .unwrap_or_else(|e| panic!("starting the local control planes: {e}"))
    })
    .await
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- the deploy's identities -------------------------------------------------------------

/// `kustomize build` of a directory of the repository, with the assets' kustomize.
async fn render(dir: &str) -> Vec<Value> {
    let kustomize = env().await.assets.crd_dir().with_file_name("kustomize");
    assert!(
        kustomize.is_file(),
        "{} is missing: rebuild the assets",
        kustomize.display()
    );
    let path = metal3_fakenode_testkit::repo_root().join(dir);
    let out = tokio::process::Command::new(&kustomize)
        .arg("build")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8(out.stdout).unwrap())
        .unwrap()
        .into_iter()
        .filter(|o| !o.is_null())
        .collect()
}

/// Server-side apply with strict validation; `dry_run` only checks.
async fn apply(client: &kube::Client, object: &Value, dry_run: bool) {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            object["metadata"]["namespace"].as_str().unwrap(),
            &resource,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply("front-watch-test")
        .force()
        .validation_strict();
    if dry_run {
        params = params.dry_run();
    }
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

/// Applies the overlay's Namespace and identities (both ServiceAccounts, ClusterRoles
/// and bindings) and dry-runs the rest: no kubelet runs here.
async fn deploy() {
    static DEPLOYED: OnceCell<()> = OnceCell::const_new();
    DEPLOYED
        .get_or_init(|| async {
            let admin = env().await.management.client().await.unwrap();
            let objects = render("deploy/overlays/tenancy-front").await;
            for kind in [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
            ] {
                for object in objects.iter().filter(|o| o["kind"] == kind) {
                    apply(&admin, object, false).await;
                }
            }
            for kind in ["Service", "Deployment"] {
                for object in objects.iter().filter(|o| o["kind"] == kind) {
                    apply(&admin, object, true).await;
                }
            }
        })
        .await;
}

/// A management client holding nothing but a token of `service_account`.
async fn identity(service_account: &str) -> kube::Client {
    deploy().await;
    let env = env().await;
    let admin = env.management.client().await.unwrap();
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }))
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin, DEPLOY_NAMESPACE)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap();
    let mut kubeconfig = env.management.admin_kubeconfig();
    for named in &mut kubeconfig.auth_infos {
        named.auth_info = Some(AuthInfo {
            token: Some(token.clone().into()),
            ..AuthInfo::default()
        });
    }
    envtest::client_for(&kubeconfig).await.unwrap()
}

// ---- a front and its watcher --------------------------------------------------------------

struct Running {
    front: Arc<Front>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<front::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(LIMIT, &mut self.task)
            .await
            .expect("the watcher stops")
            .expect("the watcher did not panic")
            .expect("the watcher ended without an error");
    }
}

/// A front on the backing server, serving Clusters that name `host` (a loopback address
/// of its own per scenario), its watcher running as the deploy's identity.
async fn start_front(host: &str) -> Running {
    let env = env().await;
    let front = Arc::new(
        Front::from_kubeconfig(env.workloads[0].admin_kubeconfig())
            .await
            .unwrap(),
    );
    let management = identity(FRONT_IDENTITY).await;
    let config = WatchConfig {
        address: FrontAddress {
            host: host.into(),
            ports: 1024..=65535,
            bind: host.parse::<IpAddr>().unwrap(),
        },
        debounce: Duration::from_millis(100),
        instance: Some("test".into()),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cluster_watch::run(
        management,
        front.clone(),
        config,
        ready.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    eventually("the watcher to be ready", || async {
        ready.load(Ordering::Relaxed).then_some(())
    })
    .await;
    Running {
        front,
        stop: Some(stop),
        task,
    }
}

// ---- the management cluster's objects -----------------------------------------------------

fn clusters(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cluster.x-k8s.io",
        "v1beta2",
        "Cluster",
    ));
    Api::namespaced_with(client.clone(), ns, &resource)
}

async fn namespace(admin: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("{e}"),
    }
}

/// The `<cluster>-ca` Secret as CAPI writes it (labelled with the cluster's name).
async fn ca_secret(admin: &kube::Client, ns: &str, cluster: &str, ca: &ClusterCa) {
    ca_secret_pem(admin, ns, cluster, &ca.cert_pem(), ca.key_pem()).await;
}

async fn ca_secret_pem(admin: &kube::Client, ns: &str, cluster: &str, cert: &str, key: &str) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{cluster}-ca")),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                CLUSTER_NAME_LABEL.into(),
                cluster.into(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("tls.crt".into(), ByteString(cert.as_bytes().to_vec())),
            ("tls.key".into(), ByteString(key.as_bytes().to_vec())),
        ])),
        type_: Some("cluster.x-k8s.io/secret".into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A Cluster whose control plane endpoint is `host:port`; its UID.
async fn cluster(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    host: &str,
    port: u16,
    annotations: Value,
) -> String {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "controlPlaneEndpoint": {"host": host, "port": port},
            "clusterNetwork": {
                "pods": {"cidrBlocks": ["192.168.0.0/18"]},
                "services": {"cidrBlocks": ["10.96.0.0/12"]},
            },
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io",
                                  "kind": "Metal3Cluster", "name": name},
            "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io",
                                "kind": "KubeadmControlPlane", "name": name},
        },
    }))
    .unwrap();
    clusters(admin, ns)
        .create(&PostParams::default(), &object)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

/// The prefix recorded on a Cluster, once there.
async fn recorded_prefix(admin: &kube::Client, ns: &str, name: &str, uid: &str) -> String {
    eventually("the prefix recorded on the Cluster", || async {
        let object = clusters(admin, ns).get_opt(name).await.unwrap()?;
        if object.metadata.uid.as_deref() != Some(uid) {
            return None;
        }
        object.metadata.annotations?.get(PREFIX_ANNOTATION).cloned()
    })
    .await
}

/// A client of a served cluster, as its kubeconfig would make it.
async fn tenant(host: &str, port: u16, ca: &ClusterCa) -> kube::Client {
    let cert = ca.client_cert("admin", Some("system:masters")).unwrap();
    let url = format!("https://{host}:{port}");
    let client = envtest::client_for(&envtest::kubeconfig(
        "t",
        &url,
        &ca.cert_pem(),
        "admin",
        &cert,
    ))
    .await
    .unwrap();
    eventually("the cluster's endpoint to answer", || async {
        client.apiserver_version().await.ok()
    })
    .await;
    client
}

/// Every object of every isolated kind carrying `prefix`'s label in the backing server.
async fn backing_objects(prefix: &str) -> Vec<String> {
    let backing = env().await.workloads[0].client().await.unwrap();
    let mut found = Vec::new();
    for resource in tenancy::kinds::RESOURCES {
        let api: Api<DynamicObject> =
            Api::all_with(backing.clone(), &front::removal::api_resource(resource));
        let list = api
            .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={prefix}")))
            .await
            .unwrap();
        found.extend(list.items.iter().map(|o| {
            format!(
                "{} {}",
                resource.kind,
                o.metadata.name.clone().unwrap_or_default()
            )
        }));
    }
    found
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

// ---- the scenarios -------------------------------------------------------------------------

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_cluster_naming_the_front_is_served_recorded_and_its_objects_removed_when_it_goes() {
    let _turn = ONE_FRONT.lock().await;
    let host = "127.0.0.2";
    let running = start_front(host).await;
    let admin = env().await.management.client().await.unwrap();
    let ns = "watch-served";
    namespace(&admin, ns).await;
    let port = envtest::free_port().unwrap();
    let ca = ClusterCa::new("a-ca").unwrap();
    ca_secret(&admin, ns, "a", &ca).await;
    let uid = cluster(&admin, ns, "a", host, port, json!({})).await;

    // Served on its port with its CA, its prefix recorded on the Cluster.
    let prefix = recorded_prefix(&admin, ns, "a", &uid).await;
    let client = tenant(host, port, &ca).await;
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &config_map("settings"))
        .await
        .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node("node-0"))
        .await
        .unwrap();
    let before = backing_objects(&prefix).await;
    assert!(
        before.contains(&format!("Node {prefix}-node-0")),
        "{before:?}"
    );
    assert!(
        before.contains(&"ConfigMap settings".to_string()),
        "{before:?}"
    );
    // A watch relayed is counted while open.
    let watch = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .watch(&kube::api::WatchParams::default().timeout(30), "0")
        .await
        .unwrap();
    let mut watch = Box::pin(watch);
    futures::StreamExt::next(&mut watch).await.unwrap().unwrap();
    let metrics = running.front.metrics().render().unwrap();
    assert!(
        metrics.contains("metal3_fakenode_front_watches_open 1"),
        "{metrics}"
    );
    drop(watch);
    let metrics = running.front.metrics().render().unwrap();
    assert!(
        metrics.contains("metal3_fakenode_front_served_clusters 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metal3_fakenode_front_requests_total{code=\"201\",verb=\"create\"}"),
        "{metrics}"
    );

    // Recreated under the same name: a new prefix, an empty cluster, the old objects gone.
    clusters(&admin, ns)
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the listener to stop", || async {
        tokio::net::TcpStream::connect((host, port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let uid = cluster(&admin, ns, "a", host, port, json!({})).await;
    let new_prefix = recorded_prefix(&admin, ns, "a", &uid).await;
    assert_ne!(new_prefix, prefix);
    let client = tenant(host, port, &ca).await;
    let seen = Api::<ConfigMap>::namespaced(client, "default")
        .get_opt("settings")
        .await
        .unwrap();
    assert!(seen.is_none(), "a recreated cluster starts empty");
    eventually("the old incarnation's objects to be removed", || async {
        backing_objects(&prefix).await.is_empty().then_some(())
    })
    .await;
    assert!(
        !running
            .front
            .recorded()
            .await
            .keys()
            .any(|p| p.as_str() == prefix)
    );

    // Deleted: the listener stops, the objects go, the prefix is retired.
    clusters(&admin, ns)
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the listener to stop", || async {
        tokio::net::TcpStream::connect((host, port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    eventually("the deleted cluster's objects to be removed", || async {
        backing_objects(&new_prefix).await.is_empty().then_some(())
    })
    .await;
    eventually("the prefix to be retired", || async {
        let recorded = running.front.recorded().await;
        (!recorded.keys().any(|p| p.as_str() == new_prefix)).then_some(())
    })
    .await;
    let metrics = running.front.metrics().render().unwrap();
    assert!(
        metrics.contains("metal3_fakenode_front_clusters_removed_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metal3_fakenode_front_served_clusters 0"),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_prefix_recorded_on_a_cluster_is_kept_and_a_cluster_deleted_while_no_front_ran_is_removed()
 {
    let _turn = ONE_FRONT.lock().await;
    let host = "127.0.0.3";
    let admin = env().await.management.client().await.unwrap();
    let ns = "watch-recorded";
    namespace(&admin, ns).await;
    let port = envtest::free_port().unwrap();
    let ca = ClusterCa::new("r-ca").unwrap();
    ca_secret(&admin, ns, "r", &ca).await;
    // As a front that served it before a restart left it: not the prefix a fresh front
    // would compute for this UID.
    let uid = cluster(
        &admin,
        ns,
        "r",
        host,
        port,
        json!({PREFIX_ANNOTATION: "tq1w2e"}),
    )
    .await;
    let running = start_front(host).await;
    let client = tenant(host, port, &ca).await;
    Api::<Node>::all(client)
        .create(&PostParams::default(), &node("node-0"))
        .await
        .unwrap();
    let objects = backing_objects("tq1w2e").await;
    assert!(
        objects.contains(&"Node tq1w2e-node-0".to_string()),
        "{objects:?}"
    );
    assert_eq!(recorded_prefix(&admin, ns, "r", &uid).await, "tq1w2e");
    // Deleted while no front runs: the next front finds its objects in the backing server,
    // recorded on no Cluster, and removes them.
    running.stop().await;
    clusters(&admin, ns)
        .delete("r", &DeleteParams::default())
        .await
        .unwrap();
    let running = start_front(host).await;
    eventually("the objects to be removed", || async {
        backing_objects("tq1w2e").await.is_empty().then_some(())
    })
    .await;
    eventually("the removal to be counted", || async {
        let metrics = running.front.metrics().render().unwrap();
        metrics
            .contains("metal3_fakenode_front_clusters_removed_total 1")
            .then_some(())
    })
    .await;
    running.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn each_cluster_refused_gets_one_event_two_on_one_endpoint_or_an_unusable_ca() {
    let _turn = ONE_FRONT.lock().await;
    let host = "127.0.0.4";
    let running = start_front(host).await;
    let admin = env().await.management.client().await.unwrap();
    let ns = "watch-shared";
    namespace(&admin, ns).await;
    let port = envtest::free_port().unwrap();
    for name in ["x", "y"] {
        ca_secret(
            &admin,
            ns,
            name,
            &ClusterCa::new(&format!("{name}-ca")).unwrap(),
        )
        .await;
        cluster(&admin, ns, name, host, port, json!({})).await;
    }
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    let said = |reason: &'static str, name: &'static str| {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
                .collect::<Vec<_>>()
        }
    };
    for name in ["x", "y"] {
        eventually("an Event on each Cluster", || async {
            (said("NotServedEndpointShared", name).await.len() == 1).then_some(())
        })
        .await;
    }
    // More passes (a change to each Cluster) say nothing again.
    for name in ["x", "y"] {
        let patch = json!({"metadata": {"labels": {"touched": "yes"}}});
        clusters(&admin, ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = running.front.metrics().render().unwrap();
    assert!(
        metrics.contains("metal3_fakenode_front_refusals_total{reason=\"endpoint_shared\"} 2"),
        "{metrics}"
    );
    for name in ["x", "y"] {
        let once = said("NotServedEndpointShared", name).await;
        assert_eq!(once.len(), 1);
        assert_eq!(once[0].series.as_ref().map(|s| s.count), None, "said once");
    }
    assert!(
        tokio::net::TcpStream::connect((host, port)).await.is_err(),
        "neither is served"
    );

    // A Cluster already served keeps its endpoint; the newcomer is refused, and both
    // are told.
    let port = envtest::free_port().unwrap();
    let ca = ClusterCa::new("k-ca").unwrap();
    ca_secret(&admin, ns, "k", &ca).await;
    let uid = cluster(&admin, ns, "k", host, port, json!({})).await;
    let prefix = recorded_prefix(&admin, ns, "k", &uid).await;
    ca_secret(&admin, ns, "n", &ClusterCa::new("n-ca").unwrap()).await;
    cluster(&admin, ns, "n", host, port, json!({})).await;
    eventually("an Event on the newcomer", || async {
        (said("NotServedEndpointShared", "n").await.len() == 1).then_some(())
    })
    .await;
    eventually("an Event on the Cluster keeping the endpoint", || async {
        (said("EndpointContested", "k").await.len() == 1).then_some(())
    })
    .await;
    tenant(host, port, &ca).await;
    for name in ["k", "n"] {
        clusters(&admin, ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    // A CA Secret whose key is no key: refused, and said.
    let port = envtest::free_port().unwrap();
    let bad = ClusterCa::new("bad-ca").unwrap();
    ca_secret_pem(&admin, ns, "bad", &bad.cert_pem(), "not a key").await;
    cluster(&admin, ns, "bad", host, port, json!({})).await;
    eventually("an Event on the Cluster with an unusable CA", || async {
        (said("NotServedCa", "bad").await.len() == 1).then_some(())
    })
    .await;
    // Left for the next scenario's front, they would count as its removals.
    eventually("the served cluster's objects to be removed", || async {
        backing_objects(&prefix).await.is_empty().then_some(())
    })
    .await;
    running.stop().await;
}

async fn allowed(
    admin: &kube::Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{DEPLOY_NAMESPACE}:{user}")),
            groups: Some(vec!["system:serviceaccounts".into()]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: Some("some-namespace".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_front_holds_the_ca_keys_and_the_controllers_identity_gains_nothing() {
    deploy().await;
    let admin = env().await.management.client().await.unwrap();
    let front = |verb, group, resource| allowed(&admin, FRONT_IDENTITY, verb, group, resource);
    // What the front's watcher needs, and no more.
    assert!(front("list", "", "secrets").await);
    assert!(front("watch", "", "secrets").await);
    assert!(front("patch", "cluster.x-k8s.io", "clusters").await);
    assert!(front("create", "events.k8s.io", "events").await);
    for (verb, group, resource) in [
        ("get", "", "secrets"),
        ("create", "", "secrets"),
        ("patch", "", "secrets"),
        ("delete", "cluster.x-k8s.io", "clusters"),
        ("update", "cluster.x-k8s.io", "clusters"),
        ("list", "cluster.x-k8s.io", "machines"),
        ("create", "", "pods"),
    ] {
        assert!(
            !front(verb, group, resource).await,
            "the front may {verb} {resource}"
        );
    }
    // The controller's role is what it was: no `get` of a Secret, no write to a Cluster,
    // and the front's binding names only the front's ServiceAccount.
    let controller =
        |verb, group, resource| allowed(&admin, CONTROLLER_IDENTITY, verb, group, resource);
    for (verb, group, resource) in [
        ("get", "", "secrets"),
        ("create", "", "secrets"),
        ("patch", "cluster.x-k8s.io", "clusters"),
        ("get", "cluster.x-k8s.io", "clusters"),
    ] {
        assert!(
            !controller(verb, group, resource).await,
            "the controller may {verb} {resource}"
        );
    }
    let objects = render("deploy/overlays/tenancy-front").await;
    let base = render("deploy").await;
    let role = |objects: &[Value], name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        role(&objects, CONTROLLER_IDENTITY),
        role(&base, CONTROLLER_IDENTITY)
    );
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRoleBinding" && o["metadata"]["name"] == FRONT_IDENTITY)
        .unwrap();
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": FRONT_IDENTITY, "namespace": DEPLOY_NAMESPACE}])
    );

    // The Deployment's variables are the binary's, and its Pod is admitted where the
    // "restricted" Pod Security Standard is enforced.
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == FRONT_IDENTITY)
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let command = <front::cli::Args as clap::CommandFactory>::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for var in pod["containers"][0]["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        assert!(
            known.iter().any(|k| k == name),
            "{name} is not read by the front"
        );
    }
    let ns = "front-restricted";
    let namespace = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    });
    apply(&admin, &namespace, false).await;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": FRONT_IDENTITY, "namespace": ns},
        "spec": pod,
    });
    apply(&admin, &pod, true).await;
}

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
async fn the_binary_watches_clusters_and_reports_on_its_own_port() {
    let _turn = ONE_FRONT.lock().await;
    let env = env().await;
    let host = "127.0.0.5";
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, kubeconfig: &kube::config::Kubeconfig| {
        let path = dir.path().join(name);
        std::fs::write(&path, envtest::kubeconfig_yaml(kubeconfig).unwrap()).unwrap();
        path
    };
    let backing = write("backing", &env.workloads[0].admin_kubeconfig());
    let management = write("management", &env.management.admin_kubeconfig());
    let metrics = format!("127.0.0.1:{}", envtest::free_port().unwrap());
    let _front = Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_metal3-fakenode-front"))
            .args(["--backing-kubeconfig"])
            .arg(&backing)
            .args(["--management-kubeconfig"])
            .arg(&management)
            .args(["--host", host, "--bind", host, "--ports", "1024-65535"])
            .args(["--metrics-address", &metrics, "--debounce-ms", "100"])
            .args(["--log", "warn"])
            .spawn()
            .unwrap(),
    );
    eventually("/readyz to answer 200", || async {
        let (code, _) = metal3_fakenode_testkit::probe::get(&metrics, "/readyz")
            .await
            .ok()?;
        (code == 200).then_some(())
    })
    .await;

    let admin = env.management.client().await.unwrap();
    let ns = "watch-binary";
    namespace(&admin, ns).await;
    let port = envtest::free_port().unwrap();
    let ca = ClusterCa::new("bin-ca").unwrap();
    ca_secret(&admin, ns, "bin", &ca).await;
    let uid = cluster(&admin, ns, "bin", host, port, json!({})).await;
    let prefix = recorded_prefix(&admin, ns, "bin", &uid).await;
    let client = tenant(host, port, &ca).await;
    Api::<Node>::all(client)
        .create(&PostParams::default(), &node("node-0"))
        .await
        .unwrap();
    let (code, text) = metal3_fakenode_testkit::probe::get(&metrics, "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        text.contains("metal3_fakenode_front_served_clusters 1"),
        "{text}"
    );
    assert!(
        text.contains("metal3_fakenode_front_requests_total{code=\"201\",verb=\"create\"} 1"),
        "{text}"
    );
    clusters(&admin, ns)
        .delete("bin", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted cluster's objects to be removed", || async {
        backing_objects(&prefix).await.is_empty().then_some(())
    })
    .await;
}
