//! What to change, decided from what is wanted and what runs, without I/O: which
//! listeners to start, restart or stop, which prefix each cluster uses, and which clusters
//! are refused. A Cluster watcher and a file feed the same function.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use tenancy::{Allocation, ClusterKey, Prefix};

use crate::clusters::ServedCluster;

/// A listener to start, with the prefix its cluster's objects carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub served: ServedCluster,
    pub allocation: Allocation,
}

/// Why a cluster is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub cluster: ClusterKey,
    /// Bounded, for metrics and Event reasons: one of [`Refusal::REASONS`], or the
    /// reason of an [`Error`](crate::Error) or a mapping refusal.
    pub reason: &'static str,
    /// For people: the detail, which may name other Clusters.
    pub why: String,
}

impl Refusal {
    /// The refusals decided here and in `observe`.
    pub const REASONS: &'static [&'static str] = &[
        "listed_twice",
        "endpoint_shared",
        "endpoint_contested",
        "port_out_of_range",
        "incomplete_cluster",
        "ca_secret_missing",
        "ca_secret_incomplete",
    ];
}

/// The changes to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Listeners to stop: clusters no longer served, or served differently (restarted).
    pub stop: Vec<ClusterKey>,
    pub start: Vec<Start>,
    pub refused: Vec<Refusal>,
    /// Clusters still served on an endpoint another Cluster names too (reason
    /// `endpoint_contested`): both are told, not only the newcomer.
    pub contested: Vec<Refusal>,
}

