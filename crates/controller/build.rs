//! The integration tests need the local control plane (`make test` builds it and names it
//! in `METAL3_FAKENODE_ENVTEST_ASSETS`). Without it a plain `cargo test` runs the unit
//! tests and marks the integration tests ignored, saying how to run them; with
//! `METAL3_FAKENODE_REQUIRE_ASSETS` (set by `make test`) they always run, so a missing
//! asset fails them and CI can never go green by skipping.
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
