//! The binary's arguments, read once, and its run: the served clusters from a file, the
//! front until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kube::config::Kubeconfig;
use tracing_subscriber::EnvFilter;

use crate::clusters::parse_cluster_list;
use crate::error::{Error, Result};
use crate::front::Front;

/// Serves many workload clusters from one kube-apiserver, each isolated.
#[derive(Debug, Parser)]
#[command(name = "metal3-fakenode-front", version)]
pub struct Args {
    /// Kubeconfig of the backing API server, with the front's own credentials.
    #[arg(long, env = "FRONT_BACKING_KUBECONFIG")]
    pub backing_kubeconfig: PathBuf,
    /// YAML list of the served clusters (`clusters:` of cluster, listen, hosts, caCert,
    /// caKey).
    #[arg(long, env = "FRONT_CLUSTERS")]
    pub clusters: PathBuf,
    /// Log filter, as `RUST_LOG` takes it.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

impl Args {
    /// Runs the front; the exit code says whether it started.
    pub async fn run(self) -> ExitCode {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(&self.log))
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
        let kubeconfig = Kubeconfig::read_from(&self.backing_kubeconfig)?;
        let path = self.clusters.display().to_string();
        let text = std::fs::read_to_string(&self.clusters).map_err(|source| Error::ReadFile {
            path: path.clone(),
            source,
        })?;
        let wanted = parse_cluster_list(&path, &text)?;
        let front = Front::from_kubeconfig(kubeconfig).await?;
        let outcome = front.reconcile(&wanted).await;
        if let Some((_, e)) = outcome.failed.into_iter().next() {
            return Err(e);
        }
        shutdown_signal().await;
        tracing::info!("stopping");
        Ok(())
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
