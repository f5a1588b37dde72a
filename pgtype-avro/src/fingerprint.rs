//! Parsing Canonical Form, CRC-64-AVRO fingerprints and single-object framing.
//!
//! The canonical form follows the Avro specification ("Parsing Canonical Form for Schemas") and
//! the Java reference (`SchemaNormalization`): primitives become bare strings, names become full
//! names, only `name`, `type`, `fields`, `symbols`, `items`, `values` and `size` are kept, in that
//! order, with no whitespace. `logicalType`, `precision`, `scale`, `doc`, `aliases`, `default`,
//! `namespace` and custom properties (`pgType`, …) are removed. A named type that was already
//! written is written again as its quoted full name.
//!
//! apache-avro 0.22's own `canonical_form` keeps logical-type attributes, so this crate computes
//! the form itself; see `docs/type-mapping.md`.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::Value as Json;

use crate::Error;

const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const fn make_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
}

static TABLE: [u64; 256] = make_table();

/// CRC-64-AVRO (the spec's 64-bit Rabin fingerprint) of `bytes`.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    let mut fp = EMPTY;
    for &b in bytes {
        fp = (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

/// A schema's CRC-64-AVRO fingerprint over its Parsing Canonical Form.
///
/// The text form ([`fmt::Display`], [`FromStr`]) is the 16 lowercase hex digits of the 8 bytes
/// as they appear in a single-object header (little-endian), e.g. the schema `"int"` has
/// fingerprint value `0x7275d51a3f395c8f` and text form `8f5c393f1ad57572`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u64);

impl Fingerprint {
    /// Fingerprint of a schema given as JSON text.
    pub fn of_json_str(schema_json: &str) -> Result<Fingerprint, Error> {
        let v: Json =
            serde_json::from_str(schema_json).map_err(|e| Error::Schema(e.to_string()))?;
        Fingerprint::of_json(&v)
    }

    /// Fingerprint of a schema given as parsed JSON.
    pub fn of_json(schema: &Json) -> Result<Fingerprint, Error> {
        Ok(Fingerprint(crc64_avro(
            parsing_canonical_form(schema)?.as_bytes(),
        )))
    }

    /// The 8 header bytes (little-endian).
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }

    /// From the 8 header bytes (little-endian).
    pub fn from_bytes(b: [u8; 8]) -> Fingerprint {
        Fingerprint(u64::from_le_bytes(b))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.to_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Framing(format!("fingerprint text must be 16 hex digits: {s:?}"));
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut b = [0u8; 8];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint::from_bytes(b))
    }
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Parsing Canonical Form of a schema, exactly as the Avro specification defines it.
pub fn parsing_canonical_form(schema: &Json) -> Result<String, Error> {
    let mut out = String::new();
    let mut seen = HashSet::new();
    pcf(schema, "", &mut seen, &mut out)?;
    Ok(out)
}

fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    let ns = namespace.unwrap_or(enclosing);
    if ns.is_empty() {
        name.to_owned()
    } else {
        format!("{ns}.{name}")
    }
}

fn push_str_lit(out: &mut String, s: &str) {
    // serde_json writes non-ASCII characters as UTF-8, as the spec's [STRINGS] rule requires.
    out.push_str(&Json::String(s.to_owned()).to_string());
}

