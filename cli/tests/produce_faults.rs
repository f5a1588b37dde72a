//! `walbrook produce` as a process under faults: SIGKILL during load, a NATS restart,
//! and a severed PostgreSQL connection. Afterwards the stream must hold every
//! committed change exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use walbrook_harness::{FaultProxy, NatsServer, PgServer, TestDb};

const ROOT: &str = "FAULTS";

fn spawn_producer(db: &TestDb<'_>, pg_url: &str, nats_url: &str, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_walbrook"))
        .arg("produce")
        .env("WALBROOK_PG_URL", pg_url)
        .env("WALBROOK_NATS_URL", nats_url)
        .env("WALBROOK_TABLES", "public.load")
        .env("WALBROOK_SLOT", db.slot_name())
        .env("WALBROOK_PUBLICATION", db.publication_name())
        .env("WALBROOK_ROOT", ROOT)
        .env("WALBROOK_HEARTBEAT_INTERVAL", "500ms")
        .env("WALBROOK_ACK_TIMEOUT", "1s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn sigkill(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

/// Every (id → count) in the change stream, waiting until `expected` events arrived.
async fn stored_ids(nats_url: &str, db: &str, expected: u64) -> (BTreeMap<i64, u32>, u64) {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stream_name = format!("{ROOT}_{db}_WAL");
    loop {
        let mut stream = js.get_stream(&stream_name).await.unwrap();
        let messages = stream.info().await.unwrap().state.messages;
        if messages >= expected || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stream = js.get_stream(&stream_name).await.unwrap();
    let total = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = BTreeMap::new();
    for _ in 0..total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // The row id is carried in the message id's transaction; read it from the
        // payload's tail instead of decoding Avro: each insert's text column is
        // "row-<id>" and appears verbatim in the Avro body.
        let body = String::from_utf8_lossy(&message.payload);
        let id: i64 = body
            .split("row-")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .expect("every event carries its row marker");
        *ids.entry(id).or_insert(0) += 1;
    }
    (ids, total)
}

async fn writer(url: String, transactions: i64, rows_per_tx: i64, pause: Duration) {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for t in 0..transactions {
        let first = t * rows_per_tx;
        client
            .execute(
                "INSERT INTO load SELECT g, 'row-' || g FROM generate_series($1::bigint, $2::bigint) g",
                &[&first, &(first + rows_per_tx - 1)],
            )
            .await
            .unwrap();
        tokio::time::sleep(pause).await;
    }
}

async fn prepare(db: &TestDb<'_>) {
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE load (id bigint PRIMARY KEY, note text NOT NULL)")
        .await
        .unwrap();
}

async fn wait_for_active_slot(db: &TestDb<'_>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active = db
            .psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}' AND active",
                db.slot_name()
            ))
            .unwrap();
        if active.trim() == "1" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "producer never started streaming"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_exactly_once(ids: &BTreeMap<i64, u32>, total: u64, expected: i64) {
    let missing: Vec<i64> = (0..expected)
        .filter(|id| !ids.contains_key(id))
        .take(10)
        .collect();
    let doubled: Vec<(&i64, &u32)> = ids.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(missing.is_empty(), "lost changes, e.g. {missing:?}");
    assert!(doubled.is_empty(), "duplicated changes, e.g. {doubled:?}");
    assert_eq!(total, u64::try_from(expected).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_and_duplicates_nothing() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("kill9");
    let nats = NatsServer::start().unwrap();
    prepare(&db).await;
    let log = std::env::temp_dir().join(format!("{}-producer.log", db.name()));
    let mut producer = spawn_producer(&db, &db.url(), &nats.url(), &log);
    wait_for_active_slot(&db).await;

    const TXS: i64 = 150;
    const ROWS: i64 = 20;
    let load = tokio::spawn(writer(db.url(), TXS, ROWS, Duration::from_millis(10)));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sigkill(&mut producer);
        producer = spawn_producer(&db, &db.url(), &nats.url(), &log);
    }
    load.await.unwrap();
    let (ids, total) = stored_ids(&nats.url(), db.name(), (TXS * ROWS) as u64).await;
    sigkill(&mut producer);
    assert_exactly_once(&ids, total, TXS * ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_and_severed_postgres_lose_nothing() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("faults");
    let mut nats = NatsServer::start().unwrap();
    prepare(&db).await;
    let upstream: SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).unwrap();
    let proxied_url = format!(
        "postgresql://postgres@127.0.0.1:{}/{}?sslmode=disable",
        proxy.port(),
        db.name()
    );
    let log = std::env::temp_dir().join(format!("{}-producer.log", db.name()));
    let mut producer = spawn_producer(&db, &proxied_url, &nats.url(), &log);
    wait_for_active_slot(&db).await;

    const TXS: i64 = 120;
    const ROWS: i64 = 10;
    let load = tokio::spawn(writer(db.url(), TXS, ROWS, Duration::from_millis(15)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // NATS goes away for a while under load, then comes back on the same port.
    nats.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.start_again().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The PostgreSQL connection is cut, then restored.
    proxy.sever();
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.restore();
    load.await.unwrap();
    let (ids, total) = stored_ids(&nats.url(), db.name(), (TXS * ROWS) as u64).await;
    assert!(
        producer.try_wait().unwrap().is_none(),
        "the producer survived both faults without restarting; log: {}",
        log.display()
    );
    sigkill(&mut producer);
    assert_exactly_once(&ids, total, TXS * ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_active_producer_dies() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("standby");
    let nats = NatsServer::start().unwrap();
    prepare(&db).await;
    let log_a = std::env::temp_dir().join(format!("{}-producer-a.log", db.name()));
    let log_b = std::env::temp_dir().join(format!("{}-producer-b.log", db.name()));
    let mut active = spawn_producer(&db, &db.url(), &nats.url(), &log_a);
    wait_for_active_slot(&db).await;
    let mut standby = spawn_producer(&db, &db.url(), &nats.url(), &log_b);
    // The standby waits for the slot instead of failing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        standby.try_wait().unwrap().is_none(),
        "the standby must keep waiting"
    );
    assert!(
        std::fs::read_to_string(&log_b)
            .unwrap()
            .contains("another producer holds the slot"),
        "the standby says it waits"
    );

    const TXS: i64 = 100;
    const ROWS: i64 = 10;
    let load = tokio::spawn(writer(db.url(), TXS, ROWS, Duration::from_millis(10)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed_at = std::time::Instant::now();
    sigkill(&mut active);
    load.await.unwrap();
    let (ids, total) = stored_ids(&nats.url(), db.name(), (TXS * ROWS) as u64).await;
    eprintln!("standby caught up {:?} after the kill", killed_at.elapsed());
    assert!(
        standby.try_wait().unwrap().is_none(),
        "the standby is now the active producer"
    );
    sigkill(&mut standby);
    assert_exactly_once(&ids, total, TXS * ROWS);
}
