//! Snapshot tests of generated schemas (creek's `types` table from its integration tests and a
//! table with hostile names), plus the nullability, replica-identity and TOAST-marker rules.
//!
//! Snapshots live in `tests/snapshots/`; run with `UPDATE_SNAPSHOTS=1` to rewrite them after a
//! deliberate change, then review the diff.

use std::path::PathBuf;

use apache_avro::types::Value;
use walbrook_pgtype_avro::{
    ColumnDesc, ColumnValue, PgType, PgValue, RelationDesc, ReplicaIdentity, TableSchemas,
    decode_name,
};

fn col(name: &str, oid: u32, type_name: &str, typmod: i32) -> ColumnDesc {
    ColumnDesc {
        name: name.into(),
        pg_type: PgType::from_builtin_oid(oid).unwrap(),
        type_name: type_name.into(),
        typmod,
        not_null: false,
        is_key: false,
        backfill: Default::default(),
    }
}

const NUMERIC_10_5: i32 = (10 << 16 | 5) + 4;

/// creek's `public.types` (creek.md §13.2), with the type names `format_type` prints.
fn creek_types() -> RelationDesc {
    let mut columns = vec![
        col("bool", 16, "boolean", -1),
        col("char", 1042, "character(1)", 5),
        col("varchar", 1043, "character varying", -1),
        col("bpchar", 1042, "bpchar", -1),
        col("date", 1082, "date", -1),
        col("float4", 700, "real", -1),
        col("float8", 701, "double precision", -1),
        col("int2", 21, "smallint", -1),
        col("int4", 23, "integer", -1),
        col("int8", 20, "bigint", -1),
        col("json", 114, "json", -1),
        col("jsonb", 3802, "jsonb", -1),
        col("text", 25, "text", -1),
        col("time", 1083, "time without time zone", -1),
        col("timestamp", 1114, "timestamp without time zone", -1),
        col("timestamptz", 1184, "timestamp with time zone", -1),
        col("uuid", 2950, "uuid", -1),
        col("numeric", 1700, "numeric(10,5)", NUMERIC_10_5),
        col("boolarr", 1000, "boolean[]", -1),
        col("chararr", 1014, "character(1)[]", 5),
        col("varchararr", 1015, "character varying[]", -1),
        col("bpchararr", 1014, "bpchar[]", -1),
        col("datearr", 1182, "date[]", -1),
        col("float4arr", 1021, "real[]", -1),
        col("float8arr", 1022, "double precision[]", -1),
        col("int2arr", 1005, "smallint[]", -1),
        col("int4arr", 1007, "integer[]", -1),
        col("int8arr", 1016, "bigint[]", -1),
        col("jsonarr", 199, "json[]", -1),
        col("jsonbarr", 3807, "jsonb[]", -1),
        col("textarr", 1009, "text[]", -1),
        col("timearr", 1183, "time without time zone[]", -1),
        col("timestamparr", 1115, "timestamp without time zone[]", -1),
        col("timestamptzarr", 1185, "timestamp with time zone[]", -1),
        col("uuidarr", 2951, "uuid[]", -1),
        col("numericarr", 1231, "numeric(10,5)[]", NUMERIC_10_5),
    ];
    let uuid = columns.iter_mut().find(|c| c.name == "uuid").unwrap();
    uuid.not_null = true;
    uuid.is_key = true;
    RelationDesc {
        schema: "public".into(),
        table: "types".into(),
        columns,
        replica_identity: ReplicaIdentity::Default,
    }
}

fn hostile() -> RelationDesc {
    let mut id = col("1st id", 20, "bigint", -1);
    id.not_null = true;
    id.is_key = true;
    let mut mixed = col("Mixed-Case.Name", 25, "text", -1);
    mixed.not_null = true;
    RelationDesc {
        schema: "my-schema".into(),
        table: "Weird Table ✓".into(),
        columns: vec![
            id,
            mixed,
            col("_x41_", 23, "integer", -1),
            col("select", 1700, "numeric", -1),
            col("ünï", 1186, "interval", -1),
        ],
        replica_identity: ReplicaIdentity::Default,
    }
}

fn check_snapshot(name: &str, json: &serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.json"));
    let actual = serde_json::to_string_pretty(json).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_SNAPSHOTS=1)", path.display()));
    assert_eq!(actual, expected, "snapshot {name} differs");
}

fn field<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    record["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name}"))
}

