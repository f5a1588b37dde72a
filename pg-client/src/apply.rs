//! Applying a batch of events in one target transaction.

use std::collections::HashMap;

use sqlx::postgres::Postgres;
use sqlx::{AssertSqlSafe, Transaction};
use walbrook_client::runner::{Applied, Position, SinkError};
use walbrook_client::{ChangeEvent, Column, Op, PgValue, Row};
use walbrook_pgtype_avro::render_text;

use crate::ddl::{self, TargetTable};
use crate::sql::quote_ident;
use crate::{PgSink, TableName};

/// Classifies a database error: connection trouble, serialization failures, deadlocks and
/// server shutdowns are transient; data and constraint errors reject the event at `index`
/// (fatal when no event is to blame); privilege and configuration errors are fatal.
pub(crate) fn classify(error: &sqlx::Error, index: Option<usize>, context: &str) -> SinkError {
    let message = format!("{context}: {error}");
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let class = code.get(..2).unwrap_or("");
            match class {
                "08" | "40" | "53" | "55" | "57" | "58" | "XX" => SinkError::transient(message),
                _ if code == "42501" || class == "28" => SinkError::fatal(message),
                "22" | "23" | "42" | "2B" | "P0" | "44" => match index {
                    Some(i) => SinkError::rejected(i, format!("{message} (SQLSTATE {code})")),
                    None => SinkError::fatal(format!("{message} (SQLSTATE {code})")),
                },
                _ => SinkError::transient(format!("{message} (SQLSTATE {code})")),
            }
        }
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => SinkError::fatal(message),
        _ => SinkError::transient(message),
    }
}

/// A parameter: one value in PostgreSQL's text form, or a column of values (a `text[]`
/// array, for the `unnest` statements of groups).
enum Param {
    Text(Option<String>),
    Array(Vec<Option<String>>),
}

/// A statement and its parameters.
struct Statement {
    sql: String,
    params: Vec<Param>,
}

