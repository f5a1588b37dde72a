//! `walbrook check`: validate the configuration and the PostgreSQL and NATS
//! prerequisites without starting replication; print each problem with its fix.

use std::path::PathBuf;

use walbrook_producer::config::{StreamConfig, redact_url};
use walbrook_producer::pipeline::{connect_nats, connect_sql};
use walbrook_producer::setup;
use walbrook_producer::subject::{StreamKind, Subjects};

/// Options of `walbrook check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// TOML configuration file; `WALBROOK_*` environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Runs the checks; fails (exit 1) if any problem was found.
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let config = match crate::produce::load_config(args.config.as_ref()) {
        Ok(config) => {
            println!("ok    configuration is valid");
            config
        }
        Err(e) => {
            println!("FAIL  configuration: {e:#}");
            anyhow::bail!("1 problem found");
        }
    };
    let mut problems = 0;
    let pg_url = config.pg_url.expose().to_string();
    let mut database = None;
    if let Some(warning) = walbrook_producer::postgres::PgSettings::parse(&pg_url)
        .ok()
        .and_then(|settings| settings.tls_warning())
    {
        println!("warn  postgres.url: {warning}");
    }
    match connect_sql(&pg_url).await {
        Ok(client) => {
            println!("ok    PostgreSQL reachable at {}", redact_url(&pg_url));
            report_wal_retention(&client, &config.slot).await;
            database = client
                .query_one("SELECT current_database()::text", &[])
                .await
                .ok()
                .map(|row| row.get::<_, String>(0));
            let mut config = config.clone();
            match setup::dropped_tables(&client, &config).await {
                Ok(dropped) => {
                    for table in &dropped {
                        println!(
                            "warn  table {table} no longer exists (dropped or renamed after its \
                             changes were published): the producer streams the others\n      \
                             fix: remove it from `tables`"
                        );
                    }
                    config.tables.retain(|t| !dropped.contains(t));
                }
                Err(p) => {
                    problems += 1;
                    println!("FAIL  {}\n      fix: {}", p.problem, p.hint);
                }
            }
            let found = setup::check(&client, &config).await;
            if found.is_empty() {
                println!(
                    "ok    PostgreSQL prerequisites (wal_level, privileges, slots, {} tables)",
                    config.tables.len()
                );
            }
            for problem in found {
                problems += 1;
                println!("FAIL  {}\n      fix: {}", problem.problem, problem.hint);
            }
        }
        Err(e) => {
            problems += 1;
            println!(
                "FAIL  {e}\n      fix: check postgres.url / WALBROOK_PG_URL and that the server runs"
            );
        }
    }
    if let Some(warning) = config.nats.tls_warning() {
        println!("warn  nats: {warning}");
    }
    match connect_nats(&config.nats).await {
        Ok(client) => {
            println!("ok    NATS reachable at {}", config.nats.servers.join(","));
            let js = async_nats::jetstream::new(client);
            match js.query_account().await {
                Ok(_) => println!("ok    JetStream enabled for this account"),
                Err(e) => {
                    problems += 1;
                    println!(
                        "FAIL  JetStream not available: {e}\n      fix: start nats-server with -js (or enable JetStream for the account)"
                    );
                }
            }
            if let Some(database) = &database {
                report_stream_drift(&js, &Subjects::new(&config.root, database), &config.stream)
                    .await;
            }
        }
        Err(e) => {
            problems += 1;
            println!("FAIL  {e}\n      fix: check nats.url and the credentials");
        }
    }
    if problems > 0 {
        anyhow::bail!("{problems} problem(s) found");
    }
    println!("all checks passed");
    Ok(())
}

/// Reports how much WAL the slot may hold back: a warning when `max_slot_wal_keep_size` is
/// unlimited (a producer that stays down fills the disk), and the slot's retained WAL and
/// `wal_status` when it exists.
async fn report_wal_retention(client: &tokio_postgres::Client, slot: &str) {
    let limit = client
        .query_one(
            "SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'",
            &[],
        )
        .await
        .map(|row| row.get::<_, String>(0));
    match limit.as_deref() {
        Ok("-1") => println!(
            "warn  max_slot_wal_keep_size is unlimited: while the producer is down its slot \
             keeps WAL until the disk is full\n      fix: set max_slot_wal_keep_size (e.g. \
             '100GB'); a slot invalidated by it is refused as a gap at start (docs/protocol.md \
             §3.8)"
        ),
        Ok(megabytes) => println!("ok    max_slot_wal_keep_size = {megabytes} MB"),
        Err(e) => println!("warn  cannot read max_slot_wal_keep_size: {e}"),
    }
    let retained = client
        .query_opt(
            "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)),
                    coalesce(wal_status, '?')
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    if let Ok(Some(row)) = retained {
        let (size, status): (Option<String>, String) = (row.get(0), row.get(1));
        let size = size.unwrap_or_else(|| "?".into());
        if status == "lost" {
            println!(
                "warn  slot {slot} is invalidated (wal_status lost): the producer will refuse \
                 it as a gap\n      fix: see `walbrook produce --accept-gap` (docs/protocol.md §3.8)"
            );
        } else {
            println!("ok    slot {slot} retains {size} of WAL (wal_status {status})");
        }
    }
}

/// Reports existing streams whose settings differ from the configuration (a warning:
/// the producer leaves operator changes in place).
async fn report_stream_drift(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    wanted: &StreamConfig,
) {
    for kind in [StreamKind::Wal, StreamKind::Schema] {
        let name = subjects.stream_name(kind);
        let config = walbrook_producer::streams::wanted_config(
            &name,
            &subjects.stream_subjects(kind),
            "",
            wanted,
        );
        match js.get_stream(&name).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => {
                    let drift = walbrook_producer::streams::drift(&info.config, &config);
                    if drift.is_empty() {
                        println!("ok    stream {name} exists");
                    }
                    for item in drift {
                        println!("warn  stream {name}: {item} (left as is)");
                    }
                }
                Err(e) => println!("warn  stream {name}: {e}"),
            },
            Err(_) => println!("ok    stream {name} will be created at start"),
        }
    }
}
