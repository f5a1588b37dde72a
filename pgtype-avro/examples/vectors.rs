//! Prints interoperability test vectors as JSON: for each message, the writer schema, its
//! fingerprint text, the single-object bytes (hex) and the values an independent Avro reader
//! must decode, written by hand per input. Used by `tests/python/test_fastavro_interop.py`.

use serde_json::{Value as Json, json};
use walbrook_pgtype_avro::{
    ColumnDesc, ColumnValue, PgType, RelationDesc, ReplicaIdentity, TableSchemas,
};

struct Case {
    column: &'static str,
    oid: u32,
    type_name: &'static str,
    typmod: i32,
    input: ColumnValue<'static>,
    /// Tagged expected value: {"t": kind, "v": value}.
    expected: Json,
}

fn case(
    column: &'static str,
    oid: u32,
    type_name: &'static str,
    typmod: i32,
    input: ColumnValue<'static>,
    expected: Json,
) -> Case {
    Case {
        column,
        oid,
        type_name,
        typmod,
        input,
        expected,
    }
}

fn main() -> Result<(), walbrook_pgtype_avro::Error> {
    use ColumnValue::{Null, Text, Unchanged};
    let n10_5 = (10 << 16 | 5) + 4;
    let cases = vec![
        case(
            "id",
            20,
            "bigint",
            -1,
            Text("42"),
            json!({"t": "int", "v": 42}),
        ),
        case(
            "b",
            16,
            "boolean",
            -1,
            Text("t"),
            json!({"t": "bool", "v": true}),
        ),
        case(
            "i2",
            21,
            "smallint",
            -1,
            Text("-32768"),
            json!({"t": "int", "v": -32768}),
        ),
        case(
            "i8",
            20,
            "bigint",
            -1,
            Text("-9223372036854775808"),
            json!({"t": "int", "v": "-9223372036854775808"}),
        ),
        case(
            "f4",
            700,
            "real",
            -1,
            Text("0.23"),
            json!({"t": "float32", "v": "0.23"}),
        ),
        case(
            "f8",
            701,
            "double precision",
            -1,
            Text("NaN"),
            json!({"t": "float", "v": "nan"}),
        ),
        case(
            "f8inf",
            701,
            "double precision",
            -1,
            Text("-Infinity"),
            json!({"t": "float", "v": "-inf"}),
        ),
        case(
            "n",
            1700,
            "numeric(10,5)",
            n10_5,
            Text("231.11200"),
            json!({"t": "decimal", "v": "231.11200"}),
        ),
        case(
            "nneg",
            1700,
            "numeric(10,5)",
            n10_5,
            Text("-0.00001"),
            json!({"t": "decimal", "v": "-0.00001"}),
        ),
        case(
            "nnan",
            1700,
            "numeric(10,5)",
            n10_5,
            Text("NaN"),
            json!({"t": "str", "v": "NaN"}),
        ),
        case(
            "nu",
            1700,
            "numeric",
            -1,
            Text("-123456789012345678901234567890.5"),
            json!({"t": "str", "v": "-123456789012345678901234567890.5"}),
        ),
        case(
            "t",
            25,
            "text",
            -1,
            Text("Ünïcode ✓ \"q\""),
            json!({"t": "str", "v": "Ünïcode ✓ \"q\""}),
        ),
        case(
            "by",
            17,
            "bytea",
            -1,
            Text("\\x00ff10"),
            json!({"t": "bytes", "v": "00ff10"}),
        ),
        case(
            "u",
            2950,
            "uuid",
            -1,
            Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!({"t": "uuid", "v": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}),
        ),
        case(
            "j",
            3802,
            "jsonb",
            -1,
            Text("{\"a\": 1.000000000000000000001}"),
            json!({"t": "str", "v": "{\"a\": 1.000000000000000000001}"}),
        ),
        case(
            "d",
            1082,
            "date",
            -1,
            Text("2023-01-23"),
            json!({"t": "date", "v": "2023-01-23"}),
        ),
        case(
            "dinf",
            1082,
            "date",
            -1,
            Text("-infinity"),
            json!({"t": "str", "v": "negative_infinity"}),
        ),
        case(
            "tm",
            1083,
            "time without time zone",
            -1,
            Text("12:30:00.5"),
            json!({"t": "time", "v": "12:30:00.500000"}),
        ),
        case(
            "ts",
            1114,
            "timestamp without time zone",
            -1,
            Text("2019-04-12 02:10:31.782068"),
            json!({"t": "naive", "v": "2019-04-12T02:10:31.782068"}),
        ),
        case(
            "tstz",
            1184,
            "timestamp with time zone",
            -1,
            Text("2019-02-23 23:16:46.86455+01"),
            json!({"t": "aware", "v": "2019-02-23T22:16:46.864550+00:00"}),
        ),
        case(
            "tsinf",
            1184,
            "timestamp with time zone",
            -1,
            Text("infinity"),
            json!({"t": "str", "v": "infinity"}),
        ),
        case(
            "iv",
            1186,
            "interval",
            -1,
            Text("1 year 2 mons -3 days 04:05:06.789"),
            json!({"t": "json", "v": {"months": 14, "days": -3, "micros": 14_706_789_000i64}}),
        ),
        case(
            "ttz",
            1266,
            "time with time zone",
            -1,
            Text("12:30:00+05:30"),
            json!({"t": "timetz", "v": {"micros": "12:30:00", "offset_seconds": 19800}}),
        ),
        case(
            "arr",
            1007,
            "integer[]",
            -1,
            Text("[0:1][5:5]={{1},{NULL}}"),
            json!({"t": "json", "v": {"dims": [{"lower": 0, "length": 2}, {"lower": 5, "length": 1}],
                                        "elements": [1, null]}}),
        ),
        case(
            "empty_arr",
            1009,
            "text[]",
            -1,
            Text("{}"),
            json!({"t": "json", "v": {"dims": [], "elements": []}}),
        ),
        case(
            "rng",
            3904,
            "int4range",
            -1,
            Text("[1,10)"),
            json!({"t": "json", "v": {"empty": false, "lower": 1, "lower_inclusive": true,
                                        "upper": 10, "upper_inclusive": false}}),
        ),
        case(
            "rng_empty",
            3904,
            "int4range",
            -1,
            Text("empty"),
            json!({"t": "json", "v": {"empty": true, "lower": null, "lower_inclusive": false,
                                        "upper": null, "upper_inclusive": false}}),
        ),
        case(
            "lsn",
            3220,
            "pg_lsn",
            -1,
            Text("16/B374D848"),
            json!({"t": "int", "v": 0x16_B374_D848u64}),
        ),
        case(
            "inet",
            869,
            "inet",
            -1,
            Text("2001:db8::1/64"),
            json!({"t": "str", "v": "2001:db8::1/64"}),
        ),
        case(
            "toast",
            25,
            "text",
            -1,
            Unchanged,
            json!({"t": "unchanged"}),
        ),
        case("nul", 25, "text", -1, Null, json!({"t": "null"})),
        case(
            "my-col",
            25,
            "text",
            -1,
            Text("x"),
            json!({"t": "str", "v": "x"}),
        ),
    ];
    let relation = RelationDesc {
        schema: "public".into(),
        table: "vectors".into(),
        columns: cases
            .iter()
            .map(|c| ColumnDesc {
                name: c.column.into(),
                pg_type: PgType::from_builtin_oid(c.oid).expect("built-in"),
                type_name: c.type_name.into(),
                typmod: c.typmod,
                not_null: c.column == "id",
                is_key: c.column == "id",
                backfill: Default::default(),
            })
            .collect(),
        replica_identity: ReplicaIdentity::Default,
    };
    let schemas = TableSchemas::new(&relation)?;
    let values: Vec<ColumnValue<'_>> = cases.iter().map(|c| c.input).collect();
    let mut out = Vec::new();
    let record = schemas.after.encode_text(&values)?;
    let message = schemas.after.to_single_object(&record)?;
    let mut expected = serde_json::Map::new();
    for c in &cases {
        expected.insert(
            walbrook_pgtype_avro::encode_name(c.column),
            c.expected.clone(),
        );
    }
    out.push(json!({
        "name": "after",
        "schema": schemas.after.json(),
        "fingerprint": schemas.after.fingerprint().to_string(),
        "message": hex(&message),
        "expected": expected,
    }));
    // The before record (key only) of the same table.
    let before = schemas.before.as_ref().expect("has a key");
    let message = before.to_single_object(&before.encode_text(&values)?)?;
    out.push(json!({
        "name": "before",
        "schema": before.json(),
        "fingerprint": before.fingerprint().to_string(),
        "message": hex(&message),
        "expected": {"id": {"t": "int", "v": 42}},
    }));
    out.push(complex()?);
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"messages": out})).expect("json")
    );
    Ok(())
}

