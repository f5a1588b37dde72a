//! Change events, their source metadata and schemas as Python objects.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyString;
use walbrook_client::{ChangeEvent as RustEvent, Column as RustColumn, EventSchema};

use crate::errors::{to_py, unit};
use crate::runtime;
use crate::values::classes;

/// Where and when a change happened.
#[pyclass(module = "walbrook._walbrook", frozen, get_all)]
pub struct Source {
    /// Source database name.
    database: String,
    /// Schema (namespace) of the table.
    schema: String,
    /// Table name.
    table: String,
    /// Transaction id (32 bits, as pgoutput reports it).
    xid: i64,
    /// The commit LSN of the transaction: the event's position (`walbrook.Lsn`).
    commit_lsn: Py<PyAny>,
    /// The change's own WAL position (`walbrook.Lsn`).
    lsn: Py<PyAny>,
    /// Commit time (aware, UTC).
    commit_time: Py<PyAny>,
    /// 0-based index of the event in its transaction.
    ordinal: u64,
    /// Whether this is the transaction's last event.
    last: bool,
    /// When the producer encoded the event (aware, UTC).
    sent_at: Py<PyAny>,
}

#[pymethods]
impl Source {
    fn __repr__(&self) -> String {
        format!(
            "<walbrook.Source {}.{}.{} xid {} ordinal {}>",
            self.database, self.schema, self.table, self.xid, self.ordinal
        )
    }
}

/// Column names as Python strings, per row shape (made once per schema version, so building
/// a row dict allocates no key strings).
#[derive(Default)]
pub struct Names {
    by_columns: HashMap<usize, NamesOf>,
}

/// The column names of one row shape, as Rust and as Python strings.
struct NamesOf {
    rust: Vec<String>,
    python: Arc<[Py<PyString>]>,
}

impl Names {
    fn of(&mut self, py: Python<'_>, columns: &[RustColumn]) -> Arc<[Py<PyString>]> {
        // Keyed by the address of the schema's column list (schemas live as long as the
        // client's cache); checked by name, so a reused address cannot give wrong keys.
        let key = columns.as_ptr() as usize;
        if let Some(kept) = self.by_columns.get(&key)
            && kept.rust.len() == columns.len()
            && kept.rust.iter().zip(columns).all(|(k, c)| *k == c.name)
        {
            return kept.python.clone();
        }
        let names: Arc<[Py<PyString>]> = columns
            .iter()
            .map(|c| PyString::intern(py, &c.name).unbind())
            .collect();
        let rust = columns.iter().map(|c| c.name.clone()).collect();
        self.by_columns.insert(
            key,
            NamesOf {
                rust,
                python: names.clone(),
            },
        );
        names
    }
}

/// One change of one row (or a truncate), with native Python values.
#[pyclass(module = "walbrook._walbrook", frozen)]
pub struct ChangeEvent {
    inner: RustEvent,
    source: Py<Source>,
    before: Py<PyAny>,
    after: Py<PyAny>,
}

impl ChangeEvent {
    /// Converts an SDK event (with the GIL). `names` caches the column names.
    pub fn new(py: Python<'_>, event: RustEvent, names: &mut Names) -> PyResult<ChangeEvent> {
        let c = classes(py)?;
        let s = event.source();
        let source = Source {
            database: s.database.clone(),
            schema: s.schema.clone(),
            table: s.table.clone(),
            xid: s.xid,
            commit_lsn: c.lsn.call1(py, (s.commit_lsn.0,))?,
            lsn: c.lsn.call1(py, (s.lsn.0,))?,
            commit_time: c.timestamp(py, s.commit_time.timestamp_micros(), true)?,
            ordinal: s.ordinal,
            last: s.last,
            sent_at: c.timestamp(py, s.sent_at.timestamp_micros(), true)?,
        };
        let mut row = |row: Option<&walbrook_client::Row>| -> PyResult<Py<PyAny>> {
            match row {
                None => Ok(py.None()),
                Some(row) => {
                    let keys = names.of(py, row.columns());
                    c.row(py, &keys, row)
                }
            }
        };
        let before = row(event.before())?;
        let after = row(event.after())?;
        Ok(ChangeEvent {
            source: Py::new(py, source)?,
            before,
            after,
            inner: event,
        })
    }
}

