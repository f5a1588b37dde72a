//! A subscription: iterate it (`for event in sub`) or iterate it asynchronously
//! (`async for event in sub`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use pyo3::exceptions::{PyStopAsyncIteration, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use walbrook_client::{ChangeEvent as RustEvent, ChangeStream, Error};

use crate::errors::to_py;
use crate::event::{ChangeEvent, Names};
use crate::runtime;

/// What a subscription or a snapshot yields.
pub(crate) type Item = Result<RustEvent, Error>;

/// The stream behind a subscription or a snapshot.
pub(crate) type Events = std::pin::Pin<Box<dyn futures::Stream<Item = Item> + Send>>;

/// What a wait for the next item ended with.
pub(crate) enum Next {
    Item(Box<Item>),
    /// The subscription ended or was closed.
    Ended,
    /// The timeout passed first.
    TimedOut,
}

pub(crate) struct Shared {
    stream: tokio::sync::Mutex<Option<Events>>,
    /// Items taken from the stream but not handed out (an asyncio wait cancelled after the
    /// item arrived, an error held back behind a batch): handed out first, in order.
    held: Mutex<VecDeque<Item>>,
    names: Mutex<Names>,
}

impl Shared {
    /// Shared state around a stream of events.
    pub(crate) fn new(stream: Events) -> Shared {
        Shared {
            stream: tokio::sync::Mutex::new(Some(stream)),
            held: Mutex::new(VecDeque::new()),
            names: Mutex::new(Names::default()),
        }
    }

    /// Drops the stream: the next waits end at once.
    pub(crate) async fn close(&self) {
        self.stream.lock().await.take();
    }

    fn hold_front(&self, item: Item) {
        if let Ok(mut held) = self.held.lock() {
            held.push_front(item);
        }
    }

    fn take_held(&self) -> Option<Item> {
        self.held.lock().ok().and_then(|mut h| h.pop_front())
    }

    pub(crate) async fn next(&self, timeout: Option<Duration>) -> Next {
        if let Some(item) = self.take_held() {
            return Next::Item(Box::new(item));
        }
        let mut guard = self.stream.lock().await;
        if let Some(item) = self.take_held() {
            return Next::Item(Box::new(item));
        }
        let Some(stream) = guard.as_mut() else {
            return Next::Ended;
        };
        let item = match timeout {
            Some(t) => match tokio::time::timeout(t, stream.next()).await {
                Ok(item) => item,
                Err(_) => return Next::TimedOut,
            },
            None => stream.next().await,
        };
        match item {
            Some(item) => Next::Item(Box::new(item)),
            None => {
                // Ended: never poll it again.
                guard.take();
                Next::Ended
            }
        }
    }

    pub(crate) fn convert(&self, py: Python<'_>, item: Item) -> PyResult<ChangeEvent> {
        match item {
            Ok(event) => {
                let mut names = self
                    .names
                    .lock()
                    .map_err(|_| PyValueError::new_err("poisoned name cache"))?;
                ChangeEvent::new(py, event, &mut names)
            }
            Err(error) => Err(to_py(py, error)),
        }
    }
}

/// A running subscription. Iterating it yields `ChangeEvent`s in stream order. A message
/// that cannot be decoded raises (`DecodeError`, `SchemaNotFoundError`…) in its place, with
/// the message attached; iterating again continues with the next message. Nothing is
/// skipped silently.
#[pyclass(module = "walbrook._walbrook", frozen)]
pub struct Subscription {
    shared: Arc<Shared>,
    consumer: String,
    durable: bool,
}

impl Subscription {
    pub(crate) fn new(stream: ChangeStream) -> Subscription {
        Subscription {
            consumer: stream.consumer_name().to_string(),
            durable: stream.is_durable(),
            shared: Arc::new(Shared::new(Box::pin(stream))),
        }
    }
}

pub(crate) fn seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout
        .map(|t| {
            Duration::try_from_secs_f64(t)
                .map_err(|_| PyValueError::new_err(format!("invalid timeout {t}")))
        })
        .transpose()
}

