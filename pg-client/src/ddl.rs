//! Target tables: creating them from the event schema, following added and dropped columns,
//! and the checkpoint table.

use tokio_postgres::types::Type;
use walbrook_client::runner::{Position, SinkError};
use walbrook_client::{Column, Lsn};
use walbrook_pgtype_avro::Backfill;

use crate::TableName;
use crate::connection::{Connection, Tx, classify};
use crate::sql::{quote_ident, quote_literal};

/// What the sink knows of a target table.
#[derive(Debug, Clone, Default)]
pub(crate) struct TargetTable {
    /// Column names in the target.
    pub(crate) columns: Vec<String>,
    /// Their types as `format_type` writes them (`numeric(12,2)`), in the same order.
    pub(crate) types: Vec<String>,
    /// Fingerprints whose columns were reconciled with the target.
    pub(crate) seen: Vec<walbrook_client::Fingerprint>,
}

impl TargetTable {
    /// A table of `columns` (name, type).
    pub(crate) fn with_columns(columns: Vec<(String, String)>) -> TargetTable {
        let mut table = TargetTable::default();
        table.set_columns(columns);
        table
    }

    /// Replaces the columns with `columns` (name, type).
    pub(crate) fn set_columns(&mut self, columns: Vec<(String, String)>) {
        (self.columns, self.types) = columns.into_iter().unzip();
    }

    /// Whether the target's column `name` has the type `type_name`.
    pub(crate) fn has_type(&self, name: &str, type_name: &str) -> bool {
        self.columns
            .iter()
            .position(|c| c == name)
            .is_some_and(|i| self.types[i] == type_name)
    }
}

/// Creates the checkpoint table when missing, keyed by (source database, consumer), and
/// migrates one keyed by the consumer alone (before checkpoints were per source).
pub(crate) async fn create_checkpoint_table(
    conn: &mut Connection,
    table: &TableName,
) -> Result<(), SinkError> {
    let t = table.quoted();
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {t} (
             consumer text NOT NULL,
             source_database text NOT NULL,
             commit_lsn pg_lsn NOT NULL,
             ordinal bigint NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (source_database, consumer))"
    );
    // Two sinks starting together (scale-out instances) may both create it, and PostgreSQL's
    // CREATE TABLE IF NOT EXISTS is not safe against a concurrent creation (it fails with a
    // unique violation on pg_type or pg_class). A transaction-scoped advisory lock keyed by the
    // table's name serialises the creations; the second one then sees the table.
    let context = "creating the checkpoint table";
    let mut tx = conn.begin();
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7795))",
        &[Type::TEXT],
        &[&format!("walbrook checkpoint table {t}")],
    )
    .await
    .map_err(|e| classify(&e, None, context))?;
    tx.ddl(&sql)
        .await
        .map_err(|e| classify(&e, None, context))?;
    // The primary key's constraint name and columns, in key order.
    let key = tx
        .query(
            "SELECT c.conname::text, array_to_string(array_agg(a.attname::text ORDER BY k.ord), ',')
             FROM pg_constraint c
             CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             WHERE c.conrelid = $1::regclass AND c.contype = 'p'
             GROUP BY c.conname",
            &[Type::TEXT],
            &[&t],
        )
        .await
        .map_err(|e| classify(&e, None, "reading the checkpoint table's key"))?;
    if let Some(row) = key.first() {
        let (name, columns): (String, String) = (row.get(0), row.get(1));
        if columns == "consumer" {
            tracing::info!(
                table = %t,
                "checkpoints are per source now: keying the checkpoint table by (source_database, consumer)"
            );
            let migrate = format!(
                "ALTER TABLE {t} DROP CONSTRAINT {}, ADD PRIMARY KEY (source_database, consumer)",
                crate::sql::quote_ident(&name)
            );
            tx.ddl(&migrate)
                .await
                .map_err(|e| classify(&e, None, "migrating the checkpoint table"))?;
        }
    }
    tx.commit().await
}

