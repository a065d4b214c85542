//! Objects both ways: request bodies to the backing server, and its answers (objects,
//! lists, watch events, Tables, PartialObjectMetadata, Status) back to the client.
//!
//! What is rewritten, and why:
//! - `metadata.namespace` of namespaced objects; `metadata.name` (and `generateName`) of
//!   cluster-scoped kinds, whose names two clusters share (every cluster has a Node
//!   `node-0` and a ClusterRole `kubeadm:get-nodes`).
//! - The cluster label: added on every stored write, required and removed on every read,
//!   so cluster-wide lists can select on it; a write naming it (or any reserved key) is
//!   refused, so no client can move an object between clusters or hide it.
//! - `ownerReferences` to cluster-scoped kinds (a mirror Pod is owned by its Node): the
//!   backing server's garbage collector looks owners up by name. Namespaced owners are in
//!   the object's own namespace, so need no change; owners of unknown kinds are refused.
//! - References to Nodes (`spec.nodeName`, which drain lists Pods by) and namespaces
//!   (Events' `involvedObject`, which the server requires to match the Event's own).
//! - RBAC, so that it grants nothing in the backing server (see `rbac`).
//!
//! Everything else is kept as written: free-form strings such as a Lease's holder or an
//! Event's source host mean nothing to the backing server.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::json::{as_object, malformed, map_string, map_string_at, string_field};
use crate::kinds::{self, Resource, Scope, Subresource, TableCells, Target};
use crate::names::{self, CLUSTER_LABEL, Direction, NameRule};
use crate::prefix::Prefix;
use crate::rbac::{self, RULES_ANNOTATION};

/// The namespaces every cluster has, each its own.
pub const WELL_KNOWN_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The label the server puts on every Namespace, valued with its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A request body for the backing server: one object of the target's kind (or of its
/// subresource's: `Scale`, `Eviction`).
pub fn to_backing(prefix: &Prefix, target: &Target, object: Value) -> Result<Value> {
    let mut object = object;
    let map = as_object(&mut object, "request body")?;
    map_item(
        Direction::ToBacking,
        prefix,
        target,
        map,
        Some(body_of(target)?),
    )?;
    Ok(object)
}

/// An answer of the backing server for the client: an object, a list, a Table,
/// PartialObjectMetadata(List) or a Status.
pub fn from_backing(prefix: &Prefix, target: &Target, answer: Value) -> Result<Value> {
    let mut answer = answer;
    map_answer(Direction::FromBacking, prefix, target, &mut answer)?;
    Ok(answer)
}

/// One watch event of the backing server for the client, bookmarks and errors included.
pub fn watch_event_from_backing(prefix: &Prefix, target: &Target, event: Value) -> Result<Value> {
    let mut event = event;
    map_event(Direction::FromBacking, prefix, target, &mut event)?;
    Ok(event)
}

/// The backing Namespace objects to create when a cluster is first served.
pub fn well_known_namespaces(prefix: &Prefix) -> Result<Vec<Value>> {
    let namespaces = kinds::by_plural("", "v1", "namespaces")?;
    WELL_KNOWN_NAMESPACES
        .iter()
        .map(|name| {
            let object = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name},
            });
            to_backing(prefix, &Target::new(namespaces), object)
        })
        .collect()
}

/// What kind of body an item is, which decides what is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// An object of the resource's kind: metadata, label and body fields.
    Full,
    /// PartialObjectMetadata: metadata and label only.
    Partial,
    /// A subresource's own kind (Scale, Eviction): not stored, so not labelled.
    Transient,
}

fn body_of(target: &Target) -> Result<Body> {
    match target.subresource {
        None | Some(Subresource::Status | Subresource::Finalize) => Ok(Body::Full),
        Some(Subresource::Scale | Subresource::Eviction) => Ok(Body::Transient),
        Some(Subresource::PortForward) => Err(Error::UnsupportedField {
            field: "body".into(),
            why: "a port-forward carries no object",
        }),
    }
}

fn kind_of(object: &Map<String, Value>) -> Result<Option<&str>> {
    string_field(object, "kind")
}

fn map_answer(
    direction: Direction,
    prefix: &Prefix,
    target: &Target,
    answer: &mut Value,
) -> Result<()> {
    let object = as_object(answer, "answer")?;
    let resource = target.resource;
    match kind_of(object)? {
        Some("Status") => {
            if direction == Direction::FromBacking {
                map_status(prefix, object)?;
            }
            Ok(())
        }
        Some("Table") => map_table(direction, prefix, target, object),
        Some("PartialObjectMetadataList") => {
            map_list(direction, prefix, target, object, Some(Body::Partial))
        }
        Some("List") => map_list(direction, prefix, target, object, None),
        Some(kind) if kind.strip_suffix("List") == Some(resource.kind) => {
            map_list(direction, prefix, target, object, Some(Body::Full))
        }
        _ => map_item(direction, prefix, target, object, Some(body_of(target)?)),
    }
}

