//! End-to-end tests of the producer: real PostgreSQL in, real JetStream out.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use walbrook_harness::{NatsServer, PgServer, TestDb};
use walbrook_pgtype_avro::Fingerprint;
use walbrook_pgtype_avro::fingerprint::{decode_body, split_single_object};
use walbrook_producer::config::{ProducerConfig, RawConfig};
use walbrook_producer::pipeline;

const ROOT: &str = "WBTEST";

fn config(db: &TestDb<'_>, nats_url: &str, tables: &str) -> ProducerConfig {
    let mut raw = RawConfig::default();
    raw.apply_env([
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats_url.to_string()),
        ("WALBROOK_TABLES", tables.to_string()),
        ("WALBROOK_SLOT", db.slot_name()),
        ("WALBROOK_PUBLICATION", db.publication_name()),
        ("WALBROOK_ROOT", ROOT.to_string()),
        ("WALBROOK_HEARTBEAT_INTERVAL", "1s".to_string()),
    ])
    .unwrap();
    raw.validate().unwrap()
}

/// A producer streaming `public.t (id int PRIMARY KEY)` of a fresh database to its own NATS
/// server.
struct OnTable {
    db: TestDb<'static>,
    nats: NatsServer,
    client: tokio_postgres::Client,
    shutdown: CancellationToken,
    producer: tokio::task::JoinHandle<Result<(), pipeline::ProducerError>>,
}

/// A fresh database holding `ddl`, its own NATS server, and a SQL connection to it.
async fn fresh_source(
    prefix: &str,
    ddl: &str,
) -> (TestDb<'static>, NatsServer, tokio_postgres::Client) {
    let db = PgServer::shared().fresh_database(prefix);
    let nats = NatsServer::start().unwrap();
    let client = sql(&db).await;
    client.batch_execute(ddl).await.unwrap();
    (db, nats, client)
}

async fn producer_on_table(prefix: &str) -> OnTable {
    let (db, nats, client) = fresh_source(prefix, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(
        config(&db, &nats.url(), "public.t"),
        shutdown.clone(),
    ));
    wait_for_slot(&client, &db.slot_name()).await;
    OnTable {
        db,
        nats,
        client,
        shutdown,
        producer,
    }
}

