use super::*;
use crate::kinds::by_plural;
use crate::names::tests::{dns_label_strategy, p, prefix_strategy};
use proptest::prelude::*;
use serde_json::json;

fn target(group: &str, plural: &str) -> Target {
    Target::new(by_plural(group, "v1", plural).unwrap())
}

fn pods() -> Target {
    target("", "pods")
}

fn nodes() -> Target {
    target("", "nodes")
}

/// What the backing server would answer with: the stored object, as the front wrote it.
fn round_trip(prefix: &Prefix, target: &Target, object: &Value) -> Value {
    let stored = to_backing(prefix, target, object.clone()).unwrap();
    from_backing(prefix, target, stored).unwrap()
}

#[test]
fn a_pod_is_stored_in_its_clusters_namespace_on_its_clusters_node() {
    let a = p("taaaaa");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "etcd-node-0", "namespace": "kube-system", "labels": {"component": "etcd"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "node-0", "uid": "u"}]},
        "spec": {"nodeName": "node-0", "containers": []},
        "status": {"nominatedNodeName": ""},
    });
    let stored = to_backing(&a, &pods(), pod.clone()).unwrap();
    assert_eq!(stored["metadata"]["namespace"], "taaaaa-kube-system");
    assert_eq!(stored["metadata"]["name"], "etcd-node-0");
    assert_eq!(stored["metadata"]["labels"][CLUSTER_LABEL], "taaaaa");
    assert_eq!(
        stored["metadata"]["ownerReferences"][0]["name"],
        "taaaaa-node-0"
    );
    assert_eq!(stored["spec"]["nodeName"], "taaaaa-node-0");
    assert_eq!(from_backing(&a, &pods(), stored).unwrap(), pod);
}

#[test]
fn nodes_of_two_clusters_do_not_collide() {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0"}});
    let sa = to_backing(&p("taaaaa"), &nodes(), node.clone()).unwrap();
    let sb = to_backing(&p("tbbbbb"), &nodes(), node.clone()).unwrap();
    assert_ne!(sa["metadata"]["name"], sb["metadata"]["name"]);
    assert_eq!(
        from_backing(&p("taaaaa"), &nodes(), sa.clone()).unwrap(),
        node
    );
    // Read as the other cluster: the name and the label both say it is not its own.
    assert_eq!(
        from_backing(&p("tbbbbb"), &nodes(), sa)
            .unwrap_err()
            .reason(),
        "foreign_name"
    );
}

#[test]
fn an_object_of_another_cluster_is_refused_by_its_label() {
    let mut stored = to_backing(
        &p("taaaaa"),
        &pods(),
        json!({"metadata": {"name": "x", "namespace": "default"}}),
    )
    .unwrap();
    stored["metadata"]["namespace"] = json!("tbbbbb-default");
    assert_eq!(
        from_backing(&p("tbbbbb"), &pods(), stored)
            .unwrap_err()
            .reason(),
        "foreign_object"
    );
}

#[test]
fn an_object_without_the_label_is_not_shown() {
    let unlabelled = json!({"kind": "Node", "metadata": {"name": "taaaaa-node-0"}});
    assert_eq!(
        from_backing(&p("taaaaa"), &nodes(), unlabelled)
            .unwrap_err()
            .reason(),
        "missing_tenancy_label"
    );
    let no_metadata = json!({"kind": "Node"});
    assert_eq!(
        from_backing(&p("taaaaa"), &nodes(), no_metadata)
            .unwrap_err()
            .reason(),
        "missing_tenancy_label"
    );
}

#[test]
fn a_write_may_not_set_or_change_the_tenancy_label() {
    let a = p("taaaaa");
    for labels in [
        json!({CLUSTER_LABEL: "taaaaa"}),
        json!({CLUSTER_LABEL: "tbbbbb"}),
        json!({"tenancy.fakenode.metal3.io/x": ""}),
    ] {
        let pod = json!({"metadata": {"name": "x", "namespace": "default", "labels": labels}});
        assert_eq!(
            to_backing(&a, &pods(), pod).unwrap_err().reason(),
            "reserved_key"
        );
    }
    let pod = json!({"metadata": {"name": "x", "namespace": "default", "annotations": {rbac::RULES_ANNOTATION: "{}"}}});
    assert_eq!(
        to_backing(&a, &pods(), pod).unwrap_err().reason(),
        "reserved_key"
    );
    // A write without labels (an update that drops them all) gets the label back.
    let stored = to_backing(
        &a,
        &pods(),
        json!({"metadata": {"name": "x", "namespace": "default", "labels": null}}),
    )
    .unwrap();
    assert_eq!(stored["metadata"]["labels"][CLUSTER_LABEL], "taaaaa");
}

