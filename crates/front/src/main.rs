//! The tenancy front's binary: arguments, logs, then the front until a signal.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    front::cli::Args::parse().run().await
}
