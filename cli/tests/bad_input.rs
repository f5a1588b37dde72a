//! Bad input against real servers (issue #8): a data-driven corpus of hostile, malformed and
//! oversized inputs, each with the exact answer it must get.
//!
//! * RPC requests to a running producer (schema lookup, snapshot, snapshot listing): every
//!   request gets its error answer at once (code and message checked), or is accepted when it
//!   is merely odd; requests without a reply subject are ignored without harm. Afterwards the
//!   producer still streams (a row inserted after the corpus arrives) and no table was
//!   dropped.
//! * Payloads on a change subject (garbage, truncated and cut events, unknown fingerprints):
//!   the SDK returns a typed error carrying the message's stream sequence for each, and the
//!   next good event still arrives.
//! * Invalid configurations of `walbrook produce`, `walbrook check` and `walbrook sink
//!   postgres`: a non-zero exit (not a panic) naming the field.
//!
//! `bad_input_corpus_has_at_least_50_cases` counts the distinct cases.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{connect, wait_until_streaming};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use walbrook_client::{Client, ClientOptions, ErrorKind, Subscription};
use walbrook_harness::{NatsServer, PgServer, TestDb};
use walbrook_pgtype_avro::Fingerprint;
use walbrook_producer::config::RawConfig;
use walbrook_protocol::Subjects;

const ROOT: &str = "BADIN";

/// Which RPC a case is sent to.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Schema,
    Snapshot,
    Listing,
}

