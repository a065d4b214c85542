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
    /// Write the report as JSON here.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
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

    /// Machines per second (default: all at once, a burst).
    #[arg(long)]
    pub arrival_rate: Option<f64>,

    /// Also measure the fastest a plain client creates the same Nodes (the ceiling).
    #[arg(long)]
    pub ceiling: bool,

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
    #[arg(long)]
    pub keep: bool,

    /// Give up after this long.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Run the controller with its fidelity defaults (static pods, heartbeats, clean
    /// deletes). Off by default: the benchmark then measures the Node and kubeadm-config
    /// work, the same requests the ceiling sends.
    #[arg(long)]
    pub full_fidelity: bool,

    /// Controller processes, each `run --shard-count N --shard-index I` with a metrics
    /// port of its own, as N sharded replicas would run; the report then gives each
    /// shard's throughput. 1: one unsharded controller.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,
}