fn map_list(
    direction: Direction,
    prefix: &Prefix,
    target: &Target,
    list: &mut Map<String, Value>,
    items_are: Option<Body>,
) -> Result<()> {
    let items = match list.get_mut("items") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(malformed("items", "an array")),
    };
    for item in items {
        let item = as_object(item, "items[]")?;
        match items_are {
            Some(body) => map_item(direction, prefix, target, item, Some(body))?,
            // A generic List names each item's kind; each is mapped as its own resource.
            None => {
                let api_version = string_field(item, "items[].apiVersion")?
                    .ok_or_else(|| malformed("items[].apiVersion", "an apiVersion"))?;
                let kind = kind_of(item)?.ok_or_else(|| malformed("items[].kind", "a kind"))?;
                let resource = kinds::by_kind(api_version, kind)?;
                map_item(
                    direction,
                    prefix,
                    &Target::new(resource),
                    item,
                    Some(Body::Full),
                )?;
            }
        }
    }
    Ok(())
}

/// Maps one object whose kind must fit the target; `expected` is what an item without a
/// kind (as in typed lists) is taken to be.
fn map_item(
    direction: Direction,
    prefix: &Prefix,
    target: &Target,
    object: &mut Map<String, Value>,
    expected: Option<Body>,
) -> Result<()> {
    let resource = target.resource;
    let body = match kind_of(object)? {
        None => expected.ok_or_else(|| malformed("kind", "a kind"))?,
        Some("PartialObjectMetadata") => Body::Partial,
        Some(kind) if kind == resource.kind && expected != Some(Body::Transient) => {
            if let Some(api_version) = string_field(object, "apiVersion")?
                && kinds::split_api_version(api_version).0 != resource.group
            {
                return Err(Error::KindMismatch {
                    expected: format!("{} of group {:?}", resource.kind, resource.group),
                    found: format!("{kind} of {api_version:?}"),
                });
            }
            Body::Full
        }
        Some("Scale") if target.subresource == Some(Subresource::Scale) => Body::Transient,
        Some("Eviction") if target.subresource == Some(Subresource::Eviction) => Body::Transient,
        Some(kind) => {
            return Err(Error::KindMismatch {
                expected: resource.kind.to_string(),
                found: kind.to_string(),
            });
        }
    };
    let labelled = body != Body::Transient;
    match direction {
        Direction::ToBacking => {
            map_metadata(direction, prefix, resource, object, labelled)?;
            if body == Body::Full {
                map_body(direction, prefix, resource, object)?;
            }
        }
        Direction::FromBacking => {
            if body == Body::Full {
                map_body(direction, prefix, resource, object)?;
            }
            map_metadata(direction, prefix, resource, object, labelled)?;
        }
    }
    Ok(())
}

fn map_metadata(
    direction: Direction,
    prefix: &Prefix,
    resource: &Resource,
    object: &mut Map<String, Value>,
    labelled: bool,
) -> Result<()> {
    let metadata = match (object.get_mut("metadata"), direction) {
        (Some(metadata), _) => as_object(metadata, "metadata")?,
        (None, Direction::FromBacking) if labelled => {
            return Err(Error::MissingTenancyLabel {
                name: String::new(),
            });
        }
        (None, Direction::FromBacking) => return Ok(()),
        (None, Direction::ToBacking) => {
            let metadata = object
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            as_object(metadata, "metadata")?
        }
    };
    let namespace =
        |ns: &str| names::map_name(direction, prefix, NameRule::DnsLabel, "namespace", ns);
    match resource.scope {
        Scope::Namespaced => map_string(metadata, "namespace", "metadata.namespace", namespace)?,
        Scope::Cluster(_) | Scope::Namespace => {
            if string_field(metadata, "metadata.namespace")?.is_some_and(|ns| !ns.is_empty()) {
                return Err(Error::UnsupportedField {
                    field: "metadata.namespace".into(),
                    why: "a cluster-scoped object has no namespace",
                });
            }
        }
    }
    match resource.scope {
        Scope::Namespaced => {}
        Scope::Namespace => map_string(metadata, "name", "metadata.name", namespace)?,
        Scope::Cluster(rule) => map_string(metadata, "name", "metadata.name", |name| {
            names::map_name(direction, prefix, rule, resource.kind, name)
        })?,
    }
    if resource.scope != Scope::Namespaced {
        map_string(metadata, "generateName", "metadata.generateName", |g| {
            names::map_generate_name(direction, prefix, g)
        })?;
    }
    // For messages only: a nameless object (a create with generateName) is still mapped.
    let name = string_field(metadata, "metadata.name")?
        .unwrap_or_default()
        .to_string();
    map_labels(direction, prefix, resource, metadata, labelled, &name)?;
    map_annotations(direction, metadata)?;
    map_owner_references(direction, prefix, metadata)?;
    if direction == Direction::FromBacking {
        strip_managed_fields(metadata)?;
    }
    Ok(())
}

