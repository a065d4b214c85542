//! The controller in-process with nothing but the deploy's ServiceAccount token: it does
//! its whole job, and no more.

use super::*;

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_controller_does_its_whole_job_as_the_deploys_service_account() {
    let _turn = ONE_CONTROLLER.lock().await;
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let sa = service_account().await;
    // All namespaces, as the Deployment runs it.
    let ctl = common::start_controller_as(sa.client.clone(), common::test_config(&[])).await;
    // Ready means every list, cluster-wide, was allowed.
    eventually("the stores to sync", LIMIT, || async {
        ctl.health.is_ready().then_some(())
    })
    .await;

    // Everything below is created after the first lists, so it reaches the controller
    // only through its watches. One cluster per workload API server, a control plane and
    // a worker each.
    let ns = unique("deploy-sa");
    world::namespace(&admin, &ns).await.unwrap();
    let mut expected = Vec::new();
    for (i, server) in env.workloads.iter().enumerate() {
        let name = format!("{ns}-c{i}");
        cluster(&admin, &ns, &name, &admin_yaml(server)).await;
        for (suffix, control_plane) in [("cp-0", true), ("md-0", false)] {
            let spec = MachineSpec::new(&name, &format!("{name}-{suffix}"), control_plane);
            expected.push((i, world::machine(&admin, &ns, &spec).await.unwrap()));
        }
    }
    // A cluster whose kubeconfig Secret comes late: until then its machine fails again
    // and again, and the repeated Warning is a patch of the first Event (the Recorder's
    // series).
    let late = format!("{ns}-late");
    world::cluster(&admin, &ns, &late).await.unwrap();
    let stuck = MachineSpec::new(&late, &format!("{late}-md-0"), false);
    let stuck = world::machine(&admin, &ns, &stuck).await.unwrap();

    for (server, m) in &expected {
        ready_node(&env.workloads[*server], m).await;
        let created = eventually("a FakeNodeCreated Event", LIMIT, || async {
            let found = events(&admin, &ns, &m.spec.name, "FakeNodeCreated").await;
            (!found.is_empty()).then_some(found)
        })
        .await;
        assert_eq!(
            created[0].reporting_controller.as_deref(),
            Some("metal3-fakenode")
        );
    }
    eventually(
        "a repeated KubeconfigSecretMissing Event",
        LIMIT,
        || async {
            events(&admin, &ns, &stuck.spec.name, "KubeconfigSecretMissing")
                .await
                .into_iter()
                .find(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
        },
    )
    .await;
    world::kubeconfig_secret(
        &admin,
        &ns,
        &late,
        world::kubeconfig_data(&admin_yaml(&env.workloads[0])),
    )
    .await
    .unwrap();
    ready_node(&env.workloads[0], &stuck).await;
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_service_account_cannot_write_what_the_controller_only_reads() {
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let sa = service_account().await;
    let ns = unique("deploy-deny");
    world::namespace(&admin, &ns).await.unwrap();
    let cluster_name = format!("{ns}-c");
    world::kubeconfig_secret(
        &admin,
        &ns,
        &cluster_name,
        world::kubeconfig_data("apiVersion: v1\nkind: Config\n"),
    )
    .await
    .unwrap();
    let secret = format!("{cluster_name}-kubeconfig");
    let machine = format!("{cluster_name}-md-0");
    world::metal3_machine(&admin, &ns, &machine, &cluster_name, None, None)
        .await
        .unwrap();
    let m3m = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "infrastructure.cluster.x-k8s.io",
        "v1beta2",
        "Metal3Machine",
    ));
    let sa_m3ms: Api<DynamicObject> = Api::namespaced_with(sa.client.clone(), &ns, &m3m);
    let sa_secrets: Api<Secret> = Api::namespaced(sa.client.clone(), &ns);

    // What it needs works, so the 403s below are RBAC (a bad token would be a 401).
    let listed = sa_secrets.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(&*secret))
    );
    let listed = sa_m3ms.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|m| m.metadata.name.as_deref() == Some(&*machine))
    );

    assert_forbidden(
        "deleting a Secret",
        sa_secrets.delete(&secret, &DeleteParams::default()).await,
    );
    assert!(
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .get_opt(&secret)
            .await
            .unwrap()
            .is_some()
    );
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": unique("deploy-deny-node")}})).unwrap();
    assert_forbidden(
        "creating a Node in the management cluster",
        Api::<Node>::all(sa.client.clone())
            .create(&PostParams::default(), &node)
            .await,
    );
    assert_forbidden(
        "patching a Metal3Machine",
        sa_m3ms
            .patch(
                &machine,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"providerID": "metal3://stolen"}})),
            )
            .await,
    );
    let current = Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &m3m)
        .get(&machine)
        .await
        .unwrap();
    assert_forbidden(
        "replacing a Metal3Machine",
        sa_m3ms
            .replace(&machine, &PostParams::default(), &current)
            .await,
    );
}
