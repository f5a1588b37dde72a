//! The replication transport against a real PostgreSQL: decoded messages, the flush
//! position moving only when confirmed, and resuming after it without redelivery.

use std::time::{Duration, Instant};

use walbrook_harness::PgServer;
use walbrook_producer::Lsn;
use walbrook_producer::config::Secret;
use walbrook_producer::pgoutput::{ColumnValue, Message};
use walbrook_producer::replication::{ConnectionTarget, ReplicationStream, StreamItem};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Reads messages until a Commit, returning the transaction's messages.
async fn next_transaction(stream: &mut ReplicationStream) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("no replication message within 10 s")
            .unwrap()
            .expect("stream ended");
        if let StreamItem::Message { message, .. } = item {
            let done = matches!(message, Message::Commit(_));
            out.push(message);
            if done {
                return out;
            }
        }
    }
}

async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    let text: String = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

#[tokio::test]
async fn streams_confirms_and_resumes() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("replication");
    let client = connect(&db.url()).await;
    let (slot, publication) = (db.slot_name(), db.publication_name());
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, at timestamptz, span interval);
             CREATE PUBLICATION {publication} FOR TABLE t;"
        ))
        .await
        .unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    let start = confirmed_flush(&client, &slot).await;

    let target = ConnectionTarget::from_url(&Secret::new(db.url())).unwrap();
    let mut stream =
        ReplicationStream::start(&target, &slot, &publication, Duration::from_millis(200))
            .await
            .unwrap();
    // The server's own settings differ from the pinned session settings: the values
    // must still arrive in the pinned format.
    client
        .batch_execute(
            "SET TimeZone = 'America/New_York'; SET IntervalStyle = 'sql_standard';
             INSERT INTO t VALUES (1, '2024-01-02 03:04:05.123456+00', '1 day 02:03:04');",
        )
        .await
        .unwrap();
    let tx = next_transaction(&mut stream).await;
    let Some(Message::Insert(insert)) = tx.iter().find(|m| matches!(m, Message::Insert(_))) else {
        panic!("no insert in {tx:?}")
    };
    let text = |i: usize| match &insert.new.0[i] {
        ColumnValue::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text(1),
        "2024-01-02 03:04:05.123456+00",
        "TimeZone=UTC, DateStyle=ISO"
    );
    assert_eq!(text(2), "1 day 02:03:04", "IntervalStyle=postgres");
    let Some(Message::Commit(commit)) = tx.last() else {
        unreachable!()
    };

    // Nothing is confirmed until we say so.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(confirmed_flush(&client, &slot).await, start);
    stream.confirm(commit.end_lsn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while confirmed_flush(&client, &slot).await < commit.end_lsn {
        assert!(
            Instant::now() < deadline,
            "the confirmed position never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stream.shutdown().await.unwrap();

    // Resume: only the transaction after the confirmed position arrives.
    client
        .batch_execute("INSERT INTO t VALUES (2, NULL, NULL)")
        .await
        .unwrap();
    let mut stream =
        ReplicationStream::start(&target, &slot, &publication, Duration::from_millis(200))
            .await
            .unwrap();
    let tx = next_transaction(&mut stream).await;
    let inserts: Vec<_> = tx
        .iter()
        .filter_map(|m| match m {
            Message::Insert(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(inserts.len(), 1);
    assert_eq!(
        inserts[0].new.0[0],
        ColumnValue::Text(bytes::Bytes::from_static(b"2")),
        "the confirmed transaction is not delivered again"
    );
    stream.shutdown().await.unwrap();
}