async fn sql(db: &TestDb<'_>) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// A decoded change event.
#[derive(Debug, Clone)]
struct Event {
    op: String,
    table: String,
    commit_lsn: i64,
    ordinal: i64,
    xid: i64,
    last: bool,
    before: Option<HashMap<String, Value>>,
    after: Option<HashMap<String, Value>>,
    msg_id: String,
}

fn record(value: &Value) -> Option<HashMap<String, Value>> {
    let inner = match value {
        Value::Union(_, inner) => inner.as_ref(),
        other => other,
    };
    match inner {
        Value::Null => None,
        Value::Record(fields) => Some(fields.iter().cloned().collect()),
        other => panic!("not a record: {other:?}"),
    }
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> &'a Value {
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

/// Decodes a change message into its events: one, or each of a message carrying several
/// (docs/protocol.md §3.6), checked against the message's headers.
async fn decode(nats: &async_nats::Client, db: &str, message: &jetstream::Message) -> Vec<Event> {
    let headers = message.headers.as_ref().unwrap();
    let msg_id = headers.get("Nats-Msg-Id").unwrap().to_string();
    let Some(count) = headers.get("Walbrook-Events") else {
        return vec![decode_one(nats, db, &message.payload, msg_id).await];
    };
    let count: u64 = count.as_str().parse().unwrap();
    assert!(count >= 2, "Walbrook-Events {count}");
    let mut events = Vec::new();
    for range in walbrook_protocol::batch::split(&message.payload, count).unwrap() {
        let event = decode_one(nats, db, &message.payload[range], String::new()).await;
        events.push(event);
    }
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    let (commit, ordinal) = (events[0].commit_lsn, events[0].ordinal);
    let (table, op) = (events[0].table.clone(), events[0].op.clone());
    assert_eq!(
        msg_id,
        format!("{commit:016X}-{ordinal}"),
        "the message id is its first event's"
    );
    for (i, event) in events.iter_mut().enumerate() {
        assert_eq!(event.commit_lsn, commit);
        assert_eq!(event.ordinal, ordinal + i as i64);
        assert_eq!(event.table, table);
        assert_eq!(event.op, op);
        assert!(
            !event.last || i as u64 == count - 1,
            "only the final event is last"
        );
        event.msg_id = format!("{:016X}-{}", event.commit_lsn, event.ordinal);
    }
    assert_eq!(header("Walbrook-Ordinal"), Some(ordinal.to_string()));
    assert_eq!(
        header("Walbrook-Last").is_some(),
        events.last().unwrap().last
    );
    events
}

/// Looks a schema up through the producer's RPC and decodes one event.
async fn decode_one(nats: &async_nats::Client, db: &str, payload: &[u8], msg_id: String) -> Event {
    let (fingerprint, body) = split_single_object(payload).unwrap();
    // Right after a producer restart its RPC subscription may not be registered yet.
    let mut attempts = 0;
    let reply = loop {
        match nats
            .request(
                format!("{ROOT}.{db}.rpc.schema"),
                fingerprint.to_string().into(),
            )
            .await
        {
            Ok(reply) => break reply,
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("schema lookup failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("schema lookup failed for 5 s: {e}"),
        }
    };
    assert!(
        reply.headers.is_none()
            || reply
                .headers
                .as_ref()
                .unwrap()
                .get("Nats-Service-Error")
                .is_none()
    );
    let doc: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(doc["fingerprint"], fingerprint.to_string());
    let schema_json = doc["schema"].as_str().unwrap();
    assert_eq!(Fingerprint::of_json_str(schema_json).unwrap(), fingerprint);
    let schema = apache_avro::Schema::parse_str(schema_json).unwrap();
    let Value::Record(fields) = decode_body(&schema, body).unwrap() else {
        panic!("not a record")
    };
    let Value::Enum(_, op) = field(&fields, "op") else {
        panic!()
    };
    let Value::Record(source) = field(&fields, "source") else {
        panic!()
    };
    let long = |name: &str| match field(source, name) {
        Value::Long(v) => *v,
        other => panic!("{name}: {other:?}"),
    };
    let Value::String(table) = field(source, "table") else {
        panic!()
    };
    let Value::Boolean(last) = field(source, "last") else {
        panic!()
    };
    Event {
        op: op.clone(),
        table: table.clone(),
        commit_lsn: long("commit_lsn"),
        ordinal: long("ordinal"),
        xid: long("xid"),
        last: *last,
        before: record(field(&fields, "before")),
        after: record(field(&fields, "after")),
        msg_id,
    }
}

/// Reads `count` events from the change stream (waiting up to 20 s).
async fn read_events(nats: &async_nats::Client, db: &str, count: usize) -> Vec<Event> {
    let js = jetstream::new(nats.clone());
    // Seen once in CI under heavy load: "stream not found" right after the producer
    // started streaming. Retry briefly and report the last error if it persists.
    let name = format!("{ROOT}_{db}_WAL");
    let mut attempts = 0;
    let stream = loop {
        match js.get_stream(&name).await {
            Ok(stream) => break stream,
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("get_stream({name}) failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("stream {name} not found after 10 s: {e}"),
        }
    };
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut events = Vec::new();
    while events.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", events.len()))
            .unwrap()
            .unwrap();
        events.extend(decode(nats, db, &message).await);
    }
    // Nothing more than expected.
    let extra = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
    assert!(extra.is_err(), "more events than expected: {extra:?}");
    events
}

fn int(value: Option<&Value>) -> i64 {
    match value {
        Some(Value::Union(_, v)) => int(Some(v)),
        Some(Value::Int(v)) => i64::from(*v),
        Some(Value::Long(v)) => *v,
        other => panic!("not an integer: {other:?}"),
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::Union(_, v)) => text(Some(v)),
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) => None,
        other => panic!("not a string: {other:?}"),
    }
}

#[tokio::test]
async fn every_operation_arrives_once_in_order() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("produce_ops");
    let nats = NatsServer::start().unwrap();
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text, qty int NOT NULL DEFAULT 0);
             CREATE TABLE logs (line text, at int);
             ALTER TABLE logs REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let metrics_port = walbrook_harness::free_port().unwrap();
    let mut producer_config = config(&db, &nats.url(), "public.items, public.logs");
    producer_config.metrics_addr = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
    let producer = tokio::spawn(pipeline::run(producer_config, shutdown.clone()));
    // Let the producer create the slot before writing (changes before it are not CDC).
    wait_for_slot(&client, &db.slot_name()).await;
    // One statement per round trip: each is its own transaction (a multi-statement
    // simple query would be one implicit transaction).
    for statement in [
        "INSERT INTO items VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)",
        "BEGIN; UPDATE items SET qty = 10 WHERE id = 1; UPDATE items SET id = 20 WHERE id = 2; \
         DELETE FROM items WHERE id = 3; COMMIT",
        "INSERT INTO logs VALUES ('a', 1)",
        "UPDATE logs SET at = 2",
        "DELETE FROM logs",
        "TRUNCATE items",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
    let copy = client
        .copy_in("COPY items (id, name) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(copy);
    futures::SinkExt::send(
        &mut copy,
        bytes::Bytes::from_static(b"7\tseven\n8\teight\n9\tnine\n"),
    )
    .await
    .unwrap();
    copy.finish().await.unwrap();

    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let events = read_events(&nats_client, db.name(), 3 + 3 + 3 + 1 + 3).await;
    let ops: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.table.as_str(), e.op.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("items", "INSERT"),
            ("items", "INSERT"),
            ("items", "INSERT"),
            ("items", "UPDATE"),
            ("items", "UPDATE_KEY"),
            ("items", "DELETE"),
            ("logs", "INSERT"),
            ("logs", "UPDATE"),
            ("logs", "DELETE"),
            ("items", "TRUNCATE"),
            ("items", "INSERT"),
            ("items", "INSERT"),
            ("items", "INSERT"),
        ]
    );
    // Multi-row INSERT and COPY: every row, none lost to deduplication.
    let ids: Vec<i64> = events
        .iter()
        .filter(|e| e.op == "INSERT" && e.table == "items")
        .map(|e| int(e.after.as_ref().unwrap().get("id")))
        .collect();
    assert_eq!(ids, [1, 2, 3, 7, 8, 9]);
    // Transaction metadata: ordinals, last flags, unique deterministic ids.
    let tx = &events[3..6];
    assert!(tx.iter().all(|e| e.commit_lsn == tx[0].commit_lsn));
    assert_eq!(tx.iter().map(|e| e.ordinal).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(
        tx.iter().map(|e| e.last).collect::<Vec<_>>(),
        [false, false, true]
    );
    let mut ids: Vec<&str> = events.iter().map(|e| e.msg_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "Nats-Msg-Id is unique per event");
    // Before/after per replica identity.
    assert!(
        events[3].before.is_none(),
        "DEFAULT identity, key unchanged: no before"
    );
    assert_eq!(int(events[3].after.as_ref().unwrap().get("qty")), 10);
    assert_eq!(
        int(events[4].before.as_ref().unwrap().get("id")),
        2,
        "old key"
    );
    assert_eq!(int(events[4].after.as_ref().unwrap().get("id")), 20);
    assert_eq!(int(events[5].before.as_ref().unwrap().get("id")), 3);
    assert!(events[5].after.is_none());
    let full_update = &events[7];
    assert_eq!(
        text(full_update.before.as_ref().unwrap().get("line")).as_deref(),
        Some("a")
    );
    assert_eq!(
        int(full_update.before.as_ref().unwrap().get("at")),
        1,
        "FULL: whole old row"
    );
    assert_eq!(int(full_update.after.as_ref().unwrap().get("at")), 2);
    assert!(events[9].before.is_none() && events[9].after.is_none());

    // The flush position reaches the last commit once everything is acked.
    let last_commit = events.last().unwrap().commit_lsn;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let confirmed: i64 = client
            .query_one(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot_name()],
            )
            .await
            .unwrap()
            .get::<_, rust_decimal_shim::Numeric>(0)
            .0;
        if confirmed > last_commit {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never confirmed the last commit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Metrics and health endpoints.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{metrics_port}");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "walbrook_producer_events_total{table=\"public.items\",op=\"insert\"} 6",
        "walbrook_producer_events_total{table=\"public.logs\",op=\"update\"} 1",
        "walbrook_producer_events_total{table=\"public.items\",op=\"update_key\"} 1",
        "walbrook_producer_in_flight_acks 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    assert!(metrics.contains("walbrook_producer_publish_ack_seconds_count"));
    // The slot's WAL retention, read with the heartbeats (1 s here): the harness's
    // max_slot_wal_keep_size is unlimited.
    let gauge = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert!(
        gauge("walbrook_producer_slot_retained_wal_bytes").is_some_and(|b| b > 0.0),
        "{metrics}"
    );
    assert_eq!(gauge("walbrook_producer_slot_safe_wal_bytes"), Some(-1.0));
    assert_eq!(gauge("walbrook_producer_slot_lost"), Some(0.0));
    // Every producer metric the shipped alert rules use exists (the rules cannot rot).
    let rules = include_str!("../../docs/alerts/walbrook.rules.yml");
    let used: std::collections::BTreeSet<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("walbrook_producer_") && w.len() > "walbrook_producer_".len())
        .collect();
    assert!(used.len() >= 5, "{used:?}");
    for name in used {
        // A counter's or histogram's family is declared without its sample suffix.
        let family = ["_total", "_count", "_sum", "_bucket"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        // A labelled family exports nothing until it has a sample (snapshots before the
        // first snapshot): such a name must at least be registered.
        let registered = include_str!("../../producer/src/metrics.rs").contains(&format!(
            "\"{}\"",
            family.trim_start_matches("walbrook_producer_")
        ));
        assert!(
            metrics.contains(&format!("# TYPE {family} ")) || registered,
            "the alert rules use {name}, which the producer does not export:\n{metrics}"
        );
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), producer)
        .await
        .expect("the producer stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn schema_lookup_answers_errors_at_once() {
    let OnTable {
        db,
        nats,
        shutdown,
        producer,
        ..
    } = producer_on_table("produce_rpc").await;
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let subject = format!("{ROOT}.{}.rpc.schema", db.name());
    let cases: [(&[u8], &str); 4] = [
        (b"0123456789abcdef", "404"),
        (b"not a fingerprint", "400"),
        (b"0123456789ABCDEF", "400"),
        (b"\xff\xfe", "400"),
    ];
    for (payload, code) in cases {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            nats_client.request(subject.clone(), payload.to_vec().into()),
        )
        .await
        .expect("answered at once")
        .unwrap();
        let headers = reply.headers.expect("error headers");
        assert_eq!(
            headers.get("Nats-Service-Error-Code").unwrap().as_str(),
            code
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(body["error"]["code"].to_string(), code);
    }
    shutdown.cancel();
    producer.await.unwrap().unwrap();
}

#[tokio::test]
async fn missing_prerequisites_stop_with_hints() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("produce_checks");
    let nats = NatsServer::start().unwrap();
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE nokey (v text)")
        .await
        .unwrap();
    let error = pipeline::run(
        config(&db, &nats.url(), "public.nokey, public.absent"),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("\"public\".\"nokey\" has no primary key"),
        "{text}"
    );
    assert!(text.contains("REPLICA IDENTITY FULL"), "{text}");
    assert!(
        text.contains("\"public\".\"absent\" does not exist"),
        "{text}"
    );
    assert!(!error.is_retryable());
}

