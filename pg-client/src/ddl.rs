//! Target tables: creating them from the event schema, following added and dropped columns,
//! and the checkpoint table.

use sqlx::postgres::{PgPool, Postgres};
use sqlx::{AssertSqlSafe, Row as _, Transaction};
use walbrook_client::runner::{Position, SinkError};
use walbrook_client::{Column, Lsn};

use crate::TableName;
use crate::apply::classify;
use crate::sql::quote_ident;

/// What the sink knows of a target table.
#[derive(Debug, Clone, Default)]
pub(crate) struct TargetTable {
    /// Column names in the target.
    pub(crate) columns: Vec<String>,
    /// Fingerprints whose columns were reconciled with the target.
    pub(crate) seen: Vec<walbrook_client::Fingerprint>,
}

pub(crate) async fn create_checkpoint_table(
    pool: &PgPool,
    table: &TableName,
) -> Result<(), SinkError> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (
             consumer text PRIMARY KEY,
             source_database text NOT NULL,
             commit_lsn pg_lsn NOT NULL,
             ordinal bigint NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now())",
        table.quoted()
    );
    // Two sinks starting together (scale-out instances) may both create it, and PostgreSQL's
    // CREATE TABLE IF NOT EXISTS is not safe against a concurrent creation (it fails with a
    // unique violation on pg_type or pg_class). A transaction-scoped advisory lock keyed by the
    // table's name serialises the creations; the second one then sees the table.
    let attempt = async {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7795))")
            .bind(format!("walbrook checkpoint table {}", table.quoted()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        tx.commit().await
    };
    attempt
        .await
        .map_err(|e| classify(&e, None, "creating the checkpoint table"))
}

pub(crate) async fn read_checkpoint(
    pool: &PgPool,
    table: &TableName,
    consumer: &str,
) -> Result<Option<Position>, SinkError> {
    let sql = format!(
        "SELECT (commit_lsn - '0/0'::pg_lsn)::text, ordinal FROM {} WHERE consumer = $1",
        table.quoted()
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(consumer)
        .fetch_optional(pool)
        .await
        .map_err(|e| classify(&e, None, "reading the checkpoint"))?;
    let Some(row) = row else { return Ok(None) };
    let lsn: String = row.get(0);
    let ordinal: i64 = row.get(1);
    let lsn: u64 = lsn
        .parse()
        .map_err(|_| SinkError::fatal(format!("checkpoint LSN {lsn:?} is not a number")))?;
    Ok(Some(Position {
        commit_lsn: Lsn(lsn),
        ordinal: u64::try_from(ordinal).unwrap_or(0),
    }))
}

/// Moves the checkpoint of `consumer` forward to `position` (never backward: a replayed dead
/// letter does not rewind it).
pub(crate) async fn write_checkpoint(
    tx: &mut Transaction<'static, Postgres>,
    table: &TableName,
    consumer: &str,
    database: &str,
    position: Position,
) -> Result<(), SinkError> {
    let t = table.quoted();
    let sql = format!(
        "INSERT INTO {t} AS c (consumer, source_database, commit_lsn, ordinal)
         VALUES ($1, $2, $3::pg_lsn, $4)
         ON CONFLICT (consumer) DO UPDATE
           SET commit_lsn = EXCLUDED.commit_lsn, ordinal = EXCLUDED.ordinal, updated_at = now(),
               source_database = CASE WHEN EXCLUDED.source_database = '' THEN c.source_database
                                      ELSE EXCLUDED.source_database END
           WHERE (c.commit_lsn, c.ordinal) < (EXCLUDED.commit_lsn, EXCLUDED.ordinal)"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(consumer)
        .bind(database)
        .bind(position.commit_lsn.to_string())
        .bind(i64::try_from(position.ordinal).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await
        .map_err(|e| classify(&e, None, "writing the checkpoint"))?;
    Ok(())
}

/// The columns of a target table, `None` when it does not exist.
pub(crate) async fn target_columns(
    tx: &mut Transaction<'static, Postgres>,
    table: &TableName,
) -> Result<Option<Vec<String>>, SinkError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table.quoted())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| classify(&e, None, "looking up the target table"))?;
    if exists.is_none() {
        return Ok(None);
    }
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(table.quoted())
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| classify(&e, None, "reading the target's columns"))?;
    Ok(Some(columns))
}

/// `CREATE TABLE` from the schema's columns: types as PostgreSQL names them (with their
/// modifiers), NOT NULL, and the primary key.
pub(crate) fn create_table_sql(table: &TableName, columns: &[Column]) -> String {
    let mut parts: Vec<String> = columns
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                quote_ident(&c.name),
                c.type_name,
                if c.not_null { " NOT NULL" } else { "" }
            )
        })
        .collect();
    let key: Vec<String> = columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| quote_ident(&c.name))
        .collect();
    if !key.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        table.quoted(),
        parts.join(", ")
    )
}

/// Makes the target table match `columns` (the full column list of a source table version):
/// creates it when missing (if allowed), adds the columns it lacks and drops those the source
/// dropped (if following the schema). Returns the target's columns afterwards, or `None` if
/// the table does not exist and may not be created.
pub(crate) async fn reconcile(
    tx: &mut Transaction<'static, Postgres>,
    table: &TableName,
    columns: &[Column],
    create: bool,
    follow: bool,
) -> Result<Option<Vec<String>>, SinkError> {
    // Sinks sharing a target (scale-out instances, or two consumers of one database) may
    // reconcile the same table at once; a transaction-scoped advisory lock per table makes the
    // second wait and then see what the first created.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7795))")
        .bind(format!("walbrook target table {}", table.quoted()))
        .execute(&mut **tx)
        .await
        .map_err(|e| classify(&e, None, &format!("locking {table} for its definition")))?;
    let Some(existing) = target_columns(tx, table).await? else {
        if !create {
            return Err(SinkError::fatal(format!(
                "target table {table} does not exist (and creating tables is off)"
            )));
        }
        let sql = create_table_sql(table, columns);
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await
            .map_err(|e| classify(&e, None, &format!("creating {table}")))?;
        tracing::info!(%table, "created the target table");
        return Ok(Some(columns.iter().map(|c| c.name.clone()).collect()));
    };
    if !follow {
        return Ok(Some(existing));
    }
    let mut now = existing.clone();
    for c in columns {
        if !existing.contains(&c.name) {
            // Nullable: rows already in the target have no value for it.
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                table.quoted(),
                quote_ident(&c.name),
                c.type_name
            );
            sqlx::query(AssertSqlSafe(sql))
                .execute(&mut **tx)
                .await
                .map_err(|e| classify(&e, None, &format!("adding column {} to {table}", c.name)))?;
            tracing::info!(%table, column = %c.name, "added a column the source added");
            now.push(c.name.clone());
        }
    }
    for name in &existing {
        if !columns.iter().any(|c| &c.name == name) {
            let sql = format!(
                "ALTER TABLE {} DROP COLUMN IF EXISTS {}",
                table.quoted(),
                quote_ident(name)
            );
            sqlx::query(AssertSqlSafe(sql))
                .execute(&mut **tx)
                .await
                .map_err(|e| classify(&e, None, &format!("dropping column {name} of {table}")))?;
            tracing::info!(%table, column = %name, "dropped a column the source dropped");
            now.retain(|n| n != name);
        }
    }
    Ok(Some(now))
}
