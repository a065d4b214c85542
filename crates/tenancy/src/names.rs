//! Names in one cluster's space and in the backing server's: namespaces, cluster-scoped
//! names, RBAC users and groups, and the keys the front reserves for itself.
//!
//! Every mapping is `<prefix>-<name>`; with a fixed-length prefix that holds no `-` it is
//! injective across clusters, and un-mapping a name that does not start with this
//! cluster's prefix is an error, never a pass-through.

use crate::error::{Error, Result};
use crate::prefix::{PREFIX_LEN, Prefix};

/// The domain of every label and annotation key the front reserves.
pub const DOMAIN: &str = "tenancy.fakenode.metal3.io";

/// The label naming an object's cluster (its prefix) in the backing server: added on
/// every write, required and removed on every read, and selected on every list.
pub const CLUSTER_LABEL: &str = "tenancy.fakenode.metal3.io/cluster";

/// The annotation on a CAPI Cluster (in the management cluster) recording the prefix the
/// front serves it under: the front's record of its allocations, and how the fake kubelet
/// endpoint tells, from a backing namespace in a port-forward path, which cluster it is.
pub const PREFIX_ANNOTATION: &str = "tenancy.fakenode.metal3.io/prefix";

/// Label values are at most 63 characters; a prefix is far shorter, so always fits.
pub const LABEL_VALUE_MAX: usize = 63;

/// DNS labels (namespace names): at most 63 characters.
pub const DNS_LABEL_MAX: usize = 63;

/// DNS subdomains (Node names and most other names): at most 253 characters.
pub const DNS_SUBDOMAIN_MAX: usize = 253;

/// Which way a value travels: every rewrite is written once for both directions so the
/// two cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    ToBacking,
    FromBacking,
}

/// What a name must look like, by kind; a mapped name must stay valid under the same rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label: namespaces.
    DnsLabel,
    /// RFC 1123 subdomain: Nodes, VolumeAttachments.
    DnsSubdomain,
    /// Any path segment (no `/` or `%`, not `.` or `..`): RBAC cluster roles and bindings,
    /// whose names such as `system:node` or `kubeadm:get-nodes` hold colons.
    PathSegment,
}

impl NameRule {
    fn max(self) -> Option<usize> {
        match self {
            NameRule::DnsLabel => Some(DNS_LABEL_MAX),
            NameRule::DnsSubdomain => Some(DNS_SUBDOMAIN_MAX),
            NameRule::PathSegment => None,
        }
    }

    pub(crate) fn check(self, name: &str) -> std::result::Result<(), &'static str> {
        if let Some(max) = self.max()
            && name.len() > max
        {
            return Err(match self {
                NameRule::DnsLabel => "longer than a DNS label's 63 characters",
                _ => "longer than a DNS subdomain's 253 characters",
            });
        }
        match self {
            NameRule::DnsLabel => {
                dns_label(name).then_some(()).ok_or(
                    "not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)",
                )
            }
            NameRule::DnsSubdomain => (!name.is_empty() && name.split('.').all(dns_label))
                .then_some(())
                .ok_or("not a DNS subdomain (DNS labels joined by '.')"),
            NameRule::PathSegment => {
                (!name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%']))
                    .then_some(())
                    .ok_or("not a path segment (empty, '.', '..', or holding '/' or '%')")
            }
        }
    }
}

fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= DNS_LABEL_MAX
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// The backing server's name of a tenant name that two clusters may both use.
pub fn backing_name(
    prefix: &Prefix,
    rule: NameRule,
    what: &'static str,
    name: &str,
) -> Result<String> {
    rule.check(name).map_err(|rule| Error::InvalidName {
        what,
        value: name.to_string(),
        rule,
    })?;
    let mapped = format!("{prefix}-{name}");
    if let Some(max) = rule.max()
        && mapped.len() > max
    {
        return Err(Error::NameTooLong {
            what,
            value: name.to_string(),
            max: max - PREFIX_LEN - 1,
        });
    }
    Ok(mapped)
}

/// The tenant's name of a backing name; a name of another cluster (or none) is refused.
pub fn tenant_name(
    prefix: &Prefix,
    rule: NameRule,
    what: &'static str,
    backing: &str,
) -> Result<String> {
    let foreign = || Error::ForeignName {
        what,
        value: backing.to_string(),
    };
    let name = strip_prefix(prefix, backing).ok_or_else(foreign)?;
    rule.check(name).map_err(|_| foreign())?;
    Ok(name.to_string())
}

/// A tenant namespace's backing namespace: `<prefix>-<namespace>`, within 63 characters.
pub fn backing_namespace(prefix: &Prefix, namespace: &str) -> Result<String> {
    backing_name(prefix, NameRule::DnsLabel, "namespace", namespace)
}

/// The tenant namespace of a backing namespace; another cluster's is refused.
pub fn tenant_namespace(prefix: &Prefix, backing: &str) -> Result<String> {
    tenant_name(prefix, NameRule::DnsLabel, "namespace", backing)
}

