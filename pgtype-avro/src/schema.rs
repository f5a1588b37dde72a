//! Avro schemas for PostgreSQL types and tables.

use std::collections::HashSet;

use serde_json::{Value as Json, json};

use crate::names::encode_name;
use crate::types::{Builtin, PgType};

/// Namespace of the helper named types this crate defines.
pub const NAMESPACE: &str = "walbrook";
/// Full name of the "unchanged TOAST value" marker record (an empty record).
pub const UNCHANGED: &str = "walbrook.Unchanged";
/// Full name of the enum for ±infinity of `date`, `timestamp` and `timestamptz`.
pub const INFINITY: &str = "walbrook.Infinity";
/// Symbols of [`INFINITY`], in order.
pub const INFINITY_SYMBOLS: [&str; 2] = ["infinity", "negative_infinity"];
/// Full name of the enum for `numeric` special values in a `decimal` column.
pub const NUMERIC_SPECIAL: &str = "walbrook.NumericSpecial";
/// Symbols of [`NUMERIC_SPECIAL`], in order.
pub const NUMERIC_SPECIAL_SYMBOLS: [&str; 3] = ["NaN", "Infinity", "NegativeInfinity"];
/// Full name of the `interval` record.
pub const INTERVAL: &str = "walbrook.Interval";
/// Full name of the `timetz` record.
pub const TIMETZ: &str = "walbrook.TimeTz";
/// Full name of the array dimension record.
pub const ARRAY_DIM: &str = "walbrook.ArrayDim";

/// Tracks which named types were already defined in one schema document, so that later uses
/// refer to them by full name (Avro requires each name to be defined exactly once).
#[derive(Debug, Default, Clone)]
pub struct NamedTypes {
    defined: HashSet<String>,
}

impl NamedTypes {
    /// An empty registry (for one schema document).
    pub fn new() -> NamedTypes {
        NamedTypes::default()
    }

    /// Returns `Some(reference)` if `full_name` is already defined, otherwise marks it defined
    /// and returns `None` (the caller then emits the definition).
    fn reference(&mut self, full_name: &str) -> Option<Json> {
        if self.defined.contains(full_name) {
            Some(Json::String(full_name.to_owned()))
        } else {
            self.defined.insert(full_name.to_owned());
            None
        }
    }
}

/// Decimal precision and scale for a `numeric` typmod, when Avro's `decimal` can hold every
/// value of the column exactly (`1 <= precision`, `0 <= scale <= precision`).
pub fn numeric_decimal_params(typmod: i32) -> Option<(u32, u32)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    if precision >= 1 && scale >= 0 && scale <= precision {
        Some((precision as u32, scale as u32))
    } else {
        None
    }
}

pub(crate) fn unchanged_schema(named: &mut NamedTypes) -> Json {
    named.reference(UNCHANGED).unwrap_or_else(|| {
        json!({"type": "record", "name": UNCHANGED, "fields": [],
               "doc": "pgoutput's unchanged TOAST value marker: the column kept its old value"})
    })
}

fn infinity_schema(named: &mut NamedTypes) -> Json {
    named
        .reference(INFINITY)
        .unwrap_or_else(|| json!({"type": "enum", "name": INFINITY, "symbols": INFINITY_SYMBOLS}))
}

/// A stable key naming the Avro helper record of an array / range over `ty`.
fn type_key(ty: &PgType, typmod: i32) -> String {
    match ty {
        PgType::Builtin(b) => match (b, numeric_decimal_params(typmod)) {
            (Builtin::Numeric, Some((p, s))) => format!("numeric_{p}_{s}"),
            _ => b.name().to_owned(),
        },
        PgType::Array { element, .. } => format!("array_{}", type_key(element, typmod)),
        PgType::Enum { name, .. } => format!("enum_{}", encode_name(name)),
        PgType::Domain { name, .. } => format!("domain_{}", encode_name(name)),
        PgType::Composite { name, .. } => format!("composite_{}", encode_name(name)),
        PgType::Range { name, .. } => format!("range_{}", encode_name(name)),
        PgType::Multirange { name, .. } => format!("multirange_{}", encode_name(name)),
        PgType::Other { name, .. } => format!("other_{}", encode_name(name)),
    }
}

