//! `walbrook.Decoder`: decodes change-event payloads offline, given the schema JSON — the
//! same decoder a subscription uses, without NATS (for archives, tests and the decode
//! benchmark).

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use walbrook_client::{EventSchema, Fingerprint};

use crate::errors::{new_error, to_py};
use crate::event::{ChangeEvent, Names};

/// Decodes Avro single-object change events written with one envelope schema.
#[pyclass(module = "walbrook._walbrook", frozen)]
pub struct Decoder {
    schema: EventSchema,
    names: Mutex<Names>,
}

#[pymethods]
impl Decoder {
    /// Builds the decoder of an envelope schema (the `schema` text of a registry document,
    /// or `Schema.schema_json`). Raises `DecodeError` when it is not a change-event envelope.
    #[new]
    fn new(py: Python<'_>, schema_json: &str) -> PyResult<Decoder> {
        let fingerprint = Fingerprint::of_json_str(schema_json)
            .map_err(|e| new_error(py, "decode", format!("schema: {e}")))?;
        let schema = EventSchema::from_json(fingerprint, schema_json).map_err(|e| to_py(py, e))?;
        Ok(Decoder {
            schema,
            names: Mutex::new(Names::default()),
        })
    }

    /// The schema's fingerprint (16 hex digits).
    #[getter]
    fn fingerprint(&self) -> String {
        self.schema.fingerprint().to_string()
    }

    /// `"schema.table"`.
    #[getter]
    fn table(&self) -> &str {
        self.schema.table()
    }

    /// Decodes one message (Avro single-object encoding). The event's `subject` is empty and
    /// its `stream_sequence` 0. Raises `DecodeError` when the message is not this schema's or
    /// does not match it.
    fn decode(&self, py: Python<'_>, payload: &[u8]) -> PyResult<ChangeEvent> {
        let event = self
            .schema
            .decode_event(payload)
            .map_err(|e| to_py(py, e))?;
        let mut names = self
            .names
            .lock()
            .map_err(|_| PyValueError::new_err("poisoned name cache"))?;
        ChangeEvent::new(py, event, &mut names)
    }

    fn __repr__(&self) -> String {
        format!(
            "<walbrook.Decoder {} {}>",
            self.schema.table(),
            self.schema.fingerprint()
        )
    }
}
