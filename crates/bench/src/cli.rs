//! The bench's command line: the demo and the end-to-end run, each a subcommand.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use metal3_fakenode::cli::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "metal3-fakenode-bench",
    version,
    about = "metal3-fakenode's test bench: a local scale run and an end-to-end run"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// A local scale run: real control planes, N simulated workload clusters, the
    /// controller as its own process, and a report.
    Demo(DemoArgs),
    /// End to end with the real CAPI, KCP, CABPK, CAPM3 and baremetal-operator as local
    /// processes: N workload clusters created, scaled, upgraded and deleted, and a report.
    E2e(E2eArgs),
    /// How long kube-runtime's scheduler holds a reconcile request that is due now,
    /// against a plain channel: the floor of the controller's queue wait.
    QueueDelay(QueueDelayArgs),
}

#[derive(Clone, Debug, Args)]
pub struct QueueDelayArgs {
    /// Requests sent through each queue.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub requests: u32,
    /// Between two requests (20ms: the demo's 50 hosts/s).
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub interval: Duration,
}

/// Where a workload cluster's etcd runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EtcdMode {
    /// A member per control-plane Machine, as kubeadm does by default: KCP reaches the
    /// fake members through the fake kubelets' port-forward.
    Stacked,
    /// Outside the cluster and never dialled, as the original Metal3 scale experiments.
    External,
}

impl EtcdMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stacked => "stacked",
            Self::External => "external",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct E2eArgs {
    /// Workload clusters, each with its own API server, a KubeadmControlPlane and a
    /// MachineDeployment.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub clusters: u32,
    /// Where each cluster's etcd runs.
    #[arg(long, value_enum, default_value_t = EtcdMode::Stacked)]
    pub etcd: EtcdMode,
    /// Control-plane Machines of each cluster (odd with stacked etcd); from 3 up, the
    /// KubeadmControlPlane is also scaled down to 1 and back.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub control_plane_replicas: u32,
    /// At the end, upgrade every cluster (KubeadmControlPlane and MachineDeployment) to
    /// this Kubernetes version, e.g. v1.36.0, one minor above the Machines' own.
    #[arg(long)]
    pub upgrade_to: Option<String>,
    /// Workers each MachineDeployment scales up to (from 0) before scaling down to 1.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub scale_up_to: u32,
    /// Longest wait for one step (clusters up, a scale, the upgrade, the deletion), all
    /// clusters at once.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub step_timeout: std::time::Duration,
    /// Spread the clusters over this many shared kube-apiservers, each behind a tenancy
    /// front (`metal3-fakenode-front`) that gives every cluster its own endpoint and view;
    /// without it every cluster has a kube-apiserver of its own.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub workload_apiservers: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

/// `--arrival`: how the machines come to need their Nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Arrival {
    /// Every host provisioned at once, the controller running.
    Burst,
    /// Hosts provisioned at `--arrival-rate` per second, the controller running.
    Rate,
    /// Every host provisioned before the controller starts: a drain of pending machines.
    Provisioned,
}

/// How the machines arrive, checked: what a run does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArrivalMode {
    Burst,
    /// Hosts per second, positive.
    Rate(f64),
    Provisioned,
}

