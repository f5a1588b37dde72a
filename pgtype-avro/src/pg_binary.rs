//! PostgreSQL's binary format (the types' `send`/`recv` functions): reading the values that
//! `COPY … TO STDOUT (FORMAT binary)` and binary query results carry.
//!
//! The binary form is cheaper than text on both sides: the server skips the output
//! functions (`timestamptz` and `numeric` text are costly to print) and the reader skips
//! parsing. Only the types listed by [`reads`] are read here; a caller keeps the text
//! format for a value of any other type. Every type read here gives the very same
//! [`PgValue`] as [`crate::parse_text`] of its text form (the PostgreSQL-oracle test checks
//! both against the server for every type case).
//!
//! Layouts (PostgreSQL's `*send` functions, network byte order):
//! - `bool` 1 byte; `int2`/`int4`/`int8` two's complement; `oid`/`xid`/`cid` `u32`;
//!   `xid8`/`pg_lsn` `u64`; `float4`/`float8` IEEE 754.
//! - `numeric`: `ndigits i16, weight i16, sign u16, dscale u16`, then `ndigits` base-10000
//!   digits (`i16`); the value is `Σ digit[i] · 10000^(weight − i)`; sign `0xC000` is NaN,
//!   `0xD000` infinity, `0xF000` minus infinity.
//! - `date`: `i32` days since 2000-01-01 (`i32::MAX`/`MIN` infinity); `time`: `i64` µs;
//!   `timetz`: `i64` µs and `i32` zone in seconds *west* of Greenwich; `timestamp`(`tz`):
//!   `i64` µs since 2000-01-01 00:00 (UTC) (`i64::MAX`/`MIN` infinity); `interval`: `i64`
//!   µs, `i32` days, `i32` months.
//! - `uuid`: 16 bytes; `bytea`: the bytes.
//! - `text`, `varchar`, `bpchar`, `name`, `json`, enum labels: the text in the client
//!   encoding (UTF-8); `jsonb`: a version byte (1) and the text.

use crate::Error;
use crate::avro::{write_decimal_unscaled, write_slot};
use crate::schema::numeric_decimal_params;
use crate::types::{Builtin, PgType};
use crate::value::{PgDate, PgInterval, PgNumeric, PgTimestamp, PgValue};

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = EPOCH_DAYS as i64 * 86_400 * 1_000_000;

/// The signature that starts `COPY … (FORMAT binary)` data (then a 32-bit flags field and
/// a 32-bit header extension length).
pub const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The field count of −1 that ends `COPY … (FORMAT binary)` data.
pub const COPY_TRAILER: [u8; 2] = [0xff, 0xff];

/// Whether values of `ty` can be read from the binary format (given as
/// [`crate::ColumnValue::Binary`]). Domains follow their base type.
pub fn reads(ty: &PgType) -> bool {
    use Builtin::*;
    match ty {
        PgType::Builtin(b) => matches!(
            b,
            Bool | Int2
                | Int4
                | Int8
                | Oid
                | Xid
                | Cid
                | Xid8
                | PgLsn
                | Float4
                | Float8
                | Numeric
                | Date
                | Time
                | TimeTz
                | Timestamp
                | TimestampTz
                | Interval
                | Uuid
                | Bytea
                | Text
                | Varchar
                | Bpchar
                | Name
                | Json
                | Jsonb
        ),
        PgType::Enum { .. } => true,
        PgType::Domain { base, .. } => reads(base),
        _ => false,
    }
}

/// The text of a text-carried value (`text`, `varchar`, `bpchar`, `name`, `json`, `jsonb`,
/// enum labels) in its binary form: `None` for every other type.
fn text_of<'a>(ty: &PgType, bytes: &'a [u8]) -> Option<Result<&'a str, Error>> {
    use Builtin::*;
    let text = |b: &'a [u8]| std::str::from_utf8(b).map_err(|_| err(ty, "not valid UTF-8"));
    match ty {
        PgType::Builtin(Text | Varchar | Bpchar | Name | Json) | PgType::Enum { .. } => {
            Some(text(bytes))
        }
        PgType::Builtin(Jsonb) => Some(match bytes.split_first() {
            Some((1, rest)) => text(rest),
            _ => Err(err(ty, "not jsonb version 1")),
        }),
        PgType::Domain { base, .. } => text_of(base, bytes),
        _ => None,
    }
}

