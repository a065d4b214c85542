//! Wakes BareMetalHosts that the baremetal-operator's test mode leaves waiting.
//!
//! In test mode the operator's provisioner completes each step on the host's next
//! reconcile, which it asks for as an immediate requeue. controller-runtime rate-limits
//! immediate requeues per object (5 ms doubling up to 1000 s) and resets that backoff only
//! when a reconcile asks for a delayed requeue, which a host moving quickly through
//! provisioning, provisioned, deprovisioning and available again rarely does. A host reused
//! by several Machines in one run (scaling, a rolling upgrade) can so wait many minutes in
//! `provisioning` or `deprovisioning` with nothing left to do (with Ironic, whose steps
//! take time, the operator polls with delays and never gets there). The operator
//! reconciles a host at once when its annotations change, so the harness touches an
//! annotation of a host stuck in a transient state: what a person watching the run would
//! do, counted in the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use metal3_fakenode_testkit::simulate::world::dynamic;

/// The annotation the harness touches; the operator ignores it but reconciles on it.
pub const ANNOTATION: &str = "bench.fakenode.metal3.io/nudged-at";

/// How long a host may sit in a transient state before it is nudged (the test provisioner
/// takes well under a second per step), and again between nudges.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// States in which the test provisioner only waits for the next reconcile.
const TRANSIENT: &[&str] = &[
    "registering",
    "inspecting",
    "preparing",
    "provisioning",
    "deprovisioning",
    "powering off before delete",
    "deleting",
];

/// What the harness last saw of one host.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    state: String,
    /// When the host was first seen in this state, or last nudged in it.
    since: Instant,
}

/// The hosts to nudge now, updating what was seen: each host whose state is transient
/// and unchanged for [`PATIENCE`]. `hosts` are (namespace/name, provisioning state).
pub fn due(
    hosts: &[(String, String)],
    seen: &mut BTreeMap<String, Seen>,
    now: Instant,
) -> Vec<String> {
    let mut due = Vec::new();
    let mut next = BTreeMap::new();
    for (key, state) in hosts {
        let mut entry = match seen.remove(key) {
            Some(s) if &s.state == state => s,
            _ => Seen {
                state: state.clone(),
                since: now,
            },
        };
        if TRANSIENT.contains(&state.as_str()) && now.duration_since(entry.since) >= PATIENCE {
            due.push(key.clone());
            entry.since = now;
        }
        next.insert(key.clone(), entry);
    }
    // Hosts gone from the list are forgotten.
    *seen = next;
    due
}

/// Every PATIENCE / 4, nudges the hosts of `namespaces` that are [`due`]; runs until
/// aborted. Returns nothing: failures to list or patch are retried on the next round.
pub async fn run(mgmt: Client, namespaces: Vec<String>, nudges: Arc<AtomicU64>) {
    let mut seen = BTreeMap::new();
    let mut tick = tokio::time::interval(PATIENCE / 4);
    loop {
        tick.tick().await;
        let mut hosts = Vec::new();
        for ns in &namespaces {
            let api = dynamic(&mgmt, ns, "metal3.io", "v1alpha1", "BareMetalHost");
            let Ok(list) = api.list(&ListParams::default()).await else {
                continue;
            };
            // A host without a name or a state yet is not one to wake.
            hosts.extend(list.items.iter().filter_map(|host| {
                let name = host.metadata.name.as_deref()?;
                let state = host
                    .data
                    .pointer("/status/provisioning/state")
                    .and_then(Value::as_str)?;
                Some((format!("{ns}/{name}"), state.to_string()))
            }));
        }
        for key in due(&hosts, &mut seen, Instant::now()) {
            let Some((ns, name)) = key.split_once('/') else {
                continue;
            };
            let api = dynamic(&mgmt, ns, "metal3.io", "v1alpha1", "BareMetalHost");
            let patch = json!({"metadata": {"annotations": {
                ANNOTATION: jiff::Timestamp::now().to_string(),
            }}});
            if api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                nudges.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(states: &[(&str, &str)]) -> Vec<(String, String)> {
        states
            .iter()
            .map(|(k, s)| ((*k).to_string(), (*s).to_string()))
            .collect()
    }

    #[test]
    fn a_host_stuck_in_a_transient_state_is_nudged_once_per_patience() {
        let t0 = Instant::now();
        let mut seen = BTreeMap::new();
        let stuck = hosts(&[("ns/a", "provisioning"), ("ns/b", "provisioned")]);
        assert!(due(&stuck, &mut seen, t0).is_empty(), "first sight");
        assert!(due(&stuck, &mut seen, t0 + PATIENCE / 2).is_empty());
        assert_eq!(due(&stuck, &mut seen, t0 + PATIENCE), vec!["ns/a"]);
        assert!(
            due(&stuck, &mut seen, t0 + PATIENCE + PATIENCE / 2).is_empty(),
            "not again before another patience"
        );
        assert_eq!(due(&stuck, &mut seen, t0 + PATIENCE * 2), vec!["ns/a"]);
    }

    #[test]
    fn steady_and_moving_hosts_are_left_alone() {
        let t0 = Instant::now();
        let mut seen = BTreeMap::new();
        due(
            &hosts(&[("ns/a", "provisioning"), ("ns/b", "available")]),
            &mut seen,
            t0,
        );
        // a moved on; b sits in a steady state however long.
        let later = hosts(&[("ns/a", "provisioned"), ("ns/b", "available")]);
        assert!(due(&later, &mut seen, t0 + PATIENCE * 3).is_empty());
        // a went back to a transient state: its patience starts again.
        let again = hosts(&[("ns/a", "deprovisioning"), ("ns/b", "available")]);
        assert!(due(&again, &mut seen, t0 + PATIENCE * 4).is_empty());
        assert_eq!(due(&again, &mut seen, t0 + PATIENCE * 5), vec!["ns/a"]);
    }

    #[test]
    fn hosts_gone_are_forgotten() {
        let t0 = Instant::now();
        let mut seen = BTreeMap::new();
        due(&hosts(&[("ns/a", "deleting")]), &mut seen, t0);
        due(&[], &mut seen, t0 + PATIENCE);
        assert!(seen.is_empty());
    }
}
