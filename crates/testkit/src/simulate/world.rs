//! Writes into a management cluster what CAPI, CAPM3 and the baremetal-operator leave
//! there for a Metal3 workload cluster, shaped as they write it (accepted by the real
//! upstream schemas): Cluster, kubeconfig Secret, Machines, Metal3Machines and
//! BareMetalHosts. Used by the integration tests and the demo.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use metal3_fakenode::resources::{BMH_ANNOTATION, CLUSTER_NAME_LABEL, CONTROL_PLANE_LABEL};

const MANAGER: &str = "metal3-fakenode-simulate";

/// The namespaced API of an upstream kind, untyped: the objects are written as their
/// providers write them, every field included.
pub fn dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &resource)
}

fn hosts(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(client, ns, "metal3.io", "v1alpha1", "BareMetalHost")
}

fn machines(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(client, ns, "cluster.x-k8s.io", "v1beta2", "Machine")
}

fn metal3_machines(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        ns,
        "infrastructure.cluster.x-k8s.io",
        "v1beta2",
        "Metal3Machine",
    )
}

fn object(value: Value) -> Result<DynamicObject, kube::Error> {
    serde_json::from_value(value).map_err(kube::Error::SerdeError)
}

/// Creates a namespace; an existing one is fine.
pub async fn namespace(client: &Client, name: &str) -> Result<(), kube::Error> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A CAPI Cluster with its control-plane endpoint, as a Metal3 cluster template makes it.
pub async fn cluster(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    dynamic(client, ns, "cluster.x-k8s.io", "v1beta2", "Cluster")
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "controlPlaneEndpoint": {"host": "192.168.111.249", "port": 6443},
                    "clusterNetwork": {
                        "pods": {"cidrBlocks": ["192.168.0.0/18"]},
                        "services": {"cidrBlocks": ["10.96.0.0/12"]},
                    },
                    "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io",
                                          "kind": "Metal3Cluster", "name": name},
                    "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io",
                                        "kind": "KubeadmControlPlane", "name": name},
                },
            }))?,
        )
        .await
        .map(|_| ())
}

/// The Secret `<cluster>-kubeconfig` (key `value`) as CAPI writes it; replaces the
/// value if it exists (a rotation).
pub async fn kubeconfig_secret(
    client: &Client,
    ns: &str,
    cluster: &str,
    data: BTreeMap<String, ByteString>,
) -> Result<(), kube::Error> {
    cluster_secret(client, ns, cluster, "kubeconfig", data).await
}

/// A CA Secret as CAPI writes it, `<cluster>-<purpose>` (`ca`, `etcd`, ...) with
/// `tls.crt` and `tls.key`: the private key is there, as in a real management cluster.
pub async fn ca_secret(
    client: &Client,
    ns: &str,
    cluster: &str,
    purpose: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), kube::Error> {
    let data = BTreeMap::from([
        (
            "tls.crt".to_string(),
            ByteString(cert_pem.as_bytes().to_vec()),
        ),
        (
            "tls.key".to_string(),
            ByteString(key_pem.as_bytes().to_vec()),
        ),
    ]);
    cluster_secret(client, ns, cluster, purpose, data).await
}

/// A Secret CAPI keeps for a cluster, `<cluster>-<purpose>`, labelled with the cluster's
/// name; applied whole, so a second call replaces the data (a rotation).
async fn cluster_secret(
    client: &Client,
    ns: &str,
    cluster: &str,
    purpose: &str,
    data: BTreeMap<String, ByteString>,
) -> Result<(), kube::Error> {
    let name = format!("{cluster}-{purpose}");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                CLUSTER_NAME_LABEL.to_string(),
                cluster.to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("cluster.x-k8s.io/secret".to_string()),
        data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map(|_| ())
}

/// The usual Secret data: `value` = the kubeconfig YAML.
pub fn kubeconfig_data(yaml: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([("value".to_string(), ByteString(yaml.as_bytes().to_vec()))])
}