/// Reads a value of type `ty` (one [`reads`] accepts) from its binary form: the same
/// value [`crate::parse_text`] gives for its text form.
pub fn parse_binary(ty: &PgType, typmod: i32, bytes: &[u8]) -> Result<PgValue, Error> {
    use Builtin::*;
    if let Some(text) = text_of(ty, bytes) {
        let text = text?.to_owned();
        return Ok(match base_of(ty) {
            PgType::Builtin(Json | Jsonb) => PgValue::Json(text),
            _ => PgValue::Text(text),
        });
    }
    let b = match ty {
        PgType::Builtin(b) => *b,
        PgType::Domain {
            base, base_typmod, ..
        } => return parse_binary(base, if typmod >= 0 { typmod } else { *base_typmod }, bytes),
        _ => return Err(err(ty, "no binary reader for this type")),
    };
    let mut r = Reader { ty, bytes };
    let value = match b {
        Bool => match r.array::<1>()? {
            [0] => PgValue::Bool(false),
            [1] => PgValue::Bool(true),
            _ => return Err(err(ty, "not 0 or 1")),
        },
        Int2 => PgValue::Int2(i16::from_be_bytes(r.array()?)),
        Int4 => PgValue::Int4(i32::from_be_bytes(r.array()?)),
        Int8 => PgValue::Int8(i64::from_be_bytes(r.array()?)),
        Oid | Xid | Cid => PgValue::Oid(u32::from_be_bytes(r.array()?)),
        Xid8 | PgLsn => PgValue::U64(u64::from_be_bytes(r.array()?)),
        Float4 => PgValue::Float4(f32::from_be_bytes(r.array()?)),
        Float8 => PgValue::Float8(f64::from_be_bytes(r.array()?)),
        Numeric => PgValue::Numeric(numeric(&mut r)?),
        Date => PgValue::Date(match i32::from_be_bytes(r.array()?) {
            i32::MAX => PgDate::Infinity,
            i32::MIN => PgDate::NegInfinity,
            days => PgDate::Days(
                days.checked_add(EPOCH_DAYS)
                    .ok_or_else(|| err(ty, "date out of range"))?,
            ),
        }),
        Time => PgValue::Time(i64::from_be_bytes(r.array()?)),
        TimeTz => {
            let micros = i64::from_be_bytes(r.array()?);
            let west = i32::from_be_bytes(r.array()?);
            PgValue::TimeTz {
                micros,
                offset_seconds: west
                    .checked_neg()
                    .ok_or_else(|| err(ty, "zone out of range"))?,
            }
        }
        Timestamp => PgValue::Timestamp(timestamp(ty, i64::from_be_bytes(r.array()?))?),
        TimestampTz => PgValue::TimestampTz(timestamp(ty, i64::from_be_bytes(r.array()?))?),
        Interval => {
            let micros = i64::from_be_bytes(r.array()?);
            let days = i32::from_be_bytes(r.array()?);
            let months = i32::from_be_bytes(r.array()?);
            PgValue::Interval(PgInterval {
                months,
                days,
                micros,
            })
        }
        Uuid => PgValue::Uuid(uuid::Uuid::from_bytes(r.array()?)),
        Bytea => PgValue::Bytes(std::mem::take(&mut r.bytes).to_vec()),
        _ => return Err(err(ty, "no binary reader for this type")),
    };
    if !r.bytes.is_empty() {
        return Err(err(ty, "trailing bytes"));
    }
    Ok(value)
}

