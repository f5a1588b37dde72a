//! `walbrook sink webhook` as a process: killed with SIGKILL mid-stream and restarted, every
//! event is delivered at least once, always with the same id.

mod common;

use common::{
    connect, sink_kill_cycles, start_producer, start_producer_with, wait_until_streaming,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use walbrook_harness::{
    NatsServer, PgServer, ProductProcess, TestDb, WebhookReceiver, product_command,
};

const ROOT: &str = "HOOKKILL";

fn spawn_sink(
    source: &TestDb<'_>,
    url: &str,
    nats_url: &str,
    log: &std::path::Path,
) -> ProductProcess {
    spawn_sink_with(source, url, nats_url, log, &[])
}

fn spawn_sink_with(
    source: &TestDb<'_>,
    url: &str,
    nats_url: &str,
    log: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> ProductProcess {
    let mut command = product_command(env!("CARGO_BIN_EXE_walbrook"));
    command
        .args(["sink", "webhook"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WALBROOK_NATS_URL", nats_url)
        .env("WALBROOK_ROOT", ROOT)
        .env("WALBROOK_SINK_SOURCE_DB", source.name())
        .env("WALBROOK_SINK_CONSUMER", "hookkill")
        .env("WALBROOK_SINK_TABLES", "public.load")
        .env("WALBROOK_SINK_WEBHOOK_URL", url)
        .env("WALBROOK_SINK_WEBHOOK_SECRET", "k")
        .env("WALBROOK_SINK_BATCH_EVENTS", "5")
        .env("RUST_LOG", "info")
        .envs(extra_env.iter().copied());
    ProductProcess::spawn(command, "walbrook sink webhook", log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_sink_killed_mid_stream_delivers_every_event_with_a_stable_id() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("hookkill");
    let nats = NatsServer::start().unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    let source = connect(&db.url()).await;
    source
        .batch_execute("CREATE TABLE load (id bigint PRIMARY KEY, note text NOT NULL)")
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    start_producer(&db, &nats.url(), ROOT, "public.load", shutdown.clone());
    wait_until_streaming(&source, &db.slot_name()).await;

    // 4 kill cycles in the test command, more in `make chaos`; the load lasts as long.
    let cycles = sink_kill_cycles(4);
    let rows = 100 * cycles as i64;
    let url = db.url();
    let load = tokio::spawn(async move {
        let sql = connect(&url).await;
        for id in 0..rows {
            sql.execute("INSERT INTO load VALUES ($1, 'row')", &[&id])
                .await
                .unwrap();
            if id % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let log = std::env::temp_dir().join(format!("{}-hook.log", db.name()));
    let mut sink = spawn_sink(&db, &receiver.url(), &nats.url(), &log);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(600)).await;
        sink.kill();
        sink = spawn_sink(&db, &receiver.url(), &nats.url(), &log);
    }
    load.await.unwrap();

    // Every row's event arrives; each event id always names the same event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (by_row, deliveries) = loop {
        let mut by_row: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        let mut bodies: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let requests = receiver.requests();
        for r in &requests {
            let id = r.header("Walbrook-Event-Id").unwrap().to_owned();
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["id"], serde_json::json!(id));
            // The body of a redelivery is the same (the producer's encode time and the
            // stream sequence included).
            if let Some(previous) = bodies.get(&id) {
                assert_eq!(previous, &body, "a redelivery of {id} differs");
            }
            let row = body["after"]["id"].as_i64().unwrap();
            by_row.entry(row).or_default().insert(id.clone());
            bodies.insert(id, body);
        }
        if by_row.len() as i64 == rows || tokio::time::Instant::now() > deadline {
            break (by_row, requests.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<i64> = (0..rows)
        .filter(|r| !by_row.contains_key(r))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "rows never delivered, e.g. {missing:?}");
    let unstable: Vec<_> = by_row
        .iter()
        .filter(|(_, ids)| ids.len() != 1)
        .take(5)
        .collect();
    assert!(
        unstable.is_empty(),
        "an event got several ids: {unstable:?}"
    );
    assert!(deliveries as i64 >= rows);
    eprintln!(
        "webhook check: {cycles} kills, {rows} events, {} delivered, 0 lost, {} redelivered \
         (same id and body)",
        by_row.len(),
        deliveries - by_row.len()
    );
    // SIGTERM only once the last sink process is running (its handler is installed before
    // it connects), not while it is still starting up.
    common::wait_for_log(&log, "sink running", cycles + 1, Duration::from_secs(60)).await;
    sink.signal(Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || sink.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    shutdown.cancel();
}

/// The source rows as the webhook bodies carry them: numerics as exact strings.
async fn source_rows(sql: &tokio_postgres::Client) -> BTreeMap<i64, serde_json::Value> {
    sql.query(
        "SELECT id, json_build_object('id', id, 'note', note, 'n', n::text)::text FROM boot",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get::<_, i64>(0),
            serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
        )
    })
    .collect()
}

/// What the receiver got, replayed in arrival order onto a map keyed by primary key, and
/// the ids of the rows that came as snapshot reads. Checks on the way that every id always
/// names the same body and that `Idempotency-Key` equals `Walbrook-Event-Id`.
fn replay(receiver: &WebhookReceiver) -> (BTreeMap<i64, serde_json::Value>, BTreeSet<i64>) {
    let mut rows = BTreeMap::new();
    let mut reads = BTreeSet::new();
    let mut bodies: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for r in receiver.requests() {
        let id = r.header("Walbrook-Event-Id").unwrap().to_owned();
        assert_eq!(r.header("Idempotency-Key"), Some(id.as_str()));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"], serde_json::json!(id));
        if let Some(previous) = bodies.get(&id) {
            assert_eq!(previous, &body, "a redelivery of {id} differs");
        }
        let key = |image: &str| body[image]["id"].as_i64().unwrap();
        // Snapshot rows and changes have ids of their own form (a row at the snapshot's
        // position must not share an id with a change committed there).
        assert_eq!(
            body["op"] == "read",
            id.contains("/public.boot/snapshot-"),
            "{id}: {body}"
        );
        match body["op"].as_str().unwrap() {
            "read" => {
                reads.insert(key("after"));
                rows.insert(key("after"), body["after"].clone());
            }
            "insert" | "update" => {
                rows.insert(key("after"), body["after"].clone());
            }
            "update_key" => {
                rows.remove(&key("before"));
                rows.insert(key("after"), body["after"].clone());
            }
            "delete" => {
                rows.remove(&key("before"));
            }
            other => panic!("unexpected op {other}: {body}"),
        }
        bodies.insert(id, body);
    }
    (rows, reads)
}

/// Waits (up to 90 s) until the replayed deliveries equal the source; returns the reads.
async fn wait_replay_equals_source(
    sql: &tokio_postgres::Client,
    receiver: &WebhookReceiver,
    log: &std::path::Path,
) -> BTreeSet<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let expected = source_rows(sql).await;
        let (rows, reads) = replay(receiver);
        if rows == expected {
            return reads;
        }
        if tokio::time::Instant::now() > deadline {
            let differ: Vec<_> = expected
                .iter()
                .filter(|(k, v)| rows.get(*k) != Some(*v))
                .take(10)
                .map(|(k, v)| (k, v, rows.get(k)))
                .collect();
            let extra: Vec<_> = rows
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .take(10)
                .collect();
            panic!(
                "replayed deliveries differ: {} rows, source {}; differing {differ:?}; extra \
                 {extra:?}\nsink log tail:\n{}",
                rows.len(),
                expected.len(),
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_webhook_sink_bootstraps_from_a_snapshot_then_follows_the_changes() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("hookboot");
    let nats = NatsServer::start().unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    let source = connect(&db.url()).await;
    // Rows written before the producer ever ran: only a snapshot can bring them.
    const OLD: i64 = 1500;
    source
        .batch_execute(&format!(
            "CREATE TABLE boot (id bigint PRIMARY KEY, note text NOT NULL, n numeric);
             INSERT INTO boot SELECT g, 'old ' || g, g / 7.0 FROM generate_series(1, {OLD}) g;"
        ))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    start_producer(&db, &nats.url(), ROOT, "public.boot", shutdown.clone());
    wait_until_streaming(&source, &db.slot_name()).await;
    // Writers change old rows, add, re-key and delete rows while the sink bootstraps.
    let url = db.url();
    let load = tokio::spawn(async move {
        let sql = connect(&url).await;
        for round in 0..50i64 {
            sql.batch_execute(&format!(
                "BEGIN;
                 UPDATE boot SET note = 'r{round}', n = n * 3 WHERE id % 50 = {round};
                 INSERT INTO boot VALUES ({}, 'new', {round}.125);
                 UPDATE boot SET id = {} WHERE id = {};
                 DELETE FROM boot WHERE id = {};
                 COMMIT;",
                10_000 + round,
                20_000 + round,
                OLD - 100 - round,
                OLD - round
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let log = std::env::temp_dir().join(format!("{}-hookboot.log", db.name()));
    let env = [
        ("WALBROOK_SINK_SNAPSHOT", "true"),
        ("WALBROOK_SINK_START", "new"),
        ("WALBROOK_SINK_CONSUMER", "hookboot"),
        ("WALBROOK_SINK_TABLES", "public.boot"),
        ("WALBROOK_SINK_BATCH_EVENTS", "100"),
    ];
    let mut sink = spawn_sink_with(&db, &receiver.url(), &nats.url(), &log, &env);
    load.await.unwrap();
    let reads = wait_replay_equals_source(&source, &receiver, &log).await;
    // Every old row still in the source came as a snapshot read (op read).
    let old_rows: Vec<i64> = source
        .query("SELECT id FROM boot WHERE id <= $1 ORDER BY id", &[&OLD])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(old_rows.len() > 1000, "{}", old_rows.len());
    let unread: Vec<_> = old_rows
        .iter()
        .filter(|id| !reads.contains(id))
        .take(10)
        .collect();
    assert!(unread.is_empty(), "old rows never read: {unread:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("snapshots applied"),
        "the sink bootstrapped:\n{text}"
    );

    // Restarted, it resumes from its durable consumer instead of bootstrapping again.
    sink.kill();
    source
        .batch_execute(
            "UPDATE boot SET note = 'after restart' WHERE id < 10;
             DELETE FROM boot WHERE id BETWEEN 10 AND 19;
             INSERT INTO boot VALUES (30000, 'after restart', 1.5);",
        )
        .await
        .unwrap();
    let reads_before = receiver
        .requests()
        .iter()
        .filter(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["op"] == "read")
        .count();
    sink = spawn_sink_with(&db, &receiver.url(), &nats.url(), &log, &env);
    wait_replay_equals_source(&source, &receiver, &log).await;
    let reads_after = receiver
        .requests()
        .iter()
        .filter(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["op"] == "read")
        .count();
    assert_eq!(
        reads_before, reads_after,
        "no snapshot rows after the restart"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("snapshots applied").count(),
        1,
        "no second bootstrap:\n{text}"
    );
    assert!(text.contains("resuming, no snapshot"), "{text}");
    sink.kill();
    shutdown.cancel();
}

/// `walbrook sink` authenticates with an NKey seed (`WALBROOK_NATS_NKEY`/`--nats-nkey`): with
/// the seed of a user the server knows it delivers the changes; with another it stops with an
/// authentication error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_authenticates_with_an_nkey_seed() {
    let producer_user = nkeys::KeyPair::new_user();
    let sink_user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }}, {{ nkey: {} }} ] }}",
        producer_user.public_key(),
        sink_user.public_key()
    ))
    .unwrap();
    let pg = PgServer::shared();
    let db = pg.fresh_database("hooknkey");
    let receiver = WebhookReceiver::start().unwrap();
    let source = connect(&db.url()).await;
    source
        .batch_execute("CREATE TABLE load (id bigint PRIMARY KEY, note text NOT NULL)")
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let producer_seed = producer_user.seed().unwrap();
    start_producer_with(
        &db,
        &nats.url(),
        ROOT,
        "public.load",
        &[("WALBROOK_NATS_NKEY", producer_seed.as_str())],
        shutdown.clone(),
    );
    wait_until_streaming(&source, &db.slot_name()).await;
    source
        .batch_execute("INSERT INTO load VALUES (1, 'signed in')")
        .await
        .unwrap();

    let log = std::env::temp_dir().join(format!("{}-hooknkey.log", db.name()));
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let mut refused = spawn_sink_with(
        &db,
        &receiver.url(),
        &nats.url(),
        &log,
        &[("WALBROOK_NATS_NKEY", stranger.as_str())],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a sink with an unknown NKey did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "an unknown NKey is refused");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.to_lowercase().contains("auth"),
        "the error names authentication:\n{text}"
    );

    let sink_seed = sink_user.seed().unwrap();
    let mut sink = spawn_sink_with(
        &db,
        &receiver.url(),
        &nats.url(),
        &log,
        &[("WALBROOK_NATS_NKEY", sink_seed.as_str())],
    );
    let requests = tokio::task::spawn_blocking(move || {
        let r = receiver.wait_for_requests(1, Duration::from_secs(30));
        (receiver, r)
    })
    .await
    .unwrap()
    .1
    .expect("the sink delivered the row");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["after"]["note"], "signed in", "{body}");
    sink.kill();
    shutdown.cancel();
}