async fn wait_for_slot(client: &tokio_postgres::Client, slot: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the producer never started streaming"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pg_lsn - pg_lsn` is numeric; read it as text and parse.
mod rust_decimal_shim {
    use tokio_postgres::types::{FromSql, Type};

    pub struct Numeric(pub i64);

    impl<'a> FromSql<'a> for Numeric {
        fn from_sql(
            _: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            // Binary numeric: ndigits, weight, sign, dscale, then base-10000 digits.
            let n = |i: usize| i16::from_be_bytes([raw[i], raw[i + 1]]);
            let (ndigits, weight) = (n(0), n(2));
            let mut value: i64 = 0;
            for d in 0..ndigits {
                value = value * 10_000 + i64::from(n(8 + 2 * d as usize));
            }
            for _ in 0..(i32::from(weight) - i32::from(ndigits) + 1) {
                value *= 10_000;
            }
            Ok(Numeric(value))
        }

        fn accepts(ty: &Type) -> bool {
            *ty == Type::NUMERIC
        }
    }
}

fn is_unchanged(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::Union(_, inner)) if matches!(inner.as_ref(), Value::Record(f) if f.is_empty()))
}

#[tokio::test]
async fn toast_ddl_partitions_and_index_identity() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("produce_ddl");
    let nats = NatsServer::start().unwrap();
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             CREATE TABLE measurements (at date NOT NULL, v int, PRIMARY KEY (at))
               PARTITION BY RANGE (at);
             CREATE TABLE measurements_2024 PARTITION OF measurements
               FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             CREATE TABLE measurements_2025 PARTITION OF measurements
               FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             CREATE TABLE codes (id int, code text NOT NULL, label text);
             CREATE UNIQUE INDEX codes_code ON codes (code);
             ALTER TABLE codes REPLICA IDENTITY USING INDEX codes_code;",
        )
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(
        config(
            &db,
            &nats.url(),
            "public.docs, public.measurements, public.codes",
        ),
        shutdown.clone(),
    ));
    wait_for_slot(&client, &db.slot_name()).await;
    for statement in [
        "INSERT INTO docs VALUES (1, 'a', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g))",
        // The TOASTed body is not sent: it must arrive marked unchanged, not NULL.
        "UPDATE docs SET title = 'b' WHERE id = 1",
        "ALTER TABLE docs ADD COLUMN tags text[]",
        "INSERT INTO docs VALUES (2, 'c', 'short', '{x,NULL}')",
        "ALTER TABLE docs DROP COLUMN title",
        "INSERT INTO docs VALUES (3, 'd', NULL)",
        "INSERT INTO measurements VALUES ('2024-06-01', 1), ('2025-06-01', 2)",
        "INSERT INTO codes VALUES (1, 'k1', 'first')",
        "UPDATE codes SET code = 'k2' WHERE code = 'k1'",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let events = read_events(&nats_client, db.name(), 8).await;
    let ops: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.table.as_str(), e.op.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("docs", "INSERT"),
            ("docs", "UPDATE"),
            ("docs", "INSERT"),
            ("docs", "INSERT"),
            ("measurements", "INSERT"),
            ("measurements", "INSERT"),
            ("codes", "INSERT"),
            ("codes", "UPDATE_KEY"),
        ]
    );
    let update = events[1].after.as_ref().unwrap();
    assert_eq!(text(update.get("title")).as_deref(), Some("b"));
    assert!(
        is_unchanged(update.get("body")),
        "unchanged TOAST is marked: {:?}",
        update.get("body")
    );
    // DDL mid-stream: the added column appears, then the dropped one disappears.
    let second = events[2].after.as_ref().unwrap();
    assert!(second.contains_key("tags") && second.contains_key("title"));
    let third = events[3].after.as_ref().unwrap();
    assert!(third.contains_key("tags") && !third.contains_key("title"));
    // Partitions are published under the root table.
    assert!(events[4..6].iter().all(|e| e.table == "measurements"));
    // REPLICA IDENTITY USING INDEX: the old identity is the index column.
    let key_change = &events[7];
    assert_eq!(
        text(key_change.before.as_ref().unwrap().get("code")).as_deref(),
        Some("k1")
    );
    assert_eq!(
        text(key_change.after.as_ref().unwrap().get("code")).as_deref(),
        Some("k2")
    );

    // Three schema versions of docs were announced on the schema subject.
    let js = jetstream::new(nats_client.clone());
    let mut schema_stream = js
        .get_stream(format!("{ROOT}_{}_SCHEMA", db.name()))
        .await
        .unwrap();
    let announced = schema_stream.info().await.unwrap().state.messages;
    let mut seen = Vec::new();
    for seq in 1..=announced {
        let m = schema_stream.get_raw_message(seq).await.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        seen.push(format!("{} {}", doc["table"], doc["fingerprint"]));
    }
    assert_eq!(announced, 5, "docs ×3, measurements, codes: {seen:#?}");
    shutdown.cancel();
    producer.await.unwrap().unwrap();
}

