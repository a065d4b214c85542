//! The mirror Pods of a control-plane Node's static pods, as its kubelet posts them from
//! the manifests kubeadm wrote: `kube-system/<component>-<node>`. The KubeadmControlPlane's
//! health checks read exactly these: the Pod by that name, phase Running, condition
//! Ready True, and the labels `component` and `tier=control-plane`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, HostIP, Node, Pod,
    PodCondition, PodIP, PodSecurityContext, PodSpec, PodStatus, ResourceRequirements,
    SeccompProfile, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::names::is_dns_subdomain;
use super::node::CONTROL_PLANE_ROLE;
use super::{MANAGED_BY, MANAGED_BY_LABEL, stable_hash};

pub const NAMESPACE: &str = "kube-system";
/// The kubelet's annotation that makes a Pod a mirror Pod: the API server's admission
/// then leaves its spec alone (no service account is injected).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// A control-plane component with a static pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    ApiServer,
    ControllerManager,
    Scheduler,
    /// Only with stacked etcd: KCP then also checks the etcd Pods (and dials etcd
    /// through them, which no fake can answer).
    Etcd,
}

impl Component {
    pub const CONTROL_PLANE: [Component; 3] = [
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
    ];

    /// The `component` label, the container's name and the Pod's name prefix.
    pub fn name(self) -> &'static str {
        match self {
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Etcd => "etcd",
        }
    }

    /// kubeadm's CPU request for the component.
    fn cpu_request(self) -> &'static str {
        match self {
            Component::ApiServer => "250m",
            Component::ControllerManager => "200m",
            Component::Scheduler | Component::Etcd => "100m",
        }
    }
}

/// What the static pods of one control-plane Node are made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPodFacts {
    pub node: String,
    /// The Machine's Kubernetes version: the images' tag.
    pub version: String,
    /// The Node's InternalIP: static pods use the host's network.
    pub internal_ip: String,
}

impl StaticPodFacts {
    /// The facts of a control-plane Node as the Node builder made it; `None` for a
    /// worker, which has no static pods.
    pub fn of_node(node: &Node) -> Option<Self> {
        let labels = node.metadata.labels.as_ref()?;
        if !labels.contains_key(CONTROL_PLANE_ROLE) {
            return None;
        }
        let status = node.status.as_ref()?;
        Some(Self {
            node: node.metadata.name.clone()?,
            version: status.node_info.as_ref()?.kubelet_version.clone(),
            // The host's address is the last InternalIP: a kubelet endpoint served by
            // this process comes first (see `node::addresses_and_port`).
            internal_ip: status
                .addresses
                .as_ref()?
                .iter()
                .rfind(|a| a.type_ == "InternalIP")?
                .address
                .clone(),
        })
    }
}

/// The mirror Pods of a control-plane Node, each with the status of a running, ready
/// container (set through the status subresource: a create ignores it).
pub fn static_pods(facts: &StaticPodFacts, stacked_etcd: bool, now: &Time) -> Vec<Pod> {
    components(stacked_etcd)
        .filter(|c| is_dns_subdomain(&pod_name(*c, &facts.node)))
        .map(|c| static_pod(c, facts, now))
        .collect()
}

/// The mirror Pods a kubelet could not post because their names would be no valid Pod
/// names (`<component>-<node>` over 253 characters): only those Pods fail, as on a real
/// kubelet, never the Node.
pub fn unpostable(facts: &StaticPodFacts, stacked_etcd: bool) -> Vec<String> {
    components(stacked_etcd)
        .map(|c| pod_name(c, &facts.node))
        .filter(|name| !is_dns_subdomain(name))
        .collect()
}

fn components(stacked_etcd: bool) -> impl Iterator<Item = Component> {
    let etcd = stacked_etcd.then_some(Component::Etcd);
    Component::CONTROL_PLANE.into_iter().chain(etcd)
}

/// `<component>-<node>`, the name kubelets give mirror Pods and KCP looks up.
pub fn pod_name(component: Component, node: &str) -> String {
    format!("{}-{node}", component.name())
}