fn map_labels(
    direction: Direction,
    prefix: &Prefix,
    resource: &Resource,
    metadata: &mut Map<String, Value>,
    labelled: bool,
    name: &str,
) -> Result<()> {
    if direction == Direction::ToBacking
        && labelled
        && matches!(metadata.get("labels"), None | Some(Value::Null))
    {
        metadata.insert("labels".into(), Value::Object(Map::new()));
    }
    let labels = match metadata.get_mut("labels") {
        None | Some(Value::Null) if direction == Direction::FromBacking && labelled => {
            return Err(Error::MissingTenancyLabel {
                name: name.to_string(),
            });
        }
        None | Some(Value::Null) => return Ok(()),
        Some(labels) => as_object(labels, "metadata.labels")?,
    };
    match direction {
        Direction::ToBacking => {
            if let Some(key) = labels.keys().find(|k| names::is_reserved_key(k)) {
                return Err(Error::ReservedKey { key: key.clone() });
            }
            if labelled {
                labels.insert(CLUSTER_LABEL.to_string(), Value::String(prefix.to_string()));
            }
        }
        Direction::FromBacking => {
            if labelled {
                match labels.remove(CLUSTER_LABEL) {
                    None => {
                        return Err(Error::MissingTenancyLabel {
                            name: name.to_string(),
                        });
                    }
                    Some(Value::String(found)) if found == prefix.as_str() => {}
                    Some(found) => {
                        return Err(Error::ForeignObject {
                            name: name.to_string(),
                            found: found.to_string(),
                        });
                    }
                }
            }
            if let Some(key) = labels.keys().find(|k| names::is_reserved_key(k)) {
                return Err(Error::CorruptRecord {
                    what: "labels",
                    message: format!("unexpected reserved label {key}"),
                });
            }
        }
    }
    if resource.scope == Scope::Namespace {
        map_string(labels, NAMESPACE_NAME_LABEL, "metadata.labels", |ns| {
            names::map_name(direction, prefix, NameRule::DnsLabel, "namespace", ns)
        })?;
    }
    if labels.is_empty() {
        metadata.remove("labels");
    }
    Ok(())
}

fn map_annotations(direction: Direction, metadata: &mut Map<String, Value>) -> Result<()> {
    let annotations = match metadata.get_mut("annotations") {
        None | Some(Value::Null) => return Ok(()),
        Some(annotations) => as_object(annotations, "metadata.annotations")?,
    };
    match direction {
        Direction::ToBacking => {
            if let Some(key) = annotations.keys().find(|k| names::is_reserved_key(k)) {
                return Err(Error::ReservedKey { key: key.clone() });
            }
        }
        Direction::FromBacking => {
            // A metadata-only view of a role still carries the rules record: hide it.
            annotations.remove(RULES_ANNOTATION);
            if let Some(key) = annotations.keys().find(|k| names::is_reserved_key(k)) {
                return Err(Error::CorruptRecord {
                    what: "annotations",
                    message: format!("unexpected reserved annotation {key}"),
                });
            }
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
    }
    Ok(())
}

fn map_owner_references(
    direction: Direction,
    prefix: &Prefix,
    metadata: &mut Map<String, Value>,
) -> Result<()> {
    let owners = match metadata.get_mut("ownerReferences") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(owners)) => owners,
        Some(_) => return Err(malformed("metadata.ownerReferences", "an array")),
    };
    for owner in owners {
        let owner = as_object(owner, "metadata.ownerReferences[]")?;
        let api_version = string_field(owner, "ownerReferences[].apiVersion")?
            .ok_or_else(|| malformed("metadata.ownerReferences[].apiVersion", "an apiVersion"))?;
        let kind = string_field(owner, "ownerReferences[].kind")?
            .ok_or_else(|| malformed("metadata.ownerReferences[].kind", "a kind"))?;
        let resource = kinds::by_kind(api_version, kind)?;
        let path = "metadata.ownerReferences[].name";
        match resource.scope {
            Scope::Namespaced => {}
            Scope::Namespace => map_string(owner, "name", path, |n| {
                names::map_name(direction, prefix, NameRule::DnsLabel, "namespace", n)
            })?,
            Scope::Cluster(rule) => map_string(owner, "name", path, |n| {
                names::map_name(direction, prefix, rule, resource.kind, n)
            })?,
        }
    }
    Ok(())
}

