//! The pure decision of one reconcile: given what the management cluster holds, what must
//! exist in which workload cluster for a Metal3Machine, or why nothing can be done yet.
//! No I/O: lookups go through [`Lookup`], which the controller backs with reflector stores
//! and the unit tests with plain maps.

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::error::Error;
use crate::fake::kubeadm_config::{self, ClusterFacts};
use crate::fake::names::{is_label_value, node_name_problem};
use crate::fake::node::{self, Hardware, NodeFacts};
use crate::fake::static_pods::{self, StaticPodFacts};
use crate::fidelity::{Fate, Fidelity};
use crate::resources::{
    BMH_ANNOTATION, BareMetalHost, CLUSTER_NAME_LABEL, CONTROL_PLANE_LABEL, Cluster,
    KUBEADM_CONTROL_PLANE_KIND, KubeadmControlPlane, Machine, Metal3Machine, PROVISIONED,
};
use crate::tolerant::Tolerant;

/// The kubelet version a Node reports when its Machine names none.
const UNKNOWN_VERSION: &str = "v0.0.0";

/// What a lookup finds: nothing, or the object, readable or not.
pub type Found<K> = Option<std::sync::Arc<Tolerant<K>>>;

/// Read access to what the management cluster holds, by namespace and name.
pub trait Lookup {
    fn host(&self, namespace: &str, name: &str) -> Found<BareMetalHost>;
    fn machine(&self, namespace: &str, name: &str) -> Found<Machine>;
    fn cluster(&self, namespace: &str, name: &str) -> Found<Cluster>;
    fn secret(&self, namespace: &str, name: &str) -> Found<Secret>;
    fn control_plane(&self, namespace: &str, name: &str) -> Found<KubeadmControlPlane>;
}

/// What the cleanup's sweep reads besides [`Lookup`].
pub trait Inventory: Lookup {
    fn metal3_machine_exists(&self, namespace: &str, name: &str) -> bool;
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
    /// Whether the cluster's KubeadmControlPlane stacks etcd (`None`: no readable
    /// KubeadmControlPlane says, or a worker).
    pub stacked_etcd: Option<bool>,
    /// `namespace/name` of the BareMetalHost, for messages.
    pub host: String,
    /// When the host finished provisioning, by the baremetal-operator's clock, if it says.
    pub provisioned_at: Option<Time>,
    /// Values of the host, Machine or Metal3Machine that make no sense for a Node and were
    /// ignored for the defaults (said once, in the Event of the Node's creation).
    pub ignored: Vec<String>,
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

/// CAPM3 has closed the loop: the Metal3Machine needs no Node from us (an empty
/// providerID is none).
pub fn has_provider_id(m3m: &Metal3Machine) -> bool {
    m3m.spec
        .provider_id
        .as_deref()
        .is_some_and(|p| !p.is_empty())
}

/// Decides what the Metal3Machine needs. `kubelet` is where this process serves the
/// Nodes' kubelet API, if it does; `now` stamps the Node's conditions.
pub fn plan(
    m3m: &Metal3Machine,
    lookup: &impl Lookup,
    kubelet: Option<std::net::SocketAddr>,
    now: &Time,
) -> Result<Plan, Error> {
    if has_provider_id(m3m) {
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
    let host = host.read().map_err(|problem| Error::HostUnreadable {
        host: host_id.clone(),
        problem: problem.clone(),
    })?;
    if let Some(consumer) = other_consumer(host, m3m) {
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
    let machine = machine.read().map_err(|problem| Error::MachineUnreadable {
        machine: machine_id.clone(),
        problem: problem.clone(),
    })?;
    if let Some(message) = node_name_problem(machine_name) {
        return Err(Error::NodeNameInvalid {
            machine: machine_id,
            message,
        });
    }
    let cluster_name = machine
        .labels()
        .get(CLUSTER_NAME_LABEL)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::NoClusterLabel {
            machine: machine_id.clone(),
        })?
        .clone();
    let control_plane = machine.labels().contains_key(CONTROL_PLANE_LABEL);
    let mut ignored = Vec::new();
    let version = kubelet_version(machine.spec.version.as_deref(), &mut ignored);

    let mut stacked_etcd = None;
    let kubeadm_config = if control_plane {
        let cluster_id = format!("{namespace}/{cluster_name}");
        let cluster =
            lookup
                .cluster(&namespace, &cluster_name)
                .ok_or_else(|| Error::ClusterNotFound {
                    cluster: cluster_id.clone(),
                })?;
        let cluster = cluster.read().map_err(|problem| Error::ClusterUnreadable {
            cluster: cluster_id,
            problem: problem.clone(),
        })?;
        stacked_etcd = stacked(lookup, &namespace, cluster, &mut ignored);
        Some(kubeadm_config::kubeadm_config(&cluster_facts(
            cluster, version,
        )))
    } else {
        None
    };

    let kubeconfig = kubeconfig_source(lookup, &namespace, &cluster_name)?;

    let machine_ip = machine_ip(m3m, &mut ignored);
    let facts = NodeFacts::new(
        machine_name,
        &host_uid,
        control_plane,
        version,
        machine_ip,
        &hardware(host, &mut ignored),
    )
    .with_kubelet(kubelet);
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
        stacked_etcd,
        host: host_id,
        provisioned_at: status.operation_history.provision.end,
        ignored,
    })))
}

