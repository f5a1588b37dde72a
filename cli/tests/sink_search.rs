//! `walbrook sink elasticsearch` as a process: killed with SIGKILL mid-stream and restarted,
//! the index holds every document of the source (real OpenSearch, or osmem-server without
//! Java).

mod common;

use common::{connect, sink_kill_cycles, start_producer, wait_until_streaming};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use walbrook_harness::{
    NatsServer, PgServer, ProductProcess, SearchServer, TestDb, product_command,
};

const ROOT: &str = "ESKILL";

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
        .args(["sink", "elasticsearch"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WALBROOK_NATS_URL", nats_url)
        .env("WALBROOK_ROOT", ROOT)
        .env("WALBROOK_SINK_SOURCE_DB", source.name())
        .env("WALBROOK_SINK_CONSUMER", "eskill")
        .env("WALBROOK_SINK_TABLES", "public.load")
        .env("WALBROOK_SINK_SEARCH_URL", url)
        .env("WALBROOK_SINK_INDEX_TEMPLATE", "kill-{table}")
        .env("WALBROOK_SINK_BATCH_EVENTS", "5")
        .env("RUST_LOG", "info")
        .envs(extra_env.iter().copied());
    ProductProcess::spawn(command, "walbrook sink elasticsearch", log).unwrap()
}

async fn documents(url: &str) -> std::collections::BTreeMap<i64, String> {
    let http = reqwest::Client::new();
    let _ = http.post(format!("{url}/kill-load/_refresh")).send().await;
    let Ok(response) = http
        .post(format!("{url}/kill-load/_search"))
        .json(&serde_json::json!({"size": 10000, "query": {"match_all": {}}}))
        .send()
        .await
    else {
        return Default::default();
    };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["hits"]["hits"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|h| {
            (
                h["_id"].as_str().unwrap().parse().unwrap(),
                h["_source"]["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_sink_killed_mid_stream_leaves_every_document() {
    let search = SearchServer::start().unwrap();
    println!("search engine: {}", search.engine());
    let pg = PgServer::shared();
    let db = pg.fresh_database("eskill");
    let nats = NatsServer::start().unwrap();
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
    let rows = 75 * cycles as i64;
    let url = db.url();
    let load = tokio::spawn(async move {
        let sql = connect(&url).await;
        for id in 0..rows {
            sql.batch_execute(&format!(
                "INSERT INTO load VALUES ({id}, 'v0'); UPDATE load SET note = 'v1' WHERE id = {id};"
            ))
            .await
            .unwrap();
            if id % 3 == 0 {
                sql.execute("DELETE FROM load WHERE id = $1", &[&(id / 2)])
                    .await
                    .unwrap();
            }
            if id % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let log = std::env::temp_dir().join(format!("{}-es.log", db.name()));
    let mut sink = spawn_sink(&db, search.url(), &nats.url(), &log);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(800)).await;
        sink.kill();
        sink = spawn_sink(&db, search.url(), &nats.url(), &log);
    }
    load.await.unwrap();
    let expected: std::collections::BTreeMap<i64, String> = source
        .query("SELECT id, note FROM load", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let docs = documents(search.url()).await;
        if docs == expected {
            eprintln!(
                "search check: {cycles} kills, index equals the source ({} documents)",
                docs.len()
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "index differs: {} documents, {} rows; missing {:?}, extra {:?}",
            docs.len(),
            expected.len(),
            expected
                .keys()
                .filter(|k| !docs.contains_key(k))
                .take(10)
                .collect::<Vec<_>>(),
            docs.keys()
                .filter(|k| !expected.contains_key(k))
                .take(10)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sink.signal(Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || sink.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    shutdown.cancel();
}

/// Every document of `index` (its `_id` and `_source`), after a refresh.
async fn sources(url: &str, index: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let http = reqwest::Client::new();
    let _ = http.post(format!("{url}/{index}/_refresh")).send().await;
    let Ok(response) = http
        .post(format!("{url}/{index}/_search"))
        .json(&serde_json::json!({"size": 10000, "query": {"match_all": {}}}))
        .send()
        .await
    else {
        return Default::default();
    };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["hits"]["hits"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|h| (h["_id"].as_str().unwrap().to_owned(), h["_source"].clone()))
        .collect()
}

/// The source rows as the documents the sink should hold: `_id` is the key's JSON text,
/// numerics are exact strings (docs/client.md, "JSON").
async fn expected_documents(
    sql: &tokio_postgres::Client,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    sql.query(
        "SELECT id::text, json_build_object('id', id, 'note', note, 'n', n::text)::text FROM boot",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get::<_, String>(0),
            serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
        )
    })
    .collect()
}

/// Waits (up to 90 s) until the index holds exactly the source's rows.
async fn wait_index_equals_source(
    sql: &tokio_postgres::Client,
    url: &str,
    index: &str,
    log: &std::path::Path,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (expected, docs) = (expected_documents(sql).await, sources(url, index).await);
        if docs == expected {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let differ: Vec<_> = expected
                .iter()
                .filter(|(k, v)| docs.get(*k) != Some(*v))
                .take(10)
                .map(|(k, v)| (k, v, docs.get(k)))
                .collect();
            let extra: Vec<_> = docs
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .take(10)
                .collect();
            panic!(
                "index differs: {} documents, {} rows; differing {differ:?}; extra {extra:?}\n\
                 sink log tail:\n{}",
                docs.len(),
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
async fn a_new_search_sink_bootstraps_from_a_snapshot_then_follows_the_changes() {
    let search = SearchServer::start().unwrap();
    println!("search engine: {}", search.engine());
    let pg = PgServer::shared();
    let db = pg.fresh_database("esboot");
    let nats = NatsServer::start().unwrap();
    let source = connect(&db.url()).await;
    // Rows written before the producer ever ran: only a snapshot can bring them.
    source
        .batch_execute(
            "CREATE TABLE boot (id bigint PRIMARY KEY, note text NOT NULL, n numeric);
             INSERT INTO boot SELECT g, 'old ' || g, g / 7.0 FROM generate_series(1, 2000) g;",
        )
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    start_producer(&db, &nats.url(), ROOT, "public.boot", shutdown.clone());
    wait_until_streaming(&source, &db.slot_name()).await;
    // Writers change old rows, add and delete rows while the sink bootstraps.
    let url = db.url();
    let load = tokio::spawn(async move {
        let sql = connect(&url).await;
        for round in 0..60i64 {
            sql.batch_execute(&format!(
                "BEGIN;
                 UPDATE boot SET note = 'r{round}', n = n * 3 WHERE id % 60 = {round};
                 INSERT INTO boot VALUES ({}, 'new', {round}.125);
                 DELETE FROM boot WHERE id = {};
                 COMMIT;",
                10_000 + round,
                2000 - round
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let log = std::env::temp_dir().join(format!("{}-esboot.log", db.name()));
    let env = [
        ("WALBROOK_SINK_SNAPSHOT", "true"),
        ("WALBROOK_SINK_START", "new"),
        ("WALBROOK_SINK_CONSUMER", "esboot"),
        ("WALBROOK_SINK_TABLES", "public.boot"),
        ("WALBROOK_SINK_INDEX_TEMPLATE", "boot-{table}"),
        ("WALBROOK_SINK_BATCH_EVENTS", "100"),
    ];
    let mut sink = spawn_sink_with(&db, search.url(), &nats.url(), &log, &env);
    load.await.unwrap();
    wait_index_equals_source(&source, search.url(), "boot-boot", &log).await;
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
             INSERT INTO boot VALUES (20000, 'after restart', 1.5);",
        )
        .await
        .unwrap();
    sink = spawn_sink_with(&db, search.url(), &nats.url(), &log, &env);
    wait_index_equals_source(&source, search.url(), "boot-boot", &log).await;
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
