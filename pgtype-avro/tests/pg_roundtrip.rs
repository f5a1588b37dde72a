//! PostgreSQL-oracle round trip: PostgreSQL renders each value as text (what pgoutput sends);
//! we parse it, encode an Avro single-object message, decode it, render PostgreSQL input text,
//! and PostgreSQL checks that the result `IS NOT DISTINCT FROM` the original and has the same
//! text form. Types come from the catalogs (`format_type`, `pg_type`, `pg_enum`, …).

use std::collections::HashMap;

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use walbrook_pgtype_avro::types::BUILTIN_RANGES;
use walbrook_pgtype_avro::{
    Builtin, ColumnDesc, ColumnValue, CompositeField, PgType, RelationDesc, ReplicaIdentity,
    TableSchemas,
};

mod type_cases;

use type_cases::{SETUP, cases};

async fn simple(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

fn short(s: &str) -> String {
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s.to_owned()
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Resolves a type OID from the catalogs, as the producer will.
fn resolve<'a>(
    client: &'a Client,
    oid: u32,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = PgType> + 'a>> {
    Box::pin(async move {
        if let Some(t) = PgType::from_builtin_oid(oid) {
            return t;
        }
        let row = &simple(
            client,
            &format!(
                "SELECT typtype, typcategory, typelem, typbasetype, typtypmod, typrelid, \
                 format_type(oid, NULL) FROM pg_type WHERE oid = {oid}"
            ),
        )
        .await[0];
        let get = |i: usize| row[i].clone().unwrap_or_default();
        let name = get(6);
        let num = |i: usize| get(i).parse::<i64>().unwrap();
        match (get(0).as_str(), get(1).as_str()) {
            (_, "A") if num(2) != 0 => PgType::Array {
                oid,
                element: Box::new(resolve(client, num(2) as u32).await),
            },
            ("e", _) => PgType::Enum {
                oid,
                name,
                labels: simple(
                    client,
                    &format!(
                        "SELECT enumlabel FROM pg_enum WHERE enumtypid = {oid} ORDER BY enumsortorder"
                    ),
                )
                .await
                .into_iter()
                .map(|r| r[0].clone().unwrap_or_default())
                .collect(),
            },
            ("d", _) => PgType::Domain {
                oid,
                name,
                base: Box::new(resolve(client, num(3) as u32).await),
                base_typmod: num(4) as i32,
            },
            ("c", _) => {
                let attrs = simple(
                    client,
                    &format!(
                        "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = {} \
                         AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        num(5)
                    ),
                )
                .await;
                let mut fields = Vec::new();
                for a in attrs {
                    let a: Vec<String> = a.into_iter().map(Option::unwrap_or_default).collect();
                    fields.push(CompositeField {
                        name: a[0].clone(),
                        pg_type: resolve(client, a[1].parse().unwrap()).await,
                        typmod: a[2].parse().unwrap(),
                    });
                }
                PgType::Composite { oid, name, fields }
            }
            ("r", _) => {
                let sub = simple(
                    client,
                    &format!("SELECT rngsubtype FROM pg_range WHERE rngtypid = {oid}"),
                )
                .await;
                let sub: u32 = sub[0][0].as_deref().unwrap().parse().unwrap();
                PgType::Range {
                    oid,
                    name,
                    subtype: Box::new(resolve(client, sub).await),
                }
            }
            ("m", _) => {
                let r = simple(
                    client,
                    &format!("SELECT rngtypid FROM pg_range WHERE rngmultitypid = {oid}"),
                )
                .await;
                let r: u32 = r[0][0].as_deref().unwrap().parse().unwrap();
                PgType::Multirange {
                    oid,
                    name,
                    range: Box::new(resolve(client, r).await),
                }
            }
            _ => PgType::Other { oid, name },
        }
    })
}

/// A value's binary form as the server sent it.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The binary forms of `table`'s values (a binary query result, the same bytes as
/// `COPY … (FORMAT binary)`) give the same typed values and the same Avro bytes as their
/// text forms, and `pg_binary::send` of the typed value gives PostgreSQL's binary form
/// back. Returns how many values were checked.
async fn check_binary_forms(
    client: &Client,
    table: &str,
    ty: &str,
    column: &ColumnDesc,
    schemas: &TableSchemas,
    texts: &[Vec<Option<String>>],
) -> usize {
    if !walbrook_pgtype_avro::pg_binary::reads(&column.pg_type) {
        return 0;
    }
    let rows = client
        .query(&format!("SELECT v FROM {table} ORDER BY id"), &[])
        .await
        .unwrap_or_else(|e| panic!("{ty}: {e:?}"));
    assert_eq!(rows.len(), texts.len(), "{ty}");
    for (row, text) in rows.iter().zip(texts) {
        let id = text[0].as_deref().unwrap();
        let raw: Option<Raw<'_>> = row.get(0);
        let (from_text, from_binary) = match (text[1].as_deref(), &raw) {
            (Some(t), Some(b)) => (ColumnValue::Text(t), ColumnValue::Binary(b.0)),
            (None, None) => (ColumnValue::Null, ColumnValue::Null),
            other => panic!("{ty}: NULL in one form only: {other:?}", other = other.0),
        };
        if let (Some(t), Some(b)) = (text[1].as_deref(), &raw) {
            let typed = walbrook_pgtype_avro::parse_binary(&column.pg_type, column.typmod, b.0)
                .unwrap_or_else(|e| panic!("{ty} {t:?}: {e}"));
            let reference =
                walbrook_pgtype_avro::parse_text(&column.pg_type, column.typmod, t).unwrap();
            assert_eq!(format!("{typed:?}"), format!("{reference:?}"), "{ty} {t:?}");
            // And back: the binary form we send is the one PostgreSQL sends.
            let mut sent = Vec::new();
            walbrook_pgtype_avro::pg_binary::send(&column.pg_type, &reference, &mut sent)
                .unwrap_or_else(|e| panic!("{ty} {t:?}: {e}"));
            assert_eq!(sent, b.0, "{ty} {t:?}: sent form");
        }
        for schema in [
            &schemas.after,
            schemas.before.as_ref().unwrap(),
            &schemas.row,
        ] {
            let (mut expected, mut got) = (Vec::new(), Vec::new());
            schema
                .write_text_single_object(&[ColumnValue::Text(id), from_text], &mut expected)
                .unwrap();
            schema
                .write_text_single_object(&[ColumnValue::Text(id), from_binary], &mut got)
                .unwrap_or_else(|e| panic!("{ty} {:?}: {e}", text[1]));
            assert_eq!(got, expected, "{ty} {:?}", text[1]);
            let value = schema
                .encode_text(&[ColumnValue::Text(id), from_binary])
                .unwrap_or_else(|e| panic!("{ty} {:?}: {e}", text[1]));
            assert_eq!(schema.to_single_object(&value).unwrap(), expected, "{ty}");
        }
    }
    rows.len()
}

async fn connect(url: &str, interval_style: &str) -> Client {
    connect_tz(url, interval_style, "UTC").await
}

async fn connect_tz(url: &str, interval_style: &str, time_zone: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "SET TimeZone = '{time_zone}'; SET DateStyle = 'ISO'; SET IntervalStyle = '{interval_style}'; \
             SET extra_float_digits = 3; SET bytea_output = 'hex'"
        ))
        .await
        .unwrap();
    client
}

