//! `metal3-fakenode demo`: metal3-fakenode doing its job at scale on one machine, measured.
//!
//! Real control planes (etcd, a management and K workload kube-apiservers), N workload
//! clusters written as CAPI/CAPM3/BMO leave them (each with its own kubeconfig and client
//! certificate), the controller as its own process (so its CPU and memory are its own; with
//! `--shards S`, S processes, one per shard, as S replicas would run) and the CAPM3
//! stand-in closing the loop. With `--arrival burst` or `rate`, hosts are created
//! `provisioning` and then turned `provisioned` by the harness, all at once or at
//! `--arrival-rate`, as the baremetal-operator in test mode does: the controller and the
//! harness then measure from the same moment, and the controller sees the need arise (not
//! a restart). With `--arrival provisioned`, every host is provisioned before the
//! controller starts, and the clock starts with it: a drain of pending machines.
//!
//! With `--ceiling`, the controller is stopped, its objects removed from the workload API
//! servers, and a plain client sends the same requests for the same Nodes after the same
//! trigger (the hosts provisioned again on the same schedule, or nothing in a drain), seen
//! Ready by the same watch. `--repeat N` measures N times, each in fresh control planes.

pub mod ceiling;
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
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::cli::{ArrivalMode, DemoArgs};
use crate::fronts;
use metal3_fakenode::fake::node::{host_uid, is_ready};
use metal3_fakenode::resources::Metal3Machine;
use metal3_fakenode::shard::Shard;
use metal3_fakenode_testkit::envtest::certs::ClusterCa;
use metal3_fakenode_testkit::envtest::process::Supervised;
use metal3_fakenode_testkit::envtest::{self, Assets, Environment};
use metal3_fakenode_testkit::probe;
use metal3_fakenode_testkit::simulate::{capm3, world};
use report::{CeilingRun, CpuBeside, Latency, Report, Run, ShardReport};

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

/// What one measurement leaves for the report.
struct Measured {
    run: Run,
    /// Seconds from the clock's start, one per Node, and latencies: for the plot.
    ready_at: Vec<f64>,
    latencies: Vec<f64>,
    /// The controller's final `/metrics`, per process: (file suffix, text).
    metrics: Vec<(String, String)>,
    /// With `--keep`: everything still running.
    kept: Option<Kept>,
}

/// The control planes and controllers of a run left running (`--keep`).
struct Kept {
    env: Environment,
    dir: tempfile::TempDir,
    controllers: Vec<Controller>,
}

async fn demo(args: DemoArgs, assets: Assets) -> anyhow::Result<()> {
    if args.clusters == 0 {
        bail!("--clusters must be at least 1");
    }
    let mode = args.arrival_mode().map_err(anyhow::Error::msg)?;
    let mut runs = Vec::new();
    let mut plain_runs = Vec::new();
    let mut last = None;
    for i in 1..=args.repeat {
        if args.repeat > 1 {
            say(format!("run {i} of {}", args.repeat));
        }
        if args.front {
            // The front's cost, like for like: the same run without it first.
            say("measuring without the front, for comparison");
            plain_runs.push(measure(&args, mode, assets.clone(), false).await?.run);
            say("measuring through the front");
        }
        let measured = measure(&args, mode, assets.clone(), args.front).await?;
        runs.push(measured.run.clone());
        last = Some(measured);
    }
    let without_front = args.front.then(|| {
        report::WithoutFront::of_pairs(plain_runs, &runs, mode == ArrivalMode::Provisioned)
    });
    let Some(last) = last else {
        bail!("--repeat must be at least 1");
    };
    let report = Report::of_runs(
        Report {
            clusters: args.clusters,
            workers_per_cluster: args.workers,
            workload_apiservers: args.workload_apiservers.max(1),
            arrival: mode.name().to_string(),
            arrival_rate: mode.rate(),
            concurrency: args.concurrency,
            full_fidelity: args.full_fidelity,
            nodes_expected: args.clusters * (1 + args.workers),
            serving: if args.front {
                "tenancy-front".into()
            } else {
                "shared".into()
            },
            without_front,
            ..Report::default()
        },
        runs,
    );

    println!("\nmetal3-fakenode demo report\n{}", report::render(&report));
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        // The controller's own view, for digging into a figure: one file per shard, of
        // the last run.
        let mut raws = Vec::new();
        for (suffix, text) in &last.metrics {
            let raw = path.with_extension(suffix);
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
        plot::write_svg(path, &last.ready_at, &last.latencies).map_err(anyhow::Error::msg)?;
        say(format!("plot written to {}", path.display()));
    }

    if let Some(kept) = last.kept {
        keep(kept).await?;
    }
    for (i, run) in report.runs.iter().enumerate() {
        check(run).with_context(|| format!("run {} of {}", i + 1, report.runs.len()))?;
    }
    Ok(())
}

