//! Observe: the reflector stores of one watch scope (one namespace, or all), and the
//! lookups the plan and the cleanup read them through. The controller's watches fill
//! them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::metrics::WATCHED_RESOURCES;
use crate::plan::{self, Found, Inventory, Lookup};
use crate::resources::{
    BareMetalHost, Cluster, KubeadmControlPlane, Machine, Metal3Machine, PROVISIONED,
};
use crate::tolerant::{Tolerant, View};

/// The reflector stores of one watch scope.
#[derive(Clone)]
pub struct Stores {
    pub metal3_machines: Store<Tolerant<Metal3Machine>>,
    pub hosts: Store<Tolerant<BareMetalHost>>,
    pub machines: Store<Tolerant<Machine>>,
    pub clusters: Store<Tolerant<Cluster>>,
    pub control_planes: Store<Tolerant<KubeadmControlPlane>>,
    pub secrets: Store<Tolerant<Secret>>,
    /// The watched namespace; `None`: all.
    pub(crate) namespace: Option<String>,
    /// One flag per watch, set once its first list is in the store. Not
    /// `Store::wait_until_ready`: that future keeps a single waker, so concurrent waiters
    /// (the controller's applier, the readiness probe, reconciles) would starve each other.
    pub(crate) synced: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl Stores {
    /// Waits until every store of the scope has been filled by its first list.
    pub(crate) async fn wait_ready(&self) {
        for synced in &self.synced {
            let mut synced = synced.clone();
            // Err: the watch is gone, i.e. the controller is shutting down.
            let _ = synced.wait_for(|s| *s).await;
        }
    }

    /// Whether every store of the scope has been filled by its first list.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.iter().all(|s| *s.borrow())
    }

    /// Whether the scope watches `namespace`.
    pub(crate) fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }

    /// Metal3Machines without a providerID whose host is provisioned.
    pub(crate) fn pending(&self) -> usize {
        self.metal3_machines
            .state()
            .iter()
            .filter_map(|m| m.read().ok())
            .filter(|m| !plan::has_provider_id(m))
            .filter(|m| {
                plan::host_ref(m).ok().is_some_and(|(ns, name)| {
                    self.host(&ns, &name).is_some_and(|h| {
                        h.read().is_ok_and(|h| {
                            h.status
                                .as_ref()
                                .is_some_and(|s| s.provisioning.state == PROVISIONED)
                        })
                    })
                })
            })
            .count()
    }

    /// Objects kept as unreadable, by resource, for the metric.
    pub(crate) fn unreadable(&self) -> [(&'static str, usize); 6] {
        fn count<V: View + Clone>(store: &Store<Tolerant<V>>) -> (&'static str, usize) {
            let n = store.state().iter().filter(|o| o.read().is_err()).count();
            (resource_label::<V>(), n)
        }
        [
            count(&self.metal3_machines),
            count(&self.hosts),
            count(&self.machines),
            count(&self.clusters),
            count(&self.control_planes),
            count(&self.secrets),
        ]
    }
}

/// A watched kind's plural as a metric label: one of [`WATCHED_RESOURCES`], so bounded.
pub(crate) fn resource_label<V: View>() -> &'static str {
    let plural = V::plural(&());
    WATCHED_RESOURCES
        .iter()
        .find(|r| **r == plural)
        .copied()
        .unwrap_or("other")
}

fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource + Clone,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

impl Lookup for Stores {
    fn host(&self, namespace: &str, name: &str) -> Found<BareMetalHost> {
        get(&self.hosts, namespace, name)
    }
    fn machine(&self, namespace: &str, name: &str) -> Found<Machine> {
        get(&self.machines, namespace, name)
    }
    fn cluster(&self, namespace: &str, name: &str) -> Found<Cluster> {
        get(&self.clusters, namespace, name)
    }
    fn secret(&self, namespace: &str, name: &str) -> Found<Secret> {
        get(&self.secrets, namespace, name)
    }
    fn control_plane(&self, namespace: &str, name: &str) -> Found<KubeadmControlPlane> {
        get(&self.control_planes, namespace, name)
    }
}

impl Inventory for Stores {
    fn metal3_machine_exists(&self, namespace: &str, name: &str) -> bool {
        get(&self.metal3_machines, namespace, name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_watched_kind_has_its_own_label() {
        let labels = [
            resource_label::<Metal3Machine>(),
            resource_label::<BareMetalHost>(),
            resource_label::<Machine>(),
            resource_label::<Cluster>(),
            resource_label::<KubeadmControlPlane>(),
            resource_label::<Secret>(),
        ];
        let mut sorted = labels.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, WATCHED_RESOURCES);
    }
}