/// The union branches representing a non-null value of `ty` (one branch means a plain type).
pub(crate) fn branches(ty: &PgType, typmod: i32, named: &mut NamedTypes) -> Vec<Json> {
    use Builtin::*;
    match ty {
        PgType::Builtin(b) => match b {
            Bool => vec![json!("boolean")],
            Int2 | Int4 => vec![json!("int")],
            Int8 | Oid | Xid | Cid | Xid8 | PgLsn => vec![json!("long")],
            Float4 => vec![json!("float")],
            Float8 => vec![json!("double")],
            Numeric => match numeric_decimal_params(typmod) {
                Some((p, s)) => vec![
                    json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s}),
                    named.reference(NUMERIC_SPECIAL).unwrap_or_else(|| {
                        json!({"type": "enum", "name": NUMERIC_SPECIAL,
                               "symbols": NUMERIC_SPECIAL_SYMBOLS})
                    }),
                ],
                None => vec![json!("string")],
            },
            Bytea => vec![json!("bytes")],
            Uuid => vec![json!({"type": "string", "logicalType": "uuid"})],
            Date => vec![
                json!({"type": "int", "logicalType": "date"}),
                infinity_schema(named),
            ],
            Time => vec![json!({"type": "long", "logicalType": "time-micros"})],
            TimeTz => vec![named.reference(TIMETZ).unwrap_or_else(|| {
                json!({"type": "record", "name": TIMETZ, "fields": [
                    {"name": "micros", "type": {"type": "long", "logicalType": "time-micros"}},
                    {"name": "offset_seconds", "type": "int"}
                ]})
            })],
            Timestamp => vec![
                json!({"type": "long", "logicalType": "local-timestamp-micros"}),
                infinity_schema(named),
            ],
            TimestampTz => vec![
                json!({"type": "long", "logicalType": "timestamp-micros"}),
                infinity_schema(named),
            ],
            Interval => vec![named.reference(INTERVAL).unwrap_or_else(|| {
                json!({"type": "record", "name": INTERVAL, "fields": [
                    {"name": "months", "type": "int"},
                    {"name": "days", "type": "int"},
                    {"name": "micros", "type": "long"}
                ]})
            })],
            _ => vec![json!("string")],
        },
        PgType::Enum { .. } | PgType::Other { .. } => vec![json!("string")],
        PgType::Domain {
            base, base_typmod, ..
        } => branches(base, if typmod >= 0 { typmod } else { *base_typmod }, named),
        PgType::Array { element, .. } => {
            let name = format!("{NAMESPACE}.Array_{}", type_key(element, typmod));
            if let Some(r) = named.reference(&name) {
                return vec![r];
            }
            let dim = named.reference(ARRAY_DIM).unwrap_or_else(|| {
                json!({"type": "record", "name": ARRAY_DIM, "fields": [
                    {"name": "lower", "type": "int"},
                    {"name": "length", "type": "int"}
                ]})
            });
            let mut item = vec![json!("null")];
            item.extend(branches(element, typmod, named));
            vec![json!({"type": "record", "name": name, "fields": [
                {"name": "dims", "type": {"type": "array", "items": dim}},
                {"name": "elements", "type": {"type": "array", "items": item}}
            ]})]
        }
        PgType::Range { subtype, .. } => vec![range_record(ty, subtype, named)],
        PgType::Multirange { range, .. } => {
            let items = match range.as_ref() {
                PgType::Range { subtype, .. } => range_record(range, subtype, named),
                // A malformed description: fall back to the text form.
                _ => json!("string"),
            };
            vec![json!({"type": "array", "items": items})]
        }
        PgType::Composite { name, fields, .. } => {
            let full = format!("{NAMESPACE}.Composite_{}", encode_name(name));
            if let Some(r) = named.reference(&full) {
                return vec![r];
            }
            let fields: Vec<serde_json::Value> = fields
                .iter()
                .map(|f| {
                    let mut u = vec![json!("null")];
                    u.extend(branches(&f.pg_type, f.typmod, named));
                    json!({"name": encode_name(&f.name), "type": u,
                           "pgName": f.name, "pgType": f.pg_type.name()})
                })
                .collect();
            vec![json!({"type": "record", "name": full, "fields": fields, "pgType": name})]
        }
    }
}

fn range_record(range: &PgType, subtype: &PgType, named: &mut NamedTypes) -> Json {
    let full = format!("{NAMESPACE}.Range_{}", type_key(range, -1));
    if let Some(r) = named.reference(&full) {
        return r;
    }
    let mut lower = vec![json!("null")];
    lower.extend(branches(subtype, -1, named));
    let mut upper = vec![json!("null")];
    upper.extend(branches(subtype, -1, named));
    json!({"type": "record", "name": full, "fields": [
        {"name": "empty", "type": "boolean"},
        {"name": "lower", "type": lower},
        {"name": "lower_inclusive", "type": "boolean"},
        {"name": "upper", "type": upper},
        {"name": "upper_inclusive", "type": "boolean"}
    ]})
}

/// The number of branches [`branches`] returns for `ty`, without building JSON.
pub(crate) fn branch_count(ty: &PgType, typmod: i32) -> usize {
    match ty {
        PgType::Builtin(Builtin::Numeric) if numeric_decimal_params(typmod).is_some() => 2,
        PgType::Builtin(Builtin::Date | Builtin::Timestamp | Builtin::TimestampTz) => 2,
        PgType::Domain {
            base, base_typmod, ..
        } => branch_count(base, if typmod >= 0 { typmod } else { *base_typmod }),
        _ => 1,
    }
}

/// The Avro schema of a value slot for `ty`: the type's branches, with `null` first when
/// `nullable` and the [`UNCHANGED`] marker last when `unchanged`; a plain type when that
/// leaves one branch.
pub fn value_schema(
    ty: &PgType,
    typmod: i32,
    nullable: bool,
    unchanged: bool,
    named: &mut NamedTypes,
) -> Json {
    let mut u = Vec::new();
    if nullable {
        u.push(json!("null"));
    }
    u.extend(branches(ty, typmod, named));
    if unchanged {
        u.push(unchanged_schema(named));
    }
    if u.len() == 1 {
        u.pop().unwrap_or(Json::Null)
    } else {
        Json::Array(u)
    }
}
