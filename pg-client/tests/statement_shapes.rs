//! The multi-row statements of the PostgreSQL sink: runs of inserts, updates and deletes on
//! the same keys keep their order, key-changing updates and REPLICA IDENTITY FULL tables
//! break or join runs correctly, and a row the target refuses inside a multi-row statement
//! dead-letters exactly that event.

mod common;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walbrook_client::runner::{Runner, RunnerOptions};
use walbrook_harness::PgServer;
use walbrook_pg_client::{PgSink, PgSinkOptions};

use common::{Setup, connect, rows, wait_equal};

/// Counts the target's statements per table and kind, so a test can tell that a run of
/// changes was written as one multi-row statement (and whether by `COPY`: the first word of
/// the statement that fired the trigger).
const STATEMENT_LOG: &str = "
CREATE TABLE statements (tbl text, op text, command text, binary_format bool);
CREATE FUNCTION log_statement() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN
       INSERT INTO statements
         VALUES (TG_TABLE_NAME, TG_OP, upper(split_part(ltrim(current_query()), ' ', 1)),
                 current_query() ILIKE '%(FORMAT binary)%');
       RETURN NULL;
     END $$;
";

fn log_statements_of(table: &str) -> String {
    format!(
        "CREATE TRIGGER log_statement AFTER INSERT OR UPDATE OR DELETE ON {table}
           FOR EACH STATEMENT EXECUTE FUNCTION log_statement();"
    )
}

async fn statements(target: &tokio_postgres::Client, table: &str, op: &str) -> i64 {
    target
        .query_one(
            "SELECT count(*) FROM statements WHERE tbl = $1 AND op = $2",
            &[&table, &op],
        )
        .await
        .unwrap()
        .get(0)
}