/// Which cluster a backing namespace belongs to, and its tenant name: what the kubelet
/// endpoint needs, since it serves every cluster at once. `None` for a namespace the
/// front did not map (the caller still checks the prefix is allocated).
pub fn split_backing_namespace(backing: &str) -> Option<(Prefix, String)> {
    let head = backing.get(..PREFIX_LEN)?;
    let prefix = Prefix::parse(head).ok()?;
    let namespace = tenant_namespace(&prefix, backing).ok()?;
    Some((prefix, namespace))
}

fn strip_prefix<'a>(prefix: &Prefix, backing: &'a str) -> Option<&'a str> {
    backing
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
}

pub(crate) fn map_name(
    direction: Direction,
    prefix: &Prefix,
    rule: NameRule,
    what: &'static str,
    value: &str,
) -> Result<String> {
    match direction {
        Direction::ToBacking => backing_name(prefix, rule, what, value),
        Direction::FromBacking => tenant_name(prefix, rule, what, value),
    }
}

/// `metadata.generateName` of a kind whose names are mapped: the server appends a random
/// suffix to the mapped prefix, so the generated name un-maps like any other.
pub(crate) fn map_generate_name(
    direction: Direction,
    prefix: &Prefix,
    value: &str,
) -> Result<String> {
    match direction {
        Direction::ToBacking => {
            if value.is_empty() || value.contains(['/', '%']) {
                return Err(Error::InvalidName {
                    what: "generateName",
                    value: value.to_string(),
                    rule: "not a name prefix",
                });
            }
            Ok(format!("{prefix}-{value}"))
        }
        Direction::FromBacking => {
            strip_prefix(prefix, value)
                .map(str::to_string)
                .ok_or_else(|| Error::ForeignName {
                    what: "generateName",
                    value: value.to_string(),
                })
        }
    }
}

/// An RBAC User or Group name in the backing server: moved into a space no authenticator
/// of the backing server hands out, so a binding written by a client names nobody there.
pub fn backing_subject(prefix: &Prefix, name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::InvalidName {
            what: "RBAC subject",
            value: String::new(),
            rule: "empty",
        });
    }
    Ok(format!("{DOMAIN}:{prefix}:{name}"))
}

/// The tenant's User or Group name of a backing subject; anything else is refused.
pub fn tenant_subject(prefix: &Prefix, backing: &str) -> Result<String> {
    backing
        .strip_prefix(DOMAIN)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|rest| rest.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.strip_prefix(':'))
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .ok_or_else(|| Error::ForeignName {
            what: "RBAC subject",
            value: backing.to_string(),
        })
}

pub(crate) fn map_subject(direction: Direction, prefix: &Prefix, value: &str) -> Result<String> {
    match direction {
        Direction::ToBacking => backing_subject(prefix, value),
        Direction::FromBacking => tenant_subject(prefix, value),
    }
}

