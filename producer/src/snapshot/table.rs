//! The table a snapshot reads: its description (the same one pgoutput gives the change
//! stream, so rows share the change events' schema and fingerprint), its key, and the SQL
//! that reads it. Every identifier is quoted and every value is a typed literal: a request
//! can never inject SQL.

use tokio_postgres::Client;
use walbrook_protocol::snapshot::RowFilter;

use crate::catalog::Catalog;
use crate::config::quote_ident;
use crate::event::TableEncoder;
use crate::pgoutput::{self, Oid};

use super::RpcFailure;

/// A published table, described for a snapshot.
#[derive(Debug)]
pub struct SnapshotTable {
    /// The encoder of the table's current schema version.
    pub encoder: TableEncoder,
    /// Indexes (into the columns) of the key that orders chunks: the primary key, else the
    /// replica identity index; empty when the table has neither.
    pub key: Vec<usize>,
    /// `"schema"."table"`.
    pub quoted: String,
    /// The table's OID.
    pub oid: u32,
}

/// Looks `schema.table` up: 404 when it does not exist, 400 when it is not a table, 403
/// when it is not in `publication`.
pub async fn lookup(
    sql: &Client,
    publication: &str,
    schema: &str,
    table: &str,
) -> Result<SnapshotTable, RpcFailure> {
    let internal =
        |e: tokio_postgres::Error| RpcFailure::internal(format!("reading the catalog: {e}"));
    let row = sql
        .query_opt(
            "SELECT c.oid, c.relkind::text, c.relreplident::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            RpcFailure::new(404, format!("table {schema:?}.{table:?} does not exist"))
        })?;
    let oid: u32 = row.get(0);
    let relkind: String = row.get(1);
    let replident: String = row.get(2);
    if relkind != "r" && relkind != "p" {
        return Err(RpcFailure::new(
            400,
            format!("{schema:?}.{table:?} is not a table (relkind {relkind})"),
        ));
    }
    let published = sql
        .query_opt(
            "SELECT 1 FROM pg_publication_tables
              WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &schema, &table],
        )
        .await
        .map_err(internal)?
        .is_some();
    if !published {
        return Err(RpcFailure::new(
            403,
            format!(
                "table {schema:?}.{table:?} is not published by this producer (publication {publication:?}); \
                 partitions are read through their root"
            ),
        ));
    }
    // The columns exactly as pgoutput's Relation message lists them: every live,
    // non-generated column in attnum order, flagged as key when part of the replica
    // identity (all columns under FULL).
    let columns = sql
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod,
                    coalesce(a.attnum = ANY(ri.indkey), false),
                    coalesce(a.attnum = ANY(pk.indkey), false)
               FROM pg_attribute a
               LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid
                    AND CASE $2 WHEN 'i' THEN ri.indisreplident ELSE ri.indisprimary END
               LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&oid, &replident],
        )
        .await
        .map_err(internal)?;
    let identity = match replident.as_str() {
        "f" => pgoutput::ReplicaIdentity::Full,
        "i" => pgoutput::ReplicaIdentity::Index,
        "n" => pgoutput::ReplicaIdentity::Nothing,
        _ => pgoutput::ReplicaIdentity::Default,
    };
    let relation = pgoutput::Relation {
        id: Oid(oid),
        namespace: schema.to_string(),
        name: table.to_string(),
        replica_identity: identity,
        columns: columns
            .iter()
            .map(|r| pgoutput::RelationColumn {
                is_key: identity == pgoutput::ReplicaIdentity::Full
                    || (identity != pgoutput::ReplicaIdentity::Nothing && r.get::<_, bool>(3)),
                name: r.get(0),
                type_oid: Oid(r.get(1)),
                type_modifier: r.get(2),
            })
            .collect(),
    };
    // Chunk key: the primary key, else the replica identity index.
    let in_pk: Vec<usize> = (0..columns.len())
        .filter(|&i| columns[i].get::<_, bool>(4))
        .collect();
    let key = if !in_pk.is_empty() {
        key_order(sql, oid, "indisprimary", &relation).await?
    } else if identity == pgoutput::ReplicaIdentity::Index {
        key_order(sql, oid, "indisreplident", &relation).await?
    } else {
        Vec::new()
    };
    let desc = Catalog::new()
        .describe(sql, &relation)
        .await
        .map_err(|e| RpcFailure::internal(e.to_string()))?;
    let encoder = TableEncoder::new(desc)
        .map_err(|e| RpcFailure::internal(format!("cannot encode this table: {e}")))?;
    Ok(SnapshotTable {
        encoder,
        key,
        quoted: format!("{}.{}", quote_ident(schema), quote_ident(table)),
        oid,
    })
}

