//! Property tests: generated values survive text → Avro single-object → typed value → text.

use proptest::prelude::*;
use walbrook_pgtype_avro::{
    ArrayDim, Builtin, ColumnDesc, ColumnValue, PgArray, PgDate, PgInterval, PgTimestamp, PgType,
    PgValue, RelationDesc, ReplicaIdentity, TableSchemas, parse_text, render_text,
};

fn one_column(pg_type: PgType, typmod: i32) -> TableSchemas {
    TableSchemas::new(&RelationDesc {
        schema: "public".into(),
        table: "t".into(),
        columns: vec![ColumnDesc {
            name: "v".into(),
            type_name: pg_type.name(),
            pg_type,
            typmod,
            not_null: false,
            is_key: false,
            backfill: Default::default(),
        }],
        replica_identity: ReplicaIdentity::Default,
    })
    .unwrap()
}

/// text → Avro bytes → typed value → text; returns the typed value.
fn through_avro(s: &TableSchemas, text: &str) -> (PgValue, String) {
    let rec = s.after.encode_text(&[ColumnValue::Text(text)]).unwrap();
    let bytes = s.after.to_single_object(&rec).unwrap();
    let reference = walbrook_pgtype_avro::fingerprint::encode_single_object(
        s.after.schema(),
        s.after.fingerprint(),
        &rec,
    )
    .unwrap();
    assert_eq!(bytes, reference);
    let mut direct = Vec::new();
    s.after
        .write_text_single_object(&[ColumnValue::Text(text)], &mut direct)
        .unwrap();
    assert_eq!(direct, reference);
    let mut decoded = s
        .after
        .decode_value(&s.after.from_single_object(&bytes).unwrap())
        .unwrap();
    let direct = s.after.decode_single_object(&bytes).unwrap();
    assert_eq!(format!("{direct:?}"), format!("{decoded:?}"));
    let rendered = s.after.render_text(&decoded).unwrap().remove(0).unwrap();
    (decoded.remove(0).1, rendered)
}

fn b(x: Builtin) -> PgType {
    PgType::Builtin(x)
}

const NUMERIC_20_6: i32 = (20 << 16 | 6) + 4;

