//! Applying a patch: a walk of the patch alongside the original object and the schema.
//!
//! Each rule follows what the API server does, including where it looks odd (a `$patch:
//! delete` map leaves `{}`, a new item may land before server-only items): a proxy applying
//! patches itself must answer what the server would have. Where the server keeps directive
//! keys or nulls in a value and relies on decoding into its typed object to drop them, they
//! are dropped here, since nothing decodes the result before it is written back.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::schema::{FieldStrategy, NodeId, Schema};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

/// The deepest nesting of a patch that is applied. A JSON body parsed by `serde_json` cannot
/// nest deeper anyway; values built otherwise are refused rather than overflow the stack.
pub const MAX_DEPTH: usize = 128;

/// Directive values echoed in errors are cut to this many characters.
const SHOWN_CHARS: usize = 64;

static UNKNOWN: FieldStrategy = FieldStrategy::UNKNOWN;

/// Applies a strategic merge patch to `original`, as the API server does for
/// `application/strategic-merge-patch+json`. `null` as either document stands for `{}`, as
/// it does for the server.
pub fn apply(original: Value, patch: &Value, schema: &Schema) -> Result<Value> {
    let mut object = match original {
        Value::Object(object) => object,
        Value::Null => Map::new(),
        _ => {
            return Err(Error::NotAnObject {
                what: "the object to patch",
            });
        }
    };
    match patch {
        Value::Object(patch) => {
            let mut walk = Walk {
                schema,
                path: Vec::new(),
            };
            walk.object(&mut object, patch, schema.root(), 0)?;
        }
        Value::Null => {}
        _ => return Err(Error::NotAnObject { what: "the patch" }),
    }
    Ok(Value::Object(object))
}

/// How items of a merged list are told apart: by merge key, or by value.
type Key<'a> = Option<&'a str>;

struct Walk<'s, 'p> {
    schema: &'s Schema,
    /// The field names from the root to where the walk is, for errors.
    path: Vec<&'p str>,
}

impl<'s, 'p> Walk<'s, 'p> {
    fn path(&self) -> String {
        if self.path.is_empty() {
            ".".to_owned()
        } else {
            self.path.join(".")
        }
    }

    fn field(&self, node: Option<NodeId>, name: &str) -> (&'s FieldStrategy, Option<NodeId>) {
        node.and_then(|node| self.schema.child(node, name))
            .unwrap_or((&UNKNOWN, None))
    }

    /// Merges a patch object into an object, obeying the directives among its keys.
    fn object(
        &mut self,
        original: &mut Map<String, Value>,
        patch: &'p Map<String, Value>,
        node: Option<NodeId>,
        depth: usize,
    ) -> Result<()> {
        check_depth(depth)?;
        if let Some(directive) = patch.get(PATCH) {
            return match directive.as_str() {
                Some("replace") => {
                    *original = stripped_map(patch, depth)?;
                    Ok(())
                }
                // The server leaves an empty object, not an absent field.
                Some("delete") => {
                    original.clear();
                    Ok(())
                }
                Some("merge") => Err(Error::MergeDirective { path: self.path() }),
                _ => Err(self.unknown_directive(directive)),
            };
        }
        if let Some(retain) = patch.get(RETAIN_KEYS) {
            self.retain_keys(original, patch, retain)?;
        }
        let ordered = self.set_element_orders(original, patch, node, depth)?;
        for (key, value) in patch {
            if is_directive(key) || ordered.contains(key.as_str()) {
                continue;
            }
            let (strategy, child) = self.field(node, key);
            self.path.push(key);
            self.set(original, key, value, strategy, child, depth)?;
            self.path.pop();
        }
        // Deletions last, so that a value both added and deleted is deleted whatever the
        // order of the patch's keys (the server's order is that of a Go map: random).
        for (key, values) in patch {
            let Some(rest) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else {
                continue;
            };
            let field = self.directive_field(key, rest)?;
            let Value::Array(values) = values else {
                return Err(self.malformed(key, "must be a list"));
            };
            let (strategy, child) = self.field(node, field);
            self.path.push(field);
            // Like the server, a deletion from a field that is absent or not a list does
            // nothing.
            if let Some(Value::Array(list)) = original.get_mut(field) {
                let items = self.schema.items(child);
                let taken = std::mem::take(list);
                *list = self.list(taken, values, strategy, items, true, depth + 1)?;
            }
            self.path.pop();
        }
        Ok(())
    }

