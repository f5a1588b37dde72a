//! Walbrook's wire vocabulary (docs/protocol.md), shared by the producer and the client
//! so that both sides spell it the same way: WAL positions ([`Lsn`]), subjects and stream
//! names with reversible token escaping ([`subject`]), the operation enum ([`Op`]), the
//! `walbrook.Source` record schema, and header names ([`headers`]).

pub mod batch;
pub mod lsn;
pub mod message_id;
pub mod snapshot;
pub mod subject;

pub use lsn::{FullXid, Lsn, ParseLsnError, Xid};
pub use message_id::{MessageId, ParseMessageIdError, Previous};
pub use subject::{StreamKind, Subjects, escape_token, unescape_token};

/// The chunk size of an object stored in the JetStream object store (docs/protocol.md §3.5)
/// on a server with this `max_payload`: chunks are messages too, so 1 KiB is left for their
/// headers; between 1 KiB and the object store's usual 128 KiB.
pub fn object_chunk_size(max_payload: usize) -> usize {
    max_payload.saturating_sub(1024).clamp(1024, 128 * 1024)
}

/// The operation of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new row (`after`).
    Insert,
    /// A changed row whose replica identity did not change (`after`; `before` under
    /// REPLICA IDENTITY FULL).
    Update,
    /// A changed row whose identity (key) changed: `before` has the old key.
    UpdateKey,
    /// A removed row (`before` has its identity, or the whole row under FULL).
    Delete,
    /// The table was truncated (no rows).
    Truncate,
    /// A snapshot row (`after`).
    Read,
}

/// Symbols of the `walbrook.Op` enum, in order.
pub const OP_SYMBOLS: [&str; 6] = [
    "INSERT",
    "UPDATE",
    "UPDATE_KEY",
    "DELETE",
    "TRUNCATE",
    "READ",
];

impl Op {
    /// Index of the `walbrook.Op` enum symbol.
    pub fn index(self) -> usize {
        match self {
            Op::Insert => 0,
            Op::Update => 1,
            Op::UpdateKey => 2,
            Op::Delete => 3,
            Op::Truncate => 4,
            Op::Read => 5,
        }
    }

    /// By the index of the `walbrook.Op` enum symbol.
    pub fn from_index(index: i64) -> Option<Op> {
        Some(match index {
            0 => Op::Insert,
            1 => Op::Update,
            2 => Op::UpdateKey,
            3 => Op::Delete,
            4 => Op::Truncate,
            5 => Op::Read,
            _ => return None,
        })
    }

    /// The protocol's lower-case name (`insert`, `update_key`…), as in the `Walbrook-Op`
    /// header.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::UpdateKey => "update_key",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serialises as the lower-case name ([`Op::as_str`]).
impl serde::Serialize for Op {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The `walbrook.Source` record of every change event (docs/protocol.md §3.2).
pub fn source_schema() -> serde_json::Value {
    serde_json::json!({"type": "record", "name": "Source", "namespace": "walbrook", "fields": [
        {"name": "database", "type": "string"},
        {"name": "schema", "type": "string"},
        {"name": "table", "type": "string"},
        {"name": "xid", "type": "long"},
        {"name": "commit_lsn", "type": "long"},
        {"name": "lsn", "type": "long"},
        {"name": "commit_ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "ordinal", "type": "long"},
        {"name": "last", "type": "boolean"},
        {"name": "sent_at", "type": {"type": "long", "logicalType": "timestamp-micros"}}
    ]})
}

/// Header names of change events (docs/protocol.md §3.3).
pub mod headers {
    /// Commit LSN in `X/X` form.
    pub const COMMIT_LSN: &str = "Walbrook-Commit-Lsn";
    /// Ordinal within the transaction.
    pub const ORDINAL: &str = "Walbrook-Ordinal";
    /// `true` on a transaction's last event.
    pub const LAST: &str = "Walbrook-Last";
    /// Operation.
    pub const OP: &str = "Walbrook-Op";
    /// Fingerprint text.
    pub const FINGERPRINT: &str = "Walbrook-Fingerprint";
    /// On a change message carrying several events (docs/protocol.md §3.6): how many (at
    /// least 2); the body is then framed by [`crate::batch`]. Absent: the body is one event.
    pub const EVENTS: &str = "Walbrook-Events";
    /// On a change message: the `Nats-Msg-Id` of the change message stored before it on
    /// the same subject, or `unknown` (docs/protocol.md §3.7; [`crate::Previous`]). Absent
    /// on the first change message of a subject. A consumer that never received the named
    /// message has a gap.
    pub const PREVIOUS: &str = "Walbrook-Previous";
    /// On a gap marker (docs/protocol.md §3.8): `<newest stored position or none>..<the new
    /// slot's start>`; the changes committed in between are not in the stream. A marker has
    /// no body and no event.
    pub const GAP: &str = "Walbrook-Gap";
    /// `<bucket>/<object>`: the payload is too large for one NATS message and is stored
    /// in that JetStream object store object (docs/protocol.md §3.5); the message body is
    /// empty.
    pub const PAYLOAD_OBJECT: &str = "Walbrook-Payload-Object";
    /// On snapshot control messages: `begin`, `end` or `failed` (docs/protocol.md §8).
    pub const SNAPSHOT_CONTROL: &str = "Walbrook-Snapshot-Control";
    /// On snapshot rows: the 1-based number within the snapshot of the message's (first)
    /// row.
    pub const SNAPSHOT_ROW: &str = "Walbrook-Snapshot-Row";
    /// On a snapshot row batch: how many rows its body holds (docs/protocol.md §8.2; the
    /// body is then framed by [`crate::batch`]). Absent: the body is one row.
    pub const SNAPSHOT_ROWS: &str = "Walbrook-Snapshot-Rows";
    /// On every snapshot message: the snapshot id.
    pub const SNAPSHOT_ID: &str = "Walbrook-Snapshot-Id";

    /// The bytes a NATS header block with these `(name, value)` pairs takes on the wire
    /// (`NATS/1.0\r\n`, one `name: value\r\n` per value, a closing `\r\n`). The server's
    /// `max_payload` counts it together with the body.
    pub fn block_len<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
        const FRAMING: usize = "NATS/1.0\r\n".len() + "\r\n".len();
        pairs
            .into_iter()
            .map(|(name, value)| name.len() + ": ".len() + value.len() + "\r\n".len())
            .sum::<usize>()
            + FRAMING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_chunks_fit_the_server_and_stay_in_bounds() {
        assert_eq!(object_chunk_size(65_536), 64_512);
        assert_eq!(object_chunk_size(1 << 20), 128 * 1024);
        assert_eq!(object_chunk_size(100), 1024);
    }

    #[test]
    fn a_header_block_counts_its_framing() {
        assert_eq!(headers::block_len([]), 12);
        // "NATS/1.0\r\nWalbrook-Op: INSERT\r\nA: \r\n\r\n"
        assert_eq!(
            headers::block_len([(headers::OP, "INSERT"), ("A", "")]),
            "NATS/1.0\r\nWalbrook-Op: INSERT\r\nA: \r\n\r\n".len()
        );
    }

    #[test]
    fn op_indexes_match_the_symbols() {
        for index in 0..6 {
            let op = Op::from_index(index).unwrap();
            assert_eq!(i64::try_from(op.index()).unwrap(), index);
            assert_eq!(OP_SYMBOLS[op.index()].to_lowercase(), op.as_str());
        }
        assert_eq!(Op::from_index(6), None);
    }
}
