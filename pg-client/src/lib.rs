//! Walbrook sink for PostgreSQL: applies the change stream to tables of a target database,
//! exactly once.
//!
//! * Every batch the runner hands over is applied in **one target transaction**, in stream
//!   order, together with the checkpoint row of the consumer (`walbrook_checkpoint`): either
//!   the rows and the new position are committed, or neither. On start the runner reads the
//!   checkpoint and skips what the target already holds, so a crash anywhere (before the
//!   commit, between the commit and the JetStream acknowledgement) applies nothing twice and
//!   loses nothing.
//! * Source transactions are never split across target transactions (the runner ends
//!   batches at transaction boundaries, see `walbrook_client::runner`); several source
//!   transactions are batched into one target transaction.
//! * Values are bound as PostgreSQL's own text form with an explicit cast to the column's
//!   type (`$1::numeric(10,2)`), so every type is lossless; identifiers are always quoted.
//! * Target tables are created from the event schema (types, NOT NULL, primary key) when
//!   asked, and follow columns added or dropped at the source.
//!
//! docs/sinks.md describes the options and guarantees.

mod apply;
mod ddl;
mod sql;

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::Mutex;
use walbrook_client::ChangeEvent;
use walbrook_client::runner::{Applied, Position, Sink, SinkError};

pub use sql::{quote_ident, quote_qualified};

/// Where the events of a source table go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
}

impl TableName {
    /// `schema.table`.
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// Parses `schema.table` (the first `.` separates them; a name without a dot is in
    /// `public`).
    pub fn parse(text: &str) -> TableName {
        match text.split_once('.') {
            Some((s, t)) => TableName::new(s, t),
            None => TableName::new("public", text),
        }
    }

    /// The quoted, qualified name for SQL.
    pub fn quoted(&self) -> String {
        quote_qualified(&self.schema, &self.table)
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Options of the PostgreSQL sink.
#[derive(Debug, Clone)]
pub struct PgSinkOptions {
    /// Target database URL.
    pub url: String,
    /// Explicit mappings of source tables to target tables.
    pub tables: HashMap<TableName, TableName>,
    /// Schema of unmapped tables in the target (default: the source schema).
    pub target_schema: Option<String>,
    /// Create missing target tables from the event schema (default true).
    pub create_tables: bool,
    /// Follow columns added and dropped at the source (default true).
    pub follow_schema: bool,
    /// The checkpoint table (default `public.walbrook_checkpoint`).
    pub checkpoint_table: TableName,
    /// Connections in the pool (default 2).
    pub max_connections: u32,
}

impl PgSinkOptions {
    /// Options for the target at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> PgSinkOptions {
        PgSinkOptions {
            url: url.into(),
            tables: HashMap::new(),
            target_schema: None,
            create_tables: true,
            follow_schema: true,
            checkpoint_table: TableName::new("public", "walbrook_checkpoint"),
            max_connections: 2,
        }
    }

    /// The target of a source table.
    pub fn target(&self, schema: &str, table: &str) -> TableName {
        self.tables
            .get(&TableName::new(schema, table))
            .cloned()
            .unwrap_or_else(|| {
                TableName::new(
                    self.target_schema
                        .clone()
                        .unwrap_or_else(|| schema.to_owned()),
                    table,
                )
            })
    }
}

/// The PostgreSQL sink. See the [crate docs](crate).
#[derive(Debug)]
pub struct PgSink {
    pool: PgPool,
    options: PgSinkOptions,
    /// What is known of each target table: its columns (name → type), keyed by target table;
    /// updated after each commit.
    known: Mutex<HashMap<TableName, ddl::TargetTable>>,
}

impl PgSink {
    /// Connects to the target and creates the checkpoint table when missing.
    pub async fn connect(options: PgSinkOptions) -> Result<PgSink, SinkError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect(&options.url)
            .await
            .map_err(|e| apply::classify(&e, None, "connecting to the target"))?;
        let sink = PgSink {
            pool,
            options,
            known: Mutex::new(HashMap::new()),
        };
        ddl::create_checkpoint_table(&sink.pool, &sink.options.checkpoint_table).await?;
        Ok(sink)
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The options.
    pub fn options(&self) -> &PgSinkOptions {
        &self.options
    }
}

impl Sink for PgSink {
    fn name(&self) -> &str {
        "postgres"
    }

    async fn checkpoint(&self, consumer: &str) -> Result<Option<Position>, SinkError> {
        ddl::read_checkpoint(&self.pool, &self.options.checkpoint_table, consumer).await
    }

    async fn store_checkpoint(&self, consumer: &str, position: Position) -> Result<(), SinkError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| apply::classify(&e, None, "beginning a transaction"))?;
        ddl::write_checkpoint(
            &mut tx,
            &self.options.checkpoint_table,
            consumer,
            "",
            position,
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| apply::classify(&e, None, "committing the checkpoint"))
    }

    async fn apply(&self, consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        apply::apply(self, consumer, events).await
    }
}
