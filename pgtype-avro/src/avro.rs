//! Conversion between typed PostgreSQL values and Avro values.

use apache_avro::types::Value;
use num_bigint::{BigInt, Sign};

use crate::Error;
use crate::schema::{
    INFINITY_SYMBOLS, NUMERIC_SPECIAL_SYMBOLS, branch_count, numeric_decimal_params,
};
use crate::types::{Builtin, PgType};
use crate::value::{
    ArrayDim, PgArray, PgDate, PgInterval, PgNumeric, PgRange, PgTimestamp, PgValue, RangeBound,
};

fn type_err(ty: &PgType, v: &PgValue) -> Error {
    let mut value = format!("{v:?}");
    value.truncate(100);
    Error::ValueType {
        type_name: ty.name(),
        value,
    }
}

fn shape(ty: &PgType, v: &Value) -> Error {
    let mut detail = format!("{v:?}");
    detail.truncate(200);
    Error::AvroShape {
        type_name: ty.name(),
        detail,
    }
}

fn infinity(i: u32) -> Value {
    Value::Enum(i, INFINITY_SYMBOLS[i as usize].to_owned())
}

/// Converts a non-null value to (branch index within the type's branches, Avro value).
pub(crate) fn to_branch(ty: &PgType, typmod: i32, v: &PgValue) -> Result<(u32, Value), Error> {
    use Builtin::*;
    let plain = |x: Value| Ok((0, x));
    match (ty, v) {
        (
            PgType::Domain {
                base, base_typmod, ..
            },
            v,
        ) => to_branch(base, if typmod >= 0 { typmod } else { *base_typmod }, v),
        (PgType::Builtin(b), v) => match (b, v) {
            (Bool, PgValue::Bool(x)) => plain(Value::Boolean(*x)),
            (Int2, PgValue::Int2(x)) => plain(Value::Int(i32::from(*x))),
            (Int4, PgValue::Int4(x)) => plain(Value::Int(*x)),
            (Int8, PgValue::Int8(x)) => plain(Value::Long(*x)),
            (Oid | Xid | Cid, PgValue::Oid(x)) => plain(Value::Long(i64::from(*x))),
            // Bit pattern: values >= 2^63 become negative longs and come back exactly.
            (Xid8 | PgLsn, PgValue::U64(x)) => plain(Value::Long(*x as i64)),
            (Float4, PgValue::Float4(x)) => plain(Value::Float(*x)),
            (Float8, PgValue::Float8(x)) => plain(Value::Double(*x)),
            (Numeric, PgValue::Numeric(n)) => match numeric_decimal_params(typmod) {
                None => plain(Value::String(n.to_string())),
                Some((p, s)) => match n {
                    PgNumeric::NaN => Ok((1, Value::Enum(0, NUMERIC_SPECIAL_SYMBOLS[0].into()))),
                    PgNumeric::Infinity => {
                        Ok((1, Value::Enum(1, NUMERIC_SPECIAL_SYMBOLS[1].into())))
                    }
                    PgNumeric::NegInfinity => {
                        Ok((1, Value::Enum(2, NUMERIC_SPECIAL_SYMBOLS[2].into())))
                    }
                    PgNumeric::Finite(t) => {
                        let bytes = decimal_bytes(t, p, s).ok_or_else(|| type_err(ty, v))?;
                        plain(Value::Decimal(apache_avro::Decimal::from(bytes)))
                    }
                },
            },
            (Bytea, PgValue::Bytes(x)) => plain(Value::Bytes(x.clone())),
            (Uuid, PgValue::Uuid(u)) => plain(Value::Uuid(*u)),
            (Date, PgValue::Date(d)) => match d {
                PgDate::Days(x) => plain(Value::Date(*x)),
                PgDate::Infinity => Ok((1, infinity(0))),
                PgDate::NegInfinity => Ok((1, infinity(1))),
            },
            (Time, PgValue::Time(x)) => plain(Value::TimeMicros(*x)),
            (
                TimeTz,
                PgValue::TimeTz {
                    micros,
                    offset_seconds,
                },
            ) => plain(Value::Record(vec![
                ("micros".into(), Value::TimeMicros(*micros)),
                ("offset_seconds".into(), Value::Int(*offset_seconds)),
            ])),
            (Timestamp, PgValue::Timestamp(t)) | (TimestampTz, PgValue::TimestampTz(t)) => {
                match t {
                    PgTimestamp::Micros(x) => plain(if *b == Timestamp {
                        Value::LocalTimestampMicros(*x)
                    } else {
                        Value::TimestampMicros(*x)
                    }),
                    PgTimestamp::Infinity => Ok((1, infinity(0))),
                    PgTimestamp::NegInfinity => Ok((1, infinity(1))),
                }
            }
            (Interval, PgValue::Interval(iv)) => plain(Value::Record(vec![
                ("months".into(), Value::Int(iv.months)),
                ("days".into(), Value::Int(iv.days)),
                ("micros".into(), Value::Long(iv.micros)),
            ])),
            (Json | Jsonb, PgValue::Json(s)) => plain(Value::String(s.clone())),
            (
                Bool | Int2 | Int4 | Int8 | Oid | Xid | Cid | Xid8 | PgLsn | Float4 | Float8
                | Numeric | Bytea | Uuid | Date | Time | TimeTz | Timestamp | TimestampTz
                | Interval | Json | Jsonb,
                _,
            ) => Err(type_err(ty, v)),
            (_, PgValue::Text(s)) => plain(Value::String(s.clone())),
            _ => Err(type_err(ty, v)),
        },
        (PgType::Enum { .. } | PgType::Other { .. }, PgValue::Text(s)) => {
            plain(Value::String(s.clone()))
        }
        (PgType::Array { element, .. }, PgValue::Array(a)) => {
            if !a.is_well_formed() {
                return Err(type_err(ty, v));
            }
            let dims = a
                .dims
                .iter()
                .map(|d| {
                    Value::Record(vec![
                        ("lower".into(), Value::Int(d.lower)),
                        ("length".into(), Value::Int(d.length)),
                    ])
                })
                .collect();
            let mut elements = Vec::with_capacity(a.elements.len());
            for e in &a.elements {
                elements.push(to_slot(element, typmod, e, true, false)?);
            }
            plain(Value::Record(vec![
                ("dims".into(), Value::Array(dims)),
                ("elements".into(), Value::Array(elements)),
            ]))
        }
        (PgType::Range { subtype, .. }, PgValue::Range(r)) => plain(range_value(subtype, r)?),
        (PgType::Multirange { range, .. }, PgValue::Multirange(rs)) => {
            let PgType::Range { subtype, .. } = range.as_ref() else {
                return Err(type_err(ty, v));
            };
            let mut out = Vec::with_capacity(rs.len());
            for r in rs {
                out.push(range_value(subtype, r)?);
            }
            plain(Value::Array(out))
        }
        (PgType::Composite { fields, .. }, PgValue::Composite(vals)) => {
            if fields.len() != vals.len() {
                return Err(type_err(ty, v));
            }
            let mut out = Vec::with_capacity(fields.len());
            for (f, (_, fv)) in fields.iter().zip(vals) {
                out.push((
                    crate::names::encode_name(&f.name),
                    to_slot(&f.pg_type, f.typmod, fv, true, false)?,
                ));
            }
            plain(Value::Record(out))
        }
        _ => Err(type_err(ty, v)),
    }
}

