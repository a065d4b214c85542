//! Properties over generated patches: no panic whatever is sent, RFC 7386 where a strategic
//! patch has nothing strategic in it, and merged lists that never gain or lose an item.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use strategic_merge::{Schema, apply};

const PLAIN_KEYS: &[&str] = &[
    "a",
    "b",
    "metadata",
    "labels",
    "finalizers",
    "spec",
    "taints",
    "status",
    "conditions",
    "type",
    "name",
];

const DIRECTIVE_KEYS: &[&str] = &[
    "$patch",
    "$retainKeys",
    "$setElementOrder/conditions",
    "$setElementOrder/finalizers",
    "$deleteFromPrimitiveList/finalizers",
    "$setElementOrderconditions",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(Value::from),
        prop::sample::select(vec!["x", "Ready", "replace", "delete", "merge", "a"])
            .prop_map(Value::from),
    ]
}

fn key(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(keys).prop_map(str::to_owned)
}

/// Any JSON, keys drawn from `keys`, at most `depth` containers deep.
fn json_with(keys: &'static [&'static str], depth: u32, arrays: bool) -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(depth, 48, 4, move |inner| {
            let object = prop::collection::btree_map(key(keys), inner.clone(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()));
            if arrays {
                prop_oneof![
                    object,
                    prop::collection::vec(inner, 0..4).prop_map(Value::Array)
                ]
                .boxed()
            } else {
                object.boxed()
            }
        })
        .boxed()
}

fn object(value: Value) -> Value {
    match value {
        Value::Object(_) => value,
        other => json!({ "a": other }),
    }
}

fn all_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| PLAIN_KEYS.iter().chain(DIRECTIVE_KEYS).copied().collect())
}

fn has_directive(value: &Value) -> bool {
    match value {
        Value::Object(fields) => fields.iter().any(|(k, v)| {
            k == "$patch"
                || k == "$retainKeys"
                || k.starts_with("$setElementOrder")
                || k.starts_with("$deleteFromPrimitiveList")
                || has_directive(v)
        }),
        Value::Array(items) => items.iter().any(has_directive),
        _ => false,
    }
}

fn condition_types() -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::subsequence(
        vec![
            "Ready",
            "MemoryPressure",
            "DiskPressure",
            "PIDPressure",
            "NetworkUnavailable",
        ],
        0..=5,
    )
    .prop_shuffle()
}

/// One item of a conditions patch: merged, deleted, or a bare directive.
fn condition_item() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Ready", "MemoryPressure", "DiskPressure", "Other"]),
        0u8..10,
        prop::option::of(prop::sample::select(vec!["True", "False"])),
    )
        .prop_map(|(t, roll, status)| match roll {
            0 => json!({"type": t, "$patch": "delete"}),
            1 => json!({"$patch": "replace"}),
            _ => match status {
                Some(s) => json!({"type": t, "status": s}),
                None => json!({"type": t, "lastHeartbeatTime": "now"}),
            },
        })
}

