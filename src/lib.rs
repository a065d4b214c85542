//! metal3-fakenode: fake kubelets for Metal3 / Cluster API scale tests.
//!
//! Reconcile = observe (reflector stores) -> [`plan`] (pure) -> [`apply`] (workload client).

pub mod apply;
pub mod certificate_expiry;
pub mod cleanup;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod e2e;
pub mod envtest;
pub mod error;
pub mod fake;
pub mod fidelity;
pub mod http;
pub mod kubelet;
pub mod leadership;
pub mod metrics;
pub mod permissions;
pub mod plan;
pub mod resources;
pub mod shard;
pub mod shutdown;
pub mod simulate;
pub mod telemetry;
pub mod tolerant;
pub mod watch_health;
pub mod workload;
