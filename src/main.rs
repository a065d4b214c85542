//! Wiring only: parse the command line, start logging, serve HTTP, run the controller.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use metal3_fakenode::cli::{Cli, Command, RunArgs};
use metal3_fakenode::controller::{self, Config};
use metal3_fakenode::http::{self, Health};
use metal3_fakenode::metrics::Metrics;
use metal3_fakenode::{leadership, telemetry};
use tracing::{error, info};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Demo(args) => metal3_fakenode::demo::run(args).await,
        Command::E2e(args) => metal3_fakenode::e2e::main(args).await,
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
    let shard = args.shard().map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::for_shard(
        shard.is_sharded().then_some(shard.index),
    )?);
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
        watch_down_grace: args.watch_down_grace,
        instance: std::env::var("POD_NAME").ok(),
        fidelity: args.fidelity(),
        shard,
    };
    if args.leader_elect {
        let settings = args.leader_election(shard);
        settings.check().map_err(anyhow::Error::msg)?;
        lead(client, config, metrics, health, settings, stopped()).await?;
    } else {
        metrics.leader.set(1);
        controller::run(client, config, metrics, health, stopped()).await;
    }
    server.await??;
    info!("stopped");
    Ok(())
}

/// Runs the controller while this replica leads, standing by otherwise, until `shutdown`.
/// On a lost leadership the controller is told to stop and given half the grace period to
/// drain; whatever is left is dropped, so nothing is written once the Lease can expire.
async fn lead(
    client: kube::Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    settings: leadership::Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    info!(lease = %settings.lease_name, namespace = %settings.namespace, identity = %settings.identity, "standing for election");
    let drain = settings.grace / 2;
    let mut leading = leadership::elect(client.clone(), settings).await?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A standby is healthy and ready: a rollout must not wait for a leader change.
        metrics.leader.set(0);
        health.set_ready(true);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            won = leading.wait_for(|l| *l) => {
                won.map_err(|_| anyhow::anyhow!("leader election stopped"))?;
            }
        }
        metrics.leader.set(1);
        health.set_ready(false);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop = async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut run = std::pin::pin!(controller::run(
            client.clone(),
            config.clone(),
            metrics.clone(),
            health.clone(),
            stop,
        ));
        tokio::select! {
            _ = &mut run => {}
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                run.await;
                return Ok(());
            }
            _ = leading.wait_for(|l| !*l) => {
                let _ = stop_tx.send(true);
                metrics.leader.set(0);
                let _ = tokio::time::timeout(drain, &mut run).await;
            }
        }
    }
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
