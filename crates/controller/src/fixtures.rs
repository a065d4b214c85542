//! The one fake management cluster of the unit tests: plain maps behind [`Lookup`] and
//! [`Inventory`]. (In this crate, not the test kit: unit tests would see the test kit's
//! copy of these traits as other types.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use crate::plan::{Found, Inventory, Lookup};
use crate::resources::{BareMetalHost, Cluster, KubeadmControlPlane, Machine};
use crate::tolerant::{Problem, Tolerant, Unreadable};

pub type Objects<K> = HashMap<(String, String), Arc<Tolerant<K>>>;

#[derive(Default)]
pub struct World {
    pub hosts: Objects<BareMetalHost>,
    pub machines: Objects<Machine>,
    pub clusters: Objects<Cluster>,
    pub secrets: Objects<Secret>,
    pub control_planes: Objects<KubeadmControlPlane>,
    pub metal3_machines: HashSet<(String, String)>,
}

pub fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

/// A readable object.
pub fn read<K>(k: K) -> Arc<Tolerant<K>> {
    Arc::new(Tolerant::Read(k))
}

/// The typed view of a test object, to change it.
pub fn read_mut<K: Clone>(t: &mut Arc<Tolerant<K>>) -> &mut K {
    match Arc::make_mut(t) {
        Tolerant::Read(k) => k,
        Tolerant::Unreadable(_) => panic!("unreadable"),
    }
}

/// An object of `namespace` its typed view could not read at `path`.
pub fn unreadable<K>(namespace: &str, name: &str, path: &str) -> Arc<Tolerant<K>> {
    Arc::new(Tolerant::Unreadable(Box::new(Unreadable {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        problem: Problem {
            path: path.into(),
            message: "invalid value".into(),
        },
    })))
}

impl Lookup for World {
    fn host(&self, ns: &str, name: &str) -> Found<BareMetalHost> {
        self.hosts.get(&key(ns, name)).cloned()
    }
    fn machine(&self, ns: &str, name: &str) -> Found<Machine> {
        self.machines.get(&key(ns, name)).cloned()
    }
    fn cluster(&self, ns: &str, name: &str) -> Found<Cluster> {
        self.clusters.get(&key(ns, name)).cloned()
    }
    fn secret(&self, ns: &str, name: &str) -> Found<Secret> {
        self.secrets.get(&key(ns, name)).cloned()
    }
    fn control_plane(&self, ns: &str, name: &str) -> Found<KubeadmControlPlane> {
        self.control_planes.get(&key(ns, name)).cloned()
    }
}

impl Inventory for World {
    fn metal3_machine_exists(&self, ns: &str, name: &str) -> bool {
        self.metal3_machines.contains(&key(ns, name))
    }
}
