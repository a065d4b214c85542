//! deploy/ against a real API server. The manifests render with kustomize (built from the
//! Go module proxy like the control plane, so no kubectl is needed); every object of the
//! base and of the overlays passes a strict server-side dry-run, the ServiceMonitor
//! against the real upstream CRD; the Pod meets the "restricted" Pod Security Standard;
//! and the controller, in-process and as the real binary, does its whole job with nothing
//! but a token of the deploy's ServiceAccount, and no more. The scale-out overlays are run
//! too: a replica of the leader-election Deployment and a shard of the StatefulSet, as
//! their Pods would run, lead on their Lease with the component's Role, which grants
//! nothing elsewhere.
//!
//! The tests that run a controller take turns (`ONE_CONTROLLER`): the Deployment's
//! controller watches all namespaces, and two at once would race for the same machines.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Parser;
use common::cluster_with_kubeconfig as cluster;
use common::{admin_yaml, events, eventually, ready_node, unique};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{self, Scope};
use metal3_fakenode::cli::{Cli, Command};
use metal3_fakenode::shard::Shard;
use metal3_fakenode::telemetry::LogFormat;
use metal3_fakenode_testkit::envtest::{self, ApiServer};
use metal3_fakenode_testkit::simulate::world::{self, MachineSpec};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Where deploy/ puts the controller.
const NAMESPACE: &str = "metal3";
/// The ServiceAccount, ClusterRole(Binding), Service and Deployment are all called this.
const NAME: &str = "metal3-fakenode";
const MANAGER: &str = "metal3-fakenode-deploy-test";
const LIMIT: Duration = Duration::from_secs(60);

static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- rendering and applying ------------------------------------------------------------

/// `kustomize build <dir>` (relative to the repository) with the assets' kustomize.
async fn render(dir: &str) -> Vec<Value> {
    let env = common::env().await;
    // hack/envtest-assets.sh builds kustomize next to the CRDs.
    let kustomize = env.assets.crd_dir().with_file_name("kustomize");
    assert!(
        kustomize.is_file(),
        "{} is missing: rebuild the assets with `make envtest` (hack/envtest-assets.sh)",
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
        "kustomize build {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut objects: Vec<Value> = serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("kustomize build {dir} is not YAML: {e}"))
        .into_iter()
        .filter(|o| !o.is_null())
        .collect();
    objects.sort_by_key(|o| (kind(o).to_string(), name(o).to_string()));
    objects
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn kinds(objects: &[Value]) -> Vec<&str> {
    objects.iter().map(kind).collect()
}

/// The only object of `kind`.
fn one<'a>(objects: &'a [Value], kind_: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| kind(o) == kind_).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {kind_} in {:?}",
        kinds(objects)
    );
    found[0]
}

fn labels(object: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default()
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// Server-side apply with strict field validation (`kubectl apply --server-side`): an
/// unknown or misspelt field is an error instead of being silently dropped.
async fn apply(
    client: &kube::Client,
    object: &Value,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind(object));
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_else(|| panic!("{} {} has no namespace", kind(object), name(object)));
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply(MANAGER).force().validation_strict();
    if dry_run {
        params = params.dry_run();
    }
    api.patch(name(object), &params, &Patch::Apply(object))
        .await
}

fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

// ---- the deploy's identity -------------------------------------------------------------

/// The controller as the Deployment runs it: a real ServiceAccount token.
struct Identity {
    token: String,
    /// A kubeconfig holding only the token (and the server's CA).
    kubeconfig: String,
    client: kube::Client,
}

/// Really applies the rendered Namespace, ServiceAccount, ClusterRole and
/// ClusterRoleBinding (as `kubectl apply -k deploy/` would; the Deployment is left out,
/// no kubelet runs here), then mints a token for the ServiceAccount with the TokenRequest
/// API, as the kubelet does for the Pod.
async fn service_account() -> Identity {
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let objects = render("deploy").await;
    for kind_ in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        apply(&admin, one(&objects, kind_), false)
            .await
            .unwrap_or_else(|e| panic!("applying the {kind_}: {e}"));
    }
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }))
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin, NAMESPACE)
        .create_token_request(NAME, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap_or_default();
    assert!(!token.is_empty(), "the TokenRequest returned a token");
    let kubeconfig = token_kubeconfig(&env.management, &token);
    let client = envtest::client_for(&Kubeconfig::from_yaml(&kubeconfig).unwrap())
        .await
        .unwrap();
    Identity {
        token,
        kubeconfig,
        client,
    }
}

