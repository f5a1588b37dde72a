//! The tokio runtime behind the Python API, and the two bridges to it.
//!
//! * Blocking calls ([`block_on`]) run a future on the runtime with the GIL released,
//!   waking every 100 ms to let Python deliver signals (Ctrl-C raises `KeyboardInterrupt`;
//!   the future is dropped, which every SDK call we wait on tolerates).
//! * Coroutines ([`spawn_async`]) run the future as a tokio task and complete an asyncio
//!   future on the caller's event loop with `loop.call_soon_threadsafe`. The conversion to
//!   Python objects happens on the loop's thread, with the GIL. If the asyncio future was
//!   cancelled meanwhile, the result is handed to a `cancelled` callback instead of being
//!   dropped (a subscription puts an event back in front of its queue that way).
//!
//! One multi-threaded runtime with two workers serves the whole process, whatever the
//! number of clients: one NATS connection per client needs little.

use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("walbrook-tokio")
        .enable_all()
        .build()
        .expect("building the tokio runtime")
});

/// The runtime (for spawning).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    &RUNTIME
}

/// Runs `future` to completion with the GIL released, checking for Python signals every
/// 100 ms (a signal handler's exception is returned and the future dropped).
pub fn block_on<F>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let mut future = std::pin::pin!(future);
    loop {
        let step = py.detach(|| {
            RUNTIME.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut future)
                    .await
                    .ok()
            })
        });
        match step {
            Some(out) => return Ok(out),
            None => py.check_signals()?,
        }
    }
}

type Job = Box<dyn FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<()> + Send>;

/// Completes an asyncio future on its loop's thread (called through
/// `loop.call_soon_threadsafe(completion, future)`).
#[pyclass(module = "walbrook._walbrook")]
pub struct Completion {
    job: Mutex<Option<Job>>,
}

#[pymethods]
impl Completion {
    fn __call__(&self, py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let job = self.job.lock().ok().and_then(|mut j| j.take());
        match job {
            Some(job) => job(py, future),
            None => Ok(()),
        }
    }
}

/// Runs `future` on the runtime and returns an asyncio future (of the running loop) that
/// completes with `convert(output)`. When the asyncio future was cancelled before the output
/// arrived, `cancelled(output)` receives it instead.
pub fn spawn_async<'py, F, T, C, X>(
    py: Python<'py>,
    future: F,
    convert: C,
    cancelled: X,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
    X: FnOnce(T) + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_future = event_loop.call_method0("create_future")?;
    let loop_ref = event_loop.unbind();
    let future_ref = py_future.clone().unbind();
    RUNTIME.spawn(async move {
        let output = future.await;
        let job: Job = Box::new(move |py, fut| {
            if fut.call_method0("done")?.is_truthy()? {
                cancelled(output);
                return Ok(());
            }
            match convert(py, output) {
                Ok(value) => fut.call_method1("set_result", (value,))?,
                Err(error) => fut.call_method1("set_exception", (error.into_value(py),))?,
            };
            Ok(())
        });
        Python::attach(|py| {
            let completion = Completion {
                job: Mutex::new(Some(job)),
            };
            // Fails only when the loop is closed: nobody is left to receive the result.
            let _ = loop_ref.call_method1(py, "call_soon_threadsafe", (completion, future_ref));
        });
    });
    Ok(py_future)
}
