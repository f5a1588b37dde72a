//! Bootstraps a table's copy: reads a snapshot of the table, then streams every change from
//! the snapshot's consistent position on. Applying the rows and then the changes reproduces
//! the table (docs/protocol.md §8) with no gap and no double. Prints one JSON line per row
//! (op `read`) and per change.
//!
//! ```text
//! cargo run -p walbrook-client --example snapshot_then_stream -- <nats-url> <database> <schema.table>
//! cargo run -p walbrook-client --example snapshot_then_stream -- nats://127.0.0.1:4222 shop public.orders
//! ```
//!
//! `WALBROOK_ROOT` sets the subject root (default `WALBROOK`). The snapshot header goes to
//! stderr. A failed or stalled snapshot is an error: request a new one.

use futures::StreamExt;
use walbrook_client::{Client, ClientOptions, SnapshotRequest, Start, Subscription};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, database, table] = args.as_slice() else {
        eprintln!("usage: snapshot_then_stream <nats-url> <database> <schema.table>");
        std::process::exit(2);
    };
    let root = std::env::var("WALBROOK_ROOT").unwrap_or_else(|_| "WALBROOK".into());
    let client = Client::connect(ClientOptions::new(url, database).root(root)).await?;

    // 1. The rows, as of the consistent position P.
    let mut snapshot = client
        .snapshot(SnapshotRequest::table(table.as_str()))
        .await?;
    let position = snapshot.position()?;
    eprintln!(
        "snapshot {} of {table} at {position}: about {} rows",
        snapshot.id(),
        snapshot
            .approx_rows()
            .map_or_else(|| "?".to_string(), |n| n.to_string())
    );
    while let Some(row) = snapshot.next().await {
        println!("{}", serde_json::to_string(&row?)?);
    }
    eprintln!("snapshot done: {} rows", snapshot.rows_received());

    // 2. Every change committed at or after P.
    let mut changes = client
        .subscribe(Subscription::table(table.as_str()).start(Start::CommitPosition(position)))
        .await?;
    while let Some(change) = changes.next().await {
        println!("{}", serde_json::to_string(&change?)?);
    }
    Ok(())
}
