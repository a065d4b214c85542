//! Living Nodes: Leases and condition heartbeats for as long as their Machine lives, the
//! flags that set them, and what they cost.

use super::*;

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn nodes_live_until_their_machine_is_deleted() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "heartbeat", server).await;
    let cp = machine(&mgmt, &ns, "cp-0", true).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let ctl = start_controller(with(living_nodes(), &ns)).await;
    let node = ready_node(server, &worker.spec.name).await;
    ready_node(server, &cp.spec.name).await;
    let leases = leases(server).await;
    let lease = eventually("the worker's Lease", LIMIT, || async {
        leases.get_opt(&worker.spec.name).await.unwrap()
    })
    .await;
    let spec = lease.spec.clone().unwrap();
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(worker.spec.name.as_str())
    );
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &lease.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", node.metadata.uid.as_deref().unwrap())
    );
    // Renewed: resourceVersion and renewTime advance, twice.
    let mut seen = lease_version(&leases, &worker.spec.name).await.unwrap();
    for _ in 0..2 {
        let next = eventually("a Lease renewal", LIMIT, || async {
            lease_version(&leases, &worker.spec.name)
                .await
                .filter(|v| v.0 != seen.0 && v.1 > seen.1)
        })
        .await;
        seen = next;
    }
    // ...and so does the Ready condition's heartbeat.
    let beat = ready_condition(&node).last_heartbeat_time.unwrap().0;
    let api = nodes(server).await;
    eventually("a newer Ready heartbeat", LIMIT, || async {
        let n = api.get(&worker.spec.name).await.unwrap();
        let c = ready_condition(&n);
        (c.status == "True" && c.last_heartbeat_time.unwrap().0 > beat).then_some(())
    })
    .await;
    eventually("the heartbeats counted", LIMIT, || async {
        let posted = ctl.metrics.heartbeats.with_label_values(&["posted"]).get();
        (posted >= 2).then_some(())
    })
    .await;

    // The machines go: their Nodes, Leases and static pods with them, and nothing comes
    // back (no heartbeat re-creates a Lease).
    for m in [&worker, &cp] {
        world::delete_machine(&mgmt, &ns, &m.spec).await.unwrap();
    }
    for m in [&worker, &cp] {
        gone(&api, &m.spec.name).await;
        gone(&leases, &m.spec.name).await;
        eventually("the static pods deleted", LIMIT, || async {
            pods_of(server, &m.spec.name).await.is_empty().then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for m in [&worker, &cp] {
        assert!(leases.get_opt(&m.spec.name).await.unwrap().is_none());
        assert!(api.get_opt(&m.spec.name).await.unwrap().is_none());
    }
    counts(&ctl, 2, 0).await;
    ctl.stop().await;
}

/// As a kubelet: between two reports of its conditions a Node's heartbeat is its Lease
/// alone; a Lease deleted alone is made again; and a kubelet whose Lease and Node were
/// deleted (as the garbage collector deletes a Node's Lease) finds its Node gone and makes
/// no Lease for it.
#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn between_reports_only_the_lease_is_renewed() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "lease-only", server).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let fidelity = Fidelity {
        status_report_interval: Duration::from_secs(3600),
        ..living_nodes()
    };
    let ctl = start_controller(with(fidelity, &ns)).await;
    ready_node(server, &worker.spec.name).await;
    // The first heartbeat reports the conditions (none was reported by this process).
    eventually("two heartbeats", LIMIT, || async {
        let posted = ctl.metrics.heartbeats.with_label_values(&["posted"]).get();
        (posted >= 2).then_some(())
    })
    .await;
    let api = nodes(server).await;
    let before = api.get(&worker.spec.name).await.unwrap();
    let leases = leases(server).await;
    let mut seen = lease_version(&leases, &worker.spec.name).await.unwrap();
    for _ in 0..2 {
        seen = eventually("a Lease renewal", LIMIT, || async {
            lease_version(&leases, &worker.spec.name)
                .await
                .filter(|v| v.0 != seen.0 && v.1 > seen.1)
        })
        .await;
    }
    let after = api.get(&worker.spec.name).await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the Node was written between reports"
    );
    assert_eq!(
        ready_condition(&after).last_heartbeat_time,
        ready_condition(&before).last_heartbeat_time
    );

    // A Lease deleted alone while its Node lives: the next heartbeat makes another, owned
    // by the Node, and the Node stays as it was.
    let node_uid = before.metadata.uid.clone().unwrap();
    let old = leases.get(&worker.spec.name).await.unwrap();
    leases
        .delete(&worker.spec.name, &Default::default())
        .await
        .unwrap();
    let again = eventually("the Lease made again", LIMIT, || async {
        leases
            .get_opt(&worker.spec.name)
            .await
            .unwrap()
            .filter(|l| l.metadata.uid != old.metadata.uid)
    })
    .await;
    let owners = again.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners.iter().any(|o| o.kind == "Node" && o.uid == node_uid),
        "{owners:?}"
    );
    assert_eq!(
        again.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(worker.spec.name.as_str())
    );
    assert_eq!(
        api.get(&worker.spec.name).await.unwrap().metadata.uid,
        Some(node_uid.clone())
    );

    api.delete(&worker.spec.name, &Default::default())
        .await
        .unwrap();
    leases
        .delete(&worker.spec.name, &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    if let Some(lease) = leases.get_opt(&worker.spec.name).await.unwrap() {
        let owners = lease.metadata.owner_references.unwrap_or_default();
        assert!(
            owners.iter().all(|o| o.uid != node_uid),
            "a Lease was made for the deleted Node"
        );
    }
    ctl.stop().await;
}

