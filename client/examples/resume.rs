//! Resumes from a commit position saved by the application (no durable consumer): prints
//! every change event as one JSON line and, after the last event of each transaction, saves
//! that transaction's commit LSN to a file. Started again, it continues right after the last
//! fully processed transaction: nothing is skipped, no transaction is printed twice (one cut
//! off by a crash is printed again from its first event).
//!
//! ```text
//! cargo run -p walbrook-client --example resume -- <nats-url> <database> <table-pattern> <position-file>
//! cargo run -p walbrook-client --example resume -- nats://127.0.0.1:4222 shop public.orders /var/lib/app/orders.pos
//! ```
//!
//! `WALBROOK_ROOT` sets the subject root (default `WALBROOK`). Keeping the position next to
//! the data it describes (in the same database transaction) gives exactly-once application;
//! a file is the simplest stand-in.

use std::path::Path;

use futures::StreamExt;
use walbrook_client::{Client, ClientOptions, Lsn, Start, Subscription};

/// The saved position: the commit LSN of the last fully processed transaction.
fn load(path: &Path) -> Result<Option<Lsn>, Box<dyn std::error::Error>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().parse::<Lsn>()?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Saves a position atomically (write a temporary file, then rename it over the old one).
fn save(path: &Path, position: Lsn) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{position}\n"))?;
    std::fs::rename(&temporary, path)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, database, pattern, position_file] = args.as_slice() else {
        eprintln!("usage: resume <nats-url> <database> <table-pattern> <position-file>");
        std::process::exit(2);
    };
    let position_file = Path::new(position_file);
    let root = std::env::var("WALBROOK_ROOT").unwrap_or_else(|_| "WALBROOK".into());
    let client = Client::connect(ClientOptions::new(url, database).root(root)).await?;
    // After a transaction whose commit LSN is C, the next one commits at C + 1 or later.
    let start = match load(position_file)? {
        Some(done) => Start::CommitPosition(Lsn(done.0 + 1)),
        None => Start::Beginning,
    };
    eprintln!("starting at {start:?}");
    let mut events = client
        .subscribe(Subscription::table(pattern.as_str()).start(start))
        .await?;
    while let Some(item) = events.next().await {
        // Any error stops this example: its position file still holds the last complete
        // transaction, so a restart resumes there.
        let event = item?;
        println!("{}", serde_json::to_string(&event)?);
        if event.source().last {
            save(position_file, event.commit_lsn())?;
        }
    }
    Ok(())
}
