//! A pure decoder for PostgreSQL's `pgoutput` logical replication messages.
//!
//! [`decode`] turns the payload of one XLogData message (protocol version 1, with the
//! `messages` option for logical messages) into a [`Message`]. It never panics: any
//! malformed or truncated input is a [`DecodeError`] naming the byte offset. Column
//! values are zero-copy slices of the input.
//!
//! Format reference: PostgreSQL's "Logical Replication Message Formats" chapter.
//! All integers are big-endian; strings are NUL-terminated.

use std::fmt;

use bytes::Bytes;

use crate::lsn::{Lsn, Xid};

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// An object id in the system catalogs (a relation or a type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The relation id pgoutput uses to refer to a table (its `pg_class` OID).
pub type RelationId = Oid;

/// A timestamp as PostgreSQL sends it: microseconds since 2000-01-01 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_OFFSET_MICROS)
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Start of a transaction.
    Begin(Begin),
    /// End of a transaction.
    Commit(Commit),
    /// The transaction came from another replication origin.
    Origin(Origin),
    /// Describes a relation; sent before the first change of a relation in a session
    /// and again after its definition changed.
    Relation(Relation),
    /// Describes a non-built-in data type used by a following Relation.
    Type(TypeInfo),
    /// A new row.
    Insert(Insert),
    /// A changed row.
    Update(Update),
    /// A removed row.
    Delete(Delete),
    /// One `TRUNCATE` of one or more relations.
    Truncate(Truncate),
    /// A logical decoding message (`pg_logical_emit_message`).
    LogicalMessage(LogicalMessage),
}

/// `B`: start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
}

/// `C`: end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently unused by PostgreSQL).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to confirm once the
    /// transaction is durable downstream.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
}

/// `O`: replication origin of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// How a relation identifies the old row of updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

/// `R`: a relation's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation id used by the change messages.
    pub id: RelationId,
    /// Schema name (empty means `pg_catalog`).
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Published columns, in order.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity ("key"). Under REPLICA
    /// IDENTITY FULL every column is.
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Data type OID.
    pub type_oid: Oid,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// `Y`: a data type's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Type OID.
    pub oid: Oid,
    /// Schema name (empty means `pg_catalog`).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value that PostgreSQL did not send; the consumer keeps
    /// the value it has.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Bytes),
    /// `b`: the value in the type's binary format.
    Binary(Bytes),
}

/// A row image: one value per column of the relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<ColumnValue>);

/// Which old row image an update or delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: only the replica identity columns are meaningful (others are NULL).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// An old row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    /// Key columns or whole row.
    pub kind: OldKind,
    /// The values.
    pub tuple: Tuple,
}

/// `I`: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The relation.
    pub relation: RelationId,
    /// The new row.
    pub new: Tuple,
}

/// `U`: a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The relation.
    pub relation: RelationId,
    /// The old row image: present when the identity changed (`Key`) or under REPLICA
    /// IDENTITY FULL (`Full`).
    pub old: Option<OldTuple>,
    /// The new row (unchanged TOASTed values are [`ColumnValue::UnchangedToast`]).
    pub new: Tuple,
}

/// `D`: a removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The relation.
    pub relation: RelationId,
    /// The old row image (identity columns, or the whole row under FULL).
    pub old: OldTuple,
}

/// `T`: a truncate of one or more relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE … CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The truncated relations.
    pub relations: Vec<RelationId>,
}

/// `M`: a logical decoding message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Whether it was emitted inside a transaction.
    pub transactional: bool,
    /// Its LSN.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content.
    pub content: Bytes,
}

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message at byte {offset}: {problem}")]
pub struct DecodeError {
    /// Byte offset in the message where decoding failed.
    pub offset: usize,
    /// What was wrong.
    pub problem: Problem,
}

