//! Per-table Avro record schemas (`after`, `before`, snapshot `row`) and row conversion.

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::{Map, Value as Json, json};

use crate::Error;
use crate::avro::{
    Carrier, from_slot, into_slot, plain_carrier, to_slot, write_decimal_text, write_slot,
};
use crate::fingerprint::{self, Fingerprint};
use crate::names::encode_name;
use crate::schema::{NamedTypes, value_schema};
use crate::text::{parse_text, render_text};
use crate::types::{Backfill, ColumnDesc, RelationDesc, ReplicaIdentity};
use crate::value::PgValue;

/// Decoded columns of one record: (original column name, value) in field order.
pub type DecodedRow = Vec<(String, PgValue)>;

/// Which record of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The new row of an insert/update: all columns; variable-length columns may carry the
    /// "unchanged TOAST" marker.
    After,
    /// The old row of an update/delete: the replica identity columns (all columns under
    /// REPLICA IDENTITY FULL).
    Before,
    /// A snapshot row: all columns, no unchanged marker.
    Row,
}

impl RecordKind {
    /// The record's simple name (`after`, `before`, `row`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::After => "after",
            RecordKind::Before => "before",
            RecordKind::Row => "row",
        }
    }
}

/// A column value as pgoutput delivers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnValue<'a> {
    /// `n`: NULL.
    Null,
    /// `u`: unchanged TOASTed value.
    Unchanged,
    /// `t`: the value's text form.
    Text(&'a str),
    /// The value in its type's binary (send/recv) format, as `COPY … (FORMAT binary)`
    /// carries it; only for types [`crate::pg_binary::reads`] accepts (others are an
    /// error).
    Binary(&'a [u8]),
}

#[derive(Debug, Clone)]
struct Slot {
    column: usize,
    field: String,
    nullable: bool,
    unchanged: bool,
}

/// One record schema of a table, ready to encode and decode rows.
#[derive(Debug, Clone)]
pub struct TableSchema {
    kind: RecordKind,
    relation: RelationDesc,
    slots: Vec<Slot>,
    json: Json,
    schema: Schema,
    fingerprint: Fingerprint,
}

/// The Avro records of one table.
#[derive(Debug, Clone)]
pub struct TableSchemas {
    /// All columns of the new row.
    pub after: TableSchema,
    /// The identity columns of the old row; `None` when the table has no replica identity
    /// (REPLICA IDENTITY NOTHING, or DEFAULT without a primary key).
    pub before: Option<TableSchema>,
    /// Snapshot rows.
    pub row: TableSchema,
}

impl TableSchemas {
    /// Builds the three record schemas for a relation.
    pub fn new(relation: &RelationDesc) -> Result<TableSchemas, Error> {
        Ok(TableSchemas {
            after: TableSchema::new(relation, RecordKind::After)?,
            before: match TableSchema::new(relation, RecordKind::Before) {
                Ok(s) if !s.slots.is_empty() => Some(s),
                Ok(_) => None,
                Err(e) => return Err(e),
            },
            row: TableSchema::new(relation, RecordKind::Row)?,
        })
    }
}

/// The record JSON for `kind` of `relation`, defining named helper types in `named` (use one
/// [`NamedTypes`] per schema document when embedding several records in an envelope).
pub fn record_json(relation: &RelationDesc, kind: RecordKind, named: &mut NamedTypes) -> Json {
    let slots = slots(relation, kind);
    let fields: Vec<Json> = slots
        .iter()
        .map(|s| {
            let c = &relation.columns[s.column];
            field_json(
                c,
                value_schema(&c.pg_type, c.typmod, s.nullable, s.unchanged, named),
            )
        })
        .collect();
    json!({
        "type": "record",
        "name": kind.as_str(),
        "namespace": format!("{}.{}", encode_name(&relation.schema), encode_name(&relation.table)),
        "fields": fields,
        "pgSchema": relation.schema,
        "pgTable": relation.table,
        "pgReplicaIdentity": char::from(relation.replica_identity.as_byte()).to_string(),
    })
}

fn field_json(c: &ColumnDesc, ty: Json) -> Json {
    let mut m = Map::new();
    m.insert("name".into(), Json::String(encode_name(&c.name)));
    m.insert("type".into(), ty);
    m.insert("pgName".into(), Json::String(c.name.clone()));
    m.insert("pgType".into(), Json::String(c.type_name.clone()));
    m.insert("pgOid".into(), json!(c.pg_type.oid()));
    m.insert("pgKey".into(), Json::Bool(c.is_key));
    m.insert("pgNotNull".into(), Json::Bool(c.not_null));
    match &c.backfill {
        Backfill::Null => {}
        Backfill::Value(text) => {
            m.insert("pgMissing".into(), Json::String(text.clone()));
        }
        Backfill::PerRow => {
            m.insert("pgMissingPerRow".into(), Json::Bool(true));
        }
    }
    Json::Object(m)
}

fn slots(relation: &RelationDesc, kind: RecordKind) -> Vec<Slot> {
    relation
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| match kind {
            RecordKind::After | RecordKind::Row => true,
            RecordKind::Before => match relation.replica_identity {
                ReplicaIdentity::Full => true,
                ReplicaIdentity::Default | ReplicaIdentity::Index => c.is_key,
                ReplicaIdentity::Nothing => false,
            },
        })
        .map(|(i, c)| Slot {
            column: i,
            field: encode_name(&c.name),
            nullable: !c.not_null,
            unchanged: kind == RecordKind::After && c.pg_type.is_varlena(),
        })
        .collect()
}