/// Nested types: composite, arrays of decimals and timestamps with infinity, ranges,
/// multiranges, enums and domains. Expected values use the "deep" tag: the test normalises
/// fastavro's values (Decimal and datetimes to strings) before comparing.
fn complex() -> Result<Json, walbrook_pgtype_avro::Error> {
    use walbrook_pgtype_avro::CompositeField;
    let b = |oid| PgType::from_builtin_oid(oid).expect("built-in");
    let n5_2 = (5 << 16 | 2) + 4;
    let n10_5 = (10 << 16 | 5) + 4;
    let n12_2 = (12 << 16 | 2) + 4;
    let pair = PgType::Composite {
        oid: 70000,
        name: "pair".into(),
        fields: vec![
            CompositeField {
                name: "a".into(),
                pg_type: b(23),
                typmod: -1,
            },
            CompositeField {
                name: "b-text".into(),
                pg_type: b(25),
                typmod: -1,
            },
            CompositeField {
                name: "c".into(),
                pg_type: b(1231),
                typmod: n5_2,
            },
        ],
    };
    let mood = PgType::Enum {
        oid: 70001,
        name: "mood".into(),
        labels: vec!["sad".into(), "with space".into()],
    };
    let amount = PgType::Domain {
        oid: 70002,
        name: "amount".into(),
        base: Box::new(b(1700)),
        base_typmod: n12_2,
    };
    let cols: Vec<(&str, PgType, &str, i32, &str, Json)> = vec![
        ("id", b(23), "integer", -1, "1", json!(1)),
        (
            "pair",
            pair,
            "pair",
            -1,
            "(1,\"x y\",\"{1.50,NULL}\")",
            json!({"a": 1, "b_x2d_text": "x y",
                "c": {"dims": [{"lower": 1, "length": 2}], "elements": ["1.50", null]}}),
        ),
        (
            "mr",
            b(4451),
            "int4multirange",
            -1,
            "{[1,3),[5,7)}",
            json!([{"empty": false, "lower": 1, "lower_inclusive": true, "upper": 3, "upper_inclusive": false},
                {"empty": false, "lower": 5, "lower_inclusive": true, "upper": 7, "upper_inclusive": false}]),
        ),
        (
            "tsarr",
            b(1185),
            "timestamp with time zone[]",
            -1,
            "{infinity,\"2020-01-01 00:00:00+00\",NULL}",
            json!({"dims": [{"lower": 1, "length": 3}],
                "elements": ["infinity", "2020-01-01T00:00:00+00:00", null]}),
        ),
        (
            "numarr",
            b(1231),
            "numeric(10,5)[]",
            n10_5,
            "[0:1]={1.50000,NaN}",
            json!({"dims": [{"lower": 0, "length": 2}], "elements": ["1.50000", "NaN"]}),
        ),
        (
            "tstzr",
            b(3910),
            "tstzrange",
            -1,
            "[\"2020-01-01 00:00:00+00\",infinity)",
            json!({"empty": false, "lower": "2020-01-01T00:00:00+00:00", "lower_inclusive": true,
                "upper": "infinity", "upper_inclusive": false}),
        ),
        ("mood", mood, "mood", -1, "with space", json!("with space")),
        ("amount", amount, "amount", -1, "12.34", json!("12.34")),
    ];
    let relation = RelationDesc {
        schema: "public".into(),
        table: "complex".into(),
        columns: cols
            .iter()
            .map(|(name, ty, type_name, typmod, _, _)| ColumnDesc {
                name: (*name).into(),
                pg_type: ty.clone(),
                type_name: (*type_name).into(),
                typmod: *typmod,
                not_null: *name == "id",
                is_key: *name == "id",
                backfill: Default::default(),
            })
            .collect(),
        replica_identity: ReplicaIdentity::Default,
    };
    let schemas = TableSchemas::new(&relation)?;
    let values: Vec<ColumnValue<'_>> = cols.iter().map(|c| ColumnValue::Text(c.4)).collect();
    let mut message = Vec::new();
    schemas
        .row
        .write_text_single_object(&values, &mut message)?;
    let mut expected = serde_json::Map::new();
    for c in &cols {
        expected.insert(
            walbrook_pgtype_avro::encode_name(c.0),
            json!({"t": "deep", "v": c.5}),
        );
    }
    Ok(json!({
        "name": "complex_row",
        "schema": schemas.row.json(),
        "fingerprint": schemas.row.fingerprint().to_string(),
        "message": hex(&message),
        "expected": expected,
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