    /// Sets one field of an object from the patch.
    fn set(
        &mut self,
        original: &mut Map<String, Value>,
        key: &'p str,
        value: &'p Value,
        strategy: &FieldStrategy,
        child: Option<NodeId>,
        depth: usize,
    ) -> Result<()> {
        if value.is_null() {
            original.remove(key);
            return Ok(());
        }
        if let (Some(Value::Object(target)), Value::Object(patch)) = (original.get_mut(key), value)
        {
            if strategy.replace {
                *target = stripped_map(patch, depth + 1)?;
            } else {
                self.object(target, patch, child, depth + 1)?;
            }
            return Ok(());
        }
        if let (Some(Value::Array(target)), Value::Array(patch)) = (original.get_mut(key), value) {
            let items = self.schema.items(child);
            let taken = std::mem::take(target);
            *target = self.list(taken, patch, strategy, items, false, depth + 1)?;
            return Ok(());
        }
        // A new field, a primitive, or a change of type: the patch's value as it is.
        match fresh(value, depth + 1)? {
            Some(value) => original.insert(key.to_owned(), value),
            None => original.remove(key),
        };
        Ok(())
    }

    /// `$retainKeys`: the original keeps only the listed fields, and the patch may set no
    /// other.
    fn retain_keys(
        &self,
        original: &mut Map<String, Value>,
        patch: &Map<String, Value>,
        retain: &Value,
    ) -> Result<()> {
        let Value::Array(names) = retain else {
            return Err(self.malformed(RETAIN_KEYS, "must be a list of field names"));
        };
        let names: HashSet<&str> = names.iter().filter_map(Value::as_str).collect();
        for (key, value) in patch {
            let exempt = value.is_null()
                || key == RETAIN_KEYS
                || key.starts_with(SET_ELEMENT_ORDER)
                || key.starts_with(DELETE_FROM_PRIMITIVE_LIST);
            if !exempt && !names.contains(key.as_str()) {
                return Err(Error::NotRetained {
                    path: self.path(),
                    key: key.clone(),
                });
            }
        }
        original.retain(|key, _| names.contains(key.as_str()));
        Ok(())
    }