#[test]
fn a_namespace_is_mapped_with_its_name_label() {
    let a = p("taaaaa");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "metal3", "labels": {NAMESPACE_NAME_LABEL: "metal3"}}});
    let stored = to_backing(&a, &target("", "namespaces"), ns.clone()).unwrap();
    assert_eq!(stored["metadata"]["name"], "taaaaa-metal3");
    assert_eq!(
        stored["metadata"]["labels"][NAMESPACE_NAME_LABEL],
        "taaaaa-metal3"
    );
    assert_eq!(
        from_backing(&a, &target("", "namespaces"), stored).unwrap(),
        ns
    );
}

#[test]
fn each_cluster_gets_its_well_known_namespaces() {
    let created = well_known_namespaces(&p("taaaaa")).unwrap();
    let names: Vec<&str> = created
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "taaaaa-default",
            "taaaaa-kube-system",
            "taaaaa-kube-public",
            "taaaaa-kube-node-lease"
        ]
    );
    assert!(
        created
            .iter()
            .all(|n| n["metadata"]["labels"][CLUSTER_LABEL] == "taaaaa")
    );
}

#[test]
fn a_cluster_scoped_object_with_a_namespace_is_refused() {
    let node = json!({"kind": "Node", "metadata": {"name": "n", "namespace": "default"}});
    assert_eq!(
        to_backing(&p("taaaaa"), &nodes(), node)
            .unwrap_err()
            .reason(),
        "unsupported_field"
    );
}

#[test]
fn generated_names_are_mapped() {
    let a = p("taaaaa");
    let crb = target("rbac.authorization.k8s.io", "clusterrolebindings");
    let stored = to_backing(&a, &crb, json!({"metadata": {"generateName": "kubeadm-"}})).unwrap();
    assert_eq!(stored["metadata"]["generateName"], "taaaaa-kubeadm-");
    let mut answer = stored.clone();
    answer["metadata"]["name"] = json!("taaaaa-kubeadm-x7k2p");
    let read = from_backing(&a, &crb, answer).unwrap();
    assert_eq!(read["metadata"]["name"], "kubeadm-x7k2p");
    assert_eq!(read["metadata"]["generateName"], "kubeadm-");
}