/// The columns of the index flagged `flag`, in index order, as column indexes.
async fn key_order(
    sql: &Client,
    oid: u32,
    flag: &str,
    relation: &pgoutput::Relation,
) -> Result<Vec<usize>, RpcFailure> {
    // `flag` is one of two constants, never input.
    let query = format!(
        "SELECT a.attname::text
           FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = $1 AND i.{flag}
          ORDER BY k.ord"
    );
    let rows = sql
        .query(&query, &[&oid])
        .await
        .map_err(|e| RpcFailure::internal(format!("reading the key: {e}")))?;
    let mut key = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.get(0);
        match relation.columns.iter().position(|c| c.name == name) {
            Some(i) => key.push(i),
            // A key on a generated column: no usable order, read in one transaction.
            None => return Ok(Vec::new()),
        }
    }
    Ok(key)
}

/// A string literal that PostgreSQL reads back as exactly `text`, whatever
/// `standard_conforming_strings` says: `E'…'` with `\` and `'` escaped.
pub fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The longest filter value, in bytes. The accepted request's answer and its `_walbrook`
/// record repeat the value, so a value near NATS' `max_payload` would make the answer too
/// big to send.
pub const MAX_FILTER_VALUE: usize = 64 * 1024;

/// The text of a filter's value, as PostgreSQL will read it (through [`literal`] and a cast
/// to the column's type): `None` for an operator without a value (`is_null`,
/// `is_not_null`). A 400 failure when the operator needs a value and has none, takes none
/// and has one, the value is not a string, number or boolean, or its text contains NUL or
/// is longer than [`MAX_FILTER_VALUE`].
pub fn filter_value_text(filter: &RowFilter) -> Result<Option<String>, RpcFailure> {
    if !filter.op.takes_value() {
        if filter.value.is_some() {
            return Err(RpcFailure::new(
                400,
                format!("filter: {} takes no value", filter.op.sql()),
            ));
        }
        return Ok(None);
    }
    let text = match &filter.value {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::Bool(b)) => b.to_string(),
        Some(_) => {
            return Err(RpcFailure::new(
                400,
                "filter: value must be a string, number or boolean",
            ));
        }
        None => {
            return Err(RpcFailure::new(
                400,
                format!("filter: {} needs a value", filter.op.sql()),
            ));
        }
    };
    if text.contains('\0') {
        return Err(RpcFailure::new(400, "filter: value contains a NUL byte"));
    }
    if text.len() > MAX_FILTER_VALUE {
        return Err(RpcFailure::new(
            400,
            format!(
                "filter: the value has {} bytes, at most {MAX_FILTER_VALUE} are allowed",
                text.len()
            ),
        ));
    }
    Ok(Some(text))
}

/// The SQL condition of a validated filter (`None`: no filter).
#[derive(Debug, Clone, Default)]
pub struct FilterSql(pub Option<String>);

impl SnapshotTable {
    fn columns(&self) -> &[walbrook_pgtype_avro::ColumnDesc] {
        &self.encoder.desc().columns
    }

    /// Whether the rows are copied in PostgreSQL's binary format: when every column's type
    /// has a binary reader (`walbrook_pgtype_avro::pg_binary::reads`), else in text.
    pub fn binary(&self) -> bool {
        self.columns()
            .iter()
            .all(|c| walbrook_pgtype_avro::pg_binary::reads(&c.pg_type))
    }

    /// `"schema.table"` for messages.
    pub fn name(&self) -> String {
        let desc = self.encoder.desc();
        format!("{}.{}", desc.schema, desc.table)
    }

