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

    /// Begins a transaction. Nothing is sent yet: `BEGIN` goes with the transaction's first
    /// statement, in the same round trip (tokio-postgres pipelines requests that are in
    /// flight together).
    pub(crate) fn begin(&mut self) -> Tx<'_> {
        let Connection { client, statements } = self;
        Tx {
            client,
            statements,
            begun: false,
            ended: false,
        }
    }
}

/// A transaction on the target; `ROLLBACK` is queued on the connection when it is dropped
/// uncommitted (before anything sent later, so the next transaction starts clean).
pub(crate) struct Tx<'c> {
    client: &'c Client,
    statements: &'c mut HashMap<String, Statement>,
    /// `BEGIN` was sent.
    begun: bool,
    /// `COMMIT` was sent.
    ended: bool,
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.begun && !self.ended {
            // tokio-postgres queues a request on the first poll of its future; the answer is
            // not needed (tokio-postgres' own `Transaction` does the same when dropped).
            let rollback = self.client.batch_execute("ROLLBACK");
            let mut rollback = std::pin::pin!(rollback);
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = rollback.as_mut().poll(&mut context);
        }
    }
}

impl Tx<'_> {
    /// Runs `op`; the first operation of the transaction is sent right after `BEGIN`,
    /// without waiting for its answer. (Should `BEGIN` itself fail while the operation
    /// succeeds, the operation was applied on its own; every write of this sink is safe to
    /// apply again, and the batch is retried.)
    async fn run<T>(
        client: &Client,
        begin: bool,
        op: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        if !begin {
            return op.await;
        }
        let (begun, result) = futures::join!(client.batch_execute("BEGIN"), op);
        begun?;
        result
    }

    /// Whether the next operation is the first (and marks `BEGIN` sent).
    fn begins(&mut self) -> bool {
        !std::mem::replace(&mut self.begun, true)
    }

    /// The statement of `sql`, prepared with parameters of `types` on first use.
    async fn prepared(
        &mut self,
        sql: &str,
        types: &[Type],
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        // Outside the transaction (statements belong to the session): a prepared statement
        // is no reason to send `BEGIN` alone.
        let statement = self.client.prepare_typed(sql, types).await?;
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
        let begin = self.begins();
        Self::run(self.client, begin, self.client.execute(&statement, params)).await
    }

    /// Runs a query of `sql` with `params` of `types`; returns its rows.
    pub(crate) async fn query(
        &mut self,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepared(sql, types).await?;
        let begin = self.begins();
        Self::run(self.client, begin, self.client.query(&statement, params)).await
    }

    /// Runs one statement without parameters (DDL, `TRUNCATE`) through the extended
    /// protocol, unprepared: PostgreSQL refuses a text holding several statements there
    /// ("cannot insert multiple commands into a prepared statement"), so a name or type that
    /// smuggled a second statement in can never run it.
    pub(crate) async fn ddl(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        let begin = self.begins();
        Self::run(self.client, begin, async {
            self.client.execute(sql, &[]).await.map(|_| ())
        })
        .await
    }

    /// `COPY … FROM STDIN` (`sql`) of `data` in COPY's text format; returns the rows copied.
    pub(crate) async fn copy_in(
        &mut self,
        sql: &str,
        data: Bytes,
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepared(sql, &[]).await?;
        let begin = self.begins();
        let client = self.client;
        let copy = async move {
            let sink = client.copy_in::<_, Bytes>(&statement).await?;
            futures::pin_mut!(sink);
            sink.send(data).await?;
            sink.finish().await
        };
        Self::run(client, begin, copy).await
    }

    /// Commits (nothing to send when no statement ran).
    pub(crate) async fn commit(mut self) -> Result<(), SinkError> {
        if !self.begun {
            return Ok(());
        }
        self.ended = true;
        self.client
            .batch_execute("COMMIT")
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