fn range_value(subtype: &PgType, r: &PgRange) -> Result<Value, Error> {
    let (empty, lower, upper) = match r {
        PgRange::Empty => (true, &RangeBound::Unbounded, &RangeBound::Unbounded),
        PgRange::Bounds { lower, upper } => (false, lower, upper),
    };
    let bound = |b: &RangeBound| -> Result<(Value, bool), Error> {
        Ok(match b {
            RangeBound::Unbounded => (Value::Union(0, Box::new(Value::Null)), false),
            RangeBound::Inclusive(v) => (to_slot(subtype, -1, v, true, false)?, true),
            RangeBound::Exclusive(v) => (to_slot(subtype, -1, v, true, false)?, false),
        })
    };
    let (lo, lo_inc) = bound(lower)?;
    let (hi, hi_inc) = bound(upper)?;
    Ok(Value::Record(vec![
        ("empty".into(), Value::Boolean(empty)),
        ("lower".into(), lo),
        ("lower_inclusive".into(), Value::Boolean(lo_inc)),
        ("upper".into(), hi),
        ("upper_inclusive".into(), Value::Boolean(hi_inc)),
    ]))
}

/// The unscaled integer of decimal text at `scale`, if it fits `precision` digits.
fn unscaled(text: &str, precision: u32, scale: u32) -> Option<BigInt> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let scale = scale as usize;
    let frac_trimmed = if frac.len() > scale {
        let (keep, extra) = frac.split_at(scale);
        if extra.bytes().any(|c| c != b'0') {
            return None;
        }
        keep
    } else {
        frac
    };
    let mut digits = String::with_capacity(int.len() + scale);
    digits.push_str(int.trim_start_matches('0'));
    digits.push_str(frac_trimmed);
    for _ in frac_trimmed.len()..scale {
        digits.push('0');
    }
    let digits = digits.trim_start_matches('0');
    if digits.len() > precision as usize {
        return None;
    }
    if digits.is_empty() {
        return Some(BigInt::from(0));
    }
    let n = BigInt::parse_bytes(digits.as_bytes(), 10)?;
    Some(if neg { -n } else { n })
}

