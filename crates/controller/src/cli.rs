//! The command line: one clap struct per subcommand; every flag also reads an environment
//! variable (`FAKENODE_*`), as a Deployment sets them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;
use crate::workload::{self, ServerRewrite, Settings, non_zero};

#[derive(Debug, Parser)]
#[command(
    name = "metal3-fakenode",
    version,
    about = "Fake kubelets for Metal3 / Cluster API scale tests"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: a Ready Node for every provisioned Metal3Machine.
    Run(Box<RunArgs>),
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Watch Metal3Machines only in this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace", env = "FAKENODE_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Watch only Metal3Machines matching this label selector.
    #[arg(long, env = "FAKENODE_SELECTOR")]
    pub selector: Option<String>,

    /// Metal3Machines reconciled at once (per watched namespace).
    #[arg(long, env = "FAKENODE_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,

    /// Where /metrics, /healthz and /readyz are served (`:8080` means all addresses).
    #[arg(long, env = "FAKENODE_METRICS_BIND_ADDRESS", default_value = ":8080", value_parser = parse_bind_address)]
    pub metrics_bind_address: SocketAddr,

    /// Requests per second to the management cluster (Events; watches are not counted).
    #[arg(long, env = "FAKENODE_KUBE_QPS", default_value = "50")]
    pub kube_qps: NonZeroU32,

    /// Burst above --kube-qps.
    #[arg(long, env = "FAKENODE_KUBE_BURST", default_value = "100")]
    pub kube_burst: NonZeroU32,

    /// Requests per second of each fake kubelet (Node), as a kubelet's kubeAPIQPS.
    #[arg(long, env = "FAKENODE_KUBELET_QPS", default_value_t = non_zero(workload::KUBELET_QPS))]
    pub kubelet_qps: NonZeroU32,

    /// Burst above --kubelet-qps, as a kubelet's kubeAPIBurst.
    #[arg(long, env = "FAKENODE_KUBELET_BURST", default_value_t = non_zero(workload::KUBELET_BURST))]
    pub kubelet_burst: NonZeroU32,

    /// Cap on the requests per second to one workload cluster, all its kubelets together.
    /// The API server's Retry-After (429 from API Priority and Fairness) slows them first.
    #[arg(long, env = "FAKENODE_WORKLOAD_QPS", default_value_t = non_zero(workload::CLUSTER_QPS))]
    pub workload_qps: NonZeroU32,

    /// Burst above --workload-qps.
    #[arg(long, env = "FAKENODE_WORKLOAD_BURST", default_value_t = non_zero(workload::CLUSTER_BURST))]
    pub workload_burst: NonZeroU32,

    /// The longest wait a workload API server's Retry-After is obeyed for.
    #[arg(long, env = "FAKENODE_WORKLOAD_MAX_RETRY_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub workload_max_retry_after: Duration,

    /// Connect timeout for workload API servers (e.g. 5s, 500ms).
    #[arg(long, env = "FAKENODE_WORKLOAD_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub workload_connect_timeout: Duration,

    /// How long an idle connection to a workload API server is kept (a Node's heartbeat
    /// opens a new one, resuming its TLS session); `0` keeps each for as long as it
    /// lasts, as a kubelet does, at about 25 KiB per cluster.
    #[arg(long, env = "FAKENODE_WORKLOAD_IDLE_TIMEOUT", default_value = "500ms", value_parser = parse_idle_timeout)]
    pub workload_idle_timeout: Duration,

    /// Timeout of one request to a workload API server.
    #[arg(long, env = "FAKENODE_WORKLOAD_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub workload_request_timeout: Duration,

    /// Rewrite workload API server URLs starting with FROM to start with TO (repeatable),
    /// e.g. to reach them through a port-forward from outside the management cluster.
    #[arg(
        long = "workload-server-rewrite",
        env = "FAKENODE_WORKLOAD_SERVER_REWRITES",
        value_delimiter = ',',
        value_name = "FROM=TO"
    )]
    pub workload_server_rewrites: Vec<ServerRewrite>,

    /// Longest wait before retrying a Metal3Machine that failed (backoff is exponential).
    #[arg(long, env = "FAKENODE_MAX_RETRY_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub max_retry_delay: Duration,

    /// `/readyz` fails (and `fakenode_watch_up` says which) while a watch of the
    /// management cluster has kept failing this long.
    #[arg(long, env = "FAKENODE_WATCH_DOWN_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub watch_down_grace: Duration,

    /// Log format.
    #[arg(long, env = "FAKENODE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// After SIGTERM or SIGINT, how long running work may take to finish before the
    /// process exits anyway (below a Pod's default 30s termination grace period); a
    /// second signal exits at once.
    #[arg(long, env = "FAKENODE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Give control-plane Nodes the mirror Pods of kube-apiserver, kube-controller-manager
    /// and kube-scheduler (`--static-pods=false` to turn off).
    #[arg(long, env = "FAKENODE_STATIC_PODS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub static_pods: bool,

    /// Serve the fake Nodes' kubelet API (port-forward to fake etcd members and to the
    /// kube-apiserver's certificate) and advertise it on them: the address and port the
    /// workload API servers reach --kubelet-bind-address at (an IP: kubeadm's API servers
    /// prefer InternalIP). In a Pod: `$(POD_IP):10250`. Unset: no kubelet API.
    #[arg(long, env = "FAKENODE_KUBELET_ADDRESS")]
    pub kubelet_address: Option<SocketAddr>,

    /// Where the kubelet API listens (with --kubelet-address).
    #[arg(long, env = "FAKENODE_KUBELET_BIND_ADDRESS", default_value = ":10250", value_parser = parse_bind_address)]
    pub kubelet_bind_address: SocketAddr,

    /// An etcd Pod per control-plane Node even where no KubeadmControlPlane says the
    /// cluster's etcd is stacked (it is detected from the KubeadmControlPlane otherwise).
    #[arg(long, env = "FAKENODE_STACKED_ETCD_PODS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub stacked_etcd_pods: bool,

    /// How often each Node's Lease is renewed (its conditions' heartbeats with it every
    /// --node-status-report-interval); 0 turns heartbeats off.
    #[arg(long, env = "FAKENODE_NODE_HEARTBEAT_INTERVAL", default_value = "40s", value_parser = parse_duration_or_zero)]
    pub node_heartbeat_interval: Duration,

    /// How often a Node's conditions are reported with its heartbeat, as a kubelet's
    /// nodeStatusReportFrequency; the heartbeats between reports renew its Lease only.
    /// 0: with every heartbeat.
    #[arg(long, env = "FAKENODE_NODE_STATUS_REPORT_INTERVAL", default_value = "5m", value_parser = parse_duration_or_zero)]
    pub node_status_report_interval: Duration,

    /// Delete the Nodes (and their static pods and Lease) this process created once
    /// their Machine or Metal3Machine is gone.
    #[arg(long, env = "FAKENODE_DELETE_ORPHANED_NODES", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub delete_orphaned_nodes: bool,

    /// A Node appears this long after its host was provisioned (a host's boot time).
    #[arg(long, env = "FAKENODE_NODE_STARTUP_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub node_startup_delay: Duration,

    /// Plus up to this much more, stable per host.
    #[arg(long, env = "FAKENODE_NODE_STARTUP_JITTER", default_value = "0s", value_parser = parse_duration)]
    pub node_startup_jitter: Duration,

    /// The share of machines (chosen by a stable hash of the host UID) that never get a
    /// Node, between 0 and 1.
    #[arg(long, env = "FAKENODE_NEVER_READY_FRACTION", default_value = "0", value_parser = parse_fraction)]
    pub never_ready_fraction: f64,

    /// The share of Nodes (by host UID) whose kubelet stops posting --not-ready-after
    /// their creation, between 0 and 1.
    #[arg(long, env = "FAKENODE_NOT_READY_FRACTION", default_value = "0", value_parser = parse_fraction)]
    pub not_ready_fraction: f64,

    /// When the Nodes chosen by --not-ready-fraction go NotReady.
    #[arg(long, env = "FAKENODE_NOT_READY_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub not_ready_after: Duration,

    /// Annotate control-plane KubeadmConfigs with a certificate expiry (needs the RBAC of
    /// deploy/components/certificate-expiry).
    #[arg(long, env = "FAKENODE_ANNOTATE_CERTIFICATE_EXPIRY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub annotate_certificate_expiry: bool,

    /// Split the clusters between this many replicas, each handling the clusters whose
    /// `namespace/name` hashes to its --shard-index (no coordination needed).
    #[arg(long, env = "FAKENODE_SHARD_COUNT", default_value_t = 1)]
    pub shard_count: u32,

    /// This replica's shard (0-based). Default: the ordinal ending POD_NAME (a
    /// StatefulSet Pod), else 0.
    #[arg(long, env = "FAKENODE_SHARD_INDEX")]
    pub shard_index: Option<u32>,

    /// Reconcile only while holding a Lease, so that replicas can stand by; a standby
    /// takes over within the lease duration.
    #[arg(long, env = "FAKENODE_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "metal3")]
    pub leader_elect_namespace: String,

    /// Name of the Lease. Default: metal3-fakenode, or metal3-fakenode-shard-I-of-N.
    #[arg(long, env = "FAKENODE_LEADER_ELECT_LEASE_NAME")]
    pub leader_elect_lease_name: Option<String>,

    /// This replica in the Lease. Default: POD_NAME, else host name and process id.
    #[arg(long, env = "FAKENODE_LEADER_ELECT_IDENTITY")]
    pub leader_elect_identity: Option<String>,

    /// How long a Lease lasts without renewal.
    #[arg(long, env = "FAKENODE_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,

    /// The leader renews this long before the Lease expires, and stops acting when half of
    /// it is left without a renewal seen.
    #[arg(long, env = "FAKENODE_LEADER_ELECT_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub leader_elect_grace: Duration,

    /// This replica's Pod (the Downward API sets it): names it on Events and in the
    /// Lease, and gives a StatefulSet's shard.
    #[arg(long, env = "POD_NAME", hide = true)]
    pub pod_name: Option<String>,

    /// The host's name, for a Lease identity outside a Pod.
    #[arg(long, env = "HOSTNAME", hide = true)]
    pub host_name: Option<String>,
}

