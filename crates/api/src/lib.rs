//! Typed views of the upstream kinds metal3-fakenode reads (Cluster API, CAPM3, the
//! baremetal-operator), and the tolerant reading that keeps one unreadable object from
//! failing the others.

pub mod resources;
pub mod tolerant;
