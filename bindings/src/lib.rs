//! Python bindings for the Walbrook client, built with pyo3 and maturin.
//!
//! **Status:** only the package skeleton exists (issue #6 adds the client API). The
//! native module is `walbrook._walbrook`; the Python package `walbrook` re-exports it.

use pyo3::prelude::*;

/// The version of the Walbrook bindings (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The native part of the `walbrook` Python package.
#[pymodule]
fn _walbrook(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", VERSION)?;
    Ok(())
}