async fn run_round_trip(
    interval_style: &str,
    time_zone: &str,
    only: Option<&dyn Fn(&str) -> bool>,
) -> (usize, usize) {
    let pg = walbrook_harness::PgServer::shared();
    let db = pg.fresh_database("pgtype_rt");
    let client = connect_tz(&db.url(), interval_style, time_zone).await;
    client.batch_execute(SETUP).await.unwrap();
    let (mut checked, mut binary) = (0, 0);
    let mut failures = Vec::new();
    for (k, (ty, values)) in cases().into_iter().enumerate() {
        if only.is_some_and(|f| !f(ty)) {
            continue;
        }
        let table = format!("t{k}");
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id int4 PRIMARY KEY, v {ty}); \
                 ALTER TABLE {table} REPLICA IDENTITY FULL;"
            ))
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e:?}"));
        let rows: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("({i}, {v})"))
            .collect();
        client
            .batch_execute(&format!("INSERT INTO {table} VALUES {}", rows.join(", ")))
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e:?}"));
        let att = &simple(
            &client,
            &format!(
                "SELECT atttypid, atttypmod, format_type(atttypid, atttypmod), attnotnull \
                 FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'v'"
            ),
        )
        .await[0];
        let oid: u32 = att[0].as_deref().unwrap().parse().unwrap();
        let typmod: i32 = att[1].as_deref().unwrap().parse().unwrap();
        let type_name = att[2].clone().unwrap();
        let relation = RelationDesc {
            schema: "public".into(),
            table: table.clone(),
            columns: vec![
                ColumnDesc {
                    name: "id".into(),
                    pg_type: PgType::Builtin(Builtin::Int4),
                    type_name: "integer".into(),
                    typmod: -1,
                    not_null: true,
                    is_key: true,
                    backfill: Default::default(),
                },
                ColumnDesc {
                    name: "v".into(),
                    pg_type: resolve(&client, oid).await,
                    type_name: type_name.clone(),
                    typmod,
                    not_null: false,
                    is_key: true,
                    backfill: Default::default(),
                },
            ],
            replica_identity: ReplicaIdentity::Full,
        };
        let schemas = TableSchemas::new(&relation).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let texts = simple(&client, &format!("SELECT id, v FROM {table} ORDER BY id")).await;
        assert_eq!(texts.len(), values.len(), "{ty}");
        binary +=
            check_binary_forms(&client, &table, ty, &relation.columns[1], &schemas, &texts).await;
        let mut rendered = Vec::new();
        for row in &texts {
            let id = row[0].as_deref().unwrap();
            let v = match row[1].as_deref() {
                Some(t) => ColumnValue::Text(t),
                None => ColumnValue::Null,
            };
            for schema in [
                &schemas.after,
                schemas.before.as_ref().unwrap(),
                &schemas.row,
            ] {
                let avro = schema
                    .encode_text(&[ColumnValue::Text(id), v])
                    .unwrap_or_else(|e| panic!("{ty} {:?}: {e}", row[1]));
                let bytes = schema.to_single_object(&avro).unwrap();
                // The direct writer must be byte-identical to apache-avro's validating writer.
                let reference = walbrook_pgtype_avro::fingerprint::encode_single_object(
                    schema.schema(),
                    schema.fingerprint(),
                    &avro,
                )
                .unwrap_or_else(|e| panic!("{ty} {:?}: {e}", row[1]));
                assert_eq!(bytes, reference, "{ty} {:?}", row[1]);
                let mut direct = Vec::new();
                schema
                    .write_text_single_object(&[ColumnValue::Text(id), v], &mut direct)
                    .unwrap();
                assert_eq!(direct, reference, "{ty} {:?}", row[1]);
                let back = schema.from_single_object(&bytes).unwrap();
                let decoded = schema
                    .decode_value(&back)
                    .unwrap_or_else(|e| panic!("{ty} {:?}: {e}", row[1]));
                let text = schema.render_text(&decoded).unwrap();
                // The direct reader gives exactly what apache-avro + conversion give.
                let direct = schema.decode_single_object(&bytes).unwrap();
                assert_eq!(format!("{direct:?}"), format!("{decoded:?}"), "{ty}");
                for cut in [0, bytes.len() / 2, bytes.len() - 1] {
                    assert!(schema.decode_single_object(&bytes[..cut]).is_err(), "{ty}");
                }
                // Typed values (the snapshot/client path) encode to the same Avro value.
                let typed: Vec<_> = decoded.iter().map(|(_, v)| v.clone()).collect();
                let again = schema.encode_values(&typed).unwrap();
                assert_eq!(schema.to_single_object(&again).unwrap(), bytes, "{ty}");
                if schema.kind() == walbrook_pgtype_avro::RecordKind::After {
                    rendered.push((id.to_owned(), text[1].clone()));
                } else {
                    assert_eq!(Some(&text[1]), rendered.last().map(|r| &r.1), "{ty}");
                }
            }
        }
        let values_sql: Vec<String> = rendered
            .iter()
            .map(|(id, t)| {
                format!(
                    "({id}, {})",
                    t.as_deref()
                        .map(quote)
                        .unwrap_or_else(|| "NULL::text".into())
                )
            })
            .collect();
        let join = format!(
            "FROM {table} t JOIN (VALUES {}) r(id, txt) USING (id)",
            values_sql.join(", ")
        );
        let text_check = format!(
            "SELECT t.id, t.v::text, r.txt {join} \
             WHERE t.v::text IS DISTINCT FROM (r.txt::{type_name})::text"
        );
        for bad in simple(&client, &text_check).await {
            let bad: Vec<String> = bad.iter().map(|x| short(&format!("{x:?}"))).collect();
            failures.push(format!("{ty}: text differs: {bad:?}"));
        }
        let eq_check = format!(
            "SELECT t.id, t.v::text, r.txt {join} WHERE t.v IS DISTINCT FROM r.txt::{type_name}"
        );
        match client.simple_query(&eq_check).await {
            Ok(msgs) => {
                for m in msgs {
                    if let SimpleQueryMessage::Row(r) = m {
                        failures.push(format!(
                            "{ty}: not equal: {} vs {}",
                            short(&format!("{:?}", r.get(1))),
                            short(&format!("{:?}", r.get(2)))
                        ));
                    }
                }
            }
            // Types without an equality operator (json, xml, point, …): the text check above
            // is the oracle.
            Err(e) => {
                let msg = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default();
                assert!(
                    msg.contains("equality operator") || msg.contains("operator does not exist"),
                    "{ty}: {e:?}"
                );
            }
        }
        checked += rendered.len();
    }
    assert!(
        failures.is_empty(),
        "round-trip failures:\n{}",
        failures.join("\n")
    );
    (checked, binary)
}

