//! `metal3-fakenode demo`: metal3-fakenode doing its job at scale on one machine, measured.
//!
//! Real control planes (etcd, a management and K workload kube-apiservers), N workload
//! clusters written as CAPI/CAPM3/BMO leave them (each with its own kubeconfig and client
//! certificate), the controller as its own process (so its CPU and memory are its own; with
//! `--shards S`, S processes, one per shard, as S replicas would run) and the CAPM3
//! stand-in closing the loop. Hosts are created `provisioning` and then turned
//! `provisioned` by the harness, all at once or at `--arrival-rate`, as the
//! baremetal-operator in test mode does: the controller and the harness then measure from
//! the same moment, and the controller sees the need arise (not a restart).

pub mod plot;
pub mod process_stats;
pub mod report;

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::cli::DemoArgs;
use metal3_fakenode::fake::node::{self, Hardware, NodeFacts, host_uid, is_ready};
use metal3_fakenode::metrics::Metrics;
use metal3_fakenode::plan::{ClusterKey, Desired, KubeconfigSource};
use metal3_fakenode::resources::Metal3Machine;
use metal3_fakenode::shard::Shard;
use metal3_fakenode::workload::{Settings, WorkloadClients};
use metal3_fakenode_testkit::envtest::process::Supervised;
use metal3_fakenode_testkit::envtest::{self, Assets, Environment};
use metal3_fakenode_testkit::probe;
use metal3_fakenode_testkit::simulate::{capm3, world};
use report::{Latency, Report, ShardReport};

/// Parallel requests of the harness while it writes the world.
const WRITERS: usize = 16;

/// Runs the demo; Ctrl-C stops it, and every process and directory goes with it.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let assets = Assets::from_env().context("the demo runs local control planes")?;
    tokio::select! {
        result = demo(args, assets) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted: every process and directory was removed"),
    }
}

fn say(message: impl AsRef<str>) {
    eprintln!("demo: {}", message.as_ref());
}

/// One simulated machine and where it lives.
struct Planned {
    namespace: String,
    spec: world::MachineSpec,
}

/// Nodes seen Ready by the harness's own watches.
#[derive(Default)]
struct Seen {
    ready: HashMap<String, Instant>,
    names_by_host: HashMap<String, HashSet<String>>,
}

