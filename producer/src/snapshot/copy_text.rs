//! PostgreSQL's `COPY … TO STDOUT` text format, read into [`Tuple`]s.
//!
//! A snapshot reads its rows with `COPY (SELECT …) TO STDOUT` rather than as query
//! rows: COPY sends each row as one line of tab-separated values in the types' text
//! output form (the same form pgoutput sends), which the server writes and we split
//! with a byte search instead of one protocol message and one UTF-8 check per value.
//!
//! The format (PostgreSQL docs, "COPY", File Formats → Text Format): rows end with
//! `\n`, columns are separated by a tab, `\N` alone is NULL, and a backslash escapes the
//! characters the data may contain (`\\`, `\t`, `\n`, `\r`, `\b`, `\f`, `\v`, octal
//! `\ddd`, hex `\xhh`, and any other character standing for itself). Raw tabs and
//! newlines therefore only ever delimit. Values without a backslash are slices of the
//! received buffer (no copy); only escaped values are rebuilt.

use bytes::Bytes;

use crate::pgoutput::{ColumnValue, Tuple};

/// Why a COPY text row could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyTextError {
    /// The row has another number of columns than the table.
    #[error("a COPY row has {found} columns, expected {expected}")]
    Columns {
        /// Columns of the table.
        expected: usize,
        /// Columns in the row.
        found: usize,
    },
    /// The data did not end with a row terminator.
    #[error("the COPY data ends inside a row")]
    Truncated,
}

/// Splits `data`, whole rows each ending with `\n`, into tuples of `columns` values.
pub fn rows(data: &Bytes, columns: usize) -> Result<Vec<Tuple>, CopyTextError> {
    Rows::new(data.clone(), columns).collect()
}

/// The rows of `data` one at a time (a chunk is never held as tuples all at once).
pub struct Rows {
    data: Bytes,
    start: usize,
    columns: usize,
}

impl Rows {
    /// Rows of `columns` values in `data`, whole rows each ending with `\n`.
    pub fn new(data: Bytes, columns: usize) -> Rows {
        Rows {
            data,
            start: 0,
            columns,
        }
    }
}

impl Iterator for Rows {
    type Item = Result<Tuple, CopyTextError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.start >= self.data.len() {
            return None;
        }
        let Some(end) = memchr::memchr(b'\n', &self.data[self.start..]).map(|i| self.start + i)
        else {
            self.start = self.data.len();
            return Some(Err(CopyTextError::Truncated));
        };
        let row = row(&self.data, self.start, end, self.columns);
        self.start = end + 1;
        Some(row)
    }
}

/// The values of `line`, one row of a chunk that is valid UTF-8 (without its
/// terminator), as slices of it when no value holds an escape: `Ok(true)` and `values`
/// filled (`\N` alone is NULL). `Ok(false)` when some value holds an escape (then
/// `values` is unspecified and [`row`] reads the line); an error when the row has another
/// number of columns than `columns`.
pub fn plain_row<'a>(
    line: &'a str,
    columns: usize,
    values: &mut Vec<walbrook_pgtype_avro::ColumnValue<'a>>,
) -> Result<bool, CopyTextError> {
    use walbrook_pgtype_avro::ColumnValue as Value;
    values.clear();
    if columns == 0 && line.is_empty() {
        return Ok(true);
    }
    let mut start = 0;
    for end in memchr::memchr_iter(b'\t', line.as_bytes()).chain(std::iter::once(line.len())) {
        // Tabs are ASCII, so both ends are character boundaries.
        let field = &line[start..end];
        start = end + 1;
        if field == "\\N" {
            values.push(Value::Null);
        } else if memchr::memchr(b'\\', field.as_bytes()).is_some() {
            return Ok(false);
        } else {
            values.push(Value::Text(field));
        }
    }
    if values.len() != columns {
        return Err(CopyTextError::Columns {
            expected: columns,
            found: values.len(),
        });
    }
    Ok(true)
}

/// The row in `data[start..end]` (without its terminator).
pub fn row(data: &Bytes, start: usize, end: usize, columns: usize) -> Result<Tuple, CopyTextError> {
    if columns == 0 && start == end {
        // A table without columns: COPY writes an empty line per row.
        return Ok(Tuple(Vec::new()));
    }
    let mut values = Vec::with_capacity(columns);
    let mut field = start;
    for tab in memchr::memchr_iter(b'\t', &data[start..end])
        .map(|i| start + i)
        .chain(std::iter::once(end))
    {
        values.push(value(data, field, tab));
        field = tab + 1;
    }
    if values.len() != columns {
        return Err(CopyTextError::Columns {
            expected: columns,
            found: values.len(),
        });
    }
    Ok(Tuple(values))
}

