//! PostgreSQL values (`PgValue`) as native Python objects. The table is in docs/python.md.

use chrono::{Datelike, Timelike};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use walbrook_client::{PgDate, PgRange, PgTimestamp, PgValue, RangeBound, Row};

/// Python classes and singletons the conversion needs, looked up once.
pub struct Classes {
    decimal: Py<PyAny>,
    uuid: Py<PyAny>,
    date: Py<PyAny>,
    time: Py<PyAny>,
    /// `datetime.datetime`.
    pub datetime: Py<PyAny>,
    timedelta: Py<PyAny>,
    timezone: Py<PyAny>,
    /// `datetime.timezone.utc`.
    pub utc: Py<PyAny>,
    json_decode: Py<PyAny>,
    /// The C scanner of the same decoder (`scan(text, 0)` → `(value, end)`), which skips
    /// `JSONDecoder.decode`'s Python-level wrapper.
    json_scan: Py<PyAny>,
    /// `object.__new__` and `object.__setattr__`, to build `uuid.UUID`s without running
    /// `UUID.__init__` (pure Python and the slowest part of converting a row), when
    /// [`Classes::fast_uuid`] says the interpreter's `UUID` allows it.
    object_new: Py<PyAny>,
    object_setattr: Py<PyAny>,
    safe_uuid_unknown: Py<PyAny>,
    fast_uuid: bool,
    unchanged: Py<PyAny>,
    infinity: Py<PyAny>,
    neg_infinity: Py<PyAny>,
    out_of_range: Py<PyAny>,
    interval: Py<PyAny>,
    range: Py<PyAny>,
    bounded_array: Py<PyAny>,
    /// `walbrook.Lsn`.
    pub lsn: Py<PyAny>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// The cached classes.
pub fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let datetime = py.import("datetime")?;
        let types = py.import("walbrook._types")?;
        let decimal = py.import("decimal")?.getattr("Decimal")?;
        let json_decoder = py.import("json")?.getattr("JSONDecoder")?.call(
            (),
            Some(&[("parse_float", decimal.clone())].into_py_dict(py)?),
        )?;
        let timezone = datetime.getattr("timezone")?;
        let json_scan = py
            .import("json.scanner")?
            .getattr("make_scanner")?
            .call1((&json_decoder,))?;
        let uuid_module = py.import("uuid")?;
        let object = py.import("builtins")?.getattr("object")?;
        let mut classes = Classes {
            decimal: decimal.unbind(),
            uuid: uuid_module.getattr("UUID")?.unbind(),
            date: datetime.getattr("date")?.unbind(),
            time: datetime.getattr("time")?.unbind(),
            datetime: datetime.getattr("datetime")?.unbind(),
            timedelta: datetime.getattr("timedelta")?.unbind(),
            utc: timezone.getattr("utc")?.unbind(),
            timezone: timezone.unbind(),
            json_decode: json_decoder.getattr("decode")?.unbind(),
            json_scan: json_scan.unbind(),
            object_new: object.getattr("__new__")?.unbind(),
            object_setattr: object.getattr("__setattr__")?.unbind(),
            safe_uuid_unknown: uuid_module
                .getattr("SafeUUID")?
                .getattr("unknown")?
                .unbind(),
            fast_uuid: false,
            unchanged: types.getattr("UNCHANGED")?.unbind(),
            infinity: types.getattr("INFINITY")?.unbind(),
            neg_infinity: types.getattr("NEG_INFINITY")?.unbind(),
            out_of_range: types.getattr("OutOfRange")?.unbind(),
            interval: types.getattr("Interval")?.unbind(),
            range: types.getattr("Range")?.unbind(),
            bounded_array: types.getattr("BoundedArray")?.unbind(),
            lsn: types.getattr("Lsn")?.unbind(),
        };
        // Use the fast UUID construction only if it builds a UUID equal, in every way we
        // can see, to the one `UUID(int=…)` builds.
        let probe = u128::from_be_bytes(*b"walbrook-uuid-ok");
        classes.fast_uuid = true;
        let fast = classes.uuid_of(py, probe).ok();
        classes.fast_uuid = false;
        let slow = classes.uuid_of(py, probe)?;
        if let Some(fast) = fast {
            let fast = fast.bind(py);
            let slow = slow.bind(py);
            classes.fast_uuid = fast.eq(slow)?
                && fast.str()?.to_cow()? == slow.str()?.to_cow()?
                && fast.hash()? == slow.hash()?
                && fast.get_type().is(slow.get_type());
        }
        Ok::<_, PyErr>(classes)
    })
}

use pyo3::types::IntoPyDict;

const MICROS_PER_DAY: i64 = 86_400_000_000;
const DAYS_0001_01_01: i64 = -719_162; // days from 1970-01-01 back to 0001-01-01
const DAYS_10000_01_01: i64 = 2_932_897; // days from 1970-01-01 to 10000-01-01