/// Statements on `table` that were a `COPY`.
async fn copies(target: &tokio_postgres::Client, table: &str) -> i64 {
    target
        .query_one(
            "SELECT count(*) FROM statements WHERE tbl = $1 AND command = 'COPY'",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

/// Statements on `table` that were a `COPY` in the binary format.
async fn binary_copies(target: &tokio_postgres::Client, table: &str) -> i64 {
    target
        .query_one(
            "SELECT count(*) FROM statements WHERE tbl = $1 AND command = 'COPY' AND binary_format",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

async fn run_sink(
    setup: &Setup,
    target_url: &str,
    consumer: &str,
    tables: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    run_sink_with(setup, target_url, RunnerOptions::new(consumer, [tables])).await
}

async fn run_sink_with(
    setup: &Setup,
    target_url: &str,
    options: RunnerOptions,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let client = setup.client().await;
    let sink = PgSink::connect(PgSinkOptions::new(target_url))
        .await
        .unwrap();
    let mut runner = Runner::new(client, sink, options);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    (shutdown, task)
}

const DDL: &str = r#"
CREATE TABLE runs (id int PRIMARY KEY, v text, n int);
CREATE TABLE pair ("a b" int, "C" text, v text, PRIMARY KEY ("a b", "C"));
CREATE TABLE full_pk (id int PRIMARY KEY, doc json, v text);
ALTER TABLE full_pk REPLICA IDENTITY FULL;
CREATE TABLE full_nokey (a int, v text);
ALTER TABLE full_nokey REPLICA IDENTITY FULL;
"#;

#[tokio::test]
async fn mixed_runs_on_the_same_keys_are_applied_in_order() {
    let mut setup = Setup::start(
        "shapes",
        DDL,
        "public.runs, public.pair, public.full_pk, public.full_nokey",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("shapes_target");
    let target = connect(&target_db.url()).await;
    // The target has the tables (created like the sink would) and logs its statements.
    target
        .batch_execute(&format!(
            "{DDL} {STATEMENT_LOG} {} {}",
            log_statements_of("runs"),
            log_statements_of("full_pk")
        ))
        .await
        .unwrap();
    setup
        .exec(&[
            // Everything in one transaction, so in one batch: inserts, updates of the same
            // keys (a repeated key starts a new statement), deletes, re-inserts of deleted
            // keys, key changes in the middle of a run, updates of the moved rows.
            "BEGIN;
             INSERT INTO runs SELECT g, 'new', 0 FROM generate_series(1, 40) g;
             UPDATE runs SET v = 'first', n = n + 1 WHERE id <= 20;
             UPDATE runs SET v = 'second', n = n + 1 WHERE id <= 10;
             DELETE FROM runs WHERE id BETWEEN 5 AND 15;
             INSERT INTO runs VALUES (5, 'reborn', 100), (6, 'reborn', 100);
             UPDATE runs SET n = n + 10 WHERE id IN (5, 16, 17);
             UPDATE runs SET id = id + 1000 WHERE id IN (18, 19);
             UPDATE runs SET v = 'moved' WHERE id IN (1018, 20, 1);
             INSERT INTO runs VALUES (18, 'key reused', 7);
             DELETE FROM runs WHERE id IN (1019, 2, 3);
             DELETE FROM runs WHERE id IN (2, 4);
             UPDATE runs SET v = NULL WHERE id = 21;
             COMMIT",
            "BEGIN;
             INSERT INTO pair SELECT g, 'c' || g, 'x' FROM generate_series(1, 10) g;
             UPDATE pair SET v = 'y' WHERE \"a b\" <= 5;
             DELETE FROM pair WHERE \"a b\" IN (2, 3, 7);
             UPDATE pair SET \"C\" = 'moved' WHERE \"a b\" = 4;
             UPDATE pair SET v = 'z' WHERE \"a b\" = 4;
             COMMIT",
            "BEGIN;
             INSERT INTO full_pk SELECT g, '{\"k\": 1}', 'a' FROM generate_series(1, 30) g;
             UPDATE full_pk SET v = 'b', doc = '[1, 2]' WHERE id <= 20;
             UPDATE full_pk SET id = id + 100 WHERE id IN (3, 4);
             UPDATE full_pk SET v = 'c' WHERE id IN (103, 5, 6);
             DELETE FROM full_pk WHERE id IN (104, 7, 8, 9);
             COMMIT",
            "BEGIN;
             INSERT INTO full_nokey SELECT g % 5, 'a' FROM generate_series(1, 20) g;
             UPDATE full_nokey SET v = 'b' WHERE a = 1;
             DELETE FROM full_nokey WHERE a = 2;
             COMMIT",
        ])
        .await;
    let (stop, task) = run_sink(&setup, &target_db.url(), "shapes", "public.*").await;
    wait_equal(
        &setup.sql,
        &target,
        &["runs", "pair", "full_pk", "full_nokey"],
        Duration::from_secs(60),
    )
    .await;
    stop.cancel();
    task.await.unwrap();
    // The runs were written as multi-row statements: far fewer statements than the 30 +
    // 20 + 2 + 3 + 4 changes of full_pk, and of the 40 + 20 + 10 + 11 + … of runs.
    let full_pk_statements = statements(&target, "full_pk", "INSERT").await
        + statements(&target, "full_pk", "UPDATE").await
        + statements(&target, "full_pk", "DELETE").await;
    assert!(
        (3..=20).contains(&full_pk_statements),
        "{full_pk_statements} statements for 59 changes of full_pk"
    );
    let run_deletes = statements(&target, "runs", "DELETE").await;
    assert!(
        (1..=6).contains(&run_deletes),
        "{run_deletes} DELETE statements for 16 deletes of runs"
    );
    let run_inserts = statements(&target, "runs", "INSERT").await;
    assert!(
        (3..=30).contains(&run_inserts),
        "{run_inserts} INSERT statements for the inserts and updates of runs"
    );
    setup.stop().await;
}

#[tokio::test]
async fn a_refused_row_inside_a_multi_row_update_dead_letters_exactly_that_event() {
    let mut setup = Setup::start(
        "shapes_refused",
        "CREATE TABLE r (id int PRIMARY KEY, n int)",
        "public.r",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("shapes_refused_target");
    let target = connect(&target_db.url()).await;
    // The target refuses n = 13: the update of id 3 (n = 3 + 10) is refused.
    target
        .batch_execute(
            "CREATE TABLE r (id int PRIMARY KEY, n int CHECK (n <> 13));
             CREATE TABLE deleted_log (id int);",
        )
        .await
        .unwrap();
    setup
        .exec(&[
            "INSERT INTO r SELECT g, 0 FROM generate_series(1, 10) g",
            "UPDATE r SET n = id + 10",
            "DELETE FROM r WHERE id IN (8, 9)",
        ])
        .await;
    let (stop, task) = run_sink(&setup, &target_db.url(), "refused", "public.r").await;
    let expected: Vec<String> = [
        "(1,11)", "(10,20)", "(2,12)", "(3,0)", "(4,14)", "(5,15)", "(6,16)", "(7,17)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = rows(&target, "r").await;
        if now == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "target rows {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = setup.client().await;
    let letters = walbrook_client::runner::list_dead_letters(&client, "refused")
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].sink, "postgres");
    let event = letters[0].event.as_ref().expect("the refused event");
    assert_eq!(event["op"], "update", "{event}");
    assert_eq!(event["after"]["id"], 3, "{event}");
    assert_eq!(event["after"]["n"], 13, "{event}");
    assert!(letters[0].error.contains("23514"), "{}", letters[0].error);
    stop.cancel();
    task.await.unwrap();
    setup.stop().await;
}

#[tokio::test]
async fn awkward_values_cross_the_array_parameters_of_a_large_group() {
    // With a `text[]` column (no binary form), inserted rows go by COPY's text format.
    awkward_values("odd", true).await;
}

#[tokio::test]
async fn awkward_values_cross_a_binary_copy() {
    // Without it, every column has a binary form: inserted rows go by COPY's binary format.
    awkward_values("odd_binary", false).await;
}

/// Multi-row statements carry one `text[]` parameter per column (`unnest`), inserted rows
/// go by COPY (text format when `with_array`, else binary): values that look like array
/// syntax, the string "NULL" and COPY's `\N` beside real NULLs, quotes, backslashes, tabs,
/// line breaks, COPY's end-of-data line `\.` and empty values must arrive unchanged, in a
/// group larger than the former 1,000-row cap.
async fn awkward_values(table: &str, with_array: bool) {
    let (tags_column, tags_value, tags_update) = if with_array {
        (
            "tags text[],",
            "CASE WHEN g % 4 = 0 THEN NULL WHEN g % 4 = 1 THEN '{}'
                  ELSE ARRAY['NULL', NULL, 'c,d', E'e\\\"f', ''] END,",
            ", tags = ARRAY[NULL, 'NULL']",
        )
    } else {
        ("", "", "")
    };
    let create = format!(
        "CREATE TABLE {table} (
            k text, n int, s text, {tags_column} doc jsonb, amount numeric(12,3), raw bytea,
            at timestamptz, PRIMARY KEY (k, n))"
    );
    let mut setup = Setup::start(
        &format!("shapes_{table}"),
        &create,
        &format!("public.{table}"),
    )
    .await;
    let target_db = PgServer::shared().fresh_database(&format!("shapes_{table}_target"));
    let target = connect(&target_db.url()).await;
    target
        .batch_execute(&format!(
            "{create}; {STATEMENT_LOG} {}",
            log_statements_of(table)
        ))
        .await
        .unwrap();
    let insert = format!(
        r#"BEGIN;
         INSERT INTO {table}
           SELECT (ARRAY['plain', 'NULL', '', 'a,b', '{{x}}', 'q"uo''te', E'back\\slash', ' sp ',
                         E'ta\tb', E'new\nline', E'c\rr', E'\\N', E'\\.', E'x\n\\.\ny'])[g % 14 + 1],
                  g,
                  CASE WHEN g % 5 = 0 THEN NULL WHEN g % 5 = 1 THEN 'NULL' ELSE '{{' || g || ',"}}' END,
                  {tags_value}
                  CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('g', g, 's', 'x"y,{{z}}') END,
                  CASE WHEN g % 11 = 0 THEN 'NaN' ELSE (g - 600) / 7.0 END,
                  CASE WHEN g % 2 = 0 THEN NULL ELSE decode('00ff5c22', 'hex') END,
                  CASE WHEN g % 6 = 0 THEN 'infinity'
                       ELSE timestamptz '1999-12-31 23:00:00+00' + (g - 600) * interval '1 hour 1 second' END
             FROM generate_series(1, 1200) g;
         COMMIT"#
    );
    let update = format!(
        "BEGIN;
         UPDATE {table} SET s = 'NULL'{tags_update} WHERE n % 10 = 3;
         DELETE FROM {table} WHERE n % 10 = 7;
         COMMIT"
    );
    setup.exec(&[&insert, &update]).await;
    let (stop, task) = run_sink(&setup, &target_db.url(), table, &format!("public.{table}")).await;
    wait_equal(&setup.sql, &target, &[table], Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap();
    // 1,200 inserts in one COPY, the 120 updates in one statement, the 120 deletes in one.
    assert_eq!(statements(&target, table, "INSERT").await, 2);
    assert_eq!(copies(&target, table).await, 1);
    assert_eq!(
        binary_copies(&target, table).await,
        i64::from(!with_array),
        "binary format"
    );
    assert_eq!(statements(&target, table, "DELETE").await, 1);
    setup.stop().await;
}

#[tokio::test]
async fn inserts_go_by_copy_only_into_columns_of_the_source_type() {
    // COPY reads a value with the target column's input function, a statement casts it to
    // the source type first. A `timestamptz` written to a `timestamp` column differs: the
    // cast converts the instant to the session's time zone, timestamp's input drops the
    // offset. Into a target with other types, inserts are statements (and keep the
    // instant); into one the sink creates, they are one COPY.
    const SOURCE: &str = "CREATE TABLE tz (id int PRIMARY KEY, at timestamptz NOT NULL)";
    let mut setup = Setup::start("shapes_copy_types", SOURCE, "public.tz").await;
    let other_db = PgServer::shared().fresh_database("shapes_copy_types_other");
    let same_db = PgServer::shared().fresh_database("shapes_copy_types_same");
    let other = connect(&other_db.url()).await;
    other
        .batch_execute(&format!(
            "ALTER DATABASE {} SET timezone = 'Asia/Tokyo';
             CREATE TABLE tz (id int PRIMARY KEY, at timestamp NOT NULL);
             {STATEMENT_LOG} {}",
            other_db.name(),
            log_statements_of("tz")
        ))
        .await
        .unwrap();
    let same = connect(&same_db.url()).await;
    same.batch_execute(&format!(
        "{SOURCE}; {STATEMENT_LOG} {}",
        log_statements_of("tz")
    ))
    .await
    .unwrap();
    setup
        .exec(&["INSERT INTO tz SELECT g, timestamptz '2024-01-01 20:00:00+00' + g * interval '1 minute'
                   FROM generate_series(1, 300) g"])
        .await;
    let (stop, task) = run_sink(&setup, &other_db.url(), "copy_types_other", "public.tz").await;
    let (stop_same, task_same) =
        run_sink(&setup, &same_db.url(), "copy_types_same", "public.tz").await;
    wait_equal(&setup.sql, &same, &["tz"], Duration::from_secs(60)).await;
    let expected: Vec<String> = setup
        .sql
        .query(
            "SELECT (id, (at AT TIME ZONE 'Asia/Tokyo'))::text FROM tz ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let query = "SELECT (id, at)::text FROM tz ORDER BY id";
    let got = loop {
        let got: Vec<String> = other
            .query(query, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if got.len() == expected.len() || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (stop, task) in [(stop, task), (stop_same, task_same)] {
        stop.cancel();
        task.await.unwrap();
    }
    assert_eq!(got, expected, "the instants, as Tokyo wall times");
    assert_eq!(copies(&other, "tz").await, 0);
    assert_eq!(copies(&same, "tz").await, 1);
    setup.stop().await;
}

#[tokio::test]
async fn inserts_of_rows_the_target_already_has_are_applied_as_upserts() {
    // Runs of inserts are first written as plain INSERTs; rows the target holds already (a
    // pre-filled target, a snapshot's overlap) make that fail with a unique violation, and
    // the batch is applied again with upserts: the source's values win, nothing is
    // dead-lettered.
    let mut setup = Setup::start(
        "shapes_prefilled",
        "CREATE TABLE p (id int PRIMARY KEY, v text)",
        "public.p",
    )
    .await;
    let target_db = PgServer::shared().fresh_database("shapes_prefilled_target");
    let target = connect(&target_db.url()).await;
    target
        .batch_execute(&format!(
            "CREATE TABLE p (id int PRIMARY KEY, v text);
             INSERT INTO p SELECT g, 'stale' FROM generate_series(40, 60) g;
             {STATEMENT_LOG} {}",
            log_statements_of("p")
        ))
        .await
        .unwrap();
    setup
        .exec(&[
            "INSERT INTO p SELECT g, 'fresh ' || g FROM generate_series(1, 100) g",
            "INSERT INTO p SELECT g, 'later ' || g FROM generate_series(101, 150) g",
        ])
        .await;
    let (stop, task) = run_sink(&setup, &target_db.url(), "prefilled", "public.p").await;
    wait_equal(&setup.sql, &target, &["p"], Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap();
    let client = setup.client().await;
    let letters = walbrook_client::runner::list_dead_letters(&client, "prefilled")
        .await
        .unwrap();
    assert!(letters.is_empty(), "{letters:?}");
    // As multi-row upserts (the failed plain INSERT rolled back with its batch), not one
    // statement per event: at most one per source transaction.
    let inserts = statements(&target, "p", "INSERT").await;
    assert!((1..=2).contains(&inserts), "{inserts} INSERT statements");
    setup.stop().await;
}

#[tokio::test]
async fn changes_to_the_same_keys_collapse_into_one_statement_per_kind() {
    // One batch of several transactions on one table: inserts, updates of the rows just
    // inserted and of older rows, deletes of rows inserted in the batch and of older rows,
    // re-inserts of deleted keys. Each key's last change alone decides its row, so the batch
    // is written by one DELETE, one plain INSERT and one upsert.
    const TABLE: &str = "CREATE TABLE c (id int PRIMARY KEY, v text, n int)";
    let mut setup = Setup::start("shapes_collapse", TABLE, "public.c").await;
    let target_db = PgServer::shared().fresh_database("shapes_collapse_target");
    let target = connect(&target_db.url()).await;
    target
        .batch_execute(&format!(
            "{TABLE}; {STATEMENT_LOG} {}",
            log_statements_of("c")
        ))
        .await
        .unwrap();
    // The older rows arrive (and are counted) first.
    setup
        .exec(&["INSERT INTO c SELECT g, 'old', 0 FROM generate_series(1, 100) g"])
        .await;
    let (stop, task) = run_sink(&setup, &target_db.url(), "collapse", "public.c").await;
    wait_equal(&setup.sql, &target, &["c"], Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap();
    target.batch_execute("TRUNCATE statements").await.unwrap();
    setup
        .exec(&[
            "BEGIN;
             INSERT INTO c SELECT g, 'new', 0 FROM generate_series(101, 300) g;
             UPDATE c SET v = 'updated', n = n + 1 WHERE id BETWEEN 90 AND 150;
             COMMIT",
            "BEGIN;
             DELETE FROM c WHERE id BETWEEN 1 AND 10 OR id BETWEEN 201 AND 220;
             UPDATE c SET n = n + 5 WHERE id BETWEEN 140 AND 160;
             INSERT INTO c VALUES (5, 'reborn', 5), (205, 'reborn', 205);
             COMMIT",
            "BEGIN;
             UPDATE c SET v = 'again', n = n * 2 WHERE id % 7 = 0;
             DELETE FROM c WHERE id BETWEEN 295 AND 300;
             COMMIT",
        ])
        .await;
    // Every stored change in one batch: the runner waits for more up to `max_batch_wait`.
    let mut options = RunnerOptions::new("collapse", ["public.c"]);
    options.max_batch_wait = Duration::from_secs(3);
    let (stop, task) = run_sink_with(&setup, &target_db.url(), options).await;
    wait_equal(&setup.sql, &target, &["c"], Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap();
    let statements_of = |op| statements(&target, "c", op);
    let (inserts, updates, deletes) = (
        statements_of("INSERT").await,
        statements_of("UPDATE").await,
        statements_of("DELETE").await,
    );
    // 200 + 61 + 30 + 21 + 2 + 43 + 6 changes; INSERT … ON CONFLICT DO UPDATE fires both
    // statement triggers, so the plain insert and the upsert are 2 INSERTs and 1 UPDATE.
    assert_eq!(
        (inserts, updates, deletes),
        (2, 1, 1),
        "statements (INSERT, UPDATE, DELETE) for one batch of 363 changes"
    );
    setup.stop().await;
}

#[tokio::test]
async fn collapsed_changes_the_target_refuses_are_applied_again_in_stream_order() {
    // The target has a unique constraint the collapsed order breaks: `a` gives its value to
    // `c` after `b` took `a`'s old one. Written key by key (a, b, c with their last rows) the
    // first statement meets a unique violation; the batch is applied again one change at a
    // time, in stream order, and nothing is dead-lettered.
    const TABLE: &str = "CREATE TABLE u (id text PRIMARY KEY, v text)";
    let mut setup = Setup::start("shapes_order", TABLE, "public.u").await;
    let target_db = PgServer::shared().fresh_database("shapes_order_target");
    let target = connect(&target_db.url()).await;
    target
        .batch_execute("CREATE TABLE u (id text PRIMARY KEY, v text UNIQUE)")
        .await
        .unwrap();
    setup
        .exec(&["INSERT INTO u VALUES ('a', 'x'), ('b', 'p'), ('c', 'q')"])
        .await;
    let (stop, task) = run_sink(&setup, &target_db.url(), "order", "public.u").await;
    wait_equal(&setup.sql, &target, &["u"], Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap();
    setup
        .exec(&["BEGIN;
                 UPDATE u SET v = 'y' WHERE id = 'a';
                 UPDATE u SET v = 'r' WHERE id = 'b';
                 UPDATE u SET v = 'p' WHERE id = 'a';
                 INSERT INTO u VALUES ('d', 'x');
                 COMMIT"])
        .await;
    let (stop, task) = run_sink(&setup, &target_db.url(), "order", "public.u").await;
    wait_equal(&setup.sql, &target, &["u"], Duration::from_secs(60)).await;
    let client = setup.client().await;
    let letters = walbrook_client::runner::list_dead_letters(&client, "order")
        .await
        .unwrap();
    assert!(letters.is_empty(), "{letters:?}");
    stop.cancel();
    task.await.unwrap();
    setup.stop().await;
}
