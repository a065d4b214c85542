//! As the controller's: the testkit's own integration tests (the kubelet probe against a
//! real etcd and kube-apiserver) run with the local control plane's assets, and are marked
//! ignored without them unless `METAL3_FAKENODE_REQUIRE_ASSETS` (set by `make test`) says
//! they must run.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(envtest)");
    println!("cargo::rerun-if-env-changed=METAL3_FAKENODE_ENVTEST_ASSETS");
    println!("cargo::rerun-if-env-changed=METAL3_FAKENODE_REQUIRE_ASSETS");
    if std::env::var_os("METAL3_FAKENODE_ENVTEST_ASSETS").is_some()
        || std::env::var_os("METAL3_FAKENODE_REQUIRE_ASSETS").is_some()
    {
        println!("cargo::rustc-cfg=envtest");
    }
}
