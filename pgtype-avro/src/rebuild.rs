//! Rebuilding a table's record decoder from the record's schema JSON alone.
//!
//! A client only has the writer's schema document (from the schema registry), not the catalog
//! description the producer built it from. The record JSON carries enough to rebuild it: every
//! field has `pgName`, `pgType`, `pgOid`, `pgKey` and `pgNotNull` (and `pgMissing` /
//! `pgMissingPerRow` for a column added with a default), the record has `pgSchema`,
//! `pgTable` and `pgReplicaIdentity`, and the Avro types (with the names of this crate's helper
//! records, which embed a type key such as `Array_enum_mood`) tell the shape of each value.
//!
//! Built-in types are resolved exactly from `pgOid` (with the `numeric` precision and scale read
//! back from the `decimal` logical type). Other types (enums, domains, composites, user-defined
//! ranges and multiranges, extension types) are rebuilt from their Avro shape. Whatever the
//! inference, the rebuilt record is regenerated and its Parsing Canonical Form compared with the
//! writer's: a mismatch is an error, so a rebuilt decoder always reads exactly the writer's
//! bytes.
//!
//! Limits (the value is still decoded, as the type the shape implies): a domain over a type
//! carried as a plain Avro `string` (`text`, `jsonb`, unconstrained `numeric`…) decodes as
//! [`PgValue::Text`](crate::PgValue::Text), a domain over `int2` as `Int4` and one over
//! `oid`/`pg_lsn`/`xid8` as `Int8`: the schema does not say which base type it was.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value as Json};

use crate::Error;
use crate::fingerprint::parsing_canonical_form;
use crate::names::decode_name;
use crate::schema::UNCHANGED;
use crate::table::{RecordKind, TableSchema};
use crate::types::{
    BUILTIN_RANGES, Backfill, Builtin, ColumnDesc, CompositeField, PgType, RelationDesc,
    ReplicaIdentity,
};

/// Named type definitions of one schema document, by full name.
struct Definitions<'a> {
    by_name: HashMap<String, &'a Json>,
}

impl<'a> Definitions<'a> {
    fn collect(document: &'a Json) -> Definitions<'a> {
        let mut by_name = HashMap::new();
        collect_names(document, "", &mut by_name);
        Definitions { by_name }
    }

    /// The definition a type refers to (a string naming a defined type), or the type itself.
    fn resolve(&self, ty: &'a Json) -> &'a Json {
        match ty {
            Json::String(name) => self.by_name.get(name).copied().unwrap_or(ty),
            other => other,
        }
    }
}

fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    match namespace.unwrap_or(enclosing) {
        "" => name.to_owned(),
        ns => format!("{ns}.{name}"),
    }
}

fn namespace_of(full: &str) -> &str {
    full.rsplit_once('.').map_or("", |(ns, _)| ns)
}

fn collect_names<'a>(json: &'a Json, enclosing: &str, out: &mut HashMap<String, &'a Json>) {
    match json {
        Json::Array(items) => {
            for item in items {
                collect_names(item, enclosing, out);
            }
        }
        Json::Object(map) => {
            let mut ns = enclosing.to_owned();
            if let (Some(Json::String(kind)), Some(Json::String(name))) =
                (map.get("type"), map.get("name"))
                && matches!(kind.as_str(), "record" | "enum" | "fixed")
            {
                let full = full_name(name, map.get("namespace").and_then(Json::as_str), enclosing);
                ns = namespace_of(&full).to_owned();
                out.entry(full).or_insert(json);
            }
            if let Some(fields) = map.get("fields").and_then(Json::as_array) {
                for f in fields {
                    if let Some(t) = f.get("type") {
                        collect_names(t, &ns, out);
                    }
                }
            }
            for key in ["type", "items", "values"] {
                if let Some(t) = map.get(key)
                    && !t.is_string()
                {
                    collect_names(t, &ns, out);
                }
            }
        }
        _ => {}
    }
}

