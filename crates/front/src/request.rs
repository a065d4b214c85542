//! The pure half of proxying a request: its query, its media types and its patches, in
//! the backing server's terms. Anything not understood is refused rather than passed on.

use serde_json::Value;
use tenancy::{Prefix, ResourcePath};

use crate::error::{Error, Result};

/// Query parameters passed on as they are: none names an object or a namespace.
const VERBATIM_PARAMETERS: &[&str] = &[
    "watch",
    "resourceVersion",
    "resourceVersionMatch",
    "timeoutSeconds",
    "timeout",
    "limit",
    "continue",
    "allowWatchBookmarks",
    "sendInitialEvents",
    "dryRun",
    "fieldManager",
    "fieldValidation",
    "gracePeriodSeconds",
    "propagationPolicy",
    "orphanDependents",
    "pretty",
];

/// A request's query in the backing server's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingQuery {
    /// The encoded query string, without `?`.
    pub query: String,
    /// Whether the client asked for a watch: its answer is streamed event by event.
    pub watch: bool,
}

/// Maps a client's query: selectors into the cluster's space (a collection always gets
/// the cluster's label requirement, so lists, watches and collection deletes see only
/// the cluster's objects); other known parameters verbatim; unknown ones refused.
pub fn backing_query(
    prefix: &Prefix,
    path: &ResourcePath,
    query: Option<&str>,
) -> Result<BackingQuery> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    let mut label_selector = None;
    let mut watch = false;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "labelSelector" => label_selector = Some(value.into_owned()),
            "fieldSelector" => {
                let mapped = tenancy::backing_field_selector(prefix, path.target.resource, &value)
                    .map_err(Error::Request)?;
                out.append_pair("fieldSelector", &mapped);
            }
            "watch" => {
                watch = matches!(value.as_ref(), "true" | "1");
                out.append_pair("watch", &value);
            }
            name if VERBATIM_PARAMETERS.contains(&name) => {
                out.append_pair(name, &value);
            }
            name => {
                return Err(Error::UnsupportedQuery {
                    name: name.to_string(),
                });
            }
        }
    }
    if path.needs_cluster_selector() || label_selector.is_some() {
        let selector =
            tenancy::backing_label_selector(prefix, label_selector.as_deref().unwrap_or(""))
                .map_err(Error::Request)?;
        out.append_pair("labelSelector", &selector);
    }
    Ok(BackingQuery {
        query: out.finish(),
        watch,
    })
}

/// The `Accept` header for the backing server: always JSON, since only JSON is mapped.
/// Protobuf and CBOR are negotiated down; the parameters asking for a Table or
/// PartialObjectMetadata are kept, since those answers are mapped too.
pub fn backing_accept(client: Option<&str>) -> String {
    let ranges = client.unwrap_or("").split(',').map(str::trim);
    let mut alternative = None;
    for range in ranges {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<&str> = parts
            .filter(|p| {
                let key = p.split('=').next().unwrap_or("").trim();
                matches!(key, "as" | "v" | "g")
            })
            .collect();
        let json = matches!(media.as_str(), "application/json" | "*/*" | "application/*");
        if json {
            return with_params(&params);
        }
        if alternative.is_none() && !params.is_empty() {
            alternative = Some(with_params(&params));
        }
    }
    alternative.unwrap_or_else(|| "application/json".to_string())
}

fn with_params(params: &[&str]) -> String {
    let mut accept = "application/json".to_string();
    for p in params {
        accept.push(';');
        accept.push_str(p);
    }
    accept
}

/// The media type of a `Content-Type` header, lowercased, without parameters.
pub fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A create, update or delete body as JSON, the one form the mapping reads: JSON as it
/// is, Kubernetes protobuf decoded (controller-runtime clients write built-in kinds so)
/// for the kinds the decoder knows; anything else refused. `None` for an empty body.
pub fn body_object(content_type: Option<&str>, body: &[u8]) -> Result<Option<Value>> {
    if body.is_empty() {
        return Ok(None);
    }
    match media_type(content_type).as_str() {
        "application/json" | "" => serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| Error::BadBody(format!("not JSON: {e}"))),
        kube_protobuf::MEDIA_TYPE => kube_protobuf::decode(body)
            .map(Some)
            .map_err(Error::Protobuf),
        other => Err(Error::UnsupportedMediaType {
            content_type: other.to_string(),
            why: "the tenancy front maps JSON and Kubernetes protobuf bodies only",
        }),
    }
}

/// The patch types the front applies itself, on the client's view of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386.
    Merge,
    /// RFC 6902.
    Json,
    /// Kubernetes' strategic merge patch: lists merged by the kind's patch merge keys.
    Strategic,
}

