//! Each rule of a strategic merge patch, and the patches real clients send, checked against
//! what the API server answers.

mod common;

use common::{deployment, node, patched, pod, refused};
use serde_json::{Value, json};
use strategic_merge::{Error, MAX_DEPTH, Schema, apply};

fn names(list: &Value) -> Vec<Value> {
    list.as_array()
        .map(|items| items.iter().map(|i| i["name"].clone()).collect())
        .unwrap_or_default()
}

fn containers(names: &[&str]) -> Value {
    let items: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
    json!({"spec": {"containers": items}})
}

// ---- the clients' patches ----

fn four_conditions() -> Value {
    let condition = |t: &str, s: &str| {
        json!({"type": t, "status": s, "lastHeartbeatTime": "2025-01-01T00:00:00Z",
               "lastTransitionTime": "2024-12-01T00:00:00Z", "reason": format!("Kubelet{t}")})
    };
    json!({
        "metadata": {"name": "node-0", "resourceVersion": "41"},
        "status": {"conditions": [
            condition("MemoryPressure", "False"),
            condition("DiskPressure", "False"),
            condition("PIDPressure", "False"),
            condition("Ready", "True"),
        ]},
    })
}

#[test]
fn kubelet_heartbeat_updates_only_ready() {
    let patch = json!({"status": {"conditions": [
        {"type": "Ready", "lastHeartbeatTime": "2025-01-01T00:00:40Z"}
    ]}});
    let result = patched(&node(), four_conditions(), patch);
    let mut expected = four_conditions();
    expected["status"]["conditions"][3]["lastHeartbeatTime"] = json!("2025-01-01T00:00:40Z");
    assert_eq!(result, expected);
}

#[test]
fn kubelet_heartbeat_with_set_element_order() {
    // The kubelet's patch as it computes it: every condition named in order, the changed
    // ones sent.
    let patch = json!({"status": {
        "$setElementOrder/conditions": [
            {"type": "MemoryPressure"}, {"type": "DiskPressure"}, {"type": "PIDPressure"}, {"type": "Ready"}
        ],
        "conditions": [
            {"type": "DiskPressure", "lastHeartbeatTime": "2025-01-01T00:00:40Z"},
            {"type": "Ready", "lastHeartbeatTime": "2025-01-01T00:00:40Z"}
        ]
    }});
    let result = patched(&node(), four_conditions(), patch);
    let mut expected = four_conditions();
    for i in [1, 3] {
        expected["status"]["conditions"][i]["lastHeartbeatTime"] = json!("2025-01-01T00:00:40Z");
    }
    assert_eq!(result, expected);
}

#[test]
fn cluster_api_node_patch() {
    let original = json!({
        "metadata": {"name": "n", "resourceVersion": "7", "labels": {"a": "1", "b": "2"},
                     "annotations": {"keep": "x", "drop": "y"}},
        "spec": {"taints": [
            {"key": "node.cluster.x-k8s.io/uninitialized", "effect": "NoSchedule"},
            {"key": "other", "effect": "NoExecute"}
        ]},
    });
    let patch = json!({
        "metadata": {"resourceVersion": "7", "labels": {"b": "3", "c": "4"},
                     "annotations": {"drop": null, "cluster.x-k8s.io/machine": "m"}},
        "spec": {"taints": [{"key": "other", "effect": "NoExecute"}]},
    });
    let result = patched(&node(), original, patch);
    assert_eq!(
        result,
        json!({
            "metadata": {"name": "n", "resourceVersion": "7", "labels": {"a": "1", "b": "3", "c": "4"},
                         "annotations": {"keep": "x", "cluster.x-k8s.io/machine": "m"}},
            "spec": {"taints": [{"key": "other", "effect": "NoExecute"}]},
        })
    );
}

