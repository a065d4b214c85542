//! The patch strategies of one kind's fields, read from the API server's OpenAPI v3
//! document, where `x-kubernetes-patch-strategy` and `x-kubernetes-patch-merge-key` sit on
//! each field's own schema (beside the `allOf: [{$ref}]` that v3 uses to give a referenced
//! field a description or a default).
//!
//! The schema is compiled once into a graph: each component becomes one node, so the
//! recursive components (`JSONSchemaProps`) become cycles in the graph rather than endless
//! trees, and components are visited from a work list rather than by recursion.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

const REF_PREFIX: &str = "#/components/schemas/";
const STRATEGY_EXTENSION: &str = "x-kubernetes-patch-strategy";
const MERGE_KEY_EXTENSION: &str = "x-kubernetes-patch-merge-key";
const GVK_EXTENSION: &str = "x-kubernetes-group-version-kind";

/// Schemas nested inline (not through `$ref`) deeper than this are refused: no API server
/// document comes close, and it bounds the recursion.
const MAX_INLINE_DEPTH: usize = 64;
/// A component that is only a `$ref` to another is followed this many times at most.
const MAX_ALIASES: usize = 16;

/// How a patch treats one list field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the original: no extension, or a field the schema does not
    /// know.
    Replace,
    /// `merge` without a merge key: the union of both lists' values (lists of primitives,
    /// such as `metadata.finalizers`).
    Merge,
    /// `merge` with a merge key: items with the same value of the key are merged, others
    /// added (`status.conditions` by `type`).
    MergeByKey(String),
}

/// What the OpenAPI document says of one field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldStrategy {
    /// `merge`: a list is merged rather than replaced.
    pub merge: bool,
    /// `replace`: an object is replaced whole rather than merged.
    pub replace: bool,
    /// `retainKeys`: clients send a `$retainKeys` list for this object, or for the items of
    /// this list. Only informative here: applying obeys the directive wherever it is sent,
    /// as the API server does.
    pub retain_keys: bool,
    /// `x-kubernetes-patch-merge-key`.
    pub merge_key: Option<String>,
}

impl FieldStrategy {
    /// The strategy of a field the schema does not know: objects merge, lists are replaced.
    pub const UNKNOWN: FieldStrategy = FieldStrategy {
        merge: false,
        replace: false,
        retain_keys: false,
        merge_key: None,
    };

    /// How the field is patched if it is a list.
    pub fn list(&self) -> ListStrategy {
        match (&self.merge_key, self.merge) {
            (_, false) => ListStrategy::Replace,
            (None, true) => ListStrategy::Merge,
            (Some(key), true) => ListStrategy::MergeByKey(key.clone()),
        }
    }

    fn parse(field: &str, schema: &Map<String, Value>) -> Result<FieldStrategy> {
        let invalid = |value: &Value| Error::InvalidStrategy {
            field: field.to_owned(),
            value: value.to_string(),
        };
        let mut strategy = FieldStrategy::default();
        if let Some(value) = schema.get(STRATEGY_EXTENSION) {
            let text = value.as_str().ok_or_else(|| invalid(value))?;
            for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                match token {
                    "merge" if !strategy.replace => strategy.merge = true,
                    "replace" if !strategy.merge => strategy.replace = true,
                    "retainKeys" => strategy.retain_keys = true,
                    _ => return Err(invalid(value)),
                }
            }
        }
        if let Some(value) = schema.get(MERGE_KEY_EXTENSION) {
            let key = value.as_str().ok_or_else(|| invalid(value))?;
            strategy.merge_key = Some(key.to_owned());
        }
        Ok(strategy)
    }
}

/// A node of the compiled schema graph.
pub(crate) type NodeId = usize;

#[derive(Debug, Clone)]
struct Field {
    strategy: FieldStrategy,
    node: Option<NodeId>,
}

#[derive(Debug, Clone)]
enum Node {
    Object {
        properties: HashMap<String, Field>,
        additional: Option<Field>,
    },
    Array {
        items: Option<NodeId>,
    },
    /// A component that is only a `$ref` to another.
    Alias(NodeId),
    /// Anything else: a primitive, a free-form object, or a component not yet compiled.
    Opaque,
}

