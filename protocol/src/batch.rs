//! Framing of a message that carries several events (docs/protocol.md §3.6 for change
//! messages, §8.2 for snapshot row batches).
//!
//! The body is a sequence of Avro `bytes` values — each a zig-zag varint length followed
//! by that many bytes — and each value is one event as an Avro single-object message
//! (§3.1). Any Avro library can read it; a reader knows how many values to expect from a
//! header ([`crate::headers::EVENTS`] on change messages, [`crate::headers::SNAPSHOT_ROWS`]
//! on snapshot row batches) and MUST refuse a body that holds another count or trailing
//! bytes.

/// The largest body a message with several events may have (the producer also stays below
/// the server's `max_payload` less room for headers).
pub const MAX_BODY: usize = 256 * 1024;

/// Why a batch body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A length prefix is cut off, negative or longer than 10 bytes.
    #[error("event {row}: bad length prefix")]
    BadLength {
        /// 1-based event (row) within the batch.
        row: u64,
    },
    /// An event is shorter than its length prefix says.
    #[error("event {row}: {missing} bytes missing")]
    Truncated {
        /// 1-based event (row) within the batch.
        row: u64,
        /// How many bytes the body lacks.
        missing: usize,
    },
    /// The body holds more or fewer events than announced.
    #[error("the batch announces {announced} events but holds {found}")]
    Count {
        /// The header's count.
        announced: u64,
        /// Events found (up to the first one too many).
        found: u64,
    },
}

/// The framed size of an event of `len` bytes.
pub fn framed_len(len: usize) -> usize {
    let mut z = (len as u64) << 1;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n + len
}

/// Appends one event (a single-object message) to a batch body.
pub fn push(body: &mut Vec<u8>, row: &[u8]) {
    let mut z = (row.len() as u64) << 1; // zig-zag of a non-negative long
    while z >= 0x80 {
        body.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    body.push(z as u8);
    body.extend_from_slice(row);
}

/// Splits a batch body announced to hold `count` events into the events' byte ranges.
pub fn split(body: &[u8], count: u64) -> Result<Vec<std::ops::Range<usize>>, BatchError> {
    let mut rows = Vec::with_capacity(usize::try_from(count.min(1 << 16)).unwrap_or(0));
    let mut at = 0;
    while at < body.len() {
        let row = rows.len() as u64 + 1;
        if row > count {
            return Err(BatchError::Count {
                announced: count,
                found: row,
            });
        }
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&b) = body.get(at) else {
                return Err(BatchError::BadLength { row });
            };
            at += 1;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift >= 63 {
                return Err(BatchError::BadLength { row });
            }
        }
        if z & 1 == 1 {
            return Err(BatchError::BadLength { row });
        }
        let len = usize::try_from(z >> 1).map_err(|_| BatchError::BadLength { row })?;
        let end = at.checked_add(len).ok_or(BatchError::BadLength { row })?;
        if end > body.len() {
            return Err(BatchError::Truncated {
                row,
                missing: end - body.len(),
            });
        }
        rows.push(at..end);
        at = end;
    }
    if rows.len() as u64 != count {
        return Err(BatchError::Count {
            announced: count,
            found: rows.len() as u64,
        });
    }
    Ok(rows)
}

/// Parses an event-count header (`Walbrook-Events`, `Walbrook-Snapshot-Rows`): a decimal
/// number of at least 1, without sign or padding.
pub fn parse_count(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_batches_round_trip_and_refuse_bad_framing() {
        let rows: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xC3, 1, 2],
            vec![7; 63],
            vec![9; 64],
            vec![1; 300],
        ];
        let mut body = Vec::new();
        for row in &rows {
            let before = body.len();
            push(&mut body, row);
            assert_eq!(body.len() - before, framed_len(row.len()));
        }
        let ranges = split(&body, rows.len() as u64).unwrap();
        let back: Vec<Vec<u8>> = ranges.into_iter().map(|r| body[r].to_vec()).collect();
        assert_eq!(back, rows);
        // 64 is the first length needing two bytes (zig-zag 128).
        assert_eq!(framed_len(63), 64);
        assert_eq!(framed_len(64), 66);
        assert_eq!(
            split(&body, 4),
            Err(BatchError::Count {
                announced: 4,
                found: 5
            })
        );
        assert_eq!(
            split(&body, 6),
            Err(BatchError::Count {
                announced: 6,
                found: 5
            })
        );
        assert_eq!(
            split(&body[..body.len() - 1], 5),
            Err(BatchError::Truncated { row: 5, missing: 1 })
        );
        assert_eq!(split(&[0x80], 1), Err(BatchError::BadLength { row: 1 }));
        assert_eq!(split(&[0x01], 1), Err(BatchError::BadLength { row: 1 }));
        assert_eq!(split(&[0xff; 12], 1), Err(BatchError::BadLength { row: 1 }));
        assert_eq!(split(&[], 0), Ok(vec![]));
    }

    #[test]
    fn counts_are_plain_positive_decimals() {
        assert_eq!(parse_count("1"), Some(1));
        assert_eq!(parse_count("1000"), Some(1000));
        for bad in [
            "",
            "0",
            "01",
            "-1",
            "+2",
            " 2",
            "2 ",
            "x",
            "18446744073709551616",
        ] {
            assert_eq!(parse_count(bad), None, "{bad:?}");
        }
    }
}
