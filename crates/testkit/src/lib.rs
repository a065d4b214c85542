//! metal3-fakenode's test bench: what the integration tests, the demo and the end-to-end
//! run share, and the product never ships.
//!
//! - [`envtest`]: real etcd and kube-apiservers as child processes, with a PKI and the
//!   upstream CRDs, built from Go modules by `hack/envtest-assets.sh`.
//! - [`simulate`]: the management cluster as CAPI, CAPM3 and the baremetal-operator leave
//!   it, and a stand-in for the part of CAPM3 that closes the loop.
//! - [`probe`] and [`exposition`]: plain HTTP probes and Prometheus text parsing.
//! - [`kubelet_probe`]: runs `hack/kubelet-probe`, which drives a fake kubelet endpoint
//!   (port-forward, etcd, TLS) with the real clients of Cluster API's KCP.

pub mod envtest;
pub mod exposition;
pub mod kubelet_probe;
pub mod probe;
pub mod simulate;

/// The repository's root: where `deploy/`, `dashboards/` and `hack/` are.
pub fn repo_root() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Without `..` in it: kustomize is handed paths relative to it.
    root.canonicalize().unwrap_or(root)
}