#[test]
fn owner_references_of_unknown_kinds_are_refused() {
    let pod = json!({"metadata": {"name": "x", "namespace": "d",
        "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "u"}]}});
    assert_eq!(
        to_backing(&p("taaaaa"), &pods(), pod).unwrap_err().reason(),
        "unknown_kind"
    );
    // Namespaced owners are in the object's namespace: kept as they are.
    let pod = json!({"metadata": {"name": "x", "namespace": "d",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u"}]}});
    let stored = to_backing(&p("taaaaa"), &pods(), pod).unwrap();
    assert_eq!(stored["metadata"]["ownerReferences"][0]["name"], "rs");
}

#[test]
fn kinds_that_do_not_fit_the_target_are_refused() {
    let a = p("taaaaa");
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    assert_eq!(
        to_backing(&a, &pods(), service).unwrap_err().reason(),
        "kind_mismatch"
    );
    let wrong_group =
        json!({"apiVersion": "example.com/v1", "kind": "Pod", "metadata": {"name": "x"}});
    assert_eq!(
        to_backing(&a, &pods(), wrong_group).unwrap_err().reason(),
        "kind_mismatch"
    );
    assert_eq!(
        to_backing(&a, &pods(), json!([])).unwrap_err().reason(),
        "malformed"
    );
    let list =
        json!({"kind": "List", "items": [{"apiVersion": "v1", "kind": "Service", "metadata": {}}]});
    assert_eq!(
        from_backing(&a, &pods(), list).unwrap_err().reason(),
        "unknown_kind"
    );
}

#[test]
fn malformed_fields_are_refused_not_skipped() {
    let a = p("taaaaa");
    for pod in [
        json!({"metadata": "x"}),
        json!({"metadata": {"namespace": 7}}),
        json!({"metadata": {"labels": []}}),
        json!({"metadata": {"ownerReferences": {}}}),
        json!({"metadata": {"name": "x"}, "spec": {"nodeName": 3}}),
        json!({"metadata": {"name": "x"}, "spec": []}),
    ] {
        assert_eq!(
            to_backing(&a, &pods(), pod.clone()).unwrap_err().reason(),
            "malformed",
            "{pod}"
        );
    }
}

#[test]
fn service_account_token_secrets_are_refused() {
    let secret = json!({"kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "t", "namespace": "kube-system", "annotations": {"kubernetes.io/service-account.name": "default"}}});
    assert_eq!(
        to_backing(&p("taaaaa"), &target("", "secrets"), secret)
            .unwrap_err()
            .reason(),
        "unsupported_field"
    );
}

#[test]
fn events_name_their_object_in_the_mapped_namespace() {
    let a = p("taaaaa");
    let event = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "e", "namespace": "kube-system"},
        "involvedObject": {"kind": "Pod", "namespace": "kube-system", "name": "etcd-node-0"},
        "source": {"host": "node-0"}});
    let stored = to_backing(&a, &target("", "events"), event.clone()).unwrap();
    assert_eq!(stored["involvedObject"]["namespace"], "taaaaa-kube-system");
    assert_eq!(stored["source"]["host"], "node-0");
    assert_eq!(round_trip(&a, &target("", "events"), &event), event);
    let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "e", "namespace": "default"},
        "regarding": {"kind": "Node", "name": "node-0", "namespace": ""}});
    assert_eq!(
        round_trip(&a, &target("events.k8s.io", "events"), &event),
        event
    );
}

#[test]
fn volume_attachments_follow_their_node() {
    let a = p("taaaaa");
    let va = json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": "csi-1"},
        "spec": {"attacher": "x", "nodeName": "node-0", "source": {"persistentVolumeName": "pv-1"}}});
    let t = target("storage.k8s.io", "volumeattachments");
    let stored = to_backing(&a, &t, va.clone()).unwrap();
    assert_eq!(stored["spec"]["nodeName"], "taaaaa-node-0");
    assert_eq!(
        stored["spec"]["source"]["persistentVolumeName"],
        "taaaaa-pv-1"
    );
    assert_eq!(from_backing(&a, &t, stored).unwrap(), va);
}

#[test]
fn rbac_objects_round_trip_through_the_object_mapping() {
    let a = p("taaaaa");
    let cr = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "kubeadm:get-nodes"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]});
    let t = target("rbac.authorization.k8s.io", "clusterroles");
    let stored = to_backing(&a, &t, cr.clone()).unwrap();
    assert_eq!(stored["metadata"]["name"], "taaaaa-kubeadm:get-nodes");
    assert!(stored.get("rules").is_none());
    assert_eq!(from_backing(&a, &t, stored.clone()).unwrap(), cr);
    // A metadata-only view hides the rules record too.
    let partial = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": stored["metadata"].clone()});
    let read = from_backing(&a, &t, partial).unwrap();
    assert_eq!(read["metadata"], json!({"name": "kubeadm:get-nodes"}));
}

#[test]
fn managed_fields_do_not_show_the_fronts_keys() {
    let a = p("taaaaa");
    let stored = json!({"kind": "Node", "metadata": {"name": "taaaaa-n", "labels": {CLUSTER_LABEL: "taaaaa", "x": "y"},
        "managedFields": [{"manager": "m", "fieldsV1": {"f:metadata": {"f:labels": {
            format!("f:{CLUSTER_LABEL}"): {}, "f:x": {}}}}},
            {"manager": "n", "fieldsV1": {"f:metadata": {"f:labels": {format!("f:{CLUSTER_LABEL}"): {}}}, "f:spec": {}}}]}});
    let read = from_backing(&a, &nodes(), stored).unwrap();
    assert_eq!(
        read["metadata"]["managedFields"],
        json!([{"manager": "m", "fieldsV1": {"f:metadata": {"f:labels": {"f:x": {}}}}},
               {"manager": "n", "fieldsV1": {"f:spec": {}}}])
    );
}

