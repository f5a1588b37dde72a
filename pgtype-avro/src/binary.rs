//! A small Avro binary writer for the values this crate builds.
//!
//! The values produced by [`crate::TableSchema`] already carry everything the binary encoding
//! needs (union branch indexes, enum indexes, record fields in schema order), so they can be
//! written without walking the schema. Tests check the output is byte-identical to
//! apache-avro's schema-driven writer.

use apache_avro::types::Value;

use crate::Error;

/// Zig-zag varint (Avro `int`/`long`).
pub(crate) fn write_long(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Length-prefixed bytes (Avro `bytes`/`string`).
pub(crate) fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    write_long(b.len() as i64, out);
    out.extend_from_slice(b);
}

/// Appends the Avro binary encoding of `v` to `out`. `Value::Uuid` is written as its
/// 36-character string (this crate's uuid schema is `string`/`uuid`).
pub(crate) fn write_value(v: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    match v {
        Value::Null => {}
        Value::Boolean(b) => out.push(u8::from(*b)),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => write_long(i64::from(*i), out),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => write_long(*i, out),
        Value::Float(f) => out.extend_from_slice(&f.to_le_bytes()),
        Value::Double(f) => out.extend_from_slice(&f.to_le_bytes()),
        Value::Bytes(b) => write_bytes(b, out),
        Value::String(s) => write_bytes(s.as_bytes(), out),
        Value::Fixed(_, b) => out.extend_from_slice(b),
        Value::Enum(i, _) => write_long(i64::from(*i), out),
        Value::Union(i, inner) => {
            write_long(i64::from(*i), out);
            write_value(inner, out)?;
        }
        Value::Array(items) => {
            if !items.is_empty() {
                write_long(items.len() as i64, out);
                for item in items {
                    write_value(item, out)?;
                }
            }
            out.push(0);
        }
        Value::Record(fields) => {
            for (_, f) in fields {
                write_value(f, out)?;
            }
        }
        Value::Decimal(d) => write_bytes(&<Vec<u8>>::try_from(d)?, out),
        Value::Uuid(u) => {
            let mut buf = [0u8; 36];
            write_bytes(u.hyphenated().encode_lower(&mut buf).as_bytes(), out);
        }
        other => {
            return Err(Error::Schema(format!(
                "value kind not produced by this crate: {other:?}"
            )));
        }
    }
    Ok(())
}
