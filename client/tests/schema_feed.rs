//! The schema cache is fed by the schema announcements: after an ALTER TABLE the new
//! version's first event decodes without a lookup RPC (requests counted on the RPC subject).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use walbrook_client::{Client, PgValue, Subscription};

use common::{Setup, next};

/// Counts the requests on the schema lookup RPC subject.
async fn count_lookups(setup: &Setup) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let rpc = format!("{}.{}.rpc.schema", common::ROOT, setup.db.name());
    let watcher = async_nats::connect(setup.nats.url()).await.unwrap();
    let mut requests = watcher.subscribe(rpc).await.unwrap();
    watcher.flush().await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let task = tokio::spawn(async move {
        let _keep = watcher;
        while requests.next().await.is_some() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (count, task)
}

#[tokio::test]
async fn announced_schemas_are_cached_and_need_no_lookup() {
    let mut setup = Setup::start(
        "client_feed",
        "CREATE TABLE s (id int PRIMARY KEY)",
        "public.s",
    )
    .await;
    setup.exec(&["INSERT INTO s VALUES (1)"]).await;
    // Wait until the first event (and so its announcement) is stored.
    let js = async_nats::jetstream::new(async_nats::connect(setup.nats.url()).await.unwrap());
    let wal = format!("{}_{}_WAL", common::ROOT, setup.db.name());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while js
        .get_stream(&wal)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
        < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first event never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (lookups, watcher) = count_lookups(&setup).await;

    let client = setup.client().await;
    let mut stream = client
        .subscribe(Subscription::table("public.s"))
        .await
        .unwrap();
    // The first version was announced before this client connected: one lookup.
    let first = next(&mut stream).await.unwrap();
    assert_eq!(first.after().unwrap().get("id"), Some(&PgValue::Int4(1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        1,
        "the first version is looked up"
    );

    // A new version: announced while connected, so its first event needs no lookup.
    setup
        .exec(&[
            "ALTER TABLE s ADD COLUMN v text",
            "INSERT INTO s VALUES (2, 'two')",
            "INSERT INTO s VALUES (3, 'three')",
        ])
        .await;
    let second = next(&mut stream).await.unwrap();
    assert_ne!(second.fingerprint(), first.fingerprint());
    assert_eq!(
        second.after().unwrap().get("v"),
        Some(&PgValue::Text("two".into()))
    );
    let third = next(&mut stream).await.unwrap();
    assert_eq!(third.fingerprint(), second.fingerprint());
    let cached = client
        .cached_schema(second.fingerprint())
        .expect("the announced schema is cached");
    assert_eq!(cached.table(), "public.s");
    assert_eq!(cached.database(), setup.db.name());
    let columns: Vec<&str> = cached.columns().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["id", "v"]);
    assert!(Arc::ptr_eq(
        &client.schema(second.fingerprint()).await.unwrap(),
        &cached
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        1,
        "no lookup for the announced version"
    );

    // Without the feed the same events need a lookup per version (the counter counts).
    let without = Client::connect(setup.options().schema_feed(false))
        .await
        .unwrap();
    assert!(without.cached_schema(second.fingerprint()).is_none());
    let mut stream = without
        .subscribe(Subscription::table("public.s"))
        .await
        .unwrap();
    for _ in 0..3 {
        next(&mut stream).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lookups.load(Ordering::SeqCst), 3);
    watcher.abort();
    setup.stop().await;
}
