//! The JetStream behaviour the publisher's ordering rests on, checked against the real
//! server so an upgrade that changes it fails here first.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use walbrook_harness::NatsServer;

async fn publish(
    js: &jetstream::Context,
    id: &str,
    expect: Option<&str>,
) -> Result<(u64, bool), String> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    if let Some(previous) = expect {
        headers.insert("Nats-Expected-Last-Msg-Id", previous);
    }
    match js
        .publish_with_headers("sem.x", headers, id.to_string().into())
        .await
    {
        Ok(future) => future
            .await
            .map(|ack| (ack.sequence, ack.duplicate))
            .map_err(|e| format!("{:?}: {e}", e.kind())),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn duplicates_are_recognised_before_the_last_msg_id_expectation() {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.create_stream(stream::Config {
        name: "SEM".into(),
        subjects: vec!["sem.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(publish(&js, "a", None).await, Ok((1, false)));
    assert_eq!(publish(&js, "b", Some("a")).await, Ok((2, false)));
    // A re-sent, already stored message is a duplicate even though its expectation
    // ("a" was last) no longer holds.
    assert_eq!(publish(&js, "a", None).await, Ok((1, true)));
    assert_eq!(publish(&js, "b", Some("a")).await, Ok((2, true)));
    // A message whose predecessor is missing is refused, so nothing is stored out of order.
    let gap = publish(&js, "d", Some("c")).await;
    assert!(gap.is_err(), "{gap:?}");
    assert_eq!(publish(&js, "c", Some("b")).await, Ok((3, false)));
    assert_eq!(publish(&js, "d", Some("c")).await, Ok((4, false)));
}
