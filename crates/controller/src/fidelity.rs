//! How much of a real host the fake kubelets imitate beyond the Ready Node, and the pure
//! decisions that depend on it: when a machine's Node may appear, and which machines get
//! an injected fault. Per-machine choices come from a stable hash of the host's UID, so a
//! restarted (or upgraded) process makes the same ones.

use std::time::Duration;

use jiff::Timestamp;

use crate::fake::stable_share;

/// The fidelity settings. `Default` is the bare controller (Node and kubeadm-config
/// only); the command line's defaults add static pods, heartbeats and cleanup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fidelity {
    /// The mirror Pods of kube-apiserver, kube-controller-manager and kube-scheduler on
    /// control-plane Nodes, which KCP's health checks read.
    pub static_pods: bool,
    /// Also `etcd-<node>` (stacked etcd); with `static_pods` only.
    pub stacked_etcd_pods: bool,
    /// How often each Node's Lease and condition heartbeats are renewed; zero: never (and
    /// no Lease is created).
    pub heartbeat_interval: Duration,
    /// A Node's conditions are reported again at its first heartbeat at least this long
    /// after their last report; the heartbeats in between renew only its Lease, which the
    /// node lifecycle controller takes as the Node's sign of life. A kubelet does the same
    /// (`nodeStatusReportFrequency`, 5 minutes), which is why its Node costs one request
    /// per heartbeat. Zero: with every heartbeat.
    pub status_report_interval: Duration,
    /// Delete the Nodes (with their static pods and Lease) this process created once
    /// their Machine or Metal3Machine is gone.
    pub delete_orphans: bool,
    /// A Node appears this long after its host was provisioned...
    pub startup_delay: Duration,
    /// ...plus a stable share of this, per machine.
    pub startup_jitter: Duration,
    /// The share of machines (by host UID) that never get a Node.
    pub never_ready_fraction: f64,
    /// The share of Nodes (by host UID) that go NotReady `not_ready_after` their creation.
    pub not_ready_fraction: f64,
    pub not_ready_after: Duration,
    /// Annotate control-plane KubeadmConfigs with a certificate expiry, so that KCP does
    /// not try to read the certificate through the kube-apiserver Pod.
    pub annotate_certificate_expiry: bool,
    /// Where this process serves the Nodes' kubelet API (advertised on them), if it does;
    /// the controller sets it from its kubelet API's endpoint.
    pub kubelet_endpoint: Option<std::net::SocketAddr>,
}

/// What happens to one machine's Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Ready, and kept alive by its heartbeats.
    Healthy,
    /// Never created: a host that never boots or never joins.
    NeverReady,
    /// Created Ready, then its kubelet stops posting this long after the Node's creation.
    NotReadyAfter(Duration),
}

/// The injected faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    NeverReady,
    NotReady,
}

/// The host's draw for a fault, stable in [0, 1): the fault hits it when the draw is below
/// the fault's fraction.
pub fn draw(fault: Fault, host_uid: &str) -> f64 {
    let salt = match fault {
        Fault::NeverReady => "never-ready",
        Fault::NotReady => "not-ready",
    };
    stable_share(&format!("{salt}/{host_uid}"))
}

impl Fidelity {
    /// Whether this process keeps a record of the Nodes it ensured: needed for heartbeats,
    /// NotReady faults and cleanup.
    pub fn tracks_nodes(&self) -> bool {
        self.heartbeats() || self.delete_orphans || self.not_ready_fraction > 0.0
    }

    pub fn heartbeats(&self) -> bool {
        !self.heartbeat_interval.is_zero()
    }

    /// The fate of the machine on the host `host_uid`. The two faults use independent
    /// hashes, so each hits its own share; a machine drawn for both never gets a Node.
    pub fn fate(&self, host_uid: &str) -> Fate {
        if draw(Fault::NeverReady, host_uid) < self.never_ready_fraction {
            Fate::NeverReady
        } else if draw(Fault::NotReady, host_uid) < self.not_ready_fraction {
            Fate::NotReadyAfter(self.not_ready_after)
        } else {
            Fate::Healthy
        }
    }

    /// When the Node of the machine on `host_uid` may appear, given when it was first
    /// needed (the start of the creation latency).
    pub fn startup_due(&self, needed: Timestamp, host_uid: &str) -> Timestamp {
        let jitter = self
            .startup_jitter
            .mul_f64(stable_share(&format!("startup/{host_uid}")));
        let delay = self.startup_delay.saturating_add(jitter);
        jiff::SignedDuration::try_from(delay)
            .ok()
            .and_then(|d| needed.checked_add(d).ok())
            .unwrap_or(Timestamp::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{:08x}-1c2a-4f00-8000-{i:012x}", i * 7919))
            .collect()
    }

    #[test]
    fn faults_hit_their_share_stably_and_independently() {
        let f = Fidelity {
            never_ready_fraction: 0.1,
            not_ready_fraction: 0.2,
            not_ready_after: Duration::from_secs(30),
            ..Fidelity::default()
        };
        let all = uids(10_000);
        let fates: Vec<_> = all.iter().map(|u| f.fate(u)).collect();
        let never = fates.iter().filter(|f| **f == Fate::NeverReady).count();
        let not_ready = fates
            .iter()
            .filter(|f| **f == Fate::NotReadyAfter(Duration::from_secs(30)))
            .count();
        assert!((900..1100).contains(&never), "{never}");
        // A fifth of the 90% that get a Node.
        assert!((1650..1950).contains(&not_ready), "{not_ready}");
        // The same choice every time.
        assert_eq!(fates, all.iter().map(|u| f.fate(u)).collect::<Vec<_>>());
        // More never-ready machines keep the earlier ones (a share is a threshold).
        let more = Fidelity {
            never_ready_fraction: 0.3,
            ..f.clone()
        };
        for (u, fate) in all.iter().zip(&fates) {
            if *fate == Fate::NeverReady {
                assert_eq!(more.fate(u), Fate::NeverReady);
            }
        }
    }

    #[test]
    fn off_means_nobody_and_one_means_everybody() {
        let off = Fidelity::default();
        assert!(uids(1000).iter().all(|u| off.fate(u) == Fate::Healthy));
        let all = Fidelity {
            never_ready_fraction: 1.0,
            ..Fidelity::default()
        };
        assert!(uids(1000).iter().all(|u| all.fate(u) == Fate::NeverReady));
        assert!(!off.tracks_nodes());
    }

    #[test]
    fn the_startup_delay_adds_a_stable_jitter() {
        let needed: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let none = Fidelity::default();
        assert_eq!(none.startup_due(needed, "a"), needed);
        let f = Fidelity {
            startup_delay: Duration::from_secs(60),
            startup_jitter: Duration::from_secs(30),
            ..Fidelity::default()
        };
        let dues: Vec<_> = uids(200)
            .iter()
            .map(|u| {
                f.startup_due(needed, u)
                    .duration_since(needed)
                    .as_secs_f64()
            })
            .collect();
        assert!(dues.iter().all(|d| (60.0..90.0).contains(d)), "{dues:?}");
        let spread = dues.iter().cloned().fold(f64::MIN, f64::max)
            - dues.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 20.0, "jitter spreads: {spread}");
        assert_eq!(f.startup_due(needed, "x"), f.startup_due(needed, "x"));
    }
}
