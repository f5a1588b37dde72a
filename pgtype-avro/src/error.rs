//! The crate's error type.

/// Everything that can go wrong in this crate. No function in this crate panics on bad input;
/// it returns one of these instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A PostgreSQL text value could not be parsed for its type.
    #[error("cannot parse {type_name} value {text:?}: {reason}")]
    Parse {
        /// The PostgreSQL type name.
        type_name: String,
        /// The offending text (truncated to 200 characters).
        text: String,
        /// Why it failed.
        reason: String,
    },
    /// A value in PostgreSQL's binary format could not be read for its type.
    #[error("cannot read a binary {type_name} value: {reason}")]
    Binary {
        /// The PostgreSQL type name.
        type_name: String,
        /// Why it failed.
        reason: String,
    },
    /// A value of a column cannot be represented; wraps the underlying error with the column.
    #[error("column {column:?} (type {type_name}, oid {oid}): {source}")]
    Column {
        /// The column name.
        column: String,
        /// The column's PostgreSQL type name as `format_type` prints it.
        type_name: String,
        /// The column's type OID.
        oid: u32,
        /// The underlying error.
        #[source]
        source: Box<Error>,
    },
    /// An Avro value does not have the shape the schema mapping expects.
    #[error("unexpected Avro value for {type_name}: {detail}")]
    AvroShape {
        /// The PostgreSQL type name.
        type_name: String,
        /// What was found.
        detail: String,
    },
    /// A typed value does not match the PostgreSQL type it is rendered for.
    #[error("value {value} does not fit PostgreSQL type {type_name}")]
    ValueType {
        /// The PostgreSQL type name.
        type_name: String,
        /// A short description of the value.
        value: String,
    },
    /// The number of values does not match the number of columns.
    #[error("expected {expected} values, got {got}")]
    Arity {
        /// Expected count.
        expected: usize,
        /// Actual count.
        got: usize,
    },
    /// A name that [`crate::encode_name`] cannot produce was given to [`crate::decode_name`].
    #[error("invalid escaped Avro name {0:?}")]
    InvalidName(String),
    /// A schema JSON document is not a valid Avro schema for canonicalisation.
    #[error("invalid Avro schema: {0}")]
    Schema(String),
    /// Single-object framing errors.
    #[error("invalid single-object message: {0}")]
    Framing(String),
    /// An error from the `apache-avro` library.
    #[error("avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
}

impl From<apache_avro::Error> for Error {
    fn from(e: apache_avro::Error) -> Self {
        Error::Avro(Box::new(e))
    }
}

pub(crate) fn parse_err(type_name: &str, text: &str, reason: impl Into<String>) -> Error {
    let text: String = text.chars().take(200).collect();
    Error::Parse {
        type_name: type_name.to_owned(),
        text,
        reason: reason.into(),
    }
}