/// Server-side apply records which manager owns which field; the front's label and rules
/// annotation are its own and stay out of the client's sight.
fn strip_managed_fields(metadata: &mut Map<String, Value>) -> Result<()> {
    let entries = match metadata.get_mut("managedFields") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(malformed("metadata.managedFields", "an array")),
    };
    for entry in entries {
        let Some(Value::Object(meta)) = entry
            .get_mut("fieldsV1")
            .and_then(|f| f.get_mut("f:metadata"))
        else {
            continue;
        };
        for (set, key) in [
            ("f:labels", CLUSTER_LABEL),
            ("f:annotations", RULES_ANNOTATION),
        ] {
            if let Some(Value::Object(fields)) = meta.get_mut(set) {
                fields.remove(&format!("f:{key}"));
                if fields.is_empty() {
                    meta.remove(set);
                }
            }
        }
        if meta.is_empty()
            && let Some(Value::Object(fields)) = entry.get_mut("fieldsV1")
        {
            fields.remove("f:metadata");
        }
    }
    Ok(())
}

fn map_body(
    direction: Direction,
    prefix: &Prefix,
    resource: &Resource,
    object: &mut Map<String, Value>,
) -> Result<()> {
    let node = |name: &str| node_name(direction, prefix, name);
    let namespace =
        |ns: &str| names::map_name(direction, prefix, NameRule::DnsLabel, "namespace", ns);
    match (resource.group, resource.kind) {
        ("", "Pod") => {
            map_string_at(object, &["spec", "nodeName"], node)?;
            map_string_at(object, &["status", "nominatedNodeName"], node)
        }
        ("", "Event") => {
            map_string_at(object, &["involvedObject", "namespace"], namespace)?;
            map_string_at(object, &["related", "namespace"], namespace)
        }
        ("events.k8s.io", "Event") => {
            map_string_at(object, &["regarding", "namespace"], namespace)?;
            map_string_at(object, &["related", "namespace"], namespace)
        }
        ("", "Secret") => {
            // The backing server would fill such a Secret with a token of its own.
            if direction == Direction::ToBacking
                && string_field(object, "type")? == Some("kubernetes.io/service-account-token")
            {
                return Err(Error::UnsupportedField {
                    field: "type".into(),
                    why: "service account token Secrets would hold a credential of the backing server",
                });
            }
            Ok(())
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => rbac::map_role(direction, object),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            rbac::map_binding(direction, prefix, object)
        }
        ("storage.k8s.io", "VolumeAttachment") => {
            map_string_at(object, &["spec", "nodeName"], node)?;
            map_string_at(object, &["spec", "source", "persistentVolumeName"], |pv| {
                names::map_name(
                    direction,
                    prefix,
                    NameRule::DnsSubdomain,
                    "PersistentVolume",
                    pv,
                )
            })
        }
        _ => Ok(()),
    }
}

fn node_name(direction: Direction, prefix: &Prefix, name: &str) -> Result<String> {
    match kinds::node().scope {
        Scope::Cluster(rule) => names::map_name(direction, prefix, rule, "Node", name),
        _ => Ok(name.to_string()),
    }
}

fn map_table(
    direction: Direction,
    prefix: &Prefix,
    target: &Target,
    table: &mut Map<String, Value>,
) -> Result<()> {
    let resource = target.resource;
    let node_columns = match resource.table {
        TableCells::NodeColumns(columns) => columns,
        TableCells::Refused => {
            return Err(Error::TableUnsupported {
                resource: resource.display_name(),
            });
        }
    };
    let mut name_column = None;
    let mut node_cells = Vec::new();
    if let Some(columns) = table.get("columnDefinitions") {
        let columns = columns
            .as_array()
            .ok_or_else(|| malformed("columnDefinitions", "an array"))?;
        for (i, column) in columns.iter().enumerate() {
            let column_name = column.get("name").and_then(Value::as_str);
            if name_column.is_none() && column.get("format").and_then(Value::as_str) == Some("name")
            {
                name_column = Some(i);
            } else if column_name.is_some_and(|n| node_columns.contains(&n)) {
                node_cells.push(i);
            }
        }
    }
    let rows = match table.get_mut("rows") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(rows)) => rows,
        Some(_) => return Err(malformed("rows", "an array")),
    };
    for row in rows {
        let row = as_object(row, "rows[]")?;
        if let Some(Value::Array(cells)) = row.get_mut("cells") {
            if let Some(cell) = name_column.and_then(|i| cells.get_mut(i)) {
                map_cell(cell, |name| match resource.scope {
                    Scope::Namespaced => Ok(name.to_string()),
                    Scope::Namespace => {
                        names::map_name(direction, prefix, NameRule::DnsLabel, "namespace", name)
                    }
                    Scope::Cluster(rule) => {
                        names::map_name(direction, prefix, rule, resource.kind, name)
                    }
                })?;
            }
            for i in &node_cells {
                if let Some(cell) = cells.get_mut(*i) {
                    map_cell(cell, |name| match name {
                        "<none>" => Ok(name.to_string()),
                        _ => node_name(direction, prefix, name),
                    })?;
                }
            }
        }
        match row.get_mut("object") {
            None | Some(Value::Null) => {}
            Some(object) => map_answer(direction, prefix, target, object)?,
        }
    }
    Ok(())
}

