//! `walbrook tail <pattern>…`: prints the decoded change events of tables as they arrive —
//! readable blocks on a terminal, one JSON object per line when the output is piped.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use walbrook_client::{ChangeEvent, Lsn, PgValue, Row, Start, Subscription, value_to_json};

use crate::connection::ConnectArgs;

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `pretty` on a terminal, `json` otherwise.
    Auto,
    /// One block per event for people.
    Pretty,
    /// One JSON object per line (the SDK's serde form, docs/client.md).
    Json,
}

/// Options of `walbrook tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Tables: `schema.table`, `schema.*` or `*` (several allowed).
    #[arg(required = true)]
    patterns: Vec<String>,
    /// Where to start: `beginning`, `new`, a time (RFC 3339, e.g. 2026-11-21T06:00:00Z) or a
    /// commit position (LSN, e.g. 0/1A2B3C0).
    #[arg(long, default_value = "new", value_parser = parse_start)]
    from: Start,
    /// Read through a durable consumer of this name and acknowledge what is printed; a later
    /// `tail` with the same name resumes after it (`--from` only applies the first time).
    #[arg(long)]
    durable: Option<String>,
    /// Exit after printing this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// Exit when no event arrived for this many seconds (default: wait forever).
    #[arg(long)]
    idle_exit: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Parses a `--from` value.
pub fn parse_start(text: &str) -> Result<Start, String> {
    match text {
        "beginning" => Ok(Start::Beginning),
        "new" => Ok(Start::New),
        _ => {
            if let Ok(lsn) = text.parse::<Lsn>() {
                return Ok(Start::CommitPosition(lsn));
            }
            DateTime::parse_from_rfc3339(text)
                .map(|t| Start::Time(t.with_timezone(&Utc)))
                .map_err(|_| {
                    format!("{text:?} is not `beginning`, `new`, an RFC 3339 time or an LSN (X/Y)")
                })
        }
    }
}

/// Runs `walbrook tail` until the limit, the idle timeout, SIGINT or a closed output.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let format = match args.format {
        Format::Auto if std::io::stdout().is_terminal() => Format::Pretty,
        Format::Auto => Format::Json,
        f => f,
    };
    let client = args.connect.connect().await?;
    let mut subscription = Subscription::tables(args.patterns.iter().map(String::as_str))
        .start(args.from)
        .prefetch(64);
    if let Some(name) = &args.durable {
        subscription = subscription.durable(name);
    }
    let mut events = client
        .subscribe(subscription)
        .await
        .context("subscribing")?;
    let idle = args.idle_exit.map(Duration::from_secs_f64);
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        if args.limit.is_some_and(|limit| printed >= limit) {
            return Ok(());
        }
        let next = async {
            match idle {
                Some(idle) => tokio::time::timeout(idle, events.next()).await.ok(),
                None => Some(events.next().await),
            }
        };
        let item = tokio::select! {
            item = next => item,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(item) = item else {
            return Ok(()); // idle timeout
        };
        let Some(item) = item else {
            anyhow::bail!("the subscription ended");
        };
        let event = match item {
            Ok(event) => event,
            // A message that cannot be decoded is reported with its sequence; a durable
            // consumer leaves it unacknowledged (it comes back after ack_wait).
            Err(error) if error.message().is_some() || error.is_retryable() => {
                eprintln!("walbrook tail: {error}");
                continue;
            }
            Err(error) => return Err(error).context("reading events"),
        };
        let written = match format {
            Format::Json => serde_json::to_writer(&mut out, &event)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n")),
            _ => out.write_all(pretty(&event).as_bytes()),
        }
        .and_then(|()| out.flush());
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        event.ack().await.context("acknowledging")?;
        printed += 1;
    }
}

/// One event as a readable block:
///
/// ```text
/// update public.orders  commit 0/16B3A28 #0  seq 3  2026-11-21 06:10:00.123456 UTC
///   after   id = 1
///           note = "x"
///           big = <unchanged>
/// ```
pub fn pretty(event: &ChangeEvent) -> String {
    let source = event.source();
    let mut text = format!(
        "{} {}.{}  commit {} #{}  seq {}  {}\n",
        event.op(),
        source.schema,
        source.table,
        source.commit_lsn,
        source.ordinal,
        event.stream_sequence(),
        source.commit_time.format("%Y-%m-%d %H:%M:%S%.6f UTC"),
    );
    for (label, row) in [("before", event.before()), ("after", event.after())] {
        if let Some(row) = row {
            block(&mut text, label, row);
        }
    }
    text
}

fn block(text: &mut String, label: &str, row: &Row) {
    for (i, (column, value)) in row.iter().enumerate() {
        let shown = match value {
            PgValue::Null => "NULL".to_string(),
            PgValue::Unchanged => "<unchanged>".to_string(),
            v => value_to_json(v).to_string(),
        };
        let head = if i == 0 { label } else { "" };
        text.push_str(&format!("  {head:<7} {} = {shown}\n", column.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert!(matches!(parse_start("beginning"), Ok(Start::Beginning)));
        assert!(matches!(parse_start("new"), Ok(Start::New)));
        assert!(matches!(
            parse_start("0/1A2B3C0"),
            Ok(Start::CommitPosition(Lsn(0x1A2B3C0)))
        ));
        match parse_start("2026-11-21T06:00:00+01:00") {
            Ok(Start::Time(t)) => assert_eq!(t.to_rfc3339(), "2026-11-21T05:00:00+00:00"),
            other => panic!("{other:?}"),
        }
        assert!(parse_start("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