impl Statement {
    fn new() -> Statement {
        Statement {
            sql: String::new(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter cast to the column's type and returns its placeholder.
    fn param(&mut self, column: &Column, value: &PgValue) -> Result<String, String> {
        self.params.push(Param::Text(render(column, value)?));
        Ok(format!("${}::{}", self.params.len(), column.type_name))
    }

    async fn execute(
        self,
        tx: &mut Transaction<'static, Postgres>,
        index: usize,
        table: &TableName,
    ) -> Result<u64, SinkError> {
        self.execute_raw(tx)
            .await
            .map_err(|e| classify(&e, Some(index), &format!("applying to {table}")))
    }

    async fn execute_raw(
        self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> Result<u64, sqlx::Error> {
        let mut query = sqlx::query(AssertSqlSafe(self.sql));
        for p in self.params {
            query = match p {
                Param::Text(v) => query.bind(v),
                Param::Array(v) => query.bind(v),
            };
        }
        query.execute(&mut **tx).await.map(|r| r.rows_affected())
    }
}

/// A value in PostgreSQL's text form (`None`: NULL).
fn render(column: &Column, value: &PgValue) -> Result<Option<String>, String> {
    render_text(&column.pg_type, value).map_err(|e| format!("column {}: {e}", column.name))
}

/// `SELECT u.c0::t0, u.c1::t1 … FROM unnest($1::text[], $2::text[] …) AS u(c0, c1 …)` over
/// `columns`, one `text[]` parameter per column (added to `s`): the text of a statement that
/// depends on the table's shape only, not on how many rows it carries, so it is prepared
/// once per shape and planned cheaply (a `VALUES` list of n rows was a new statement of
/// n × columns parameters for every n, parsed and planned each time).
fn unnest_select(
    s: &mut Statement,
    columns: &[&Column],
    arrays: Vec<Vec<Option<String>>>,
) -> String {
    let mut casts = Vec::with_capacity(columns.len());
    let mut params = Vec::with_capacity(columns.len());
    let mut names = Vec::with_capacity(columns.len());
    for ((j, c), values) in columns.iter().enumerate().zip(arrays) {
        s.params.push(Param::Array(values));
        casts.push(format!("u.c{j}::{}", c.type_name));
        params.push(format!("${}::text[]", s.params.len()));
        names.push(format!("c{j}"));
    }
    format!(
        "SELECT {} FROM unnest({}) AS u({})",
        casts.join(", "),
        params.join(", "),
        names.join(", ")
    )
}

fn set_values<'a>(
    row: &'a Row,
    target: &[String],
    keys: bool,
) -> impl Iterator<Item = (&'a Column, &'a PgValue)> {
    row.iter().filter(move |(c, v)| {
        target.contains(&c.name) && !matches!(v, PgValue::Unchanged) && (keys || !c.is_key)
    })
}

fn has_key(row: &Row) -> bool {
    row.columns().iter().any(|c| c.is_key)
}

/// `"k1" = $1::t AND …` over the key columns of `row`.
fn key_predicate(s: &mut Statement, row: &Row) -> Result<String, String> {
    let mut parts = Vec::new();
    for (c, v) in row.iter().filter(|(c, _)| c.is_key) {
        let p = s.param(c, v)?;
        parts.push(format!("{} = {p}", quote_ident(&c.name)));
    }
    Ok(parts.join(" AND "))
}

/// Matches one row by every column of a full old row (REPLICA IDENTITY FULL without primary
/// key), comparing text forms so that types without equality (json, point…) match too.
fn full_row_predicate(s: &mut Statement, row: &Row, target: &[String]) -> Result<String, String> {
    let mut parts = Vec::new();
    for (c, v) in row.iter() {
        if matches!(v, PgValue::Unchanged) || !target.contains(&c.name) {
            continue;
        }
        let p = s.param(c, v)?;
        parts.push(format!(
            "{}::text IS NOT DISTINCT FROM ({p})::text",
            quote_ident(&c.name)
        ));
    }
    Ok(if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" AND ")
    })
}

/// `INSERT … ON CONFLICT (key) DO UPDATE` of `row` (plain INSERT without a key).
fn upsert(table: &TableName, row: &Row, target: &[String]) -> Result<Statement, String> {
    upsert_rows(table, &[row], target, true)
}

/// One `INSERT … SELECT … FROM unnest(…) ON CONFLICT (key) DO UPDATE` of several rows with
/// the same columns and distinct keys (see [`unnest_select`]); a plain `INSERT` without
/// `on_conflict` (or without a key).
fn upsert_rows(
    table: &TableName,
    rows: &[&Row],
    target: &[String],
    on_conflict: bool,
) -> Result<Statement, String> {
    let row = rows[0];
    let mut s = Statement::new();
    let columns: Vec<&Column> = set_values(row, target, true).map(|(c, _)| c).collect();
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let mut arrays: Vec<Vec<Option<String>>> = columns
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for r in rows {
        // Every row of a group has the same columns (its signature), in the same order.
        for ((c, v), values) in set_values(r, target, true).zip(arrays.iter_mut()) {
            values.push(render(c, v)?);
        }
    }
    let select = unnest_select(&mut s, &columns, arrays);
    s.sql = format!(
        "INSERT INTO {} ({}) {select}",
        table.quoted(),
        names.join(", "),
    );
    if on_conflict && has_key(row) {
        let keys: Vec<String> = row
            .columns()
            .iter()
            .filter(|c| c.is_key)
            .map(|c| quote_ident(&c.name))
            .collect();
        let sets: Vec<String> = set_values(row, target, false)
            .map(|(c, _)| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
            .collect();
        s.sql
            .push_str(&format!(" ON CONFLICT ({}) DO ", keys.join(", ")));
        if sets.is_empty() {
            s.sql.push_str("NOTHING");
        } else {
            s.sql.push_str(&format!("UPDATE SET {}", sets.join(", ")));
        }
    }
    Ok(s)
}

/// `UPDATE t SET <after> WHERE <old row>`: `identity` is the row whose key (or, without a
/// key, whole value) finds the target row.
fn update(
    table: &TableName,
    after: &Row,
    identity: &Row,
    target: &[String],
    set_keys: bool,
) -> Result<Option<Statement>, String> {
    let mut s = Statement::new();
    let mut sets = Vec::new();
    for (c, v) in set_values(after, target, set_keys) {
        let p = s.param(c, v)?;
        sets.push(format!("{} = {p}", quote_ident(&c.name)));
    }
    if sets.is_empty() {
        return Ok(None);
    }
    let t = table.quoted();
    s.sql = if has_key(identity) {
        let predicate = key_predicate(&mut s, identity)?;
        format!("UPDATE {t} SET {} WHERE {predicate}", sets.join(", "))
    } else {
        let predicate = full_row_predicate(&mut s, identity, target)?;
        format!(
            "UPDATE {t} SET {} WHERE ctid = (SELECT ctid FROM {t} WHERE {predicate} LIMIT 1)",
            sets.join(", ")
        )
    };
    Ok(Some(s))
}

fn delete(table: &TableName, before: &Row, target: &[String]) -> Result<Statement, String> {
    let mut s = Statement::new();
    let t = table.quoted();
    s.sql = if has_key(before) {
        let predicate = key_predicate(&mut s, before)?;
        format!("DELETE FROM {t} WHERE {predicate}")
    } else {
        let predicate = full_row_predicate(&mut s, before, target)?;
        format!("DELETE FROM {t} WHERE ctid = (SELECT ctid FROM {t} WHERE {predicate} LIMIT 1)")
    };
    Ok(s)
}

fn has_unchanged(row: &Row) -> bool {
    row.values().iter().any(|v| matches!(v, PgValue::Unchanged))
}

/// Marks a refused multi-row statement: the batch is applied again one statement per event,
/// to find the event to blame.
const REGROUP: usize = usize::MAX;

/// Marks a plain multi-row `INSERT` that met a row the target already has (a unique
/// violation): the batch is applied again with upserts.
const UPSERT_AGAIN: usize = usize::MAX - 1;

/// What a multi-row statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    /// `INSERT … ON CONFLICT (key) DO UPDATE`: inserts, snapshot rows, and updates that keep
    /// the key and carry every value (an update of a missing row inserts it, as the
    /// one-statement form does).
    Upsert,
    /// A plain `INSERT`, without `ON CONFLICT`: runs of inserts, in the first attempt at a
    /// batch. PostgreSQL's speculative insertion (`ON CONFLICT`) about doubled the server's
    /// cost of an insert run; a target already holding a row (a snapshot bootstrap's overlap,
    /// a pre-filled table) makes the statement fail with a unique violation, and the batch is
    /// applied again with upserts.
    Insert,
    /// `DELETE … WHERE (key) IN (SELECT … FROM unnest(…))`.
    Delete,
}

/// Consecutive events of one kind on one table with the same columns, written as one
/// multi-row statement. An upsert group holds distinct keys (a repeated key starts the
/// next group, so the later change lands after the earlier one); a delete group may repeat
/// a key (deleting twice deletes once).
struct Group<'a> {
    kind: GroupKind,
    table: TableName,
    target: Vec<String>,
    signature: Vec<String>,
    keys: std::collections::HashSet<String>,
    rows: Vec<(usize, &'a Row)>,
}

/// The most rows of one multi-row statement (its parameters are one array per column, so
/// the row count does not meet PostgreSQL's limit of 65,535 parameters).
const GROUP_ROWS: usize = 5000;

/// The group kind and row of an event that can join a multi-row statement.
fn groupable(event: &ChangeEvent, plain_inserts: bool) -> Option<(GroupKind, &Row)> {
    match event.op() {
        Op::Insert if plain_inserts => event
            .after()
            .filter(|row| has_key(row) && !has_unchanged(row))
            .map(|row| (GroupKind::Insert, row)),
        Op::Insert | Op::Read | Op::Update => event
            .after()
            .filter(|row| has_key(row) && !has_unchanged(row))
            .map(|row| (GroupKind::Upsert, row)),
        Op::Delete => event
            .before()
            .filter(|row| has_key(row))
            .map(|row| (GroupKind::Delete, row)),
        Op::UpdateKey | Op::Truncate => None,
    }
}

fn key_text(row: &Row) -> String {
    row.iter()
        .filter(|(c, _)| c.is_key)
        .map(|(_, v)| walbrook_client::value_to_json(v).to_string())
        .collect::<Vec<_>>()
        .join("\u{0}")
}

/// One `DELETE FROM t WHERE (k1, k2) IN (SELECT … FROM unnest(…))` of several rows' keys
/// (see [`unnest_select`]).
fn delete_rows(table: &TableName, rows: &[&Row]) -> Result<Statement, String> {
    let mut s = Statement::new();
    let columns: Vec<&Column> = rows[0].columns().iter().filter(|c| c.is_key).collect();
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let mut arrays: Vec<Vec<Option<String>>> = columns
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for r in rows {
        for ((c, v), values) in r.iter().filter(|(c, _)| c.is_key).zip(arrays.iter_mut()) {
            values.push(render(c, v)?);
        }
    }
    let select = unnest_select(&mut s, &columns, arrays);
    s.sql = format!(
        "DELETE FROM {} WHERE ({}) IN ({select})",
        table.quoted(),
        names.join(", "),
    );
    Ok(s)
}

/// Where an apply's time went (logged at debug level, for profiling).
#[derive(Debug, Default)]
struct Timing {
    /// Building multi-row statements (rendering values).
    build: std::time::Duration,
    /// Waiting for multi-row statements.
    execute: std::time::Duration,
    /// Multi-row statements run.
    statements: u32,
}

async fn flush(
    group: &mut Option<Group<'_>>,
    tx: &mut Transaction<'static, Postgres>,
    timing: &mut Timing,
) -> Result<(), SinkError> {
    let Some(g) = group.take() else { return Ok(()) };
    let started = std::time::Instant::now();
    let rows: Vec<&Row> = g.rows.iter().map(|(_, r)| *r).collect();
    let first = g.rows[0].0;
    let statement = match g.kind {
        GroupKind::Upsert => upsert_rows(&g.table, &rows, &g.target, true),
        GroupKind::Insert => upsert_rows(&g.table, &rows, &g.target, false),
        GroupKind::Delete => delete_rows(&g.table, &rows),
    }
    .map_err(|m| SinkError::rejected(first, format!("{}: {m}", g.table)))?;
    let built = std::time::Instant::now();
    timing.build += built - started;
    timing.statements += 1;
    let result = statement.execute_raw(tx).await;
    timing.execute += built.elapsed();
    let result = match result {
        Err(e)
            if g.kind == GroupKind::Insert
                && e.as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "23505") =>
        {
            return Err(SinkError::rejected(
                UPSERT_AGAIN,
                format!("{}: a row is there already, upserting: {e}", g.table),
            ));
        }
        other => other.map_err(|e| classify(&e, Some(first), &format!("applying to {}", g.table))),
    };
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if e.kind() == walbrook_client::runner::SinkErrorKind::Rejected && rows.len() > 1 =>
        {
            Err(SinkError::rejected(REGROUP, e.message()))
        }
        Err(e) => Err(e),
    }
}

