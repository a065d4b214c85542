//! A removed cluster's objects deleted from the backing server: every object of every
//! kind the front isolates that carries the tenancy label with the cluster's prefix,
//! namespaces last. Run when a Cluster is deleted, or recreated under the same name (the
//! new incarnation has a prefix of its own and starts empty); the caller retires the
//! prefix once this succeeds, and retries with backoff when it does not.
//!
//! The backing server may run without a controller manager (a bare kube-apiserver), so
//! nothing finishes a deletion for us: Pods go with no grace period (no kubelet would
//! confirm them), finalizers are cleared (no controller would), and a namespace left
//! terminating is finalized once its objects are gone, as the namespace controller does.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::json;
use tenancy::kinds::{RESOURCES, Resource, Scope};
use tenancy::{CLUSTER_LABEL, Prefix};

use crate::error::{Error, Result};

/// Objects listed (and deleted) at a time.
const PAGE: u32 = 500;

/// Pages per kind in one pass; more objects left means something re-creates them or
/// refuses deletion, and the caller retries later.
const ROUNDS: usize = 20;

/// Deletes every object of `prefix` from the backing server; the number deleted.
/// Idempotent: a second run finds nothing and deletes nothing.
pub async fn remove_cluster_objects(backing: &kube::Client, prefix: &Prefix) -> Result<usize> {
    let selector = format!("{CLUSTER_LABEL}={prefix}");
    let mut deleted = 0;
    // Namespaces last: their objects go first, so nothing is left behind in a namespace
    // that no controller will empty.
    let (namespaces, others): (Vec<&Resource>, Vec<&Resource>) = RESOURCES
        .iter()
        .partition(|resource| resource.scope == Scope::Namespace);
    for resource in others.into_iter().chain(namespaces) {
        deleted += remove_kind(backing, resource, &selector, prefix).await?;
    }
    Ok(deleted)
}

async fn remove_kind(
    backing: &kube::Client,
    resource: &Resource,
    selector: &str,
    prefix: &Prefix,
) -> Result<usize> {
    let api_resource = api_resource(resource);
    let all: Api<DynamicObject> = Api::all_with(backing.clone(), &api_resource);
    let mut deleted = 0;
    for _ in 0..ROUNDS {
        let page = all
            .list(&ListParams::default().labels(selector).limit(PAGE))
            .await?;
        if page.items.is_empty() {
            return Ok(deleted);
        }
        for object in &page.items {
            remove_object(backing, resource, &api_resource, object).await?;
            deleted += 1;
        }
    }
    let remaining = all
        .list(&ListParams::default().labels(selector).limit(PAGE))
        .await?
        .items
        .len();
    if remaining == 0 {
        return Ok(deleted);
    }
    Err(Error::RemovalIncomplete {
        prefix: prefix.to_string(),
        remaining,
    })
}

async fn remove_object(
    backing: &kube::Client,
    resource: &Resource,
    api_resource: &ApiResource,
    object: &DynamicObject,
) -> Result<()> {
    let Some(name) = object.metadata.name.as_deref() else {
        return Ok(());
    };
    let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
        Some(namespace) => Api::namespaced_with(backing.clone(), namespace, api_resource),
        None => Api::all_with(backing.clone(), api_resource),
    };
    if object
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| !f.is_empty())
    {
        let clear = json!({"metadata": {"finalizers": null}});
        ignore_gone(
            api.patch(name, &PatchParams::default(), &Patch::Merge(&clear))
                .await
                .map(drop),
        )?;
    }
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::background()
    };
    ignore_gone(api.delete(name, &params).await.map(drop))?;
    if resource.scope == Scope::Namespace {
        finalize_namespace(backing, name).await?;
    }
    Ok(())
}

/// A namespace the server left terminating (its `kubernetes` finalizer waits for the
/// namespace controller) is finalized here: its objects were deleted just before.
async fn finalize_namespace(backing: &kube::Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(backing.clone());
    let Some(mut namespace) = api.get_opt(name).await? else {
        return Ok(());
    };
    let pending = namespace
        .spec
        .as_ref()
        .and_then(|spec| spec.finalizers.as_ref())
        .is_some_and(|f| !f.is_empty());
    if !pending {
        return Ok(());
    }
    if let Some(spec) = namespace.spec.as_mut() {
        spec.finalizers = None;
    }
    ignore_gone(
        api.replace_subresource("finalize", name, &PostParams::default(), &namespace)
            .await
            .map(drop),
    )
}

fn ignore_gone(result: std::result::Result<(), kube::Error>) -> Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

/// The dynamic API resource of a kind the front isolates, at its first listed version.
pub fn api_resource(resource: &Resource) -> ApiResource {
    let version = resource.versions.first().copied().unwrap_or("v1");
    let api_version = if resource.group.is_empty() {
        version.to_string()
    } else {
        format!("{}/{version}", resource.group)
    };
    ApiResource {
        group: resource.group.to_string(),
        version: version.to_string(),
        api_version,
        kind: resource.kind.to_string(),
        plural: resource.plural.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isolated_kind_has_a_dynamic_resource_and_namespaces_are_one_kind() {
        for resource in RESOURCES {
            let ar = api_resource(resource);
            assert!(resource.versions.contains(&ar.version.as_str()));
            assert!(ar.api_version.ends_with(&ar.version));
        }
        assert_eq!(
            RESOURCES
                .iter()
                .filter(|r| r.scope == Scope::Namespace)
                .count(),
            1
        );
    }
}
