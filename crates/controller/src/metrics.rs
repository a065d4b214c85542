//! The Prometheus metrics. Names are a contract: the dashboard and the alert rules read
//! them. No label ever names a cluster, machine or namespace, so cardinality stays bounded
//! at 10,000 clusters.

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::Error;

/// Milliseconds (an idle controller next to its API server) to minutes (a real host's
/// boot time, or a scale test that overloads the management cluster).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A queue's wait is milliseconds when all is well: finer buckets at the low end.
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// Reconcile outcomes, the values of the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// The Node (and kubeadm-config) exist.
    Ensured,
    /// The host is not provisioned yet.
    Waiting,
    /// CAPM3 set the providerID; nothing to do.
    Closed,
    Error,
}

impl ReconcileResult {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ensured => "ensured",
            Self::Waiting => "waiting",
            Self::Closed => "closed",
            Self::Error => "error",
        }
    }
}

/// Why a request went to a workload API server, the values of the `purpose` label: the
/// verb alone cannot tell a heartbeat's status patch from a registration's taint patch, and
/// a benchmark counting requests per Node needs the one without the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The Node: its create, a look at an existing one, its status set again, its
    /// startup taints lifted.
    Registration,
    /// A control plane's `kube-system/kubeadm-config`.
    KubeadmConfig,
    /// The control plane's mirror Pods and their status.
    StaticPods,
    /// The Node's Lease, created.
    Lease,
    /// A kubelet posting its Node's status and renewing its Lease (or stopping posting).
    Heartbeat,
    /// The list of a cluster's Nodes with which a controller takes them over.
    Adoption,
    /// Deleting what stood for a host.
    Cleanup,
    /// A Node's addresses and kubelet port set again.
    Address,
    /// The kubelet API settling a port-forward's Pod and Node.
    PortForward,
    /// The fake etcd members' state (their Nodes and Pods, a moved leader or removed
    /// member).
    EtcdMembers,
}

impl Purpose {
    pub const ALL: &'static [Purpose] = &[
        Purpose::Registration,
        Purpose::KubeadmConfig,
        Purpose::StaticPods,
        Purpose::Lease,
        Purpose::Heartbeat,
        Purpose::Adoption,
        Purpose::Cleanup,
        Purpose::Address,
        Purpose::PortForward,
        Purpose::EtcdMembers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Registration => "registration",
            Purpose::KubeadmConfig => "kubeadm_config",
            Purpose::StaticPods => "static_pods",
            Purpose::Lease => "lease",
            Purpose::Heartbeat => "heartbeat",
            Purpose::Adoption => "adoption",
            Purpose::Cleanup => "cleanup",
            Purpose::Address => "address",
            Purpose::PortForward => "port_forward",
            Purpose::EtcdMembers => "etcd_members",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub node_creation_latency: Histogram,
    pub provider_id_latency: Histogram,
    pub reconcile_duration: HistogramVec,
    pub reconcile_queue_wait: Histogram,
    pub nodes_created: IntCounter,
    pub kubeadm_configs_created: IntCounter,
    pub reconcile_errors: IntCounterVec,
    pub pending_machines: IntGauge,
    pub workload_clients: IntGauge,
    pub workload_connections: IntCounter,
    pub workload_connections_open: IntGauge,
    pub workload_requests: IntCounterVec,
    pub workload_request_duration: HistogramVec,
    /// Time requests held back because a workload API server asked to retry later.
    pub workload_server_wait: Counter,
    pub events_dropped: IntCounter,
    /// 1 while this replica leads (or when leader election is off), 0 on standby.
    pub leader: IntGauge,
    pub missing_permissions: IntGauge,
    pub static_pods_created: IntCounter,
    pub nodes_deleted: IntCounter,
    pub kubelets: IntGauge,
    pub heartbeats: IntCounterVec,
    pub faults_injected: IntCounterVec,
    /// Objects of the management cluster kept as unreadable, by resource.
    pub unreadable_objects: IntGaugeVec,
    /// 1 while every watch of a resource is up, by resource.
    pub watch_up: IntGaugeVec,
    /// Port-forward requests to the kubelet API, by result.
    pub port_forward_sessions: IntCounterVec,
    /// SPDY sessions of port-forwards open now.
    pub port_forward_open: IntGauge,
    /// Forwarded connections (stream pairs), by result.
    pub port_forward_streams: IntCounterVec,
    /// RPCs answered by the fake etcd members, by method and gRPC code.
    pub etcd_rpcs: IntCounterVec,
}