proptest! {
    #[test]
    fn int4(v: i32) {
        let s = one_column(b(Builtin::Int4), -1);
        let (val, text) = through_avro(&s, &v.to_string());
        prop_assert_eq!(val, PgValue::Int4(v));
        prop_assert_eq!(text, v.to_string());
    }

    #[test]
    fn int8(v: i64) {
        let s = one_column(b(Builtin::Int8), -1);
        let (val, text) = through_avro(&s, &v.to_string());
        prop_assert_eq!(val, PgValue::Int8(v));
        prop_assert_eq!(text, v.to_string());
    }

    #[test]
    fn float8(v: f64) {
        let s = one_column(b(Builtin::Float8), -1);
        let input = render_text(&b(Builtin::Float8), &PgValue::Float8(v)).unwrap().unwrap();
        let (val, _) = through_avro(&s, &input);
        match val {
            PgValue::Float8(x) => prop_assert!(x.to_bits() == v.to_bits() || (x.is_nan() && v.is_nan())),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn numeric_unconstrained(text in "-?(0|[1-9][0-9]{0,60})(\\.[0-9]{1,40})?") {
        let s = one_column(b(Builtin::Numeric), -1);
        let (_, back) = through_avro(&s, &text);
        prop_assert_eq!(back, text);
    }

    #[test]
    fn numeric_decimal(int in "-?(0|[1-9][0-9]{0,13})", frac in "[0-9]{6}") {
        // numeric(20,6): PostgreSQL always prints exactly 6 fractional digits.
        let text = format!("{int}.{frac}");
        let s = one_column(b(Builtin::Numeric), NUMERIC_20_6);
        let (_, back) = through_avro(&s, &text);
        let expected = if text.starts_with("-0.") && frac.bytes().all(|c| c == b'0') {
            text[1..].to_owned() // -0.000000 is 0.000000
        } else {
            text
        };
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn text(v in "\\PC*") {
        let s = one_column(b(Builtin::Text), -1);
        let (val, back) = through_avro(&s, &v);
        prop_assert_eq!(val, PgValue::Text(v.clone()));
        prop_assert_eq!(back, v);
    }

    #[test]
    fn text_arrays(elems in proptest::collection::vec(proptest::option::of("\\PC{0,8}"), 0..8)) {
        let ty = PgType::from_builtin_oid(1009).unwrap();
        let value = PgValue::Array(PgArray::one_dim(
            elems.iter().map(|e| e.clone().map_or(PgValue::Null, PgValue::Text)).collect(),
        ));
        let text = render_text(&ty, &value).unwrap().unwrap();
        prop_assert_eq!(parse_text(&ty, -1, &text).unwrap(), value.clone());
        let s = one_column(ty, -1);
        let (val, back) = through_avro(&s, &text);
        prop_assert_eq!(val, value);
        prop_assert_eq!(back, text);
    }

    #[test]
    fn int_arrays_any_shape(
        dims in proptest::collection::vec((-5i32..5, 1i32..4), 1..4),
        seed in proptest::collection::vec(proptest::option::of(any::<i32>()), 64),
    ) {
        let n: i32 = dims.iter().map(|d| d.1).product();
        let value = PgValue::Array(PgArray {
            dims: dims.iter().map(|&(lower, length)| ArrayDim { lower, length }).collect(),
            elements: seed[..n as usize].iter().map(|e| e.map_or(PgValue::Null, PgValue::Int4)).collect(),
        });
        let ty = PgType::from_builtin_oid(1007).unwrap();
        let text = render_text(&ty, &value).unwrap().unwrap();
        prop_assert_eq!(parse_text(&ty, -1, &text).unwrap(), value.clone());
        let s = one_column(ty, -1);
        let (val, back) = through_avro(&s, &text);
        prop_assert_eq!(val, value);
        prop_assert_eq!(back, text);
    }

    #[test]
    fn intervals(months: i32, days: i32, micros in (i64::MIN + 1)..=i64::MAX) {
        let ty = b(Builtin::Interval);
        let value = PgValue::Interval(PgInterval { months, days, micros });
        let text = render_text(&ty, &value).unwrap().unwrap();
        let s = one_column(ty, -1);
        let (val, _) = through_avro(&s, &text);
        prop_assert_eq!(val, value);
    }

    #[test]
    fn timestamps(us in -211_813_488_000_000_000i64..=9_223_371_331_199_999_999i64 - 946_684_800_000_000) {
        for (ty, v) in [
            (b(Builtin::Timestamp), PgValue::Timestamp(PgTimestamp::Micros(us))),
            (b(Builtin::TimestampTz), PgValue::TimestampTz(PgTimestamp::Micros(us))),
        ] {
            let text = render_text(&ty, &v).unwrap().unwrap();
            let s = one_column(ty, -1);
            let (val, back) = through_avro(&s, &text);
            prop_assert_eq!(val, v);
            prop_assert_eq!(back, text);
        }
    }

    #[test]
    fn dates(days in -2_451_545i32..=2_147_483_494 - 2_451_545) {
        let ty = b(Builtin::Date);
        let v = PgValue::Date(PgDate::Days(days));
        let text = render_text(&ty, &v).unwrap().unwrap();
        let s = one_column(ty, -1);
        let (val, back) = through_avro(&s, &text);
        prop_assert_eq!(val, v);
        prop_assert_eq!(back, text);
    }

    #[test]
    fn parsers_never_panic_structural(text in "[\\[\\](){}\",;\\\\ 0-9a-zA-Z:+\\-./=é𖩖PTYMDHS]{0,40}") {
        for oid in [1700u32, 17, 1082, 1083, 1266, 1114, 1184, 1186, 3220, 1007, 1009, 1231,
                    1020, 3904, 3910, 4451, 4536, 1187, 3905] {
            let ty = PgType::from_builtin_oid(oid).unwrap();
            let _ = parse_text(&ty, -1, &text);
        }
    }

    #[test]
    fn parsers_never_panic(text in "\\PC{0,40}") {
        for oid in [16u32, 21, 23, 20, 700, 701, 1700, 17, 2950, 1082, 1083, 1266, 1114, 1184,
                    1186, 3220, 5069, 1007, 1009, 1231, 1020, 3904, 3910, 4451, 4536] {
            let ty = PgType::from_builtin_oid(oid).unwrap();
            let _ = parse_text(&ty, -1, &text);
        }
    }
}

fn garbage_schema() -> &'static TableSchemas {
    static SCHEMAS: std::sync::OnceLock<TableSchemas> = std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| {
        // A table with nested types; messages get a valid header and a garbage body.
        let types = [
            1007u32, 3910, 4451, 1186, 1266, 1700, 1082, 1184, 2950, 17, 1231, 16, 21,
        ];
        let columns: Vec<ColumnDesc> = types
            .iter()
            .enumerate()
            .map(|(i, &oid)| ColumnDesc {
                name: format!("c{i}"),
                pg_type: PgType::from_builtin_oid(oid).unwrap(),
                type_name: String::new(),
                typmod: if oid == 1231 { (10 << 16 | 2) + 4 } else { -1 },
                not_null: false,
                is_key: false,
                backfill: Default::default(),
            })
            .collect();
        TableSchemas::new(&RelationDesc {
            schema: "s".into(),
            table: "t".into(),
            columns,
            replica_identity: ReplicaIdentity::Default,
        })
        .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn direct_reader_never_panics_on_garbage(
        body in proptest::collection::vec(any::<u8>(), 0..80),
        prefix in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let s = garbage_schema();
        let mut msg = vec![0xC3, 0x01];
        msg.extend_from_slice(&s.after.fingerprint().to_bytes());
        msg.extend_from_slice(&prefix);
        msg.extend_from_slice(&body);
        let _ = s.after.decode_single_object(&msg);
    }
}