impl Classes {
    /// A `uuid.UUID` of a 128-bit value.
    fn uuid_of(&self, py: Python<'_>, value: u128) -> PyResult<Py<PyAny>> {
        if self.fast_uuid {
            let u = self.object_new.call1(py, (self.uuid.bind(py),))?;
            self.object_setattr.call1(py, (&u, "int", value))?;
            self.object_setattr
                .call1(py, (&u, "is_safe", self.safe_uuid_unknown.bind(py)))?;
            Ok(u)
        } else {
            let kwargs = [("int", value)].into_py_dict(py)?;
            self.uuid.call(py, (), Some(&kwargs))
        }
    }

    /// A JSON text parsed with exact numbers (non-integers as `Decimal`).
    fn json(&self, py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
        if !text.starts_with(|c: char| c.is_ascii_whitespace()) {
            let scanned = self.json_scan.call1(py, (text, 0));
            if let Ok(scanned) = scanned {
                let (value, end): (Py<PyAny>, usize) = scanned.extract(py)?;
                // `end` counts code points; compare with the text's code point count.
                if end == text.chars().count() {
                    return Ok(value);
                }
            }
        }
        // Surrounding whitespace (kept by `json`) or an error: the full decoder decides.
        self.json_decode.call1(py, (text,))
    }

    fn out_of_range(&self, py: Python<'_>, kind: &str, raw: i64) -> PyResult<Py<PyAny>> {
        self.out_of_range.call1(py, (kind, raw))
    }

    /// A `datetime.datetime` (aware in UTC when `utc`) for microseconds since the epoch.
    pub fn timestamp(&self, py: Python<'_>, micros: i64, utc: bool) -> PyResult<Py<PyAny>> {
        let days = micros.div_euclid(MICROS_PER_DAY);
        if !(DAYS_0001_01_01..DAYS_10000_01_01).contains(&days) {
            return self.out_of_range(py, if utc { "timestamptz" } else { "timestamp" }, micros);
        }
        let Some(t) = chrono::DateTime::from_timestamp_micros(micros) else {
            return self.out_of_range(py, if utc { "timestamptz" } else { "timestamp" }, micros);
        };
        let tz = if utc {
            self.utc.bind(py).clone()
        } else {
            py.None().into_bound(py)
        };
        self.datetime.call1(
            py,
            (
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.timestamp_subsec_micros(),
                tz,
            ),
        )
    }

    fn date(&self, py: Python<'_>, date: PgDate) -> PyResult<Py<PyAny>> {
        match date {
            PgDate::Infinity => Ok(self.infinity.clone_ref(py)),
            PgDate::NegInfinity => Ok(self.neg_infinity.clone_ref(py)),
            PgDate::Days(days) => {
                if !(DAYS_0001_01_01..DAYS_10000_01_01).contains(&i64::from(days)) {
                    return self.out_of_range(py, "date", i64::from(days));
                }
                match date.to_chrono() {
                    Some(d) => Ok(self.date.call1(py, (d.year(), d.month(), d.day()))?),
                    None => self.out_of_range(py, "date", i64::from(days)),
                }
            }
        }
    }

    fn time(&self, py: Python<'_>, micros: i64, offset: Option<i32>) -> PyResult<Py<PyAny>> {
        if !(0..MICROS_PER_DAY).contains(&micros) {
            let kind = if offset.is_some() { "timetz" } else { "time" };
            return self.out_of_range(py, kind, micros);
        }
        let secs = micros / 1_000_000;
        let (h, m, s, us) = (secs / 3600, secs / 60 % 60, secs % 60, micros % 1_000_000);
        let tz = match offset {
            Some(seconds) => self
                .timezone
                .call1(py, (self.timedelta.call1(py, (0, i64::from(seconds)))?,))?,
            None => py.None(),
        };
        self.time.call1(py, (h, m, s, us, tz))
    }

    fn timestamp_value(&self, py: Python<'_>, t: PgTimestamp, utc: bool) -> PyResult<Py<PyAny>> {
        match t {
            PgTimestamp::Infinity => Ok(self.infinity.clone_ref(py)),
            PgTimestamp::NegInfinity => Ok(self.neg_infinity.clone_ref(py)),
            PgTimestamp::Micros(us) => self.timestamp(py, us, utc),
        }
    }

    fn range(&self, py: Python<'_>, range: &PgRange) -> PyResult<Py<PyAny>> {
        match range {
            PgRange::Empty => Ok(self.range.call1(py, (py.None(), py.None(), "()", true))?),
            PgRange::Bounds { lower, upper } => {
                let (lo, lo_inc) = self.bound(py, lower)?;
                let (hi, hi_inc) = self.bound(py, upper)?;
                let bounds = match (lo_inc, hi_inc) {
                    (true, false) => "[)",
                    (true, true) => "[]",
                    (false, false) => "()",
                    (false, true) => "(]",
                };
                Ok(self.range.call1(py, (lo, hi, bounds, false))?)
            }
        }
    }