/// The minimal big-endian two's-complement bytes of the unscaled value of decimal text at
/// `scale` (what Avro's `decimal` carries), if it fits `precision` digits exactly. Uses `i128`
/// arithmetic up to 38 digits (the same bytes as `BigInt::to_signed_bytes_be`, tested).
fn decimal_bytes(text: &str, precision: u32, scale: u32) -> Option<Vec<u8>> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    if int.len() + scale as usize > 38 || frac.len() > 38 {
        return unscaled(text, precision, scale).map(|u| u.to_signed_bytes_be());
    }
    let scale = scale as usize;
    if !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    if frac.len() > scale && frac.as_bytes()[scale..].iter().any(|&c| c != b'0') {
        return None;
    }
    let mut acc: i128 = 0;
    for c in int.bytes() {
        acc = acc * 10 + i128::from(c - b'0');
    }
    for i in 0..scale {
        let d = frac.as_bytes().get(i).map_or(0, |c| c - b'0');
        acc = acc * 10 + i128::from(d);
    }
    if precision < 39 && acc >= 10i128.pow(precision) {
        return None;
    }
    if neg {
        acc = -acc;
    }
    Some(minimal_bytes(acc))
}

/// The shortest big-endian two's complement form of `n` (Avro `decimal` bytes), as a
/// slice of a fixed buffer: `(buffer, start)`.
fn minimal_bytes_of(n: i128) -> ([u8; 16], usize) {
    let full = n.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (full[start], full[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    (full, start)
}

fn minimal_bytes(n: i128) -> Vec<u8> {
    let (full, start) = minimal_bytes_of(n);
    full[start..].to_vec()
}

/// Writes the slot of a finite `numeric(p, s)` value given as its unscaled integer (the
/// value times 10^s), which the caller checked has at most `p` digits: the same bytes as
/// [`write_decimal_text`] of its text.
pub(crate) fn write_decimal_unscaled(
    ty: &PgType,
    typmod: i32,
    unscaled: i128,
    nullable: bool,
    unchanged: bool,
    out: &mut Vec<u8>,
) {
    use crate::binary::{write_bytes, write_long};
    if nullable || unchanged || branch_count(ty, typmod) > 1 {
        write_long(i64::from(nullable), out);
    }
    let (full, start) = minimal_bytes_of(unscaled);
    write_bytes(&full[start..], out);
}

pub(crate) fn decimal_text(unscaled: &BigInt, scale: u32) -> String {
    let neg = unscaled.sign() == Sign::Minus;
    let mut digits = unscaled.magnitude().to_str_radix(10);
    let scale = scale as usize;
    if scale > 0 {
        while digits.len() <= scale {
            digits.insert(0, '0');
        }
        digits.insert(digits.len() - scale, '.');
    }
    if neg {
        digits.insert(0, '-');
    }
    digits
}

/// Converts a value for a slot: `null` first when `nullable`, the unchanged marker last when
/// `unchanged`; a union when that gives more than one branch.
pub(crate) fn to_slot(
    ty: &PgType,
    typmod: i32,
    v: &PgValue,
    nullable: bool,
    unchanged: bool,
) -> Result<Value, Error> {
    let n = branch_count(ty, typmod) as u32;
    let offset = u32::from(nullable);
    let is_union = nullable || unchanged || n > 1;
    match v {
        PgValue::Null if nullable => Ok(Value::Union(0, Box::new(Value::Null))),
        PgValue::Unchanged if unchanged => {
            Ok(Value::Union(offset + n, Box::new(Value::Record(vec![]))))
        }
        PgValue::Null | PgValue::Unchanged => Err(type_err(ty, v)),
        v => {
            let (i, val) = to_branch(ty, typmod, v)?;
            Ok(if is_union {
                Value::Union(offset + i, Box::new(val))
            } else {
                val
            })
        }
    }
}

#[derive(PartialEq)]
pub(crate) enum Carrier {
    Text,
    Json,
    Bytes,
}

/// For types represented by one plain `string`/`bytes` branch: the `PgValue` variant that
/// carries their values.
pub(crate) fn plain_carrier(ty: &PgType) -> Option<Carrier> {
    use Builtin::*;
    match ty {
        PgType::Domain { base, .. } => plain_carrier(base),
        PgType::Enum { .. } | PgType::Other { .. } => Some(Carrier::Text),
        PgType::Builtin(b) => match b {
            Json | Jsonb => Some(Carrier::Json),
            Bytea => Some(Carrier::Bytes),
            Bool | Int2 | Int4 | Int8 | Oid | Xid | Cid | Xid8 | PgLsn | Float4 | Float8
            | Numeric | Uuid | Date | Time | TimeTz | Timestamp | TimestampTz | Interval => None,
            _ => Some(Carrier::Text),
        },
        _ => None,
    }
}

/// Like [`to_slot`], consuming the value (strings and byte strings are moved, not copied).
pub(crate) fn into_slot(
    ty: &PgType,
    typmod: i32,
    v: PgValue,
    nullable: bool,
    unchanged: bool,
) -> Result<Value, Error> {
    let owned = match (plain_carrier(ty), v) {
        (Some(Carrier::Text), PgValue::Text(s)) | (Some(Carrier::Json), PgValue::Json(s)) => {
            Value::String(s)
        }
        (Some(Carrier::Bytes), PgValue::Bytes(b)) => Value::Bytes(b),
        (_, v) => return to_slot(ty, typmod, &v, nullable, unchanged),
    };
    Ok(if nullable || unchanged {
        Value::Union(u32::from(nullable), Box::new(owned))
    } else {
        owned
    })
}

/// Inverse of [`to_slot`].
pub(crate) fn from_slot(
    ty: &PgType,
    typmod: i32,
    v: &Value,
    nullable: bool,
    unchanged: bool,
) -> Result<PgValue, Error> {
    let n = branch_count(ty, typmod) as u32;
    let offset = u32::from(nullable);
    let is_union = nullable || unchanged || n > 1;
    if !is_union {
        return from_branch(ty, typmod, 0, v);
    }
    let Value::Union(i, inner) = v else {
        return Err(shape(ty, v));
    };
    if nullable && *i == 0 {
        return Ok(PgValue::Null);
    }
    if unchanged && *i == offset + n {
        return Ok(PgValue::Unchanged);
    }
    if *i < offset || *i >= offset + n {
        return Err(shape(ty, v));
    }
    from_branch(ty, typmod, *i - offset, inner)
}

fn record_field<'a>(ty: &PgType, v: &'a Value, name: &str) -> Result<&'a Value, Error> {
    match v {
        Value::Record(fields) => fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| shape(ty, v)),
        _ => Err(shape(ty, v)),
    }
}

