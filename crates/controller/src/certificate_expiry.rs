//! The certificate-expiry annotation on a control-plane Machine's KubeadmConfig. Without
//! it, KCP reads the expiry of the kube-apiserver's certificate through the workload
//! cluster's pod proxy, which no fake can answer; with it, KCP takes the annotation's word
//! (CAPI sets it itself on Machines it bootstrapped, from the certificates kubeadm made,
//! which last a year).

use governor::DefaultDirectRateLimiter;
use jiff::{Timestamp, ToSpan};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::info;

use crate::error::Error;

pub const ANNOTATION: &str = "machine.cluster.x-k8s.io/certificates-expiry";
const BOOTSTRAP_GROUP: &str = "bootstrap.cluster.x-k8s.io";

/// The name of the KubeadmConfig a Machine's `spec.bootstrap.configRef` names, if it
/// names one (v1beta2 references carry `apiGroup`, v1beta1 ones `apiVersion`).
pub fn kubeadm_config_of(machine: &Value) -> Option<String> {
    let r = &machine["spec"]["bootstrap"]["configRef"];
    let group = r["apiGroup"]
        .as_str()
        .or_else(|| r["apiVersion"].as_str().and_then(|v| v.split('/').next()))?;
    let name = r["name"].as_str().filter(|n| !n.is_empty())?;
    (group == BOOTSTRAP_GROUP && r["kind"] == "KubeadmConfig").then(|| name.to_string())
}

/// The annotation's value for certificates made at `now`: kubeadm's one year, RFC 3339.
pub fn expiry(now: Timestamp) -> String {
    now.checked_add(8760.hours())
        .unwrap_or(now)
        .round(jiff::Unit::Second)
        .unwrap_or(now)
        .to_string()
}

fn api(client: &Client, namespace: &str, group: &str, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1beta2", kind));
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Annotates the KubeadmConfig of the Machine `namespace/machine` unless it carries the
/// annotation already. Returns whether it did; a Machine bootstrapped otherwise is left
/// alone. Needs `get` on Machines and `get`/`patch` on KubeadmConfigs.
pub async fn annotate(
    client: &Client,
    limiter: &DefaultDirectRateLimiter,
    namespace: &str,
    machine: &str,
    now: Timestamp,
) -> Result<bool, Error> {
    let failed = |e: kube::Error| Error::CertificateExpiryAnnotation {
        machine: format!("{namespace}/{machine}"),
        message: e.to_string(),
    };
    limiter.until_ready().await;
    let found = api(client, namespace, "cluster.x-k8s.io", "Machine")
        .get(machine)
        .await
        .map_err(failed)?;
    let Some(config) = kubeadm_config_of(&serde_json::to_value(&found).unwrap_or_default()) else {
        return Ok(false);
    };
    let configs = api(client, namespace, BOOTSTRAP_GROUP, "KubeadmConfig");
    limiter.until_ready().await;
    if configs
        .get(&config)
        .await
        .map_err(failed)?
        .annotations()
        .contains_key(ANNOTATION)
    {
        return Ok(false);
    }
    let value = expiry(now);
    let patch = json!({ "metadata": { "annotations": { ANNOTATION: value } } });
    limiter.until_ready().await;
    configs
        .patch(
            &config,
            &PatchParams {
                field_manager: Some(crate::apply::FIELD_MANAGER.to_string()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(failed)?;
    info!(kubeadm_config = %config, expiry = %value, "annotated the certificates' expiry");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeadm_config_is_found_by_the_bootstrap_reference() {
        let v1beta2 = json!({"spec": {"bootstrap": {"configRef": {
            "apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfig", "name": "cp-1"}}}});
        assert_eq!(kubeadm_config_of(&v1beta2).as_deref(), Some("cp-1"));
        let v1beta1 = json!({"spec": {"bootstrap": {"configRef": {
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1beta1", "kind": "KubeadmConfig", "name": "cp-1"}}}});
        assert_eq!(kubeadm_config_of(&v1beta1).as_deref(), Some("cp-1"));
        let other = json!({"spec": {"bootstrap": {"configRef": {
            "apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": "cp-1"}}}});
        assert_eq!(kubeadm_config_of(&other), None);
        let data_secret_only = json!({"spec": {"bootstrap": {"dataSecretName": "s"}}});
        assert_eq!(kubeadm_config_of(&data_secret_only), None);
    }

    #[test]
    fn certificates_last_a_year() {
        let now: Timestamp = "2026-11-26T10:00:00.75Z".parse().unwrap();
        assert_eq!(expiry(now), "2027-11-26T10:00:01Z");
    }
}
