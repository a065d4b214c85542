//! A small OpenAPI v3 document mirroring the API server's: the same component names, the
//! same `allOf: [{$ref}]` wrapping, and the patch extensions of the real fields.

#![allow(dead_code)]

use serde_json::{Value, json};
use strategic_merge::{Error, Schema, apply};

fn r(name: &str) -> Value {
    json!({"allOf": [{"$ref": format!("#/components/schemas/{name}")}], "default": {}})
}

fn list_of(name: &str) -> Value {
    json!({"type": "array", "items": r(name)})
}

fn merged_by(name: &str, key: &str) -> Value {
    let mut list = list_of(name);
    list["x-kubernetes-patch-strategy"] = json!("merge");
    list["x-kubernetes-patch-merge-key"] = json!(key);
    list
}

fn strings() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string", "default": ""}})
}

fn string_list() -> Value {
    json!({"type": "array", "items": {"type": "string", "default": ""}})
}

fn merged_strings() -> Value {
    let mut list = string_list();
    list["x-kubernetes-patch-strategy"] = json!("merge");
    list
}

fn kind(group: &str, version: &str, kind: &str, spec: &str, status: Option<&str>) -> Value {
    let mut properties = json!({
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": r("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        "spec": r(spec),
    });
    if let Some(status) = status {
        properties["status"] = r(status);
    }
    json!({
        "type": "object",
        "properties": properties,
        "x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": kind}],
    })
}

pub fn document() -> Value {
    let mut volumes = merged_by("io.k8s.api.core.v1.Volume", "name");
    volumes["x-kubernetes-patch-strategy"] = json!("merge,retainKeys");
    let mut strategy = r("io.k8s.api.apps.v1.DeploymentStrategy");
    strategy["x-kubernetes-patch-strategy"] = json!("retainKeys");
    json!({"openapi": "3.0.0", "components": {"schemas": {
        "io.k8s.api.core.v1.Node": kind("", "v1", "Node", "io.k8s.api.core.v1.NodeSpec", Some("io.k8s.api.core.v1.NodeStatus")),
        "io.k8s.api.core.v1.Pod": kind("", "v1", "Pod", "io.k8s.api.core.v1.PodSpec", None),
        "io.k8s.api.apps.v1.Deployment": kind("apps", "v1", "Deployment", "io.k8s.api.apps.v1.DeploymentSpec", None),
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {"type": "object", "properties": {
            "name": {"type": "string"},
            "resourceVersion": {"type": "string"},
            "labels": strings(),
            "annotations": strings(),
            "finalizers": merged_strings(),
            "ownerReferences": merged_by("io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference", "uid"),
        }},
        "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference": {"type": "object", "properties": {
            "uid": {"type": "string"}, "name": {"type": "string"}, "kind": {"type": "string"},
        }},
        "io.k8s.api.core.v1.NodeSpec": {"type": "object", "properties": {
            "providerID": {"type": "string"},
            "unschedulable": {"type": "boolean"},
            "podCIDRs": merged_strings(),
            "taints": list_of("io.k8s.api.core.v1.Taint"),
        }},
        "io.k8s.api.core.v1.Taint": {"type": "object", "properties": {
            "key": {"type": "string"}, "value": {"type": "string"}, "effect": {"type": "string"},
        }},
        "io.k8s.api.core.v1.NodeStatus": {"type": "object", "properties": {
            "conditions": merged_by("io.k8s.api.core.v1.NodeCondition", "type"),
            "addresses": merged_by("io.k8s.api.core.v1.NodeAddress", "type"),
            "capacity": strings(),
        }},
        "io.k8s.api.core.v1.NodeCondition": {"type": "object", "properties": {
            "type": {"type": "string"}, "status": {"type": "string"},
            "lastHeartbeatTime": {"type": "string"}, "lastTransitionTime": {"type": "string"},
            "reason": {"type": "string"}, "message": {"type": "string"},
        }},
        "io.k8s.api.core.v1.NodeAddress": {"type": "object", "properties": {
            "type": {"type": "string"}, "address": {"type": "string"},
        }},
        "io.k8s.api.core.v1.PodSpec": {"type": "object", "properties": {
            "containers": merged_by("io.k8s.api.core.v1.Container", "name"),
            "volumes": volumes,
            "nodeSelector": strings(),
        }},
        "io.k8s.api.core.v1.Container": {"type": "object", "properties": {
            "name": {"type": "string"},
            "image": {"type": "string"},
            "args": string_list(),
            "env": merged_by("io.k8s.api.core.v1.EnvVar", "name"),
            "ports": merged_by("io.k8s.api.core.v1.ContainerPort", "containerPort"),
        }},
        "io.k8s.api.core.v1.EnvVar": {"type": "object", "properties": {
            "name": {"type": "string"}, "value": {"type": "string"},
        }},
        "io.k8s.api.core.v1.ContainerPort": {"type": "object", "properties": {
            "containerPort": {"type": "integer"}, "protocol": {"type": "string"}, "name": {"type": "string"},
        }},
        "io.k8s.api.core.v1.Volume": {"type": "object", "properties": {
            "name": {"type": "string"},
            "emptyDir": r("io.k8s.api.core.v1.EmptyDirVolumeSource"),
            "hostPath": r("io.k8s.api.core.v1.HostPathVolumeSource"),
        }},
        "io.k8s.api.core.v1.EmptyDirVolumeSource": {"type": "object", "properties": {
            "medium": {"type": "string"}, "sizeLimit": {"type": "string"},
        }},
        "io.k8s.api.core.v1.HostPathVolumeSource": {"type": "object", "properties": {
            "path": {"type": "string"}, "type": {"type": "string"},
        }},
        "io.k8s.api.apps.v1.DeploymentSpec": {"type": "object", "properties": {
            "replicas": {"type": "integer"},
            "strategy": strategy,
        }},
        "io.k8s.api.apps.v1.DeploymentStrategy": {"type": "object", "properties": {
            "type": {"type": "string"},
            "rollingUpdate": {"type": "object", "properties": {"maxSurge": {"type": "string"}}},
        }},
    }}})
}

pub fn schema(group: &str, kind: &str) -> Schema {
    match Schema::from_openapi_v3(&document(), group, "v1", kind) {
        Ok(schema) => schema,
        Err(e) => panic!("{e}"),
    }
}

pub fn node() -> Schema {
    schema("", "Node")
}

pub fn pod() -> Schema {
    schema("", "Pod")
}

pub fn deployment() -> Schema {
    schema("apps", "Deployment")
}

/// The patched object, or the test fails with the error.
pub fn patched(schema: &Schema, original: Value, patch: Value) -> Value {
    match apply(original, &patch, schema) {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// The error, or the test fails with the result.
pub fn refused(schema: &Schema, original: Value, patch: Value) -> Error {
    match apply(original, &patch, schema) {
        Ok(value) => panic!("expected an error, got {value}"),
        Err(e) => e,
    }
}
