//! Snapshot state in the source database (`_walbrook.snapshots`), so that any producer can
//! list snapshots and a snapshot whose producer died is marked failed.
//!
//! Ownership is a session advisory lock (`pg_advisory_lock(LOCK_CLASS, lock_key)`) held by
//! the connection that runs the snapshot, taken in the same transaction that inserts the
//! row. A `running` row whose lock can be taken has lost its producer.

use tokio_postgres::{Client, Row};
use walbrook_protocol::snapshot::{RowFilter, SnapshotInfo, SnapshotStatus};

use crate::lsn::Lsn;

/// First key of the advisory locks (`'WALB'`).
pub const LOCK_CLASS: i32 = 0x5741_4C42;

/// Creates the table (idempotent).
pub const SETUP_SQL: &str = "
    CREATE SCHEMA IF NOT EXISTS _walbrook;
    CREATE TABLE IF NOT EXISTS _walbrook.snapshots (
        id          text PRIMARY KEY,
        lock_key    integer GENERATED ALWAYS AS IDENTITY (CYCLE),
        schema_name text NOT NULL,
        table_name  text NOT NULL,
        filter      text,
        chunk_size  integer NOT NULL,
        position    pg_lsn NOT NULL,
        fingerprint text NOT NULL,
        subject     text NOT NULL,
        stream      text NOT NULL,
        approx_rows bigint,
        keyed       boolean NOT NULL,
        status      text NOT NULL DEFAULT 'running',
        rows        bigint NOT NULL DEFAULT 0,
        error       text,
        started_at  timestamptz NOT NULL DEFAULT now(),
        ended_at    timestamptz
    );";

const COLUMNS: &str = "id, current_database()::text, schema_name, table_name, subject, stream,
    position::text, fingerprint, approx_rows, chunk_size, filter, keyed, status, rows, error,
    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn info(row: &Row) -> SnapshotInfo {
    let filter: Option<String> = row.get(10);
    let chunk_size: i32 = row.get(9);
    let rows: i64 = row.get(13);
    let status: String = row.get(12);
    SnapshotInfo {
        id: row.get(0),
        database: row.get(1),
        schema: row.get(2),
        table: row.get(3),
        subject: row.get(4),
        stream: row.get(5),
        position: row.get(6),
        fingerprint: row.get(7),
        approx_rows: row.get(8),
        chunk_size: u32::try_from(chunk_size).unwrap_or(0),
        filter: filter.and_then(|f| serde_json::from_str::<RowFilter>(&f).ok()),
        keyed: row.get(11),
        status: SnapshotStatus::parse(&status).unwrap_or(SnapshotStatus::Failed),
        rows: u64::try_from(rows).unwrap_or(0),
        error: row.get(14),
        started_at: row.get(15),
        ended_at: row.get(16),
    }
}

/// What a new snapshot row holds.
#[derive(Debug)]
pub struct NewSnapshot<'a> {
    /// Schema.
    pub schema: &'a str,
    /// Table.
    pub table: &'a str,
    /// Filter.
    pub filter: Option<&'a RowFilter>,
    /// Chunk size.
    pub chunk_size: u32,
    /// P.
    pub position: Lsn,
    /// Fingerprint text.
    pub fingerprint: String,
    /// Id (from [`new_id`]).
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Stream name.
    pub stream: String,
    /// Row estimate.
    pub approx_rows: Option<i64>,
    /// Chunked by key.
    pub keyed: bool,
}

/// Inserts a `running` snapshot and takes its ownership lock on `sql`'s session, in one
/// transaction (no other producer can see it unowned). Returns its description.
pub async fn create(
    sql: &mut Client,
    new: &NewSnapshot<'_>,
) -> Result<SnapshotInfo, tokio_postgres::Error> {
    let tx = sql.transaction().await?;
    let id = &new.id;
    let filter = new
        .filter
        .map(|f| serde_json::to_string(f).expect("a filter serializes"));
    let chunk_size = i32::try_from(new.chunk_size).unwrap_or(i32::MAX);
    let subject = &new.subject;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO _walbrook.snapshots
                     (id, schema_name, table_name, filter, chunk_size, position, fingerprint,
                      subject, stream, approx_rows, keyed)
                 VALUES ($1, $2, $3, $4, $5, $6::text::pg_lsn, $7, $8, $9, $10, $11)
                 RETURNING lock_key, {COLUMNS}"
            ),
            &[
                &id,
                &new.schema,
                &new.table,
                &filter,
                &chunk_size,
                &new.position.to_string(),
                &new.fingerprint,
                &subject,
                &new.stream,
                &new.approx_rows,
                &new.keyed,
            ],
        )
        .await?;
    let lock_key: i32 = row.get(0);
    tx.execute("SELECT pg_advisory_lock($1, $2)", &[&LOCK_CLASS, &lock_key])
        .await?;
    tx.commit().await?;
    // `info` reads columns from index 0; skip lock_key.
    let rest = sql
        .query_one(
            &format!("SELECT {COLUMNS} FROM _walbrook.snapshots WHERE id = $1"),
            &[id],
        )
        .await?;
    Ok(info(&rest))
}