#[test]
fn provider_id_cordon_and_label_removal() {
    let original = json!({"metadata": {"labels": {"role": "worker"}}, "spec": {}});
    let result = patched(
        &node(),
        original,
        json!({"spec": {"providerID": "metal3://ns/bmh/m", "unschedulable": true},
               "metadata": {"labels": {"role": null}}}),
    );
    assert_eq!(
        result,
        json!({"metadata": {"labels": {}},
               "spec": {"providerID": "metal3://ns/bmh/m", "unschedulable": true}})
    );
}

#[test]
fn taints_are_replaced_and_null_deletes_them() {
    let original = json!({"spec": {"taints": [{"key": "a"}, {"key": "b"}]}});
    let replaced = patched(
        &node(),
        original.clone(),
        json!({"spec": {"taints": [{"key": "c"}]}}),
    );
    assert_eq!(replaced, json!({"spec": {"taints": [{"key": "c"}]}}));
    let deleted = patched(&node(), original, json!({"spec": {"taints": null}}));
    assert_eq!(deleted, json!({"spec": {}}));
}

// ---- objects ----

#[test]
fn objects_merge_recursively() {
    let original = json!({"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": [1, 2], "g": "x"});
    let patch = json!({"a": {"c": {"d": null, "x": 9}}, "f": {"now": "an object"}, "g": {"h": 1}});
    let result = patched(&Schema::default(), original, patch);
    assert_eq!(
        result,
        json!({"a": {"b": 1, "c": {"e": 3, "x": 9}}, "f": {"now": "an object"}, "g": {"h": 1}})
    );
}

#[test]
fn new_fields_lose_their_nulls_but_keep_null_list_items() {
    let patch =
        json!({"new": {"a": null, "b": {"c": null, "d": 1, "$patch": null}, "l": ["x", null]}});
    let result = patched(&Schema::default(), json!({"keep": null}), patch);
    assert_eq!(
        result,
        json!({"keep": null, "new": {"b": {"d": 1}, "l": ["x", null]}})
    );
}

#[test]
fn patch_replace_in_an_object() {
    let original = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
    let patch = json!({"metadata": {"labels": {"$patch": "replace", "c": "3", "d": null}}});
    let result = patched(&node(), original, patch);
    assert_eq!(result, json!({"metadata": {"labels": {"c": "3"}}}));

    let whole = patched(
        &node(),
        json!({"a": 1, "b": 2}),
        json!({"$patch": "replace", "c": 3}),
    );
    assert_eq!(whole, json!({"c": 3}));
}

#[test]
fn patch_delete_in_an_object_leaves_it_empty() {
    let original = json!({"metadata": {"labels": {"a": "1"}, "name": "n"}});
    let patch = json!({"metadata": {"labels": {"$patch": "delete"}}});
    assert_eq!(
        patched(&node(), original, patch),
        json!({"metadata": {"labels": {}, "name": "n"}})
    );
    // A field the original lacks stays absent, as does any object carrying a directive.
    let absent = patched(
        &node(),
        json!({"metadata": {}}),
        json!({"metadata": {"labels": {"$patch": "delete"}, "annotations": {"$patch": "replace", "a": "b"}}}),
    );
    assert_eq!(absent, json!({"metadata": {}}));
}

#[test]
fn patch_merge_and_unknown_directives_are_refused() {
    let original = json!({"metadata": {"labels": {"a": "1"}}});
    let merge = refused(
        &node(),
        original.clone(),
        json!({"metadata": {"labels": {"$patch": "merge", "b": "2"}}}),
    );
    assert_eq!(merge.reason(), "merge_directive");
    let unknown = refused(
        &node(),
        original,
        json!({"metadata": {"labels": {"$patch": "foo"}}}),
    );
    assert_eq!(
        unknown.to_string(),
        "unknown directive $patch: foo in `metadata.labels`"
    );
    assert_eq!(unknown.reason(), "unknown_directive");
}

