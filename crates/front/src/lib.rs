//! The tenancy front: many workload clusters served from one real kube-apiserver, each on
//! a TLS endpoint of its own and each seeing only its own objects.
//!
//! Each served cluster gets a listener whose serving certificate its own CA signed and
//! which accepts only client certificates of that CA. Requests are mapped into the
//! backing server's terms by the pure functions of the `tenancy` crate, sent with the
//! front's own credentials, and the answers mapped back; what the mapping refuses is
//! answered with a Kubernetes `Status`, never passed through.
//!
//! Modules, each depending only on those above it:
//! - [`error`]: the one error enum, and the `Status` a client reads.
//! - [`clusters`]: the served clusters as data.
//! - [`metrics`]: the Prometheus metrics, labelled by nothing that names a cluster.
//! - [`plan`]: which listeners to start and stop (pure).
//! - [`observe`]: the served clusters read from Clusters and their CA Secrets (pure).
//! - [`tls`]: one cluster's serving certificate and client-certificate check.
//! - [`discovery`], [`request`], [`watch`], [`portforward`]: the pure halves of
//!   proxying.
//! - [`patch_schemas`]: each kind's list strategies for strategic merge patches, read
//!   from the backing server's OpenAPI.
//! - [`proxy`]: one cluster's requests through the backing server.
//! - [`listener`]: one cluster's TLS listener.
//! - [`front`]: observe → plan → apply over all clusters.
//! - [`removal`]: a removed cluster's objects deleted from the backing server.
//! - [`cluster_watch`]: the Cluster watcher feeding the front, recording prefixes,
//!   saying refusals and removing what Clusters gone left behind.
//! - [`http`]: `/metrics`, `/healthz` and `/readyz` on a port of their own.
//! - [`cli`]: the binary's arguments and its run.

pub mod cli;
pub mod cluster_watch;
pub mod clusters;
pub mod discovery;
pub mod error;
pub mod front;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod patch_schemas;
pub mod plan;
pub mod portforward;
pub mod proxy;
pub mod removal;
pub mod request;
pub mod tls;
pub mod watch;

pub use clusters::{ServedCluster, parse_cluster_list};
pub use error::{Error, Result};
pub use front::{Endpoint, Front, Outcome};