/// Whether the cluster's KubeadmControlPlane stacks etcd; an unreadable one is said and
/// left to `--stacked-etcd-pods`.
fn stacked(
    lookup: &impl Lookup,
    namespace: &str,
    cluster: &Cluster,
    ignored: &mut Vec<String>,
) -> Option<bool> {
    let reference = cluster
        .spec
        .control_plane_ref
        .as_ref()
        .filter(|r| r.kind == KUBEADM_CONTROL_PLANE_KIND)?;
    match lookup.control_plane(namespace, &reference.name)?.read() {
        Ok(kcp) => Some(kcp.stacked_etcd()),
        Err(problem) => {
            ignored.push(format!(
                "KubeadmControlPlane {namespace}/{} ({}: {})",
                reference.name, problem.path, problem.message
            ));
            None
        }
    }
}

/// The Machine's version as a kubelet would report it; one no kubelet could report (no
/// image tag, no version string: blank, spaced or huge) is ignored.
fn kubelet_version<'a>(version: Option<&'a str>, ignored: &mut Vec<String>) -> &'a str {
    let Some(version) = version else {
        return UNKNOWN_VERSION;
    };
    let sane = !version.is_empty()
        && version.len() <= 128
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_'));
    if sane {
        version
    } else {
        ignored.push(format!(
            "Machine spec.version {:?} (used {UNKNOWN_VERSION})",
            crate::tolerant::bounded(version.to_string(), 64)
        ));
        UNKNOWN_VERSION
    }
}

/// The Metal3Machine's first InternalIP that is an IP address.
fn machine_ip<'a>(m3m: &'a Metal3Machine, ignored: &mut Vec<String>) -> Option<&'a str> {
    let addresses = m3m.status.as_ref().map(|s| s.addresses.as_slice())?;
    let internal = addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP" && !a.address.is_empty());
    for a in internal {
        if is_ip(&a.address) {
            return Some(&a.address);
        }
        ignored.push(format!(
            "Metal3Machine InternalIP {:?} (not an IP address)",
            crate::tolerant::bounded(a.address.clone(), 64)
        ));
    }
    None
}

fn is_ip(text: &str) -> bool {
    text.parse::<std::net::IpAddr>().is_ok()
}

/// What this process remembers of a Metal3Machine, beside what the stores hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// When this process first saw it need a Node.
    pub first_seen: Timestamp,
    pub process_started: Timestamp,
    /// Its KubeadmConfig carries the certificates' expiry already.
    pub certificates_annotated: bool,
    /// When this process last registered it in full, and for what (see
    /// [`registration_fingerprint`]).
    pub registered: Option<(Timestamp, u64)>,
}

/// How long a full registration stands for the same inputs. A Metal3Machine is often
/// reconciled again right after its Node was made (the host's, Machine's and Cluster's
/// watch events of one change arrive one after the other): those reconciles send nothing.
/// The periodic re-check comes later and does send, so a Node deleted behind the
/// controller's back is still made again.
pub const REGISTRATION_STANDS: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// What a registration depends on: the workload cluster and its kubeconfig, the Node's
/// name and host, whether a kubeadm-config and an etcd Pod go with it. Two reconciles
/// with the same fingerprint would send the same requests.
pub fn registration_fingerprint(desired: &Desired) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    desired.cluster.namespace.hash(&mut h);
    desired.cluster.name.hash(&mut h);
    desired.kubeconfig.value.0.hash(&mut h);
    desired.node.metadata.name.hash(&mut h);
    node::host_uid(&desired.node).hash(&mut h);
    desired.kubeadm_config.is_some().hash(&mut h);
    desired.stacked_etcd.hash(&mut h);
    h.finish()
}