/// A copy of `json` in which the first use of every named type defined elsewhere in the
/// document is replaced by its definition, so that it parses on its own.
fn standalone(json: &Json, defs: &Definitions<'_>, seen: &mut HashSet<String>) -> Json {
    match json {
        Json::String(name) => match defs.by_name.get(name) {
            Some(def) if !seen.contains(name) => standalone(def, defs, seen),
            _ => json.clone(),
        },
        Json::Array(items) => {
            Json::Array(items.iter().map(|i| standalone(i, defs, seen)).collect())
        }
        Json::Object(map) => {
            if let (Some(Json::String(kind)), Some(Json::String(name))) =
                (map.get("type"), map.get("name"))
                && matches!(kind.as_str(), "record" | "enum" | "fixed")
                && name.contains('.')
            {
                seen.insert(name.clone());
            }
            let mut out = Map::new();
            for (k, v) in map {
                let v = match k.as_str() {
                    "type" | "items" | "values" => standalone(v, defs, seen),
                    "fields" => match v {
                        Json::Array(fields) => Json::Array(
                            fields
                                .iter()
                                .map(|f| match f {
                                    Json::Object(fm) => Json::Object(
                                        fm.iter()
                                            .map(|(fk, fv)| {
                                                let fv = if fk == "type" {
                                                    standalone(fv, defs, seen)
                                                } else {
                                                    fv.clone()
                                                };
                                                (fk.clone(), fv)
                                            })
                                            .collect(),
                                    ),
                                    other => other.clone(),
                                })
                                .collect(),
                        ),
                        other => other.clone(),
                    },
                    _ => v.clone(),
                };
                out.insert(k.clone(), v);
            }
            Json::Object(out)
        }
        other => other.clone(),
    }
}

fn schema_err(detail: impl Into<String>) -> Error {
    Error::Schema(detail.into())
}

fn record_name(json: &Json) -> Option<&str> {
    match json {
        Json::Object(m) if m.get("type").and_then(Json::as_str) == Some("record") => {
            m.get("name").and_then(Json::as_str)
        }
        _ => None,
    }
}

fn logical(json: &Json) -> Option<(&str, &str)> {
    let Json::Object(m) = json else { return None };
    Some((m.get("type")?.as_str()?, m.get("logicalType")?.as_str()?))
}

/// The non-null branches of a union (or the one plain type), resolved.
fn branches<'a>(ty: &'a Json, defs: &Definitions<'a>) -> (bool, Vec<&'a Json>) {
    let all: Vec<&Json> = match ty {
        Json::Array(items) => items.iter().map(|t| defs.resolve(t)).collect(),
        other => vec![defs.resolve(other)],
    };
    let nullable = all.first().and_then(|t| t.as_str()) == Some("null");
    (
        nullable,
        all.into_iter().skip(usize::from(nullable)).collect(),
    )
}

/// The numeric typmod encoded by a `decimal` logical type in these branches (or in the items of
/// an array record among them), -1 if none.
fn decimal_typmod(branches: &[&Json], defs: &Definitions<'_>) -> i32 {
    for b in branches {
        if let Some(("bytes", "decimal")) = logical(b) {
            let p = b.get("precision").and_then(Json::as_i64).unwrap_or(0);
            let s = b.get("scale").and_then(Json::as_i64).unwrap_or(0);
            if let (Ok(p), Ok(s)) = (i32::try_from(p), i32::try_from(s)) {
                return ((p << 16) | s) + 4;
            }
        }
        if record_name(b).is_some_and(|n| n.starts_with("walbrook.Array_"))
            && let Some(items) = array_items(b)
        {
            let (_, inner) = branches_of(items, defs);
            let t = decimal_typmod(&inner, defs);
            if t >= 0 {
                return t;
            }
        }
    }
    -1
}

fn branches_of<'a>(ty: &'a Json, defs: &Definitions<'a>) -> (bool, Vec<&'a Json>) {
    branches(ty, defs)
}

