//! The `sluice` binary: parse flags, set up logging, run the subcommand.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = sluice::cli::Cli::parse();
    sluice::telemetry::init(
        cli.log_format,
        "info,sqlx=warn,h2=warn,hyper=warn,tower=warn",
    );
    match sluice::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
