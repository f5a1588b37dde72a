//! Applying a batch of events in one target transaction.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{ToSql, Type};
use walbrook_client::runner::{Applied, Position, SinkError};
use walbrook_client::{ChangeEvent, Column, Op, PgValue, Row};
use walbrook_pgtype_avro::render_text;

use crate::connection::{Tx, classify};
use crate::ddl::{self, TargetTable};
use crate::sql::quote_ident;
use crate::{PgSink, TableName};

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
        tx: &mut Tx<'_>,
        index: usize,
        table: &TableName,
    ) -> Result<u64, SinkError> {
        self.execute_raw(tx)
            .await
            .map_err(|e| classify(&e, Some(index), &format!("applying to {table}")))
    }

    /// Runs the statement: every parameter is text (or `text[]`), cast in the SQL to the
    /// column's type, as PostgreSQL's own text form is lossless for every type.
    async fn execute_raw(self, tx: &mut Tx<'_>) -> Result<u64, tokio_postgres::Error> {
        let mut types = Vec::with_capacity(self.params.len());
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(self.params.len());
        for p in &self.params {
            match p {
                Param::Text(v) => {
                    types.push(Type::TEXT);
                    params.push(v);
                }
                Param::Array(v) => {
                    types.push(Type::TEXT_ARRAY);
                    params.push(v);
                }
            }
        }
        tx.execute(&self.sql, &types, &params).await
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

/// What an event does to its key, in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Its new row is the key's row (inserts, snapshot rows, and updates that keep the key
    /// and carry every value).
    Row,
    /// The key's row is gone.
    Delete,
}

/// The state a segment leaves a key in: the last change to it, and how the key's first
/// change in the segment found it.
#[derive(Debug, Clone, Copy)]
struct Final<'a> {
    /// The event of the last change (the one blamed if writing it fails).
    index: usize,
    change: Change,
    /// The new row ([`Change::Row`]) or the old key ([`Change::Delete`]).
    row: &'a Row,
    /// The key's first change in the segment is an insert: the source did not have the row
    /// before it, so a plain `INSERT` may write it (see [`Segment::flush`]).
    inserted: bool,
}

/// A run of consecutive events on one table, each of which sets a key's row or deletes it,
/// reduced to the state each key is left in and written by at most three multi-row
/// statements: a `DELETE` of the keys left deleted, a plain `INSERT` of the rows of keys
/// the segment inserted, and an `INSERT … ON CONFLICT DO UPDATE` of the others.
///
/// Collapsing is exact: every event of a segment carries the key's whole row (an update
/// with an unchanged TOAST value, a key change, a truncate, a table without a key, and a
/// new table version end the segment), so the key's last change alone decides its state in
/// the target, and changes to different keys of one table commute. The statements run in
/// that order (deletes first free unique values that rows may take); a statement the
/// target refuses (a constraint the source does not have, say) makes the batch be applied
/// again one statement per event, in stream order, which blames the right event.
struct Segment<'a> {
    table: TableName,
    /// The target table's columns (and types).
    target: TargetTable,
    /// The columns the rows set (every row of a segment has the same).
    signature: Option<Vec<String>>,
    /// The column list (shared by the rows of one table version) whose key columns and
    /// whose set columns were checked already: rows with the same list pass without
    /// comparing names again.
    key_layout: Option<&'a [Column]>,
    signature_layout: Option<&'a [Column]>,
    /// Each key's final state, keyed by the key's text, in the order keys first appeared.
    keys: HashMap<String, usize>,
    finals: Vec<Final<'a>>,
    /// Events the segment holds.
    events: usize,
}

/// The most rows of one multi-row statement (its parameters are one array per column, so
/// the row count does not meet PostgreSQL's limit of 65,535 parameters).
const GROUP_ROWS: usize = 5000;

/// The change and row of an event that can join a segment.
fn collapsible(event: &ChangeEvent) -> Option<(Change, &Row)> {
    match event.op() {
        Op::Insert | Op::Read | Op::Update => event
            .after()
            .filter(|row| has_key(row) && !has_unchanged(row))
            .map(|row| (Change::Row, row)),
        Op::Delete => event
            .before()
            .filter(|row| has_key(row))
            .map(|row| (Change::Delete, row)),
        Op::UpdateKey | Op::Truncate => None,
    }
}