    /// Every `$setElementOrder/<field>` of a patch object: the field is patched, then
    /// ordered. Answers the fields done, which the rest of the walk skips.
    fn set_element_orders(
        &mut self,
        original: &mut Map<String, Value>,
        patch: &'p Map<String, Value>,
        node: Option<NodeId>,
        depth: usize,
    ) -> Result<HashSet<&'p str>> {
        let mut done = HashSet::new();
        for (key, order) in patch {
            let Some(rest) = key.strip_prefix(SET_ELEMENT_ORDER) else {
                continue;
            };
            let field = self.directive_field(key, rest)?;
            let Value::Array(order) = order else {
                return Err(self.malformed(key, "must be a list"));
            };
            done.insert(field);
            self.path.push(field);
            self.ordered(original, patch.get(field), field, order, node, depth + 1)?;
            self.path.pop();
        }
        Ok(done)
    }

    /// One field with a `$setElementOrder` list: the items it names come in its order; the
    /// others (the server's) keep their own order and are slotted in among them.
    fn ordered(
        &mut self,
        original: &mut Map<String, Value>,
        patch: Option<&'p Value>,
        field: &str,
        order: &[Value],
        node: Option<NodeId>,
        depth: usize,
    ) -> Result<()> {
        let (strategy, child) = self.field(node, field);
        let not_a_list = || Error::NotAList { path: self.path() };
        let current = match original.remove(field) {
            None => None,
            Some(Value::Array(list)) => Some(list),
            Some(_) => return Err(not_a_list()),
        };
        let patch = match patch {
            None => None,
            Some(Value::Array(list)) => Some(list.as_slice()),
            Some(_) => return Err(not_a_list()),
        };
        let key = strategy.merge_key.as_deref();
        self.check_order(patch.unwrap_or_default(), order, key)?;
        let empty = |list: Option<&[Value]>| list.is_none_or(<[Value]>::is_empty);
        if (current.is_some() || patch.is_some()) && empty(current.as_deref()) && empty(patch) {
            // The server cannot tell what such a list holds, and refuses.
            return Err(self.malformed(
                &format!("{SET_ELEMENT_ORDER}/{field}"),
                "has nothing to order: the list is empty in both the object and the patch",
            ));
        }
        let (merged, server) = match (current, patch) {
            (None, None) => return Ok(()),
            (Some(current), None) => {
                let server = self.identities(&current, key)?;
                (current, server)
            }
            (None, Some(patch)) => {
                let added = patch
                    .iter()
                    .map(|item| fresh(item, depth + 1))
                    .filter_map(Result::transpose)
                    .collect::<Result<Vec<_>>>()?;
                (added, Vec::new())
            }
            (Some(current), Some(patch)) => {
                let mut server = self.identities(&current, key)?;
                if let (true, Some(key)) = (strategy.merge, key) {
                    server = server_view(server, patch, key);
                }
                let items = self.schema.items(child);
                let merged = self.list(current, patch, strategy, items, false, depth)?;
                (merged, server)
            }
        };
        let ids = self.identities(&merged, key)?;
        let wanted = self.identities(order, key)?;
        let arranged = arrange(merged, ids, &positions(&wanted), &positions(&server));
        original.insert(field.to_owned(), Value::Array(arranged));
        Ok(())
    }

    /// The patch's items must come in the order of the `$setElementOrder` list, which names
    /// every one of them (deletions and directives aside).
    fn check_order(&self, patch: &[Value], order: &[Value], key: Key) -> Result<()> {
        if patch.is_empty() || order.is_empty() {
            return Ok(());
        }
        let mut items = Vec::with_capacity(patch.len());
        for item in patch {
            if let Some(key) = key {
                let fields = item.as_object().ok_or_else(|| self.not_object(key))?;
                if fields.get(PATCH).and_then(Value::as_str) == Some("delete") {
                    continue;
                }
            }
            items.push(item);
        }
        let (mut i, mut j) = (0, 0);
        while i < items.len() && j < order.len() {
            if has_patch_directive(items[i]) {
                i += 1;
                continue;
            }
            if self.identity(items[i], key)? == self.identity(&order[j], key)? {
                i += 1;
            }
            j += 1;
        }
        if i < items.len() {
            return Err(Error::OrderMismatch { path: self.path() });
        }
        Ok(())
    }

    /// Patches a list field: replaced, unless its strategy merges it (or the patch deletes
    /// values from it).
    fn list(
        &mut self,
        original: Vec<Value>,
        patch: &'p [Value],
        strategy: &FieldStrategy,
        items: Option<NodeId>,
        deleting: bool,
        depth: usize,
    ) -> Result<Vec<Value>> {
        check_depth(depth)?;
        if !strategy.merge && !deleting {
            return patch.iter().map(|item| stripped(item, depth + 1)).collect();
        }
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        if !self.holds_objects(&original, patch)? {
            return Ok(if deleting {
                let gone: HashSet<String> = patch.iter().map(Value::to_string).collect();
                original
                    .into_iter()
                    .filter(|value| !gone.contains(&value.to_string()))
                    .collect()
            } else {
                union(original, patch)
            });
        }
        if deleting {
            return Err(self.malformed(
                DELETE_FROM_PRIMITIVE_LIST,
                "applies to lists of primitives only",
            ));
        }
        let key = strategy
            .merge_key
            .as_deref()
            .ok_or_else(|| Error::NoMergeKey { path: self.path() })?;
        self.keyed(original, patch, key, items, depth)
    }

    /// Merges a list of objects by key: `$patch: delete` items remove the original's items
    /// with their key, a `$patch: replace` item makes the other items the whole list, and
    /// each other item is merged into the original's item with its key, or added.
    fn keyed(
        &mut self,
        original: Vec<Value>,
        patch: &'p [Value],
        key: &str,
        items: Option<NodeId>,
        depth: usize,
    ) -> Result<Vec<Value>> {
        let mut plain = Vec::with_capacity(patch.len());
        let mut deleted = HashSet::new();
        let mut replace = false;
        for item in patch {
            let fields = item.as_object().ok_or_else(|| self.not_object(key))?;
            let Some(directive) = fields.get(PATCH) else {
                plain.push(fields);
                continue;
            };
            match directive.as_str() {
                Some("delete") => {
                    deleted.insert(self.key_of(fields, key)?.to_string());
                }
                Some("replace") => replace = true,
                Some("merge") => return Err(Error::MergeDirective { path: self.path() }),
                _ => return Err(self.unknown_directive(directive)),
            }
        }
        if replace {
            return plain
                .into_iter()
                .map(|fields| {
                    self.key_of(fields, key)?;
                    Ok(Value::Object(stripped_map(fields, depth + 1)?))
                })
                .collect();
        }
        let mut list = Vec::with_capacity(original.len() + plain.len());
        let mut server = Vec::with_capacity(original.len());
        for item in original {
            let id = self.identity(&item, Some(key))?;
            if !deleted.contains(&id) {
                server.push(id);
                list.push(item);
            }
        }
        let mut index: HashMap<String, usize> = HashMap::with_capacity(list.len());
        for (i, id) in server.iter().enumerate() {
            index.entry(id.clone()).or_insert(i);
        }
        let mut wanted = Vec::with_capacity(plain.len());
        for fields in plain {
            let id = self.key_of(fields, key)?.to_string();
            match index.get(&id) {
                Some(&i) => {
                    if let Some(Value::Object(target)) = list.get_mut(i) {
                        self.object(target, fields, items, depth + 1)?;
                    }
                }
                None => {
                    index.insert(id.clone(), list.len());
                    list.push(Value::Object(stripped_map(fields, depth + 1)?));
                }
            }
            wanted.push(id);
        }
        let ids = self.identities(&list, Some(key))?;
        Ok(arrange(list, ids, &positions(&wanted), &positions(&server)))
    }

    /// Whether a merged list holds objects (rather than primitives); lists of lists and
    /// lists mixing objects with other values are refused, as the server does.
    fn holds_objects(&self, original: &[Value], patch: &[Value]) -> Result<bool> {
        let (mut objects, mut others) = (false, false);
        for item in original.iter().chain(patch) {
            match item {
                Value::Array(_) => return Err(Error::ListOfLists { path: self.path() }),
                Value::Object(_) => objects = true,
                _ => others = true,
            }
        }
        if objects && others {
            return Err(Error::MixedList { path: self.path() });
        }
        Ok(objects)
    }

    fn key_of<'v>(&self, fields: &'v Map<String, Value>, key: &str) -> Result<&'v Value> {
        fields.get(key).ok_or_else(|| Error::MissingMergeKey {
            path: self.path(),
            key: key.to_owned(),
        })
    }

    /// What tells an item apart: its merge key's value, or itself.
    fn identity(&self, item: &Value, key: Key) -> Result<String> {
        match key {
            None => Ok(item.to_string()),
            Some(key) => {
                let fields = item.as_object().ok_or_else(|| self.not_object(key))?;
                Ok(self.key_of(fields, key)?.to_string())
            }
        }
    }

    fn identities(&self, items: &[Value], key: Key) -> Result<Vec<String>> {
        items.iter().map(|item| self.identity(item, key)).collect()
    }

    /// The field a `$setElementOrder/<field>` or `$deleteFromPrimitiveList/<field>` names.
    fn directive_field(&self, directive: &str, rest: &'p str) -> Result<&'p str> {
        rest.strip_prefix('/')
            .ok_or_else(|| self.malformed(directive, "must name a field after a slash"))
    }

    fn malformed(&self, directive: &str, expected: &'static str) -> Error {
        Error::MalformedDirective {
            path: self.path(),
            directive: shown(directive),
            expected,
        }
    }

    fn unknown_directive(&self, directive: &Value) -> Error {
        let directive = match directive {
            Value::String(text) => shown(text),
            other => shown(&other.to_string()),
        };
        Error::UnknownDirective {
            path: self.path(),
            directive,
        }
    }

    fn not_object(&self, key: &str) -> Error {
        Error::ItemNotObject {
            path: self.path(),
            key: key.to_owned(),
        }
    }
}

