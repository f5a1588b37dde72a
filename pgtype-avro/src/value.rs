//! Typed PostgreSQL values: what parsing PostgreSQL text produces and what decoding Avro gives
//! back to clients.

use std::fmt;

/// A typed PostgreSQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum PgValue {
    /// SQL NULL.
    Null,
    /// pgoutput's "unchanged TOAST value" marker: the column kept its old value, which the
    /// message does not carry. Distinct from [`PgValue::Null`].
    Unchanged,
    /// `bool`.
    Bool(bool),
    /// `int2`.
    Int2(i16),
    /// `int4`.
    Int4(i32),
    /// `int8`.
    Int8(i64),
    /// `oid`, `xid`, `cid`.
    Oid(u32),
    /// `xid8` and `pg_lsn` (as the 64-bit number).
    U64(u64),
    /// `float4`.
    Float4(f32),
    /// `float8`.
    Float8(f64),
    /// `numeric`.
    Numeric(PgNumeric),
    /// Text-represented types: `text`, `varchar`, `bpchar`, `"char"`, `name`, `money`, `xml`,
    /// network, bit-string, text-search and geometric types, enums, extension types… The exact
    /// PostgreSQL text form.
    Text(String),
    /// `json` / `jsonb`: the exact text PostgreSQL produced (never re-serialised).
    Json(String),
    /// `bytea`.
    Bytes(Vec<u8>),
    /// `uuid`.
    Uuid(uuid::Uuid),
    /// `date`.
    Date(PgDate),
    /// `time`: microseconds since midnight (0 ..= 86 400 000 000).
    Time(i64),
    /// `timetz`.
    TimeTz {
        /// Microseconds since midnight.
        micros: i64,
        /// UTC offset in seconds, east of Greenwich positive (`+05:30` → 19800).
        offset_seconds: i32,
    },
    /// `timestamp` (local, no time zone): microseconds since 1970-01-01 00:00:00.
    Timestamp(PgTimestamp),
    /// `timestamptz`: microseconds since 1970-01-01 00:00:00 UTC.
    TimestampTz(PgTimestamp),
    /// `interval`.
    Interval(PgInterval),
    /// Arrays of any dimension.
    Array(PgArray),
    /// Ranges.
    Range(PgRange),
    /// Multiranges.
    Multirange(Vec<PgRange>),
    /// Composite values: (attribute name, value) in attribute order.
    Composite(Vec<(String, PgValue)>),
}

impl PgValue {
    /// For `time`: the value as a `chrono::NaiveTime` (`24:00:00` has none).
    pub fn time_to_chrono(&self) -> Option<chrono::NaiveTime> {
        match self {
            PgValue::Time(us) | PgValue::TimeTz { micros: us, .. } => micros_to_time(*us),
            _ => None,
        }
    }

    /// For `timetz`: the UTC offset as a `chrono::FixedOffset`.
    pub fn timetz_offset(&self) -> Option<chrono::FixedOffset> {
        match self {
            PgValue::TimeTz { offset_seconds, .. } => {
                chrono::FixedOffset::east_opt(*offset_seconds)
            }
            _ => None,
        }
    }
}

fn micros_to_time(us: i64) -> Option<chrono::NaiveTime> {
    let secs = u32::try_from(us.div_euclid(1_000_000)).ok()?;
    let nanos = u32::try_from(us.rem_euclid(1_000_000) * 1000).ok()?;
    chrono::NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
}

/// A `numeric` value, lossless at any size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PgNumeric {
    /// A finite value as plain decimal text (`-12.3400`; no exponent), keeping the display scale.
    Finite(String),
    /// `NaN`.
    NaN,
    /// `Infinity`.
    Infinity,
    /// `-Infinity`.
    NegInfinity,
}

impl PgNumeric {
    /// The value as a `rust_decimal::Decimal`, when it is finite and fits (28–29 significant
    /// digits); `None` otherwise.
    pub fn to_decimal(&self) -> Option<rust_decimal::Decimal> {
        match self {
            PgNumeric::Finite(s) => s.parse().ok(),
            _ => None,
        }
    }
}

