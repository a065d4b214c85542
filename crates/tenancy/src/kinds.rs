//! The resources the front knows how to isolate, and how. A resource not listed here is
//! refused, whatever its group: being served by the backing server is not enough.
//!
//! Listed are what the workload-cluster clients use: the controller's fake kubelet
//! (Nodes, Pods and their status, Leases, Events), KCP (Nodes, Pods, ConfigMaps such as
//! `kubeadm-config`, Secrets, Roles, RoleBindings, ClusterRoles, ClusterRoleBindings such
//! as `kubeadm:cluster-admins`, the CoreDNS Deployment and kube-proxy DaemonSet), CAPI
//! (Nodes; Pods by `spec.nodeName` and their eviction for drain; VolumeAttachments, which
//! drain waits on; PodDisruptionBudgets) and CAPM3 (Nodes), plus the workload kinds a
//! client may list beside them.
//!
//! Deliberately refused, for now or for good:
//! - CustomResourceDefinitions and APIServices: they define API groups for the whole
//!   server; a group cannot be given to one cluster.
//! - PriorityClasses: the built-in `system-node-critical` and `system-cluster-critical`
//!   already exist in the backing server, so Pods naming them are admitted; a cluster's own
//!   classes would change scheduling for every cluster.
//! - PersistentVolumes, StorageClasses, CSI kinds: no cluster here has storage.
//! - Services, Endpoints, EndpointSlices: their node and target references would need
//!   mapping, and no client of a fake cluster needs them yet.
//! - CertificateSigningRequests, webhook configurations, TokenReviews and other
//!   reviews: they act on the backing server itself.
//! - `serviceaccounts/token`: it would mint a credential of the backing server.

use crate::error::{Error, Result};
use crate::names::NameRule;

/// How a resource's objects are placed in the backing server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In a namespace: the namespace is mapped, the name kept.
    Namespaced,
    /// Cluster-scoped, names mapped (two clusters have Nodes of the same name).
    Cluster(NameRule),
    /// The Namespace kind itself: its name is a namespace, mapped as one.
    Namespace,
}

/// The subresources the front isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
    Eviction,
    PortForward,
    Finalize,
}

impl Subresource {
    pub fn as_str(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Eviction => "eviction",
            Subresource::PortForward => "portforward",
            Subresource::Finalize => "finalize",
        }
    }

    fn parse(value: &str) -> Option<Subresource> {
        [
            Subresource::Status,
            Subresource::Scale,
            Subresource::Eviction,
            Subresource::PortForward,
            Subresource::Finalize,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

/// What a field selector's value is, so it can be mapped like the field it selects on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue {
    /// Not a name the front maps (a phase, an IP, a kind).
    Verbatim,
    /// A namespace.
    Namespace,
    /// A Node's name.
    NodeName,
    /// The object's own name, mapped as the resource's scope says.
    ObjectName,
}

/// What a Table answer's cells hold, beyond the name column every Table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableCells {
    /// These columns (by name) hold Node names; the others hold no mapped value.
    NodeColumns(&'static [&'static str]),
    /// Cells name mapped things the front does not rewrite: a Table is refused.
    Refused,
}

/// What a request or an answer is about: a resource, and perhaps one of its subresources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub resource: &'static Resource,
    pub subresource: Option<Subresource>,
}

impl Target {
    pub fn new(resource: &'static Resource) -> Target {
        Target {
            resource,
            subresource: None,
        }
    }
}

/// One resource the front isolates.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group, empty for the core group.
    pub group: &'static str,
    pub versions: &'static [&'static str],
    /// The plural, as in paths.
    pub plural: &'static str,
    pub kind: &'static str,
    pub scope: Scope,
    pub subresources: &'static [Subresource],
    /// Field selector keys beyond `metadata.name` and `metadata.namespace`.
    pub fields: &'static [(&'static str, FieldValue)],
    pub table: TableCells,
}

impl Resource {
    /// `plural` or `plural.group`, as messages name a resource.
    pub fn display_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// A subresource of this resource, if the front isolates it.
    pub fn subresource(&self, name: &str) -> Result<Subresource> {
        Subresource::parse(name)
            .filter(|s| self.subresources.contains(s))
            .ok_or_else(|| Error::UnsupportedSubresource {
                resource: self.display_name(),
                subresource: name.to_string(),
            })
    }