#[test]
fn lists_are_mapped_item_by_item() {
    let a = p("taaaaa");
    let pod = |ns: &str, node: &str| {
        to_backing(
            &a,
            &pods(),
            json!({"metadata": {"name": "p", "namespace": ns}, "spec": {"nodeName": node}}),
        )
        .unwrap()
    };
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
        "items": [pod("default", "n0"), pod("kube-system", "n1")]});
    let read = from_backing(&a, &pods(), list).unwrap();
    assert_eq!(read["items"][0]["metadata"]["namespace"], "default");
    assert_eq!(read["items"][1]["spec"]["nodeName"], "n1");
    assert_eq!(read["metadata"]["resourceVersion"], "7");
    // One item of another cluster spoils the whole answer: never shown, never skipped.
    let mut list = json!({"kind": "PodList", "items": [pod("default", "n0")]});
    list["items"][0]["metadata"]["labels"][CLUSTER_LABEL] = json!("tbbbbb");
    assert_eq!(
        from_backing(&a, &pods(), list).unwrap_err().reason(),
        "foreign_object"
    );
}

#[test]
fn partial_object_metadata_lists_are_mapped() {
    let a = p("taaaaa");
    let stored = to_backing(&a, &nodes(), json!({"metadata": {"name": "n0"}})).unwrap();
    let list = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": stored["metadata"].clone()}]});
    let read = from_backing(&a, &nodes(), list).unwrap();
    assert_eq!(read["items"][0]["metadata"], json!({"name": "n0"}));
}

#[test]
fn tables_have_names_and_nodes_mapped() {
    let a = p("taaaaa");
    let stored = to_backing(
        &a,
        &pods(),
        json!({"metadata": {"name": "p", "namespace": "default"}}),
    )
    .unwrap();
    let table = json!({"apiVersion": "meta.k8s.io/v1", "kind": "Table",
        "columnDefinitions": [{"name": "Name", "format": "name"}, {"name": "Node", "format": ""},
                              {"name": "Nominated Node", "format": ""}, {"name": "IP", "format": ""}],
        "rows": [{"cells": ["p", "taaaaa-n0", "<none>", "10.0.0.1"],
                  "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": stored["metadata"].clone()}}]});
    let read = from_backing(&a, &pods(), table).unwrap();
    assert_eq!(
        read["rows"][0]["cells"],
        json!(["p", "n0", "<none>", "10.0.0.1"])
    );
    assert_eq!(
        read["rows"][0]["object"]["metadata"]["namespace"],
        "default"
    );

    let node_table = json!({"kind": "Table", "columnDefinitions": [{"name": "Name", "format": "name"}],
        "rows": [{"cells": ["taaaaa-n0"]}]});
    assert_eq!(
        from_backing(&a, &nodes(), node_table).unwrap()["rows"][0]["cells"][0],
        "n0"
    );
    let crb = target("rbac.authorization.k8s.io", "clusterrolebindings");
    let table = json!({"kind": "Table", "rows": []});
    assert_eq!(
        from_backing(&a, &crb, table).unwrap_err().reason(),
        "table_unsupported"
    );
}

#[test]
fn watch_events_bookmarks_and_errors() {
    let a = p("taaaaa");
    let stored = to_backing(&a, &nodes(), json!({"metadata": {"name": "n0"}})).unwrap();
    let event = json!({"type": "ADDED", "object": stored});
    let read = watch_event_from_backing(&a, &nodes(), event).unwrap();
    assert_eq!(read["object"]["metadata"]["name"], "n0");

    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
        "metadata": {"resourceVersion": "12", "annotations": {"k8s.io/initial-events-end": "true"}}}});
    assert_eq!(
        watch_event_from_backing(&a, &nodes(), bookmark.clone()).unwrap(),
        bookmark
    );
    let named = json!({"type": "BOOKMARK", "object": {"metadata": {"name": "tbbbbb-n", "resourceVersion": "1"}}});
    assert_eq!(
        watch_event_from_backing(&a, &nodes(), named)
            .unwrap_err()
            .reason(),
        "malformed"
    );

    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "too old resource version: 1 (5)", "reason": "Expired", "code": 410}});
    assert_eq!(
        watch_event_from_backing(&a, &nodes(), gone.clone()).unwrap(),
        gone
    );
    let not_status = json!({"type": "ERROR", "object": {"kind": "Node"}});
    assert_eq!(
        watch_event_from_backing(&a, &nodes(), not_status)
            .unwrap_err()
            .reason(),
        "malformed"
    );
    let unknown = json!({"type": "RESYNC", "object": {}});
    assert_eq!(
        watch_event_from_backing(&a, &nodes(), unknown)
            .unwrap_err()
            .reason(),
        "unknown_watch_event"
    );
}

