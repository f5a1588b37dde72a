//! `walbrook.Client`: connect, subscribe, look up schemas.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyString;
use walbrook_client::{
    Client as RustClient, ClientOptions, Credentials, Fingerprint, Lsn, Start,
    Subscription as RustSubscription,
};

use crate::errors::{new_error, to_py};
use crate::event::Schema;
use crate::runtime;
use crate::snapshot::{Snapshot, SnapshotInfo};
use crate::subscription::Subscription;
use crate::values::classes;

/// A connection to one source database's Walbrook subjects (one NATS connection, shared by
/// every subscription and schema lookup of the client).
#[pyclass(module = "walbrook._walbrook", frozen)]
pub struct Client {
    inner: RustClient,
}

fn config_error(py: Python<'_>, text: String) -> PyErr {
    new_error(py, "config", text)
}

#[allow(clippy::too_many_arguments)]
fn options(
    py: Python<'_>,
    servers: &Bound<'_, PyAny>,
    database: String,
    root: String,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    creds_file: Option<PathBuf>,
    nkey_seed: Option<String>,
    tls_ca: Option<PathBuf>,
    require_tls: bool,
    name: String,
    request_timeout: f64,
    connect_timeout: f64,
) -> PyResult<ClientOptions> {
    let servers: Vec<String> = if let Ok(one) = servers.cast::<PyString>() {
        one.to_cow()?
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    } else {
        servers.extract()?
    };
    let mut servers = servers.into_iter().filter(|s| !s.is_empty());
    let first = servers
        .next()
        .ok_or_else(|| config_error(py, "no NATS server given".into()))?;
    let mut options = ClientOptions::new(first, database).root(root);
    for server in servers {
        options = options.server(server);
    }
    options.credentials = match (user, token, creds_file, nkey_seed) {
        (Some(user), None, None, None) => Credentials::UserPassword {
            user,
            password: password.unwrap_or_default(),
        },
        (None, None, None, None) if password.is_some() => {
            return Err(config_error(py, "password without user".into()));
        }
        (None, Some(token), None, None) => Credentials::Token(token),
        (None, None, Some(path), None) => Credentials::CredsFile(path),
        (None, None, None, Some(seed)) => Credentials::NKey(seed),
        (None, None, None, None) => Credentials::None,
        _ => {
            return Err(config_error(
                py,
                "give one of user/password, token, creds_file, nkey_seed".into(),
            ));
        }
    };
    if let Some(ca) = tls_ca {
        options = options.tls_ca(ca);
    }
    options.require_tls |= require_tls;
    options.name = name;
    let secs = |what: &str, s: f64| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| config_error(py, format!("{what} must be a positive number of seconds")))
    };
    options.request_timeout = secs("request_timeout", request_timeout)?;
    options.connect_timeout = secs("connect_timeout", connect_timeout)?;
    Ok(options)
}

/// `start=`: `"beginning"`, `"new"`, an aware `datetime`, or a commit position (an `int` /
/// `walbrook.Lsn`, or LSN text `"X/Y"`).
fn start(py: Python<'_>, start: &Bound<'_, PyAny>) -> PyResult<Start> {
    if let Ok(text) = start.cast::<PyString>() {
        let text = text.to_cow()?;
        let text = text.as_ref();
        return match text {
            "beginning" => Ok(Start::Beginning),
            "new" => Ok(Start::New),
            _ => text.parse::<Lsn>().map(Start::CommitPosition).map_err(|_| {
                config_error(
                    py,
                    format!("start {text:?}: use \"beginning\", \"new\", a datetime or an LSN"),
                )
            }),
        };
    }
    let c = classes(py)?;
    if start.is_instance(c.datetime.bind(py))? {
        if start.getattr("tzinfo")?.is_none() {
            return Err(config_error(
                py,
                "start datetime must be timezone-aware".into(),
            ));
        }
        let utc = start.call_method1("astimezone", (c.utc.bind(py),))?;
        let field = |name: &str| -> PyResult<u32> { utc.getattr(name)?.extract() };
        let time = chrono::NaiveDate::from_ymd_opt(
            utc.getattr("year")?.extract()?,
            field("month")?,
            field("day")?,
        )
        .and_then(|d| {
            d.and_hms_micro_opt(
                field("hour").ok()?,
                field("minute").ok()?,
                field("second").ok()?,
                field("microsecond").ok()?,
            )
        })
        .ok_or_else(|| config_error(py, "start datetime out of range".into()))?
        .and_utc();
        return Ok(Start::Time(time));
    }
    if let Ok(position) = start.extract::<u64>() {
        return Ok(Start::CommitPosition(Lsn(position)));
    }
    Err(config_error(
        py,
        format!(
            "start {}: use \"beginning\", \"new\", a datetime or an LSN",
            start.repr()?
        ),
    ))
}

