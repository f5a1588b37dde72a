//! Change events: the Avro envelope of docs/protocol.md §3.2 and its encoding.
//!
//! One [`TableEncoder`] per table version holds the envelope schema (op, source,
//! before, after), its fingerprint and the per-record encoders from
//! `walbrook-pgtype-avro`. A new Relation message (after DDL) makes a new encoder and,
//! when the schema changed, a new fingerprint.

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::{Value as Json, json};
use walbrook_pgtype_avro::fingerprint::encode_single_object;
use walbrook_pgtype_avro::schema::NamedTypes;
use walbrook_pgtype_avro::{
    ColumnValue, Fingerprint, RecordKind, RelationDesc, TableSchema, record_json,
};

use crate::lsn::Lsn;
use crate::pgoutput;

pub use walbrook_protocol::{OP_SYMBOLS, Op};

/// The `source` record of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Database name.
    pub database: String,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Transaction id.
    pub xid: i64,
    /// Commit LSN of the transaction: the event's position.
    pub commit_lsn: Lsn,
    /// The change's own LSN.
    pub lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_ts_micros: i64,
    /// Index of the event in its transaction.
    pub ordinal: u64,
    /// Whether this is the transaction's last event.
    pub last: bool,
    /// When the producer encoded the event, microseconds since the Unix epoch.
    pub sent_at_micros: i64,
}

/// Why a change could not be encoded. The producer stops on it (the change's LSN is
/// never confirmed), naming the table, column and type.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A value does not convert (the message names column, type and OID).
    #[error("{table}: {detail}")]
    Value {
        /// `schema.table`.
        table: String,
        /// Column, type, OID and reason (never the value itself).
        detail: String,
    },
    /// A value arrived in binary format, which Walbrook never requests.
    #[error("{table}.{column}: binary-format value received; Walbrook requests text format")]
    Binary {
        /// `schema.table`.
        table: String,
        /// Column name.
        column: String,
    },
    /// A text value is not UTF-8 (the server encoding must be UTF-8).
    #[error("{table}.{column}: value is not valid UTF-8 (use a UTF8 database)")]
    NotUtf8 {
        /// `schema.table`.
        table: String,
        /// Column name.
        column: String,
    },
    /// The tuple has another number of columns than the relation.
    #[error("{table}: tuple has {got} columns, relation has {expected}")]
    Arity {
        /// `schema.table`.
        table: String,
        /// Columns in the relation.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
    /// Building the envelope schema failed.
    #[error("{table}: cannot build the Avro schema: {detail}")]
    Schema {
        /// `schema.table`.
        table: String,
        /// The reason.
        detail: String,
    },
}

/// Encodes the events of one table version.
#[derive(Debug, Clone)]
pub struct TableEncoder {
    desc: RelationDesc,
    before: TableSchema,
    after: TableSchema,
    schema: Schema,
    schema_json: String,
    fingerprint: Fingerprint,
    primary_key: Vec<usize>,
}

impl TableEncoder {
    /// Builds the envelope for a relation.
    pub fn new(desc: RelationDesc) -> Result<TableEncoder, EncodeError> {
        let table = format!("{}.{}", desc.schema, desc.table);
        let schema_error = |e: walbrook_pgtype_avro::Error| EncodeError::Schema {
            table: table.clone(),
            detail: e.to_string(),
        };
        let before = TableSchema::new(&desc, RecordKind::Before).map_err(schema_error)?;
        let after = TableSchema::new(&desc, RecordKind::After).map_err(schema_error)?;
        let json = envelope_json(&desc);
        let schema_json = json.to_string();
        let schema = Schema::parse(&json).map_err(|e| EncodeError::Schema {
            table: table.clone(),
            detail: e.to_string(),
        })?;
        let fingerprint = Fingerprint::of_json(&json).map_err(schema_error)?;
        // Under REPLICA IDENTITY FULL the catalog's primary key (is_key) tells whether
        // an update changed the row's identity.
        let primary_key = desc
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
            .collect();
        Ok(TableEncoder {
            desc,
            before,
            after,
            schema,
            schema_json,
            fingerprint,
            primary_key,
        })
    }

