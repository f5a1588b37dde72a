//! The dead-letter option of subscriptions against real servers: an undecodable message on
//! a change subject goes to the dead-letter subject byte for byte with diagnostic headers,
//! the original is acknowledged only after the dead letter is stored, and the caller gets
//! the next real event.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use walbrook_client::runner::{dead_letter_headers as dlq, list_dead_letters};
use walbrook_client::{ErrorKind, Fingerprint, PgValue, Subscription};

use common::{Setup, assert_quiet, next};

fn id(event: &walbrook_client::ChangeEvent) -> i32 {
    match event.after().and_then(|r| r.get("id")) {
        Some(PgValue::Int4(v)) => *v,
        other => panic!("not an int4 id: {other:?}"),
    }
}

/// The messages stored on `subject` in `stream`, oldest first.
async fn stored(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let stream = js.get_stream(stream).await.unwrap();
    let mut out = Vec::new();
    let mut sequence = 1;
    while let Ok(message) = stream
        .raw_message_builder()
        .sequence(sequence)
        .next_by_subject(subject.to_string())
        .send()
        .await
    {
        sequence = message.sequence + 1;
        out.push(message);
    }
    out
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
        .as_str()
        .to_string()
}

#[tokio::test]
async fn undecodable_messages_go_to_the_dead_letter_subject_and_the_stream_goes_on() {
    let mut setup = Setup::start(
        "client_dlq",
        "CREATE TABLE d (id int PRIMARY KEY)",
        "public.d",
    )
    .await;
    let client = setup.client().await;
    let invalid = client
        .subscribe(Subscription::table("public.d").dead_letter("bad name"))
        .await
        .unwrap_err();
    assert_eq!(invalid.kind(), ErrorKind::Config, "{invalid}");

    let mut durable = client
        .subscribe(
            Subscription::table("public.d")
                .durable("dlq-durable")
                .dead_letter("dlq-durable")
                .ack_wait(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let mut ordered = client
        .subscribe(Subscription::table("public.d").dead_letter("dlq-ordered"))
        .await
        .unwrap();
    // Without the option the caller still gets the error (the default).
    let mut plain = client
        .subscribe(Subscription::table("public.d"))
        .await
        .unwrap();
    setup.exec(&["INSERT INTO d VALUES (1)"]).await;
    let first = next(&mut durable).await.unwrap();
    assert_eq!(id(&first), 1);
    first.ack().await.unwrap();
    assert_eq!(id(&next(&mut ordered).await.unwrap()), 1);
    assert_eq!(id(&next(&mut plain).await.unwrap()), 1);

    let js = async_nats::jetstream::new(client.nats().clone());
    let subject = setup.wal_subject("public", "d");
    let mut garbage_headers = HeaderMap::new();
    garbage_headers.insert("X-Origin", "test ✓");
    let garbage_payload: &[u8] = b"\x00\xffnot avro\r\n\x00";
    let garbage = js
        .publish_with_headers(subject.clone(), garbage_headers, garbage_payload.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let mut unknown = vec![0xC3, 0x01];
    unknown.extend_from_slice(&Fingerprint(0x0123_4567_89ab_cdef).to_bytes());
    unknown.extend_from_slice(&[0, 0, 0]);
    let unknown_seq = js
        .publish(subject.clone(), unknown.clone().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    setup.exec(&["INSERT INTO d VALUES (2)"]).await;

    // The callers with the option get the next real event; the other one the errors.
    let second = next(&mut durable).await.unwrap();
    assert_eq!(id(&second), 2);
    second.ack().await.unwrap();
    assert_eq!(id(&next(&mut ordered).await.unwrap()), 2);
    assert_eq!(
        next(&mut plain).await.unwrap_err().stream_sequence(),
        Some(garbage)
    );
    assert_eq!(
        next(&mut plain).await.unwrap_err().stream_sequence(),
        Some(unknown_seq)
    );
    assert_eq!(id(&next(&mut plain).await.unwrap()), 2);

    // The dead letters: the original bytes and headers, plus the diagnostics.
    let dlq_stream = format!("{}_{}_DLQ", common::ROOT, setup.db.name());
    let dlq_subject = format!("{}.{}.dlq.dlq-durable", common::ROOT, setup.db.name());
    let letters = stored(&js, &dlq_stream, &dlq_subject).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(&letters[0].payload[..], garbage_payload);
    assert_eq!(&letters[1].payload[..], &unknown[..]);
    let h = &letters[0].headers;
    assert_eq!(header(h, "X-Origin"), "test ✓");
    assert_eq!(header(h, dlq::SUBJECT), subject);
    assert_eq!(header(h, dlq::SEQUENCE), garbage.to_string());
    assert_eq!(header(h, dlq::SINK), "decode");
    assert_eq!(header(h, dlq::CONSUMER), "dlq-durable");
    assert!(
        header(h, dlq::ERROR).contains("not an Avro single-object message"),
        "{h:?}"
    );
    assert!(!header(h, dlq::TIME).is_empty());
    let h = &letters[1].headers;
    assert_eq!(header(h, dlq::SEQUENCE), unknown_seq.to_string());
    let error = header(h, dlq::ERROR);
    assert!(error.starts_with("schema not found"), "{error}");
    assert!(error.contains(&Fingerprint(0x0123_4567_89ab_cdef).to_string()));
    // The ordered subscription's dead letters are under its own name.
    let ordered_subject = format!("{}.{}.dlq.dlq-ordered", common::ROOT, setup.db.name());
    let letters = stored(&js, &dlq_stream, &ordered_subject).await;
    let sequences: Vec<String> = letters
        .iter()
        .map(|m| header(&m.headers, dlq::SEQUENCE))
        .collect();
    assert_eq!(sequences, [garbage.to_string(), unknown_seq.to_string()]);
    // The runner's listing reads them too.
    let listed = list_dead_letters(&client, "dlq-durable").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].stream_sequence, Some(garbage));
    assert_eq!(listed[0].sink, "decode");

    // The originals were acknowledged: nothing is pending, nothing comes back after
    // ack_wait, not even after a resubscribe.
    let stream = js
        .get_stream(format!("{}_{}_WAL", common::ROOT, setup.db.name()))
        .await
        .unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("dlq-durable").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.ack_floor.stream_sequence, unknown_seq + 1);
    assert_quiet(&mut durable, Duration::from_secs(2)).await;
    drop(durable);
    let mut again = client
        .subscribe(
            Subscription::table("public.d")
                .durable("dlq-durable")
                .dead_letter("dlq-durable"),
        )
        .await
        .unwrap();
    assert_quiet(&mut again, Duration::from_secs(2)).await;
    assert_eq!(
        stored(&js, &dlq_stream, &dlq_subject).await.len(),
        2,
        "no dead letter twice"
    );
    drop(ordered);
    setup.stop().await;
}

/// Dead letters are kept as durably as the changes: the dead-letter stream and bucket take
/// the change stream's storage (and replicas), not NATS's defaults (file, R1). Here the
/// change stream is in memory, and a letter too large for one message goes to the bucket.
#[tokio::test]
async fn dead_letters_take_the_change_streams_storage() {
    let mut setup = Setup::start_with(
        "client_dlq_mem",
        "CREATE TABLE d (id int PRIMARY KEY)",
        "public.d",
        walbrook_harness::NatsServer::start().unwrap(),
        &[("WALBROOK_STREAM_STORAGE", "memory")],
    )
    .await;
    let client = setup.client().await;
    let mut stream = client
        .subscribe(Subscription::table("public.d").dead_letter("dlq-mem"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.nats().clone());
    // Fits the change stream, not with the dead letter's headers: the body goes to the bucket.
    let max_payload = client.nats().server_info().max_payload;
    let big = vec![0xFFu8; max_payload - 64];
    js.publish(setup.wal_subject("public", "d"), big.into())
        .await
        .unwrap()
        .await
        .unwrap();
    setup.exec(&["INSERT INTO d VALUES (1)"]).await;
    assert_eq!(id(&next(&mut stream).await.unwrap()), 1);

    use async_nats::jetstream::stream::StorageType;
    let storage = |name: String| {
        let js = js.clone();
        async move {
            js.get_stream(&name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .info()
                .await
                .unwrap()
                .config
                .storage
        }
    };
    let db = setup.db.name().to_owned();
    let wal = format!("{}_{db}_WAL", common::ROOT);
    assert_eq!(storage(wal).await, StorageType::Memory);
    assert_eq!(
        storage(format!("{}_{db}_DLQ", common::ROOT)).await,
        StorageType::Memory
    );
    assert_eq!(
        storage(format!("OBJ_{}_{db}_DLQ_BODIES", common::ROOT)).await,
        StorageType::Memory
    );
    setup.stop().await;
}
