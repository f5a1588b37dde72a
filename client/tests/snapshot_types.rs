//! Every type of issue #3 through a snapshot: each snapshot row equals, value for value,
//! the after image the change stream publishes for the same row (same fingerprint). The
//! type cases are those of `pgtype-avro/tests/pg_roundtrip.rs`.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use walbrook_client::{
    Client, ClientOptions, Op, PgValue, SnapshotRequest, Start, Subscription, value_to_json,
};
use walbrook_harness::PgServer;
use walbrook_producer::config::RawConfig;

const ROOT: &str = "WBSNAPTYPES";

#[path = "../../pgtype-avro/tests/type_cases/mod.rs"]
mod type_cases;

use type_cases::{SETUP, cases};

#[tokio::test]
async fn every_type_snapshots_exactly_like_the_change_stream() {
    let db = PgServer::shared().fresh_database("snap_types");
    let nats = walbrook_harness::NatsServer::start().unwrap();
    let (sql, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sql.batch_execute(SETUP).await.unwrap();
    let cases = cases();
    let mut tables = Vec::new();
    for (k, (ty, values)) in cases.iter().enumerate() {
        let table = format!("t{k}");
        let rows: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("({i}, {v})"))
            .collect();
        sql.batch_execute(&format!(
            "CREATE TABLE {table} (id int4 PRIMARY KEY, v {ty});
             INSERT INTO {table} VALUES {};",
            rows.join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("{ty}: {e:?}"));
        tables.push(format!("public.{table}"));
    }
    let mut raw = RawConfig::default();
    raw.apply_env([
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats.url()),
        ("WALBROOK_TABLES", tables.join(",")),
        ("WALBROOK_SLOT", db.slot_name()),
        ("WALBROOK_PUBLICATION", db.publication_name()),
        ("WALBROOK_ROOT", ROOT.to_string()),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(walbrook_producer::pipeline::run(
        raw.validate().unwrap(),
        shutdown.clone(),
    ));
    let client = Client::connect(ClientOptions::new(nats.url(), db.name()).root(ROOT))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while client.snapshots("*").await.is_err() {
        assert!(!producer.is_finished(), "the producer stopped");
        assert!(tokio::time::Instant::now() < deadline, "no snapshot RPC");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut compared = 0;
    let mut unchanged = 0;
    for (k, (ty, values)) in cases.iter().enumerate() {
        let table = format!("public.t{k}");
        let mut snapshot = client
            .snapshot(SnapshotRequest::table(&table))
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e}"));
        let mut rows = HashMap::new();
        while let Some(row) = snapshot.next().await {
            let row = row.unwrap_or_else(|e| panic!("{ty}: {e}"));
            let after = row.after().unwrap();
            let id = after.get("id").cloned().unwrap();
            rows.insert(format!("{id:?}"), (row.fingerprint(), after.clone()));
        }
        assert_eq!(rows.len(), values.len(), "{ty}");
        let mut changes = client
            .subscribe(
                Subscription::table(&table)
                    .start(Start::CommitPosition(snapshot.position().unwrap())),
            )
            .await
            .unwrap();
        sql.batch_execute(&format!("UPDATE {table} SET id = id"))
            .await
            .unwrap();
        for _ in 0..values.len() {
            let event = tokio::time::timeout(Duration::from_secs(30), changes.next())
                .await
                .unwrap_or_else(|_| panic!("{ty}: no change event"))
                .unwrap()
                .unwrap_or_else(|e| panic!("{ty}: {e}"));
            assert_eq!(event.op(), Op::Update);
            let after = event.after().unwrap();
            let id = after.get("id").cloned().unwrap();
            let (fingerprint, from_snapshot) = rows.remove(&format!("{id:?}")).unwrap();
            assert_eq!(fingerprint, event.fingerprint(), "{ty}: one schema");
            match after.get("v") {
                // A TOASTed value the update did not touch: pgoutput leaves it out.
                Some(PgValue::Unchanged) => unchanged += 1,
                value => {
                    assert_eq!(
                        from_snapshot.get("v").map(value_to_json),
                        value.map(value_to_json),
                        "{ty} row {id:?}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 200, "{compared} values compared");
    assert!(unchanged < 10, "{unchanged} TOASTed values not compared");
    shutdown.cancel();
    producer.await.unwrap().unwrap();
}
