//! Encoding a 10-column mixed row (int8, text, numeric, timestamptz, uuid, bool, jsonb, float8,
//! date, int4) from pgoutput text (or the binary COPY format) to an Avro single-object message.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walbrook_pgtype_avro::{
    ColumnDesc, ColumnValue, PgType, RelationDesc, ReplicaIdentity, TableSchemas,
};

fn relation() -> RelationDesc {
    let col = |name: &str, oid: u32, type_name: &str, typmod: i32| ColumnDesc {
        name: name.into(),
        pg_type: PgType::from_builtin_oid(oid).unwrap(),
        type_name: type_name.into(),
        typmod,
        not_null: name == "id",
        is_key: name == "id",
        backfill: Default::default(),
    };
    RelationDesc {
        schema: "public".into(),
        table: "bench".into(),
        columns: vec![
            col("id", 20, "bigint", -1),
            col("name", 25, "text", -1),
            col("amount", 1700, "numeric(12,2)", (12 << 16 | 2) + 4),
            col("created_at", 1184, "timestamp with time zone", -1),
            col("uid", 2950, "uuid", -1),
            col("active", 16, "boolean", -1),
            col("doc", 3802, "jsonb", -1),
            col("score", 701, "double precision", -1),
            col("day", 1082, "date", -1),
            col("qty", 23, "integer", -1),
        ],
        replica_identity: ReplicaIdentity::Default,
    }
}

const ROW: [ColumnValue<'static>; 10] = [
    ColumnValue::Text("1234567890"),
    ColumnValue::Text("a customer name of some length"),
    ColumnValue::Text("12345.67"),
    ColumnValue::Text("2024-03-01 12:34:56.789012+00"),
    ColumnValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ColumnValue::Text("t"),
    ColumnValue::Text("{\"a\": 1, \"b\": [true, null, \"x\"]}"),
    ColumnValue::Text("3.141592653589793"),
    ColumnValue::Text("2024-03-01"),
    ColumnValue::Text("42"),
];

/// [`ROW`] in PostgreSQL's binary format (what `COPY … (FORMAT binary)` carries).
fn binary_row() -> Vec<Vec<u8>> {
    let days_since_2000: i32 = 19_783 - 10_957; // 2024-03-01
    let micros = i64::from(days_since_2000) * 86_400_000_000
        + (12 * 3600 + 34 * 60 + 56) * 1_000_000
        + 789_012;
    let numeric = [3i16, 1, 0, 2, 1, 2345, 6700]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let mut jsonb = vec![1u8];
    jsonb.extend_from_slice(b"{\"a\": 1, \"b\": [true, null, \"x\"]}");
    vec![
        1_234_567_890i64.to_be_bytes().to_vec(),
        b"a customer name of some length".to_vec(),
        numeric,
        micros.to_be_bytes().to_vec(),
        uuid_bytes().to_vec(),
        vec![1],
        jsonb,
        std::f64::consts::PI.to_be_bytes().to_vec(),
        days_since_2000.to_be_bytes().to_vec(),
        42i32.to_be_bytes().to_vec(),
    ]
}

fn uuid_bytes() -> [u8; 16] {
    let hex = "a0eebc999c0b4ef8bb6d6bb9bd380a11";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn bench(c: &mut Criterion) {
    let schemas = TableSchemas::new(&relation()).unwrap();
    let after = &schemas.after;
    let mut g = c.benchmark_group("encode_row");
    g.throughput(Throughput::Elements(1));
    g.bench_function("text_to_single_object", |b| {
        b.iter(|| {
            let v = after.encode_text(std::hint::black_box(&ROW)).unwrap();
            after.to_single_object(&v).unwrap()
        })
    });
    let mut buf = Vec::with_capacity(256);
    g.bench_function("text_to_single_object_direct", |b| {
        b.iter(|| {
            buf.clear();
            after
                .write_text_single_object(std::hint::black_box(&ROW), &mut buf)
                .unwrap();
            buf.len()
        })
    });
    let binary = binary_row();
    let binary_row: Vec<ColumnValue<'_>> = binary.iter().map(|b| ColumnValue::Binary(b)).collect();
    let mut text_bytes = Vec::new();
    after
        .write_text_single_object(&ROW, &mut text_bytes)
        .unwrap();
    buf.clear();
    after
        .write_text_single_object(&binary_row, &mut buf)
        .unwrap();
    assert_eq!(buf, text_bytes, "the binary row encodes like the text row");
    g.bench_function("binary_to_single_object_direct", |b| {
        b.iter(|| {
            buf.clear();
            after
                .write_text_single_object(std::hint::black_box(&binary_row), &mut buf)
                .unwrap();
            buf.len()
        })
    });
    let v = after.encode_text(&ROW).unwrap();
    g.bench_function("value_to_single_object", |b| {
        b.iter(|| after.to_single_object(std::hint::black_box(&v)).unwrap())
    });
    g.bench_function("text_to_value", |b| {
        b.iter(|| after.encode_text(std::hint::black_box(&ROW)).unwrap())
    });
    g.finish();

    let mut d = c.benchmark_group("decode_row");
    d.throughput(Throughput::Elements(1));
    let msg = after
        .to_single_object(&after.encode_text(&ROW).unwrap())
        .unwrap();
    d.bench_function("single_object_to_pg_values", |b| {
        b.iter(|| {
            let v = after
                .from_single_object(std::hint::black_box(&msg))
                .unwrap();
            after.decode_value(&v).unwrap()
        })
    });
    d.bench_function("single_object_to_pg_values_direct", |b| {
        b.iter(|| {
            after
                .decode_single_object(std::hint::black_box(&msg))
                .unwrap()
        })
    });
    d.bench_function("single_object_to_pg_text", |b| {
        b.iter(|| {
            let v = after
                .from_single_object(std::hint::black_box(&msg))
                .unwrap();
            after.render_text(&after.decode_value(&v).unwrap()).unwrap()
        })
    });
    d.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