fn pcf(s: &Json, ns: &str, seen: &mut HashSet<String>, out: &mut String) -> Result<(), Error> {
    match s {
        Json::String(t) => {
            if PRIMITIVES.contains(&t.as_str()) {
                push_str_lit(out, t);
            } else {
                push_str_lit(out, &full_name(t, None, ns));
            }
            Ok(())
        }
        Json::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pcf(b, ns, seen, out)?;
            }
            out.push(']');
            Ok(())
        }
        Json::Object(m) => {
            let t = m
                .get("type")
                .ok_or_else(|| Error::Schema("object without \"type\"".into()))?;
            let t = match t {
                Json::String(t) => t.as_str(),
                other => return pcf(other, ns, seen, out),
            };
            match t {
                "record" | "error" | "enum" | "fixed" => {
                    let name = m
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| Error::Schema(format!("{t} without a name")))?;
                    let namespace = m.get("namespace").and_then(Json::as_str);
                    let full = full_name(name, namespace, ns);
                    if !seen.insert(full.clone()) {
                        push_str_lit(out, &full);
                        return Ok(());
                    }
                    let inner_ns = full.rsplit_once('.').map(|(n, _)| n).unwrap_or("");
                    out.push_str("{\"name\":");
                    push_str_lit(out, &full);
                    out.push_str(",\"type\":");
                    push_str_lit(out, if t == "error" { "error" } else { t });
                    match t {
                        "record" | "error" => {
                            out.push_str(",\"fields\":[");
                            let fields = m
                                .get("fields")
                                .and_then(Json::as_array)
                                .ok_or_else(|| Error::Schema("record without fields".into()))?;
                            for (i, f) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = f
                                    .get("name")
                                    .and_then(Json::as_str)
                                    .ok_or_else(|| Error::Schema("field without a name".into()))?;
                                let ftype = f.get("type").ok_or_else(|| {
                                    Error::Schema(format!("field {fname} without a type"))
                                })?;
                                out.push_str("{\"name\":");
                                push_str_lit(out, fname);
                                out.push_str(",\"type\":");
                                pcf(ftype, inner_ns, seen, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                        "enum" => {
                            out.push_str(",\"symbols\":[");
                            let syms = m
                                .get("symbols")
                                .and_then(Json::as_array)
                                .ok_or_else(|| Error::Schema("enum without symbols".into()))?;
                            for (i, sym) in syms.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let sym = sym
                                    .as_str()
                                    .ok_or_else(|| Error::Schema("non-string symbol".into()))?;
                                push_str_lit(out, sym);
                            }
                            out.push(']');
                        }
                        _ => {
                            let size = m
                                .get("size")
                                .and_then(Json::as_u64)
                                .ok_or_else(|| Error::Schema("fixed without size".into()))?;
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                    }
                    out.push('}');
                    Ok(())
                }
                "array" => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    let items = m
                        .get("items")
                        .ok_or_else(|| Error::Schema("array without items".into()))?;
                    pcf(items, ns, seen, out)?;
                    out.push('}');
                    Ok(())
                }
                "map" => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    let values = m
                        .get("values")
                        .ok_or_else(|| Error::Schema("map without values".into()))?;
                    pcf(values, ns, seen, out)?;
                    out.push('}');
                    Ok(())
                }
                other => pcf(&Json::String(other.to_owned()), ns, seen, out),
            }
        }
        other => Err(Error::Schema(format!("unexpected JSON in schema: {other}"))),
    }
}

/// The two magic bytes that start an Avro single-object encoded message.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// Frames an already encoded Avro binary body: `C3 01`, the 8-byte little-endian fingerprint,
/// then the body.
pub fn frame_single_object(fingerprint: Fingerprint, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&fingerprint.to_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a single-object message into its fingerprint and Avro body.
pub fn split_single_object(message: &[u8]) -> Result<(Fingerprint, &[u8]), Error> {
    if message.len() < 10 {
        return Err(Error::Framing(format!(
            "message of {} bytes is shorter than the 10-byte header",
            message.len()
        )));
    }
    if message[..2] != SINGLE_OBJECT_MAGIC {
        return Err(Error::Framing(format!(
            "bad magic {:02x} {:02x}, expected c3 01",
            message[0], message[1]
        )));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&message[2..10]);
    Ok((Fingerprint::from_bytes(fp), &message[10..]))
}

/// Encodes an Avro value as a binary body (no header) with `schema`, validating it.
pub fn encode_body(schema: &Schema, value: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(128);
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()?
        .write_value_ref(&mut out, value)?;
    Ok(out)
}

/// Encodes `value` with `schema` as a single-object message carrying `fingerprint`.
pub fn encode_single_object(
    schema: &Schema,
    fingerprint: Fingerprint,
    value: &Value,
) -> Result<Vec<u8>, Error> {
    Ok(frame_single_object(
        fingerprint,
        &encode_body(schema, value)?,
    ))
}

/// Decodes an Avro binary body with its writer schema. Fails on truncated input and on
/// trailing bytes.
pub fn decode_body(schema: &Schema, body: &[u8]) -> Result<Value, Error> {
    let mut input = Strict {
        rest: body,
        truncated: false,
    };
    let v = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()?
        .read_value(&mut input);
    if input.truncated {
        return Err(Error::Framing("truncated Avro body".into()));
    }
    let v = v?;
    if !input.rest.is_empty() {
        return Err(Error::Framing(format!(
            "{} trailing bytes after the Avro body",
            input.rest.len()
        )));
    }
    Ok(v)
}

/// The body as apache-avro reads it. apache-avro 0.22 takes an end of input where a union's
/// branch index should be as that union's first branch (`null` in every nullable field), so a
/// truncated body would decode as a record with NULLs at the end, and an array of nullable
/// items would build a hostile count of NULLs out of no input. Here reading past the end is an
/// error of a kind apache-avro passes on (not `UnexpectedEof`), and it is remembered.
struct Strict<'a> {
    rest: &'a [u8],
    truncated: bool,
}

impl std::io::Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.truncated = true;
            return Err(std::io::Error::other("truncated Avro body"));
        }
        self.rest.read(buf)
    }
}
