//! PostgreSQL text format: parsing what pgoutput and `::text` produce, and rendering values
//! back to input text that PostgreSQL reads losslessly.
//!
//! Expected session settings (the producer pins them): `DateStyle=ISO`, `TimeZone=UTC`
//! (other zones are parsed correctly too, the offset is applied), `IntervalStyle=postgres` or
//! `iso_8601` (both parsed; `sql_standard` and `postgres_verbose` are rejected),
//! `extra_float_digits >= 1` (shortest exact float output), `bytea_output=hex` (the `escape`
//! format is parsed too).

use crate::Error;
use crate::error::parse_err;
use crate::types::{Builtin, PgType};
use crate::value::{
    ArrayDim, PgArray, PgDate, PgInterval, PgNumeric, PgRange, PgTimestamp, PgValue, RangeBound,
    civil_from_days, days_from_civil, days_in_month,
};

const USEC_PER_SEC: i64 = 1_000_000;
const USEC_PER_DAY: i64 = 86_400 * USEC_PER_SEC;

/// Parses PostgreSQL's text output for a value of type `ty` with type modifier `typmod`.
pub fn parse_text(ty: &PgType, typmod: i32, text: &str) -> Result<PgValue, Error> {
    match ty {
        PgType::Builtin(b) => parse_builtin(*b, text),
        PgType::Array { element, .. } => parse_array(element, typmod, text),
        PgType::Enum { .. } | PgType::Other { .. } => Ok(PgValue::Text(text.to_owned())),
        PgType::Domain {
            base, base_typmod, ..
        } => parse_text(base, if typmod >= 0 { typmod } else { *base_typmod }, text),
        PgType::Composite { name, fields, .. } => {
            let raw = split_composite(text).map_err(|r| parse_err(name, text, r))?;
            if raw.len() != fields.len() {
                return Err(parse_err(
                    name,
                    text,
                    format!("{} attributes, expected {}", raw.len(), fields.len()),
                ));
            }
            let mut out = Vec::with_capacity(fields.len());
            for (f, r) in fields.iter().zip(raw) {
                let v = match r {
                    None => PgValue::Null,
                    Some(t) => parse_text(&f.pg_type, f.typmod, &t)?,
                };
                out.push((f.name.clone(), v));
            }
            Ok(PgValue::Composite(out))
        }
        PgType::Range { name, subtype, .. } => {
            Ok(PgValue::Range(parse_range(name, subtype, text)?))
        }
        PgType::Multirange { name, range, .. } => {
            let subtype = match range.as_ref() {
                PgType::Range { subtype, .. } => subtype,
                _ => return Err(parse_err(name, text, "multirange over a non-range type")),
            };
            let parts = split_multirange(text).map_err(|r| parse_err(name, text, r))?;
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                out.push(parse_range(name, subtype, p)?);
            }
            Ok(PgValue::Multirange(out))
        }
    }
}

fn parse_builtin(b: Builtin, text: &str) -> Result<PgValue, Error> {
    use Builtin::*;
    let err = |r: &str| parse_err(b.name(), text, r);
    Ok(match b {
        Bool => match text {
            "t" | "true" => PgValue::Bool(true),
            "f" | "false" => PgValue::Bool(false),
            _ => return Err(err("expected t or f")),
        },
        Int2 => PgValue::Int2(text.trim().parse().map_err(|_| err("not an int2"))?),
        Int4 => PgValue::Int4(text.trim().parse().map_err(|_| err("not an int4"))?),
        Int8 => PgValue::Int8(text.trim().parse().map_err(|_| err("not an int8"))?),
        Oid | Xid | Cid => PgValue::Oid(text.trim().parse().map_err(|_| err("not a uint32"))?),
        Xid8 => PgValue::U64(text.trim().parse().map_err(|_| err("not a uint64"))?),
        PgLsn => {
            let (hi, lo) = text.split_once('/').ok_or_else(|| err("expected X/X"))?;
            let hi = u32::from_str_radix(hi, 16).map_err(|_| err("bad hex"))?;
            let lo = u32::from_str_radix(lo, 16).map_err(|_| err("bad hex"))?;
            PgValue::U64((u64::from(hi) << 32) | u64::from(lo))
        }
        Float4 => PgValue::Float4(parse_float(text).ok_or_else(|| err("not a float4"))? as f32),
        Float8 => PgValue::Float8(parse_float(text).ok_or_else(|| err("not a float8"))?),
        Numeric => PgValue::Numeric(parse_numeric(text).ok_or_else(|| err("not a numeric"))?),
        Json | Jsonb => PgValue::Json(text.to_owned()),
        Bytea => PgValue::Bytes(parse_bytea(text).map_err(|r| err(&r))?),
        Uuid => PgValue::Uuid(uuid::Uuid::parse_str(text).map_err(|_| err("not a uuid"))?),
        Date => PgValue::Date(parse_date(text).map_err(|r| err(&r))?),
        Time => PgValue::Time(parse_time(text).map_err(|r| err(&r))?),
        TimeTz => {
            let (micros, offset_seconds) = parse_timetz(text).map_err(|r| err(&r))?;
            PgValue::TimeTz {
                micros,
                offset_seconds,
            }
        }
        Timestamp => PgValue::Timestamp(parse_timestamp(text, false).map_err(|r| err(&r))?),
        TimestampTz => PgValue::TimestampTz(parse_timestamp(text, true).map_err(|r| err(&r))?),
        Interval => PgValue::Interval(parse_interval(text).map_err(|r| err(&r))?),
        _ => PgValue::Text(text.to_owned()),
    })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => {
            let t = text.trim();
            // Rust also accepts "inf"/"nan" spellings PostgreSQL never prints; reject them.
            if t.bytes()
                .any(|c| c.is_ascii_alphabetic() && c != b'e' && c != b'E')
            {
                return None;
            }
            t.parse().ok()
        }
    }
}

/// Parses numeric text (`-12.340`, `NaN`, `Infinity`, `-Infinity`).
pub fn parse_numeric(text: &str) -> Option<PgNumeric> {
    match text {
        "NaN" => return Some(PgNumeric::NaN),
        "Infinity" => return Some(PgNumeric::Infinity),
        "-Infinity" => return Some(PgNumeric::NegInfinity),
        _ => {}
    }
    let body = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    Some(PgNumeric::Finite(text.to_owned()))
}

fn parse_bytea(text: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let h = hex.as_bytes();
        if h.len() % 2 != 0 {
            return Err("odd number of hex digits".into());
        }
        let mut out = Vec::with_capacity(h.len() / 2);
        for pair in h.chunks(2) {
            let s = std::str::from_utf8(pair).map_err(|_| "bad hex")?;
            out.push(u8::from_str_radix(s, 16).map_err(|_| "bad hex digit")?);
        }
        Ok(out)
    } else {
        // bytea_output = escape
        let b = text.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                if b.get(i + 1) == Some(&b'\\') {
                    out.push(b'\\');
                    i += 2;
                } else {
                    let oct = b.get(i + 1..i + 4).ok_or("truncated escape")?;
                    let s = std::str::from_utf8(oct).map_err(|_| "bad escape")?;
                    out.push(u8::from_str_radix(s, 8).map_err(|_| "bad octal escape")?);
                    i += 4;
                }
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Ok(out)
    }
}

fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    }
}

fn parse_ymd(s: &str, bc: bool) -> Result<i64, String> {
    let mut it = s.splitn(3, '-');
    let (y, m, d) = match (it.next(), it.next(), it.next()) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => return Err("expected YYYY-MM-DD".into()),
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    if !digits(y) || !digits(m) || !digits(d) || y.len() > 9 {
        return Err("expected YYYY-MM-DD".into());
    }
    let y: i64 = y.parse().map_err(|_| "bad year")?;
    let m: u32 = m.parse().map_err(|_| "bad month")?;
    let d: u32 = d.parse().map_err(|_| "bad day")?;
    if bc && y == 0 {
        return Err("year 0 BC does not exist".into());
    }
    let y = if bc { 1 - y } else { y };
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return Err("date out of range".into());
    }
    Ok(days_from_civil(y, m, d))
}

fn parse_date(text: &str) -> Result<PgDate, String> {
    match text {
        "infinity" => return Ok(PgDate::Infinity),
        "-infinity" => return Ok(PgDate::NegInfinity),
        _ => {}
    }
    let (t, bc) = strip_bc(text);
    let days = parse_ymd(t, bc)?;
    Ok(PgDate::Days(
        i32::try_from(days).map_err(|_| "date out of range")?,
    ))
}

/// `HH:MM:SS[.ffffff]` (hours may exceed 24 when `allow_long_hours`) → microseconds.
fn parse_hms(s: &str, allow_long_hours: bool) -> Result<i128, String> {
    let bad = || format!("bad time {s:?}");
    let mut it = s.splitn(3, ':');
    let (h, m, sec) = match (it.next(), it.next(), it.next()) {
        (Some(h), Some(m), Some(sec)) => (h, m, sec),
        (Some(h), Some(m), None) => (h, m, "0"),
        _ => return Err(bad()),
    };
    let (sec, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    if !digits(h) || !digits(m) || !digits(sec) || !(frac.is_empty() || digits(frac)) {
        return Err(bad());
    }
    if frac.len() > 6 {
        return Err("more than 6 fractional digits".into());
    }
    if h.len() > 12 {
        return Err("time out of range".into());
    }
    let h: i128 = h.parse().map_err(|_| bad())?;
    let m: i128 = m.parse().map_err(|_| bad())?;
    let sec: i128 = sec.parse().map_err(|_| bad())?;
    let mut f: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    for _ in frac.len()..6 {
        f *= 10;
    }
    if m > 59 || sec > 60 || (!allow_long_hours && h > 24) {
        return Err(bad());
    }
    Ok(h * 3_600_000_000 + m * 60_000_000 + sec * 1_000_000 + f)
}

fn parse_time(text: &str) -> Result<i64, String> {
    let us = parse_hms(text, false)?;
    if us > i128::from(USEC_PER_DAY) {
        return Err("time out of range".into());
    }
    Ok(us as i64)
}

/// `+HH[:MM[:SS]]` → seconds east of Greenwich.
fn parse_offset(s: &str) -> Result<i32, String> {
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(format!("bad UTC offset {s:?}")),
    };
    let mut total = 0i32;
    let mut mult = 3600;
    for part in rest.split(':') {
        if part.is_empty()
            || part.len() > 2
            || !part.bytes().all(|c| c.is_ascii_digit())
            || mult == 0
        {
            return Err(format!("bad UTC offset {s:?}"));
        }
        total += part.parse::<i32>().map_err(|e| e.to_string())? * mult;
        mult /= 60;
    }
    Ok(sign * total)
}

fn split_offset(text: &str) -> Result<(&str, &str), String> {
    let pos = text
        .rfind(['+', '-'])
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("missing UTC offset in {text:?}"))?;
    Ok((&text[..pos], &text[pos..]))
}

fn parse_timetz(text: &str) -> Result<(i64, i32), String> {
    let (t, off) = split_offset(text)?;
    Ok((parse_time(t)?, parse_offset(off)?))
}

/// A timestamp in PostgreSQL's usual ISO output, `YYYY-MM-DD HH:MM:SS[.f{1,6}][±HH[:MM[:SS]]]`
/// (four-digit AD year), read by position, as microseconds since 1970. `None` for any
/// other shape or anything out of range, which the general parser then handles (and
/// explains), so both paths accept and compute exactly the same values.
fn canonical_timestamp(b: &[u8], tz: bool) -> Option<i64> {
    fn num(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    }
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let y = i64::from(num(&b[0..4])?);
    let m = num(&b[5..7])?;
    let d = num(&b[8..10])?;
    let h = num(&b[11..13])?;
    let mi = num(&b[14..16])?;
    let sec = num(&b[17..19])?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || mi > 59 || sec > 60 || h > 24
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut frac: i128 = 0;
    if let Some((b'.', after)) = rest.split_first() {
        let n = after.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 6 {
            return None;
        }
        frac = i128::from(num(&after[..n])?) * 10i128.pow(6 - n as u32);
        rest = &after[n..];
    }
    let mut offset = 0i32;
    if tz {
        let (sign, digits) = match rest.split_first()? {
            (b'+', d) => (1, d),
            (b'-', d) => (-1, d),
            _ => return None,
        };
        let mut mult = 3600i32;
        let mut parts = digits.split(|&c| c == b':');
        for part in parts.by_ref().take(3) {
            if part.len() != 2 {
                return None;
            }
            offset += i32::try_from(num(part)?).ok()? * mult;
            mult /= 60;
        }
        if parts.next().is_some() {
            return None;
        }
        offset *= sign;
    } else if !rest.is_empty() {
        return None;
    }
    let us = i128::from(h) * 3_600_000_000
        + i128::from(mi) * 60_000_000
        + i128::from(sec) * 1_000_000
        + frac;
    let total = i128::from(days_from_civil(y, m, d)) * i128::from(USEC_PER_DAY) + us
        - i128::from(offset) * i128::from(USEC_PER_SEC);
    i64::try_from(total).ok()
}

fn parse_timestamp(text: &str, tz: bool) -> Result<PgTimestamp, String> {
    match canonical_timestamp(text.as_bytes(), tz) {
        Some(micros) => Ok(PgTimestamp::Micros(micros)),
        None => parse_timestamp_general(text, tz),
    }
}

