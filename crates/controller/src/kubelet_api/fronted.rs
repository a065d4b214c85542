//! Workload clusters sharing one API server behind the tenancy front. Their Pods live
//! in the backing server under namespaces that carry the cluster's prefix, so the
//! backing server asks this kubelet for `/portForward/<prefix>-<namespace>/<pod>`. The
//! front records each cluster's prefix on its Cluster (`tenancy::PREFIX_ANNOTATION`):
//! the prefix names the cluster, and the rest of the namespace is the one the cluster's
//! own clients (and this process, through the front) know the Pod by.
//!
//! The CA of the calling API server's kubelet client certificate cannot tell these
//! clusters apart (they share the server, hence its certificate), which is why the path
//! decides here.

use kube::ResourceExt;

use crate::plan::ClusterKey;
use crate::stores::Stores;

/// A Cluster that says which prefix the front gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefixed {
    pub cluster: ClusterKey,
    pub prefix: String,
}

/// Whose Pod a backing namespace names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fronted {
    /// Not a namespace of a cluster behind the front (no Cluster carries its prefix):
    /// the caller's certificate and the Pod's Node decide, as for any API server.
    No,
    /// The cluster, and the Pod's namespace as that cluster knows it.
    Cluster {
        cluster: ClusterKey,
        namespace: String,
    },
    /// Several Clusters carry the prefix (a copied annotation, say): refused rather than
    /// guessed.
    Ambiguous {
        prefix: String,
        clusters: Vec<ClusterKey>,
    },
}

/// Decides whose Pod `backing_namespace` names (pure).
pub fn cluster_of(backing_namespace: &str, prefixed: &[Prefixed]) -> Fronted {
    let Some((prefix, namespace)) = tenancy::split_backing_namespace(backing_namespace) else {
        return Fronted::No;
    };
    let mut clusters: Vec<ClusterKey> = prefixed
        .iter()
        .filter(|p| p.prefix == prefix.as_str())
        .map(|p| p.cluster.clone())
        .collect();
    match clusters.len() {
        0 => Fronted::No,
        1 => Fronted::Cluster {
            cluster: clusters.remove(0),
            namespace,
        },
        _ => {
            clusters.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            Fronted::Ambiguous {
                prefix: prefix.as_str().to_string(),
                clusters,
            }
        }
    }
}

/// Observe: the Clusters of the stores that carry a prefix of the front. Unreadable
/// Clusters count too: their metadata is read all the same, and leaving one out could
/// turn an ambiguous prefix into a wrong answer.
pub fn prefixed_clusters(stores: &[Stores]) -> Vec<Prefixed> {
    stores
        .iter()
        .flat_map(|s| s.clusters.state())
        .filter_map(|cluster| {
            let prefix = cluster.annotations().get(tenancy::PREFIX_ANNOTATION)?;
            Some(Prefixed {
                cluster: ClusterKey {
                    namespace: cluster.namespace()?,
                    name: cluster.name_any(),
                },
                prefix: prefix.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ClusterKey {
        ClusterKey {
            namespace: "metal3".into(),
            name: name.into(),
        }
    }

    fn prefixed(name: &str, prefix: &str) -> Prefixed {
        Prefixed {
            cluster: key(name),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn the_prefix_names_the_cluster_and_the_rest_its_namespace() {
        let clusters = [prefixed("a", "taaaaa"), prefixed("b", "tbbbbb")];
        assert_eq!(
            cluster_of("tbbbbb-kube-system", &clusters),
            Fronted::Cluster {
                cluster: key("b"),
                namespace: "kube-system".into(),
            }
        );
        assert_eq!(
            cluster_of("taaaaa-default", &clusters),
            Fronted::Cluster {
                cluster: key("a"),
                namespace: "default".into(),
            }
        );
    }

    #[test]
    fn a_namespace_no_cluster_is_prefixed_with_is_left_to_the_certificate() {
        let clusters = [prefixed("a", "taaaaa")];
        for namespace in [
            "kube-system",
            "tcccccc-kube-system",
            "tccccc-kube-system",
            "",
        ] {
            assert_eq!(cluster_of(namespace, &clusters), Fronted::No, "{namespace}");
        }
        assert_eq!(cluster_of("taaaaa-kube-system", &[]), Fronted::No);
    }

    #[test]
    fn two_clusters_with_one_prefix_are_refused_not_guessed() {
        let clusters = [
            prefixed("b", "taaaaa"),
            prefixed("a", "taaaaa"),
            prefixed("c", "tccccc"),
        ];
        assert_eq!(
            cluster_of("taaaaa-kube-system", &clusters),
            Fronted::Ambiguous {
                prefix: "taaaaa".into(),
                clusters: vec![key("a"), key("b")],
            }
        );
    }
}