/// Appends the binary form of `value`, of type `ty` (one [`reads`] accepts), as the type's
/// `recv` function reads it (what `COPY … FROM STDIN (FORMAT binary)` takes): the inverse
/// of [`parse_binary`]. NULL, the unchanged-TOAST marker and a value of another type are
/// errors.
pub fn send(ty: &PgType, value: &PgValue, out: &mut Vec<u8>) -> Result<(), Error> {
    use Builtin::*;
    let base = base_of(ty);
    let mismatch = || Error::ValueType {
        type_name: ty.name(),
        value: format!("{value:?}").chars().take(80).collect(),
    };
    match (base, value) {
        (
            PgType::Builtin(Text | Varchar | Bpchar | Name | Json) | PgType::Enum { .. },
            PgValue::Text(t) | PgValue::Json(t),
        ) => {
            out.extend_from_slice(t.as_bytes());
        }
        (PgType::Builtin(Jsonb), PgValue::Json(t) | PgValue::Text(t)) => {
            out.push(1);
            out.extend_from_slice(t.as_bytes());
        }
        (PgType::Builtin(Bool), PgValue::Bool(b)) => out.push(u8::from(*b)),
        (PgType::Builtin(Int2), PgValue::Int2(x)) => out.extend_from_slice(&x.to_be_bytes()),
        (PgType::Builtin(Int4), PgValue::Int4(x)) => out.extend_from_slice(&x.to_be_bytes()),
        (PgType::Builtin(Int8), PgValue::Int8(x)) => out.extend_from_slice(&x.to_be_bytes()),
        (PgType::Builtin(Oid | Xid | Cid), PgValue::Oid(x)) => {
            out.extend_from_slice(&x.to_be_bytes());
        }
        (PgType::Builtin(Xid8 | PgLsn), PgValue::U64(x)) => {
            out.extend_from_slice(&x.to_be_bytes());
        }
        (PgType::Builtin(Float4), PgValue::Float4(x)) => out.extend_from_slice(&x.to_be_bytes()),
        (PgType::Builtin(Float8), PgValue::Float8(x)) => out.extend_from_slice(&x.to_be_bytes()),
        (PgType::Builtin(Numeric), PgValue::Numeric(n)) => {
            send_numeric(n, out).ok_or_else(mismatch)?
        }
        (PgType::Builtin(Date), PgValue::Date(d)) => {
            let days = match d {
                PgDate::Infinity => i32::MAX,
                PgDate::NegInfinity => i32::MIN,
                PgDate::Days(days) => days.checked_sub(EPOCH_DAYS).ok_or_else(mismatch)?,
            };
            out.extend_from_slice(&days.to_be_bytes());
        }
        (PgType::Builtin(Time), PgValue::Time(us)) => out.extend_from_slice(&us.to_be_bytes()),
        (
            PgType::Builtin(TimeTz),
            PgValue::TimeTz {
                micros,
                offset_seconds,
            },
        ) => {
            out.extend_from_slice(&micros.to_be_bytes());
            let west = offset_seconds.checked_neg().ok_or_else(mismatch)?;
            out.extend_from_slice(&west.to_be_bytes());
        }
        (PgType::Builtin(Timestamp), PgValue::Timestamp(t))
        | (PgType::Builtin(TimestampTz), PgValue::TimestampTz(t)) => {
            let us = match t {
                PgTimestamp::Infinity => i64::MAX,
                PgTimestamp::NegInfinity => i64::MIN,
                PgTimestamp::Micros(us) => us.checked_sub(EPOCH_MICROS).ok_or_else(mismatch)?,
            };
            out.extend_from_slice(&us.to_be_bytes());
        }
        (PgType::Builtin(Interval), PgValue::Interval(i)) => {
            out.extend_from_slice(&i.micros.to_be_bytes());
            out.extend_from_slice(&i.days.to_be_bytes());
            out.extend_from_slice(&i.months.to_be_bytes());
        }
        (PgType::Builtin(Uuid), PgValue::Uuid(u)) => out.extend_from_slice(u.as_bytes()),
        (PgType::Builtin(Bytea), PgValue::Bytes(b)) => out.extend_from_slice(b),
        _ => return Err(mismatch()),
    }
    Ok(())
}