fn parse_timestamp_general(text: &str, tz: bool) -> Result<PgTimestamp, String> {
    match text {
        "infinity" => return Ok(PgTimestamp::Infinity),
        "-infinity" => return Ok(PgTimestamp::NegInfinity),
        _ => {}
    }
    let (t, bc) = strip_bc(text);
    let (date, time) = t.split_once(' ').ok_or("expected 'date time'")?;
    let days = parse_ymd(date, bc)?;
    let (time, offset) = if tz {
        let (time, off) = split_offset(time)?;
        (time, parse_offset(off)?)
    } else {
        (time, 0)
    };
    let us = parse_hms(time, false)?;
    let total = i128::from(days) * i128::from(USEC_PER_DAY) + us
        - i128::from(offset) * i128::from(USEC_PER_SEC);
    Ok(PgTimestamp::Micros(i64::try_from(total).map_err(
        |_| "timestamp beyond the Avro long range of microseconds since 1970",
    )?))
}

fn parse_interval(text: &str) -> Result<PgInterval, String> {
    if let Some(iso) = text.strip_prefix('P') {
        return parse_interval_iso(iso);
    }
    let mut months: i64 = 0;
    let mut days: i64 = 0;
    let mut micros: i64 = 0;
    let mut tokens = text.split_whitespace().peekable();
    if tokens.peek().is_none() {
        return Err("empty interval".into());
    }
    while let Some(tok) = tokens.next() {
        if tok.contains(':') {
            let (neg, body) = match tok.as_bytes()[0] {
                b'-' => (true, &tok[1..]),
                b'+' => (false, &tok[1..]),
                _ => (false, tok),
            };
            let us = parse_hms(body, true)?;
            micros =
                i64::try_from(if neg { -us } else { us }).map_err(|_| "interval out of range")?;
            continue;
        }
        let n: i64 = tok.parse().map_err(|_| {
            format!(
                "unsupported interval token {tok:?} (IntervalStyle must be postgres or iso_8601)"
            )
        })?;
        let unit = tokens.next().ok_or("number without unit")?;
        let (field, n) = match unit {
            "year" | "years" => (&mut months, n.checked_mul(12)),
            "mon" | "mons" => (&mut months, Some(n)),
            "day" | "days" => (&mut days, Some(n)),
            _ => return Err(format!("unsupported interval unit {unit:?}")),
        };
        *field = n
            .and_then(|n| field.checked_add(n))
            .ok_or("interval out of range")?;
    }
    Ok(PgInterval {
        months: i32::try_from(months).map_err(|_| "interval out of range")?,
        days: i32::try_from(days).map_err(|_| "interval out of range")?,
        micros,
    })
}

