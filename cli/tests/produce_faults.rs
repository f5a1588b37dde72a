//! `walbrook produce` as a process under faults: SIGKILL at random moments under load,
//! a NATS restart, a severed PostgreSQL connection, a standby takeover, and each node of
//! a 3-node JetStream cluster (R3 streams) killed and restarted in turn. Afterwards the
//! stream must hold every committed change exactly once.
//!
//! This is the fault-injection suite: the test command runs it with 10 kill cycles and
//! without the cluster case; `make chaos` runs all of it with `TEST_CHAOS_CYCLES=30`
//! (any number may be set) and prints the seed of the random kill moments
//! (`TEST_CHAOS_SEED` replays a run).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt;
use walbrook_harness::{FaultProxy, NatsServer, PgServer, ProductProcess, TestDb, product_command};

const ROOT: &str = "FAULTS";

/// A `walbrook produce` child process: killed when dropped, its log's tail printed when a
/// test fails while it runs.
type Producer = ProductProcess;

fn spawn_producer(
    db: &TestDb<'_>,
    pg_url: &str,
    nats_url: &str,
    log: &std::path::Path,
) -> Producer {
    spawn_producer_with(db, pg_url, nats_url, log, &[])
}

fn spawn_producer_with(
    db: &TestDb<'_>,
    pg_url: &str,
    nats_url: &str,
    log: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> Producer {
    let mut command = product_command(env!("CARGO_BIN_EXE_walbrook"));
    command
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
        .envs(extra_env.iter().copied());
    ProductProcess::spawn(command, "walbrook produce", log).unwrap()
}

/// Every (id → count) in the change stream, waiting until `expected` events arrived, and
/// the number of events stored. A message carrying several events (`Walbrook-Events`,
/// docs/protocol.md §3.6) counts each of them.
async fn stored_ids(nats_url: &str, db: &str, expected: u64) -> (BTreeMap<i64, u32>, u64) {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stream_name = format!("{ROOT}_{db}_WAL");
    // JetStream API requests may fail for a moment while a cluster recovers.
    let stream = loop {
        match js.get_stream(&stream_name).await {
            Ok(stream) => break stream,
            Err(e) => eprintln!("get_stream: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream stayed unreachable"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let consumer = loop {
        match stream.create_consumer(OrderedConfig::default()).await {
            Ok(consumer) => break consumer,
            Err(e) => eprintln!("create_consumer: {e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "no consumer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = BTreeMap::new();
    let mut total = 0u64;
    loop {
        // Until every expected event is there, then a little longer to see extra copies.
        let wait = if total >= expected {
            Duration::from_secs(1)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let Ok(Some(message)) = tokio::time::timeout(wait, messages.next()).await else {
            break;
        };
        let message = message.unwrap();
        let announced: u64 = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Walbrook-Events"))
            .map_or(1, |v| {
                v.as_str().parse().expect("a numeric Walbrook-Events")
            });
        // Each insert's text column is "row-<id>" and appears verbatim in its event's
        // Avro body: read the ids there instead of decoding Avro.
        let body = String::from_utf8_lossy(&message.payload);
        let mut found = 0;
        for rest in body.split("row-").skip(1) {
            let id: i64 = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|digits| digits.parse().ok())
                .expect("every event carries its row marker");
            *ids.entry(id).or_insert(0) += 1;
            found += 1;
        }
        assert_eq!(found, announced, "message {:?}", message.info().ok());
        total += found;
    }
    (ids, total)
}

/// Writes transactions of `rows_per_tx` rows until `stop` is set; returns the rows written.
async fn writer_until(
    url: String,
    rows_per_tx: i64,
    pause: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> i64 {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut first = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        client
            .execute(
                "INSERT INTO load SELECT g, 'row-' || g FROM generate_series($1::bigint, $2::bigint) g",
                &[&first, &(first + rows_per_tx - 1)],
            )
            .await
            .unwrap();
        first += rows_per_tx;
        tokio::time::sleep(pause).await;
    }
    first
}

/// Kill cycles: `TEST_CHAOS_CYCLES` (default 10, the suite's minimum).
fn chaos_cycles() -> usize {
    std::env::var("TEST_CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// A small deterministic generator (xorshift64*) for the kill moments, seeded from
/// `TEST_CHAOS_SEED` or the clock; the seed is printed so a run can be replayed.
struct Moments(u64);

impl Moments {
    fn new() -> Moments {
        let seed = std::env::var("TEST_CHAOS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("chaos seed: TEST_CHAOS_SEED={seed}");
        Moments(seed)
    }

    /// A duration uniformly in `[min, max)`.
    fn between(&mut self, min: Duration, max: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let span = (max - min).as_micros() as u64;
        min + Duration::from_micros(r % span.max(1))
    }
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

/// A producer reaching PostgreSQL through a [`FaultProxy`], streaming once this returns.
async fn spawn_proxied_producer(
    pg: &PgServer,
    db: &TestDb<'_>,
    nats_url: &str,
) -> (FaultProxy, Producer, std::path::PathBuf) {
    let upstream: SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).unwrap();
    let proxied_url = format!(
        "postgresql://postgres@127.0.0.1:{}/{}?sslmode=disable",
        proxy.port(),
        db.name()
    );
    let log = std::env::temp_dir().join(format!("{}-producer.log", db.name()));
    let producer = spawn_producer(db, &proxied_url, nats_url, &log);
    wait_for_active_slot(db).await;
    (proxy, producer, log)
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
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = '{}'",
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

/// Waits (up to 60 s) until the R3 stream has a leader and every replica is current.
async fn wait_until_healthy(urls: &[String], stream_name: &str) {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(urls)
        .await
        .unwrap();
    let js = jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut last = String::from("no answer");
        if let Ok(mut stream) = js.get_stream(stream_name).await {
            match stream.info().await {
                Ok(info) => {
                    if let Some(cluster) = &info.cluster
                        && cluster.leader.is_some()
                        && cluster.replicas.len() == 2
                        && cluster.replicas.iter().all(|p| p.current && !p.offline)
                    {
                        return;
                    }
                    last = format!("{:?}", info.cluster);
                }
                Err(e) => last = e.to_string(),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {stream_name} never became healthy: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_exactly_once(ids: &BTreeMap<i64, u32>, total: u64, expected: i64) {
    let missing: Vec<i64> = (0..expected)
        .filter(|id| !ids.contains_key(id))
        .take(10)
        .collect();
    let doubled: Vec<(&i64, &u32)> = ids.iter().filter(|(_, n)| **n > 1).take(10).collect();
    let lost = (0..expected).filter(|id| !ids.contains_key(id)).count();
    let extra: u32 = ids.values().map(|n| n.saturating_sub(1)).sum();
    eprintln!(
        "stream check: {expected} changes committed, {total} events stored, {lost} lost, \
         {extra} duplicated"
    );
    assert!(missing.is_empty(), "lost changes, e.g. {missing:?}");
    assert!(doubled.is_empty(), "duplicated changes, e.g. {doubled:?}");
    assert_eq!(total, u64::try_from(expected).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_under_load_loses_and_duplicates_nothing() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("kill9");
    let nats = NatsServer::start().unwrap();
    prepare(&db).await;
    let log = std::env::temp_dir().join(format!("{}-producer.log", db.name()));
    let mut producer = spawn_producer(&db, &db.url(), &nats.url(), &log);
    wait_for_active_slot(&db).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(writer_until(
        db.url(),
        20,
        Duration::from_millis(10),
        stop.clone(),
    ));
    let mut moments = Moments::new();
    let cycles = chaos_cycles();
    for cycle in 0..cycles {
        // Anywhere from mid-start-up to well into streaming.
        let wait = moments.between(Duration::from_millis(50), Duration::from_millis(900));
        tokio::time::sleep(wait).await;
        producer.kill();
        eprintln!("cycle {}/{cycles}: SIGKILL after {wait:?}", cycle + 1);
        producer = spawn_producer(&db, &db.url(), &nats.url(), &log);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = load.await.unwrap();
    let (ids, total) = stored_ids(&nats.url(), db.name(), written as u64).await;
    producer.kill();
    assert_exactly_once(&ids, total, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_draining_a_backlog_of_large_transactions_stores_each_event_once() {
    // Large transactions travel as messages of many events (docs/protocol.md §3.6); a
    // restarted producer cuts them at other boundaries, resuming after the last stored
    // event, so no event may be stored twice or skipped.
    const TXS: i64 = 12;
    const ROWS: i64 = 2_500;
    let pg = PgServer::shared();
    let db = pg.fresh_database("kill9_backlog");
    let nats = NatsServer::start().unwrap();
    prepare(&db).await;
    let log = std::env::temp_dir().join(format!("{}-producer.log", db.name()));
    // Create the slot, then stop: the backlog is written while no producer runs.
    let mut producer = spawn_producer(&db, &db.url(), &nats.url(), &log);
    wait_for_active_slot(&db).await;
    producer.kill();
    for tx in 0..TXS {
        db.psql(&format!(
            "INSERT INTO load SELECT g, 'row-' || g FROM generate_series({}, {}) g",
            tx * ROWS,
            (tx + 1) * ROWS - 1
        ))
        .unwrap();
    }
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream_name = format!("{ROOT}_{}_WAL", db.name());
    let mut moments = Moments::new();
    let mut kills = 0;
    let mut last_seen = 0;
    for round in 0..8 {
        producer = spawn_producer(&db, &db.url(), &nats.url(), &log);
        // Kill it once it has stored more than before (mid-drain), at a random moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let stored = match js.get_stream(&stream_name).await {
                Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
                Err(_) => 0,
            };
            if stored > last_seen || tokio::time::Instant::now() > deadline {
                last_seen = stored;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(moments.between(Duration::ZERO, Duration::from_millis(300))).await;
        let confirmed = db
            .psql(&format!(
                "SELECT confirmed_flush_lsn >= pg_current_wal_lsn() FROM pg_replication_slots \
                 WHERE slot_name = '{}'",
                db.slot_name()
            ))
            .unwrap();
        if confirmed.trim() == "t" {
            eprintln!("round {round}: drained before the kill");
            break;
        }
        producer.kill();
        kills += 1;
        eprintln!("round {round}: SIGKILL mid-backlog ({last_seen} messages stored)");
    }
    producer = spawn_producer(&db, &db.url(), &nats.url(), &log);
    let (ids, total) = stored_ids(&nats.url(), db.name(), (TXS * ROWS) as u64).await;
    producer.kill();
    assert!(
        kills >= 1,
        "the producer drained the backlog before any kill"
    );
    assert_exactly_once(&ids, total, TXS * ROWS);
    // The transactions really were shared: far fewer messages than events.
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    assert!(messages < total, "{messages} messages for {total} events");
}

// Not in the test command: on this 2-core machine nats-server 2.15.1 occasionally leaves a
// freshly created R3 stream without a leader for over a minute after such restarts (seen
// 1 run in 5; the producer waits and loses nothing, but the test cannot finish in time).
// `make chaos` runs it.
#[ignore = "3-node cluster faults: run by `make chaos`"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_of_a_jetstream_cluster_killed_and_restarted_loses_nothing() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("cluster");
    let mut cluster = walbrook_harness::NatsCluster::start(3).unwrap();
    prepare(&db).await;
    let urls = cluster.urls().join(",");
    let log = std::env::temp_dir().join(format!("{}-producer.log", db.name()));
    let mut producer = spawn_producer_with(
        &db,
        &db.url(),
        &urls,
        &log,
        &[("WALBROOK_STREAM_REPLICAS", "3")],
    );
    wait_for_active_slot(&db).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(writer_until(
        db.url(),
        10,
        Duration::from_millis(15),
        stop.clone(),
    ));
    // Every node in turn (so the stream's leader is among them): killed with SIGKILL
    // under load, down for a while, restarted on the same port and store. One node at a
    // time, as the R3 guarantee is stated: the stream is healthy again (a leader, every
    // replica current) before the next node goes.
    let stream_name = format!("{ROOT}_{}_WAL", db.name());
    for node in 0..cluster.len() {
        wait_until_healthy(&cluster.urls(), &stream_name).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.node(node).kill();
        eprintln!("node {node} killed");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.node(node).start_again().unwrap();
        eprintln!("node {node} restarted");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = load.await.unwrap();
    wait_until_healthy(&cluster.urls(), &stream_name).await;
    let (ids, total) = stored_ids(&cluster.urls()[0], db.name(), written as u64).await;
    assert!(
        producer.try_wait().unwrap().is_none(),
        "the producer rode out every node failure; log: {}",
        log.display()
    );
    producer.kill();
    assert_exactly_once(&ids, total, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_and_severed_postgres_lose_nothing() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("faults");
    let mut nats = NatsServer::start().unwrap();
    prepare(&db).await;
    let (proxy, mut producer, log) = spawn_proxied_producer(pg, &db, &nats.url()).await;

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
    producer.kill();
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
    active.kill();
    load.await.unwrap();
    let (ids, total) = stored_ids(&nats.url(), db.name(), (TXS * ROWS) as u64).await;
    eprintln!("standby caught up {:?} after the kill", killed_at.elapsed());
    assert!(
        standby.try_wait().unwrap().is_none(),
        "the standby is now the active producer"
    );
    standby.kill();
    assert_exactly_once(&ids, total, TXS * ROWS);
}

/// While PostgreSQL is unreachable, schema lookups the producer can answer from memory
/// are answered at once, and the others get a prompt error instead of waiting for a
/// connection attempt each; once it is back, the schema store answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_lookups_are_answered_while_postgres_is_unreachable() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("lookup_down");
    let nats = NatsServer::start().unwrap();
    prepare(&db).await;
    let (proxy, mut producer, _log) = spawn_proxied_producer(pg, &db, &nats.url()).await;
    db.psql("INSERT INTO load VALUES (1, 'one')").unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let fingerprint = loop {
        let found = match js.get_stream(format!("{ROOT}_{}_WAL", db.name())).await {
            Ok(stream) => stream
                .get_last_raw_message_by_subject(&format!("{ROOT}.{}.wal.public.load", db.name()))
                .await
                .ok(),
            Err(_) => None,
        };
        if let Some(message) = found {
            let headers = message.headers;
            break headers
                .get("Walbrook-Fingerprint")
                .expect("a fingerprint header")
                .to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lookup = |payload: String| {
        let client = client.clone();
        let subject = format!("{ROOT}.{}.rpc.schema", db.name());
        async move {
            let started = std::time::Instant::now();
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                client.request(subject, payload.into()),
            )
            .await
            .expect("answered within 10 s")
            .expect("a reply");
            let error = reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
                .map(|v| v.to_string());
            (error, started.elapsed())
        }
    };
    // PostgreSQL stops answering (connections hang rather than being refused).
    proxy.set_delay(Duration::from_secs(300));
    let (error, took) = lookup(fingerprint.clone()).await;
    assert_eq!(error, None, "a known schema is answered from memory");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The first miss waits for one connection attempt (5 s at most); the next ones are
    // answered without another attempt.
    let (error, took) = lookup("0000000000000001".into()).await;
    assert_eq!(error.as_deref(), Some("500"), "store unavailable");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let mut slowest = Duration::ZERO;
    for n in 2..6 {
        let (error, took) = lookup(format!("{n:016x}")).await;
        assert_eq!(error.as_deref(), Some("500"), "store unavailable");
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    proxy.set_delay(Duration::ZERO);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (error, _) = lookup("00000000000000ff".into()).await;
        if error.as_deref() == Some("404") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schema store never answered again: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    producer.kill();
}
