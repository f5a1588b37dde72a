//! The decode benchmark's Rust half (`make bench`, docs/python.md "Performance").
//!
//! ```text
//! cargo run --release -p walbrook-bindings --example decode_bench -- [--events N] [--out DIR]
//! ```
//!
//! Encodes N insert events of the issue's 10-column row (int8, text, numeric(12,2),
//! timestamptz, uuid, bool, jsonb, float8, date, int4) with the producer's own encoder,
//! then decodes them with the Rust client's decoder (`EventSchema::decode_event`, the
//! decoder every subscription uses) on one thread and prints events/s as a JSON line.
//! With `--out DIR` it also writes `schema.json` (the envelope schema) and `payloads.bin`
//! (each message as a 4-byte little-endian length and the bytes) for
//! `bindings/bench/decode_bench.py`, which decodes the same bytes with the Python client and
//! with fastavro.

use std::io::Write;
use std::time::Instant;

use bytes::Bytes;
use walbrook_client::EventSchema;
use walbrook_pgtype_avro::{ColumnDesc, PgType, RelationDesc, ReplicaIdentity};
use walbrook_producer::event::{Op, Source, TableEncoder};
use walbrook_producer::lsn::Lsn;
use walbrook_producer::pgoutput::{ColumnValue, Tuple};

fn relation() -> RelationDesc {
    let col = |name: &str, oid: u32, type_name: &str, typmod: i32| ColumnDesc {
        name: name.into(),
        pg_type: PgType::from_builtin_oid(oid).expect("a built-in type"),
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

fn row(i: u64) -> Tuple {
    let text = |s: String| ColumnValue::Text(Bytes::from(s));
    Tuple(vec![
        text(format!("{}", 1_000_000 + i)),
        text(format!("a customer name of some length {i}")),
        text(format!("{}.{:02}", 10_000 + i % 90_000, i % 100)),
        text(format!(
            "2024-03-01 12:34:{:02}.{:06}+00",
            i % 60,
            i % 1_000_000
        )),
        text(format!("a0eebc99-9c0b-4ef8-bb6d-{:012x}", i)),
        text(if i.is_multiple_of(2) { "t" } else { "f" }.to_string()),
        text(format!("{{\"a\": {i}, \"b\": [true, null, \"x\"]}}")),
        text("3.141592653589793".to_string()),
        text(format!("2024-03-{:02}", 1 + i % 28)),
        text(format!("{}", i % 1000)),
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut events: u64 = 200_000;
    let mut out_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => events = args.next().ok_or("--events N")?.parse()?,
            "--out" => out_dir = Some(std::path::PathBuf::from(args.next().ok_or("--out DIR")?)),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let encoder = TableEncoder::new(relation())?;
    let mut payloads = Vec::with_capacity(usize::try_from(events)?);
    for i in 0..events {
        let source = Source {
            database: "shop".into(),
            schema: "public".into(),
            table: "bench".into(),
            xid: 1000 + i64::try_from(i / 100)?,
            commit_lsn: Lsn(0x1_0000_0000 + (i / 100) * 4096),
            lsn: Lsn(0x1_0000_0000 + i * 40),
            commit_ts_micros: 1_709_296_496_000_000 + i64::try_from(i)?,
            ordinal: i % 100,
            last: i % 100 == 99,
            sent_at_micros: 1_709_296_496_000_100 + i64::try_from(i)?,
        };
        payloads.push(encoder.encode(Op::Insert, &source, None, Some(&row(i)))?);
    }
    let schema = EventSchema::from_json(encoder.fingerprint(), encoder.schema_json())?;
    let bytes: usize = payloads.iter().map(Vec::len).sum();

    // Warm up, then the best of three passes over every message on this one thread.
    for p in payloads.iter().take(10_000) {
        std::hint::black_box(schema.decode_event(p)?);
    }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        for p in &payloads {
            std::hint::black_box(schema.decode_event(std::hint::black_box(p))?);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("schema.json"), encoder.schema_json())?;
        let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join("payloads.bin"))?);
        for p in &payloads {
            file.write_all(&u32::try_from(p.len())?.to_le_bytes())?;
            file.write_all(p)?;
        }
        file.flush()?;
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "rust_client_decode",
            "events": events,
            "mean_event_bytes": bytes as f64 / events as f64,
            "seconds": best,
            "events_per_second": events as f64 / best,
            "threads": 1,
        })
    );
    Ok(())
}
