//! Start-up: prerequisite checks with operator hints, the publication and the slot.

use tokio_postgres::Client;

use crate::config::{ProducerConfig, TableName, quote_ident};

/// A prerequisite that is not met, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}\n  fix: {hint}")]
pub struct SetupProblem {
    /// What is wrong.
    pub problem: String,
    /// What the operator should do.
    pub hint: String,
}

fn problem(problem: impl Into<String>, hint: impl Into<String>) -> SetupProblem {
    SetupProblem {
        problem: problem.into(),
        hint: hint.into(),
    }
}

fn sql_problem(what: &str, e: tokio_postgres::Error) -> SetupProblem {
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    problem(
        format!("{what} failed: {detail}"),
        "check that the configured user can connect and read the catalogs",
    )
}

/// Checks every prerequisite; returns all problems found (empty when ready).
pub async fn check(client: &Client, config: &ProducerConfig) -> Vec<SetupProblem> {
    let mut problems = Vec::new();
    match client.query_one("SHOW wal_level", &[]).await {
        Ok(row) => {
            let level: String = row.get(0);
            if level != "logical" {
                problems.push(problem(
                    format!("wal_level is {level}, logical replication needs logical"),
                    "set wal_level = logical in postgresql.conf and restart PostgreSQL",
                ));
            }
        }
        Err(e) => problems.push(sql_problem("SHOW wal_level", e)),
    }
    match client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
    {
        Ok(row) if !row.get::<_, bool>(0) => problems.push(problem(
            "the configured user has no REPLICATION privilege",
            "ALTER ROLE <user> REPLICATION (or connect as a user that has it)",
        )),
        Ok(_) => {}
        Err(e) => problems.push(sql_problem("reading the user's privileges", e)),
    }
    match client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_replication_slots')::int,
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&config.slot],
        )
        .await
    {
        Ok(row) => {
            let (used, max, exists): (i32, i32, bool) = (row.get(0), row.get(1), row.get(2));
            if !exists && used >= max {
                problems.push(problem(
                    format!(
                        "all {max} replication slots are in use; slot {} cannot be created",
                        config.slot
                    ),
                    "raise max_replication_slots (and restart) or drop an unused slot",
                ));
            }
        }
        Err(e) => problems.push(sql_problem("reading replication slots", e)),
    }
    for table in &config.tables {
        if let Err(p) = check_table(client, table).await {
            problems.push(p);
        }
    }
    problems
}

/// The configured tables that no longer exist but whose changes were published before (a
/// schema version of theirs is in `_walbrook.schemas`): dropped (or renamed) since. The
/// producer streams the others rather than refuse to start while WAL piles up; a configured
/// table that never existed is still refused (a typo). Empty before the first start.
pub async fn dropped_tables(
    client: &Client,
    config: &ProducerConfig,
) -> Result<Vec<TableName>, SetupProblem> {
    let schemas: Vec<&str> = config.tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = config.tables.iter().map(|t| t.table.as_str()).collect();
    let rows = client
        .query(
            "SELECT c.s, c.n FROM unnest($1::text[], $2::text[]) AS c(s, n)
              WHERE to_regclass('_walbrook.schemas') IS NOT NULL
                AND to_regclass(format('%I.%I', c.s, c.n)) IS NULL
                AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '_walbrook')",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| sql_problem("looking for dropped tables", e))?;
    let mut dropped = Vec::new();
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            table: row.get(1),
        };
        let published: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM _walbrook.schemas
                                 WHERE schema_name = $1 AND table_name = $2)",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(|e| sql_problem("reading the schema registry", e))?
            .get(0);
        if published {
            dropped.push(table);
        }
    }
    Ok(dropped)
}