impl RunArgs {
    /// The shard: --shard-index, else a StatefulSet ordinal at the end of POD_NAME.
    pub fn shard(&self) -> Result<crate::shard::Shard, String> {
        let ordinal = || {
            let pod = self.pod_name.as_deref()?;
            pod.rsplit('-').next()?.parse::<u32>().ok()
        };
        // Only when sharded: a Deployment's Pod name may end in digits too.
        let index = match self.shard_index {
            Some(i) => i,
            None if self.shard_count > 1 => ordinal().unwrap_or(0),
            None => 0,
        };
        crate::shard::Shard::new(index, self.shard_count)
    }

    pub fn leader_election(&self, shard: crate::shard::Shard) -> crate::leadership::Settings {
        let lease_name = self.leader_elect_lease_name.clone().unwrap_or_else(|| {
            if shard.is_sharded() {
                format!("metal3-fakenode-shard-{}-of-{}", shard.index, shard.count)
            } else {
                "metal3-fakenode".to_string()
            }
        });
        let identity = self
            .leader_elect_identity
            .clone()
            .or_else(|| self.pod_name.clone())
            .unwrap_or_else(|| {
                let host = self.host_name.as_deref().unwrap_or(crate::CONTROLLER_NAME);
                format!("{}-{}", host.trim(), std::process::id())
            });
        crate::leadership::Settings {
            namespace: self.leader_elect_namespace.clone(),
            lease_name,
            identity,
            lease_duration: self.leader_elect_lease_duration,
            grace: self.leader_elect_grace,
        }
    }

