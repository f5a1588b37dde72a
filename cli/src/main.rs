//! The `walbrook` command.
//!
//! * `walbrook produce` runs the producer appliance (PostgreSQL → NATS JetStream).
//! * `walbrook check` validates the configuration and prerequisites without
//!   starting replication, printing each problem with its fix.
//! * `walbrook snapshot <schema.table>` takes a snapshot through the running producer,
//!   with a progress bar, optionally writing the rows as JSON lines.
//! * `walbrook tail` prints the decoded change events of tables; `walbrook schema` prints
//!   a schema version (by fingerprint or table).
//! * `walbrook demo` shows the pipeline on a demo table next to the servers named by
//!   `WALBROOK_PG_URL` and `WALBROOK_NATS_URL` (`make demo` starts throwaway ones).
//!
//! Logs go to stderr; `WALBROOK_LOG_FORMAT=json` switches to JSON lines and
//! `RUST_LOG` sets the level (default `info`).

mod check;
mod connection;
mod demo;
mod dlq;
mod produce;
mod schema;
mod sink;
mod snapshot;
mod tail;

use clap::{CommandFactory, Parser, Subcommand};

/// Walbrook: PostgreSQL change data capture over NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "walbrook", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the producer: stream the configured tables' changes into JetStream.
    Produce(produce::ProduceArgs),
    /// Check the configuration and the PostgreSQL/NATS prerequisites, printing fixes.
    Check(check::CheckArgs),
    /// Show the pipeline on a demo table: generate changes and print what is captured.
    Demo(demo::DemoArgs),
    /// Take a snapshot of a table through the running producer (progress bar, JSON lines).
    Snapshot(snapshot::SnapshotArgs),
    /// Run a consumer: apply the change stream to a target (postgres, webhook,
    /// elasticsearch).
    Sink(sink::SinkArgs),
    /// Inspect (`list`) and re-drive (`replay`) a consumer's dead letters.
    Dlq(dlq::DlqArgs),
    /// Print the decoded change events of tables (JSON lines when piped).
    Tail(tail::TailArgs),
    /// Print a schema version, by fingerprint or table (`schema.table`).
    Schema(schema::SchemaArgs),
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("WALBROOK_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Allocator of the whole binary (see cli/Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own narrative; only warnings from the pipeline interrupt it.
    // pgwire-replication logs every failed session at ERROR (including a standby's
    // routine "slot in use" answers); the producer reports those errors itself.
    init_logging(match cli.command {
        Command::Demo(_) | Command::Tail(_) | Command::Schema(_) => "warn,pgwire_replication=off",
        _ => "info,pgwire_replication=off",
    });
    if matches!(cli.command, Command::Sink(_) | Command::Dlq(_)) {
        sink::refuse_unknown_variables(&Cli::command(), std::env::vars_os())?;
    }
    match cli.command {
        Command::Produce(args) => produce::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Snapshot(args) => snapshot::run(args).await,
        Command::Sink(args) => sink::run(args).await,
        Command::Dlq(args) => dlq::run(args).await,
        Command::Tail(args) => tail::run(args).await,
        Command::Schema(args) => schema::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(names: &[&str]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        names.iter().map(|n| (n.into(), "x".into())).collect()
    }

    #[test]
    fn sink_variables_of_every_sink_kind_are_accepted() {
        let cli = Cli::command();
        sink::refuse_unknown_variables(
            &cli,
            vars(&[
                "WALBROOK_SINK_TARGET_URL",
                "WALBROOK_SINK_WEBHOOK_URL",
                "WALBROOK_SINK_SEARCH_URL",
                "WALBROOK_SINK_CONSUMER",
                "WALBROOK_NATS_URL",
                "PATH",
            ]),
        )
        .unwrap();
    }

    #[test]
    fn an_unknown_sink_variable_is_refused_by_name() {
        let error = sink::refuse_unknown_variables(
            &Cli::command(),
            vars(&["WALBROOK_SINK_CONSUMER", "WALBROOK_SINK_TARGETURL"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("WALBROOK_SINK_TARGETURL: unknown WALBROOK_SINK_* variable"),
            "{error}"
        );
        assert!(error.contains("WALBROOK_SINK_TARGET_URL"), "{error}");
    }
}
