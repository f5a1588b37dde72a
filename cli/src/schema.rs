//! `walbrook schema <fingerprint|table>`: prints a schema version — by fingerprint through
//! the lookup RPC (protocol §5.2), or a table's latest announcement from the schema stream
//! (protocol §5.1).

use std::io::IsTerminal;

use anyhow::Context;
use walbrook_client::{Client, Fingerprint, TablePattern};
use walbrook_protocol::{StreamKind, Subjects};

use crate::connection::ConnectArgs;

/// Options of `walbrook schema`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// A fingerprint (16 hex digits, as in events and `walbrook tail`) or a table
    /// (`schema.table`) for its current schema.
    target: String,
    /// Print the registry document as one JSON line (the default when piped) instead of
    /// the column table and the indented schema.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Runs `walbrook schema`.
pub async fn run(args: SchemaArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let json = args.json || !std::io::stdout().is_terminal();
    let fingerprint = match args.target.parse::<Fingerprint>() {
        Ok(fingerprint) => fingerprint,
        Err(_) => latest_of_table(&client, &args).await?,
    };
    let schema = client
        .schema(fingerprint)
        .await
        .with_context(|| format!("looking up schema {fingerprint}"))?;
    let schema_value: serde_json::Value =
        serde_json::from_str(schema.schema_json()).context("the schema is not JSON")?;
    if json {
        let document = serde_json::json!({
            "fingerprint": fingerprint.to_string(),
            "table": schema.table(),
            "columns": schema.columns().iter().map(|c| serde_json::json!({
                "name": c.name, "type": c.type_name, "oid": c.oid,
                "key": c.is_key, "not_null": c.not_null,
            })).collect::<Vec<_>>(),
            "schema": schema_value,
        });
        println!("{document}");
    } else {
        println!("{}  fingerprint {fingerprint}", schema.table());
        let width = schema
            .columns()
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        for c in schema.columns() {
            let mut flags = Vec::new();
            if c.is_key {
                flags.push("key");
            }
            if c.not_null {
                flags.push("not null");
            }
            println!(
                "  {:<width$}  {}{}",
                c.name,
                c.type_name,
                if flags.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", flags.join(", "))
                }
            );
        }
        println!("{}", serde_json::to_string_pretty(&schema_value)?);
    }
    Ok(())
}

/// The fingerprint of a table's latest schema announcement.
async fn latest_of_table(client: &Client, args: &SchemaArgs) -> anyhow::Result<Fingerprint> {
    let pattern: TablePattern = args.target.parse().with_context(|| {
        format!(
            "{:?} is neither a fingerprint (16 hex digits) nor a table (schema.table)",
            args.target
        )
    })?;
    let TablePattern::Table { schema, table } = pattern else {
        anyhow::bail!(
            "{:?}: name one table (schema.table), not a wildcard",
            args.target
        );
    };
    let options = args.connect.options()?;
    let subjects = Subjects::new(&options.root, client.database());
    let js = async_nats::jetstream::new(client.nats().clone());
    let stream_name = subjects.stream_name(StreamKind::Schema);
    let stream = js
        .get_stream(&stream_name)
        .await
        .with_context(|| format!("opening stream {stream_name} (has the producer run?)"))?;
    let subject = subjects.schema_announcement(&schema, &table);
    let message = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .with_context(|| format!("no schema announced for {schema}.{table} (on {subject})"))?;
    let document: serde_json::Value = serde_json::from_slice(&message.payload)
        .with_context(|| format!("the announcement on {subject} is not JSON"))?;
    document
        .get("fingerprint")
        .and_then(serde_json::Value::as_str)
        .context("the announcement has no fingerprint")?
        .parse()
        .context("the announcement's fingerprint")
}
