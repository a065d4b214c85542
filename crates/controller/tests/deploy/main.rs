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

#[path = "../common/mod.rs"]
mod common;

mod binary;
mod manifests;
mod scale_out;
mod service_account;

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

/// The status code and body of `GET path` on loopback, or None while nothing answers.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    metal3_fakenode_testkit::probe::get(&format!("127.0.0.1:{port}"), path)
        .await
        .ok()
}
