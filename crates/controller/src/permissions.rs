//! What the controller must be allowed to do in the management cluster, and a check of it
//! with SelfSubjectAccessReviews. A first list succeeds without `watch`, so without this
//! check a controller missing `watch` would turn ready and then silently miss changes.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

const CONTROL_PLANES: &str = "kubeadmcontrolplanes";

/// One verb on one resource, in a namespace or cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    /// `None`: in every namespace.
    pub namespace: Option<String>,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match &self.namespace {
            Some(ns) => write!(f, "{} {}.{} in {ns}", self.verb, self.resource, group),
            None => write!(f, "{} {}.{} cluster-wide", self.verb, self.resource, group),
        }
    }
}

/// What the watched scopes (`None`: all namespaces) and the optional certificate-expiry
/// annotation need: list and watch of every kind the stores hold (KubeadmControlPlanes
/// only where the API server serves them), create of Events.
pub fn required(
    scopes: &[Option<String>],
    annotate_certificate_expiry: bool,
    control_planes: bool,
) -> Vec<Permission> {
    const WATCHED: [(&str, &str); 6] = [
        ("infrastructure.cluster.x-k8s.io", "metal3machines"),
        ("metal3.io", "baremetalhosts"),
        ("cluster.x-k8s.io", "machines"),
        ("cluster.x-k8s.io", "clusters"),
        ("controlplane.cluster.x-k8s.io", CONTROL_PLANES),
        ("", "secrets"),
    ];
    let mut needed = Vec::new();
    for scope in scopes {
        let at = |group, resource, verb| Permission {
            group,
            resource,
            verb,
            namespace: scope.clone(),
        };
        for (group, resource) in WATCHED {
            if resource == CONTROL_PLANES && !control_planes {
                continue;
            }
            needed.push(at(group, resource, "list"));
            needed.push(at(group, resource, "watch"));
        }
        needed.push(at("events.k8s.io", "events", "create"));
        if annotate_certificate_expiry {
            needed.push(at("cluster.x-k8s.io", "machines", "get"));
            needed.push(at("bootstrap.cluster.x-k8s.io", "kubeadmconfigs", "get"));
            needed.push(at("bootstrap.cluster.x-k8s.io", "kubeadmconfigs", "patch"));
        }
    }
    needed
}

/// The permissions of `needed` that this identity lacks, asked of the API server.
pub async fn missing(
    client: &kube::Client,
    needed: &[Permission],
) -> Result<Vec<Permission>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut lacking = Vec::new();
    for permission in needed {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(permission.group.to_string()),
                    resource: Some(permission.resource.to_string()),
                    verb: Some(permission.verb.to_string()),
                    namespace: permission.namespace.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            lacking.push(permission.clone());
        }
    }
    Ok(lacking)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_watched_kind_needs_list_and_watch_in_each_scope() {
        let scopes = [Some("a".to_string()), Some("b".to_string())];
        let needed = required(&scopes, false, true);
        assert_eq!(needed.len(), 2 * (6 * 2 + 1));
        let without = required(&scopes, false, false);
        assert_eq!(without.len(), 2 * (5 * 2 + 1));
        assert!(!without.iter().any(|p| p.resource == CONTROL_PLANES));
        let watch_m3m_in_b = Permission {
            group: "infrastructure.cluster.x-k8s.io",
            resource: "metal3machines",
            verb: "watch",
            namespace: Some("b".into()),
        };
        assert!(needed.contains(&watch_m3m_in_b));
        assert_eq!(
            watch_m3m_in_b.to_string(),
            "watch metal3machines.infrastructure.cluster.x-k8s.io in b"
        );
    }

    #[test]
    fn the_certificate_annotation_adds_its_own_verbs() {
        let needed = required(&[None], true, true);
        assert!(
            needed.iter().any(|p| p.resource == "kubeadmconfigs"
                && p.verb == "patch"
                && p.namespace.is_none())
        );
        assert!(
            !required(&[None], false, true)
                .iter()
                .any(|p| p.verb == "patch")
        );
        let secrets = needed.iter().find(|p| p.resource == "secrets").unwrap();
        assert_eq!(secrets.to_string(), "list secrets.core cluster-wide");
    }
}
