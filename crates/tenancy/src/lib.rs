//! Many workload clusters on one kube-apiserver, each with a view of its own: the pure
//! mapping between a cluster's names, objects, selectors and paths and the backing
//! server's.
//!
//! The tenancy front (a proxy) and the fake kubelet endpoint both use these functions, so
//! the two cannot disagree on how a name is mapped. Nothing here does I/O: every function
//! takes plain data (JSON values, strings, maps) and answers a value or a typed refusal.
//! Anything the crate does not know how to isolate is refused, never passed through.
//!
//! Modules, each depending only on those above it:
//! - [`error`]: the one error enum.
//! - [`prefix`]: a short prefix per Cluster incarnation, allocated against a record.
//! - [`names`]: namespaces, cluster-scoped names, RBAC subjects, reserved keys.
//! - [`kinds`]: the resources the front isolates, and how.
//! - [`selectors`]: label and field selectors.
//! - [`rbac`]: RBAC objects stored so they grant nothing in the backing server.
//! - [`objects`]: request bodies and answers, lists, watch events, Tables, Status.
//! - [`paths`]: API request paths, and the kubelet's port-forward path.

pub mod error;
mod json;
pub mod kinds;
pub mod names;
pub mod objects;
pub mod paths;
pub mod prefix;
pub mod rbac;
pub mod selectors;

pub use error::{Error, Result};
pub use kinds::{Resource, Scope, Subresource, Target};
pub use names::{
    CLUSTER_LABEL, DOMAIN, NameRule, PREFIX_ANNOTATION, backing_name, backing_namespace,
    backing_subject, is_reserved_key, split_backing_namespace, tenant_name, tenant_namespace,
    tenant_subject,
};
pub use objects::{
    WELL_KNOWN_NAMESPACES, from_backing, to_backing, watch_event_from_backing,
    well_known_namespaces,
};
pub use paths::{ApiPath, KubeletPortForward, ResourcePath, kubelet_port_forward};
pub use prefix::{Allocation, ClusterKey, MAX_ATTEMPTS, PREFIX_LEN, Prefix, allocate};
pub use rbac::RULES_ANNOTATION;
pub use selectors::{
    backing_field_selector, backing_label_selector, tenant_field_selector, tenant_label_selector,
};