/// What a Metal3Machine that needs a Node gets now.
#[derive(Clone, Debug, PartialEq)]
pub enum Steps {
    /// An injected fault withholds its Node forever.
    Withheld,
    /// Its host is still booting (the startup delay): nothing before `due`.
    Booting { due: Timestamp },
    /// What its kubelet and kubeadm leave in the workload cluster, in this order.
    Register(Box<Registration>),
    /// Registered moments ago with the same inputs: nothing to send.
    Registered,
}

/// The requests of a registration, decided before any of them is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    /// The start of the Node's creation latency.
    pub needed_since: Timestamp,
    /// The owning Machine whose KubeadmConfig gets the certificates' expiry first (once
    /// CAPM3 sees the Node, the Metal3Machine is done).
    pub annotate_certificates: Option<String>,
    /// The mirror Pods, before the Node (KCP reads them once it sees the Node).
    pub static_pods: Vec<Pod>,
    /// Mirror Pods skipped: their names would exceed 253 characters.
    pub unpostable: Vec<String>,
    /// The Node gets a Lease (heartbeats are on).
    pub lease: bool,
    /// This process keeps the Node's kubelet (heartbeats, faults, cleanup).
    pub track: bool,
}

/// Decides, from what the Metal3Machine needs, the fidelity asked for and what this
/// process remembers, what happens now. `now` also stamps the mirror Pods.
pub fn steps(
    desired: &Desired,
    m3m: &Metal3Machine,
    fidelity: &Fidelity,
    memory: &Memory,
    now: Timestamp,
) -> Steps {
    let host_uid = node::host_uid(&desired.node).unwrap_or_default();
    if fidelity.fate(host_uid) == Fate::NeverReady {
        return Steps::Withheld;
    }
    let needed = needed_since(
        desired.provisioned_at.as_ref().map(|t| t.0),
        memory.first_seen,
        memory.process_started,
    );
    let due = fidelity.startup_due(needed, host_uid);
    if now < due {
        return Steps::Booting { due };
    }
    if memory.registered.is_some_and(|(at, fingerprint)| {
        now < at + REGISTRATION_STANDS && fingerprint == registration_fingerprint(desired)
    }) {
        return Steps::Registered;
    }
    let annotate_certificates = (fidelity.annotate_certificate_expiry
        && desired.kubeadm_config.is_some()
        && !memory.certificates_annotated)
        .then(|| owner_machine(m3m).map(str::to_string))
        .flatten();
    let facts = fidelity
        .static_pods
        .then(|| StaticPodFacts::of_node(&desired.node))
        .flatten();
    let stacked_etcd = fidelity.stacked_etcd_pods || desired.stacked_etcd == Some(true);
    let (static_pods, unpostable) = match &facts {
        Some(f) => (
            static_pods::static_pods(f, stacked_etcd, &Time(now)),
            static_pods::unpostable(f, stacked_etcd),
        ),
        None => (Vec::new(), Vec::new()),
    };
    Steps::Register(Box::new(Registration {
        needed_since: needed,
        annotate_certificates,
        static_pods,
        unpostable,
        lease: fidelity.heartbeats(),
        track: fidelity.tracks_nodes(),
    }))
}