fn parse_interval_iso(s: &str) -> Result<PgInterval, String> {
    let mut months: i128 = 0;
    let mut days: i128 = 0;
    let mut micros: i128 = 0;
    let mut in_time = false;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'T' {
            in_time = true;
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i] == b'-' || b[i] == b'+' || b[i] == b'.' || b[i].is_ascii_digit())
        {
            i += 1;
        }
        let num = &s[start..i];
        let unit = *b.get(i).ok_or("number without designator")?;
        if !unit.is_ascii_alphabetic() {
            return Err("expected an ISO 8601 designator".into());
        }
        i += 1;
        let (neg, body) = match num.as_bytes().first() {
            Some(b'-') => (true, &num[1..]),
            Some(b'+') => (false, &num[1..]),
            _ => (false, num),
        };
        let (ip, fp) = body.split_once('.').unwrap_or((body, ""));
        if ip.is_empty() || !ip.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("bad number {num:?}"));
        }
        // Every field fits an i64 (months and days are checked against i32 at the end), so
        // a number beyond that is out of range whatever its unit.
        let whole = i128::from(ip.parse::<i64>().map_err(|_| "interval out of range")?);
        let sign: i128 = if neg { -1 } else { 1 };
        if !(fp.is_empty() || (in_time && unit == b'S')) {
            return Err("fractional value only supported for seconds".into());
        }
        let (field, amount) = match (in_time, unit) {
            (false, b'Y') => (&mut months, whole * 12),
            (false, b'M') => (&mut months, whole),
            (false, b'W') => (&mut days, whole * 7),
            (false, b'D') => (&mut days, whole),
            (true, b'H') => (&mut micros, whole * 3_600_000_000),
            (true, b'M') => (&mut micros, whole * 60_000_000),
            (true, b'S') => {
                if fp.len() > 6 || !fp.bytes().all(|c| c.is_ascii_digit()) {
                    return Err("bad fractional seconds".into());
                }
                let mut f: i128 = if fp.is_empty() {
                    0
                } else {
                    fp.parse().map_err(|_| "bad")?
                };
                for _ in fp.len()..6 {
                    f *= 10;
                }
                (&mut micros, whole * 1_000_000 + f)
            }
            _ => return Err(format!("bad ISO 8601 designator {:?}", char::from(unit))),
        };
        // |amount| < 2^63 * 3.6e9 < 2^95, and a field that left the i64 range is rejected at
        // once, so the sum stays far inside i128.
        *field += sign * amount;
        if i64::try_from(*field).is_err() {
            return Err("interval out of range".into());
        }
    }
    Ok(PgInterval {
        months: i32::try_from(months).map_err(|_| "interval out of range")?,
        days: i32::try_from(days).map_err(|_| "interval out of range")?,
        micros: i64::try_from(micros).map_err(|_| "interval out of range")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Arrays

/// Splits array text into its dimensions and raw element texts (`None` = NULL).
pub fn split_array(text: &str, delim: u8) -> Result<(Vec<ArrayDim>, Vec<Option<String>>), String> {
    let b = text.as_bytes();
    let mut i = 0;
    skip_ws(b, &mut i);
    let mut explicit: Vec<(i64, i64)> = Vec::new();
    while b.get(i) == Some(&b'[') {
        i += 1;
        let lo = read_int(b, &mut i)?;
        let (lo, hi) = if b.get(i) == Some(&b':') {
            i += 1;
            (lo, read_int(b, &mut i)?)
        } else {
            (1, lo)
        };
        if b.get(i) != Some(&b']') {
            return Err("expected ]".into());
        }
        i += 1;
        explicit.push((lo, hi));
        skip_ws(b, &mut i);
    }
    if !explicit.is_empty() {
        if b.get(i) != Some(&b'=') {
            return Err("expected = after dimensions".into());
        }
        i += 1;
        skip_ws(b, &mut i);
    }
    let mut lens: Vec<i64> = Vec::new();
    let mut elems = Vec::new();
    let mut leaf_depth = None;
    parse_level(b, &mut i, 0, delim, &mut lens, &mut elems, &mut leaf_depth)?;
    skip_ws(b, &mut i);
    if i != b.len() {
        return Err("trailing characters after array".into());
    }
    if elems.is_empty() {
        return Ok((Vec::new(), elems));
    }
    if !explicit.is_empty() && explicit.len() != lens.len() {
        return Err("dimension decoration does not match the array".into());
    }
    let mut dims = Vec::with_capacity(lens.len());
    for (d, &len) in lens.iter().enumerate() {
        let lower = match explicit.get(d) {
            Some(&(lo, hi)) => {
                if i128::from(hi) - i128::from(lo) + 1 != i128::from(len) {
                    return Err("dimension bounds do not match the elements".into());
                }
                lo
            }
            None => 1,
        };
        dims.push(ArrayDim {
            lower: i32::try_from(lower).map_err(|_| "bound out of range")?,
            length: i32::try_from(len).map_err(|_| "too many elements")?,
        });
    }
    Ok((dims, elems))
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn read_int(b: &[u8], i: &mut usize) -> Result<i64, String> {
    let start = *i;
    if b.get(*i) == Some(&b'-') || b.get(*i) == Some(&b'+') {
        *i += 1;
    }
    while *i < b.len() && b[*i].is_ascii_digit() {
        *i += 1;
    }
    std::str::from_utf8(&b[start..*i])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "expected an integer".to_owned())
}

fn parse_level(
    b: &[u8],
    i: &mut usize,
    depth: usize,
    delim: u8,
    lens: &mut Vec<i64>,
    elems: &mut Vec<Option<String>>,
    leaf_depth: &mut Option<usize>,
) -> Result<(), String> {
    if b.get(*i) != Some(&b'{') {
        return Err("expected {".into());
    }
    *i += 1;
    skip_ws(b, i);
    let mut count: i64 = 0;
    if b.get(*i) == Some(&b'}') {
        *i += 1;
        if depth == 0 {
            return Ok(());
        }
        return Err("empty sub-array".into());
    }
    loop {
        skip_ws(b, i);
        if b.get(*i) == Some(&b'{') {
            if leaf_depth.is_some_and(|d| d == depth) {
                return Err("mixed nesting".into());
            }
            parse_level(b, i, depth + 1, delim, lens, elems, leaf_depth)?;
        } else {
            match *leaf_depth {
                None => *leaf_depth = Some(depth),
                Some(d) if d != depth => return Err("ragged array".into()),
                _ => {}
            }
            elems.push(read_array_scalar(b, i, delim)?);
        }
        count += 1;
        skip_ws(b, i);
        match b.get(*i) {
            Some(&c) if c == delim => *i += 1,
            Some(b'}') => {
                *i += 1;
                break;
            }
            _ => return Err("expected delimiter or }".into()),
        }
    }
    if lens.len() <= depth {
        lens.resize(depth + 1, -1);
    }
    if lens[depth] == -1 {
        lens[depth] = count;
    } else if lens[depth] != count {
        return Err("sub-arrays have different lengths".into());
    }
    Ok(())
}

fn read_array_scalar(b: &[u8], i: &mut usize, delim: u8) -> Result<Option<String>, String> {
    let mut out = Vec::new();
    if b.get(*i) == Some(&b'"') {
        *i += 1;
        loop {
            match b.get(*i) {
                None => return Err("unterminated quoted element".into()),
                Some(b'\\') => {
                    out.push(*b.get(*i + 1).ok_or("trailing backslash")?);
                    *i += 2;
                }
                Some(b'"') => {
                    *i += 1;
                    break;
                }
                Some(&c) => {
                    out.push(c);
                    *i += 1;
                }
            }
        }
        return String::from_utf8(out).map(Some).map_err(|e| e.to_string());
    }
    let mut escaped = false;
    let mut keep_len = 0; // length without trailing unescaped whitespace
    loop {
        match b.get(*i) {
            None => return Err("unterminated array".into()),
            Some(&c) if c == delim || c == b'}' => break,
            Some(b'{') | Some(b'"') => return Err("unexpected character in element".into()),
            Some(b'\\') => {
                out.push(*b.get(*i + 1).ok_or("trailing backslash")?);
                escaped = true;
                *i += 2;
                keep_len = out.len();
            }
            Some(&c) => {
                out.push(c);
                *i += 1;
                if !c.is_ascii_whitespace() {
                    keep_len = out.len();
                }
            }
        }
    }
    out.truncate(keep_len);
    if out.is_empty() && !escaped {
        return Err("empty unquoted element".into());
    }
    if !escaped && out.eq_ignore_ascii_case(b"NULL") {
        return Ok(None);
    }
    String::from_utf8(out).map(Some).map_err(|e| e.to_string())
}

fn parse_array(element: &PgType, typmod: i32, text: &str) -> Result<PgValue, Error> {
    let (dims, raw) = split_array(text, element.array_delimiter())
        .map_err(|r| parse_err(&format!("{}[]", element.name()), text, r))?;
    let mut elements = Vec::with_capacity(raw.len());
    for r in raw {
        elements.push(match r {
            None => PgValue::Null,
            Some(t) => parse_text(element, typmod, &t)?,
        });
    }
    Ok(PgValue::Array(PgArray { dims, elements }))
}

// ---------------------------------------------------------------------------------------------
// Ranges and multiranges

fn parse_range(name: &str, subtype: &PgType, text: &str) -> Result<PgRange, Error> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("empty") {
        return Ok(PgRange::Empty);
    }
    let err = |r: &str| parse_err(name, text, r);
    let b = t.as_bytes();
    if b.len() < 3 {
        return Err(err("too short"));
    }
    let lower_inc = match b[0] {
        b'[' => true,
        b'(' => false,
        _ => return Err(err("expected [ or (")),
    };
    let mut i = 1;
    let lo = read_range_bound(b, &mut i).map_err(|r| err(&r))?;
    if b.get(i) != Some(&b',') {
        return Err(err("expected ,"));
    }
    i += 1;
    let hi = read_range_bound(b, &mut i).map_err(|r| err(&r))?;
    let upper_inc = match b.get(i) {
        Some(b']') => true,
        Some(b')') => false,
        _ => return Err(err("expected ] or )")),
    };
    if i + 1 != b.len() {
        return Err(err("trailing characters"));
    }
    let bound = |raw: Option<String>, inc: bool| -> Result<RangeBound, Error> {
        Ok(match raw {
            None => RangeBound::Unbounded,
            Some(s) => {
                let v = Box::new(parse_text(subtype, -1, &s)?);
                if inc {
                    RangeBound::Inclusive(v)
                } else {
                    RangeBound::Exclusive(v)
                }
            }
        })
    };
    Ok(PgRange::Bounds {
        lower: bound(lo, lower_inc)?,
        upper: bound(hi, upper_inc)?,
    })
}

fn read_range_bound(b: &[u8], i: &mut usize) -> Result<Option<String>, String> {
    let mut out = Vec::new();
    let mut any = false;
    let mut in_quote = false;
    loop {
        let c = *b.get(*i).ok_or("unterminated range")?;
        if !in_quote && matches!(c, b',' | b')' | b']') {
            break;
        }
        any = true;
        match c {
            b'\\' => {
                out.push(*b.get(*i + 1).ok_or("trailing backslash")?);
                *i += 2;
                continue;
            }
            b'"' => {
                if in_quote && b.get(*i + 1) == Some(&b'"') {
                    out.push(b'"');
                    *i += 1;
                } else {
                    in_quote = !in_quote;
                }
            }
            _ => out.push(c),
        }
        *i += 1;
    }
    if !any {
        return Ok(None);
    }
    String::from_utf8(out).map(Some).map_err(|e| e.to_string())
}

fn split_multirange(text: &str) -> Result<Vec<&str>, String> {
    let b = text.as_bytes();
    let mut i = 0;
    skip_ws(b, &mut i);
    if b.get(i) != Some(&b'{') {
        return Err("expected {".into());
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        skip_ws(b, &mut i);
        match b.get(i) {
            Some(b'}') => {
                i += 1;
                break;
            }
            Some(b'[') | Some(b'(') => {
                let start = i;
                let mut in_quote = false;
                i += 1;
                loop {
                    let c = *b.get(i).ok_or("unterminated range")?;
                    match c {
                        b'\\' => i += 1,
                        b'"' => in_quote = !in_quote,
                        b']' | b')' if !in_quote => break,
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
                out.push(&text[start..i]);
                skip_ws(b, &mut i);
                match b.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => {}
                    _ => return Err("expected , or }".into()),
                }
            }
            Some(_) if b.len() >= i + 5 && b[i..i + 5].eq_ignore_ascii_case(b"empty") => {
                i += 5;
                skip_ws(b, &mut i);
                if b.get(i) == Some(&b',') {
                    i += 1;
                }
            }
            _ => return Err("expected a range".into()),
        }
    }
    skip_ws(b, &mut i);
    if i != b.len() {
        return Err("trailing characters".into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Composites

fn split_composite(text: &str) -> Result<Vec<Option<String>>, String> {
    let b = text.as_bytes();
    if b.first() != Some(&b'(') || b.last() != Some(&b')') || b.len() < 2 {
        return Err("expected (...)".into());
    }
    let inner = &b[1..b.len() - 1];
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let mut buf = Vec::new();
        let mut any = false;
        let mut in_quote = false;
        while i < inner.len() {
            let c = inner[i];
            if !in_quote && c == b',' {
                break;
            }
            any = true;
            match c {
                b'\\' => {
                    buf.push(*inner.get(i + 1).ok_or("trailing backslash")?);
                    i += 2;
                    continue;
                }
                b'"' => {
                    if in_quote && inner.get(i + 1) == Some(&b'"') {
                        buf.push(b'"');
                        i += 1;
                    } else {
                        in_quote = !in_quote;
                    }
                }
                _ => buf.push(c),
            }
            i += 1;
        }
        if in_quote {
            return Err("unterminated quote".into());
        }
        out.push(if any {
            Some(String::from_utf8(buf).map_err(|e| e.to_string())?)
        } else {
            None
        });
        if i >= inner.len() {
            break;
        }
        i += 1; // the comma
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn quote_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn type_err(ty: &PgType, v: &PgValue) -> Error {
    let mut value = format!("{v:?}");
    value.truncate(100);
    Error::ValueType {
        type_name: ty.name(),
        value,
    }
}

/// Renders a value as PostgreSQL input text for type `ty`; `None` for [`PgValue::Null`].
/// `PostgreSQL` reads the result back as exactly the original value
/// (`$text::type IS NOT DISTINCT FROM original`).
pub fn render_text(ty: &PgType, v: &PgValue) -> Result<Option<String>, Error> {
    if matches!(v, PgValue::Null) {
        return Ok(None);
    }
    if let PgType::Domain { base, .. } = ty {
        return render_text(base, v);
    }
    let s = match (ty, v) {
        (_, PgValue::Unchanged) => return Err(type_err(ty, v)),
        (PgType::Builtin(b), v) => render_builtin(*b, v).ok_or_else(|| type_err(ty, v))?,
        (PgType::Enum { .. } | PgType::Other { .. }, PgValue::Text(s)) => s.clone(),
        (PgType::Array { element, .. }, PgValue::Array(a)) => render_array(element, a)?,
        (PgType::Range { subtype, .. }, PgValue::Range(r)) => render_range(subtype, r)?,
        (PgType::Multirange { range, .. }, PgValue::Multirange(rs)) => {
            let subtype = match range.as_ref() {
                PgType::Range { subtype, .. } => subtype,
                _ => return Err(type_err(ty, v)),
            };
            let mut out = String::from("{");
            for (i, r) in rs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&render_range(subtype, r)?);
            }
            out.push('}');
            out
        }
        (PgType::Composite { fields, .. }, PgValue::Composite(vals)) => {
            if fields.len() != vals.len() {
                return Err(type_err(ty, v));
            }
            let mut out = String::from("(");
            for (i, (f, (_, fv))) in fields.iter().zip(vals).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(t) = render_text(&f.pg_type, fv)? {
                    quote_into(&mut out, &t);
                }
            }
            out.push(')');
            out
        }
        _ => return Err(type_err(ty, v)),
    };
    Ok(Some(s))
}

fn render_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "Infinity".into()
    } else if f == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        format!("{f:e}")
    }
}