/// Converts a branch value back to a typed value.
pub(crate) fn from_branch(ty: &PgType, typmod: i32, i: u32, v: &Value) -> Result<PgValue, Error> {
    use Builtin::*;
    let bad = || shape(ty, v);
    Ok(match ty {
        PgType::Domain {
            base, base_typmod, ..
        } => return from_branch(base, if typmod >= 0 { typmod } else { *base_typmod }, i, v),
        PgType::Builtin(b) => match (b, i, v) {
            (Bool, 0, Value::Boolean(x)) => PgValue::Bool(*x),
            (Int2, 0, Value::Int(x)) => PgValue::Int2(i16::try_from(*x).map_err(|_| bad())?),
            (Int4, 0, Value::Int(x)) => PgValue::Int4(*x),
            (Int8, 0, Value::Long(x)) => PgValue::Int8(*x),
            (Oid | Xid | Cid, 0, Value::Long(x)) => {
                PgValue::Oid(u32::try_from(*x).map_err(|_| bad())?)
            }
            (Xid8 | PgLsn, 0, Value::Long(x)) => PgValue::U64(*x as u64),
            (Float4, 0, Value::Float(x)) => PgValue::Float4(*x),
            (Float8, 0, Value::Double(x)) => PgValue::Float8(*x),
            (Numeric, 0, Value::String(s)) if numeric_decimal_params(typmod).is_none() => {
                PgValue::Numeric(crate::text::parse_numeric(s).ok_or_else(bad)?)
            }
            (Numeric, 0, Value::Decimal(d)) => {
                let (_, s) = numeric_decimal_params(typmod).ok_or_else(bad)?;
                // Zero bytes are no two's-complement number (Avro's Java reference rejects
                // them, and so does the direct reader); the writer never produces them.
                let bytes = Vec::<u8>::try_from(d).map_err(|_| bad())?;
                if bytes.is_empty() {
                    return Err(bad());
                }
                let n = BigInt::from_signed_bytes_be(&bytes);
                PgValue::Numeric(PgNumeric::Finite(decimal_text(&n, s)))
            }
            (Numeric, 1, Value::Enum(k, _)) => PgValue::Numeric(match k {
                0 => PgNumeric::NaN,
                1 => PgNumeric::Infinity,
                2 => PgNumeric::NegInfinity,
                _ => return Err(bad()),
            }),
            (Bytea, 0, Value::Bytes(x)) => PgValue::Bytes(x.clone()),
            (Uuid, 0, Value::Uuid(u)) => PgValue::Uuid(*u),
            (Uuid, 0, Value::String(s)) => {
                PgValue::Uuid(uuid::Uuid::parse_str(s).map_err(|_| bad())?)
            }
            (Date, 0, Value::Date(d)) | (Date, 0, Value::Int(d)) => PgValue::Date(PgDate::Days(*d)),
            (Date, 1, Value::Enum(k, _)) => PgValue::Date(match k {
                0 => PgDate::Infinity,
                1 => PgDate::NegInfinity,
                _ => return Err(bad()),
            }),
            (Time, 0, Value::TimeMicros(x)) | (Time, 0, Value::Long(x)) => PgValue::Time(*x),
            (TimeTz, 0, r @ Value::Record(_)) => {
                let micros = match record_field(ty, r, "micros")? {
                    Value::TimeMicros(x) | Value::Long(x) => *x,
                    _ => return Err(bad()),
                };
                let offset_seconds = match record_field(ty, r, "offset_seconds")? {
                    Value::Int(x) => *x,
                    _ => return Err(bad()),
                };
                PgValue::TimeTz {
                    micros,
                    offset_seconds,
                }
            }
            (Timestamp, 0, Value::LocalTimestampMicros(x)) | (Timestamp, 0, Value::Long(x)) => {
                PgValue::Timestamp(PgTimestamp::Micros(*x))
            }
            (TimestampTz, 0, Value::TimestampMicros(x)) | (TimestampTz, 0, Value::Long(x)) => {
                PgValue::TimestampTz(PgTimestamp::Micros(*x))
            }
            (Timestamp | TimestampTz, 1, Value::Enum(k, _)) => {
                let t = match k {
                    0 => PgTimestamp::Infinity,
                    1 => PgTimestamp::NegInfinity,
                    _ => return Err(bad()),
                };
                if *b == Timestamp {
                    PgValue::Timestamp(t)
                } else {
                    PgValue::TimestampTz(t)
                }
            }
            (Interval, 0, r @ Value::Record(_)) => {
                let get_int = |n| match record_field(ty, r, n) {
                    Ok(Value::Int(x)) => Ok(*x),
                    _ => Err(bad()),
                };
                let micros = match record_field(ty, r, "micros")? {
                    Value::Long(x) => *x,
                    _ => return Err(bad()),
                };
                PgValue::Interval(PgInterval {
                    months: get_int("months")?,
                    days: get_int("days")?,
                    micros,
                })
            }
            (Json | Jsonb, 0, Value::String(s)) => PgValue::Json(s.clone()),
            (
                Bool | Int2 | Int4 | Int8 | Oid | Xid | Cid | Xid8 | PgLsn | Float4 | Float8
                | Numeric | Bytea | Uuid | Date | Time | TimeTz | Timestamp | TimestampTz
                | Interval | Json | Jsonb,
                _,
                _,
            ) => return Err(bad()),
            (_, 0, Value::String(s)) => PgValue::Text(s.clone()),
            _ => return Err(bad()),
        },
        PgType::Enum { .. } | PgType::Other { .. } => match v {
            Value::String(s) => PgValue::Text(s.clone()),
            _ => return Err(bad()),
        },
        PgType::Array { element, .. } => {
            let dims = match record_field(ty, v, "dims")? {
                Value::Array(ds) => ds
                    .iter()
                    .map(|d| {
                        match (
                            record_field(ty, d, "lower")?,
                            record_field(ty, d, "length")?,
                        ) {
                            (Value::Int(lower), Value::Int(length)) => Ok(ArrayDim {
                                lower: *lower,
                                length: *length,
                            }),
                            _ => Err(bad()),
                        }
                    })
                    .collect::<Result<Vec<_>, Error>>()?,
                _ => return Err(bad()),
            };
            let elements = match record_field(ty, v, "elements")? {
                Value::Array(es) => es
                    .iter()
                    .map(|e| from_slot(element, typmod, e, true, false))
                    .collect::<Result<Vec<_>, Error>>()?,
                _ => return Err(bad()),
            };
            let a = PgArray { dims, elements };
            if !a.is_well_formed() {
                return Err(bad());
            }
            PgValue::Array(a)
        }
        PgType::Range { subtype, .. } => PgValue::Range(range_from(ty, subtype, v)?),
        PgType::Multirange { range, .. } => {
            let PgType::Range { subtype, .. } = range.as_ref() else {
                return Err(bad());
            };
            match v {
                Value::Array(rs) => PgValue::Multirange(
                    rs.iter()
                        .map(|r| range_from(ty, subtype, r))
                        .collect::<Result<Vec<_>, Error>>()?,
                ),
                _ => return Err(bad()),
            }
        }
        PgType::Composite { fields, .. } => {
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                let fv = record_field(ty, v, &crate::names::encode_name(&f.name))?;
                out.push((
                    f.name.clone(),
                    from_slot(&f.pg_type, f.typmod, fv, true, false)?,
                ));
            }
            PgValue::Composite(out)
        }
    })
}