#[tokio::test]
async fn authenticates_to_nats_and_never_logs_the_password() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("produce_auth");
    let nats = NatsServer::start_with_config(
        "authorization { users: [ { user: walbrook, password: \"s3cret-pw\" } ] }\n",
    )
    .unwrap();
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let with_password = |password: &str| {
        let mut raw = RawConfig::default();
        raw.apply_env([
            ("WALBROOK_PG_URL", db.url()),
            ("WALBROOK_NATS_URL", nats.url()),
            ("WALBROOK_NATS_USER", "walbrook".to_string()),
            ("WALBROOK_NATS_PASSWORD", password.to_string()),
            ("WALBROOK_TABLES", "public.t".to_string()),
            ("WALBROOK_SLOT", db.slot_name()),
            ("WALBROOK_PUBLICATION", db.publication_name()),
            ("WALBROOK_ROOT", ROOT.to_string()),
        ])
        .unwrap();
        raw.validate().unwrap()
    };
    let wrong = with_password("wrong-pw");
    assert!(
        !format!("{wrong:?}").contains("wrong-pw"),
        "Debug hides the password"
    );
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        pipeline::run(wrong, CancellationToken::new()),
    )
    .await
    .expect("a refused login fails fast")
    .unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("NATS: connecting to"), "{text}");
    assert!(!text.contains("wrong-pw"), "{text}");
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot_name()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slots, 0,
        "no slot is created for a producer that cannot reach NATS"
    );

    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(with_password("s3cret-pw"), shutdown.clone()));
    wait_for_slot(&client, &db.slot_name()).await;
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let reader =
        async_nats::ConnectOptions::with_user_and_password("walbrook".into(), "s3cret-pw".into())
            .connect(nats.url())
            .await
            .unwrap();
    let events = read_events(&reader, db.name(), 1).await;
    assert_eq!(events[0].op, "INSERT");
    shutdown.cancel();
    producer.await.unwrap().unwrap();
}

#[tokio::test]
async fn foreign_messages_in_the_change_stream_do_not_stop_the_producer() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("produce_foreign");
    let nats = NatsServer::start().unwrap();
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(nats_client.clone());
    let subject = format!("{ROOT}.{}.wal.public.t", db.name());
    let stream_name = format!("{ROOT}_{}_WAL", db.name());
    let count = |js: jetstream::Context, name: String| async move {
        let mut stream = js.get_stream(&name).await.unwrap();
        stream.info().await.unwrap().state.messages
    };
    let wait_for = |want: u64| {
        let js = js.clone();
        let name = stream_name.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while count(js.clone(), name.clone()).await < want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "stream never reached {want}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    for round in 0..2 {
        let shutdown = CancellationToken::new();
        let producer = tokio::spawn(pipeline::run(
            config(&db, &nats.url(), "public.t"),
            shutdown.clone(),
        ));
        wait_for_slot(&client, &db.slot_name()).await;
        let base = round * 3;
        client
            .batch_execute(&format!("INSERT INTO t VALUES ({})", base + 1))
            .await
            .unwrap();
        wait_for(base as u64 + 1).await;
        // Someone else publishes into the change stream (no Walbrook headers).
        js.publish(subject.clone(), "not avro".into())
            .await
            .unwrap()
            .await
            .unwrap();
        client
            .batch_execute(&format!("INSERT INTO t VALUES ({})", base + 2))
            .await
            .unwrap();
        wait_for(base as u64 + 3).await;
        shutdown.cancel();
        producer.await.unwrap().unwrap();
    }
    // 4 events + 2 foreign messages; the restart resumed past the foreign message
    // without publishing anything twice.
    let stream = js.get_stream(&stream_name).await.unwrap();
    let mut positions = Vec::new();
    for seq in 1..=stream.cached_info().state.messages {
        let message = stream.get_raw_message(seq).await.unwrap();
        if let Some(id) = message.headers.get("Walbrook-Ordinal") {
            positions.push((
                message
                    .headers
                    .get("Walbrook-Commit-Lsn")
                    .unwrap()
                    .to_string(),
                id.to_string(),
            ));
        }
    }
    assert_eq!(stream.cached_info().state.messages, 6);
    assert_eq!(positions.len(), 4);
    let mut unique = positions.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "no event stored twice: {positions:?}");
}

