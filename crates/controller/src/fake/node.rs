//! The Node a healthy kubelet registers and keeps posting, for one Machine.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;

use super::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::resources::UUID_LABEL;

pub const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";
/// The namespace and name of the CAPI Cluster a Node was made for.
pub const CLUSTER_NAMESPACE_LABEL: &str = "fakenode.metal3.io/cluster-namespace";
pub const CLUSTER_NAME_LABEL: &str = "fakenode.metal3.io/cluster-name";
const DEFAULT_CPUS: u32 = 4;
const DEFAULT_MEMORY_MIB: u64 = 16 * 1024;
const DEFAULT_DISK_BYTES: u64 = 100 * 1024 * 1024 * 1024;
/// A kubelet's default maximum number of pods.
const MAX_PODS: &str = "110";

/// What is known about the machine behind a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// The Machine's name, which kubeadm makes the Node's name.
    pub name: String,
    /// The BareMetalHost's `metadata.uid`.
    pub host_uid: String,
    pub control_plane: bool,
    pub kubelet_version: String,
    pub internal_ip: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    /// Where this process serves the kubelet API for the Node (port-forward), if it does.
    pub kubelet: Option<std::net::SocketAddr>,
}

/// Hardware facts from the BareMetalHost, each optional (inspection may be disabled).
#[derive(Clone, Debug, Default)]
pub struct Hardware {
    pub arch: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub ip: Option<String>,
}

impl NodeFacts {
    /// Fills what inspection did not report with sane defaults; the address falls back to
    /// one derived from the host's UID, so it is the same across restarts.
    pub fn new(
        name: &str,
        host_uid: &str,
        control_plane: bool,
        kubelet_version: &str,
        machine_ip: Option<&str>,
        hardware: &Hardware,
    ) -> Self {
        let internal_ip = machine_ip
            .map(str::to_string)
            .or_else(|| hardware.ip.clone())
            .unwrap_or_else(|| fake_ip(host_uid));
        Self {
            name: name.to_string(),
            host_uid: host_uid.to_string(),
            control_plane,
            kubelet_version: kubelet_version.to_string(),
            internal_ip,
            arch: kubernetes_arch(hardware.arch.as_deref()),
            cpus: hardware.cpus.filter(|c| *c > 0).unwrap_or(DEFAULT_CPUS),
            memory_mib: hardware
                .memory_mib
                .filter(|m| *m > 0)
                .unwrap_or(DEFAULT_MEMORY_MIB),
            disk_bytes: hardware
                .disk_bytes
                .filter(|d| *d > 0)
                .unwrap_or(DEFAULT_DISK_BYTES),
            kubelet: None,
        }
    }

    /// The Node's kubelet is served at `endpoint`.
    pub fn with_kubelet(mut self, endpoint: Option<std::net::SocketAddr>) -> Self {
        self.kubelet = endpoint;
        self
    }
}

/// The kubelet's default port, advertised when this process serves no kubelet API.
pub const KUBELET_PORT: u16 = 10250;

/// The Node's addresses and kubelet port. An API server reaches a kubelet at the first
/// address of its preferred types (kubeadm prefers InternalIP) and the advertised port:
/// with a kubelet endpoint served here, its address comes first, so port-forwards reach
/// this process; the host's own address follows, still visible.
pub fn addresses_and_port(facts: &NodeFacts) -> (Vec<NodeAddress>, u16) {
    let internal = |address: String| NodeAddress {
        type_: "InternalIP".to_string(),
        address,
    };
    let mut addresses = Vec::new();
    let mut port = KUBELET_PORT;
    if let Some(endpoint) = facts.kubelet {
        port = endpoint.port();
        if endpoint.ip().to_string() != facts.internal_ip {
            addresses.push(internal(endpoint.ip().to_string()));
        }
    }
    addresses.push(internal(facts.internal_ip.clone()));
    addresses.push(NodeAddress {
        type_: "Hostname".to_string(),
        address: facts.name.clone(),
    });
    (addresses, port)
}

