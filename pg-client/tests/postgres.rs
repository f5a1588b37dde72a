//! The PostgreSQL sink against real servers: a source database with a real producer, NATS
//! JetStream, and a second database as the target.

mod common;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walbrook_client::runner::{Runner, RunnerOptions, Sink};
use walbrook_harness::PgServer;
use walbrook_pg_client::{PgSink, PgSinkOptions};

use common::{ROOT, Setup, connect, rows, wait_equal};

const DDL: &str = r#"
CREATE TABLE items (
    id bigint PRIMARY KEY,
    amount numeric(30,10),
    big numeric,
    f8 float8,
    f4 real,
    at timestamptz,
    day date,
    u uuid,
    doc json,
    docb jsonb,
    tags text[],
    grid int[][],
    during tstzrange,
    pt point,
    bytes bytea,
    iv interval,
    note varchar(40),
    payload text NOT NULL DEFAULT '');
ALTER TABLE items ALTER COLUMN payload SET STORAGE EXTERNAL;
CREATE TABLE full_nokey (a int, doc json, note text);
ALTER TABLE full_nokey REPLICA IDENTITY FULL;
CREATE TABLE full_pk (id int PRIMARY KEY, doc json, note text);
ALTER TABLE full_pk REPLICA IDENTITY FULL;
CREATE TABLE "we.ird ""Name" ("K" int, "x y" text, PRIMARY KEY ("K"));
CREATE TABLE evolving (id int PRIMARY KEY, a text, b text);
"#;

const TABLES: &str =
    "public.items, public.full_nokey, public.full_pk, public.\"we.ird \"\"Name\", public.evolving";

const COMPARED: &[&str] = &[
    "items",
    "full_nokey",
    "full_pk",
    "\"we.ird \"\"Name\"",
    "evolving",
];

fn start_runner(
    setup: &Setup,
    target_url: &str,
    consumer: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let (shutdown, task) = run_sink_until_error(setup, target_url, consumer);
    (
        shutdown,
        tokio::spawn(async move { task.await.unwrap().unwrap() }),
    )
}

#[tokio::test]
async fn the_target_reproduces_the_source_exactly_once() {
    let mut setup = Setup::start("sink_pg", DDL, TABLES).await;
    let target_db = PgServer::shared().fresh_database("sink_pg_target");
    let target = connect(&target_db.url()).await;
    setup
        .exec(&[
            "INSERT INTO items (id, amount, big, f8, f4, at, day, u, doc, docb, tags, grid, during, \
             pt, bytes, iv, note, payload) VALUES \
             (1, 12345678901234567890.0123456789, 3.14159265358979323846264338327950288419716939937510, \
              1.0000000000000002, 3.4028235e38, '2024-02-29 12:34:56.789012+05:30', 'infinity', \
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"b\":  [1, 2.50],  \"a\": null}', \
              '{\"z\": 1e400}', ARRAY['x', NULL, 'z''q'], '{{1,2},{3,4}}', \
              '[2024-01-01 00:00+00,infinity)', '(1.5,-2)', '\\xdeadbeef', '1 mon -2 days 00:00:00.000001', \
              'quote \" and '' and \\\\', repeat('long value ', 2000)), \
             (2, 'NaN', NULL, 'NaN', '-Infinity', NULL, NULL, NULL, NULL, NULL, '{}', NULL, 'empty', \
              NULL, '\\x', NULL, NULL, '')",
            // Leaves the TOASTed payload unchanged: the event marks it so; the target keeps it.
            "UPDATE items SET amount = -0.0000000001, note = 'changed' WHERE id = 1",
            // A key change.
            "UPDATE items SET id = 10 WHERE id = 2",
            "BEGIN; INSERT INTO items (id) VALUES (3), (4), (5); DELETE FROM items WHERE id = 4; \
             UPDATE items SET id = 6 WHERE id = 5; COMMIT",
            "INSERT INTO full_nokey VALUES (1, '{\"a\": 1}', 'x'), (1, '{\"a\": 1}', 'x'), (2, '[]', NULL)",
            "UPDATE full_nokey SET note = 'y' WHERE a = 2",
            // Deletes one of two identical rows... both, since the WHERE matches both.
            "DELETE FROM full_nokey WHERE a = 1",
            "INSERT INTO full_nokey VALUES (3, '{ \"spaces\" : true }', 'kept')",
            "INSERT INTO full_pk VALUES (1, '{\"k\": [1]}', 'a'), (2, 'null', 'b')",
            "UPDATE full_pk SET doc = '{\"k\": [2]}' WHERE id = 1",
            "UPDATE full_pk SET id = 3 WHERE id = 2",
            "DELETE FROM full_pk WHERE id = 1",
            "INSERT INTO \"we.ird \"\"Name\" VALUES (1, 'one'), (2, 'two')",
            "TRUNCATE \"we.ird \"\"Name\"",
            "INSERT INTO \"we.ird \"\"Name\" VALUES (3, 'three')",
            "INSERT INTO evolving VALUES (1, 'a', 'b')",
        ])
        .await;
    let (stop, task) = start_runner(&setup, &target_db.url(), "pg_sink");
    wait_equal(&setup.sql, &target, COMPARED, Duration::from_secs(60)).await;
    // The unchanged TOAST value is still in the target.
    let payload: String = target
        .query_one("SELECT payload FROM items WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload.len(), "long value ".len() * 2000);
    // Types and keys were created from the schema.
    let ty: String = target
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'items'::regclass AND attname = 'amount'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "numeric(30,10)");
    let pk: String = target
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = '\"we.ird \"\"Name\"'::regclass AND contype = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, "PRIMARY KEY (\"K\")");
    let not_null: bool = target
        .query_one(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'items'::regclass \
             AND attname = 'payload'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(not_null);

    // Schema evolution: a column added, then one dropped.
    setup
        .exec(&[
            "ALTER TABLE evolving ADD COLUMN c numeric(5,2)",
            "INSERT INTO evolving VALUES (2, 'a2', 'b2', 1.25)",
            "ALTER TABLE evolving DROP COLUMN b",
            "UPDATE evolving SET c = 9.99 WHERE id = 1",
        ])
        .await;
    wait_equal(&setup.sql, &target, COMPARED, Duration::from_secs(60)).await;

    // Stop, change the source, start again with the same consumer: only the new changes are
    // applied (a re-applied insert of id 3 after its delete would resurrect it).
    stop.cancel();
    task.await.unwrap();
    let before_restart: String = setup
        .sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    setup
        .exec(&[
            "DELETE FROM items WHERE id = 3",
            "INSERT INTO items (id, note) VALUES (7, 'after restart')",
        ])
        .await;
    let (stop, task) = start_runner(&setup, &target_db.url(), "pg_sink");
    wait_equal(&setup.sql, &target, COMPARED, Duration::from_secs(60)).await;

    // The checkpoint moved past the changes made while the consumer was stopped.
    let moved: bool = target
        .query_one(
            "SELECT commit_lsn > $1::text::pg_lsn FROM walbrook_checkpoint \
             WHERE consumer = 'pg_sink'",
            &[&before_restart],
        )
        .await
        .unwrap()
        .get(0);
    assert!(moved, "checkpoint not past {before_restart}");
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        rows(&target, "items").await.len(),
        4,
        "ids 1, 6, 7 and 10 remain"
    );
    setup.stop().await;
}