fn range_from(ty: &PgType, subtype: &PgType, v: &Value) -> Result<PgRange, Error> {
    let bad = || shape(ty, v);
    let boolean = |n| match record_field(ty, v, n) {
        Ok(Value::Boolean(b)) => Ok(*b),
        _ => Err(bad()),
    };
    if boolean("empty")? {
        return Ok(PgRange::Empty);
    }
    let bound = |n, inc: bool| -> Result<RangeBound, Error> {
        let x = from_slot(subtype, -1, record_field(ty, v, n)?, true, false)?;
        Ok(match x {
            PgValue::Null => RangeBound::Unbounded,
            x if inc => RangeBound::Inclusive(Box::new(x)),
            x => RangeBound::Exclusive(Box::new(x)),
        })
    };
    Ok(PgRange::Bounds {
        lower: bound("lower", boolean("lower_inclusive")?)?,
        upper: bound("upper", boolean("upper_inclusive")?)?,
    })
}

/// The fast path of [`write_slot`] for a finite `numeric(p, s)` column given as text:
/// writes the slot straight from the digits (no [`PgValue`] in between) and returns
/// `true`, or writes nothing and returns `false` for anything else (special values, values
/// that do not fit, malformed text), which the general path then parses and reports.
pub(crate) fn write_decimal_text(
    ty: &PgType,
    typmod: i32,
    text: &str,
    nullable: bool,
    unchanged: bool,
    out: &mut Vec<u8>,
) -> bool {
    use crate::binary::{write_bytes, write_long};
    if !matches!(ty, PgType::Builtin(Builtin::Numeric)) {
        return false;
    }
    let Some((p, s)) = numeric_decimal_params(typmod) else {
        return false;
    };
    // `decimal_bytes` reads "", "-" and "." as zero; the text parser refuses them.
    if !text.bytes().any(|c| c.is_ascii_digit()) {
        return false;
    }
    let Some(bytes) = decimal_bytes(text, p, s) else {
        return false;
    };
    if nullable || unchanged || branch_count(ty, typmod) > 1 {
        write_long(i64::from(nullable), out);
    }
    write_bytes(&bytes, out);
    true
}