    /// Validates a filter against the table: the column must exist and the value must be
    /// valid input for its type (PostgreSQL parses it, in a statement that reads nothing).
    pub async fn filter_sql(
        &self,
        sql: &Client,
        filter: Option<&RowFilter>,
    ) -> Result<FilterSql, RpcFailure> {
        let Some(filter) = filter else {
            return Ok(FilterSql(None));
        };
        let column = self
            .columns()
            .iter()
            .find(|c| c.name == filter.column)
            .ok_or_else(|| {
                RpcFailure::new(
                    400,
                    format!(
                        "filter: table {} has no column {:?}",
                        self.name(),
                        filter.column
                    ),
                )
            })?;
        let target = quote_ident(&column.name);
        let Some(text) = filter_value_text(filter)? else {
            return Ok(FilterSql(Some(format!("{target} {}", filter.op.sql()))));
        };
        let value = format!("{}::{}", literal(&text), column.type_name);
        // Parse the value (and check the operator exists for the type) without reading
        // any row.
        let check = format!(
            "SELECT 1 FROM {} WHERE false AND {target} {} {value}",
            self.quoted,
            filter.op.sql()
        );
        sql.simple_query(&check).await.map_err(|e| {
            RpcFailure::new(
                400,
                format!(
                    "filter: {}",
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string())
                ),
            )
        })?;
        Ok(FilterSql(Some(format!(
            "{target} {} {value}",
            filter.op.sql()
        ))))
    }

    /// The select list: every column, in order.
    fn select_list(&self) -> String {
        self.columns()
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The next key-ordered chunk after `after` (the previous chunk's last key values).
    pub fn chunk_query(&self, filter: &FilterSql, after: Option<&[String]>, limit: u32) -> String {
        let key_cols: Vec<String> = self
            .key
            .iter()
            .map(|&i| quote_ident(&self.columns()[i].name))
            .collect();
        let mut conditions = Vec::new();
        if let Some(last) = after {
            let values: Vec<String> = self
                .key
                .iter()
                .zip(last)
                .map(|(&i, v)| format!("{}::{}", literal(v), self.columns()[i].type_name))
                .collect();
            conditions.push(format!(
                "({}) > ({})",
                key_cols.join(", "),
                values.join(", ")
            ));
        }
        if let Some(f) = &filter.0 {
            conditions.push(format!("({f})"));
        }
        let mut query = format!("SELECT {} FROM {}", self.select_list(), self.quoted);
        if !conditions.is_empty() {
            query.push_str(" WHERE ");
            query.push_str(&conditions.join(" AND "));
        }
        query.push_str(&format!(" ORDER BY {} LIMIT {limit}", key_cols.join(", ")));
        query
    }

    /// The whole-table query of an unkeyed snapshot (read through a cursor).
    pub fn full_query(&self, filter: &FilterSql) -> String {
        let mut query = format!("SELECT {} FROM {}", self.select_list(), self.quoted);
        if let Some(f) = &filter.0 {
            query.push_str(&format!(" WHERE ({f})"));
        }
        query
    }

    /// PostgreSQL's row estimate over the table and its partitions (`None`: never analysed).
    pub async fn approx_rows(&self, sql: &Client) -> Result<Option<i64>, RpcFailure> {
        let row = sql
            .query_one(
                "SELECT sum(greatest(c.reltuples, 0))::bigint, bool_or(c.reltuples >= 0)
                   FROM pg_class c
                  WHERE (c.oid = $1 AND c.relkind = 'r')
                     OR c.oid IN (SELECT relid FROM pg_partition_tree($1::oid) WHERE isleaf)",
                &[&self.oid],
            )
            .await
            .map_err(|e| RpcFailure::internal(format!("reading the row estimate: {e}")))?;
        let analysed: Option<bool> = row.get(1);
        Ok(analysed
            .unwrap_or(false)
            .then(|| row.get::<_, Option<i64>>(0).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(key: Vec<usize>) -> SnapshotTable {
        use walbrook_pgtype_avro::{ColumnDesc, PgType, RelationDesc, ReplicaIdentity};
        let column = |name: &str, oid: u32, type_name: &str| ColumnDesc {
            name: name.into(),
            pg_type: PgType::from_builtin_oid(oid).unwrap(),
            type_name: type_name.into(),
            typmod: -1,
            not_null: true,
            is_key: true,
            backfill: Default::default(),
        };
        let desc = RelationDesc {
            schema: "my schema".into(),
            table: "t\"x".into(),
            columns: vec![column("a\"b", 23, "integer"), column("c", 25, "text")],
            replica_identity: ReplicaIdentity::Default,
        };
        SnapshotTable {
            encoder: TableEncoder::new(desc).unwrap(),
            key,
            quoted: format!("{}.{}", quote_ident("my schema"), quote_ident("t\"x")),
            oid: 1,
        }
    }

    #[test]
    fn chunk_queries_quote_names_and_type_key_literals() {
        let t = table(vec![0, 1]);
        assert_eq!(
            t.chunk_query(&FilterSql(None), None, 10),
            r#"SELECT "a""b", "c" FROM "my schema"."t""x" ORDER BY "a""b", "c" LIMIT 10"#
        );
        assert_eq!(
            t.chunk_query(
                &FilterSql(Some(r#""c" = E'x'::text"#.into())),
                Some(&["5".to_string(), "it's".to_string()]),
                3
            ),
            r#"SELECT "a""b", "c" FROM "my schema"."t""x" WHERE ("a""b", "c") > (E'5'::integer, E'it''s'::text) AND ("c" = E'x'::text) ORDER BY "a""b", "c" LIMIT 3"#
        );
        assert_eq!(
            t.full_query(&FilterSql(None)),
            r#"SELECT "a""b", "c" FROM "my schema"."t""x""#
        );
    }

    #[test]
    fn rows_are_copied_in_binary_only_when_every_column_type_has_a_binary_reader() {
        let mut t = table(vec![0]);
        assert!(t.binary(), "integer and text");
        let mut desc = t.encoder.desc().clone();
        desc.columns[1].pg_type =
            walbrook_pgtype_avro::PgType::Builtin(walbrook_pgtype_avro::Builtin::Inet);
        t.encoder = TableEncoder::new(desc).unwrap();
        assert!(!t.binary(), "inet is read from text");
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("a"), "E'a'");
        assert_eq!(literal("it's"), "E'it''s'");
        assert_eq!(
            literal("a\\'); DROP TABLE x; --"),
            "E'a\\\\''); DROP TABLE x; --'"
        );
    }
}
