//! `walbrook-servers`: starts throwaway servers for tests written in other languages (the
//! Python bindings' pytest suite), prints where they are, and stops them when its standard
//! input closes.
//!
//! ```text
//! walbrook-servers
//! ```
//!
//! Starts a PostgreSQL cluster (logical replication enabled) and a JetStream-enabled
//! nats-server, prints one JSON line on stdout —
//! `{"pg_url": …, "nats_url": …, "psql": …, "servers": [{kind, pid, dir}…]}` — and then
//! waits until its standard input reaches end of file (the test process closed the pipe or
//! died), stops both servers and exits. If `walbrook-servers` itself is killed, the
//! harness's reaper processes stop the servers.

use std::io::{Read, Write};
use std::process::ExitCode;

use walbrook_harness::{NatsServer, PgServer, ServerProcessInfo};

fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!("usage: walbrook-servers   (stops the servers when stdin closes)");
        return ExitCode::from(2);
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("walbrook-servers: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let pg = PgServer::start().map_err(|e| e.to_string())?;
    let nats = NatsServer::start().map_err(|e| e.to_string())?;
    let servers: Vec<ServerProcessInfo> = [pg.process_info(), nats.process_info()]
        .into_iter()
        .flatten()
        .collect();
    let psql = pg
        .bin_dir()
        .map(|dir| dir.join("psql").display().to_string())
        .unwrap_or_else(|| "psql".into());
    let line = serde_json::json!({
        "pg_url": pg.admin_url(),
        "nats_url": nats.url(),
        "psql": psql,
        "servers": servers,
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| e.to_string())?;
    drop(stdout);
    // Block until the owner closes our stdin (or dies); the content is ignored.
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    drop(nats);
    pg.stop();
    Ok(())
}