/// The patch type of a PATCH request's `Content-Type`.
pub fn patch_kind(content_type: Option<&str>) -> Result<PatchKind> {
    let media = media_type(content_type);
    match media.as_str() {
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            Err(Error::UnsupportedMediaType {
                content_type: media,
                why: "server-side apply is not served by the tenancy front yet",
            })
        }
        _ => Err(Error::UnsupportedMediaType {
            content_type: media,
            why: "not a patch type the tenancy front applies",
        }),
    }
}

/// Applies a patch to the client's view of an object; a strategic merge patch merges
/// lists by `schema` (the kind's), which it needs. A patch that names a key the front
/// reserves is refused, whether it sets or removes it: the label saying whose an object
/// is must not move. (A directive replacing all labels cannot drop it either: the view
/// does not hold it, and the write adds it back.)
pub fn apply_patch(
    kind: PatchKind,
    schema: Option<&strategic_merge::Schema>,
    view: &mut Value,
    patch: &[u8],
) -> Result<()> {
    match kind {
        PatchKind::Merge | PatchKind::Strategic => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| Error::BadBody(format!("the patch is not JSON: {e}")))?;
            if !patch.is_object() {
                return Err(Error::BadBody("a merge patch must be a JSON object".into()));
            }
            for set in ["labels", "annotations"] {
                if let Some(Value::Object(keys)) = patch.get("metadata").and_then(|m| m.get(set))
                    && let Some(key) = keys.keys().find(|k| tenancy::is_reserved_key(k))
                {
                    return Err(reserved(key));
                }
            }
            match (kind, schema) {
                (PatchKind::Strategic, Some(schema)) => {
                    // Applied to a copy: a patch that fails leaves nothing half-applied.
                    *view = strategic_merge::apply(view.clone(), &patch, schema)
                        .map_err(Error::StrategicPatch)?;
                    Ok(())
                }
                (PatchKind::Strategic, None) => Err(Error::BadBody(
                    "a strategic merge patch needs its kind's schema".into(),
                )),
                _ => {
                    json_patch::merge(view, &patch);
                    Ok(())
                }
            }
        }
        PatchKind::Json => {
            let operations: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| Error::BadBody(format!("not a JSON patch: {e}")))?;
            for operation in operations.iter() {
                let value = serde_json::to_value(operation)
                    .map_err(|e| Error::BadBody(format!("not a JSON patch: {e}")))?;
                for field in ["path", "from"] {
                    if let Some(pointer) = value.get(field).and_then(Value::as_str)
                        && let Some(key) = reserved_key_in_pointer(pointer)
                    {
                        return Err(reserved(&key));
                    }
                }
            }
            json_patch::patch(view, &operations)
                .map_err(|e| Error::BadBody(format!("the JSON patch does not apply: {e}")))
        }
    }
}

fn reserved(key: &str) -> Error {
    Error::Request(tenancy::Error::ReservedKey {
        key: key.to_string(),
    })
}