fn types_of(result: &Value) -> Vec<String> {
    result["status"]["conditions"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_patches_never_panic_nor_leave_directives(
        original in json_with(PLAIN_KEYS, 5, true),
        patch in json_with(all_keys(), 5, true),
    ) {
        for schema in [common::node(), Schema::default()] {
            if let Ok(result) = apply(object(original.clone()), &patch, &schema) {
                prop_assert!(!has_directive(&result), "{result}");
            }
        }
    }

    #[test]
    fn without_lists_or_directives_it_is_a_merge_patch(
        original in json_with(PLAIN_KEYS, 4, true),
        patch in json_with(PLAIN_KEYS, 4, false),
    ) {
        let original = object(original);
        let patch = object(patch);
        let mut expected = original.clone();
        json_patch::merge(&mut expected, &patch);
        for schema in [common::node(), Schema::default()] {
            let result = apply(original.clone(), &patch, &schema);
            prop_assert_eq!(result.as_ref().ok(), Some(&expected));
        }
    }

    #[test]
    fn keyed_lists_never_duplicate_a_key(
        original in condition_types(),
        items in prop::collection::vec(condition_item(), 0..6),
        order in prop::option::of(condition_types()),
    ) {
        let conditions: Vec<Value> = original
            .iter()
            .map(|t| json!({"type": t, "status": "False"}))
            .collect();
        let mut status = Map::new();
        status.insert("conditions".into(), Value::Array(items.clone()));
        if let Some(order) = &order {
            let order: Vec<Value> = order.iter().map(|t| json!({"type": t})).collect();
            status.insert("$setElementOrder/conditions".into(), Value::Array(order));
        }
        let patch = json!({"status": status});
        let result = apply(json!({"status": {"conditions": conditions}}), &patch, &common::node());
        if let Ok(result) = result {
            let types = types_of(&result);
            let replaced = items.iter().any(|i| i.get("type").is_none());
            if replaced {
                // The client's list, as it sent it (ordered by `$setElementOrder`, if any).
                let mut types = types;
                types.sort();
                let mut sent: Vec<String> = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .filter_map(|i| i["type"].as_str().map(str::to_owned))
                    .collect();
                sent.sort();
                prop_assert_eq!(types, sent);
            } else {
                let unique: BTreeSet<&String> = types.iter().collect();
                prop_assert_eq!(unique.len(), types.len(), "{}", result);
                // Every original item not deleted stays, and every merged item is there.
                let deleted: BTreeSet<&str> = items
                    .iter()
                    .filter(|i| i.get("$patch").is_some())
                    .filter_map(|i| i["type"].as_str())
                    .collect();
                let merged: BTreeSet<&str> = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .filter_map(|i| i["type"].as_str())
                    .collect();
                let expected: BTreeSet<&str> = original
                    .iter()
                    .copied()
                    .filter(|t| !deleted.contains(t))
                    .chain(merged.iter().copied())
                    .collect();
                let found: BTreeSet<&str> = types.iter().map(String::as_str).collect();
                prop_assert_eq!(found, expected);
            }
        }
    }

    #[test]
    fn set_element_order_only_reorders(
        original in condition_types(),
        items in prop::collection::vec(condition_item(), 0..6),
        order in condition_types(),
    ) {
        let conditions: Vec<Value> = original
            .iter()
            .map(|t| json!({"type": t, "status": "False"}))
            .collect();
        let original = json!({"status": {"conditions": conditions}});
        let order: Vec<Value> = order.iter().map(|t| json!({"type": t})).collect();
        let plain = json!({"status": {"conditions": items}});
        let mut ordered = plain.clone();
        ordered["status"]["$setElementOrder/conditions"] = Value::Array(order);
        let schema = common::node();
        if let (Ok(with), Ok(without)) = (
            apply(original.clone(), &ordered, &schema),
            apply(original, &plain, &schema),
        ) {
            let by_type = |v: &Value| -> BTreeMap<String, Value> {
                v["status"]["conditions"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|i| (i["type"].to_string(), i.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            prop_assert_eq!(by_type(&with), by_type(&without));
            prop_assert_eq!(types_of(&with).len(), types_of(&without).len());
        }
    }

    #[test]
    fn primitive_merges_take_the_union(
        original in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 0..5),
        patch in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "e"]), 0..5),
        deleted in prop::collection::vec(prop::sample::select(vec!["a", "e"]), 0..2),
    ) {
        let result = apply(
            json!({"metadata": {"finalizers": original}}),
            &json!({"metadata": {"finalizers": patch, "$deleteFromPrimitiveList/finalizers": deleted}}),
            &common::node(),
        );
        let result = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let finalizers: Vec<&str> = result["metadata"]["finalizers"]
            .as_array()
            .map(|items| items.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let unique: BTreeSet<&str> = finalizers.iter().copied().collect();
        prop_assert_eq!(unique.len(), finalizers.len());
        let expected: BTreeSet<&str> = original
            .iter()
            .chain(&patch)
            .copied()
            .filter(|v| !deleted.contains(v))
            .collect();
        prop_assert_eq!(unique, expected);
    }
}
