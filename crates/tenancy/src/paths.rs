//! Request paths: a client's Kubernetes API path parsed into what it is about, and the
//! path to ask the backing server; and the reverse for the kubelet endpoint, which gets
//! the backing server's `/portForward/<namespace>/<pod>` and must know whose Pod it is.
//!
//! Paths hold names as written: a percent-escape is refused (no Kubernetes name needs
//! one), and so is any shape the front does not know, such as the deprecated `/watch/`
//! prefix or a resource the front does not isolate.

use crate::error::{Error, Result};
use crate::kinds::{self, Scope, Target};
use crate::names::{self, NameRule};
use crate::prefix::Prefix;

/// A request path, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiPath {
    /// Paths about the server rather than any object (`/`, `/healthz`, `/livez`,
    /// `/readyz` and their checks, `/version`, `/openapi/...`): answered as the backing
    /// server answers them, unmapped.
    Server(String),
    /// Discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`):
    /// the backing server's answer, which the front filters to what it isolates.
    Discovery(String),
    /// A resource, a collection of it, or one of its objects or subresources.
    Resource(ResourcePath),
}

/// A path naming a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub target: Target,
    pub version: String,
    /// The client's namespace; `None` for cluster-scoped resources and for lists and
    /// watches across all namespaces.
    pub namespace: Option<String>,
    /// The object's name; `None` for a collection (list, watch, create, delete-collection).
    pub name: Option<String>,
}

impl ResourcePath {
    /// A collection request reaches objects of other clusters unless the cluster's label
    /// selector is added; a request naming one object is isolated by its mapped name.
    pub fn needs_cluster_selector(&self) -> bool {
        self.name.is_none()
    }

    /// The backing server's path for this request.
    pub fn backing_path(&self, prefix: &Prefix) -> Result<String> {
        let resource = self.target.resource;
        let mut path = if resource.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", resource.group, self.version)
        };
        if let Some(namespace) = &self.namespace {
            path.push_str("/namespaces/");
            path.push_str(&names::backing_namespace(prefix, namespace)?);
        }
        path.push('/');
        path.push_str(resource.plural);
        if let Some(name) = &self.name {
            let mapped = match resource.scope {
                Scope::Namespaced => name.clone(),
                Scope::Namespace => names::backing_namespace(prefix, name)?,
                Scope::Cluster(rule) => names::backing_name(prefix, rule, resource.kind, name)?,
            };
            path.push('/');
            path.push_str(&mapped);
        }
        if let Some(subresource) = self.target.subresource {
            path.push('/');
            path.push_str(subresource.as_str());
        }
        Ok(path)
    }
}

impl ApiPath {
    /// The backing server's path for this request.
    pub fn backing_path(&self, prefix: &Prefix) -> Result<String> {
        match self {
            ApiPath::Server(path) | ApiPath::Discovery(path) => Ok(path.clone()),
            ApiPath::Resource(resource) => resource.backing_path(prefix),
        }
    }
}

/// Parses a client's request path (without its query).
pub fn parse(path: &str) -> Result<ApiPath> {
    let refuse = |why| Error::UnsupportedPath {
        path: path.to_string(),
        why,
    };
    if !path.starts_with('/') {
        return Err(refuse("not an absolute path"));
    }
    if path.contains(['?', '#', '%']) {
        return Err(refuse("holds a query, a fragment or a percent-escape"));
    }
    if path == "/" || path == "/version" {
        return Ok(ApiPath::Server(path.to_string()));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(refuse("has an empty, '.' or '..' segment"));
    }
    match segments.as_slice() {
        ["healthz" | "livez" | "readyz", ..] | ["openapi", "v2" | "v3", ..] => {
            Ok(ApiPath::Server(path.to_string()))
        }
        ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _] => {
            Ok(ApiPath::Discovery(path.to_string()))
        }
        ["api", version, rest @ ..] => {
            resource_path(path, "", version, rest).map(ApiPath::Resource)
        }
        ["apis", group, version, rest @ ..] => {
            resource_path(path, group, version, rest).map(ApiPath::Resource)
        }
        _ => Err(refuse("not a path of the Kubernetes API the front serves")),
    }
}

fn resource_path(path: &str, group: &str, version: &str, rest: &[&str]) -> Result<ResourcePath> {
    let refuse = |why| Error::UnsupportedPath {
        path: path.to_string(),
        why,
    };
    if rest.first() == Some(&"watch") {
        return Err(refuse(
            "the deprecated /watch/ paths are not served; use ?watch=true",
        ));
    }
    // `/namespaces/<ns>/status` and `/finalize` are the Namespace's own subresources;
    // `/namespaces/<ns>/<resource>...` is a namespaced resource.
    let namespace_subresource = group.is_empty()
        && rest.len() == 3
        && rest[0] == "namespaces"
        && matches!(rest[2], "status" | "finalize");
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() && !namespace_subresource => {
            (Some(namespace.to_string()), rest)
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, subresource] => (*plural, Some(name.to_string()), Some(*subresource)),
        _ => return Err(refuse("too many segments for a resource path")),
    };
    let resource = kinds::by_plural(group, version, plural)?;
    match (resource.scope, &namespace, &name) {
        (Scope::Namespaced, None, Some(_)) => {
            return Err(refuse("a namespaced object is named within its namespace"));
        }
        (Scope::Cluster(_) | Scope::Namespace, Some(_), _) => {
            return Err(refuse("a cluster-scoped resource has no namespace"));
        }
        _ => {}
    }
    let subresource = subresource.map(|s| resource.subresource(s)).transpose()?;
    Ok(ResourcePath {
        target: Target {
            resource,
            subresource,
        },
        version: version.to_string(),
        namespace,
        name,
    })
}

