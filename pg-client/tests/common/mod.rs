//! Shared setup for the sink tests: the client tests' setup (a fresh database, a NATS
//! server and a real producer running in-process; included from
//! `client/tests/common/mod.rs`), plus helpers to compare source and target tables.

#![allow(dead_code)]

use std::time::Duration;

#[path = "../../../client/tests/common/mod.rs"]
mod client_common;

pub use client_common::*;

impl Setup {
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