/// The patch strategies of one kind's fields. The default schema knows no field: objects
/// merge and lists are replaced everywhere, as in an RFC 7386 merge patch.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    nodes: Vec<Node>,
    root: Option<NodeId>,
}

impl Schema {
    /// Compiles the schema of one kind from an OpenAPI v3 document (as served at
    /// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`): the component whose
    /// `x-kubernetes-group-version-kind` names the kind (the core group is `""`), and every
    /// component it reaches through `$ref`, `allOf`, `properties`, `items` and
    /// `additionalProperties`.
    pub fn from_openapi_v3(
        document: &Value,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Result<Schema> {
        let not_found = || Error::KindNotFound {
            api_version: if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.to_owned(),
        };
        let components = document
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .ok_or_else(not_found)?;
        let name = components
            .iter()
            .find(|(_, schema)| names_kind(schema, group, version, kind))
            .map(|(name, _)| name.as_str())
            .ok_or_else(not_found)?;
        let mut builder = Builder {
            components,
            nodes: Vec::new(),
            ids: HashMap::new(),
            pending: Vec::new(),
        };
        let root = builder.component(name)?;
        while let Some((name, schema, id)) = builder.pending.pop() {
            let node = match builder.shape(name, schema, 0)? {
                Shape::Node(node) => node,
                Shape::Ref(target) => Node::Alias(target),
                Shape::Opaque => Node::Opaque,
            };
            builder.nodes[id] = node;
        }
        Ok(Schema {
            nodes: builder.nodes,
            root: Some(root),
        })
    }

    /// What the schema says of the field at `path`: field names from the kind's root, list
    /// items implicit (`["spec", "containers", "env"]`), any key of a map
    /// (`additionalProperties`) standing for its values. `None` when the schema does not
    /// know the path.
    pub fn field(&self, path: &[&str]) -> Option<&FieldStrategy> {
        let mut node = self.root;
        let mut found = None;
        for name in path {
            let (strategy, next) = self.child(node?, name)?;
            found = Some(strategy);
            node = next;
        }
        found
    }

    /// How the list at `path` is patched: [`ListStrategy::Replace`] when the schema does not
    /// know it.
    pub fn list_strategy(&self, path: &[&str]) -> ListStrategy {
        self.field(path)
            .map_or(ListStrategy::Replace, FieldStrategy::list)
    }

    pub(crate) fn root(&self) -> Option<NodeId> {
        self.root
    }

    /// The field `name` of an object node, looking through lists to their items.
    pub(crate) fn child(
        &self,
        node: NodeId,
        name: &str,
    ) -> Option<(&FieldStrategy, Option<NodeId>)> {
        let mut node = self.resolve(node)?;
        for _ in 0..MAX_ALIASES {
            match node {
                Node::Array { items } => node = self.resolve((*items)?)?,
                Node::Object {
                    properties,
                    additional,
                } => {
                    let field = properties.get(name).or(additional.as_ref())?;
                    return Some((&field.strategy, field.node));
                }
                Node::Alias(_) | Node::Opaque => return None,
            }
        }
        None
    }

    /// The items of a list node.
    pub(crate) fn items(&self, node: Option<NodeId>) -> Option<NodeId> {
        match self.resolve(node?)? {
            Node::Array { items } => *items,
            _ => None,
        }
    }

    fn resolve(&self, mut id: NodeId) -> Option<&Node> {
        for _ in 0..MAX_ALIASES {
            match self.nodes.get(id)? {
                Node::Alias(target) => id = *target,
                node => return Some(node),
            }
        }
        None
    }
}

fn names_kind(schema: &Value, group: &str, version: &str, kind: &str) -> bool {
    let Some(gvks) = schema.get(GVK_EXTENSION).and_then(Value::as_array) else {
        return false;
    };
    gvks.iter().any(|gvk| {
        gvk.get("group").and_then(Value::as_str).unwrap_or("") == group
            && gvk.get("version").and_then(Value::as_str) == Some(version)
            && gvk.get("kind").and_then(Value::as_str) == Some(kind)
    })
}

enum Shape {
    Node(Node),
    Ref(NodeId),
    Opaque,
}

struct Builder<'d> {
    components: &'d Map<String, Value>,
    nodes: Vec<Node>,
    ids: HashMap<&'d str, NodeId>,
    pending: Vec<(&'d str, &'d Value, NodeId)>,
}

