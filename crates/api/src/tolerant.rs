//! Tolerant reading of upstream objects: one object the typed view cannot read never
//! fails a list, a watch or a re-list.
//!
//! Why a wrapper and not lenient fields: kube's watcher decodes a whole list page as one
//! `ObjectList<K>`, so a single field of another type or range (an older or newer
//! provider release, or a hand edit) fails the page and with it the store, readiness and
//! every Metal3Machine. Lenient per-field deserializers would have to be written for every
//! field, present and future, and would silently turn bad data into defaults. Instead each
//! object is decoded on its own: [`Tolerant<K>`] reads the object's JSON, then tries the
//! typed view `K`; if that fails it keeps the object's metadata (so the store still knows
//! the object, and a readable copy is replaced, never left stale) and the field path and
//! serde message of the failure. The controller then reports that one object with a typed
//! reason and goes on with the others.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Longest serde message kept for one unreadable object: enough to say what is wrong,
/// bounded however many objects are unreadable.
pub const MAX_MESSAGE: usize = 256;
/// Longest field path kept.
pub const MAX_PATH: usize = 128;

/// Why an object could not be read by its typed view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `status.hardware.cpu.count`.
    pub path: String,
    /// What serde said, bounded; empty for kinds that hold secrets (see [`View`]).
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "field {} cannot be read", self.path)
        } else {
            write!(f, "field {}: {}", self.path, self.message)
        }
    }
}

/// An object kept with only its metadata, because its typed view failed.
#[derive(Clone, Debug)]
pub struct Unreadable {
    pub metadata: ObjectMeta,
    pub problem: Problem,
}

/// A typed view of an object, or the object's metadata and why the view failed.
#[derive(Clone, Debug)]
pub enum Tolerant<K> {
    Read(K),
    /// Boxed: rare, and the store holds many readable objects.
    Unreadable(Box<Unreadable>),
}

impl<K> Tolerant<K> {
    /// The typed view, or why there is none.
    pub fn read(&self) -> Result<&K, &Problem> {
        match self {
            Tolerant::Read(k) => Ok(k),
            Tolerant::Unreadable(u) => Err(&u.problem),
        }
    }
}

/// What [`Tolerant`] needs to know of a typed view.
pub trait View: Resource<DynamicType = ()> + serde::de::DeserializeOwned {
    /// serde quotes the values it cannot read ("invalid type: string \"...\""): for kinds
    /// that hold secrets only the field path is kept, so no value reaches a log, an Event
    /// or a metric.
    const HOLDS_SECRETS: bool = false;
}

impl View for Secret {
    const HOLDS_SECRETS: bool = true;
}

impl<K: View> Tolerant<K> {
    /// Reads one object: the typed view if it can, else its metadata and the problem.
    /// Fails only if even the metadata is unreadable, which a real API server never
    /// serves (it validates metadata for every kind).
    pub fn from_value(value: Value) -> Result<Self, String> {
        let failure = match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(k) => return Ok(Tolerant::Read(k)),
            Err(e) => e,
        };
        let metadata = metadata(&value)?;
        let problem = Problem {
            path: bounded(failure.path().to_string(), MAX_PATH),
            message: if K::HOLDS_SECRETS {
                String::new()
            } else {
                bounded(failure.inner().to_string(), MAX_MESSAGE)
            },
        };
        Ok(Tolerant::Unreadable(Box::new(Unreadable {
            metadata,
            problem,
        })))
    }
}

/// The object's metadata, or at least its identity: name, namespace, UID, version and
/// labels (what stores, mappers and shards need).
fn metadata(value: &Value) -> Result<ObjectMeta, String> {
    let meta = value.get("metadata").ok_or("the object has no metadata")?;
    if let Ok(m) = ObjectMeta::deserialize(meta) {
        return Ok(m);
    }
    let text = |key: &str| meta.get(key).and_then(Value::as_str).map(str::to_string);
    let name = text("name").ok_or("the object's metadata has no name")?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: text("namespace"),
        uid: text("uid"),
        resource_version: text("resourceVersion"),
        labels: meta
            .get("labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok()),
        ..ObjectMeta::default()
    })
}

/// At most `max` bytes, cut at a character boundary, marked when cut.
pub fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max.saturating_sub(3);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

impl<'de, K: View> Deserialize<'de> for Tolerant<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Tolerant::from_value(value).map_err(serde::de::Error::custom)
    }
}

impl<K: View> Resource for Tolerant<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Tolerant::Read(k) => k.meta(),
            Tolerant::Unreadable(u) => &u.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Tolerant::Read(k) => k.meta_mut(),
            Tolerant::Unreadable(u) => &mut u.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::ObjectList;
    use serde_json::json;

    use super::*;
    use crate::resources::BareMetalHost;

    fn host(name: &str, count: Value) -> Value {
        json!({
            "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "resourceVersion": "7", "labels": {"a": "b"}},
            "spec": {},
            "status": {"provisioning": {"state": "provisioned"},
                       "hardware": {"cpu": {"arch": "x86_64", "count": count}}}
        })
    }

    #[test]
    fn one_unreadable_object_does_not_fail_the_list() {
        let list = json!({
            "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHostList",
            "metadata": {"resourceVersion": "9"},
            "items": [host("good", json!(8)), host("bad", json!("eight")), host("also-good", json!(2))]
        });
        let list: ObjectList<Tolerant<BareMetalHost>> =
            serde_json::from_value(list).expect("the list reads");
        let names: Vec<_> = list.items.iter().map(|h| h.meta().name.clone()).collect();
        assert_eq!(
            names,
            [
                Some("good".into()),
                Some("bad".into()),
                Some("also-good".into())
            ]
        );
        assert!(list.items[0].read().is_ok());
        assert!(list.items[2].read().is_ok());
        let problem = list.items[1].read().unwrap_err();
        assert_eq!(problem.path, "status.hardware.cpu.count");
        assert!(problem.message.contains("eight"), "{problem}");
        // The metadata survives: the store keys it and shards and mappers can use it.
        let meta = list.items[1].meta();
        assert_eq!(meta.uid.as_deref(), Some("uid-bad"));
        assert_eq!(meta.labels.as_ref().unwrap()["a"], "b");
    }

    #[test]
    fn secrets_keep_the_path_but_never_the_value() {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "c-kubeconfig", "namespace": "ns"},
            "data": {"value": "MARKER-not base64 !!"}
        });
        let t: Tolerant<Secret> = serde_json::from_value(secret).unwrap();
        let problem = t.read().unwrap_err();
        assert_eq!(problem.path, "data.value");
        assert!(problem.message.is_empty());
        assert!(!problem.to_string().contains("MARKER"));
    }

    #[test]
    fn odd_metadata_keeps_the_identity_and_no_name_fails() {
        let odd = json!({"metadata": {"name": "n", "namespace": "ns", "generation": "one"},
                         "spec": 5});
        let t: Tolerant<BareMetalHost> = serde_json::from_value(odd).unwrap();
        assert_eq!(t.meta().name.as_deref(), Some("n"));
        assert!(t.read().is_err());
        let nameless = json!({"metadata": {"generation": "one"}, "spec": 5});
        assert!(serde_json::from_value::<Tolerant<BareMetalHost>>(nameless).is_err());
    }

    #[test]
    fn messages_are_bounded_at_a_character_boundary() {
        let long = "é".repeat(400);
        let b = bounded(long, MAX_MESSAGE);
        assert!(b.len() <= MAX_MESSAGE && b.ends_with("..."), "{}", b.len());
        assert_eq!(bounded("short".into(), 10), "short");
    }
}
