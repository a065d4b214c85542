//! Pure builders of the objects a real host's kubelet and kubeadm would have left in the
//! workload cluster. Input: plain facts about the machine; output: k8s-openapi objects.

pub mod kubeadm_config;
pub mod node;

/// Marks every object metal3-fakenode creates, so that it only ever touches its own.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "metal3-fakenode";
