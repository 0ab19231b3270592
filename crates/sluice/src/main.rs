//! The `sluice` binary: parse flags, set up telemetry, run the subcommand, flush on exit.

use clap::Parser;

/// jemalloc for the whole process (SQLite's C code included): see the workspace manifest
/// and docs/performance.md for what glibc's malloc cost.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = sluice::cli::Cli::parse();
    let telemetry = match sluice::telemetry::init(
        &cli.telemetry,
        sluice::telemetry::DEFAULT_FILTER,
        cli.command.service_name(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice: telemetry: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = sluice::cli::run(cli).await;
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