fn check_depth(depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep {
            what: "the patch",
            max: MAX_DEPTH,
        });
    }
    Ok(())
}

fn is_directive(key: &str) -> bool {
    key.starts_with('$')
        && (key == PATCH
            || key == RETAIN_KEYS
            || key.starts_with(SET_ELEMENT_ORDER)
            || key.starts_with(DELETE_FROM_PRIMITIVE_LIST))
}

fn has_patch_directive(item: &Value) -> bool {
    item.as_object()
        .is_some_and(|fields| fields.contains_key(PATCH))
}

fn shown(text: &str) -> String {
    text.chars().take(SHOWN_CHARS).collect()
}

/// The union of two lists of primitives, each value once.
fn union(original: Vec<Value>, patch: &[Value]) -> Vec<Value> {
    let server: Vec<String> = original.iter().map(Value::to_string).collect();
    let wanted: Vec<String> = patch.iter().map(Value::to_string).collect();
    let mut seen = HashSet::with_capacity(server.len() + wanted.len());
    let (mut merged, mut ids) = (Vec::new(), Vec::new());
    let all = original.into_iter().zip(server.iter().cloned());
    for (value, id) in all.chain(patch.iter().cloned().zip(wanted.iter().cloned())) {
        if seen.insert(id.clone()) {
            merged.push(value);
            ids.push(id);
        }
    }
    arrange(merged, ids, &positions(&wanted), &positions(&server))
}