/// The `elements` item type of a `walbrook.Array_*` record.
fn array_items(record: &Json) -> Option<&Json> {
    record
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("name").and_then(Json::as_str) == Some("elements"))?
        .get("type")?
        .get("items")
}

fn record_field<'a>(record: &'a Json, name: &str) -> Option<&'a Json> {
    record
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("name").and_then(Json::as_str) == Some(name))?
        .get("type")
}

/// The built-in scalar a plain Avro shape stands for.
fn scalar(branches: &[&Json]) -> Option<Builtin> {
    let first = branches.first()?;
    if let Some(name) = first.as_str() {
        return Some(match name {
            "boolean" => Builtin::Bool,
            "int" => Builtin::Int4,
            "long" => Builtin::Int8,
            "float" => Builtin::Float4,
            "double" => Builtin::Float8,
            "bytes" => Builtin::Bytea,
            "string" => Builtin::Text,
            _ => return None,
        });
    }
    if let Some(pair) = logical(first) {
        return Some(match pair {
            ("bytes", "decimal") => Builtin::Numeric,
            ("string", "uuid") => Builtin::Uuid,
            ("int", "date") => Builtin::Date,
            ("long", "time-micros") => Builtin::Time,
            ("long", "local-timestamp-micros") => Builtin::Timestamp,
            ("long", "timestamp-micros") => Builtin::TimestampTz,
            _ => return None,
        });
    }
    match record_name(first)? {
        "walbrook.TimeTz" => Some(Builtin::TimeTz),
        "walbrook.Interval" => Some(Builtin::Interval),
        _ => None,
    }
}

fn builtin_by_name(name: &str) -> Option<Builtin> {
    Builtin::ALL.iter().copied().find(|b| b.name() == name)
}

fn key_name(key: &str, prefix: &str) -> Result<Option<String>, Error> {
    match key.strip_prefix(prefix) {
        Some(escaped) => Ok(Some(decode_name(escaped)?)),
        None => Ok(None),
    }
}

struct Infer<'a, 'd> {
    defs: &'d Definitions<'a>,
}