#[tokio::test]
async fn every_type_round_trips_through_avro() {
    let (checked, binary) = run_round_trip("postgres", "UTC", None).await;
    eprintln!("round-tripped {checked} values, {binary} of them also from their binary form");
    assert!(checked > 250, "only {checked} values checked");
    assert!(binary > 100, "only {binary} binary values checked");
}

#[tokio::test]
async fn intervals_round_trip_with_iso_8601_style() {
    let (checked, _) =
        run_round_trip("iso_8601", "UTC", Some(&|t| t.starts_with("interval"))).await;
    assert!(checked >= 10, "only {checked} values checked");
}

#[tokio::test]
async fn time_zones_other_than_utc_are_parsed() {
    // +05:45, a negative half-hour zone, and local mean time offsets with seconds for old dates.
    for tz in ["Asia/Kathmandu", "America/St_Johns", "Europe/Amsterdam"] {
        let only = |t: &str| t.contains("tz") || t.contains("timestamp") || t == "pair";
        let (checked, binary) = run_round_trip("postgres", tz, Some(&only)).await;
        assert!(checked >= 15, "only {checked} values checked in {tz}");
        assert!(binary >= 10, "only {binary} binary values checked in {tz}");
    }
}

#[tokio::test]
async fn builtin_oids_match_the_catalog() {
    let pg = walbrook_harness::PgServer::shared();
    let db = pg.fresh_database("pgtype_oids");
    let client = connect(&db.url(), "postgres").await;
    let rows = simple(&client, "SELECT oid, typname, typarray FROM pg_type").await;
    let catalog: HashMap<u32, (String, u32)> = rows
        .into_iter()
        .map(|r| {
            (
                r[0].as_deref().unwrap().parse().unwrap(),
                (
                    r[1].clone().unwrap(),
                    r[2].as_deref().unwrap().parse().unwrap(),
                ),
            )
        })
        .collect();
    for b in Builtin::ALL {
        let (name, array) = &catalog[&b.oid()];
        assert_eq!(name, b.name(), "{b:?}");
        assert_eq!(*array, b.array_oid(), "{b:?}");
    }
    for &(roid, rname, _, rarr, moid, mname, marr) in BUILTIN_RANGES {
        assert_eq!(catalog[&roid], (rname.to_owned(), rarr));
        assert_eq!(catalog[&moid], (mname.to_owned(), marr));
    }
    // Fixed-length built-ins must not be treated as TOAST-able and vice versa.
    let lens = simple(&client, "SELECT oid, typlen FROM pg_type").await;
    for r in lens {
        let oid: u32 = r[0].as_deref().unwrap().parse().unwrap();
        if let Some(b) = Builtin::from_oid(oid) {
            let varlena = r[1].as_deref() == Some("-1") || r[1].as_deref() == Some("-2");
            assert_eq!(PgType::Builtin(b).is_varlena(), varlena, "{b:?}");
        }
    }
}