/// A `numeric` in `numeric_send`'s normalized form: base-10000 digits without leading or
/// trailing zero digits, the display scale kept. `None` for text that is not plain decimal.
fn send_numeric(n: &PgNumeric, out: &mut Vec<u8>) -> Option<()> {
    let header = |ndigits: i16, weight: i16, sign: u16, dscale: u16, out: &mut Vec<u8>| {
        out.extend_from_slice(&ndigits.to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
    };
    let text = match n {
        PgNumeric::NaN => {
            header(0, 0, 0xC000, 0, out);
            return Some(());
        }
        // PostgreSQL sends a display scale of 32 with the infinities (the bits its
        // `NUMERIC_DSCALE` reads from their header); `numeric_recv` ignores it. Sent the
        // same, so the forms compare equal.
        PgNumeric::Infinity => {
            header(0, 0, 0xD000, 32, out);
            return Some(());
        }
        PgNumeric::NegInfinity => {
            header(0, 0, 0xF000, 32, out);
            return Some(());
        }
        PgNumeric::Finite(text) => text.as_bytes(),
    };
    let (negative, body) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let (int, frac) = match body.iter().position(|&c| c == b'.') {
        Some(dot) => (&body[..dot], &body[dot + 1..]),
        None => (body, &[][..]),
    };
    if int.is_empty() && frac.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    let dscale = u16::try_from(frac.len()).ok()?;
    // Digit `k` of the integer part (from the right, 0-based) and of the fraction.
    let int_groups = int.len().div_ceil(4);
    let frac_groups = frac.len().div_ceil(4);
    let group = |g: usize| -> i16 {
        // Groups 0..int_groups are the integer part, left to right, then the fraction.
        let mut v = 0i16;
        for k in 0..4 {
            let digit = if g < int_groups {
                // Position from the left of the zero-padded integer part.
                let pos = g * 4 + k;
                let pad = int_groups * 4 - int.len();
                if pos < pad { 0 } else { int[pos - pad] - b'0' }
            } else {
                let pos = (g - int_groups) * 4 + k;
                frac.get(pos).map_or(0, |d| d - b'0')
            };
            v = v * 10 + i16::from(digit);
        }
        v
    };
    let total = int_groups + frac_groups;
    let first = (0..total).find(|&g| group(g) != 0);
    let Some(first) = first else {
        header(0, 0, 0, dscale, out);
        return Some(());
    };
    let last = (0..total).rev().find(|&g| group(g) != 0)?;
    let weight = i16::try_from(int_groups).ok()? - 1 - i16::try_from(first).ok()?;
    let ndigits = i16::try_from(last - first + 1).ok()?;
    header(
        ndigits,
        weight,
        if negative { 0x4000 } else { 0 },
        dscale,
        out,
    );
    for g in first..=last {
        out.extend_from_slice(&group(g).to_be_bytes());
    }
    Some(())
}

/// Writes the slot of a value given in binary form: the same bytes as
/// [`crate::ColumnValue::Text`] of its text form would give. Text-carried values and
/// `bytea` are copied straight from `bytes`.
pub(crate) fn write_binary(
    ty: &PgType,
    typmod: i32,
    bytes: &[u8],
    nullable: bool,
    unchanged: bool,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    use crate::binary::{write_bytes, write_long};
    if let PgType::Builtin(Builtin::Numeric) = ty
        && let Some((precision, scale)) = numeric_decimal_params(typmod)
        && let Some(unscaled) = numeric_unscaled(bytes, precision, scale)
    {
        write_decimal_unscaled(ty, typmod, unscaled, nullable, unchanged, out);
        return Ok(());
    }
    let plain = match text_of(ty, bytes) {
        Some(text) => Some(text?.as_bytes()),
        None if matches!(base_of(ty), PgType::Builtin(Builtin::Bytea)) => Some(bytes),
        None => None,
    };
    match plain {
        // One plain `string`/`bytes` branch (after `null` when nullable).
        Some(plain) => {
            if nullable || unchanged {
                write_long(i64::from(nullable), out);
            }
            write_bytes(plain, out);
            Ok(())
        }
        None => write_slot(
            ty,
            typmod,
            &parse_binary(ty, typmod, bytes)?,
            nullable,
            unchanged,
            out,
        ),
    }
}

fn base_of(ty: &PgType) -> &PgType {
    match ty {
        PgType::Domain { base, .. } => base_of(base),
        _ => ty,
    }
}

fn err(ty: &PgType, reason: &str) -> Error {
    Error::Binary {
        type_name: ty.name(),
        reason: reason.to_owned(),
    }
}

/// A cursor over one value's bytes.
struct Reader<'a, 't> {
    ty: &'t PgType,
    bytes: &'a [u8],
}

impl Reader<'_, '_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(err(self.ty, "too short"));
        };
        self.bytes = rest;
        Ok(*head)
    }
}

