//! The manifests: a strict server-side dry-run of the base and the overlays, and what the
//! Deployment and its Pod must be.

use super::*;

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_base_and_the_prometheus_operator_overlay_pass_a_strict_server_side_dry_run() {
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let base = render("deploy").await;
    let overlay = render("deploy/overlays/prometheus-operator").await;
    assert_eq!(
        kinds(&base),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Namespace",
            "Service",
            "ServiceAccount"
        ],
        "the base applies without prometheus-operator: no ServiceMonitor"
    );
    // The overlay is the base plus the ServiceMonitor, the rest unchanged.
    let mut base_and_monitor = base.clone();
    base_and_monitor.push(one(&overlay, "ServiceMonitor").clone());
    base_and_monitor.sort_by_key(|o| (kind(o).to_string(), name(o).to_string()));
    assert_eq!(overlay, base_and_monitor);

    // A dry-run still goes through admission, which wants the namespace to exist.
    apply(&admin, one(&base, "Namespace"), false).await.unwrap();
    for object in &overlay {
        let accepted = apply(&admin, object, true)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", kind(object), name(object)));
        assert_eq!(accepted.metadata.name.as_deref(), Some(name(object)));
    }

    // The dry-run is strict, so it would have caught a misspelt field: in a built-in
    // type, and (against the real CRD schema) in the ServiceMonitor.
    let mut typo = one(&base, "Deployment").clone();
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] =
        json!(true);
    let error = apply(&admin, &typo, true).await.unwrap_err();
    assert!(
        error.to_string().contains("readOnlyRootFileSystem"),
        "{error}"
    );
    let mut typo = one(&overlay, "ServiceMonitor").clone();
    typo["spec"]["endpoints"][0]["scrapeInterval"] = json!("30s");
    let error = apply(&admin, &typo, true).await.unwrap_err();
    assert!(error.to_string().contains("scrapeInterval"), "{error}");
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn the_manifests_fit_the_binary_each_other_and_the_restricted_pod_security_standard() {
    let env = common::env().await;
    let admin = env.management.client().await.unwrap();
    let objects = render("deploy/overlays/prometheus-operator").await;
    let deployment = one(&objects, "Deployment");
    let service = one(&objects, "Service");
    let monitor = one(&objects, "ServiceMonitor");
    let account = one(&objects, "ServiceAccount");
    for object in objects.iter().filter(|o| kind(o) != "Namespace") {
        let labels = labels(object);
        assert_eq!(
            labels.get("app.kubernetes.io/name").map(String::as_str),
            Some(NAME),
            "{}",
            kind(object)
        );
        for key in ["app.kubernetes.io/component", "app.kubernetes.io/part-of"] {
            assert!(labels.contains_key(key), "{} has no {key}", kind(object));
        }
        if object["metadata"].get("namespace").is_some() {
            assert_eq!(
                object["metadata"]["namespace"],
                NAMESPACE,
                "{}",
                kind(object)
            );
        }
    }

    // No leader election: one replica, never two during a rollout.
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], name(account));
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The arguments are the real binary's, and it serves where the probes look.
    let mut argv = vec![NAME.to_string()];
    argv.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    // `run` is the binary's only subcommand: parsing proves the Deployment runs it.
    let Command::Run(args) = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the Deployment's args {argv:?}: {e}"))
        .command;
    assert_eq!(args.log_format, LogFormat::Json);
    let ports: BTreeMap<String, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["metrics"], 8080);
    // The kubelet API listens on the default bind address's port and is advertised at
    // the Pod's address ($(POD_IP) expands the variable defined before it).
    assert_eq!(
        u64::from(args.kubelet_bind_address.port()),
        ports["kubelet"]
    );
    let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
    let position = |name: &str| env.iter().position(|e| e["name"] == name);
    let (pod_ip, advertised) = (
        position("POD_IP").unwrap(),
        position("FAKENODE_KUBELET_ADDRESS").unwrap(),
    );
    assert!(pod_ip < advertised);
    assert_eq!(
        env[pod_ip]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let address = env[advertised]["value"]
        .as_str()
        .unwrap()
        .replace("$(POD_IP)", "10.1.2.3");
    let parsed = Cli::try_parse_from([NAME, "run", "--kubelet-address", &address]).unwrap();
    let Command::Run(parsed) = parsed.command;
    assert_eq!(
        parsed.kubelet_address,
        Some("10.1.2.3:10250".parse().unwrap())
    );
    assert_eq!(
        u64::from(args.metrics_bind_address.port()),
        ports["metrics"]
    );
    assert!(
        args.metrics_bind_address.ip().is_unspecified(),
        "reachable by the kubelet"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        let port = match &get["port"] {
            Value::String(name) => ports[name.as_str()],
            number => number.as_u64().unwrap(),
        };
        assert_eq!(port, 8080, "{probe}");
    }
    // The Event reporting instance.
    let pod_name = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("POD_NAME is set");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let resources = &container["resources"];
    for (kind_, resource) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            resources[kind_][resource].is_string(),
            "{kind_}.{resource} is set"
        );
    }
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));

    // The Service selects the Pod; the ServiceMonitor selects the Service and its port.
    let pod_labels = string_map(&spec["template"]["metadata"]["labels"]);
    let selector = string_map(&service["spec"]["selector"]);
    assert_eq!(selector, string_map(&spec["selector"]["matchLabels"]));
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let service_port = &service["spec"]["ports"][0];
    assert!(ports.contains_key(service_port["targetPort"].as_str().unwrap()));
    let service_labels = labels(service);
    let monitor_selector = string_map(&monitor["spec"]["selector"]["matchLabels"]);
    assert!(!monitor_selector.is_empty());
    assert!(
        monitor_selector
            .iter()
            .all(|(k, v)| service_labels.get(k) == Some(v))
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service_port["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // The binding gives the role to this very ServiceAccount.
    let binding = one(&objects, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        name(one(&objects, "ClusterRole"))
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": name(account), "namespace": NAMESPACE}])
    );
    // Read-only but for Events, and nothing by wildcard. (That this is enough is proved
    // by running the controller with it below.)
    for rule in one(&objects, "ClusterRole")["rules"].as_array().unwrap() {
        let strings = |field: &str| -> Vec<String> {
            serde_json::from_value(rule[field].clone()).unwrap_or_default()
        };
        let all: Vec<String> = ["apiGroups", "resources", "verbs"]
            .iter()
            .flat_map(|f| strings(f))
            .collect();
        assert!(!all.iter().any(|s| s.contains('*')), "{rule}");
        let events =
            strings("apiGroups") == ["events.k8s.io"] && strings("resources") == ["events"];
        if !events {
            assert_eq!(strings("verbs"), ["list", "watch"], "{rule}");
        }
    }

    // The Pod is admitted where the "restricted" Pod Security Standard is enforced...
    let ns = unique("deploy-restricted");
    let namespace: Value = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    });
    apply(&admin, &namespace, false).await.unwrap();
    let pod_object = |spec: &Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": spec,
        })
    };
    apply(&admin, &pod_object(pod), true)
        .await
        .unwrap_or_else(|e| panic!("the Pod under the restricted standard: {e}"));
    // ...which is really enforced here: without the privilege-escalation guard it is not.
    let mut weaker = pod.clone();
    weaker["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    assert_forbidden(
        "a Pod allowing privilege escalation",
        apply(&admin, &pod_object(&weaker), true).await,
    );
}