/// The label or annotation key a JSON pointer such as `/metadata/labels/<key>` names, if
/// the front reserves it.
fn reserved_key_in_pointer(pointer: &str) -> Option<String> {
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    match segments.as_slice() {
        [metadata, set, key, ..]
            if metadata == "metadata"
                && (set == "labels" || set == "annotations")
                && tenancy::is_reserved_key(key) =>
        {
            Some(key.clone())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tenancy::paths::{self, ApiPath};

    fn resource(path: &str) -> ResourcePath {
        match paths::parse(path).unwrap() {
            ApiPath::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn prefix() -> Prefix {
        Prefix::parse("taaaaa").unwrap()
    }

    fn decoded(query: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn a_list_gets_the_clusters_label_selector() {
        let q = backing_query(&prefix(), &resource("/api/v1/nodes"), None).unwrap();
        assert_eq!(
            decoded(&q.query),
            [(
                "labelSelector".into(),
                format!("{}=taaaaa", tenancy::CLUSTER_LABEL)
            )]
        );
        assert!(!q.watch);
        let q = backing_query(
            &prefix(),
            &resource("/api/v1/pods"),
            Some("watch=true&labelSelector=app%3Dx&fieldSelector=spec.nodeName%3Dnode-0&resourceVersion=5"),
        )
        .unwrap();
        assert!(q.watch);
        let pairs = decoded(&q.query);
        assert!(pairs.contains(&("fieldSelector".into(), "spec.nodeName=taaaaa-node-0".into())));
        assert!(pairs.contains(&(
            "labelSelector".into(),
            format!("app=x,{}=taaaaa", tenancy::CLUSTER_LABEL)
        )));
        assert!(pairs.contains(&("resourceVersion".into(), "5".into())));
    }

    #[test]
    fn a_field_selector_naming_another_clusters_namespace_stays_in_this_one() {
        let q = backing_query(
            &prefix(),
            &resource("/api/v1/configmaps"),
            Some("fieldSelector=metadata.namespace%3Dtbbbbb-kube-system"),
        )
        .unwrap();
        assert!(decoded(&q.query).contains(&(
            "fieldSelector".into(),
            "metadata.namespace=taaaaa-tbbbbb-kube-system".into()
        )));
    }

    #[test]
    fn unknown_parameters_and_reserved_selectors_are_refused() {
        let r = resource("/api/v1/nodes");
        let err = backing_query(&prefix(), &r, Some("shard=1")).unwrap_err();
        assert_eq!(err.reason(), "unsupported_query");
        let selector = format!("labelSelector={}%3Dtbbbbb", tenancy::CLUSTER_LABEL);
        let err = backing_query(&prefix(), &r, Some(&selector)).unwrap_err();
        assert_eq!(err.reason(), "reserved_key");
    }

    #[test]
    fn protobuf_and_cbor_are_negotiated_down_to_json() {
        assert_eq!(backing_accept(None), "application/json");
        assert_eq!(
            backing_accept(Some(
                "application/vnd.kubernetes.protobuf, application/json"
            )),
            "application/json"
        );
        assert_eq!(backing_accept(Some("application/cbor")), "application/json");
        assert_eq!(
            backing_accept(Some(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
            )),
            "application/json;as=Table;v=v1;g=meta.k8s.io"
        );
        assert_eq!(
            backing_accept(Some(
                "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
            )),
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
        );
    }

    #[test]
    fn bodies_are_json_or_kubernetes_protobuf() {
        let json = body_object(Some("application/json; charset=utf-8"), br#"{"a": 1}"#);
        assert_eq!(json.unwrap(), Some(serde_json::json!({"a": 1})));
        assert_eq!(body_object(Some("application/json"), b"").unwrap(), None);
        let err = body_object(Some("application/yaml"), b"a: 1").unwrap_err();
        assert_eq!(err.reason(), "unsupported_media_type");
        let err = body_object(Some(kube_protobuf::MEDIA_TYPE), b"not protobuf").unwrap_err();
        assert_eq!(err.reason(), "protobuf");
    }

    #[test]
    fn merge_patches_apply_to_the_clients_view() {
        let mut view = json!({"metadata": {"name": "n", "labels": {"a": "1", "b": "2"}}});
        let patch = br#"{"metadata": {"labels": {"a": null, "c": "3"}}}"#;
        apply_patch(PatchKind::Merge, None, &mut view, patch).unwrap();
        assert_eq!(view["metadata"]["labels"], json!({"b": "2", "c": "3"}));
    }

    #[test]
    fn a_patch_naming_the_tenancy_label_is_refused() {
        let label = tenancy::CLUSTER_LABEL;
        let mut view = json!({"metadata": {"name": "n"}});
        for (kind, patch) in [
            (
                PatchKind::Merge,
                json!({"metadata": {"labels": {label: null}}}),
            ),
            (
                PatchKind::Strategic,
                json!({"metadata": {"labels": {label: "tbbbbb"}}}),
            ),
            (
                PatchKind::Json,
                json!([{"op": "remove", "path": format!("/metadata/labels/{}", label.replace('/', "~1"))}]),
            ),
        ] {
            let schema = strategic_merge::Schema::default();
            let err = apply_patch(kind, Some(&schema), &mut view, patch.to_string().as_bytes())
                .unwrap_err();
            assert_eq!(err.reason(), "reserved_key", "{kind:?}");
        }
    }

    #[test]
    fn json_and_strategic_patches_apply_and_a_failed_one_changes_nothing() {
        let mut view = json!({"spec": {"unschedulable": false}});
        let patch = br#"[{"op": "replace", "path": "/spec/unschedulable", "value": true}]"#;
        apply_patch(PatchKind::Json, None, &mut view, patch).unwrap();
        assert_eq!(view["spec"]["unschedulable"], true);
        // Without a merge key the schema replaces a list, as for a Node's taints.
        let schema = strategic_merge::Schema::default();
        let patch = br#"{"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}"#;
        apply_patch(PatchKind::Strategic, Some(&schema), &mut view, patch).unwrap();
        assert_eq!(
            view["spec"]["taints"],
            json!([{"key": "k", "effect": "NoSchedule"}])
        );
        let before = view.clone();
        let patch = br#"{"spec": {"unschedulable": false, "$patch": "nonsense"}}"#;
        let err = apply_patch(PatchKind::Strategic, Some(&schema), &mut view, patch).unwrap_err();
        assert_eq!(err.reason(), "strategic_patch");
        assert_eq!(err.status().0, http::StatusCode::BAD_REQUEST);
        assert_eq!(view, before);
        let err = apply_patch(PatchKind::Strategic, None, &mut view, b"{}").unwrap_err();
        assert_eq!(err.reason(), "bad_body");
        assert_eq!(
            patch_kind(Some("application/apply-patch+yaml"))
                .unwrap_err()
                .reason(),
            "unsupported_media_type"
        );
    }
}
