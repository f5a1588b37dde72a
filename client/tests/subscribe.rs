//! The client against real servers: PostgreSQL, NATS JetStream and a real producer running
//! in-process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use walbrook_client::{
    Client, ClientOptions, Credentials, ErrorKind, Fingerprint, Lsn, Op, PgDate, PgNumeric,
    PgValue, Start, Subscription, TablePattern,
};
use walbrook_harness::NatsServer;

use common::{Setup, assert_quiet, events, next};

fn int8(value: Option<&PgValue>) -> i64 {
    match value {
        Some(PgValue::Int8(v)) => *v,
        Some(PgValue::Int4(v)) => i64::from(*v),
        other => panic!("not an integer: {other:?}"),
    }
}

fn ids(events: &[walbrook_client::ChangeEvent]) -> Vec<i64> {
    events
        .iter()
        .map(|e| int8(e.after().or(e.before()).and_then(|r| r.get("id"))))
        .collect()
}

#[tokio::test]
async fn a_tailed_table_gives_typed_values_for_every_operation() {
    let mut setup = Setup::start(
        "client_types",
        "CREATE TABLE items (
             id bigint PRIMARY KEY,
             amount numeric(10,2),
             at timestamptz,
             day date,
             u uuid,
             doc jsonb,
             tags text[],
             note text,
             big text);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE other (id int PRIMARY KEY);",
        "public.items, public.other",
    )
    .await;
    let client = setup.client().await;
    let mut stream = client
        .subscribe(Subscription::table("public.items"))
        .await
        .unwrap();
    assert!(!stream.is_durable());
    setup
        .exec(&[
            "INSERT INTO other VALUES (1)",
            "INSERT INTO items VALUES (1, 12.50, '2024-02-29 12:34:56.789012+00', 'infinity', \
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"b\": [1, 2.50]}', ARRAY['x', NULL, 'z'], \
             NULL, repeat('x', 10000))",
            // `big` is stored out of line and not touched: pgoutput sends it as unchanged.
            "UPDATE items SET amount = -3.25, note = 'changed' WHERE id = 1",
            "DELETE FROM items WHERE id = 1",
            "TRUNCATE items",
        ])
        .await;
    let got = events(&mut stream, 4).await;
    assert_eq!(
        got.iter().map(|e| e.op()).collect::<Vec<_>>(),
        [Op::Insert, Op::Update, Op::Delete, Op::Truncate]
    );
    assert!(got[3].before().is_none() && got[3].after().is_none());
    // Only the subscribed table.
    assert!(got.iter().all(|e| e.source().table == "items"));
    assert_quiet(&mut stream, Duration::from_millis(500)).await;

    let insert = &got[0];
    let source = insert.source();
    assert_eq!(source.database, setup.db.name());
    assert_eq!(source.schema, "public");
    assert_eq!((source.ordinal, source.last), (0, true));
    assert!(source.lsn <= source.commit_lsn);
    assert!(source.sent_at >= source.commit_time);
    assert!((chrono::Utc::now() - source.commit_time).num_seconds() < 60);
    assert_eq!(insert.subject(), setup.wal_subject("public", "items"));
    assert!(insert.before().is_none());
    let row = insert.after().unwrap();
    let names: Vec<&str> = row.columns().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "id", "amount", "at", "day", "u", "doc", "tags", "note", "big"
        ]
    );
    assert!(row.columns()[0].is_key && row.columns()[0].not_null);
    assert_eq!(row.columns()[1].type_name, "numeric(10,2)");
    assert_eq!(row.get("id"), Some(&PgValue::Int8(1)));
    match row.get("amount") {
        Some(PgValue::Numeric(n)) => {
            assert_eq!(n, &PgNumeric::Finite("12.50".into()));
            assert_eq!(n.to_decimal().unwrap().to_string(), "12.50");
        }
        other => panic!("amount: {other:?}"),
    }
    match row.get("at") {
        Some(PgValue::TimestampTz(t)) => assert_eq!(
            t.to_chrono_utc().unwrap().to_rfc3339(),
            "2024-02-29T12:34:56.789012+00:00"
        ),
        other => panic!("at: {other:?}"),
    }
    assert_eq!(row.get("day"), Some(&PgValue::Date(PgDate::Infinity)));
    assert_eq!(
        row.get("u"),
        Some(&PgValue::Uuid(
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".parse().unwrap()
        ))
    );
    assert_eq!(
        row.get("doc"),
        Some(&PgValue::Json("{\"b\": [1, 2.50]}".into()))
    );
    match row.get("tags") {
        Some(PgValue::Array(a)) => {
            assert_eq!((a.dims[0].lower, a.dims[0].length), (1, 3));
            assert_eq!(
                a.elements,
                [
                    PgValue::Text("x".into()),
                    PgValue::Null,
                    PgValue::Text("z".into())
                ]
            );
        }
        other => panic!("tags: {other:?}"),
    }
    assert_eq!(row.get("note"), Some(&PgValue::Null));
    assert_eq!(row.get("big"), Some(&PgValue::Text("x".repeat(10_000))));
    assert_eq!(row.get("absent"), None);

    let update = &got[1];
    assert!(update.before().is_none(), "DEFAULT identity, key unchanged");
    let row = update.after().unwrap();
    assert!(row.is_unchanged("big"));
    assert_eq!(row.get("big"), Some(&PgValue::Unchanged));
    assert_eq!(
        row.get("amount"),
        Some(&PgValue::Numeric(PgNumeric::Finite("-3.25".into())))
    );
    assert_eq!(row.get("note"), Some(&PgValue::Text("changed".into())));
    assert!(update.commit_lsn() > insert.commit_lsn());

    let delete = &got[2];
    assert!(delete.after().is_none());
    let before = delete.before().unwrap();
    assert_eq!(before.len(), 1, "the primary key only");
    assert_eq!(before.get("id"), Some(&PgValue::Int8(1)));

    // JSON for a CLI.
    let json = serde_json::to_value(update).unwrap();
    assert_eq!(json["op"], "update");
    assert_eq!(json["source"]["table"], "items");
    assert_eq!(
        json["source"]["commit_lsn"],
        update.commit_lsn().to_string()
    );
    assert_eq!(
        json["after"]["big"],
        serde_json::json!({"unchanged_toast": true})
    );
    assert_eq!(json["after"]["amount"], "-3.25");
    assert_eq!(json["after"]["id"], 1);
    assert_eq!(json["before"], serde_json::Value::Null);
    assert_eq!(json["stream_sequence"], update.stream_sequence());
    let json = serde_json::to_value(insert).unwrap();
    assert_eq!(json["after"]["at"], "2024-02-29T12:34:56.789012Z");
    assert_eq!(json["after"]["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(
        json["after"]["tags"]["elements"],
        serde_json::json!(["x", null, "z"])
    );

    // A wildcard subscription sees both tables, in commit order.
    let mut all = client.subscribe(Subscription::all()).await.unwrap();
    let got = events(&mut all, 5).await;
    assert_eq!(
        got.iter()
            .map(|e| e.source().table.as_str())
            .collect::<Vec<_>>(),
        ["other", "items", "items", "items", "items"]
    );
    let mut schema = client
        .subscribe(Subscription::table("public.*"))
        .await
        .unwrap();
    assert_eq!(events(&mut schema, 5).await.len(), 5);
    setup.stop().await;
}