/// A port-forward the backing server sends to the kubelet endpoint, in the client's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletPortForward {
    pub prefix: Prefix,
    pub namespace: String,
    pub pod: String,
}

/// Reads the kubelet's `/portForward/<backing namespace>/<pod>`: whose cluster, which
/// namespace, which Pod (Pod names are not mapped). A namespace the front did not map is
/// refused; the caller still checks that the prefix belongs to a served cluster.
pub fn kubelet_port_forward(path: &str) -> Result<KubeletPortForward> {
    let refuse = |why| Error::UnsupportedPath {
        path: path.to_string(),
        why,
    };
    let segments: Vec<&str> = path.split('/').collect();
    let ["", "portForward", backing, pod] = segments.as_slice() else {
        return Err(refuse("not /portForward/<namespace>/<pod>"));
    };
    if pod.is_empty() || pod.contains('%') {
        return Err(refuse("no Pod name"));
    }
    let (prefix, namespace) =
        names::split_backing_namespace(backing).ok_or_else(|| Error::ForeignName {
            what: "namespace",
            value: backing.to_string(),
        })?;
    Ok(KubeletPortForward {
        prefix,
        namespace,
        pod: pod.to_string(),
    })
}

/// The kubelet path the backing server uses for a client's port-forward.
pub fn backing_kubelet_port_forward(prefix: &Prefix, namespace: &str, pod: &str) -> Result<String> {
    NameRule::DnsSubdomain
        .check(pod)
        .map_err(|rule| Error::InvalidName {
            what: "Pod",
            value: pod.to_string(),
            rule,
        })?;
    Ok(format!(
        "/portForward/{}/{pod}",
        names::backing_namespace(prefix, namespace)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Subresource;
    use crate::names::tests::{dns_label_strategy, p, prefix_strategy};
    use proptest::prelude::*;

    fn resource(path: &str) -> ResourcePath {
        match parse(path).unwrap() {
            ApiPath::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_paths_map_their_namespace() {
        let a = p("taaaaa");
        let r = resource("/api/v1/namespaces/kube-system/pods/etcd-node-0/portforward");
        assert_eq!(r.target.subresource, Some(Subresource::PortForward));
        assert_eq!(
            r.backing_path(&a).unwrap(),
            "/api/v1/namespaces/taaaaa-kube-system/pods/etcd-node-0/portforward"
        );
        assert!(!r.needs_cluster_selector());
        let r = resource("/apis/apps/v1/namespaces/kube-system/deployments/coredns/scale");
        assert_eq!(
            r.backing_path(&a).unwrap(),
            "/apis/apps/v1/namespaces/taaaaa-kube-system/deployments/coredns/scale"
        );
        let r = resource("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases");
        assert!(r.needs_cluster_selector());
        assert_eq!(
            r.backing_path(&a).unwrap(),
            "/apis/coordination.k8s.io/v1/namespaces/taaaaa-kube-node-lease/leases"
        );
    }

    #[test]
    fn cluster_scoped_paths_map_their_name() {
        let a = p("taaaaa");
        let r = resource("/api/v1/nodes/node-0/status");
        assert_eq!(
            r.backing_path(&a).unwrap(),
            "/api/v1/nodes/taaaaa-node-0/status"
        );
        let r = resource(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kubeadm:cluster-admins",
        );
        assert_eq!(
            r.backing_path(&a).unwrap(),
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/taaaaa-kubeadm:cluster-admins"
        );
        let r = resource("/api/v1/nodes");
        assert!(r.needs_cluster_selector());
        assert_eq!(r.backing_path(&a).unwrap(), "/api/v1/nodes");
    }

    #[test]
    fn namespaces_and_their_subresources() {
        let a = p("taaaaa");
        assert_eq!(
            resource("/api/v1/namespaces").backing_path(&a).unwrap(),
            "/api/v1/namespaces"
        );
        assert_eq!(
            resource("/api/v1/namespaces/metal3")
                .backing_path(&a)
                .unwrap(),
            "/api/v1/namespaces/taaaaa-metal3"
        );
        let r = resource("/api/v1/namespaces/metal3/finalize");
        assert_eq!(r.target.resource.kind, "Namespace");
        assert_eq!(
            r.backing_path(&a).unwrap(),
            "/api/v1/namespaces/taaaaa-metal3/finalize"
        );
        // A list of Pods in a namespace is not a Namespace subresource.
        let r = resource("/api/v1/namespaces/metal3/pods");
        assert_eq!(r.target.resource.kind, "Pod");
        assert_eq!(r.namespace.as_deref(), Some("metal3"));
    }

    #[test]
    fn all_namespaces_lists_need_the_cluster_selector() {
        let r = resource("/api/v1/pods");
        assert_eq!(r.namespace, None);
        assert!(r.needs_cluster_selector());
        assert_eq!(r.backing_path(&p("taaaaa")).unwrap(), "/api/v1/pods");
    }

    #[test]
    fn server_and_discovery_paths_pass_unmapped() {
        let a = p("taaaaa");
        for path in [
            "/",
            "/version",
            "/healthz",
            "/readyz/ping",
            "/livez",
            "/openapi/v2",
            "/openapi/v3/apis/apps/v1",
        ] {
            let parsed = parse(path).unwrap();
            assert!(matches!(parsed, ApiPath::Server(_)), "{path}");
            assert_eq!(parsed.backing_path(&a).unwrap(), path);
        }
        for path in ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1"] {
            let parsed = parse(path).unwrap();
            assert!(matches!(parsed, ApiPath::Discovery(_)), "{path}");
            assert_eq!(parsed.backing_path(&a).unwrap(), path);
        }
    }

    #[test]
    fn unknown_shapes_and_kinds_are_refused() {
        for (path, reason) in [
            ("api/v1/pods", "unsupported_path"),
            ("/api/v1/pods?watch=1", "unsupported_path"),
            ("/api/v1/namespaces/a%2Fb/pods", "unsupported_path"),
            ("/api/v1//pods", "unsupported_path"),
            ("/api/v1/watch/pods", "unsupported_path"),
            ("/metrics", "unsupported_path"),
            ("/api/v1/pods/x", "unsupported_path"),
            ("/api/v1/namespaces/d/nodes/n", "unsupported_path"),
            ("/api/v1/namespaces/d/pods/x/y/z", "unsupported_path"),
            ("/api/v1/services", "unknown_resource"),
            (
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                "unknown_resource",
            ),
            (
                "/apis/scheduling.k8s.io/v1/priorityclasses/x",
                "unknown_resource",
            ),
            ("/api/v1/namespaces/d/pods/x/log", "unsupported_subresource"),
            (
                "/api/v1/namespaces/d/serviceaccounts/x/token",
                "unsupported_subresource",
            ),
            ("/api/v1/nodes/n/proxy", "unsupported_subresource"),
        ] {
            assert_eq!(parse(path).unwrap_err().reason(), reason, "{path}");
        }
        let r = resource("/api/v1/namespaces/Not_Valid/pods");
        assert_eq!(
            r.backing_path(&p("taaaaa")).unwrap_err().reason(),
            "invalid_name"
        );
    }

    #[test]
    fn the_kubelet_finds_the_cluster_of_a_port_forward() {
        let forward = kubelet_port_forward("/portForward/taaaaa-kube-system/etcd-node-0").unwrap();
        assert_eq!(
            forward,
            KubeletPortForward {
                prefix: p("taaaaa"),
                namespace: "kube-system".into(),
                pod: "etcd-node-0".into(),
            }
        );
        for path in [
            "/portForward/kube-system/etcd-node-0",
            "/portForward/taaaaa-kube-system",
            "/portForward/taaaaa-kube-system/",
            "/portforward/taaaaa-kube-system/etcd",
            "/portForward/taaaaa-kube-system/etcd/x",
            "portForward/taaaaa-kube-system/etcd",
        ] {
            assert!(kubelet_port_forward(path).is_err(), "{path}");
        }
    }

    proptest! {
        #[test]
        fn port_forward_paths_round_trip(
            a in prefix_strategy(), b in prefix_strategy(),
            ns in dns_label_strategy(56), pod in dns_label_strategy(40),
        ) {
            let client = format!("/api/v1/namespaces/{}/pods/{}/portforward", ns, pod);
            let backing = resource(&client).backing_path(&a).unwrap();
            let mapped = format!("/namespaces/{}-{}/", a, ns);
            prop_assert!(backing.contains(&mapped));
            let kubelet = backing_kubelet_port_forward(&a, &ns, &pod).unwrap();
            let forward = kubelet_port_forward(&kubelet).unwrap();
            prop_assert_eq!(&forward.prefix, &a);
            prop_assert_eq!(&forward.namespace, &ns);
            prop_assert_eq!(&forward.pod, &pod);
            if a != b {
                prop_assert_ne!(kubelet, backing_kubelet_port_forward(&b, &ns, &pod).unwrap());
            }
        }

        #[test]
        fn any_client_path_is_parsed_or_refused(path in "/[a-z0-9/%.:-]{0,60}") {
            // Never a panic; and whatever parses maps into this cluster's space or is refused.
            if let Ok(ApiPath::Resource(r)) = parse(&path) {
                let _ = r.backing_path(&p("taaaaa"));
            }
        }
    }
}
