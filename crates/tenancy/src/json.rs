//! Small helpers for rewriting JSON objects in place, with typed errors for wrong shapes.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub(crate) fn malformed(path: &str, expected: &'static str) -> Error {
    Error::Malformed {
        path: path.to_string(),
        expected,
    }
}

pub(crate) fn as_object<'a>(
    value: &'a mut Value,
    path: &str,
) -> Result<&'a mut Map<String, Value>> {
    value
        .as_object_mut()
        .ok_or_else(|| malformed(path, "an object"))
}

/// A string field of `object` (`path` names it in errors; its last part is the key).
pub(crate) fn string_field<'a>(
    object: &'a Map<String, Value>,
    path: &str,
) -> Result<Option<&'a str>> {
    let key = path.rsplit('.').next().unwrap_or(path);
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(malformed(path, "a string")),
    }
}

/// Replaces `object[key]` by `map(value)` when it is a non-empty string; absent, null and
/// empty stay as they are (the server's own validation speaks for those).
pub(crate) fn map_string(
    object: &mut Map<String, Value>,
    key: &str,
    path: &str,
    map: impl FnOnce(&str) -> Result<String>,
) -> Result<()> {
    match object.get_mut(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s.is_empty() => Ok(()),
        Some(Value::String(s)) => {
            *s = map(s)?;
            Ok(())
        }
        Some(_) => Err(malformed(path, "a string")),
    }
}

/// `map_string` on the field at `path` (e.g. `["spec", "nodeName"]`); absent or null
/// objects on the way mean there is nothing to map.
pub(crate) fn map_string_at(
    object: &mut Map<String, Value>,
    path: &[&str],
    map: impl FnOnce(&str) -> Result<String>,
) -> Result<()> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut current = object;
    for (depth, key) in parents.iter().enumerate() {
        current = match current.get_mut(*key) {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Object(next)) => next,
            Some(_) => return Err(malformed(&path[..=depth].join("."), "an object")),
        };
    }
    map_string(current, last, &path.join("."), map)
}
