//! The certificate-expiry annotation on control-plane KubeadmConfigs, and the RBAC of its
//! kustomize component.

use super::*;

const EXPIRY: &str = "machine.cluster.x-k8s.io/certificates-expiry";

/// A control-plane machine with its KubeadmConfig (carrying `annotations`).
async fn control_plane_with_config(
    client: &kube::Client,
    ns: &str,
    suffix: &str,
    annotations: &[(&str, &str)],
) -> CreatedMachine {
    let m = machine(client, ns, suffix, true).await;
    let annotations = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    world::kubeadm_config(client, ns, &m.spec.name, annotations)
        .await
        .unwrap();
    m
}

async fn expiry_of(client: &kube::Client, ns: &str, config: &str) -> Option<String> {
    world::kubeadm_config_annotations(client, ns, config)
        .await
        .unwrap()
        .get(EXPIRY)
        .cloned()
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn control_plane_kubeadm_configs_get_their_certificates_expiry() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[0];
    let ns = namespace_with_cluster(&mgmt, "expiry", server).await;
    let cp = control_plane_with_config(&mgmt, &ns, "cp-0", &[]).await;
    // One that carries it already (CAPI's own, say) keeps it.
    let kept = "2030-01-01T00:00:00Z";
    let annotated = control_plane_with_config(&mgmt, &ns, "cp-1", &[(EXPIRY, kept)]).await;
    let worker = machine(&mgmt, &ns, "md-0", false).await;
    let ctl = start_controller(with(
        Fidelity {
            annotate_certificate_expiry: true,
            ..Fidelity::default()
        },
        &ns,
    ))
    .await;
    for m in [&cp, &annotated, &worker] {
        ready_node(server, &m.spec.name).await;
    }
    // Annotated before the Node was created: by now it is there.
    let value = expiry_of(&mgmt, &ns, &cp.spec.name)
        .await
        .expect("the annotation");
    let expires: jiff::Timestamp = value.parse().expect("RFC 3339");
    let ahead = expires.duration_since(jiff::Timestamp::now()).as_hours();
    assert!(
        (364 * 24..=366 * 24).contains(&ahead),
        "{value}: {ahead}h ahead"
    );
    assert_eq!(
        expiry_of(&mgmt, &ns, &annotated.spec.name).await.as_deref(),
        Some(kept)
    );
    assert_eq!(ctl.errors("certificate_expiry_annotation_failed"), 0);
    ctl.stop().await;
}

/// `kustomize build` of the deploy base, with the given components, in `namespace` and
/// with a name suffix of its own (its ClusterRoles must not meet other tests' ones).
async fn render_deploy(
    namespace: &str,
    suffix: &str,
    components: &[&str],
) -> Vec<serde_json::Value> {
    let env = common::env().await;
    let kustomize = env.assets.crd_dir().with_file_name("kustomize");
    let repo = &metal3_fakenode_testkit::repo_root();
    // kustomize takes only relative paths to other kustomizations: from the temporary
    // directory up to the root, then down to the repository.
    let dir = tempfile::tempdir().unwrap();
    let depth = dir
        .path()
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count();
    let up = format!(
        "{}{}/",
        "../".repeat(depth),
        repo.strip_prefix("/").unwrap_or(repo).display()
    );
    let mut kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         namespace: {namespace}\nnameSuffix: {suffix}\nresources:\n  - {up}deploy/base\n"
    );
    if !components.is_empty() {
        kustomization.push_str("components:\n");
        for c in components {
            kustomization.push_str(&format!("  - {up}deploy/components/{c}\n"));
        }
    }
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).unwrap();
    let out = tokio::process::Command::new(&kustomize)
        .arg("build")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<serde_json::Value>(&String::from_utf8(out.stdout).unwrap())
        .unwrap()
        .into_iter()
        .filter(|o| !o.is_null())
        .collect()
}