#[tokio::test]
async fn a_durable_consumer_resumes_without_redelivering_acked_events() {
    let mut setup = Setup::start(
        "client_durable",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);",
        "public.t, public.u",
    )
    .await;
    let client = setup.client().await;
    setup
        .exec(&[
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t VALUES (2)",
            "INSERT INTO t VALUES (3)",
            "INSERT INTO t VALUES (4)",
            "INSERT INTO t VALUES (5)",
        ])
        .await;
    // The ack wait is short so that the test sees a redelivery, and long enough that a
    // loaded machine acknowledges every event well within it.
    let subscription = || {
        Subscription::table("public.t")
            .durable("resume-test")
            .ack_wait(Duration::from_secs(3))
            .prefetch(2)
    };
    let mut stream = client.subscribe(subscription()).await.unwrap();
    assert!(stream.is_durable());
    assert_eq!(stream.consumer_name(), "resume-test");
    let first = events(&mut stream, 3).await;
    assert_eq!(ids(&first), [1, 2, 3]);
    for event in &first {
        assert_eq!(event.delivered(), 1);
        event.ack().await.unwrap();
    }
    drop(stream);

    // Another subscription under the same name with other tables is refused.
    let error = client
        .subscribe(Subscription::table("public.u").durable("resume-test"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(!error.is_retryable());

    // A restarted application (new connection) resumes after the acked events.
    setup.exec(&["INSERT INTO t VALUES (6)"]).await;
    let client = setup.client().await;
    let mut stream = client
        .subscribe(subscription().start(Start::New))
        .await
        .unwrap();
    // Each event is acked as it arrives. Event 4 was pulled ahead by the dropped stream, so
    // it comes back only after its ack wait, while 5 and 6 arrive at once: collecting all
    // three before acking left 5 unacked for nearly its own ack wait, and a loaded machine
    // saw it delivered again.
    let mut rest = Vec::new();
    for _ in 0..3 {
        let event = next(&mut stream).await.unwrap();
        event.ack().await.unwrap();
        rest.push(event);
    }
    rest.sort_by_key(|e| int8(e.after().unwrap().get("id")));
    assert_eq!(ids(&rest), [4, 5, 6]);
    // Nothing acked comes back, even after the ack wait.
    assert_quiet(&mut stream, Duration::from_secs(4)).await;
    drop(stream);

    // Unacked events are delivered again.
    setup.exec(&["INSERT INTO t VALUES (7)"]).await;
    let mut stream = client.subscribe(subscription()).await.unwrap();
    let seven = next(&mut stream).await.unwrap();
    assert_eq!(ids(std::slice::from_ref(&seven)), [7]);
    drop(stream);
    let mut stream = client.subscribe(subscription()).await.unwrap();
    let again = next(&mut stream).await.unwrap();
    assert_eq!(ids(std::slice::from_ref(&again)), [7]);
    assert_eq!(again.stream_sequence(), seven.stream_sequence());
    assert!(again.delivered() >= 2);
    again.ack().await.unwrap();
    assert_quiet(&mut stream, Duration::from_secs(4)).await;
    drop(stream);

    assert!(client.delete_durable("resume-test").await.unwrap());
    assert!(!client.delete_durable("resume-test").await.unwrap());
    let error = client
        .subscribe(Subscription::table("public.t").durable("bad.name"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);

    // Backpressure: a slow reader does not get the whole stream pulled ahead of it.
    // One transaction each: one message each (a transaction's events may share messages).
    let inserts: Vec<String> = (1..=60)
        .map(|g| format!("INSERT INTO u VALUES ({g})"))
        .collect();
    setup
        .exec(&inserts.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let mut bounded = client
        .subscribe(
            Subscription::table("public.u")
                .durable("bounded")
                .prefetch(5),
        )
        .await
        .unwrap();
    next(&mut bounded).await.unwrap().ack().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let js = async_nats::jetstream::new(client.nats().clone());
    let wal = js
        .get_stream(format!("{}_{}_WAL", common::ROOT, setup.db.name()))
        .await
        .unwrap();
    let info = wal.consumer_info("bounded").await.unwrap();
    assert!(
        info.num_ack_pending <= 10,
        "{} messages pulled ahead of a reader with prefetch 5",
        info.num_ack_pending
    );
    assert!(info.num_pending >= 45, "{info:?}");
    let rest = events(&mut bounded, 59).await;
    assert_eq!(ids(&rest), (2..=60).collect::<Vec<_>>());
    setup.stop().await;
}

#[tokio::test]
async fn subscriptions_start_at_a_commit_position_a_time_or_new_events() {
    let mut setup = Setup::start(
        "client_start",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);",
        "public.a, public.b",
    )
    .await;
    let client = setup.client().await;
    setup
        .exec(&[
            "INSERT INTO a VALUES (1)",
            "INSERT INTO b VALUES (1)",
            "INSERT INTO a VALUES (2)",
            "INSERT INTO b VALUES (2)",
        ])
        .await;
    let mut all = client.subscribe(Subscription::all()).await.unwrap();
    let history = events(&mut all, 4).await;
    let tables: Vec<&str> = history.iter().map(|e| e.source().table.as_str()).collect();
    assert_eq!(tables, ["a", "b", "a", "b"]);

    // Several tables by name.
    let mut both = client
        .subscribe(Subscription::tables(["public.a"]).pattern(TablePattern::table("public", "b")))
        .await
        .unwrap();
    assert_eq!(events(&mut both, 4).await.len(), 4);

    // From a commit position: the third event on.
    let position = history[2].commit_lsn();
    let mut from = client
        .subscribe(Subscription::all().start(Start::CommitPosition(position)))
        .await
        .unwrap();
    let got = events(&mut from, 2).await;
    assert_eq!(got[0].stream_sequence(), history[2].stream_sequence());
    assert_eq!(got[1].stream_sequence(), history[3].stream_sequence());
    assert_quiet(&mut from, Duration::from_millis(500)).await;
    // Filtered to one table, the same position gives that table's events from there.
    let mut from_a = client
        .subscribe(Subscription::table("public.a").start(Start::CommitPosition(position)))
        .await
        .unwrap();
    assert_eq!(ids(&events(&mut from_a, 1).await), [2]);
    // The position just after the last event: only what comes later.
    let after_last = Lsn(history[3].commit_lsn().0 + 1);
    let mut later = client
        .subscribe(Subscription::all().start(Start::CommitPosition(after_last)))
        .await
        .unwrap();
    let mut new = client
        .subscribe(Subscription::all().start(Start::New))
        .await
        .unwrap();
    assert_quiet(&mut later, Duration::from_millis(300)).await;
    setup.exec(&["INSERT INTO a VALUES (3)"]).await;
    let three = next(&mut later).await.unwrap();
    assert_eq!(ids(std::slice::from_ref(&three)), [3]);
    assert_eq!(ids(&events(&mut new, 1).await), [3]);
    assert!(three.commit_lsn() > history[3].commit_lsn());

    // From a time: what JetStream stored at or after it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let since = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    setup.exec(&["INSERT INTO b VALUES (3)"]).await;
    let mut timed = client
        .subscribe(Subscription::all().start(Start::Time(since)))
        .await
        .unwrap();
    let got = next(&mut timed).await.unwrap();
    assert_eq!(
        (
            got.source().table.as_str(),
            ids(std::slice::from_ref(&got))[0]
        ),
        ("b", 3)
    );
    assert_quiet(&mut timed, Duration::from_millis(300)).await;

    // Batches under the caller's control.
    let mut batched = client.subscribe(Subscription::all()).await.unwrap();
    let batch = batched.next_batch(4, Duration::from_secs(10)).await;
    assert_eq!(batch.len(), 4);
    let batch = batched.next_batch(10, Duration::from_millis(1500)).await;
    assert_eq!(
        batch.len(),
        2,
        "the two remaining events, after the timeout"
    );
    assert!(
        batched
            .next_batch(10, Duration::from_millis(200))
            .await
            .is_empty()
    );
    setup.stop().await;
}

#[tokio::test]
async fn undecodable_messages_are_errors_with_their_sequence_and_the_stream_goes_on() {
    let mut setup = Setup::start(
        "client_garbage",
        "CREATE TABLE g (id int PRIMARY KEY)",
        "public.g",
    )
    .await;
    let client = setup.client().await;
    let mut ordered = client
        .subscribe(Subscription::table("public.g"))
        .await
        .unwrap();
    let mut durable = client
        .subscribe(Subscription::table("public.g").durable("poison"))
        .await
        .unwrap();
    setup.exec(&["INSERT INTO g VALUES (1)"]).await;
    assert_eq!(ids(&events(&mut ordered, 1).await), [1]);

    let js = async_nats::jetstream::new(client.nats().clone());
    let subject = setup.wal_subject("public", "g");
    let garbage = js
        .publish(subject.clone(), "not avro".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let mut unknown = vec![0xC3, 0x01];
    unknown.extend_from_slice(&Fingerprint(0x0123_4567_89ab_cdef).to_bytes());
    unknown.extend_from_slice(&[0, 0, 0]);
    let unknown_seq = js
        .publish(subject, unknown.clone().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    setup.exec(&["INSERT INTO g VALUES (2)"]).await;

    let error = next(&mut ordered).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Decode);
    assert!(!error.is_retryable());
    assert_eq!(error.stream_sequence(), Some(garbage));
    assert_eq!(&error.message().unwrap().payload[..], b"not avro");
    let error = next(&mut ordered).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SchemaNotFound, "{error}");
    assert_eq!(error.stream_sequence(), Some(unknown_seq));
    assert_eq!(&error.message().unwrap().payload[..], &unknown[..]);
    let text = Fingerprint(0x0123_4567_89ab_cdef).to_string();
    assert!(error.to_string().contains(&text), "{error}");
    assert_eq!(ids(&events(&mut ordered, 1).await), [2]);

    // On a durable consumer the caller decides: terminate the bad messages, ack the rest;
    // after a restart nothing comes back.
    let first = next(&mut durable).await.unwrap();
    first.ack().await.unwrap();
    for expected in [garbage, unknown_seq] {
        let error = next(&mut durable).await.unwrap_err();
        assert_eq!(error.stream_sequence(), Some(expected));
        error.message().unwrap().term().await.unwrap();
    }
    next(&mut durable).await.unwrap().ack().await.unwrap();
    drop(durable);
    let mut durable = client
        .subscribe(
            Subscription::table("public.g")
                .durable("poison")
                .ack_wait(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert_quiet(&mut durable, Duration::from_secs(2)).await;
    setup.stop().await;
}

#[tokio::test]
async fn concurrent_lookups_of_one_fingerprint_share_one_request() {
    let mut setup = Setup::start(
        "client_cache",
        "CREATE TABLE c (id int PRIMARY KEY, v text)",
        "public.c",
    )
    .await;
    setup.exec(&["INSERT INTO c VALUES (1, 'a')"]).await;
    let first = setup.client().await;
    let mut stream = first
        .subscribe(Subscription::table("public.c"))
        .await
        .unwrap();
    let fingerprint = next(&mut stream).await.unwrap().fingerprint();

    // Count the requests on the RPC subject with a plain subscription.
    let rpc = format!("{}.{}.rpc.schema", common::ROOT, setup.db.name());
    let watcher = async_nats::connect(setup.nats.url()).await.unwrap();
    let mut requests = watcher.subscribe(rpc).await.unwrap();
    watcher.flush().await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let watcher_task = tokio::spawn(async move {
        while requests.next().await.is_some() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    // A fresh client has an empty cache.
    let client = setup.client().await;
    let lookups = (0..16).map(|_| client.schema(fingerprint));
    let schemas = futures::future::join_all(lookups).await;
    let schemas: Vec<_> = schemas.into_iter().map(Result::unwrap).collect();
    assert!(schemas.iter().all(|s| Arc::ptr_eq(s, &schemas[0])));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "one request for 16 lookups"
    );
    let schema = &schemas[0];
    assert_eq!(schema.fingerprint(), fingerprint);
    assert_eq!(schema.table(), "public.c");
    assert_eq!(schema.database(), setup.db.name());
    let names: Vec<&str> = schema.columns().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "v"]);
    assert_eq!(
        Fingerprint::of_json_str(schema.schema_json()).unwrap(),
        fingerprint
    );
    // Cached: no more requests.
    client.schema(fingerprint).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // An unknown fingerprint: the concurrent callers share one failed request too, and the
    // failure is not cached.
    let unknown = Fingerprint(42);
    let results = futures::future::join_all((0..8).map(|_| client.schema(unknown))).await;
    for result in results {
        let error = result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::SchemaNotFound);
        assert!(!error.is_retryable());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(
        client.schema(unknown).await.unwrap_err().kind(),
        ErrorKind::SchemaNotFound
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // Without a producer, lookups fail retryably: a timeout while something listens on the
    // subject without answering (the watcher), at once when nothing does.
    setup.stop().await;
    let impatient = Client::connect(setup.options().request_timeout(Duration::from_millis(500)))
        .await
        .unwrap();
    let error = impatient.schema(Fingerprint(43)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(error.is_retryable());
    watcher_task.abort();
    drop(watcher);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let error = impatient.schema(Fingerprint(44)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn connecting_checks_credentials_and_reports_kinds() {
    let server =
        NatsServer::start_with_config("authorization { user: alice, password: s3cret }").unwrap();
    let options = |credentials| ClientOptions::new(server.url(), "db").credentials(credentials);
    let error = Client::connect(options(Credentials::UserPassword {
        user: "alice".into(),
        password: "wrong".into(),
    }))
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
    assert!(!error.is_retryable());
    let client = Client::connect(options(Credentials::UserPassword {
        user: "alice".into(),
        password: "s3cret".into(),
    }))
    .await
    .unwrap();
    assert_eq!(client.database(), "db");
    // No producer has run: no stream.
    let error = client.subscribe(Subscription::all()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::StreamNotFound, "{error}");
    assert!(
        error.is_retryable(),
        "the producer creates it when it starts"
    );
    let error = client
        .subscribe(Subscription::table("no-dot"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);

    let token = NatsServer::start_with_config("authorization { token: t0ken }").unwrap();
    let options =
        |t: &str| ClientOptions::new(token.url(), "db").credentials(Credentials::Token(t.into()));
    assert_eq!(
        Client::connect(options("nope")).await.unwrap_err().kind(),
        ErrorKind::Auth
    );
    Client::connect(options("t0ken")).await.unwrap();

    let user = nkeys::KeyPair::new_user();
    let nkey = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    ))
    .unwrap();
    let options =
        |seed: String| ClientOptions::new(nkey.url(), "db").credentials(Credentials::NKey(seed));
    Client::connect(options(user.seed().unwrap()))
        .await
        .unwrap();
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    assert_eq!(
        Client::connect(options(stranger)).await.unwrap_err().kind(),
        ErrorKind::Auth
    );

    let port = walbrook_harness::free_port().unwrap();
    let mut options = ClientOptions::new(format!("nats://127.0.0.1:{port}"), "db");
    options.connect_timeout = Duration::from_secs(2);
    let error = Client::connect(options).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connect, "{error}");
    assert!(error.is_retryable());
    let error = Client::connect(
        ClientOptions::new("nats://127.0.0.1:1", "db")
            .credentials(Credentials::CredsFile("/nonexistent/walbrook.creds".into())),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
}

#[tokio::test]
async fn decoding_ahead_keeps_stream_order_and_errors_in_place() {
    // `Subscription::decode_ahead` decodes in a task of its own: the caller must see exactly
    // what an inline subscription sees — every event once, in stream order (events of
    // shared messages included), and an undecodable message as an error in its place.
    let mut setup = Setup::start(
        "client_ahead",
        "CREATE TABLE a (id int PRIMARY KEY)",
        "public.a",
    )
    .await;
    let client = setup.client().await;
    let shape = |events: &[walbrook_client::ChangeEvent]| -> Vec<(Op, i64, u64, u32)> {
        events
            .iter()
            .map(|e| {
                (
                    e.op(),
                    int8(e.after().or(e.before()).and_then(|r| r.get("id"))),
                    e.stream_sequence(),
                    e.message_index(),
                )
            })
            .collect()
    };
    let mut inline = client
        .subscribe(Subscription::table("public.a"))
        .await
        .unwrap();
    setup
        .exec(&[
            "INSERT INTO a SELECT generate_series(1, 20)",
            "INSERT INTO a SELECT generate_series(21, 40)",
        ])
        .await;
    // Stored before the garbage (the inline reader has them).
    let mut expected = shape(&events(&mut inline, 40).await);
    let js = async_nats::jetstream::new(client.nats().clone());
    let garbage = js
        .publish(setup.wal_subject("public", "a"), "not avro".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    setup
        .exec(&[
            "UPDATE a SET id = id + 100 WHERE id <= 5",
            "DELETE FROM a WHERE id BETWEEN 36 AND 40",
        ])
        .await;
    let error = next(&mut inline).await.unwrap_err();
    assert_eq!(error.stream_sequence(), Some(garbage), "{error}");
    expected.extend(shape(&events(&mut inline, 10).await));
    assert_quiet(&mut inline, Duration::from_millis(500)).await;
    let mut ahead = client
        .subscribe(Subscription::table("public.a").decode_ahead(3))
        .await
        .unwrap();
    let mut durable_ahead = client
        .subscribe(
            Subscription::table("public.a")
                .durable("ahead")
                .decode_ahead(7),
        )
        .await
        .unwrap();
    let mut seen = vec![expected];
    for stream in [&mut ahead, &mut durable_ahead] {
        let before = events(stream, 40).await;
        let error = next(stream).await.unwrap_err();
        assert_eq!(error.stream_sequence(), Some(garbage), "{error}");
        let after = events(stream, 10).await;
        let mut got = shape(&before);
        got.extend(shape(&after));
        seen.push(got);
        for event in before.iter().chain(&after) {
            event.ack().await.unwrap();
        }
        assert_quiet(stream, Duration::from_millis(500)).await;
    }
    assert_eq!(
        seen[0], seen[1],
        "decode_ahead(3) differs from inline decoding"
    );
    assert_eq!(seen[0], seen[2], "a durable decode_ahead(7) differs");
    // The two 20-row inserts are shared messages: 20 events each, one stream sequence.
    assert_eq!(seen[0][19].3, 19);
    assert_eq!(seen[0][0].2, seen[0][19].2);
    setup.stop().await;
}
