//! The pure decision of one reconcile: given what the management cluster holds, what must
//! exist in which workload cluster for a Metal3Machine, or why nothing can be done yet.
//! No I/O: lookups go through [`Lookup`], which the controller backs with reflector stores
//! and the unit tests with plain maps.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::error::Error;
use crate::fake::kubeadm_config::{self, ClusterFacts};
use crate::fake::node::{self, Hardware, NodeFacts};
use crate::resources::{
    BMH_ANNOTATION, BareMetalHost, CLUSTER_NAME_LABEL, CONTROL_PLANE_LABEL, Cluster, Machine,
    Metal3Machine, PROVISIONED,
};

/// The kubelet version a Node reports when its Machine names none.
const UNKNOWN_VERSION: &str = "v0.0.0";

/// Read access to what the management cluster holds, by namespace and name.
pub trait Lookup {
    fn host(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<BareMetalHost>>;
    fn machine(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Machine>>;
    fn cluster(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Cluster>>;
    fn secret(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Secret>>;
}

/// A workload cluster: the namespace and name of its CAPI Cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The raw kubeconfig of a workload cluster, as its CAPI Secret holds it.
#[derive(Clone, Debug)]
pub struct KubeconfigSource {
    /// `namespace/name` of the Secret, for messages.
    pub secret: String,
    pub value: ByteString,
}

/// Everything that must exist in one workload cluster for one Metal3Machine.
#[derive(Clone, Debug)]
pub struct Desired {
    pub cluster: ClusterKey,
    pub kubeconfig: KubeconfigSource,
    pub node: Node,
    /// Only for control-plane Machines.
    pub kubeadm_config: Option<ConfigMap>,
    /// `namespace/name` of the BareMetalHost, for messages.
    pub host: String,
    /// When the host finished provisioning, by the baremetal-operator's clock, if it says.
    pub provisioned_at: Option<Time>,
}

/// What a Metal3Machine needs now.
#[derive(Clone, Debug)]
pub enum Plan {
    /// CAPM3 has set the providerID: the loop is closed and nothing is left to do.
    Closed,
    /// The host is not provisioned yet; a real one would not have booted. Not an error:
    /// the host's next change triggers the next reconcile.
    WaitForHost {
        host: String,
        state: String,
    },
    Ensure(Box<Desired>),
}

/// Parses the `metal3.io/BareMetalHost` annotation (`<namespace>/<name>`) and insists on
/// the Metal3Machine's own namespace, as CAPM3 does.
pub fn host_ref(m3m: &Metal3Machine) -> Result<(String, String), Error> {
    let value = m3m
        .annotations()
        .get(BMH_ANNOTATION)
        .ok_or(Error::MissingAnnotation)?;
    let malformed = || Error::MalformedAnnotation {
        value: value.clone(),
    };
    let (namespace, name) = value.split_once('/').ok_or_else(malformed)?;
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(malformed());
    }
    let own = m3m.namespace().unwrap_or_default();
    if namespace != own {
        return Err(Error::AnnotationNamespaceMismatch {
            found: namespace.to_string(),
            expected: own,
        });
    }
    Ok((namespace.to_string(), name.to_string()))
}

/// The name of the CAPI Machine that owns the Metal3Machine.
pub fn owner_machine(m3m: &Metal3Machine) -> Option<&str> {
    m3m.owner_references()
        .iter()
        .find(|o| {
            o.kind == "Machine" && o.api_version.split('/').next() == Some("cluster.x-k8s.io")
        })
        .map(|o| o.name.as_str())
}

/// `Some(description)` when the host's consumerRef names something other than this
/// Metal3Machine. A host without a consumerRef is not claimed by anyone else.
fn other_consumer(host: &BareMetalHost, m3m: &Metal3Machine) -> Option<String> {
    let consumer = host.spec.consumer_ref.as_ref()?;
    let namespace = consumer
        .namespace
        .clone()
        .or_else(|| host.namespace())
        .unwrap_or_default();
    let name = consumer.name.clone().unwrap_or_default();
    let kind = consumer.kind.clone().unwrap_or_default();
    let ours = kind == "Metal3Machine"
        && name == m3m.name_any()
        && Some(namespace.as_str()) == m3m.namespace().as_deref();
    (!ours).then(|| format!("{kind} {namespace}/{name}"))
}

/// Decides what the Metal3Machine needs. `now` stamps the Node's conditions.
pub fn plan(m3m: &Metal3Machine, lookup: &impl Lookup, now: &Time) -> Result<Plan, Error> {
    if m3m
        .spec
        .provider_id
        .as_deref()
        .is_some_and(|p| !p.is_empty())
    {
        return Ok(Plan::Closed);
    }
    let namespace = m3m.namespace().unwrap_or_default();
    let (host_ns, host_name) = host_ref(m3m)?;
    let host_id = format!("{host_ns}/{host_name}");
    let host = lookup
        .host(&host_ns, &host_name)
        .ok_or_else(|| Error::HostNotFound {
            host: host_id.clone(),
        })?;
    if let Some(consumer) = other_consumer(&host, m3m) {
        return Err(Error::HostConsumedByOther {
            host: host_id,
            consumer,
        });
    }
    let status = host.status.clone().unwrap_or_default();
    if status.provisioning.state != PROVISIONED {
        return Ok(Plan::WaitForHost {
            host: host_id,
            state: status.provisioning.state,
        });
    }
    let host_uid = host.uid().ok_or_else(|| Error::HostNotFound {
        host: host_id.clone(),
    })?;

    let machine_name = owner_machine(m3m).ok_or(Error::NoOwnerMachine)?;
    let machine_id = format!("{namespace}/{machine_name}");
    let machine =
        lookup
            .machine(&namespace, machine_name)
            .ok_or_else(|| Error::MachineNotFound {
                machine: machine_id.clone(),
            })?;
    let cluster_name = machine
        .labels()
        .get(CLUSTER_NAME_LABEL)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::NoClusterLabel {
            machine: machine_id.clone(),
        })?
        .clone();
    let control_plane = machine.labels().contains_key(CONTROL_PLANE_LABEL);
    let version = machine.spec.version.as_deref().unwrap_or(UNKNOWN_VERSION);

    let kubeadm_config = if control_plane {
        let cluster =
            lookup
                .cluster(&namespace, &cluster_name)
                .ok_or_else(|| Error::ClusterNotFound {
                    cluster: format!("{namespace}/{cluster_name}"),
                })?;
        Some(kubeadm_config::kubeadm_config(&cluster_facts(
            &cluster, version,
        )))
    } else {
        None
    };

    let kubeconfig = kubeconfig_source(lookup, &namespace, &cluster_name)?;

    let machine_ip = m3m.status.as_ref().and_then(|s| {
        s.addresses
            .iter()
            .find(|a| a.type_ == "InternalIP" && !a.address.is_empty())
            .map(|a| a.address.as_str())
    });
    let facts = NodeFacts::new(
        machine_name,
        &host_uid,
        control_plane,
        version,
        machine_ip,
        &hardware(&host),
    );
    let mut node = node::node(&facts, now);
    node::label_cluster(&mut node, &namespace, &cluster_name);
    Ok(Plan::Ensure(Box::new(Desired {
        cluster: ClusterKey {
            namespace,
            name: cluster_name,
        },
        kubeconfig,
        node,
        kubeadm_config,
        host: host_id,
        provisioned_at: status.operation_history.provision.end,
    })))
}

/// The kubeconfig of a workload cluster: its CAPI Secret `<cluster>-kubeconfig`, key
/// `value`.
pub fn kubeconfig_source(
    lookup: &impl Lookup,
    namespace: &str,
    cluster: &str,
) -> Result<KubeconfigSource, Error> {
    let secret_name = format!("{cluster}-kubeconfig");
    let secret_id = format!("{namespace}/{secret_name}");
    let secret =
        lookup
            .secret(namespace, &secret_name)
            .ok_or_else(|| Error::KubeconfigSecretMissing {
                secret: secret_id.clone(),
            })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .filter(|v| !v.0.is_empty())
        .cloned()
        .ok_or_else(|| Error::KubeconfigSecretNoValue {
            secret: secret_id.clone(),
        })?;
    Ok(KubeconfigSource {
        secret: secret_id,
        value,
    })
}

fn hardware(host: &BareMetalHost) -> Hardware {
    let Some(hw) = host.status.as_ref().and_then(|s| s.hardware.as_ref()) else {
        return Hardware::default();
    };
    Hardware {
        arch: Some(hw.cpu.arch.clone()).filter(|a| !a.is_empty()),
        cpus: Some(hw.cpu.count),
        memory_mib: Some(hw.ram_mebibytes),
        // The root disk is what a kubelet reports as ephemeral storage; inspection lists
        // the disks in the order the host sees them.
        disk_bytes: hw.storage.first().map(|s| s.size_bytes),
        ip: hw
            .nics
            .iter()
            .map(|n| n.ip.clone())
            .find(|ip| !ip.is_empty()),
    }
}

fn cluster_facts(cluster: &Cluster, version: &str) -> ClusterFacts {
    let endpoint = &cluster.spec.control_plane_endpoint;
    let network = cluster.spec.cluster_network.as_ref();
    let first = |ranges: Option<&crate::resources::NetworkRanges>| {
        ranges.and_then(|r| r.cidr_blocks.first().cloned())
    };
    ClusterFacts {
        cluster_name: cluster.name_any(),
        kubernetes_version: version.to_string(),
        control_plane_endpoint: if endpoint.host.is_empty() {
            String::new()
        } else {
            format!("{}:{}", endpoint.host, endpoint.port)
        },
        pod_subnet: first(network.and_then(|n| n.pods.as_ref())),
        service_subnet: first(network.and_then(|n| n.services.as_ref())),
        dns_domain: network.and_then(|n| n.service_domain.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    use super::*;
    use crate::resources::UUID_LABEL;

    #[derive(Default)]
    struct World {
        hosts: HashMap<(String, String), Arc<BareMetalHost>>,
        machines: HashMap<(String, String), Arc<Machine>>,
        clusters: HashMap<(String, String), Arc<Cluster>>,
        secrets: HashMap<(String, String), Arc<Secret>>,
    }

    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.to_string(), name.to_string())
    }

    impl Lookup for World {
        fn host(&self, ns: &str, name: &str) -> Option<Arc<BareMetalHost>> {
            self.hosts.get(&key(ns, name)).cloned()
        }
        fn machine(&self, ns: &str, name: &str) -> Option<Arc<Machine>> {
            self.machines.get(&key(ns, name)).cloned()
        }
        fn cluster(&self, ns: &str, name: &str) -> Option<Arc<Cluster>> {
            self.clusters.get(&key(ns, name)).cloned()
        }
        fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
            self.secrets.get(&key(ns, name)).cloned()
        }
    }

    fn now() -> Time {
        Time("2026-11-26T08:00:00Z".parse().unwrap())
    }

    /// One provisioned control-plane host, its Metal3Machine, Machine, Cluster and Secret.
    fn world() -> (World, Metal3Machine) {
        let m3m: Metal3Machine = serde_json::from_value(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
            "kind": "Metal3Machine",
            "metadata": {
                "name": "test1-cp-m3m", "namespace": "metal3",
                "annotations": {BMH_ANNOTATION: "metal3/node-0"},
                "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                                     "name": "test1-cp-abcde", "uid": "m-uid"}]
            },
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.111.100"}]}
        }))
        .unwrap();
        let host: BareMetalHost = serde_json::from_value(json!({
            "metadata": {"name": "node-0", "namespace": "metal3", "uid": "bmh-uid-0"},
            "spec": {"consumerRef": {"kind": "Metal3Machine", "name": "test1-cp-m3m",
                                     "namespace": "metal3"}},
            "status": {
                "provisioning": {"state": "provisioned"},
                "operationHistory": {"provision": {"start": "2026-11-26T07:58:00Z",
                                                   "end": "2026-11-26T07:59:00Z"}},
                "hardware": {"cpu": {"arch": "x86_64", "count": 32}, "ramMebibytes": 65536,
                             "nics": [{"ip": ""}, {"ip": "192.168.111.20"}],
                             "storage": [{"sizeBytes": 500000000000u64}]}
            }
        }))
        .unwrap();
        let machine: Machine = serde_json::from_value(json!({
            "metadata": {"name": "test1-cp-abcde", "namespace": "metal3",
                         "labels": {CLUSTER_NAME_LABEL: "test1", CONTROL_PLANE_LABEL: ""}},
            "spec": {"clusterName": "test1", "version": "v1.34.1"}
        }))
        .unwrap();
        let cluster: Cluster = serde_json::from_value(json!({
            "metadata": {"name": "test1", "namespace": "metal3"},
            "spec": {"controlPlaneEndpoint": {"host": "192.168.111.249", "port": 6443},
                     "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/18"]}}}
        }))
        .unwrap();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("test1-kubeconfig".into()),
                namespace: Some("metal3".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "value".to_string(),
                ByteString(b"apiVersion: v1".to_vec()),
            )])),
            ..Default::default()
        };
        let mut w = World::default();
        w.hosts.insert(key("metal3", "node-0"), Arc::new(host));
        w.machines
            .insert(key("metal3", "test1-cp-abcde"), Arc::new(machine));
        w.clusters.insert(key("metal3", "test1"), Arc::new(cluster));
        w.secrets
            .insert(key("metal3", "test1-kubeconfig"), Arc::new(secret));
        (w, m3m)
    }

    fn ensure(w: &World, m3m: &Metal3Machine) -> Desired {
        match plan(m3m, w, &now()).unwrap() {
            Plan::Ensure(d) => *d,
            other => panic!("expected Ensure, got {other:?}"),
        }
    }

    fn error(w: &World, m3m: &Metal3Machine) -> Error {
        plan(m3m, w, &now()).expect_err("expected an error")
    }

    #[test]
    fn a_provisioned_control_plane_host_needs_its_node_and_kubeadm_config() {
        let (w, m3m) = world();
        let d = ensure(&w, &m3m);
        assert_eq!(
            d.cluster,
            ClusterKey {
                namespace: "metal3".into(),
                name: "test1".into()
            }
        );
        assert_eq!(d.kubeconfig.secret, "metal3/test1-kubeconfig");
        assert_eq!(d.node.metadata.name.as_deref(), Some("test1-cp-abcde"));
        let labels = d.node.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[UUID_LABEL], "bmh-uid-0");
        assert_eq!(labels[node::CONTROL_PLANE_ROLE], "");
        assert_eq!(labels[node::CLUSTER_NAMESPACE_LABEL], "metal3");
        assert_eq!(labels[node::CLUSTER_NAME_LABEL], "test1");
        let status = d.node.status.as_ref().unwrap();
        assert_eq!(
            status.addresses.as_ref().unwrap()[0].address,
            "192.168.111.100",
            "the Metal3Machine's address wins"
        );
        assert_eq!(status.capacity.as_ref().unwrap()["cpu"].0, "32");
        assert_eq!(
            status.node_info.as_ref().unwrap().kubelet_version,
            "v1.34.1"
        );
        let cm = d.kubeadm_config.expect("control plane gets kubeadm-config");
        let yaml = &cm.data.unwrap()["ClusterConfiguration"];
        assert!(yaml.contains("192.168.111.249:6443"), "{yaml}");
        assert!(yaml.contains("clusterName: test1"), "{yaml}");
        assert_eq!(
            d.provisioned_at.map(|t| t.0.to_string()),
            Some("2026-11-26T07:59:00Z".to_string())
        );
    }

    #[test]
    fn a_worker_gets_no_kubeadm_config_and_needs_no_cluster_object() {
        let (mut w, m3m) = world();
        let machine = w
            .machines
            .get_mut(&key("metal3", "test1-cp-abcde"))
            .unwrap();
        Arc::make_mut(machine)
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(CONTROL_PLANE_LABEL);
        w.clusters.clear();
        let d = ensure(&w, &m3m);
        assert!(d.kubeadm_config.is_none());
        assert!(
            !d.node
                .metadata
                .labels
                .unwrap()
                .contains_key(node::CONTROL_PLANE_ROLE)
        );
    }

    #[test]
    fn a_provider_id_closes_the_loop() {
        let (w, mut m3m) = world();
        m3m.spec.provider_id = Some("metal3://metal3/node-0/test1-cp-m3m".into());
        assert!(matches!(plan(&m3m, &w, &now()), Ok(Plan::Closed)));
        // An empty providerID is no providerID.
        m3m.spec.provider_id = Some(String::new());
        assert!(matches!(plan(&m3m, &w, &now()), Ok(Plan::Ensure(_))));
    }

    #[test]
    fn an_unprovisioned_host_is_a_wait_not_an_error() {
        let (mut w, m3m) = world();
        let host = w.hosts.get_mut(&key("metal3", "node-0")).unwrap();
        Arc::make_mut(host)
            .status
            .as_mut()
            .unwrap()
            .provisioning
            .state = "provisioning".into();
        match plan(&m3m, &w, &now()).unwrap() {
            Plan::WaitForHost { host, state } => {
                assert_eq!(
                    (host.as_str(), state.as_str()),
                    ("metal3/node-0", "provisioning")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn annotation_errors() {
        let (w, mut m3m) = world();
        let set = |m: &mut Metal3Machine, v: Option<&str>| {
            let a = m.annotations_mut();
            match v {
                Some(v) => a.insert(BMH_ANNOTATION.into(), v.into()),
                None => a.remove(BMH_ANNOTATION),
            };
        };
        set(&mut m3m, None);
        assert_eq!(error(&w, &m3m).reason(), "missing_annotation");
        for bad in ["node-0", "/node-0", "metal3/", "metal3/a/b", ""] {
            set(&mut m3m, Some(bad));
            assert_eq!(error(&w, &m3m).reason(), "malformed_annotation", "{bad:?}");
        }
        set(&mut m3m, Some("other/node-0"));
        assert_eq!(error(&w, &m3m).reason(), "annotation_namespace_mismatch");
        set(&mut m3m, Some("metal3/node-9"));
        assert_eq!(error(&w, &m3m).reason(), "host_not_found");
    }

    #[test]
    fn a_host_consumed_by_another_machine_is_refused() {
        let (mut w, m3m) = world();
        let host = w.hosts.get_mut(&key("metal3", "node-0")).unwrap();
        Arc::make_mut(host).spec.consumer_ref = Some(ObjectReference {
            kind: Some("Metal3Machine".into()),
            name: Some("someone-else".into()),
            namespace: Some("metal3".into()),
            ..Default::default()
        });
        let e = error(&w, &m3m);
        assert_eq!(e.reason(), "host_consumed_by_other");
        assert!(e.to_string().contains("metal3/someone-else"), "{e}");
    }

    #[test]
    fn machine_and_cluster_errors() {
        let (mut w, mut m3m) = world();
        let owners = m3m.metadata.owner_references.take();
        assert_eq!(error(&w, &m3m).reason(), "no_owner_machine");
        // An owner of another kind is not a Machine.
        m3m.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "x".into(),
            uid: "u".into(),
            ..Default::default()
        }]);
        assert_eq!(error(&w, &m3m).reason(), "no_owner_machine");
        m3m.metadata.owner_references = owners;

        let machine = w.machines.remove(&key("metal3", "test1-cp-abcde")).unwrap();
        assert_eq!(error(&w, &m3m).reason(), "machine_not_found");
        let mut unlabelled = (*machine).clone();
        unlabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(CLUSTER_NAME_LABEL);
        w.machines
            .insert(key("metal3", "test1-cp-abcde"), Arc::new(unlabelled));
        assert_eq!(error(&w, &m3m).reason(), "no_cluster_label");
        w.machines.insert(key("metal3", "test1-cp-abcde"), machine);

        w.clusters.clear();
        assert_eq!(error(&w, &m3m).reason(), "cluster_not_found");
    }

    #[test]
    fn kubeconfig_secret_errors() {
        let (mut w, m3m) = world();
        let secret = w
            .secrets
            .remove(&key("metal3", "test1-kubeconfig"))
            .unwrap();
        assert_eq!(error(&w, &m3m).reason(), "kubeconfig_secret_missing");
        let mut empty = (*secret).clone();
        empty.data = Some(BTreeMap::from([(
            "other".to_string(),
            ByteString(b"x".to_vec()),
        )]));
        w.secrets
            .insert(key("metal3", "test1-kubeconfig"), Arc::new(empty.clone()));
        assert_eq!(error(&w, &m3m).reason(), "kubeconfig_secret_no_value");
        empty.data = Some(BTreeMap::from([("value".to_string(), ByteString(vec![]))]));
        w.secrets
            .insert(key("metal3", "test1-kubeconfig"), Arc::new(empty));
        assert_eq!(error(&w, &m3m).reason(), "kubeconfig_secret_no_value");
    }
}