impl TableSchema {
    /// Builds the record schema of `kind` for `relation`.
    pub fn new(relation: &RelationDesc, kind: RecordKind) -> Result<TableSchema, Error> {
        let json = record_json(relation, kind, &mut NamedTypes::new());
        let schema = Schema::parse(&json)?;
        let fingerprint = Fingerprint::of_json(&json)?;
        Ok(TableSchema {
            kind,
            relation: relation.clone(),
            slots: slots(relation, kind),
            json,
            schema,
            fingerprint,
        })
    }

    /// Which record this is.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// The schema JSON (with the custom `pg*` properties).
    pub fn json(&self) -> &Json {
        &self.json
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The spec CRC-64-AVRO fingerprint of this record as a standalone schema.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The columns in this record, in field order.
    pub fn columns(&self) -> impl Iterator<Item = &ColumnDesc> {
        self.slots.iter().map(|s| &self.relation.columns[s.column])
    }

    fn col_err(&self, slot: &Slot, e: Error) -> Error {
        let c = &self.relation.columns[slot.column];
        Error::Column {
            column: c.name.clone(),
            type_name: c.type_name.clone(),
            oid: c.pg_type.oid(),
            source: Box::new(e),
        }
    }

    fn check_arity(&self, got: usize) -> Result<(), Error> {
        let expected = self.relation.columns.len();
        if got != expected {
            return Err(Error::Arity { expected, got });
        }
        Ok(())
    }

    /// Converts pgoutput text values (one per relation column, in column order; values of
    /// columns not in this record are ignored) to the Avro record value.
    pub fn encode_text(&self, values: &[ColumnValue<'_>]) -> Result<Value, Error> {
        self.check_arity(values.len())?;
        let mut fields = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let c = &self.relation.columns[s.column];
            let v = match values[s.column] {
                ColumnValue::Null => PgValue::Null,
                ColumnValue::Unchanged => PgValue::Unchanged,
                ColumnValue::Text(t) => {
                    parse_text(&c.pg_type, c.typmod, t).map_err(|e| self.col_err(s, e))?
                }
                ColumnValue::Binary(b) => crate::pg_binary::parse_binary(&c.pg_type, c.typmod, b)
                    .map_err(|e| self.col_err(s, e))?,
            };
            let av = into_slot(&c.pg_type, c.typmod, v, s.nullable, s.unchanged)
                .map_err(|e| self.col_err(s, e))?;
            fields.push((s.field.clone(), av));
        }
        Ok(Value::Record(fields))
    }

    /// Converts typed values (one per relation column) to the Avro record value.
    pub fn encode_values(&self, values: &[PgValue]) -> Result<Value, Error> {
        self.check_arity(values.len())?;
        let mut fields = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let c = &self.relation.columns[s.column];
            let av = to_slot(
                &c.pg_type,
                c.typmod,
                &values[s.column],
                s.nullable,
                s.unchanged,
            )
            .map_err(|e| self.col_err(s, e))?;
            fields.push((s.field.clone(), av));
        }
        Ok(Value::Record(fields))
    }

