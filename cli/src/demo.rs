//! `walbrook demo`: the real pipeline on a demo table.
//!
//! It runs the producer (the same code as `walbrook produce`) against the servers in
//! `WALBROOK_PG_URL` and `WALBROOK_NATS_URL`, writes inserts, updates and deletes into
//! `public.demo_orders`, then reads the change events back from JetStream, resolves
//! each fingerprint through the schema lookup RPC, decodes the Avro and prints them,
//! and shows where the metrics are.

use std::time::Duration;

use anyhow::{Context, bail};
use apache_avro::types::Value;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use walbrook_pgtype_avro::fingerprint::{decode_body, split_single_object};
use walbrook_producer::config::RawConfig;
use walbrook_producer::pipeline;

/// Options of `walbrook demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// PostgreSQL URL of a server with `wal_level=logical`.
    #[arg(long, env = "WALBROOK_PG_URL")]
    pg_url: String,
    /// NATS URL of a server with JetStream enabled.
    #[arg(long, env = "WALBROOK_NATS_URL")]
    nats_url: String,
    /// How many rows to insert.
    #[arg(long, default_value_t = 5)]
    rows: u32,
    /// Where the producer serves its metrics during the demo (default: a free port).
    #[arg(long)]
    metrics_addr: Option<String>,
}