async fn demo(args: DemoArgs, assets: Assets) -> anyhow::Result<()> {
    if args.clusters == 0 {
        bail!("--clusters must be at least 1");
    }
    let shard_count = args.shards;
    // Each process of a sharded run is `run --shard-count N --shard-index I`; one process
    // (the default) runs unsharded, exactly as before sharding existed.
    let shards: Vec<Option<Shard>> = if shard_count > 1 {
        (0..shard_count)
            .map(|i| Shard::new(i, shard_count).map(Some))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?
    } else {
        vec![None]
    };
    let servers = args.workload_apiservers.max(1);
    let begun = Instant::now();
    say(format!(
        "starting etcd, the management API server and {servers} workload API server(s)"
    ));
    let env = Environment::start(assets, servers).await?;
    let dir = tempfile::Builder::new()
        .prefix("metal3-fakenode-demo-")
        .tempdir()?;
    let mgmt_kubeconfig = dir.path().join("management.kubeconfig");
    std::fs::write(
        &mgmt_kubeconfig,
        envtest::kubeconfig_yaml(&env.management.admin_kubeconfig())?,
    )?;
    let mgmt = env.management.client().await?;
    say(format!(
        "control planes up in {:.1}s",
        begun.elapsed().as_secs_f64()
    ));

    // The world, hosts still provisioning.
    let clusters: Vec<String> = (0..args.clusters)
        .map(|i| format!("cluster-{i:04}"))
        .collect();
    let mut kubeconfigs = HashMap::new();
    for (i, cluster) in clusters.iter().enumerate() {
        // Its own user and client certificate: each cluster really is a separate client.
        // Generated here, inline credentials only; read back from their Secrets, they go
        // through `workload::parse_kubeconfig` (the controller, the ceiling, the stand-in).
        let server = &env.workloads[i % servers];
        let kubeconfig =
            server.kubeconfig_for_user(&format!("{cluster}-admin"), Some("system:masters"))?;
        kubeconfigs.insert(cluster.clone(), envtest::kubeconfig_yaml(&kubeconfig)?);
    }
    let machines: Vec<Planned> = clusters
        .iter()
        .flat_map(|c| {
            let cp = (format!("{c}-cp-0"), true);
            let workers = (0..args.workers).map(move |j| (format!("{c}-md-{j}"), false));
            std::iter::once(cp)
                .chain(workers)
                .map(|(name, control_plane)| {
                    let mut spec = world::MachineSpec::new(c, &name, control_plane);
                    spec.host_state = "provisioning".into();
                    Planned {
                        namespace: c.clone(),
                        spec,
                    }
                })
        })
        .collect();
    say(format!(
        "writing {} clusters and {} machines as CAPI, CAPM3 and BMO would",
        clusters.len(),
        machines.len()
    ));
    stream::iter(&clusters)
        .map(|c| {
            let (mgmt, yaml) = (&mgmt, &kubeconfigs[c]);
            async move {
                world::namespace(mgmt, c).await?;
                world::cluster(mgmt, c, c).await?;
                world::kubeconfig_secret(mgmt, c, c, world::kubeconfig_data(yaml)).await
            }
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await?;
    let created: Vec<world::CreatedMachine> = stream::iter(&machines)
        .map(|m| world::machine(&mgmt, &m.namespace, &m.spec))
        .buffer_unordered(WRITERS)
        .try_collect()
        .await?;
    let host_uids: HashMap<String, String> = created
        .into_iter()
        .map(|c| (c.spec.name, c.host_uid))
        .collect();

    // The harness's own eyes on every workload API server.
    let seen = Arc::new(Mutex::new(Seen::default()));
    for server in &env.workloads {
        let nodes: Api<Node> = Api::all(server.client().await?);
        let seen = seen.clone();
        tokio::spawn(
            watcher(nodes, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .for_each(move |node| {
                    if let Ok(node) = node
                        && is_ready(&node)
                        && let (Some(name), Some(uid)) =
                            (node.metadata.name.clone(), host_uid(&node))
                    {
                        let mut seen = lock(&seen);
                        seen.ready.entry(name.clone()).or_insert_with(Instant::now);
                        seen.names_by_host
                            .entry(uid.to_string())
                            .or_default()
                            .insert(name);
                    }
                    futures::future::ready(())
                }),
        );
    }

    // Side by side, as replicas would start; every one is ready before the clock starts.
    let mut controllers: Vec<Controller> = futures::future::try_join_all(shards.iter().map(|s| {
        start_controller(
            &mgmt_kubeconfig,
            dir.path(),
            args.concurrency,
            args.full_fidelity,
            *s,
        )
    }))
    .await?;

    // Provision the hosts: the clock starts.
    let provisioned = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let t0 = Instant::now();
    let flip = |m: &Planned| {
        let (mgmt, provisioned) = (mgmt.clone(), provisioned.clone());
        let (ns, host, name) = (m.namespace.clone(), m.spec.host(), m.spec.name.clone());
        async move {
            world::set_host_state(&mgmt, &ns, &host, "provisioned").await?;
            lock(&provisioned).insert(name, Instant::now());
            Ok::<(), kube::Error>(())
        }
    };
    let flipping = match args.arrival_rate {
        None => {
            say(format!("provisioning all {} hosts at once", machines.len()));
            let all: Vec<_> = machines.iter().map(flip).collect();
            tokio::spawn(async move {
                stream::iter(all)
                    .buffer_unordered(WRITERS)
                    .try_collect::<Vec<()>>()
                    .await
                    .map(|_| ())
            })
        }
        Some(rate) if rate > 0.0 => {
            say(format!("provisioning {rate} hosts per second"));
            let all: Vec<_> = machines.iter().map(flip).collect();
            let period = Duration::from_secs_f64(1.0 / rate);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(period);
                let mut tasks = tokio::task::JoinSet::new();
                for one in all {
                    ticker.tick().await;
                    tasks.spawn(one);
                }
                while let Some(done) = tasks.join_next().await {
                    done.map_err(|e| kube::Error::Service(Box::new(e)))??;
                }
                Ok(())
            })
        }
        Some(rate) => bail!("--arrival-rate must be positive, not {rate}"),
    };

    let expected: Vec<&str> = machines.iter().map(|m| m.spec.name.as_str()).collect();
    let ready_count = || {
        let seen = lock(&seen);
        expected
            .iter()
            .filter(|n| seen.ready.contains_key(**n))
            .count()
    };
    let bar = progress_bar(expected.len());
    let mut last_line = Instant::now();
    loop {
        let count = ready_count();
        bar.set_position(count as u64);
        if count == expected.len() {
            break;
        }
        for c in &mut controllers {
            if let Some(exit) = c.process.exited() {
                bar.abandon();
                bail!("the controller stopped: {exit}\n{}", c.process.log_tail(20));
            }
        }
        if t0.elapsed() > args.timeout {
            bar.abandon();
            say(format!(
                "timed out after {:?}: {count} of {} Nodes",
                args.timeout,
                expected.len()
            ));
            break;
        }
        if bar.is_hidden() && last_line.elapsed() > Duration::from_secs(5) {
            say(format!("{count}/{} Nodes Ready", expected.len()));
            last_line = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    flipping.await??;

    // What the harness saw.
    let (ready, duplicates) = {
        let seen = lock(&seen);
        let ready: HashMap<String, Instant> = expected
            .iter()
            .filter_map(|n| seen.ready.get(*n).map(|t| (n.to_string(), *t)))
            .collect();
        let duplicates = host_uids
            .values()
            .filter_map(|uid| seen.names_by_host.get(uid))
            .map(|names| names.len().saturating_sub(1))
            .sum::<usize>();
        (ready, duplicates)
    };
    let provisioned = lock(&provisioned).clone();
    let last = ready.values().max().copied().unwrap_or(t0);
    let last_provisioned = provisioned.values().max().copied().unwrap_or(t0);
    let elapsed = last.duration_since(t0).as_secs_f64();
    let latencies: Vec<f64> = ready
        .iter()
        .filter_map(|(n, at)| {
            Some(
                at.saturating_duration_since(*provisioned.get(n)?)
                    .as_secs_f64(),
            )
        })
        .collect();
    let ready_at: Vec<f64> = ready
        .values()
        .map(|at| at.duration_since(t0).as_secs_f64())
        .collect();
    say(format!(
        "{} of {} Nodes Ready in {elapsed:.2}s",
        ready.len(),
        expected.len()
    ));

    // CAPM3's half of the loop. Not during the measurement: polling every pending machine,
    // the stand-in would load the same two cores the ceiling has to itself.
    let (stop_capm3, capm3_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(capm3::run_every(
        mgmt.clone(),
        None,
        Duration::from_secs(1),
        async move {
            let _ = capm3_stopped.await;
        },
    ));
    let loop_closed = wait_for_provider_ids(&mgmt, expected.len()).await;
    // Idle cost: CPU over a few quiet seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = |c: &Controller| process_stats::cpu_seconds(c.process.pid()).unwrap_or(0.0);
    let cpu_before: f64 = controllers.iter().map(cpu).sum();
    let idle_window = Duration::from_secs(5);
    tokio::time::sleep(idle_window).await;
    let mut shard_reports = Vec::new();
    let mut metrics_texts = Vec::new();
    let mut buckets = Vec::new();
    for c in &controllers {
        let (_, text) = probe::get(&c.metrics_address, "/metrics").await?;
        // A sharded process labels every sample with its shard: reading exactly that label
        // also checks the process is the shard it was started as.
        let index = c.shard.map(|s| s.index.to_string());
        let labels: Vec<(&str, &str)> = index.iter().map(|i| ("shard", i.as_str())).collect();
        let metric = |name| report::metric_value_with(&text, name, &labels).unwrap_or(0.0);
        // What it should have done, by the same hash the controller uses.
        let shard = c.shard.unwrap_or_default();
        let mine: Vec<&Planned> = machines
            .iter()
            .filter(|m| shard.owns(&m.namespace, Some(&m.spec.cluster)))
            .collect();
        let nodes_created = metric("fakenode_nodes_created_total");
        shard_reports.push(ShardReport {
            index: shard.index,
            clusters: mine
                .iter()
                .map(|m| (&m.namespace, &m.spec.cluster))
                .collect::<HashSet<_>>()
                .len(),
            nodes_expected: mine.len(),
            nodes_created,
            nodes_per_second: if elapsed > 0.0 {
                nodes_created / elapsed
            } else {
                0.0
            },
            peak_rss_bytes: process_stats::peak_rss_bytes(c.process.pid()).unwrap_or(0),
            cpu_seconds: cpu(c),
            workload_clients: metric("fakenode_workload_clients"),
        });
        buckets.push(report::histogram_buckets_with(
            &text,
            "fakenode_node_creation_latency_seconds",
            &labels,
        ));
        metrics_texts.push(text);
    }
    let cpu_after: f64 = shard_reports.iter().map(|s| s.cpu_seconds).sum();

    let mut report = Report {
        clusters: args.clusters,
        workers_per_cluster: args.workers,
        workload_apiservers: servers,
        arrival_rate: args.arrival_rate,
        concurrency: args.concurrency,
        nodes_expected: expected.len(),
        nodes_created: ready.len(),
        duplicates,
        missing: expected.len() - ready.len(),
        elapsed_seconds: elapsed,
        provisioning_seconds: last_provisioned.duration_since(t0).as_secs_f64(),
        nodes_per_second: if elapsed > 0.0 {
            ready.len() as f64 / elapsed
        } else {
            0.0
        },
        latency_seconds: Latency::from_samples(&latencies),
        controller_histogram: report::summarize_buckets(&report::merge_buckets(&buckets)),
        controller_nodes_created_total: shard_reports.iter().map(|s| s.nodes_created).sum(),
        controller_peak_rss_bytes: shard_reports.iter().map(|s| s.peak_rss_bytes).sum(),
        controller_cpu_seconds: cpu_after,
        controller_idle_cpu_percent: (cpu_after - cpu_before) / idle_window.as_secs_f64() * 100.0,
        workload_clients: shard_reports.iter().map(|s| s.workload_clients).sum(),
        loop_closed,
        shard_count: shard_reports.len() as u32,
        shards: shard_reports,
        ..Report::default()
    };

    if args.ceiling {
        say("measuring the ceiling: the same Nodes, created directly");
        let ceiling = ceiling(&machines, &host_uids, &kubeconfigs, args.concurrency).await?;
        report.ceiling_nodes_per_second = Some(ceiling);
        report.ratio_to_ceiling = Some(report.nodes_per_second / ceiling);
    }

    println!("\nmetal3-fakenode demo report\n{}", report::render(&report));
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        // The controller's own view, for digging into a figure: one file per shard.
        let mut raws = Vec::new();
        for (c, text) in controllers.iter().zip(&metrics_texts) {
            let raw = match c.shard {
                Some(s) => path.with_extension(format!("shard-{}.metrics.txt", s.index)),
                None => path.with_extension("metrics.txt"),
            };
            std::fs::write(&raw, text).with_context(|| format!("writing {}", raw.display()))?;
            raws.push(raw.display().to_string());
        }
        say(format!(
            "report written to {} (the controller's final /metrics to {})",
            path.display(),
            raws.join(", ")
        ));
    }
    if let Some(path) = &args.plot {
        plot::write_svg(path, &ready_at, &latencies).map_err(anyhow::Error::msg)?;
        say(format!("plot written to {}", path.display()));
    }

    if args.keep {
        let kept = dir.keep();
        for (i, server) in env.workloads.iter().enumerate() {
            std::fs::write(
                kept.join(format!("workload-{i}.kubeconfig")),
                envtest::kubeconfig_yaml(&server.admin_kubeconfig())?,
            )?;
        }
        say(format!(
            "kept running; kubeconfigs in {} (e.g. KUBECONFIG={}/management.kubeconfig \
             kubectl get metal3machines -A). Ctrl-C stops everything.",
            kept.display(),
            kept.display()
        ));
        std::future::pending::<()>().await;
    }
    let _ = stop_capm3.send(());
    futures::future::join_all(
        controllers
            .iter_mut()
            .map(|c| stop_gracefully(&mut c.process)),
    )
    .await;
    if report.duplicates > 0 || report.missing > 0 {
        bail!(
            "{} duplicate(s), {} missing Node(s)",
            report.duplicates,
            report.missing
        );
    }
    // Each Node by the shard its cluster hashes to, and by no other: a shard that took
    // another's cluster, or created a Node twice, shows here even when the harness saw
    // every Node once.
    for s in &report.shards {
        if s.nodes_created != s.nodes_expected as f64 {
            bail!(
                "shard {} created {} Node(s), its {} cluster(s) have {} machine(s)",
                s.index,
                s.nodes_created,
                s.clusters,
                s.nodes_expected
            );
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn progress_bar(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "demo: {bar:40} {pos}/{len} Nodes Ready ({per_sec}, {elapsed})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// One controller process and where it serves `/metrics`.
struct Controller {
    process: Supervised,
    metrics_address: String,
    /// `None`: the only controller, unsharded.
    shard: Option<Shard>,
}

/// The controller as its own process (with `shard`, that shard only), JSON logs in `dir`;
/// returns it once `/readyz` answers.
async fn start_controller(
    kubeconfig: &Path,
    dir: &Path,
    concurrency: u16,
    full_fidelity: bool,
    shard: Option<Shard>,
) -> anyhow::Result<Controller> {
    let address = format!("127.0.0.1:{}", envtest::free_port()?);
    let mut args: Vec<String> = [
        "run",
        "--metrics-bind-address",
        &address,
        "--concurrency",
        &concurrency.to_string(),
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !full_fidelity {
        // Like for like with the ceiling: Node (create, status, taints) and kubeadm-config.
        for flag in [
            "--static-pods=false",
            "--node-heartbeat-interval=0",
            "--delete-orphaned-nodes=false",
        ] {
            args.push(flag.to_string());
        }
    }
    // Which process a message or a log file is about, once there are several.
    let (suffix, log) = match shard {
        Some(s) => {
            args.extend([
                "--shard-count".to_string(),
                s.count.to_string(),
                "--shard-index".to_string(),
                s.index.to_string(),
            ]);
            (
                format!(" (shard {} of {})", s.index, s.count),
                format!("controller-shard-{}.log", s.index),
            )
        }
        None => (String::new(), "controller.log".to_string()),
    };
    let kubeconfig = kubeconfig.display().to_string();
    let mut process = Supervised::spawn_with_env(
        &format!("metal3-fakenode run{suffix}"),
        &crate::controller_binary()?,
        &args,
        &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info")],
        dir.join(log),
    )?;
    let started = Instant::now();
    let name = format!("the controller{suffix}");
    probe::wait_ready(
        &mut process,
        &name,
        &address,
        "/readyz",
        Duration::from_secs(60),
    )
    .await?;
    say(format!(
        "controller{suffix} ready in {:.1}s (pid {}, log {})",
        started.elapsed().as_secs_f64(),
        process.pid(),
        process.log_path().display()
    ));
    Ok(Controller {
        process,
        metrics_address: address,
        shard,
    })
}

/// Waits (a little) for the CAPM3 stand-in to set every providerID; returns how many.
async fn wait_for_provider_ids(mgmt: &kube::Client, expected: usize) -> usize {
    let api: Api<Metal3Machine> = Api::all(mgmt.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let closed = api
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|m| m.spec.provider_id.as_deref().is_some_and(|p| !p.is_empty()))
                    .count()
            })
            .unwrap_or(0);
        if closed >= expected || Instant::now() > deadline {
            return closed;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The physical limit: the same Nodes (same requests: create, status, taints) in the same
/// workload API servers, through the same kind of per-cluster clients and the same
/// concurrency, driven directly with no watch, queue or store in between. Nodes/s.
async fn ceiling(
    machines: &[Planned],
    host_uids: &HashMap<String, String>,
    kubeconfigs: &HashMap<String, String>,
    concurrency: u16,
) -> anyhow::Result<f64> {
    let clients = WorkloadClients::new(Settings::default());
    let metrics = Metrics::new()?;
    let now = Time(jiff::Timestamp::now());
    let started = Instant::now();
    stream::iter(machines)
        .map(|m| {
            let (clients, metrics, now) = (&clients, &metrics, &now);
            let name = format!("ceiling-{}", m.spec.name);
            let uid = format!(
                "ceiling-{}",
                host_uids.get(&m.spec.name).cloned().unwrap_or_default()
            );
            let facts = NodeFacts::new(
                &name,
                &uid,
                m.spec.control_plane,
                &m.spec.version,
                None,
                &Hardware::default(),
            );
            let desired = Desired {
                cluster: ClusterKey {
                    namespace: m.namespace.clone(),
                    name: m.spec.cluster.clone(),
                },
                kubeconfig: KubeconfigSource {
                    secret: format!("{}/{}-kubeconfig", m.namespace, m.spec.cluster),
                    value: ByteString(kubeconfigs[&m.spec.cluster].as_bytes().to_vec()),
                },
                node: node::node(&facts, now),
                kubeadm_config: None,
                stacked_etcd: None,
                host: m.spec.host(),
                provisioned_at: None,
                ignored: Vec::new(),
            };
            async move {
                let client = clients
                    .client(&desired.cluster, &desired.kubeconfig)
                    .await?;
                metal3_fakenode::apply::ensure(&client, &desired, metrics).await
            }
        })
        .buffer_unordered(usize::from(concurrency.max(1)))
        .try_collect::<Vec<_>>()
        .await?;
    Ok(machines.len() as f64 / started.elapsed().as_secs_f64())
}

/// SIGTERM, then SIGKILL if it has not stopped within 30 s.
async fn stop_gracefully(process: &mut Supervised) {
    let Ok(pid) = i32::try_from(process.pid()) else {
        process.kill();
        return;
    };
    // SAFETY: kill only sends a signal to our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while process.exited().is_none() {
        if Instant::now() > deadline {
            say("the controller ignored SIGTERM for 30s: killing it");
            process.kill();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