fn token_kubeconfig(server: &ApiServer, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: management
    cluster:
      server: {url}
      certificate-authority-data: {ca}
users:
  - name: {NAME}
    user:
      token: {token}
contexts:
  - name: {NAME}
    context: {{cluster: management, user: {NAME}}}
current-context: {NAME}
",
        url = server.url(),
        ca = BASE64.encode(server.ca_pem()),
    )
}

// ---- the world the controller works on -------------------------------------------------

// ---- the manifests ---------------------------------------------------------------------

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_base_and_the_prometheus_operator_overlay_pass_a_strict_server_side_dry_run() {
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let base = render("deploy").await;
    let overlay = render("deploy/overlays/prometheus-operator").await;
    assert_eq!(
        kinds(&base),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Namespace",
            "Service",
            "ServiceAccount"
        ],
        "the base applies without prometheus-operator: no ServiceMonitor"
    );
    // The overlay is the base plus the ServiceMonitor, the rest unchanged.
    let mut base_and_monitor = base.clone();
    base_and_monitor.push(one(&overlay, "ServiceMonitor").clone());
    base_and_monitor.sort_by_key(|o| (kind(o).to_string(), name(o).to_string()));
    assert_eq!(overlay, base_and_monitor);

    // A dry-run still goes through admission, which wants the namespace to exist.
    apply(&admin, one(&base, "Namespace"), false).await.unwrap();
    for object in &overlay {
        let accepted = apply(&admin, object, true)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", kind(object), name(object)));
        assert_eq!(accepted.metadata.name.as_deref(), Some(name(object)));
    }

    // The dry-run is strict, so it would have caught a misspelt field: in a built-in
    // type, and (against the real CRD schema) in the ServiceMonitor.
    let mut typo = one(&base, "Deployment").clone();
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] =
        json!(true);
    let error = apply(&admin, &typo, true).await.unwrap_err();
    assert!(
        error.to_string().contains("readOnlyRootFileSystem"),
        "{error}"
    );
    let mut typo = one(&overlay, "ServiceMonitor").clone();
    typo["spec"]["endpoints"][0]["scrapeInterval"] = json!("30s");
    let error = apply(&admin, &typo, true).await.unwrap_err();
    assert!(error.to_string().contains("scrapeInterval"), "{error}");
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_manifests_fit_the_binary_each_other_and_the_restricted_pod_security_standard() {
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let objects = render("deploy/overlays/prometheus-operator").await;
    let deployment = one(&objects, "Deployment");
    let service = one(&objects, "Service");
    let monitor = one(&objects, "ServiceMonitor");
    let account = one(&objects, "ServiceAccount");
    for object in objects.iter().filter(|o| kind(o) != "Namespace") {
        let labels = labels(object);
        assert_eq!(
            labels.get("app.kubernetes.io/name").map(String::as_str),
            Some(NAME),
            "{}",
            kind(object)
        );
        for key in ["app.kubernetes.io/component", "app.kubernetes.io/part-of"] {
            assert!(labels.contains_key(key), "{} has no {key}", kind(object));
        }
        if object["metadata"].get("namespace").is_some() {
            assert_eq!(
                object["metadata"]["namespace"],
                NAMESPACE,
                "{}",
                kind(object)
            );
        }
    }

    // No leader election: one replica, never two during a rollout.
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], name(account));
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The arguments are the real binary's, and it serves where the probes look.
    let mut argv = vec![NAME.to_string()];
    argv.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    // `run` is the binary's only subcommand: parsing proves the Deployment runs it.
    let Command::Run(args) = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the Deployment's args {argv:?}: {e}"))
        .command;
    assert_eq!(args.log_format, LogFormat::Json);
    let ports: BTreeMap<String, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["metrics"], 8080);
    assert_eq!(
        u64::from(args.metrics_bind_address.port()),
        ports["metrics"]
    );
    assert!(
        args.metrics_bind_address.ip().is_unspecified(),
        "reachable by the kubelet"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        let port = match &get["port"] {
            Value::String(name) => ports[name.as_str()],
            number => number.as_u64().unwrap(),
        };
        assert_eq!(port, 8080, "{probe}");
    }
    // The Event reporting instance.
    let pod_name = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("POD_NAME is set");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let resources = &container["resources"];
    for (kind_, resource) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            resources[kind_][resource].is_string(),
            "{kind_}.{resource} is set"
        );
    }
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));

    // The Service selects the Pod; the ServiceMonitor selects the Service and its port.
    let pod_labels = string_map(&spec["template"]["metadata"]["labels"]);
    let selector = string_map(&service["spec"]["selector"]);
    assert_eq!(selector, string_map(&spec["selector"]["matchLabels"]));
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let service_port = &service["spec"]["ports"][0];
    assert!(ports.contains_key(service_port["targetPort"].as_str().unwrap()));
    let service_labels = labels(service);
    let monitor_selector = string_map(&monitor["spec"]["selector"]["matchLabels"]);
    assert!(!monitor_selector.is_empty());
    assert!(
        monitor_selector
            .iter()
            .all(|(k, v)| service_labels.get(k) == Some(v))
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service_port["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // The binding gives the role to this very ServiceAccount.
    let binding = one(&objects, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        name(one(&objects, "ClusterRole"))
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": name(account), "namespace": NAMESPACE}])
    );
    // Read-only but for Events, and nothing by wildcard. (That this is enough is proved
    // by running the controller with it below.)
    for rule in one(&objects, "ClusterRole")["rules"].as_array().unwrap() {
        let strings = |field: &str| -> Vec<String> {
            serde_json::from_value(rule[field].clone()).unwrap_or_default()
        };
        let all: Vec<String> = ["apiGroups", "resources", "verbs"]
            .iter()
            .flat_map(|f| strings(f))
            .collect();
        assert!(!all.iter().any(|s| s.contains('*')), "{rule}");
        let events =
            strings("apiGroups") == ["events.k8s.io"] && strings("resources") == ["events"];
        if !events {
            assert_eq!(strings("verbs"), ["list", "watch"], "{rule}");
        }
    }

    // The Pod is admitted where the "restricted" Pod Security Standard is enforced...
    let ns = unique("deploy-restricted");
    let namespace: Value = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    });
    apply(&admin, &namespace, false).await.unwrap();
    let pod_object = |spec: &Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": spec,
        })
    };
    apply(&admin, &pod_object(pod), true)
        .await
        .unwrap_or_else(|e| panic!("the Pod under the restricted standard: {e}"));
    // ...which is really enforced here: without the privilege-escalation guard it is not.
    let mut weaker = pod.clone();
    weaker["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    assert_forbidden(
        "a Pod allowing privilege escalation",
        apply(&admin, &pod_object(&weaker), true).await,
    );
}