pub fn static_pod(component: Component, facts: &StaticPodFacts, now: &Time) -> Pod {
    let name = component.name();
    // A static pod's hash is that of its manifest; any stable value serves.
    let hash = format!("{:016x}", stable_hash(&format!("{name}/{}", facts.node)));
    let mut annotations = BTreeMap::from([
        (
            "kubernetes.io/config.source".to_string(),
            "file".to_string(),
        ),
        ("kubernetes.io/config.hash".to_string(), hash.clone()),
        (MIRROR_ANNOTATION.to_string(), hash),
        ("kubernetes.io/config.seen".to_string(), now.0.to_string()),
    ]);
    match component {
        Component::ApiServer => {
            annotations.insert(
                "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint".to_string(),
                format!("{}:6443", facts.internal_ip),
            );
        }
        Component::Etcd => {
            annotations.insert(
                "kubeadm.kubernetes.io/etcd.advertise-client-urls".to_string(),
                format!("https://{}:2379", facts.internal_ip),
            );
        }
        Component::ControllerManager | Component::Scheduler => {}
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(component, &facts.node)),
            namespace: Some(NAMESPACE.to_string()),
            labels: Some(BTreeMap::from([
                ("component".to_string(), name.to_string()),
                ("tier".to_string(), "control-plane".to_string()),
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            ])),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(facts.node.clone()),
            host_network: Some(true),
            priority_class_name: Some("system-node-critical".to_string()),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".to_string()),
                effect: Some("NoExecute".to_string()),
                ..Default::default()
            }]),
            containers: vec![Container {
                name: name.to_string(),
                image: Some(image(component, &facts.version)),
                image_pull_policy: Some("IfNotPresent".to_string()),
                command: Some(vec![name.to_string()]),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "cpu".to_string(),
                        Quantity(component.cpu_request().to_string()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(running_status(component, facts, now)),
    }
}

/// `registry.k8s.io/<component>:<version>`.
pub fn image(component: Component, version: &str) -> String {
    format!("registry.k8s.io/{}:{version}", component.name())
}

/// What a kubelet posts for a static pod whose one container runs and is ready.
pub fn running_status(component: Component, facts: &StaticPodFacts, now: &Time) -> PodStatus {
    let condition = |type_: &str| PodCondition {
        type_: type_.to_string(),
        status: "True".to_string(),
        last_transition_time: Some(now.clone()),
        ..Default::default()
    };
    let image = image(component, &facts.version);
    let id = stable_hash(&format!("{}/{}", component.name(), facts.node));
    PodStatus {
        phase: Some("Running".to_string()),
        conditions: Some(
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            ]
            .into_iter()
            .map(condition)
            .collect(),
        ),
        host_ip: Some(facts.internal_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: facts.internal_ip.clone(),
        }]),
        pod_ip: Some(facts.internal_ip.clone()),
        pod_ips: Some(vec![PodIP {
            ip: facts.internal_ip.clone(),
        }]),
        start_time: Some(now.clone()),
        container_statuses: Some(vec![ContainerStatus {
            name: component.name().to_string(),
            image_id: format!("{image}@sha256:{:0>64x}", id),
            image,
            container_id: Some(format!("containerd://{:0>64x}", id.rotate_left(17))),
            ready: true,
            started: Some(true),
            restart_count: 0,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(now.clone()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// What KCP requires of a static pod: phase Running and condition Ready True.
pub fn is_running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::node::{Hardware, NodeFacts, node};

    fn now() -> Time {
        Time("2026-11-26T10:00:00Z".parse().unwrap())
    }

    fn facts() -> StaticPodFacts {
        let n = node(
            &NodeFacts::new(
                "test1-cp-x7k2p",
                "uid",
                true,
                "v1.34.1",
                Some("192.168.111.100"),
                &Hardware::default(),
            ),
            &now(),
        );
        StaticPodFacts::of_node(&n).expect("a control-plane Node")
    }

    #[test]
    fn a_worker_has_no_static_pods() {
        let n = node(
            &NodeFacts::new("w", "uid", false, "v1.34.1", None, &Hardware::default()),
            &now(),
        );
        assert_eq!(StaticPodFacts::of_node(&n), None);
    }

    #[test]
    fn the_control_plane_pods_are_what_kcp_reads() {
        let f = facts();
        assert_eq!(f.internal_ip, "192.168.111.100");
        let pods = static_pods(&f, false, &now());
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "kube-apiserver-test1-cp-x7k2p",
                "kube-controller-manager-test1-cp-x7k2p",
                "kube-scheduler-test1-cp-x7k2p"
            ]
        );
        for (pod, component) in pods.iter().zip(Component::CONTROL_PLANE) {
            let labels = pod.metadata.labels.as_ref().unwrap();
            assert_eq!(labels["component"], component.name());
            assert_eq!(labels["tier"], "control-plane");
            assert!(crate::fake::is_ours(&pod.metadata));
            assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
            assert!(pod.metadata.annotations.as_ref().unwrap()[MIRROR_ANNOTATION].len() == 16);
            let spec = pod.spec.as_ref().unwrap();
            assert_eq!(spec.node_name.as_deref(), Some("test1-cp-x7k2p"));
            assert_eq!(spec.host_network, Some(true));
            let image = format!("registry.k8s.io/{}:v1.34.1", component.name());
            assert_eq!(spec.containers[0].image.as_deref(), Some(image.as_str()));
            assert!(is_running_and_ready(pod));
            let status = pod.status.as_ref().unwrap();
            let conditions: Vec<_> = status
                .conditions
                .iter()
                .flatten()
                .map(|c| (c.type_.as_str(), c.status.as_str()))
                .collect();
            for wanted in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
                assert!(conditions.contains(&(wanted, "True")), "{conditions:?}");
            }
            let container = &status.container_statuses.as_ref().unwrap()[0];
            assert_eq!(container.name, component.name());
            assert_eq!(container.image, image);
            assert!(container.ready && container.started == Some(true));
            assert!(container.state.as_ref().unwrap().running.is_some());
            assert_eq!(status.pod_ip.as_deref(), Some("192.168.111.100"));
        }
        let endpoint = &pods[0].metadata.annotations.as_ref().unwrap()["kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint"];
        assert_eq!(endpoint, "192.168.111.100:6443");
    }

    #[test]
    fn etcd_only_when_stacked() {
        let pods = static_pods(&facts(), true, &now());
        assert_eq!(pods.len(), 4);
        let etcd = &pods[3];
        assert_eq!(etcd.metadata.name.as_deref(), Some("etcd-test1-cp-x7k2p"));
        assert_eq!(etcd.metadata.labels.as_ref().unwrap()["component"], "etcd");
    }

    #[test]
    fn a_pending_or_unready_pod_is_not_healthy() {
        let mut pod = static_pod(Component::Scheduler, &facts(), &now());
        pod.status.as_mut().unwrap().phase = Some("Pending".into());
        assert!(!is_running_and_ready(&pod));
        pod.status = None;
        assert!(!is_running_and_ready(&pod));
    }

    #[test]
    fn a_mirror_pod_whose_name_would_be_too_long_is_skipped_alone() {
        // 230 characters: `kube-apiserver-<node>` fits in 253, the longer
        // `kube-controller-manager-<node>` does not.
        let node = format!("{}.{}", "a".repeat(115), "b".repeat(114));
        let f = StaticPodFacts {
            node: node.clone(),
            ..facts()
        };
        let names: Vec<String> = static_pods(&f, true, &now())
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                format!("kube-apiserver-{node}"),
                format!("kube-scheduler-{node}"),
                format!("etcd-{node}")
            ]
        );
        assert_eq!(
            unpostable(&f, true),
            [format!("kube-controller-manager-{node}")]
        );
        assert!(unpostable(&facts(), true).is_empty());
    }
}
