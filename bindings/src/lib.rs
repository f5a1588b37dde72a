//! Python bindings for the Walbrook client, built with pyo3 and maturin: the native module
//! `walbrook._walbrook` behind the Python package `walbrook` (docs/python.md).
//!
//! * [`client::Client`] connects and subscribes; [`subscription::Subscription`] is iterated
//!   with `for` (blocking, GIL released while waiting) or `async for` (asyncio).
//! * [`snapshot::Snapshot`] reads a snapshot's rows the same two ways.
//! * [`event::ChangeEvent`] carries native Python values ([`values`]), converted in Rust.
//! * Errors are Python exceptions mirroring `walbrook_client::ErrorKind` ([`errors`]).
//! * [`decoder::Decoder`] decodes payloads offline (the decode benchmark uses it).
//! * [`runtime`] holds the tokio runtime and the asyncio bridge.

use pyo3::prelude::*;

pub mod client;
pub mod decoder;
pub mod errors;
pub mod event;
pub mod runtime;
pub mod snapshot;
pub mod subscription;
pub mod values;

/// The version of the Walbrook bindings (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The native part of the `walbrook` Python package.
#[pymodule]
fn _walbrook(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", VERSION)?;
    module.add_class::<client::Client>()?;
    module.add_class::<subscription::Subscription>()?;
    module.add_class::<snapshot::Snapshot>()?;
    module.add_class::<snapshot::SnapshotInfo>()?;
    module.add_class::<event::ChangeEvent>()?;
    module.add_class::<event::Source>()?;
    module.add_class::<event::Schema>()?;
    module.add_class::<event::Column>()?;
    module.add_class::<errors::UndecodedMessage>()?;
    module.add_class::<decoder::Decoder>()?;
    module.add_class::<runtime::Completion>()?;
    Ok(())
}