    /// What a field selector key's value is; keys the front does not know are refused
    /// (the backing server would refuse most, and the rest could name mapped things).
    pub fn field(&self, key: &str) -> Option<FieldValue> {
        match key {
            "metadata.name" => Some(FieldValue::ObjectName),
            "metadata.namespace" => Some(FieldValue::Namespace),
            _ => self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v),
        }
    }
}

const V1: &[&str] = &["v1"];
const POD_FIELDS: &[(&str, FieldValue)] = &[
    ("spec.nodeName", FieldValue::NodeName),
    ("status.nominatedNodeName", FieldValue::NodeName),
    ("spec.restartPolicy", FieldValue::Verbatim),
    ("spec.schedulerName", FieldValue::Verbatim),
    ("spec.serviceAccountName", FieldValue::Verbatim),
    ("spec.hostNetwork", FieldValue::Verbatim),
    ("status.phase", FieldValue::Verbatim),
    ("status.podIP", FieldValue::Verbatim),
    ("status.podIPs", FieldValue::Verbatim),
];
// `involvedObject.name` is kept as written in Events (Events are namespaced, so isolated
// already), hence selected verbatim.
const EVENT_FIELDS: &[(&str, FieldValue)] = &[
    ("involvedObject.namespace", FieldValue::Namespace),
    ("involvedObject.kind", FieldValue::Verbatim),
    ("involvedObject.name", FieldValue::Verbatim),
    ("involvedObject.uid", FieldValue::Verbatim),
    ("involvedObject.apiVersion", FieldValue::Verbatim),
    ("involvedObject.resourceVersion", FieldValue::Verbatim),
    ("involvedObject.fieldPath", FieldValue::Verbatim),
    ("reason", FieldValue::Verbatim),
    ("reportingComponent", FieldValue::Verbatim),
    ("source", FieldValue::Verbatim),
    ("type", FieldValue::Verbatim),
];
const NO_CELLS: TableCells = TableCells::NodeColumns(&[]);

const fn namespaced(group: &'static str, plural: &'static str, kind: &'static str) -> Resource {
    Resource {
        group,
        versions: V1,
        plural,
        kind,
        scope: Scope::Namespaced,
        subresources: &[],
        fields: &[],
        table: NO_CELLS,
    }
}

/// Every resource the front isolates.
pub static RESOURCES: &[Resource] = &[
    Resource {
        subresources: &[
            Subresource::Status,
            Subresource::Eviction,
            Subresource::PortForward,
        ],
        fields: POD_FIELDS,
        table: TableCells::NodeColumns(&["Node", "Nominated Node"]),
        ..namespaced("", "pods", "Pod")
    },
    namespaced("", "configmaps", "ConfigMap"),
    Resource {
        fields: &[("type", FieldValue::Verbatim)],
        ..namespaced("", "secrets", "Secret")
    },
    namespaced("", "serviceaccounts", "ServiceAccount"),
    Resource {
        fields: EVENT_FIELDS,
        ..namespaced("", "events", "Event")
    },
    Resource {
        scope: Scope::Namespace,
        subresources: &[Subresource::Status, Subresource::Finalize],
        fields: &[("status.phase", FieldValue::Verbatim)],
        ..namespaced("", "namespaces", "Namespace")
    },
    Resource {
        scope: Scope::Cluster(NameRule::DnsSubdomain),
        subresources: &[Subresource::Status],
        fields: &[("spec.unschedulable", FieldValue::Verbatim)],
        ..namespaced("", "nodes", "Node")
    },
    Resource {
        subresources: &[Subresource::Status, Subresource::Scale],
        ..namespaced("apps", "deployments", "Deployment")
    },
    Resource {
        subresources: &[Subresource::Status],
        ..namespaced("apps", "daemonsets", "DaemonSet")
    },
    Resource {
        subresources: &[Subresource::Status, Subresource::Scale],
        fields: &[("status.replicas", FieldValue::Verbatim)],
        ..namespaced("apps", "replicasets", "ReplicaSet")
    },
    Resource {
        subresources: &[Subresource::Status, Subresource::Scale],
        ..namespaced("apps", "statefulsets", "StatefulSet")
    },
    namespaced("apps", "controllerrevisions", "ControllerRevision"),
    namespaced("coordination.k8s.io", "leases", "Lease"),
    Resource {
        subresources: &[Subresource::Status],
        ..namespaced("policy", "poddisruptionbudgets", "PodDisruptionBudget")
    },
    namespaced("events.k8s.io", "events", "Event"),
    namespaced("rbac.authorization.k8s.io", "roles", "Role"),
    Resource {
        table: TableCells::Refused,
        ..namespaced("rbac.authorization.k8s.io", "rolebindings", "RoleBinding")
    },
    Resource {
        scope: Scope::Cluster(NameRule::PathSegment),
        ..namespaced("rbac.authorization.k8s.io", "clusterroles", "ClusterRole")
    },
    Resource {
        scope: Scope::Cluster(NameRule::PathSegment),
        table: TableCells::Refused,
        ..namespaced(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "ClusterRoleBinding",
        )
    },
    Resource {
        scope: Scope::Cluster(NameRule::DnsSubdomain),
        subresources: &[Subresource::Status],
        table: TableCells::Refused,
        ..namespaced("storage.k8s.io", "volumeattachments", "VolumeAttachment")
    },
];