/// Writes the Avro binary encoding of a slot value straight from a typed value: the same bytes
/// as `binary::write_value(&to_slot(..)?)` (the tests check this), without building Avro
/// values for the common scalar types.
pub(crate) fn write_slot(
    ty: &PgType,
    typmod: i32,
    v: &PgValue,
    nullable: bool,
    unchanged: bool,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    use crate::binary::{write_bytes, write_long};
    use Builtin::*;
    let n = branch_count(ty, typmod) as u32;
    let offset = u32::from(nullable);
    let is_union = nullable || unchanged || n > 1;
    let base = match ty {
        PgType::Domain { base, .. } if matches!(base.as_ref(), PgType::Builtin(_)) => base,
        _ => ty,
    };
    let typmod = match ty {
        PgType::Domain { base_typmod, .. } if typmod < 0 => *base_typmod,
        _ => typmod,
    };
    let branch = |i: u32, out: &mut Vec<u8>| {
        if is_union {
            write_long(i64::from(offset + i), out);
        }
    };
    match (base, v) {
        (_, PgValue::Null) if nullable => write_long(0, out),
        (_, PgValue::Unchanged) if unchanged => write_long(i64::from(offset + n), out),
        (PgType::Builtin(b), v) => match (b, v) {
            (Bool, PgValue::Bool(x)) => {
                branch(0, out);
                out.push(u8::from(*x));
            }
            (Int2, PgValue::Int2(x)) => {
                branch(0, out);
                write_long(i64::from(*x), out);
            }
            (Int4, PgValue::Int4(x)) => {
                branch(0, out);
                write_long(i64::from(*x), out);
            }
            (Int8, PgValue::Int8(x)) => {
                branch(0, out);
                write_long(*x, out);
            }
            (Float4, PgValue::Float4(x)) => {
                branch(0, out);
                out.extend_from_slice(&x.to_le_bytes());
            }
            (Float8, PgValue::Float8(x)) => {
                branch(0, out);
                out.extend_from_slice(&x.to_le_bytes());
            }
            (Numeric, PgValue::Numeric(PgNumeric::Finite(t))) => {
                match numeric_decimal_params(typmod) {
                    None => {
                        branch(0, out);
                        write_bytes(t.as_bytes(), out);
                    }
                    Some((p, s)) => {
                        let bytes = decimal_bytes(t, p, s).ok_or_else(|| type_err(ty, v))?;
                        branch(0, out);
                        write_bytes(&bytes, out);
                    }
                }
            }
            (Uuid, PgValue::Uuid(u)) => {
                branch(0, out);
                let mut buf = [0u8; 36];
                write_bytes(u.hyphenated().encode_lower(&mut buf).as_bytes(), out);
            }
            (Date, PgValue::Date(PgDate::Days(d))) => {
                branch(0, out);
                write_long(i64::from(*d), out);
            }
            (Time, PgValue::Time(x)) => {
                branch(0, out);
                write_long(*x, out);
            }
            (Timestamp, PgValue::Timestamp(PgTimestamp::Micros(x)))
            | (TimestampTz, PgValue::TimestampTz(PgTimestamp::Micros(x))) => {
                branch(0, out);
                write_long(*x, out);
            }
            (Json | Jsonb, PgValue::Json(t)) => {
                branch(0, out);
                write_bytes(t.as_bytes(), out);
            }
            (Bytea, PgValue::Bytes(x)) => {
                branch(0, out);
                write_bytes(x, out);
            }
            _ => crate::binary::write_value(&to_slot(ty, typmod, v, nullable, unchanged)?, out)?,
        },
        _ => crate::binary::write_value(&to_slot(ty, typmod, v, nullable, unchanged)?, out)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_conversion() {
        let u = unscaled("231.112", 10, 5).unwrap();
        assert_eq!(u, BigInt::from(23_111_200));
        assert_eq!(u.to_signed_bytes_be(), vec![0x01, 0x60, 0xA6, 0x20]);
        assert_eq!(decimal_text(&u, 5), "231.11200");
        assert_eq!(decimal_text(&BigInt::from(-5), 3), "-0.005");
        assert_eq!(decimal_text(&BigInt::from(0), 2), "0.00");
        assert_eq!(decimal_text(&BigInt::from(42), 0), "42");
        assert_eq!(unscaled("-0.005", 3, 3), Some(BigInt::from(-5)));
        assert_eq!(unscaled("12345.6", 5, 1), None); // 6 digits > precision 5
        assert_eq!(unscaled("1.25", 5, 1), None); // would round
        assert_eq!(unscaled("1.20", 5, 1), Some(BigInt::from(12)));
        assert_eq!(
            decimal_bytes("231.112", 10, 5),
            Some(vec![0x01, 0x60, 0xA6, 0x20])
        );
        assert_eq!(decimal_bytes("0", 1, 0), Some(vec![0]));
        assert_eq!(decimal_bytes("-0.00", 3, 2), Some(vec![0]));
        assert_eq!(decimal_bytes("12345.6", 5, 1), None);
        assert_eq!(decimal_bytes("1.25", 5, 1), None);
    }

    /// Found by the `single_object` fuzz target (docs/fuzzing.md): the apache-avro route took
    /// zero decimal bytes as 0 where the direct reader rejects them.
    #[test]
    fn empty_decimal_bytes_are_rejected() {
        let ty = PgType::Builtin(Builtin::Numeric);
        let typmod = ((10 << 16) | 2) + 4;
        let empty = Value::Decimal(apache_avro::Decimal::from(Vec::<u8>::new()));
        assert!(from_branch(&ty, typmod, 0, &empty).is_err());
        let one = Value::Decimal(apache_avro::Decimal::from([0xFF]));
        assert_eq!(
            from_branch(&ty, typmod, 0, &one).unwrap(),
            PgValue::Numeric(PgNumeric::Finite("-0.01".into()))
        );
        let mut direct = crate::reader::Reader::new(&[0x00]);
        assert!(direct.slot(&ty, typmod, false, false).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decimal_bytes_match_bigint(
            int in "-?[0-9]{1,40}",
            frac in "[0-9]{0,12}",
            p in 1u32..60,
            s in 0u32..12,
        ) {
            let text = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            if s <= p {
                proptest::prop_assert_eq!(
                    decimal_bytes(&text, p, s),
                    unscaled(&text, p, s).map(|u| u.to_signed_bytes_be())
                );
            }
        }

        /// The numeric fast path writes exactly what the general path (text → value →
        /// slot) writes, and leaves everything else to it.
        #[test]
        fn the_decimal_fast_path_writes_what_the_general_path_writes(
            text in "(-?[0-9]{0,20}(\\.[0-9]{0,8})?|NaN|-?Infinity|\\.|-|1e5| 1)",
            p in 1u32..25,
            s in 0u32..8,
            nullable in proptest::bool::ANY,
            unchanged in proptest::bool::ANY,
        ) {
            let ty = PgType::Builtin(Builtin::Numeric);
            let typmod = if s <= p { (((p << 16) | s) + 4) as i32 } else { -1 };
            let mut fast = Vec::new();
            let took = write_decimal_text(&ty, typmod, &text, nullable, unchanged, &mut fast);
            let general = crate::text::parse_text(&ty, typmod, &text).and_then(|v| {
                let mut out = Vec::new();
                write_slot(&ty, typmod, &v, nullable, unchanged, &mut out).map(|()| out)
            });
            if took {
                proptest::prop_assert_eq!(Some(fast), general.ok(), "{}", text);
            } else {
                proptest::prop_assert!(fast.is_empty());
            }
        }
    }

    #[test]
    fn the_decimal_fast_path_leaves_special_and_malformed_values_alone() {
        let ty = PgType::Builtin(Builtin::Numeric);
        let typmod = ((10 << 16) | 2) + 4;
        for text in [
            "NaN",
            "Infinity",
            "-",
            ".",
            "",
            "1e5",
            "123456789.1",
            "0.001",
        ] {
            let mut out = Vec::new();
            assert!(
                !write_decimal_text(&ty, typmod, text, true, false, &mut out),
                "{text}"
            );
        }
        let mut out = Vec::new();
        assert!(write_decimal_text(
            &ty, typmod, "-12.5", true, false, &mut out
        ));
        // Union branch 1 (after null), then bytes of -1250.
        assert_eq!(out, vec![2, 4, 0xFB, 0x1E]);
    }
}