/// The checkpoint of `consumer` for source `database`. A row written before checkpoints were
/// per source without its database (`''`) is adopted by the first source that asks for it.
pub(crate) async fn read_checkpoint(
    conn: &mut Connection,
    table: &TableName,
    database: &str,
    consumer: &str,
) -> Result<Option<Position>, SinkError> {
    let t = table.quoted();
    let adopt = format!(
        "UPDATE {t} SET source_database = $2
         WHERE consumer = $1 AND source_database = ''
           AND NOT EXISTS (SELECT 1 FROM {t} WHERE consumer = $1 AND source_database = $2)"
    );
    let sql = format!(
        "SELECT (commit_lsn - '0/0'::pg_lsn)::text, ordinal FROM {t}
         WHERE consumer = $1 AND source_database = $2"
    );
    let mut tx = conn.begin();
    tx.execute(&adopt, &[Type::TEXT, Type::TEXT], &[&consumer, &database])
        .await
        .map_err(|e| classify(&e, None, "reading the checkpoint"))?;
    let rows = tx
        .query(&sql, &[Type::TEXT, Type::TEXT], &[&consumer, &database])
        .await
        .map_err(|e| classify(&e, None, "reading the checkpoint"))?;
    tx.commit().await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
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

/// Moves the checkpoint of (`database`, `consumer`) forward to `position` (never backward: a
/// replayed dead letter does not rewind it).
pub(crate) async fn write_checkpoint(
    tx: &mut Tx<'_>,
    table: &TableName,
    consumer: &str,
    database: &str,
    position: Position,
) -> Result<(), SinkError> {
    let t = table.quoted();
    let sql = format!(
        "INSERT INTO {t} AS c (consumer, source_database, commit_lsn, ordinal)
         VALUES ($1, $2, $3::pg_lsn, $4)
         ON CONFLICT (source_database, consumer) DO UPDATE
           SET commit_lsn = EXCLUDED.commit_lsn, ordinal = EXCLUDED.ordinal, updated_at = now()
           WHERE (c.commit_lsn, c.ordinal) < (EXCLUDED.commit_lsn, EXCLUDED.ordinal)"
    );
    tx.execute(
        &sql,
        &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8],
        &[
            &consumer,
            &database,
            &position.commit_lsn.to_string(),
            &i64::try_from(position.ordinal).unwrap_or(i64::MAX),
        ],
    )
    .await
    .map_err(|e| classify(&e, None, "writing the checkpoint"))?;
    Ok(())
}

/// The columns (name, type) of a target table, `None` when it does not exist.
pub(crate) async fn target_columns(
    tx: &mut Tx<'_>,
    table: &TableName,
) -> Result<Option<Vec<(String, String)>>, SinkError> {
    let quoted = table.quoted();
    let exists = tx
        .query("SELECT to_regclass($1)::text", &[Type::TEXT], &[&quoted])
        .await
        .map_err(|e| classify(&e, None, "looking up the target table"))?;
    if exists
        .first()
        .and_then(|r| r.get::<_, Option<String>>(0))
        .is_none()
    {
        return Ok(None);
    }
    let columns = tx
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum",
            &[Type::TEXT],
            &[&quoted],
        )
        .await
        .map_err(|e| classify(&e, None, "reading the target's columns"))?;
    Ok(Some(columns.iter().map(|r| (r.get(0), r.get(1))).collect()))
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
/// dropped (if following the schema). Returns the target's columns (name, type) afterwards,
/// or `None` if the table does not exist and may not be created.
pub(crate) async fn reconcile(
    tx: &mut Tx<'_>,
    table: &TableName,
    columns: &[Column],
    create: bool,
    follow: bool,
) -> Result<Option<Vec<(String, String)>>, SinkError> {
    // Sinks sharing a target (scale-out instances, or two consumers of one database) may
    // reconcile the same table at once; a transaction-scoped advisory lock per table makes the
    // second wait and then see what the first created.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7795))",
        &[Type::TEXT],
        &[&format!("walbrook target table {}", table.quoted())],
    )
    .await
    .map_err(|e| classify(&e, None, &format!("locking {table} for its definition")))?;
    let Some(existing) = target_columns(tx, table).await? else {
        if !create {
            return Err(SinkError::fatal(format!(
                "target table {table} does not exist (and creating tables is off)"
            )));
        }
        for c in columns {
            check_type(tx, table, c).await?;
        }
        let sql = create_table_sql(table, columns);
        tx.ddl(&sql)
            .await
            .map_err(|e| classify(&e, None, &format!("creating {table}")))?;
        tracing::info!(%table, "created the target table");
        return Ok(Some(
            columns
                .iter()
                .map(|c| (c.name.clone(), c.type_name.clone()))
                .collect(),
        ));
    };
    if !follow {
        return Ok(Some(existing));
    }
    let mut now = existing.clone();
    for c in columns {
        if !existing.iter().any(|(name, _)| name == &c.name) {
            add_column(tx, table, c).await?;
            now.push((c.name.clone(), c.type_name.clone()));
        }
    }
    for (name, _) in &existing {
        if !columns.iter().any(|c| &c.name == name) {
            let sql = format!(
                "ALTER TABLE {} DROP COLUMN IF EXISTS {}",
                table.quoted(),
                quote_ident(name)
            );
            tx.ddl(&sql)
                .await
                .map_err(|e| classify(&e, None, &format!("dropping column {name} of {table}")))?;
            tracing::info!(%table, column = %name, "dropped a column the source dropped");
            now.retain(|(n, _)| n != name);
        }
    }
    Ok(Some(now))
}

/// Refuses a column whose type, as the event's schema names it (`pgType`, text that came
/// from NATS), is not a type of the target: it is spliced into DDL, so it must be exactly a
/// type name PostgreSQL resolves (`to_regtype` parses it as one and nothing else).
async fn check_type(tx: &mut Tx<'_>, table: &TableName, c: &Column) -> Result<(), SinkError> {
    let refuse = |why: String| {
        SinkError::fatal(format!(
            "column {:?} of {table}: the event's schema gives it the type {:?}, which {why}; \
             the table is not created or altered (is the schema forged, or does the type \
             exist only at the source? create it in the target)",
            c.name, c.type_name
        ))
    };
    match tx
        .query(
            "SELECT to_regtype($1) IS NOT NULL",
            &[Type::TEXT],
            &[&c.type_name],
        )
        .await
    {
        Ok(rows) if rows.first().is_some_and(|r| r.get::<_, bool>(0)) => Ok(()),
        Ok(_) => Err(refuse("is not a type of the target".into())),
        Err(e) => Err(refuse(format!(
            "is not a type name ({})",
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string())
        ))),
    }
}