/// When the Metal3Machine started needing its Node. If the host finished provisioning
/// before this process started, the need predates the process (a restart): the
/// baremetal-operator's timestamp is the only record. Otherwise this process saw the need
/// arise, and its own sub-second observation is the better clock. (The 1 s slack covers
/// the API's whole-second timestamps.)
pub fn needed_since(
    provisioned_at: Option<Timestamp>,
    first_seen: Timestamp,
    process_started: Timestamp,
) -> Timestamp {
    match provisioned_at {
        Some(p) if p + jiff::SignedDuration::from_secs(1) < process_started => p,
        _ => first_seen,
    }
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
    let secret = secret
        .read()
        .map_err(|problem| Error::KubeconfigSecretUnreadable {
            secret: secret_id.clone(),
            problem: problem.clone(),
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

/// What the Event of a Node's creation says: where it is, and what was ignored for it.
pub fn node_created_note(desired: &Desired) -> String {
    let node = desired.node.metadata.name.as_deref().unwrap_or_default();
    let mut note = format!(
        "created Ready Node {node} for host {} in workload cluster {}",
        desired.host, desired.cluster
    );
    if !desired.ignored.is_empty() {
        note.push_str("; ignored, defaults used: ");
        note.push_str(&desired.ignored.join("; "));
    }
    note
}

/// Sane bounds of what inspection reports: beyond them a value is a mistake (a sign bit,
/// a unit mix-up), not a machine, and a Node with it could be refused or mislead.
const MAX_CPUS: i64 = 16_384;
/// 64 TiB.
const MAX_MEMORY_MIB: i64 = 64 << 20;
/// 1 EiB.
const MAX_DISK_BYTES: i64 = 1 << 60;

/// The host's inspected hardware, without the values that make no sense (each said in
/// `ignored`; the Node then gets the defaults, as without inspection). Zero and absent
/// mean "not inspected" and are not mentioned.
fn hardware(host: &BareMetalHost, ignored: &mut Vec<String>) -> Hardware {
    let Some(hw) = host.status.as_ref().and_then(|s| s.hardware.as_ref()) else {
        return Hardware::default();
    };
    let mut within = |field: &str, value: i64, max: i64| -> Option<i64> {
        match value {
            0 => None,
            v if (1..=max).contains(&v) => Some(v),
            v => {
                ignored.push(format!("status.hardware.{field}={v} (outside 1..={max})"));
                None
            }
        }
    };
    let cpus = within("cpu.count", hw.cpu.count, MAX_CPUS).and_then(|c| u32::try_from(c).ok());
    let memory_mib = within("ramMebibytes", hw.ram_mebibytes, MAX_MEMORY_MIB)
        .and_then(|m| u64::try_from(m).ok());
    // The root disk is what a kubelet reports as ephemeral storage; inspection lists
    // the disks in the order the host sees them.
    let disk_bytes = hw
        .storage
        .first()
        .and_then(|s| within("storage[0].sizeBytes", s.size_bytes, MAX_DISK_BYTES))
        .and_then(|d| u64::try_from(d).ok());
    let mut ip = None;
    for nic in hw.nics.iter().filter(|n| !n.ip.is_empty()) {
        if is_ip(&nic.ip) {
            ip = Some(nic.ip.clone());
            break;
        }
        ignored.push(format!(
            "status.hardware.nics ip {:?} (not an IP address)",
            crate::tolerant::bounded(nic.ip.clone(), 64)
        ));
    }
    let arch = Some(hw.cpu.arch.clone())
        .filter(|a| !a.is_empty())
        .filter(|a| {
            let ok = is_label_value(&node::kubernetes_arch(Some(a)));
            if !ok {
                ignored.push(format!(
                    "status.hardware.cpu.arch {:?} (not a label value)",
                    crate::tolerant::bounded(a.clone(), 64)
                ));
            }
            ok
        });
    Hardware {
        arch,
        cpus,
        memory_mib,
        disk_bytes,
        ip,
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
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    use super::*;
    use crate::fixtures::{World, key, read, read_mut};
    use crate::resources::UUID_LABEL;

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
        w.hosts.insert(key("metal3", "node-0"), read(host));
        w.machines
            .insert(key("metal3", "test1-cp-abcde"), read(machine));
        w.clusters.insert(key("metal3", "test1"), read(cluster));
        w.secrets
            .insert(key("metal3", "test1-kubeconfig"), read(secret));
        (w, m3m)
    }

    fn ensure(w: &World, m3m: &Metal3Machine) -> Desired {
        match plan(m3m, w, None, &now()).unwrap() {
            Plan::Ensure(d) => *d,
            other => panic!("expected Ensure, got {other:?}"),
        }
    }

    fn error(w: &World, m3m: &Metal3Machine) -> Error {
        plan(m3m, w, None, &now()).expect_err("expected an error")
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
        read_mut(machine)
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
        assert!(matches!(plan(&m3m, &w, None, &now()), Ok(Plan::Closed)));
        // An empty providerID is no providerID.
        m3m.spec.provider_id = Some(String::new());
        assert!(matches!(plan(&m3m, &w, None, &now()), Ok(Plan::Ensure(_))));
    }

    #[test]
    fn an_unprovisioned_host_is_a_wait_not_an_error() {
        let (mut w, m3m) = world();
        let host = w.hosts.get_mut(&key("metal3", "node-0")).unwrap();
        read_mut(host).status.as_mut().unwrap().provisioning.state = "provisioning".into();
        match plan(&m3m, &w, None, &now()).unwrap() {
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
        read_mut(host).spec.consumer_ref = Some(ObjectReference {
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
        let mut unlabelled = machine.read().unwrap().clone();
        unlabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(CLUSTER_NAME_LABEL);
        w.machines
            .insert(key("metal3", "test1-cp-abcde"), read(unlabelled));
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
        let mut empty = secret.read().unwrap().clone();
        empty.data = Some(BTreeMap::from([(
            "other".to_string(),
            ByteString(b"x".to_vec()),
        )]));
        w.secrets
            .insert(key("metal3", "test1-kubeconfig"), read(empty.clone()));
        assert_eq!(error(&w, &m3m).reason(), "kubeconfig_secret_no_value");
        empty.data = Some(BTreeMap::from([("value".to_string(), ByteString(vec![]))]));
        w.secrets
            .insert(key("metal3", "test1-kubeconfig"), read(empty));
        assert_eq!(error(&w, &m3m).reason(), "kubeconfig_secret_no_value");
    }

    fn unreadable<K>(name: &str, path: &str) -> Arc<Tolerant<K>> {
        crate::fixtures::unreadable("metal3", name, path)
    }

    #[test]
    fn an_unreadable_object_is_its_own_typed_reason() {
        let (w0, m3m) = world();
        let mut w = world().0;
        w.hosts
            .insert(key("metal3", "node-0"), unreadable("node-0", "status"));
        let e = error(&w, &m3m);
        assert_eq!(e.reason(), "host_unreadable");
        assert!(e.to_string().contains("metal3/node-0"), "{e}");
        assert!(e.to_string().contains("field status"), "{e}");
        let mut w = world().0;
        w.machines.insert(
            key("metal3", "test1-cp-abcde"),
            unreadable("test1-cp-abcde", "spec.version"),
        );
        assert_eq!(error(&w, &m3m).reason(), "machine_unreadable");
        let mut w = world().0;
        w.clusters.insert(
            key("metal3", "test1"),
            unreadable("test1", "spec.controlPlaneEndpoint.port"),
        );
        assert_eq!(error(&w, &m3m).reason(), "cluster_unreadable");
        let mut w = world().0;
        w.secrets.insert(
            key("metal3", "test1-kubeconfig"),
            unreadable("test1-kubeconfig", "data.value"),
        );
        assert_eq!(error(&w, &m3m).reason(), "kubeconfig_secret_unreadable");
        // Every one of them waits for the object to change, not for a timer.
        assert!(error(&w, &m3m).is_permanent());
        assert!(matches!(plan(&m3m, &w0, None, &now()), Ok(Plan::Ensure(_))));
    }

    #[test]
    fn a_machine_name_no_kubelet_could_register_is_refused_before_any_request() {
        let (mut w, mut m3m) = world();
        for name in [
            "m".repeat(70),
            format!("{}.{}", "a".repeat(116), "b".repeat(116)),
        ] {
            let mut machine = w.machines[&key("metal3", "test1-cp-abcde")]
                .read()
                .unwrap()
                .clone();
            machine.metadata.name = Some(name.clone());
            w.machines.insert(key("metal3", &name), read(machine));
            m3m.metadata.owner_references.as_mut().unwrap()[0].name = name.clone();
            let e = error(&w, &m3m);
            assert_eq!(e.reason(), "node_name_invalid", "{e}");
            assert!(e.is_permanent());
            assert!(
                e.to_string()
                    .contains(&format!("{} characters", name.len())),
                "{e}"
            );
        }
    }

    #[test]
    fn values_that_make_no_sense_are_ignored_and_said() {
        let (mut w, mut m3m) = world();
        let host = read_mut(w.hosts.get_mut(&key("metal3", "node-0")).unwrap());
        let hw = host.status.as_mut().unwrap().hardware.as_mut().unwrap();
        hw.cpu.count = -4;
        hw.ram_mebibytes = i64::MAX;
        hw.storage[0].size_bytes = -1;
        hw.nics = vec![
            crate::resources::Nic {
                ip: "not-an-ip".into(),
            },
            crate::resources::Nic {
                ip: "10.1.2.3".into(),
            },
        ];
        hw.cpu.arch = "x86 64 (weird)".into();
        let machine = read_mut(
            w.machines
                .get_mut(&key("metal3", "test1-cp-abcde"))
                .unwrap(),
        );
        machine.spec.version = Some("v1.34.1 oops".into());
        m3m.status.as_mut().unwrap().addresses[0].address = "192.168.111.300".into();
        let d = ensure(&w, &m3m);
        let status = d.node.status.as_ref().unwrap();
        let capacity = status.capacity.as_ref().unwrap();
        assert_eq!(capacity["cpu"].0, "4", "the default");
        assert_eq!(capacity["memory"].0, format!("{}Ki", 16 * 1024 * 1024));
        assert_eq!(
            status.addresses.as_ref().unwrap()[0].address,
            "10.1.2.3",
            "the first address that is one"
        );
        let labels = d.node.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        assert_eq!(
            status.node_info.as_ref().unwrap().kubelet_version,
            UNKNOWN_VERSION
        );
        let said = d.ignored.join("\n");
        for part in [
            "cpu.count=-4",
            "ramMebibytes=9223372036854775807",
            "sizeBytes=-1",
            "\"not-an-ip\"",
            "x86 64 (weird)",
            "v1.34.1 oops",
            "192.168.111.300",
        ] {
            assert!(said.contains(part), "{part} not in {said}");
        }
        let note = node_created_note(&d);
        assert!(
            note.starts_with("created Ready Node test1-cp-abcde for host metal3/node-0")
                && note.contains("; ignored, defaults used: ")
                && note.contains("v1.34.1 oops"),
            "{note}"
        );
        // Nothing to say about sane values.
        let (w, m3m) = world();
        let d = ensure(&w, &m3m);
        assert!(d.ignored.is_empty());
        assert!(!node_created_note(&d).contains("ignored"));
    }

    /// The API server's rules for a Node, as far as the builders can break them.
    pub(crate) fn node_problems(node: &Node) -> Vec<String> {
        use crate::fake::names::{is_dns_subdomain, is_label_value};
        let mut problems = Vec::new();
        let name = node.metadata.name.clone().unwrap_or_default();
        if !is_dns_subdomain(&name) {
            problems.push(format!("name {name:?}"));
        }
        let qualified = |key: &str| {
            let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
            (prefix.is_empty() || is_dns_subdomain(prefix))
                && !name.is_empty()
                && is_label_value(name)
        };
        for (k, v) in node.metadata.labels.iter().flatten() {
            if !qualified(k) || !is_label_value(v) {
                problems.push(format!("label {k}={v:?}"));
            }
        }
        for taint in node.spec.iter().flat_map(|s| s.taints.iter().flatten()) {
            if !qualified(&taint.key) {
                problems.push(format!("taint {}", taint.key));
            }
        }
        let status = node.status.as_ref();
        for (resource, q) in status.iter().flat_map(|s| s.capacity.iter().flatten()) {
            let digits = q.0.trim_end_matches("Ki");
            let essential = matches!(resource.as_str(), "cpu" | "memory" | "ephemeral-storage");
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || (essential && digits.trim_start_matches('0').is_empty())
            {
                problems.push(format!("capacity {resource}={}", q.0));
            }
        }
        for a in status.iter().flat_map(|s| s.addresses.iter().flatten()) {
            if a.type_ == "InternalIP" && a.address.parse::<std::net::IpAddr>().is_err() {
                problems.push(format!("address {}", a.address));
            }
        }
        problems
    }

    /// Paths of every value in `v` outside `metadata` (the API server validates metadata).
    fn paths(v: &serde_json::Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Some(map) = v.as_object() {
            for (k, child) in map {
                if at.is_empty() && matches!(k.as_str(), "metadata" | "apiVersion" | "kind") {
                    continue;
                }
                let mut p = at.clone();
                p.push(k.clone());
                out.push(p.clone());
                paths(child, p, out);
            }
        } else if let Some(items) = v.as_array() {
            for (i, child) in items.iter().enumerate() {
                let mut p = at.clone();
                p.push(i.to_string());
                out.push(p.clone());
                paths(child, p, out);
            }
        }
    }

    fn set(v: &mut serde_json::Value, path: &[String], new: Option<serde_json::Value>) {
        let (last, parents) = path.split_last().unwrap();
        let mut at = v;
        for p in parents {
            at = match at {
                serde_json::Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                other => &mut other[p.as_str()],
            };
        }
        match (at, new) {
            (serde_json::Value::Object(m), Some(n)) => {
                m.insert(last.clone(), n);
            }
            (serde_json::Value::Object(m), None) => {
                m.remove(last);
            }
            // An extra "field" of an array is one more item.
            (serde_json::Value::Array(a), Some(n)) => match last.parse::<usize>() {
                Ok(i) => a[i] = n,
                Err(_) => a.push(n),
            },
            (serde_json::Value::Array(a), None) => {
                a.remove(last.parse::<usize>().unwrap());
            }
            _ => {}
        }
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1e30f64..1e30).prop_map(serde_json::Value::from),
            prop_oneof![
                Just(String::new()),
                Just("not-an-ip".to_string()),
                Just("2026-13-45T99:99:99".to_string()),
                "\\PC{0,80}",
            ]
            .prop_map(serde_json::Value::from),
            Just(json!([1, "two", {"three": 3}])),
            Just(json!({"unexpected": {"deep": [true]}})),
        ]
    }

    /// One object of the world, as JSON: (which, value).
    fn world_json(which: usize) -> serde_json::Value {
        let (w, m3m) = world();
        let one = |t: &Arc<Tolerant<_>>| serde_json::to_value(t.read().unwrap()).unwrap();
        match which {
            0 => serde_json::to_value(&m3m).unwrap(),
            1 => one(&w.hosts[&key("metal3", "node-0")]),
            2 => serde_json::to_value(w.machines[&key("metal3", "test1-cp-abcde")].read().unwrap())
                .unwrap(),
            _ => serde_json::to_value(w.clusters[&key("metal3", "test1")].read().unwrap()).unwrap(),
        }
    }

    fn tolerant<K: crate::tolerant::View + Clone>(v: &serde_json::Value) -> Tolerant<K> {
        serde_json::from_value(json!({
            "metadata": {"resourceVersion": "1"},
            "items": [v, v]
        }))
        .map(|l: kube::core::ObjectList<Tolerant<K>>| l.items.into_iter().next().unwrap())
        .expect("a list with a mutated object reads")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// A mutated upstream object (a value of another type or range, a missing or an
        /// extra field): a list with it still reads, and the plan either says why there is
        /// no Node or builds one the API server accepts.
        #[test]
        fn mutated_objects_never_fail_the_others_nor_build_an_invalid_node(
            which in 0usize..4,
            pick in proptest::prelude::any::<proptest::sample::Index>(),
            op in 0u8..3,
            new in any_json(),
        ) {
            let mut v = world_json(which);
            let mut all = Vec::new();
            paths(&v, Vec::new(), &mut all);
            let path = pick.get(&all).clone();
            match op {
                0 => set(&mut v, &path, Some(new)),
                1 => set(&mut v, &path, None),
                _ => {
                    let mut extra = path.clone();
                    extra.push("x-extra".into());
                    set(&mut v, &extra, Some(new));
                }
            }
            let (mut w, mut m3m) = world();
            // A list holding the mutated object and a sound one reads, and the sound one
            // stays readable.
            let good = world_json(which);
            match which {
                0 => {
                    let list: kube::core::ObjectList<Tolerant<Metal3Machine>> =
                        serde_json::from_value(json!({"metadata": {}, "items": [v, good]})).unwrap();
                    proptest::prop_assert!(list.items[1].read().is_ok());
                    match tolerant::<Metal3Machine>(&v) {
                        Tolerant::Read(m) => m3m = m,
                        Tolerant::Unreadable(_) => return Ok(()),
                    }
                }
                1 => {
                    let list: kube::core::ObjectList<Tolerant<BareMetalHost>> =
                        serde_json::from_value(json!({"metadata": {}, "items": [v, good]})).unwrap();
                    proptest::prop_assert!(list.items[1].read().is_ok());
                    w.hosts.insert(key("metal3", "node-0"), Arc::new(tolerant(&v)));
                }
                2 => {
                    let list: kube::core::ObjectList<Tolerant<Machine>> =
                        serde_json::from_value(json!({"metadata": {}, "items": [v, good]})).unwrap();
                    proptest::prop_assert!(list.items[1].read().is_ok());
                    w.machines.insert(key("metal3", "test1-cp-abcde"), Arc::new(tolerant(&v)));
                }
                _ => {
                    let list: kube::core::ObjectList<Tolerant<Cluster>> =
                        serde_json::from_value(json!({"metadata": {}, "items": [v, good]})).unwrap();
                    proptest::prop_assert!(list.items[1].read().is_ok());
                    w.clusters.insert(key("metal3", "test1"), Arc::new(tolerant(&v)));
                }
            }
            if let Ok(Plan::Ensure(d)) = plan(&m3m, &w, None, &now()) {
                let problems = node_problems(&d.node);
                proptest::prop_assert!(problems.is_empty(), "{path:?}: {problems:?}");
                if let Some(facts) = crate::fake::static_pods::StaticPodFacts::of_node(&d.node) {
                    for pod in crate::fake::static_pods::static_pods(&facts, true, &now()) {
                        let ip = pod.status.and_then(|s| s.host_ip).unwrap_or_default();
                        proptest::prop_assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{ip}");
                        let image = &pod.spec.unwrap().containers[0].image.clone().unwrap_or_default();
                        proptest::prop_assert!(!image.contains(char::is_whitespace), "{image}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_need_predates_a_restart_only_by_the_operators_clock() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let started = t("2026-11-26T10:00:00Z");
        let seen = t("2026-11-26T10:00:05.250Z");
        // Provisioned long before this process started: a restart; use the BMO's time.
        assert_eq!(
            needed_since(Some(t("2026-11-26T09:59:00Z")), seen, started),
            t("2026-11-26T09:59:00Z")
        );
        // Provisioned while running (whole seconds): our own observation is finer.
        assert_eq!(
            needed_since(Some(t("2026-11-26T10:00:05Z")), seen, started),
            seen
        );
        assert_eq!(
            needed_since(Some(t("2026-11-26T09:59:59.5Z")), seen, started),
            seen
        );
        assert_eq!(needed_since(None, seen, started), seen);
    }

    fn memory() -> Memory {
        Memory {
            first_seen: now().0,
            process_started: "2026-11-26T07:00:00Z".parse().unwrap(),
            certificates_annotated: false,
            registered: None,
        }
    }

    #[test]
    fn a_registration_just_made_with_the_same_inputs_is_not_sent_again() {
        let (w, m3m) = world();
        let desired = ensure(&w, &m3m);
        let at = now().0;
        let fidelity = Fidelity::default();
        let registered = |at, fingerprint| Memory {
            registered: Some((at, fingerprint)),
            ..memory()
        };
        let same = registration_fingerprint(&desired);
        let soon = at + jiff::SignedDuration::from_secs(5);
        assert_eq!(
            steps(&desired, &m3m, &fidelity, &registered(at, same), soon),
            Steps::Registered
        );
        // Past the window (the periodic re-check), or with other inputs: sent again.
        let later = at + REGISTRATION_STANDS;
        assert!(matches!(
            steps(&desired, &m3m, &fidelity, &registered(at, same), later),
            Steps::Register(_)
        ));
        assert!(matches!(
            steps(&desired, &m3m, &fidelity, &registered(at, same ^ 1), soon),
            Steps::Register(_)
        ));
        let mut rotated = desired.clone();
        rotated.kubeconfig.value.0.push(b'\n');
        assert_ne!(
            registration_fingerprint(&rotated),
            same,
            "a rotated kubeconfig"
        );
        let mut other_host = desired.clone();
        other_host
            .node
            .metadata
            .labels
            .get_or_insert_default()
            .insert(crate::resources::UUID_LABEL.to_string(), "another".into());
        assert_ne!(registration_fingerprint(&other_host), same, "another host");
    }

    fn steps_of(fidelity: &Fidelity, memory: &Memory, at: Timestamp) -> Steps {
        let (w, m3m) = world();
        steps(&ensure(&w, &m3m), &m3m, fidelity, memory, at)
    }

    #[test]
    fn a_control_plane_gets_its_mirror_pods_lease_and_certificates_in_the_plan() {
        let full = Fidelity {
            static_pods: true,
            heartbeat_interval: std::time::Duration::from_secs(40),
            annotate_certificate_expiry: true,
            ..Fidelity::default()
        };
        let Steps::Register(r) = steps_of(&full, &memory(), now().0) else {
            panic!("registers");
        };
        let names: Vec<_> = r
            .static_pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "kube-apiserver-test1-cp-abcde",
                "kube-controller-manager-test1-cp-abcde",
                "kube-scheduler-test1-cp-abcde"
            ]
        );
        assert!(r.unpostable.is_empty());
        assert!(r.lease && r.track);
        assert_eq!(r.annotate_certificates.as_deref(), Some("test1-cp-abcde"));
        // The host was provisioned after this process started: its own sight counts.
        assert_eq!(r.needed_since, now().0);
        // Once annotated, never again; without the fidelity, nothing of it.
        let done = Memory {
            certificates_annotated: true,
            ..memory()
        };
        let Steps::Register(r) = steps_of(&full, &done, now().0) else {
            panic!("registers");
        };
        assert_eq!(r.annotate_certificates, None);
        let Steps::Register(bare) = steps_of(&Fidelity::default(), &memory(), now().0) else {
            panic!("registers");
        };
        assert!(bare.static_pods.is_empty() && !bare.lease && !bare.track);
        assert_eq!(bare.annotate_certificates, None);
    }

    #[test]
    fn faults_and_startup_delays_are_decided_in_the_plan() {
        let never = Fidelity {
            never_ready_fraction: 1.0,
            ..Fidelity::default()
        };
        assert_eq!(steps_of(&never, &memory(), now().0), Steps::Withheld);
        let booting = Fidelity {
            startup_delay: std::time::Duration::from_secs(60),
            ..Fidelity::default()
        };
        let due = now().0 + jiff::SignedDuration::from_secs(60);
        assert_eq!(
            steps_of(&booting, &memory(), now().0),
            Steps::Booting { due }
        );
        assert!(matches!(
            steps_of(&booting, &memory(), due),
            Steps::Register(_)
        ));
    }
}