/// A new snapshot id: creation time (UTC, to the millisecond) and 8 random hex digits,
/// e.g. `20261121T072600123-9f86d081`; ids sort by creation time and are NATS tokens.
pub async fn new_id(sql: &Client) -> Result<String, tokio_postgres::Error> {
    Ok(sql
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISSMS')
                    || '-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8)",
            &[],
        )
        .await?
        .get(0))
}

/// Records progress of a running snapshot.
pub async fn progress(sql: &Client, id: &str, rows: u64) -> Result<(), tokio_postgres::Error> {
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    sql.execute(
        "UPDATE _walbrook.snapshots SET rows = $2 WHERE id = $1 AND status = 'running'",
        &[&id, &rows],
    )
    .await
    .map(|_| ())
}

/// Ends a running snapshot (`done` or `failed`). Returns whether it was still running.
pub async fn finish(
    sql: &Client,
    id: &str,
    status: SnapshotStatus,
    rows: u64,
    error: Option<&str>,
) -> Result<bool, tokio_postgres::Error> {
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    Ok(sql
        .execute(
            "UPDATE _walbrook.snapshots SET status = $2, rows = $3, error = $4, ended_at = now()
              WHERE id = $1 AND status = 'running'",
            &[&id, &status.as_str(), &rows, &error],
        )
        .await?
        == 1)
}

/// Snapshots matching the filters, oldest first.
pub async fn list(
    sql: &Client,
    id: Option<&str>,
    schema: Option<&str>,
    table: Option<&str>,
) -> Result<Vec<SnapshotInfo>, tokio_postgres::Error> {
    let rows = sql
        .query(
            &format!(
                "SELECT {COLUMNS} FROM _walbrook.snapshots
                  WHERE ($1::text IS NULL OR id = $1) AND ($2::text IS NULL OR schema_name = $2)
                    AND ($3::text IS NULL OR table_name = $3)
                  ORDER BY started_at, id"
            ),
            &[&id, &schema, &table],
        )
        .await?;
    Ok(rows.iter().map(info).collect())
}

/// Running snapshots whose producer is gone: marks each failed (with `reason`) and
/// returns them. Uses `sql`'s session to probe the ownership locks.
pub async fn fail_orphans(
    sql: &Client,
    reason: &str,
) -> Result<Vec<SnapshotInfo>, tokio_postgres::Error> {
    let candidates = sql
        .query(
            "SELECT id, lock_key FROM _walbrook.snapshots WHERE status = 'running'",
            &[],
        )
        .await?;
    let mut failed = Vec::new();
    for row in candidates {
        let id: String = row.get(0);
        let lock_key: i32 = row.get(1);
        let free: bool = sql
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_CLASS, &lock_key],
            )
            .await?
            .get(0);
        if !free {
            continue;
        }
        let updated = sql
            .query_opt(
                &format!(
                    "UPDATE _walbrook.snapshots SET status = 'failed', error = $2, ended_at = now()
                      WHERE id = $1 AND status = 'running' RETURNING {COLUMNS}"
                ),
                &[&id, &reason],
            )
            .await;
        sql.execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&LOCK_CLASS, &lock_key],
        )
        .await?;
        if let Some(row) = updated? {
            failed.push(info(&row));
        }
    }
    Ok(failed)
}

/// Removes finished snapshots older than `retention` (their data has expired).
pub async fn expire(
    sql: &Client,
    retention: std::time::Duration,
) -> Result<u64, tokio_postgres::Error> {
    if retention.is_zero() {
        return Ok(0);
    }
    let seconds = retention.as_secs_f64();
    sql.execute(
        "DELETE FROM _walbrook.snapshots
          WHERE status <> 'running' AND ended_at < now() - make_interval(secs => $1)",
        &[&seconds],
    )
    .await
}