    /// The relation.
    pub fn desc(&self) -> &RelationDesc {
        &self.desc
    }

    /// The envelope schema's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The envelope schema as JSON text.
    pub fn schema_json(&self) -> &str {
        &self.schema_json
    }

    /// The parsed envelope schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    fn table(&self) -> String {
        format!("{}.{}", self.desc.schema, self.desc.table)
    }

    /// Classifies an update: `UpdateKey` when the old identity differs from the new.
    pub fn update_op(&self, update: &pgoutput::Update) -> Op {
        match &update.old {
            None => Op::Update,
            Some(old) if old.kind == pgoutput::OldKind::Key => Op::UpdateKey,
            Some(old) => {
                let changed = self
                    .primary_key
                    .iter()
                    .any(|&i| old.tuple.0.get(i) != update.new.0.get(i));
                if changed { Op::UpdateKey } else { Op::Update }
            }
        }
    }

    /// Encodes one event as an Avro single-object message, writing the Avro binary
    /// directly (no intermediate Avro values: this is the producer's hot path).
    pub fn encode(
        &self,
        op: Op,
        source: &Source,
        before: Option<&pgoutput::Tuple>,
        after: Option<&pgoutput::Tuple>,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64 + source.table.len() * 2);
        self.encode_into(op, source, before, after, &mut out)?;
        Ok(out)
    }

    /// [`TableEncoder::encode`] appending to `out` (a buffer reused across events). On an
    /// error `out` holds a partial event.
    pub fn encode_into(
        &self,
        op: Op,
        source: &Source,
        before: Option<&pgoutput::Tuple>,
        after: Option<&pgoutput::Tuple>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.write_start(op, source, out);
        for (schema, tuple) in [(&self.before, before), (&self.after, after)] {
            match tuple {
                None => write_long(0, out),
                Some(tuple) => {
                    write_long(1, out);
                    let values = self.text_values(tuple)?;
                    self.write_record(schema, &values, out)?;
                }
            }
        }
        Ok(())
    }

    /// The start of every event of `op` whose `source` equals `source` up to its
    /// `ordinal` (the rows of one snapshot, docs/protocol.md §8.2), for
    /// [`TableEncoder::encode_after_text_into`].
    pub fn source_prefix(&self, op: Op, source: &Source) -> SourcePrefix {
        let mut out = Vec::with_capacity(64 + source.table.len() * 2);
        self.write_prefix(op, source, &mut out);
        SourcePrefix(out)
    }

    /// [`TableEncoder::encode_into`] of an event without `before` whose `after` values are
    /// given as text or binary forms (a snapshot row read straight from its COPY buffer,
    /// docs/protocol.md §8.2), its start copied from `prefix`, made by [`TableEncoder::source_prefix`] of
    /// the same op and a source that differs from `source` at most in `ordinal`, `last`
    /// and `sent_at_micros`: the same bytes as `encode_into` given the values as a tuple.
    pub fn encode_after_text_into(
        &self,
        prefix: &SourcePrefix,
        source: &Source,
        after: &[ColumnValue<'_>],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if after.len() != self.desc.columns.len() {
            return Err(EncodeError::Arity {
                table: self.table(),
                expected: self.desc.columns.len(),
                got: after.len(),
            });
        }
        out.extend_from_slice(&prefix.0);
        write_source_rest(source, out);
        write_long(0, out);
        write_long(1, out);
        self.write_record(&self.after, after, out)
    }

    /// The single-object header, the op and the `source` record.
    fn write_start(&self, op: Op, source: &Source, out: &mut Vec<u8>) {
        self.write_prefix(op, source, out);
        write_source_rest(source, out);
    }

    /// [`TableEncoder::write_start`] up to the source's `ordinal`.
    fn write_prefix(&self, op: Op, source: &Source, out: &mut Vec<u8>) {
        out.extend_from_slice(&walbrook_pgtype_avro::fingerprint::SINGLE_OBJECT_MAGIC);
        out.extend_from_slice(&self.fingerprint.to_bytes());
        write_long(i64::try_from(op.index()).expect("six symbols"), out);
        write_string(&source.database, out);
        write_string(&source.schema, out);
        write_string(&source.table, out);
        write_long(source.xid, out);
        write_long(lsn_long(source.commit_lsn), out);
        write_long(lsn_long(source.lsn), out);
        write_long(source.commit_ts_micros, out);
    }

    /// One `before` or `after` record's body.
    fn write_record(
        &self,
        schema: &TableSchema,
        values: &[ColumnValue<'_>],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        schema
            .write_text_body(values, out)
            .map_err(|e| EncodeError::Value {
                table: self.table(),
                detail: describe_error(&e),
            })
    }

    /// The same event built as Avro values and encoded by apache-avro: the reference
    /// the direct writer is tested against.
    pub fn encode_with_values(
        &self,
        op: Op,
        source: &Source,
        before: Option<&pgoutput::Tuple>,
        after: Option<&pgoutput::Tuple>,
    ) -> Result<Vec<u8>, EncodeError> {
        let before = match before {
            Some(tuple) => Value::Union(1, Box::new(self.record(&self.before, tuple)?)),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let after = match after {
            Some(tuple) => Value::Union(1, Box::new(self.record(&self.after, tuple)?)),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let envelope = Value::Record(vec![
            (
                "op".into(),
                Value::Enum(
                    u32::try_from(op.index()).expect("six symbols"),
                    OP_SYMBOLS[op.index()].into(),
                ),
            ),
            ("source".into(), source_value(source)),
            ("before".into(), before),
            ("after".into(), after),
        ]);
        encode_single_object(&self.schema, self.fingerprint, &envelope).map_err(|e| {
            EncodeError::Value {
                table: self.table(),
                detail: describe_error(&e),
            }
        })
    }

    fn text_values<'t>(
        &self,
        tuple: &'t pgoutput::Tuple,
    ) -> Result<Vec<ColumnValue<'t>>, EncodeError> {
        if tuple.0.len() != self.desc.columns.len() {
            return Err(EncodeError::Arity {
                table: self.table(),
                expected: self.desc.columns.len(),
                got: tuple.0.len(),
            });
        }
        let mut values = Vec::with_capacity(tuple.0.len());
        for (column, value) in self.desc.columns.iter().zip(&tuple.0) {
            values.push(match value {
                pgoutput::ColumnValue::Null => ColumnValue::Null,
                pgoutput::ColumnValue::UnchangedToast => ColumnValue::Unchanged,
                pgoutput::ColumnValue::Text(bytes) => {
                    ColumnValue::Text(std::str::from_utf8(bytes).map_err(|_| {
                        EncodeError::NotUtf8 {
                            table: self.table(),
                            column: column.name.clone(),
                        }
                    })?)
                }
                pgoutput::ColumnValue::Binary(_) => {
                    return Err(EncodeError::Binary {
                        table: self.table(),
                        column: column.name.clone(),
                    });
                }
            });
        }
        Ok(values)
    }

    fn record(&self, schema: &TableSchema, tuple: &pgoutput::Tuple) -> Result<Value, EncodeError> {
        let values = self.text_values(tuple)?;
        schema.encode_text(&values).map_err(|e| EncodeError::Value {
            table: self.table(),
            detail: describe_error(&e),
        })
    }
}

