//! PostgreSQL's `COPY … TO STDOUT (FORMAT binary)`, read row by row.
//!
//! A snapshot of a table whose column types all have a binary reader
//! ([`walbrook_pgtype_avro::pg_binary::reads`]) is copied in binary: the server skips the
//! types' output functions (printing `timestamptz` and `numeric` is a good part of a text
//! COPY's cost) and values need no unescaping or parsing from text.
//!
//! The format (PostgreSQL docs, "COPY", File Formats → Binary Format): an 11-byte
//! signature, a 32-bit flags field (bit 16: OIDs included, which a `COPY (SELECT …)` never
//! sets), a 32-bit header extension length and the extension; then per row a 16-bit field
//! count and per field a 32-bit length (−1: NULL) and that many bytes; at the end a field
//! count of −1. All integers are in network byte order.

use walbrook_pgtype_avro::ColumnValue;

use walbrook_pgtype_avro::pg_binary::COPY_SIGNATURE;

/// Why COPY binary data could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyBinaryError {
    /// The data does not start with a header this reader understands.
    #[error("the COPY data has an unexpected header: {0}")]
    Header(&'static str),
    /// A row has another number of fields than the table has columns.
    #[error("a COPY row has {found} columns, expected {expected}")]
    Columns {
        /// Columns of the table.
        expected: usize,
        /// Fields in the row.
        found: i16,
    },
    /// The data ends inside the header or a row, or without its trailer.
    #[error("the COPY data ends inside a row")]
    Truncated,
    /// A field has a negative length other than −1.
    #[error("a COPY field has the length {0}")]
    FieldLength(i32),
}

/// The length of the header at the start of `data`, `None` when `data` is too short to
/// tell.
pub fn header_len(data: &[u8]) -> Result<Option<usize>, CopyBinaryError> {
    let prefix = &data[..data.len().min(COPY_SIGNATURE.len())];
    if prefix != &COPY_SIGNATURE[..prefix.len()] {
        return Err(CopyBinaryError::Header("not the binary COPY signature"));
    }
    let Some(fixed) = data.get(..COPY_SIGNATURE.len() + 8) else {
        return Ok(None);
    };
    let flags = u32::from_be_bytes(fixed[11..15].try_into().expect("4 bytes"));
    if flags & (1 << 16) != 0 {
        return Err(CopyBinaryError::Header("rows carry OIDs"));
    }
    if flags & 0xffff_0000 & !(1 << 16) != 0 {
        return Err(CopyBinaryError::Header("unknown critical flags"));
    }
    let extension = u32::from_be_bytes(fixed[15..19].try_into().expect("4 bytes"));
    let len = (COPY_SIGNATURE.len() + 8)
        .checked_add(extension as usize)
        .ok_or(CopyBinaryError::Header("extension too long"))?;
    Ok((data.len() >= len).then_some(len))
}

/// What starts at some position of the data, after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A complete row of this many bytes.
    Row(usize),
    /// The trailer (two bytes).
    End,
    /// Not enough bytes to tell.
    Incomplete,
}

/// Reads what starts `data`: a complete row of `columns` fields (whose values are put in
/// `values` when given, `Binary` or `Null`), the trailer, or too few bytes to tell.
pub fn read<'a>(
    data: &'a [u8],
    columns: usize,
    mut values: Option<&mut Vec<ColumnValue<'a>>>,
) -> Result<Next, CopyBinaryError> {
    let Some(count) = data.first_chunk::<2>() else {
        return Ok(Next::Incomplete);
    };
    let count = i16::from_be_bytes(*count);
    if count == -1 {
        return Ok(Next::End);
    }
    if usize::try_from(count).ok() != Some(columns) {
        return Err(CopyBinaryError::Columns {
            expected: columns,
            found: count,
        });
    }
    if let Some(values) = values.as_deref_mut() {
        values.clear();
    }
    let mut at = 2;
    for _ in 0..columns {
        let Some(len) = data.get(at..).and_then(<[u8]>::first_chunk::<4>) else {
            return Ok(Next::Incomplete);
        };
        let len = i32::from_be_bytes(*len);
        at += 4;
        let value = match len {
            -1 => ColumnValue::Null,
            len if len < 0 => return Err(CopyBinaryError::FieldLength(len)),
            len => {
                let end = at + len as usize;
                let Some(bytes) = data.get(at..end) else {
                    return Ok(Next::Incomplete);
                };
                at = end;
                ColumnValue::Binary(bytes)
            }
        };
        if let Some(values) = values.as_deref_mut() {
            values.push(value);
        }
    }
    Ok(Next::Row(at))
}