#[pymethods]
impl Subscription {
    /// The JetStream consumer's name (the durable name, or the ordered consumer's).
    #[getter]
    fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// Whether it is a durable subscription (events must be acknowledged).
    #[getter]
    fn durable(&self) -> bool {
        self.durable
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

    /// The next event, waiting at most `timeout` seconds (forever when `None`); `None` when
    /// the timeout passed or the subscription ended. Raises like iteration does.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<ChangeEvent>> {
        let timeout = seconds(timeout)?;
        let shared = self.shared.clone();
        match runtime::block_on(py, async move { shared.next(timeout).await })? {
            Next::Item(item) => self.shared.convert(py, *item).map(Some),
            Next::Ended | Next::TimedOut => Ok(None),
        }
    }

    /// Up to `max` events, returning what has arrived once `timeout` seconds have passed
    /// (possibly nothing). An undecodable message ends the batch early: the events before it
    /// are returned, and the next call raises its error.
    #[pyo3(signature = (max, timeout))]
    fn next_batch(&self, py: Python<'_>, max: usize, timeout: f64) -> PyResult<Vec<ChangeEvent>> {
        let timeout = seconds(Some(timeout))?.unwrap_or_default();
        let shared = self.shared.clone();
        let items = runtime::block_on(py, async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut items = Vec::new();
            while items.len() < max {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match shared.next(Some(left)).await {
                    Next::Item(item) => {
                        let failed = item.is_err();
                        items.push(*item);
                        if failed {
                            break;
                        }
                    }
                    Next::Ended | Next::TimedOut => break,
                }
            }
            items
        })?;
        let mut events = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Ok(event) => events.push(self.shared.convert(py, Ok(event))?),
                Err(error) if events.is_empty() => return Err(to_py(py, error)),
                Err(error) => self.shared.hold_front(Err(error)),
            }
        }
        Ok(events)
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.next_async_impl(py, None, true)
    }

    /// `next(timeout)` as a coroutine.
    #[pyo3(signature = (timeout=None))]
    fn next_async<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = seconds(timeout)?;
        self.next_async_impl(py, timeout, false)
    }

    /// Stops the subscription (its server-side ordered consumer goes away; a durable
    /// consumer keeps its position). Iterating afterwards ends at once.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let shared = self.shared.clone();
        runtime::block_on(py, async move {
            shared.close().await;
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.unbind();
        runtime::spawn_async(
            py,
            async {},
            move |py, ()| Ok(this.into_any().clone_ref(py)),
            |_| {},
        )
    }

    #[pyo3(signature = (*_args))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _args: &Bound<'py, pyo3::types::PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        runtime::spawn_async(
            py,
            async move {
                shared.close().await;
            },
            |py, ()| Ok(false.into_pyobject(py)?.to_owned().into_any().unbind()),
            |_| {},
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "<walbrook.Subscription {}{}>",
            self.consumer,
            if self.durable { " (durable)" } else { "" }
        )
    }
}

impl Subscription {
    fn next_async_impl<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<Duration>,
        iteration: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        next_async(py, &self.shared, timeout, iteration)
    }
}

/// The next event of `shared` as an asyncio future: `StopAsyncIteration` at the end when
/// `iteration`, else `None` at the end or after `timeout`.
pub(crate) fn next_async<'py>(
    py: Python<'py>,
    shared: &Arc<Shared>,
    timeout: Option<Duration>,
    iteration: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let for_convert = shared.clone();
    let for_cancel = shared.clone();
    let shared = shared.clone();
    runtime::spawn_async(
        py,
        async move { shared.next(timeout).await },
        move |py, next| match next {
            Next::Item(item) => Ok(Py::new(py, for_convert.convert(py, *item)?)?.into_any()),
            Next::Ended if iteration => Err(PyStopAsyncIteration::new_err(())),
            Next::Ended | Next::TimedOut => Ok(py.None()),
        },
        // Cancelled after the item arrived: keep it for the next call.
        move |next| {
            if let Next::Item(item) = next {
                for_cancel.hold_front(*item);
            }
        },
    )
}
