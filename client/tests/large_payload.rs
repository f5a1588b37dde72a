//! Events larger than the NATS server's `max_payload` travel through the object store
//! (docs/protocol.md §3.5) and reach the client whole.

mod common;

use async_nats::jetstream;
use common::{ROOT, Setup, events};
use walbrook_client::{PgValue, Start, Subscription};
use walbrook_harness::NatsServer;

/// A snapshot message as seen on the wire: control kind, first row, row count, and
/// whether its body is in the object store.
type Layout = (Option<String>, Option<String>, Option<String>, bool);

#[tokio::test]
async fn events_larger_than_max_payload_arrive_whole_through_the_object_store() {
    // 64 KiB max_payload; the big row is ~320 KB of incompressible text.
    let nats = NatsServer::start_with_config("max_payload: 65536\n").unwrap();
    let mut setup = Setup::start_with_nats(
        "large_payload",
        "CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL)",
        "public.docs",
        nats,
    )
    .await;
    setup
        .exec(&[
            "INSERT INTO docs VALUES (1, 'small')",
            "INSERT INTO docs SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 10000) g",
            "INSERT INTO docs VALUES (3, 'small again')",
        ])
        .await;
    let big: String = setup
        .sql
        .query_one("SELECT body FROM docs WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert!(big.len() > 300_000);

    let client = setup.client().await;
    let mut stream = client
        .subscribe(Subscription::table("public.docs").start(Start::Beginning))
        .await
        .unwrap();
    let got = events(&mut stream, 3).await;
    let rows: Vec<(i32, String)> = got
        .iter()
        .map(|e| {
            let after = e.after().expect("an insert has an after image");
            let id = match after.get("id") {
                Some(PgValue::Int4(id)) => *id,
                other => panic!("id: {other:?}"),
            };
            let body = match after.get("body") {
                Some(PgValue::Text(body)) => body.clone(),
                other => panic!("body: {other:?}"),
            };
            (id, body)
        })
        .collect();
    assert_eq!(rows[0], (1, "small".to_string()));
    assert_eq!(rows[1].0, 2);
    assert!(rows[1].1 == big, "the big value arrives byte for byte");
    assert_eq!(rows[2], (3, "small again".to_string()));

    // On the wire: the big event's stream message is empty and names its object; the
    // small ones carry their payload inline.
    let nats = async_nats::connect(setup.nats.url()).await.unwrap();
    let js = jetstream::new(nats);
    let stream_name = format!("{ROOT}_{}_WAL", setup.db.name());
    let wal = js.get_stream(&stream_name).await.unwrap();
    let mut references = Vec::new();
    for sequence in 1..=3 {
        let message = wal.get_raw_message(sequence).await.unwrap();
        let reference = message
            .headers
            .get("Walbrook-Payload-Object")
            .map(|v| v.to_string());
        assert_eq!(message.payload.is_empty(), reference.is_some());
        references.extend(reference);
    }
    assert_eq!(
        references.len(),
        1,
        "only the big event went to the object store"
    );
    let (bucket, object) = references[0].split_once('/').unwrap();
    assert_eq!(bucket, format!("{ROOT}_{}_LARGE", setup.db.name()));
    let info = js
        .get_object_store(bucket)
        .await
        .unwrap()
        .info(object)
        .await
        .unwrap();
    assert!(info.size > 300_000, "{info:?}");

    // A snapshot of the same rows: the small ones travel in row batches, the big one
    // alone through the object store (protocol §8.2), and all three arrive whole.
    let mut snapshot = client
        .snapshot(walbrook_client::SnapshotRequest::table("public.docs"))
        .await
        .unwrap();
    let mut read = Vec::new();
    while let Some(event) = futures::StreamExt::next(&mut snapshot).await {
        let event = event.unwrap();
        let after = event.after().unwrap();
        read.push((after.get("id").cloned(), after.get("body").cloned()));
    }
    assert_eq!(read.len(), 3);
    assert_eq!(
        read[0],
        (Some(PgValue::Int4(1)), Some(PgValue::Text("small".into())))
    );
    assert_eq!(read[1].0, Some(PgValue::Int4(2)));
    assert!(
        read[1].1 == Some(PgValue::Text(big.clone())),
        "the big row, byte for byte"
    );
    assert_eq!(
        read[2],
        (
            Some(PgValue::Int4(3)),
            Some(PgValue::Text("small again".into()))
        )
    );
    let snap = js
        .get_stream(format!("{ROOT}_{}_SNAP", setup.db.name()))
        .await
        .unwrap();
    let layout: Vec<Layout> =
        futures::future::join_all((1..=5).map(|sequence| snap.get_raw_message(sequence)))
            .await
            .into_iter()
            .map(|m| {
                let m = m.unwrap();
                let header = |name: &str| m.headers.get(name).map(|v| v.to_string());
                (
                    header("Walbrook-Snapshot-Control"),
                    header("Walbrook-Snapshot-Row"),
                    header("Walbrook-Snapshot-Rows"),
                    header("Walbrook-Payload-Object").is_some(),
                )
            })
            .collect();
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        layout,
        vec![
            (some("begin"), None, None, false),
            (None, some("1"), some("1"), false),
            (None, some("2"), None, true),
            (None, some("3"), some("1"), false),
            (some("end"), None, None, false),
        ]
    );
    setup.stop().await;
}

