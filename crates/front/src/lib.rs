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
//! - [`plan`]: which listeners to start and stop (pure).
//! - [`observe`]: the served clusters read from Clusters and their CA Secrets (pure; the
//!   Cluster watcher that feeds it is still to come).
//! - [`tls`]: one cluster's serving certificate and client-certificate check.
//! - [`discovery`], [`request`], [`watch`], [`portforward`]: the pure halves of
//!   proxying.
//! - [`proxy`]: one cluster's requests through the backing server.
//! - [`listener`]: one cluster's TLS listener.
//! - [`front`]: observe → plan → apply over all clusters.
//! - [`cli`]: the binary's arguments and its run.

pub mod cli;
pub mod clusters;
pub mod discovery;
pub mod error;
pub mod front;
pub mod listener;
pub mod observe;
pub mod plan;
pub mod portforward;
pub mod proxy;
pub mod request;
pub mod tls;
pub mod watch;

pub use clusters::{ServedCluster, parse_cluster_list};
pub use error::{Error, Result};
pub use front::{Endpoint, Front, Outcome};