#[test]
fn retain_keys_clears_unlisted_fields() {
    let original = json!({"spec": {"replicas": 1, "strategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}
    }}});
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
    assert_eq!(
        patched(&deployment(), original.clone(), patch),
        json!({"spec": {"replicas": 1, "strategy": {"type": "Recreate"}}})
    );
    // Null fields and other directives need not be listed.
    let with_null = json!({"spec": {"strategy": {
        "$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null
    }}});
    assert_eq!(
        patched(&deployment(), original.clone(), with_null),
        json!({"spec": {"replicas": 1, "strategy": {"type": "Recreate"}}})
    );
    let unlisted = json!({"spec": {"strategy": {
        "$retainKeys": ["type"], "type": "RollingUpdate", "rollingUpdate": {"maxSurge": "1"}
    }}});
    let e = refused(&deployment(), original, unlisted);
    assert_eq!(e.reason(), "not_retained");
    assert!(e.to_string().contains("`rollingUpdate`"), "{e}");
}

#[test]
fn retain_keys_switches_a_volume_source() {
    let original = json!({"spec": {"volumes": [
        {"name": "data", "emptyDir": {"medium": "Memory"}},
        {"name": "logs", "emptyDir": {}}
    ]}});
    let patch = json!({"spec": {"volumes": [
        {"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/srv"}}
    ]}});
    assert_eq!(
        patched(&pod(), original, patch),
        json!({"spec": {"volumes": [
            {"name": "data", "hostPath": {"path": "/srv"}},
            {"name": "logs", "emptyDir": {}}
        ]}})
    );
}

// ---- lists merged by key ----

#[test]
fn keyed_items_merge_recursively_and_new_ones_are_added() {
    let original = json!({"spec": {"containers": [
        {"name": "app", "image": "app:1",
         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
         "ports": [{"containerPort": 80, "protocol": "TCP"}],
         "args": ["--a", "--b"]},
        {"name": "sidecar", "image": "sidecar:1"}
    ]}});
    let patch = json!({"spec": {"containers": [
        {"name": "app",
         "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
         "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}],
         "args": ["--c"]}
    ]}});
    assert_eq!(
        patched(&pod(), original, patch),
        json!({"spec": {"containers": [
            {"name": "app", "image": "app:1",
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
             "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}],
             "args": ["--c"]},
            {"name": "sidecar", "image": "sidecar:1"}
        ]}})
    );
}

#[test]
fn keyed_delete_removes_every_item_with_the_key() {
    let original = json!({"spec": {"containers": [
        {"name": "a"}, {"name": "b", "image": "x"}, {"name": "a", "image": "dup"}, {"name": "c"}
    ]}});
    let patch = json!({"spec": {"containers": [
        {"name": "a", "$patch": "delete"}, {"name": "missing", "$patch": "delete"}
    ]}});
    assert_eq!(
        patched(&pod(), original, patch),
        json!({"spec": {"containers": [{"name": "b", "image": "x"}, {"name": "c"}]}})
    );
}

#[test]
fn keyed_replace_makes_the_other_items_the_list() {
    let original = containers(&["a", "b"]);
    let patch = json!({"spec": {"containers": [
        {"$patch": "replace"}, {"name": "c", "image": null}, {"name": "d"}
    ]}});
    assert_eq!(
        patched(&pod(), original.clone(), patch),
        containers(&["c", "d"])
    );
    let emptied = json!({"spec": {"containers": [{"$patch": "replace"}]}});
    assert_eq!(patched(&pod(), original, emptied), containers(&[]));
}