/// One machine of a workload cluster, as the three providers leave it.
#[derive(Clone, Debug)]
pub struct MachineSpec {
    /// The Machine's name; the Metal3Machine has the same name (as KCP and MachineSets
    /// name them) and the host is `<name>-bmh`.
    pub name: String,
    pub cluster: String,
    pub control_plane: bool,
    pub version: String,
    /// `provisioned`, or an earlier state such as `provisioning`.
    pub host_state: String,
}

impl MachineSpec {
    pub fn new(cluster: &str, name: &str, control_plane: bool) -> Self {
        Self {
            name: name.to_string(),
            cluster: cluster.to_string(),
            control_plane,
            version: "v1.34.1".to_string(),
            host_state: "provisioned".to_string(),
        }
    }

    pub fn host(&self) -> String {
        format!("{}-bmh", self.name)
    }
}

/// What [`machine`] created.
#[derive(Clone, Debug)]
pub struct CreatedMachine {
    pub spec: MachineSpec,
    pub host_uid: String,
    pub machine_uid: String,
}

/// A BareMetalHost (consumed by the Metal3Machine, in `host_state`), its CAPI Machine and
/// the Metal3Machine (no providerID, annotated with the host, owned by the Machine).
pub async fn machine(
    client: &Client,
    ns: &str,
    spec: &MachineSpec,
) -> Result<CreatedMachine, kube::Error> {
    let host_uid = host(client, ns, &spec.host(), Some(&spec.name), &spec.host_state).await?;
    let mut labels = json!({CLUSTER_NAME_LABEL: spec.cluster});
    if spec.control_plane {
        labels[CONTROL_PLANE_LABEL] = json!("");
    }
    let created = machines(client, ns)
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "metadata": {"name": spec.name, "namespace": ns, "labels": labels},
                "spec": {
                    "clusterName": spec.cluster,
                    "version": spec.version,
                    "bootstrap": {"dataSecretName": spec.name},
                    "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io",
                                          "kind": "Metal3Machine", "name": spec.name},
                },
            }))?,
        )
        .await?;
    let machine_uid = created.uid().unwrap_or_default();
    metal3_machine(
        client,
        ns,
        &spec.name,
        &spec.cluster,
        Some(&format!("{ns}/{}", spec.host())),
        Some((&spec.name, &machine_uid)),
    )
    .await?;
    Ok(CreatedMachine {
        spec: spec.clone(),
        host_uid,
        machine_uid,
    })
}

/// A Metal3Machine; `host` is the annotation's value, `owner` the Machine's (name, uid).
pub async fn metal3_machine(
    client: &Client,
    ns: &str,
    name: &str,
    cluster: &str,
    host: Option<&str>,
    owner: Option<(&str, &str)>,
) -> Result<(), kube::Error> {
    let mut metadata = json!({
        "name": name, "namespace": ns,
        "labels": {CLUSTER_NAME_LABEL: cluster},
    });
    if let Some(host) = host {
        metadata["annotations"] = json!({BMH_ANNOTATION: host});
    }
    if let Some((owner, uid)) = owner {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "name": owner, "uid": uid, "controller": true, "blockOwnerDeletion": true,
        }]);
    }
    metal3_machines(client, ns)
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2", "kind": "Metal3Machine",
                "metadata": metadata,
                "spec": {"image": {"url": "http://172.22.0.1/images/node.qcow2",
                                   "checksum": "http://172.22.0.1/images/node.qcow2.sha256sum",
                                   "checksumType": "sha256", "format": "qcow2"}},
            }))?,
        )
        .await
        .map(|_| ())
}

/// A BareMetalHost consumed by the Metal3Machine `consumer` (if any), its status in
/// `state`, as the baremetal-operator in test mode leaves it. Returns its UID.
pub async fn host(
    client: &Client,
    ns: &str,
    name: &str,
    consumer: Option<&str>,
    state: &str,
) -> Result<String, kube::Error> {
    let mut spec = json!({
        "online": true,
        "bootMACAddress": "00:60:2f:31:81:01",
        "bmc": {"address": "ipmi://192.168.111.1:6230", "credentialsName": format!("{name}-bmc-secret")},
    });
    if let Some(consumer) = consumer {
        spec["consumerRef"] = json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
            "kind": "Metal3Machine", "name": consumer, "namespace": ns,
        });
    }
    let created = hosts(client, ns)
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": name, "namespace": ns},
                "spec": spec,
            }))?,
        )
        .await?;
    set_host_state(client, ns, name, state).await?;
    Ok(created.uid().unwrap_or_default())
}

