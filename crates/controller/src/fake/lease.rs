//! A Node's heartbeat Lease, `kube-node-lease/<node>`: what the node lifecycle controller
//! (and anything watching node health) reads first. A kubelet creates it, owned by its
//! Node, and renews `renewTime` well within `leaseDurationSeconds`.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use serde_json::json;

use super::{MANAGED_BY, MANAGED_BY_LABEL};

pub const NAMESPACE: &str = "kube-node-lease";
/// A kubelet's default `nodeLeaseDurationSeconds`.
pub const DURATION_SECONDS: i32 = 40;

/// The Lease of the Node `node` (whose UID makes it the owner, as a kubelet does, so a
/// garbage collector removes it with the Node).
pub fn node_lease(node: &str, node_uid: &str, now: &MicroTime) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.to_string()),
            namespace: Some(NAMESPACE.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            owner_references: (!node_uid.is_empty()).then(|| {
                vec![OwnerReference {
                    api_version: "v1".to_string(),
                    kind: "Node".to_string(),
                    name: node.to_string(),
                    uid: node_uid.to_string(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(DURATION_SECONDS),
            renew_time: Some(now.clone()),
            ..Default::default()
        }),
    }
}

/// A merge patch that renews the Lease (and restores its holder and duration).
pub fn renew_patch(node: &str, now: &MicroTime) -> serde_json::Value {
    json!({
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": DURATION_SECONDS,
            "renewTime": now,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_lease_is_held_by_and_owned_by_its_node() {
        let now = MicroTime("2026-11-26T10:00:00.123456Z".parse().unwrap());
        let lease = node_lease("test1-cp-0", "node-uid", &now);
        assert_eq!(lease.metadata.name.as_deref(), Some("test1-cp-0"));
        assert_eq!(lease.metadata.namespace.as_deref(), Some("kube-node-lease"));
        assert!(crate::fake::is_ours(&lease.metadata));
        let owner = &lease.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "test1-cp-0", "node-uid")
        );
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("test1-cp-0"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(now.clone()));
        let patch = renew_patch("test1-cp-0", &now);
        assert_eq!(patch["spec"]["renewTime"], "2026-11-26T10:00:00.123456Z");
        // No UID yet, no owner (an owner reference needs one).
        assert!(
            node_lease("n", "", &now)
                .metadata
                .owner_references
                .is_none()
        );
    }
}