#[test]
fn keyed_patch_errors() {
    let original = containers(&["a"]);
    let missing = refused(
        &pod(),
        original.clone(),
        json!({"spec": {"containers": [{"image": "x"}]}}),
    );
    assert_eq!(
        missing.to_string(),
        "merge key `name` missing from an item of `spec.containers`"
    );
    let delete_without_key = refused(
        &pod(),
        original.clone(),
        json!({"spec": {"containers": [{"$patch": "delete"}]}}),
    );
    assert_eq!(delete_without_key.reason(), "missing_merge_key");
    let mixed = refused(
        &pod(),
        original.clone(),
        json!({"spec": {"containers": ["a"]}}),
    );
    assert_eq!(mixed.reason(), "mixed_list");
    let merge = refused(
        &pod(),
        original.clone(),
        json!({"spec": {"containers": [{"$patch": "merge"}]}}),
    );
    assert_eq!(merge.reason(), "merge_directive");
    let unknown = refused(
        &pod(),
        original,
        json!({"spec": {"containers": [{"name": "a", "$patch": 7}]}}),
    );
    assert_eq!(
        unknown.to_string(),
        "unknown directive $patch: 7 in `spec.containers`"
    );
    let nested = refused(
        &pod(),
        json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X"}]}]}}),
        json!({"spec": {"containers": [{"name": "a", "env": [{"value": "1"}]}]}}),
    );
    assert_eq!(
        nested.to_string(),
        "merge key `name` missing from an item of `spec.containers.env`"
    );
}

#[test]
fn repeated_keys_in_the_patch_merge_into_one_item() {
    let patch = json!({"spec": {"containers": [
        {"name": "b", "image": "1"}, {"name": "b", "args": ["x"]}
    ]}});
    assert_eq!(
        patched(&pod(), containers(&["a"]), patch),
        json!({"spec": {"containers": [{"name": "b", "image": "1", "args": ["x"]}, {"name": "a"}]}})
    );
}

// ---- order of merged lists ----

#[test]
fn patch_order_wins_and_server_items_keep_their_place() {
    // The server's own example: [1, 2, 3] patched with [3, 1] gives [2, 3, 1].
    let result = patched(
        &pod(),
        containers(&["1", "2", "3"]),
        containers(&["3", "1"]),
    );
    assert_eq!(names(&result["spec"]["containers"]), vec!["2", "3", "1"]);
    // A new item goes where its turn comes in the patch, before later server items.
    let added = patched(
        &pod(),
        containers(&["a", "b", "c"]),
        containers(&["b", "d"]),
    );
    assert_eq!(
        names(&added["spec"]["containers"]),
        vec!["a", "b", "d", "c"]
    );
    let first = patched(&pod(), containers(&["a", "b"]), containers(&["new"]));
    assert_eq!(names(&first["spec"]["containers"]), vec!["new", "a", "b"]);
}

#[test]
fn set_element_order_orders_keyed_lists() {
    let order = |names: &[&str]| -> Value { names.iter().map(|n| json!({"name": n})).collect() };
    // Server-only items (9) keep their place relative to their neighbours.
    let result = patched(
        &pod(),
        containers(&["1", "2", "9", "3", "4"]),
        json!({"spec": {"$setElementOrder/containers": order(&["2", "1", "4", "3"])}}),
    );
    assert_eq!(
        names(&result["spec"]["containers"]),
        vec!["2", "1", "9", "4", "3"]
    );
    let result = patched(
        &pod(),
        containers(&["1", "3"]),
        json!({"spec": {"$setElementOrder/containers": order(&["1", "2"]),
                        "containers": [{"name": "2"}]}}),
    );
    assert_eq!(names(&result["spec"]["containers"]), vec!["1", "2", "3"]);
    // Names absent from the list are ignored, never added.
    let result = patched(
        &pod(),
        containers(&["1", "3"]),
        json!({"spec": {"$setElementOrder/containers": order(&["3", "2", "1"])}}),
    );
    assert_eq!(names(&result["spec"]["containers"]), vec!["3", "1"]);
    // On a list the original lacks, the patch's items arrive in order.
    let result = patched(
        &pod(),
        json!({"spec": {}}),
        json!({"spec": {"$setElementOrder/containers": order(&["x", "y"]),
                        "containers": [{"name": "x"}, {"name": "y"}]}}),
    );
    assert_eq!(names(&result["spec"]["containers"]), vec!["x", "y"]);
}