impl fmt::Display for PgNumeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgNumeric::Finite(s) => f.write_str(s),
            PgNumeric::NaN => f.write_str("NaN"),
            PgNumeric::Infinity => f.write_str("Infinity"),
            PgNumeric::NegInfinity => f.write_str("-Infinity"),
        }
    }
}

/// A `date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgDate {
    /// Days since 1970-01-01 (negative before; proleptic Gregorian, year 0 = 1 BC).
    Days(i32),
    /// `infinity`.
    Infinity,
    /// `-infinity`.
    NegInfinity,
}

impl PgDate {
    /// As a `chrono::NaiveDate`, when finite and within chrono's range.
    pub fn to_chrono(self) -> Option<chrono::NaiveDate> {
        match self {
            PgDate::Days(d) => chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?
                .checked_add_signed(chrono::TimeDelta::try_days(i64::from(d))?),
            _ => None,
        }
    }
}

/// A `timestamp` or `timestamptz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgTimestamp {
    /// Microseconds since 1970-01-01 00:00:00 (UTC for `timestamptz`).
    Micros(i64),
    /// `infinity`.
    Infinity,
    /// `-infinity`.
    NegInfinity,
}

impl PgTimestamp {
    /// As a `chrono::NaiveDateTime` (wall clock for `timestamp`, UTC for `timestamptz`), when
    /// finite and within chrono's range.
    pub fn to_chrono_naive(self) -> Option<chrono::NaiveDateTime> {
        match self {
            PgTimestamp::Micros(us) => {
                chrono::DateTime::from_timestamp_micros(us).map(|d| d.naive_utc())
            }
            _ => None,
        }
    }

    /// As a `chrono::DateTime<Utc>`, when finite and within chrono's range.
    pub fn to_chrono_utc(self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            PgTimestamp::Micros(us) => chrono::DateTime::from_timestamp_micros(us),
            _ => None,
        }
    }
}

/// An `interval`, exactly as PostgreSQL stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PgInterval {
    /// Months.
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Microseconds.
    pub micros: i64,
}

/// One array dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArrayDim {
    /// Lower bound (1 by default).
    pub lower: i32,
    /// Number of elements along this dimension.
    pub length: i32,
}

/// An array of any number of dimensions with its bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct PgArray {
    /// Dimensions, outermost first; empty for an empty array.
    pub dims: Vec<ArrayDim>,
    /// Elements in row-major order; [`PgValue::Null`] for NULL elements.
    pub elements: Vec<PgValue>,
}

impl PgArray {
    /// A one-dimensional array with lower bound 1 (or the empty array).
    pub fn one_dim(elements: Vec<PgValue>) -> PgArray {
        let dims = if elements.is_empty() {
            vec![]
        } else {
            vec![ArrayDim {
                lower: 1,
                length: elements.len() as i32,
            }]
        };
        PgArray { dims, elements }
    }

    /// Whether the dimensions describe the elements, as in every array PostgreSQL has: no
    /// dimensions for the empty array, otherwise every length at least 1 and their product
    /// equal to the number of elements. Only such arrays encode, render and decode.
    pub fn is_well_formed(&self) -> bool {
        if self.dims.is_empty() {
            return self.elements.is_empty();
        }
        let mut n: usize = 1;
        for d in &self.dims {
            match usize::try_from(d.length)
                .ok()
                .filter(|&l| l > 0)
                .and_then(|l| n.checked_mul(l))
            {
                Some(m) => n = m,
                None => return false,
            }
        }
        n == self.elements.len()
    }
}

/// One bound of a range.
#[derive(Debug, Clone, PartialEq)]
pub enum RangeBound {
    /// No bound (infinite in that direction).
    Unbounded,
    /// `[x` / `x]`.
    Inclusive(Box<PgValue>),
    /// `(x` / `x)`.
    Exclusive(Box<PgValue>),
}

