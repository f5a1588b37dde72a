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
//! * Values are sent as PostgreSQL's own text form: the rows a collapsed run of changes
//!   inserts go by one `COPY … FROM STDIN` when the target's column types are the source's;
//!   everything else is bound with an explicit cast to the column's type
//!   (`$1::numeric(10,2)`), so every type is lossless; identifiers are always quoted.
//! * One connection, owned by the sink and opened again after it breaks: tokio-postgres
//!   (with `TCP_NODELAY`, which `COPY` needs: sqlx's connections wait out Nagle's delay on
//!   every `COPY`), TLS and credentials from the URL as libpq reads them
//!   (`walbrook_pg_connect`), statements prepared once per connection.
//! * Target tables are created from the event schema (types, NOT NULL, primary key) when
//!   asked, and follow columns added or dropped at the source.
//!
//! docs/sinks.md describes the options and guarantees.

mod apply;
mod connection;
mod ddl;
mod sql;

use std::collections::HashMap;

use tokio::sync::Mutex;
use walbrook_client::ChangeEvent;
use walbrook_client::runner::{Applied, Binding, Position, Sink, SinkError};

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
    settings: walbrook_pg_connect::PgSettings,
    options: PgSinkOptions,
    /// The connection and what is known of the target; one apply at a time (the runner
    /// never overlaps them), so the lock is never contended.
    state: Mutex<State>,
    /// The source database, from the runner ([`Sink::bind`]): checkpoints are keyed by it
    /// and the consumer.
    source_database: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// The target connection (`None` until opened, and after it broke).
    connection: Option<connection::Connection>,
    /// What is known of each target table: its columns, keyed by target table; updated
    /// after each commit.
    known: HashMap<TableName, ddl::TargetTable>,
}

impl PgSink {
    /// Connects to the target and creates the checkpoint table when missing.
    pub async fn connect(options: PgSinkOptions) -> Result<PgSink, SinkError> {
        let settings = walbrook_pg_connect::PgSettings::parse(&options.url)
            .map_err(|e| SinkError::fatal(format!("the target URL: {e}")))?;
        let sink = PgSink {
            settings,
            options,
            state: Mutex::new(State::default()),
            source_database: None,
        };
        {
            let mut state = sink.state.lock().await;
            let conn = sink.connection(&mut state.connection).await?;
            ddl::create_checkpoint_table(conn, &sink.options.checkpoint_table).await?;
        }
        Ok(sink)
    }

    /// The source database the runner bound this sink to (checkpoints are per source).
    fn bound_database(&self) -> Result<&str, SinkError> {
        self.source_database.as_deref().ok_or_else(|| {
            SinkError::fatal("the sink was not given to a Runner: its source database is unknown")
        })
    }

    /// The options.
    pub fn options(&self) -> &PgSinkOptions {
        &self.options
    }

    /// The open connection in `slot`, opened (again) when there is none or it broke.
    async fn connection<'s>(
        &self,
        slot: &'s mut Option<connection::Connection>,
    ) -> Result<&'s mut connection::Connection, SinkError> {
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = None;
            *slot = Some(connection::Connection::open(&self.settings).await?);
        }
        Ok(slot.as_mut().expect("opened above"))
    }
}

impl Sink for PgSink {
    fn name(&self) -> &str {
        "postgres"
    }

    fn bind(&mut self, binding: &Binding) {
        self.source_database = Some(binding.source_database.clone());
    }

    async fn checkpoint(&self, consumer: &str) -> Result<Option<Position>, SinkError> {
        let database = self.bound_database()?;
        let mut state = self.state.lock().await;
        let conn = self.connection(&mut state.connection).await?;
        ddl::read_checkpoint(conn, &self.options.checkpoint_table, database, consumer).await
    }

    async fn store_checkpoint(&self, consumer: &str, position: Position) -> Result<(), SinkError> {
        let database = self.bound_database()?;
        let mut state = self.state.lock().await;
        let conn = self.connection(&mut state.connection).await?;
        let mut tx = conn.begin();
        ddl::write_checkpoint(
            &mut tx,
            &self.options.checkpoint_table,
            consumer,
            database,
            position,
        )
        .await?;
        tx.commit().await
    }

    async fn apply(&self, consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        apply::apply(self, consumer, events).await
    }
}
