//! `kube-system/kubeadm-config`: kubeadm uploads it when it initializes the first control
//! plane, and the KubeadmControlPlane takes its existence as "initialized". Its
//! ClusterConfiguration is read during rollouts, so it must parse.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::{MANAGED_BY, MANAGED_BY_LABEL};

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kubeadm-config";

/// What the Cluster and its control-plane Machine say about the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    pub cluster_name: String,
    pub kubernetes_version: String,
    /// `host:port`, empty when the Cluster has none yet.
    pub control_plane_endpoint: String,
    pub pod_subnet: Option<String>,
    pub service_subnet: Option<String>,
    pub dns_domain: Option<String>,
}

/// kubeadm's config API: v1beta4 from Kubernetes 1.31 (when kubeadm made it the default),
/// v1beta3 before.
pub fn kubeadm_api_version(kubernetes_version: &str) -> &'static str {
    let minor = kubernetes_version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m < 31 => "kubeadm.k8s.io/v1beta3",
        _ => "kubeadm.k8s.io/v1beta4",
    }
}

pub fn cluster_configuration_yaml(facts: &ClusterFacts) -> String {
    let mut networking = serde_json::Map::new();
    networking.insert(
        "dnsDomain".into(),
        json!(facts.dns_domain.as_deref().unwrap_or("cluster.local")),
    );
    if let Some(pods) = &facts.pod_subnet {
        networking.insert("podSubnet".into(), json!(pods));
    }
    if let Some(services) = &facts.service_subnet {
        networking.insert("serviceSubnet".into(), json!(services));
    }
    let mut config = json!({
        "apiVersion": kubeadm_api_version(&facts.kubernetes_version),
        "kind": "ClusterConfiguration",
        "clusterName": facts.cluster_name,
        "kubernetesVersion": facts.kubernetes_version,
        "networking": networking,
        "certificatesDir": "/etc/kubernetes/pki",
        "imageRepository": "registry.k8s.io",
    });
    if !facts.control_plane_endpoint.is_empty() {
        config["controlPlaneEndpoint"] = json!(facts.control_plane_endpoint);
    }
    // Serialising a JSON value to YAML cannot fail: every key is a string.
    serde_saphyr::to_string(&config).unwrap_or_default()
}

pub fn kubeadm_config(facts: &ClusterFacts) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.to_string()),
            namespace: Some(NAMESPACE.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "ClusterConfiguration".to_string(),
            cluster_configuration_yaml(facts),
        )])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(version: &str) -> ClusterFacts {
        ClusterFacts {
            cluster_name: "test1".into(),
            kubernetes_version: version.into(),
            control_plane_endpoint: "192.168.111.249:6443".into(),
            pod_subnet: Some("192.168.0.0/18".into()),
            service_subnet: None,
            dns_domain: None,
        }
    }

    #[test]
    fn the_config_map_holds_a_parseable_cluster_configuration() {
        let cm = kubeadm_config(&facts("v1.34.1"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(cm.metadata.name.as_deref(), Some("kubeadm-config"));
        let yaml = &cm.data.unwrap()["ClusterConfiguration"];
        let parsed: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(parsed["apiVersion"], "kubeadm.k8s.io/v1beta4");
        assert_eq!(parsed["kind"], "ClusterConfiguration");
        assert_eq!(parsed["clusterName"], "test1");
        assert_eq!(parsed["kubernetesVersion"], "v1.34.1");
        assert_eq!(parsed["controlPlaneEndpoint"], "192.168.111.249:6443");
        assert_eq!(parsed["networking"]["podSubnet"], "192.168.0.0/18");
        assert_eq!(parsed["networking"]["dnsDomain"], "cluster.local");
        assert!(parsed["networking"].get("serviceSubnet").is_none());
    }

    #[test]
    fn older_kubernetes_gets_kubeadm_v1beta3() {
        assert_eq!(kubeadm_api_version("v1.30.4"), "kubeadm.k8s.io/v1beta3");
        assert_eq!(kubeadm_api_version("v1.31.0"), "kubeadm.k8s.io/v1beta4");
        assert_eq!(kubeadm_api_version("garbage"), "kubeadm.k8s.io/v1beta4");
    }

    #[test]
    fn no_endpoint_means_no_endpoint_key() {
        let mut f = facts("v1.34.1");
        f.control_plane_endpoint.clear();
        let parsed: serde_json::Value =
            serde_saphyr::from_str(&cluster_configuration_yaml(&f)).unwrap();
        assert!(parsed.get("controlPlaneEndpoint").is_none());
    }
}