#[test]
fn status_answers_speak_of_the_clients_names() {
    let a = p("taaaaa");
    let not_found = json!({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
        "message": "nodes \"taaaaa-node-0\" not found",
        "details": {"name": "taaaaa-node-0", "kind": "nodes"}});
    let read = from_backing(&a, &nodes(), not_found).unwrap();
    assert_eq!(read["message"], "nodes \"node-0\" not found");
    assert_eq!(read["details"]["name"], "node-0");
    let forbidden = json!({"kind": "Status", "message":
        "pods \"taaaaa-p\" is forbidden: unable to create new content in namespace taaaaa-default because it is being terminated",
        "details": {"name": "taaaaa-p", "kind": "pods"}});
    let read = from_backing(&a, &pods(), forbidden).unwrap();
    // A Pod's name is not mapped, so it stays; the namespace is put back.
    assert_eq!(
        read["message"],
        "pods \"taaaaa-p\" is forbidden: unable to create new content in namespace default because it is being terminated"
    );
    assert_eq!(read["details"]["name"], "taaaaa-p");
}

#[test]
fn subresource_bodies() {
    let a = p("taaaaa");
    let eviction = Target {
        resource: pods().resource,
        subresource: Some(Subresource::Eviction),
    };
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p", "namespace": "default"}});
    let stored = to_backing(&a, &eviction, body).unwrap();
    assert_eq!(
        stored["metadata"],
        json!({"name": "p", "namespace": "taaaaa-default"})
    );
    let scale = Target {
        resource: target("apps", "deployments").resource,
        subresource: Some(Subresource::Scale),
    };
    let body = json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "coredns", "namespace": "kube-system"}, "spec": {"replicas": 2}});
    assert_eq!(round_trip(&a, &scale, &body), body);
    let status = Target {
        resource: pods().resource,
        subresource: Some(Subresource::Status),
    };
    let body = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "status": {"phase": "Running"}});
    assert_eq!(round_trip(&a, &status, &body), body);
    let forward = Target {
        resource: pods().resource,
        subresource: Some(Subresource::PortForward),
    };
    assert_eq!(
        to_backing(&a, &forward, json!({})).unwrap_err().reason(),
        "unsupported_field"
    );
    assert_eq!(
        to_backing(&a, &eviction, json!({"kind": "Scale"}))
            .unwrap_err()
            .reason(),
        "kind_mismatch"
    );
}

fn labels_strategy() -> impl Strategy<Value = Option<Map<String, Value>>> {
    proptest::option::of(
        proptest::collection::btree_map(
            "[a-z]([a-z0-9.]{0,8}/)?[a-z0-9]{1,8}",
            "[a-z0-9]{0,8}",
            1..4,
        )
        .prop_filter("reserved", |m| m.keys().all(|k| !names::is_reserved_key(k)))
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
    )
}

fn node_name_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(dns_label_strategy(20), 1..4).prop_map(|labels| labels.join("."))
}

fn pod_strategy() -> impl Strategy<Value = Value> {
    (dns_label_strategy(50), "[a-z0-9.-]{1,40}", labels_strategy(), proptest::option::of(node_name_strategy()))
        .prop_map(|(ns, name, labels, node)| {
            let mut metadata = json!({"name": name, "namespace": ns});
            if let Some(labels) = labels {
                metadata["labels"] = Value::Object(labels);
            }
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": []}});
            if let Some(node) = node {
                pod["spec"]["nodeName"] = json!(node);
            }
            pod
        })
}