/// Idle connections to a workload API server are closed between heartbeats (while idle,
/// not only when the next request looks for one), and the heartbeats go on, each over a
/// new connection (its TLS session resumed); with the idle timeout off
/// (`--workload-idle-timeout 0`) one connection stays open and carries them all.
#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn idle_connections_close_between_heartbeats() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    for (idle, name) in [
        (Some(Duration::from_millis(200)), "idle-closed"),
        (None, "idle-kept"),
    ] {
        let ns = namespace_with_cluster(&mgmt, name, server).await;
        let worker = machine(&mgmt, &ns, "md-0", false).await;
        // Heartbeats every second, conditions only with the first: a Lease renewal each.
        let fidelity = Fidelity {
            status_report_interval: Duration::from_secs(3600),
            ..living_nodes()
        };
        let mut config = with(fidelity, &ns);
        config.workload.idle_timeout = idle;
        let ctl = start_controller(config).await;
        ready_node(server, &worker.spec.name).await;
        let posted = || ctl.metrics.heartbeats.with_label_values(&["posted"]).get();
        let first = eventually("a first heartbeat", LIMIT, || async {
            let n = posted();
            (n >= 1).then_some(n)
        })
        .await;
        let opened = ctl.metrics.workload_connections.get();
        // Sampled through the heartbeats: whether the one cluster's connection was ever
        // seen closed in between.
        let open = || ctl.metrics.workload_connections_open.get();
        let mut seen_closed = false;
        eventually("four more heartbeats", LIMIT, || {
            seen_closed |= open() == 0;
            async { (posted() >= first + 4).then_some(()) }
        })
        .await;
        let failed = ctl.metrics.heartbeats.with_label_values(&["failed"]).get();
        assert_eq!(failed, 0, "{name}: no heartbeat failed");
        let since = ctl.metrics.workload_connections.get() - opened;
        match idle {
            Some(_) => {
                assert!(
                    since >= 3,
                    "{name}: {since} connections opened for 4 heartbeats a second apart"
                );
                assert!(seen_closed, "{name}: the idle connection was never closed");
            }
            None => {
                assert!(
                    since <= 1,
                    "{name}: {since} connections opened for 4 heartbeats, the first one kept"
                );
                assert!(!seen_closed, "{name}: the connection was closed while idle");
            }
        }
        ctl.stop().await;
    }
}

#[test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
fn the_fidelity_flags_and_their_defaults() {
    let parse = |extra: &[&str]| {
        let args = ["metal3-fakenode", "run"].iter().chain(extra);
        match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Run(run)) => Ok(run.fidelity()),
            // Other subcommands may come.
            #[allow(unreachable_patterns)]
            Ok(_) => panic!("not run"),
            Err(e) => Err(e.to_string()),
        }
    };
    use clap::Parser;
    let defaults = parse(&[]).unwrap();
    assert_eq!(
        defaults,
        Fidelity {
            static_pods: true,
            stacked_etcd_pods: false,
            heartbeat_interval: Duration::from_secs(40),
            status_report_interval: Duration::from_secs(300),
            delete_orphans: true,
            startup_delay: Duration::ZERO,
            startup_jitter: Duration::ZERO,
            never_ready_fraction: 0.0,
            not_ready_fraction: 0.0,
            not_ready_after: Duration::from_secs(300),
            annotate_certificate_expiry: false,
            kubelet_endpoint: None,
        }
    );
    let set = parse(&[
        "--static-pods=false",
        "--stacked-etcd-pods",
        "--node-heartbeat-interval",
        "0",
        "--node-status-report-interval",
        "0",
        "--delete-orphaned-nodes=false",
        "--node-startup-delay",
        "2m",
        "--node-startup-jitter",
        "30s",
        "--never-ready-fraction",
        "0.1",
        "--not-ready-fraction",
        "0.2",
        "--not-ready-after",
        "10m",
        "--annotate-certificate-expiry",
    ])
    .unwrap();
    assert!(!set.static_pods && set.stacked_etcd_pods && !set.delete_orphans);
    assert!(!set.heartbeats());
    assert_eq!(set.status_report_interval, Duration::ZERO);
    assert_eq!(set.startup_delay, Duration::from_secs(120));
    assert_eq!(set.startup_jitter, Duration::from_secs(30));
    assert_eq!(
        (set.never_ready_fraction, set.not_ready_fraction),
        (0.1, 0.2)
    );
    assert_eq!(set.not_ready_after, Duration::from_secs(600));
    assert!(set.annotate_certificate_expiry);
    assert!(parse(&["--never-ready-fraction", "1.5"]).is_err());
    assert!(parse(&["--node-heartbeat-interval", "soon"]).is_err());
}

