//! Shared setup: a fresh database, a NATS server and a real producer running in-process.

#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use walbrook_client::{ChangeEvent, ChangeStream, Client, ClientOptions, Error};
use walbrook_harness::{NatsServer, PgServer, TestDb};
use walbrook_producer::config::{ProducerConfig, RawConfig};

pub const ROOT: &str = "WBCLIENT";

/// A database with a producer publishing `tables` to a private NATS server.
pub struct Setup {
    pub db: TestDb<'static>,
    pub nats: NatsServer,
    pub sql: tokio_postgres::Client,
    shutdown: CancellationToken,
    producer:
        Option<tokio::task::JoinHandle<Result<(), walbrook_producer::pipeline::ProducerError>>>,
}

pub fn config(
    db: &TestDb<'_>,
    nats_url: &str,
    tables: &str,
    extra: &[(&str, &str)],
) -> ProducerConfig {
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
    raw.apply_env(extra.iter().map(|(k, v)| (*k, v.to_string())))
        .unwrap();
    raw.validate().unwrap()
}

impl Setup {
    /// Creates the database objects with `ddl`, starts the producer for `tables` and waits
    /// until it streams.
    pub async fn start(prefix: &str, ddl: &str, tables: &str) -> Setup {
        Setup::start_with_nats(prefix, ddl, tables, NatsServer::start().unwrap()).await
    }

    /// [`Setup::start`] with a NATS server of the caller's (e.g. a small `max_payload`).
    pub async fn start_with_nats(prefix: &str, ddl: &str, tables: &str, nats: NatsServer) -> Setup {
        Setup::start_with(prefix, ddl, tables, nats, &[]).await
    }

    /// [`Setup::start_with_nats`] with more `WALBROOK_*` settings for the producer.
    pub async fn start_with(
        prefix: &str,
        ddl: &str,
        tables: &str,
        nats: NatsServer,
        extra: &[(&str, &str)],
    ) -> Setup {
        Setup::start_on(PgServer::shared(), prefix, ddl, tables, nats, extra).await
    }

    /// [`Setup::start_with`] on the PostgreSQL server `pg` (e.g.
    /// [`PgServer::shared_high_lsn`]).
    pub async fn start_on(
        pg: &'static PgServer,
        prefix: &str,
        ddl: &str,
        tables: &str,
        nats: NatsServer,
        extra: &[(&str, &str)],
    ) -> Setup {
        let db = pg.fresh_database(prefix);
        let (sql, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        sql.batch_execute(ddl).await.unwrap();
        let shutdown = CancellationToken::new();
        let producer = tokio::spawn(walbrook_producer::pipeline::run(
            config(&db, &nats.url(), tables, extra),
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
                    "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
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
        let detail = match &item {
            Some(Ok(event)) => format!(
                " (delivered {} times, consumer sequence {})",
                event.delivered(),
                event.consumer_sequence()
            ),
            _ => String::new(),
        };
        panic!("unexpected item{detail}: {item:?}");
    }
}
