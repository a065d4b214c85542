//! Label and field selectors of list, watch and delete-collection requests.
//!
//! Label selectors get the cluster's requirement ANDed on; Kubernetes selectors have no
//! OR, so no client selector can widen it, provided the client's own text stays one
//! well-formed group (balanced parentheses). Field selectors have their values mapped
//! like the fields they select on, so a value naming another cluster's namespace or Node
//! maps into this cluster's space and matches nothing outside it.

use crate::error::{Error, Result};
use crate::kinds::{FieldValue, Resource, Scope};
use crate::names::{self, CLUSTER_LABEL, Direction, NameRule};
use crate::prefix::Prefix;

/// The backing label selector: the client's, plus `CLUSTER_LABEL=<prefix>`. A client
/// selector naming a reserved key is refused, as is one whose parentheses do not balance
/// (it could swallow the appended requirement).
pub fn backing_label_selector(prefix: &Prefix, selector: &str) -> Result<String> {
    let requirement = format!("{CLUSTER_LABEL}={prefix}");
    if selector.trim().is_empty() {
        return Ok(requirement);
    }
    for part in split_requirements(selector)? {
        let key = requirement_key(part);
        if key.is_empty() {
            return Err(Error::UnsupportedSelector {
                selector: selector.to_string(),
                why: "a requirement has no key",
            });
        }
        if names::is_reserved_key(key) {
            return Err(Error::ReservedKey {
                key: key.to_string(),
            });
        }
    }
    Ok(format!("{selector},{requirement}"))
}

/// The client's label selector back from a backing one (for logs and tests).
pub fn tenant_label_selector(prefix: &Prefix, backing: &str) -> Result<String> {
    let requirement = format!("{CLUSTER_LABEL}={prefix}");
    if backing == requirement {
        return Ok(String::new());
    }
    backing
        .strip_suffix(&requirement)
        .and_then(|rest| rest.strip_suffix(','))
        .map(str::to_string)
        .ok_or_else(|| Error::UnsupportedSelector {
            selector: backing.to_string(),
            why: "does not select this cluster",
        })
}

/// Splits at top-level commas (those in `in (a,b)` belong to the set).
fn split_requirements(selector: &str) -> Result<Vec<&str>> {
    let unbalanced = || Error::UnsupportedSelector {
        selector: selector.to_string(),
        why: "unbalanced parentheses",
    };
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or_else(unbalanced)?,
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(unbalanced());
    }
    parts.push(&selector[start..]);
    Ok(parts)
}

/// The key of one requirement: `key`, `!key`, `key=v`, `key in (..)`, `key>1`...
fn requirement_key(requirement: &str) -> &str {
    let rest = requirement.trim_start();
    let rest = rest.strip_prefix('!').unwrap_or(rest).trim_start();
    let end = rest
        .find(|c: char| c.is_whitespace() || "=!<>(),".contains(c))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The backing field selector: each value mapped like the field it selects on; keys the
/// front does not know for this resource are refused.
pub fn backing_field_selector(
    prefix: &Prefix,
    resource: &Resource,
    selector: &str,
) -> Result<String> {
    map_field_selector(Direction::ToBacking, prefix, resource, selector)
}

/// The client's field selector back from a backing one.
pub fn tenant_field_selector(
    prefix: &Prefix,
    resource: &Resource,
    backing: &str,
) -> Result<String> {
    map_field_selector(Direction::FromBacking, prefix, resource, backing)
}

fn map_field_selector(
    direction: Direction,
    prefix: &Prefix,
    resource: &Resource,
    selector: &str,
) -> Result<String> {
    if selector.is_empty() {
        return Ok(String::new());
    }
    let refuse = |why| Error::UnsupportedSelector {
        selector: selector.to_string(),
        why,
    };
    let mut terms = Vec::new();
    for term in split_unescaped(selector, ',') {
        let (key, op, raw) = split_term(term).ok_or_else(|| refuse("a term has no =, == or !="))?;
        let field = resource
            .field(key)
            .ok_or_else(|| refuse("not a field selector the front maps for this resource"))?;
        let value = unescape(raw).ok_or_else(|| refuse("a value has an invalid escape"))?;
        let mapped = map_field_value(direction, prefix, resource, field, &value)?;
        terms.push(format!("{key}{op}{}", escape(&mapped)));
    }
    Ok(terms.join(","))
}

fn map_field_value(
    direction: Direction,
    prefix: &Prefix,
    resource: &Resource,
    field: FieldValue,
    value: &str,
) -> Result<String> {
    // An empty value selects "unset" (e.g. unscheduled Pods): nothing to map.
    if value.is_empty() {
        return Ok(String::new());
    }
    let namespace = || names::map_name(direction, prefix, NameRule::DnsLabel, "namespace", value);
    match field {
        FieldValue::Verbatim => Ok(value.to_string()),
        FieldValue::Namespace => namespace(),
        FieldValue::NodeName => {
            names::map_name(direction, prefix, NameRule::DnsSubdomain, "Node", value)
        }
        FieldValue::ObjectName => match resource.scope {
            Scope::Namespaced => Ok(value.to_string()),
            Scope::Namespace => namespace(),
            Scope::Cluster(rule) => names::map_name(direction, prefix, rule, resource.kind, value),
        },
    }
}

/// Splits at `separator`s not escaped by a backslash.
fn split_unescaped(s: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == separator => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `key`, operator and raw (escaped) value of a term, at its first unescaped operator.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        let rest = &term[i..];
        let op = match c {
            '\\' => {
                escaped = true;
                continue;
            }
            '!' if rest.starts_with("!=") => "!=",
            '=' if rest.starts_with("==") => "==",
            '=' => "=",
            _ => continue,
        };
        let key = &term[..i];
        return (!key.is_empty()).then_some((key, op, &term[i + op.len()..]));
    }
    None
}

fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                e @ ('\\' | ',' | '=') => out.push(e),
                _ => return None,
            }
        } else if c == ',' || c == '=' {
            return None;
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_plural;
    use crate::names::tests::{dns_label_strategy, p, prefix_strategy};
    use proptest::prelude::*;

    fn pods() -> &'static Resource {
        by_plural("", "v1", "pods").unwrap()
    }

    #[test]
    fn the_cluster_requirement_is_added() {
        let a = p("taaaaa");
        assert_eq!(
            backing_label_selector(&a, "").unwrap(),
            "tenancy.fakenode.metal3.io/cluster=taaaaa"
        );
        let s = "app in (a,b),tier!=db,!legacy";
        let backing = backing_label_selector(&a, s).unwrap();
        assert_eq!(
            backing,
            format!("{s},tenancy.fakenode.metal3.io/cluster=taaaaa")
        );
        assert_eq!(tenant_label_selector(&a, &backing).unwrap(), s);
        assert!(tenant_label_selector(&p("tbbbbb"), &backing).is_err());
    }

    #[test]
    fn a_selector_naming_the_tenancy_label_is_refused() {
        let a = p("taaaaa");
        for s in [
            "tenancy.fakenode.metal3.io/cluster=tbbbbb",
            "!tenancy.fakenode.metal3.io/cluster",
            "app=x, tenancy.fakenode.metal3.io/cluster in (taaaaa,tbbbbb)",
            "tenancy.fakenode.metal3.io/other",
        ] {
            assert_eq!(
                backing_label_selector(&a, s).unwrap_err().reason(),
                "reserved_key",
                "{s}"
            );
        }
    }

    #[test]
    fn a_selector_that_could_swallow_the_requirement_is_refused() {
        let a = p("taaaaa");
        for s in ["app in (a", "app in a)", "app notin (a,(b)", ",", "=x"] {
            assert_eq!(
                backing_label_selector(&a, s).unwrap_err().reason(),
                "unsupported_selector",
                "{s}"
            );
        }
    }

    #[test]
    fn field_values_are_mapped_like_their_fields() {
        let a = p("taaaaa");
        assert_eq!(
            backing_field_selector(&a, pods(), "spec.nodeName=node-0,status.phase!=Succeeded")
                .unwrap(),
            "spec.nodeName=taaaaa-node-0,status.phase!=Succeeded"
        );
        assert_eq!(
            backing_field_selector(
                &a,
                pods(),
                "metadata.namespace==kube-system,metadata.name=etcd-x"
            )
            .unwrap(),
            "metadata.namespace==taaaaa-kube-system,metadata.name=etcd-x"
        );
        let nodes = by_plural("", "v1", "nodes").unwrap();
        assert_eq!(
            backing_field_selector(&a, nodes, "metadata.name=n1").unwrap(),
            "metadata.name=taaaaa-n1"
        );
        let events = by_plural("", "v1", "events").unwrap();
        assert_eq!(
            backing_field_selector(
                &a,
                events,
                "involvedObject.namespace=default,involvedObject.name=x"
            )
            .unwrap(),
            "involvedObject.namespace=taaaaa-default,involvedObject.name=x"
        );
        // Unscheduled Pods: the empty value stays empty.
        assert_eq!(
            backing_field_selector(&a, pods(), "spec.nodeName=").unwrap(),
            "spec.nodeName="
        );
    }

    #[test]
    fn another_clusters_namespace_does_not_escape() {
        let a = p("taaaaa");
        let backing =
            backing_field_selector(&a, pods(), "metadata.namespace=tbbbbb-default").unwrap();
        assert_eq!(backing, "metadata.namespace=taaaaa-tbbbbb-default");
    }

    #[test]
    fn unknown_or_malformed_field_selectors_are_refused() {
        let a = p("taaaaa");
        for s in [
            "status.hostIP=1.2.3.4",
            "spec.nodeName",
            "=x",
            "metadata.name=a\\b",
            "metadata.name=a=b",
        ] {
            assert_eq!(
                backing_field_selector(&a, pods(), s).unwrap_err().reason(),
                "unsupported_selector",
                "{s}"
            );
        }
        assert_eq!(
            backing_field_selector(&a, pods(), "metadata.namespace=Not_A_Namespace")
                .unwrap_err()
                .reason(),
            "invalid_name"
        );
        assert_eq!(
            tenant_field_selector(&a, pods(), "spec.nodeName=tbbbbb-n")
                .unwrap_err()
                .reason(),
            "foreign_name"
        );
    }

    #[test]
    fn escaped_values_survive() {
        let a = p("taaaaa");
        let crs = by_plural("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
        let backing = backing_field_selector(&a, crs, "metadata.name=a\\,b\\=c").unwrap();
        assert_eq!(backing, "metadata.name=taaaaa-a\\,b\\=c");
        assert_eq!(
            tenant_field_selector(&a, crs, &backing).unwrap(),
            "metadata.name=a\\,b\\=c"
        );
    }

    fn label_requirement() -> impl Strategy<Value = String> {
        let key = "[a-z]([a-z0-9.-]{0,10}/)?[a-z][a-z0-9]{0,10}";
        let value = "[a-z0-9]{0,8}";
        prop_oneof![
            (key, value).prop_map(|(k, v)| format!("{k}={v}")),
            (key, value).prop_map(|(k, v)| format!("{k}!={v}")),
            key.prop_map(|k| format!("!{k}")),
            (key, proptest::collection::vec(value, 1..4))
                .prop_map(|(k, vs)| format!("{k} in ({})", vs.join(","))),
        ]
        .prop_filter("reserved", |r| !r.contains("tenancy.fakenode.metal3.io"))
    }

    proptest! {
        #[test]
        fn label_selectors_round_trip(
            prefix in prefix_strategy(),
            requirements in proptest::collection::vec(label_requirement(), 0..5),
        ) {
            let selector = requirements.join(",");
            let backing = backing_label_selector(&prefix, &selector).unwrap();
            let requirement = format!("{}={}", CLUSTER_LABEL, prefix);
            prop_assert!(backing.ends_with(&requirement));
            prop_assert_eq!(tenant_label_selector(&prefix, &backing).unwrap(), selector);
        }

        #[test]
        fn field_selectors_round_trip_and_stay_apart(
            a in prefix_strategy(),
            b in prefix_strategy(),
            ns in dns_label_strategy(50),
            node in "[a-z0-9]([-.a-z0-9]{0,30}[a-z0-9])?",
            phase in "[A-Za-z]{0,10}",
        ) {
            prop_assume!(a != b && !node.contains("..") && !node.contains(".-") && !node.contains("-."));
            let selector = format!("metadata.namespace={ns},spec.nodeName!={node},status.phase={phase}");
            let backing = backing_field_selector(&a, pods(), &selector).unwrap();
            prop_assert_eq!(tenant_field_selector(&a, pods(), &backing).unwrap(), selector.clone());
            prop_assert!(tenant_field_selector(&b, pods(), &backing).is_err());
            prop_assert_ne!(backing, backing_field_selector(&b, pods(), &selector).unwrap());
        }

        #[test]
        fn any_client_field_selector_is_mapped_or_refused(prefix in prefix_strategy(), s in ".{0,40}") {
            // Whatever a client sends: an answer or a typed refusal, never a panic.
            let _ = backing_field_selector(&prefix, pods(), &s);
            let _ = backing_label_selector(&prefix, &s);
        }
    }
}
