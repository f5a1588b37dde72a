//! `walbrook sink postgres` as a process: killed with SIGKILL mid-stream and restarted, it
//! leaves the target equal to the source, row for row, with every change applied once.

mod common;

use common::{connect, sink_kill_cycles, start_producer, table_text, wait_until_streaming};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use walbrook_harness::{NatsServer, PgServer, ProductProcess, TestDb, product_command};

const ROOT: &str = "SINKKILL";

fn spawn_sink(
    source: &TestDb<'_>,
    target_url: &str,
    nats_url: &str,
    log: &std::path::Path,
) -> ProductProcess {
    spawn_sink_with(source, target_url, nats_url, log, &[])
}

fn spawn_sink_with(
    source: &TestDb<'_>,
    target_url: &str,
    nats_url: &str,
    log: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> ProductProcess {
    let mut command = product_command(env!("CARGO_BIN_EXE_walbrook"));
    command
        .args(["sink", "postgres"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WALBROOK_NATS_URL", nats_url)
        .env("WALBROOK_ROOT", ROOT)
        .env("WALBROOK_SINK_SOURCE_DB", source.name())
        .env("WALBROOK_SINK_CONSUMER", "kill9")
        .env("WALBROOK_SINK_TABLES", "public.load")
        .env("WALBROOK_SINK_TARGET_URL", target_url)
        // Small batches: many target transactions, so the kills land between and inside them.
        .env("WALBROOK_SINK_BATCH_EVENTS", "7")
        .env(
            "RUST_LOG",
            std::env::var("TEST_SINK_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(extra_env.iter().copied());
    ProductProcess::spawn(command, "walbrook sink postgres", log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_mid_stream_leaves_the_target_equal_to_the_source() {
    let pg = PgServer::shared();
    let source_db = pg.fresh_database("sinkkill_src");
    let target_db = pg.fresh_database("sinkkill_dst");
    let nats = NatsServer::start().unwrap();
    let source = connect(&source_db.url()).await;
    let target = connect(&target_db.url()).await;
    source
        .batch_execute("CREATE TABLE load (id bigint PRIMARY KEY, note text NOT NULL, n numeric)")
        .await
        .unwrap();
    // The target table exists with an audit trigger: every row the sink writes is counted,
    // so a change applied twice shows up even when the final rows would hide it.
    target
        .batch_execute(
            "CREATE TABLE load (id bigint PRIMARY KEY, note text NOT NULL, n numeric);
             CREATE TABLE audit (id bigint, note text);
             CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO audit VALUES (NEW.id, NEW.note); RETURN NEW; END $$;
             CREATE TRIGGER audit AFTER INSERT OR UPDATE ON load
               FOR EACH ROW EXECUTE FUNCTION audit();",
        )
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    start_producer(
        &source_db,
        &nats.url(),
        ROOT,
        "public.load",
        shutdown.clone(),
    );
    // Changes committed before the slot exists are not captured: wait for it.
    wait_until_streaming(&source, &source_db.slot_name()).await;

    // 5 kill cycles in the test command, more in `make chaos`; the load lasts as long.
    let cycles = sink_kill_cycles(5);
    let txs = 24 * cycles as i64;
    const ROWS: i64 = 10;
    let url = source_db.url();
    let load = tokio::spawn(async move {
        let sql = connect(&url).await;
        for t in 0..txs {
            let first = t * ROWS;
            // One transaction: ROWS inserts, then an update of each earlier-inserted row.
            sql.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO load SELECT g, 'v0', g * 1.000000000000000001
                   FROM generate_series({first}, {}) g;
                 UPDATE load SET note = 'v1', n = n / 3 WHERE id BETWEEN {} AND {};
                 COMMIT;",
                first + ROWS - 1,
                first - ROWS,
                first - 1
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Deletes too.
        sql.batch_execute("DELETE FROM load WHERE id % 7 = 0")
            .await
            .unwrap();
    });

    let log = std::env::temp_dir().join(format!("{}-sink.log", target_db.name()));
    let mut sink = spawn_sink(&source_db, &target_db.url(), &nats.url(), &log);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(700)).await;
        sink.kill();
        sink = spawn_sink(&source_db, &target_db.url(), &nats.url(), &log);
    }
    load.await.unwrap();

    let rows = "SELECT t::text FROM load t ORDER BY id";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (a, b) = (
            table_text(&source, rows).await,
            table_text(&target, rows).await,
        );
        if a == b {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            sink.kill();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let only_source: Vec<&String> = a.iter().filter(|r| !b.contains(r)).take(20).collect();
            let only_target: Vec<&String> = b.iter().filter(|r| !a.contains(r)).take(20).collect();
            panic!(
                "target differs: source {} rows, target {} rows\nonly in source: {only_source:?}\n\
                 only in target: {only_target:?}\nsink log tail:\n{}",
                a.len(),
                b.len(),
                log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every insert and every update reached the target exactly once: one audit row each.
    let audit = table_text(
        &target,
        "SELECT id || ':' || note || ':' || count(*) FROM audit GROUP BY id, note \
         HAVING count(*) <> 1 ORDER BY 1 LIMIT 10",
    )
    .await;
    assert!(
        audit.is_empty(),
        "changes applied more than once: {audit:?}"
    );
    let total: i64 = target
        .query_one("SELECT count(*) FROM audit", &[])
        .await
        .unwrap()
        .get(0);
    // txs*ROWS inserts, and (txs-1)*ROWS updates (the first transaction updates nothing).
    assert_eq!(total, txs * ROWS + (txs - 1) * ROWS);
    eprintln!(
        "postgres check: {cycles} kills, {total} row writes (audit trigger), each applied once, \
         target equals the source ({} rows)",
        table_text(&target, rows).await.len()
    );
    // The target can be complete before the last sink started: SIGTERM only once that
    // process is running (its handler is installed before it connects), not while it is
    // still starting up.
    common::wait_for_log(&log, "sink running", cycles + 1, Duration::from_secs(60)).await;
    sink.signal(Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || sink.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the sink exits cleanly on SIGTERM: {status:?}"
    );
    shutdown.cancel();
}

/// Waits (up to 90 s) until `query` returns the same rows on both sides.
async fn wait_equal(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    query: &str,
    log: &std::path::Path,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (a, b) = (
            table_text(source, query).await,
            table_text(target, query).await,
        );
        if a == b {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "target differs: source {} rows, target {} rows; sink log tail:\n{}",
            a.len(),
            b.len(),
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sink_bootstraps_from_a_snapshot_then_follows_the_changes() {
    let pg = PgServer::shared();
    let source_db = pg.fresh_database("sinkboot_src");
    let target_db = pg.fresh_database("sinkboot_dst");
    let nats = NatsServer::start().unwrap();
    let source = connect(&source_db.url()).await;
    let target = connect(&target_db.url()).await;
    // Rows written before the producer ever ran: only a snapshot can bring them.
    source
        .batch_execute(
            "CREATE TABLE load (id bigint PRIMARY KEY, note text NOT NULL, n numeric);
             INSERT INTO load SELECT g, 'old', g / 7.0 FROM generate_series(1, 3000) g;
             CREATE TABLE extra (id int PRIMARY KEY, note text);
             INSERT INTO extra SELECT g, 'old' FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    target
        .batch_execute(
            "CREATE TABLE load (id bigint PRIMARY KEY, note text NOT NULL, n numeric);
             CREATE TABLE extra (id int PRIMARY KEY, note text);",
        )
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    start_producer(
        &source_db,
        &nats.url(),
        ROOT,
        "public.load, public.extra",
        shutdown.clone(),
    );
    wait_until_streaming(&source, &source_db.slot_name()).await;
    // Writers change old rows, add and delete rows while the sink bootstraps.
    let url = source_db.url();
    let load = tokio::spawn(async move {
        let sql = connect(&url).await;
        for round in 0..60i64 {
            sql.batch_execute(&format!(
                "BEGIN;
                 UPDATE load SET note = 'r{round}', n = n * 3 WHERE id % 60 = {round};
                 INSERT INTO load VALUES ({}, 'new', {round});
                 DELETE FROM load WHERE id = {};
                 COMMIT;",
                10_000 + round,
                3000 - round
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let log = std::env::temp_dir().join(format!("{}-sink.log", target_db.name()));
    let mut sink = spawn_sink_with(
        &source_db,
        &target_db.url(),
        &nats.url(),
        &log,
        &[
            ("WALBROOK_SINK_SNAPSHOT", "true"),
            ("WALBROOK_SINK_START", "new"),
        ],
    );
    load.await.unwrap();
    let rows = "SELECT t::text FROM load t ORDER BY id";
    wait_equal(&source, &target, rows, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("snapshots applied"),
        "the sink bootstrapped:\n{text}"
    );

    // Restarted, it resumes from its checkpoint instead of bootstrapping again.
    sink.kill();
    source
        .batch_execute("UPDATE load SET note = 'after restart' WHERE id < 10")
        .await
        .unwrap();
    sink = spawn_sink_with(
        &source_db,
        &target_db.url(),
        &nats.url(),
        &log,
        &[
            ("WALBROOK_SINK_SNAPSHOT", "true"),
            ("WALBROOK_SINK_START", "new"),
        ],
    );
    wait_equal(&source, &target, rows, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("snapshots applied").count(),
        1,
        "no second bootstrap:\n{text}"
    );
    assert!(text.contains("resuming, no snapshot"), "{text}");

    // A table added to the consumer's list: with --snapshot it is bootstrapped (its rows
    // older than the producer come only from a snapshot), and the table it followed loses
    // nothing of what changed meanwhile.
    sink.kill();
    source
        .batch_execute(
            "UPDATE load SET note = 'while stopped' WHERE id < 20;
             UPDATE extra SET note = 'changed' WHERE id % 10 = 0;
             DELETE FROM extra WHERE id > 490;",
        )
        .await
        .unwrap();
    sink = spawn_sink_with(
        &source_db,
        &target_db.url(),
        &nats.url(),
        &log,
        &[
            ("WALBROOK_SINK_SNAPSHOT", "true"),
            ("WALBROOK_SINK_START", "new"),
            ("WALBROOK_SINK_TABLES", "public.load,public.extra"),
        ],
    );
    source
        .batch_execute("INSERT INTO extra VALUES (1000, 'after the snapshot')")
        .await
        .unwrap();
    wait_equal(&source, &target, rows, &log).await;
    wait_equal(
        &source,
        &target,
        "SELECT t::text FROM extra t ORDER BY id",
        &log,
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("a table the consumer has not followed yet"),
        "{text}"
    );
    sink.kill();
    shutdown.cancel();
}

/// A mistyped `WALBROOK_SINK_*` variable stops the sink at start, named, before it connects
/// anywhere (it would otherwise run with the default the typo meant to replace).
#[test]
fn a_mistyped_sink_variable_stops_the_sink_naming_it() {
    let output = product_command(env!("CARGO_BIN_EXE_walbrook"))
        .args(["sink", "postgres"])
        .env("WALBROOK_NATS_URL", "nats://127.0.0.1:1")
        .env("WALBROOK_SINK_SOURCE_DB", "shop")
        .env("WALBROOK_SINK_CONSUMER", "typo")
        .env("WALBROOK_SINK_TARGET_URL", "postgresql://127.0.0.1:1/x")
        .env("WALBROOK_SINK_BATCH_EVENT", "7")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("WALBROOK_SINK_BATCH_EVENT: unknown WALBROOK_SINK_* variable"),
        "{stderr}"
    );
}
