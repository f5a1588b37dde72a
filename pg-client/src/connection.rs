//! The sink's one connection to the target: opened from the URL (TLS and credentials as
//! libpq reads them, see `walbrook_pg_connect`), statements prepared once per connection,
//! and the classification of the target's errors.
//!
//! The driver is tokio-postgres rather than sqlx: it sets `TCP_NODELAY`, without which every
//! `COPY` waited out Nagle's delay (about 40 ms: the small `CopyDone` message is held back
//! until the server acknowledges the data, which it delays), and its `COPY FROM STDIN` is a
//! plain sink of bytes.

use std::collections::HashMap;

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};
use walbrook_client::runner::SinkError;
use walbrook_pg_connect::{ConnectError, PgSettings, describe};

/// Prepared statements kept per connection; past this many, the cache starts over (the
/// statements of tables and column sets no longer written are let go).
const STATEMENTS: usize = 512;

/// An open connection to the target.
pub(crate) struct Connection {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &self.client.is_closed())
            .field("statements", &self.statements.len())
            .finish()
    }
}

impl Connection {
    /// Opens a connection: a refused login or unusable TLS settings are fatal, an
    /// unreachable server is transient (the runner retries).
    pub(crate) async fn open(settings: &PgSettings) -> Result<Connection, SinkError> {
        let client = settings.open().await.map_err(|e| match &e {
            ConnectError::Settings(_) => SinkError::fatal(format!("connecting to the target: {e}")),
            ConnectError::Postgres(pg) => classify(pg, None, "connecting to the target"),
        })?;
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
    }

    /// Whether the connection broke (it is then opened again).
    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Begins a transaction.
    pub(crate) async fn begin(&mut self) -> Result<Tx<'_>, SinkError> {
        let Connection { client, statements } = self;
        let tx = client
            .transaction()
            .await
            .map_err(|e| classify(&e, None, "beginning a transaction"))?;
        Ok(Tx { tx, statements })
    }
}

/// A transaction on the target (rolled back when dropped uncommitted).
pub(crate) struct Tx<'c> {
    tx: tokio_postgres::Transaction<'c>,
    statements: &'c mut HashMap<String, Statement>,
}

impl Tx<'_> {
    /// The statement of `sql`, prepared with parameters of `types` on first use.
    async fn prepared(
        &mut self,
        sql: &str,
        types: &[Type],
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare_typed(sql, types).await?;
        if self.statements.len() >= STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Runs `sql` with `params` of `types`; returns the rows it affected.
    pub(crate) async fn execute(
        &mut self,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepared(sql, types).await?;
        self.tx.execute(&statement, params).await
    }

    /// Runs a query of `sql` with `params` of `types`; returns its rows.
    pub(crate) async fn query(
        &mut self,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepared(sql, types).await?;
        self.tx.query(&statement, params).await
    }

    /// Runs a statement without parameters through the simple protocol (DDL, `TRUNCATE`).
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.tx.batch_execute(sql).await
    }

    /// `COPY … FROM STDIN` (`sql`) of `data` in COPY's text format; returns the rows copied.
    pub(crate) async fn copy_in(
        &mut self,
        sql: &str,
        data: Bytes,
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepared(sql, &[]).await?;
        let sink = self.tx.copy_in::<_, Bytes>(&statement).await?;
        futures::pin_mut!(sink);
        sink.send(data).await?;
        sink.finish().await
    }

    /// Commits.
    pub(crate) async fn commit(self) -> Result<(), SinkError> {
        self.tx
            .commit()
            .await
            .map_err(|e| classify(&e, None, "committing"))
    }
}

/// Classifies a database error: connection trouble, serialization failures, deadlocks and
/// server shutdowns are transient; data and constraint errors reject the event at `index`
/// (fatal when no event is to blame); privilege, login and TLS errors are fatal.
pub(crate) fn classify(
    error: &tokio_postgres::Error,
    index: Option<usize>,
    context: &str,
) -> SinkError {
    let message = format!("{context}: {}", describe(error));
    let Some(code) = error.code() else {
        // No SQLSTATE: the connection broke or could not be made, or TLS failed.
        if error
            .to_string()
            .starts_with("error performing TLS handshake")
        {
            return SinkError::fatal(message);
        }
        return SinkError::transient(message);
    };
    let code = code.code();
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
