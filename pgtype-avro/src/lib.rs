//! Pure mapping between PostgreSQL types/values and Avro schemas/values, with spec-exact
//! fingerprints and single-object framing.
//!
//! * [`TableSchemas::new`] builds the `after`, `before` and snapshot `row` records of a table
//!   from a [`RelationDesc`] (which the producer reads from the catalogs).
//! * [`TableSchema::encode_text`] turns pgoutput's text values into an Avro record value;
//!   [`TableSchema::to_single_object`] frames it (`C3 01` + 8-byte little-endian CRC-64-AVRO
//!   fingerprint + body). The producer's fast path [`TableSchema::write_text_single_object`]
//!   (or [`TableSchema::write_text_body`] inside an envelope) goes from text to bytes directly
//!   and produces the same bytes.
//! * Clients go back with [`TableSchema::decode_single_object`] (typed [`PgValue`]s, directly)
//!   or the generic apache-avro route ([`TableSchema::from_single_object`] /
//!   [`fingerprint::decode_body`] + [`TableSchema::decode_value`]), and
//!   [`TableSchema::render_text`] (PostgreSQL input text that writes the same value back).
//! * Column and table names that are not valid Avro names are escaped reversibly
//!   ([`encode_name`] / [`decode_name`]); the original is also kept as the `pgName` property.
//!
//! `docs/type-mapping.md` has the full type table and the wire format.
//!
//! ```
//! use walbrook_pgtype_avro::{
//!     ColumnDesc, ColumnValue, PgType, PgValue, RelationDesc, ReplicaIdentity, TableSchemas,
//! };
//!
//! let relation = RelationDesc {
//!     schema: "public".into(),
//!     table: "orders".into(),
//!     columns: vec![
//!         ColumnDesc {
//!             name: "id".into(),
//!             pg_type: PgType::from_builtin_oid(20).unwrap(), // int8
//!             type_name: "bigint".into(),
//!             typmod: -1,
//!             not_null: true,
//!             is_key: true,
//!             backfill: Default::default(),
//!         },
//!         ColumnDesc {
//!             name: "total-amount".into(),
//!             pg_type: PgType::from_builtin_oid(1700).unwrap(), // numeric
//!             type_name: "numeric(10,2)".into(),
//!             typmod: (10 << 16 | 2) + 4,
//!             not_null: false,
//!             is_key: false,
//!             backfill: Default::default(),
//!         },
//!     ],
//!     replica_identity: ReplicaIdentity::Default,
//! };
//! let schemas = TableSchemas::new(&relation)?;
//! let after = &schemas.after;
//! assert_eq!(after.json()["fields"][1]["name"], "total_x2d_amount");
//! assert_eq!(after.json()["fields"][1]["pgType"], "numeric(10,2)");
//!
//! // Producer: pgoutput text values -> Avro single-object bytes.
//! let value = after.encode_text(&[ColumnValue::Text("42"), ColumnValue::Text("-1.50")])?;
//! let bytes = after.to_single_object(&value)?;
//! assert_eq!(&bytes[..2], &[0xC3, 0x01]);
//!
//! // Client: bytes -> typed values -> PostgreSQL input text.
//! let decoded = after.decode_single_object(&bytes)?;
//! assert_eq!(decoded[0], ("id".to_string(), PgValue::Int8(42)));
//! assert_eq!(decoded, after.decode_value(&after.from_single_object(&bytes)?)?);
//! let text = after.render_text(&decoded)?;
//! assert_eq!(text, vec![Some("42".to_string()), Some("-1.50".to_string())]);
//! # Ok::<(), walbrook_pgtype_avro::Error>(())
//! ```

mod avro;
mod binary;
mod error;
pub mod fingerprint;
pub mod names;
pub mod pg_binary;
mod reader;
mod rebuild;
pub mod schema;
mod table;
pub mod text;
pub mod types;
pub mod value;

pub use error::Error;
pub use fingerprint::Fingerprint;
pub use names::{decode_name, encode_name};
pub use pg_binary::parse_binary;
pub use table::{ColumnValue, DecodedRow, RecordKind, TableSchema, TableSchemas, record_json};
pub use text::{parse_text, render_text};
pub use types::{
    Backfill, Builtin, ColumnDesc, CompositeField, PgType, RelationDesc, ReplicaIdentity,
};
pub use value::{
    ArrayDim, PgArray, PgDate, PgInterval, PgNumeric, PgRange, PgTimestamp, PgValue, RangeBound,
};

/// Converts one typed value to the Avro value of a field slot (`null` first when `nullable`,
/// the unchanged marker last when `unchanged`), for callers that build their own records.
pub fn value_to_avro(
    ty: &PgType,
    typmod: i32,
    value: &PgValue,
    nullable: bool,
    unchanged: bool,
) -> Result<apache_avro::types::Value, Error> {
    avro::to_slot(ty, typmod, value, nullable, unchanged)
}

/// Inverse of [`value_to_avro`].
pub fn value_from_avro(
    ty: &PgType,
    typmod: i32,
    value: &apache_avro::types::Value,
    nullable: bool,
    unchanged: bool,
) -> Result<PgValue, Error> {
    avro::from_slot(ty, typmod, value, nullable, unchanged)
}