/// Moves a host to `state` through the status subresource, as the operator does; on
/// `provisioned`, the operation history records when provisioning ended.
pub async fn set_host_state(
    client: &Client,
    ns: &str,
    name: &str,
    state: &str,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(jiff::Timestamp::now());
    let mut status = json!({
        "operationalStatus": "OK",
        "errorCount": 0,
        "errorMessage": "",
        "poweredOn": state == "provisioned",
        "provisioning": {"state": state, "ID": "00000000-0000-4000-8000-000000000000",
                         "image": {"url": "http://172.22.0.1/images/node.qcow2"}},
        "hardware": {"cpu": {"arch": "x86_64", "count": 8, "model": "fake", "clockMegahertz": 2000},
                     "ramMebibytes": 16384, "hostname": name,
                     "nics": [{"ip": "", "name": "enp1s0", "mac": "00:60:2f:31:81:01"}],
                     "storage": [{"name": "/dev/sda", "sizeBytes": 107374182400u64}],
                     "firmware": {"bios": {}}, "systemVendor": {}},
    });
    if state == "provisioned" {
        let end = now.to_string();
        status["operationHistory"] = json!({
            "provision": {"start": end, "end": end},
            "register": {}, "inspect": {}, "deprovision": {},
        });
    }
    hosts(client, ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .map(|_| ())
}

/// The Metal3Machine's `spec.providerID`, if CAPM3 (or its stand-in) has set it.
pub async fn provider_id(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<String>, kube::Error> {
    let m3m = metal3_machines(client, ns).get(name).await?;
    Ok(m3m.data["spec"]["providerID"].as_str().map(str::to_string))
}

/// Patches a Machine's labels (e.g. to drop its cluster-name label in a test).
pub async fn patch_machine(
    client: &Client,
    ns: &str,
    name: &str,
    patch: Value,
) -> Result<(), kube::Error> {
    machines(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Deletes one machine as a scale-down or rollout ends it: the Metal3Machine, the CAPI
/// Machine and the BareMetalHost that [`machine`] created (in the simulated world nothing
/// holds them with finalizers). Objects already gone are fine.
pub async fn delete_machine(
    client: &Client,
    ns: &str,
    spec: &MachineSpec,
) -> Result<(), kube::Error> {
    let params = kube::api::DeleteParams::default();
    for (api, name) in [
        (metal3_machines(client, ns), spec.name.clone()),
        (machines(client, ns), spec.name.clone()),
        (hosts(client, ns), spec.host()),
    ] {
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Deletes a cluster's kubeconfig Secret (as CAPI does when the cluster goes).
pub async fn delete_kubeconfig_secret(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> Result<(), kube::Error> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .delete(&format!("{cluster}-kubeconfig"), &Default::default())
        .await
        .map(|_| ())
}

fn kubeadm_configs(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        ns,
        "bootstrap.cluster.x-k8s.io",
        "v1beta2",
        "KubeadmConfig",
    )
}

/// The KubeadmConfig of a control-plane Machine, as KCP makes it (named like the Machine,
/// referenced by its `spec.bootstrap.configRef`), with `annotations` of its own.
pub async fn kubeadm_config(
    client: &Client,
    ns: &str,
    machine: &str,
    annotations: BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    kubeadm_configs(client, ns)
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "bootstrap.cluster.x-k8s.io/v1beta2", "kind": "KubeadmConfig",
                "metadata": {"name": machine, "namespace": ns, "annotations": annotations},
                "spec": {"format": "cloud-config"},
            }))?,
        )
        .await?;
    patch_machine(
        client,
        ns,
        machine,
        json!({"spec": {"bootstrap": {"configRef": {
            "apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfig", "name": machine,
        }}}}),
    )
    .await
}

/// The annotations of a KubeadmConfig.
pub async fn kubeadm_config_annotations(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, kube::Error> {
    Ok(kubeadm_configs(client, ns)
        .get(name)
        .await?
        .annotations()
        .clone())
}
