//! The published table set: the configured tables plus tables added at runtime through
//! the `_walbrook.add_table` / `_walbrook.remove_table` SQL API.
//!
//! ```sql
//! SELECT _walbrook.add_table('walbrook', 'public.invoices');     -- publish from now on
//! SELECT _walbrook.remove_table('walbrook', 'public.invoices');  -- stop publishing
//! SELECT * FROM _walbrook.tables;                                 -- what is published, and why
//! ```
//!
//! The functions change the publication in the caller's transaction, so the change
//! takes effect at a precise point of the WAL: pgoutput publishes the table's changes
//! committed after it, with no producer restart. They check what the start-up checks
//! check (a table, not a partition, with a primary key or replica identity) and refuse
//! with a hint otherwise. `_walbrook.tables` remembers runtime additions, so a
//! restarted producer keeps them: its publication is the configured tables plus the
//! runtime ones. A configured table cannot be removed at runtime (the next start would
//! add it again); the functions say so.
//!
//! The functions are `SECURITY DEFINER`, owned by the role the producer runs as (which
//! owns the publication); `EXECUTE` is revoked from `PUBLIC`, so an operator grants it
//! to the roles that may manage published tables. As `ALTER PUBLICATION` requires, that
//! role must also own the table (or be a superuser).

use tokio_postgres::Client;

use crate::config::{ProducerConfig, TableName, quote_ident};
use crate::setup::SetupProblem;

/// Creates (or replaces) the `_walbrook.tables` table and the SQL API functions. Run in
/// one transaction with the rest of the `_walbrook` schema set-up.
pub const SQL_API: &str = r#"
CREATE TABLE IF NOT EXISTS _walbrook.tables (
    publication text NOT NULL,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    origin      text NOT NULL CHECK (origin IN ('config', 'runtime')),
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (publication, schema_name, table_name)
);

