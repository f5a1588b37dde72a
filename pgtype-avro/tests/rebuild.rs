//! `TableSchema::from_record_json`: a client rebuilds a table's decoder from the writer's
//! schema JSON alone (records embedded in one envelope document, sharing named helper types),
//! and the rebuilt decoder reads the writer's bytes to the same typed values.

use serde_json::json;
use walbrook_pgtype_avro::schema::NamedTypes;
use walbrook_pgtype_avro::{
    ColumnDesc, ColumnValue, CompositeField, Error, Fingerprint, PgType, PgValue, RecordKind,
    RelationDesc, ReplicaIdentity, TableSchema, TableSchemas, record_json,
};

fn col(name: &str, pg_type: PgType, type_name: &str, typmod: i32) -> ColumnDesc {
    ColumnDesc {
        name: name.into(),
        pg_type,
        type_name: type_name.into(),
        typmod,
        not_null: false,
        is_key: false,
        backfill: Default::default(),
    }
}

fn builtin(name: &str, oid: u32, type_name: &str, typmod: i32) -> ColumnDesc {
    col(
        name,
        PgType::from_builtin_oid(oid).unwrap(),
        type_name,
        typmod,
    )
}

const NUMERIC_10_2: i32 = (10 << 16 | 2) + 4;

fn mood() -> PgType {
    PgType::Enum {
        oid: 90001,
        name: "mood".into(),
        labels: vec!["sad".into(), "happy".into()],
    }
}

fn money_domain() -> PgType {
    PgType::Domain {
        oid: 90002,
        name: "price".into(),
        base: Box::new(PgType::from_builtin_oid(1700).unwrap()),
        base_typmod: NUMERIC_10_2,
    }
}

fn posint() -> PgType {
    PgType::Domain {
        oid: 90003,
        name: "posint".into(),
        base: Box::new(PgType::from_builtin_oid(23).unwrap()),
        base_typmod: -1,
    }
}

fn address() -> PgType {
    PgType::Composite {
        oid: 90004,
        name: "address".into(),
        fields: vec![
            CompositeField {
                name: "street".into(),
                pg_type: PgType::from_builtin_oid(25).unwrap(),
                typmod: -1,
            },
            CompositeField {
                name: "zip code".into(),
                pg_type: PgType::from_builtin_oid(23).unwrap(),
                typmod: -1,
            },
            CompositeField {
                name: "tags".into(),
                pg_type: PgType::from_builtin_oid(1009).unwrap(),
                typmod: -1,
            },
            CompositeField {
                name: "m".into(),
                pg_type: mood(),
                typmod: -1,
            },
        ],
    }
}

fn floatrange() -> PgType {
    PgType::Range {
        oid: 90005,
        name: "floatrange".into(),
        subtype: Box::new(PgType::from_builtin_oid(701).unwrap()),
    }
}

