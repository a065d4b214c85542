//! Clean deletes: only what carries our label, forgotten clusters, and a rolling upgrade
//! that leaves exactly the new Nodes.

use super::*;

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn cleanup_deletes_only_what_carries_our_label() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "cleanup", server).await;
    let cp = machine(&mgmt, &ns, "cp-0", true).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let stays = machine(&mgmt, &ns, "md-1", false).await;
    // Not ours: a Pod on the control-plane Node (kube-proxy, say), and the worker's Lease
    // taken by someone else before the controller came.
    let proxy = format!("kube-proxy-{}", cp.spec.name);
    foreign_pod(server, &proxy, &cp.spec.name, json!({})).await;
    let leases = leases(server).await;
    let foreign: Lease = serde_json::from_value(json!({
        "metadata": {"name": worker.spec.name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "someone-else"},
    }))
    .unwrap();
    leases
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();

    let ctl = start_controller(with(living_nodes(), &ns)).await;
    for m in [&cp, &worker, &stays] {
        ready_node(server, &m.spec.name).await;
    }
    eventually("the Lease of the Node that stays", LIMIT, || async {
        leases.get_opt(&stays.spec.name).await.unwrap()
    })
    .await;
    for m in [&cp, &worker] {
        world::delete_machine(&mgmt, &ns, &m.spec).await.unwrap();
    }
    let api = nodes(server).await;
    gone(&api, &cp.spec.name).await;
    gone(&api, &worker.spec.name).await;
    eventually("our static pods deleted", LIMIT, || async {
        let left: Vec<_> = pods_of(server, &cp.spec.name)
            .await
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect();
        (left == [proxy.clone()]).then_some(())
    })
    .await;
    // What is not ours stays: the kube-proxy Pod, the foreign Lease, and the machine
    // that was not deleted keeps its Node and Lease.
    assert!(pods(server).await.get_opt(&proxy).await.unwrap().is_some());
    let lease = leases.get(&worker.spec.name).await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("someone-else")
    );
    assert!(api.get_opt(&stays.spec.name).await.unwrap().is_some());
    assert!(leases.get_opt(&stays.spec.name).await.unwrap().is_some());
    counts(&ctl, 2, 1).await;
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_cluster_whose_kubeconfig_is_gone_is_forgotten() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "forgotten", server).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let ctl = start_controller(with(
        Fidelity {
            heartbeat_interval: Duration::from_secs(1),
            delete_orphans: true,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    ready_node(server, &worker.spec.name).await;
    let leases = leases(server).await;
    let mut seen = eventually("a Lease", LIMIT, || async {
        lease_version(&leases, &worker.spec.name).await
    })
    .await;
    // A single Node's heartbeats go on, one after the other.
    for _ in 0..3 {
        seen = eventually("a renewal", LIMIT, || async {
            lease_version(&leases, &worker.spec.name)
                .await
                .filter(|v| v.0 != seen.0)
        })
        .await;
    }
    ctl.scrape();
    assert_eq!(ctl.metrics.workload_clients.get(), 1);

    world::delete_kubeconfig_secret(&mgmt, &ns, &ns)
        .await
        .unwrap();
    eventually("the client and kubelets forgotten", LIMIT, || async {
        ctl.scrape();
        (ctl.metrics.workload_clients.get() == 0 && ctl.metrics.kubelets.get() == 0).then_some(())
    })
    .await;
    // No more heartbeats: the Lease stays as it was over several intervals. The Node
    // itself stays (its Machine still exists; it is just no longer reachable). (A post in
    // flight when the cluster was forgotten may still land: wait it out.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = lease_version(&leases, &worker.spec.name).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        lease_version(&leases, &worker.spec.name).await.unwrap(),
        last
    );
    assert!(
        nodes(server)
            .await
            .get_opt(&worker.spec.name)
            .await
            .unwrap()
            .is_some()
    );
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_rolling_upgrade_leaves_exactly_the_new_nodes() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "rollout", server).await;
    let old_version = "v1.34.1";
    let new_version = "v1.35.0";
    let mut old = Vec::new();
    for (suffix, control_plane) in [
        ("cp-a", true),
        ("cp-b", true),
        ("cp-c", true),
        ("md-a", false),
        ("md-b", false),
    ] {
        old.push(machine(&mgmt, &ns, suffix, control_plane).await);
    }
    let ctl = start_controller(with(living_nodes(), &ns)).await;
    for m in &old {
        ready_node(server, &m.spec.name).await;
    }
    // As KCP and a MachineDeployment roll out (max surge 1): a new machine at the new
    // version, Ready, then the old one goes; one at a time.
    let mut new = Vec::new();
    for m in &old {
        let mut spec = MachineSpec::new(
            &ns,
            &format!("{}-{}", m.spec.name, "v135"),
            m.spec.control_plane,
        );
        spec.version = new_version.into();
        let created = world::machine(&mgmt, &ns, &spec).await.unwrap();
        ready_node(server, &spec.name).await;
        world::delete_machine(&mgmt, &ns, &m.spec).await.unwrap();
        new.push(created);
    }
    let want: BTreeSet<String> = new.iter().map(|m| m.spec.name.clone()).collect();
    let api = nodes(server).await;
    let listed = eventually("exactly the new Nodes", LIMIT, || async {
        let found = api
            .list(&ListParams::default().labels(&cluster_selector(&ns, &ns)))
            .await
            .unwrap()
            .items;
        let names: BTreeSet<String> = found
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        (names == want).then_some(found)
    })
    .await;
    for node in &listed {
        let info = node.status.as_ref().unwrap().node_info.as_ref().unwrap();
        assert_eq!(info.kubelet_version, new_version);
        assert!(is_ready(node));
    }
    // No leftovers of the old machines: no Node, no Lease, no static pod.
    let leases = leases(server).await;
    for m in &old {
        assert!(api.get_opt(&m.spec.name).await.unwrap().is_none());
        gone(&leases, &m.spec.name).await;
        assert!(
            pods_of(server, &m.spec.name).await.is_empty(),
            "{}",
            m.spec.name
        );
    }
    // The new control planes have their static pods at the new version.
    for m in new.iter().filter(|m| m.spec.control_plane) {
        let pods = pods_of(server, &m.spec.name).await;
        assert_eq!(pods.len(), 3, "{}", m.spec.name);
        for pod in pods {
            let image = pod.spec.unwrap().containers[0].image.clone().unwrap();
            assert!(image.ends_with(&format!(":{new_version}")), "{image}");
        }
        assert!(leases.get_opt(&m.spec.name).await.unwrap().is_some());
    }
    assert_ne!(old_version, new_version);
    counts(&ctl, old.len() as u64, new.len() as i64).await;
    ctl.stop().await;
}