/// A key's identity in a segment: its values' text forms (lossless, so distinct values
/// have distinct texts), each marked by its kind and ended by a NUL (which no text value
/// holds). A value without a text form (it fails later, blaming its event) is marked apart.
fn key_text(row: &Row) -> String {
    let mut key = String::new();
    for (c, v) in row.iter().filter(|(c, _)| c.is_key) {
        match render(c, v) {
            Ok(Some(text)) => {
                key.push('t');
                key.push_str(&text);
            }
            Ok(None) => key.push('n'),
            Err(_) => {
                key.push('j');
                key.push_str(&walbrook_client::value_to_json(v).to_string());
            }
        }
        key.push('\0');
    }
    key
}

fn key_columns(row: &Row) -> impl Iterator<Item = &Column> {
    row.columns().iter().filter(|c| c.is_key)
}

impl<'a> Segment<'a> {
    fn new(table: TableName, target: TargetTable) -> Segment<'a> {
        Segment {
            table,
            target,
            signature: None,
            key_layout: None,
            signature_layout: None,
            keys: HashMap::new(),
            finals: Vec::new(),
            events: 0,
        }
    }

    /// Adds the event at `index` if it fits: same key columns, and for a row the same
    /// columns as the segment's other rows. Returns false (and adds nothing) otherwise.
    fn add(&mut self, index: usize, change: Change, row: &'a Row, op: Op) -> bool {
        let layout = row.columns();
        let same = |checked: Option<&[Column]>| checked.is_some_and(|c| std::ptr::eq(c, layout));
        if !same(self.key_layout) {
            if let Some(first) = self.finals.first()
                && !key_columns(first.row)
                    .map(|c| &c.name)
                    .eq(key_columns(row).map(|c| &c.name))
            {
                return false;
            }
            self.key_layout = Some(layout);
        }
        // A row of a segment carries every value (no unchanged TOAST value), so the columns
        // it sets depend on its column list alone.
        if change == Change::Row && !same(self.signature_layout) {
            let names = || set_values(row, &self.target.columns, true).map(|(c, _)| &c.name);
            match &self.signature {
                Some(s) if !names().eq(s.iter()) => return false,
                Some(_) => {}
                None => self.signature = Some(names().cloned().collect()),
            }
            self.signature_layout = Some(layout);
        }
        self.events += 1;
        let key = key_text(row);
        match self.keys.get(&key) {
            Some(&at) => {
                let f = &mut self.finals[at];
                f.index = index;
                f.change = change;
                f.row = row;
            }
            None => {
                self.keys.insert(key, self.finals.len());
                self.finals.push(Final {
                    index,
                    change,
                    row,
                    inserted: op == Op::Insert,
                });
            }
        }
        true
    }

    /// Writes the segment: deletes, plain inserts (when `plain_inserts`), upserts.
    async fn flush(
        self,
        tx: &mut Tx<'_>,
        plain_inserts: bool,
        timing: &mut Timing,
    ) -> Result<(), SinkError> {
        let mut deletes = Vec::new();
        let mut inserts = Vec::new();
        let mut upserts = Vec::new();
        for f in &self.finals {
            match f.change {
                Change::Delete => deletes.push(*f),
                Change::Row if f.inserted && plain_inserts => inserts.push(*f),
                Change::Row => upserts.push(*f),
            }
        }
        timing.events += self.events;
        timing.written += self.finals.len();
        for (kind, finals) in [
            (Kind::Delete, deletes),
            (Kind::Insert, inserts),
            (Kind::Upsert, upserts),
        ] {
            for chunk in finals.chunks(GROUP_ROWS) {
                write(&self.table, &self.target, kind, chunk, tx, timing).await?;
            }
        }
        Ok(())
    }
}

/// What a multi-row statement does (in the order a segment runs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `INSERT … ON CONFLICT (key) DO UPDATE` (an update of a row the target lacks inserts
    /// it, as the one-statement form does).
    Upsert,
    /// A plain `INSERT`, without `ON CONFLICT`, of rows the segment inserted, in the first
    /// attempt at a batch. PostgreSQL's speculative insertion (`ON CONFLICT`) about doubled
    /// the server's cost of an insert run; a target already holding a row (a snapshot
    /// bootstrap's overlap, a pre-filled table) makes the statement fail with a unique
    /// violation, and the batch is applied again with upserts.
    Insert,
    /// `DELETE … WHERE (key) IN (SELECT … FROM unnest(…))`.
    Delete,
}

