//! Wiring only: the demo, the end-to-end run or the queue-delay benchmark.

use std::process::ExitCode;

use clap::Parser;
use metal3_fakenode_bench::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Demo(args) => metal3_fakenode_bench::demo::run(args).await,
        Command::E2e(args) => metal3_fakenode_bench::e2e::main(args).await,
        Command::QueueDelay(args) => metal3_fakenode_bench::queue_delay::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metal3-fakenode-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