// ---- the controller as the ServiceAccount ----------------------------------------------

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_controller_does_its_whole_job_as_the_deploys_service_account() {
    let _turn = ONE_CONTROLLER.lock().await;
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let sa = service_account().await;
    // All namespaces, as the Deployment runs it.
    let ctl = common::start_controller_as(sa.client.clone(), common::test_config(&[])).await;
    // Ready means every list, cluster-wide, was allowed.
    eventually("the stores to sync", LIMIT, || async {
        ctl.health.is_ready().then_some(())
    })
    .await;

    // Everything below is created after the first lists, so it reaches the controller
    // only through its watches. One cluster per workload API server, a control plane and
    // a worker each.
    let ns = unique("deploy-sa");
    world::namespace(&admin, &ns).await.unwrap();
    let mut expected = Vec::new();
    for (i, server) in env.workloads.iter().enumerate() {
        let name = format!("{ns}-c{i}");
        cluster(&admin, &ns, &name, &admin_yaml(server)).await;
        for (suffix, control_plane) in [("cp-0", true), ("md-0", false)] {
            let spec = MachineSpec::new(&name, &format!("{name}-{suffix}"), control_plane);
            expected.push((i, world::machine(&admin, &ns, &spec).await.unwrap()));
        }
    }
    // A cluster whose kubeconfig Secret comes late: until then its machine fails again
    // and again, and the repeated Warning is a patch of the first Event (the Recorder's
    // series).
    let late = format!("{ns}-late");
    world::cluster(&admin, &ns, &late).await.unwrap();
    let stuck = MachineSpec::new(&late, &format!("{late}-md-0"), false);
    let stuck = world::machine(&admin, &ns, &stuck).await.unwrap();

    for (server, m) in &expected {
        ready_node(&env.workloads[*server], m).await;
        let created = eventually("a FakeNodeCreated Event", LIMIT, || async {
            let found = events(&admin, &ns, &m.spec.name, "FakeNodeCreated").await;
            (!found.is_empty()).then_some(found)
        })
        .await;
        assert_eq!(
            created[0].reporting_controller.as_deref(),
            Some("metal3-fakenode")
        );
    }
    eventually(
        "a repeated KubeconfigSecretMissing Event",
        LIMIT,
        || async {
            events(&admin, &ns, &stuck.spec.name, "KubeconfigSecretMissing")
                .await
                .into_iter()
                .find(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
        },
    )
    .await;
    world::kubeconfig_secret(
        &admin,
        &ns,
        &late,
        world::kubeconfig_data(&admin_yaml(&env.workloads[0])),
    )
    .await
    .unwrap();
    ready_node(&env.workloads[0], &stuck).await;
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_service_account_cannot_write_what_the_controller_only_reads() {
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let sa = service_account().await;
    let ns = unique("deploy-deny");
    world::namespace(&admin, &ns).await.unwrap();
    let cluster_name = format!("{ns}-c");
    world::kubeconfig_secret(
        &admin,
        &ns,
        &cluster_name,
        world::kubeconfig_data("apiVersion: v1\nkind: Config\n"),
    )
    .await
    .unwrap();
    let secret = format!("{cluster_name}-kubeconfig");
    let machine = format!("{cluster_name}-md-0");
    world::metal3_machine(&admin, &ns, &machine, &cluster_name, None, None)
        .await
        .unwrap();
    let m3m = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "infrastructure.cluster.x-k8s.io",
        "v1beta2",
        "Metal3Machine",
    ));
    let sa_m3ms: Api<DynamicObject> = Api::namespaced_with(sa.client.clone(), &ns, &m3m);
    let sa_secrets: Api<Secret> = Api::namespaced(sa.client.clone(), &ns);

    // What it needs works, so the 403s below are RBAC (a bad token would be a 401).
    let listed = sa_secrets.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(&*secret))
    );
    let listed = sa_m3ms.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|m| m.metadata.name.as_deref() == Some(&*machine))
    );

    assert_forbidden(
        "deleting a Secret",
        sa_secrets.delete(&secret, &DeleteParams::default()).await,
    );
    assert!(
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .get_opt(&secret)
            .await
            .unwrap()
            .is_some()
    );
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": unique("deploy-deny-node")}})).unwrap();
    assert_forbidden(
        "creating a Node in the management cluster",
        Api::<Node>::all(sa.client.clone())
            .create(&PostParams::default(), &node)
            .await,
    );
    assert_forbidden(
        "patching a Metal3Machine",
        sa_m3ms
            .patch(
                &machine,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"providerID": "metal3://stolen"}})),
            )
            .await,
    );
    let current = Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &m3m)
        .get(&machine)
        .await
        .unwrap();
    assert_forbidden(
        "replacing a Metal3Machine",
        sa_m3ms
            .replace(&machine, &PostParams::default(), &current)
            .await,
    );
}

// ---- the binary as the ServiceAccount --------------------------------------------------

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

/// The status code and body of `GET path` on loopback, or None while nothing answers.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    metal3_fakenode_testkit::probe::get(&format!("127.0.0.1:{port}"), path)
        .await
        .ok()
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

// ---- scale out: leader election and shards ---------------------------------------------

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
