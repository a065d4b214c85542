//! The binary's arguments, read once, and its run: the served clusters from the
//! management cluster's Clusters (or, for a bench without one, from a file), the front
//! until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use kube::config::Kubeconfig;
use tracing_subscriber::EnvFilter;

use crate::cluster_watch::{self, WatchConfig};
use crate::clusters::parse_cluster_list;
use crate::error::{Error, Result};
use crate::front::{Front, backing_client};
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::observe::FrontAddress;

/// Serves many workload clusters from one kube-apiserver, each isolated.
#[derive(Debug, Parser)]
#[command(name = "metal3-fakenode-front", version)]
pub struct Args {
    /// Kubeconfig of the backing API server, with the front's own credentials.
    #[arg(long, env = "FRONT_BACKING_KUBECONFIG")]
    pub backing_kubeconfig: PathBuf,
    /// Kubeconfig of the management cluster; the in-cluster ServiceAccount when absent.
    #[arg(long, env = "FRONT_MANAGEMENT_KUBECONFIG")]
    pub management_kubeconfig: Option<PathBuf>,
    /// The host Clusters name in `spec.controlPlaneEndpoint` to be served by this front
    /// (a DNS name or an IP address; the serving certificates are made for it).
    #[arg(long, env = "FRONT_HOST", required_unless_present = "clusters")]
    pub host: Option<String>,
    /// The ports the front may listen on, as `first-last`.
    #[arg(long, env = "FRONT_PORTS", default_value = "7000-7999", value_parser = parse_ports)]
    pub ports: RangeInclusive<u16>,
    /// The local address the clusters' listeners bind.
    #[arg(long, env = "FRONT_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "FRONT_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,
    /// Changes within this many milliseconds of the first are handled in one pass.
    #[arg(long, env = "FRONT_DEBOUNCE_MS", default_value_t = 500)]
    pub debounce_ms: u64,
    /// The reporting instance on Events (the Pod's name).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// Instead of watching Clusters: a YAML list of the served clusters (`clusters:` of
    /// cluster, listen, hosts, caCert, caKey), for a bench without a management cluster.
    #[arg(long, env = "FRONT_CLUSTERS", conflicts_with = "host")]
    pub clusters: Option<PathBuf>,
    /// Log filter, as `RUST_LOG` takes it.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

fn parse_ports(value: &str) -> std::result::Result<RangeInclusive<u16>, String> {
    let (first, last) = value
        .split_once('-')
        .ok_or_else(|| format!("{value:?} is not `first-last`"))?;
    let number = |s: &str| s.trim().parse::<u16>().map_err(|e| format!("{s:?}: {e}"));
    let (first, last) = (number(first)?, number(last)?);
    if first > last {
        return Err(format!("{first} is after {last}"));
    }
    Ok(first..=last)
}

impl Args {
    /// Runs the front; the exit code says whether it started.
    pub async fn run(self) -> ExitCode {
        // Colours only for a person at a terminal, never into a Pod's or a bench's log file.
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(&self.log))
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
        match self.serve().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(reason = e.reason(), error = %e, "the front stopped");
                ExitCode::FAILURE
            }
        }
    }

    async fn serve(&self) -> Result<()> {
        let metrics = Arc::new(Metrics::new()?);
        let backing = backing_client(Kubeconfig::read_from(&self.backing_kubeconfig)?).await?;
        let front = Arc::new(Front::with_metrics(backing, metrics.clone()));
        let ready = Arc::new(AtomicBool::new(false));
        let health = Arc::new(Health {
            metrics,
            ready: ready.clone(),
        });
        let addr = http::serve(self.metrics_address, health).await?;
        tracing::info!(%addr, "serving metrics and health");
        match (&self.clusters, &self.host) {
            (Some(path), _) => {
                self.serve_file(&front, path).await?;
                ready.store(true, std::sync::atomic::Ordering::Relaxed);
                shutdown_signal().await;
            }
            (None, Some(host)) => {
                let management = match &self.management_kubeconfig {
                    Some(path) => backing_client(Kubeconfig::read_from(path)?).await?,
                    None => kube::Client::try_default().await?,
                };
                let config = WatchConfig {
                    address: FrontAddress {
                        host: host.clone(),
                        ports: self.ports.clone(),
                        bind: self.bind,
                    },
                    debounce: Duration::from_millis(self.debounce_ms),
                    instance: self.instance.clone(),
                };
                cluster_watch::run(management, front, config, ready, shutdown_signal()).await?;
            }
            // clap requires one of the two.
            (None, None) => {}
        }
        tracing::info!("stopping");
        Ok(())
    }

    async fn serve_file(&self, front: &Front, path: &std::path::Path) -> Result<()> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: shown.clone(),
            source,
        })?;
        let wanted = parse_cluster_list(&shown, &text)?;
        let outcome = front.reconcile(&wanted).await;
        match outcome.failed.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_range_is_first_dash_last() {
        assert_eq!(parse_ports("7000-7999"), Ok(7000..=7999));
        assert!(parse_ports("7999-7000").is_err());
        assert!(parse_ports("7000").is_err());
    }

    #[test]
    fn the_watcher_needs_a_host_and_a_file_needs_none() {
        let watch = Args::try_parse_from(["f", "--backing-kubeconfig", "k", "--host", "h"]);
        assert!(watch.is_ok());
        let file = Args::try_parse_from(["f", "--backing-kubeconfig", "k", "--clusters", "c"]);
        assert!(file.is_ok());
        let neither = Args::try_parse_from(["f", "--backing-kubeconfig", "k"]);
        assert!(neither.is_err());
    }
}
