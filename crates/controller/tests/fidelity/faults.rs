//! Faults and timing: injected faults hit exactly the chosen machines, a Node waits for its
//! startup delay, and a restarted controller takes over the Nodes of the first.

use super::*;

/// A fraction that draws exactly `n` of `draws` (their midpoint around the n-th).
fn fraction_for(mut draws: Vec<f64>, n: usize) -> f64 {
    draws.sort_by(f64::total_cmp);
    (draws[n - 1] + draws[n]) / 2.0
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn injected_faults_hit_exactly_the_chosen_machines() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "faults", server).await;
    let mut machines = Vec::new();
    for i in 0..10 {
        machines.push(machine(&mgmt, &ns, &format!("md-{i}"), false).await);
    }
    // Fractions that choose exactly 3 never-ready machines and, of the other 7, exactly
    // 3 that go NotReady: the choice is the stable hash of each host's UID.
    let uids: Vec<&str> = machines.iter().map(|m| m.host_uid.as_str()).collect();
    let never_ready_fraction = fraction_for(
        uids.iter()
            .map(|u| fidelity::draw(Fault::NeverReady, u))
            .collect(),
        3,
    );
    let not_ready_fraction = fraction_for(
        uids.iter()
            .filter(|u| fidelity::draw(Fault::NeverReady, u) >= never_ready_fraction)
            .map(|u| fidelity::draw(Fault::NotReady, u))
            .collect(),
        3,
    );
    let after = Duration::from_secs(3);
    let settings = Fidelity {
        heartbeat_interval: Duration::from_secs(1),
        never_ready_fraction,
        not_ready_fraction,
        not_ready_after: after,
        ..Fidelity::default()
    };
    let fate = |m: &CreatedMachine| settings.fate(&m.host_uid);
    let of =
        |f: Fate| -> Vec<&CreatedMachine> { machines.iter().filter(|m| fate(m) == f).collect() };
    let (never, not_ready, healthy) = (
        of(Fate::NeverReady),
        of(Fate::NotReadyAfter(after)),
        of(Fate::Healthy),
    );
    assert_eq!((never.len(), not_ready.len(), healthy.len()), (3, 3, 4));

    let ctl = start_controller(with(settings.clone(), &ns)).await;
    let api = nodes(server).await;
    for m in &not_ready {
        // Ready first (maybe only briefly), then every condition Unknown, as the node
        // lifecycle controller marks a Node whose kubelet stopped posting.
        let node = eventually(&format!("{} NotReady", m.spec.name), LIMIT, || async {
            api.get_opt(&m.spec.name)
                .await
                .unwrap()
                .filter(|n| posted_ready_condition(n).is_some_and(|c| c.status == "Unknown"))
        })
        .await;
        let ready = ready_condition(&node);
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        let created = node.metadata.creation_timestamp.unwrap().0;
        let went = ready.last_transition_time.unwrap().0;
        assert!(
            went.duration_since(created).as_secs_f64() >= after.as_secs_f64(),
            "NotReady {went} no sooner than {after:?} after its creation at {created}"
        );
    }
    for m in &healthy {
        ready_node(server, &m.spec.name).await;
    }
    eventually("the faults counted", LIMIT, || async {
        let counted = |f| ctl.metrics.faults_injected.with_label_values(&[f]).get();
        (counted("never_ready") == 3 && counted("not_ready") == 3).then_some(())
    })
    .await;
    // A while later: the never-ready machines still have no Node, the NotReady Nodes stay
    // NotReady (no heartbeat revives them, and no reconcile repairs them: a change to
    // their Machines makes sure one runs), the others stay Ready.
    for m in not_ready.iter().chain(&never) {
        world::patch_machine(
            &mgmt,
            &ns,
            &m.spec.name,
            json!({"metadata": {"labels": {"touched": "yes"}}}),
        )
        .await
        .unwrap();
    }
    let leases = leases(server).await;
    let stopped: Vec<_> = futures::future::join_all(
        not_ready
            .iter()
            .map(|m| lease_version(&leases, &m.spec.name)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for m in &never {
        assert!(
            api.get_opt(&m.spec.name).await.unwrap().is_none(),
            "{}",
            m.spec.name
        );
    }
    for (m, lease) in not_ready.iter().zip(stopped) {
        let node = api.get(&m.spec.name).await.unwrap();
        assert_eq!(ready_condition(&node).status, "Unknown", "{}", m.spec.name);
        assert_eq!(
            lease_version(&leases, &m.spec.name).await,
            lease,
            "no renewal"
        );
    }
    for m in &healthy {
        let node = api.get(&m.spec.name).await.unwrap();
        assert!(is_ready(&node), "{}", m.spec.name);
    }
    assert_eq!(ctl.metrics.nodes_created.get(), 7);
    let counted = |f| ctl.metrics.faults_injected.with_label_values(&[f]).get();
    assert_eq!(
        (counted("never_ready"), counted("not_ready")),
        (3, 3),
        "each fault counted once, however often its machine is reconciled"
    );
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_node_appears_only_after_its_startup_delay() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "startup", server).await;
    let delay = Duration::from_secs(4);
    let ctl = start_controller(with(
        Fidelity {
            startup_delay: delay,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    eventually("the stores to sync", LIMIT, || async {
        ctl.health.is_ready().then_some(())
    })
    .await;
    // The host is provisioned as the machine is created.
    let m = machine(&mgmt, &ns, "md-0", false).await;
    let provisioned = std::time::Instant::now();
    let api = nodes(server).await;
    // Well before the delay: no Node (the reconcile has long run by then).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(provisioned.elapsed() < delay);
    assert!(
        api.get_opt(&m.spec.name).await.unwrap().is_none(),
        "no Node before the startup delay"
    );
    let node = ready_node(server, &m.spec.name).await;
    // By the API servers' clocks too (whole seconds; the host's time is rounded).
    let created = node.metadata.creation_timestamp.unwrap().0;
    let end = host_provisioned_at(&mgmt, &ns, &m.spec.host()).await;
    assert!(
        created.duration_since(end).as_secs_f64() >= delay.as_secs_f64() - 1.0,
        "created at {created}, provisioned at {end}"
    );
    // The creation latency starts where it always does: the delay is part of it. (The
    // Node turns Ready a moment before its reconcile counts it.)
    eventually("the creation counted", LIMIT, || async {
        (ctl.metrics.node_creation_latency.get_sample_count() == 1).then_some(())
    })
    .await;
    assert!(ctl.metrics.node_creation_latency.get_sample_sum() >= delay.as_secs_f64());
    ctl.stop().await;
}

/// The host's `status.operationHistory.provision.end`.
async fn host_provisioned_at(client: &kube::Client, ns: &str, host: &str) -> jiff::Timestamp {
    let api: Api<metal3_fakenode::resources::BareMetalHost> = Api::namespaced(client.clone(), ns);
    api.get(host)
        .await
        .unwrap()
        .status
        .unwrap()
        .operation_history
        .provision
        .end
        .unwrap()
        .0
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_restarted_controller_takes_over_the_nodes_of_the_first() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "takeover", server).await;
    let mut machines = Vec::new();
    for i in 0..3 {
        machines.push(machine(&mgmt, &ns, &format!("md-{i}"), false).await);
    }
    let settings = Fidelity {
        heartbeat_interval: Duration::from_secs(1),
        delete_orphans: true,
        ..Fidelity::default()
    };
    let first = start_controller(with(settings.clone(), &ns)).await;
    // CAPM3 closes the loop: after the restart no Metal3Machine needs anything, so
    // nothing but the takeover can bring the Nodes back under the controller.
    let capm3 = common::start_capm3(&ns).await;
    for m in &machines {
        eventually("providerID", LIMIT, || async {
            world::provider_id(&mgmt, &ns, &m.spec.name).await.unwrap()
        })
        .await;
    }
    first.stop().await;
    drop(capm3);
    let leases = leases(server).await;
    let before = lease_version(&leases, &machines[0].spec.name)
        .await
        .expect("a Lease");
    // Deleted while no controller runs.
    world::delete_machine(&mgmt, &ns, &machines[2].spec)
        .await
        .unwrap();

    let second = start_controller(with(settings, &ns)).await;
    let api = nodes(server).await;
    gone(&api, &machines[2].spec.name).await;
    gone(&leases, &machines[2].spec.name).await;
    eventually("the heartbeats again", LIMIT, || async {
        lease_version(&leases, &machines[0].spec.name)
            .await
            .filter(|v| v.0 != before.0)
    })
    .await;
    world::delete_machine(&mgmt, &ns, &machines[1].spec)
        .await
        .unwrap();
    gone(&api, &machines[1].spec.name).await;
    assert!(api.get_opt(&machines[0].spec.name).await.unwrap().is_some());
    counts(&second, 2, 1).await;
    assert_eq!(
        second.metrics.nodes_created.get(),
        0,
        "nothing created twice"
    );
    second.stop().await;
}