impl<'d> Builder<'d> {
    /// The node of a component, allocated on first sight and compiled later from the work
    /// list.
    fn component(&mut self, name: &str) -> Result<NodeId> {
        let (name, schema) =
            self.components
                .get_key_value(name)
                .ok_or_else(|| Error::UnresolvedReference {
                    reference: format!("{REF_PREFIX}{name}"),
                })?;
        if let Some(&id) = self.ids.get(name.as_str()) {
            return Ok(id);
        }
        let id = self.nodes.len();
        self.nodes.push(Node::Opaque);
        self.ids.insert(name, id);
        self.pending.push((name, schema, id));
        Ok(id)
    }

    fn reference(&mut self, reference: &str) -> Result<NodeId> {
        let unresolved = || Error::UnresolvedReference {
            reference: reference.to_owned(),
        };
        let name = reference.strip_prefix(REF_PREFIX).ok_or_else(unresolved)?;
        // JSON pointer escapes; kube's component names never need them, others might.
        let name = name.replace("~1", "/").replace("~0", "~");
        self.component(&name)
    }

    fn node(&mut self, at: &str, schema: &'d Value, depth: usize) -> Result<Option<NodeId>> {
        Ok(match self.shape(at, schema, depth)? {
            Shape::Node(node) => {
                self.nodes.push(node);
                Some(self.nodes.len() - 1)
            }
            Shape::Ref(id) => Some(id),
            Shape::Opaque => None,
        })
    }