/// The Node resource, whose name mapping every Node reference (`spec.nodeName`) follows.
pub fn node() -> &'static Resource {
    &RESOURCES[6]
}

/// The resource a path names, by group, version and plural.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Result<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural && r.versions.contains(&version))
        .ok_or_else(|| Error::UnknownResource {
            group: group.to_string(),
            version: version.to_string(),
            resource: plural.to_string(),
        })
}

/// The resource of an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Result<&'static Resource> {
    let (group, version) = split_api_version(api_version);
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind && r.versions.contains(&version))
        .ok_or_else(|| Error::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        })
}

/// `apiVersion` as (group, version); the core group's is just `v1`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_is_the_node_resource() {
        assert_eq!(node().kind, "Node");
        assert_eq!(node().scope, Scope::Cluster(NameRule::DnsSubdomain));
    }

    #[test]
    fn lookups() {
        assert_eq!(by_plural("", "v1", "pods").unwrap().kind, "Pod");
        assert_eq!(
            by_kind("apps/v1", "Deployment").unwrap().plural,
            "deployments"
        );
        assert_eq!(
            by_kind("rbac.authorization.k8s.io/v1", "ClusterRole")
                .unwrap()
                .scope,
            Scope::Cluster(NameRule::PathSegment)
        );
        for (group, plural) in [
            ("apiextensions.k8s.io", "customresourcedefinitions"),
            ("scheduling.k8s.io", "priorityclasses"),
            ("", "persistentvolumes"),
            ("", "services"),
            ("certificates.k8s.io", "certificatesigningrequests"),
        ] {
            assert_eq!(
                by_plural(group, "v1", plural).unwrap_err().reason(),
                "unknown_resource"
            );
        }
        assert_eq!(
            by_plural("", "v2", "pods").unwrap_err().reason(),
            "unknown_resource"
        );
        assert_eq!(
            by_kind("v1", "Service").unwrap_err().reason(),
            "unknown_kind"
        );
        assert_eq!(
            by_kind("apps/v1", "Pod").unwrap_err().reason(),
            "unknown_kind"
        );
    }

    #[test]
    fn every_resource_is_listed_once() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(
                    (a.group, a.plural) != (b.group, b.plural),
                    "{} listed twice",
                    a.display_name()
                );
            }
        }
    }

    #[test]
    fn subresources_and_fields() {
        let pods = by_plural("", "v1", "pods").unwrap();
        assert_eq!(
            pods.subresource("portforward"),
            Ok(Subresource::PortForward)
        );
        assert_eq!(
            pods.subresource("log").unwrap_err().reason(),
            "unsupported_subresource"
        );
        let sa = by_plural("", "v1", "serviceaccounts").unwrap();
        assert_eq!(
            sa.subresource("token").unwrap_err().reason(),
            "unsupported_subresource"
        );
        assert_eq!(pods.field("spec.nodeName"), Some(FieldValue::NodeName));
        assert_eq!(
            pods.field("metadata.namespace"),
            Some(FieldValue::Namespace)
        );
        assert_eq!(pods.field("status.hostIP"), None);
    }
}
