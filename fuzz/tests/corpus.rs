//! The committed seed corpora (`fuzz/corpus/<target>/`): where they come from and a check
//! that every seed is a valid input that reaches past its target's first rejection.
//!
//! * `committed_seeds_are_valid` (run with `cargo test` in `fuzz/`): every pgoutput seed
//!   decodes, every text seed parses and round-trips, every single-object seed decodes.
//! * `regenerate_seed_corpora` (ignored; `cargo test -- --ignored regenerate`) rewrites the
//!   corpora from a throwaway PostgreSQL cluster (the workspace's test harness starts one):
//!   real pgoutput messages taken with `pg_logical_slot_get_binary_changes` (text and binary
//!   column formats), PostgreSQL's text output of edge values under several `TimeZone` and
//!   `IntervalStyle` settings, and single-object bodies that the producer's fast path writes
//!   for the captured rows.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use walbrook_fuzz::{same, schemas, text};
use walbrook_harness::{PgServer, TestDb};
use walbrook_pgtype_avro::{ColumnValue as AvroColumn, parse_text, render_text};
use walbrook_producer::pgoutput::{ColumnValue, Message, Tuple, decode};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(corpus(target))
        .unwrap_or_else(|e| panic!("corpus/{target}: {e}"))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn committed_seeds_are_valid() {
    let pgoutput = seeds("pgoutput_decode");
    assert!(pgoutput.len() >= 24, "{} pgoutput seeds", pgoutput.len());
    for (name, data) in &pgoutput {
        let m = decode(Bytes::copy_from_slice(data)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&walbrook_fuzz::pgoutput::encode(&m), data, "{name}");
    }

    let types = text::types();
    let texts = seeds("text_parsers");
    assert!(texts.len() >= 24, "{} text seeds", texts.len());
    let mut covered = BTreeSet::new();
    for (name, data) in &texts {
        let (name_ty, ty, typmod) = &types[usize::from(data[0]) % types.len()];
        assert!(name.starts_with(name_ty), "{name} selects {name_ty}");
        covered.insert(*name_ty);
        let t = std::str::from_utf8(&data[1..]).unwrap();
        let v = parse_text(ty, *typmod, t).unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = render_text(ty, &v).unwrap().unwrap();
        assert!(same(&parse_text(ty, *typmod, &r).unwrap(), &v), "{name}");
    }
    let missing: Vec<_> = types
        .iter()
        .map(|t| t.0)
        .filter(|n| !covered.contains(n))
        .collect();
    assert!(missing.is_empty(), "no text seed for {missing:?}");

    let records = schemas::all();
    let objects = seeds("single_object");
    assert!(objects.len() >= 24, "{} single-object seeds", objects.len());
    let mut covered = BTreeSet::new();
    for (name, data) in &objects {
        let r = &records[usize::from(data[0]) % records.len()];
        assert!(name.starts_with(&r.label), "{name} selects {}", r.label);
        covered.insert(r.label.clone());
        r.schema
            .decode_body(&data[1..])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_eq!(covered.len(), records.len(), "a seed for every record");
}

// ---- regeneration ------------------------------------------------------------------------

const SETUP: &str = r#"
CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN public.price AS numeric(5,1);
CREATE TYPE public.pair AS (n int4, label text, days date[]);
CREATE TYPE public.fuzz_pair AS (n int4, label text, "when" tstzrange);
CREATE TABLE orders (id int8 PRIMARY KEY, name text, amount numeric(10,2), at timestamptz,
                     uid uuid, tags int4[]);
ALTER TABLE orders ALTER COLUMN name SET STORAGE EXTERNAL;
CREATE TABLE scalars (b bool NOT NULL, i2 int2, i4 int4, o oid, x8 xid8, lsn pg_lsn,
                      f4 float4, f8 float8, n numeric, ba bytea, d date, t time, tz timetz,
                      ts timestamp, iv interval, j jsonb, pt point);
ALTER TABLE scalars REPLICA IDENTITY FULL;
CREATE SCHEMA "Sales Data";
CREATE TABLE "Sales Data"."line-items" (sku text NOT NULL, r int4range, tr tstzrange,
    mr int4multirange, nums numeric(6,3)[], texts text[], price public.price,
    mood public.mood, pair public.pair, stamps timestamptz[]);
CREATE UNIQUE INDEX line_items_sku ON "Sales Data"."line-items" (sku);
ALTER TABLE "Sales Data"."line-items" REPLICA IDENTITY USING INDEX line_items_sku;
CREATE TABLE misc (k int PRIMARY KEY, v varchar(20));
CREATE TABLE misc_child (k int REFERENCES misc);
"#;

/// One transaction each (psql runs a multi-statement string as one transaction).
const CHANGES: &[&str] = &[
    r#"INSERT INTO orders VALUES
        (1, 'first', 9.99, '2024-02-29 12:34:56.789+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}'),
        (2, NULL, -0.01, 'infinity', NULL, '{}'),
        (3, repeat('x', 2500), 99999999.99, '-infinity', '00000000-0000-0000-0000-000000000000', '[0:1]={7,8}'),
        (4, 'multi dim, "quoted"', 0, '0044-03-15 12:00:00+00 BC', NULL, '{{1,2},{3,4}}')"#,
    r#"INSERT INTO scalars VALUES
        (true, -32768, 2147483647, 4294967295, '18446744073709551615', 'FFFFFFFF/FFFFFFFF',
         'NaN', '-Infinity', 'NaN', '\x00ff10', 'infinity', '24:00:00', '23:59:59.999999+15:59',
         '294246-12-31 23:59:59.999999',
         '178956970 years 7 mons 2147483647 days 2562047788:00:54.775807',
         '{"a": 1.000000000000000000001, "b": [null, "é"]}', '(1.5,-2)'),
        (false, 0, -1, 0, '0', '0/0', '1e-45', '1.7976931348623157e+308',
         '-123456789012345678901234567890.000000000001', '', '4714-11-24 BC', '00:00',
         '00:00:00-15:59', '4714-11-24 00:00:00 BC', '-1 years -2 mons +3 days -04:05:06', '[]',
         '(0,0)'),
        (true, NULL, NULL, NULL, NULL, NULL, '-0', '3.4028235e+38', 'Infinity', NULL,
         '-infinity', NULL, NULL, '-infinity', '-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807',
         'null', NULL)"#,
    r#"INSERT INTO "Sales Data"."line-items" VALUES
        ('a-1', '[1,10)', '["2020-01-01 00:00:00+00","2021-01-01 00:00:00+00")', '{[1,3), [5,7)}',
         '{1.5,NULL,-999.999}', '{"NULL",NULL,"a \"b\" \\c","",é}', 1234.5, 'happy',
         ROW(1, 'x, "y"', '{2020-01-01,infinity}'), '{infinity,"2020-01-01 00:00:00+00"}'),
        ('empty', 'empty', '(,)', '{}', '{}', '{}', NULL, 'sad', ROW(NULL, NULL, NULL), NULL),
        ('b 2', '(,5]', '[-infinity,infinity]', '{(,0), [10,)}', '[2:3]={0.001,999.999}',
         '{{a,b},{c,d}}', -9999.9, 'ok', ROW(-2147483648, '', '{}'), '{}')"#,
    "UPDATE orders SET amount = amount - 1 WHERE id = 3",
    "UPDATE orders SET id = 30, name = 'renamed' WHERE id = 4",
    "UPDATE scalars SET i2 = 1 WHERE i2 = 0",
    r#"UPDATE "Sales Data"."line-items" SET sku = 'a-2', mood = NULL WHERE sku = 'a-1'"#,
    "DELETE FROM orders WHERE id = 1",
    "DELETE FROM scalars WHERE i2 IS NULL",
    r#"DELETE FROM "Sales Data"."line-items" WHERE sku = 'empty'"#,
    "INSERT INTO misc VALUES (1, 'one'), (2, NULL)",
    "TRUNCATE misc, misc_child",
    "TRUNCATE misc CASCADE",
    "TRUNCATE orders RESTART IDENTITY",
    "SELECT pg_logical_emit_message(true, 'walbrook', 'heartbeat')",
    r"SELECT pg_logical_emit_message(false, 'walbrook.raw', '\x00ff'::bytea)",
    "SELECT pg_replication_origin_session_setup('fuzz_origin');
     BEGIN;
     SELECT pg_replication_origin_xact_setup('0/ABCDEF', now());
     INSERT INTO misc VALUES (3, 'from an origin');
     COMMIT;
     SELECT pg_replication_origin_session_reset();",
];

/// Edge values per text type (SQL literals), by the names of `walbrook_fuzz::text::types`.
const TEXT_VALUES: &[(&str, &str, &[&str])] = &[
    (
        "int4_array",
        "int4[]",
        &[
            "'{1,NULL,-2147483648}'",
            "'{}'",
            "'[0:1][-2:-1]={{1,2},{3,4}}'",
            "'{{{1}},{{2}}}'",
        ],
    ),
    (
        "text_array",
        "text[]",
        &[
            r#"'{"NULL",NULL,"a \"b\" \\c","",  x y  ,é}'"#,
            "ARRAY['{', '}', ',', ' ', E'\\n', 'ünï€😀']",
            "'{{a,b},{c,d}}'",
        ],
    ),
    (
        "numeric_array",
        "numeric(10,2)[]",
        &["'{1.5,NULL,-99999999.99}'", "'{NaN,NULL}'", "'[5:5]={0}'"],
    ),
    (
        "numeric",
        "numeric",
        &[
            "'-123456789012345678901234567890.000000000001'",
            "'0.000'",
            "'NaN'",
            "'-Infinity'",
            "'1e-300'",
            "'-0.5'",
        ],
    ),
    (
        "interval",
        "interval",
        &[
            "'1 year 2 mons 3 days 04:05:06.789'",
            "'-1 years -2 mons +3 days -04:05:06'",
            "'178956970 years 7 mons 2147483647 days 2562047788:00:54.775807'",
            "'-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807'",
            "'0'",
            "'-0.000001 seconds'",
        ],
    ),
    (
        "int4range",
        "int4range",
        &["'[1,10)'", "'empty'", "'(,5]'", "'[-2147483648,)'"],
    ),
    (
        "tstzrange",
        "tstzrange",
        &[
            "'[2020-01-01 00:00:00+00,2021-01-01 00:00:00+00)'",
            "'[-infinity,infinity]'",
            "'(,)'",
            "'empty'",
        ],
    ),
    (
        "int4multirange",
        "int4multirange",
        &["'{}'", "'{[1,3), [5,7)}'", "'{(,0), [10,)}'"],
    ),
    ("point", "point", &["'(1.5,-2)'", "'(NaN,Infinity)'"]),
    ("box", "box", &["'((0,0),(1,1))'", "'(-1e300,2),(3,4)'"]),
    (
        "path",
        "path",
        &["'[(0,0),(1,1),(2,0)]'", "'((0,0),(1,1))'"],
    ),
    ("polygon", "polygon", &["'((0,0),(1,1),(1,0))'"]),
    ("circle", "circle", &["'<(0,0),1.5>'"]),
    ("lseg", "lseg", &["'[(0,0),(1,1)]'"]),
    ("line", "line", &["'{1,-1,0}'"]),
    (
        "timestamptz",
        "timestamptz",
        &[
            "'2024-02-29 12:34:56.789+00'",
            "'0044-03-15 12:00:00+00 BC'",
            "'infinity'",
            "'-infinity'",
            "'294246-12-31 23:59:59.999999+00'",
            "'1900-01-01 00:00:00+00'",
        ],
    ),
    (
        "date",
        "date",
        &[
            "'2023-01-23'",
            "'4714-11-24 BC'",
            "'5874897-12-31'",
            "'infinity'",
        ],
    ),
    ("bit", "bit(8)", &["B'10100101'"]),
    ("inet", "inet", &["'192.168.0.1/24'", "'::ffff:1.2.3.4'"]),
    (
        "tsvector",
        "tsvector",
        &["'a fat cat:1A,2B sat'", "$$'don''t' 'x y'$$"],
    ),
    (
        "timestamp",
        "timestamp",
        &[
            "'2019-04-12 02:10:31.782068'",
            "'4714-11-24 00:00:00 BC'",
            "'-infinity'",
        ],
    ),
    ("time", "time", &["'24:00:00'", "'12:30:00.5'", "'00:00'"]),
    (
        "timetz",
        "timetz",
        &[
            "'12:30:00-05:30'",
            "'00:00:00+15:59'",
            "'23:59:59.999999-15:59'",
        ],
    ),
    (
        "float4",
        "float4",
        &["'1e-45'", "'3.4028235e+38'", "'-0'", "'NaN'", "'0.1'"],
    ),
    (
        "float8",
        "float8",
        &[
            "'1.7976931348623157e+308'",
            "'5e-324'",
            "'-Infinity'",
            "'0.1'",
        ],
    ),
    ("bytea", "bytea", &[r"'\x00ff10'", "''"]),
    (
        "int8",
        "int8",
        &["'-9223372036854775808'", "'9223372036854775807'"],
    ),
    ("uuid", "uuid", &["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"]),
    (
        "pg_lsn",
        "pg_lsn",
        &["'16/B374D848'", "'FFFFFFFF/FFFFFFFF'"],
    ),
    (
        "box_array",
        "box[]",
        &["'{(1,1),(0,0);(2,2),(1,1)}'", "'{NULL}'"],
    ),
    (
        "interval_array",
        "interval[]",
        &["ARRAY['1 day'::interval, '-00:00:01', NULL]"],
    ),
    (
        "daterange",
        "daterange",
        &["'[2020-01-01,2020-02-01)'", "'[,infinity]'"],
    ),
    ("numrange", "numrange", &["'[1.5,NaN]'", "'(-1e-5,0]'"]),
    (
        "tsmultirange",
        "tsmultirange",
        &["'{[2020-01-01 00:00:00,2020-01-02 00:00:00), [2021-01-01 00:00:00,)}'"],
    ),
    (
        "tstzrange_array",
        "tstzrange[]",
        &["ARRAY['[2020-01-01 00:00:00+00,infinity)'::tstzrange, 'empty', NULL]"],
    ),
    (
        "int4multirange_array",
        "int4multirange[]",
        &["ARRAY['{[1,3), [5,7)}'::int4multirange, '{}']"],
    ),
    ("float8_array", "float8[]", &["'{NaN,-0,1e-310,Infinity}'"]),
    (
        "bytea_array",
        "bytea[]",
        &[r#"ARRAY['\x00'::bytea, '', NULL]"#],
    ),
    (
        "composite",
        "public.fuzz_pair",
        &[
            r#"ROW(1, 'a "b", c', '[2020-01-01 00:00:00+00,)')"#,
            "ROW(NULL, '', 'empty')",
        ],
    ),
];

/// (TimeZone, IntervalStyle, types whose output depends on them) for the later passes.
const TEXT_PASSES: &[(&str, &str, &[&str])] = &[
    (
        "Asia/Kolkata",
        "iso_8601",
        &[
            "interval",
            "interval_array",
            "timestamptz",
            "tstzrange",
            "composite",
        ],
    ),
    (
        "Europe/Amsterdam",
        "postgres",
        &["timestamptz", "tstzrange_array"],
    ),
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn query_hex(db: &TestDb<'_>, sql: &str) -> Vec<Vec<u8>> {
    let out = db.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(unhex)
        .collect()
}

fn clear(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for e in fs::read_dir(dir).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Begin(_) => "begin",
        Message::Commit(_) => "commit",
        Message::Origin(_) => "origin",
        Message::Relation(_) => "relation",
        Message::Type(_) => "type",
        Message::Insert(_) => "insert",
        Message::Update(_) => "update",
        Message::Delete(_) => "delete",
        Message::Truncate(_) => "truncate",
        Message::LogicalMessage(_) => "message",
    }
}

fn avro_values(t: &Tuple) -> Option<Vec<AvroColumn<'_>>> {
    t.0.iter()
        .map(|v| match v {
            ColumnValue::Null => Some(AvroColumn::Null),
            ColumnValue::UnchangedToast => Some(AvroColumn::Unchanged),
            ColumnValue::Text(b) => std::str::from_utf8(b).ok().map(AvroColumn::Text),
            ColumnValue::Binary(_) => None,
        })
        .collect()
}

#[test]
#[ignore = "rewrites fuzz/corpus from a throwaway PostgreSQL; run by hand"]
fn regenerate_seed_corpora() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("fuzz_seeds");
    let name = db.name().to_owned();
    db.psql(&format!(
        "ALTER DATABASE \"{name}\" SET datestyle = 'ISO, MDY';
         ALTER DATABASE \"{name}\" SET timezone = 'UTC';
         ALTER DATABASE \"{name}\" SET intervalstyle = 'postgres';
         ALTER DATABASE \"{name}\" SET extra_float_digits = 1;"
    ))
    .unwrap();
    db.psql(SETUP).unwrap();
    let (slot, publication) = (db.slot_name(), db.publication_name());
    let bin_slot = format!("{slot}_bin");
    db.psql(&format!("CREATE PUBLICATION {publication} FOR ALL TABLES"))
        .unwrap();
    for s in [&slot, &bin_slot] {
        db.psql(&format!(
            "SELECT pg_create_logical_replication_slot('{s}', 'pgoutput')"
        ))
        .unwrap();
    }
    db.psql("SELECT pg_replication_origin_create('fuzz_origin')")
        .unwrap();
    for sql in CHANGES {
        db.psql(sql).unwrap();
    }

    // pgoutput messages, text and binary column formats.
    let dir = corpus("pgoutput_decode");
    clear(&dir);
    let mut seen = BTreeSet::new();
    let mut text_messages = Vec::new();
    for (s, extra) in [(&slot, ""), (&bin_slot, ", 'binary', 'true'")] {
        let sql = format!(
            "SELECT encode(data, 'hex') FROM pg_logical_slot_get_binary_changes('{s}', NULL, NULL, \
             'proto_version', '1', 'publication_names', '{publication}', 'messages', 'true'{extra})"
        );
        for (i, data) in query_hex(&db, &sql).into_iter().enumerate() {
            let m = decode(Bytes::from(data.clone())).expect("PostgreSQL's messages decode");
            if extra.is_empty() {
                text_messages.push(m.clone());
            }
            // Begin/commit pairs repeat with other numbers: keep a few.
            let k = kind(&m);
            if matches!(k, "begin" | "commit") && i > 12 {
                continue;
            }
            if seen.insert(data.clone()) {
                let fmt = if extra.is_empty() { "text" } else { "binary" };
                fs::write(dir.join(format!("{k}-{fmt}-{i:03}")), &data).unwrap();
            }
        }
    }
    assert!(seen.len() >= 24, "{} pgoutput seeds", seen.len());

    // Single-object bodies written by the producer's fast path for the captured rows.
    let records = schemas::all();
    let index: HashMap<String, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.label.clone(), i))
        .collect();
    let dir = corpus("single_object");
    clear(&dir);
    let mut tables = HashMap::new();
    let mut n = 0;
    for m in &text_messages {
        let (relation, rows): (_, Vec<(&str, &Tuple)>) = match m {
            Message::Relation(r) => {
                tables.insert(r.id, r.name.clone());
                continue;
            }
            Message::Insert(i) => (i.relation, vec![("after", &i.new), ("row", &i.new)]),
            Message::Update(u) => {
                let mut v = vec![("after", &u.new)];
                if let Some(o) = &u.old {
                    v.push(("before", &o.tuple));
                }
                (u.relation, v)
            }
            Message::Delete(d) => (d.relation, vec![("before", &d.old.tuple)]),
            _ => continue,
        };
        let Some(table) = tables.get(&relation) else {
            continue;
        };
        for (kind, tuple) in rows {
            let label = format!("{table}.{kind}");
            let Some(&i) = index.get(&label) else {
                continue;
            };
            let values = avro_values(tuple).expect("text format");
            let mut body = vec![u8::try_from(i).unwrap()];
            records[i]
                .schema
                .write_text_body(&values, &mut body)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            fs::write(dir.join(format!("{label}-{n:03}")), &body).unwrap();
            n += 1;
        }
    }

    // PostgreSQL's text output of edge values.
    let types = text::types();
    let dir = corpus("text_parsers");
    clear(&dir);
    let mut n = 0;
    let mut write_texts = |db: &TestDb<'_>, only: Option<&[&str]>| {
        for (tname, sql_type, literals) in TEXT_VALUES {
            if only.is_some_and(|o| !o.contains(tname)) {
                continue;
            }
            let selector = types
                .iter()
                .position(|t| t.0 == *tname)
                .unwrap_or_else(|| panic!("{tname} is not a text_parsers type"));
            let rows: Vec<String> = literals
                .iter()
                .map(|l| format!("(({l})::{sql_type})"))
                .collect();
            let sql = format!(
                "SELECT encode(convert_to(x::text, 'UTF8'), 'hex') FROM (VALUES {}) t(x)",
                rows.join(", ")
            );
            for text in query_hex(db, &sql) {
                let mut seed = vec![u8::try_from(selector).unwrap()];
                seed.extend_from_slice(&text);
                fs::write(dir.join(format!("{tname}-{n:03}")), &seed).unwrap();
                n += 1;
            }
        }
    };
    write_texts(&db, None);
    for (zone, style, only) in TEXT_PASSES {
        db.psql(&format!(
            "ALTER DATABASE \"{name}\" SET timezone = '{zone}';
             ALTER DATABASE \"{name}\" SET intervalstyle = '{style}';"
        ))
        .unwrap();
        write_texts(&db, Some(only));
    }
    db.psql("SELECT pg_replication_origin_drop('fuzz_origin')")
        .unwrap();
    committed_seeds_are_valid();
}
