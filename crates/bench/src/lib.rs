//! metal3-fakenode's benchmarks: the demo (a local scale run with a report and a plot) and
//! the end-to-end run with the real upstream controllers. Both run the controller binary
//! as its own process, as a Deployment would.

pub mod cli;
pub mod demo;
pub mod e2e;
pub mod fronts;
pub mod queue_delay;

use std::path::PathBuf;

/// Names the controller binary to run; by default it is the `metal3-fakenode` beside this
/// binary (cargo builds every binary of the workspace into one folder).
pub const CONTROLLER_BIN_ENV: &str = "METAL3_FAKENODE_BIN";

/// Names the tenancy front binary the e2e run starts through `--workload-apiservers`.
pub const FRONT_BIN_ENV: &str = "METAL3_FAKENODE_FRONT_BIN";

/// The controller binary the demo and the e2e run start.
pub fn controller_binary() -> anyhow::Result<PathBuf> {
    binary("metal3-fakenode", CONTROLLER_BIN_ENV)
}

/// The tenancy front binary (`metal3-fakenode-front`).
pub fn front_binary() -> anyhow::Result<PathBuf> {
    binary("metal3-fakenode-front", FRONT_BIN_ENV)
}

fn binary(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let beside = exe
        .parent()
        .map(|dir| dir.join(name))
        .filter(|p| p.exists());
    beside.ok_or_else(|| {
        anyhow::anyhow!(
            "no {name} binary beside {}: build it with the same profile \
             (`cargo build [--release] -p {name}`; `make demo` and `make e2e` do), \
             or name it with {env}",
            exe.display()
        )
    })
}
