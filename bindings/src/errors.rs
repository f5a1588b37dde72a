//! `walbrook_client::Error` as Python exceptions (classes in `walbrook/_errors.py`, one per
//! `ErrorKind`), and the undecoded message an exception may carry.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict};
use walbrook_client::{Error, ErrorKind, UndecodedMessage as RustUndecoded};

use crate::runtime;

static KINDS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
static BASE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The name of a kind, as the Python classes' `kind` attribute spells it.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Connect => "connect",
        ErrorKind::Auth => "auth",
        ErrorKind::Config => "config",
        ErrorKind::SchemaNotFound => "schema_not_found",
        ErrorKind::Decode => "decode",
        ErrorKind::Protocol => "protocol",
        ErrorKind::Nats => "nats",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Server => "server",
        ErrorKind::StreamNotFound => "stream_not_found",
        ErrorKind::Rejected => "rejected",
        ErrorKind::Busy => "busy",
        ErrorKind::SnapshotFailed => "snapshot_failed",
        ErrorKind::Gap => "gap",
        _ => "unknown",
    }
}

/// A Walbrook exception of `kind` with `text`, not about a message.
pub fn new_error(py: Python<'_>, kind: &str, text: String) -> PyErr {
    match build(py, kind, text, false, None) {
        Ok(err) => err,
        Err(err) => err,
    }
}

fn build(
    py: Python<'_>,
    kind: &str,
    text: String,
    retryable: bool,
    message: Option<RustUndecoded>,
) -> PyResult<PyErr> {
    let kinds = KINDS.get_or_try_init(py, || {
        let module = py.import("walbrook._errors")?;
        Ok::<_, PyErr>(module.getattr("KINDS")?.cast_into::<PyDict>()?.unbind())
    })?;
    let class = match kinds.bind(py).get_item(kind)? {
        Some(class) => class,
        None => BASE
            .get_or_try_init(py, || {
                Ok::<_, PyErr>(
                    py.import("walbrook._errors")?
                        .getattr("WalbrookError")?
                        .unbind(),
                )
            })?
            .bind(py)
            .clone(),
    };
    let exception = class.call1((text,))?;
    if kind == "unknown" {
        exception.setattr("retryable", retryable)?;
    }
    if let Some(message) = message {
        exception.setattr("stream_sequence", message.stream_sequence)?;
        exception.setattr("message", UndecodedMessage { inner: message })?;
    }
    Ok(PyErr::from_value(exception))
}

/// The Python exception of a client error.
pub fn to_py(py: Python<'_>, error: Error) -> PyErr {
    let kind = kind_name(error.kind());
    match build(
        py,
        kind,
        error.to_string(),
        error.is_retryable(),
        error.message().cloned(),
    ) {
        Ok(err) => err,
        Err(err) => err,
    }
}

/// A stream message the client could not turn into an event (attached to a `DecodeError`,
/// `SchemaNotFoundError`… as `message`). On a durable subscription it stays unacknowledged
/// until you `ack()` (after storing it elsewhere), `term()` (never deliver again) or
/// `nak()` (deliver again now) it, or `ack_wait` passes.
#[pyclass(module = "walbrook._walbrook", frozen)]
pub struct UndecodedMessage {
    inner: RustUndecoded,
}

#[pymethods]
impl UndecodedMessage {
    /// The NATS subject it was stored under.
    #[getter]
    fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// Its JetStream stream sequence.
    #[getter]
    fn stream_sequence(&self) -> u64 {
        self.inner.stream_sequence
    }

    /// Its payload, as stored.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.payload)
    }

    /// Its headers (name → list of values).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        if let Some(headers) = &self.inner.headers {
            for (name, values) in headers.iter() {
                let values: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
                dict.set_item(name.to_string(), values)?;
            }
        }
        Ok(dict)
    }

    /// Acknowledges it (durable subscriptions; a no-op otherwise).
    fn ack(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.inner.clone();
        runtime::block_on(py, async move { m.ack().await })?.map_err(|e| to_py(py, e))
    }

    /// Asks for it to be delivered again now (durable subscriptions; a no-op otherwise).
    fn nak(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.inner.clone();
        runtime::block_on(py, async move { m.nak().await })?.map_err(|e| to_py(py, e))
    }

    /// Tells the server never to deliver it again (durable subscriptions; a no-op otherwise).
    fn term(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.inner.clone();
        runtime::block_on(py, async move { m.term().await })?.map_err(|e| to_py(py, e))
    }

    /// `ack()` as a coroutine.
    fn ack_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let m = self.inner.clone();
        runtime::spawn_async(py, async move { m.ack().await }, unit, |_| {})
    }

    /// `term()` as a coroutine.
    fn term_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let m = self.inner.clone();
        runtime::spawn_async(py, async move { m.term().await }, unit, |_| {})
    }

    fn __repr__(&self) -> String {
        format!(
            "<walbrook.UndecodedMessage {} on {} ({} bytes)>",
            self.inner.stream_sequence,
            self.inner.subject,
            self.inner.payload.len()
        )
    }
}

/// Converts a `Result<(), Error>` for an asyncio future.
pub fn unit(py: Python<'_>, result: Result<(), Error>) -> PyResult<Py<PyAny>> {
    result.map(|()| py.None()).map_err(|e| to_py(py, e))
}
