//! RBAC objects a client writes are stored so that they grant nothing in the backing
//! server, and read back exactly as written.
//!
//! Two rules make every stored binding inert:
//! - Roles and ClusterRoles are stored without `rules` or `aggregationRule`; what the
//!   client wrote is kept in an annotation the front owns. The backing server's RBAC
//!   authoriser therefore finds no permission in any of them, its aggregation controller
//!   gathers nothing from them, and the front needs no `escalate` verb to store them.
//! - Bindings' `roleRef` to a ClusterRole names the cluster's mapped ClusterRole (a
//!   binding to `cluster-admin` points at `<prefix>-cluster-admin`, which either does not
//!   exist or is another such empty role), never a role of the backing server. A Role
//!   reference stays in the binding's own (mapped) namespace.
//!
//! Subjects are moved out of the backing server's space as well, in case a role were ever
//! found to grant something: Users and Groups (`system:masters` included) are renamed into
//! a space per cluster no authenticator hands out; ServiceAccounts keep their name in
//! their mapped namespace (the front refuses to mint their tokens).

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::json::{as_object, malformed, map_string, string_field};
use crate::names::{self, Direction, NameRule};
use crate::prefix::Prefix;

/// The annotation holding a role's rules (and aggregation rule) as the client wrote them.
pub const RULES_ANNOTATION: &str = "tenancy.fakenode.metal3.io/rules";

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const RULE_FIELDS: [&str; 2] = ["rules", "aggregationRule"];

/// Rewrites a Role or ClusterRole body (`object` is the whole object).
pub(crate) fn map_role(direction: Direction, object: &mut Map<String, Value>) -> Result<()> {
    match direction {
        Direction::ToBacking => {
            let mut kept = Map::new();
            for field in RULE_FIELDS {
                if let Some(value) = object.remove(field) {
                    kept.insert(field.to_string(), value);
                }
            }
            if !kept.is_empty() {
                let record = Value::Object(kept).to_string();
                annotations(object)?.insert(RULES_ANNOTATION.to_string(), Value::String(record));
            }
            Ok(())
        }
        Direction::FromBacking => {
            for field in RULE_FIELDS {
                let empty = match object.get(field) {
                    None | Some(Value::Null) => true,
                    Some(Value::Array(items)) => items.is_empty(),
                    Some(_) => false,
                };
                if !empty {
                    return Err(Error::NotInert {
                        what: format!("{field} of {}", object_name(object)),
                    });
                }
            }
            let Some(record) = take_annotation(object, RULES_ANNOTATION)? else {
                return Ok(());
            };
            let kept: Map<String, Value> =
                serde_json::from_str(&record).map_err(|e| Error::CorruptRecord {
                    what: "the rules annotation",
                    message: e.to_string(),
                })?;
            for (field, value) in kept {
                if !RULE_FIELDS.contains(&field.as_str()) {
                    return Err(Error::CorruptRecord {
                        what: "the rules annotation",
                        message: format!("unexpected field {field:?}"),
                    });
                }
                object.insert(field, value);
            }
            Ok(())
        }
    }
}

/// Rewrites a RoleBinding or ClusterRoleBinding body.
pub(crate) fn map_binding(
    direction: Direction,
    prefix: &Prefix,
    object: &mut Map<String, Value>,
) -> Result<()> {
    if let Some(role_ref) = object.get_mut("roleRef") {
        let role_ref = as_object(role_ref, "roleRef")?;
        let api_group = string_field(role_ref, "roleRef.apiGroup")?;
        if api_group.is_some_and(|g| g != RBAC_GROUP) {
            return Err(Error::UnsupportedField {
                field: "roleRef.apiGroup".into(),
                why: "only rbac.authorization.k8s.io roles can be referenced",
            });
        }
        match string_field(role_ref, "roleRef.kind")? {
            Some("ClusterRole") => map_string(role_ref, "name", "roleRef.name", |name| {
                names::map_name(
                    direction,
                    prefix,
                    NameRule::PathSegment,
                    "ClusterRole",
                    name,
                )
            })?,
            // A Role is in the binding's namespace, which is mapped already.
            Some("Role") => {}
            _ => {
                return Err(Error::UnsupportedField {
                    field: "roleRef.kind".into(),
                    why: "must be ClusterRole or Role",
                });
            }
        }
    }
    let Some(subjects) = object.get_mut("subjects") else {
        return Ok(());
    };
    let subjects = match subjects {
        Value::Null => return Ok(()),
        Value::Array(subjects) => subjects,
        _ => return Err(malformed("subjects", "an array")),
    };
    for subject in subjects {
        let subject = as_object(subject, "subjects[]")?;
        match string_field(subject, "subjects[].kind")? {
            Some("User" | "Group") => map_string(subject, "name", "subjects[].name", |name| {
                names::map_subject(direction, prefix, name)
            })?,
            Some("ServiceAccount") => {
                map_string(subject, "namespace", "subjects[].namespace", |ns| {
                    names::map_name(direction, prefix, NameRule::DnsLabel, "namespace", ns)
                })?
            }
            _ => {
                return Err(Error::UnsupportedField {
                    field: "subjects[].kind".into(),
                    why: "must be User, Group or ServiceAccount",
                });
            }
        }
    }
    Ok(())
}

