//! `walbrook sink webhook` as a process: killed with SIGKILL mid-stream and restarted, every
//! event is delivered at least once, always with the same id.

mod common;

use common::{Reaper, connect, sigkill, sink_kill_cycles, start_producer, wait_until_streaming};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use walbrook_harness::{NatsServer, PgServer, TestDb, WebhookReceiver};

const ROOT: &str = "HOOKKILL";

fn spawn_sink(source: &TestDb<'_>, url: &str, nats_url: &str, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_walbrook"))
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
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
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
    let mut reaper = Reaper(Some(sink.id()));
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(600)).await;
        sigkill(&mut sink);
        sink = spawn_sink(&db, &receiver.url(), &nats.url(), &log);
        reaper.0 = Some(sink.id());
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
    let _ = kill(Pid::from_raw(sink.id() as i32), Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || sink.wait())
        .await
        .unwrap()
        .unwrap();
    reaper.0 = None;
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    shutdown.cancel();
}