/// The key column of each event, as text (`id` columns are ints).
fn ids(events: &[Event]) -> Vec<(String, i64)> {
    events
        .iter()
        .map(|e| (e.table.clone(), int(e.after.as_ref().unwrap().get("id"))))
        .collect()
}

#[tokio::test]
async fn tables_are_added_and_removed_at_runtime_through_the_sql_api() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("produce_tables");
    let nats = NatsServer::start().unwrap();
    let client = sql(&db).await;
    let nobody = format!("{}_nobody", db.name());
    client
        .batch_execute(&format!(
            r#"CREATE TABLE a (id int PRIMARY KEY);
               CREATE TABLE "we.ird ""b""" (id int PRIMARY KEY);
               CREATE TABLE nokey (id int);
               CREATE VIEW v AS SELECT 1 AS id;
               CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
               CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
               CREATE ROLE {nobody};"#
        ))
        .await
        .unwrap();
    let publication = db.publication_name();
    let hostile = r#""public"."we.ird ""b""""#;
    let start = || {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(pipeline::run(
            config(&db, &nats.url(), "public.a"),
            shutdown.clone(),
        ));
        (shutdown, handle)
    };
    let (shutdown, producer) = start();
    wait_for_slot(&client, &db.slot_name()).await;
    let reader = async_nats::connect(nats.url()).await.unwrap();

    // Not published yet: only `a` arrives.
    client
        .batch_execute(r#"INSERT INTO "we.ird ""b""" VALUES (1)"#)
        .await
        .unwrap();
    let xid: String = client
        .query_one(
            "WITH i AS (INSERT INTO a VALUES (1) RETURNING 1) \
             SELECT pg_current_xact_id()::text FROM i",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let events = read_events(&reader, db.name(), 1).await;
    assert_eq!(ids(&events), [("a".to_string(), 1)]);
    // The event's xid is PostgreSQL's 64-bit xid8 (epoch included).
    assert_eq!(events[0].xid.to_string(), xid);

    // Added at runtime, by name with dots and quotes: published from that point on,
    // without a restart.
    client
        .execute(
            "SELECT _walbrook.add_table($1, $2::text::regclass)",
            &[&publication, &hostile],
        )
        .await
        .unwrap();
    client
        .batch_execute(r#"INSERT INTO "we.ird ""b""" VALUES (2); INSERT INTO a VALUES (2);"#)
        .await
        .unwrap();
    let events = read_events(&reader, db.name(), 3).await;
    assert_eq!(
        ids(&events[1..]),
        [("we.ird \"b\"".to_string(), 2), ("a".to_string(), 2)]
    );

    // Refusals, each with its reason, and nothing changed by them.
    let refused = |table: &'static str, function: &'static str| {
        let client = &client;
        let publication = publication.clone();
        async move {
            let error = client
                .execute(
                    &format!("SELECT _walbrook.{function}($1, $2::text::regclass)"),
                    &[&publication, &table],
                )
                .await
                .unwrap_err();
            let db_error = error.as_db_error().expect("a database error").clone();
            format!(
                "{} / hint: {}",
                db_error.message(),
                db_error.hint().unwrap_or("")
            )
        }
    };
    let text = refused("public.nokey", "add_table").await;
    assert!(
        text.contains("has no primary key or replica identity"),
        "{text}"
    );
    assert!(text.contains("REPLICA IDENTITY FULL"), "{text}");
    let text = refused("public.v", "add_table").await;
    assert!(text.contains("is not a table"), "{text}");
    let text = refused("public.parted_1", "add_table").await;
    assert!(text.contains("is a partition"), "{text}");
    let text = refused("public.a", "remove_table").await;
    assert!(
        text.contains("listed in the producer's configuration"),
        "{text}"
    );
    let error = client
        .execute(
            "SELECT _walbrook.add_table('no_such_publication', 'public.nokey'::regclass)",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains("publication"),
        "{error:?}"
    );
    // EXECUTE is not granted to PUBLIC.
    let error = client
        .batch_execute(&format!(
            "SET ROLE {nobody}; SELECT _walbrook.add_table('{publication}', 'public.a')"
        ))
        .await
        .unwrap_err();
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains("permission denied"),
        "{error:?}"
    );
    client.batch_execute("RESET ROLE").await.unwrap();

    // A restart keeps the runtime addition (the publication is reconciled with the
    // configured tables plus the runtime ones).
    shutdown.cancel();
    producer.await.unwrap().unwrap();
    let (shutdown, producer) = start();
    wait_for_slot(&client, &db.slot_name()).await;
    client
        .batch_execute(r#"INSERT INTO "we.ird ""b""" VALUES (3)"#)
        .await
        .unwrap();
    let events = read_events(&reader, db.name(), 4).await;
    assert_eq!(ids(&events[3..]), [("we.ird \"b\"".to_string(), 3)]);
    let rows = client
        .query(
            "SELECT schema_name, table_name, origin FROM _walbrook.tables
              WHERE publication = $1 ORDER BY origin, table_name",
            &[&publication],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            ("public".into(), "a".into(), "config".into()),
            ("public".into(), "we.ird \"b\"".into(), "runtime".into()),
        ]
    );

    // Removed at runtime: no longer published, again without a restart.
    client
        .execute(
            "SELECT _walbrook.remove_table($1, $2::text::regclass)",
            &[&publication, &hostile],
        )
        .await
        .unwrap();
    client
        .batch_execute(r#"INSERT INTO "we.ird ""b""" VALUES (4); INSERT INTO a VALUES (3);"#)
        .await
        .unwrap();
    let events = read_events(&reader, db.name(), 5).await;
    assert_eq!(ids(&events[4..]), [("a".to_string(), 3)]);
    shutdown.cancel();
    producer.await.unwrap().unwrap();
}

#[tokio::test]
async fn streams_over_tls_to_postgres_and_nats_with_client_certificates() {
    let ca = walbrook_harness::TestCa::new("walbrook").unwrap();
    let other_ca = walbrook_harness::TestCa::new("impostor").unwrap();
    // PostgreSQL accepts only TLS with a client certificate from `ca`.
    let pg = PgServer::start_tls(&ca).unwrap();
    let db = pg.fresh_database("produce_tls");
    let server = ca.server("nats-server").unwrap();
    let client_cert = ca.client("walbrook-producer", "walbrook-producer").unwrap();
    let nats = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        server.cert.display(),
        server.key.display(),
        ca.ca_file().display()
    ))
    .unwrap();
    // The harness URL has sslmode=require plus the client certificate; verify the
    // server's certificate and host name too.
    // (By host name: pgwire-replication verifies host names only for DNS names.)
    let verified = |ca_file: &std::path::Path| {
        db.url().replace("@127.0.0.1:", "@localhost:").replace(
            "sslmode=require",
            &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
        )
    };
    let config_for = |pg_url: String, with_client_cert: bool| {
        let mut env = vec![
            ("WALBROOK_PG_URL", pg_url),
            ("WALBROOK_NATS_URL", nats.url()),
            ("WALBROOK_NATS_TLS_CA", ca.ca_file().display().to_string()),
            ("WALBROOK_TABLES", "public.t".to_string()),
            ("WALBROOK_SLOT", db.slot_name()),
            ("WALBROOK_PUBLICATION", db.publication_name()),
            ("WALBROOK_ROOT", ROOT.to_string()),
        ];
        if with_client_cert {
            env.push((
                "WALBROOK_NATS_TLS_CERT",
                client_cert.cert.display().to_string(),
            ));
            env.push((
                "WALBROOK_NATS_TLS_KEY",
                client_cert.key.display().to_string(),
            ));
        }
        let mut raw = RawConfig::default();
        raw.apply_env(env).unwrap();
        raw.validate().unwrap()
    };
    let client = pipeline::connect_sql(&verified(ca.ca_file()))
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();

    // Refusals, each saying why: plain text to PostgreSQL, a server certificate from
    // another CA, and NATS without a client certificate.
    let plain = db.url().replace("sslmode=require", "sslmode=disable");
    let plain = plain.split("&sslcert").next().unwrap().to_string();
    let error = pipeline::connect_sql(&plain).await.unwrap_err().to_string();
    assert!(
        error.contains("pg_hba.conf") && error.contains("no encryption"),
        "{error}"
    );
    let error = pipeline::connect_sql(&verified(other_ca.ca_file()))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        pipeline::run(
            config_for(verified(ca.ca_file()), false),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("a refused TLS handshake fails fast")
    .unwrap_err()
    .to_string();
    assert!(error.starts_with("NATS: connecting to"), "{error}");

    // Verified TLS both ways: the producer streams (SQL and replication connections
    // over TLS with a client certificate; NATS with mutual TLS).
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(
        config_for(verified(ca.ca_file()), true),
        shutdown.clone(),
    ));
    wait_for_slot(&client, &db.slot_name()).await;
    client
        .batch_execute("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    let reader = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.ca_file().to_path_buf())
        .add_client_certificate(client_cert.cert.clone(), client_cert.key.clone())
        .connect(nats.url())
        .await
        .unwrap();
    let events = read_events(&reader, db.name(), 2).await;
    assert_eq!(
        events
            .iter()
            .map(|e| int(e.after.as_ref().unwrap().get("id")))
            .collect::<Vec<_>>(),
        [1, 2]
    );
    shutdown.cancel();
    producer.await.unwrap().unwrap();
}

#[tokio::test]
async fn authenticates_to_nats_with_a_token_an_nkey_or_a_creds_file() {
    let pg = PgServer::shared();
    let user = nkeys::KeyPair::new_user();
    // Operator (JWT) mode: the producer and the reader are two users of one account.
    let jwt = walbrook_harness::NatsAuth::new("walbrook").unwrap();
    let producer_creds = jwt.user_creds_file("producer").unwrap();
    let reader_creds =
        async_nats::ConnectOptions::with_credentials_file(jwt.user_creds_file("reader").unwrap())
            .await
            .unwrap();
    let cases = [
        (
            "authorization { token: \"t0ken-s3cret\" }\n".to_string(),
            ("WALBROOK_NATS_TOKEN", "t0ken-s3cret".to_string()),
            async_nats::ConnectOptions::with_token("t0ken-s3cret".into()),
        ),
        (
            format!(
                "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
                user.public_key()
            ),
            ("WALBROOK_NATS_NKEY", user.seed().unwrap()),
            async_nats::ConnectOptions::with_nkey(user.seed().unwrap()),
        ),
        (
            jwt.server_config(),
            ("WALBROOK_NATS_CREDS", producer_creds.display().to_string()),
            reader_creds,
        ),
    ];
    for (index, (server_config, credential, reader_options)) in cases.into_iter().enumerate() {
        let db = pg.fresh_database(&format!("produce_auth_{index}"));
        let nats = NatsServer::start_with_config(&server_config).unwrap();
        let client = sql(&db).await;
        client
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
            .await
            .unwrap();
        let mut raw = RawConfig::default();
        raw.apply_env([
            ("WALBROOK_PG_URL", db.url()),
            ("WALBROOK_NATS_URL", nats.url()),
            credential.clone(),
            ("WALBROOK_TABLES", "public.t".to_string()),
            ("WALBROOK_SLOT", db.slot_name()),
            ("WALBROOK_PUBLICATION", db.publication_name()),
            ("WALBROOK_ROOT", ROOT.to_string()),
        ])
        .unwrap();
        let config = raw.validate().unwrap();
        // The secret: the token, the seed, or the seed inside the creds file (its path is
        // not secret).
        let secret = if credential.0 == "WALBROOK_NATS_CREDS" {
            let text = std::fs::read_to_string(&credential.1).unwrap();
            let seed = text
                .lines()
                .skip_while(|l| !l.contains("BEGIN USER NKEY SEED"))
                .nth(1)
                .unwrap()
                .to_string();
            assert!(seed.starts_with("SU"), "{seed}");
            seed
        } else {
            credential.1.clone()
        };
        assert!(
            !format!("{config:?}").contains(&secret),
            "Debug hides the secret"
        );
        let shutdown = CancellationToken::new();
        let producer = tokio::spawn(pipeline::run(config, shutdown.clone()));
        wait_for_slot(&client, &db.slot_name()).await;
        client
            .batch_execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let reader = reader_options.connect(nats.url()).await.unwrap();
        let events = read_events(&reader, db.name(), 1).await;
        assert_eq!(events[0].op, "INSERT", "{}", credential.0);
        shutdown.cancel();
        producer.await.unwrap().unwrap();
    }
}

/// `walbrook_producer_replication_lag_seconds` falls to ~0 when the producer is caught up and
/// idle (heartbeats carry their write time), and rises while no WAL reaches it. It kept the
/// last transaction's value: a commit decoded 2.5 s late left an idle producer at 2.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_lag_falls_when_caught_up_and_rises_when_stuck() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("produce_lag");
    let nats = NatsServer::start().unwrap();
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let upstream: std::net::SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse().unwrap();
    let proxy = walbrook_harness::FaultProxy::start(upstream).unwrap();
    let mut producer_config = config(&db, &nats.url(), "public.t");
    producer_config.pg_url = walbrook_producer::config::Secret::new(format!(
        "postgresql://postgres@127.0.0.1:{}/{}?sslmode=disable",
        proxy.port(),
        db.name()
    ));
    producer_config.heartbeat_interval = Duration::from_millis(300);
    let lag_when = async |metrics: &walbrook_producer::metrics::Metrics,
                          what: &str,
                          ok: &dyn Fn(f64) -> bool| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let lag = metrics
                .render()
                .lines()
                .find(|l| l.starts_with("walbrook_producer_replication_lag_seconds "))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .expect("the lag gauge is exported");
            if ok(lag) {
                return lag;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: lag {lag}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // A first run creates the slot; a commit made while no producer runs is decoded late.
    let shutdown = CancellationToken::new();
    let first = tokio::spawn(pipeline::run(producer_config.clone(), shutdown.clone()));
    wait_for_slot(&client, &db.slot_name()).await;
    shutdown.cancel();
    first.await.unwrap().unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let metrics = walbrook_producer::metrics::Metrics::new();
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run_with_metrics(
        producer_config,
        shutdown.clone(),
        metrics.clone(),
    ));
    // The late commit is published (its lag was 2.5 s when decoded)…
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = js.get_stream(format!("{ROOT}_{}_WAL", db.name())).await
            && stream.info().await.is_ok_and(|i| i.state.messages == 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and then, caught up and idle, the lag is ~0.
    lag_when(&metrics, "caught up and idle", &|lag| lag < 0.5).await;
    // No WAL reaches the producer any more: the lag grows past the stall threshold.
    proxy.sever();
    lag_when(&metrics, "stuck", &|lag| lag > 1.5).await;
    proxy.restore();
    lag_when(&metrics, "caught up again", &|lag| lag < 0.5).await;
    shutdown.cancel();
    let _ = producer.await;
}

/// The walsender terminated by the server side (`pg_terminate_backend`, FATAL 57P01: what an
/// operator, a failover tool or a connection killer does) is a lost connection like any
/// other: the producer reconnects and streams on (it exited with the error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_walsender_is_reconnected() {
    let OnTable {
        db,
        nats,
        client,
        shutdown,
        producer,
    } = producer_on_table("produce_term").await;
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    read_events(&nats_client, db.name(), 1).await;
    for round in 0..2 {
        let row = client
            .query_one(
                "SELECT pg_terminate_backend(active_pid), active_pid FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&db.slot_name()],
            )
            .await
            .unwrap();
        let (terminated, old_pid): (Option<bool>, Option<i32>) = (row.get(0), row.get(1));
        assert_eq!(
            terminated,
            Some(true),
            "round {round}: no walsender to terminate"
        );
        assert!(
            !producer.is_finished(),
            "round {round}: the producer stopped"
        );
        // Back on the slot (a new walsender: the terminated one may still be listed for a
        // moment), then a change made after it arrives.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let active: Option<i32> = client
                .query_one(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&db.slot_name()],
                )
                .await
                .unwrap()
                .get(0);
            if active.is_some() && active != old_pid {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no new walsender"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for_slot(&client, &db.slot_name()).await;
        client
            .execute("INSERT INTO t VALUES ($1)", &[&(round + 2)])
            .await
            .unwrap();
    }
    let events = read_events(&nats_client, db.name(), 3).await;
    assert_eq!(events.len(), 3);
    assert!(!producer.is_finished(), "the producer stopped");
    shutdown.cancel();
    producer.await.unwrap().unwrap();
}

