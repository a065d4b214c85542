//! metal3-fakenode: fake kubelets for Metal3 / Cluster API scale tests.
//!
//! Reconcile = observe (reflector stores) -> [`plan`] (pure) -> [`apply`] (workload client).
//! The typed views of the upstream kinds live in their own crate, re-exported here.

pub use metal3_fakenode_api::{resources, tolerant};

/// The controller's name: on Events, as the field manager of its Lease, in logs.
pub const CONTROLLER_NAME: &str = "metal3-fakenode";

pub mod apply;
pub mod certificate_expiry;
pub mod cleanup;
pub mod cli;
pub mod controller;
pub mod error;
pub mod fake;
pub mod fidelity;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod kubelet;
pub mod kubelet_api;
pub mod leadership;
pub mod metrics;
pub mod permissions;
pub mod plan;
pub mod shard;
pub mod shutdown;
pub mod stores;
pub mod telemetry;
pub mod watch_health;
pub mod workload;

/// Locks a mutex whose every critical section is a single map or field operation, so a
/// panic elsewhere cannot leave it torn: a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