fn subscription(
    py: Python<'_>,
    tables: &Bound<'_, PyAny>,
    start_at: Option<&Bound<'_, PyAny>>,
    durable: Option<String>,
    prefetch: usize,
    ack_wait: f64,
    dead_letter: Option<String>,
) -> PyResult<RustSubscription> {
    let patterns: Vec<String> = if let Ok(one) = tables.cast::<PyString>() {
        vec![one.to_cow()?.to_string()]
    } else {
        tables.extract()?
    };
    let mut sub = RustSubscription::tables(patterns)
        .start(match start_at {
            Some(s) => start(py, s)?,
            None => Start::Beginning,
        })
        .prefetch(prefetch)
        .ack_wait(
            Duration::try_from_secs_f64(ack_wait)
                .map_err(|_| config_error(py, "ack_wait must be positive seconds".into()))?,
        );
    if let Some(name) = durable {
        sub = sub.durable(name);
    }
    if let Some(name) = dead_letter {
        sub = sub.dead_letter(name);
    }
    Ok(sub)
}

fn fingerprint(py: Python<'_>, text: &str) -> PyResult<Fingerprint> {
    text.parse()
        .map_err(|e| config_error(py, format!("fingerprint {text:?}: {e}")))
}

#[pymethods]
impl Client {
    /// Connects (blocking). `servers` is a URL, a comma-separated list or a list of URLs.
    /// Raises `AuthError` on rejected credentials, `ConfigError` on unusable options and
    /// `ConnectError` (retryable) when no server answers.
    #[staticmethod]
    #[pyo3(signature = (servers, database, *, root="WALBROOK".to_string(), user=None,
        password=None, token=None, creds_file=None, nkey_seed=None, tls_ca=None,
        require_tls=false, name="walbrook-python".to_string(), request_timeout=5.0,
        connect_timeout=10.0))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        py: Python<'_>,
        servers: &Bound<'_, PyAny>,
        database: String,
        root: String,
        user: Option<String>,
        password: Option<String>,
        token: Option<String>,
        creds_file: Option<PathBuf>,
        nkey_seed: Option<String>,
        tls_ca: Option<PathBuf>,
        require_tls: bool,
        name: String,
        request_timeout: f64,
        connect_timeout: f64,
    ) -> PyResult<Client> {
        let options = options(
            py,
            servers,
            database,
            root,
            user,
            password,
            token,
            creds_file,
            nkey_seed,
            tls_ca,
            require_tls,
            name,
            request_timeout,
            connect_timeout,
        )?;
        let inner =
            runtime::block_on(py, RustClient::connect(options))?.map_err(|e| to_py(py, e))?;
        Ok(Client { inner })
    }

    /// `connect()` as a coroutine.
    #[staticmethod]
    #[pyo3(signature = (servers, database, *, root="WALBROOK".to_string(), user=None,
        password=None, token=None, creds_file=None, nkey_seed=None, tls_ca=None,
        require_tls=false, name="walbrook-python".to_string(), request_timeout=5.0,
        connect_timeout=10.0))]
    #[allow(clippy::too_many_arguments)]
    fn connect_async<'py>(
        py: Python<'py>,
        servers: &Bound<'py, PyAny>,
        database: String,
        root: String,
        user: Option<String>,
        password: Option<String>,
        token: Option<String>,
        creds_file: Option<PathBuf>,
        nkey_seed: Option<String>,
        tls_ca: Option<PathBuf>,
        require_tls: bool,
        name: String,
        request_timeout: f64,
        connect_timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = options(
            py,
            servers,
            database,
            root,
            user,
            password,
            token,
            creds_file,
            nkey_seed,
            tls_ca,
            require_tls,
            name,
            request_timeout,
            connect_timeout,
        )?;
        runtime::spawn_async(
            py,
            RustClient::connect(options),
            |py, result| match result {
                Ok(inner) => Ok(Py::new(py, Client { inner })?.into_any()),
                Err(e) => Err(to_py(py, e)),
            },
            |_| {},
        )
    }

    /// Starts reading change events of `tables` (`"schema.table"`, `"schema.*"`, `"*"`, or a
    /// list of them).
    ///
    /// `start`: `"beginning"` (default), `"new"`, an aware `datetime` (events stored at or
    /// after it) or a commit position (`walbrook.Lsn`, `int`, or `"X/Y"`: events whose
    /// commit LSN is at least it). `durable`: a consumer name for explicit acknowledgements
    /// and resuming (its `start` applies only when it is created). `prefetch`: the most
    /// messages buffered ahead. `ack_wait`: seconds before an unacknowledged event of a
    /// durable subscription is delivered again. `dead_letter`: a name; messages that cannot
    /// be decoded (a definite error) are then stored on `<root>.<db>.dlq.<name>` with
    /// diagnostic headers and acknowledged instead of raising (docs/python.md).
    #[pyo3(signature = (tables, *, start=None,
        durable=None, prefetch=256, ack_wait=30.0, dead_letter=None))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &self,
        py: Python<'_>,
        tables: &Bound<'_, PyAny>,
        start: Option<Bound<'_, PyAny>>,
        durable: Option<String>,
        prefetch: usize,
        ack_wait: f64,
        dead_letter: Option<String>,
    ) -> PyResult<Subscription> {
        let sub = subscription(
            py,
            tables,
            start.as_ref(),
            durable,
            prefetch,
            ack_wait,
            dead_letter,
        )?;
        let client = self.inner.clone();
        let stream = runtime::block_on(py, async move { client.subscribe(sub).await })?
            .map_err(|e| to_py(py, e))?;
        Ok(Subscription::new(stream))
    }

    /// `subscribe()` as a coroutine.
    #[pyo3(signature = (tables, *, start=None,
        durable=None, prefetch=256, ack_wait=30.0, dead_letter=None))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe_async<'py>(
        &self,
        py: Python<'py>,
        tables: &Bound<'py, PyAny>,
        start: Option<Bound<'_, PyAny>>,
        durable: Option<String>,
        prefetch: usize,
        ack_wait: f64,
        dead_letter: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sub = subscription(
            py,
            tables,
            start.as_ref(),
            durable,
            prefetch,
            ack_wait,
            dead_letter,
        )?;
        let client = self.inner.clone();
        runtime::spawn_async(
            py,
            async move { client.subscribe(sub).await },
            |py, result| match result {
                Ok(stream) => Ok(Py::new(py, Subscription::new(stream))?.into_any()),
                Err(e) => Err(to_py(py, e)),
            },
            |_| {},
        )
    }

    /// The schema version of a fingerprint (16 hex digits), from the cache or the lookup
    /// RPC. Raises `SchemaNotFoundError` for an unknown one.
    fn schema(&self, py: Python<'_>, fingerprint_text: &str) -> PyResult<Schema> {
        let fp = fingerprint(py, fingerprint_text)?;
        let client = self.inner.clone();
        let inner = runtime::block_on(py, async move { client.schema(fp).await })?
            .map_err(|e| to_py(py, e))?;
        Ok(Schema { inner })
    }

    /// `schema()` as a coroutine.
    fn schema_async<'py>(
        &self,
        py: Python<'py>,
        fingerprint_text: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fp = fingerprint(py, fingerprint_text)?;
        let client = self.inner.clone();
        runtime::spawn_async(
            py,
            async move { client.schema(fp).await },
            |py, result| match result {
                Ok(inner) => Ok(Py::new(py, Schema { inner })?.into_any()),
                Err(e) => Err(to_py(py, e)),
            },
            |_| {},
        )
    }

    /// Deletes a durable consumer (its position is lost). Returns whether it existed.
    fn delete_durable(&self, py: Python<'_>, name: String) -> PyResult<bool> {
        let client = self.inner.clone();
        runtime::block_on(py, async move { client.delete_durable(&name).await })?
            .map_err(|e| to_py(py, e))
    }

    /// `delete_durable()` as a coroutine.
    fn delete_durable_async<'py>(
        &self,
        py: Python<'py>,
        name: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        runtime::spawn_async(
            py,
            async move { client.delete_durable(&name).await },
            |py, result| match result {
                Ok(existed) => Ok(existed.into_pyobject(py)?.to_owned().into_any().unbind()),
                Err(e) => Err(to_py(py, e)),
            },
            |_| {},
        )
    }

    /// Requests a snapshot of one table (`"schema.table"`) and starts reading it: iterate
    /// the returned `Snapshot` with `for` (or use `snapshot_async` and `async for`).
    ///
    /// `filter`: `(column, operator, value)` or `(column, "is_null")` — operators `=`,
    /// `<>`, `<`, `<=`, `>`, `>=`, `is_null`, `is_not_null`; the value in PostgreSQL's text
    /// form (`str`, `int`, `float`, `bool`). `chunk_size`: rows per chunk (1 to 100,000).
    /// `stall_timeout`: seconds without a message before reading fails with `TimeoutError`.
    /// Raises `RejectedError` (unknown or unpublished table, bad filter), `BusyError` (too
    /// many snapshots running), `UnavailableError` (no producer).
    #[pyo3(signature = (table, *, filter=None, chunk_size=None, stall_timeout=60.0))]
    fn snapshot(
        &self,
        py: Python<'_>,
        table: String,
        filter: Option<Bound<'_, PyAny>>,
        chunk_size: Option<u32>,
        stall_timeout: f64,
    ) -> PyResult<Snapshot> {
        let request =
            crate::snapshot::request(py, table, filter.as_ref(), chunk_size, stall_timeout)?;
        let client = self.inner.clone();
        let snapshot = runtime::block_on(py, async move { client.snapshot(request).await })?
            .map_err(|e| to_py(py, e))?;
        Snapshot::new(py, snapshot)
    }

    /// `snapshot()` as a coroutine.
    #[pyo3(signature = (table, *, filter=None, chunk_size=None, stall_timeout=60.0))]
    fn snapshot_async<'py>(
        &self,
        py: Python<'py>,
        table: String,
        filter: Option<Bound<'py, PyAny>>,
        chunk_size: Option<u32>,
        stall_timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request =
            crate::snapshot::request(py, table, filter.as_ref(), chunk_size, stall_timeout)?;
        let client = self.inner.clone();
        runtime::spawn_async(
            py,
            async move { client.snapshot(request).await },
            |py, result| match result {
                Ok(snapshot) => Ok(Py::new(py, Snapshot::new(py, snapshot)?)?.into_any()),
                Err(e) => Err(to_py(py, e)),
            },
            |_| {},
        )
    }

    /// The retained snapshots of `table` (`"schema.table"`, `"schema.*"` or `"*"`), oldest
    /// first, as `SnapshotInfo`s.
    #[pyo3(signature = (table="*".to_string()))]
    fn snapshots(&self, py: Python<'_>, table: String) -> PyResult<Vec<SnapshotInfo>> {
        let client = self.inner.clone();
        let list = runtime::block_on(py, async move { client.snapshots(&table).await })?
            .map_err(|e| to_py(py, e))?;
        Ok(list.into_iter().map(SnapshotInfo::new).collect())
    }

    /// `snapshots()` as a coroutine.
    #[pyo3(signature = (table="*".to_string()))]
    fn snapshots_async<'py>(&self, py: Python<'py>, table: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        runtime::spawn_async(
            py,
            async move { client.snapshots(&table).await },
            |py, result| match result {
                Ok(list) => {
                    let infos = list
                        .into_iter()
                        .map(|info| Py::new(py, SnapshotInfo::new(info)))
                        .collect::<PyResult<Vec<_>>>()?;
                    Ok(infos.into_pyobject(py)?.into_any().unbind())
                }
                Err(e) => Err(to_py(py, e)),
            },
            |_| {},
        )
    }

    /// Reads a retained snapshot again from its first row (`id` as in `SnapshotInfo.id`).
    /// Raises `RejectedError` when no such snapshot is retained.
    #[pyo3(signature = (id, *, stall_timeout=60.0))]
    fn read_snapshot(&self, py: Python<'_>, id: String, stall_timeout: f64) -> PyResult<Snapshot> {
        let stall = crate::snapshot::stall(py, stall_timeout)?;
        let client = self.inner.clone();
        let snapshot =
            runtime::block_on(py, async move { client.read_snapshot(&id, stall).await })?
                .map_err(|e| to_py(py, e))?;
        Snapshot::new(py, snapshot)
    }

    /// `read_snapshot()` as a coroutine.
    #[pyo3(signature = (id, *, stall_timeout=60.0))]
    fn read_snapshot_async<'py>(
        &self,
        py: Python<'py>,
        id: String,
        stall_timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let stall = crate::snapshot::stall(py, stall_timeout)?;
        let client = self.inner.clone();
        runtime::spawn_async(
            py,
            async move { client.read_snapshot(&id, stall).await },
            |py, result| match result {
                Ok(snapshot) => Ok(Py::new(py, Snapshot::new(py, snapshot)?)?.into_any()),
                Err(e) => Err(to_py(py, e)),
            },
            |_| {},
        )
    }

    /// The source database this client reads.
    #[getter]
    fn database(&self) -> &str {
        self.inner.database()
    }

    fn __repr__(&self) -> String {
        format!("<walbrook.Client database={:?}>", self.inner.database())
    }
}
