//! A stand-in for the part of CAPM3 that closes the loop: for each Metal3Machine without
//! a providerID whose host is provisioned, it looks in the workload cluster for the Node
//! labelled `metal3.io/uuid=<host UID>`; with exactly one (and that one without a
//! providerID, or already with ours) it sets `metal3://<ns>/<host>/<m3m>` on the Node
//! and then on the Metal3Machine. Like CAPM3 it requeues while no Node matches and
//! treats several matches as an error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::KubeConfigOptions;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use metal3_fakenode::plan::{KubeconfigSource, host_ref, owner_machine};
use metal3_fakenode::resources::{
    BareMetalHost, CLUSTER_NAME_LABEL, Machine, Metal3Machine, PROVISIONED, UUID_LABEL,
};
use metal3_fakenode::workload::parse_kubeconfig;

/// How often a Metal3Machine whose Node has not appeared yet is looked at again.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum Capm3Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("{0}")]
    KubeconfigSecret(#[from] metal3_fakenode::error::Error),
    #[error("{0}")]
    Invalid(String),
}

struct Ctx {
    client: Client,
    /// Workload clients by kubeconfig Secret resourceVersion.
    workloads: Mutex<HashMap<(String, String), Client>>,
    poll: Duration,
}

/// Runs until `shutdown` resolves. `namespace`: only that one, or all.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    run_every(client, namespace, POLL, shutdown).await;
}

/// As [`run`], looking again every `poll` at a Metal3Machine whose Node is not there yet
/// (slower polls keep the stand-in's load small at scale).
pub async fn run_every(
    client: Client,
    namespace: Option<String>,
    poll: Duration,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<Metal3Machine> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let ctx = Arc::new(Ctx {
        client,
        workloads: Mutex::default(),
        poll,
    });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, |_, _, ctx| Action::requeue(ctx.poll), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(m3m: Arc<Metal3Machine>, ctx: Arc<Ctx>) -> Result<Action, Capm3Error> {
    if m3m
        .spec
        .provider_id
        .as_deref()
        .is_some_and(|p| !p.is_empty())
    {
        return Ok(Action::await_change());
    }
    let ns = m3m.namespace().unwrap_or_default();
    let (_, host_name) = host_ref(&m3m).map_err(|e| Capm3Error::Invalid(e.to_string()))?;
    let host = Api::<BareMetalHost>::namespaced(ctx.client.clone(), &ns)
        .get(&host_name)
        .await?;
    if host.status.as_ref().map(|s| s.provisioning.state.as_str()) != Some(PROVISIONED) {
        return Ok(Action::requeue(ctx.poll));
    }
    let machine_name =
        owner_machine(&m3m).ok_or_else(|| Capm3Error::Invalid("no owner Machine".into()))?;
    let machine = Api::<Machine>::namespaced(ctx.client.clone(), &ns)
        .get(machine_name)
        .await?;
    let cluster = machine
        .labels()
        .get(CLUSTER_NAME_LABEL)
        .cloned()
        .ok_or_else(|| Capm3Error::Invalid("Machine without cluster label".into()))?;
    let workload = workload_client(&ctx, &ns, &cluster).await?;
    let uid = host.uid().unwrap_or_default();
    let nodes: Api<Node> = Api::all(workload);
    let found = nodes
        .list(&ListParams::default().labels(&format!("{UUID_LABEL}={uid}")))
        .await?;
    let provider_id = format!("metal3://{ns}/{host_name}/{}", m3m.name_any());
    let node = match found.items.as_slice() {
        [] => return Ok(Action::requeue(ctx.poll)),
        [node] => node,
        _ => {
            return Err(Capm3Error::Invalid(format!(
                "{} Nodes labelled {uid}",
                found.items.len()
            )));
        }
    };
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.clone())
        .unwrap_or_default();
    if current.is_empty() {
        nodes
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"providerID": provider_id}})),
            )
            .await?;
    } else if current != provider_id {
        return Err(Capm3Error::Invalid(format!(
            "Node has providerID {current}"
        )));
    }
    Api::<Metal3Machine>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &m3m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"providerID": provider_id}})),
        )
        .await?;
    Ok(Action::await_change())
}

async fn workload_client(ctx: &Ctx, ns: &str, cluster: &str) -> Result<Client, Capm3Error> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get(&format!("{cluster}-kubeconfig"))
        .await?;
    let key = (
        format!("{ns}/{cluster}"),
        secret.resource_version().unwrap_or_default(),
    );
    if let Some(client) = ctx
        .workloads
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return Ok(client.clone());
    }
    let client = client_from_secret(&secret).await?;
    ctx.workloads
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, client.clone());
    Ok(client)
}

/// The workload client of a kubeconfig Secret, read with the controller's own rules: the
/// Secret is written by others, so exec plugins, auth providers and file paths are refused
/// here too and a test never runs a program named in one.
pub async fn client_from_secret(secret: &Secret) -> Result<Client, Capm3Error> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .ok_or_else(|| Capm3Error::Invalid("kubeconfig Secret without value".into()))?;
    let source = KubeconfigSource {
        secret: format!(
            "{}/{}",
            secret.namespace().unwrap_or_default(),
            secret.name_any()
        ),
        value: value.clone(),
    };
    let kubeconfig = parse_kubeconfig(&source)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn secret(kubeconfig: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("c-kubeconfig".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            data: Some(
                [(
                    "value".to_string(),
                    ByteString(kubeconfig.as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: 'https://127.0.0.1:6443'}
users:
- name: u
  user: {token: abc}
contexts:
- name: u@c
  context: {cluster: c, user: u}
current-context: u@c
";

    #[tokio::test]
    async fn the_stand_in_refuses_what_the_controller_refuses() {
        assert!(client_from_secret(&secret(KUBECONFIG)).await.is_ok());
        let exec = KUBECONFIG.replace(
            "user: {token: abc}",
            "user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/false}}",
        );
        match client_from_secret(&secret(&exec)).await {
            Err(Capm3Error::KubeconfigSecret(e)) => {
                assert_eq!(e.reason(), "kubeconfig_unusable", "{e}")
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a Secret's exec plugin was accepted"),
        }
        let file = KUBECONFIG.replace("user: {token: abc}", "user: {tokenFile: /etc/hostname}");
        assert!(matches!(
            client_from_secret(&secret(&file)).await,
            Err(Capm3Error::KubeconfigSecret(_))
        ));
        let mut empty = secret(KUBECONFIG);
        empty.data = None;
        assert!(matches!(
            client_from_secret(&empty).await,
            Err(Capm3Error::Invalid(_))
        ));
    }
}
