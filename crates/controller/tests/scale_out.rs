//! Scale-out on Kubernetes primitives: shards split the clusters without talking to each
//! other, and replicas elect a leader on a Lease. The leader tests run the real binary as
//! processes, so that one can be SIGKILLed or cut off from the API server.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{eventually, start_controller, test_config, unique};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use metal3_fakenode::shard::Shard;
use metal3_fakenode_testkit::envtest::{self, ApiServer, process::Supervised};
use metal3_fakenode_testkit::exposition::metric_value;
use metal3_fakenode_testkit::probe;
use metal3_fakenode_testkit::simulate::world::{self, CreatedMachine, MachineSpec};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(90);

async fn ready_node_count(server: &ApiServer, machines: &[CreatedMachine]) -> usize {
    let nodes: Api<Node> = Api::all(server.client().await.unwrap());
    let mut n = 0;
    for m in machines {
        if let Some(node) = nodes.get_opt(&m.spec.name).await.unwrap() {
            assert_eq!(
                metal3_fakenode::fake::node::host_uid(&node),
                Some(m.host_uid.as_str())
            );
            if metal3_fakenode::fake::node::is_ready(&node) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn two_shards_create_each_node_exactly_once_by_the_right_shard() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let ns = unique("shards");
    world::namespace(&mgmt, &ns).await.unwrap();
    let yaml = envtest::kubeconfig_yaml(&env.workloads[0].admin_kubeconfig()).unwrap();
    let mut machines = Vec::new();
    let mut expected = [0u64; 2];
    for c in 0..100 {
        let cluster = format!("{ns}-c{c}");
        world::cluster(&mgmt, &ns, &cluster).await.unwrap();
        world::kubeconfig_secret(&mgmt, &ns, &cluster, world::kubeconfig_data(&yaml))
            .await
            .unwrap();
        let spec = MachineSpec::new(&cluster, &format!("{cluster}-cp-0"), true);
        machines.push(world::machine(&mgmt, &ns, &spec).await.unwrap());
        expected[Shard::of(&ns, &cluster, 2) as usize] += 1;
    }
    // A Metal3Machine of no cluster yet (no annotation either): shard 0 reports it, once.
    world::metal3_machine(&mgmt, &ns, &format!("{ns}-lost"), "", None, None)
        .await
        .unwrap();
    let mut shards = Vec::new();
    for index in 0..2 {
        let mut config = test_config(&[&ns]);
        config.shard = Shard::new(index, 2).unwrap();
        shards.push(start_controller(config).await);
    }
    eventually("every Node", LIMIT, || async {
        (ready_node_count(&env.workloads[0], &machines).await == machines.len()).then_some(())
    })
    .await;
    eventually("both shards counted", LIMIT, || async {
        let got = [
            shards[0].metrics.nodes_created.get(),
            shards[1].metrics.nodes_created.get(),
        ];
        (got == expected).then_some(())
    })
    .await;
    assert!(
        expected.iter().all(|n| *n > 0),
        "both shards had work: {expected:?}"
    );
    eventually("shard 0 reports the lost machine", LIMIT, || async {
        (shards[0].errors("missing_annotation") > 0).then_some(())
    })
    .await;
    assert_eq!(
        shards[1].errors("missing_annotation"),
        0,
        "only shard 0 reports it"
    );
    for s in shards {
        s.stop().await;
    }
}

/// A replica of the real binary with leader election, on the management cluster at
/// `server_url` (directly or through a proxy).
struct Replica {
    process: Supervised,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(mgmt: &ApiServer, identity: &str, ns: &str, server_url: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig_path = dir.path().join("kubeconfig");
        let mut kubeconfig = mgmt.admin_kubeconfig();
        kubeconfig.clusters[0].cluster.as_mut().unwrap().server = Some(server_url.to_string());
        std::fs::write(
            &kubeconfig_path,
            envtest::kubeconfig_yaml(&kubeconfig).unwrap(),
        )
        .unwrap();
        let metrics = format!("127.0.0.1:{}", envtest::free_port().unwrap());
        let args: Vec<String> = [
            "run",
            "--namespace",
            ns,
            "--metrics-bind-address",
            &metrics,
            "--leader-elect",
            "--leader-elect-namespace",
            ns,
            "--leader-elect-identity",
            identity,
            "--leader-elect-lease-duration",
            "4s",
            "--leader-elect-grace",
            "2s",
            "--max-retry-delay",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let kubeconfig_env = kubeconfig_path.display().to_string();
        let process = Supervised::spawn_with_env(
            identity,
            Path::new(env!("CARGO_BIN_EXE_metal3-fakenode")),
            &args,
            &[("KUBECONFIG", &kubeconfig_env), ("RUST_LOG", "info")],
            dir.path().join("log"),
        )
        .unwrap();
        Replica {
            process,
            metrics,
            _dir: dir,
        }
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = probe::get(&self.metrics, "/metrics").await.ok()?;
        metric_value(&text, name)
    }

    async fn is_leader(&self) -> bool {
        self.metric("fakenode_leader").await == Some(1.0)
    }
}

async fn provisioning_cluster(ns: &str, machines: usize) -> Vec<CreatedMachine> {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    world::namespace(&mgmt, ns).await.unwrap();
    let yaml = envtest::kubeconfig_yaml(&env.workloads[1].admin_kubeconfig()).unwrap();
    world::cluster(&mgmt, ns, ns).await.unwrap();
    world::kubeconfig_secret(&mgmt, ns, ns, world::kubeconfig_data(&yaml))
        .await
        .unwrap();
    let mut created = Vec::new();
    for i in 0..machines {
        let mut spec = MachineSpec::new(ns, &format!("{ns}-m{i}"), i == 0);
        spec.host_state = "provisioning".into();
        created.push(world::machine(&mgmt, ns, &spec).await.unwrap());
    }
    created
}

async fn provision(ns: &str, machines: &[CreatedMachine]) {
    let mgmt = common::env().await.management.client().await.unwrap();
    for m in machines {
        world::set_host_state(&mgmt, ns, &m.spec.host(), "provisioned")
            .await
            .unwrap();
    }
}

/// The one replica that leads, once exactly one does.
async fn leader_of(replicas: &[Replica]) -> usize {
    eventually("exactly one leader", LIMIT, || async {
        let mut leaders = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if r.is_leader().await {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_standby_finishes_the_job_when_the_leader_is_killed() {
    let env = common::env().await;
    let ns = unique("leader-kill");
    let machines = provisioning_cluster(&ns, 20).await;
    let url = env.management.url().to_string();
    let mut replicas = vec![
        Replica::start(&env.management, "replica-a", &ns, &url),
        Replica::start(&env.management, "replica-b", &ns, &url),
    ];
    let leader = leader_of(&replicas).await;
    provision(&ns, &machines[..10]).await;
    eventually("the leader at work", LIMIT, || async {
        (replicas[leader]
            .metric("fakenode_nodes_created_total")
            .await?
            >= 1.0)
            .then_some(())
    })
    .await;
    replicas[leader].process.kill(); // SIGKILL: no release of the Lease, no goodbye
    provision(&ns, &machines[10..]).await;
    let standby = 1 - leader;
    eventually("the standby to lead", LIMIT, || async {
        replicas[standby].is_leader().await.then_some(())
    })
    .await;
    eventually("every Node", LIMIT, || async {
        (ready_node_count(&env.workloads[1], &machines).await == machines.len()).then_some(())
    })
    .await;
    // The standby created at least the second half (the leader was dead by then) and never
    // more than there are machines; the count trails the last Node by a moment.
    let by_standby = eventually("the standby's count", LIMIT, || async {
        let n = replicas[standby]
            .metric("fakenode_nodes_created_total")
            .await?;
        (n >= 10.0).then_some(n)
    })
    .await;
    assert!(by_standby <= machines.len() as f64, "{by_standby}");
    let conflicts = replicas[standby]
        .metric("fakenode_reconcile_errors_total{reason=\"node_conflict\"}")
        .await;
    assert_eq!(
        conflicts,
        Some(0.0),
        "no Node found with another host's uuid"
    );
    replicas.clear();
}

/// A TCP proxy to `upstream` that can be cut: open connections are dropped and new ones
/// refused, as a network partition would.
struct Proxy {
    address: String,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let flag = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let copy = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut cr, &mut sw) => {}
                            _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        }
                    };
                    let cut = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Proxy { address, cut }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_partitioned_leader_stops_acting_before_the_standby_takes_over() {
    let env = common::env().await;
    let ns = unique("leader-cut");
    let machines = provisioning_cluster(&ns, 10).await;
    let upstream = env
        .management
        .url()
        .trim_start_matches("https://")
        .to_string();
    let proxy = Proxy::start(upstream).await;
    // The leader reaches the management API only through the proxy.
    let cut_off = Replica::start(
        &env.management,
        "replica-cut",
        &ns,
        &format!("https://{}", proxy.address),
    );
    eventually("the proxied replica to lead", LIMIT, || async {
        cut_off.is_leader().await.then_some(())
    })
    .await;
    let standby = Replica::start(&env.management, "replica-direct", &ns, env.management.url());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!standby.is_leader().await, "one leader at a time");

    proxy.cut();
    let mut stopped_at = None;
    let mut took_over_at = None;
    let deadline = Instant::now() + LIMIT;
    while stopped_at.is_none() || took_over_at.is_none() {
        assert!(Instant::now() < deadline, "no failover within {LIMIT:?}");
        if stopped_at.is_none() && !cut_off.is_leader().await {
            stopped_at = Some(Instant::now());
        }
        if took_over_at.is_none() && standby.is_leader().await {
            took_over_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopped_at < took_over_at,
        "the cut-off leader must stop acting before another replica leads"
    );
    let created_before = cut_off
        .metric("fakenode_nodes_created_total")
        .await
        .unwrap_or(0.0);
    provision(&ns, &machines).await;
    eventually("every Node, by the new leader", LIMIT, || async {
        (ready_node_count(&env.workloads[1], &machines).await == machines.len()).then_some(())
    })
    .await;
    assert_eq!(
        cut_off
            .metric("fakenode_nodes_created_total")
            .await
            .unwrap_or(0.0),
        created_before,
        "the ex-leader wrote nothing after losing the Lease"
    );
}