#[tokio::test]
async fn the_sink_reports_its_checkpoint_and_rejects_nothing_valid() {
    let target_db = PgServer::shared().fresh_database("sink_pg_ckpt");
    let mut sink = PgSink::connect(PgSinkOptions::new(target_db.url()))
        .await
        .unwrap();
    // What a runner tells it: the source database (checkpoints are per source).
    sink.bind(&walbrook_client::runner::Binding::new(
        "source",
        std::sync::Arc::new(walbrook_client::runner::RunnerMetrics::new(
            "postgres", "c1",
        )),
    ));
    assert_eq!(sink.name(), "postgres");
    assert_eq!(sink.checkpoint("nobody").await.unwrap(), None);
    let position = walbrook_client::runner::Position {
        commit_lsn: walbrook_client::Lsn(0x16B3F20),
        ordinal: 3,
    };
    sink.store_checkpoint("c1", position).await.unwrap();
    assert_eq!(sink.checkpoint("c1").await.unwrap(), Some(position));
    // Never backwards.
    sink.store_checkpoint(
        "c1",
        walbrook_client::runner::Position {
            commit_lsn: walbrook_client::Lsn(0x16B3F20),
            ordinal: 2,
        },
    )
    .await
    .unwrap();
    assert_eq!(sink.checkpoint("c1").await.unwrap(), Some(position));
}

/// Scale-out instances start together and each creates the checkpoint table when missing;
/// PostgreSQL's `CREATE TABLE IF NOT EXISTS` alone fails for all but one of them when they race
/// (a clean-clone CI run failed on exactly that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_connecting_at_once_all_create_the_checkpoint_table() {
    for round in 0..5 {
        let target_db = PgServer::shared().fresh_database(&format!("sink_pg_race{round}"));
        let connects = (0..8).map(|_| PgSink::connect(PgSinkOptions::new(target_db.url())));
        for (i, result) in futures::future::join_all(connects)
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(e) = result {
                panic!("round {round}: sink {i} failed to connect: {e}");
            }
        }
    }
}