/// How a multi-row write goes to the target.
enum Write {
    /// `COPY … FROM STDIN` and its data (see [`copy_rows`]).
    Copy(String, bytes::Bytes),
    /// A statement with its parameters.
    Statement(Statement),
}

async fn write(
    table: &TableName,
    target: &TargetTable,
    kind: Kind,
    finals: &[Final<'_>],
    tx: &mut Tx<'_>,
    timing: &mut Timing,
) -> Result<(), SinkError> {
    if finals.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let rows: Vec<&Row> = finals.iter().map(|f| f.row).collect();
    let write = match kind {
        Kind::Insert => copy_rows(table, &rows, target).and_then(|copy| match copy {
            Some((sql, data)) => Ok(Write::Copy(sql, data)),
            None => upsert_rows(table, &rows, &target.columns, false).map(Write::Statement),
        }),
        Kind::Upsert => upsert_rows(table, &rows, &target.columns, true).map(Write::Statement),
        Kind::Delete => delete_rows(table, &rows).map(Write::Statement),
    }
    // A value that cannot be written: find the event to blame one statement at a time.
    .map_err(|m| SinkError::rejected(REGROUP, format!("{table}: {m}")))?;
    let built = std::time::Instant::now();
    timing.build += built - started;
    timing.statements += 1;
    let result = match write {
        Write::Copy(sql, data) => tx.copy_in(&sql, data).await,
        Write::Statement(statement) => statement.execute_raw(tx).await,
    };
    timing.execute += built.elapsed();
    timing.kinds[kind as usize] += built.elapsed();
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if kind == Kind::Insert
                && e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            Err(SinkError::rejected(
                UPSERT_AGAIN,
                format!("{table}: a row is there already, upserting: {e}"),
            ))
        }
        Err(e) => match classify(&e, Some(finals[0].index), &format!("applying to {table}")) {
            e if e.kind() == walbrook_client::runner::SinkErrorKind::Rejected => {
                Err(SinkError::rejected(REGROUP, e.message()))
            }
            e => Err(e),
        },
    }
}

/// `COPY t (c1, c2 …) FROM STDIN` of `rows` (with the same columns) and the rows' data, or
/// `None` when a column's type in the target is not its source type: COPY reads a value
/// with the target column type's input function, the statement form casts it to the source
/// type first (a `timestamptz` written to a `timestamp` column keeps its instant only with
/// the cast). The tables the sink creates have the source's types.
///
/// The data is in COPY's binary format when every column's type has one
/// (`walbrook_pgtype_avro::pg_binary::reads`: the server then skips the types' input
/// functions, e.g. parsing `timestamptz` and `numeric` text), else in its text format.
///
/// COPY writes rows in batches (PostgreSQL's multi-insert), without a statement's
/// per-row projection and `unnest`: about 40% less server time than the `INSERT … SELECT`.
fn copy_rows(
    table: &TableName,
    rows: &[&Row],
    target: &TargetTable,
) -> Result<Option<(String, bytes::Bytes)>, String> {
    let columns: Vec<&Column> = set_values(rows[0], &target.columns, true)
        .map(|(c, _)| c)
        .collect();
    if !columns
        .iter()
        .all(|c| target.has_type(&c.name, &c.type_name))
    {
        return Ok(None);
    }
    let binary = columns
        .iter()
        .all(|c| walbrook_pgtype_avro::pg_binary::reads(&c.pg_type));
    let data = if binary {
        copy_binary_data(rows, target, columns.len())?
    } else {
        copy_text_data(rows, target, columns.len())?
    };
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let format = if binary { " (FORMAT binary)" } else { "" };
    let sql = format!(
        "COPY {} ({}) FROM STDIN{format}",
        table.quoted(),
        names.join(", ")
    );
    Ok(Some((sql, data)))
}

/// The rows in COPY's text format (every row of a group has the same columns, its
/// signature, in the same order).
fn copy_text_data(
    rows: &[&Row],
    target: &TargetTable,
    columns: usize,
) -> Result<bytes::Bytes, String> {
    let mut data = BytesMut::with_capacity(rows.len() * 16 * columns);
    for r in rows {
        for (j, (c, v)) in set_values(r, &target.columns, true).enumerate() {
            if j > 0 {
                data.put_u8(b'\t');
            }
            match render(c, v)? {
                None => data.put_slice(b"\\N"),
                Some(text) => copy_escape(&mut data, &text),
            }
        }
        data.put_u8(b'\n');
    }
    Ok(data.freeze())
}