    pub fn fidelity(&self) -> crate::fidelity::Fidelity {
        crate::fidelity::Fidelity {
            static_pods: self.static_pods,
            stacked_etcd_pods: self.stacked_etcd_pods,
            heartbeat_interval: self.node_heartbeat_interval,
            status_report_interval: self.node_status_report_interval,
            delete_orphans: self.delete_orphaned_nodes,
            startup_delay: self.node_startup_delay,
            startup_jitter: self.node_startup_jitter,
            never_ready_fraction: self.never_ready_fraction,
            not_ready_fraction: self.not_ready_fraction,
            not_ready_after: self.not_ready_after,
            annotate_certificate_expiry: self.annotate_certificate_expiry,
            // Set from the kubelet API's endpoint when the controller starts it.
            kubelet_endpoint: None,
        }
    }

    /// The kubelet API's endpoint, if it is served.
    pub fn kubelet_endpoint(&self) -> Option<crate::kubelet_api::Endpoint> {
        self.kubelet_address
            .map(|advertise| crate::kubelet_api::Endpoint {
                bind: self.kubelet_bind_address,
                advertise,
            })
    }

    pub fn workload_settings(&self) -> Settings {
        Settings {
            connect_timeout: self.workload_connect_timeout,
            request_timeout: self.workload_request_timeout,
            qps: self.workload_qps,
            burst: self.workload_burst,
            kubelet_qps: self.kubelet_qps,
            kubelet_burst: self.kubelet_burst,
            max_retry_after: self.workload_max_retry_after,
            rewrites: self.workload_server_rewrites.clone(),
            idle_timeout: (!self.workload_idle_timeout.is_zero())
                .then_some(self.workload_idle_timeout),
        }
    }
}