/// A listing with more snapshots than one message can hold is still answered: with the
/// newest that fit and `truncated` (docs/protocol.md §8.3), never with silence.
#[tokio::test]
async fn a_snapshot_listing_larger_than_max_payload_is_cut_to_the_newest() {
    let nats = NatsServer::start_with_config("max_payload: 8192\n").unwrap();
    let mut setup = Setup::start_with_nats(
        "listing_cut",
        "CREATE TABLE tiny (id int PRIMARY KEY); INSERT INTO tiny VALUES (1)",
        "public.tiny",
        nats,
    )
    .await;
    let client = setup.client().await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let mut snapshot = loop {
            match client
                .snapshot(walbrook_client::SnapshotRequest::table("public.tiny"))
                .await
            {
                Ok(s) => break s,
                // The previous snapshot may still hold its permit for a moment.
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(e) => panic!("snapshot: {e}"),
            }
        };
        ids.push(snapshot.id().to_string());
        while let Some(row) = futures::StreamExt::next(&mut snapshot).await {
            row.unwrap();
        }
    }
    let raw = async_nats::connect(setup.nats.url())
        .await
        .unwrap()
        .request(
            format!("{ROOT}.{}.rpc.snapshots", setup.db.name()),
            "{}".into(),
        )
        .await
        .expect("the listing is answered");
    assert!(raw.payload.len() <= 8192, "{} bytes", raw.payload.len());
    let reply: serde_json::Value = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(reply["truncated"], true, "{reply}");
    let listed = client.snapshots("public.tiny").await.unwrap();
    let n = listed.len();
    assert!((5..30).contains(&n), "listed {n}");
    let listed_ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    let newest: Vec<&str> = ids[30 - n..].iter().map(String::as_str).collect();
    assert_eq!(listed_ids, newest, "the newest snapshots, oldest first");
    setup.stop().await;
}

/// A message that names an object and cannot be decoded is dead-lettered with its body: the
/// dead letter gets its own copy of an object that is there (the producer's bucket expires
/// with the change stream), and keeps the reference as it came when the object is gone.
#[tokio::test]
async fn undecodable_messages_in_the_object_store_are_dead_lettered_with_their_body() {
    let mut setup = Setup::start(
        "large_dead_letter",
        "CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL)",
        "public.docs",
    )
    .await;
    setup.exec(&["INSERT INTO docs VALUES (1, 'small')"]).await;
    let client = setup.client().await;
    let js = jetstream::new(async_nats::connect(setup.nats.url()).await.unwrap());
    let large = js
        .create_object_store(jetstream::object_store::Config {
            bucket: "foreign".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // An object whose content has an unknown fingerprint, and a reference to no object.
    let mut unknown = vec![0xC3, 0x01];
    unknown.extend_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
    unknown.extend_from_slice(&vec![7; 1_200_000]);
    large.put("unknown", &mut unknown.as_slice()).await.unwrap();
    let subject = setup.wal_subject("public", "docs");
    let mut sequences = Vec::new();
    for reference in ["foreign/unknown", "foreign/missing"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Walbrook-Payload-Object", reference);
        let ack = js
            .publish_with_headers(subject.clone(), headers, bytes::Bytes::new())
            .await
            .unwrap()
            .await
            .unwrap();
        sequences.push(ack.sequence);
    }
    setup.exec(&["INSERT INTO docs VALUES (2, 'after')"]).await;

    let mut stream = client
        .subscribe(
            Subscription::table("public.docs")
                .durable("objects")
                .dead_letter("objects")
                .start(Start::Beginning),
        )
        .await
        .unwrap();
    for expected in [1, 2] {
        let event = common::next(&mut stream).await.unwrap();
        assert_eq!(
            event.after().unwrap().get("id"),
            Some(&PgValue::Int4(expected))
        );
        event.ack().await.unwrap();
    }
    drop(stream);
    // The original object goes away (as the producer's bucket's max age would do).
    large.delete("unknown").await.unwrap();

    let letters = walbrook_client::runner::list_dead_letters(&client, "objects")
        .await
        .unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let dlq = js
        .get_stream(format!("{ROOT}_{}_DLQ", setup.db.name()))
        .await
        .unwrap();
    let bodies = js
        .get_object_store(format!("{ROOT}_{}_DLQ_BODIES", setup.db.name()))
        .await
        .unwrap();
    let stored = |sequence| dlq.get_raw_message(sequence);
    // The first one's body (larger than the 1 MiB max_payload) is a copy in the dead-letter
    // bucket.
    assert_eq!(letters[0].stream_sequence, Some(sequences[0]));
    let decode_error = letters[0].decode_error.as_deref().unwrap_or_default();
    assert!(
        decode_error.contains("unknown fingerprint"),
        "{decode_error}"
    );
    let first = stored(letters[0].dlq_sequence).await.unwrap();
    let reference = first
        .headers
        .get("Walbrook-Payload-Object")
        .unwrap()
        .to_string();
    let object = reference
        .strip_prefix(&format!("{ROOT}_{}_DLQ_BODIES/", setup.db.name()))
        .unwrap_or_else(|| panic!("{reference}"));
    let mut copy = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut bodies.get(object).await.unwrap(), &mut copy)
        .await
        .unwrap();
    assert!(copy == unknown, "the whole body");
    // The second one's object never existed: the reference stays as it came.
    assert_eq!(letters[1].stream_sequence, Some(sequences[1]));
    let second = stored(letters[1].dlq_sequence).await.unwrap();
    assert!(second.payload.is_empty());
    assert_eq!(
        second
            .headers
            .get("Walbrook-Payload-Object")
            .unwrap()
            .as_str(),
        "foreign/missing"
    );
    setup.stop().await;
}