fn map_cell(cell: &mut Value, map: impl FnOnce(&str) -> Result<String>) -> Result<()> {
    match cell {
        Value::String(s) if !s.is_empty() => {
            *s = map(s)?;
            Ok(())
        }
        Value::String(_) | Value::Null => Ok(()),
        _ => Err(malformed("rows[].cells[]", "a string")),
    }
}

fn map_event(
    direction: Direction,
    prefix: &Prefix,
    target: &Target,
    event: &mut Value,
) -> Result<()> {
    let event = as_object(event, "watch event")?;
    let kind = string_field(event, "type")?
        .ok_or_else(|| malformed("type", "a watch event type"))?
        .to_string();
    let object = event
        .get_mut("object")
        .ok_or_else(|| malformed("object", "an object"))?;
    match kind.as_str() {
        "ADDED" | "MODIFIED" | "DELETED" => map_answer(direction, prefix, target, object),
        // A bookmark carries only a resourceVersion (and annotations such as the end of
        // the initial events): nothing to map, but nothing to leak either.
        "BOOKMARK" => {
            let metadata = as_object(object, "object")?
                .get("metadata")
                .and_then(Value::as_object);
            let named = metadata.is_some_and(|m| {
                ["name", "namespace", "labels"]
                    .iter()
                    .any(|k| m.get(*k).is_some_and(|v| !v.is_null() && v != ""))
            });
            if named {
                return Err(malformed("BOOKMARK object", "no name, namespace or labels"));
            }
            Ok(())
        }
        "ERROR" => {
            let status = as_object(object, "object")?;
            if kind_of(status)? != Some("Status") {
                return Err(malformed("ERROR object", "a Status"));
            }
            if direction == Direction::FromBacking {
                map_status(prefix, status)?;
            }
            Ok(())
        }
        _ => Err(Error::UnknownWatchEvent { kind }),
    }
}

/// A Status names what a request was about: the mapped name of a cluster-scoped object in
/// `details`, and backing namespaces in the message. Both are put back in the client's
/// terms; the message rewrite covers the server's usual phrasings, not every sentence.
fn map_status(prefix: &Prefix, status: &mut Map<String, Value>) -> Result<()> {
    let mut renamed = None;
    if let Some(Value::Object(details)) = status.get_mut("details") {
        // No group is the core group.
        let group = string_field(details, "details.group")?
            .unwrap_or("")
            .to_string();
        let plural = string_field(details, "details.kind")?
            .unwrap_or("")
            .to_string();
        let resource = kinds::RESOURCES
            .iter()
            .find(|r| r.group == group && r.plural == plural);
        if let (Some(resource), Some(Value::String(name))) = (resource, details.get_mut("name")) {
            let tenant = match resource.scope {
                Scope::Namespaced => None,
                Scope::Namespace => names::tenant_namespace(prefix, name).ok(),
                Scope::Cluster(rule) => names::tenant_name(prefix, rule, resource.kind, name).ok(),
            };
            if let Some(tenant) = tenant {
                renamed = Some((std::mem::replace(name, tenant.clone()), tenant));
            }
        }
    }
    if let Some(Value::String(message)) = status.get_mut("message") {
        let mut rewritten = message.clone();
        if let Some((backing, tenant)) = &renamed {
            rewritten = rewritten.replace(&format!("\"{backing}\""), &format!("\"{tenant}\""));
        }
        for (from, to) in [
            (format!("namespace \"{prefix}-"), "namespace \""),
            (format!("namespace {prefix}-"), "namespace "),
        ] {
            rewritten = rewritten.replace(&from, to);
        }
        *message = rewritten;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
