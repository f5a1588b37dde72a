//! Parsing Canonical Form and CRC-64-AVRO fingerprints against the Avro specification's test
//! vectors, and single-object framing.

use apache_avro::Schema;
use apache_avro::types::Value;
use walbrook_pgtype_avro::Fingerprint;
use walbrook_pgtype_avro::fingerprint::{
    crc64_avro, decode_body, encode_single_object, parsing_canonical_form, split_single_object,
};

/// (input schema, canonical form, fingerprint as a signed 64-bit integer as in the spec file).
/// Transcribed from the Avro project's `share/test/data/schema-tests.txt` (Apache-2.0), whose
/// values the Java reference implementation cross-checks.
const SPEC_VECTORS: &[(&str, &str, Option<i64>)] = &[
    (r#""null""#, r#""null""#, Some(7195948357588979594)),
    (r#"{"type":"null"}"#, r#""null""#, None),
    (r#""boolean""#, r#""boolean""#, Some(-6970731678124411036)),
    (r#""int""#, r#""int""#, Some(8247732601305521295)),
    (r#"{"type":"int"}"#, r#""int""#, None),
    (r#""long""#, r#""long""#, Some(-3434872931120570953)),
    (r#""float""#, r#""float""#, Some(5583340709985441680)),
    (r#""double""#, r#""double""#, Some(-8181574048448539266)),
    (r#""bytes""#, r#""bytes""#, Some(5746618253357095269)),
    (r#""string""#, r#""string""#, Some(-8142146995180207161)),
    (r#"[  ]"#, r#"[]"#, Some(-1241056759729112623)),
    (r#"[ "int"  ]"#, r#"["int"]"#, Some(-5232228896498058493)),
    (
        r#"[ "int" , {"type":"boolean"} ]"#,
        r#"["int","boolean"]"#,
        Some(5392556393470105090),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo"}"#,
        r#"{"name":"foo","type":"record","fields":[]}"#,
        Some(-4824392279771201922),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}"#,
        r#"{"name":"x.y.foo","type":"record","fields":[]}"#,
        Some(5916914534497305771),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}"#,
        r#"{"name":"a.b.foo","type":"record","fields":[]}"#,
        Some(-4616218487480524110),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo", "doc":"foo", "aliases":["foo","bar"]}"#,
        r#"{"name":"foo","type":"record","fields":[]}"#,
        Some(-4824392279771201922),
    ),
    (
        r#"{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}"#,
        r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}"#,
        Some(7843277075252814651),
    ),
    (
        r#"{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},
            {"order":"descending","name":"f2","doc":"Hello","type":"int"}],
  "type":"record", "name":"foo"
}"#,
        r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}"#,
        Some(-4860222112080293046),
    ),
    (
        r#"{"type":"enum", "name":"foo", "symbols":["A1"]}"#,
        r#"{"name":"foo","type":"enum","symbols":["A1"]}"#,
        Some(-6342190197741309591),
    ),
    (
        r#"{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}"#,
        r#"{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}"#,
        Some(-4448647247586288245),
    ),
    (
        r#"{"name":"foo","type":"fixed","size":15}"#,
        r#"{"name":"foo","type":"fixed","size":15}"#,
        Some(1756455273707447556),
    ),
    (
        r#"{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}"#,
        r#"{"name":"x.y.z.foo","type":"fixed","size":32}"#,
        Some(-3064184465700546786),
    ),
    (
        r#"{ "items":{"type":"null"}, "type":"array"}"#,
        r#"{"type":"array","items":"null"}"#,
        Some(-589620603366471059),
    ),
    (
        r#"{ "values":"string", "type":"map"}"#,
        r#"{"type":"map","values":"string"}"#,
        Some(-8732877298790414990),
    ),
    (
        r#"{"name":"PigValue","type":"record",
   "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}"#,
        r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
        Some(-1759257747318642341),
    ),
];

#[test]
fn spec_test_vectors() {
    for (input, canonical, fp) in SPEC_VECTORS {
        let json: serde_json::Value = serde_json::from_str(input).unwrap();
        let pcf = parsing_canonical_form(&json).unwrap();
        assert_eq!(&pcf, canonical, "{input}");
        if let Some(fp) = fp {
            assert_eq!(crc64_avro(pcf.as_bytes()), *fp as u64, "{input}");
            assert_eq!(Fingerprint::of_json(&json).unwrap().0, *fp as u64);
        }
    }
}

#[test]
fn int_single_object_header_matches_the_spec_example() {
    // The Avro reference implementations' single-object header for the schema "int".
    let fp = Fingerprint::of_json_str(r#""int""#).unwrap();
    assert_eq!(fp.0, 0x7275_d51a_3f39_5c8f);
    assert_eq!(fp.to_string(), "8f5c393f1ad57572");
    assert_eq!("8f5c393f1ad57572".parse::<Fingerprint>().unwrap(), fp);
    let schema = Schema::parse_str(r#""int""#).unwrap();
    let msg = encode_single_object(&schema, fp, &Value::Int(-1)).unwrap();
    assert_eq!(
        msg,
        vec![
            0xc3, 0x01, 0x8f, 0x5c, 0x39, 0x3f, 0x1a, 0xd5, 0x75, 0x72, 0x01
        ]
    );
}

#[test]
fn canonical_form_strips_logical_types_and_custom_properties() {
    // Computed by hand from the specification's transformation rules
    // ([PRIMITIVES], [FULLNAMES], [STRIP], [ORDER], [STRINGS], [INTEGERS], [WHITESPACE]).
    let schema = r#"{
      "type": "record", "name": "r", "namespace": "ns", "doc": "a doc", "pgTable": "t",
      "fields": [
        {"name": "a", "type": {"type": "long", "logicalType": "timestamp-micros"},
         "pgType": "timestamp with time zone", "pgKey": true},
        {"name": "b", "type": ["null", {"type": "bytes", "logicalType": "decimal",
                                        "precision": 10, "scale": 5}], "default": null},
        {"name": "c", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"],
                               "default": "x"}},
        {"name": "d", "type": "E"},
        {"name": "e", "type": {"type": "array", "items": {"type": "string",
                                                          "logicalType": "uuid"}}},
        {"name": "f", "type": {"type": "record", "name": "other.Inner", "fields": [
            {"name": "g", "type": {"type": "fixed", "name": "F", "size": 12,
                                   "logicalType": "duration"}}]}},
        {"name": "h", "type": "other.F"},
        {"name": "i", "type": {"type": "map", "values": {"type": "int", "logicalType": "date"}}}
      ]
    }"#;
    let expected = concat!(
        r#"{"name":"ns.r","type":"record","fields":["#,
        r#"{"name":"a","type":"long"},"#,
        r#"{"name":"b","type":["null","bytes"]},"#,
        r#"{"name":"c","type":{"name":"ns.E","type":"enum","symbols":["x","y"]}},"#,
        r#"{"name":"d","type":"ns.E"},"#,
        r#"{"name":"e","type":{"type":"array","items":"string"}},"#,
        r#"{"name":"f","type":{"name":"other.Inner","type":"record","fields":["#,
        r#"{"name":"g","type":{"name":"other.F","type":"fixed","size":12}}]}},"#,
        r#"{"name":"h","type":"other.F"},"#,
        r#"{"name":"i","type":{"type":"map","values":"int"}}]}"#
    );
    let json: serde_json::Value = serde_json::from_str(schema).unwrap();
    assert_eq!(parsing_canonical_form(&json).unwrap(), expected);
    assert_eq!(
        Fingerprint::of_json(&json).unwrap().0,
        crc64_avro(expected.as_bytes())
    );
    // apache-avro 0.22's own canonical form differs (it keeps logical-type attributes), which is
    // why this crate computes its own.
    let parsed = Schema::parse(&json).unwrap();
    assert_ne!(parsed.canonical_form(), expected);
}

#[test]
fn framing_errors_are_reported_not_panics() {
    let schema = Schema::parse_str(r#"{"type":"record","name":"r","fields":[{"name":"s","type":"string"},{"name":"n","type":"long"}]}"#).unwrap();
    let fp = Fingerprint(42);
    let v = Value::Record(vec![
        ("s".into(), Value::String("hello".into())),
        ("n".into(), Value::Long(1 << 40)),
    ]);
    let msg = encode_single_object(&schema, fp, &v).unwrap();
    let (got_fp, body) = split_single_object(&msg).unwrap();
    assert_eq!(got_fp, fp);
    assert_eq!(decode_body(&schema, body).unwrap(), v);

    assert!(split_single_object(&[]).is_err());
    assert!(split_single_object(&msg[..9]).is_err());
    let mut bad = msg.clone();
    bad[0] = 0xC4;
    assert!(split_single_object(&bad).is_err());
    for cut in 0..body.len() {
        assert!(decode_body(&schema, &body[..cut]).is_err(), "cut at {cut}");
    }
    let mut trailing = body.to_vec();
    trailing.push(0);
    assert!(decode_body(&schema, &trailing).is_err());
    // A value that does not match the schema is an error, not garbage bytes.
    assert!(encode_single_object(&schema, fp, &Value::Int(1)).is_err());
    assert!("xyz".parse::<Fingerprint>().is_err());
    assert!("8f5c393f1ad5757g".parse::<Fingerprint>().is_err());
}

/// Found by the `single_object` fuzz target (docs/fuzzing.md): apache-avro 0.22 decodes a union
/// whose branch index is missing because the input ended as its first branch (`null`), so a
/// truncated body came back as a record with NULLs, and an array of nullable items with a huge
/// count and no items spun for seconds building nulls from nothing.
#[test]
fn truncated_unions_are_errors() {
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"},{"name":"c","type":{"type":"array","items":["null","string"]}},{"name":"b","type":["null","long"]}]}"#,
    )
    .unwrap();
    let v = Value::Record(vec![
        ("a".into(), Value::Long(7)),
        (
            "c".into(),
            Value::Array(vec![Value::Union(0, Box::new(Value::Null))]),
        ),
        ("b".into(), Value::Union(1, Box::new(Value::Long(-1)))),
    ]);
    let body = walbrook_pgtype_avro::fingerprint::encode_body(&schema, &v).unwrap();
    assert_eq!(decode_body(&schema, &body).unwrap(), v);
    for cut in 0..body.len() {
        assert!(decode_body(&schema, &body[..cut]).is_err(), "cut at {cut}");
    }
    // a = 0, then c: a block of 4 million items, and nothing after it.
    let hostile = [0x00, 0x80, 0xA4, 0xE8, 0x03];
    let started = std::time::Instant::now();
    assert!(decode_body(&schema, &hostile).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[{"name":"s","type":["null","string"]},{"name":"a","type":{"type":"array","items":"long"}}]}"#,
        ).unwrap();
        let _ = split_single_object(&bytes);
        let _ = decode_body(&schema, &bytes);
    }
}
