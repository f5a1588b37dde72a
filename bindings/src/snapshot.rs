//! Snapshots: `Client.snapshot(...)` requests one, `Client.snapshots(...)` lists them,
//! `Client.read_snapshot(id)` reads one again. A `Snapshot` is iterated with `for` or
//! `async for` like a subscription; its rows are `ChangeEvent`s with op `"read"`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};
use walbrook_client::{
    FilterOp, Lsn, RowFilter, Snapshot as RustSnapshot, SnapshotInfo as RustInfo, SnapshotRequest,
};

use crate::errors::new_error;
use crate::event::ChangeEvent;
use crate::runtime;
use crate::subscription::{Next, Shared, next_async, seconds};
use crate::values::classes;

fn config_error(py: Python<'_>, text: String) -> PyErr {
    new_error(py, "config", text)
}

/// A `FilterOp` from its Python spelling (the protocol's: `"="`, `"<>"`/`"!="`, `"<"`,
/// `"<="`, `">"`, `">="`, `"is_null"`, `"is_not_null"`).
fn filter_op(py: Python<'_>, text: &str) -> PyResult<FilterOp> {
    Ok(match text {
        "=" | "==" => FilterOp::Eq,
        "<>" | "!=" => FilterOp::Ne,
        "<" => FilterOp::Lt,
        "<=" => FilterOp::Le,
        ">" => FilterOp::Gt,
        ">=" => FilterOp::Ge,
        "is_null" => FilterOp::IsNull,
        "is_not_null" => FilterOp::IsNotNull,
        other => {
            return Err(config_error(
                py,
                format!(
                    "filter operator {other:?}: use =, <>, <, <=, >, >=, is_null or is_not_null"
                ),
            ));
        }
    })
}

/// `filter=(column, op, value)` (or `(column, "is_null")`) as a `RowFilter`. The value is
/// `str`, `int`, `float` or `bool`: PostgreSQL's text input form for the column's type.
fn row_filter(py: Python<'_>, filter: &Bound<'_, PyAny>) -> PyResult<RowFilter> {
    let parts: Vec<Bound<'_, PyAny>> = filter.extract().map_err(|_| {
        config_error(
            py,
            "filter must be a tuple (column, operator, value) or (column, operator)".into(),
        )
    })?;
    let (column, op, value) = match parts.as_slice() {
        [column, op] => (column, op, None),
        [column, op, value] => (column, op, Some(value)),
        _ => {
            return Err(config_error(
                py,
                "filter must be a tuple (column, operator, value) or (column, operator)".into(),
            ));
        }
    };
    let column: String = column.extract()?;
    let op = filter_op(py, &op.extract::<String>()?)?;
    let value = match value {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.is_instance_of::<PyBool>() => Some(serde_json::Value::Bool(v.extract()?)),
        Some(v) if v.is_instance_of::<PyInt>() => {
            Some(serde_json::Value::from(v.extract::<i64>()?))
        }
        Some(v) if v.is_instance_of::<PyFloat>() => Some(
            serde_json::Number::from_f64(v.extract()?)
                .map(serde_json::Value::Number)
                .ok_or_else(|| config_error(py, "filter value must be a finite number".into()))?,
        ),
        Some(v) if v.is_instance_of::<PyString>() => Some(serde_json::Value::String(v.extract()?)),
        Some(v) => Some(serde_json::Value::String(v.str()?.to_cow()?.into_owned())),
    };
    Ok(RowFilter { column, op, value })
}

/// The Rust request of `Client.snapshot(table, filter=, chunk_size=, stall_timeout=)`.
pub(crate) fn request(
    py: Python<'_>,
    table: String,
    filter: Option<&Bound<'_, PyAny>>,
    chunk_size: Option<u32>,
    stall_timeout: f64,
) -> PyResult<SnapshotRequest> {
    let mut request = SnapshotRequest::table(table).stall_timeout(stall(py, stall_timeout)?);
    if let Some(filter) = filter.filter(|f| !f.is_none()) {
        request = request.filter(row_filter(py, filter)?);
    }
    if let Some(rows) = chunk_size {
        request = request.chunk_size(rows);
    }
    Ok(request)
}

/// `stall_timeout` seconds.
pub(crate) fn stall(py: Python<'_>, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| config_error(py, "stall_timeout must be positive seconds".into()))
}

/// A snapshot's description: as accepted by the producer, or as listed.
#[pyclass(module = "walbrook._walbrook", frozen)]
pub struct SnapshotInfo {
    inner: RustInfo,
}