impl ArrivalMode {
    /// From `--arrival` and `--arrival-rate`: a rate alone still means `rate`, as it did
    /// before `--arrival` existed.
    pub fn from_flags(arrival: Option<Arrival>, rate: Option<f64>) -> Result<Self, String> {
        match (arrival, rate) {
            (None | Some(Arrival::Burst), None) => Ok(Self::Burst),
            (Some(Arrival::Provisioned), None) => Ok(Self::Provisioned),
            (None | Some(Arrival::Rate), Some(r)) if r.is_finite() && r > 0.0 => Ok(Self::Rate(r)),
            (None | Some(Arrival::Rate), Some(r)) => {
                Err(format!("--arrival-rate must be a positive number, not {r}"))
            }
            (Some(Arrival::Rate), None) => Err("--arrival rate needs --arrival-rate R".into()),
            (Some(a @ (Arrival::Burst | Arrival::Provisioned)), Some(_)) => Err(format!(
                "--arrival-rate goes with --arrival rate, not --arrival {}",
                a.name()
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Burst => Arrival::Burst.name(),
            Self::Rate(_) => Arrival::Rate.name(),
            Self::Provisioned => Arrival::Provisioned.name(),
        }
    }

    /// Hosts per second, in `rate` mode.
    pub fn rate(self) -> Option<f64> {
        match self {
            Self::Rate(r) => Some(r),
            _ => None,
        }
    }
}

impl Arrival {
    pub fn name(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::Rate => "rate",
            Self::Provisioned => "provisioned",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Workload clusters (one namespace and one control-plane machine each).
    #[arg(long, default_value_t = 100)]
    pub clusters: usize,

    /// Worker machines per cluster.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,

    /// Workload API servers the clusters are spread over.
    #[arg(long, default_value_t = 1)]
    pub workload_apiservers: usize,

    /// Serve each cluster through its own endpoint on a tenancy front over the shared
    /// workload API servers (one front per server), each cluster seeing only its own
    /// objects. Each measurement is then made twice in one invocation, first without the
    /// front (every cluster straight on the shared servers), and the report gives the
    /// front's cost as ratios.
    #[arg(long, conflicts_with = "keep")]
    pub front: bool,

    /// How the machines come to need their Nodes: `burst` (every host provisioned at
    /// once while the controller runs), `rate` (at --arrival-rate hosts per second) or
    /// `provisioned` (every host provisioned before the controller starts: a drain,
    /// timed from the controller's start). Default: `rate` with --arrival-rate, else
    /// `burst`.
    #[arg(long, value_enum)]
    pub arrival: Option<Arrival>,

    /// Hosts provisioned per second (`--arrival rate`, which it implies).
    #[arg(long)]
    pub arrival_rate: Option<f64>,

    /// Also measure the fastest a plain client sends the same requests for the same
    /// Nodes, with the same trigger and no rate limit (the ceiling).
    #[arg(long, conflicts_with = "keep")]
    pub ceiling: bool,

    /// Measure this many times, each in fresh control planes; the report gives every run
    /// and the median of each figure.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// The controller's --concurrency (and the ceiling's).
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,

    /// Write the report as JSON.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,

    /// Write an SVG chart: Nodes created over time and the latency distribution.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,

    /// Leave the control planes running and print their kubeconfigs (until Ctrl-C).
    #[arg(long, conflicts_with = "repeat")]
    pub keep: bool,

    /// Give up after this long.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Run the controller with its fidelity defaults (static pods, heartbeats, clean
    /// deletes). Off by default: the benchmark then measures the Node and kubeadm-config
    /// work, the same requests the ceiling sends.
    #[arg(long)]
    pub full_fidelity: bool,

    /// After the run, leave the controller alone with its Nodes' heartbeats this long
    /// (after a warm-up of 60 s) and report their requests, the CPU they cost and how
    /// flat resident memory stays, e.g. `--soak 10m`. Needs --full-fidelity.
    #[arg(long, value_parser = parse_duration, requires = "full_fidelity")]
    pub soak: Option<Duration>,

    /// Controller processes, each `run --shard-count N --shard-index I` with a metrics
    /// port of its own, as N sharded replicas would run; the report then gives each
    /// shard's throughput. 1: one unsharded controller.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,
}

impl DemoArgs {
    pub fn arrival_mode(&self) -> Result<ArrivalMode, String> {
        ArrivalMode::from_flags(self.arrival, self.arrival_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(args: &[&str]) -> Result<DemoArgs, clap::Error> {
        let argv = ["metal3-fakenode-bench", "demo"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Demo(d) => d,
            Command::E2e(_) | Command::QueueDelay(_) => unreachable!("parsed demo"),
        })
    }

    fn mode(args: &[&str]) -> Result<ArrivalMode, String> {
        demo(args).map_err(|e| e.to_string())?.arrival_mode()
    }

    #[test]
    fn the_arrival_is_one_choice_and_a_rate_alone_still_means_rate() {
        assert_eq!(mode(&[]), Ok(ArrivalMode::Burst));
        assert_eq!(mode(&["--arrival", "burst"]), Ok(ArrivalMode::Burst));
        assert_eq!(
            mode(&["--arrival", "provisioned"]),
            Ok(ArrivalMode::Provisioned)
        );
        assert_eq!(mode(&["--arrival-rate", "50"]), Ok(ArrivalMode::Rate(50.0)));
        assert_eq!(
            mode(&["--arrival", "rate", "--arrival-rate", "2.5"]),
            Ok(ArrivalMode::Rate(2.5))
        );
        assert!(mode(&["--arrival", "rate"]).is_err());
        assert!(mode(&["--arrival-rate", "0"]).is_err());
        assert!(mode(&["--arrival-rate", "-3"]).is_err());
        assert!(mode(&["--arrival", "provisioned", "--arrival-rate", "5"]).is_err());
        assert!(mode(&["--arrival", "sometimes"]).is_err());
        assert_eq!(ArrivalMode::Rate(3.0).rate(), Some(3.0));
        assert_eq!(ArrivalMode::Provisioned.name(), "provisioned");
    }

    #[test]
    fn repeat_is_at_least_one_and_keep_is_for_a_single_run_without_the_ceiling() {
        assert_eq!(demo(&[]).map(|d| d.repeat).ok(), Some(1));
        assert_eq!(demo(&["--repeat", "3"]).map(|d| d.repeat).ok(), Some(3));
        assert!(demo(&["--repeat", "0"]).is_err());
        assert!(demo(&["--keep", "--ceiling"]).is_err());
        assert!(demo(&["--keep", "--repeat", "3"]).is_err());
        assert!(demo(&["--keep"]).is_ok());
    }

    #[test]
    fn a_soak_needs_the_heartbeats_of_full_fidelity() {
        assert!(demo(&["--soak", "10m"]).is_err());
        let soak = demo(&["--soak", "10m", "--full-fidelity"]).map(|d| d.soak);
        assert_eq!(soak.ok().flatten(), Some(Duration::from_secs(600)));
    }
}