/// Every Node once, by the shard its cluster hashes to; the ceiling's too.
fn check(run: &Run) -> anyhow::Result<()> {
    if run.duplicates > 0 || run.missing > 0 {
        bail!(
            "{} duplicate(s), {} missing Node(s)",
            run.duplicates,
            run.missing
        );
    }
    // Each Node by the shard its cluster hashes to, and by no other: a shard that took
    // another's cluster, or created a Node twice, shows here even when the harness saw
    // every Node once.
    for s in &run.shards {
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
    if let Some(c) = &run.ceiling
        && c.missing > 0
    {
        bail!("the ceiling left {} Node(s) missing", c.missing);
    }
    Ok(())
}

/// Prints the kubeconfigs and waits for Ctrl-C.
async fn keep(kept: Kept) -> anyhow::Result<()> {
    let Kept {
        env,
        dir,
        controllers: _controllers,
    } = kept;
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
    Ok(())
}

/// Watches every workload API server's Nodes: when each is first seen Ready, and which
/// Nodes each host got. A deleted Node is forgotten, so that the ceiling's Nodes of the
/// same names are timed afresh.
async fn watch_nodes(env: &Environment, seen: &Arc<Mutex<Seen>>) -> anyhow::Result<()> {
    for server in &env.workloads {
        let nodes: Api<Node> = Api::all(server.client().await?);
        let seen = seen.clone();
        tokio::spawn(
            watcher(nodes, watcher::Config::default())
                .default_backoff()
                .for_each(move |event| {
                    match event {
                        Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                            if is_ready(&node)
                                && let (Some(name), Some(uid)) =
                                    (cluster_name(&node), host_uid(&node))
                            {
                                let mut seen = lock(&seen);
                                seen.ready.entry(name.clone()).or_insert_with(Instant::now);
                                seen.names_by_host
                                    .entry(uid.to_string())
                                    .or_default()
                                    .insert(name);
                            }
                        }
                        Ok(watcher::Event::Delete(node)) => {
                            if let Some(name) = cluster_name(&node) {
                                lock(&seen).ready.remove(&name);
                            }
                        }
                        _ => {}
                    }
                    futures::future::ready(())
                }),
        );
    }
    Ok(())
}

/// A Node's name as its cluster knows it: behind the tenancy front the backing server
/// holds it as `<prefix>-<name>`, labelled with the prefix.
fn cluster_name(node: &Node) -> Option<String> {
    let name = node.metadata.name.as_deref()?;
    let prefix = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(tenancy::CLUSTER_LABEL));
    Some(match prefix {
        Some(prefix) => name
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .unwrap_or(name)
            .to_string(),
        None => name.to_string(),
    })
}

/// Turns the hosts `provisioned` (all at once, or at a rate), recording when each
/// update returned.
fn provision(
    mgmt: &kube::Client,
    machines: &[Planned],
    mode: ArrivalMode,
    provisioned: &Arc<Mutex<HashMap<String, Instant>>>,
) -> tokio::task::JoinHandle<Result<(), kube::Error>> {
    let flip = |m: &Planned| {
        let (mgmt, provisioned) = (mgmt.clone(), provisioned.clone());
        let (ns, host, name) = (m.namespace.clone(), m.spec.host(), m.spec.name.clone());
        async move {
            world::set_host_state(&mgmt, &ns, &host, "provisioned").await?;
            lock(&provisioned).insert(name, Instant::now());
            Ok::<(), kube::Error>(())
        }
    };
    let all: Vec<_> = machines.iter().map(flip).collect();
    match mode {
        ArrivalMode::Rate(rate) => {
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
        // A drain provisions nothing while it is measured.
        ArrivalMode::Burst | ArrivalMode::Provisioned => tokio::spawn(async move {
            stream::iter(all)
                .buffer_unordered(WRITERS)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ())
        }),
    }
}