#[pymethods]
impl ChangeEvent {
    /// The operation: `"insert"`, `"update"`, `"update_key"`, `"delete"`, `"truncate"` or
    /// `"read"` (a snapshot row).
    #[getter]
    fn op(&self) -> &'static str {
        self.inner.op().as_str()
    }

    /// Where and when.
    #[getter]
    fn source(&self, py: Python<'_>) -> Py<Source> {
        self.source.clone_ref(py)
    }

    /// `"schema.table"`.
    #[getter]
    fn table(&self) -> String {
        let s = self.inner.source();
        format!("{}.{}", s.schema, s.table)
    }

    /// The old row (dict) for `update_key`/`delete` (and `update` under REPLICA IDENTITY
    /// FULL), else `None`.
    #[getter]
    fn before(&self, py: Python<'_>) -> Py<PyAny> {
        self.before.clone_ref(py)
    }

    /// The new row (dict) for `insert`, `update`, `update_key` and `read`, else `None`.
    #[getter]
    fn after(&self, py: Python<'_>) -> Py<PyAny> {
        self.after.clone_ref(py)
    }

    /// The commit LSN (`walbrook.Lsn`): with `ordinal` it identifies the event forever.
    #[getter]
    fn commit_lsn(&self, py: Python<'_>) -> Py<PyAny> {
        self.source.get().commit_lsn.clone_ref(py)
    }

    /// Index of the event in its transaction.
    #[getter]
    fn ordinal(&self) -> u64 {
        self.inner.ordinal()
    }

    /// The writer schema's fingerprint (16 hex digits).
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.fingerprint().to_string()
    }

    /// The NATS subject it was stored under (empty when decoded offline).
    #[getter]
    fn subject(&self) -> &str {
        self.inner.subject()
    }

    /// The JetStream stream sequence (0 when decoded offline).
    #[getter]
    fn stream_sequence(&self) -> u64 {
        self.inner.stream_sequence()
    }

    /// 0-based index of the event within its stream message (0 unless the message carries
    /// several events, docs/protocol.md §3.6). The events of one message share its
    /// `stream_sequence`.
    #[getter]
    fn message_index(&self) -> u32 {
        self.inner.message_index()
    }

    /// How many events the event's stream message carries (1 for a message of its own).
    #[getter]
    fn message_events(&self) -> u32 {
        self.inner.message_events()
    }

    /// How many times JetStream delivered it (more than 1 after a redelivery).
    #[getter]
    fn delivered(&self) -> u64 {
        self.inner.delivered()
    }

    /// The event as JSON text (the SDK's lossless JSON form, docs/client.md).
    fn to_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
    }

    /// Acknowledges the event on a durable subscription and waits for the server to confirm
    /// it: a durable subscription resumed later starts after it. A no-op on an ephemeral one.
    fn ack(&self, py: Python<'_>) -> PyResult<()> {
        let event = self.inner.clone();
        runtime::block_on(py, async move { event.ack().await })?.map_err(|e| to_py(py, e))
    }

    /// Asks a durable subscription to deliver the event again. A no-op on an ephemeral one.
    fn nak(&self, py: Python<'_>) -> PyResult<()> {
        let event = self.inner.clone();
        runtime::block_on(py, async move { event.nak().await })?.map_err(|e| to_py(py, e))
    }

    /// `ack()` as a coroutine.
    fn ack_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let event = self.inner.clone();
        runtime::spawn_async(py, async move { event.ack().await }, unit, |_| {})
    }

    /// `nak()` as a coroutine.
    fn nak_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let event = self.inner.clone();
        runtime::spawn_async(py, async move { event.nak().await }, unit, |_| {})
    }

    fn __repr__(&self) -> String {
        let s = self.inner.source();
        format!(
            "<walbrook.ChangeEvent {} {}.{} at {} #{}>",
            self.inner.op(),
            s.schema,
            s.table,
            s.commit_lsn,
            s.ordinal
        )
    }
}

/// A column of a schema version.
#[pyclass(module = "walbrook._walbrook", frozen, get_all)]
pub struct Column {
    /// Column name.
    name: String,
    /// Type as PostgreSQL prints it (`numeric(10,2)`).
    type_name: String,
    /// Type OID.
    oid: u32,
    /// Part of the replica identity (the primary key by default).
    is_key: bool,
    /// Declared NOT NULL.
    not_null: bool,
}

#[pymethods]
impl Column {
    fn __repr__(&self) -> String {
        format!("<walbrook.Column {} {}>", self.name, self.type_name)
    }
}

/// One schema version of a table's change events.
#[pyclass(module = "walbrook._walbrook", frozen)]
pub struct Schema {
    pub(crate) inner: Arc<EventSchema>,
}

#[pymethods]
impl Schema {
    /// Its fingerprint (16 hex digits).
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.fingerprint().to_string()
    }

    /// `"schema.table"`.
    #[getter]
    fn table(&self) -> &str {
        self.inner.table()
    }

    /// The Avro schema JSON text, as the producer registered it.
    #[getter]
    fn schema_json(&self) -> &str {
        self.inner.schema_json()
    }

    /// The columns (of the `after` row: all of them).
    #[getter]
    fn columns(&self) -> Vec<Column> {
        self.inner
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                oid: c.oid,
                is_key: c.is_key,
                not_null: c.not_null,
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "<walbrook.Schema {} {}>",
            self.inner.table(),
            self.inner.fingerprint()
        )
    }
}
