//! Snapshots against real servers: PostgreSQL, NATS JetStream and a real producer running
//! in-process; read through the SDK and through raw NATS requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use walbrook_client::{
    ChangeEvent, Client, ClientOptions, ErrorKind, FilterOp, Op, PgValue, RowFilter, Snapshot,
    SnapshotRequest, SnapshotStatus, Start, Subscription, value_to_json,
};
use walbrook_harness::{NatsServer, PgServer, TestDb};
use walbrook_producer::config::{ProducerConfig, RawConfig};

const ROOT: &str = "WBSNAP";

struct Setup {
    db: TestDb<'static>,
    nats: NatsServer,
    sql: tokio_postgres::Client,
    shutdown: CancellationToken,
    metrics: walbrook_producer::metrics::Metrics,
    producer:
        Option<tokio::task::JoinHandle<Result<(), walbrook_producer::pipeline::ProducerError>>>,
}

fn config(db: &TestDb<'_>, nats_url: &str, tables: &str, extra: &[(&str, &str)]) -> ProducerConfig {
    let mut vars = vec![
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats_url.to_string()),
        ("WALBROOK_TABLES", tables.to_string()),
        ("WALBROOK_SLOT", db.slot_name()),
        ("WALBROOK_PUBLICATION", db.publication_name()),
        ("WALBROOK_ROOT", ROOT.to_string()),
        ("WALBROOK_HEARTBEAT_INTERVAL", "1s".to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut raw = RawConfig::default();
    raw.apply_env(vars).unwrap();
    raw.validate().unwrap()
}

impl Setup {
    async fn start(prefix: &str, ddl: &str, tables: &str, extra: &[(&str, &str)]) -> Setup {
        let db = PgServer::shared().fresh_database(prefix);
        let nats = NatsServer::start().unwrap();
        let (sql, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        sql.batch_execute(ddl).await.unwrap();
        let shutdown = CancellationToken::new();
        let metrics = walbrook_producer::metrics::Metrics::new();
        let producer = tokio::spawn(walbrook_producer::pipeline::run_with_metrics(
            config(&db, &nats.url(), tables, extra),
            shutdown.clone(),
            metrics.clone(),
        ));
        let setup = Setup {
            db,
            nats,
            sql,
            shutdown,
            metrics,
            producer: Some(producer),
        };
        // Streaming means the snapshot service is up too (it starts before replication).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let active: i64 = setup
                .sql
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
                    &[&setup.db.slot_name()],
                )
                .await
                .unwrap()
                .get(0);
            if active == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the producer never streamed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut setup = setup;
        let nats = setup.raw().await;
        let listing = format!("{ROOT}.{}.rpc.snapshots", setup.db.name());
        while let Err(e) = nats.request(listing.clone(), "{}".into()).await {
            if setup.producer.as_ref().unwrap().is_finished() {
                let ended = setup.producer.take().unwrap().await;
                panic!("the producer stopped: {ended:?}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the snapshot RPC never answered: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        setup
    }

    async fn client(&self) -> Client {
        Client::connect(ClientOptions::new(self.nats.url(), self.db.name()).root(ROOT))
            .await
            .unwrap()
    }

    async fn raw(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url()).await.unwrap()
    }

    fn rpc(&self) -> String {
        format!("{ROOT}.{}.rpc.snapshot", self.db.name())
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(producer) = self.producer.take() {
            tokio::time::timeout(Duration::from_secs(30), producer)
                .await
                .expect("the producer stops")
                .unwrap()
                .unwrap();
        }
    }
}

/// Every row of a snapshot; fails the test on any error.
async fn all_rows(snapshot: &mut Snapshot) -> Vec<ChangeEvent> {
    let mut rows = Vec::new();
    while let Some(row) = tokio::time::timeout(Duration::from_secs(60), snapshot.next())
        .await
        .expect("snapshot progress within 60 s")
    {
        rows.push(row.unwrap());
    }
    rows
}

fn json_row(event: &ChangeEvent) -> serde_json::Value {
    event.after().expect("an after image").to_json()
}

/// creek's `types_data`: every scalar and array type of its test, `numeric(10)`, 1000
/// rows without NULLs; the first is creek's own first row.
const TYPES_DATA: &str = r#"
CREATE TABLE public.types_data (
    bool bool, char char, varchar varchar, bpchar bpchar, date date, float4 float4,
    float8 float8, int2 int2, int4 int4, int8 int8, json json, jsonb jsonb, text text,
    time time, timestamp timestamp, timestamptz timestamptz, uuid uuid PRIMARY KEY,
    "numeric" numeric(10),
    boolarr bool[], chararr char[], varchararr varchar[], bpchararr bpchar[], datearr date[],
    float4arr float4[], float8arr float8[], int2arr int2[], int4arr int4[], int8arr int8[],
    jsonarr json[], jsonbarr jsonb[], textarr text[], timearr time[], timestamparr timestamp[],
    timestamptzarr timestamptz[], uuidarr uuid[], numericarr numeric(10)[]);
INSERT INTO public.types_data VALUES (true, 'c', 'c4ca4238a0', 'c4ca4238a0', '2023-03-27',
    457.15427, 822.7593202410155, 693, 560, 187, '{"data" : "c4ca4238a0b923820dcc509a6f75849b"}',
    '{"data": "c4ca4238a0b923820dcc509a6f75849b"}', 'c4ca4238a0b923820dcc509a6f75849b',
    '07:20:28.719111', '2019-04-12 02:10:31.782068', '2019-02-23 23:16:46.86455+01',
    'ab4ed73c-9b1d-4795-801d-338d6b9fc32e', 447.311834272512, '{f,f,t}', '{e,8}', '{a,bc}',
    '{x,yz}', '{2023-01-23,2023-01-24}', '{0.23,1.5}', '{12.32,-0.5}', '{1,2}', '{3,4,5}',
    '{6,7}', ARRAY['{"a": 1}'::json, '{}'], ARRAY['{"b": [1, 2.50]}'::jsonb, '{}'], '{t,"u v"}',
    '{12:30,13:20}', '{"2020-01-01 10:00:00"}', '{"2020-01-01 10:00:00+02","2021-06-30 23:59:59.999999+00"}',
    '{46145d05-8bc7-403b-8098-1baf99e97b56}', '{231.112,2}');
INSERT INTO public.types_data
SELECT i % 2 = 0, chr(97 + i % 26), left(md5(i::text), 10), left(md5(i::text), 10),
       date '2023-03-27' - i, (i * 1.37)::float4, i * 822.7593202410155, (i % 32000)::int2,
       i * 7, i::bigint * 1000003, json_build_object('data', md5(i::text)),
       jsonb_build_object('data', md5(i::text)), md5(i::text),
       time '07:20:28.719111' + i * interval '1 second',
       timestamp '2019-04-12 02:10:31.782068' + i * interval '1 minute',
       timestamptz '2019-02-23 23:16:46.86455+01' + i * interval '1 hour',
       md5('u' || i)::uuid, i * 447.311834272512,
       ARRAY[i % 2 = 0, false, true], ARRAY[chr(97 + i % 26), 'e']::char[],
       ARRAY[left(md5(i::text), 5), 'x'], ARRAY['ab', 'cd']::bpchar[],
       ARRAY[date '2023-01-23' + i], ARRAY[0.23::float4, i], ARRAY[12.32, i * 0.5],
       ARRAY[i % 100, 1]::int2[], ARRAY[i, 2], ARRAY[i::bigint * 3, 4],
       ARRAY[json_build_object('k', i)], ARRAY[jsonb_build_object('k', i), '{}'],
       ARRAY[md5(i::text), 'text'], ARRAY[time '12:30', time '13:20'],
       ARRAY[timestamp '2020-01-01' + i * interval '1 day'],
       ARRAY[timestamptz '2020-01-01 00:00+02' + i * interval '1 day', now()],
       ARRAY[md5('v' || i)::uuid], ARRAY[i * 231.112, 1]::numeric(10)[]
  FROM generate_series(1, 999) i;
"#;

/// creek's snapshot test (creek.md §13.3 TestSnap): all 1000 rows of `types_data` arrive,
/// then the listing shows the snapshot and reading it again gives the same rows. Values are
/// exact: each row equals, value for value, the after image the change stream publishes for
/// the same row, and creek's first row has the expected typed values.
#[tokio::test]
async fn creek_types_data_snapshot_lists_and_rereads() {
    let mut setup = Setup::start("snap_creek", TYPES_DATA, "public.types_data", &[]).await;
    setup
        .sql
        .batch_execute("ANALYZE public.types_data")
        .await
        .unwrap();
    let client = setup.client().await;
    let mut snapshot = client
        .snapshot(SnapshotRequest::table("public.types_data").chunk_size(128))
        .await
        .unwrap();
    let info = snapshot.info().clone();
    assert_eq!(
        (info.schema.as_str(), info.table.as_str(), info.status),
        ("public", "types_data", SnapshotStatus::Running)
    );
    assert!(info.keyed);
    assert_eq!(info.approx_rows, Some(1000));
    assert_eq!(
        info.subject,
        format!(
            "{ROOT}.{}.snap.public.types_data.{}",
            setup.db.name(),
            info.id
        )
    );
    let position = snapshot.position().unwrap();
    let rows = all_rows(&mut snapshot).await;
    assert_eq!(rows.len(), 1000);
    assert_eq!(snapshot.rows_received(), 1000);
    assert!(
        rows.iter()
            .all(|r| r.op() == Op::Read && r.before().is_none())
    );
    assert!(rows.iter().all(|r| r.commit_lsn() == position));
    let uuids: Vec<String> = rows
        .iter()
        .map(|r| match r.after().unwrap().get("uuid") {
            Some(PgValue::Uuid(u)) => u.to_string(),
            other => panic!("uuid: {other:?}"),
        })
        .collect();
    let mut expected: Vec<String> = setup
        .sql
        .query("SELECT uuid::text FROM types_data ORDER BY uuid", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(uuids, expected, "every row once, in key order");
    expected.clear();

    // creek's first row, typed.
    let first = rows
        .iter()
        .find(|r| {
            r.after().unwrap().get("uuid")
                == Some(&PgValue::Uuid(
                    "ab4ed73c-9b1d-4795-801d-338d6b9fc32e".parse().unwrap(),
                ))
        })
        .unwrap()
        .after()
        .unwrap();
    assert_eq!(first.get("bool"), Some(&PgValue::Bool(true)));
    assert_eq!(first.get("int2"), Some(&PgValue::Int2(693)));
    assert_eq!(first.get("int4"), Some(&PgValue::Int4(560)));
    assert_eq!(first.get("int8"), Some(&PgValue::Int8(187)));
    assert_eq!(
        first.get("float8"),
        Some(&PgValue::Float8(822.7593202410155))
    );
    assert_eq!(
        first.get("json"),
        Some(&PgValue::Json(
            "{\"data\" : \"c4ca4238a0b923820dcc509a6f75849b\"}".into()
        ))
    );
    assert_eq!(
        value_to_json(first.get("numeric").unwrap()),
        serde_json::json!("447")
    );
    assert_eq!(
        value_to_json(first.get("timestamptz").unwrap()),
        serde_json::json!("2019-02-23T22:16:46.864550Z")
    );

    // The same rows through the change stream: rewrite each row in place and compare the
    // after images with the snapshot's rows, value for value, under the same fingerprint.
    let mut changes = client
        .subscribe(Subscription::table("public.types_data").start(Start::CommitPosition(position)))
        .await
        .unwrap();
    setup
        .sql
        .batch_execute("UPDATE types_data SET int2 = int2")
        .await
        .unwrap();
    let mut by_uuid: HashMap<String, serde_json::Value> = rows
        .iter()
        .map(|r| {
            (
                r.after().unwrap().to_json()["uuid"].to_string(),
                json_row(r),
            )
        })
        .collect();
    for _ in 0..1000 {
        let event = tokio::time::timeout(Duration::from_secs(30), changes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.op(), Op::Update);
        assert_eq!(
            event.fingerprint(),
            rows[0].fingerprint(),
            "one schema for both"
        );
        let after = json_row(&event);
        let from_snapshot = by_uuid.remove(&after["uuid"].to_string()).unwrap();
        assert_eq!(from_snapshot, after);
    }
    assert!(by_uuid.is_empty());

    // Listing and re-reading.
    let listed = client.snapshots("public.types_data").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, info.id);
    assert_eq!(listed[0].status, SnapshotStatus::Done);
    assert_eq!(listed[0].rows, 1000);
    assert_eq!(listed[0].position, info.position);
    assert!(listed[0].ended_at.is_some());
    assert!(client.snapshots("public.other").await.unwrap().is_empty());
    let mut again = client
        .read_snapshot(&info.id, Duration::from_secs(30))
        .await
        .unwrap();
    let reread = all_rows(&mut again).await;
    assert_eq!(reread.len(), 1000);
    for (a, b) in rows.iter().zip(&reread) {
        assert_eq!(json_row(a), json_row(b));
    }
    let missing = client
        .read_snapshot("20000101T000000000-00000000", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Rejected);

    let metrics = setup.metrics.render();
    assert!(
        metrics.contains("walbrook_producer_snapshot_rows_total{table=\"public.types_data\"} 1000"),
        "{metrics}"
    );
    assert!(metrics.contains("walbrook_producer_snapshots_total{kind=\"done\"} 1"));
    assert!(metrics.contains("walbrook_producer_snapshots_running 0"));

    // The stream layout: begin first, end last, headers tell them apart.
    let nats = setup.raw().await;
    let js = async_nats::jetstream::new(nats);
    let mut stream = js
        .get_stream(format!("{ROOT}_{}_SNAP", setup.db.name()))
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    // Rows travel in batches (protocol §8.2): one message per chunk of 128 here.
    assert_eq!(state.messages, 2 + 8, "begin + 8 row batches + end");
    let begin = stream.get_raw_message(state.first_sequence).await.unwrap();
    let end = stream.get_raw_message(state.last_sequence).await.unwrap();
    assert_eq!(
        begin
            .headers
            .get("Walbrook-Snapshot-Control")
            .unwrap()
            .as_str(),
        "begin"
    );
    assert_eq!(
        end.headers
            .get("Walbrook-Snapshot-Control")
            .unwrap()
            .as_str(),
        "end"
    );
    let end_body: serde_json::Value = serde_json::from_slice(&end.payload).unwrap();
    assert_eq!(end_body["rows"], 1000);
    let mut next_row = 1u64;
    for sequence in state.first_sequence + 1..state.last_sequence {
        let batch = stream.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| batch.headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(header("Walbrook-Op").as_deref(), Some("read"));
        assert!(header("Walbrook-Snapshot-Control").is_none());
        assert_eq!(header("Walbrook-Snapshot-Row"), Some(next_row.to_string()));
        assert_eq!(
            header("Nats-Msg-Id"),
            Some(format!("snap-{}-{next_row}", info.id))
        );
        let count: u64 = header("Walbrook-Snapshot-Rows").unwrap().parse().unwrap();
        assert_eq!(count, if next_row <= 7 * 128 { 128 } else { 104 });
        let rows =
            walbrook_protocol::snapshot::batch::split(&batch.payload, count).expect("framing");
        for range in rows {
            // Each framed row is a single-object message of the table's schema.
            assert_eq!(&batch.payload[range.start..range.start + 2], &[0xC3, 0x01]);
            assert_eq!(
                hex(&batch.payload[range.start + 2..range.start + 10]),
                info.fingerprint
            );
        }
        next_row += count;
    }
    assert_eq!(next_row, 1001);
    setup.stop().await;
}

/// The fingerprint text of the 8 header bytes (protocol §3.3: their hex, in order).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends a raw request; returns (error code, message) or the accepted document.
async fn raw_request(
    nats: &async_nats::Client,
    subject: &str,
    body: &str,
) -> Result<serde_json::Value, (u16, String)> {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        nats.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .expect("an answer at once")
    .unwrap();
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        let doc: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        let code: u16 = code.as_str().parse().unwrap();
        assert_eq!(doc["error"]["code"], code);
        let message = reply
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Service-Error")
            .unwrap()
            .as_str()
            .to_string();
        assert_eq!(doc["error"]["message"], message.as_str());
        return Err((code, message));
    }
    Ok(serde_json::from_slice(&reply.payload).unwrap())
}

/// Every malformed or refused request gets an error answer at once, with the service error
/// headers; hostile names inject nothing; a filter is applied.
#[tokio::test]
async fn malformed_and_refused_requests_are_answered_with_errors() {
    let mut setup = Setup::start(
        "snap_errors",
        r#"CREATE TABLE items (id int PRIMARY KEY, region text, n int);
           INSERT INTO items SELECT i, CASE WHEN i % 3 = 0 THEN 'eu' ELSE 'us' END, i
             FROM generate_series(1, 300) i;
           CREATE TABLE secret (id int PRIMARY KEY);
           CREATE VIEW items_view AS SELECT * FROM items;
           CREATE TABLE "we""ird.na me" (id int PRIMARY KEY, v text);
           INSERT INTO "we""ird.na me" VALUES (1, 'x');"#,
        r#"public.items, public."we""ird.na me""#,
        &[],
    )
    .await;
    let nats = setup.raw().await;
    let rpc = setup.rpc();
    let cases: &[(&str, u16, &str)] = &[
        ("not json", 400, "malformed"),
        ("", 400, "malformed"),
        (r#"{"schema":"public"}"#, 400, "table"),
        (r#"{"table":"items"}"#, 400, "schema"),
        (
            r#"{"schema":"public","table":"items","extra":1}"#,
            400,
            "extra",
        ),
        (r#"{"schema":"","table":""}"#, 400, "empty"),
        (
            r#"{"schema":"public","table":"items","chunk_size":0}"#,
            400,
            "chunk_size",
        ),
        (
            r#"{"schema":"public","table":"items","chunk_size":1000001}"#,
            400,
            "chunk_size",
        ),
        (
            r#"{"schema":"public","table":"items","chunk_size":-5}"#,
            400,
            "malformed",
        ),
        (
            r#"{"schema":"public","table":"nope"}"#,
            404,
            "does not exist",
        ),
        (
            r#"{"schema":"public","table":"secret"}"#,
            403,
            "not published",
        ),
        (
            r#"{"schema":"public","table":"items_view"}"#,
            400,
            "not a table",
        ),
        (
            r#"{"schema":"public","table":"items; DROP TABLE secret; --"}"#,
            404,
            "does not exist",
        ),
        (
            r#"{"schema":"public","table":"items\"; DROP TABLE secret; --"}"#,
            404,
            "does not exist",
        ),
        (
            r#"{"schema":"public","table":"items","filter":{"column":"nope","op":"=","value":"1"}}"#,
            400,
            "no column",
        ),
        (
            r#"{"schema":"public","table":"items","filter":{"column":"n","op":"LIKE","value":"1"}}"#,
            400,
            "malformed",
        ),
        (
            r#"{"schema":"public","table":"items","filter":{"column":"n","op":"=","value":"1; DROP TABLE secret"}}"#,
            400,
            "integer",
        ),
        (
            r#"{"schema":"public","table":"items","filter":{"column":"n","op":"="}}"#,
            400,
            "needs a value",
        ),
        (
            r#"{"schema":"public","table":"items","filter":{"column":"n","op":"is_null","value":"1"}}"#,
            400,
            "takes no value",
        ),
        (
            r#"{"schema":"public","table":"items","filter":{"column":"n","op":"=","value":[1]}}"#,
            400,
            "string, number or boolean",
        ),
        (
            r#"{"schema":"public","table":"items","filter":{"column":"region","op":"=","value":"x') OR true --"}}"#,
            0,
            "",
        ),
    ];
    for (body, code, needle) in cases {
        match raw_request(&nats, &rpc, body).await {
            Err((got, message)) => {
                assert_eq!(got, *code, "{body}: {message}");
                assert!(
                    message.to_lowercase().contains(&needle.to_lowercase()),
                    "{body}: {message:?} should mention {needle:?}"
                );
            }
            Ok(doc) => {
                assert_eq!(*code, 0, "{body} was accepted: {doc}");
                // The quote-laden value is a value, not SQL: it matches no row.
                let client = setup.client().await;
                let mut snapshot = client
                    .read_snapshot(doc["id"].as_str().unwrap(), Duration::from_secs(30))
                    .await
                    .unwrap();
                assert!(all_rows(&mut snapshot).await.is_empty());
            }
        }
    }
    // Nothing was dropped.
    let tables: i64 = setup
        .sql
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'secret'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);

    // A filter, and a hostile table name, work.
    let client = setup.client().await;
    let mut eu = client
        .snapshot(SnapshotRequest::table("public.items").filter(RowFilter {
            column: "region".into(),
            op: FilterOp::Eq,
            value: Some("eu".into()),
        }))
        .await
        .unwrap();
    let rows = all_rows(&mut eu).await;
    assert_eq!(rows.len(), 100);
    assert!(
        rows.iter()
            .all(|r| r.after().unwrap().get("region") == Some(&PgValue::Text("eu".into())))
    );
    let mut big = client
        .snapshot(
            SnapshotRequest::table("public.items")
                .chunk_size(7)
                .filter(RowFilter {
                    column: "n".into(),
                    op: FilterOp::Gt,
                    value: Some(250.into()),
                }),
        )
        .await
        .unwrap();
    assert_eq!(all_rows(&mut big).await.len(), 50);
    let mut weird = client
        .snapshot(SnapshotRequest::exact("public", "we\"ird.na me"))
        .await
        .unwrap();
    let rows = all_rows(&mut weird).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].source().table, "we\"ird.na me");
    assert!(
        weird
            .info()
            .subject
            .ends_with(&format!(".snap.public.we~22ird~2Ena~20me.{}", weird.id()))
    );
    setup.stop().await;
}

/// `snapshot.max_concurrent` refuses more snapshots with 429; a transaction open at the
/// request holds the rows back until it ends (it may commit before P).
#[tokio::test]
async fn concurrency_limit_and_open_transactions() {
    let mut setup = Setup::start(
        "snap_busy",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' FROM generate_series(1, 50) i;",
        "public.t",
        &[("WALBROOK_SNAPSHOT_MAX_CONCURRENT", "1")],
    )
    .await;
    let client = setup.client().await;
    // An open transaction that has written (holds an xid).
    let (open, connection) = tokio_postgres::connect(&setup.db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    open.batch_execute("BEGIN; INSERT INTO t VALUES (1000, 'open')")
        .await
        .unwrap();
    let mut first = client
        .snapshot(SnapshotRequest::table("public.t").stall_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let busy = client
        .snapshot(SnapshotRequest::table("public.t"))
        .await
        .unwrap_err();
    assert_eq!(busy.kind(), ErrorKind::Busy);
    assert!(busy.is_retryable());
    // No row while the transaction is open.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), first.next())
            .await
            .is_err()
    );
    open.batch_execute("COMMIT").await.unwrap();
    // Its commit LSN is after P: the snapshot may or may not include it, and the change
    // stream from P carries it.
    let rows = all_rows(&mut first).await;
    assert!(rows.len() == 50 || rows.len() == 51, "{}", rows.len());
    let mut changes = client
        .subscribe(
            Subscription::table("public.t").start(Start::CommitPosition(first.position().unwrap())),
        )
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.after().unwrap().get("id"), Some(&PgValue::Int4(1000)));
    // The permit is back (the producer releases it just after the `end` message and the
    // state row are stored, so a reader may see `Busy` for a moment).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut second = loop {
        match client.snapshot(SnapshotRequest::table("public.t")).await {
            Ok(snapshot) => break snapshot,
            Err(e) if e.kind() == ErrorKind::Busy && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the permit never came back: {e}"),
        }
    };
    assert_eq!(all_rows(&mut second).await.len(), 51);
    setup.stop().await;
}

/// Tables without a key are read by one COPY; partitioned tables through their root; both
/// give every row.
#[tokio::test]
async fn keyless_and_partitioned_tables() {
    let mut setup = Setup::start(
        "snap_kinds",
        "CREATE TABLE log (at int, msg text);
         INSERT INTO log SELECT i, 'm' || i FROM generate_series(1, 250) i;
         INSERT INTO log VALUES (1, 'm1'), (NULL, E'tab\\there\\nnew line \\\\N back\\\\slash'), (0, NULL);
         ALTER TABLE log REPLICA IDENTITY FULL;
         CREATE TABLE log_text (at int, msg text, host inet);
         INSERT INTO log_text (at, msg) SELECT at, msg FROM log;
         ALTER TABLE log_text REPLICA IDENTITY FULL;
         CREATE TABLE prices (id int, price numeric(10,2), day date, PRIMARY KEY (id, day))
             PARTITION BY RANGE (day);
         CREATE TABLE prices_2022 PARTITION OF prices FOR VALUES FROM ('2022-01-01') TO ('2023-01-01');
         CREATE TABLE prices_2023 PARTITION OF prices FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
         INSERT INTO prices SELECT i, i * 1.5, date '2022-06-01' + i FROM generate_series(1, 400) i;",
        "public.log, public.log_text, public.prices",
        &[],
    )
    .await;
    let client = setup.client().await;
    // `log` is copied in binary; `inet` has no binary reader, so `log_text` in text.
    for (table, with_host) in [("public.log", false), ("public.log_text", true)] {
        let mut log = client
            .snapshot(SnapshotRequest::table(table).chunk_size(100))
            .await
            .unwrap();
        assert!(!log.info().keyed);
        let rows = all_rows(&mut log).await;
        assert_eq!(rows.len(), 253, "{table}: duplicates included");
        // Every row exactly once (one COPY cut into chunks: nothing lost or repeated at a
        // cut), values exact through COPY's escapes.
        let mut seen: Vec<String> = rows.iter().map(|r| json_row(r).to_string()).collect();
        seen.sort();
        let row = |at: serde_json::Value, msg: serde_json::Value| {
            let mut row = serde_json::json!({"at": at, "msg": msg});
            if with_host {
                row["host"] = serde_json::Value::Null;
            }
            row.to_string()
        };
        let mut expected: Vec<String> = (1..=250)
            .map(|i| row(i.into(), format!("m{i}").into()))
            .chain([
                row(1.into(), "m1".into()),
                row(
                    serde_json::Value::Null,
                    "tab\there\nnew line \\N back\\slash".into(),
                ),
                row(0.into(), serde_json::Value::Null),
            ])
            .collect();
        expected.sort();
        assert_eq!(seen, expected, "{table}");
    }
    let mut prices = client
        .snapshot(SnapshotRequest::table("public.prices").chunk_size(64))
        .await
        .unwrap();
    assert!(prices.info().keyed);
    assert_eq!(prices.info().approx_rows, None, "never analysed");
    let rows = all_rows(&mut prices).await;
    assert_eq!(rows.len(), 400);
    assert!(rows.iter().all(|r| r.source().table == "prices"));
    // The partitioned root's snapshot schema is the one its change events use.
    let mut changes = client
        .subscribe(
            Subscription::table("public.prices")
                .start(Start::CommitPosition(prices.position().unwrap())),
        )
        .await
        .unwrap();
    setup
        .sql
        .batch_execute("INSERT INTO prices VALUES (1000, 1, '2023-05-05')")
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.fingerprint(), rows[0].fingerprint());
    setup.stop().await;
}