/// Every kind of type the producer can describe, with values in PostgreSQL text form.
fn everything() -> (RelationDesc, Vec<ColumnValue<'static>>) {
    let mut id = builtin("id", 20, "bigint", -1);
    id.not_null = true;
    id.is_key = true;
    let columns = vec![
        (id, ColumnValue::Text("42")),
        (
            builtin("amount", 1700, "numeric(10,2)", NUMERIC_10_2),
            ColumnValue::Text("-12.50"),
        ),
        (
            builtin("big", 1700, "numeric", -1),
            ColumnValue::Text("123456789012345678901234567890.000"),
        ),
        (
            builtin("amounts", 1231, "numeric(10,2)[]", NUMERIC_10_2),
            ColumnValue::Text("{1.50,NULL,NaN}"),
        ),
        (
            builtin("at", 1184, "timestamp with time zone", -1),
            ColumnValue::Text("2024-02-29 12:34:56.789012+00"),
        ),
        (
            builtin("local", 1114, "timestamp without time zone", -1),
            ColumnValue::Text("infinity"),
        ),
        (
            builtin("day", 1082, "date", -1),
            ColumnValue::Text("0044-03-15 BC"),
        ),
        (
            builtin("t", 1083, "time without time zone", -1),
            ColumnValue::Text("24:00:00"),
        ),
        (
            builtin("ttz", 1266, "time with time zone", -1),
            ColumnValue::Text("01:02:03.5+05:30"),
        ),
        (
            builtin("span", 1186, "interval", -1),
            ColumnValue::Text("1 year 2 mons -3 days 04:05:06.789"),
        ),
        (
            builtin("u", 2950, "uuid", -1),
            ColumnValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        (
            builtin("doc", 3802, "jsonb", -1),
            ColumnValue::Text("{\"a\": [1, 2.50]}"),
        ),
        (
            builtin("raw", 17, "bytea", -1),
            ColumnValue::Text("\\xdeadbeef"),
        ),
        (builtin("flag", 16, "boolean", -1), ColumnValue::Null),
        (
            builtin("small", 21, "smallint", -1),
            ColumnValue::Text("-7"),
        ),
        (builtin("f4", 700, "real", -1), ColumnValue::Text("1.5")),
        (
            builtin("lsn", 3220, "pg_lsn", -1),
            ColumnValue::Text("16/B374D848"),
        ),
        (builtin("o", 26, "oid", -1), ColumnValue::Text("4294967295")),
        (
            builtin("ip", 869, "inet", -1),
            ColumnValue::Text("10.0.0.1/8"),
        ),
        (
            builtin("grid", 1007, "integer[]", -1),
            ColumnValue::Text("[0:1][1:2]={{1,2},{3,NULL}}"),
        ),
        (
            builtin("ints", 3904, "int4range", -1),
            ColumnValue::Text("[1,10)"),
        ),
        (
            builtin("nums", 3906, "numrange", -1),
            ColumnValue::Text("(1.5,)"),
        ),
        (
            builtin("days", 4535, "datemultirange", -1),
            ColumnValue::Text("{[2024-01-01,2024-02-01),[2024-03-01,infinity)}"),
        ),
        (
            builtin("tsranges", 3911, "tstzrange[]", -1),
            ColumnValue::Text("{\"[2024-01-01 00:00:00+00,)\",empty}"),
        ),
        (
            col("feeling", mood(), "mood", -1),
            ColumnValue::Text("happy"),
        ),
        (
            col(
                "feelings",
                PgType::Array {
                    oid: 90011,
                    element: Box::new(mood()),
                },
                "mood[]",
                -1,
            ),
            ColumnValue::Text("{sad,NULL,happy}"),
        ),
        (
            col("price", money_domain(), "price", -1),
            ColumnValue::Text("9.99"),
        ),
        (
            col(
                "prices",
                PgType::Array {
                    oid: 90012,
                    element: Box::new(money_domain()),
                },
                "price[]",
                -1,
            ),
            ColumnValue::Text("{1.00,2.50}"),
        ),
        (col("n", posint(), "posint", -1), ColumnValue::Text("5")),
        (
            col("home", address(), "address", -1),
            ColumnValue::Text("(\"Main St\",12345,\"{a,b}\",sad)"),
        ),
        (
            col(
                "homes",
                PgType::Array {
                    oid: 90013,
                    element: Box::new(address()),
                },
                "address[]",
                -1,
            ),
            ColumnValue::Text("{\"(x,1,{},happy)\",NULL}"),
        ),
        (
            col("fr", floatrange(), "floatrange", -1),
            ColumnValue::Text("[1.5,2.5]"),
        ),
        (
            col(
                "frs",
                PgType::Multirange {
                    oid: 90006,
                    name: "floatmultirange".into(),
                    range: Box::new(floatrange()),
                },
                "floatmultirange",
                -1,
            ),
            ColumnValue::Text("{[1,2),[3,4)}"),
        ),
        (
            col(
                "tree",
                PgType::Other {
                    oid: 90007,
                    name: "ltree".into(),
                },
                "ltree",
                -1,
            ),
            ColumnValue::Unchanged,
        ),
        (
            builtin("Weird name.ü", 25, "text", -1),
            ColumnValue::Unchanged,
        ),
    ];
    let (columns, values) = columns.into_iter().unzip();
    (
        RelationDesc {
            schema: "my schema".into(),
            table: "All Types".into(),
            columns,
            replica_identity: ReplicaIdentity::Full,
        },
        values,
    )
}

/// The records of `relation` in one document, as the producer's envelope embeds them.
fn envelope(relation: &RelationDesc) -> serde_json::Value {
    let mut named = NamedTypes::new();
    let before = record_json(relation, RecordKind::Before, &mut named);
    let after = record_json(relation, RecordKind::After, &mut named);
    json!({"type": "record", "name": "walbrook.change.x.y.Change", "fields": [
        {"name": "before", "type": ["null", before]},
        {"name": "after", "type": ["null", after]},
    ]})
}

fn rebuild(document: &serde_json::Value, field: usize) -> Result<TableSchema, Error> {
    TableSchema::from_record_json(&document["fields"][field]["type"][1], document)
}

#[test]
fn every_type_rebuilds_to_the_writers_schema_and_values() {
    let (relation, values) = everything();
    let writer = TableSchemas::new(&relation).unwrap();
    let document = envelope(&relation);
    // The after record in the document refers to helper types the before record defined.
    let after_text = document["fields"][1]["type"][1].to_string();
    assert!(!after_text.contains("\"name\":\"walbrook.Interval\""));
    assert!(after_text.contains("\"walbrook.Interval\""));

    let after = rebuild(&document, 1).unwrap();
    let before = rebuild(&document, 0).unwrap();
    assert_eq!(after.kind(), RecordKind::After);
    assert_eq!(before.kind(), RecordKind::Before);
    assert_eq!(after.table_schema(), "my schema");
    assert_eq!(after.table_name(), "All Types");
    // Same canonical form: the same fingerprint as the writer's standalone records.
    assert_eq!(after.fingerprint(), writer.after.fingerprint());
    assert_eq!(
        before.fingerprint(),
        writer.before.as_ref().unwrap().fingerprint()
    );
    // Column names, keys and nullability come back.
    let names: Vec<&str> = after.columns().map(|c| c.name.as_str()).collect();
    let writer_names: Vec<&str> = writer.after.columns().map(|c| c.name.as_str()).collect();
    assert_eq!(names, writer_names);
    let id = after.columns().next().unwrap();
    assert!(id.is_key && id.not_null);
    assert_eq!(id.type_name, "bigint");

    // The writer's bytes decode to the same typed values.
    let message = writer
        .after
        .to_single_object(&writer.after.encode_text(&values).unwrap())
        .unwrap();
    let expected = writer.after.decode_single_object(&message).unwrap();
    let got = after.decode_single_object(&message).unwrap();
    assert_eq!(got, expected);
    assert_eq!(got.len(), values.len());
    // Spot checks of the typed values.
    let get = |name: &str| &got.iter().find(|(n, _)| n == name).unwrap().1;
    assert!(matches!(get("amount"), PgValue::Numeric(n) if n.to_string() == "-12.50"));
    assert!(matches!(get("feeling"), PgValue::Text(t) if t == "happy"));
    assert!(matches!(get("n"), PgValue::Int4(5)));
    assert!(matches!(get("home"), PgValue::Composite(f) if f.len() == 4));
    assert!(matches!(get("tree"), PgValue::Unchanged));
    assert!(matches!(get("Weird name.ü"), PgValue::Unchanged));
    assert!(matches!(get("flag"), PgValue::Null));

    let before_values: Vec<ColumnValue<'_>> = values
        .iter()
        .map(|v| match v {
            ColumnValue::Unchanged => ColumnValue::Text("x"),
            other => *other,
        })
        .collect();
    let writer_before = writer.before.as_ref().unwrap();
    let message = writer_before
        .to_single_object(&writer_before.encode_text(&before_values).unwrap())
        .unwrap();
    assert_eq!(
        before.decode_single_object(&message).unwrap(),
        writer_before.decode_single_object(&message).unwrap()
    );
}

#[test]
fn a_standalone_record_rebuilds_and_prefix_decoding_leaves_the_rest() {
    let (relation, values) = everything();
    let writer = TableSchemas::new(&relation).unwrap();
    let row = TableSchema::from_record_json(writer.row.json(), writer.row.json()).unwrap();
    assert_eq!(row.kind(), RecordKind::Row);
    assert_eq!(row.fingerprint(), writer.row.fingerprint());
    let values: Vec<ColumnValue<'_>> = values
        .iter()
        .map(|v| match v {
            ColumnValue::Unchanged => ColumnValue::Null,
            other => *other,
        })
        .collect();
    let mut body = Vec::new();
    writer.row.write_text_body(&values, &mut body).unwrap();
    body.extend_from_slice(b"tail");
    let (decoded, rest) = row.decode_body_prefix(&body).unwrap();
    assert_eq!(rest, b"tail");
    assert_eq!(decoded.len(), values.len());
    // decode_body still rejects the trailing bytes.
    assert!(matches!(row.decode_body(&body), Err(Error::Framing(_))));
}

#[test]
fn a_record_that_does_not_match_its_rebuild_is_an_error() {
    let relation = RelationDesc {
        schema: "public".into(),
        table: "t".into(),
        columns: vec![builtin("id", 23, "integer", -1)],
        replica_identity: ReplicaIdentity::Default,
    };
    let writer = TableSchemas::new(&relation).unwrap();
    // pgOid says int4 but the Avro type is a string: rebuilding must refuse.
    let mut tampered = writer.after.json().clone();
    tampered["fields"][0]["type"] = json!(["null", "string"]);
    let error = TableSchema::from_record_json(&tampered, &tampered).unwrap_err();
    assert!(matches!(error, Error::Schema(_)), "{error}");
    // Not a table record at all.
    let error = TableSchema::from_record_json(&json!("int"), &json!("int")).unwrap_err();
    assert!(matches!(error, Error::Schema(_)), "{error}");
    // Missing the pg* record properties.
    let mut bare = writer.after.json().clone();
    bare.as_object_mut().unwrap().remove("pgTable");
    assert!(matches!(
        TableSchema::from_record_json(&bare, &bare),
        Err(Error::Schema(_))
    ));
    // Fingerprints of the standalone writer record and the rebuild agree.
    let rebuilt = TableSchema::from_record_json(writer.after.json(), writer.after.json()).unwrap();
    assert_eq!(
        rebuilt.fingerprint(),
        Fingerprint::of_json(writer.after.json()).unwrap()
    );
}

/// What rows that existed before a column was added hold (`pgMissing`, `pgMissingPerRow`)
/// travels in the field's properties, comes back from the JSON alone, and leaves the
/// fingerprint alone (properties are outside the Parsing Canonical Form).
#[test]
fn a_columns_backfill_rebuilds_from_its_properties() {
    use walbrook_pgtype_avro::Backfill;
    let plain = RelationDesc {
        schema: "public".into(),
        table: "filled".into(),
        columns: vec![
            builtin("id", 23, "integer", -1),
            builtin("k", 23, "integer", -1),
            builtin("s", 25, "text", -1),
            builtin("r", 701, "double precision", -1),
        ],
        replica_identity: ReplicaIdentity::Default,
    };
    let mut added = plain.clone();
    added.columns[1].backfill = Backfill::Value("7".into());
    added.columns[2].backfill = Backfill::Value("it's \\ \"q\"".into());
    added.columns[3].backfill = Backfill::PerRow;
    let document = envelope(&added);
    let after = &document["fields"][1]["type"][1]["fields"];
    assert_eq!(after[1]["pgMissing"], "7");
    assert_eq!(after[3]["pgMissingPerRow"], true);
    assert!(after[0].get("pgMissing").is_none() && after[0].get("pgMissingPerRow").is_none());
    let rebuilt = rebuild(&document, 1).unwrap();
    let backfills: Vec<Backfill> = rebuilt.columns().map(|c| c.backfill.clone()).collect();
    assert_eq!(
        backfills,
        added
            .columns
            .iter()
            .map(|c| c.backfill.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        rebuilt.fingerprint(),
        TableSchemas::new(&plain).unwrap().after.fingerprint()
    );
}