    /// Decodes an Avro record value of this schema into (original column name, value) pairs,
    /// in field order.
    pub fn decode_value(&self, value: &Value) -> Result<Vec<(String, PgValue)>, Error> {
        let Value::Record(fields) = value else {
            return Err(Error::AvroShape {
                type_name: format!("{}.{}", self.relation.schema, self.relation.table),
                detail: "not a record".into(),
            });
        };
        if fields.len() != self.slots.len() {
            return Err(Error::Arity {
                expected: self.slots.len(),
                got: fields.len(),
            });
        }
        let mut out = Vec::with_capacity(fields.len());
        for (s, (_, v)) in self.slots.iter().zip(fields) {
            let c = &self.relation.columns[s.column];
            let pv = from_slot(&c.pg_type, c.typmod, v, s.nullable, s.unchanged)
                .map_err(|e| self.col_err(s, e))?;
            out.push((c.name.clone(), pv));
        }
        Ok(out)
    }

    /// Renders decoded values (in field order, as [`TableSchema::decode_value`] returns them)
    /// as PostgreSQL input text; `None` for NULL. Fails on [`PgValue::Unchanged`], which has no
    /// text form (the writer must keep the old value).
    pub fn render_text(&self, values: &[(String, PgValue)]) -> Result<Vec<Option<String>>, Error> {
        if values.len() != self.slots.len() {
            return Err(Error::Arity {
                expected: self.slots.len(),
                got: values.len(),
            });
        }
        self.slots
            .iter()
            .zip(values)
            .map(|(s, (_, v))| {
                let c = &self.relation.columns[s.column];
                render_text(&c.pg_type, v).map_err(|e| self.col_err(s, e))
            })
            .collect()
    }