/// Checks one table: it exists, is a table (not a view), and has a primary key or a
/// replica identity.
pub async fn check_table(client: &Client, table: &TableName) -> Result<(), SetupProblem> {
    let row = client
        .query_opt(
            "SELECT c.relkind::text, c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(|e| sql_problem(&format!("looking up table {table}"), e))?;
    let Some(row) = row else {
        return Err(problem(
            format!("table {table} does not exist"),
            "create it, or remove it from `tables` (names are case-sensitive; quote them)",
        ));
    };
    let (kind, identity, has_pk): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    if kind != "r" && kind != "p" {
        return Err(problem(
            format!("{table} is not a table (relkind {kind}) and cannot be published"),
            "publish the underlying table instead",
        ));
    }
    let identity_ok = match identity.as_str() {
        "f" | "i" => true,
        "d" => has_pk,
        _ => false,
    };
    if !identity_ok {
        return Err(problem(
            format!(
                "{table} has no primary key or replica identity: once published, every UPDATE \
                 and DELETE on it would fail on the source"
            ),
            format!("add a primary key, or ALTER TABLE {table} REPLICA IDENTITY FULL"),
        ));
    }
    Ok(())
}

/// Creates the publication if missing (with `publish_via_partition_root`), and makes
/// its table list equal to `tables` (the configured tables plus runtime additions, see
/// [`crate::tables`]).
pub async fn ensure_publication(
    client: &Client,
    config: &ProducerConfig,
    tables: &[TableName],
) -> Result<(), SetupProblem> {
    let list = tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let publication = quote_ident(&config.publication);
    let existing = client
        .query_opt(
            "SELECT pubviaroot, puballtables FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(|e| sql_problem("looking up the publication", e))?;
    let sql = match existing {
        None => format!(
            "CREATE PUBLICATION {publication} FOR TABLE {list} \
             WITH (publish_via_partition_root = true)"
        ),
        Some(row) if row.get::<_, bool>(1) => {
            return Err(problem(
                format!("publication {} is FOR ALL TABLES", config.publication),
                "use a publication that lists tables, or a new publication name",
            ));
        }
        Some(row) => {
            let mut sql = crate::tables::set_table_sql(&config.publication, tables);
            sql.push(';');
            if !row.get::<_, bool>(0) {
                sql.push_str(&format!(
                    "ALTER PUBLICATION {publication} SET (publish_via_partition_root = true);"
                ));
            }
            sql
        }
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| sql_problem("creating or updating the publication", e))
}

/// The replication slot as the producer finds it at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// It exists and can stream.
    Usable,
    /// It does not exist (never created, dropped by an operator, or not carried over by a
    /// failover).
    Missing,
    /// It exists but PostgreSQL removed WAL it needed (`wal_status = 'lost'`, past
    /// `max_slot_wal_keep_size`): it can no longer stream.
    Lost {
        /// Where it had confirmed up to.
        confirmed: String,
    },
}

/// Looks the slot up: usable, missing or lost. A slot of another plugin or database is a
/// problem (never reused).
pub async fn slot_state(
    client: &Client,
    config: &ProducerConfig,
) -> Result<SlotState, SetupProblem> {
    let existing = client
        .query_opt(
            "SELECT plugin::text, database::text, current_database()::text,
                    wal_status, coalesce(confirmed_flush_lsn::text, '?')
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(|e| sql_problem("looking up the slot", e))?;
    let Some(row) = existing else {
        return Ok(SlotState::Missing);
    };
    let (plugin, db, current): (Option<String>, Option<String>, String) =
        (row.get(0), row.get(1), row.get(2));
    if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(current.as_str()) {
        return Err(problem(
            format!(
                "slot {} exists but is not a pgoutput slot of database {current} \
                 (plugin {plugin:?}, database {db:?})",
                config.slot
            ),
            "choose another slot name, or drop that slot",
        ));
    }
    if row.get::<_, Option<String>>(3).as_deref() == Some("lost") {
        return Ok(SlotState::Lost {
            confirmed: row.get(4),
        });
    }
    Ok(SlotState::Usable)
}

/// Creates the slot; returns the position it starts at (its consistent point).
pub async fn create_slot(client: &Client, config: &ProducerConfig) -> Result<String, SetupProblem> {
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&config.slot],
        )
        .await
        .map_err(|e| sql_problem("creating the replication slot", e))?;
    Ok(row.get(0))
}

/// Drops the slot (an invalidated one, before creating it again).
pub async fn drop_slot(client: &Client, config: &ProducerConfig) -> Result<(), SetupProblem> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&config.slot])
        .await
        .map_err(|e| sql_problem("dropping the invalidated replication slot", e))?;
    Ok(())
}
