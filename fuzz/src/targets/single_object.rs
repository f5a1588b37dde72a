//! Avro single-object framing and decoding against fixed table schemas
//! (`walbrook_fuzz::schemas`). Input: one selector byte (which record schema, modulo their
//! number) followed by an Avro body. Properties:
//!
//! * `split_single_object` never panics and splits exactly at the 10-byte header;
//! * the direct reader (`TableSchema::decode_single_object` / `decode_body`) never panics;
//! * the generic apache-avro route (`from_single_object` / `fingerprint::decode_body` +
//!   `decode_value`) accepts exactly the same messages, as the same values;
//! * accepted values that the encoder takes re-encode to a message that decodes to the same
//!   values; rendering them as PostgreSQL text never panics.

use std::sync::LazyLock;

use crate::same_row;
use crate::schemas::{self, Record};
use walbrook_pgtype_avro::PgValue;
use walbrook_pgtype_avro::fingerprint::{
    SINGLE_OBJECT_MAGIC, decode_body, frame_single_object, split_single_object,
};

static SCHEMAS: LazyLock<Vec<Record>> = LazyLock::new(schemas::all);

/// One fuzz input (see the module docs for what must hold).
pub fn run(data: &[u8]) {
    // Framing, on the raw input.
    if let Ok((fp, body)) = split_single_object(data) {
        assert_eq!(data[..2], SINGLE_OBJECT_MAGIC);
        assert_eq!(fp.to_bytes()[..], data[2..10]);
        assert_eq!(body, &data[10..]);
    } else {
        assert!(data.len() < 10 || data[..2] != SINGLE_OBJECT_MAGIC);
    }

    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let Record {
        label,
        schema,
        relation_columns,
    } = &SCHEMAS[usize::from(selector) % SCHEMAS.len()];
    let message = frame_single_object(schema.fingerprint(), body);

    let direct = schema.decode_single_object(&message);
    let direct_body = schema.decode_body(body);
    assert_eq!(
        format!("{direct:?}"),
        format!("{direct_body:?}"),
        "{label}: decode_single_object and decode_body disagree"
    );
    let generic = schema.from_single_object(&message);
    if let Ok(v) = &generic {
        let plain = decode_body(schema.schema(), body).expect("from_single_object accepted it");
        // Debug forms, so that NaN equals NaN.
        assert_eq!(
            format!("{v:?}"),
            format!("{plain:?}"),
            "{label}: from_single_object and decode_body disagree"
        );
    }
    // Both routes accept the same messages, as the same values.
    let generic_row = generic.and_then(|v| schema.decode_value(&v));
    let row = match (direct, generic_row) {
        (Ok(row), Ok(generic_row)) => {
            assert!(
                same_row(&row, &generic_row),
                "{label}: direct {row:?} != apache-avro {generic_row:?}"
            );
            row
        }
        (Err(_), Err(_)) => return,
        (direct, generic) => {
            panic!("{label}: the direct reader gave {direct:?}, apache-avro {generic:?}")
        }
    };

    // Re-encode: one value per relation column, NULL for columns not in this record.
    let columns: Vec<String> = schema.columns().map(|c| c.name.clone()).collect();
    let values: Vec<PgValue> = relation_columns
        .iter()
        .map(|name| match columns.iter().position(|c| c == name) {
            Some(i) => row[i].1.clone(),
            None => PgValue::Null,
        })
        .collect();
    if let Ok(record) = schema.encode_values(&values) {
        let bytes = schema
            .to_single_object(&record)
            .expect("an encoded record writes");
        let back = schema
            .decode_single_object(&bytes)
            .expect("a re-encoded message decodes");
        assert!(
            same_row(&back, &row),
            "{label}: {row:?} came back as {back:?}"
        );
    }
    let _ = schema.render_text(&row);
}