#[tokio::test]
async fn unrepresentable_values_are_errors_naming_the_column() {
    let pg = walbrook_harness::PgServer::shared();
    let db = pg.fresh_database("pgtype_unrep");
    let client = connect(&db.url(), "postgres").await;
    let rows = simple(
        &client,
        "SELECT '294276-12-31 23:59:59.999999'::timestamp, \
                '294276-12-31 23:59:59.999999+00'::timestamptz",
    )
    .await;
    for (i, (oid, type_name)) in [
        (1114u32, "timestamp without time zone"),
        (1184, "timestamp with time zone"),
    ]
    .into_iter()
    .enumerate()
    {
        let text = rows[0][i].clone().unwrap();
        let relation = RelationDesc {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![ColumnDesc {
                name: "late".into(),
                pg_type: PgType::from_builtin_oid(oid).unwrap(),
                type_name: type_name.into(),
                typmod: -1,
                not_null: false,
                is_key: false,
                backfill: Default::default(),
            }],
            replica_identity: ReplicaIdentity::Default,
        };
        let s = TableSchemas::new(&relation).unwrap();
        let err = s
            .after
            .encode_text(&[ColumnValue::Text(&text)])
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"late\"")
                && msg.contains(type_name)
                && msg.contains(&format!("oid {oid}")),
            "{msg}"
        );
        assert!(
            s.after
                .write_text_single_object(&[ColumnValue::Text(&text)], &mut Vec::new())
                .is_err()
        );
    }
}