/// The steady cost of heartbeats, measured (not part of the suite: it takes minutes).
/// `FAKENODE_COST_NODES` Nodes (default 1000) over `FAKENODE_COST_CLUSTERS` clusters
/// (default 10) on the shared workload API servers, `FAKENODE_COST_INTERVAL` seconds
/// (default 40); then, over two intervals, requests per second (each second's count, to
/// show the load is flat) and this process's CPU time, of which the controller is all
/// that runs then.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: cargo test -p metal3-fakenode --test fidelity heartbeat_cost -- --ignored --nocapture"]
async fn heartbeat_cost() {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (total, clusters, interval) = (
        var("FAKENODE_COST_NODES", 1000),
        var("FAKENODE_COST_CLUSTERS", 10),
        Duration::from_secs(var("FAKENODE_COST_INTERVAL", 40)),
    );
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("cost");
    world::namespace(&mgmt, &ns).await.unwrap();
    let mut specs = Vec::new();
    for c in 0..clusters {
        let name = format!("{ns}-c{c}");
        let server = &env.workloads[c as usize % env.workloads.len()];
        world::cluster(&mgmt, &ns, &name).await.unwrap();
        world::kubeconfig_secret(
            &mgmt,
            &ns,
            &name,
            world::kubeconfig_data(&admin_yaml(server)),
        )
        .await
        .unwrap();
        for i in 0..total / clusters {
            specs.push(MachineSpec::new(&name, &format!("{name}-md-{i}"), false));
        }
    }
    futures::stream::iter(&specs)
        .for_each_concurrent(32, |spec| {
            let (mgmt, ns) = (&mgmt, &ns);
            async move {
                world::machine(mgmt, ns, spec).await.unwrap();
            }
        })
        .await;
    let mut config = with(
        Fidelity {
            heartbeat_interval: interval,
            ..Fidelity::default()
        },
        &ns,
    );
    config.concurrency = 32;
    config.workload.qps = std::num::NonZeroU32::new(100).unwrap();
    config.workload.burst = std::num::NonZeroU32::new(200).unwrap();
    let ctl = start_controller(config).await;
    eventually("every Node", Duration::from_secs(600), || async {
        (ctl.metrics.nodes_created.get() == specs.len() as u64).then_some(())
    })
    .await;
    // Settle one interval: the first heartbeats fall in the first one.
    tokio::time::sleep(interval).await;
    let patches = || {
        ctl.metrics
            .workload_requests
            .with_label_values(&["patch", "200", "heartbeat"])
            .get()
    };
    let cpu = || {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(usage.ru_utime) + t(usage.ru_stime)
    };
    let (cpu0, patches0) = (cpu(), patches());
    let seconds = 2 * interval.as_secs();
    let mut per_second = Vec::new();
    let mut last = patches0;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = patches();
        per_second.push(now - last);
        last = now;
    }
    let window = seconds as f64;
    let rate = (last - patches0) as f64 / window;
    let cpu_share = (cpu() - cpu0) / window;
    let expected = 2.0 * specs.len() as f64 / interval.as_secs_f64();
    let (min, max) = (
        per_second.iter().min().copied().unwrap_or(0),
        per_second.iter().max().copied().unwrap_or(0),
    );
    let failed = ctl.metrics.heartbeats.with_label_values(&["failed"]).get();
    let skipped = ctl.metrics.heartbeats.with_label_values(&["skipped"]).get();
    println!(
        "heartbeat cost: {} Nodes, {clusters} clusters, interval {interval:?}: {rate:.1} \
         requests/s (expected {expected:.1}), per second min {min} max {max}, CPU {:.1}% of \
         one core, failed {failed}, skipped {skipped}\nper second: {per_second:?}",
        specs.len(),
        cpu_share * 100.0
    );
    assert!(
        (rate - expected).abs() < expected * 0.1,
        "{rate} vs {expected}"
    );
    assert_eq!(failed, 0);
    // Skips are the backpressure of a slow API server: a few, at most.
    let posted = ctl.metrics.heartbeats.with_label_values(&["posted"]).get();
    assert!(skipped * 100 <= posted, "{skipped} skipped of {posted}");
    ctl.stop().await;
}
