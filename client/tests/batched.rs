//! Change messages carrying several events (docs/protocol.md §3.6), read by the SDK from a
//! real JetStream stream: the events come out in order with the message's sequences, a
//! durable consumer acknowledges the message once all its events are acknowledged, a nak
//! brings every event of it again, and a malformed message is one clear error (or one dead
//! letter, unchanged), never a panic or a silent skip.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use walbrook_client::runner::list_dead_letters;
use walbrook_client::{ChangeEvent, ErrorKind, PgValue, Subscription};
use walbrook_protocol::{batch, headers as h};

use common::{Setup, assert_quiet, events, next};

fn id(event: &ChangeEvent) -> i32 {
    match event.after().and_then(|r| r.get("id")) {
        Some(PgValue::Int4(v)) => *v,
        other => panic!("not an int4 id: {other:?}"),
    }
}

/// A message carrying `events` (consecutive events of one transaction), with the headers
/// protocol §3.6 gives it; `tweak` may then spoil headers or body.
fn shared_message(
    events: &[ChangeEvent],
    tweak: impl FnOnce(&mut HeaderMap, &mut Vec<u8>),
) -> (HeaderMap, bytes::Bytes) {
    let mut headers = events[0]
        .event_headers()
        .expect("stored events have headers");
    headers.insert(h::EVENTS, events.len().to_string().as_str());
    // The test publishes the same events several times: no deduplication.
    headers.insert("Nats-Msg-Id", format!("test-{}", rand_id()).as_str());
    if events.last().unwrap().source().last {
        headers.insert(h::LAST, "true");
    }
    let mut body = Vec::new();
    for event in events {
        batch::push(&mut body, event.payload());
    }
    tweak(&mut headers, &mut body);
    (headers, body.into())
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    (headers, body): (HeaderMap, bytes::Bytes),
) -> u64 {
    js.publish_with_headers(subject.to_string(), headers, body)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

#[tokio::test]
async fn messages_with_several_events_are_read_acked_per_message_and_checked() {
    let mut setup = Setup::start(
        "client_batched",
        "CREATE TABLE b (id int PRIMARY KEY, note text)",
        "public.b",
    )
    .await;
    setup
        .exec(&["INSERT INTO b SELECT g, 'n' || g FROM generate_series(1, 3) g"])
        .await;
    let client = setup.client().await;
    let mut reader = client
        .subscribe(Subscription::table("public.b"))
        .await
        .unwrap();
    let originals = events(&mut reader, 3).await;
    assert_eq!(originals.iter().map(id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(originals[2].source().last);
    drop(reader);
    // From here on the test writes the stream itself.
    setup.stop().await;

    let js = async_nats::jetstream::new(client.nats().clone());
    let subject = setup.wal_subject("public", "b");
    let good = publish(&js, &subject, shared_message(&originals, |_, _| {})).await;
    let mut spoiled = Vec::new();
    // The length prefix of the first event: its single-object marker follows.
    let prefix = batch::framed_len(originals[0].payload().len()) - originals[0].payload().len();
    for (what, kind, tweak) in [
        (
            "more events announced than held",
            ErrorKind::Protocol,
            Box::new(|m: &mut HeaderMap, _: &mut Vec<u8>| m.insert(h::EVENTS, "4"))
                as Box<dyn FnOnce(&mut HeaderMap, &mut Vec<u8>)>,
        ),
        (
            "trailing bytes",
            ErrorKind::Protocol,
            Box::new(|_: &mut HeaderMap, b: &mut Vec<u8>| b.push(0)),
        ),
        (
            "a count that is not a number",
            ErrorKind::Protocol,
            Box::new(|m: &mut HeaderMap, _: &mut Vec<u8>| m.insert(h::EVENTS, "three")),
        ),
        (
            "ordinals that do not match the header",
            ErrorKind::Protocol,
            Box::new(|m: &mut HeaderMap, _: &mut Vec<u8>| m.insert(h::ORDINAL, "1")),
        ),
        (
            "a body cut short",
            ErrorKind::Protocol,
            Box::new(|_: &mut HeaderMap, b: &mut Vec<u8>| b.truncate(b.len() - 3)),
        ),
        (
            "an event that is not single-object encoded",
            ErrorKind::Decode,
            Box::new(move |_: &mut HeaderMap, b: &mut Vec<u8>| b[prefix] = 0),
        ),
    ] {
        let sequence = publish(&js, &subject, shared_message(&originals, tweak)).await;
        spoiled.push((what, kind, sequence));
    }
    let after = publish(&js, &subject, shared_message(&originals[..2], |_, _| {})).await;

    // An ordered reader: the good message's three events, one error per spoiled message,
    // then the last message's two events.
    let mut plain = client
        .subscribe(Subscription::table("public.b"))
        .await
        .unwrap();
    let first = events(&mut plain, 3).await;
    assert_eq!(first.iter().map(id).collect::<Vec<_>>(), [1, 2, 3]);
    for (index, event) in first.iter().enumerate() {
        assert_eq!(event.stream_sequence(), originals[index].stream_sequence());
    }
    let first = events(&mut plain, 3).await;
    for (index, event) in first.iter().enumerate() {
        assert_eq!(event.stream_sequence(), good);
        assert_eq!(event.consumer_sequence(), first[0].consumer_sequence());
        assert_eq!(event.message_index(), u32::try_from(index).unwrap());
        assert_eq!(event.message_events(), 3);
        assert_eq!(event.ordinal(), u64::try_from(index).unwrap());
        assert_eq!(event.ends_message(), index == 2);
        assert_eq!(event.payload(), originals[index].payload());
        // Each event's own headers are those it had as a message of its own.
        let own = event.event_headers().unwrap();
        let single = originals[index].event_headers().unwrap();
        for name in [
            "Nats-Msg-Id",
            h::ORDINAL,
            h::COMMIT_LSN,
            h::OP,
            h::FINGERPRINT,
        ] {
            assert_eq!(own.get(name), single.get(name), "{name}");
        }
        assert!(own.get(h::EVENTS).is_none());
        assert_eq!(own.get(h::LAST).is_some(), index == 2);
        assert_eq!(
            event.headers().unwrap().get(h::EVENTS).unwrap().as_str(),
            "3"
        );
    }
    assert_eq!(first.iter().map(id).collect::<Vec<_>>(), [1, 2, 3]);
    for (what, kind, sequence) in &spoiled {
        let error = next(&mut plain).await.unwrap_err();
        assert_eq!(error.kind(), *kind, "{what}: {error}");
        assert_eq!(error.stream_sequence(), Some(*sequence), "{what}");
        assert!(!error.is_retryable(), "{what}");
        // The whole message is attached unchanged, so it can be dead-lettered as stored.
        let message = error.message().unwrap();
        assert!(message.headers.as_ref().unwrap().get(h::EVENTS).is_some());
    }
    let last = events(&mut plain, 2).await;
    assert_eq!(last.iter().map(id).collect::<Vec<_>>(), [1, 2]);
    assert!(last.iter().all(|e| e.stream_sequence() == after));
    assert!(!last[1].source().last);
    assert_quiet(&mut plain, Duration::from_millis(500)).await;
    drop(plain);

    // A durable reader from the good message: acknowledgements count per message.
    let durable = || {
        Subscription::table("public.b")
            .durable("batched")
            .start(walbrook_client::Start::Sequence(good))
            .ack_wait(Duration::from_secs(2))
            .prefetch(1)
    };
    let wal = js
        .get_stream(format!("{}_{}_WAL", common::ROOT, setup.db.name()))
        .await
        .unwrap();
    let mut stream = client.subscribe(durable()).await.unwrap();
    let three = events(&mut stream, 3).await;
    three[0].ack().await.unwrap();
    three[2].ack().await.unwrap();
    three[2].ack().await.unwrap(); // twice: still one of three
    let info = wal.clone().consumer_info("batched").await.unwrap();
    assert!(info.ack_floor.stream_sequence < good, "{info:?}");
    assert_eq!(info.num_ack_pending, 1, "{info:?}");
    three[1].ack().await.unwrap(); // completes the message: acked on the server
    let info = wal.clone().consumer_info("batched").await.unwrap();
    assert_eq!(info.ack_floor.stream_sequence, good, "{info:?}");
    // A nak of one event brings the whole message again.
    let error = next(&mut stream).await.unwrap_err();
    assert_eq!(error.stream_sequence(), Some(spoiled[0].2));
    error.message().unwrap().ack().await.unwrap();
    drop(stream);
    let mut stream = client.subscribe(durable()).await.unwrap();
    let error = next(&mut stream).await.unwrap_err();
    assert_eq!(error.stream_sequence(), Some(spoiled[1].2));
    drop(error);
    drop(stream);
    for (_, _, sequence) in &spoiled[1..] {
        wal.delete_message(*sequence).await.unwrap();
    }
    let mut stream = client.subscribe(durable()).await.unwrap();
    let two = events(&mut stream, 2).await;
    assert!(two.iter().all(|e| e.stream_sequence() == after));
    two[0].ack().await.unwrap();
    two[1].nak().await.unwrap();
    // After the nak the message is not acknowledged by the other event's ack either.
    let again = events(&mut stream, 2).await;
    assert!(again.iter().all(|e| e.stream_sequence() == after));
    assert!(again.iter().all(|e| e.delivered() >= 2), "{again:?}");
    assert_eq!(again.iter().map(id).collect::<Vec<_>>(), [1, 2]);
    for event in &again {
        event.ack().await.unwrap();
    }
    let info = wal.clone().consumer_info("batched").await.unwrap();
    assert_eq!(info.ack_floor.stream_sequence, after, "{info:?}");
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    drop(stream);

    // With the dead-letter option a malformed message is stored whole, as it came.
    let bad = publish(
        &js,
        &subject,
        shared_message(&originals, |m, _| m.insert(h::EVENTS, "2")),
    )
    .await;
    let tail = publish(&js, &subject, shared_message(&originals[..2], |_, _| {})).await;
    let mut letters = client
        .subscribe(
            Subscription::table("public.b")
                .start(walbrook_client::Start::Sequence(bad))
                .dead_letter("batched"),
        )
        .await
        .unwrap();
    let rest = events(&mut letters, 2).await;
    assert!(rest.iter().all(|e| e.stream_sequence() == tail));
    let stored = list_dead_letters(&client, "batched").await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].stream_sequence, Some(bad));
    assert!(
        stored[0].error.contains("announces 2 events but holds 3"),
        "{}",
        stored[0].error
    );
    assert!(stored[0].event.is_none() && stored[0].decode_error.is_some());

    // A well-formed shared message kept as a dead letter (say its schema was unknown for a
    // while) is listed with all its events, in order.
    let (mut letter_headers, body) = shared_message(&originals, |_, _| {});
    letter_headers.insert("Walbrook-Dlq-Subject", subject.as_str());
    letter_headers.insert("Walbrook-Dlq-Sequence", good.to_string().as_str());
    letter_headers.insert("Walbrook-Dlq-Error", "test");
    js.publish_with_headers(
        format!("{}.{}.dlq.batched", common::ROOT, setup.db.name()),
        letter_headers,
        body,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let stored = list_dead_letters(&client, "batched").await.unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let events = stored[1]
        .event
        .as_ref()
        .expect("decoded")
        .as_array()
        .unwrap();
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
}

/// Checks the messages `events` came in against protocol §3.6 and returns how many
/// messages carried several events.
fn check_messages(events: &[ChangeEvent], max_events: u32) -> usize {
    let mut shared = 0;
    let mut at = 0;
    while at < events.len() {
        let first = &events[at];
        let n = first.message_events() as usize;
        assert!(
            n >= 1 && n <= max_events as usize,
            "{n} events in a message"
        );
        let message = &events[at..at + n];
        let headers = first.headers().unwrap();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        for (index, event) in message.iter().enumerate() {
            assert_eq!(event.stream_sequence(), first.stream_sequence());
            assert_eq!(event.message_index() as usize, index);
            assert_eq!(event.commit_lsn(), first.commit_lsn());
            assert_eq!(event.op(), first.op());
            assert_eq!(event.fingerprint(), first.fingerprint());
            assert_eq!(event.ordinal(), first.ordinal() + index as u64);
            assert!(!event.source().last || index == n - 1);
        }
        assert_eq!(header(h::OP).unwrap(), first.op().as_str());
        assert_eq!(header(h::ORDINAL).unwrap(), first.ordinal().to_string());
        assert_eq!(
            header("Nats-Msg-Id").unwrap(),
            format!("{}-{}", first.commit_lsn().to_fixed_hex(), first.ordinal())
        );
        assert_eq!(header(h::LAST).is_some(), message[n - 1].source().last);
        if n >= 2 {
            shared += 1;
            assert_eq!(header(h::EVENTS).unwrap(), n.to_string());
        } else {
            assert_eq!(header(h::EVENTS), None);
        }
        at += n;
    }
    // The next message starts with a new stream sequence.
    for pair in events.windows(2) {
        if pair[1].message_index() == 0 {
            assert!(pair[1].stream_sequence() > pair[0].stream_sequence());
        }
    }
    shared
}

#[tokio::test]
async fn the_producer_shares_messages_within_a_transaction_and_cuts_them_correctly() {
    let mut setup = Setup::start_with(
        "client_batch_cut",
        "CREATE TABLE a (id int PRIMARY KEY, note text); CREATE TABLE b (id int PRIMARY KEY)",
        "public.a, public.b",
        walbrook_harness::NatsServer::start().unwrap(),
        &[("WALBROOK_BATCH_EVENTS", "300")],
    )
    .await;
    setup
        .exec(&[
            "INSERT INTO a SELECT g, 'row ' || g FROM generate_series(1, 5000) g",
            "BEGIN; INSERT INTO a VALUES (5001, 'm'), (5002, 'm'), (5003, 'm'); \
             INSERT INTO b VALUES (1), (2); UPDATE a SET note = 'u' WHERE id IN (5001, 5002); \
             DELETE FROM b WHERE id = 1; INSERT INTO a VALUES (5004, 'm'); COMMIT",
            "INSERT INTO b VALUES (3)",
        ])
        .await;
    let client = setup.client().await;
    let mut stream = client.subscribe(Subscription::all()).await.unwrap();
    let all = events(&mut stream, 5000 + 9 + 1).await;
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    let shared = check_messages(&all, 300);

    // The large transaction: every row once, in order, most of them in shared messages.
    let big = &all[..5000];
    assert!(big.iter().all(|e| e.commit_lsn() == big[0].commit_lsn()));
    assert_eq!(
        big.iter().map(id).collect::<Vec<_>>(),
        (1..=5000).collect::<Vec<_>>()
    );
    assert_eq!(
        big.iter().map(ChangeEvent::ordinal).collect::<Vec<_>>(),
        (0..5000).collect::<Vec<_>>()
    );
    assert!(big[4999].source().last && big[..4999].iter().all(|e| !e.source().last));
    assert!(shared >= 1, "no message carried several events");
    // The cut depends on the events alone (protocol §3.6): full messages of 300, then
    // the rest, whatever the timing.
    let sizes: Vec<u32> = big
        .iter()
        .filter(|e| e.message_index() == 0)
        .map(|e| e.message_events())
        .collect();
    let mut expected = vec![300; 16];
    expected.push(200);
    assert_eq!(sizes, expected);

    // The mixed transaction is cut wherever table or operation change.
    let mixed = &all[5000..5009];
    let shape: Vec<(String, walbrook_client::Op)> = mixed
        .iter()
        .map(|e| (e.source().table.clone(), e.op()))
        .collect();
    use walbrook_client::Op::{Delete, Insert, Update};
    let expected = [
        ("a", Insert),
        ("a", Insert),
        ("a", Insert),
        ("b", Insert),
        ("b", Insert),
        ("a", Update),
        ("a", Update),
        ("b", Delete),
        ("a", Insert),
    ];
    assert_eq!(
        shape,
        expected
            .iter()
            .map(|(t, op)| (t.to_string(), *op))
            .collect::<Vec<_>>()
    );
    for pair in mixed.windows(2) {
        if (pair[0].subject(), pair[0].op()) != (pair[1].subject(), pair[1].op()) {
            assert_eq!(
                pair[1].message_index(),
                0,
                "a message spans a change: {pair:?}"
            );
        }
    }
    assert_eq!(mixed[0].ordinal(), 0);
    assert!(mixed[8].source().last);
    assert_ne!(mixed[0].commit_lsn(), big[0].commit_lsn());
    assert_eq!(
        mixed[0].message_index(),
        0,
        "a message never spans transactions"
    );

    // A one-row transaction is a plain message, exactly as before sharing existed.
    let single = &all[5009];
    assert_eq!(single.message_events(), 1);
    assert!(single.headers().unwrap().get(h::EVENTS).is_none());
    assert!(single.source().last);
    setup.stop().await;
}