fn binding_strategy() -> impl Strategy<Value = Value> {
    let subject = prop_oneof![
        ("(User|Group)", ".{1,20}").prop_map(|(kind, name)| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name})),
        (dns_label_strategy(40), "[a-z0-9-]{1,20}").prop_map(|(ns, name)| json!({"kind": "ServiceAccount", "name": name, "namespace": ns})),
    ];
    ("[a-z:.-]{1,30}", "[a-z:.-]{1,30}", proptest::collection::vec(subject, 0..4)).prop_map(|(name, role, subjects)| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subjects})
    })
    .prop_filter("path segment", |b| {
        let bad = |s: &str| s == "." || s == "..";
        !bad(b["metadata"]["name"].as_str().unwrap_or(".")) && !bad(b["roleRef"]["name"].as_str().unwrap_or("."))
    })
}

proptest! {
    #[test]
    fn pods_round_trip(prefix in prefix_strategy(), pod in pod_strategy()) {
        prop_assert_eq!(round_trip(&prefix, &pods(), &pod), pod);
    }

    #[test]
    fn pods_of_two_clusters_never_collide(a in prefix_strategy(), b in prefix_strategy(), pod in pod_strategy()) {
        prop_assume!(a != b);
        let sa = to_backing(&a, &pods(), pod.clone()).unwrap();
        let sb = to_backing(&b, &pods(), pod).unwrap();
        prop_assert_ne!(&sa["metadata"]["namespace"], &sb["metadata"]["namespace"]);
        prop_assert!(from_backing(&b, &pods(), sa).is_err());
    }

    #[test]
    fn bindings_round_trip_and_grant_nothing(prefix in prefix_strategy(), binding in binding_strategy()) {
        let t = target("rbac.authorization.k8s.io", "clusterrolebindings");
        let stored = to_backing(&prefix, &t, binding.clone()).unwrap();
        let own = format!("{}-", prefix);
        let space = format!("tenancy.fakenode.metal3.io:{}:", prefix);
        let mapped_role = stored["roleRef"]["name"].as_str().unwrap();
        prop_assert!(mapped_role.starts_with(&own));
        for subject in stored["subjects"].as_array().unwrap() {
            match subject["kind"].as_str().unwrap() {
                "ServiceAccount" => prop_assert!(subject["namespace"].as_str().unwrap().starts_with(&own)),
                _ => prop_assert!(subject["name"].as_str().unwrap().starts_with(&space)),
            }
        }
        prop_assert_eq!(from_backing(&prefix, &t, stored).unwrap(), binding);
    }

    #[test]
    fn lists_and_watch_events_round_trip(
        prefix in prefix_strategy(),
        items in proptest::collection::vec(pod_strategy(), 0..5),
        kind in "(ADDED|MODIFIED|DELETED)",
    ) {
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "3"}, "items": items});
        let mut stored = list.clone();
        map_answer(Direction::ToBacking, &prefix, &pods(), &mut stored).unwrap();
        prop_assert_eq!(from_backing(&prefix, &pods(), stored).unwrap(), list.clone());
        for item in list["items"].as_array().unwrap() {
            let event = json!({"type": kind, "object": item});
            let mut stored = event.clone();
            map_event(Direction::ToBacking, &prefix, &pods(), &mut stored).unwrap();
            prop_assert_eq!(watch_event_from_backing(&prefix, &pods(), stored).unwrap(), event);
        }
    }

    #[test]
    fn any_client_body_is_mapped_or_refused(prefix in prefix_strategy(), body in json_strategy()) {
        // Whatever a client sends: a mapped object or a typed refusal, never a panic; and
        // what is stored always carries this cluster's label.
        if let Ok(stored) = to_backing(&prefix, &pods(), body) {
            prop_assert_eq!(stored["metadata"]["labels"][CLUSTER_LABEL].as_str(), Some(prefix.as_str()));
        }
    }
}

fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        "[a-z.:/-]{0,12}".prop_map(Value::String),
        Just(json!(CLUSTER_LABEL)),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_string()),
                    Just("labels".to_string()),
                    Just("name".to_string()),
                    Just("namespace".to_string()),
                    Just("spec".to_string()),
                    Just("nodeName".to_string()),
                    Just("kind".to_string()),
                    Just(CLUSTER_LABEL.to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
