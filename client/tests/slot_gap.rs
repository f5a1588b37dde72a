//! A replication slot lost while the change stream holds events (dropped by an operator, not
//! carried over by a failover, invalidated past `max_slot_wal_keep_size`): the producer
//! refuses to start across the gap, naming the stream's newest event and the fix; started
//! with `accept_gap` it creates the slot and marks the gap on the table's subject, which a
//! subscription reading across it surfaces as a `Gap` error between the events before and
//! after (docs/protocol.md §3.8). Without the check the producer created a new slot
//! silently and the changes in between were lost unseen.

mod common;

use std::time::Duration;

use common::{Setup, config, next};
use tokio_util::sync::CancellationToken;
use walbrook_client::{ErrorKind, Subscription};

const DDL: &str = "CREATE TABLE g (id int PRIMARY KEY)";

#[tokio::test]
async fn a_lost_slot_is_a_gap_refused_until_accepted_and_then_marked() {
    let mut setup = Setup::start("slot_gap", DDL, "public.g").await;
    let client = setup.client().await;
    let mut stream = client
        .subscribe(Subscription::table("public.g"))
        .await
        .unwrap();
    setup
        .exec(&["INSERT INTO g VALUES (1)", "INSERT INTO g VALUES (2)"])
        .await;
    for id in [1, 2] {
        let event = next(&mut stream).await.unwrap();
        assert_eq!(
            format!("{:?}", event.after().unwrap().get("id").unwrap()),
            format!("Int4({id})")
        );
    }
    setup.stop().await;
    let slot = setup.db.slot_name();
    setup
        .exec(&[
            &format!("SELECT pg_drop_replication_slot('{slot}')"),
            "INSERT INTO g VALUES (3)",
        ])
        .await;

    // Refused, naming the stream's newest event and the fix; no slot is created.
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        walbrook_producer::pipeline::run(
            config(&setup.db, &setup.nats.url(), "public.g", &[]),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the producer stops at once")
    .expect_err("a gap is refused")
    .to_string();
    for part in [
        "does not exist",
        "holds events up to",
        "--accept-gap",
        "--snapshot",
    ] {
        assert!(refused.contains(part), "{part:?} not in: {refused}");
    }
    let slots: i64 = setup
        .sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a refused start creates no slot");

    // Accepted: the slot is created, the gap marked, and the producer streams again.
    let mut accepted = config(&setup.db, &setup.nats.url(), "public.g", &[]);
    accepted.accept_gap = true;
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(walbrook_producer::pipeline::run(accepted, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active: i64 = setup
            .sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if active == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "streaming again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup.exec(&["INSERT INTO g VALUES (4)"]).await;

    // A reader across the gap: 1, 2, the gap as an error, then 4; never 3.
    let mut across = client
        .subscribe(Subscription::table("public.g"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        match next(&mut across).await {
            Ok(event) => seen.push(format!("{:?}", event.after().unwrap().get("id").unwrap())),
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::Gap, "{error}");
                assert!(error.message().is_some(), "the marker is attached");
                seen.push("gap".into());
            }
        }
    }
    assert_eq!(seen, ["Int4(1)", "Int4(2)", "gap", "Int4(4)"]);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), producer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