/// What a request must get.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// An error answer with this code whose message contains the text.
    Error(u16, &'static str),
    /// A success answer: its JSON body contains the text.
    Accepted(&'static str),
}

/// An RPC case: name, RPC, payload, answer.
type RpcCase = (&'static str, Rpc, Vec<u8>, Answer);

fn json(v: serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn snap(schema: &str, table: &str) -> serde_json::Value {
    serde_json::json!({"schema": schema, "table": table})
}

fn snap_filter(column: &str, op: &str, value: Option<serde_json::Value>) -> Vec<u8> {
    let mut filter = serde_json::json!({"column": column, "op": op});
    if let Some(v) = value {
        filter["value"] = v;
    }
    json(serde_json::json!({"schema": "public", "table": "items", "filter": filter}))
}

fn rpc_cases() -> Vec<RpcCase> {
    use Answer::{Accepted, Error};
    use Rpc::{Listing, Schema, Snapshot};
    let long = "x".repeat(10_000);
    let huge = "y".repeat(900_000);
    let mut cases: Vec<RpcCase> = vec![
        // Schema lookup: the payload is a fingerprint text.
        (
            "lookup: empty",
            Schema,
            vec![],
            Error(400, "malformed fingerprint \"\""),
        ),
        (
            "lookup: uppercase hex",
            Schema,
            b"0123456789ABCDEF".to_vec(),
            Error(400, "expected 16 lowercase hex digits"),
        ),
        (
            "lookup: 15 digits",
            Schema,
            b"0123456789abcde".to_vec(),
            Error(400, "malformed fingerprint"),
        ),
        (
            "lookup: 17 digits",
            Schema,
            b"0123456789abcdef0".to_vec(),
            Error(400, "malformed fingerprint"),
        ),
        (
            "lookup: unknown",
            Schema,
            b"0123456789abcdef".to_vec(),
            Error(404, "unknown fingerprint 0123456789abcdef"),
        ),
        (
            "lookup: unknown, padded",
            Schema,
            b"  ffffffffffffffff\n".to_vec(),
            Error(404, "unknown fingerprint ffffffffffffffff"),
        ),
        (
            "lookup: SQL injection",
            Schema,
            b"'; DROP TABLE victim; --".to_vec(),
            Error(400, "malformed fingerprint"),
        ),
        (
            "lookup: injection in hex shape",
            Schema,
            b"0123456789abcde'".to_vec(),
            Error(400, "malformed fingerprint"),
        ),
        (
            "lookup: NUL bytes",
            Schema,
            vec![0; 16],
            Error(400, "malformed fingerprint"),
        ),
        (
            "lookup: not UTF-8",
            Schema,
            b"\xff\xfe0123456789abcd".to_vec(),
            Error(400, "must be a fingerprint"),
        ),
        (
            "lookup: JSON",
            Schema,
            br#"{"fingerprint":"0123456789abcdef"}"#.to_vec(),
            Error(400, "malformed fingerprint"),
        ),
        (
            "lookup: newline inside",
            Schema,
            b"01234567\n89abcdef".to_vec(),
            Error(400, "malformed fingerprint"),
        ),
        (
            "lookup: 900 kB",
            Schema,
            huge.clone().into_bytes(),
            Error(400, "malformed fingerprint"),
        ),
        // Snapshot requests: JSON, unknown fields refused.
        (
            "snapshot: empty",
            Snapshot,
            vec![],
            Error(400, "malformed snapshot request (EOF"),
        ),
        (
            "snapshot: not JSON",
            Snapshot,
            b"select * from items".to_vec(),
            Error(400, "malformed snapshot request"),
        ),
        (
            "snapshot: truncated JSON",
            Snapshot,
            br#"{"schema":"public","tab"#.to_vec(),
            Error(400, "malformed snapshot request (EOF"),
        ),
        (
            "snapshot: JSON array",
            Snapshot,
            json(serde_json::json!([snap("public", "items")])),
            Error(400, "invalid type: map, expected a string"),
        ),
        (
            "snapshot: missing table",
            Snapshot,
            json(serde_json::json!({"schema": "public"})),
            Error(400, "missing field `table`"),
        ),
        (
            "snapshot: unknown field",
            Snapshot,
            json(serde_json::json!({"schema": "public", "table": "items", "where": "1=1"})),
            Error(400, "unknown field `where`"),
        ),
        (
            "snapshot: schema a number",
            Snapshot,
            json(serde_json::json!({"schema": 1, "table": "items"})),
            Error(400, "invalid type: integer `1`, expected a string"),
        ),
        (
            "snapshot: empty schema",
            Snapshot,
            json(snap("", "items")),
            Error(400, "schema and table must not be empty"),
        ),
        (
            "snapshot: chunk 0",
            Snapshot,
            json(serde_json::json!({"schema": "public", "table": "items", "chunk_size": 0})),
            Error(400, "chunk_size must be between 1 and 100000"),
        ),
        (
            "snapshot: chunk too big",
            Snapshot,
            json(serde_json::json!({"schema": "public", "table": "items", "chunk_size": 100_001})),
            Error(400, "chunk_size must be between 1 and 100000"),
        ),
        (
            "snapshot: chunk negative",
            Snapshot,
            json(serde_json::json!({"schema": "public", "table": "items", "chunk_size": -5})),
            Error(400, "invalid value: integer `-5`, expected u32"),
        ),
        (
            "snapshot: chunk huge",
            Snapshot,
            br#"{"schema":"public","table":"items","chunk_size":99999999999999999999999}"#.to_vec(),
            Error(400, "expected u32"),
        ),
        (
            "snapshot: chunk a string",
            Snapshot,
            json(serde_json::json!({"schema": "public", "table": "items", "chunk_size": "10"})),
            Error(400, "invalid type: string \"10\", expected u32"),
        ),
        (
            "snapshot: injection in table",
            Snapshot,
            json(snap("public", "victim\"; DROP TABLE victim; --")),
            Error(404, "does not exist"),
        ),
        (
            "snapshot: injection in schema",
            Snapshot,
            json(snap("public; DROP SCHEMA public CASCADE; --", "items")),
            Error(404, "does not exist"),
        ),
        (
            "snapshot: quotes",
            Snapshot,
            json(snap("'public'", "\"items\"")),
            Error(404, "does not exist"),
        ),
        (
            "snapshot: dotted name",
            Snapshot,
            json(snap("public", "public.items")),
            Error(404, "does not exist"),
        ),
        (
            "snapshot: wildcards",
            Snapshot,
            json(snap("*", ">")),
            Error(404, "does not exist"),
        ),
        (
            "snapshot: unicode",
            Snapshot,
            json(snap("public", "tàble-☃-𝄞")),
            Error(404, "does not exist"),
        ),
        (
            "snapshot: NUL in name",
            Snapshot,
            json(snap("public", "items\u{0}")),
            Error(400, "names cannot contain a NUL character"),
        ),
        (
            "snapshot: 63-byte name",
            Snapshot,
            json(snap("public", &"n".repeat(63))),
            Error(404, "does not exist"),
        ),
        (
            "snapshot: 64-byte name",
            Snapshot,
            json(snap("public", &"n".repeat(64))),
            Error(
                400,
                "PostgreSQL names are at most 63 bytes, this one has 64",
            ),
        ),
        (
            "snapshot: 10 000-char name",
            Snapshot,
            json(snap(&long, "items")),
            Error(400, "PostgreSQL names are at most 63 bytes"),
        ),
        (
            "snapshot: 900 kB name",
            Snapshot,
            json(snap("public", &huge)),
            Error(400, "PostgreSQL names are at most 63 bytes"),
        ),
        (
            "snapshot: not published",
            Snapshot,
            json(snap("public", "victim")),
            Error(403, "is not published"),
        ),
        (
            "snapshot: a view",
            Snapshot,
            json(snap("public", "items_view")),
            Error(400, "is not a table"),
        ),
        (
            "snapshot: filter on a missing column",
            Snapshot,
            snap_filter("nope", "=", Some(1.into())),
            Error(400, "has no column \"nope\""),
        ),
        (
            "snapshot: filter column injection",
            Snapshot,
            snap_filter("id\" = 1; DROP TABLE victim; --", "=", Some(1.into())),
            Error(400, "has no column"),
        ),
        (
            "snapshot: filter LIKE",
            Snapshot,
            snap_filter("note", "LIKE", Some("%".into())),
            Error(400, "unknown variant `LIKE`"),
        ),
        (
            "snapshot: filter op with a newline",
            Snapshot,
            snap_filter("note", "=\n", Some("x".into())),
            Error(400, "unknown variant"),
        ),
        (
            "snapshot: filter injection on int",
            Snapshot,
            snap_filter("id", "=", Some("1; DROP TABLE victim".into())),
            Error(400, "invalid input syntax for type integer"),
        ),
        (
            "snapshot: filter value with a newline",
            Snapshot,
            snap_filter("id", "=", Some("1\n2".into())),
            Error(400, "invalid input syntax for type integer"),
        ),
        (
            "snapshot: filter value an object",
            Snapshot,
            snap_filter("id", "=", Some(serde_json::json!({"a": 1}))),
            Error(400, "value must be a string, number or boolean"),
        ),
        (
            "snapshot: filter value null",
            Snapshot,
            snap_filter("id", "=", Some(serde_json::Value::Null)),
            Error(400, "= needs a value"),
        ),
        (
            "snapshot: filter without value",
            Snapshot,
            snap_filter("id", ">", None),
            Error(400, "> needs a value"),
        ),
        (
            "snapshot: filter is_null with a value",
            Snapshot,
            snap_filter("id", "is_null", Some(1.into())),
            Error(400, "IS NULL takes no value"),
        ),
        (
            "snapshot: filter value with NUL",
            Snapshot,
            snap_filter("note", "=", Some("a\u{0}b".into())),
            Error(400, "NUL byte"),
        ),
        (
            "snapshot: filter value out of range",
            Snapshot,
            snap_filter("id", ">", Some(serde_json::json!(1e300))),
            Error(400, "invalid input syntax for type integer: \"1e+300\""),
        ),
        (
            "snapshot: filter injection on text (a plain value)",
            Snapshot,
            snap_filter("note", "=", Some("'); DROP TABLE victim; --".into())),
            Accepted("\"status\""),
        ),
        (
            "snapshot: filter backslashes (a plain value)",
            Snapshot,
            snap_filter("note", "<>", Some("\\'\\\\".into())),
            Accepted("\"status\""),
        ),
        (
            "snapshot: filter value of 900 kB",
            Snapshot,
            snap_filter("note", "=", Some(huge.clone().into())),
            Error(
                400,
                "filter: the value has 900000 bytes, at most 65536 are allowed",
            ),
        ),
        (
            "snapshot: filter value of 64 KiB (a plain value)",
            Snapshot,
            snap_filter("note", "=", Some("z".repeat(65_536).into())),
            Accepted("\"status\""),
        ),
        // Snapshot listings: empty, or JSON with optional id/schema/table.
        ("listing: empty", Listing, vec![], Accepted("\"snapshots\"")),
        (
            "listing: table without schema",
            Listing,
            json(serde_json::json!({"table": "items"})),
            Error(400, "a table needs its schema"),
        ),
        (
            "listing: unknown field",
            Listing,
            json(serde_json::json!({"status": "running"})),
            Error(400, "unknown field `status`"),
        ),
        (
            "listing: unknown field with a newline",
            Listing,
            b"{\"a\\r\\nb\":1}".to_vec(),
            Error(400, "unknown field"),
        ),
        (
            "listing: id a number",
            Listing,
            json(serde_json::json!({"id": 7})),
            Error(400, "invalid type: integer `7`"),
        ),
        (
            "listing: null",
            Listing,
            b"null".to_vec(),
            Error(400, "invalid type: null"),
        ),
        (
            "listing: binary garbage",
            Listing,
            vec![0, 1, 2, 0xff],
            Error(400, "malformed listing request"),
        ),
        (
            "listing: injection in schema",
            Listing,
            json(serde_json::json!({"schema": "'; DROP TABLE victim; --", "table": "x"})),
            Accepted("{\"snapshots\":[]}"),
        ),
        (
            "listing: NUL in id",
            Listing,
            json(serde_json::json!({"id": "a\u{0}"})),
            Error(400, "the request contains a NUL character"),
        ),
        (
            "listing: 900 kB id",
            Listing,
            json(serde_json::json!({"id": huge})),
            Accepted("{\"snapshots\":[]}"),
        ),
    ];
    cases.shrink_to_fit();
    cases
}

/// A change-subject case: name, payload (made from a real event's payload), the SDK's error.
type ChangeCase = (&'static str, Vec<u8>, ErrorKind);

fn change_cases(good: &[u8]) -> Vec<ChangeCase> {
    let unknown = |body: &[u8]| {
        let mut p = vec![0xC3, 0x01];
        p.extend_from_slice(&Fingerprint(0x0123_4567_89ab_cdef).to_bytes());
        p.extend_from_slice(body);
        p
    };
    let mut wrong_magic = good.to_vec();
    wrong_magic[0] = 0xC4;
    let mut flipped = good.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xFF;
    let mut extended = good.to_vec();
    extended.extend_from_slice(b"trailing");
    vec![
        (
            "change: text garbage",
            b"not avro".to_vec(),
            ErrorKind::Decode,
        ),
        ("change: empty payload", Vec::new(), ErrorKind::Decode),
        ("change: one byte", vec![0xC3], ErrorKind::Decode),
        (
            "change: header only",
            good[..10].to_vec(),
            ErrorKind::Decode,
        ),
        (
            "change: cut in half",
            good[..good.len() / 2].to_vec(),
            ErrorKind::Decode,
        ),
        (
            "change: last byte cut",
            good[..good.len() - 1].to_vec(),
            ErrorKind::Decode,
        ),
        ("change: trailing bytes", extended, ErrorKind::Decode),
        ("change: wrong magic", wrong_magic, ErrorKind::Decode),
        (
            "change: JSON",
            br#"{"op":"INSERT","id":1}"#.to_vec(),
            ErrorKind::Decode,
        ),
        (
            "change: 512 kB of zeros",
            vec![0; 512 * 1024],
            ErrorKind::Decode,
        ),
        (
            "change: unknown fingerprint",
            unknown(&good[10..]),
            ErrorKind::SchemaNotFound,
        ),
        (
            "change: unknown fingerprint, no body",
            unknown(&[]),
            ErrorKind::SchemaNotFound,
        ),
        ("change: last byte flipped", flipped, ErrorKind::Decode),
    ]
}

/// A configuration case: name, command, extra (or overriding) environment, field named.
type ConfigCase = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

fn config_cases() -> Vec<ConfigCase> {
    vec![
        (
            "produce: no postgres url",
            "produce",
            vec![("WALBROOK_PG_URL", "")],
            "postgres.url",
        ),
        (
            "produce: tables not schema.table",
            "produce",
            vec![("WALBROOK_TABLES", "a.b.c")],
            "tables",
        ),
        (
            "produce: max_inflight 0",
            "produce",
            vec![("WALBROOK_MAX_INFLIGHT", "0")],
            "nats.max_inflight",
        ),
        (
            "produce: max_inflight negative",
            "produce",
            vec![("WALBROOK_MAX_INFLIGHT", "-1")],
            "WALBROOK_MAX_INFLIGHT",
        ),
        (
            "produce: max_inflight huge",
            "produce",
            vec![("WALBROOK_MAX_INFLIGHT", "99999999999999999999999")],
            "WALBROOK_MAX_INFLIGHT",
        ),
        (
            "produce: heartbeat not a duration",
            "produce",
            vec![("WALBROOK_HEARTBEAT_INTERVAL", "soon")],
            "heartbeat_interval",
        ),
        (
            "produce: ack timeout not a duration",
            "produce",
            vec![("WALBROOK_ACK_TIMEOUT", "1 fortnight")],
            "nats.ack_timeout",
        ),
        (
            "produce: bad storage",
            "produce",
            vec![("WALBROOK_STREAM_STORAGE", "tape")],
            "stream.storage",
        ),
        (
            "produce: replicas 0",
            "produce",
            vec![("WALBROOK_STREAM_REPLICAS", "0")],
            "stream.replicas",
        ),
        (
            "produce: chunk size 0",
            "produce",
            vec![("WALBROOK_SNAPSHOT_CHUNK_SIZE", "0")],
            "snapshot.chunk_size",
        ),
        (
            "produce: root with an empty token",
            "produce",
            vec![("WALBROOK_ROOT", "a..b")],
            "root",
        ),
        (
            "produce: slot with a quote",
            "produce",
            vec![("WALBROOK_SLOT", "s'; DROP TABLE victim; --")],
            "slot",
        ),
        (
            "check: max_inflight 0",
            "check",
            vec![("WALBROOK_MAX_INFLIGHT", "0")],
            "nats.max_inflight",
        ),
        (
            "check: chunk size too big",
            "check",
            vec![("WALBROOK_SNAPSHOT_CHUNK_SIZE", "100001")],
            "snapshot.chunk_size",
        ),
        (
            "sink postgres: target url not a URL",
            "sink postgres",
            vec![("WALBROOK_SINK_TARGET_URL", "not a url")],
            "target",
        ),
        (
            "sink postgres: no source db",
            "sink postgres",
            vec![("WALBROOK_SINK_SOURCE_DB", "")],
            "source",
        ),
        (
            "sink postgres: batch wait not a duration",
            "sink postgres",
            vec![("WALBROOK_SINK_BATCH_WAIT", "later")],
            "invalid value 'later' for '--batch-wait",
        ),
        (
            "sink postgres: consumer name with a dot",
            "sink postgres",
            vec![("WALBROOK_SINK_CONSUMER", "replica.eu")],
            "--consumer \"replica.eu\": a consumer name must be non-empty",
        ),
        (
            "sink postgres: consumer name with a wildcard",
            "sink postgres",
            vec![("WALBROOK_SINK_CONSUMER", "all>")],
            "--consumer \"all>\"",
        ),
        (
            "sink postgres: max attempts negative",
            "sink postgres",
            vec![("WALBROOK_SINK_MAX_ATTEMPTS", "-3")],
            "invalid value '-3' for '--max-attempts",
        ),
        (
            "sink postgres: start neither a keyword nor an LSN",
            "sink postgres",
            vec![("WALBROOK_SINK_START", "yesterday")],
            "--start \"yesterday\": beginning, new or an LSN",
        ),
        (
            "sink postgres: snapshot of a table pattern",
            "sink postgres",
            vec![
                ("WALBROOK_SINK_SNAPSHOT", "true"),
                ("WALBROOK_SINK_TABLES", "public.*"),
            ],
            "--snapshot needs explicit schema.table names",
        ),
        (
            "sink postgres: instance outside the instance count",
            "sink postgres",
            vec![("WALBROOK_SINK_INSTANCE", "1")],
            "--instance 1 must be below --instances 1",
        ),
        (
            "sink postgres: no instances",
            "sink postgres",
            vec![("WALBROOK_SINK_INSTANCES", "0")],
            "--instances must be at least 1",
        ),
    ]
}

/// Starts an in-process producer; its task ends only with the test (or with an error the
/// test reports, see [`producer_state`]).
async fn start(
    db: &TestDb<'_>,
    nats: &str,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), walbrook_producer::pipeline::ProducerError>> {
    let mut raw = RawConfig::default();
    raw.apply_env([
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats.to_string()),
        ("WALBROOK_TABLES", "public.items".to_string()),
        ("WALBROOK_SLOT", db.slot_name()),
        ("WALBROOK_PUBLICATION", db.publication_name()),
        ("WALBROOK_ROOT", ROOT.to_string()),
        ("WALBROOK_HEARTBEAT_INTERVAL", "1s".to_string()),
        ("WALBROOK_SNAPSHOT_MAX_CONCURRENT", "32".to_string()),
    ])
    .unwrap();
    let config = raw.validate().unwrap();
    tokio::spawn(walbrook_producer::pipeline::run(config, shutdown))
}

/// Where the changes stand, for a failure message: the slot's confirmed position against
/// the server's, and the change stream's last message.
async fn where_changes_stand(
    sql: &tokio_postgres::Client,
    db: &TestDb<'_>,
    nats: &async_nats::Client,
    subjects: &Subjects,
) -> String {
    let slot = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text || ' confirmed of ' || pg_current_wal_lsn()::text \
             || ', active ' || active::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot_name()],
        )
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|e| e.to_string());
    let js = async_nats::jetstream::new(nats.clone());
    let name = subjects.stream_name(walbrook_protocol::StreamKind::Wal);
    let stream = match js.get_stream(&name).await {
        Ok(mut stream) => match stream.info().await.map(|i| i.state.messages) {
            Ok(messages) => {
                let last = stream
                    .get_last_raw_message_by_subject(&subjects.change("public", "items"))
                    .await
                    .map(|m| {
                        format!(
                            "sequence {}, id {:?}",
                            m.sequence,
                            m.headers.get("Nats-Msg-Id").map(|v| v.to_string())
                        )
                    })
                    .unwrap_or_else(|e| e.to_string());
                format!("stream {name}: {messages} messages, last of public.items: {last}")
            }
            Err(e) => format!("stream {name}: {e}"),
        },
        Err(e) => format!("stream {name}: {e}"),
    };
    format!("slot {slot}; {stream}")
}