#[test]
fn set_element_order_after_deletions_places_server_items_as_the_server_does() {
    // kubectl apply replacing a container while a webhook's sidecar sits in the list: the
    // server merges in place, so the new container takes the deleted one's slot when it
    // orders, and the sidecar lands before it.
    let result = patched(
        &pod(),
        containers(&["app", "old", "injected"]),
        json!({"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "new"}],
            "containers": [{"name": "new"}, {"name": "old", "$patch": "delete"}]
        }}),
    );
    assert_eq!(
        names(&result["spec"]["containers"]),
        vec!["app", "injected", "new"]
    );
}

#[test]
fn set_element_order_must_agree_with_the_patch() {
    let e = refused(
        &pod(),
        containers(&["1", "3", "2"]),
        json!({"spec": {
            "$setElementOrder/containers": [{"name": "1"}, {"name": "2"}, {"name": "3"}],
            "containers": [{"name": "3", "image": "x"}, {"name": "1", "image": "y"}]
        }}),
    );
    assert_eq!(e.reason(), "order_mismatch");
    assert!(e.to_string().contains("`spec.containers`"), "{e}");
    let not_a_list = refused(
        &pod(),
        json!({"spec": {"containers": {"a": 1}}}),
        json!({"spec": {"$setElementOrder/containers": []}}),
    );
    assert_eq!(not_a_list.reason(), "not_a_list");
    let nothing = refused(
        &node(),
        json!({"metadata": {"finalizers": []}}),
        json!({"metadata": {"$setElementOrder/finalizers": ["a"]}}),
    );
    assert_eq!(nothing.reason(), "malformed_directive");
    let no_slash = refused(
        &pod(),
        containers(&["a"]),
        json!({"spec": {"$setElementOrdercontainers": []}}),
    );
    assert_eq!(no_slash.reason(), "malformed_directive");
}

// ---- lists of primitives ----

#[test]
fn merged_primitive_lists_take_the_union() {
    let original = json!({"metadata": {"finalizers": ["a", "b"]}});
    let result = patched(
        &node(),
        original,
        json!({"metadata": {"finalizers": ["b", "c", "c"]}}),
    );
    assert_eq!(result, json!({"metadata": {"finalizers": ["a", "b", "c"]}}));
    // The server's example: [1, 2, 3] patched with [3, 1] gives [2, 3, 1].
    let result = patched(
        &node(),
        json!({"spec": {"podCIDRs": ["1", "2", "3"]}}),
        json!({"spec": {"podCIDRs": ["3", "1"]}}),
    );
    assert_eq!(result, json!({"spec": {"podCIDRs": ["2", "3", "1"]}}));
}

#[test]
fn delete_from_primitive_list() {
    let original = json!({"metadata": {"finalizers": ["a", "b", "c", "b"]}});
    let result = patched(
        &node(),
        original.clone(),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "x"]}}),
    );
    assert_eq!(result, json!({"metadata": {"finalizers": ["a", "c"]}}));
    // Added and deleted at once: deleted. New values come first, as the server puts them.
    let both = patched(
        &node(),
        original.clone(),
        json!({"metadata": {"finalizers": ["d", "e"], "$deleteFromPrimitiveList/finalizers": ["a", "d"]}}),
    );
    assert_eq!(both, json!({"metadata": {"finalizers": ["e", "b", "c"]}}));
    // Lists the schema replaces obey it too; an absent list stays absent.
    let replaced = patched(
        &pod(),
        json!({"spec": {"containers": [{"name": "a", "args": ["1", "2"]}]}}),
        json!({"spec": {"containers": [{"name": "a", "$deleteFromPrimitiveList/args": ["1"]}],
                        "$deleteFromPrimitiveList/volumes": ["v"]}}),
    );
    assert_eq!(
        replaced,
        json!({"spec": {"containers": [{"name": "a", "args": ["2"]}]}})
    );
    let not_a_list = refused(
        &node(),
        original,
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}),
    );
    assert_eq!(not_a_list.reason(), "malformed_directive");
}