    fn shape(&mut self, at: &str, schema: &'d Value, depth: usize) -> Result<Shape> {
        if depth > MAX_INLINE_DEPTH {
            return Err(Error::TooDeep {
                what: "the OpenAPI schema",
                max: MAX_INLINE_DEPTH,
            });
        }
        let Some(schema) = schema.as_object() else {
            return Ok(Shape::Opaque);
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            return self.reference(reference).map(Shape::Ref);
        }
        // Like the API server, only the first of `allOf` counts: v3 wraps a lone `$ref` in
        // it so the field can carry a default and a description.
        if let Some(first) = schema
            .get("allOf")
            .and_then(Value::as_array)
            .and_then(|all| all.first())
        {
            return self.shape(at, first, depth + 1);
        }
        if let Some(items) = schema.get("items") {
            let items = self.node(&format!("{at}[]"), items, depth + 1)?;
            return Ok(Shape::Node(Node::Array { items }));
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties").filter(|a| a.is_object());
        if properties.is_none() && additional.is_none() {
            return Ok(Shape::Opaque);
        }
        let mut fields = HashMap::new();
        for (name, property) in properties.into_iter().flatten() {
            let at = format!("{at}.{name}");
            fields.insert(name.clone(), self.field(&at, property, depth + 1)?);
        }
        let additional = match additional {
            Some(schema) => Some(self.field(&format!("{at}.*"), schema, depth + 1)?),
            None => None,
        };
        Ok(Shape::Node(Node::Object {
            properties: fields,
            additional,
        }))
    }

    fn field(&mut self, at: &str, schema: &'d Value, depth: usize) -> Result<Field> {
        let strategy = match schema.as_object() {
            Some(schema) => FieldStrategy::parse(at, schema)?,
            None => FieldStrategy::default(),
        };
        Ok(Field {
            strategy,
            node: self.node(at, schema, depth)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn document() -> Value {
        json!({"components": {"schemas": {
            "v1.Thing": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "example.io", "version": "v1", "kind": "Thing"}],
                "properties": {
                    "spec": {"allOf": [{"$ref": "#/components/schemas/v1.ThingSpec"}], "default": {}},
                    "props": {"$ref": "#/components/schemas/v1.Props"}
                }
            },
            "v1.ThingSpec": {
                "type": "object",
                "properties": {
                    "parts": {
                        "type": "array",
                        "items": {"allOf": [{"$ref": "#/components/schemas/v1.Part"}], "default": {}},
                        "x-kubernetes-patch-strategy": "merge,retainKeys",
                        "x-kubernetes-patch-merge-key": "name"
                    },
                    "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-patch-strategy": "merge"},
                    "plain": {"type": "array", "items": {"type": "string"}},
                    "byName": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/v1.Part"}},
                    "rollout": {"allOf": [{"$ref": "#/components/schemas/v1.Part"}], "x-kubernetes-patch-strategy": "retainKeys"}
                }
            },
            "v1.Part": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "ports": {"type": "array", "items": {"type": "object"}, "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "port"}
                }
            },
            "v1.Props": {
                "type": "object",
                "properties": {
                    "not": {"$ref": "#/components/schemas/v1.Props"},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/v1.Props"}, "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "id"}
                }
            }
        }}})
    }

    fn thing() -> Schema {
        match Schema::from_openapi_v3(&document(), "example.io", "v1", "Thing") {
            Ok(schema) => schema,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn reads_list_strategies_through_all_of_and_items() {
        let schema = thing();
        assert_eq!(
            schema.list_strategy(&["spec", "parts"]),
            ListStrategy::MergeByKey("name".into())
        );
        assert_eq!(schema.list_strategy(&["spec", "tags"]), ListStrategy::Merge);
        assert_eq!(
            schema.list_strategy(&["spec", "plain"]),
            ListStrategy::Replace
        );
        assert_eq!(
            schema.list_strategy(&["spec", "parts", "ports"]),
            ListStrategy::MergeByKey("port".into())
        );
        assert_eq!(
            schema.list_strategy(&["spec", "unknown"]),
            ListStrategy::Replace
        );
        let parts = schema.field(&["spec", "parts"]);
        assert!(parts.is_some_and(|p| p.retain_keys && p.merge));
    }

    #[test]
    fn reads_retain_keys_on_objects_and_map_values() {
        let schema = thing();
        let rollout = schema.field(&["spec", "rollout"]);
        assert!(rollout.is_some_and(|r| r.retain_keys && !r.merge && !r.replace));
        assert_eq!(
            schema.list_strategy(&["spec", "byName", "anything", "ports"]),
            ListStrategy::MergeByKey("port".into())
        );
    }

    #[test]
    fn recursive_components_terminate() {
        let schema = thing();
        let deep = ["props", "not", "not", "items", "not", "items", "items"];
        assert_eq!(
            schema.list_strategy(&deep),
            ListStrategy::MergeByKey("id".into())
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let missing = Schema::from_openapi_v3(&document(), "", "v1", "Thing");
        assert!(matches!(missing, Err(Error::KindNotFound { .. })));
        let mut dangling = document();
        dangling["components"]["schemas"]
            .as_object_mut()
            .map(|s| s.remove("v1.Part"));
        let dangling = Schema::from_openapi_v3(&dangling, "example.io", "v1", "Thing");
        assert!(matches!(dangling, Err(Error::UnresolvedReference { .. })));
        let mut odd = document();
        odd["components"]["schemas"]["v1.ThingSpec"]["properties"]["tags"][STRATEGY_EXTENSION] =
            json!("merge,replace");
        let odd = Schema::from_openapi_v3(&odd, "example.io", "v1", "Thing");
        assert!(matches!(odd, Err(Error::InvalidStrategy { .. })));
    }

    #[test]
    fn core_group_is_empty() {
        let mut doc = document();
        doc["components"]["schemas"]["v1.Thing"][GVK_EXTENSION] =
            json!([{"group": "", "version": "v1", "kind": "Thing"}]);
        assert!(Schema::from_openapi_v3(&doc, "", "v1", "Thing").is_ok());
        let err = Schema::from_openapi_v3(&doc, "", "v2", "Thing").err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("the OpenAPI document has no schema for kind Thing of v2".to_owned())
        );
    }

    #[test]
    fn default_schema_knows_nothing() {
        let schema = Schema::default();
        assert_eq!(schema.field(&["spec"]), None);
        assert_eq!(
            schema.list_strategy(&["metadata", "finalizers"]),
            ListStrategy::Replace
        );
    }
}