/// JetStream remembers the last message id of a stream across a restart only within the
/// duplicate window. After a restart that followed a longer idle period, the next change's
/// `Nats-Expected-Last-Msg-Id` names a message JetStream no longer knows as the last one,
/// although it is stored there: the producer re-anchors its chain on it (it retried for 60 s,
/// then stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_re_anchors_after_a_nats_restart_past_the_duplicate_window() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("produce_idle");
    let mut nats = NatsServer::start().unwrap();
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut producer_config = config(&db, &nats.url(), "public.t");
    producer_config.stream.duplicate_window = Duration::from_secs(1);
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(producer_config, shutdown.clone()));
    wait_for_slot(&client, &db.slot_name()).await;
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    read_events(&nats_client, db.name(), 1).await;
    // Idle for longer than the duplicate window, then a NATS restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart().unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let events = read_events(&nats_client, db.name(), 2).await;
    assert_eq!(events.len(), 2);
    assert!(!producer.is_finished(), "the producer stopped");
    shutdown.cancel();
    producer.await.unwrap().unwrap();
}

/// A schema announcement is acknowledged before the first event that uses it (protocol
/// §5.1): with the schema stream full (an operator's `max_msgs` with discard `new`), the
/// announcement is refused, the producer stops naming it, and the event was never
/// published (it was queued behind the announcement and stored without it).
#[tokio::test]
async fn an_announcement_is_stored_before_its_first_event() {
    use walbrook_protocol::{StreamKind, Subjects};
    let (db, nats, client) =
        fresh_source("announce_first", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let subjects = Subjects::new(ROOT, db.name());
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: subjects.stream_name(StreamKind::Schema),
        subjects: vec![subjects.stream_subjects(StreamKind::Schema)],
        max_messages: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish(subjects.schema_announcement("public", "other"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(
        config(&db, &nats.url(), "public.t"),
        shutdown.clone(),
    ));
    wait_for_slot(&client, &db.slot_name()).await;
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), producer)
        .await
        .expect("the producer stops at the refused announcement")
        .unwrap();
    let error = stopped.expect_err("a refused announcement stops the producer");
    assert!(
        error.to_string().contains("maximum messages exceeded"),
        "{error}"
    );
    let wal = js
        .get_stream(subjects.stream_name(StreamKind::Wal))
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&subjects.change("public", "t"))
        .await;
    assert!(
        wal.is_err(),
        "the event was published without its announcement: {:?}",
        wal.map(|m| m.sequence)
    );
}