/// The encoded start of events that share op and source up to `ordinal` (see
/// [`TableEncoder::source_prefix`]).
#[derive(Debug, Clone)]
pub struct SourcePrefix(Vec<u8>);

/// The source record from `ordinal` on.
fn write_source_rest(source: &Source, out: &mut Vec<u8>) {
    write_long(i64::try_from(source.ordinal).unwrap_or(i64::MAX), out);
    out.push(u8::from(source.last));
    write_long(source.sent_at_micros, out);
}

/// Describes a pgtype-avro error by column, type, OID and kind, without the value
/// (row values never go to logs).
fn describe_error(error: &walbrook_pgtype_avro::Error) -> String {
    use walbrook_pgtype_avro::Error;
    match error {
        Error::Column {
            column,
            type_name,
            oid,
            source,
        } => format!(
            "column {column:?} (type {type_name}, oid {oid}): {}",
            describe_error(source)
        ),
        Error::Parse {
            type_name, reason, ..
        } => {
            format!("value is not a valid {type_name}: {reason}")
        }
        other => other.to_string(),
    }
}

/// Avro `long`: zig-zag, then base-128 varint.
fn write_long(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Avro `string`: length, then UTF-8 bytes.
fn write_string(s: &str, out: &mut Vec<u8>) {
    write_long(i64::try_from(s.len()).unwrap_or(i64::MAX), out);
    out.extend_from_slice(s.as_bytes());
}

fn lsn_long(lsn: Lsn) -> i64 {
    i64::try_from(lsn.0).unwrap_or(i64::MAX)
}

fn source_value(source: &Source) -> Value {
    let lsn = |l: Lsn| Value::Long(i64::try_from(l.0).unwrap_or(i64::MAX));
    Value::Record(vec![
        ("database".into(), Value::String(source.database.clone())),
        ("schema".into(), Value::String(source.schema.clone())),
        ("table".into(), Value::String(source.table.clone())),
        ("xid".into(), Value::Long(source.xid)),
        ("commit_lsn".into(), lsn(source.commit_lsn)),
        ("lsn".into(), lsn(source.lsn)),
        (
            "commit_ts".into(),
            Value::TimestampMicros(source.commit_ts_micros),
        ),
        (
            "ordinal".into(),
            Value::Long(i64::try_from(source.ordinal).unwrap_or(i64::MAX)),
        ),
        ("last".into(), Value::Boolean(source.last)),
        (
            "sent_at".into(),
            Value::TimestampMicros(source.sent_at_micros),
        ),
    ])
}

/// The envelope schema JSON for a relation (docs/protocol.md §3.2).
pub fn envelope_json(desc: &RelationDesc) -> Json {
    let mut named = NamedTypes::new();
    let before = record_json(desc, RecordKind::Before, &mut named);
    let after = record_json(desc, RecordKind::After, &mut named);
    json!({
        "type": "record",
        "name": "Change",
        "namespace": format!(
            "walbrook.change.{}.{}",
            walbrook_pgtype_avro::encode_name(&desc.schema),
            walbrook_pgtype_avro::encode_name(&desc.table)
        ),
        "fields": [
            {"name": "op", "type": {"type": "enum", "name": "Op", "namespace": "walbrook",
                                     "symbols": OP_SYMBOLS}},
            {"name": "source", "type": walbrook_protocol::source_schema()},
            {"name": "before", "type": ["null", before]},
            {"name": "after", "type": ["null", after]}
        ],
        "pgReplicaIdentity": char::from(desc.replica_identity.as_byte()).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use walbrook_pgtype_avro::{ColumnDesc, PgType, ReplicaIdentity};

    use super::*;

    fn column(name: &str, oid: u32, typmod: i32, key: bool, not_null: bool) -> ColumnDesc {
        let pg_type = PgType::from_builtin_oid(oid).unwrap();
        ColumnDesc {
            name: name.into(),
            type_name: pg_type.name(),
            pg_type,
            typmod,
            not_null,
            is_key: key,
            backfill: Default::default(),
        }
    }

    fn text(s: &str) -> pgoutput::ColumnValue {
        pgoutput::ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn the_direct_writer_matches_apache_avro_byte_for_byte() {
        for identity in [ReplicaIdentity::Default, ReplicaIdentity::Full] {
            let desc = RelationDesc {
                schema: "public".into(),
                table: "orders-2024".into(),
                columns: vec![
                    column("id", 20, -1, true, true),
                    column("note", 25, -1, false, false),
                    column("amount", 1700, (12 << 16 | 2) + 4, false, false),
                    column("at", 1184, -1, false, true),
                    column("tags", 1009, -1, false, false),
                    column("doc", 3802, -1, false, false),
                ],
                replica_identity: identity,
            };
            let encoder = TableEncoder::new(desc).unwrap();
            let row = pgoutput::Tuple(vec![
                text("-42"),
                pgoutput::ColumnValue::UnchangedToast,
                text("1234.50"),
                text("2024-01-02 03:04:05.123456+00"),
                text("{a,NULL,\"b c\"}"),
                text("{\"k\": [1, 2.50]}"),
            ]);
            let null_row = pgoutput::Tuple(vec![
                text("7"),
                pgoutput::ColumnValue::Null,
                pgoutput::ColumnValue::Null,
                text("infinity"),
                pgoutput::ColumnValue::Null,
                pgoutput::ColumnValue::Null,
            ]);
            let source = Source {
                database: "shop".into(),
                schema: "public".into(),
                table: "orders-2024".into(),
                xid: 123_456,
                commit_lsn: Lsn(0x16B_3F20),
                lsn: Lsn(0x16B_3E00),
                commit_ts_micros: 1_700_000_000_123_456,
                ordinal: 3,
                last: true,
                sent_at_micros: -1,
            };
            let old = (identity == ReplicaIdentity::Full).then_some(&null_row);
            for (op, before, after) in [
                (Op::Insert, None, Some(&row)),
                (Op::UpdateKey, Some(&null_row), Some(&row)),
                (Op::Update, old, Some(&null_row)),
                (Op::Delete, Some(&null_row), None),
                (Op::Truncate, None, None),
            ] {
                let direct = encoder.encode(op, &source, before, after).unwrap();
                let reference = encoder
                    .encode_with_values(op, &source, before, after)
                    .unwrap();
                assert_eq!(direct, reference, "{identity:?} {op:?}");
            }
        }
    }

    #[test]
    fn text_values_encode_like_a_tuple() {
        let desc = RelationDesc {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![
                column("id", 20, -1, true, true),
                column("note", 25, -1, false, false),
                column("amount", 1700, (12 << 16 | 2) + 4, false, false),
                column("at", 1184, -1, false, true),
            ],
            replica_identity: ReplicaIdentity::Default,
        };
        let encoder = TableEncoder::new(desc).unwrap();
        let source = Source {
            database: "shop".into(),
            schema: "public".into(),
            table: "t".into(),
            xid: 0,
            commit_lsn: Lsn(0x16B_3F20),
            lsn: Lsn(0x16B_3F20),
            commit_ts_micros: 1_700_000_000_123_456,
            ordinal: 41,
            last: false,
            sent_at_micros: 1_700_000_000_223_456,
        };
        let tuple = pgoutput::Tuple(vec![
            text("-42"),
            pgoutput::ColumnValue::Null,
            text("1234.50"),
            text("2024-01-02 03:04:05.123456+00"),
        ]);
        let values = [
            ColumnValue::Text("-42"),
            ColumnValue::Null,
            ColumnValue::Text("1234.50"),
            ColumnValue::Text("2024-01-02 03:04:05.123456+00"),
        ];
        // The prefix of the snapshot's first row serves every later one.
        let first = Source {
            ordinal: 0,
            sent_at_micros: 0,
            ..source.clone()
        };
        let prefix = encoder.source_prefix(Op::Read, &first);
        let mut direct = Vec::new();
        encoder
            .encode_after_text_into(&prefix, &source, &values, &mut direct)
            .unwrap();
        let reference = encoder
            .encode_with_values(Op::Read, &source, None, Some(&tuple))
            .unwrap();
        assert_eq!(direct, reference);
        assert!(matches!(
            encoder.encode_after_text_into(&prefix, &source, &values[..3], &mut Vec::new()),
            Err(EncodeError::Arity {
                expected: 4,
                got: 3,
                ..
            })
        ));
        let bad = [
            ColumnValue::Text("x"),
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
        ];
        assert!(matches!(
            encoder.encode_after_text_into(&prefix, &source, &bad, &mut Vec::new()),
            Err(EncodeError::Value { .. })
        ));
    }

    #[test]
    fn zigzag_longs() {
        for (n, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
            (
                i64::MAX,
                vec![0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
            (
                i64::MIN,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut out = Vec::new();
            write_long(n, &mut out);
            assert_eq!(out, bytes, "{n}");
        }
    }
}