fn render_float4(f: f32) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f32::INFINITY {
        "Infinity".into()
    } else if f == f32::NEG_INFINITY {
        "-Infinity".into()
    } else {
        format!("{f:e}")
    }
}

fn render_builtin(b: Builtin, v: &PgValue) -> Option<String> {
    use Builtin::*;
    Some(match (b, v) {
        (Bool, PgValue::Bool(x)) => if *x { "t" } else { "f" }.to_owned(),
        (Int2, PgValue::Int2(x)) => x.to_string(),
        (Int4, PgValue::Int4(x)) => x.to_string(),
        (Int8, PgValue::Int8(x)) => x.to_string(),
        (Oid | Xid | Cid, PgValue::Oid(x)) => x.to_string(),
        (Xid8, PgValue::U64(x)) => x.to_string(),
        (PgLsn, PgValue::U64(x)) => format!("{:X}/{:X}", x >> 32, x & 0xffff_ffff),
        (Float4, PgValue::Float4(x)) => render_float4(*x),
        (Float8, PgValue::Float8(x)) => render_float(*x),
        (Numeric, PgValue::Numeric(n)) => n.to_string(),
        (Json | Jsonb, PgValue::Json(s)) => s.clone(),
        (Bytea, PgValue::Bytes(bytes)) => {
            let mut s = String::with_capacity(2 + bytes.len() * 2);
            s.push_str("\\x");
            for byte in bytes {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
        (Uuid, PgValue::Uuid(u)) => u.hyphenated().to_string(),
        (Date, PgValue::Date(d)) => match d {
            PgDate::Infinity => "infinity".into(),
            PgDate::NegInfinity => "-infinity".into(),
            PgDate::Days(days) => render_date(i64::from(*days)),
        },
        (Time, PgValue::Time(us)) => render_hms(*us),
        (
            TimeTz,
            PgValue::TimeTz {
                micros,
                offset_seconds,
            },
        ) => {
            let sign = if *offset_seconds < 0 { '-' } else { '+' };
            let o = offset_seconds.unsigned_abs();
            format!(
                "{}{sign}{:02}:{:02}:{:02}",
                render_hms(*micros),
                o / 3600,
                (o / 60) % 60,
                o % 60
            )
        }
        (Timestamp, PgValue::Timestamp(t)) => render_timestamp(*t, false),
        (TimestampTz, PgValue::TimestampTz(t)) => render_timestamp(*t, true),
        (Interval, PgValue::Interval(iv)) => render_interval(iv),
        (
            Int2Vector | Char | Name | Text | Regproc | Tid | OidVector | Xml | Point | Lseg | Path
            | Box | Polygon | Line | Cidr | Circle | Macaddr8 | Money | Macaddr | Inet | Aclitem
            | Bpchar | Varchar | Bit | Varbit | Refcursor | Regprocedure | Regoper | Regoperator
            | Regclass | Regtype | TxidSnapshot | Tsvector | Tsquery | Regconfig | Regdictionary
            | Jsonpath | Regnamespace | Regrole | Regcollation | PgSnapshot,
            PgValue::Text(s),
        ) => s.clone(),
        _ => return None,
    })
}

fn render_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

fn render_hms(us: i64) -> String {
    let neg = us < 0;
    let a = us.unsigned_abs();
    let secs = a / 1_000_000;
    let frac = a % 1_000_000;
    format!(
        "{}{:02}:{:02}:{:02}.{frac:06}",
        if neg { "-" } else { "" },
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

fn render_timestamp(t: PgTimestamp, tz: bool) -> String {
    match t {
        PgTimestamp::Infinity => "infinity".into(),
        PgTimestamp::NegInfinity => "-infinity".into(),
        PgTimestamp::Micros(us) => {
            let days = us.div_euclid(USEC_PER_DAY);
            let rem = us.rem_euclid(USEC_PER_DAY);
            let (y, m, d) = civil_from_days(days);
            let (year, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
            format!(
                "{year:04}-{m:02}-{d:02} {}{}{}",
                render_hms(rem),
                if tz { "+00" } else { "" },
                if bc { " BC" } else { "" }
            )
        }
    }
}

fn render_interval(iv: &PgInterval) -> String {
    format!(
        "{} mons {} days {}",
        iv.months,
        iv.days,
        render_hms(iv.micros)
    )
}

fn render_array(element: &PgType, a: &PgArray) -> Result<String, Error> {
    if !a.is_well_formed() {
        return Err(Error::ValueType {
            type_name: format!("{}[]", element.name()),
            value: format!(
                "array with dims {:?} and {} elements",
                a.dims,
                a.elements.len()
            ),
        });
    }
    if a.dims.is_empty() {
        return Ok("{}".into());
    }
    let mut out = String::new();
    if a.dims.iter().any(|d| d.lower != 1) {
        for d in &a.dims {
            out.push_str(&format!(
                "[{}:{}]",
                d.lower,
                i64::from(d.lower) + i64::from(d.length) - 1
            ));
        }
        out.push('=');
    }
    let delim = char::from(element.array_delimiter());
    let mut idx = 0;
    render_level(element, a, 0, &mut idx, delim, &mut out)?;
    Ok(out)
}

fn render_level(
    element: &PgType,
    a: &PgArray,
    depth: usize,
    idx: &mut usize,
    delim: char,
    out: &mut String,
) -> Result<(), Error> {
    out.push('{');
    for j in 0..a.dims[depth].length {
        if j > 0 {
            out.push(delim);
        }
        if depth + 1 < a.dims.len() {
            render_level(element, a, depth + 1, idx, delim, out)?;
        } else {
            match render_text(element, &a.elements[*idx])? {
                None => out.push_str("NULL"),
                Some(t) => quote_into(out, &t),
            }
            *idx += 1;
        }
    }
    out.push('}');
    Ok(())
}

fn render_range(subtype: &PgType, r: &PgRange) -> Result<String, Error> {
    let (lower, upper) = match r {
        PgRange::Empty => return Ok("empty".into()),
        PgRange::Bounds { lower, upper } => (lower, upper),
    };
    let mut out = String::new();
    let bound = |b: &RangeBound, out: &mut String| -> Result<bool, Error> {
        match b {
            RangeBound::Unbounded => Ok(false),
            RangeBound::Inclusive(v) | RangeBound::Exclusive(v) => {
                let t = render_text(subtype, v)?.ok_or_else(|| Error::ValueType {
                    type_name: subtype.name(),
                    value: "NULL range bound".into(),
                })?;
                quote_into(out, &t);
                Ok(matches!(b, RangeBound::Inclusive(_)))
            }
        }
    };
    let mut lo = String::new();
    let lo_inc = bound(lower, &mut lo)?;
    let mut hi = String::new();
    let hi_inc = bound(upper, &mut hi)?;
    out.push(if lo_inc { '[' } else { '(' });
    out.push_str(&lo);
    out.push(',');
    out.push_str(&hi);
    out.push(if hi_inc { ']' } else { ')' });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: Builtin) -> PgType {
        PgType::Builtin(x)
    }

    fn rt(ty: &PgType, text: &str) -> PgValue {
        let v = parse_text(ty, -1, text).unwrap();
        let back = render_text(ty, &v).unwrap().unwrap();
        let again = parse_text(ty, -1, &back).unwrap();
        assert_eq!(format!("{again:?}"), format!("{v:?}"), "{text} -> {back}");
        v
    }

    #[test]
    fn scalars() {
        assert_eq!(rt(&b(Builtin::Bool), "t"), PgValue::Bool(true));
        assert_eq!(rt(&b(Builtin::Int2), "-32768"), PgValue::Int2(i16::MIN));
        assert_eq!(
            rt(&b(Builtin::Int8), "9223372036854775807"),
            PgValue::Int8(i64::MAX)
        );
        assert!(parse_text(&b(Builtin::Int4), -1, "2147483648").is_err());
        assert_eq!(rt(&b(Builtin::Oid), "4294967295"), PgValue::Oid(u32::MAX));
        assert_eq!(
            rt(&b(Builtin::PgLsn), "16/B374D848"),
            PgValue::U64(0x16_B374_D848)
        );
        assert_eq!(
            rt(&b(Builtin::Xid8), "18446744073709551615"),
            PgValue::U64(u64::MAX)
        );
        match rt(&b(Builtin::Float8), "NaN") {
            PgValue::Float8(f) => assert!(f.is_nan()),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            rt(&b(Builtin::Float8), "-Infinity"),
            PgValue::Float8(f64::NEG_INFINITY)
        );
        assert_eq!(
            rt(&b(Builtin::Float8), "1.7976931348623157e+308"),
            PgValue::Float8(f64::MAX)
        );
        assert_eq!(rt(&b(Builtin::Float4), "1e-45"), PgValue::Float4(1e-45));
        assert!(parse_text(&b(Builtin::Float8), -1, "inf").is_err());
        assert_eq!(
            rt(&b(Builtin::Bytea), "\\x00ff10"),
            PgValue::Bytes(vec![0, 255, 16])
        );
        assert_eq!(
            parse_text(&b(Builtin::Bytea), -1, "a\\\\b\\001").unwrap(),
            PgValue::Bytes(vec![b'a', b'\\', b'b', 1])
        );
        assert!(parse_text(&b(Builtin::Bytea), -1, "\\x0").is_err());
        assert_eq!(
            rt(&b(Builtin::Json), "{\n  \"a\": 1.000000000000000000001}"),
            PgValue::Json("{\n  \"a\": 1.000000000000000000001}".into())
        );
    }

    #[test]
    fn numerics() {
        for s in [
            "0",
            "-1.500",
            "123456789012345678901234567890.000000000001",
            ".5",
            "NaN",
        ] {
            let v = rt(&b(Builtin::Numeric), s);
            assert_eq!(render_text(&b(Builtin::Numeric), &v).unwrap().unwrap(), s);
        }
        for s in ["1e5", "", "-", "1.2.3", "inf", " 1"] {
            assert!(parse_numeric(s).is_none(), "{s}");
        }
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(
            rt(&b(Builtin::Date), "2023-01-23"),
            PgValue::Date(PgDate::Days(19380))
        );
        assert_eq!(
            rt(&b(Builtin::Date), "infinity"),
            PgValue::Date(PgDate::Infinity)
        );
        assert_eq!(
            rt(&b(Builtin::Date), "0001-12-31 BC"),
            PgValue::Date(PgDate::Days(days_from_civil(0, 12, 31) as i32))
        );
        rt(&b(Builtin::Date), "4714-11-24 BC");
        rt(&b(Builtin::Date), "5874897-12-31");
        assert!(parse_text(&b(Builtin::Date), -1, "2023-02-29").is_err());
        assert!(parse_text(&b(Builtin::Date), -1, "0000-01-01 BC").is_err());
        assert_eq!(
            rt(&b(Builtin::Time), "24:00:00"),
            PgValue::Time(USEC_PER_DAY)
        );
        assert_eq!(
            rt(&b(Builtin::Time), "12:30:00.5"),
            PgValue::Time(45_000_500_000)
        );
        assert!(parse_text(&b(Builtin::Time), -1, "24:00:01").is_err());
        assert_eq!(
            rt(&b(Builtin::TimeTz), "12:30:00-05:30"),
            PgValue::TimeTz {
                micros: 45_000_000_000,
                offset_seconds: -19800
            }
        );
        rt(&b(Builtin::TimeTz), "00:00:00+15:59:59");
        assert_eq!(
            rt(&b(Builtin::TimestampTz), "1970-01-01 01:00:00+01"),
            PgValue::TimestampTz(PgTimestamp::Micros(0))
        );
        assert_eq!(
            rt(&b(Builtin::Timestamp), "2019-04-12 02:10:31.782068"),
            PgValue::Timestamp(PgTimestamp::Micros(1_555_035_031_782_068))
        );
        rt(&b(Builtin::Timestamp), "4714-11-24 00:00:00 BC");
        rt(&b(Builtin::Timestamp), "294246-12-31 23:59:59.999999");
        // PostgreSQL's last ~30 years of timestamps exceed i64 microseconds since 1970.
        assert!(parse_text(&b(Builtin::Timestamp), -1, "294276-12-31 23:59:59.999999").is_err());
        rt(&b(Builtin::TimestampTz), "0044-03-15 12:00:00+00 BC");
        rt(&b(Builtin::TimestampTz), "1900-01-01 00:00:00+00:53:28");
        assert_eq!(
            rt(&b(Builtin::TimestampTz), "-infinity"),
            PgValue::TimestampTz(PgTimestamp::NegInfinity)
        );
    }

    #[test]
    fn intervals() {
        let iv = |months, days, micros| {
            PgValue::Interval(PgInterval {
                months,
                days,
                micros,
            })
        };
        let t = b(Builtin::Interval);
        assert_eq!(rt(&t, "00:00:00"), iv(0, 0, 0));
        assert_eq!(
            rt(&t, "1 year 2 mons 3 days 04:05:06.789"),
            iv(14, 3, 14_706_789_000)
        );
        assert_eq!(
            rt(&t, "-1 years -2 mons +3 days -04:05:06"),
            iv(-14, 3, -14_706_000_000)
        );
        assert_eq!(rt(&t, "P1Y2M3DT4H5M6.789S"), iv(14, 3, 14_706_789_000));
        assert_eq!(rt(&t, "P-1Y-2M3DT-4H-5M-6.5S"), iv(-14, 3, -14_706_500_000));
        assert_eq!(rt(&t, "PT0S"), iv(0, 0, 0));
        assert_eq!(
            rt(
                &t,
                "178956970 years 7 mons 2147483647 days 2562047788:00:54.775807"
            ),
            iv(i32::MAX, i32::MAX, i64::MAX)
        );
        assert_eq!(
            rt(
                &t,
                "-178956970 years -8 mons -2147483648 days -2562047788:00:54.775808"
            ),
            iv(i32::MIN, i32::MIN, i64::MIN)
        );
        assert!(parse_text(&t, -1, "@ 1 day").is_err());
        assert!(parse_text(&t, -1, "1 fortnight").is_err());
    }

    /// Inputs found by the `text_parsers` fuzz target (docs/fuzzing.md): fields whose sum or
    /// product leaves the integer range are "out of range" errors, not overflow panics.
    #[test]
    fn interval_overflow_is_an_error() {
        let t = b(Builtin::Interval);
        for text in [
            "-178956970789560970 years -735791394157913938 years -862 years",
            "9223372036854775807 mons 1 mons",
            "-9223372036854775807 days -2 days",
            "768614336404564651 years",
            "P170141183460469231731687303715884105727Y",
            "P9223372036854775807Y",
            "PT9223372036854775807H",
            "PT9223372036854775807H9223372036854775807H",
            "P1DT-9223372036854775807M-9223372036854775807M",
            "PT9223372036854775807S",
        ] {
            let e = parse_text(&t, -1, text).expect_err(text);
            assert!(e.to_string().contains("out of range"), "{text}: {e}");
        }
        assert_eq!(
            rt(&t, "P-1Y13M"),
            PgValue::Interval(PgInterval {
                months: 1,
                days: 0,
                micros: 0
            })
        );
        assert_eq!(
            rt(&t, "1 day -1 days"),
            PgValue::Interval(PgInterval::default())
        );
    }

    #[test]
    fn arrays() {
        let t = PgType::from_builtin_oid(1007).unwrap();
        let v = rt(&t, "{1,NULL,3}");
        assert_eq!(
            v,
            PgValue::Array(PgArray::one_dim(vec![
                PgValue::Int4(1),
                PgValue::Null,
                PgValue::Int4(3)
            ]))
        );
        assert_eq!(rt(&t, "{}"), PgValue::Array(PgArray::one_dim(vec![])));
        match rt(&t, "[0:1][-2:-1]={{1,2},{3,4}}") {
            PgValue::Array(a) => {
                assert_eq!(
                    a.dims,
                    vec![
                        ArrayDim {
                            lower: 0,
                            length: 2
                        },
                        ArrayDim {
                            lower: -2,
                            length: 2
                        }
                    ]
                );
                assert_eq!(a.elements.len(), 4);
            }
            v => panic!("{v:?}"),
        }
        assert!(parse_text(&t, -1, "{{1,2},{3}}").is_err());
        assert!(parse_text(&t, -1, "{1,{2}}").is_err());
        assert!(parse_text(&t, -1, "[1:3]={1,2}").is_err());
        // Found by fuzzing: bounds at the ends of the i64 range overflowed `hi - lo + 1`.
        assert!(parse_text(&t, -1, "[-9223372036854775808:9223372036854775807]={1}").is_err());
        assert!(parse_text(&t, -1, "[9223372036854775807:-9223372036854775808]={1}").is_err());
        let tt = PgType::from_builtin_oid(1009).unwrap();
        assert_eq!(
            rt(&tt, r#"{"NULL",NULL,"a \"b\" \\c","",  x y  ,é}"#),
            PgValue::Array(PgArray::one_dim(vec![
                PgValue::Text("NULL".into()),
                PgValue::Null,
                PgValue::Text("a \"b\" \\c".into()),
                PgValue::Text("".into()),
                PgValue::Text("x y".into()),
                PgValue::Text("é".into()),
            ]))
        );
        let boxes = PgType::from_builtin_oid(1020).unwrap();
        assert_eq!(
            rt(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            PgValue::Array(PgArray::one_dim(vec![
                PgValue::Text("(1,1),(0,0)".into()),
                PgValue::Text("(2,2),(1,1)".into()),
            ]))
        );
    }

    #[test]
    fn ranges() {
        let t = PgType::from_builtin_oid(3904).unwrap();
        assert_eq!(rt(&t, "empty"), PgValue::Range(PgRange::Empty));
        assert_eq!(
            rt(&t, "[1,10)"),
            PgValue::Range(PgRange::Bounds {
                lower: RangeBound::Inclusive(Box::new(PgValue::Int4(1))),
                upper: RangeBound::Exclusive(Box::new(PgValue::Int4(10))),
            })
        );
        assert_eq!(
            rt(&t, "(,5]"),
            PgValue::Range(PgRange::Bounds {
                lower: RangeBound::Unbounded,
                upper: RangeBound::Inclusive(Box::new(PgValue::Int4(5))),
            })
        );
        let ts = PgType::from_builtin_oid(3910).unwrap();
        rt(
            &ts,
            r#"["2020-01-01 00:00:00+00","2021-01-01 00:00:00+00")"#,
        );
        rt(&ts, "[-infinity,infinity]");
        let mr = PgType::from_builtin_oid(4451).unwrap();
        assert_eq!(rt(&mr, "{}"), PgValue::Multirange(vec![]));
        match rt(&mr, "{[1,3), [5,7)}") {
            PgValue::Multirange(v) => assert_eq!(v.len(), 2),
            v => panic!("{v:?}"),
        }
        assert!(parse_text(&t, -1, "[1,2").is_err());
        assert!(parse_text(&t, -1, "[a,2)").is_err());
    }

    #[test]
    fn composites() {
        use crate::types::CompositeField;
        let t = PgType::Composite {
            oid: 1,
            name: "pair".into(),
            fields: vec![
                CompositeField {
                    name: "a".into(),
                    pg_type: b(Builtin::Int4),
                    typmod: -1,
                },
                CompositeField {
                    name: "b".into(),
                    pg_type: b(Builtin::Text),
                    typmod: -1,
                },
                CompositeField {
                    name: "c".into(),
                    pg_type: PgType::from_builtin_oid(1009).unwrap(),
                    typmod: -1,
                },
            ],
        };
        let v = rt(&t, r#"(1,"a ""b"", c","{x,""y z""}")"#);
        assert_eq!(
            v,
            PgValue::Composite(vec![
                ("a".into(), PgValue::Int4(1)),
                ("b".into(), PgValue::Text("a \"b\", c".into())),
                (
                    "c".into(),
                    PgValue::Array(PgArray::one_dim(vec![
                        PgValue::Text("x".into()),
                        PgValue::Text("y z".into())
                    ]))
                ),
            ])
        );
        assert_eq!(
            rt(&t, "(,\"\",)"),
            PgValue::Composite(vec![
                ("a".into(), PgValue::Null),
                ("b".into(), PgValue::Text(String::new())),
                ("c".into(), PgValue::Null),
            ])
        );
        assert!(parse_text(&t, -1, "(1,2)").is_err());
    }

    #[test]
    fn the_timestamp_fast_path_handles_the_usual_forms() {
        for (text, tz) in [
            ("2026-11-21 13:45:12.123456+00", true),
            ("2026-11-21 13:45:12+05:30", true),
            ("1999-12-31 23:59:60.5-08:00:15", true),
            ("2024-02-29 24:00:00", false),
        ] {
            assert!(canonical_timestamp(text.as_bytes(), tz).is_some(), "{text}");
            assert_eq!(parse_timestamp(text, tz), parse_timestamp_general(text, tz));
        }
        // Shapes the fast path leaves to the general parser.
        for (text, tz) in [
            ("2020-01-01 00:00:00 BC", false),
            ("12020-01-01 00:00:00", false),
            ("2020-01-01 00:00:00+5", true),
            ("2020-01-01 00:00:00.", false),
            ("2020-01-01 00:00:00.1234567", false),
            ("2020-01-01 00:00:00+00:00:00:00", true),
            ("2023-02-29 00:00:00", false),
            ("2023-01-01 25:00:00+00", true),
        ] {
            assert!(canonical_timestamp(text.as_bytes(), tz).is_none(), "{text}");
        }
        assert!(parse_timestamp("2023-02-29 00:00:00", false).is_err());
        assert!(parse_timestamp("2023-01-01 25:00:00+00", true).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(3000))]
        /// The fast path never changes a result: same value or both refused (mostly valid
        /// dates and times, with every field sometimes out of range).
        #[test]
        fn the_timestamp_fast_path_agrees_with_the_general_parser(
            text in "[0-9]{4}-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2]) ([01][0-9]|2[0-5]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,7})?([+-][0-9]{1,2}(:[0-9]{2}){0,3})?( BC)?",
            tz in proptest::bool::ANY,
        ) {
            let fast = parse_timestamp(&text, tz);
            let general = parse_timestamp_general(&text, tz);
            proptest::prop_assert_eq!(fast.is_ok(), general.is_ok(), "{}", text);
            if let (Ok(a), Ok(b)) = (fast, general) {
                proptest::prop_assert_eq!(a, b, "{}", text);
            }
        }
    }
}