/// A stop waits at most `shutdown_timeout` for acknowledgements: with NATS gone the producer
/// exits with an error that says how many messages were not acknowledged, and the slot is
/// not confirmed past them (before, the drain waited for ever and only a SIGKILL ended it).
#[tokio::test]
async fn a_stop_without_acknowledgements_ends_after_the_shutdown_timeout() {
    let (db, mut nats, client) =
        fresh_source("shutdown_timeout", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut settings = config(&db, &nats.url(), "public.t");
    settings.shutdown_timeout = Duration::from_secs(2);
    // No heartbeats: nothing but the rows below could move the confirmed position.
    settings.heartbeat_interval = Duration::ZERO;
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(settings, shutdown.clone()));
    wait_for_slot(&client, &db.slot_name()).await;
    nats.stop();
    let before: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("INSERT INTO t SELECT generate_series(1, 10)")
        .await
        .unwrap();
    // Decoded and waiting for JetStream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(20), producer)
        .await
        .expect("the stop ends after shutdown_timeout")
        .unwrap();
    let error = stopped.expect_err("unacknowledged messages make the stop an error");
    let text = error.to_string();
    assert!(
        text.contains("shutdown_timeout") && text.contains("message(s)"),
        "{text}"
    );
    let confirmed_past: bool = client
        .query_one(
            "SELECT confirmed_flush_lsn > $2::text::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&db.slot_name(), &before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!confirmed_past, "nothing unacknowledged is confirmed");
}

/// A configured table dropped after its changes were published does not stop a restart
/// (before, the start-up check refused it and WAL piled up behind a producer that could not
/// start): the other tables stream. A configured table that never existed is still refused.
#[tokio::test]
async fn a_dropped_table_does_not_stop_a_restart() {
    let (db, nats, client) = fresh_source(
        "dropped_table",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);",
    )
    .await;
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(
        config(&db, &nats.url(), "public.a, public.b"),
        shutdown.clone(),
    ));
    wait_for_slot(&client, &db.slot_name()).await;
    client
        .batch_execute("INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);")
        .await
        .unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream_name = format!("{ROOT}_{}_WAL", db.name());
    let b_subject = format!("{ROOT}.{}.wal.public.b", db.name());
    let stored_on_b = |js: jetstream::Context| {
        let (stream_name, b_subject) = (stream_name.clone(), b_subject.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let last = js
                    .get_stream(&stream_name)
                    .await
                    .unwrap()
                    .get_last_raw_message_by_subject(&b_subject)
                    .await;
                if let Ok(message) = last {
                    return message.sequence;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "b's change is stored"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let first = stored_on_b(js.clone()).await;
    shutdown.cancel();
    producer.await.unwrap().unwrap();

    client.batch_execute("DROP TABLE a").await.unwrap();
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(
        config(&db, &nats.url(), "public.a, public.b"),
        shutdown.clone(),
    ));
    wait_for_slot(&client, &db.slot_name()).await;
    client
        .batch_execute("INSERT INTO b VALUES (2)")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stored_on_b(js.clone()).await == first {
        assert!(
            !producer.is_finished() && tokio::time::Instant::now() < deadline,
            "the producer streams b after a was dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    producer.await.unwrap().unwrap();

    // A table that never existed is a typo: refused.
    let refused = pipeline::run(
        config(&db, &nats.url(), "public.b, public.never"),
        CancellationToken::new(),
    )
    .await
    .expect_err("a table that never existed is refused")
    .to_string();
    assert!(refused.contains("does not exist"), "{refused}");
}

/// `/readyz` means the producer is doing its job: while JetStream acknowledges nothing (NATS
/// stopped, a change waiting) it turns 503 after `NOT_READY_AFTER` and names the reason
/// (before, it stayed 200 while the publisher retried for ever); once NATS is back and the
/// change is stored it is 200 again.
#[tokio::test]
async fn readiness_fails_while_jetstream_acknowledges_nothing() {
    let (db, mut nats, client) = fresh_source(
        "readiness",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (0);",
    )
    .await;
    let metrics_port = walbrook_harness::free_port().unwrap();
    let mut settings = config(&db, &nats.url(), "public.t");
    settings.metrics_addr = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(pipeline::run(settings, shutdown.clone()));
    wait_for_slot(&client, &db.slot_name()).await;
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{metrics_port}/readyz");
    let wait_for = |want: u16, within: Duration| {
        let (http, readyz) = (http.clone(), readyz.clone());
        async move {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if let Ok(answer) = http.get(&readyz).send().await {
                    let status = answer.status().as_u16();
                    let body = answer.text().await.unwrap_or_default();
                    if status == want {
                        return body;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "/readyz still {status} ({body}), expected {want}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_for(200, Duration::from_secs(30)).await;
    nats.stop();
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let why = wait_for(503, Duration::from_secs(40)).await;
    assert!(why.contains("JetStream has not acknowledged"), "{why}");
    nats.start_again().unwrap();
    wait_for(200, Duration::from_secs(60)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), producer)
        .await
        .expect("the producer stops")
        .unwrap()
        .unwrap();
}
