//! Discovery answers filtered to what the front isolates: a client that discovers a
//! resource expects to be able to use it, and the backing server's other groups (its
//! CRDs, its reviews) are none of a workload cluster's business. Addresses the backing
//! server advertises (`serverAddressByClientCIDRs`) are dropped: clients reach the
//! cluster through the front only.

use serde_json::{Map, Value};
use tenancy::kinds::{self, RESOURCES};

/// Why a discovery path has nothing to show: the group or version is not isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotServed;

/// Filters the backing server's discovery answer for `path` (`/api`, `/api/v1`, `/apis`,
/// `/apis/<group>`, `/apis/<group>/<version>`).
pub fn filter(path: &str, answer: Value) -> Result<Value, NotServed> {
    let mut answer = answer;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let object = answer.as_object_mut().ok_or(NotServed)?;
    object.remove("serverAddressByClientCIDRs");
    match segments.as_slice() {
        ["api"] => {}
        ["api", version] => filter_resources(object, "", version)?,
        ["apis"] => {
            if let Some(Value::Array(groups)) = object.get_mut("groups") {
                groups.retain_mut(|group| {
                    group
                        .as_object_mut()
                        .is_some_and(|group| filter_group(group).is_ok())
                });
            }
        }
        ["apis", group] => {
            if object.get("name").and_then(Value::as_str) != Some(*group) {
                return Err(NotServed);
            }
            filter_group(object)?;
        }
        ["apis", group, version] => filter_resources(object, group, version)?,
        _ => return Err(NotServed),
    }
    Ok(answer)
}

fn versions_of(group: &str) -> Vec<&'static str> {
    let mut versions: Vec<&'static str> = RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .flat_map(|r| r.versions.iter().copied())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// Keeps a group's isolated versions; a group with none is not served.
fn filter_group(group: &mut Map<String, Value>) -> Result<(), NotServed> {
    group.remove("serverAddressByClientCIDRs");
    let name = group
        .get("name")
        .and_then(Value::as_str)
        .ok_or(NotServed)?
        .to_string();
    let served = versions_of(&name);
    let kept = |v: &Value| {
        v.get("version")
            .and_then(Value::as_str)
            .is_some_and(|v| served.contains(&v))
    };
    let Some(Value::Array(versions)) = group.get_mut("versions") else {
        return Err(NotServed);
    };
    versions.retain(kept);
    let first = versions.first().cloned().ok_or(NotServed)?;
    if !group.get("preferredVersion").is_some_and(kept) {
        group.insert("preferredVersion".into(), first);
    }
    Ok(())
}

/// Keeps the resources (and subresources) the front isolates in one group version.
fn filter_resources(
    list: &mut Map<String, Value>,
    group: &str,
    version: &str,
) -> Result<(), NotServed> {
    if !versions_of(group).contains(&version) {
        return Err(NotServed);
    }
    if let Some(Value::Array(resources)) = list.get_mut("resources") {
        resources.retain(|resource| {
            let Some(name) = resource.get("name").and_then(Value::as_str) else {
                return false;
            };
            let (plural, subresource) = match name.split_once('/') {
                Some((plural, sub)) => (plural, Some(sub)),
                None => (name, None),
            };
            kinds::by_plural(group, version, plural)
                .is_ok_and(|r| subresource.is_none_or(|s| r.subresource(s).is_ok()))
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn core_resources_are_kept_only_when_isolated() {
        let answer = json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "pods", "kind": "Pod"}, {"name": "pods/status"}, {"name": "pods/log"},
            {"name": "services", "kind": "Service"}, {"name": "nodes"}, {"name": "nodes/proxy"},
        ]});
        let filtered = filter("/api/v1", answer).unwrap();
        let names: Vec<&str> = filtered["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["pods", "pods/status", "nodes"]);
    }

    #[test]
    fn groups_the_front_does_not_isolate_are_hidden() {
        let answer = json!({"kind": "APIGroupList", "groups": [
            {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
             "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}},
            {"name": "apiextensions.k8s.io", "versions": [{"groupVersion": "apiextensions.k8s.io/v1", "version": "v1"}]},
            {"name": "coordination.k8s.io", "versions": [
                {"groupVersion": "coordination.k8s.io/v1beta1", "version": "v1beta1"},
                {"groupVersion": "coordination.k8s.io/v1", "version": "v1"}],
             "preferredVersion": {"groupVersion": "coordination.k8s.io/v1beta1", "version": "v1beta1"}},
        ]});
        let filtered = filter("/apis", answer).unwrap();
        let groups = filtered["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1]["versions"].as_array().unwrap().len(), 1);
        assert_eq!(groups[1]["preferredVersion"]["version"], "v1");
    }

    #[test]
    fn a_group_or_version_not_isolated_is_not_served() {
        let group = json!({"kind": "APIGroup", "name": "apiextensions.k8s.io",
            "versions": [{"groupVersion": "apiextensions.k8s.io/v1", "version": "v1"}]});
        assert_eq!(filter("/apis/apiextensions.k8s.io", group), Err(NotServed));
        let list = json!({"kind": "APIResourceList", "resources": []});
        assert_eq!(filter("/apis/apps/v1beta2", list), Err(NotServed));
    }

    #[test]
    fn backing_addresses_are_dropped() {
        let answer = json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]});
        let filtered = filter("/api", answer).unwrap();
        assert!(filtered.get("serverAddressByClientCIDRs").is_none());
    }
}