fn value(data: &Bytes, start: usize, end: usize) -> ColumnValue {
    let raw = &data[start..end];
    if raw == b"\\N" {
        return ColumnValue::Null;
    }
    if memchr::memchr(b'\\', raw).is_none() {
        return ColumnValue::Text(data.slice(start..end));
    }
    ColumnValue::Text(Bytes::from(unescape(raw)))
}

/// Resolves the backslash escapes of one value.
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' || i == raw.len() {
            out.push(b);
            continue;
        }
        let c = raw[i];
        i += 1;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u8;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d as u8;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &ColumnValue) -> Option<&[u8]> {
        match v {
            ColumnValue::Text(b) => Some(b),
            ColumnValue::Null => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn splits_rows_and_columns_and_reads_null() {
        let data = Bytes::from_static(b"1\tone\t\\N\n2\t\t\\\\N\n");
        let rows = rows(&data, 3).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(text(&rows[0].0[0]), Some(&b"1"[..]));
        assert_eq!(text(&rows[0].0[1]), Some(&b"one"[..]));
        assert_eq!(text(&rows[0].0[2]), None);
        assert_eq!(
            text(&rows[1].0[1]),
            Some(&b""[..]),
            "empty string is not NULL"
        );
        assert_eq!(
            text(&rows[1].0[2]),
            Some(&b"\\N"[..]),
            "escaped backslash then N"
        );
    }

    #[test]
    fn resolves_every_escape() {
        assert_eq!(
            unescape(br"a\\b\tc\nd\re\bf\fg\vh\101\x41\x4a\q\"),
            b"a\\b\tc\nd\re\x08f\x0cg\x0bhAAJq\\".to_vec()
        );
        assert_eq!(unescape(br"\\x00ff"), b"\\x00ff".to_vec(), "bytea hex text");
        assert_eq!(unescape(br"\7\08"), b"\x07\x008".to_vec());
    }

    #[test]
    fn refuses_truncated_data_and_wrong_column_counts() {
        assert_eq!(
            rows(&Bytes::from_static(b"1\t2\n3\t4"), 2).unwrap_err(),
            CopyTextError::Truncated
        );
        assert_eq!(
            rows(&Bytes::from_static(b"1\t2\t3\n"), 2).unwrap_err(),
            CopyTextError::Columns {
                expected: 2,
                found: 3
            }
        );
        assert!(rows(&Bytes::new(), 2).unwrap().is_empty());
    }

    #[test]
    fn plain_rows_borrow_their_values_and_leave_escapes_to_the_general_path() {
        use walbrook_pgtype_avro::ColumnValue as Value;
        let mut values = Vec::new();
        assert_eq!(plain_row("1\tone\t\\N\t", 4, &mut values), Ok(true));
        assert_eq!(
            values,
            [
                Value::Text("1"),
                Value::Text("one"),
                Value::Null,
                Value::Text("")
            ]
        );
        for escaped in ["1\ta\\tb", "1\t\\\\N", "1\t\\N2", "1\t\\x41"] {
            assert_eq!(plain_row(escaped, 2, &mut values), Ok(false), "{escaped}");
        }
        assert_eq!(
            plain_row("1\t2\t3", 2, &mut values),
            Err(CopyTextError::Columns {
                expected: 2,
                found: 3
            })
        );
        assert_eq!(plain_row("", 0, &mut values), Ok(true));
        assert!(values.is_empty());
        // Whatever the split, both paths read the same values.
        let data = Bytes::from_static(b"7\t\\N\tx y\n");
        let tuple = row(&data, 0, data.len() - 1, 3).unwrap();
        assert_eq!(plain_row("7\t\\N\tx y", 3, &mut values), Ok(true));
        for (general, plain) in tuple.0.iter().zip(&values) {
            match (general, plain) {
                (ColumnValue::Text(a), Value::Text(b)) => assert_eq!(&a[..], b.as_bytes()),
                (ColumnValue::Null, Value::Null) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unescaped_values_share_the_buffer() {
        let data = Bytes::from(b"abc\tdef\n".to_vec());
        let rows = rows(&data, 2).unwrap();
        let ColumnValue::Text(v) = &rows[0].0[1] else {
            panic!()
        };
        assert_eq!(v.as_ptr(), data[4..].as_ptr());
    }
}