/// Sends the in-process producer's log to the test's output (shown when a test fails).
fn logs_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// What became of the in-process producer, for a failure message: still running, or the
/// error it stopped with.
async fn producer_state(
    producer: tokio::task::JoinHandle<Result<(), walbrook_producer::pipeline::ProducerError>>,
) -> String {
    if !producer.is_finished() {
        return "the producer is still running".into();
    }
    match producer.await {
        Ok(Ok(())) => "the producer stopped without an error".into(),
        Ok(Err(e)) => format!("the producer stopped: {e}"),
        Err(e) => format!("the producer task failed: {e}"),
    }
}

const DDL: &str = "CREATE TABLE items (id int PRIMARY KEY, note text);
    CREATE TABLE victim (id int PRIMARY KEY);
    INSERT INTO victim VALUES (1), (2), (3);
    CREATE VIEW items_view AS SELECT * FROM items;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rpc_requests_get_their_error_at_once_and_the_producer_keeps_streaming() {
    let db = PgServer::shared().fresh_database("badin_rpc");
    let nats_server = NatsServer::start().unwrap();
    let sql = connect(&db.url()).await;
    sql.batch_execute(DDL).await.unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    logs_to_test_output();
    let producer = start(&db, &nats_server.url(), shutdown.clone()).await;
    wait_until_streaming(&sql, &db.slot_name()).await;
    sql.batch_execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();

    let nats = async_nats::connect(nats_server.url()).await.unwrap();
    let subjects = Subjects::new(ROOT, db.name());
    let subject = |rpc: Rpc| match rpc {
        Rpc::Schema => subjects.schema_rpc(),
        Rpc::Snapshot => subjects.snapshot_rpc(),
        Rpc::Listing => subjects.snapshots_rpc(),
    };
    // Requests without a reply subject first: ignored, and nothing breaks for what follows.
    for (_, rpc, payload, _) in rpc_cases() {
        nats.publish(subject(rpc), payload.into()).await.unwrap();
    }
    nats.flush().await.unwrap();

    let mut failures = Vec::new();
    for (name, rpc, payload, answer) in rpc_cases() {
        let reply = match tokio::time::timeout(
            Duration::from_secs(10),
            nats.request(subject(rpc), payload.into()),
        )
        .await
        {
            Err(_) => {
                failures.push(format!("{name}: no answer within 10 s"));
                continue;
            }
            Ok(Err(e)) => {
                failures.push(format!("{name}: request failed: {e}"));
                continue;
            }
            Ok(Ok(reply)) => reply,
        };
        let body = String::from_utf8_lossy(&reply.payload).into_owned();
        let header_code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().to_string());
        match answer {
            Answer::Error(code, text) => {
                let parsed: Result<walbrook_protocol::snapshot::RpcErrorBody, _> =
                    serde_json::from_slice(&reply.payload);
                match parsed {
                    Ok(error)
                        if error.error.code == code
                            && header_code.as_deref() == Some(code.to_string().as_str())
                            && error.error.message.contains(text)
                            && error.error.message.len() < 2_000 => {}
                    _ => failures.push(format!(
                        "{name}: expected {code} containing {text:?}, got header {header_code:?} body {}",
                        &body[..body.len().min(300)]
                    )),
                }
            }
            Answer::Accepted(text) => {
                if header_code.is_some() || !body.contains(text) {
                    failures.push(format!(
                        "{name}: expected acceptance containing {text:?}, got header {header_code:?} body {}",
                        &body[..body.len().min(300)]
                    ));
                }
            }
        }
    }
    // A request above the server's max_payload never leaves the client.
    let oversized = nats
        .request(subjects.snapshot_rpc(), vec![b'{'; 2 * 1024 * 1024].into())
        .await;
    assert!(
        oversized
            .as_ref()
            .is_err_and(|e| e.to_string().contains("exceeded")),
        "{oversized:?}"
    );
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The producer still streams (the change is stored in the change stream: a core
    // subscription may miss a message published before its interest reached the server),
    // answers, and no table was dropped.
    let before: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let before: walbrook_protocol::Lsn = before.parse().unwrap();
    sql.batch_execute("INSERT INTO items VALUES (3, 'after the corpus')")
        .await
        .unwrap();
    let stream = async_nats::jetstream::new(nats.clone())
        .get_stream(subjects.stream_name(walbrook_protocol::StreamKind::Wal))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = stream
            .get_last_raw_message_by_subject(&subjects.change("public", "items"))
            .await
            .ok()
            .and_then(|m| {
                m.headers
                    .get(walbrook_protocol::headers::COMMIT_LSN)
                    .and_then(|v| v.as_str().parse::<walbrook_protocol::Lsn>().ok())
            });
        if stored.is_some_and(|lsn| lsn > before) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "a change after the corpus was not stored within 30 s ({}; {})",
                producer_state(producer).await,
                where_changes_stand(&sql, &db, &nats, &subjects).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victims: i64 = sql
        .query_one("SELECT count(*) FROM victim", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(victims, 3);
    for table in [
        "items",
        "victim",
        "_walbrook.schemas",
        "_walbrook.snapshots",
    ] {
        let exists: bool = sql
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{table} is still there");
    }
    let listing = nats
        .request(subjects.snapshots_rpc(), "".into())
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.payload).contains("\"snapshots\""),
        "the listing service still answers"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_on_change_subjects_are_typed_errors_and_the_next_event_arrives() {
    let db = PgServer::shared().fresh_database("badin_change");
    let nats_server = NatsServer::start().unwrap();
    let sql = connect(&db.url()).await;
    sql.batch_execute(DDL).await.unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    start(&db, &nats_server.url(), shutdown.clone()).await;
    wait_until_streaming(&sql, &db.slot_name()).await;
    let client = Client::connect(ClientOptions::new(nats_server.url(), db.name()).root(ROOT))
        .await
        .unwrap();
    let mut stream = client
        .subscribe(Subscription::table("public.items"))
        .await
        .unwrap();
    let subject = Subjects::new(ROOT, db.name()).change("public", "items");
    let mut raw = client.nats().subscribe(subject.clone()).await.unwrap();
    client.nats().flush().await.unwrap();
    sql.batch_execute("INSERT INTO items VALUES (1, 'a real event')")
        .await
        .unwrap();
    let good = tokio::time::timeout(Duration::from_secs(20), raw.next())
        .await
        .unwrap()
        .unwrap()
        .payload;
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.stream_sequence(), 1);

    let js = async_nats::jetstream::new(client.nats().clone());
    let cases = change_cases(&good);
    let mut sequences = Vec::new();
    for (_, payload, _) in &cases {
        let ack = js
            .publish(subject.clone(), payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        sequences.push(ack.sequence);
    }
    sql.batch_execute("INSERT INTO items VALUES (2, 'after the garbage')")
        .await
        .unwrap();
    let mut failures = Vec::new();
    for ((name, _, kind), sequence) in cases.iter().zip(&sequences) {
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("an item within 20 s")
            .expect("the stream goes on");
        match item {
            Err(e) if e.kind() == *kind && e.stream_sequence() == Some(*sequence) => {}
            other => failures.push(format!(
                "{name}: expected {kind:?} at sequence {sequence}, got {:?}",
                other.map(|ev| ev.stream_sequence())
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let after = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap()
        .expect("the good event after the garbage decodes");
    assert_eq!(
        after
            .after()
            .and_then(|r| r.get("id"))
            .map(|v| format!("{v:?}")),
        Some("Int4(2)".to_string())
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configurations_exit_non_zero_naming_the_field() {
    let db = PgServer::shared().fresh_database("badin_config");
    let nats = NatsServer::start().unwrap();
    db.psql(DDL).unwrap();
    // The sink cases need the change stream to exist (else a sink waits for the producer).
    let source = PgServer::shared().fresh_database("badin_config_src");
    let sql = connect(&source.url()).await;
    sql.batch_execute(DDL).await.unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    start(&source, &nats.url(), shutdown.clone()).await;
    wait_until_streaming(&sql, &source.slot_name()).await;
    let nats_url = nats.url();
    let base: Vec<(&str, String)> = vec![
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats_url.clone()),
        ("WALBROOK_TABLES", "public.items".into()),
        ("WALBROOK_SLOT", db.slot_name()),
        ("WALBROOK_ROOT", ROOT.into()),
        ("WALBROOK_SINK_SOURCE_DB", source.name().to_string()),
        ("WALBROOK_SINK_CONSUMER", "badin".into()),
        ("WALBROOK_SINK_TABLES", "public.items".into()),
        ("WALBROOK_SINK_TARGET_URL", db.url()),
    ];
    let mut failures = Vec::new();
    for (name, command, overrides, field) in config_cases() {
        let mut cmd = walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"));
        cmd.args(command.split(' '))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        for (k, v) in &base {
            if !overrides.iter().any(|(o, _)| o == k) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &overrides {
            if !v.is_empty() {
                cmd.env(k, v);
            }
        }
        let output = tokio::task::spawn_blocking(move || {
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // A configuration error ends the process at once; one that starts is killed.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().unwrap().is_none() {
                common::sigkill(&mut child);
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let code = output.status.code();
        if code.is_none()
            || code == Some(0)
            || code == Some(101)
            || !text.contains(field)
            || text.contains("panicked")
        {
            failures.push(format!(
                "{name}: exit {code:?}, expected {field:?} in:\n{text}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
    // Nothing was started by a refused configuration.
    let slots = db
        .psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot_name()
        ))
        .unwrap();
    assert_eq!(slots.trim(), "0");
}

#[test]
fn bad_input_corpus_has_at_least_50_cases() {
    let good = [0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 2, 4, 6];
    let mut names: Vec<&str> = rpc_cases().iter().map(|c| c.0).collect();
    names.extend(change_cases(&good).iter().map(|c| c.0));
    names.extend(config_cases().iter().map(|c| c.0));
    let total = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "case names are distinct");
    println!("bad-input corpus: {total} cases");
    assert!(total >= 50, "only {total} cases");
}
