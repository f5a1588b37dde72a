//! The `walbrook` command.
//!
//! Subcommands arrive with their issues; what exists today is `demo`, which runs
//! against the servers named by `WALBROOK_PG_URL` and `WALBROOK_NATS_URL` (started by
//! `make demo` through `walbrook-sandbox`).

mod demo;

use clap::{Parser, Subcommand};

/// Walbrook: PostgreSQL change data capture over NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "walbrook", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the pipeline on a demo table: generate changes and print what is captured.
    Demo(demo::DemoArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
    }
}