impl<'a> Infer<'a, '_> {
    /// A type from its Avro shape alone: arrays, ranges, multiranges, composites by their helper
    /// records; scalars by their Avro type. `name`/`oid` name the type when they are known.
    fn shape(&self, branches: &[&'a Json], name: &str, oid: u32) -> Result<PgType, Error> {
        let Some(first) = branches.first() else {
            return Err(schema_err(format!("type {name:?} has no non-null branch")));
        };
        if let Some(rname) = record_name(first) {
            if let Some(key) = rname.strip_prefix("walbrook.Array_") {
                let items = array_items(first)
                    .ok_or_else(|| schema_err(format!("{rname} has no elements field")))?;
                let (_, elem) = branches_of(items, self.defs);
                return Ok(PgType::Array {
                    oid,
                    element: Box::new(self.element(key, &elem)?),
                });
            }
            if let Some(key) = rname.strip_prefix("walbrook.Range_") {
                return self.range(key, first, oid, name);
            }
            if rname.starts_with("walbrook.Composite_") {
                return self.composite(first, oid, name);
            }
        }
        if first.get("type").and_then(Json::as_str) == Some("array")
            && let Some(items) = first.get("items")
        {
            let range = self.defs.resolve(items);
            let key = record_name(range)
                .and_then(|n| n.strip_prefix("walbrook.Range_"))
                .ok_or_else(|| schema_err(format!("type {name:?}: array of an unknown type")))?;
            return Ok(PgType::Multirange {
                oid,
                name: name.to_owned(),
                range: Box::new(self.range(key, range, 0, "")?),
            });
        }
        match scalar(branches) {
            Some(b) => Ok(PgType::Builtin(b)),
            None => Err(schema_err(format!(
                "type {name:?}: unknown Avro shape {first}"
            ))),
        }
    }

    /// The element type of an array from its helper record's type key.
    fn element(&self, key: &str, branches: &[&'a Json]) -> Result<PgType, Error> {
        if let Some(b) = builtin_by_name(key) {
            return Ok(PgType::Builtin(b));
        }
        if key.starts_with("numeric_") {
            return Ok(PgType::Builtin(Builtin::Numeric));
        }
        if let Some(name) = key_name(key, "enum_")? {
            return Ok(PgType::Enum {
                oid: 0,
                name,
                labels: Vec::new(),
            });
        }
        if let Some(name) = key_name(key, "other_")? {
            return Ok(PgType::Other { oid: 0, name });
        }
        if let Some(name) = key_name(key, "domain_")? {
            return Ok(PgType::Domain {
                oid: 0,
                base: Box::new(self.shape(branches, &name, 0)?),
                base_typmod: decimal_typmod(branches, self.defs),
                name,
            });
        }
        for prefix in ["composite_", "range_", "multirange_"] {
            if let Some(name) = key_name(key, prefix)? {
                return self.shape(branches, &name, 0);
            }
        }
        Err(schema_err(format!("unknown array element key {key:?}")))
    }

    fn range(&self, key: &str, record: &'a Json, oid: u32, name: &str) -> Result<PgType, Error> {
        let range_name = key_name(key, "range_")?
            .ok_or_else(|| schema_err(format!("unknown range key {key:?}")))?;
        let name = if name.is_empty() { &range_name } else { name };
        let subtype = match BUILTIN_RANGES.iter().find(|r| r.1 == range_name) {
            Some(r) => PgType::Builtin(r.2),
            None => {
                let lower = record_field(record, "lower")
                    .ok_or_else(|| schema_err(format!("range {name:?} has no lower field")))?;
                let (_, b) = branches_of(lower, self.defs);
                self.shape(&b, "", 0)?
            }
        };
        Ok(PgType::Range {
            oid,
            name: name.to_owned(),
            subtype: Box::new(subtype),
        })
    }

    fn composite(&self, record: &'a Json, oid: u32, name: &str) -> Result<PgType, Error> {
        let name = record
            .get("pgType")
            .and_then(Json::as_str)
            .unwrap_or(name)
            .to_owned();
        let mut fields = Vec::new();
        for f in record
            .get("fields")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let avro_name = f.get("name").and_then(Json::as_str).unwrap_or_default();
            let field_name = match f.get("pgName").and_then(Json::as_str) {
                Some(n) => n.to_owned(),
                None => decode_name(avro_name)?,
            };
            let hint = f.get("pgType").and_then(Json::as_str).unwrap_or_default();
            let ty = f
                .get("type")
                .ok_or_else(|| schema_err(format!("composite {name:?}: field without type")))?;
            let (_, b) = branches_of(ty, self.defs);
            let typmod = decimal_typmod(&b, self.defs);
            let pg_type = if let Some(builtin) = builtin_by_name(hint) {
                PgType::Builtin(builtin)
            } else if let Some(builtin) = hint.strip_suffix("[]").and_then(builtin_by_name) {
                PgType::Array {
                    oid: builtin.array_oid(),
                    element: Box::new(PgType::Builtin(builtin)),
                }
            } else {
                match self.shape(&b, hint, 0)? {
                    PgType::Builtin(Builtin::Text) => PgType::Other {
                        oid: 0,
                        name: hint.to_owned(),
                    },
                    PgType::Builtin(base) => PgType::Domain {
                        oid: 0,
                        name: hint.to_owned(),
                        base: Box::new(PgType::Builtin(base)),
                        base_typmod: typmod,
                    },
                    other => other,
                }
            };
            fields.push(CompositeField {
                name: field_name,
                pg_type,
                typmod,
            });
        }
        Ok(PgType::Composite { oid, name, fields })
    }

    /// A column from its record field.
    fn column(&self, field: &'a Json, kind: RecordKind) -> Result<ColumnDesc, Error> {
        let avro_name = field
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| schema_err("record field without a name"))?;
        let name = match field.get("pgName").and_then(Json::as_str) {
            Some(n) => n.to_owned(),
            None => decode_name(avro_name)?,
        };
        let type_name = field
            .get("pgType")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let oid = field
            .get("pgOid")
            .and_then(Json::as_u64)
            .and_then(|o| u32::try_from(o).ok())
            .unwrap_or(0);
        let flag = |k: &str| field.get(k).and_then(Json::as_bool).unwrap_or(false);
        let ty = field
            .get("type")
            .ok_or_else(|| schema_err(format!("field {avro_name:?} has no type")))?;
        let (_, mut b) = branches_of(ty, self.defs);
        let unchanged = b.len() > 1 && b.last().and_then(|t| record_name(t)) == Some(UNCHANGED);
        if unchanged {
            b.pop();
        }
        let typmod = decimal_typmod(&b, self.defs);
        let pg_type = match PgType::from_builtin_oid(oid) {
            Some(t) => t,
            None => match self.shape(&b, &type_name, oid)? {
                // A plain string: an enum when the after record says the type is fixed-length
                // (no unchanged-TOAST branch), otherwise an extension type carried as text.
                PgType::Builtin(Builtin::Text) if kind == RecordKind::After && !unchanged => {
                    PgType::Enum {
                        oid,
                        name: type_name.clone(),
                        labels: Vec::new(),
                    }
                }
                PgType::Builtin(Builtin::Text) => PgType::Other {
                    oid,
                    name: type_name.clone(),
                },
                PgType::Builtin(base) => PgType::Domain {
                    oid,
                    name: type_name.clone(),
                    base: Box::new(PgType::Builtin(base)),
                    base_typmod: typmod,
                },
                other => other,
            },
        };
        let typmod = match pg_type {
            PgType::Domain { .. } => -1,
            _ => typmod,
        };
        Ok(ColumnDesc {
            name,
            pg_type,
            type_name,
            typmod,
            not_null: flag("pgNotNull"),
            is_key: flag("pgKey"),
            backfill: match field.get("pgMissing").and_then(Json::as_str) {
                Some(text) => Backfill::Value(text.to_owned()),
                None if flag("pgMissingPerRow") => Backfill::PerRow,
                None => Backfill::Null,
            },
        })
    }
}