/// A merge patch that sets the Node's addresses and kubelet port as
/// [`addresses_and_port`] decides, if they differ from `node`'s: Nodes made before the
/// kubelet endpoint existed (or by a replica at another address) get it. A JSON merge
/// patch replaces the list whole; a strategic one would merge InternalIPs by type.
pub fn endpoint_patch(
    node: &Node,
    facts_addresses: &[NodeAddress],
    port: u16,
) -> Option<serde_json::Value> {
    let status = node.status.as_ref();
    let current = status.and_then(|s| s.addresses.as_deref()).unwrap_or(&[]);
    let current_port = status
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|e| e.port);
    let same = current == facts_addresses && current_port == Some(i32::from(port));
    (!same).then(|| {
        json!({"status": {
            "addresses": facts_addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        }})
    })
}

/// Inspection reports the kernel's name for the architecture; Nodes use Go's.
pub fn kubernetes_arch(arch: Option<&str>) -> String {
    match arch.unwrap_or("") {
        "" | "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
    .to_string()
}

/// A stable address in 100.64.0.0/10 (shared address space, never routed publicly).
pub fn fake_ip(seed: &str) -> String {
    let hash = super::fnv1a(seed);
    let bits = (hash & 0x3f_ffff) as u32;
    let last = (bits & 0xff).clamp(1, 254);
    format!("100.{}.{}.{}", 64 + (bits >> 16), (bits >> 8) & 0xff, last)
}

/// The Node as a kubelet registers it: metadata, spec and status.
pub fn node(facts: &NodeFacts, now: &Time) -> Node {
    let mut labels = BTreeMap::from([
        (UUID_LABEL.to_string(), facts.host_uid.clone()),
        ("kubernetes.io/hostname".to_string(), facts.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), facts.arch.clone()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), facts.arch.clone()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    let mut taints = Vec::new();
    if facts.control_plane {
        labels.insert(CONTROL_PLANE_ROLE.to_string(), String::new());
        // kubeadm excludes control-plane nodes from external load balancers.
        labels.insert(
            "node.kubernetes.io/exclude-from-external-load-balancers".to_string(),
            String::new(),
        );
        taints.push(Taint {
            key: CONTROL_PLANE_ROLE.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        });
    }
    Node {
        metadata: ObjectMeta {
            name: Some(facts.name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..Default::default()
        }),
        status: Some(node_status(facts, now)),
    }
}

/// The conditions a healthy kubelet posts: (type, status, reason, message).
const HEALTHY_CONDITIONS: [(&str, &str, &str, &str); 4] = [
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    (
        "DiskPressure",
        "False",
        "KubeletHasNoDiskPressure",
        "kubelet has no disk pressure",
    ),
    (
        "PIDPressure",
        "False",
        "KubeletHasSufficientPID",
        "kubelet has sufficient PID available",
    ),
    (
        "Ready",
        "True",
        "KubeletReady",
        "kubelet is posting ready status",
    ),
];

/// What the node lifecycle controller writes on every condition of a Node whose kubelet
/// stopped posting: the same for an injected fault, so consumers see a real failure.
pub const NOT_READY_REASON: &str = "NodeStatusUnknown";
const NOT_READY_MESSAGE: &str = "Kubelet stopped posting node status.";

/// The status a healthy kubelet posts: Ready, no pressure, its version and resources.
pub fn node_status(facts: &NodeFacts, now: &Time) -> NodeStatus {
    let conditions = HEALTHY_CONDITIONS
        .iter()
        .map(|(type_, status, reason, message)| NodeCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        })
        .collect();
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(facts.cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", facts.memory_mib * 1024)),
        ),
        (
            "ephemeral-storage".to_string(),
            Quantity(facts.disk_bytes.to_string()),
        ),
        ("pods".to_string(), Quantity(MAX_PODS.to_string())),
        ("hugepages-1Gi".to_string(), Quantity("0".to_string())),
        ("hugepages-2Mi".to_string(), Quantity("0".to_string())),
    ]);
    let (addresses, port) = addresses_and_port(facts);
    NodeStatus {
        conditions: Some(conditions),
        addresses: Some(addresses),
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: facts.arch.clone(),
            boot_id: facts.host_uid.clone(),
            machine_id: facts.host_uid.replace('-', ""),
            system_uuid: facts.host_uid.clone(),
            container_runtime_version: "containerd://2.1.4".to_string(),
            kernel_version: "6.8.0-metal3-fakenode".to_string(),
            kubelet_version: facts.kubelet_version.clone(),
            kube_proxy_version: String::new(),
            operating_system: "linux".to_string(),
            os_image: "metal3-fakenode (no real host behind this Node)".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A strategic merge patch of the Node's status that renews every condition's
/// `lastHeartbeatTime`, as a kubelet's periodic status update does (conditions merge by
/// `type`, so nothing else changes).
pub fn heartbeat_patch(now: &Time) -> serde_json::Value {
    let conditions: Vec<_> = HEALTHY_CONDITIONS
        .iter()
        .map(|(type_, ..)| json!({"type": type_, "lastHeartbeatTime": now}))
        .collect();
    json!({ "status": { "conditions": conditions } })
}

/// A strategic merge patch that makes every condition `Unknown`, as the node lifecycle
/// controller does once a kubelet has stopped posting (its last heartbeat stays).
pub fn not_ready_patch(now: &Time) -> serde_json::Value {
    let conditions: Vec<_> = HEALTHY_CONDITIONS
        .iter()
        .map(|(type_, ..)| {
            json!({
                "type": type_, "status": "Unknown", "reason": NOT_READY_REASON,
                "message": NOT_READY_MESSAGE, "lastTransitionTime": now,
            })
        })
        .collect();
    json!({ "status": { "conditions": conditions } })
}

/// Labels a Node with the workload cluster it was made for, so that after a restart the
/// Nodes of one cluster can be listed from an API server that many clusters share. CAPI
/// cluster names and namespaces both fit in a label value (63 characters).
pub fn label_cluster(node: &mut Node, namespace: &str, name: &str) {
    let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(CLUSTER_NAMESPACE_LABEL.to_string(), namespace.to_string());
    labels.insert(CLUSTER_NAME_LABEL.to_string(), name.to_string());
}

/// The label selector of our Nodes of one workload cluster.
pub fn cluster_selector(namespace: &str, name: &str) -> String {
    format!(
        "{},{CLUSTER_NAMESPACE_LABEL}={namespace},{CLUSTER_NAME_LABEL}={name}",
        super::managed_by_selector()
    )
}

/// Whether a Node's status says Ready=True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The host UID a Node is labelled with, if any.
pub fn host_uid(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(UUID_LABEL)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Time {
        Time("2026-11-25T10:00:00Z".parse().unwrap())
    }

    fn facts(control_plane: bool) -> NodeFacts {
        NodeFacts::new(
            "test1-cp-x7k2p",
            "6f1c2a-uid",
            control_plane,
            "v1.34.1",
            None,
            &Hardware::default(),
        )
    }

    #[test]
    fn a_worker_node_is_ready_labelled_with_the_host_uid_and_untainted() {
        let n = node(&facts(false), &now());
        let labels = n.metadata.labels.as_ref().unwrap();
        assert_eq!(n.metadata.name.as_deref(), Some("test1-cp-x7k2p"));
        assert_eq!(labels[UUID_LABEL], "6f1c2a-uid");
        assert_eq!(labels["kubernetes.io/hostname"], "test1-cp-x7k2p");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        assert!(!labels.contains_key(CONTROL_PLANE_ROLE));
        assert!(n.spec.as_ref().unwrap().taints.is_none());
        assert!(
            n.spec.as_ref().unwrap().provider_id.is_none(),
            "CAPM3 sets the providerID"
        );
        assert!(is_ready(&n));
        assert_eq!(host_uid(&n), Some("6f1c2a-uid"));
        let status = n.status.unwrap();
        let pressure: Vec<_> = status
            .conditions
            .unwrap()
            .into_iter()
            .filter(|c| c.type_ != "Ready")
            .collect();
        assert_eq!(pressure.len(), 3);
        assert!(pressure.iter().all(|c| c.status == "False"));
        assert_eq!(status.node_info.unwrap().kubelet_version, "v1.34.1");
    }

    #[test]
    fn heartbeats_touch_only_heartbeat_times_and_a_dead_kubelet_is_unknown() {
        let later = Time("2026-11-25T10:00:40Z".parse().unwrap());
        let beat = heartbeat_patch(&later);
        let conditions = beat["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 4);
        for c in conditions {
            let keys: Vec<_> = c.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["lastHeartbeatTime", "type"], "{c}");
            assert_eq!(c["lastHeartbeatTime"], "2026-11-25T10:00:40Z");
        }
        assert!(conditions.iter().any(|c| c["type"] == "Ready"));
        let down = not_ready_patch(&later);
        for c in down["status"]["conditions"].as_array().unwrap() {
            assert_eq!(c["status"], "Unknown");
            assert_eq!(c["reason"], NOT_READY_REASON);
            assert!(c.get("lastHeartbeatTime").is_none(), "the last one stays");
        }
    }

    #[test]
    fn cluster_labels_select_one_clusters_nodes() {
        let mut n = node(&facts(false), &now());
        label_cluster(&mut n, "metal3", "test1");
        let labels = n.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[CLUSTER_NAMESPACE_LABEL], "metal3");
        assert_eq!(labels[CLUSTER_NAME_LABEL], "test1");
        assert!(crate::fake::is_ours(&n.metadata));
        assert_eq!(
            cluster_selector("metal3", "test1"),
            "app.kubernetes.io/managed-by=metal3-fakenode,\
             fakenode.metal3.io/cluster-namespace=metal3,fakenode.metal3.io/cluster-name=test1"
        );
    }

    #[test]
    fn a_control_plane_node_has_the_role_label_and_taint() {
        let n = node(&facts(true), &now());
        assert_eq!(n.metadata.labels.as_ref().unwrap()[CONTROL_PLANE_ROLE], "");
        let taints = n.spec.unwrap().taints.unwrap();
        assert_eq!(taints.len(), 1);
        assert_eq!(
            (taints[0].key.as_str(), taints[0].effect.as_str()),
            (CONTROL_PLANE_ROLE, "NoSchedule")
        );
    }

    #[test]
    fn hardware_details_become_capacity_and_address() {
        let hw = Hardware {
            arch: Some("aarch64".into()),
            cpus: Some(64),
            memory_mib: Some(262_144),
            disk_bytes: Some(2_000_000_000_000),
            ip: Some("192.168.111.20".into()),
        };
        let f = NodeFacts::new("n", "uid", false, "v1.34.1", None, &hw);
        let status = node_status(&f, &now());
        let cap = status.capacity.unwrap();
        assert_eq!(cap["cpu"].0, "64");
        assert_eq!(cap["memory"].0, "268435456Ki");
        assert_eq!(cap["ephemeral-storage"].0, "2000000000000");
        assert_eq!(status.addresses.unwrap()[0].address, "192.168.111.20");
        assert_eq!(status.node_info.unwrap().architecture, "arm64");
        // The Metal3Machine's own address wins over inspection's.
        let f = NodeFacts::new("n", "uid", false, "v1.34.1", Some("10.1.2.3"), &hw);
        assert_eq!(f.internal_ip, "10.1.2.3");
    }

    #[test]
    fn missing_hardware_gets_defaults_and_a_stable_fake_address() {
        let a = NodeFacts::new("n", "uid-a", false, "v1", None, &Hardware::default());
        let b = NodeFacts::new(
            "n",
            "uid-b",
            false,
            "v1",
            None,
            &Hardware {
                cpus: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(a.cpus, DEFAULT_CPUS);
        assert_eq!(b.cpus, DEFAULT_CPUS, "a zero count means not inspected");
        assert_eq!(a.internal_ip, fake_ip("uid-a"));
        assert_ne!(a.internal_ip, b.internal_ip);
        for seed in ["", "x", "6f1c2a", "ffffffff-ffff"] {
            let ip: std::net::Ipv4Addr = fake_ip(seed).parse().unwrap();
            let [a, b, _, d] = ip.octets();
            assert_eq!(a, 100);
            assert!((64..128).contains(&b), "{ip} outside 100.64.0.0/10");
            assert!((1..255).contains(&d));
        }
    }
}