    /// Encodes a record value built by this schema ([`TableSchema::encode_text`],
    /// [`TableSchema::encode_values`]) as a single-object message with this schema's
    /// fingerprint. Uses the crate's direct binary writer (byte-identical to apache-avro's,
    /// which the tests check); use [`fingerprint::encode_single_object`] for values built
    /// elsewhere, which validates them against the schema.
    pub fn to_single_object(&self, value: &Value) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(128);
        self.write_single_object(value, &mut out)?;
        Ok(out)
    }

    /// The producer's fast path: pgoutput text values (one per relation column) straight to a
    /// single-object message appended to `out`, without building Avro values. Produces exactly
    /// the bytes of `to_single_object(&encode_text(values)?)` (tested).
    pub fn write_text_single_object(
        &self,
        values: &[ColumnValue<'_>],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        self.check_arity(values.len())?;
        out.extend_from_slice(&fingerprint::SINGLE_OBJECT_MAGIC);
        out.extend_from_slice(&self.fingerprint.to_bytes());
        self.write_text_body(values, out)
    }

    /// Appends only the Avro binary body of the record (no header), for producers that embed
    /// the record in an envelope built with [`record_json`]. On error, `out` may hold a partial
    /// body.
    pub fn write_text_body(
        &self,
        values: &[ColumnValue<'_>],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        self.check_arity(values.len())?;
        for s in &self.slots {
            let c = &self.relation.columns[s.column];
            let res = match values[s.column] {
                ColumnValue::Text(t)
                    if matches!(
                        plain_carrier(&c.pg_type),
                        Some(Carrier::Text | Carrier::Json)
                    ) =>
                {
                    if s.nullable || s.unchanged {
                        crate::binary::write_long(i64::from(s.nullable), out);
                    }
                    crate::binary::write_bytes(t.as_bytes(), out);
                    Ok(())
                }
                ColumnValue::Text(t)
                    if write_decimal_text(
                        &c.pg_type,
                        c.typmod,
                        t,
                        s.nullable,
                        s.unchanged,
                        out,
                    ) =>
                {
                    Ok(())
                }
                ColumnValue::Text(t) => parse_text(&c.pg_type, c.typmod, t).and_then(|v| {
                    write_slot(&c.pg_type, c.typmod, &v, s.nullable, s.unchanged, out)
                }),
                ColumnValue::Binary(b) => crate::pg_binary::write_binary(
                    &c.pg_type,
                    c.typmod,
                    b,
                    s.nullable,
                    s.unchanged,
                    out,
                ),
                ColumnValue::Null => write_slot(
                    &c.pg_type,
                    c.typmod,
                    &PgValue::Null,
                    s.nullable,
                    s.unchanged,
                    out,
                ),
                ColumnValue::Unchanged => write_slot(
                    &c.pg_type,
                    c.typmod,
                    &PgValue::Unchanged,
                    s.nullable,
                    s.unchanged,
                    out,
                ),
            };
            res.map_err(|e| self.col_err(s, e))?;
        }
        Ok(())
    }

    /// Like [`TableSchema::to_single_object`], appending to `out`.
    pub fn write_single_object(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
        if !matches!(value, Value::Record(f) if f.len() == self.slots.len()) {
            return Err(Error::Schema(format!(
                "expected a record of {} fields",
                self.slots.len()
            )));
        }
        out.extend_from_slice(&fingerprint::SINGLE_OBJECT_MAGIC);
        out.extend_from_slice(&self.fingerprint.to_bytes());
        crate::binary::write_value(value, out)
    }

    /// The client's fast path: decodes a single-object message written with this schema
    /// straight to (original column name, value) pairs. Same result as
    /// `decode_value(&from_single_object(message)?)` (tested), without building Avro values;
    /// fails on a different fingerprint, truncated input, invalid data or trailing bytes.
    pub fn decode_single_object(&self, message: &[u8]) -> Result<Vec<(String, PgValue)>, Error> {
        let (fp, body) = fingerprint::split_single_object(message)?;
        if fp != self.fingerprint {
            return Err(Error::Framing(format!(
                "fingerprint {fp} is not this schema's {}",
                self.fingerprint
            )));
        }
        self.decode_body(body)
    }

    /// Decodes just the Avro body of this record (no header), e.g. from inside an envelope.
    pub fn decode_body(&self, body: &[u8]) -> Result<Vec<(String, PgValue)>, Error> {
        let (out, rest) = self.decode_body_prefix(body)?;
        if !rest.is_empty() {
            return Err(Error::Framing(format!(
                "{} trailing bytes after the Avro body",
                rest.len()
            )));
        }
        Ok(out)
    }

    /// Decodes the record at the start of `body` and returns it with the bytes after it, for
    /// readers of an envelope in which more fields follow the record.
    pub fn decode_body_prefix<'a>(&self, body: &'a [u8]) -> Result<(DecodedRow, &'a [u8]), Error> {
        let mut r = crate::reader::Reader::new(body);
        let mut out = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let c = &self.relation.columns[s.column];
            let v = r
                .slot(&c.pg_type, c.typmod, s.nullable, s.unchanged)
                .map_err(|e| self.col_err(s, e))?;
            out.push((c.name.clone(), v));
        }
        Ok((out, r.rest()))
    }

    /// Rebuilds the schema of a record that [`record_json`] wrote (for example the `before` or
    /// `after` record inside a change-event envelope), from the record's JSON alone: what a
    /// client has when it looks a fingerprint up. `document` is the whole schema document the
    /// record appears in, used to resolve named helper types defined elsewhere in it (pass the
    /// record itself when it stands alone); `record` may also be the name of a record defined
    /// in `document`.
    ///
    /// Built-in types come back exactly (from `pgOid`); enums, domains, composites and
    /// user-defined ranges are rebuilt from their Avro shape. The rebuilt record's Parsing
    /// Canonical Form is checked against the writer's, so decoding with the result reads
    /// exactly the writer's bytes; a record that cannot be rebuilt is an [`Error::Schema`].
    /// The `docs/type-mapping.md` section on rebuilding lists the few value types the schema
    /// cannot tell apart.
    pub fn from_record_json(record: &Json, document: &Json) -> Result<TableSchema, Error> {
        crate::rebuild::from_record_json(record, document)
    }

    /// The table's schema (namespace) name.
    pub fn table_schema(&self) -> &str {
        &self.relation.schema
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.relation.table
    }

    /// Decodes a single-object message written with this schema. Fails when the fingerprint
    /// differs, the input is truncated or has trailing bytes.
    pub fn from_single_object(&self, message: &[u8]) -> Result<Value, Error> {
        let (fp, body) = fingerprint::split_single_object(message)?;
        if fp != self.fingerprint {
            return Err(Error::Framing(format!(
                "fingerprint {fp} is not this schema's {}",
                self.fingerprint
            )));
        }
        fingerprint::decode_body(&self.schema, body)
    }
}
