//! `walbrook-sandbox`: runs a command next to throwaway servers.
//!
//! ```text
//! walbrook-sandbox [--search] -- COMMAND [ARGS...]
//! ```
//!
//! Starts a PostgreSQL cluster (logical replication enabled) and a JetStream-enabled
//! nats-server (and with `--search` an OpenSearch-API server), runs COMMAND with
//! `WALBROOK_PG_URL`, `WALBROOK_NATS_URL` (and `TEST_SEARCH_URL`) set, then stops
//! everything and exits with COMMAND's status. Before running COMMAND it prints one
//! line `walbrook-sandbox: {json}` on stderr naming each server's pid and directory.

use std::process::{Command, ExitCode};

use walbrook_harness::{NatsServer, PgServer, SearchServer, ServerProcessInfo};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--");
    let (flags, command) = match split {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (&args[..], &[][..]),
    };
    if command.is_empty() || flags.iter().any(|f| f != "--search") {
        eprintln!("usage: walbrook-sandbox [--search] -- COMMAND [ARGS...]");
        return ExitCode::from(2);
    }
    match run(flags.iter().any(|f| f == "--search"), command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("walbrook-sandbox: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(with_search: bool, command: &[String]) -> Result<ExitCode, String> {
    let pg = PgServer::start().map_err(|e| e.to_string())?;
    let nats = NatsServer::start().map_err(|e| e.to_string())?;
    let search = if with_search {
        Some(SearchServer::start().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let servers: Vec<ServerProcessInfo> = [
        pg.process_info(),
        nats.process_info(),
        search.as_ref().and_then(SearchServer::process_info),
    ]
    .into_iter()
    .flatten()
    .collect();
    eprintln!(
        "walbrook-sandbox: {}",
        serde_json::json!({ "servers": servers })
    );
    let mut child = Command::new(&command[0]);
    child
        .args(&command[1..])
        .env("WALBROOK_PG_URL", pg.admin_url())
        .env("WALBROOK_NATS_URL", nats.url());
    if let Some(search) = &search {
        child.env("TEST_SEARCH_URL", search.url());
    }
    let status = child
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", command[0]))?;
    drop(search);
    drop(nats);
    pg.stop();
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
