//! The control planes shared by the tests of one test binary. Tests isolate themselves
//! by namespace and by cluster name; a test that kills or restarts an API server starts
//! its own.

#![allow(dead_code)]

use metal3_fakenode::envtest::{Assets, Environment};
use tokio::sync::OnceCell;

/// Workload API servers in the shared environment.
pub const WORKLOAD_SERVERS: usize = 2;

pub async fn env() -> &'static Environment {
    static ENV: OnceCell<Environment> = OnceCell::const_new();
    ENV.get_or_init(|| async {
        let assets = Assets::from_env().unwrap_or_else(|e| panic!("{e}"));
        Environment::start(assets, WORKLOAD_SERVERS)
            .await
            .unwrap_or_else(|e| panic!("starting the local control planes: {e}"))
    })
    .await
}

/// A namespace name unique to this test binary run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