fn object_name(object: &Map<String, Value>) -> String {
    object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string()
}

fn annotations(object: &mut Map<String, Value>) -> Result<&mut Map<String, Value>> {
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let metadata = as_object(metadata, "metadata")?;
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    as_object(annotations, "metadata.annotations")
}

fn take_annotation(object: &mut Map<String, Value>, key: &str) -> Result<Option<String>> {
    let Some(Value::Object(metadata)) = object.get_mut("metadata") else {
        return Ok(None);
    };
    let Some(Value::Object(annotations)) = metadata.get_mut("annotations") else {
        return Ok(None);
    };
    let taken = match annotations.remove(key) {
        None => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => return Err(malformed(key, "a string")),
    };
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
    Ok(Some(taken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::tests::p;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_role_is_stored_without_rules_and_read_back_as_written() {
        let written = obj(json!({
            "metadata": {"name": "kubeadm:get-nodes"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
        }));
        let mut stored = written.clone();
        map_role(Direction::ToBacking, &mut stored).unwrap();
        assert!(stored.get("rules").is_none());
        assert!(stored["metadata"]["annotations"][RULES_ANNOTATION].is_string());
        // The server shows an empty role's rules as null.
        stored.insert("rules".into(), Value::Null);
        map_role(Direction::FromBacking, &mut stored).unwrap();
        assert_eq!(stored, written);
    }

    #[test]
    fn an_aggregating_role_is_stored_inert() {
        let written = obj(json!({
            "metadata": {"name": "agg", "annotations": {"a": "b"}},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]},
        }));
        let mut stored = written.clone();
        map_role(Direction::ToBacking, &mut stored).unwrap();
        assert!(stored.get("aggregationRule").is_none());
        map_role(Direction::FromBacking, &mut stored).unwrap();
        assert_eq!(stored, written);
    }

    #[test]
    fn a_role_with_rules_in_the_backing_server_is_refused() {
        let mut stored = obj(json!({"metadata": {"name": "x"}, "rules": [{"verbs": ["*"]}]}));
        let err = map_role(Direction::FromBacking, &mut stored).unwrap_err();
        assert_eq!(err.reason(), "rbac_not_inert");
        let mut stored =
            obj(json!({"metadata": {"name": "x", "annotations": {RULES_ANNOTATION: "{"}}}));
        assert_eq!(
            map_role(Direction::FromBacking, &mut stored)
                .unwrap_err()
                .reason(),
            "corrupt_record"
        );
    }

    #[test]
    fn a_binding_to_cluster_admin_binds_nothing_in_the_backing_server() {
        let a = p("taaaaa");
        let written = obj(json!({
            "metadata": {"name": "kubeadm:cluster-admins"},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [
                {"apiGroup": RBAC_GROUP, "kind": "Group", "name": "kubeadm:cluster-admins"},
                {"apiGroup": RBAC_GROUP, "kind": "User", "name": "kubernetes-admin"},
                {"kind": "ServiceAccount", "name": "default", "namespace": "kube-system"},
            ],
        }));
        let mut stored = written.clone();
        map_binding(Direction::ToBacking, &a, &mut stored).unwrap();
        assert_eq!(stored["roleRef"]["name"], "taaaaa-cluster-admin");
        assert_eq!(
            stored["subjects"][0]["name"],
            "tenancy.fakenode.metal3.io:taaaaa:kubeadm:cluster-admins"
        );
        assert_eq!(
            stored["subjects"][1]["name"],
            "tenancy.fakenode.metal3.io:taaaaa:kubernetes-admin"
        );
        assert_eq!(stored["subjects"][2]["namespace"], "taaaaa-kube-system");
        assert_eq!(stored["subjects"][2]["name"], "default");
        let mut read = stored.clone();
        map_binding(Direction::FromBacking, &a, &mut read).unwrap();
        assert_eq!(read, written);
        assert_eq!(
            map_binding(Direction::FromBacking, &p("tbbbbb"), &mut stored)
                .unwrap_err()
                .reason(),
            "foreign_name"
        );
    }

    #[test]
    fn a_role_reference_stays_in_its_namespace() {
        let a = p("taaaaa");
        let mut b = obj(
            json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "kubeadm:nodes-kubeadm-config"}}),
        );
        map_binding(Direction::ToBacking, &a, &mut b).unwrap();
        assert_eq!(b["roleRef"]["name"], "kubeadm:nodes-kubeadm-config");
    }

    #[test]
    fn unknown_references_and_subjects_are_refused() {
        let a = p("taaaaa");
        for b in [
            json!({"roleRef": {"apiGroup": "example.com", "kind": "ClusterRole", "name": "x"}}),
            json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "Thing", "name": "x"}}),
            json!({"subjects": [{"kind": "Robot", "name": "x"}]}),
        ] {
            let err = map_binding(Direction::ToBacking, &a, &mut obj(b)).unwrap_err();
            assert_eq!(err.reason(), "unsupported_field");
        }
        for b in [
            json!({"roleRef": "x"}),
            json!({"subjects": {}}),
            json!({"subjects": [{"kind": 1}]}),
        ] {
            let err = map_binding(Direction::ToBacking, &a, &mut obj(b)).unwrap_err();
            assert_eq!(err.reason(), "malformed");
        }
    }
}
