//! Typed views of the upstream objects metal3-fakenode reads: only the fields it uses,
//! tolerant of every other field (serde ignores unknown ones), so upstream schema growth
//! never breaks the watch; an object whose fields these views cannot read is kept as
//! unreadable (see [`crate::tolerant`]). Numbers are as wide as the CRDs allow, so that
//! values out of any sane range are read and then judged by the plan. Versions: what
//! current CAPI (v1beta2), CAPM3 (v1beta2) and the baremetal-operator (v1alpha1) store.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The annotation CAPM3 writes on a Metal3Machine: `<namespace>/<name>` of its host.
pub const BMH_ANNOTATION: &str = "metal3.io/BareMetalHost";
/// The Node label CAPM3 looks Nodes up by: the BareMetalHost's `metadata.uid`.
pub const UUID_LABEL: &str = "metal3.io/uuid";
/// CAPI's label naming a Machine's (and a kubeconfig Secret's) Cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// CAPI's label on control-plane Machines.
pub const CONTROL_PLANE_LABEL: &str = "cluster.x-k8s.io/control-plane";
/// The BareMetalHost provisioning state after which a real host boots and registers.
pub const PROVISIONED: &str = "provisioned";

#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta2",
    kind = "Metal3Machine",
    namespaced,
    status = "Metal3MachineStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct Metal3MachineSpec {
    #[serde(
        default,
        rename = "providerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Metal3MachineStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<MachineAddress>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct MachineAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "metal3.io",
    version = "v1alpha1",
    kind = "BareMetalHost",
    namespaced,
    status = "BareMetalHostStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct BareMetalHostSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_ref: Option<ObjectReference>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BareMetalHostStatus {
    #[serde(default)]
    pub provisioning: ProvisionStatus,
    #[serde(default, rename = "hardware", skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareDetails>,
    #[serde(default)]
    pub operation_history: OperationHistory,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ProvisionStatus {
    #[serde(default)]
    pub state: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareDetails {
    /// Signed and wide, as the CRD's plain `integer` is: a nonsensical value (negative,
    /// absurd) is read and then ignored by the plan, never a reason to drop the host.
    #[serde(default)]
    pub ram_mebibytes: i64,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub storage: Vec<Storage>,
    #[serde(default)]
    pub cpu: Cpu,
    #[serde(default)]
    pub hostname: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Nic {
    #[serde(default)]
    pub ip: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    #[serde(default)]
    pub size_bytes: i64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Cpu {
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub count: i64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct OperationHistory {
    #[serde(default)]
    pub provision: OperationMetric,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct OperationMetric {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
}

#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "cluster.x-k8s.io",
    version = "v1beta2",
    kind = "Machine",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    #[serde(default)]
    pub cluster_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub infrastructure_ref: ContractVersionedObjectReference,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContractVersionedObjectReference {
    #[serde(default)]
    pub api_group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "cluster.x-k8s.io",
    version = "v1beta2",
    kind = "Cluster",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    #[serde(default)]
    pub control_plane_endpoint: ApiEndpoint,
    /// The control plane's object (a KubeadmControlPlane, for kubeadm clusters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_ref: Option<ContractVersionedObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_network: Option<ClusterNetwork>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ApiEndpoint {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: i32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NetworkRanges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<NetworkRanges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_domain: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRanges {
    #[serde(default)]
    pub cidr_blocks: Vec<String>,
}

/// The kind of [`KubeadmControlPlane`], as a Cluster's `controlPlaneRef` names it.
pub const KUBEADM_CONTROL_PLANE_KIND: &str = "KubeadmControlPlane";

/// Read for one fact: whether the cluster's etcd is stacked (kubeadm's default: a member
/// on every control-plane Node) or external.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "controlplane.cluster.x-k8s.io",
    version = "v1beta2",
    kind = "KubeadmControlPlane",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct KubeadmControlPlaneSpec {
    #[serde(default)]
    pub kubeadm_config_spec: KubeadmConfigSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeadmConfigSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_configuration: Option<ClusterConfiguration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ClusterConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdConfiguration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct EtcdConfiguration {
    /// Present for external etcd; its fields are not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<serde_json::Map<String, serde_json::Value>>,
}

impl KubeadmControlPlane {
    /// kubeadm stacks etcd unless the ClusterConfiguration names an external one.
    pub fn stacked_etcd(&self) -> bool {
        self.spec
            .kubeadm_config_spec
            .cluster_configuration
            .as_ref()
            .and_then(|c| c.etcd.as_ref())
            .is_none_or(|e| e.external.is_none())
    }
}

impl crate::tolerant::View for KubeadmControlPlane {}
impl crate::tolerant::View for Metal3Machine {}
impl crate::tolerant::View for BareMetalHost {}
impl crate::tolerant::View for Machine {}
impl crate::tolerant::View for Cluster {}
