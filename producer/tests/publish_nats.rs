//! The publisher against a real nats-server: pipelined acks, confirmation order, and
//! no loss or duplicate across a server outage.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;
use walbrook_harness::NatsServer;
use walbrook_producer::Lsn;
use walbrook_producer::publish::{OutMessage, Publisher, RetryPolicy, context_for};

fn message(i: u64) -> OutMessage {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{i:016X}-0").as_str());
    OutMessage {
        subject: "T.db.wal.public.t".into(),
        headers,
        payload: Bytes::from(i.to_string()),
        chained: true,
    }
}

async fn setup(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap();
    let js = context_for(client, 64, Duration::from_millis(800));
    js.create_stream(stream::Config {
        name: "T_db_WAL".into(),
        subjects: vec!["T.db.wal.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

/// Every payload in the stream, in stream order.
async fn stored(js: &jetstream::Context) -> Vec<u64> {
    let stream = js.get_stream("T_db_WAL").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let total = stream.cached_info().state.messages;
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stream read timed out")
            .unwrap()
            .unwrap();
        out.push(std::str::from_utf8(&m.payload).unwrap().parse().unwrap());
    }
    out
}

#[tokio::test]
async fn confirms_only_what_jetstream_acked_in_order() {
    let server = NatsServer::start().unwrap();
    let js = setup(&server.url()).await;
    let mut publisher = Publisher::new(js.clone(), 16, RetryPolicy::default());
    for i in 0..100 {
        publisher.push(message(i)).await.unwrap();
        assert!(publisher.in_flight() <= 16, "the window is bounded");
        if i % 10 == 9 {
            publisher.push_confirm(Lsn(i));
        }
    }
    assert!(publisher.confirmed() < Lsn(99));
    publisher.flush().await.unwrap();
    assert_eq!(publisher.confirmed(), Lsn(99));
    assert_eq!(publisher.in_flight(), 0);
    assert_eq!(stored(&js).await, (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_nats_outage_loses_nothing_and_duplicates_nothing() {
    let mut server = NatsServer::start().unwrap();
    let js = setup(&server.url()).await;
    let retry = RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        give_up_after: Some(Duration::from_secs(60)),
    };
    let mut publisher = Publisher::new(js.clone(), 32, retry);
    const TOTAL: u64 = 3000;
    let outage = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        server.stop();
        std::thread::sleep(Duration::from_millis(2500));
        server.start_again().unwrap();
        server
    });
    for i in 0..TOTAL {
        publisher.push(message(i)).await.unwrap();
        publisher.push_confirm(Lsn(i + 1));
        if i % 50 == 0 {
            // Spread the publishes over the outage.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    publisher.flush().await.unwrap();
    let _server = outage.join().unwrap();
    assert_eq!(publisher.confirmed(), Lsn(TOTAL));
    let (_, _, resent) = publisher.counters();
    assert!(resent > 0, "the outage must have forced re-sends");
    let stored = stored(&js).await;
    let first_difference = stored
        .iter()
        .zip(0..TOTAL)
        .position(|(got, want)| *got != want);
    assert!(
        stored.len() == TOTAL as usize && first_difference.is_none(),
        "every message exactly once, in order: {} stored, first difference at {first_difference:?}: {:?}",
        stored.len(),
        first_difference.map(|i| &stored[i.saturating_sub(3)..(i + 5).min(stored.len())])
    );
}