#[test]
fn creek_types_table() {
    let s = TableSchemas::new(&creek_types()).unwrap();
    check_snapshot("creek_types_after", s.after.json());
    check_snapshot("creek_types_before", s.before.as_ref().unwrap().json());
    check_snapshot("creek_types_row", s.row.json());
    let after = s.after.json();
    let before = s.before.as_ref().unwrap().json();
    // before = the primary key only, not nullable.
    assert_eq!(before["fields"].as_array().unwrap().len(), 1);
    assert_eq!(
        field(before, "uuid")["type"],
        serde_json::json!({"type": "string", "logicalType": "uuid"})
    );
    // `char` is character(1) = bpchar; real type names with modifiers are kept.
    assert_eq!(field(after, "char")["pgType"], "character(1)");
    assert_eq!(field(after, "char")["pgOid"], 1042);
    assert_eq!(field(after, "numeric")["pgType"], "numeric(10,5)");
    assert_eq!(field(after, "uuid")["pgKey"], true);
    assert_eq!(field(after, "uuid")["pgNotNull"], true);
    assert_eq!(field(after, "bool")["pgKey"], false);
    // numeric(10,5): decimal or a special value, nullable, may be unchanged TOAST.
    assert_eq!(
        field(after, "numeric")["type"],
        serde_json::json!(["null",
            {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 5},
            {"type": "enum", "name": "walbrook.NumericSpecial",
             "symbols": ["NaN", "Infinity", "NegativeInfinity"]},
            "walbrook.Unchanged"])
    );
    // Fixed-length types never carry the unchanged marker; the snapshot row never does.
    assert_eq!(
        field(after, "int4")["type"],
        serde_json::json!(["null", "int"])
    );
    assert_eq!(
        field(s.row.json(), "text")["type"],
        serde_json::json!(["null", "string"])
    );
    assert_eq!(
        field(after, "text")["type"],
        serde_json::json!(["null", "string", "walbrook.Unchanged"])
    );
    // The fingerprint is the spec CRC-64-AVRO of the spec canonical form.
    let pcf = walbrook_pgtype_avro::fingerprint::parsing_canonical_form(after).unwrap();
    assert!(!pcf.contains("logicalType") && !pcf.contains("pgType"));
    assert_eq!(
        s.after.fingerprint().0,
        walbrook_pgtype_avro::fingerprint::crc64_avro(pcf.as_bytes())
    );

    // creek.md §13.5 expected values for the TestTypes row.
    let mut values = vec![ColumnValue::Null; 36];
    let set = |values: &mut Vec<ColumnValue<'static>>, name: &str, v: &'static str| {
        let i = creek_types()
            .columns
            .iter()
            .position(|c| c.name == name)
            .unwrap();
        values[i] = ColumnValue::Text(v);
    };
    set(&mut values, "uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    set(&mut values, "time", "12:30:00");
    set(&mut values, "timearr", "{12:30:00,13:20:00}");
    set(&mut values, "date", "2023-01-23");
    set(&mut values, "numeric", "231.11200");
    set(&mut values, "json", "{\n  \"hello\": \"world\"\n}");
    set(&mut values, "jsonarr", "{}");
    set(&mut values, "float4", "0.23");
    let rec = s.after.encode_text(&values).unwrap();
    let Value::Record(fields) = &rec else {
        panic!()
    };
    let get = |n: &str| &fields.iter().find(|(k, _)| k == n).unwrap().1;
    assert_eq!(
        get("time"),
        &Value::Union(1, Box::new(Value::TimeMicros(45_000_000_000)))
    );
    assert_eq!(get("date"), &Value::Union(1, Box::new(Value::Date(19380))));
    match get("numeric") {
        Value::Union(1, d) => match d.as_ref() {
            Value::Decimal(d) => assert_eq!(
                <Vec<u8>>::try_from(d).unwrap(),
                vec![0x01, 0x60, 0xA6, 0x20]
            ),
            v => panic!("{v:?}"),
        },
        v => panic!("{v:?}"),
    }
    // JSON text is kept exactly, whitespace included.
    assert_eq!(
        get("json"),
        &Value::Union(
            1,
            Box::new(Value::String("{\n  \"hello\": \"world\"\n}".into()))
        )
    );
    assert_eq!(
        get("float4"),
        &Value::Union(1, Box::new(Value::Float(0.23)))
    );
    let decoded = s.after.decode_value(&rec).unwrap();
    let timearr = &decoded.iter().find(|(n, _)| n == "timearr").unwrap().1;
    match timearr {
        PgValue::Array(a) => assert_eq!(
            a.elements,
            vec![PgValue::Time(45_000_000_000), PgValue::Time(48_000_000_000)]
        ),
        v => panic!("{v:?}"),
    }
    let jsonarr = &decoded.iter().find(|(n, _)| n == "jsonarr").unwrap().1;
    assert_eq!(
        jsonarr,
        &PgValue::Array(walbrook_pgtype_avro::PgArray::one_dim(vec![]))
    );
}

#[test]
fn hostile_names_are_escaped_reversibly() {
    let s = TableSchemas::new(&hostile()).unwrap();
    check_snapshot("hostile_after", s.after.json());
    let after = s.after.json();
    assert_eq!(
        after["namespace"],
        "my_x2d_schema.Weird_x20_Table_x20__x2713_"
    );
    assert_eq!(after["pgSchema"], "my-schema");
    assert_eq!(after["pgTable"], "Weird Table ✓");
    for f in after["fields"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        assert!(
            walbrook_pgtype_avro::names::is_valid_avro_name(name),
            "{name}"
        );
        assert_eq!(decode_name(name).unwrap(), f["pgName"].as_str().unwrap());
    }
    assert_eq!(field(after, "_x31_st_x20_id")["pgName"], "1st id");
    assert_eq!(field(after, "_x5f_x41_")["pgName"], "_x41_");
    // Unconstrained numeric is a string (no fixed scale); NOT NULL columns are not nullable.
    assert_eq!(
        field(after, "select")["type"],
        serde_json::json!(["null", "string", "walbrook.Unchanged"])
    );
    assert_eq!(field(after, "_x31_st_x20_id")["type"], "long");
    assert_eq!(
        field(after, "Mixed_x2d_Case_x2e_Name")["type"],
        serde_json::json!(["string", {"type": "record", "name": "walbrook.Unchanged",
            "fields": [], "doc": "pgoutput's unchanged TOAST value marker: the column kept its old value"}])
    );
    // Round trip through the escaped names, unchanged TOAST distinct from NULL.
    let rec = s
        .after
        .encode_text(&[
            ColumnValue::Text("7"),
            ColumnValue::Unchanged,
            ColumnValue::Null,
            ColumnValue::Text("-12345678901234567890.123456789012345"),
            ColumnValue::Text("1 day"),
        ])
        .unwrap();
    let msg = s.after.to_single_object(&rec).unwrap();
    let mut direct = Vec::new();
    s.after
        .write_text_single_object(
            &[
                ColumnValue::Text("7"),
                ColumnValue::Unchanged,
                ColumnValue::Null,
                ColumnValue::Text("-12345678901234567890.123456789012345"),
                ColumnValue::Text("1 day"),
            ],
            &mut direct,
        )
        .unwrap();
    assert_eq!(direct, msg);
    let back = s
        .after
        .decode_value(&s.after.from_single_object(&msg).unwrap())
        .unwrap();
    assert_eq!(back[0], ("1st id".to_string(), PgValue::Int8(7)));
    assert_eq!(back[1], ("Mixed-Case.Name".to_string(), PgValue::Unchanged));
    assert_eq!(s.after.decode_single_object(&msg).unwrap(), back);
    let mut wrong = msg.clone();
    wrong[2] ^= 1;
    assert!(matches!(
        s.after.decode_single_object(&wrong),
        Err(walbrook_pgtype_avro::Error::Framing(_))
    ));
    let mut trailing = msg.clone();
    trailing.push(0);
    assert!(s.after.decode_single_object(&trailing).is_err());
    assert_eq!(back[2], ("_x41_".to_string(), PgValue::Null));
    assert_eq!(
        back[3].1,
        PgValue::Numeric(walbrook_pgtype_avro::PgNumeric::Finite(
            "-12345678901234567890.123456789012345".into()
        ))
    );
    // The row record has no unchanged marker: encoding one is an error naming the column.
    let err = s
        .row
        .encode_text(&[
            ColumnValue::Text("7"),
            ColumnValue::Unchanged,
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
        ])
        .unwrap_err();
    assert!(
        matches!(&err, walbrook_pgtype_avro::Error::Column { column, oid: 25, source, .. }
            if column == "Mixed-Case.Name"
                && matches!(**source, walbrook_pgtype_avro::Error::ValueType { .. })),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("Mixed-Case.Name") && msg.contains("oid 25"),
        "{msg}"
    );
    let direct_err = s
        .row
        .write_text_single_object(
            &[
                ColumnValue::Text("7"),
                ColumnValue::Unchanged,
                ColumnValue::Null,
                ColumnValue::Null,
                ColumnValue::Null,
            ],
            &mut Vec::new(),
        )
        .unwrap_err();
    assert_eq!(direct_err.to_string(), msg);
    let not_null = [
        ColumnValue::Null,
        ColumnValue::Text("x"),
        ColumnValue::Null,
        ColumnValue::Null,
        ColumnValue::Null,
    ];
    assert!(
        s.after
            .write_text_single_object(&not_null, &mut Vec::new())
            .is_err()
    );
    // NULL in a NOT NULL column is an error too; so is a malformed value.
    assert!(
        s.after
            .encode_text(&[
                ColumnValue::Null,
                ColumnValue::Text("x"),
                ColumnValue::Null,
                ColumnValue::Null,
                ColumnValue::Null
            ])
            .is_err()
    );
    let err = s
        .after
        .encode_text(&[
            ColumnValue::Text("x"),
            ColumnValue::Text("x"),
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
        ])
        .unwrap_err();
    assert!(err.to_string().contains("1st id") && err.to_string().contains("bigint"));
    assert!(
        matches!(&err, walbrook_pgtype_avro::Error::Column { column, oid: 20, source, .. }
            if column == "1st id" && matches!(**source, walbrook_pgtype_avro::Error::Parse { .. })),
        "{err:?}"
    );
}

#[test]
fn replica_identity_rules() {
    let mut rel = hostile();
    // DEFAULT: before = key columns.
    let s = TableSchemas::new(&rel).unwrap();
    let before = s.before.unwrap();
    assert_eq!(
        before
            .columns()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["1st id"]
    );
    // FULL: before = all columns with their real nullability, no unchanged marker.
    rel.replica_identity = ReplicaIdentity::Full;
    let s = TableSchemas::new(&rel).unwrap();
    let before = s.before.unwrap();
    assert_eq!(before.columns().count(), 5);
    assert_eq!(
        field(before.json(), "Mixed_x2d_Case_x2e_Name")["type"],
        "string"
    );
    assert_eq!(
        field(before.json(), "select")["type"],
        serde_json::json!(["null", "string"])
    );
    // NOTHING, or DEFAULT without a key: no before record.
    rel.replica_identity = ReplicaIdentity::Nothing;
    assert!(TableSchemas::new(&rel).unwrap().before.is_none());
    rel.replica_identity = ReplicaIdentity::Default;
    for c in &mut rel.columns {
        c.is_key = false;
    }
    assert!(TableSchemas::new(&rel).unwrap().before.is_none());
    // Different schemas have different fingerprints; the same schema the same one.
    let a = TableSchemas::new(&creek_types()).unwrap();
    let b = TableSchemas::new(&creek_types()).unwrap();
    assert_eq!(a.after.fingerprint(), b.after.fingerprint());
    assert_ne!(a.after.fingerprint(), a.row.fingerprint());
}

#[test]
fn records_compose_into_one_envelope_schema() {
    use walbrook_pgtype_avro::schema::NamedTypes;
    use walbrook_pgtype_avro::{RecordKind, record_json};
    let mut rel = hostile();
    rel.replica_identity = ReplicaIdentity::Full;
    let s = TableSchemas::new(&rel).unwrap();
    // One document: helper types (walbrook.Interval, walbrook.Unchanged) defined once.
    let mut named = NamedTypes::new();
    let before = record_json(&rel, RecordKind::Before, &mut named);
    let after = record_json(&rel, RecordKind::After, &mut named);
    let envelope = serde_json::json!({
        "type": "record", "name": "walbrook.Change", "fields": [
            {"name": "op", "type": "string"},
            {"name": "before", "type": ["null", before]},
            {"name": "after", "type": ["null", after]},
        ]
    });
    let text = envelope.to_string();
    assert_eq!(text.matches("\"name\":\"walbrook.Interval\"").count(), 1);
    let schema = apache_avro::Schema::parse(&envelope).unwrap();
    let fp = walbrook_pgtype_avro::Fingerprint::of_json(&envelope).unwrap();
    let values = [
        ColumnValue::Text("1"),
        ColumnValue::Text("a"),
        ColumnValue::Null,
        ColumnValue::Text("NaN"),
        ColumnValue::Text("-00:00:01"),
    ];
    // Hand-framed envelope: header, op, before = null, after = branch 1 + record body.
    let mut msg = Vec::new();
    msg.extend_from_slice(&[0xC3, 0x01]);
    msg.extend_from_slice(&fp.to_bytes());
    msg.extend_from_slice(&[2, b'c', 0, 2]);
    s.after.write_text_body(&values, &mut msg).unwrap();
    let (got_fp, body) = walbrook_pgtype_avro::fingerprint::split_single_object(&msg).unwrap();
    assert_eq!(got_fp, fp);
    let decoded = walbrook_pgtype_avro::fingerprint::decode_body(&schema, body).unwrap();
    let Value::Record(fields) = decoded else {
        panic!()
    };
    assert_eq!(fields[0].1, Value::String("c".into()));
    assert_eq!(fields[1].1, Value::Union(0, Box::new(Value::Null)));
    let Value::Union(1, after_value) = &fields[2].1 else {
        panic!()
    };
    assert_eq!(
        s.after.decode_value(after_value).unwrap(),
        s.after
            .decode_value(&s.after.encode_text(&values).unwrap())
            .unwrap()
    );
}