/// The rows in COPY's binary format: the header, per row the field count and each field's
/// length (−1 for NULL) and binary form, then the trailer.
fn copy_binary_data(
    rows: &[&Row],
    target: &TargetTable,
    columns: usize,
) -> Result<bytes::Bytes, String> {
    let count = i16::try_from(columns).map_err(|_| "too many columns for COPY".to_string())?;
    let mut data = Vec::with_capacity(19 + rows.len() * (2 + 12 * columns) + 2);
    data.extend_from_slice(walbrook_pgtype_avro::pg_binary::COPY_SIGNATURE);
    data.extend_from_slice(&0u32.to_be_bytes()); // flags
    data.extend_from_slice(&0u32.to_be_bytes()); // header extension length
    for r in rows {
        data.extend_from_slice(&count.to_be_bytes());
        for (c, v) in set_values(r, &target.columns, true) {
            if matches!(v, PgValue::Null) {
                data.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            let at = data.len();
            data.extend_from_slice(&[0; 4]);
            walbrook_pgtype_avro::pg_binary::send(&c.pg_type, v, &mut data)
                .map_err(|e| format!("column {}: {e}", c.name))?;
            let len = i32::try_from(data.len() - at - 4)
                .map_err(|_| format!("column {}: a value over 2 GiB", c.name))?;
            data[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    data.extend_from_slice(&walbrook_pgtype_avro::pg_binary::COPY_TRAILER);
    Ok(bytes::Bytes::from(data))
}

/// Appends `text` escaped for COPY's text format: backslash, newline, carriage return and
/// tab are written as backslash sequences (so a value can never end the data with `\.`).
fn copy_escape(out: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.put_slice(&bytes[start..i]);
        out.put_slice(escaped);
        start = i + 1;
    }
    out.put_slice(&bytes[start..]);
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
    /// Events collapsed into segments.
    events: usize,
    /// Rows and keys the segments wrote.
    written: usize,
    /// Waiting for each kind of multi-row statement: deletes, plain inserts, upserts.
    kinds: [std::time::Duration; 3],
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
    let mut segment: Option<Segment<'_>> = None;
    // One apply at a time (the runner never overlaps them for this sink); the lock also
    // guards the table cache.
    let mut state = sink.state.lock().await;
    let state = &mut *state;
    let known = &mut state.known;
    // `BEGIN` goes with the first statement (see `Connection::begin`).
    let mut tx = sink.connection(&mut state.connection).await?.begin();
    let mut changed: HashMap<TableName, TargetTable> = HashMap::new();
    // The last change of the stream (snapshot rows are not positions).
    let mut last: Option<usize> = None;
    // The target of each source table met in the batch (mapping it once, not per event).
    let mut targets: Vec<(&str, &str, TableName)> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let src = event.source();
        let at = match targets
            .iter()
            .position(|(s, t, _)| *s == src.schema && *t == src.table)
        {
            Some(at) => at,
            None => {
                let target = options.target(&src.schema, &src.table);
                targets.push((&src.schema, &src.table, target));
                targets.len() - 1
            }
        };
        let table = &targets[at].2;
        let reject = |message: String| SinkError::rejected(i, format!("{table}: {message}"));
        let fingerprint = event.fingerprint();
        let candidate = if grouped { collapsible(event) } else { None };
        // A new schema to reconcile (DDL) writes the pending segment first; so does anything
        // that cannot join it (checked below).
        let cached = cached_target(&changed, known, table);
        let is_described = cached.is_some();
        let reconciles =
            event.after().is_some() && !cached.is_some_and(|e| e.seen.contains(&fingerprint));
        let joins = segment
            .as_ref()
            .is_some_and(|g| candidate.is_some() && g.table == *table && !reconciles);
        if !joins && let Some(g) = segment.take() {
            g.flush(&mut tx, plain_inserts, &mut timing).await?;
        }
        // What is known of the table after this event's DDL (looked up again only if it
        // changed).
        let described = if reconciles && let Some(after) = event.after() {
            let columns = ddl::reconcile(
                &mut tx,
                table,
                after.columns(),
                options.create_tables,
                options.follow_schema,
            )
            .await?
            .unwrap_or_default();
            let mut e = cached_target(&changed, known, table)
                .cloned()
                .unwrap_or_default();
            e.set_columns(columns);
            e.seen.push(fingerprint);
            changed.insert(table.clone(), e);
            cached_target(&changed, known, table)
        } else if !is_described && let Some(columns) = ddl::target_columns(&mut tx, table).await? {
            changed.insert(table.clone(), TargetTable::with_columns(columns));
            cached_target(&changed, known, table)
        } else {
            cached
        };
        // Empty for a delete or truncate of a table the target does not have: nothing to do.
        let columns: &[String] = described.map_or(&[], |e| &e.columns);
        if op_is_change(event.op()) {
            last = Some(i);
        }
        if columns.is_empty() {
            continue;
        }
        if let Some((change, row)) = candidate {
            let new_segment =
                || Segment::new(table.clone(), described.cloned().unwrap_or_default());
            let g = segment.get_or_insert_with(new_segment);
            if !g.add(i, change, row, event.op()) {
                if let Some(g) = segment.take() {
                    g.flush(&mut tx, plain_inserts, &mut timing).await?;
                }
                let mut g = new_segment();
                let added = g.add(i, change, row, event.op());
                debug_assert!(added, "an empty segment takes any collapsible event");
                segment = Some(g);
            }
            continue;
        }
        match event.op() {
            Op::Insert | Op::Read => {
                let after = event
                    .after()
                    .ok_or_else(|| reject("insert without a row".into()))?;
                upsert(table, after, columns)
                    .map_err(reject)?
                    .execute(&mut tx, i, table)
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
                    match update(table, after, identity, columns, key_change).map_err(&reject)? {
                        Some(s) => s.execute(&mut tx, i, table).await?,
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
                    upsert(table, after, columns)
                        .map_err(&reject)?
                        .execute(&mut tx, i, table)
                        .await?;
                }
            }
            Op::Delete => {
                let before = event
                    .before()
                    .ok_or_else(|| reject("delete without the old key".into()))?;
                delete(table, before, columns)
                    .map_err(reject)?
                    .execute(&mut tx, i, table)
                    .await?;
            }
            Op::Truncate => {
                let sql = format!("TRUNCATE {}", table.quoted());
                tx.ddl(&sql)
                    .await
                    .map_err(|e| classify(&e, Some(i), &format!("truncating {table}")))?;
            }
        }
    }
    if let Some(g) = segment.take() {
        g.flush(&mut tx, plain_inserts, &mut timing).await?;
    }
    let checkpointing = std::time::Instant::now();
    if let Some(i) = last {
        ddl::write_checkpoint(
            &mut tx,
            &options.checkpoint_table,
            consumer,
            &events[i].source().database,
            Position::of(&events[i]),
        )
        .await?;
    }
    let checkpoint = checkpointing.elapsed();
    let committing = std::time::Instant::now();
    tx.commit().await?;
    known.extend(changed);
    tracing::debug!(
        events = events.len(),
        grouped,
        plain_inserts,
        statements = timing.statements,
        collapsed = timing.events,
        delete_us = timing.kinds[Kind::Delete as usize].as_micros() as u64,
        insert_us = timing.kinds[Kind::Insert as usize].as_micros() as u64,
        upsert_us = timing.kinds[Kind::Upsert as usize].as_micros() as u64,
        written = timing.written,
        build_us = timing.build.as_micros() as u64,
        execute_us = timing.execute.as_micros() as u64,
        checkpoint_us = checkpoint.as_micros() as u64,
        commit_us = committing.elapsed().as_micros() as u64,
        total_us = started.elapsed().as_micros() as u64,
        "applied"
    );
    Ok(Applied::default())
}

/// What is known of `table`: as changed by this batch so far, else as committed before.
fn cached_target<'m>(
    changed: &'m HashMap<TableName, TargetTable>,
    known: &'m HashMap<TableName, TargetTable>,
    table: &TableName,
) -> Option<&'m TargetTable> {
    changed.get(table).or_else(|| known.get(table))
}

/// Whether an op is a change of the stream (positions of snapshot rows are not checkpoints).
fn op_is_change(op: Op) -> bool {
    op != Op::Read
}
