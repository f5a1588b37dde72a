//! Direct decoding of this crate's Avro bodies into typed values, driven by the PostgreSQL
//! type model (the inverse of `avro::write_slot`). Equivalent to decoding with apache-avro and
//! converting with `avro::from_slot` (the tests check this), but faster and with every length
//! checked against the remaining input before anything is allocated.

use num_bigint::BigInt;

use crate::Error;
use crate::avro::decimal_text;
use crate::schema::{branch_count, numeric_decimal_params};
use crate::types::{Builtin, PgType};
use crate::value::{
    ArrayDim, PgArray, PgDate, PgInterval, PgNumeric, PgRange, PgTimestamp, PgValue, RangeBound,
};

pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

fn eof() -> Error {
    Error::Framing("truncated Avro body".into())
}

fn bad(what: &str) -> Error {
    Error::Framing(format!("invalid Avro body: {what}"))
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.input.len()
    }

    /// The input not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.input
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let (&b, rest) = self.input.split_first().ok_or_else(eof)?;
        self.input = rest;
        Ok(b)
    }

    pub(crate) fn long(&mut self) -> Result<i64, Error> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, Error> {
        i32::try_from(self.long()?).map_err(|_| bad("int out of range"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.input.len() {
            return Err(eof());
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::try_from(self.long()?).map_err(|_| bad("negative length"))?;
        self.take(n)
    }

    fn string(&mut self) -> Result<&'a str, Error> {
        std::str::from_utf8(self.bytes()?).map_err(|_| bad("string is not UTF-8"))
    }

    fn boolean(&mut self) -> Result<bool, Error> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("boolean byte is not 0 or 1")),
        }
    }

    fn enum_index(&mut self, symbols: i64) -> Result<i64, Error> {
        let i = self.long()?;
        if (0..symbols).contains(&i) {
            Ok(i)
        } else {
            Err(bad("enum index out of range"))
        }
    }

    /// Reads array blocks, calling `item` for each element.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), Error>) -> Result<(), Error> {
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = count.checked_neg().ok_or_else(|| bad("block count"))?;
                self.long()?; // block size in bytes
            }
            // Every element of this crate's arrays takes at least one byte.
            if count as u64 > self.remaining() as u64 {
                return Err(eof());
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    /// Reads a field slot (see `avro::to_slot` for the layout).
    pub(crate) fn slot(
        &mut self,
        ty: &PgType,
        typmod: i32,
        nullable: bool,
        unchanged: bool,
    ) -> Result<PgValue, Error> {
        let n = branch_count(ty, typmod) as i64;
        let offset = i64::from(nullable);
        if !(nullable || unchanged || n > 1) {
            return self.branch(ty, typmod, 0);
        }
        let i = self.long()?;
        if nullable && i == 0 {
            return Ok(PgValue::Null);
        }
        if unchanged && i == offset + n {
            return Ok(PgValue::Unchanged);
        }
        if i < offset || i >= offset + n {
            return Err(bad("union branch out of range"));
        }
        self.branch(ty, typmod, (i - offset) as u32)
    }

    fn branch(&mut self, ty: &PgType, typmod: i32, branch: u32) -> Result<PgValue, Error> {
        use Builtin::*;
        let inf = |r: &mut Self| -> Result<bool, Error> { Ok(r.enum_index(2)? == 0) };
        Ok(match ty {
            PgType::Domain {
                base, base_typmod, ..
            } => {
                return self.branch(
                    base,
                    if typmod >= 0 { typmod } else { *base_typmod },
                    branch,
                );
            }
            PgType::Builtin(b) => match (b, branch) {
                (Bool, _) => PgValue::Bool(self.boolean()?),
                (Int2, _) => {
                    PgValue::Int2(i16::try_from(self.long()?).map_err(|_| bad("int2 range"))?)
                }
                (Int4, _) => PgValue::Int4(self.int()?),
                (Int8, _) => PgValue::Int8(self.long()?),
                (Oid | Xid | Cid, _) => {
                    PgValue::Oid(u32::try_from(self.long()?).map_err(|_| bad("oid range"))?)
                }
                (Xid8 | PgLsn, _) => PgValue::U64(self.long()? as u64),
                (Float4, _) => {
                    let b = self.take(4)?;
                    PgValue::Float4(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                (Float8, _) => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    PgValue::Float8(f64::from_le_bytes(a))
                }
                (Numeric, 0) => match numeric_decimal_params(typmod) {
                    Some((_, s)) => {
                        let b = self.bytes()?;
                        if b.is_empty() {
                            return Err(bad("empty decimal"));
                        }
                        PgValue::Numeric(PgNumeric::Finite(decimal_text(
                            &BigInt::from_signed_bytes_be(b),
                            s,
                        )))
                    }
                    None => PgValue::Numeric(
                        crate::text::parse_numeric(self.string()?)
                            .ok_or_else(|| bad("numeric text"))?,
                    ),
                },
                (Numeric, _) => PgValue::Numeric(match self.enum_index(3)? {
                    0 => PgNumeric::NaN,
                    1 => PgNumeric::Infinity,
                    _ => PgNumeric::NegInfinity,
                }),
                (Bytea, _) => PgValue::Bytes(self.bytes()?.to_vec()),
                (Uuid, _) => PgValue::Uuid(
                    uuid::Uuid::parse_str(self.string()?).map_err(|_| bad("uuid text"))?,
                ),
                (Date, 0) => PgValue::Date(PgDate::Days(self.int()?)),
                (Date, _) => PgValue::Date(if inf(self)? {
                    PgDate::Infinity
                } else {
                    PgDate::NegInfinity
                }),
                (Time, _) => PgValue::Time(self.long()?),
                (TimeTz, _) => PgValue::TimeTz {
                    micros: self.long()?,
                    offset_seconds: self.int()?,
                },
                (Timestamp | TimestampTz, _) => {
                    let t = if branch == 0 {
                        PgTimestamp::Micros(self.long()?)
                    } else if inf(self)? {
                        PgTimestamp::Infinity
                    } else {
                        PgTimestamp::NegInfinity
                    };
                    if *b == Timestamp {
                        PgValue::Timestamp(t)
                    } else {
                        PgValue::TimestampTz(t)
                    }
                }
                (Interval, _) => PgValue::Interval(PgInterval {
                    months: self.int()?,
                    days: self.int()?,
                    micros: self.long()?,
                }),
                (Json | Jsonb, _) => PgValue::Json(self.string()?.to_owned()),
                _ => PgValue::Text(self.string()?.to_owned()),
            },
            PgType::Enum { .. } | PgType::Other { .. } => PgValue::Text(self.string()?.to_owned()),
            PgType::Array { element, .. } => {
                let mut dims = Vec::new();
                self.array(|r| {
                    dims.push(ArrayDim {
                        lower: r.int()?,
                        length: r.int()?,
                    });
                    Ok(())
                })?;
                let mut elements = Vec::new();
                self.array(|r| {
                    elements.push(r.slot(element, typmod, true, false)?);
                    Ok(())
                })?;
                let a = PgArray { dims, elements };
                if !a.is_well_formed() {
                    return Err(bad("array dimensions do not match its elements"));
                }
                PgValue::Array(a)
            }
            PgType::Range { subtype, .. } => PgValue::Range(self.range(subtype)?),
            PgType::Multirange { range, .. } => {
                let PgType::Range { subtype, .. } = range.as_ref() else {
                    return Err(bad("multirange over a non-range type"));
                };
                let mut out = Vec::new();
                self.array(|r| {
                    out.push(r.range(subtype)?);
                    Ok(())
                })?;
                PgValue::Multirange(out)
            }
            PgType::Composite { fields, .. } => {
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    out.push((
                        f.name.clone(),
                        self.slot(&f.pg_type, f.typmod, true, false)?,
                    ));
                }
                PgValue::Composite(out)
            }
        })
    }

    fn range(&mut self, subtype: &PgType) -> Result<PgRange, Error> {
        let empty = self.boolean()?;
        let lower = self.slot(subtype, -1, true, false)?;
        let lower_inc = self.boolean()?;
        let upper = self.slot(subtype, -1, true, false)?;
        let upper_inc = self.boolean()?;
        if empty {
            return Ok(PgRange::Empty);
        }
        let bound = |v: PgValue, inc: bool| match v {
            PgValue::Null => RangeBound::Unbounded,
            v if inc => RangeBound::Inclusive(Box::new(v)),
            v => RangeBound::Exclusive(Box::new(v)),
        };
        Ok(PgRange::Bounds {
            lower: bound(lower, lower_inc),
            upper: bound(upper, upper_inc),
        })
    }
}
