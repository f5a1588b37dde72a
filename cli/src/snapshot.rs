//! `walbrook snapshot <schema.table>`: requests a snapshot from the running producer, shows
//! its progress and optionally writes the rows as JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use walbrook_client::{
    Client, ClientOptions, FilterOp, RowFilter, Snapshot, SnapshotInfo, SnapshotRequest,
};

/// Options of `walbrook snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// The table, `schema.table` (the first dot separates them).
    table: String,
    /// Only rows matching `COLUMN OP VALUE` (OP: = <> != < <= > >=) or `COLUMN IS [NOT] NULL`;
    /// the value is PostgreSQL text input for the column's type.
    #[arg(long)]
    filter: Option<String>,
    /// Write the rows (their column values) as JSON lines to FILE, or `-` for stdout.
    #[arg(long, value_name = "FILE")]
    jsonl: Option<PathBuf>,
    /// Rows per chunk (the producer's `snapshot.chunk_size` by default).
    #[arg(long)]
    chunk_size: Option<u32>,
    /// Fail when no message arrives for this long.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    stall_timeout: Duration,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "WALBROOK_NATS_URL")]
    nats_url: String,
    /// The source database (default: the database of `WALBROOK_PG_URL`).
    #[arg(long)]
    database: Option<String>,
    /// Subject root.
    #[arg(long, env = "WALBROOK_ROOT", default_value = "WALBROOK")]
    root: String,
    /// Print nothing but errors (no progress bar).
    #[arg(long, short)]
    quiet: bool,
    /// List the table's retained snapshots (JSON lines on stdout) instead of taking one;
    /// `*` lists every table's.
    #[arg(long, conflicts_with_all = ["read", "filter", "jsonl", "chunk_size"])]
    list: bool,
    /// Read the retained snapshot with this id again instead of taking a new one.
    #[arg(long, value_name = "ID", conflicts_with_all = ["filter", "chunk_size"])]
    read: Option<String>,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 60s or 5m"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    })
}

/// Parses `--filter`.
pub fn parse_filter(text: &str) -> anyhow::Result<RowFilter> {
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    for (suffix, op) in [
        (" IS NOT NULL", FilterOp::IsNotNull),
        (" IS NULL", FilterOp::IsNull),
    ] {
        if upper.ends_with(suffix) {
            let column = text[..text.len() - suffix.len()].trim();
            if column.is_empty() {
                bail!("--filter {text:?}: no column");
            }
            return Ok(RowFilter {
                column: column.to_string(),
                op,
                value: None,
            });
        }
    }
    // The first operator character splits the column from the rest.
    let at = text
        .find(['=', '<', '>', '!'])
        .with_context(|| format!("--filter {text:?}: expected COLUMN OP VALUE"))?;
    let (column, rest) = text.split_at(at);
    let (op, value) = [
        ("<>", FilterOp::Ne),
        ("!=", FilterOp::Ne),
        ("<=", FilterOp::Le),
        (">=", FilterOp::Ge),
        ("=", FilterOp::Eq),
        ("<", FilterOp::Lt),
        (">", FilterOp::Gt),
    ]
    .iter()
    .find_map(|(sym, op)| rest.strip_prefix(sym).map(|v| (*op, v)))
    .with_context(|| format!("--filter {text:?}: unknown operator"))?;
    let column = column.trim();
    if column.is_empty() {
        bail!("--filter {text:?}: no column");
    }
    Ok(RowFilter {
        column: column.to_string(),
        op,
        value: Some(value.trim().into()),
    })
}