CREATE OR REPLACE FUNCTION _walbrook.add_table(pub text, tbl regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ns text; rel text; kind "char"; ident "char"; part boolean; has_pk boolean; pub_oid oid;
BEGIN
    SELECT n.nspname, c.relname, c.relkind, c.relreplident, c.relispartition,
           EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
      INTO ns, rel, kind, ident, part, has_pk
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    SELECT oid INTO pub_oid FROM pg_publication WHERE pubname = pub;
    IF pub_oid IS NULL THEN
        RAISE EXCEPTION 'walbrook: publication % does not exist', quote_ident(pub)
            USING HINT = 'name the publication the producer uses (config `publication`)';
    END IF;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'walbrook: %.% is not a table and cannot be published',
            quote_ident(ns), quote_ident(rel)
            USING HINT = 'publish the underlying table instead';
    END IF;
    IF part THEN
        RAISE EXCEPTION 'walbrook: %.% is a partition', quote_ident(ns), quote_ident(rel)
            USING HINT = 'publish its partitioned root table; its partitions are read through it';
    END IF;
    IF NOT (ident IN ('f', 'i') OR (ident = 'd' AND has_pk)) THEN
        RAISE EXCEPTION 'walbrook: %.% has no primary key or replica identity: once published, '
            'every UPDATE and DELETE on it would fail', quote_ident(ns), quote_ident(rel)
            USING HINT = format('add a primary key, or ALTER TABLE %I.%I REPLICA IDENTITY FULL', ns, rel);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel WHERE prpubid = pub_oid AND prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %I.%I', pub, ns, rel);
    END IF;
    INSERT INTO _walbrook.tables (publication, schema_name, table_name, origin)
    VALUES (pub, ns, rel, 'runtime')
    ON CONFLICT (publication, schema_name, table_name) DO NOTHING;
    PERFORM pg_notify('walbrook', json_build_object(
        'op', 'add', 'publication', pub, 'schema', ns, 'table', rel)::text);
END
$fn$;

CREATE OR REPLACE FUNCTION _walbrook.remove_table(pub text, tbl regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ns text; rel text; how text; pub_oid oid;
BEGIN
    SELECT n.nspname, c.relname INTO ns, rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    SELECT oid INTO pub_oid FROM pg_publication WHERE pubname = pub;
    IF pub_oid IS NULL THEN
        RAISE EXCEPTION 'walbrook: publication % does not exist', quote_ident(pub)
            USING HINT = 'name the publication the producer uses (config `publication`)';
    END IF;
    SELECT origin INTO how FROM _walbrook.tables
     WHERE publication = pub AND schema_name = ns AND table_name = rel;
    IF how = 'config' THEN
        RAISE EXCEPTION 'walbrook: %.% is listed in the producer''s configuration',
            quote_ident(ns), quote_ident(rel)
            USING HINT = 'remove it from `tables` (WALBROOK_TABLES) and restart the producer';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_publication_rel WHERE prpubid = pub_oid AND prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %I.%I', pub, ns, rel);
    END IF;
    DELETE FROM _walbrook.tables
     WHERE publication = pub AND schema_name = ns AND table_name = rel;
    PERFORM pg_notify('walbrook', json_build_object(
        'op', 'remove', 'publication', pub, 'schema', ns, 'table', rel)::text);
END
$fn$;

REVOKE ALL ON FUNCTION _walbrook.add_table(text, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION _walbrook.remove_table(text, regclass) FROM PUBLIC;
"#;

/// Records the configured tables in `_walbrook.tables` (origin `config`; a table
/// listed there no longer is forgotten) and returns the full published set: the
/// configured tables followed by the runtime additions that still exist. A runtime
/// addition whose table was dropped is forgotten with a warning.
pub async fn published_set(
    client: &Client,
    config: &ProducerConfig,
) -> Result<Vec<TableName>, SetupProblem> {
    let sql_error = |what: &'static str| {
        move |e: tokio_postgres::Error| SetupProblem {
            problem: format!(
                "{what} failed: {}",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            ),
            hint: "check that the configured user owns the _walbrook schema".into(),
        }
    };
    let schemas: Vec<&str> = config.tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = config.tables.iter().map(|t| t.table.as_str()).collect();
    client
        .execute(
            "DELETE FROM _walbrook.tables t
              WHERE t.publication = $1 AND t.origin = 'config'
                AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS c(s, n)
                                 WHERE c.s = t.schema_name AND c.n = t.table_name)",
            &[&config.publication, &schemas, &names],
        )
        .await
        .map_err(sql_error("forgetting tables no longer configured"))?;
    client
        .execute(
            "INSERT INTO _walbrook.tables (publication, schema_name, table_name, origin)
             SELECT $1, s, n, 'config' FROM unnest($2::text[], $3::text[]) AS c(s, n)
             ON CONFLICT (publication, schema_name, table_name) DO UPDATE SET origin = 'config'",
            &[&config.publication, &schemas, &names],
        )
        .await
        .map_err(sql_error("recording the configured tables"))?;
    let gone = client
        .query(
            "DELETE FROM _walbrook.tables t
              WHERE t.publication = $1 AND t.origin = 'runtime'
                AND to_regclass(format('%I.%I', t.schema_name, t.table_name)) IS NULL
          RETURNING schema_name, table_name",
            &[&config.publication],
        )
        .await
        .map_err(sql_error("forgetting dropped tables"))?;
    for row in gone {
        let table = TableName {
            schema: row.get(0),
            table: row.get(1),
        };
        tracing::warn!(%table, "a table added at runtime no longer exists; forgetting it");
    }
    let rows = client
        .query(
            "SELECT schema_name, table_name FROM _walbrook.tables
              WHERE publication = $1 AND origin = 'runtime'
              ORDER BY added_at, schema_name, table_name",
            &[&config.publication],
        )
        .await
        .map_err(sql_error("reading runtime tables"))?;
    let mut tables = config.tables.clone();
    tables.extend(rows.into_iter().map(|row| TableName {
        schema: row.get(0),
        table: row.get(1),
    }));
    Ok(tables)
}

/// `ALTER PUBLICATION … SET TABLE` text for `tables` (all identifiers quoted).
pub fn set_table_sql(publication: &str, tables: &[TableName]) -> String {
    let list = tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "ALTER PUBLICATION {} SET TABLE {list}",
        quote_ident(publication)
    )
}