/// Whether a label or annotation key is reserved to the front (its domain or a subdomain).
pub fn is_reserved_key(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(domain, _)| domain == DOMAIN || domain.ends_with(&format!(".{DOMAIN}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn p(s: &str) -> Prefix {
        Prefix::parse(s).unwrap()
    }

    /// Valid DNS labels of `max` characters at most.
    pub(crate) fn dns_label_strategy(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-z0-9]([-a-z0-9]{{0,{}}}[a-z0-9])?", max - 2))
            .unwrap()
    }

    pub(crate) fn prefix_strategy() -> impl Strategy<Value = Prefix> {
        "[a-z][a-z0-9]{5}".prop_map(|s| Prefix::parse(&s).unwrap())
    }

    #[test]
    fn each_cluster_has_its_own_well_known_namespaces() {
        let (a, b) = (p("taaaaa"), p("tbbbbb"));
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let (ma, mb) = (
                backing_namespace(&a, ns).unwrap(),
                backing_namespace(&b, ns).unwrap(),
            );
            assert_ne!(ma, mb);
            assert_eq!(ma, format!("taaaaa-{ns}"));
            assert_eq!(tenant_namespace(&a, &ma).unwrap(), ns);
            assert_eq!(
                tenant_namespace(&b, &ma).unwrap_err().reason(),
                "foreign_name"
            );
        }
    }

    #[test]
    fn a_namespace_too_long_to_map_is_a_typed_error() {
        let longest = "a".repeat(DNS_LABEL_MAX - PREFIX_LEN - 1);
        assert_eq!(
            backing_namespace(&p("taaaaa"), &longest).unwrap().len(),
            DNS_LABEL_MAX
        );
        let err = backing_namespace(&p("taaaaa"), &format!("{longest}b")).unwrap_err();
        assert_eq!(
            err,
            Error::NameTooLong {
                what: "namespace",
                value: format!("{longest}b"),
                max: 56
            }
        );
    }

    #[test]
    fn invalid_names_are_refused() {
        let a = p("taaaaa");
        for bad in ["", "Upper", "-lead", "trail-", "dot.ted", "under_score"] {
            assert_eq!(
                backing_namespace(&a, bad).unwrap_err().reason(),
                "invalid_name",
                "{bad}"
            );
        }
        // 247 characters: a valid subdomain, but not once prefixed.
        let long_node = format!("{}n", "n.".repeat((DNS_SUBDOMAIN_MAX - PREFIX_LEN) / 2));
        assert_eq!(
            backing_name(&a, NameRule::DnsSubdomain, "Node", &long_node)
                .unwrap_err()
                .reason(),
            "name_too_long"
        );
        for bad in ["", ".", "..", "a/b", "a%2f"] {
            assert_eq!(
                backing_name(&a, NameRule::PathSegment, "ClusterRole", bad)
                    .unwrap_err()
                    .reason(),
                "invalid_name"
            );
        }
        assert_eq!(
            backing_name(&a, NameRule::PathSegment, "ClusterRole", "system:node").unwrap(),
            "taaaaa-system:node"
        );
    }

    #[test]
    fn names_not_mapped_by_the_front_are_refused() {
        let a = p("taaaaa");
        for backing in [
            "default",
            "kube-system",
            "taaaaa",
            "taaaaa-",
            "taaaaadefault",
            "tbbbbb-default",
        ] {
            assert!(tenant_namespace(&a, backing).is_err(), "{backing}");
        }
        assert_eq!(split_backing_namespace("kube-system"), None);
        assert_eq!(split_backing_namespace("t-"), None);
        assert_eq!(
            split_backing_namespace("tbbbbb-kube-system"),
            Some((p("tbbbbb"), "kube-system".to_string()))
        );
    }

    #[test]
    fn subjects_move_into_a_space_per_cluster() {
        let a = p("taaaaa");
        let mapped = backing_subject(&a, "system:masters").unwrap();
        assert_eq!(mapped, "tenancy.fakenode.metal3.io:taaaaa:system:masters");
        assert_eq!(tenant_subject(&a, &mapped).unwrap(), "system:masters");
        assert!(tenant_subject(&p("tbbbbb"), &mapped).is_err());
        assert!(tenant_subject(&a, "system:masters").is_err());
        assert!(tenant_subject(&a, "tenancy.fakenode.metal3.io:taaaaa:").is_err());
        assert!(backing_subject(&a, "").is_err());
    }

    #[test]
    fn reserved_keys() {
        assert!(is_reserved_key(CLUSTER_LABEL));
        assert!(is_reserved_key("x.tenancy.fakenode.metal3.io/y"));
        assert!(!is_reserved_key("tenancy.fakenode.metal3.io"));
        assert!(!is_reserved_key("xtenancy.fakenode.metal3.io/y"));
        assert!(!is_reserved_key("app"));
    }

    proptest! {
        #[test]
        fn namespaces_round_trip(prefix in prefix_strategy(), ns in dns_label_strategy(56)) {
            let backing = backing_namespace(&prefix, &ns).unwrap();
            prop_assert!(backing.len() <= DNS_LABEL_MAX);
            prop_assert_eq!(tenant_namespace(&prefix, &backing).unwrap(), ns.clone());
            prop_assert_eq!(split_backing_namespace(&backing), Some((prefix, ns)));
        }

        #[test]
        fn mapped_names_never_collide_across_clusters(
            a in prefix_strategy(), b in prefix_strategy(),
            x in "[a-z0-9]([-.a-z0-9]{0,30}[a-z0-9])?", y in "[a-z0-9]([-.a-z0-9]{0,30}[a-z0-9])?",
        ) {
            prop_assume!(a != b);
            for rule in [NameRule::DnsSubdomain, NameRule::PathSegment] {
                if let (Ok(mx), Ok(my)) = (backing_name(&a, rule, "n", &x), backing_name(&b, rule, "n", &y)) {
                    prop_assert_ne!(&mx, &my);
                    prop_assert!(tenant_name(&b, rule, "n", &mx).is_err());
                    prop_assert_eq!(tenant_name(&a, rule, "n", &mx).unwrap(), x.clone());
                }
            }
        }

        #[test]
        fn unmapping_never_accepts_what_was_not_mapped(prefix in prefix_strategy(), backing in ".{0,70}") {
            if let Ok(ns) = tenant_namespace(&prefix, &backing) {
                prop_assert_eq!(backing_namespace(&prefix, &ns).unwrap(), backing);
            }
        }

        #[test]
        fn subjects_round_trip(a in prefix_strategy(), b in prefix_strategy(), name in ".{1,40}") {
            let mapped = backing_subject(&a, &name).unwrap();
            prop_assert_eq!(tenant_subject(&a, &mapped).unwrap(), name);
            if a != b {
                prop_assert!(tenant_subject(&b, &mapped).is_err());
            }
        }
    }
}