/// Adds a column the source added, giving the rows already in the target what PostgreSQL
/// gave the source's rows ([`Backfill`]; no change event carries it): NULL, or the missing
/// value, set as the column's default while it is added (PostgreSQL stores it once, without
/// rewriting the table) and dropped right after, so that every later row takes its value
/// from its event. A value per row (a volatile default) cannot be known here: with rows in
/// the target the sink refuses, naming the fix, rather than leave them diverging. The column
/// is nullable whatever the source says: NOT NULL is the source's to enforce.
async fn add_column(tx: &mut Tx<'_>, table: &TableName, c: &Column) -> Result<(), SinkError> {
    check_type(tx, table, c).await?;
    let context = format!("adding column {} to {table}", c.name);
    let column = quote_ident(&c.name);
    let add = format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {column} {}",
        table.quoted(),
        c.type_name
    );
    match &c.backfill {
        Backfill::Null => {
            tx.ddl(&add)
                .await
                .map_err(|e| classify(&e, None, &context))?;
            tracing::info!(%table, column = %c.name, "added a column the source added");
        }
        Backfill::Value(value) => {
            let with_default = format!("{add} DEFAULT {}", quote_literal(value));
            tx.ddl(&with_default)
                .await
                .map_err(|e| classify(&e, None, &context))?;
            let drop_default = format!(
                "ALTER TABLE {} ALTER COLUMN {column} DROP DEFAULT",
                table.quoted()
            );
            tx.ddl(&drop_default)
                .await
                .map_err(|e| classify(&e, None, &context))?;
            tracing::info!(
                %table,
                column = %c.name,
                "added a column the source added; rows already in the target hold the source's default, as the source's rows do"
            );
        }
        Backfill::PerRow => {
            let rows = tx
                .query(
                    &format!("SELECT EXISTS (SELECT 1 FROM {})", table.quoted()),
                    &[],
                    &[],
                )
                .await
                .map_err(|e| classify(&e, None, &context))?;
            if rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
                return Err(SinkError::fatal(format!(
                    "the source added column {} to {table} with a volatile default (or an identity): \
                     PostgreSQL wrote a value per existing row, and no change event carries those \
                     values, so the rows already in the target cannot be given them. Add the column \
                     to the target table yourself with the source's values (for example from a \
                     copy of the source table), then restart the sink: it follows a column the \
                     target already has",
                    c.name
                )));
            }
            tx.ddl(&add)
                .await
                .map_err(|e| classify(&e, None, &context))?;
            tracing::info!(%table, column = %c.name, "added a column the source added (the target table is empty)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use walbrook_harness::PgServer;
    use walbrook_pg_connect::PgSettings;
    use walbrook_pgtype_avro::PgType;

    fn column(name: &str, type_name: &str) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            oid: 23,
            is_key: name == "id",
            not_null: false,
            backfill: Backfill::Null,
            pg_type: PgType::from_builtin_oid(23).unwrap(),
        }
    }

    /// A type name from the wire that smuggles SQL is refused before any DDL runs, and the
    /// DDL path refuses a second statement even if one got through.
    #[tokio::test]
    async fn forged_type_names_never_reach_ddl() {
        let db = PgServer::shared().fresh_database("ddl_forged");
        db.psql("CREATE TABLE victim (id int); CREATE TABLE kept (id int PRIMARY KEY);")
            .unwrap();
        let mut conn = Connection::open(&PgSettings::parse(&db.url()).unwrap())
            .await
            .unwrap();
        let forged = [
            "int); DROP TABLE victim; --",
            "int, x int",
            "no_such_type",
            "int DEFAULT 1",
        ];
        for type_name in forged {
            for table in ["created", "kept"] {
                let target = TableName::new("public", table);
                let mut tx = conn.begin();
                let columns = [column("id", "integer"), column("x", type_name)];
                let refused = reconcile(&mut tx, &target, &columns, true, true).await;
                let error = refused.expect_err(type_name).to_string();
                assert!(
                    error.contains("the event's schema gives it the type"),
                    "{error}"
                );
                drop(tx);
            }
        }
        let mut tx = conn.begin();
        let error = tx
            .ddl("CREATE TABLE other (id int); DROP TABLE victim")
            .await
            .expect_err("two statements are refused");
        let error = error
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(error.contains("multiple commands"), "{error}");
        drop(tx);
        let left = db
            .psql("SELECT count(*) FROM pg_class WHERE relname IN ('victim', 'created', 'other')")
            .unwrap();
        assert_eq!(left.trim(), "1", "victim stands; nothing was created");
    }
}
