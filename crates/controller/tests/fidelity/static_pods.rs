//! Static control-plane pods as KCP reads them: the mirror Pods of kubeadm's manifests,
//! and etcd's with stacked etcd.

use super::*;

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn control_plane_nodes_get_the_static_pods_kcp_reads() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "static-pods", server).await;
    let cp = machine(&mgmt, &ns, "cp-0", true).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    // A kube-scheduler Pod by that name that is not ours (a real kubelet's): left alone.
    let foreign = format!("kube-scheduler-{}", cp.spec.name);
    foreign_pod(
        server,
        &foreign,
        &cp.spec.name,
        json!({"component": "kube-scheduler"}),
    )
    .await;

    let ctl = start_controller(with(
        Fidelity {
            static_pods: true,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    ready_node(server, &cp.spec.name).await;
    ready_node(server, &worker.spec.name).await;

    let api = pods(server).await;
    for component in ["kube-apiserver", "kube-controller-manager"] {
        let name = format!("{component}-{}", cp.spec.name);
        let pod = api.get(&name).await.unwrap();
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["component"], component);
        assert_eq!(labels["tier"], "control-plane");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "metal3-fakenode");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(cp.spec.name.as_str()));
        // What KCP's health check reads: phase Running, condition Ready True.
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"), "{name}");
        let conditions = status.conditions.clone().unwrap_or_default();
        for wanted in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: {wanted} in {conditions:?}"
            );
        }
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert!(container.ready && container.started == Some(true));
        assert!(container.state.as_ref().unwrap().running.is_some());
        assert_eq!(
            container.image,
            format!("registry.k8s.io/{component}:v1.34.1")
        );
        // The API server took it as a mirror Pod of a static pod.
        assert!(
            pod.metadata
                .annotations
                .unwrap()
                .contains_key("kubernetes.io/config.mirror")
        );
    }
    let left_alone = api.get(&foreign).await.unwrap();
    assert!(!metal3_fakenode::fake::is_ours(&left_alone.metadata));
    assert_ne!(
        left_alone.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "its status is not ours to set"
    );
    assert!(
        api.get_opt(&format!("etcd-{}", cp.spec.name))
            .await
            .unwrap()
            .is_none(),
        "no etcd Pod without stacked etcd"
    );
    assert!(
        pods_of(server, &worker.spec.name).await.is_empty(),
        "workers have no static pods"
    );
    assert_eq!(ctl.metrics.static_pods_created.get(), 2);
    ctl.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn stacked_etcd_adds_the_etcd_pod() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "stacked", server).await;
    let cp = machine(&mgmt, &ns, "cp-0", true).await;
    let ctl = start_controller(with(
        Fidelity {
            static_pods: true,
            stacked_etcd_pods: true,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    ready_node(server, &cp.spec.name).await;
    let names: BTreeSet<_> = pods_of(server, &cp.spec.name)
        .await
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    let want: BTreeSet<_> = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ]
    .iter()
    .map(|c| format!("{c}-{}", cp.spec.name))
    .collect();
    assert_eq!(names, want);
    let etcd = pods(server)
        .await
        .get(&format!("etcd-{}", cp.spec.name))
        .await
        .unwrap();
    assert_eq!(etcd.metadata.labels.unwrap()["component"], "etcd");
    assert_eq!(etcd.status.unwrap().phase.as_deref(), Some("Running"));
    ctl.stop().await;
}
