//! Wiring only: parse the command line, start logging, serve HTTP, run the controller.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use metal3_fakenode::cli::{Cli, Command, RunArgs};
use metal3_fakenode::controller::{self, Config};
use metal3_fakenode::http::{self, Health};
use metal3_fakenode::metrics::Metrics;
use metal3_fakenode::telemetry;
use tracing::{error, info};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Demo(args) => metal3_fakenode::demo::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("metal3-fakenode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new()?);
    let health = Arc::new(Health::new(metrics.clone()));
    let listener = http::bind(args.metrics_bind_address)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.metrics_bind_address))?;
    info!(address = %args.metrics_bind_address, "serving /metrics, /healthz, /readyz");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(http::serve(listener, health.clone(), stopped()));
    let config = Config {
        namespaces: args.namespaces.clone(),
        selector: args.selector.clone(),
        concurrency: args.concurrency,
        kube_qps: args.kube_qps,
        kube_burst: args.kube_burst,
        workload: args.workload_settings(),
        max_retry_delay: args.max_retry_delay,
        instance: std::env::var("POD_NAME").ok(),
        fidelity: args.fidelity(),
    };
    controller::run(client, config, metrics, health, stopped()).await;
    server.await??;
    info!("stopped");
    Ok(())
}

/// SIGTERM (kubelet, the demo) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
