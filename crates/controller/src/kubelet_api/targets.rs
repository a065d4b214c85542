//! What answers behind a forwarded port (pure): the fake etcd member of a control-plane
//! Node on its etcd Pod's client port, and a TLS endpoint with the certificate a
//! kube-apiserver would present on its Pod's secure port. Anything else is refused with a
//! message the port-forward's client reads on its error stream.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use crate::fake::is_ours;
use crate::fake::node::{CLUSTER_NAME_LABEL, CLUSTER_NAMESPACE_LABEL};
use crate::fake::static_pods::{Component, NAMESPACE};
use crate::plan::ClusterKey;

/// etcd's client port, which KCP dials on the etcd Pod.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// kube-apiserver's secure port as kubeadm sets it by default.
pub const API_SERVER_PORT: u16 = 6443;

/// What serves a port of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The etcd member of the Node (its name is the member's name).
    EtcdMember { node: String },
    /// The kube-apiserver's serving certificate, issued when the Node was made.
    ApiServerCertificate {
        node: String,
        issued: Option<jiff::Timestamp>,
    },
}

/// Why a port-forward gets no target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoTarget {
    #[error("pod {namespace}/{pod} was not made by metal3-fakenode: no fake serves it")]
    NotOurs { namespace: String, pod: String },
    #[error("pod {namespace}/{pod} has no Node of cluster {cluster}")]
    OtherCluster {
        namespace: String,
        pod: String,
        cluster: String,
    },
    #[error("no fake serves port {port} of pod {namespace}/{pod} (served: {served})")]
    Port {
        namespace: String,
        pod: String,
        port: u16,
        served: &'static str,
    },
}

/// The cluster a Node was made for, from the labels this process gives its Nodes.
pub fn cluster_of(node: &Node) -> Option<ClusterKey> {
    let labels = node.metadata.labels.as_ref()?;
    Some(ClusterKey {
        namespace: labels.get(CLUSTER_NAMESPACE_LABEL)?.clone(),
        name: labels.get(CLUSTER_NAME_LABEL)?.clone(),
    })
}

/// What serves `port` of `pod`, a mirror Pod of ours on `node` of `cluster`.
pub fn target(cluster: &ClusterKey, pod: &Pod, node: &Node, port: u16) -> Result<Target, NoTarget> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    if !is_ours(&pod.metadata) || namespace != NAMESPACE {
        return Err(NoTarget::NotOurs {
            namespace,
            pod: name,
        });
    }
    if cluster_of(node).as_ref() != Some(cluster) {
        return Err(NoTarget::OtherCluster {
            namespace,
            pod: name,
            cluster: cluster.to_string(),
        });
    }
    let component = pod.labels().get("component").map(String::as_str);
    let node_name = node.name_any();
    match (component, port) {
        (Some(c), ETCD_CLIENT_PORT) if c == Component::Etcd.name() => {
            Ok(Target::EtcdMember { node: node_name })
        }
        (Some(c), API_SERVER_PORT) if c == Component::ApiServer.name() => {
            Ok(Target::ApiServerCertificate {
                node: node_name,
                issued: node.metadata.creation_timestamp.as_ref().map(|t| t.0),
            })
        }
        (c, _) => Err(NoTarget::Port {
            namespace,
            pod: name,
            port,
            served: match c {
                Some(c) if c == Component::Etcd.name() => "2379",
                Some(c) if c == Component::ApiServer.name() => "6443",
                _ => "none",
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::node::{NodeFacts, label_cluster, node};
    use crate::fake::static_pods::{StaticPodFacts, static_pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn key(name: &str) -> ClusterKey {
        ClusterKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn fixtures() -> (Node, StaticPodFacts) {
        let facts = NodeFacts::new("cp-0", "uid", true, "v1.35.0", None, &Default::default());
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let mut n = node(&facts, &now);
        label_cluster(&mut n, "ns", "a");
        n.metadata.creation_timestamp = Some(now);
        let pod_facts = StaticPodFacts {
            node: "cp-0".into(),
            version: "v1.35.0".into(),
            internal_ip: "10.0.0.1".into(),
        };
        (n, pod_facts)
    }

    #[test]
    fn etcd_and_api_server_pods_have_their_fakes() {
        let (n, f) = fixtures();
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let etcd = static_pod(Component::Etcd, &f, &now);
        assert_eq!(
            target(&key("a"), &etcd, &n, 2379),
            Ok(Target::EtcdMember {
                node: "cp-0".into()
            })
        );
        let api = static_pod(Component::ApiServer, &f, &now);
        assert!(matches!(
            target(&key("a"), &api, &n, 6443),
            Ok(Target::ApiServerCertificate {
                issued: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn other_ports_pods_and_clusters_are_refused() {
        let (n, f) = fixtures();
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let etcd = static_pod(Component::Etcd, &f, &now);
        assert!(matches!(
            target(&key("a"), &etcd, &n, 2380),
            Err(NoTarget::Port { port: 2380, .. })
        ));
        assert!(matches!(
            target(&key("b"), &etcd, &n, 2379),
            Err(NoTarget::OtherCluster { .. })
        ));
        let scheduler = static_pod(Component::Scheduler, &f, &now);
        assert!(matches!(
            target(&key("a"), &scheduler, &n, 10259),
            Err(NoTarget::Port { served: "none", .. })
        ));
        let mut foreign = etcd.clone();
        foreign.metadata.labels = None;
        assert!(matches!(
            target(&key("a"), &foreign, &n, 2379),
            Err(NoTarget::NotOurs { .. })
        ));
    }
}