fn timestamp(ty: &PgType, since_2000: i64) -> Result<PgTimestamp, Error> {
    Ok(match since_2000 {
        i64::MAX => PgTimestamp::Infinity,
        i64::MIN => PgTimestamp::NegInfinity,
        us => PgTimestamp::Micros(us.checked_add(EPOCH_MICROS).ok_or_else(|| {
            err(
                ty,
                "timestamp beyond the Avro long range of microseconds since 1970",
            )
        })?),
    })
}

/// A finite binary `numeric` as its unscaled integer for `numeric(precision, scale)` (the
/// value times 10^scale), without text in between: `None` for anything else (special
/// values, more digits than the type allows, digits beyond the scale, malformed bytes),
/// which the general path then reads and reports.
fn numeric_unscaled(bytes: &[u8], precision: u32, scale: u32) -> Option<i128> {
    let header = bytes.first_chunk::<8>()?;
    let ndigits = i16::from_be_bytes([header[0], header[1]]);
    let weight = i32::from(i16::from_be_bytes([header[2], header[3]]));
    let negative = match u16::from_be_bytes([header[4], header[5]]) {
        0x0000 => false,
        0x4000 => true,
        _ => return None,
    };
    let digits = &bytes[8..];
    if usize::try_from(ndigits).ok()? * 2 != digits.len() {
        return None;
    }
    let scale = i32::try_from(scale).ok()?;
    let mut acc: i128 = 0;
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let d = i16::from_be_bytes([pair[0], pair[1]]);
        if !(0..10_000).contains(&d) {
            return None;
        }
        let d = i128::from(d);
        // The digit's weight in units of 10^-scale.
        let exponent = 4 * (weight - i32::try_from(i).ok()?) + scale;
        if exponent >= 0 {
            let unit = 10i128.checked_pow(u32::try_from(exponent).ok()?)?;
            acc = acc.checked_add(d.checked_mul(unit)?)?;
        } else {
            let unit = 10i128.checked_pow(u32::try_from(-exponent).ok()?.min(5))?;
            if d % unit != 0 {
                return None;
            }
            acc += d / unit;
        }
    }
    if precision < 39 && acc >= 10i128.pow(precision) {
        return None;
    }
    Some(if negative { -acc } else { acc })
}

