//! `walbrook demo`: a guided look at the pipeline on a demo table.
//!
//! Until the producer exists (issue #4) the demo says so plainly: it shows the
//! changes PostgreSQL's logical decoding captured for the demo table, and proves the
//! NATS JetStream side is reachable, but it does not pretend to publish changes.

use std::time::Duration;

use anyhow::{Context, bail};

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
}

const SLOT: &str = "walbrook_demo_slot";

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("== Walbrook demo ==");
    let (client, connection) = tokio_postgres::connect(&args.pg_url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL (WALBROOK_PG_URL)")?;
    let connection = tokio::spawn(connection);

    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        bail!("wal_level is {wal_level}; set wal_level=logical and restart PostgreSQL");
    }
    println!("PostgreSQL: connected, wal_level=logical");

    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS public.demo_orders;
             SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = '{SLOT}';
             CREATE TABLE public.demo_orders (
               id bigint PRIMARY KEY, customer text NOT NULL,
               amount numeric(12,2), placed_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await
        .context("creating the demo table")?;
    // A logical slot must be created in a transaction that has not written anything.
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&SLOT],
        )
        .await
        .context("creating the demo slot")?;
    println!(
        "Created table public.demo_orders and logical slot {SLOT}; generating {} inserts, \
         an update and a delete…",
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
        .batch_execute(
            "UPDATE public.demo_orders SET amount = amount + 1 WHERE id = 1;
             DELETE FROM public.demo_orders WHERE id = 2;",
        )
        .await?;

    println!("\nChanges captured by PostgreSQL logical decoding (test_decoding view):");
    let rows = client
        .query(
            &format!(
                "SELECT lsn::text, data FROM pg_logical_slot_get_changes('{SLOT}', NULL, NULL)"
            ),
            &[],
        )
        .await?;
    for row in &rows {
        let lsn: String = row.get(0);
        let data: String = row.get(1);
        println!("  {lsn:>12}  {data}");
    }
    client
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{SLOT}')"))
        .await?;
    drop(client);
    let _ = connection.await;

    let nats = async_nats::connect(&args.nats_url)
        .await
        .context("connecting to NATS (WALBROOK_NATS_URL)")?;
    let js = async_nats::jetstream::new(nats);
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "WALBROOK_DEMO".into(),
            subjects: vec!["WALBROOK_DEMO.>".into()],
            ..Default::default()
        })
        .await
        .context("creating the demo JetStream stream")?;
    let ack = tokio::time::timeout(
        Duration::from_secs(10),
        js.publish("WALBROOK_DEMO.ping", bytes::Bytes::from_static(b"ping"))
            .await?
            .into_future(),
    )
    .await
    .context("waiting for the JetStream ack")??;
    println!(
        "\nNATS JetStream: reachable; a probe message was stored in stream {} at sequence {}.",
        ack.stream, ack.sequence
    );
    drop(stream);

    println!(
        "\nNot built yet: the producer (issue #4) that turns these changes into Avro events \
         on NATS subjects, the client that decodes them (issue #6), and the producer's \
         Prometheus metrics on WALBROOK_METRICS_ADDR. This demo will run that real pipeline \
         as soon as it exists."
    );
    Ok(())
}