/// The original list as the server reads it back to apply a `$setElementOrder`, once it has
/// merged the patch into it by key. The server merges in place: each deletion shifts the
/// rest of the list left, leaving the last slot as it was, and the items the patch adds take
/// the slots freed, so that an added item counts as having stood where a deleted one was.
/// Followed here step by step, since it decides where the server's own items land among the
/// added ones.
fn server_view(mut slots: Vec<String>, patch: &[Value], key: &str) -> Vec<String> {
    let width = slots.len();
    let mut len = width;
    let mut replace = false;
    let mut added = Vec::new();
    for fields in patch.iter().filter_map(Value::as_object) {
        match fields.get(PATCH).map(Value::as_str) {
            None => added.extend(fields.get(key).map(Value::to_string)),
            Some(Some("delete")) => {
                let Some(id) = fields.get(key).map(Value::to_string) else {
                    continue;
                };
                while let Some(at) = slots[..len].iter().position(|slot| *slot == id) {
                    for i in at..len - 1 {
                        slots[i] = slots[i + 1].clone();
                    }
                    len -= 1;
                }
            }
            Some(Some("replace")) => replace = true,
            Some(_) => {}
        }
    }
    if !replace {
        for id in added {
            if slots[..len].contains(&id) {
                continue;
            }
            match slots.get_mut(len) {
                Some(slot) => *slot = id,
                None => slots.push(id),
            }
            len += 1;
        }
    }
    slots.truncate(width);
    slots
}

/// Where each identity first appears in a list.
fn positions(ids: &[String]) -> HashMap<&str, usize> {
    let mut at = HashMap::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        at.entry(id.as_str()).or_insert(i);
    }
    at
}

/// The order the server gives a merged list. The items the patch names come in the patch's
/// order; the others in the original's order. The two runs are then interleaved: an item of
/// the original goes first while it came before the next named item in the original; a
/// named item the original did not hold goes as soon as its turn comes. Nothing is added or
/// dropped.
fn arrange(
    merged: Vec<Value>,
    ids: Vec<String>,
    wanted: &HashMap<&str, usize>,
    server: &HashMap<&str, usize>,
) -> Vec<Value> {
    let mut named = Vec::new();
    let mut others = Vec::new();
    for (item, id) in merged.into_iter().zip(ids) {
        let was = server.get(id.as_str()).copied();
        match wanted.get(id.as_str()) {
            Some(&at) => named.push((at, was, item)),
            None => others.push((was, item)),
        }
    }
    named.sort_by_key(|(at, _, _)| *at);
    others.sort_by_key(|(was, _)| was.unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(named.len() + others.len());
    let mut named = named.into_iter().peekable();
    let mut others = others.into_iter().peekable();
    loop {
        let other_first = match (others.peek(), named.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((Some(left), _)), Some((_, Some(right), _))) => left < right,
            (Some(_), Some(_)) => false,
        };
        let next = if other_first {
            others.next().map(|(_, item)| item)
        } else {
            named.next().map(|(_, _, item)| item)
        };
        out.extend(next);
    }
    out
}

/// A value the server takes from the patch as it is (a replaced field, an added item): its
/// directive keys and null fields are dropped, as decoding into the typed object would.
fn stripped(value: &Value, depth: usize) -> Result<Value> {
    check_depth(depth)?;
    Ok(match value {
        Value::Object(fields) => Value::Object(stripped_map(fields, depth)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| stripped(item, depth + 1))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

fn stripped_map(fields: &Map<String, Value>, depth: usize) -> Result<Map<String, Value>> {
    check_depth(depth)?;
    let mut out = Map::new();
    for (key, value) in fields {
        if !value.is_null() && !is_directive(key) {
            out.insert(key.clone(), stripped(value, depth + 1)?);
        }
    }
    Ok(out)
}

/// A value for a field the original lacks or holds with another type. As the server does,
/// null fields are dropped, and so is any object carrying `$patch`, with its field or its
/// list item (`None` when it is the value itself).
fn fresh(value: &Value, depth: usize) -> Result<Option<Value>> {
    check_depth(depth)?;
    Ok(match value {
        // A null `$patch` is a null field like any other: dropped, not obeyed.
        Value::Object(fields) if fields.get(PATCH).is_some_and(|d| !d.is_null()) => None,
        Value::Object(fields) => {
            let mut out = Map::new();
            for (key, value) in fields {
                if value.is_null() || is_directive(key) {
                    continue;
                }
                if let Some(value) = fresh(value, depth + 1)? {
                    out.insert(key.clone(), value);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.extend(fresh(item, depth + 1)?);
            }
            Some(Value::Array(out))
        }
        other => Some(other.clone()),
    })
}
