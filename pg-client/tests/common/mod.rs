//! Shared setup: a fresh database, a NATS server and a real producer running in-process.

#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use walbrook_client::{ChangeEvent, ChangeStream, Client, ClientOptions, Error};
use walbrook_harness::{NatsServer, PgServer, TestDb};
use walbrook_producer::config::{ProducerConfig, RawConfig};

pub const ROOT: &str = "WBSINK";

/// A database with a producer publishing `tables` to a private NATS server.
pub struct Setup {
    pub db: TestDb<'static>,
    pub nats: NatsServer,
    pub sql: tokio_postgres::Client,
    shutdown: CancellationToken,
    producer:
        Option<tokio::task::JoinHandle<Result<(), walbrook_producer::pipeline::ProducerError>>>,
}

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

impl Setup {
    /// Creates the database objects with `ddl`, starts the producer for `tables` and waits
    /// until it streams.
    pub async fn start(prefix: &str, ddl: &str, tables: &str) -> Setup {
        let db = PgServer::shared().fresh_database(prefix);
        let nats = NatsServer::start().unwrap();
        let (sql, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        sql.batch_execute(ddl).await.unwrap();
        let shutdown = CancellationToken::new();
        let producer = tokio::spawn(walbrook_producer::pipeline::run(
            config(&db, &nats.url(), tables),
            shutdown.clone(),
        ));
        let setup = Setup {
            db,
            nats,
            sql,
            shutdown,
            producer: Some(producer),
        };
        setup.wait_for_slot().await;
        setup.wait_for_stream().await;
        setup
    }

    /// Waits until the producer has created the change stream.
    async fn wait_for_stream(&self) {
        let nats = async_nats::connect(self.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(nats);
        let name = format!("{ROOT}_{}_WAL", self.db.name());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while js.get_stream(&name).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the producer never created {name}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_slot(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let row = self
                .sql
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[&self.db.slot_name()],
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

    pub fn options(&self) -> ClientOptions {
        ClientOptions::new(self.nats.url(), self.db.name()).root(ROOT)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.options()).await.unwrap()
    }

    /// Runs each statement in its own transaction.
    pub async fn exec(&self, statements: &[&str]) {
        for s in statements {
            self.sql.batch_execute(s).await.unwrap();
        }
    }

    /// The acknowledged floor (stream sequence) of a durable consumer, 0 when missing.
    pub async fn js_consumer_ack_floor(&self, consumer: &str) -> u64 {
        let nats = async_nats::connect(self.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(nats);
        let name = format!("{ROOT}_{}_WAL", self.db.name());
        let stream = js.get_stream(&name).await.unwrap();
        match stream.consumer_info(consumer).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(_) => 0,
        }
    }

    pub fn wal_subject(&self, schema: &str, table: &str) -> String {
        format!("{ROOT}.{}.wal.{schema}.{table}", self.db.name())
    }

    /// Stops the producer and checks it ended cleanly.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(producer) = self.producer.take() {
            tokio::time::timeout(Duration::from_secs(20), producer)
                .await
                .expect("the producer stops")
                .unwrap()
                .unwrap();
        }
    }
}

/// The next item, failing the test after 20 s.
pub async fn next(stream: &mut ChangeStream) -> Result<ChangeEvent, Error> {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an event within 20 s")
        .expect("the stream goes on")
}

/// The next `n` events, each expected to decode.
pub async fn events(stream: &mut ChangeStream, n: usize) -> Vec<ChangeEvent> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next(stream).await.unwrap());
    }
    out
}

/// Asserts that nothing arrives for `wait`.
pub async fn assert_quiet(stream: &mut ChangeStream, wait: Duration) {
    if let Ok(item) = tokio::time::timeout(wait, stream.next()).await {
        panic!("unexpected item: {item:?}");
    }
}

/// Rows of `table` in the database behind `sql`, each as PostgreSQL's record text, sorted:
/// two tables with the same columns and rows give the same list.
pub async fn rows(sql: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let query = format!("SELECT t::text FROM {table} t ORDER BY 1");
    match sql.query(&query, &[]).await {
        Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        Err(e) => vec![format!("error: {e}")],
    }
}

/// Connects to a database.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (sql, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sql
}

/// Waits until every table of `tables` has the same rows in both databases; panics with the
/// difference after `within`.
pub async fn wait_equal(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    tables: &[&str],
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut diff = Vec::new();
        for t in tables {
            let (a, b) = (rows(source, t).await, rows(target, t).await);
            if a != b {
                diff.push(format!("{t}:\n  source {a:?}\n  target {b:?}"));
            }
        }
        if diff.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "target differs from source:\n{}",
            diff.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