/// `host:port`, or `:port` for every address (the Go controllers' convention).
pub fn parse_bind_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|e| format!("{s:?} is not host:port or :port: {e}"))
}

/// A friendly duration: `5s`, `500ms`, `2m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 5s, 500ms or 2m: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{s:?} is negative"))
}

/// Parses a duration as the command line does, where a bare `0` also means off.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// Longest idle timeout accepted: beyond it a connection is as good as kept (`0` says so),
/// and the pool adds the timeout to the clock, which a huge value would overflow.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses `--workload-idle-timeout`: a duration up to a day, or `0`.
pub fn parse_idle_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d > MAX_IDLE_TIMEOUT {
        return Err(format!(
            "{s:?} is longer than a day; `0` keeps every connection for as long as it lasts"
        ));
    }
    Ok(d)
}

/// Parses a share between 0 and 1 (a command-line value).
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number between 0 and 1: {e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{s:?} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `metal3-fakenode run` with these flags.
    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["metal3-fakenode", "run"];
        argv.extend_from_slice(extra);
        let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command;
        *args
    }

    #[test]
    fn bind_addresses_and_durations() {
        assert_eq!(
            parse_bind_address(":8080").unwrap().to_string(),
            "0.0.0.0:8080"
        );
        assert_eq!(parse_bind_address("127.0.0.1:9").unwrap().port(), 9);
        assert!(parse_bind_address("8080").is_err());
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "metal3-fakenode",
            "run",
            "--namespace",
            "a",
            "--namespace",
            "b",
            "--workload-server-rewrite",
            "https://10.0.0.1:6443=https://127.0.0.1:1",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Run(args) = cli.command;
        assert_eq!(args.namespaces, ["a", "b"]);
        assert_eq!(args.workload_server_rewrites.len(), 1);
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.metrics_bind_address.port(), 8080);
        assert_eq!(args.shutdown_grace, Duration::from_secs(20));
    }

    #[test]
    fn the_shutdown_grace_is_a_duration() {
        let grace = |flag: &str| {
            let cli = Cli::try_parse_from(["metal3-fakenode", "run", "--shutdown-grace", flag])?;
            let Command::Run(args) = cli.command;
            Ok::<_, clap::Error>(args.shutdown_grace)
        };
        assert_eq!(grace("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(grace("1m30s").unwrap(), Duration::from_secs(90));
        assert!(grace("-1s").is_err());
        assert!(grace("soon").is_err());
    }

    #[test]
    fn idle_connections_are_closed_by_default_and_kept_with_zero() {
        let idle = |extra: &[&str]| run_args(extra).workload_settings().idle_timeout;
        assert_eq!(idle(&[]), workload::Settings::default().idle_timeout);
        assert_eq!(idle(&[]), Some(workload::IDLE_TIMEOUT));
        assert_eq!(
            idle(&["--workload-idle-timeout", "3s"]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(idle(&["--workload-idle-timeout", "0"]), None);
        assert_eq!(parse_idle_timeout("24h"), Ok(MAX_IDLE_TIMEOUT));
        for bad in ["25h", "18446744073709551615s", "soon", "1"] {
            assert!(parse_idle_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bare_zero_is_a_duration() {
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("40s"), Ok(Duration::from_secs(40)));
        assert!(parse_duration_or_zero("1").is_err());
    }

    #[test]
    fn fractions_parse_between_zero_and_one() {
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
        assert!(parse_fraction("half").is_err());
    }

    #[test]
    fn the_pod_name_gives_a_statefulsets_shard_and_the_lease_identity() {
        let pod = run_args(&["--shard-count", "3", "--pod-name", "metal3-fakenode-2"]);
        assert_eq!(pod.shard().unwrap().index, 2);
        let identity = pod.leader_election(pod.shard().unwrap()).identity;
        assert_eq!(identity, "metal3-fakenode-2");
        // Unsharded, a Deployment's Pod name ending in digits means nothing.
        let one = run_args(&["--pod-name", "metal3-fakenode-7d9f-4"]);
        assert_eq!(one.shard().unwrap().index, 0);
        let host = run_args(&["--host-name", "node-a"]);
        let identity = host.leader_election(host.shard().unwrap()).identity;
        assert!(identity.starts_with("node-a-"), "{identity}");
    }
}