/// The complete rows at the start of `data` (after the header): how many and where each
/// of them starts, then where they end and what follows (`Next::End` or
/// `Next::Incomplete`).
pub fn scan(data: &[u8], columns: usize) -> Result<Scan, CopyBinaryError> {
    let mut scan = Scan {
        rows: 0,
        last_start: None,
        end: 0,
        then: Next::Incomplete,
    };
    loop {
        match read(&data[scan.end..], columns, None)? {
            Next::Row(len) => {
                scan.rows += 1;
                scan.last_start = Some(scan.end);
                scan.end += len;
            }
            then => {
                scan.then = then;
                return Ok(scan);
            }
        }
    }
}

/// What [`scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Complete rows.
    pub rows: usize,
    /// Where the last of them starts.
    pub last_start: Option<usize>,
    /// Where they end.
    pub end: usize,
    /// What follows them.
    pub then: Next,
}

#[cfg(test)]
mod tests {
    use super::*;
    use walbrook_pgtype_avro::pg_binary::COPY_TRAILER;

    fn header() -> Vec<u8> {
        let mut d = COPY_SIGNATURE.to_vec();
        d.extend_from_slice(&0u32.to_be_bytes());
        d.extend_from_slice(&0u32.to_be_bytes());
        d
    }

    fn row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut d = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => d.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    d.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    d.extend_from_slice(b);
                }
            }
        }
        d
    }

    #[test]
    fn reads_rows_nulls_and_the_trailer() {
        let mut data = header();
        let h = header_len(&data).unwrap().unwrap();
        assert_eq!(h, 19);
        data.extend(row(&[Some(b"\x00\x01"), None, Some(b"")]));
        data.extend(row(&[Some(b"xyz"), Some(b"\t\n\\N"), None]));
        data.extend_from_slice(&COPY_TRAILER);
        let mut values = Vec::new();
        let Next::Row(len) = read(&data[h..], 3, Some(&mut values)).unwrap() else {
            panic!()
        };
        assert_eq!(
            values,
            [
                ColumnValue::Binary(b"\x00\x01"),
                ColumnValue::Null,
                ColumnValue::Binary(b"")
            ]
        );
        let second = h + len;
        assert!(matches!(
            read(&data[second..], 3, Some(&mut values)),
            Ok(Next::Row(_))
        ));
        assert_eq!(values[1], ColumnValue::Binary(b"\t\n\\N"), "no escapes");
        let scan = scan(&data[h..], 3).unwrap();
        assert_eq!(scan.rows, 2);
        assert_eq!(scan.last_start, Some(len));
        assert_eq!(scan.then, Next::End);
        assert_eq!(h + scan.end + 2, data.len());
    }

    #[test]
    fn every_cut_of_the_data_is_incomplete_never_a_wrong_row() {
        let mut data = row(&[Some(b"abcd"), None]);
        data.extend(row(&[None, Some(b"ef")]));
        let full = scan(&data, 2).unwrap();
        assert_eq!(full.rows, 2);
        for cut in 0..data.len() {
            let part = scan(&data[..cut], 2).unwrap();
            assert_eq!(part.then, Next::Incomplete, "cut {cut}");
            assert!(part.rows < 2);
            assert!(part.end <= cut);
        }
        let mut whole = header();
        whole.extend_from_slice(&data);
        for cut in 0..19 {
            assert_eq!(header_len(&whole[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(header_len(b"1\t2\n").is_err());
        let mut oids = COPY_SIGNATURE.to_vec();
        oids.extend_from_slice(&(1u32 << 16).to_be_bytes());
        oids.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            header_len(&oids),
            Err(CopyBinaryError::Header("rows carry OIDs"))
        );
        let mut extended = header();
        extended[15..19].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(header_len(&extended), Ok(None));
        extended.extend_from_slice(b"abcd");
        assert_eq!(header_len(&extended), Ok(Some(23)));
        assert_eq!(
            read(&row(&[None]), 2, None),
            Err(CopyBinaryError::Columns {
                expected: 2,
                found: 1
            })
        );
        let mut bad = 1i16.to_be_bytes().to_vec();
        bad.extend_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(read(&bad, 1, None), Err(CopyBinaryError::FieldLength(-2)));
    }
}