/// Server-side applies the rendered objects of these kinds.
async fn apply_kinds(client: &kube::Client, objects: &[serde_json::Value], kinds: &[&str]) {
    for o in objects
        .iter()
        .filter(|o| kinds.contains(&o["kind"].as_str().unwrap_or("")))
    {
        let obj: kube::api::DynamicObject = serde_json::from_value(o.clone()).unwrap();
        let (group, version) = match o["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", o["apiVersion"].as_str().unwrap()),
        };
        let gvk = kube::core::GroupVersionKind::gvk(group, version, o["kind"].as_str().unwrap());
        let resource = kube::core::ApiResource::from_gvk(&gvk);
        let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &obj.metadata.name.clone().unwrap(),
            &kube::api::PatchParams::apply("fidelity-test").force(),
            &kube::api::Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e}", o["kind"]));
    }
}

/// A client with a token of the ServiceAccount `name` in `namespace`.
async fn service_account_client(
    env: &envtest::Environment,
    namespace: &str,
    name: &str,
) -> kube::Client {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let admin = env.management.client().await.unwrap();
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }))
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin, namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap();
    let mut kubeconfig = env.management.admin_kubeconfig();
    let user = kubeconfig.auth_infos[0].auth_info.as_mut().unwrap();
    *user = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    envtest::client_for(&kubeconfig).await.unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_certificate_expiry_component_grants_exactly_what_the_annotation_needs() {
    let env = common::env().await;
    let mgmt = env.management.client().await.unwrap();
    let server = &env.workloads[1];
    let ns = namespace_with_cluster(&mgmt, "expiry-rbac", server).await;
    let suffix = format!("-{ns}");
    let with_component = render_deploy(&ns, &suffix, &["certificate-expiry"]).await;
    // The component's role: get Machines, get and patch KubeadmConfigs; nothing more.
    let role = with_component
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRole"
                && o["metadata"]["name"] == format!("metal3-fakenode-certificate-expiry{suffix}")
        })
        .expect("the component's ClusterRole");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["cluster.x-k8s.io"], "resources": ["machines"], "verbs": ["get"]},
            {"apiGroups": ["bootstrap.cluster.x-k8s.io"], "resources": ["kubeadmconfigs"], "verbs": ["get", "patch"]},
        ])
    );
    // ...and it turns the flag on in the Deployment.
    let deployment = with_component
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    let env_vars = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env_vars
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "FAKENODE_ANNOTATE_CERTIFICATE_EXPIRY" && e["value"] == "true"),
        "{env_vars}"
    );

    // The base's RBAC alone does not allow it: the machine is reported, and no Node is
    // made (the annotation comes first).
    let base = render_deploy(&ns, &suffix, &[]).await;
    apply_kinds(
        &mgmt,
        &base,
        &["ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
    )
    .await;
    let cp = control_plane_with_config(&mgmt, &ns, "cp-0", &[]).await;
    let identity = service_account_client(env, &ns, &format!("metal3-fakenode{suffix}")).await;
    let ctl = common::start_controller_as(
        identity,
        with(
            Fidelity {
                annotate_certificate_expiry: true,
                ..Fidelity::default()
            },
            &ns,
        ),
    )
    .await;
    eventually("the annotation refused", LIMIT, || async {
        (ctl.errors("certificate_expiry_annotation_failed") > 0).then_some(())
    })
    .await;
    assert!(
        nodes(server)
            .await
            .get_opt(&cp.spec.name)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(expiry_of(&mgmt, &ns, &cp.spec.name).await, None);

    // With the component: the retry annotates, then the Node comes.
    apply_kinds(
        &mgmt,
        &with_component,
        &["ClusterRole", "ClusterRoleBinding"],
    )
    .await;
    ready_node(server, &cp.spec.name).await;
    assert!(expiry_of(&mgmt, &ns, &cp.spec.name).await.is_some());
    ctl.stop().await;
    // Cluster-scoped, so not cleaned up with the namespace.
    for o in with_component
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "ClusterRoleBinding")
    {
        let name = o["metadata"]["name"].as_str().unwrap();
        let result = if o["kind"] == "ClusterRole" {
            Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(mgmt.clone())
                .delete(name, &Default::default())
                .await
                .map(|_| ())
        } else {
            Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(mgmt.clone())
                .delete(name, &Default::default())
                .await
                .map(|_| ())
        };
        result.unwrap();
    }
}