/// A range value.
#[derive(Debug, Clone, PartialEq)]
pub enum PgRange {
    /// `empty`.
    Empty,
    /// A non-empty range.
    Bounds {
        /// Lower bound.
        lower: RangeBound,
        /// Upper bound.
        upper: RangeBound,
    },
}

// ---- calendar arithmetic (proleptic Gregorian, astronomical years), valid for any i64 day ----

pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2023, 1, 23), 19380);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(civil_from_days(-719_528), (0, 1, 1));
        for z in (-3_000_000_000i64..3_000_000_000).step_by(7_777_777) {
            let (y, m, d) = civil_from_days(z);
            assert!(d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    /// Found by the `single_object` fuzz target (docs/fuzzing.md): a decoded array whose
    /// dimension lengths multiply past i64 overflowed in the encoder and the renderer, and
    /// both readers accepted arrays whose dimensions do not match their elements.
    #[test]
    fn malformed_arrays_are_rejected_everywhere() {
        use crate::types::PgType;
        let huge = ArrayDim {
            lower: 1,
            length: i32::MAX,
        };
        let bad = [
            PgArray {
                dims: vec![huge; 3],
                elements: vec![],
            },
            PgArray {
                dims: vec![],
                elements: vec![PgValue::Null],
            },
            PgArray {
                dims: vec![ArrayDim {
                    lower: 1,
                    length: 0,
                }],
                elements: vec![],
            },
            PgArray {
                dims: vec![ArrayDim {
                    lower: 1,
                    length: -1,
                }],
                elements: vec![PgValue::Null],
            },
        ];
        let ty = PgType::from_builtin_oid(1007).unwrap();
        for a in bad {
            assert!(!a.is_well_formed(), "{a:?}");
            let v = PgValue::Array(a);
            assert!(crate::text::render_text(&ty, &v).is_err());
            assert!(crate::avro::to_branch(&ty, -1, &v).is_err());
        }
        assert!(PgArray::one_dim(vec![]).is_well_formed());
        assert!(PgArray::one_dim(vec![PgValue::Int4(1)]).is_well_formed());
        // dims [1:1] and no elements, through both readers.
        let body = [0x02, 0x02, 0x02, 0x00, 0x00];
        assert!(
            crate::reader::Reader::new(&body)
                .slot(&ty, -1, false, false)
                .is_err()
        );
        let schema = apache_avro::Schema::parse(&crate::schema::value_schema(
            &ty,
            -1,
            false,
            false,
            &mut crate::schema::NamedTypes::new(),
        ))
        .unwrap();
        let avro = crate::fingerprint::decode_body(&schema, &body).unwrap();
        assert!(crate::avro::from_slot(&ty, -1, &avro, false, false).is_err());
    }

    #[test]
    fn chrono_conversions() {
        assert_eq!(
            PgDate::Days(19380).to_chrono(),
            chrono::NaiveDate::from_ymd_opt(2023, 1, 23)
        );
        assert_eq!(PgDate::Infinity.to_chrono(), None);
        assert_eq!(
            PgNumeric::Finite("231.11200".into()).to_decimal(),
            Some(rust_decimal::Decimal::new(23111200, 5))
        );
        assert_eq!(PgNumeric::NaN.to_decimal(), None);
        assert_eq!(
            PgValue::Time(45_000_500_000).time_to_chrono(),
            chrono::NaiveTime::from_hms_micro_opt(12, 30, 0, 500_000)
        );
        assert_eq!(PgValue::Time(86_400_000_000).time_to_chrono(), None);
        let tz = PgValue::TimeTz {
            micros: 0,
            offset_seconds: -19800,
        };
        assert_eq!(tz.timetz_offset(), chrono::FixedOffset::west_opt(19800));
        assert_eq!(
            PgTimestamp::Micros(1_555_035_031_782_068).to_chrono_utc(),
            chrono::DateTime::from_timestamp_micros(1_555_035_031_782_068)
        );
        assert_eq!(PgTimestamp::Infinity.to_chrono_naive(), None);
    }
}
