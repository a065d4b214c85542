//! Wiring only: parse the command line, start logging, serve HTTP, run the controller.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use metal3_fakenode::cli::{Cli, Command, RunArgs};
use metal3_fakenode::controller::{self, Config};
use metal3_fakenode::http::{self, Health};
use metal3_fakenode::metrics::Metrics;
use metal3_fakenode::shutdown::{self, Ending, Stop};
use metal3_fakenode::{leadership, telemetry};
use tracing::{error, info, warn};

/// jemalloc rather than glibc's malloc: thousands of connections' buffers come and go
/// on two threads, and glibc's arenas grew with them (17 MiB over a 10-minute heartbeat
/// soak of 1000 clusters) and spent a fifth of the heartbeats' CPU. mimalloc, used before,
/// kept about 8 MiB more resident than jemalloc in the same 1000-cluster run, for the
/// same CPU.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: no transparent huge pages, even where the
/// kernel backs every anonymous mapping with them (mimalloc with huge pages held 30 %
/// more resident memory in the same run); freed pages returned within about a second
/// rather than ten (the 5-minute condition reports of 1000 Nodes raised the resident
/// memory of a heartbeat soak by 2.2 MiB over its mean with the default, by 1.5 with
/// this, for the same CPU). The symbol is jemalloc's `malloc_conf` under the prefix the
/// crate builds it with; a C string, hence the array's address. `_RJEM_MALLOC_CONF` in
/// the environment overrides it.
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 30] = b"thp:never,dirty_decay_ms:1000\0";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            telemetry::init(args.log_format);
            raise_open_files_limit();
            let grace = args.shutdown_grace;
            let work = |stop| run(*args, stop);
            match shutdown::run_until_deadline(work, shutdown::signals(), grace).await {
                Ending::Finished(result) => result,
                // Not a return: dropping the runtime would wait for its blocking tasks
                // (a DNS lookup, say) without bound.
                Ending::GraceRanOut | Ending::SecondSignal => {
                    std::process::exit(i32::from(shutdown::UNFINISHED_EXIT_CODE))
                }
            }
        }
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

/// Each workload cluster holds at least one connection: thousands of them exhaust a soft
/// limit of 1024 open files (a common default outside containers), so the soft limit is
/// raised to the hard one, the most this process is allowed anyway.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open files limit"),
        Err(e) => warn!(
            error = %e,
            "cannot raise the open files limit: thousands of workload clusters may exhaust it"
        ),
    }
}

/// The controller process until `stop` and the end of its running work.
async fn run(args: RunArgs, stop: Stop) -> anyhow::Result<()> {
    // Reaching the API server may hang; a stop before it answers has nothing to finish.
    let Some(config) = stop.unless_requested(kube::Config::infer()).await else {
        return Ok(());
    };
    let client = controller::management_client(config?)?;
    let shard = args.shard().map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::for_shard(
        shard.is_sharded().then_some(shard.index),
    )?);
    let health = Arc::new(Health::new(metrics.clone()));
    let listener = http::bind(args.metrics_bind_address)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.metrics_bind_address))?;
    info!(address = %args.metrics_bind_address, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(http::serve(listener, health.clone(), stop.requested()));
    let config = Config {
        namespaces: args.namespaces.clone(),
        selector: args.selector.clone(),
        concurrency: args.concurrency,
        kube_qps: args.kube_qps,
        kube_burst: args.kube_burst,
        workload: args.workload_settings(),
        max_retry_delay: args.max_retry_delay,
        watch_down_grace: args.watch_down_grace,
        instance: args.pod_name.clone(),
        fidelity: args.fidelity(),
        kubelet: args.kubelet_endpoint(),
        shard,
    };
    if args.leader_elect {
        let settings = args.leader_election(shard);
        settings.check().map_err(anyhow::Error::msg)?;
        leadership::lead(client, config, metrics, health, settings, stop).await?;
    } else {
        metrics.leader.set(1);
        controller::run(client, config, metrics, health, stop.requested()).await;
    }
    server.await??;
    info!("stopped");
    Ok(())
}