/// See [`TableSchema::from_record_json`].
pub(crate) fn from_record_json(record: &Json, document: &Json) -> Result<TableSchema, Error> {
    let defs = Definitions::collect(document);
    let record = defs.resolve(record);
    let kind = match record_name(record) {
        Some("after") => RecordKind::After,
        Some("before") => RecordKind::Before,
        Some("row") => RecordKind::Row,
        other => {
            return Err(schema_err(format!(
                "expected a table record named after, before or row, got {other:?}"
            )));
        }
    };
    let text = |k: &str| {
        record
            .get(k)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| schema_err(format!("the {} record has no {k} property", kind.as_str())))
    };
    let schema = text("pgSchema")?;
    let table = text("pgTable")?;
    let replica_identity = text("pgReplicaIdentity")?
        .bytes()
        .next()
        .and_then(ReplicaIdentity::from_byte)
        .ok_or_else(|| schema_err("invalid pgReplicaIdentity"))?;
    let infer = Infer { defs: &defs };
    let mut columns = Vec::new();
    for field in record
        .get("fields")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        columns.push(infer.column(field, kind)?);
    }
    let relation = RelationDesc {
        schema,
        table,
        columns,
        replica_identity,
    };
    let rebuilt = TableSchema::new(&relation, kind)?;
    let writer = parsing_canonical_form(&standalone(record, &defs, &mut HashSet::new()))?;
    let ours = parsing_canonical_form(rebuilt.json())?;
    if writer != ours {
        return Err(schema_err(format!(
            "the {} record of {}.{} cannot be rebuilt exactly (writer {writer}, rebuilt {ours})",
            kind.as_str(),
            relation.schema,
            relation.table
        )));
    }
    Ok(rebuilt)
}