/// What was wrong with a pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The message is empty.
    #[error("empty message")]
    Empty,
    /// The message ended in the middle of a field.
    #[error("truncated while reading {0}")]
    Truncated(&'static str),
    /// Unknown message type byte.
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u8),
    /// A message type of the streaming or two-phase protocols, which Walbrook does not
    /// request.
    #[error("message type {0:?} belongs to a protocol feature Walbrook does not enable")]
    UnsupportedMessage(char),
    /// Unknown tuple or column kind byte.
    #[error("unexpected {what} byte {byte:#04x}")]
    UnexpectedByte {
        /// What was being read.
        what: &'static str,
        /// The byte found.
        byte: u8,
    },
    /// A negative count or length.
    #[error("negative {0}")]
    Negative(&'static str),
    /// A name that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// Bytes left over after the message.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
}

/// Decodes one pgoutput message.
pub fn decode(message: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader {
        buf: message,
        pos: 0,
    };
    let tag = r.u8("message type").map_err(|_| r.error(Problem::Empty))?;
    let decoded = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: Lsn(r.u64("final LSN")?),
            commit_ts: PgTimestamp(r.i64("commit timestamp")?),
            xid: Xid(r.u32("xid")?),
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: Lsn(r.u64("commit LSN")?),
            end_lsn: Lsn(r.u64("end LSN")?),
            commit_ts: PgTimestamp(r.i64("commit timestamp")?),
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: Lsn(r.u64("origin LSN")?),
            name: r.string("origin name")?,
        }),
        b'R' => Message::Relation(relation(&mut r)?),
        b'Y' => Message::Type(TypeInfo {
            oid: Oid(r.u32("type OID")?),
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation = Oid(r.u32("relation id")?);
            r.expect(b'N', "insert tuple marker")?;
            Message::Insert(Insert {
                relation,
                new: tuple(&mut r)?,
            })
        }
        b'U' => {
            let relation = Oid(r.u32("relation id")?);
            let old = match r.u8("update tuple marker")? {
                b'N' => None,
                marker @ (b'K' | b'O') => {
                    let old = old_tuple(&mut r, marker)?;
                    r.expect(b'N', "update new tuple marker")?;
                    Some(old)
                }
                byte => {
                    return Err(r.error_before(Problem::UnexpectedByte {
                        what: "update tuple marker",
                        byte,
                    }));
                }
            };
            Message::Update(Update {
                relation,
                old,
                new: tuple(&mut r)?,
            })
        }
        b'D' => {
            let relation = Oid(r.u32("relation id")?);
            let marker = r.u8("delete tuple marker")?;
            if marker != b'K' && marker != b'O' {
                return Err(r.error_before(Problem::UnexpectedByte {
                    what: "delete tuple marker",
                    byte: marker,
                }));
            }
            Message::Delete(Delete {
                relation,
                old: old_tuple(&mut r, marker)?,
            })
        }
        b'T' => {
            let count = r.u32("relation count")?;
            let options = r.u8("truncate options")?;
            let mut relations = Vec::with_capacity(r.capacity_for(count, 4));
            for _ in 0..count {
                relations.push(Oid(r.u32("truncated relation id")?));
            }
            Message::Truncate(Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            })
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = Lsn(r.u64("message LSN")?);
            let prefix = r.string("message prefix")?;
            let length = r.len32("message length")?;
            Message::LogicalMessage(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.take(length, "message content")?,
            })
        }
        b'S' | b'E' | b'c' | b'A' | b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(r.error_before(Problem::UnsupportedMessage(char::from(tag))));
        }
        other => return Err(r.error_before(Problem::UnknownMessage(other))),
    };
    let rest = r.buf.len() - r.pos;
    if rest != 0 {
        return Err(r.error(Problem::TrailingBytes(rest)));
    }
    Ok(decoded)
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = Oid(r.u32("relation id")?);
    let namespace = r.string("relation namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = match r.u8("replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        byte => {
            return Err(r.error_before(Problem::UnexpectedByte {
                what: "replica identity",
                byte,
            }));
        }
    };
    let count = r.count16("column count")?;
    let mut columns = Vec::with_capacity(r.capacity_for(u32::from(count), 10));
    for _ in 0..count {
        let flags = r.u8("column flags")?;
        columns.push(RelationColumn {
            is_key: flags & 1 != 0,
            name: r.string("column name")?,
            type_oid: Oid(r.u32("column type OID")?),
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn old_tuple(r: &mut Reader, marker: u8) -> Result<OldTuple, DecodeError> {
    Ok(OldTuple {
        kind: if marker == b'K' {
            OldKind::Key
        } else {
            OldKind::Full
        },
        tuple: tuple(r)?,
    })
}

fn tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let count = r.count16("tuple column count")?;
    let mut values = Vec::with_capacity(r.capacity_for(u32::from(count), 1));
    for _ in 0..count {
        let value = match r.u8("column kind")? {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::UnchangedToast,
            b't' => {
                let len = r.len32("text value length")?;
                ColumnValue::Text(r.take(len, "text value")?)
            }
            b'b' => {
                let len = r.len32("binary value length")?;
                ColumnValue::Binary(r.take(len, "binary value")?)
            }
            byte => {
                return Err(r.error_before(Problem::UnexpectedByte {
                    what: "column kind",
                    byte,
                }));
            }
        };
        values.push(value);
    }
    Ok(Tuple(values))
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn error(&self, problem: Problem) -> DecodeError {
        DecodeError {
            offset: self.pos,
            problem,
        }
    }

    /// An error about the byte just read.
    fn error_before(&self, problem: Problem) -> DecodeError {
        DecodeError {
            offset: self.pos.saturating_sub(1),
            problem,
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self.pos.checked_add(N).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.error(Problem::Truncated(what)));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn count16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let value = i16::from_be_bytes(self.array(what)?);
        u16::try_from(value).map_err(|_| self.error(Problem::Negative(what)))
    }

    fn len32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| self.error(Problem::Negative(what)))
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), DecodeError> {
        match self.u8(what)? {
            b if b == byte => Ok(()),
            b => Err(self.error_before(Problem::UnexpectedByte { what, byte: b })),
        }
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.error(Problem::Truncated(what)));
        };
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error(Problem::Truncated(what)));
        };
        let text = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.error(Problem::NotUtf8(what)))?
            .to_string();
        self.pos += nul + 1;
        Ok(text)
    }

    /// A safe `Vec` capacity for `count` items of at least `min_size` bytes each: never
    /// more than the remaining input could hold, so a hostile count cannot make us
    /// allocate gigabytes.
    fn capacity_for(&self, count: u32, min_size: usize) -> usize {
        let remaining = (self.buf.len() - self.pos) / min_size.max(1);
        usize::try_from(count).unwrap_or(usize::MAX).min(remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    #[test]
    fn decodes_begin_and_commit() {
        let begin = bytes(&[
            b"B",
            &0x0153_AB20u64.to_be_bytes(),
            &1_000_000i64.to_be_bytes(),
            &742u32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(begin).unwrap(),
            Message::Begin(Begin {
                final_lsn: Lsn(0x0153_AB20),
                commit_ts: PgTimestamp(1_000_000),
                xid: Xid(742),
            })
        );
        let commit = bytes(&[
            b"C",
            &[0],
            &10u64.to_be_bytes(),
            &20u64.to_be_bytes(),
            &5i64.to_be_bytes(),
        ]);
        let Message::Commit(c) = decode(commit).unwrap() else {
            panic!("not a commit")
        };
        assert_eq!((c.commit_lsn, c.end_lsn), (Lsn(10), Lsn(20)));
        assert_eq!(
            PgTimestamp(0).unix_micros(),
            946_684_800_000_000,
            "2000-01-01"
        );
    }

    #[test]
    fn decodes_a_relation() {
        let msg = bytes(&[
            b"R",
            &16384u32.to_be_bytes(),
            b"public\0",
            b"t\0",
            b"f",
            &2i16.to_be_bytes(),
            &[1],
            b"id\0",
            &23u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &[0],
            b"amount\0",
            &1700u32.to_be_bytes(),
            &786_438i32.to_be_bytes(),
        ]);
        let Message::Relation(rel) = decode(msg).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.id, Oid(16384));
        assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "t"));
        assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
        assert_eq!(rel.columns[1].type_oid, Oid(1700));
        assert_eq!(rel.columns[1].type_modifier, 786_438);
    }

    #[test]
    fn decodes_every_column_kind_in_an_update() {
        let msg = bytes(&[
            b"U",
            &7u32.to_be_bytes(),
            b"O",
            &1i16.to_be_bytes(),
            b"t",
            &1i32.to_be_bytes(),
            b"1",
            b"N",
            &4i16.to_be_bytes(),
            b"n",
            b"u",
            b"t",
            &0i32.to_be_bytes(),
            b"b",
            &2i32.to_be_bytes(),
            &[0xDE, 0xAD],
        ]);
        let Message::Update(update) = decode(msg).unwrap() else {
            panic!("not an update")
        };
        let old = update.old.unwrap();
        assert_eq!(old.kind, OldKind::Full);
        assert_eq!(old.tuple.0, [ColumnValue::Text(Bytes::from_static(b"1"))]);
        assert_eq!(
            update.new.0,
            [
                ColumnValue::Null,
                ColumnValue::UnchangedToast,
                ColumnValue::Text(Bytes::new()),
                ColumnValue::Binary(Bytes::from_static(&[0xDE, 0xAD])),
            ]
        );
    }

    #[test]
    fn decodes_truncate_options() {
        let msg = bytes(&[
            b"T",
            &2u32.to_be_bytes(),
            &[3],
            &1u32.to_be_bytes(),
            &2u32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(msg).unwrap(),
            Message::Truncate(Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![Oid(1), Oid(2)],
            })
        );
    }

    #[test]
    fn rejects_malformed_input_without_panicking() {
        let cases: Vec<(&[u8], Problem)> = vec![
            (b"", Problem::Empty),
            (b"Z", Problem::UnknownMessage(b'Z')),
            (b"S", Problem::UnsupportedMessage('S')),
            (b"B\0\0", Problem::Truncated("final LSN")),
            (
                b"I\0\0\0\x07X",
                Problem::UnexpectedByte {
                    what: "insert tuple marker",
                    byte: b'X',
                },
            ),
            (
                b"I\0\0\0\x07N\xff\xff",
                Problem::Negative("tuple column count"),
            ),
            (
                b"I\0\0\0\x07N\0\x01t\x7f\xff\xff\xff",
                Problem::Truncated("text value"),
            ),
            (
                b"I\0\0\0\x07N\0\x01t\xff\xff\xff\xff",
                Problem::Negative("text value length"),
            ),
            (
                b"I\0\0\0\x07N\0\x01q",
                Problem::UnexpectedByte {
                    what: "column kind",
                    byte: b'q',
                },
            ),
            (b"I\0\0\0\x07N\0\0!", Problem::TrailingBytes(1)),
            (
                b"R\0\0\0\x01public",
                Problem::Truncated("relation namespace"),
            ),
            (b"Y\0\0\0\x01\xff\0x\0", Problem::NotUtf8("type namespace")),
            (
                b"T\xff\xff\xff\xff\0",
                Problem::Truncated("truncated relation id"),
            ),
        ];
        for (input, expected) in cases {
            let error = decode(Bytes::copy_from_slice(input)).unwrap_err();
            assert_eq!(error.problem, expected, "input {input:?}");
        }
    }

    #[test]
    fn a_hostile_count_does_not_allocate_for_it() {
        // 2^32-1 relations announced, none present: must fail fast, not allocate 16 GiB.
        let error = decode(Bytes::from_static(b"T\xff\xff\xff\xff\0")).unwrap_err();
        assert_eq!(error.problem, Problem::Truncated("truncated relation id"));
    }
}