/// A binary `numeric` as the text `numeric_out` prints (all `dscale` fraction digits).
fn numeric(r: &mut Reader<'_, '_>) -> Result<PgNumeric, Error> {
    let ndigits = i16::from_be_bytes(r.array()?);
    let weight = i16::from_be_bytes(r.array()?);
    let sign = u16::from_be_bytes(r.array()?);
    let dscale = u16::from_be_bytes(r.array()?);
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Ok(PgNumeric::NaN),
        0xD000 => return Ok(PgNumeric::Infinity),
        0xF000 => return Ok(PgNumeric::NegInfinity),
        _ => return Err(err(r.ty, "unknown numeric sign")),
    };
    let ndigits = usize::try_from(ndigits).map_err(|_| err(r.ty, "negative digit count"))?;
    let mut digits = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        let d = i16::from_be_bytes(r.array()?);
        if !(0..10_000).contains(&d) {
            return Err(err(r.ty, "a digit outside 0..9999"));
        }
        digits.push(d as u16);
    }
    // digits[i] has weight `weight - i`; absent ones are 0.
    let digit = |w: i32| -> u16 {
        let i = i32::from(weight) - w;
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut text = String::with_capacity(8 + 4 * ndigits + usize::from(dscale));
    if negative {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        use std::fmt::Write;
        let _ = write!(text, "{}", digit(i32::from(weight)));
        for w in (0..i32::from(weight)).rev() {
            let _ = write!(text, "{:04}", digit(w));
        }
    }
    if dscale > 0 {
        use std::fmt::Write;
        text.push('.');
        let end = text.len() + usize::from(dscale);
        for w in (1..=i32::from(dscale.div_ceil(4))).map(|k| -k) {
            let _ = write!(text, "{:04}", digit(w));
        }
        // The last group may hold digits past the display scale (always zeros).
        text.truncate(end);
    }
    Ok(PgNumeric::Finite(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(ndigits: i16, weight: i16, sign: u16, dscale: u16, d: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&ndigits.to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&dscale.to_be_bytes());
        for x in d {
            b.extend_from_slice(&x.to_be_bytes());
        }
        b
    }

    fn numeric_text(b: &[u8]) -> String {
        match parse_binary(&PgType::Builtin(Builtin::Numeric), -1, b).unwrap() {
            PgValue::Numeric(PgNumeric::Finite(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numerics_print_like_numeric_out() {
        // 12345.678 = [1, 2345, 6780] weight 1, dscale 3
        assert_eq!(
            numeric_text(&numeric_bytes(3, 1, 0, 3, &[1, 2345, 6780])),
            "12345.678"
        );
        // -0.000001: [100] weight -2, dscale 6
        assert_eq!(
            numeric_text(&numeric_bytes(1, -2, 0x4000, 6, &[100])),
            "-0.000001"
        );
        // 0 with dscale 2
        assert_eq!(numeric_text(&numeric_bytes(0, 0, 0, 2, &[])), "0.00");
        // 10000000 = [1000] weight 1... i.e. 1000·10000; trailing zero digits omitted
        assert_eq!(
            numeric_text(&numeric_bytes(1, 1, 0, 0, &[1000])),
            "10000000"
        );
        assert_eq!(numeric_text(&numeric_bytes(1, 2, 0, 0, &[7])), "700000000");
        assert!(matches!(
            parse_binary(
                &PgType::Builtin(Builtin::Numeric),
                -1,
                &numeric_bytes(0, 0, 0xC000, 0, &[])
            ),
            Ok(PgValue::Numeric(PgNumeric::NaN))
        ));
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        let ty = |b| PgType::Builtin(b);
        for (b, bytes) in [
            (Builtin::Int8, &[0u8; 7][..]),
            (Builtin::Int4, &[0u8; 5][..]),
            (Builtin::Bool, &[2u8][..]),
            (Builtin::Numeric, &[0, 1, 0, 0, 0x12, 0x34, 0, 0][..]),
            (Builtin::Numeric, &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10][..]),
            (Builtin::Numeric, &[0xff, 0xff, 0, 0, 0, 0, 0, 0][..]),
            (Builtin::Jsonb, &[2, b'{', b'}'][..]),
            (Builtin::Text, &[0xff][..]),
            (Builtin::Uuid, &[0u8; 15][..]),
        ] {
            assert!(parse_binary(&ty(b), -1, bytes).is_err(), "{b:?} {bytes:?}");
            assert!(
                write_binary(&ty(b), -1, bytes, true, false, &mut Vec::new()).is_err(),
                "{b:?} {bytes:?}"
            );
        }
        assert!(!reads(&PgType::Builtin(Builtin::Inet)));
        assert!(parse_binary(&PgType::Builtin(Builtin::Inet), -1, &[]).is_err());
    }

    /// `numeric` text in PostgreSQL's normalized binary form (what `numeric_send` sends).
    fn numeric_send(text: &str) -> Vec<u8> {
        let (negative, body) = match text.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, text),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let int = int.trim_start_matches('0');
        let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let frac_padded = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let mut groups: Vec<i16> = int
            .as_bytes()
            .chunks(4)
            .chain(frac_padded.as_bytes().chunks(4))
            .map(|g| std::str::from_utf8(g).unwrap().parse().unwrap())
            .collect();
        let mut weight = (int.len() / 4) as i16 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let sign = if negative && !groups.is_empty() {
            0x4000
        } else {
            0
        };
        numeric_bytes(
            groups.len() as i16,
            weight,
            sign,
            frac.len() as u16,
            &groups,
        )
    }

    proptest::proptest! {
        /// `send` writes numerics in `numeric_send`'s normalized form, and every value it
        /// writes reads back as itself.
        #[test]
        fn numerics_are_sent_normalized(int in "-?[0-9]{1,24}", frac in "[0-9]{0,12}") {
            let ty = PgType::Builtin(Builtin::Numeric);
            let text = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            let v = crate::parse_text(&ty, -1, &text).unwrap();
            let mut sent = Vec::new();
            send(&ty, &v, &mut sent).unwrap();
            proptest::prop_assert_eq!(&sent, &numeric_send(&text), "{}", text);
            let back = parse_binary(&ty, -1, &sent).unwrap();
            let canonical = |v: &PgValue| match v {
                PgValue::Numeric(PgNumeric::Finite(t)) => {
                    t.trim_start_matches('-').trim_start_matches('0').to_string()
                }
                other => format!("{other:?}"),
            };
            proptest::prop_assert_eq!(canonical(&back), canonical(&v));
        }

        /// A `numeric(p, s)` value read from its binary form writes the same bytes as from
        /// its text, through the unscaled fast path or the general one.
        #[test]
        fn numerics_from_binary_encode_like_their_text(
            int in "-?[0-9]{1,20}",
            frac in "[0-9]{0,8}",
            p in 1u32..40,
            s in 0u32..10,
        ) {
            let ty = PgType::Builtin(Builtin::Numeric);
            let typmod = if s <= p { ((p << 16) | s) as i32 + 4 } else { -1 };
            let text = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            // The text numeric_out would print: no leading zeros, no "-0".
            let v = parse_binary(&ty, -1, &numeric_send(&text)).unwrap();
            let PgValue::Numeric(PgNumeric::Finite(printed)) = &v else { panic!("{v:?}") };
            let reference = crate::parse_text(&ty, -1, &text).unwrap();
            let PgValue::Numeric(PgNumeric::Finite(parsed)) = &reference else { panic!() };
            let canonical = |t: &str| t.trim_start_matches('-').trim_start_matches('0').to_string();
            proptest::prop_assert_eq!(canonical(printed), canonical(parsed));
            for nullable in [false, true] {
                let (mut from_text, mut from_binary) = (Vec::new(), Vec::new());
                let by_text = crate::avro::write_slot(&ty, typmod, &v, nullable, false, &mut from_text);
                let by_binary = write_binary(&ty, typmod, &numeric_send(&text), nullable, false, &mut from_binary);
                proptest::prop_assert_eq!(by_text.is_ok(), by_binary.is_ok(), "{} {}", text, typmod);
                proptest::prop_assert_eq!(from_text, from_binary, "{} {}", text, typmod);
            }
        }

        /// Any byte string is read or refused, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            for b in Builtin::ALL {
                let ty = PgType::Builtin(*b);
                if reads(&ty) {
                    let _ = parse_binary(&ty, -1, &bytes);
                    let _ = parse_binary(&ty, 0x0006_0006, &bytes);
                    let _ = write_binary(&ty, 655_366, &bytes, true, true, &mut Vec::new());
                }
            }
        }
    }
}