#[tokio::test]
async fn transactions_larger_than_a_batch_are_applied_completely() {
    let mut setup = Setup::start(
        "sink_pg_big",
        "CREATE TABLE big (id bigint PRIMARY KEY, note text)",
        "public.big",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("sink_pg_big_target");
    let target = connect(&target_db.url()).await;
    setup
        .exec(&[
            "INSERT INTO big SELECT g, 'x' FROM generate_series(1, 300) g",
            "DELETE FROM big WHERE id % 3 = 0",
            "UPDATE big SET note = 'y' WHERE id % 2 = 0",
        ])
        .await;
    let shutdown = CancellationToken::new();
    let client = setup.client().await;
    let sink = PgSink::connect(PgSinkOptions::new(target_db.url()))
        .await
        .unwrap();
    let mut options = RunnerOptions::new("big", ["public.big"]);
    options.max_batch_events = 7;
    let mut runner = Runner::new(client, sink, options);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    wait_equal(&setup.sql, &target, &["big"], Duration::from_secs(30)).await;
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

/// Applies one source transaction of 2,500 inserted rows with `options` into a target
/// whose audit trigger records the transaction of every row write; returns the writes, the
/// target transactions and the rows of the largest one.
async fn apply_one_large_transaction(prefix: &str, options: RunnerOptions) -> (i64, i64, i64) {
    let mut setup = Setup::start(
        prefix,
        "CREATE TABLE wide (id bigint PRIMARY KEY, note text)",
        "public.wide",
    )
    .await;
    let target_db = PgServer::shared().fresh_database(&format!("{prefix}_target"));
    let target = connect(&target_db.url()).await;
    target
        .batch_execute(
            "CREATE TABLE wide (id bigint PRIMARY KEY, note text);
             CREATE TABLE audit (tx xid8 NOT NULL);
             CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO audit VALUES (pg_current_xact_id()); RETURN NULL; END $$;
             CREATE TRIGGER audit AFTER INSERT OR UPDATE ON wide
               FOR EACH ROW EXECUTE FUNCTION audit();",
        )
        .await
        .unwrap();
    setup
        .exec(&["INSERT INTO wide SELECT g, 'x' FROM generate_series(1, 2500) g"])
        .await;
    let shutdown = CancellationToken::new();
    let client = setup.client().await;
    let sink = PgSink::connect(PgSinkOptions::new(target_db.url()))
        .await
        .unwrap();
    let mut runner = Runner::new(client, sink, options);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    wait_equal(&setup.sql, &target, &["wide"], Duration::from_secs(60)).await;
    shutdown.cancel();
    task.await.unwrap();
    let row = target
        .query_one(
            "SELECT sum(n)::bigint, count(*), max(n) FROM \
             (SELECT count(*) AS n FROM audit GROUP BY tx) per_tx",
            &[],
        )
        .await
        .unwrap();
    setup.stop().await;
    (row.get(0), row.get(1), row.get(2))
}

/// A source transaction larger than the server's default limit of unacknowledged
/// deliveries (1,000) but within the runner's transaction limit is applied in ONE target
/// transaction: the runner raises the consumer's limit (with the default, the batch
/// stalled at 1,000 events and was cut after `transaction_wait`).
#[tokio::test]
async fn a_transaction_above_the_default_ack_limit_is_applied_atomically() {
    let options = RunnerOptions::new("wide", ["public.wide"]);
    assert_eq!(options.max_batch_events, 500, "the default batch limit");
    let (writes, transactions, _) =
        apply_one_large_transaction("sink_pg_ackpending", options).await;
    assert_eq!(writes, 2500, "every row written once");
    assert_eq!(
        transactions, 1,
        "one source transaction, one target transaction"
    );
}

/// A source transaction past `max_transaction_events` is split across target transactions
/// (the limit bounds the events the runner holds, whatever the batch size), and every row
/// is still written exactly once.
#[tokio::test]
async fn a_transaction_past_the_transaction_limit_is_split_without_loss() {
    let mut options = RunnerOptions::new("wide", ["public.wide"]);
    options.max_batch_events = 400;
    options.max_transaction_events = 1_000;
    let (writes, transactions, largest) =
        apply_one_large_transaction("sink_pg_txlimit", options).await;
    assert_eq!(writes, 2500, "every row written once");
    assert!(
        transactions >= 3 && largest <= 1_000,
        "2,500 events cut at 1,000: {transactions} target transactions, the largest of \
         {largest} rows"
    );
}

/// The bootstrap seam: rows of a "snapshot" (here the events of the first transaction, read
/// by an ephemeral subscription, standing in for the snapshot SDK call) and its position,
/// then the live changes from that position: no gap, no double.
#[tokio::test]
async fn bootstrap_then_changes_after_the_snapshot_position() {
    let mut setup = Setup::start(
        "sink_pg_boot",
        "CREATE TABLE b (id int PRIMARY KEY, v text)",
        "public.b",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("sink_pg_boot_target");
    let target = connect(&target_db.url()).await;
    setup
        .exec(&[
            "INSERT INTO b SELECT g, 'snap' FROM generate_series(1, 10) g",
            "BEGIN; INSERT INTO b SELECT g, 'live' FROM generate_series(11, 20) g; \
             UPDATE b SET v = 'changed' WHERE id = 1; COMMIT",
        ])
        .await;
    let client = setup.client().await;
    let mut stream = client
        .subscribe(walbrook_client::Subscription::table("public.b"))
        .await
        .unwrap();
    let events = common::events(&mut stream, 21).await;
    let snapshot: Vec<_> = events[..10].iter().cloned().map(Ok).collect();
    let position = events[10].commit_lsn();
    let sink = PgSink::connect(PgSinkOptions::new(target_db.url()))
        .await
        .unwrap();
    let mut runner = Runner::new(client, sink, RunnerOptions::new("boot", ["public.b"]));
    let metrics = runner.metrics();
    let shutdown = CancellationToken::new();
    let applied = runner
        .bootstrap(futures::stream::iter(snapshot), position, &shutdown)
        .await
        .unwrap();
    assert_eq!(applied, 10);
    assert_eq!(rows(&target, "b").await.len(), 10);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    wait_equal(&setup.sql, &target, &["b"], Duration::from_secs(30)).await;
    // 10 snapshot rows + 11 live changes, none applied twice, none skipped.
    assert_eq!(metrics.applied_total(), 21);
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

/// A message on the change subject that does not decode goes to the dead-letter subject (sink
/// `decode`, with its sequence); the changes after it are applied.
#[tokio::test]
async fn undecodable_messages_are_dead_lettered_and_the_stream_goes_on() {
    let mut setup = Setup::start(
        "sink_pg_garbage",
        "CREATE TABLE g (id int PRIMARY KEY)",
        "public.g",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("sink_pg_garbage_target");
    let target = connect(&target_db.url()).await;
    setup.exec(&["INSERT INTO g VALUES (1)"]).await;
    let nats = async_nats::connect(setup.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let garbage = js
        .publish(setup.wal_subject("public", "g"), "not avro".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    setup.exec(&["INSERT INTO g VALUES (2)"]).await;
    let client = setup.client().await;
    let sink = PgSink::connect(PgSinkOptions::new(target_db.url()))
        .await
        .unwrap();
    let mut runner = Runner::new(
        client.clone(),
        sink,
        RunnerOptions::new("garbage", ["public.g"]),
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    wait_equal(&setup.sql, &target, &["g"], Duration::from_secs(30)).await;
    let letters = walbrook_client::runner::list_dead_letters(&client, "garbage")
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].sink, "decode");
    assert_eq!(letters[0].stream_sequence, Some(garbage));
    assert!(letters[0].event.is_none() && letters[0].decode_error.is_some());
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

/// Refused events whose dead letter would not fit the NATS server's `max_payload` (one
/// claim-checked in the change stream, protocol §3.5, and one that fit the stream but not
/// with the dead letter's headers) are dead-lettered with their bodies in the dead-letter
/// bucket: the stream goes on, they decode back whole even after the producer's object is
/// gone, and a replay removes letters and bodies.
#[tokio::test]
async fn refused_events_too_large_for_one_message_are_dead_lettered_through_the_bucket() {
    let nats = walbrook_harness::NatsServer::start_with_config("max_payload: 65536\n").unwrap();
    let mut setup = Setup::start_with_nats(
        "sink_pg_bigdlq",
        "CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL)",
        "public.docs",
        nats,
    )
    .await;
    let target_db = PgServer::shared().fresh_database("sink_pg_bigdlq_target");
    let target = connect(&target_db.url()).await;
    target
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL);
             CREATE FUNCTION refuse_long() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF length(NEW.body) >= 50000 THEN
                 RAISE EXCEPTION USING ERRCODE = 'check_violation',
                   MESSAGE = 'refused: ' || repeat('this body is too long for the archive; ', 150);
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_long BEFORE INSERT OR UPDATE ON docs
               FOR EACH ROW EXECUTE FUNCTION refuse_long();",
        )
        .await
        .unwrap();
    // Row 2 (320 KB) is in the producer's object store. Row 4 (62 KB) fits a message of the
    // change stream (64 KiB), but not with a dead letter's headers: the refusal's text alone
    // is 4,000 bytes there (the trigger's message, cut).
    setup
        .exec(&[
            "INSERT INTO docs VALUES (1, 'small')",
            "INSERT INTO docs SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 10000) g",
            "INSERT INTO docs VALUES (3, 'small again')",
            "INSERT INTO docs VALUES (4, repeat('x', 62000))",
            "INSERT INTO docs VALUES (5, 'small at the end')",
        ])
        .await;
    let client = setup.client().await;
    let runner = || async {
        let sink = PgSink::connect(PgSinkOptions::new(target_db.url()))
            .await
            .unwrap();
        Runner::new(
            client.clone(),
            sink,
            RunnerOptions::new("bigdlq", ["public.docs"]),
        )
    };
    let mut running = runner().await;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { running.run(stop).await.unwrap() });
    let ids = || async {
        target
            .query("SELECT id FROM docs ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect::<Vec<i32>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let applied = ids().await;
        if applied == [1, 3, 5] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rows around the refused ones are not applied: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap();

    let js = async_nats::jetstream::new(async_nats::connect(setup.nats.url()).await.unwrap());
    let wal = js
        .get_stream(format!("{}_{}_WAL", common::ROOT, setup.db.name()))
        .await
        .unwrap();
    let dlq = js
        .get_stream(format!("{}_{}_DLQ", common::ROOT, setup.db.name()))
        .await
        .unwrap();
    let bucket = format!("{}_{}_DLQ_BODIES", common::ROOT, setup.db.name());
    let letters = walbrook_client::runner::list_dead_letters(&client, "bigdlq")
        .await
        .unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let mut objects = Vec::new();
    for (letter, (id, length, inline_in_wal)) in
        letters.iter().zip([(2, 320_000, false), (4, 62_000, true)])
    {
        assert_eq!(letter.sink, "postgres");
        assert!(letter.error.contains("23514"), "{}", letter.error);
        let event = letter.event.as_ref().expect("decodes");
        assert_eq!(event["after"]["id"], id);
        assert_eq!(
            event["after"]["body"].as_str().expect("the body").len(),
            length
        );
        let original = wal
            .get_raw_message(letter.stream_sequence.unwrap())
            .await
            .unwrap();
        assert_eq!(
            original.payload.is_empty(),
            !inline_in_wal,
            "row {id} in the change stream"
        );
        // The dead letter itself has its body in the dead-letter bucket.
        let stored = dlq.get_raw_message(letter.dlq_sequence).await.unwrap();
        assert!(
            stored.payload.is_empty(),
            "row {id}: the body is not in the message"
        );
        let reference = stored
            .headers
            .get("Walbrook-Payload-Object")
            .expect("a reference")
            .as_str()
            .to_owned();
        let object = reference
            .strip_prefix(&format!("{bucket}/"))
            .unwrap_or_else(|| panic!("row {id}: {reference} is not in {bucket}"))
            .to_owned();
        objects.push(object);
    }

    // The producer's copy of row 2 expires with the change stream; the dead letter keeps its own.
    let large = js
        .get_object_store(format!("{}_{}_LARGE", common::ROOT, setup.db.name()))
        .await
        .unwrap();
    let mut names = Vec::new();
    let mut list = large.list().await.unwrap();
    while let Some(info) = futures::StreamExt::next(&mut list).await {
        names.push(info.unwrap().name);
    }
    assert_eq!(names.len(), 1, "{names:?}");
    large.delete(&names[0]).await.unwrap();
    let again = walbrook_client::runner::list_dead_letters(&client, "bigdlq")
        .await
        .unwrap();
    let lengths: Vec<usize> = again
        .iter()
        .map(|l| {
            l.event.as_ref().expect("still decodes")["after"]["body"]
                .as_str()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(lengths, [320_000, 62_000]);

    // Once the target accepts them, a replay applies both and removes letters and bodies.
    target
        .batch_execute("DROP TRIGGER refuse_long ON docs")
        .await
        .unwrap();
    assert_eq!(runner().await.replay_dead_letters().await.unwrap(), (2, 0));
    assert_eq!(ids().await, [1, 2, 3, 4, 5]);
    assert!(
        walbrook_client::runner::list_dead_letters(&client, "bigdlq")
            .await
            .unwrap()
            .is_empty()
    );
    let bodies = js.get_object_store(&bucket).await.unwrap();
    for object in &objects {
        assert!(
            // A deleted object leaves a marker without chunks.
            bodies.info(object).await.is_ok_and(|info| info.deleted),
            "{object} is removed with its letter"
        );
    }
    setup.stop().await;
}

/// Measures how fast the sink drains a backlog (printed, never asserted; run with
/// `cargo test -p walbrook-pg-client --test postgres --release -- --ignored --nocapture`).
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn measure_backlog_apply_rate() {
    let rows: i64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mut setup = Setup::start(
        "sink_pg_bench",
        "CREATE TABLE m (id bigint PRIMARY KEY, amount numeric(12,2), note text, at timestamptz)",
        "public.m",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("sink_pg_bench_target");
    let target = connect(&target_db.url()).await;
    for chunk in 0..rows / 1000 {
        setup
            .sql
            .batch_execute(&format!(
                "INSERT INTO m SELECT g, g / 100.0, 'note ' || g, now() \
                 FROM generate_series({}, {}) g",
                chunk * 1000,
                chunk * 1000 + 999
            ))
            .await
            .unwrap();
    }
    // Wait until the producer has published the backlog.
    let client = setup.client().await;
    let mut stream = client
        .subscribe(
            walbrook_client::Subscription::table("public.m")
                .start(walbrook_client::Start::Beginning),
        )
        .await
        .unwrap();
    let mut seen = 0;
    while seen < rows {
        seen += stream.next_batch(1000, Duration::from_secs(30)).await.len() as i64;
    }
    drop(stream);
    let sink = PgSink::connect(PgSinkOptions::new(target_db.url()))
        .await
        .unwrap();
    let mut runner = Runner::new(client, sink, RunnerOptions::new("bench", ["public.m"]));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let started = std::time::Instant::now();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    loop {
        let n: i64 = target
            .query_one("SELECT count(*) FROM m", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == rows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    println!(
        "applied {rows} rows in {:.2} s: {:.0} rows/s",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64()
    );
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

/// Source tables mapped to other target tables: an explicit mapping, and a target schema for
/// the others.
#[tokio::test]
async fn tables_map_to_other_names_and_schemas() {
    let mut setup = Setup::start(
        "sink_pg_map",
        "CREATE TABLE one (id int PRIMARY KEY, v text); CREATE TABLE two (id int PRIMARY KEY, v text);",
        "public.one, public.two",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("sink_pg_map_target");
    let target = connect(&target_db.url()).await;
    target
        .batch_execute("CREATE SCHEMA mirror; CREATE SCHEMA \"Arch ive\";")
        .await
        .unwrap();
    setup
        .exec(&[
            "INSERT INTO one VALUES (1, 'a')",
            "INSERT INTO two VALUES (2, 'b')",
        ])
        .await;
    let mut options = PgSinkOptions::new(target_db.url());
    options.tables.insert(
        walbrook_pg_client::TableName::new("public", "one"),
        walbrook_pg_client::TableName::new("Arch ive", "One Copy"),
    );
    options.target_schema = Some("mirror".into());
    let sink = PgSink::connect(options).await.unwrap();
    let client = setup.client().await;
    let mut runner = Runner::new(client, sink, RunnerOptions::new("map", ["public.*"]));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (
            rows(&target, "\"Arch ive\".\"One Copy\"").await,
            rows(&target, "mirror.two").await,
        );
        if a == ["(1,a)"] && b == ["(2,b)"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rows(&target, "public.one").await[0].starts_with("error"));
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

#[tokio::test]
async fn the_target_connection_uses_tls_as_the_url_says_and_refuses_what_it_must() {
    use walbrook_client::Lsn;
    use walbrook_client::runner::{Position, SinkErrorKind};
    let ca = walbrook_harness::TestCa::new("walbrook").unwrap();
    let impostor = walbrook_harness::TestCa::new("impostor").unwrap();
    // The server takes only TLS with a client certificate from `ca`; the harness URL has
    // sslmode=require and that certificate.
    let pg = PgServer::start_tls(&ca).unwrap();
    let db = pg.fresh_database("sink_tls");
    let verified = |ca_file: &std::path::Path| {
        db.url().replace("@127.0.0.1:", "@localhost:").replace(
            "sslmode=require",
            &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
        )
    };
    let mut sink = PgSink::connect(PgSinkOptions::new(verified(ca.ca_file())))
        .await
        .unwrap();
    sink.bind(&walbrook_client::runner::Binding::new(
        "source",
        std::sync::Arc::new(walbrook_client::runner::RunnerMetrics::new(
            "postgres", "tls",
        )),
    ));
    let position = Position {
        commit_lsn: Lsn(0x1_0000_0042),
        ordinal: 7,
    };
    sink.store_checkpoint("tls", position).await.unwrap();
    assert_eq!(sink.checkpoint("tls").await.unwrap(), Some(position));

    // A server certificate from another CA: refused, and for good (not retried).
    let error = PgSink::connect(PgSinkOptions::new(verified(impostor.ca_file())))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), SinkErrorKind::Fatal, "{error}");
    assert!(error.message().contains("TLS"), "{error}");
    // No client certificate: the server refuses the login (SQLSTATE 28000), for good.
    let without_cert: String = {
        let url = db.url();
        let (base, query) = url.split_once('?').unwrap();
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.starts_with("sslcert=") && !p.starts_with("sslkey="))
            .collect();
        format!("{base}?{}", kept.join("&"))
    };
    let error = PgSink::connect(PgSinkOptions::new(without_cert))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), SinkErrorKind::Fatal, "{error}");
    // A plain-text connection to it: refused too.
    let plain = db.url().replace("sslmode=require", "sslmode=disable");
    assert!(PgSink::connect(PgSinkOptions::new(plain)).await.is_err());
}

#[tokio::test]
async fn a_broken_target_connection_is_opened_again_and_nothing_is_lost() {
    // The sink owns one connection to the target. When the target ends it (here by
    // pg_terminate_backend, as a restart or a failover would), the batch in flight fails as
    // transient, the runner retries, and the sink opens a new connection.
    let mut setup = Setup::start(
        "sink_pg_reconnect",
        "CREATE TABLE r (id int PRIMARY KEY, v text)",
        "public.r",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("sink_pg_reconnect_target");
    let target = connect(&target_db.url()).await;
    setup
        .exec(&["INSERT INTO r SELECT g, 'first ' || g FROM generate_series(1, 100) g"])
        .await;
    let sink = PgSink::connect(PgSinkOptions::new(target_db.url()))
        .await
        .unwrap();
    let client = setup.client().await;
    let mut runner = Runner::new(client, sink, RunnerOptions::new("reconnect", ["public.r"]));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    wait_equal(&setup.sql, &target, &["r"], Duration::from_secs(60)).await;
    let ended: i64 = target
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended >= 1, "the sink's connection was not found");
    setup
        .exec(&[
            "INSERT INTO r SELECT g, 'second ' || g FROM generate_series(101, 200) g",
            "UPDATE r SET v = 'updated' WHERE id % 7 = 0",
            "DELETE FROM r WHERE id % 11 = 0",
        ])
        .await;
    wait_equal(&setup.sql, &target, &["r"], Duration::from_secs(60)).await;
    shutdown.cancel();
    task.await.unwrap();
    let client = setup.client().await;
    let letters = walbrook_client::runner::list_dead_letters(&client, "reconnect")
        .await
        .unwrap();
    assert!(letters.is_empty(), "{letters:?}");
    setup.stop().await;
}

/// Runs a PostgreSQL sink for `consumer` of `setup`'s source into `target_url` until the
/// target's `table` has `rows` rows, then stops it.
async fn apply_until(setup: &Setup, target_url: &str, consumer: &str, table: &str, rows: usize) {
    let target = connect(target_url).await;
    let (shutdown, task) = start_runner(setup, target_url, consumer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = common::rows(&target, table).await;
        if got.len() == rows {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{table} holds {got:?} in the target, expected {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap();
}

/// Two source databases whose sinks share a consumer name and a target: each keeps its own
/// checkpoint (keyed by consumer alone, the second source's events, at lower positions than
/// the first's checkpoint, were skipped as already applied).
#[tokio::test]
async fn checkpoints_are_per_source_database() {
    let mut older = Setup::start("ckpt_a", "CREATE TABLE a (id int PRIMARY KEY)", "public.a").await;
    let mut newer = Setup::start("ckpt_b", "CREATE TABLE b (id int PRIMARY KEY)", "public.b").await;
    let target_db = PgServer::shared().fresh_database("ckpt_target");
    // Both sources live in one cluster: the rows of `older` are written first, so their
    // commit LSNs are below every one of `newer`.
    older
        .exec(&["INSERT INTO a SELECT generate_series(1, 5)"])
        .await;
    newer
        .exec(&["INSERT INTO b SELECT generate_series(1, 7)"])
        .await;
    apply_until(&newer, &target_db.url(), "shared", "b", 7).await;
    apply_until(&older, &target_db.url(), "shared", "a", 5).await;
    let target = connect(&target_db.url()).await;
    let keys = common::rows(&target, "walbrook_checkpoint").await;
    assert_eq!(keys.len(), 2, "one checkpoint per source: {keys:?}");
    older.stop().await;
    newer.stop().await;
}

/// A checkpoint table of the earlier layout (keyed by consumer, a row without its source
/// database) is migrated at connect, and its row is adopted: the consumer resumes there
/// instead of applying the stream again from the start.
#[tokio::test]
async fn a_checkpoint_table_keyed_by_consumer_is_migrated_and_its_row_adopted() {
    let mut setup = Setup::start(
        "ckpt_old",
        "CREATE TABLE o (id int PRIMARY KEY)",
        "public.o",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("ckpt_old_target");
    let target = connect(&target_db.url()).await;
    setup
        .exec(&["INSERT INTO o VALUES (1)", "INSERT INTO o VALUES (2)"])
        .await;
    let position: String = setup
        .sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // The old layout, holding a checkpoint past rows 1 and 2 (the target has applied them,
    // then lost them: they must not come again).
    target
        .batch_execute(&format!(
            "CREATE TABLE walbrook_checkpoint (
                 consumer text PRIMARY KEY, source_database text NOT NULL,
                 commit_lsn pg_lsn NOT NULL, ordinal bigint NOT NULL,
                 updated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO walbrook_checkpoint (consumer, source_database, commit_lsn, ordinal)
             VALUES ('old', '', '{position}', 0);
             CREATE TABLE o (id int PRIMARY KEY);"
        ))
        .await
        .unwrap();
    setup.exec(&["INSERT INTO o VALUES (3)"]).await;
    apply_until(&setup, &target_db.url(), "old", "o", 1).await;
    assert_eq!(common::rows(&target, "o").await, ["(3)"]);
    let key: String = target
        .query_one(
            "SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM pg_constraint c
             CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             WHERE c.conrelid = 'walbrook_checkpoint'::regclass AND c.contype = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, "source_database,consumer");
    let owner: String = target
        .query_one("SELECT source_database FROM walbrook_checkpoint", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, setup.db.name());
    setup.stop().await;
}

/// Runs a sink until it stops by itself (an error) or `stop`; returns its outcome.
fn run_sink_until_error(
    setup: &Setup,
    target_url: &str,
    consumer: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), walbrook_client::runner::RunError>>,
) {
    let shutdown = CancellationToken::new();
    let options = setup.options();
    let target_url = target_url.to_owned();
    let consumer = consumer.to_owned();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let client = walbrook_client::Client::connect(options).await.unwrap();
        let sink = PgSink::connect(PgSinkOptions::new(target_url))
            .await
            .unwrap();
        let mut runner = Runner::new(client, sink, RunnerOptions::new(consumer, ["public.*"]));
        runner.run(stop).await
    });
    (shutdown, task)
}

/// `ALTER TABLE … ADD COLUMN … DEFAULT …` gives every existing source row the default without
/// a change event. The rows already in the target get the same value (a constant, a text
/// with quotes and a backslash under NOT NULL, an array, `now()` evaluated once); a volatile
/// default (a value per row that no event carries) stops the sink with an error naming the
/// fix, and once the operator has added the column with the source's values the sink goes
/// on and the target equals the source.
#[tokio::test]
async fn columns_added_with_a_default_give_the_target_rows_the_source_rows_value() {
    const FILLED: &str = "CREATE TABLE filled (id int PRIMARY KEY, note text);";
    let mut setup = Setup::start("sink_pg_default", FILLED, "public.filled").await;
    let target_db = PgServer::shared().fresh_database("sink_pg_default_target");
    let target = connect(&target_db.url()).await;
    setup
        .exec(&["INSERT INTO filled SELECT g, 'row ' || g FROM generate_series(1, 500) g"])
        .await;
    let (stop, task) = run_sink_until_error(&setup, &target_db.url(), "pg_default");
    wait_equal(&setup.sql, &target, &["filled"], Duration::from_secs(60)).await;

    setup
        .exec(&[
            "ALTER TABLE filled ADD COLUMN k int DEFAULT 7",
            r#"ALTER TABLE filled ADD COLUMN s text NOT NULL DEFAULT E'it''s \\ {here}, "quoted"'"#,
            "ALTER TABLE filled ADD COLUMN tags text[] DEFAULT '{a,\"b c\"}'",
            "ALTER TABLE filled ADD COLUMN at timestamptz DEFAULT now()",
            "ALTER TABLE filled ADD COLUMN plain int",
            // The first change after the DDL brings the new schema.
            "INSERT INTO filled (id, note, k, s, plain) VALUES (501, 'new', 8, 'mine', 1)",
            "UPDATE filled SET k = 70 WHERE id = 1",
        ])
        .await;
    let nulls: i64 = setup
        .sql
        .query_one(
            "SELECT count(*) FROM filled WHERE k IS NULL OR at IS NULL OR tags IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls, 0, "the source's rows hold the defaults");
    wait_equal(&setup.sql, &target, &["filled"], Duration::from_secs(60)).await;
    let target_default: Option<String> = target
        .query_one(
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef \
             WHERE adrelid = 'filled'::regclass AND adnum = 3",
            &[],
        )
        .await
        .ok()
        .map(|r| r.get(0));
    assert_eq!(
        target_default, None,
        "the default is dropped once the column is added: later rows take their event's value"
    );

    // A volatile default: PostgreSQL rewrites the table with a value per row.
    setup
        .exec(&[
            "ALTER TABLE filled ADD COLUMN r float8 DEFAULT random()",
            "INSERT INTO filled (id, note) VALUES (502, 'after the rewrite')",
        ])
        .await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the sink stops at a column it cannot fill")
        .unwrap();
    let error = outcome.expect_err("the sink refuses").to_string();
    assert!(
        error.contains("column r") && error.contains("volatile default"),
        "{error}"
    );
    drop(stop);
    let before: Vec<String> = rows(&target, "filled").await;
    assert_eq!(
        before.len(),
        501,
        "nothing after the refused event was applied"
    );

    // The operator's fix: the column with the source's values, then a restart.
    let values = setup
        .sql
        .query("SELECT id, r FROM filled WHERE id <= 501", &[])
        .await
        .unwrap();
    target
        .batch_execute("ALTER TABLE filled ADD COLUMN r float8")
        .await
        .unwrap();
    for row in values {
        let (id, r): (i32, f64) = (row.get(0), row.get(1));
        target
            .execute("UPDATE filled SET r = $2 WHERE id = $1", &[&id, &r])
            .await
            .unwrap();
    }
    let (stop, task) = run_sink_until_error(&setup, &target_db.url(), "pg_default");
    wait_equal(&setup.sql, &target, &["filled"], Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    setup.stop().await;
}

/// Messages the change stream lost before the sink received them (the stream's limits expire
/// the oldest messages; here a purge removes them while the sink is stopped) stop the sink at
/// the first message that names a lost one as its predecessor (`Walbrook-Previous`): the
/// target keeps what it had and gets nothing past the gap. Without the check the sink applied
/// the later change and the lost one was silently missing.
#[tokio::test]
async fn a_gap_in_the_change_stream_stops_the_sink_naming_it() {
    const DDL: &str = "CREATE TABLE kept (id int PRIMARY KEY, note text);
                       CREATE TABLE other (id int PRIMARY KEY);";
    let mut setup = Setup::start("sink_pg_gap", DDL, "public.kept, public.other").await;
    let target_db = PgServer::shared().fresh_database("sink_pg_gap_target");
    let target = connect(&target_db.url()).await;
    setup
        .exec(&[
            "INSERT INTO kept VALUES (1, 'a')",
            "INSERT INTO kept VALUES (2, 'b')",
        ])
        .await;
    let (stop, task) = run_sink_until_error(&setup, &target_db.url(), "pg_gap");
    wait_equal(&setup.sql, &target, &["kept"], Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    // While the sink is stopped: a change of kept, one of other, another of kept.
    setup
        .exec(&[
            "INSERT INTO kept VALUES (3, 'lost')",
            "INSERT INTO other VALUES (1)",
            "INSERT INTO kept VALUES (4, 'after the loss')",
        ])
        .await;
    let nats = async_nats::connect(setup.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream = js
        .get_stream(format!("{ROOT}_{}_WAL", setup.db.name()))
        .await
        .unwrap();
    let kept = format!("{ROOT}.{}.wal.public.kept", setup.db.name());
    let other = format!("{ROOT}.{}.wal.public.other", setup.db.name());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (lost, other_sequence) = loop {
        let last_kept = stream.get_last_raw_message_by_subject(&kept).await;
        let last_other = stream.get_last_raw_message_by_subject(&other).await;
        if let (Ok(k), Ok(o)) = (&last_kept, &last_other)
            && k.sequence > o.sequence
        {
            let previous = k.headers.get("Walbrook-Previous").unwrap().to_string();
            break (previous, o.sequence);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the three changes are stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Everything before other's change goes: kept's row 3 among it.
    stream.purge().sequence(other_sequence).await.unwrap();

    let (_stop, task) = run_sink_until_error(&setup, &target_db.url(), "pg_gap");
    let outcome = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the sink stops at the gap")
        .unwrap();
    let error = outcome.expect_err("a gap is an error").to_string();
    assert!(
        error.contains("gap in the change stream")
            && error.contains(&format!("message {lost} on {kept}")),
        "{error}"
    );
    assert_eq!(
        rows(&target, "kept").await,
        vec!["(1,a)".to_string(), "(2,b)".to_string()],
        "nothing past the gap is applied"
    );
    assert_eq!(
        rows(&target, "other").await,
        vec!["(1)".to_string()],
        "what came before the gap is"
    );
    setup.stop().await;
}