/// Waits until the harness has seen every expected Node Ready, a controller stopped, or
/// the timeout; returns whether every Node is there.
async fn wait_ready(
    seen: &Arc<Mutex<Seen>>,
    expected: &[&str],
    t0: Instant,
    timeout: Duration,
    controllers: &mut [Controller],
) -> anyhow::Result<bool> {
    let ready_count = || {
        let seen = lock(seen);
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
            bar.finish_and_clear();
            return Ok(true);
        }
        for c in controllers.iter_mut() {
            if let Some(exit) = c.process.exited() {
                bar.abandon();
                bail!("the controller stopped: {exit}\n{}", c.process.log_tail(20));
            }
        }
        if t0.elapsed() > timeout {
            bar.abandon();
            say(format!(
                "timed out after {timeout:?}: {count} of {} Nodes",
                expected.len()
            ));
            return Ok(false);
        }
        if bar.is_hidden() && last_line.elapsed() > Duration::from_secs(5) {
            say(format!("{count}/{} Nodes Ready", expected.len()));
            last_line = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the harness saw, from `t0`: each expected Node's Ready time, and the latencies
/// from its host's provisioning (or `t0`, for a machine not provisioned by the harness).
struct Observed {
    ready: HashMap<String, Instant>,
    elapsed: f64,
    latencies: Vec<f64>,
    ready_at: Vec<f64>,
}

fn observe(
    seen: &Seen,
    expected: &[&str],
    provisioned: &HashMap<String, Instant>,
    t0: Instant,
) -> Observed {
    let ready: HashMap<String, Instant> = expected
        .iter()
        .filter_map(|n| seen.ready.get(*n).map(|t| (n.to_string(), *t)))
        .collect();
    let last = ready.values().max().copied().unwrap_or(t0);
    let latencies = ready
        .iter()
        .map(|(n, at)| {
            let from = provisioned.get(n).copied().unwrap_or(t0);
            at.saturating_duration_since(from).as_secs_f64()
        })
        .collect();
    let ready_at = ready
        .values()
        .map(|at| at.saturating_duration_since(t0).as_secs_f64())
        .collect();
    Observed {
        elapsed: last.saturating_duration_since(t0).as_secs_f64(),
        ready,
        latencies,
        ready_at,
    }
}

/// The controllers' requests to workload API servers, once they have settled: read until
/// two readings half a second apart agree (at most five seconds), so that a registration
/// still finishing (e.g. its Lease) is counted.
async fn settled_requests(controllers: &[Controller]) -> anyhow::Result<f64> {
    let read = || async {
        let mut sum = 0.0;
        for c in controllers {
            let (_, text) = probe::get(&c.metrics_address, "/metrics").await?;
            sum += report::total(&text, report::WORKLOAD_REQUESTS);
        }
        Ok::<f64, anyhow::Error>(sum)
    };
    let mut before = read().await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = read().await?;
        if now == before {
            break;
        }
        before = now;
    }
    Ok(before)
}

/// One measurement in fresh control planes: the controller's run, then (with
/// `--ceiling`) the ceiling's.
/// With `front`, every cluster is served through its own endpoint on a tenancy front
/// (one per server) instead of straight by the shared server.
async fn measure(
    args: &DemoArgs,
    mode: ArrivalMode,
    assets: Assets,
    front: bool,
) -> anyhow::Result<Measured> {
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
    let drain = mode == ArrivalMode::Provisioned;
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

    // The world: hosts still provisioning, or (a drain) provisioned already.
    let clusters: Vec<String> = (0..args.clusters)
        .map(|i| format!("cluster-{i:04}"))
        .collect();
    let mut kubeconfigs = HashMap::new();
    // Through the front: each cluster's CA (whose key the front signs its endpoint's
    // serving certificate with) and its endpoint, by cluster.
    let mut fronted = HashMap::new();
    for (i, cluster) in clusters.iter().enumerate() {
        // Its own user and client certificate: each cluster really is a separate client.
        // Generated here, inline credentials only; read back from their Secrets, they go
        // through `workload::parse_kubeconfig` (the controller, the ceiling, the stand-in).
        let server = &env.workloads[i % servers];
        let user = format!("{cluster}-admin");
        let kubeconfig = if front {
            let ca = ClusterCa::new(&format!("{cluster}-ca"))?;
            let host = fronts::host(i % servers);
            let port = fronts::FIRST_PORT + u16::try_from(i)?;
            let cert = ca.client_cert(&user, Some("system:masters"))?;
            let url = format!("https://{host}:{port}");
            let kubeconfig = envtest::kubeconfig(cluster, &url, &ca.cert_pem(), &user, &cert);
            fronted.insert(cluster.clone(), (ca, host, port));
            kubeconfig
        } else {
            server.kubeconfig_for_user(&user, Some("system:masters"))?
        };
        kubeconfigs.insert(cluster.clone(), envtest::kubeconfig_yaml(&kubeconfig)?);
    }
    let host_state = if drain { "provisioned" } else { "provisioning" };
    let machines: Vec<Planned> = clusters
        .iter()
        .flat_map(|c| {
            let cp = (format!("{c}-cp-0"), true);
            let workers = (0..args.workers).map(move |j| (format!("{c}-md-{j}"), false));
            std::iter::once(cp)
                .chain(workers)
                .map(|(name, control_plane)| {
                    let mut spec = world::MachineSpec::new(c, &name, control_plane);
                    spec.host_state = host_state.into();
                    Planned {
                        namespace: c.clone(),
                        spec,
                    }
                })
        })
        .collect();
    say(format!(
        "writing {} clusters and {} machines as CAPI, CAPM3 and BMO would (hosts {host_state})",
        clusters.len(),
        machines.len()
    ));
    stream::iter(&clusters)
        .map(|c| {
            let (mgmt, yaml, fronted) = (&mgmt, &kubeconfigs[c], fronted.get(c));
            async move {
                world::namespace(mgmt, c).await?;
                world::cluster(mgmt, c, c).await?;
                if let Some((ca, host, port)) = fronted {
                    // What makes the front serve it: its endpoint and its CA.
                    world::ca_secret(mgmt, c, c, "ca", &ca.cert_pem(), ca.key_pem()).await?;
                    let endpoint = serde_json::json!({"spec": {"controlPlaneEndpoint": {
                        "host": host, "port": port,
                    }}});
                    world::dynamic(mgmt, c, "cluster.x-k8s.io", "v1beta2", "Cluster")
                        .patch(c, &Default::default(), &kube::api::Patch::Merge(&endpoint))
                        .await?;
                }
                world::kubeconfig_secret(mgmt, c, c, world::kubeconfig_data(yaml)).await
            }
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await?;
    let mut running_fronts = Vec::new();
    if front {
        let ports = fronts::ports(clusters.len())?;
        for (j, server) in env.workloads.iter().enumerate() {
            let started = fronts::start(
                j,
                &server.admin_kubeconfig(),
                &mgmt_kubeconfig,
                ports.clone(),
                dir.path(),
            )
            .await?;
            let served = (0..clusters.len()).filter(|i| i % servers == j).count();
            started
                .wait_serving(served, Duration::from_secs(300))
                .await?;
            running_fronts.push(started);
        }
        say(format!(
            "{} tenancy front(s) serve the {} clusters",
            running_fronts.len(),
            clusters.len()
        ));
    }
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
    watch_nodes(&env, &seen).await?;

    let flags = controller_flags(args.concurrency, args.full_fidelity);
    let start_all = || {
        futures::future::try_join_all(
            shards
                .iter()
                .map(|s| start_controller(&mgmt_kubeconfig, dir.path(), &flags, *s)),
        )
    };
    let provisioned = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let cpu = |c: &Controller| process_stats::cpu_seconds(c.process.pid()).unwrap_or(0.0);
    // What the other processes spent is counted from the clock's start, as the rest.
    let (
        t0,
        beside_at_start,
        mut controllers,
        cpu_at_start,
        controller_ready_seconds,
        provisioning,
    ) = if drain {
        // The clock starts with the controller: everything it needs is there already.
        say(format!(
            "starting the controller: {} machines wait for their Nodes",
            machines.len()
        ));
        let beside_at_start = cpu_beside(&env);
        let t0 = Instant::now();
        let controllers: Vec<Controller> = start_all().await?;
        let ready = t0.elapsed().as_secs_f64();
        (t0, beside_at_start, controllers, 0.0, Some(ready), None)
    } else {
        // Side by side, as replicas would start; every one is ready before the clock
        // starts.
        let controllers: Vec<Controller> = start_all().await?;
        let cpu_at_start: f64 = controllers.iter().map(cpu).sum();
        match mode {
            ArrivalMode::Rate(rate) => say(format!("provisioning {rate} hosts per second")),
            _ => say(format!("provisioning all {} hosts at once", machines.len())),
        }
        let beside_at_start = cpu_beside(&env);
        let t0 = Instant::now();
        let flipping = provision(&mgmt, &machines, mode, &provisioned);
        (
            t0,
            beside_at_start,
            controllers,
            cpu_at_start,
            None,
            Some(flipping),
        )
    };

    let expected: Vec<&str> = machines.iter().map(|m| m.spec.name.as_str()).collect();
    wait_ready(&seen, &expected, t0, args.timeout, &mut controllers).await?;
    let cpu_measured = controllers.iter().map(cpu).sum::<f64>() - cpu_at_start;
    let beside = cpu_beside(&env).since(beside_at_start);
    // Every cluster's connection is open now: close to the most it holds.
    let open_files: u64 = controllers
        .iter()
        .filter_map(|c| process_stats::open_files(c.process.pid()))
        .sum();
    if let Some(flipping) = provisioning {
        flipping.await??;
    }
    let workload_requests = settled_requests(&controllers).await?;

    // What the harness saw.
    let (observed, duplicates) = {
        let seen = lock(&seen);
        let duplicates = host_uids
            .values()
            .filter_map(|uid| seen.names_by_host.get(uid))
            .map(|names| names.len().saturating_sub(1))
            .sum::<usize>();
        let provisioned = lock(&provisioned);
        (observe(&seen, &expected, &provisioned, t0), duplicates)
    };
    let last_provisioned = lock(&provisioned).values().max().copied().unwrap_or(t0);
    let elapsed = observed.elapsed;
    say(format!(
        "{} of {} Nodes Ready in {elapsed:.2}s",
        observed.ready.len(),
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
    let _ = stop_capm3.send(());
    // Idle cost: CPU over a few quiet seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before: f64 = controllers.iter().map(cpu).sum();
    let idle_window = Duration::from_secs(5);
    tokio::time::sleep(idle_window).await;
    let mut shard_reports = Vec::new();
    let mut metrics = Vec::new();
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
            nodes_per_second: report::per_second(nodes_created, elapsed),
            peak_rss_bytes: process_stats::peak_rss_bytes(c.process.pid()).unwrap_or(0),
            cpu_seconds: cpu(c),
            workload_clients: metric("fakenode_workload_clients"),
        });
        buckets.push(report::histogram_buckets_with(
            &text,
            "fakenode_node_creation_latency_seconds",
            &labels,
        ));
        let suffix = match c.shard {
            Some(s) => format!("shard-{}.metrics.txt", s.index),
            None => "metrics.txt".to_string(),
        };
        metrics.push((suffix, text));
    }
    let cpu_after: f64 = shard_reports.iter().map(|s| s.cpu_seconds).sum();
    let soak = match args.soak {
        Some(window) => Some(soak(&controllers, SOAK_WARM_UP, window).await?),
        None => None,
    };
    let requests_by_purpose = report::sum_by_label(
        metrics.iter().map(|(_, text)| text.as_str()),
        report::WORKLOAD_REQUESTS,
        "purpose",
    );
    let nodes_created = observed.ready.len();
    let mut run = Run {
        nodes_created,
        duplicates,
        missing: expected.len() - nodes_created,
        elapsed_seconds: elapsed,
        provisioning_seconds: last_provisioned.saturating_duration_since(t0).as_secs_f64(),
        controller_ready_seconds,
        nodes_per_second: report::per_second(nodes_created as f64, elapsed),
        latency_seconds: Latency::from_samples(&observed.latencies),
        controller_histogram: report::summarize_buckets(&report::merge_buckets(&buckets)),
        controller_queue_wait_seconds: report::histogram_mean(
            metrics.iter().map(|(_, text)| text.as_str()),
            "fakenode_reconcile_queue_wait_seconds",
        ),
        controller_nodes_created_total: shard_reports.iter().map(|s| s.nodes_created).sum(),
        workload_requests,
        requests_per_node: report::per_node(workload_requests, nodes_created),
        requests_by_purpose,
        cpu_beside: beside,
        controller_peak_rss_bytes: shard_reports.iter().map(|s| s.peak_rss_bytes).sum(),
        controller_cpu_seconds: cpu_after,
        controller_cpu_seconds_per_1000_nodes: report::per_node(cpu_measured, nodes_created)
            * 1000.0,
        controller_idle_cpu_percent: (cpu_after - cpu_before) / idle_window.as_secs_f64() * 100.0,
        workload_clients: shard_reports.iter().map(|s| s.workload_clients).sum(),
        controller_open_files: open_files,
        controller_open_files_limit: controllers
            .iter()
            .filter_map(|c| process_stats::open_files_limit(c.process.pid()))
            .min(),
        loop_closed,
        shard_count: shard_reports.len() as u32,
        shards: shard_reports,
        front_peak_rss_bytes: front.then(|| {
            running_fronts
                .iter()
                .filter_map(|f| process_stats::peak_rss_bytes(f.process.pid()))
                .sum()
        }),
        front_cpu_seconds: front.then(|| {
            running_fronts
                .iter()
                .filter_map(|f| process_stats::cpu_seconds(f.process.pid()))
                .sum()
        }),
        soak,
        ..Run::default()
    };

    if args.keep {
        return Ok(Measured {
            run,
            ready_at: observed.ready_at,
            latencies: observed.latencies,
            metrics,
            kept: Some(Kept {
                env,
                dir,
                controllers,
            }),
        });
    }
    futures::future::join_all(
        controllers
            .iter_mut()
            .map(|c| stop_gracefully(&mut c.process)),
    )
    .await;

    if args.ceiling {
        // Through the front, each cluster is cleared through its own endpoint: the
        // backing server holds its objects under the cluster's prefix.
        let clear: Vec<kube::config::Kubeconfig> = if front {
            kubeconfigs
                .values()
                .map(|yaml| kube::config::Kubeconfig::from_yaml(yaml))
                .collect::<Result<_, _>>()?
        } else {
            env.workloads.iter().map(|w| w.admin_kubeconfig()).collect()
        };
        let ceiling = measure_ceiling(
            args, mode, &env, &clear, &mgmt, &machines, &expected, &seen, &flags,
        )
        .await?;
        run.compare_with(ceiling, drain);
    }
    Ok(Measured {
        run,
        ready_at: observed.ready_at,
        latencies: observed.latencies,
        metrics,
        kept: None,
    })
}

/// Longer than the default heartbeat interval (40 s): every Node has beaten once, and its
/// cluster's connection is open, before the soak's window starts.
const SOAK_WARM_UP: Duration = Duration::from_secs(60);
/// How often the soak samples resident memory.
const SOAK_SAMPLE: Duration = Duration::from_secs(10);

/// `--soak`: the controllers alone with their Nodes' heartbeats; their requests and CPU
/// over the window, their resident memory every few seconds.
async fn soak(
    controllers: &[Controller],
    warm_up: Duration,
    window: Duration,
) -> anyhow::Result<report::Soak> {
    say(format!(
        "soaking: {}s of heartbeats after {}s of warm-up",
        window.as_secs(),
        warm_up.as_secs()
    ));
    tokio::time::sleep(warm_up).await;
    let counters = || async {
        let mut texts = Vec::new();
        for c in controllers {
            texts.push(probe::get(&c.metrics_address, "/metrics").await?.1);
        }
        let heartbeats = report::sum_by_label(
            texts.iter().map(String::as_str),
            report::WORKLOAD_REQUESTS,
            "purpose",
        )
        .get("heartbeat")
        .copied()
        .unwrap_or(0.0);
        let all: f64 = texts
            .iter()
            .map(|t| report::total(t, report::WORKLOAD_REQUESTS))
            .sum();
        let cpu: f64 = controllers
            .iter()
            .filter_map(|c| process_stats::cpu_seconds(c.process.pid()))
            .sum();
        anyhow::Ok((heartbeats, all, cpu))
    };
    let rss = || -> u64 {
        controllers
            .iter()
            .filter_map(|c| process_stats::rss_bytes(c.process.pid()))
            .sum()
    };
    let started = Instant::now();
    let (heartbeats_before, all_before, cpu_before) = counters().await?;
    let mut samples = vec![rss()];
    while started.elapsed() < window {
        tokio::time::sleep(SOAK_SAMPLE.min(window.saturating_sub(started.elapsed()))).await;
        samples.push(rss());
    }
    let (heartbeats_after, all_after, cpu_after) = counters().await?;
    // The high-water mark since each process started: the run and the heartbeats since.
    let peak: u64 = controllers
        .iter()
        .filter_map(|c| process_stats::peak_rss_bytes(c.process.pid()))
        .sum();
    Ok(report::Soak::of_window(
        started.elapsed().as_secs_f64(),
        warm_up.as_secs_f64(),
        heartbeats_after - heartbeats_before,
        all_after - all_before,
        cpu_after - cpu_before,
        samples,
        peak,
    ))
}

/// The ceiling, once the controller has stopped: its objects removed, the same requests
/// sent by a plain client after the same trigger, seen Ready by the same watch.
#[allow(clippy::too_many_arguments)]
async fn measure_ceiling(
    args: &DemoArgs,
    mode: ArrivalMode,
    env: &Environment,
    clear: &[kube::config::Kubeconfig],
    mgmt: &kube::Client,
    machines: &[Planned],
    expected: &[&str],
    seen: &Arc<Mutex<Seen>>,
    flags: &[String],
) -> anyhow::Result<CeilingRun> {
    say("measuring the ceiling: the same requests for the same Nodes, sent directly");
    let run_args = ceiling::controller_run_args(flags)?;
    let fidelity = run_args.fidelity();
    let settings = ceiling::unthrottled(run_args.workload_settings());
    // What the ceiling needs of the management cluster, as the controller reads it: in a
    // drain within the clock (the controller's clock starts before it lists anything),
    // otherwise before the trigger (the controller was started and synced before it).
    let read_and_plan = || async {
        let snapshot = ceiling::Snapshot::read(mgmt).await?;
        ceiling::plan_all(&snapshot, &fidelity)
    };
    // A cold start: the workload API servers as the controller found them.
    stream::iter(clear)
        .map(|kubeconfig| async move {
            ceiling::clear(&envtest::client_for(kubeconfig).await?).await
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await?;
    let forgotten = Instant::now();
    while expected.iter().any(|n| lock(seen).ready.contains_key(*n)) {
        if forgotten.elapsed() > Duration::from_secs(60) {
            bail!(
                "the harness's watch still saw the controller's Nodes a minute after they were deleted"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock(seen).names_by_host.clear();

    let provisioned = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    // When the ceiling took each machine from its watch of the hosts.
    let triggered = Mutex::new(HashMap::<String, Instant>::new());
    let (t0, beside_at_start, sent) = if mode == ArrivalMode::Provisioned {
        let beside_at_start = cpu_beside(env);
        let t0 = Instant::now();
        let planned = read_and_plan().await?;
        let sent = ceiling::send(
            mgmt,
            &planned,
            stream::iter(0..planned.len()),
            settings,
            fidelity.clone(),
            args.concurrency,
        )
        .await?;
        (t0, beside_at_start, sent)
    } else {
        let planned = read_and_plan().await?;
        let index: HashMap<String, usize> = planned
            .iter()
            .enumerate()
            .map(|(i, p)| (p.machine.clone(), i))
            .collect();
        // The same trigger as the controller's: the hosts provisioned again, on the same
        // schedule; each machine's requests start when its host's update returns.
        stream::iter(machines)
            .map(|m| async move {
                world::set_host_state(mgmt, &m.namespace, &m.spec.host(), "provisioning").await
            })
            .buffer_unordered(WRITERS)
            .try_collect::<Vec<()>>()
            .await?;
        let machine_of_host = machines
            .iter()
            .map(|m| ((m.namespace.clone(), m.spec.host()), m.spec.name.clone()))
            .collect();
        let seen_provisioned = ceiling::provisioned_hosts(mgmt, machine_of_host).await?;
        let beside_at_start = cpu_beside(env);
        let t0 = Instant::now();
        let flipping = provision(mgmt, machines, mode, &provisioned);
        let due = seen_provisioned
            .filter_map(|(name, at)| {
                lock(&triggered).insert(name.clone(), at);
                futures::future::ready(index.get(&name).copied())
            })
            .take(planned.len());
        let sent = ceiling::send(mgmt, &planned, due, settings, fidelity, args.concurrency).await?;
        flipping.await??;
        (t0, beside_at_start, sent)
    };
    wait_ready(seen, expected, t0, args.timeout, &mut []).await?;
    let beside = cpu_beside(env).since(beside_at_start);
    let observed = {
        let seen = lock(seen);
        let provisioned = lock(&provisioned);
        observe(&seen, expected, &provisioned, t0)
    };
    let trigger = {
        let provisioned = lock(&provisioned);
        lock(&triggered)
            .iter()
            .filter_map(|(name, at)| {
                // A watch may deliver the update before the writer has its answer: 0.
                Some(
                    at.saturating_duration_since(*provisioned.get(name)?)
                        .as_secs_f64(),
                )
            })
            .collect::<Vec<f64>>()
    };
    let nodes_created = observed.ready.len();
    say(format!(
        "ceiling: {nodes_created} of {} Nodes Ready in {:.2}s",
        expected.len(),
        observed.elapsed
    ));
    Ok(CeilingRun {
        nodes_created,
        missing: expected.len() - nodes_created,
        elapsed_seconds: observed.elapsed,
        nodes_per_second: report::per_second(nodes_created as f64, observed.elapsed),
        latency_seconds: Latency::from_samples(&observed.latencies),
        trigger_seconds: Latency::from_samples(&trigger),
        workload_requests: sent,
        requests_per_node: report::per_node(sent, nodes_created),
        cpu_beside: beside,
    })
}

/// The CPU seconds so far of the processes beside the one measured (this one included:
/// the harness).
fn cpu_beside(env: &Environment) -> CpuBeside {
    let cpu = |pid| process_stats::cpu_seconds(pid).unwrap_or(0.0);
    CpuBeside {
        management_apiserver: cpu(env.management.pid()),
        workload_apiservers: env.workloads.iter().map(|w| cpu(w.pid())).sum(),
        etcd: cpu(env.etcd_pid()),
        harness: cpu(std::process::id()),
    }
}

/// The controller's flags that decide what it sends: the same for the ceiling.
fn controller_flags(concurrency: u16, full_fidelity: bool) -> Vec<String> {
    let mut flags = vec!["--concurrency".to_string(), concurrency.to_string()];
    if !full_fidelity {
        // Like for like with the ceiling: Node (created with its status, taints) and
        // kubeadm-config.
        for flag in [
            "--static-pods=false",
            "--node-heartbeat-interval=0",
            "--delete-orphaned-nodes=false",
        ] {
            flags.push(flag.to_string());
        }
    }
    flags
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

/// The controller as its own process (with `shard`, that shard only) with `flags`, JSON
/// logs in `dir`;
/// returns it once `/readyz` answers.
async fn start_controller(
    kubeconfig: &Path,
    dir: &Path,
    flags: &[String],
    shard: Option<Shard>,
) -> anyhow::Result<Controller> {
    let address = format!("127.0.0.1:{}", envtest::free_port()?);
    let mut args: Vec<String> = [
        "run",
        "--metrics-bind-address",
        &address,
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(flags.iter().cloned());
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

/// Waits for the CAPM3 stand-in to set every providerID for as long as it gets on, and
/// returns how many it set. A minute without a new one ends the wait (in a fixed minute it
/// had closed only 231 to 830 of 1000 on a busy machine).
async fn wait_for_provider_ids(mgmt: &kube::Client, expected: usize) -> usize {
    const STALLED: Duration = Duration::from_secs(60);
    let api: Api<Metal3Machine> = Api::all(mgmt.clone());
    let mut progress = Instant::now();
    let mut closed = 0;
    loop {
        match count_provider_ids(&api).await {
            Ok(n) if n > closed => {
                closed = n;
                progress = Instant::now();
            }
            Ok(_) => {}
            // Said, and counted as the last count: never as none closed.
            Err(e) => eprintln!("demo: could not count the Metal3Machines' providerIDs: {e}"),
        }
        if closed >= expected || progress.elapsed() > STALLED {
            return closed;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Metal3Machines with a providerID, listed in pages so that each answer stays small
/// however many clusters the run has.
async fn count_provider_ids(api: &Api<Metal3Machine>) -> Result<usize, kube::Error> {
    let mut params = ListParams::default().limit(500);
    let mut closed = 0;
    loop {
        let page = api.list(&params).await?;
        closed += page
            .items
            .iter()
            .filter(|m| metal3_fakenode::plan::has_provider_id(m))
            .count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(closed),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, prefix: Option<&str>) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.labels =
            prefix.map(|p| [(tenancy::CLUSTER_LABEL.to_string(), p.to_string())].into());
        node
    }

    #[test]
    fn a_node_behind_the_front_is_named_as_its_cluster_knows_it() {
        assert_eq!(cluster_name(&node("c-cp-0", None)).unwrap(), "c-cp-0");
        assert_eq!(
            cluster_name(&node("tabcde-c-cp-0", Some("tabcde"))).unwrap(),
            "c-cp-0"
        );
        // A name not carrying the prefix it is labelled with stays as it is.
        assert_eq!(
            cluster_name(&node("other-c", Some("tabcde"))).unwrap(),
            "other-c"
        );
        assert_eq!(cluster_name(&Node::default()), None);
    }
}