fn int(row: &walbrook_client::Row, name: &str) -> i32 {
    match row.get(name) {
        Some(PgValue::Int4(v)) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

fn text(row: &walbrook_client::Row, name: &str) -> Option<String> {
    match row.get(name) {
        Some(PgValue::Text(v)) => Some(v.clone()),
        Some(PgValue::Null) => None,
        other => panic!("{name}: {other:?}"),
    }
}

/// The consistency proof: snapshot a table while other sessions insert, update (also the
/// key) and delete; apply the snapshot rows into a fresh table, then every change whose
/// commit LSN is at or after P; the copy equals the source row for row.
#[tokio::test]
async fn snapshot_then_changes_from_p_reproduce_the_table_under_concurrent_writes() {
    let mut setup = Setup::start(
        "snap_consistent",
        "CREATE TABLE acct (id int PRIMARY KEY, val text, n int NOT NULL);
         INSERT INTO acct SELECT i, 'v' || i, 0 FROM generate_series(1, 3000) i;
         CREATE TABLE acct_copy (id int PRIMARY KEY, val text, n int NOT NULL);",
        "public.acct",
        &[],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let transactions = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (sql, connection) = tokio_postgres::connect(&setup.db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let stop = Arc::clone(&stop);
        let transactions = Arc::clone(&transactions);
        writers.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1);
            let mut next = move |m: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % m
            };
            let mut new_id = 10_000 + w as i64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let mut statements = vec!["BEGIN".to_string()];
                for _ in 0..=next(4) {
                    let id = 1 + next(3000 + new_id as u64 % 1000);
                    statements.push(match next(5) {
                        0 => {
                            new_id += 1;
                            format!("INSERT INTO acct VALUES ({new_id}, 'new', 1)")
                        }
                        1 => format!("DELETE FROM acct WHERE id = {id}"),
                        2 => {
                            new_id += 1;
                            format!("UPDATE acct SET id = {new_id} WHERE id = {id}")
                        }
                        3 => format!("UPDATE acct SET val = NULL, n = n + 1 WHERE id = {id}"),
                        _ => format!(
                            "UPDATE acct SET val = md5(random()::text), n = n + 1 WHERE id = {id}"
                        ),
                    });
                }
                statements.push("COMMIT".into());
                // Key changes of concurrent writers may collide: roll back and go on.
                if sql.batch_execute(&statements.join(";")).await.is_err() {
                    let _ = sql.batch_execute("ROLLBACK").await;
                } else {
                    transactions.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = setup.client().await;
    let before = transactions.load(Ordering::Relaxed);
    let mut snapshot = client
        .snapshot(SnapshotRequest::table("public.acct").chunk_size(40))
        .await
        .unwrap();
    let position = snapshot.position().unwrap();
    let rows = all_rows(&mut snapshot).await;
    let during = transactions.load(Ordering::Relaxed) - before;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        during >= 20,
        "writes went on during the snapshot ({during} transactions)"
    );
    setup
        .sql
        .batch_execute("INSERT INTO acct VALUES (-1, 'marker', 0)")
        .await
        .unwrap();

    // Apply the snapshot into the fresh table.
    for row in &rows {
        let after = row.after().unwrap();
        setup
            .sql
            .execute(
                "INSERT INTO acct_copy VALUES ($1, $2, $3)",
                &[&int(after, "id"), &text(after, "val"), &int(after, "n")],
            )
            .await
            .unwrap();
    }
    // Then every change at or after P, in order, idempotently.
    let mut changes = client
        .subscribe(Subscription::table("public.acct").start(Start::CommitPosition(position)))
        .await
        .unwrap();
    let mut applied = 0u64;
    let mut replayed_below_p = 0u64;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), changes.next())
            .await
            .expect("changes up to the marker")
            .unwrap()
            .unwrap();
        if event.commit_lsn() < position {
            replayed_below_p += 1;
        }
        applied += 1;
        match event.op() {
            Op::Insert | Op::Update | Op::UpdateKey => {
                if event.op() == Op::UpdateKey {
                    let old = int(event.before().unwrap(), "id");
                    setup
                        .sql
                        .execute("DELETE FROM acct_copy WHERE id = $1", &[&old])
                        .await
                        .unwrap();
                }
                let after = event.after().unwrap();
                setup
                    .sql
                    .execute(
                        "INSERT INTO acct_copy VALUES ($1, $2, $3)
                         ON CONFLICT (id) DO UPDATE SET val = EXCLUDED.val, n = EXCLUDED.n",
                        &[&int(after, "id"), &text(after, "val"), &int(after, "n")],
                    )
                    .await
                    .unwrap();
                if int(after, "id") == -1 {
                    break;
                }
            }
            Op::Delete => {
                let old = int(event.before().unwrap(), "id");
                setup
                    .sql
                    .execute("DELETE FROM acct_copy WHERE id = $1", &[&old])
                    .await
                    .unwrap();
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(replayed_below_p, 0);
    assert!(applied > 1, "changes after P were replayed");
    let differences: i64 = setup
        .sql
        .query_one(
            "SELECT count(*) FROM ((SELECT * FROM acct EXCEPT SELECT * FROM acct_copy)
                                   UNION ALL
                                   (SELECT * FROM acct_copy EXCEPT SELECT * FROM acct)) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let count: i64 = setup
        .sql
        .query_one("SELECT count(*) FROM acct", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(differences, 0, "the copy equals the source ({count} rows)");
    assert!(count > 1000);
    setup.stop().await;
}

/// A producer that shuts down fails its running snapshots explicitly.
#[tokio::test]
async fn shutdown_fails_running_snapshots_explicitly() {
    let mut setup = Setup::start(
        "snap_shutdown",
        "CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t SELECT generate_series(1, 10);",
        "public.t",
        &[],
    )
    .await;
    let client = setup.client().await;
    let (open, connection) = tokio_postgres::connect(&setup.db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    open.batch_execute("BEGIN; INSERT INTO t VALUES (100)")
        .await
        .unwrap();
    let mut snapshot = client
        .snapshot(SnapshotRequest::table("public.t"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        setup.metrics.snapshots_running.get(),
        1,
        "waiting for the open transaction"
    );
    setup.stop().await;
    let failure = tokio::time::timeout(Duration::from_secs(20), snapshot.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(failure.kind(), ErrorKind::SnapshotFailed, "{failure}");
    assert!(failure.to_string().contains("shut down"), "{failure}");
    assert!(snapshot.next().await.is_none());
    let state: String = setup
        .sql
        .query_one("SELECT status FROM _walbrook.snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "failed");
    open.batch_execute("ROLLBACK").await.unwrap();
}