/// The values of the `resource` label: the kinds the controller watches.
pub const WATCHED_RESOURCES: &[&str] = &[
    "baremetalhosts",
    "clusters",
    "kubeadmcontrolplanes",
    "machines",
    "metal3machines",
    "secrets",
];

/// The values of `fakenode_heartbeats_total{result}`.
pub const HEARTBEAT_RESULTS: &[&str] = &["posted", "failed", "skipped"];
/// The values of `fakenode_port_forward_streams_total{result}`.
pub const PORT_FORWARD_STREAM_RESULTS: &[&str] =
    &["etcd", "api_server", "no_target", "incomplete", "failed"];
/// The values of `fakenode_faults_injected_total{fault}`.
pub const FAULTS: &[&str] = &["never_ready", "not_ready"];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::for_shard(None)
    }

    /// With `Some(index)`, every metric carries `shard="<index>"`: one value per replica,
    /// so cardinality stays bounded and per-shard rates can be told apart.
    pub fn for_shard(shard: Option<u32>) -> Result<Self, prometheus::Error> {
        let labels =
            shard.map(|i| std::collections::HashMap::from([("shard".to_string(), i.to_string())]));
        let registry = Registry::new_custom(None, labels)?;
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        };
        let metrics = Self {
            node_creation_latency: histogram(
                "fakenode_node_creation_latency_seconds",
                "From when a Metal3Machine first needed a Node (its BareMetalHost provisioned, \
                 no providerID) to when the Node exists in its workload cluster.",
            )?,
            provider_id_latency: histogram(
                "fakenode_provider_id_latency_seconds",
                "From the Node's creation to the Metal3Machine having its providerID (the \
                 rest of the loop, closed by CAPM3).",
            )?,
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new(
                    "fakenode_reconcile_duration_seconds",
                    "Time spent in one reconcile of a Metal3Machine, by result.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["result"],
            )?,
            reconcile_queue_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "fakenode_reconcile_queue_wait_seconds",
                    "From the watch event that showed a Metal3Machine needing a Node to the \
                     start of the reconcile that acts on it: the controller's queue (kube-runtime's \
                     scheduler, a free worker).",
                )
                .buckets(QUEUE_WAIT_BUCKETS.to_vec()),
            )?,
            nodes_created: IntCounter::new(
                "fakenode_nodes_created_total",
                "Nodes created in workload clusters.",
            )?,
            kubeadm_configs_created: IntCounter::new(
                "fakenode_kubeadm_configs_created_total",
                "kube-system/kubeadm-config ConfigMaps created in workload clusters.",
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "fakenode_reconcile_errors_total",
                    "Reconciles that could not proceed, by reason.",
                ),
                &["reason"],
            )?,
            pending_machines: IntGauge::new(
                "fakenode_pending_machines",
                "Metal3Machines without a providerID whose host is provisioned: waiting for \
                 a Node or for CAPM3 to pick it up.",
            )?,
            workload_clients: IntGauge::new(
                "fakenode_workload_clients",
                "Cached workload cluster clients.",
            )?,
            workload_connections: IntCounter::new(
                "fakenode_workload_connections_total",
                "Connections opened to workload API servers: with idle connections closed \
                 (--workload-idle-timeout), about one per heartbeat.",
            )?,
            workload_connections_open: IntGauge::new(
                "fakenode_workload_connections_open",
                "Connections to workload API servers open now, idle or busy.",
            )?,
            workload_requests: IntCounterVec::new(
                Opts::new(
                    "fakenode_workload_requests_total",
                    "Requests to workload API servers, by verb, HTTP status code \
                     (\"error\" when no response came back) and purpose.",
                ),
                &["verb", "code", "purpose"],
            )?,
            workload_request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "fakenode_workload_request_duration_seconds",
                    "Duration of requests to workload API servers, by verb.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["verb"],
            )?,
            workload_server_wait: Counter::new(
                "fakenode_workload_server_wait_seconds_total",
                "Seconds requests to workload API servers waited because a server answered \
                 429 or 503 with Retry-After (API Priority and Fairness setting the pace).",
            )?,
            events_dropped: IntCounter::new(
                "fakenode_events_dropped_total",
                "Kubernetes Events dropped because the publishing queue was full.",
            )?,
            leader: IntGauge::new(
                "fakenode_leader",
                "1 while this replica reconciles (it leads, or leader election is off); 0 on standby.",
            )?,
            missing_permissions: IntGauge::new(
                "fakenode_missing_permissions",
                "Permissions in the management cluster this identity needs but lacks (checked with SelfSubjectAccessReviews); not ready while above 0.",
            )?,
            static_pods_created: IntCounter::new(
                "fakenode_static_pods_created_total",
                "Mirror Pods of control-plane static pods created in workload clusters.",
            )?,
            nodes_deleted: IntCounter::new(
                "fakenode_nodes_deleted_total",
                "Nodes deleted (with their static pods and Lease) because their Machine or \
                 Metal3Machine is gone.",
            )?,
            kubelets: IntGauge::new(
                "fakenode_kubelets",
                "Nodes this process keeps (heartbeats, faults, cleanup): its fake kubelets.",
            )?,
            heartbeats: IntCounterVec::new(
                Opts::new(
                    "fakenode_heartbeats_total",
                    "Node heartbeats (Lease and condition renewal), by result: posted, \
                     failed, or skipped (the cluster's previous ones still in flight).",
                ),
                &["result"],
            )?,
            faults_injected: IntCounterVec::new(
                Opts::new(
                    "fakenode_faults_injected_total",
                    "Injected faults: never_ready (a machine withheld its Node), not_ready \
                     (a Node's kubelet stopped posting).",
                ),
                &["fault"],
            )?,
            unreadable_objects: IntGaugeVec::new(
                Opts::new(
                    "fakenode_unreadable_objects",
                    "Objects of the management cluster whose fields this controller's typed \
                     views cannot read (kept as unreadable; logged once per version), by \
                     resource.",
                ),
                &["resource"],
            )?,
            watch_up: IntGaugeVec::new(
                Opts::new(
                    "fakenode_watch_up",
                    "1 while the watches of this resource in the management cluster are \
                     up, 0 while one of them keeps failing.",
                ),
                &["resource"],
            )?,
            port_forward_sessions: IntCounterVec::new(
                Opts::new(
                    "fakenode_port_forward_sessions_total",
                    "Port-forward requests the kubelet API received, by result: served, \
                     tls_failed or why it refused (no_client_certificate, unknown_caller, \
                     unknown_pod, ambiguous, ambiguous_prefix, not_an_upgrade, \
                     workload_request_failed).",
                ),
                &["result"],
            )?,
            port_forward_open: IntGauge::new(
                "fakenode_port_forward_sessions_open",
                "Port-forward sessions (SPDY connections from workload API servers) open now.",
            )?,
            port_forward_streams: IntCounterVec::new(
                Opts::new(
                    "fakenode_port_forward_streams_total",
                    "Forwarded connections (stream pairs), by result: etcd, api_server, \
                     no_target (a port no fake serves), incomplete (a pair never completed) \
                     or failed.",
                ),
                &["result"],
            )?,
            etcd_rpcs: IntCounterVec::new(
                Opts::new(
                    "fakenode_etcd_rpcs_total",
                    "RPCs the fake etcd members answered, by method and gRPC code.",
                ),
                &["method", "code"],
            )?,
            registry,
        };
        metrics.register()?;
        Ok(metrics)
    }

    fn register(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.node_creation_latency.clone()))?;
        r.register(Box::new(self.provider_id_latency.clone()))?;
        r.register(Box::new(self.reconcile_duration.clone()))?;
        r.register(Box::new(self.reconcile_queue_wait.clone()))?;
        r.register(Box::new(self.nodes_created.clone()))?;
        r.register(Box::new(self.kubeadm_configs_created.clone()))?;
        r.register(Box::new(self.reconcile_errors.clone()))?;
        r.register(Box::new(self.pending_machines.clone()))?;
        r.register(Box::new(self.workload_clients.clone()))?;
        r.register(Box::new(self.workload_connections.clone()))?;
        r.register(Box::new(self.workload_connections_open.clone()))?;
        r.register(Box::new(self.workload_requests.clone()))?;
        r.register(Box::new(self.workload_request_duration.clone()))?;
        r.register(Box::new(self.workload_server_wait.clone()))?;
        r.register(Box::new(self.events_dropped.clone()))?;
        r.register(Box::new(self.leader.clone()))?;
        r.register(Box::new(self.missing_permissions.clone()))?;
        r.register(Box::new(self.static_pods_created.clone()))?;
        r.register(Box::new(self.nodes_deleted.clone()))?;
        r.register(Box::new(self.kubelets.clone()))?;
        r.register(Box::new(self.heartbeats.clone()))?;
        r.register(Box::new(self.faults_injected.clone()))?;
        r.register(Box::new(self.unreadable_objects.clone()))?;
        r.register(Box::new(self.watch_up.clone()))?;
        r.register(Box::new(self.port_forward_sessions.clone()))?;
        r.register(Box::new(self.port_forward_open.clone()))?;
        r.register(Box::new(self.port_forward_streams.clone()))?;
        r.register(Box::new(self.etcd_rpcs.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "fakenode_build_info",
                "Always 1; labels say which build runs.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        r.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Every reason from the start, so that rate() and alerts see a zero, not nothing.
        for reason in Error::REASONS {
            self.reconcile_errors.with_label_values(&[reason]);
        }
        for result in HEARTBEAT_RESULTS {
            self.heartbeats.with_label_values(&[result]);
        }
        for fault in FAULTS {
            self.faults_injected.with_label_values(&[fault]);
        }
        for result in PORT_FORWARD_STREAM_RESULTS {
            self.port_forward_streams.with_label_values(&[result]);
        }
        self.port_forward_sessions.with_label_values(&["served"]);
        for method in fake_etcd::service::methods::ALL {
            self.etcd_rpcs.with_label_values(&[method, "Ok"]);
        }
        for resource in WATCHED_RESOURCES {
            self.unreadable_objects
                .with_label_values(&[resource])
                .set(0);
        }
        Ok(())
    }

    pub fn reconcile_error(&self, err: &Error) {
        self.reconcile_errors
            .with_label_values(&[err.reason()])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Seconds from `start` to `end`, never negative: the two may come from different clocks
/// (the baremetal-operator's, this process's), and a start in the future is clock skew, not
/// a negative latency.
pub fn elapsed_seconds(start: jiff::Timestamp, end: jiff::Timestamp) -> f64 {
    end.duration_since(start).as_secs_f64().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_labels_every_metric() {
        let m = Metrics::for_shard(Some(1)).unwrap();
        m.nodes_created.inc();
        let text = m.render().unwrap();
        assert!(
            text.contains("fakenode_nodes_created_total{shard=\"1\"} 1"),
            "{text}"
        );
        assert!(text.contains("fakenode_leader{shard=\"1\"} 0"), "{text}");
        assert!(!Metrics::new().unwrap().render().unwrap().contains("shard="));
    }

    #[test]
    fn elapsed_time_is_clamped_at_zero() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let a = t("2026-11-26T10:00:00Z");
        assert_eq!(elapsed_seconds(a, t("2026-11-26T10:00:01.250Z")), 1.25);
        assert_eq!(
            elapsed_seconds(t("2026-11-26T10:00:03Z"), a),
            0.0,
            "start in the future"
        );
        assert_eq!(elapsed_seconds(a, a), 0.0);
    }

    #[test]
    fn every_family_renders_and_reasons_start_at_zero() {
        let m = Metrics::new().unwrap();
        m.nodes_created.inc();
        m.reconcile_error(&Error::NoOwnerMachine);
        let text = m.render().unwrap();
        assert!(text.contains("fakenode_nodes_created_total 1"));
        assert!(text.contains("fakenode_reconcile_errors_total{reason=\"no_owner_machine\"} 1"));
        assert!(text.contains("fakenode_reconcile_errors_total{reason=\"node_conflict\"} 0"));
        assert!(text.contains("fakenode_build_info{version="));
        assert!(text.contains("fakenode_node_creation_latency_seconds_bucket{le=\"0.005\"} 0"));
        assert!(text.contains("fakenode_heartbeats_total{result=\"skipped\"} 0"));
        assert!(text.contains("fakenode_faults_injected_total{fault=\"not_ready\"} 0"));
    }
}