/// Decides the changes. `running` is what each listener was started with; `recorded`
/// the prefixes handed out so far.
///
/// Two clusters naming one endpoint: a cluster already served there keeps it and the
/// newcomer is refused (a new Cluster must not take an endpoint away from another);
/// when none is served there yet, all of them are refused, since picking one would
/// depend on listing order.
pub fn plan(
    desired: &[ServedCluster],
    running: &BTreeMap<ClusterKey, ServedCluster>,
    recorded: &BTreeMap<Prefix, ClusterKey>,
) -> Plan {
    let mut plan = Plan::default();
    let mut by_endpoint: BTreeMap<SocketAddr, Vec<&ServedCluster>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for served in desired {
        if !seen.insert(&served.cluster) {
            plan.refused.push(Refusal {
                cluster: served.cluster.clone(),
                reason: "listed_twice",
                why: "listed twice".into(),
            });
            continue;
        }
        by_endpoint.entry(served.listen).or_default().push(served);
    }
    let mut accepted: Vec<&ServedCluster> = Vec::new();
    for (endpoint, claimants) in by_endpoint {
        if let [only] = claimants.as_slice() {
            accepted.push(only);
            continue;
        }
        let incumbent = claimants.iter().find(|c| {
            running
                .get(&c.cluster)
                .is_some_and(|r| r.listen == endpoint)
        });
        let names: Vec<String> = claimants.iter().map(|c| c.cluster.to_string()).collect();
        for claimant in &claimants {
            if incumbent.is_some_and(|i| i.cluster == claimant.cluster) {
                accepted.push(claimant);
                plan.contested.push(Refusal {
                    cluster: claimant.cluster.clone(),
                    reason: "endpoint_contested",
                    why: format!(
                        "endpoint {endpoint} is also named by {}; this Cluster keeps it",
                        names.join(", ")
                    ),
                });
            } else {
                plan.refused.push(Refusal {
                    cluster: claimant.cluster.clone(),
                    reason: "endpoint_shared",
                    why: format!("endpoint {endpoint} is named by {}", names.join(", ")),
                });
            }
        }
    }

    let wanted: BTreeSet<&ClusterKey> = accepted.iter().map(|s| &s.cluster).collect();
    for (key, served) in running {
        let changed = accepted.iter().any(|s| &s.cluster == key && *s != served);
        if !wanted.contains(key) || changed {
            plan.stop.push(key.clone());
        }
    }

    let mut record = recorded.clone();
    for served in accepted {
        let unchanged = running.get(&served.cluster) == Some(served);
        match tenancy::allocate(&served.cluster, &record) {
            Ok(allocation) => {
                record.insert(allocation.prefix.clone(), served.cluster.clone());
                if !unchanged {
                    plan.start.push(Start {
                        served: served.clone(),
                        allocation,
                    });
                }
            }
            Err(e) => plan.refused.push(Refusal {
                cluster: served.cluster.clone(),
                reason: e.reason(),
                why: e.to_string(),
            }),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(name: &str, port: u16) -> ServedCluster {
        ServedCluster {
            cluster: ClusterKey {
                namespace: "metal3".into(),
                name: name.into(),
                uid: format!("uid-{name}"),
            },
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            hosts: vec!["127.0.0.1".into()],
            ca_cert: "cert".into(),
            ca_key: "key".into(),
        }
    }

    fn running(clusters: &[&ServedCluster]) -> BTreeMap<ClusterKey, ServedCluster> {
        clusters
            .iter()
            .map(|s| (s.cluster.clone(), (*s).clone()))
            .collect()
    }

    #[test]
    fn new_clusters_start_with_distinct_prefixes() {
        let plan = plan(
            &[served("a", 7001), served("b", 7002)],
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(plan.start.len(), 2);
        assert!(plan.stop.is_empty() && plan.refused.is_empty());
        assert_ne!(
            plan.start[0].allocation.prefix,
            plan.start[1].allocation.prefix
        );
        assert!(!plan.start[0].allocation.recorded);
    }

    #[test]
    fn a_served_cluster_unchanged_is_left_alone_and_a_removed_one_stopped() {
        let (a, b) = (served("a", 7001), served("b", 7002));
        let plan = plan(
            std::slice::from_ref(&a),
            &running(&[&a, &b]),
            &BTreeMap::new(),
        );
        assert!(plan.start.is_empty());
        assert_eq!(plan.stop, vec![b.cluster]);
    }

    #[test]
    fn a_changed_cluster_is_restarted() {
        let a = served("a", 7001);
        let moved = served("a", 7005);
        let plan = plan(
            std::slice::from_ref(&moved),
            &running(&[&a]),
            &BTreeMap::new(),
        );
        assert_eq!(plan.stop, vec![a.cluster]);
        assert_eq!(plan.start[0].served, moved);
    }

    #[test]
    fn two_new_clusters_on_one_endpoint_are_both_refused() {
        let plan = plan(
            &[served("a", 7001), served("b", 7001)],
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert!(plan.start.is_empty());
        assert_eq!(plan.refused.len(), 2);
        assert!(
            plan.refused[0].why.contains("127.0.0.1:7001"),
            "{:?}",
            plan.refused
        );
    }

    #[test]
    fn the_cluster_already_on_an_endpoint_keeps_it() {
        let (a, b) = (served("a", 7001), served("b", 7001));
        let plan = plan(&[b.clone(), a.clone()], &running(&[&a]), &BTreeMap::new());
        assert!(plan.start.is_empty() && plan.stop.is_empty());
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(plan.refused[0].cluster, b.cluster);
        // The incumbent is told too.
        assert_eq!(plan.contested.len(), 1);
        assert_eq!(plan.contested[0].cluster, a.cluster);
        assert_eq!(plan.contested[0].reason, "endpoint_contested");
    }

    #[test]
    fn a_recorded_prefix_is_kept_and_a_recreated_cluster_gets_a_new_one() {
        let a = served("a", 7001);
        let old = Prefix::parse("tzzzzz").unwrap();
        let mut recorded = BTreeMap::from([(old.clone(), a.cluster.clone())]);
        let kept = plan(std::slice::from_ref(&a), &BTreeMap::new(), &recorded);
        assert_eq!(kept.start[0].allocation.prefix, old);
        assert!(kept.start[0].allocation.recorded);

        let mut old_key = a.cluster.clone();
        old_key.uid = "uid-before".into();
        recorded.insert(old.clone(), old_key);
        let recreated = plan(&[a], &BTreeMap::new(), &recorded);
        assert_ne!(recreated.start[0].allocation.prefix, old);
        assert_eq!(recreated.start[0].allocation.superseded, vec![old]);
    }

    #[test]
    fn a_cluster_listed_twice_is_refused_once_and_served_once() {
        let a = served("a", 7001);
        let plan = plan(&[a.clone(), a.clone()], &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(plan.start.len(), 1);
        assert_eq!(plan.refused.len(), 1);
    }
}