fn database_of(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://")?.1;
    let path = after_scheme.split_once('/')?.1;
    let name = path.split(['?', '#']).next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Runs the snapshot; fails (non-zero exit) unless every row arrived.
pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    let database = match args.database.clone() {
        Some(db) => db,
        None => std::env::var("WALBROOK_PG_URL")
            .ok()
            .and_then(|url| database_of(&url))
            .context("name the database with --database (or set WALBROOK_PG_URL)")?,
    };
    let mut options = ClientOptions::new(args.nats_url.clone(), database).root(args.root.clone());
    for extra in args.nats_url.split(',').skip(1) {
        options = options.server(extra.trim());
    }
    let client = Client::connect(options).await?;
    if args.list {
        let mut stdout = std::io::stdout().lock();
        for info in client.snapshots(&args.table).await? {
            serde_json::to_writer(&mut stdout, &info)?;
            stdout.write_all(b"\n")?;
        }
        return Ok(());
    }
    let mut snapshot = match &args.read {
        Some(id) => client.read_snapshot(id, args.stall_timeout).await?,
        None => take(&client, &args).await?,
    };
    let info = snapshot.info().clone();
    show(&args, &mut snapshot, &info).await
}

/// Requests a new snapshot.
async fn take(client: &Client, args: &SnapshotArgs) -> anyhow::Result<Snapshot> {
    let mut request = SnapshotRequest::table(&args.table).stall_timeout(args.stall_timeout);
    if let Some(filter) = &args.filter {
        request = request.filter(parse_filter(filter)?);
    }
    if let Some(n) = args.chunk_size {
        request = request.chunk_size(n);
    }
    Ok(client.snapshot(request).await?)
}

/// The rest of [`run`] after the snapshot is open.
async fn show(
    args: &SnapshotArgs,
    snapshot: &mut Snapshot,
    info: &SnapshotInfo,
) -> anyhow::Result<()> {
    let mut out: Option<Box<dyn Write>> = match &args.jsonl {
        None => None,
        Some(path) if path.as_os_str() == "-" => {
            Some(Box::new(std::io::BufWriter::new(std::io::stdout())))
        }
        Some(path) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ))),
    };
    let bar = match (args.quiet, info.approx_rows) {
        (true, _) => ProgressBar::hidden(),
        (false, Some(n)) if n > 0 => ProgressBar::new(u64::try_from(n).unwrap_or(0)).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/~{len} rows ({per_sec}, {elapsed})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        ),
        (false, _) => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} rows ({per_sec}, {elapsed})")
                .expect("a valid template"),
        ),
    };
    bar.set_draw_target(if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    bar.set_message(format!("{}.{}", info.schema, info.table));
    while let Some(row) = snapshot.next().await {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                bar.abandon();
                if let Some(out) = out.as_mut() {
                    out.flush()?;
                }
                return Err(e).with_context(|| {
                    format!(
                        "snapshot {} stopped after {} rows",
                        info.id,
                        snapshot.rows_received()
                    )
                });
            }
        };
        if let (Some(out), Some(after)) = (out.as_mut(), row.after()) {
            serde_json::to_writer(&mut *out, &after.to_json())?;
            out.write_all(b"\n")?;
        }
        bar.inc(1);
    }
    if let Some(out) = out.as_mut() {
        out.flush()?;
    }
    bar.finish_and_clear();
    if !args.quiet {
        eprintln!(
            "snapshot {} of {}.{}: {} rows at position {}; apply changes from commit LSN {} on",
            info.id,
            info.schema,
            info.table,
            snapshot.rows_received(),
            info.position,
            info.position
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        let f = parse_filter("region = eu").unwrap();
        assert_eq!((f.column.as_str(), f.op), ("region", FilterOp::Eq));
        assert_eq!(f.value, Some("eu".into()));
        assert_eq!(parse_filter("n>=5").unwrap().op, FilterOp::Ge);
        assert_eq!(parse_filter("n != 5").unwrap().op, FilterOp::Ne);
        assert_eq!(parse_filter("note is null").unwrap().op, FilterOp::IsNull);
        assert_eq!(
            parse_filter("note IS NOT NULL").unwrap().op,
            FilterOp::IsNotNull
        );
        assert!(parse_filter("= 5").is_err());
        assert!(parse_filter("n ~ 5").is_err());
    }

    #[test]
    fn database_from_url() {
        assert_eq!(
            database_of("postgresql://u:p@h:5432/shop?sslmode=disable").as_deref(),
            Some("shop")
        );
        assert_eq!(database_of("postgres://h"), None);
    }
}