const ROOT: &str = "WALBROOK";

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("== Walbrook demo ==");
    let (client, connection) = tokio_postgres::connect(&args.pg_url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL (WALBROOK_PG_URL)")?;
    tokio::spawn(connection);
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS public.demo_orders;
             CREATE TABLE public.demo_orders (
               id bigint PRIMARY KEY, customer text NOT NULL,
               amount numeric(12,2), placed_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .context("creating the demo table")?;
    println!("PostgreSQL: created public.demo_orders in database {database}");
    let metrics_addr = match args.metrics_addr.clone() {
        Some(addr) => addr,
        None => {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.to_string()
        }
    };

    let mut raw = RawConfig::default();
    raw.apply_env([
        ("WALBROOK_PG_URL", args.pg_url.clone()),
        ("WALBROOK_NATS_URL", args.nats_url.clone()),
        ("WALBROOK_TABLES", "public.demo_orders".to_string()),
        ("WALBROOK_SLOT", "walbrook_demo".to_string()),
        ("WALBROOK_PUBLICATION", "walbrook_demo".to_string()),
        ("WALBROOK_METRICS_ADDR", metrics_addr.clone()),
    ])?;
    let config = raw.validate()?;
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(config, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = 'walbrook_demo'",
                &[],
            )
            .await?
            .get(0);
        if active == 1 {
            break;
        }
        if producer.is_finished() {
            producer.await??;
            bail!("the producer stopped before streaming");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the producer did not start streaming within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("Producer: streaming slot walbrook_demo into JetStream (subject root {ROOT})");

    println!(
        "Writing {} inserts, an update, a key change and a delete…",
        args.rows
    );
    for i in 1..=i64::from(args.rows) {
        client
            .execute(
                "INSERT INTO public.demo_orders (id, customer, amount) \
                 VALUES ($1::bigint, $2, $1::bigint * 10.25)",
                &[&i, &format!("customer-{i}")],
            )
            .await?;
    }
    client
        .batch_execute("UPDATE public.demo_orders SET amount = amount + 1 WHERE id = 1")
        .await?;
    client
        .batch_execute("UPDATE public.demo_orders SET id = 100 WHERE id = 2")
        .await?;
    client
        .batch_execute("DELETE FROM public.demo_orders WHERE id = 3")
        .await?;
    let expected = usize::try_from(args.rows)? + 3;

    let nats = async_nats::connect(&args.nats_url)
        .await
        .context("connecting to NATS (WALBROOK_NATS_URL)")?;
    let js = jetstream::new(nats.clone());
    let stream = js.get_stream(format!("{ROOT}_{database}_WAL")).await?;
    let consumer = stream.create_consumer(OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    println!("\nDecoded change events from {ROOT}.{database}.wal.public.demo_orders:");
    let mut shown = 0;
    while shown < expected {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .context("waiting for change events")?
            .context("the stream ended")??;
        // A message may carry several events of one transaction (docs/protocol.md §3.6).
        let count = message
            .headers
            .as_ref()
            .and_then(|h| h.get(walbrook_protocol::headers::EVENTS))
            .map(|v| v.as_str().to_owned());
        match count {
            None => {
                println!("  {}", describe(&nats, &database, &message.payload).await?);
                shown += 1;
            }
            Some(count) => {
                let count = walbrook_protocol::batch::parse_count(&count)
                    .with_context(|| format!("bad Walbrook-Events header {count:?}"))?;
                for range in walbrook_protocol::batch::split(&message.payload, count)? {
                    let event = &message.payload[range];
                    println!("  {}", describe(&nats, &database, event).await?);
                    shown += 1;
                }
            }
        }
    }

    let metrics = http_get(&metrics_addr, "/metrics").await?;
    println!("\nMetrics: http://{metrics_addr}/metrics (health: /healthz, /readyz). A few lines:");
    for line in metrics.lines().filter(|l| {
        l.starts_with("walbrook_producer_events_total")
            || l.starts_with("walbrook_producer_publish_ack_seconds_count")
            || l.starts_with("walbrook_producer_confirmed_lsn")
    }) {
        println!("  {line}");
    }
    shutdown.cancel();
    producer.await??;
    // The walsender of the stopped producer exits a moment after it: retry the drop.
    let mut attempts = 0;
    loop {
        let dropped = client
            .batch_execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                  WHERE slot_name = 'walbrook_demo';
                 DROP PUBLICATION IF EXISTS walbrook_demo;",
            )
            .await;
        match dropped {
            Ok(()) => break,
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("dropping the demo slot and publication"),
        }
    }
    println!("\nDone: the producer drained, confirmed its position and stopped cleanly.");
    Ok(())
}

/// One line per event: op, table, position, and the row images.
async fn describe(
    nats: &async_nats::Client,
    database: &str,
    payload: &[u8],
) -> anyhow::Result<String> {
    let (fingerprint, body) = split_single_object(payload)?;
    let reply = nats
        .request(
            format!("{ROOT}.{database}.rpc.schema"),
            fingerprint.to_string().into(),
        )
        .await?;
    let doc: Json = serde_json::from_slice(&reply.payload)?;
    let schema_text = doc["schema"].as_str().context("schema lookup failed")?;
    let schema_json: Json = serde_json::from_str(schema_text)?;
    let schema = apache_avro::Schema::parse_str(schema_text)?;
    let Value::Record(fields) = decode_body(&schema, body)? else {
        bail!("not a record");
    };
    let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let op = match get("op") {
        Some(Value::Enum(_, symbol)) => symbol.clone(),
        _ => "?".into(),
    };
    let (commit, ordinal) = match get("source") {
        Some(Value::Record(source)) => {
            let long = |n: &str| match source.iter().find(|(k, _)| k == n).map(|(_, v)| v) {
                Some(Value::Long(v)) => *v,
                _ => 0,
            };
            (long("commit_lsn"), long("ordinal"))
        }
        _ => (0, 0),
    };
    let image = |name: &str| -> String {
        let field_schema = schema_json["fields"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .map(|f| f["type"][1].clone())
            .unwrap_or(Json::Null);
        match get(name) {
            Some(Value::Union(_, inner)) => format_record(inner, &field_schema),
            _ => "null".into(),
        }
    };
    let lsn = walbrook_producer::Lsn(u64::try_from(commit).unwrap_or(0));
    Ok(format!(
        "{op:<10} at {lsn}#{ordinal}  before={}  after={}",
        image("before"),
        image("after")
    ))
}

fn format_record(value: &Value, schema: &Json) -> String {
    let Value::Record(fields) = value else {
        return "null".into();
    };
    let parts: Vec<String> = fields
        .iter()
        .map(|(name, v)| {
            let field_schema = schema["fields"]
                .as_array()
                .and_then(|f| f.iter().find(|f| f["name"] == name.as_str()))
                .map(|f| f["type"].clone())
                .unwrap_or(Json::Null);
            format!("{name}: {}", format_value(v, &field_schema))
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn format_value(value: &Value, schema: &Json) -> String {
    match value {
        Value::Union(i, inner) => {
            let branch = schema
                .as_array()
                .and_then(|b| b.get(usize::try_from(*i).unwrap_or(0)))
                .cloned()
                .unwrap_or(Json::Null);
            format_value(inner, &branch)
        }
        Value::Null => "null".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Long(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Float(f) => f.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::TimestampMicros(us) => chrono::DateTime::from_timestamp_micros(*us)
            .map_or_else(|| us.to_string(), |t| t.to_rfc3339()),
        Value::Decimal(d) => {
            let scale = schema["scale"].as_u64().unwrap_or(0);
            let bytes: Vec<u8> = d.try_into().unwrap_or_default();
            decimal_text(&bytes, u32::try_from(scale).unwrap_or(0))
        }
        other => format!("{other:?}"),
    }
}

/// A big-endian two's-complement unscaled integer with `scale` as decimal text.
fn decimal_text(bytes: &[u8], scale: u32) -> String {
    if bytes.is_empty() || bytes.len() > 16 {
        return format!("<decimal {} bytes>", bytes.len());
    }
    let mut value: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in bytes {
        value = (value << 8) | i128::from(*b);
    }
    let negative = value < 0;
    let digits = value.unsigned_abs().to_string();
    let scale = usize::try_from(scale).unwrap_or(0);
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// A minimal HTTP GET on loopback (the demo needs no HTTP client crate for one call).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::decimal_text;

    #[test]
    fn formats_decimals() {
        assert_eq!(decimal_text(&[0x04, 0x01], 2), "10.25");
        assert_eq!(decimal_text(&[0xFF], 2), "-0.01");
        assert_eq!(decimal_text(&[0x07], 0), "7");
    }
}