#[pymethods]
impl SnapshotInfo {
    /// The snapshot id.
    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }

    /// `"schema.table"`.
    #[getter]
    fn table(&self) -> String {
        format!("{}.{}", self.inner.schema, self.inner.table)
    }

    /// The source database.
    #[getter]
    fn database(&self) -> &str {
        &self.inner.database
    }

    /// The consistent position (`walbrook.Lsn`): apply the rows, then subscribe with
    /// `start=position` (events whose commit LSN is at or after it).
    #[getter]
    fn position(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let lsn: Lsn = self.inner.position.parse().map_err(|_| {
            new_error(
                py,
                "protocol",
                format!("snapshot position {:?} is not an LSN", self.inner.position),
            )
        })?;
        classes(py)?.lsn.call1(py, (lsn.0,))
    }

    /// The fingerprint (16 hex digits) of the rows' writer schema.
    #[getter]
    fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// PostgreSQL's row estimate when the snapshot started (`None` if never analysed).
    #[getter]
    fn approx_rows(&self) -> Option<i64> {
        self.inner.approx_rows
    }

    /// Rows per chunk.
    #[getter]
    fn chunk_size(&self) -> u32 {
        self.inner.chunk_size
    }

    /// Whether the table was read in key-ordered chunks (`False`: one transaction).
    #[getter]
    fn keyed(&self) -> bool {
        self.inner.keyed
    }

    /// `"running"`, `"done"` or `"failed"` when this description was made.
    #[getter]
    fn status(&self) -> &'static str {
        self.inner.status.as_str()
    }

    /// Rows published when this description was made (all of them once `"done"`).
    #[getter]
    fn rows(&self) -> u64 {
        self.inner.rows
    }

    /// Why it failed, if it did.
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.error.as_deref()
    }

    /// Start time (RFC 3339, UTC).
    #[getter]
    fn started_at(&self) -> &str {
        &self.inner.started_at
    }

    /// End time (RFC 3339, UTC), if it ended.
    #[getter]
    fn ended_at(&self) -> Option<&str> {
        self.inner.ended_at.as_deref()
    }

    /// The NATS subject carrying its messages.
    #[getter]
    fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// The JetStream stream holding them.
    #[getter]
    fn stream(&self) -> &str {
        &self.inner.stream
    }

    fn __repr__(&self) -> String {
        format!(
            "<walbrook.SnapshotInfo {} of {}.{} {} ({} rows)>",
            self.inner.id,
            self.inner.schema,
            self.inner.table,
            self.inner.status.as_str(),
            self.inner.rows
        )
    }
}

impl SnapshotInfo {
    pub(crate) fn new(inner: RustInfo) -> SnapshotInfo {
        SnapshotInfo { inner }
    }
}

/// A snapshot being read. Iterating it yields its rows (`ChangeEvent`s with op `"read"`)
/// and stops only once every row arrived (the producer's `end` message, with a matching
/// count). A snapshot that failed raises `SnapshotFailedError`; one that stalls longer than
/// `stall_timeout` raises `TimeoutError`; either is the last item.
#[pyclass(module = "walbrook._walbrook", frozen)]
pub struct Snapshot {
    shared: Arc<Shared>,
    info: Py<SnapshotInfo>,
    received: Arc<AtomicU64>,
}

impl Snapshot {
    pub(crate) fn new(py: Python<'_>, snapshot: RustSnapshot) -> PyResult<Snapshot> {
        let info = Py::new(py, SnapshotInfo::new(snapshot.info().clone()))?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let rows = snapshot.inspect(move |row| {
            if row.is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Snapshot {
            shared: Arc::new(Shared::new(Box::pin(rows))),
            info,
            received,
        })
    }
}

#[pymethods]
impl Snapshot {
    /// The snapshot's description (`SnapshotInfo`).
    #[getter]
    fn info(&self, py: Python<'_>) -> Py<SnapshotInfo> {
        self.info.clone_ref(py)
    }

    /// The snapshot id.
    #[getter]
    fn id(&self) -> &str {
        &self.info.get().inner.id
    }

    /// The consistent position (`walbrook.Lsn`; see `SnapshotInfo.position`).
    #[getter]
    fn position(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.info.get().position(py)
    }

    /// The fingerprint of the rows' writer schema.
    #[getter]
    fn fingerprint(&self) -> &str {
        &self.info.get().inner.fingerprint
    }

    /// PostgreSQL's row estimate when the snapshot started (`None` if unknown).
    #[getter]
    fn approx_rows(&self) -> Option<i64> {
        self.info.get().inner.approx_rows
    }

    /// Rows received so far.
    #[getter]
    fn rows_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<ChangeEvent> {
        let shared = self.shared.clone();
        match runtime::block_on(py, async move { shared.next(None).await })? {
            Next::Item(item) => self.shared.convert(py, *item),
            Next::Ended | Next::TimedOut => Err(PyStopIteration::new_err(())),
        }
    }

    /// The next row, waiting at most `timeout` seconds (forever when `None`); `None` when
    /// the timeout passed or the snapshot ended. Raises like iteration does.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<ChangeEvent>> {
        let timeout = seconds(timeout)?;
        let shared = self.shared.clone();
        match runtime::block_on(py, async move { shared.next(timeout).await })? {
            Next::Item(item) => self.shared.convert(py, *item).map(Some),
            Next::Ended | Next::TimedOut => Ok(None),
        }
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        next_async(py, &self.shared, None, true)
    }

    /// `next(timeout)` as a coroutine.
    #[pyo3(signature = (timeout=None))]
    fn next_async<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = seconds(timeout)?;
        next_async(py, &self.shared, timeout, false)
    }

    /// Stops reading (the snapshot stays retained and can be read again).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let shared = self.shared.clone();
        runtime::block_on(py, async move { shared.close().await })
    }

    fn __repr__(&self) -> String {
        let info = &self.info.get().inner;
        format!(
            "<walbrook.Snapshot {} of {}.{} ({} rows received)>",
            info.id,
            info.schema,
            info.table,
            self.received.load(Ordering::Relaxed)
        )
    }
}