    fn bound(&self, py: Python<'_>, bound: &RangeBound) -> PyResult<(Py<PyAny>, bool)> {
        Ok(match bound {
            RangeBound::Unbounded => (py.None(), false),
            RangeBound::Inclusive(v) => (self.value(py, v)?, true),
            RangeBound::Exclusive(v) => (self.value(py, v)?, false),
        })
    }

    /// One value.
    pub fn value(&self, py: Python<'_>, value: &PgValue) -> PyResult<Py<PyAny>> {
        Ok(match value {
            PgValue::Null => py.None(),
            PgValue::Unchanged => self.unchanged.clone_ref(py),
            PgValue::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
            PgValue::Int2(v) => v.into_pyobject(py)?.into_any().unbind(),
            PgValue::Int4(v) => v.into_pyobject(py)?.into_any().unbind(),
            PgValue::Int8(v) => v.into_pyobject(py)?.into_any().unbind(),
            PgValue::Oid(v) => v.into_pyobject(py)?.into_any().unbind(),
            PgValue::U64(v) => v.into_pyobject(py)?.into_any().unbind(),
            PgValue::Float4(v) => f64::from(*v).into_pyobject(py)?.into_any().unbind(),
            PgValue::Float8(v) => v.into_pyobject(py)?.into_any().unbind(),
            PgValue::Numeric(n) => self.decimal.call1(py, (n.to_string(),))?,
            PgValue::Text(t) => PyString::new(py, t).into_any().unbind(),
            PgValue::Json(t) => self.json(py, t)?,
            PgValue::Bytes(b) => PyBytes::new(py, b).into_any().unbind(),
            PgValue::Uuid(u) => self.uuid_of(py, u.as_u128())?,
            PgValue::Date(d) => self.date(py, *d)?,
            PgValue::Time(us) => self.time(py, *us, None)?,
            PgValue::TimeTz {
                micros,
                offset_seconds,
            } => self.time(py, *micros, Some(*offset_seconds))?,
            PgValue::Timestamp(t) => self.timestamp_value(py, *t, false)?,
            PgValue::TimestampTz(t) => self.timestamp_value(py, *t, true)?,
            PgValue::Interval(i) => self.interval.call1(py, (i.months, i.days, i.micros))?,
            PgValue::Array(a) => {
                let elements = a
                    .elements
                    .iter()
                    .map(|e| self.value(py, e))
                    .collect::<PyResult<Vec<_>>>()?;
                let lengths: Vec<usize> = a
                    .dims
                    .iter()
                    .map(|d| usize::try_from(d.length).unwrap_or(0))
                    .collect();
                let nested = nest(py, &lengths, &mut elements.into_iter())?;
                if a.dims.iter().all(|d| d.lower == 1) {
                    nested
                } else {
                    let lower = PyTuple::new(py, a.dims.iter().map(|d| d.lower))?;
                    self.bounded_array.call1(py, (lower, nested))?
                }
            }
            PgValue::Range(r) => self.range(py, r)?,
            PgValue::Multirange(ranges) => {
                let items = ranges
                    .iter()
                    .map(|r| self.range(py, r))
                    .collect::<PyResult<Vec<_>>>()?;
                PyList::new(py, items)?.into_any().unbind()
            }
            PgValue::Composite(fields) => {
                let dict = PyDict::new(py);
                for (name, v) in fields {
                    dict.set_item(name, self.value(py, v)?)?;
                }
                dict.into_any().unbind()
            }
        })
    }

    /// A row as a dict (column name → value, in column order), with the column names
    /// given as Python strings (cached by the caller).
    pub fn row(&self, py: Python<'_>, names: &[Py<PyString>], row: &Row) -> PyResult<Py<PyAny>> {
        let dict = PyDict::new(py);
        for (name, value) in names.iter().zip(row.values()) {
            dict.set_item(name.bind(py), self.value(py, value)?)?;
        }
        Ok(dict.into_any().unbind())
    }
}

/// Row-major elements as nested lists of the given lengths (the empty array: `[]`).
fn nest(
    py: Python<'_>,
    lengths: &[usize],
    elements: &mut std::vec::IntoIter<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    match lengths {
        [] => Ok(PyList::empty(py).into_any().unbind()),
        [n] => Ok(PyList::new(py, elements.take(*n).collect::<Vec<_>>())?
            .into_any()
            .unbind()),
        [n, rest @ ..] => {
            let items = (0..*n)
                .map(|_| nest(py, rest, elements))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyList::new(py, items)?.into_any().unbind())
        }
    }
}