#[test]
fn set_element_order_orders_primitive_lists() {
    let result = patched(
        &node(),
        json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
        json!({"metadata": {
            "$setElementOrder/finalizers": ["c", "d", "a"],
            "finalizers": ["d"],
            "$deleteFromPrimitiveList/finalizers": ["b"]
        }}),
    );
    assert_eq!(result, json!({"metadata": {"finalizers": ["c", "d", "a"]}}));
}

// ---- unknown fields, errors, bounds ----

#[test]
fn unknown_fields_merge_objects_and_replace_lists() {
    let original = json!({"spec": {"extra": {"list": [{"name": "a"}], "keep": 1}}});
    let patch = json!({"spec": {"extra": {"list": [{"name": "b"}]}}});
    assert_eq!(
        patched(&node(), original, patch),
        json!({"spec": {"extra": {"list": [{"name": "b"}], "keep": 1}}})
    );
}

#[test]
fn a_replace_strategy_replaces_an_object() {
    let document = json!({"components": {"schemas": {"T": {
        "type": "object",
        "x-kubernetes-group-version-kind": [{"group": "g", "version": "v1", "kind": "T"}],
        "properties": {"raw": {"type": "object", "x-kubernetes-patch-strategy": "replace"}}
    }}}});
    let schema = Schema::from_openapi_v3(&document, "g", "v1", "T").expect("schema");
    let result = patched(
        &schema,
        json!({"raw": {"a": 1, "b": 2}, "other": {"a": 1}}),
        json!({"raw": {"b": 3}, "other": {"b": 3}}),
    );
    assert_eq!(result, json!({"raw": {"b": 3}, "other": {"a": 1, "b": 3}}));
}

#[test]
fn documents_that_are_not_objects() {
    let patch = refused(&node(), json!({}), json!([{"op": "add"}]));
    assert_eq!(patch.to_string(), "the patch is not a JSON object");
    assert_eq!(patch.reason(), "not_an_object");
    let original = refused(&node(), json!("x"), json!({}));
    assert_eq!(
        original.to_string(),
        "the object to patch is not a JSON object"
    );
    // `null` stands for `{}`, as it does for the server.
    assert_eq!(
        patched(&node(), json!({"a": 1}), Value::Null),
        json!({"a": 1})
    );
    assert_eq!(
        patched(&node(), Value::Null, json!({"a": 1})),
        json!({"a": 1})
    );
}

#[test]
fn lists_of_lists_are_refused_when_merged() {
    let e = refused(
        &node(),
        json!({"metadata": {"finalizers": [["a"]]}}),
        json!({"metadata": {"finalizers": ["b"]}}),
    );
    assert_eq!(e.reason(), "list_of_lists");
}

fn nested(depth: usize, leaf: Value) -> Value {
    (0..depth).fold(leaf, |inner, _| json!({"a": inner}))
}

#[test]
fn deep_patches_are_refused_not_overflowed() {
    let deep = nested(1000, json!(1));
    let e = apply(nested(1000, json!(0)), &deep, &Schema::default());
    assert!(matches!(e, Err(Error::TooDeep { .. })), "{e:?}");
    // Into a field the original lacks, too.
    let e = apply(json!({}), &deep, &Schema::default());
    assert!(matches!(e, Err(Error::TooDeep { .. })), "{e:?}");
    // Keyed lists count as levels.
    let mut list = json!(1);
    for _ in 0..200 {
        list = json!({"spec": {"containers": [{"name": "a", "spec": list}]}});
    }
    let e = apply(list.clone(), &list, &pod());
    assert!(matches!(e, Err(Error::TooDeep { .. })), "{e:?}");
    // Up to the limit, patches apply.
    let shallow = nested(MAX_DEPTH - 1, json!(1));
    assert_eq!(
        patched(
            &Schema::default(),
            nested(MAX_DEPTH - 1, json!(0)),
            shallow.clone()
        ),
        shallow
    );
}
