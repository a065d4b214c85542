//! The local control plane is real: upstream CRDs, schemas that reject bad objects, RBAC.

mod common;

use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::runtime::wait::Condition;
use kube::runtime::wait::conditions::is_crd_established;
use metal3_fakenode_testkit::envtest::{self, crds};
use metal3_fakenode_testkit::simulate::world::{self, dynamic};
use serde_json::json;

fn object(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).expect("test object is valid JSON for a DynamicObject")
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn upstream_crds_install_and_are_established() {
    let env = common::env().await;
    let client = env.management.client().await.unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let wanted = [
        "clusters.cluster.x-k8s.io",
        "machines.cluster.x-k8s.io",
        "machinesets.cluster.x-k8s.io",
        "machinedeployments.cluster.x-k8s.io",
        "kubeadmcontrolplanes.controlplane.cluster.x-k8s.io",
        "kubeadmconfigs.bootstrap.cluster.x-k8s.io",
        "kubeadmconfigtemplates.bootstrap.cluster.x-k8s.io",
        "metal3clusters.infrastructure.cluster.x-k8s.io",
        "metal3machines.infrastructure.cluster.x-k8s.io",
        "metal3machinetemplates.infrastructure.cluster.x-k8s.io",
        "metal3datas.infrastructure.cluster.x-k8s.io",
        "metal3datatemplates.infrastructure.cluster.x-k8s.io",
        "baremetalhosts.metal3.io",
    ];
    for name in wanted {
        let crd = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            is_crd_established().matches_object(Some(&crd)),
            "{name} is not Established"
        );
    }
    // Every file the assets hold was installed, not only the ones named above.
    let files = crds::crd_files(&env.assets).unwrap();
    assert!(files.len() >= wanted.len());
    for file in files {
        let name = crds::read_crd(&file).unwrap().metadata.name.unwrap();
        api.get(&name)
            .await
            .unwrap_or_else(|e| panic!("{name} from {}: {e}", file.display()));
    }
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn objects_shaped_like_capi_capm3_and_bmo_write_them_are_accepted() {
    let env = common::env().await;
    let client = env.management.client().await.unwrap();
    let ns = common::unique("schemas");
    world::namespace(&client, &ns)
        .await
        .expect("create namespace");

    let bmh = dynamic(&client, &ns, "metal3.io", "v1alpha1", "BareMetalHost");
    let created = bmh
        .create(&PostParams::default(), &object(json!({
            "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
            "metadata": {"name": "node-0", "namespace": ns},
            "spec": {
                "online": true,
                "bootMACAddress": "00:60:2f:31:81:01",
                "bmc": {"address": "ipmi://192.168.111.1:6230", "credentialsName": "node-0-bmc-secret"},
                "consumerRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2", "kind": "Metal3Machine", "name": "cp-0", "namespace": ns},
            },
        })))
        .await
        .expect("BareMetalHost accepted");
    // BMO writes status through the status subresource.
    let mut with_status = created.clone();
    with_status.data["status"] = json!({
        "operationalStatus": "OK",
        "provisioning": {"state": "provisioned", "ID": "7c4a3e1e-0000-4000-8000-000000000000", "image": {"url": "http://172.22.0.1/image.qcow2"}},
        "poweredOn": true,
        "errorMessage": "",
        "hardwareProfile": "",
        "goodCredentials": {},
        "triedCredentials": {},
    });
    let updated = bmh
        .replace_status("node-0", &PostParams::default(), &with_status)
        .await
        .expect("BareMetalHost status accepted");
    assert_eq!(
        updated.data["status"]["provisioning"]["state"],
        "provisioned"
    );

    dynamic(&client, &ns, "cluster.x-k8s.io", "v1beta2", "Cluster")
        .create(&PostParams::default(), &object(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
            "metadata": {"name": "test1", "namespace": ns},
            "spec": {
                "controlPlaneEndpoint": {"host": "192.168.111.249", "port": 6443},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "Metal3Cluster", "name": "test1"},
                "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane", "name": "test1"},
            },
        })))
        .await
        .expect("Cluster accepted");

    let machines = dynamic(&client, &ns, "cluster.x-k8s.io", "v1beta2", "Machine");
    let machine = machines
        .create(&PostParams::default(), &object(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "test1-cp-abcde", "namespace": ns, "labels": {
                "cluster.x-k8s.io/cluster-name": "test1",
                "cluster.x-k8s.io/control-plane": "",
            }},
            "spec": {
                "clusterName": "test1",
                "version": "v1.34.1",
                "bootstrap": {"dataSecretName": "test1-cp-abcde"},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "Metal3Machine", "name": "cp-0"},
            },
        })))
        .await
        .expect("Machine accepted");

    dynamic(&client, &ns, "infrastructure.cluster.x-k8s.io", "v1beta2", "Metal3Machine")
        .create(&PostParams::default(), &object(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2", "kind": "Metal3Machine",
            "metadata": {"name": "cp-0", "namespace": ns,
                "annotations": {"metal3.io/BareMetalHost": format!("{ns}/node-0")},
                "labels": {"cluster.x-k8s.io/cluster-name": "test1"},
                "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                    "name": "test1-cp-abcde", "uid": machine.metadata.uid.clone().unwrap(),
                    "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"image": {"url": "http://172.22.0.1/image.qcow2",
                "checksum": "http://172.22.0.1/image.qcow2.sha256sum", "checksumType": "sha256", "format": "qcow2"}},
        })))
        .await
        .expect("Metal3Machine accepted");

    // The real schemas reject what upstream would reject: a Machine needs its clusterName.
    let err = machines
        .create(&PostParams::default(), &object(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "broken", "namespace": ns},
            "spec": {"bootstrap": {"dataSecretName": "x"},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "Metal3Machine", "name": "x"}},
        })))
        .await
        .expect_err("a Machine without clusterName must be rejected");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );
    assert!(err.to_string().contains("clusterName"), "{err}");

    // ... and a BareMetalHost with a bootMode outside its enum.
    let err = bmh
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": "bad-boot-mode", "namespace": ns},
                "spec": {"online": true, "bootMode": "floppy"},
            })),
        )
        .await
        .expect_err("an unknown bootMode must be rejected");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_non_admin_user_creates_nodes_in_a_workload_server_only_as_rbac_allows() {
    let env = common::env().await;
    let workload = &env.workloads[1];
    let admin = workload.client().await.unwrap();
    let user = common::unique("fakenode-user");

    let role: ClusterRole = ClusterRole {
        metadata: kube::api::ObjectMeta {
            name: Some(user.clone()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["nodes".into()]),
            verbs: vec!["create".into(), "get".into()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(user.clone()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: user.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.clone(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The kubeconfig goes through YAML, as it would through a CAPI kubeconfig Secret.
    let yaml =
        envtest::kubeconfig_yaml(&workload.kubeconfig_for_user(&user, None).unwrap()).unwrap();
    let parsed = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let as_user = envtest::client_for(&parsed).await.unwrap();
    let nodes: Api<Node> = Api::all(as_user.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": user}})).unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("granted: create nodes");
    assert_eq!(
        nodes.get(&user).await.unwrap().metadata.name.as_deref(),
        Some(user.as_str())
    );

    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(
        forbidden(
            nodes
                .delete(&user, &DeleteParams::default())
                .await
                .map(|_| ())
        ),
        "delete nodes was not granted"
    );
    assert!(
        forbidden(
            Api::<Secret>::all(as_user.clone())
                .list(&Default::default())
                .await
                .map(|_| ())
        ),
        "list secrets was not granted"
    );

    // The same user does not exist for another, independent API server.
    let other = env.workloads[0].kubeconfig_for_user(&user, None).unwrap();
    let foreign = envtest::client_for(&other).await.unwrap();
    let err = Api::<Node>::all(foreign)
        .get(&user)
        .await
        .expect_err("no such grant on workload-0");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403 || s.code == 404),
        "{err}"
    );
    // And the Node lives only in workload-1.
    assert!(
        Api::<Node>::all(env.workloads[0].client().await.unwrap())
            .get_opt(&user)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_killed_api_server_restarts_as_it_was() {
    let env = common::env().await;
    let name = common::unique("restarted");
    // Its own server: killing a shared one would fail the other tests.
    let mut server = envtest::ApiServer::start(&env.assets, env.etcd(), &name)
        .await
        .unwrap();
    let (url, pid) = (server.url().to_string(), server.pid());
    let client = server.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();

    server.kill();
    assert!(nodes.get(&name).await.is_err(), "a killed server answers");

    server.restart().await.unwrap();
    assert_eq!(server.url(), url, "same port");
    assert_ne!(server.pid(), pid, "a new process");
    // The client made before the kill still works: same port, same PKI, same etcd prefix,
    // which still holds the Node.
    assert_eq!(nodes.get(&name).await.unwrap().metadata.name, Some(name));
    // And it restarts again, as a fault test may need.
    server.kill();
    server.restart().await.unwrap();
    Api::<Node>::all(client)
        .list(&Default::default())
        .await
        .unwrap();
}