pub(crate) async fn apply(
    sink: &PgSink,
    consumer: &str,
    events: &[ChangeEvent],
) -> Result<Applied, SinkError> {
    let mut result = apply_with(sink, consumer, events, true, true).await;
    if result.as_ref().err().and_then(SinkError::index) == Some(UPSERT_AGAIN) {
        result = apply_with(sink, consumer, events, true, false).await;
    }
    if result.as_ref().err().and_then(SinkError::index) == Some(REGROUP) {
        result = apply_with(sink, consumer, events, false, false).await;
    }
    result
}

async fn apply_with(
    sink: &PgSink,
    consumer: &str,
    events: &[ChangeEvent],
    grouped: bool,
    plain_inserts: bool,
) -> Result<Applied, SinkError> {
    let options = &sink.options;
    let started = std::time::Instant::now();
    let mut timing = Timing::default();
    let mut group: Option<Group<'_>> = None;
    // One apply at a time (the runner never overlaps them for this sink); the lock also
    // guards the table cache.
    let mut known = sink.known.lock().await;
    let mut changed: HashMap<TableName, TargetTable> = HashMap::new();
    let mut tx = sink
        .pool
        .begin()
        .await
        .map_err(|e| classify(&e, None, "beginning a transaction"))?;
    let mut last: Option<(Position, String)> = None;
    for (i, event) in events.iter().enumerate() {
        let src = event.source();
        let table = options.target(&src.schema, &src.table);
        let reject = |message: String| SinkError::rejected(i, format!("{table}: {message}"));
        let mut entry = changed.get(&table).or_else(|| known.get(&table)).cloned();
        let fingerprint = event.fingerprint();
        let candidate = if grouped {
            groupable(event, plain_inserts)
        } else {
            None
        };
        // A new schema to reconcile (DDL) writes the pending group first; so does anything
        // that cannot join it (checked below).
        let reconciles = event.after().is_some()
            && !entry
                .as_ref()
                .is_some_and(|e| e.seen.contains(&fingerprint));
        let joins = group
            .as_ref()
            .is_some_and(|g| candidate.is_some() && g.table == table && !reconciles);
        if !joins {
            flush(&mut group, &mut tx, &mut timing).await?;
        }
        if let Some(after) = event.after()
            && !entry
                .as_ref()
                .is_some_and(|e| e.seen.contains(&fingerprint))
        {
            let columns = ddl::reconcile(
                &mut tx,
                &table,
                after.columns(),
                options.create_tables,
                options.follow_schema,
            )
            .await?
            .unwrap_or_default();
            let mut e = entry.unwrap_or_default();
            e.columns = columns;
            e.seen.push(fingerprint);
            changed.insert(table.clone(), e.clone());
            entry = Some(e);
        }
        let columns = match entry {
            Some(e) => e.columns,
            None => match ddl::target_columns(&mut tx, &table).await? {
                Some(c) => {
                    changed.insert(
                        table.clone(),
                        TargetTable {
                            columns: c.clone(),
                            seen: Vec::new(),
                        },
                    );
                    c
                }
                // A delete or truncate of a table the target does not have: nothing to do.
                None => Vec::new(),
            },
        };
        if op_is_change(event.op()) {
            last = Some((Position::of(event), src.database.clone()));
        }
        if columns.is_empty() {
            continue;
        }
        if let Some((kind, row)) = candidate {
            let signature: Vec<String> = match kind {
                GroupKind::Upsert | GroupKind::Insert => set_values(row, &columns, true)
                    .map(|(c, _)| c.name.clone())
                    .collect(),
                GroupKind::Delete => row
                    .columns()
                    .iter()
                    .filter(|c| c.is_key)
                    .map(|c| c.name.clone())
                    .collect(),
            };
            let key = key_text(row);
            let fits = group.as_ref().is_some_and(|g| {
                g.kind == kind
                    && g.table == table
                    && g.signature == signature
                    && (kind == GroupKind::Delete || !g.keys.contains(&key))
                    && g.rows.len() < GROUP_ROWS
            });
            if !fits {
                flush(&mut group, &mut tx, &mut timing).await?;
            }
            let g = group.get_or_insert_with(|| Group {
                kind,
                table: table.clone(),
                target: columns.clone(),
                signature,
                keys: Default::default(),
                rows: Vec::new(),
            });
            g.keys.insert(key);
            g.rows.push((i, row));
            continue;
        }
        match event.op() {
            Op::Insert | Op::Read => {
                let after = event
                    .after()
                    .ok_or_else(|| reject("insert without a row".into()))?;
                upsert(&table, after, &columns)
                    .map_err(reject)?
                    .execute(&mut tx, i, &table)
                    .await?;
            }
            Op::Update | Op::UpdateKey => {
                let after = event
                    .after()
                    .ok_or_else(|| reject("update without a row".into()))?;
                let key_change = event.op() == Op::UpdateKey;
                // The old key: `before` for a key change (and under FULL), else the new row's
                // key, which did not change.
                let identity = match event.before() {
                    Some(b) if key_change || !has_key(after) => b,
                    _ => after,
                };
                let affected =
                    match update(&table, after, identity, &columns, key_change).map_err(&reject)? {
                        Some(s) => s.execute(&mut tx, i, &table).await?,
                        None => 1,
                    };
                if affected == 0 {
                    // The target lacks the row (it was created after the row was): insert
                    // it, unless a value is an unchanged TOAST value the event does not carry.
                    if has_unchanged(after) {
                        return Err(reject(
                            "the row to update is missing and the event does not carry its \
                             unchanged TOAST values"
                                .into(),
                        ));
                    }
                    upsert(&table, after, &columns)
                        .map_err(&reject)?
                        .execute(&mut tx, i, &table)
                        .await?;
                }
            }
            Op::Delete => {
                let before = event
                    .before()
                    .ok_or_else(|| reject("delete without the old key".into()))?;
                delete(&table, before, &columns)
                    .map_err(reject)?
                    .execute(&mut tx, i, &table)
                    .await?;
            }
            Op::Truncate => {
                let sql = format!("TRUNCATE {}", table.quoted());
                sqlx::query(AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| classify(&e, Some(i), &format!("truncating {table}")))?;
            }
        }
    }
    flush(&mut group, &mut tx, &mut timing).await?;
    if let Some((position, database)) = last {
        ddl::write_checkpoint(
            &mut tx,
            &options.checkpoint_table,
            consumer,
            &database,
            position,
        )
        .await?;
    }
    let committing = std::time::Instant::now();
    tx.commit()
        .await
        .map_err(|e| classify(&e, None, "committing"))?;
    known.extend(changed);
    tracing::debug!(
        events = events.len(),
        grouped,
        plain_inserts,
        statements = timing.statements,
        build_us = timing.build.as_micros() as u64,
        execute_us = timing.execute.as_micros() as u64,
        commit_us = committing.elapsed().as_micros() as u64,
        total_us = started.elapsed().as_micros() as u64,
        "applied"
    );
    Ok(Applied::default())
}

/// Whether an op is a change of the stream (positions of snapshot rows are not checkpoints).
fn op_is_change(op: Op) -> bool {
    op != Op::Read
}
