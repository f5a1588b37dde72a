//! The webhook sink against a real producer, NATS JetStream and the harness's HTTP receiver.

#[path = "../../pg-client/tests/common/mod.rs"]
mod common;
#[path = "../../client/tests/sink_conformance/mod.rs"]
mod sink_conformance;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walbrook_client::runner::{Runner, RunnerOptions, list_dead_letters};
use walbrook_harness::{RecordedRequest, WebhookReceiver};
use walbrook_webhook_client::{WebhookOptions, WebhookSink, signature};

use common::Setup;
use sink_conformance::{Observe, State};

/// Folds the deliveries a receiver got (each event id once, in arrival order) into rows.
fn fold(requests: &[RecordedRequest]) -> State {
    let mut seen = HashSet::new();
    let mut state = BTreeMap::new();
    for request in requests {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&request.body) else {
            continue;
        };
        let events = match body {
            serde_json::Value::Array(events) => events,
            event => vec![event],
        };
        for event in events {
            let id = event["id"].as_str().unwrap_or_default().to_owned();
            if !seen.insert(id) {
                continue;
            }
            let key = |row: &str| event[row]["id"].as_i64();
            match event["op"].as_str().unwrap_or_default() {
                "insert" | "update" | "read" => {
                    state.insert(
                        key("after").unwrap(),
                        event["after"]["note"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                "update_key" => {
                    state.remove(&key("before").unwrap());
                    state.insert(
                        key("after").unwrap(),
                        event["after"]["note"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                "delete" => {
                    state.remove(&key("before").unwrap());
                }
                "truncate" => state.clear(),
                other => panic!("unexpected op {other}"),
            }
        }
    }
    state
}

struct Target<'a>(&'a WebhookReceiver);

impl Observe for Target<'_> {
    async fn state(&self) -> State {
        fold(&self.0.requests())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_sink_conforms() {
    let mut setup = Setup::start("conf_hook", sink_conformance::DDL, sink_conformance::TABLE).await;
    let receiver = WebhookReceiver::start().unwrap();
    let url = receiver.url();
    let make = move || {
        let url = url.clone();
        async move { WebhookSink::new(WebhookOptions::new(url)).unwrap() }
    };
    sink_conformance::run(&setup, make, &Target(&receiver)).await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_and_dead_lettered() {
    let mut setup = Setup::start(
        "hook",
        "CREATE TABLE t (id int PRIMARY KEY, note text)",
        "public.t",
    )
    .await;
    let receiver = WebhookReceiver::start().unwrap();
    // The first delivery meets an overloaded receiver (Retry-After: 1), then a 503 without
    // it; the next succeed.
    receiver.push_response(429, &[("Retry-After", "1")]);
    receiver.push_response(503, &[]);
    let mut options = WebhookOptions::new(format!("{}/hook", receiver.url()));
    options.secret = Some(b"s3cret".to_vec());
    options.retry.initial = Duration::from_millis(50);
    let sink = WebhookSink::new(options).unwrap();
    let client = setup.client().await;
    let mut runner_options = RunnerOptions::new("hook", ["public.t"]);
    // One lane: requests meet the scripted answers in stream order.
    runner_options.lanes = 1;
    let mut runner = Runner::new(client.clone(), sink, runner_options);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    setup
        .exec(&[
            "INSERT INTO t VALUES (1, 'one')",
            "UPDATE t SET note = 'uno' WHERE id = 1",
        ])
        .await;
    let requests = tokio::task::spawn_blocking({
        let receiver_requests = move || receiver;
        move || {
            let receiver = receiver_requests();
            let r = receiver.wait_for_requests(4, Duration::from_secs(30));
            (receiver, r)
        }
    })
    .await
    .unwrap();
    let (receiver, requests) = (requests.0, requests.1.expect("4 requests"));
    // Three attempts of the first event with the same id, then the second event.
    let ids: Vec<&str> = requests
        .iter()
        .map(|r| r.header("Walbrook-Event-Id").unwrap())
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
    assert_ne!(ids[2], ids[3]);
    assert!(
        ids[0].starts_with(&format!("{}/", setup.db.name())),
        "{}",
        ids[0]
    );
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("Idempotency-Key"), r.header("Walbrook-Event-Id"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("Walbrook-Signature").unwrap(),
            signature(b"s3cret", &r.body),
            "the signature covers the body"
        );
    }
    assert_eq!(
        requests
            .iter()
            .map(|r| r.header("Walbrook-Attempt").unwrap())
            .collect::<Vec<_>>(),
        ["1", "2", "3", "1"]
    );
    let first: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(first["op"], "insert");
    assert_eq!(first["after"]["note"], "one");
    let second: serde_json::Value = serde_json::from_slice(&requests[3].body).unwrap();
    assert_eq!(second["after"]["note"], "uno");

    // A receiver that fails three times: the same request is sent until it is delivered,
    // never dead-lettered.
    for _ in 0..3 {
        receiver.push_response(500, &[]);
    }
    receiver.push_response(200, &[]);
    // A refusal of the event (400) is dead-lettered at once, and the later change of the
    // same key with it (held: the receiver never sees key 3 out of order); key 4 goes on.
    receiver.push_response(400, &[]);
    setup
        .exec(&[
            "INSERT INTO t VALUES (2, 'fails')",
            "INSERT INTO t VALUES (3, 'refused')",
            "UPDATE t SET note = 'after the refusal' WHERE id = 3",
            "INSERT INTO t VALUES (4, 'fine')",
        ])
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !receiver
        .requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains("\"fine\""))
    {
        assert!(tokio::time::Instant::now() < deadline, "the stream stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The batch's dead letters are published once its apply returned.
    let letters = loop {
        let letters = list_dead_letters(&client, "hook").await.unwrap();
        if letters.len() >= 2 {
            break letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letters: {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].sink, "webhook");
    assert!(letters[0].error.contains("400"), "{}", letters[0].error);
    assert_eq!(
        letters[0].event.as_ref().unwrap()["after"]["note"],
        "refused"
    );
    assert!(letters[1].error.starts_with("held"), "{}", letters[1].error);
    assert_eq!(
        letters[1].event.as_ref().unwrap()["after"]["note"],
        "after the refusal"
    );
    let bodies: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(
        bodies.iter().filter(|b| b.contains("\"fails\"")).count(),
        4,
        "three failed attempts and the delivery"
    );
    assert!(!bodies.iter().any(|b| b.contains("after the refusal")));
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_posts_one_json_array_per_batch() {
    let mut setup = Setup::start(
        "hook_batch",
        "CREATE TABLE t (id int PRIMARY KEY, note text)",
        "public.t",
    )
    .await;
    let receiver = WebhookReceiver::start().unwrap();
    let mut options = WebhookOptions::new(receiver.url());
    options.batch = true;
    options.secret = Some(b"k".to_vec());
    let sink = WebhookSink::new(options).unwrap();
    setup
        .exec(&["INSERT INTO t SELECT g, 'n' FROM generate_series(1, 3) g"])
        .await;
    let client = setup.client().await;
    let mut stream = client
        .subscribe(walbrook_client::Subscription::table("public.t"))
        .await
        .unwrap();
    let events = common::events(&mut stream, 3).await;
    use walbrook_client::runner::Sink;
    let applied = sink.apply("batch", &events).await.unwrap();
    assert!(applied.rejected.is_empty());
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    let items = body.as_array().unwrap();
    assert_eq!(items.len(), 3);
    let first = walbrook_webhook_client::event_id(&events[0]);
    let last = walbrook_webhook_client::event_id(&events[2]);
    assert_eq!(items[0]["id"], first.as_str());
    assert_eq!(
        requests[0].header("Walbrook-Event-Id").unwrap(),
        format!("{first}..{last}")
    );
    assert_eq!(
        requests[0].header("Walbrook-Signature").unwrap(),
        signature(b"k", &requests[0].body)
    );
    setup.stop().await;
}

/// Stopping the runner cancels a delivery that waits on `Retry-After`: nothing is
/// acknowledged, and the event is delivered again by the next run, with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cancels_a_waiting_delivery_and_the_event_comes_again() {
    let mut setup = Setup::start(
        "hook_stop",
        "CREATE TABLE t (id int PRIMARY KEY)",
        "public.t",
    )
    .await;
    let receiver = WebhookReceiver::start().unwrap();
    receiver.push_response(503, &[("Retry-After", "300")]);
    let client = setup.client().await;
    let run = |client: walbrook_client::Client, url: String| {
        let sink = WebhookSink::new(WebhookOptions::new(url)).unwrap();
        let mut runner = Runner::new(client, sink, RunnerOptions::new("stop", ["public.t"]));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        (
            shutdown,
            tokio::spawn(async move { runner.run(stop).await.unwrap() }),
        )
    };
    let (shutdown, task) = run(client.clone(), receiver.url());
    setup.exec(&["INSERT INTO t VALUES (1)"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.requests().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    // Well before the 300 s the receiver asked for.
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the runner stops without waiting for Retry-After")
        .unwrap();
    let (shutdown, task) = run(client, receiver.url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.requests().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = receiver.requests();
    assert_eq!(
        requests[0].header("Walbrook-Event-Id"),
        requests[1].header("Walbrook-Event-Id")
    );
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

/// `Retry-After` as an HTTP-date is honoured: a receiver asking to come back in five
/// minutes gets no retry within the next seconds (the backoff alone would retry after
/// ~200 ms), and a stop cancels the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_http_date_is_honoured() {
    let mut setup = Setup::start(
        "hook_date",
        "CREATE TABLE t (id int PRIMARY KEY)",
        "public.t",
    )
    .await;
    let receiver = WebhookReceiver::start().unwrap();
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(300));
    receiver.push_response(503, &[("Retry-After", later.as_str())]);
    let client = setup.client().await;
    let sink = WebhookSink::new(WebhookOptions::new(receiver.url())).unwrap();
    let mut runner = Runner::new(client, sink, RunnerOptions::new("date", ["public.t"]));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    setup.exec(&["INSERT INTO t VALUES (1)"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.requests().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        1,
        "retried before the date in Retry-After ({later}): {:?}",
        requests
            .iter()
            .map(|r| r.header("Walbrook-Attempt"))
            .collect::<Vec<_>>()
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the runner stops without waiting for Retry-After")
        .unwrap();
    setup.stop().await;
}

/// The events a receiver accepted (answered 2xx), in arrival order, as (id, key, note).
fn delivered(receiver: &WebhookReceiver) -> Vec<(String, i64, String)> {
    receiver
        .requests()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["after"]["id"].as_i64().unwrap(),
                e["after"]["note"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn wait_delivered(receiver: &WebhookReceiver, n: usize) -> Vec<(String, i64, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = delivered(receiver);
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} events delivered",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A 301 or 307 is never followed (reqwest's default turned a 301 POST into a body-less GET
/// whose 200 counted as delivered): delivery waits, the log names the `Location`, nothing is
/// dead-lettered, and once the receiver answers again every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed_and_nothing_is_lost() {
    let mut setup = Setup::start(
        "hookmoved",
        "CREATE TABLE t (id int PRIMARY KEY, note text)",
        "public.t",
    )
    .await;
    let receiver = WebhookReceiver::start().unwrap();
    let moved = format!("{}/moved", receiver.url());
    receiver.set_fallback_response(301, &[("Location", moved.as_str())]);
    let mut options = WebhookOptions::new(format!("{}/hook", receiver.url()));
    options.retry.initial = Duration::from_millis(50);
    options.retry.max = Duration::from_millis(300);
    let client = setup.client().await;
    let mut runner = Runner::new(
        client.clone(),
        WebhookSink::new(options).unwrap(),
        RunnerOptions::new("hookmoved", ["public.t"]),
    );
    let metrics = runner.metrics();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    setup
        .exec(&[
            "INSERT INTO t VALUES (1, 'one')",
            "UPDATE t SET note = 'uno' WHERE id = 1",
        ])
        .await;
    // The 301s, then 307s: each is answered, none followed.
    let attempts = |receiver: &WebhookReceiver, status: u16| {
        receiver
            .requests()
            .iter()
            .filter(|r| r.status == status)
            .count()
    };
    for status in [301, 307] {
        if status == 307 {
            receiver.set_fallback_response(307, &[("Location", moved.as_str())]);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while attempts(&receiver, status) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no retried {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(metrics.target_waits_total() >= 6);
    assert!(!metrics.is_healthy(), "a waiting sink is not healthy");
    receiver.clear_fallback_response();
    let got = wait_delivered(&receiver, 2).await;
    let notes: Vec<&str> = got.iter().map(|(_, _, n)| n.as_str()).collect();
    assert_eq!(notes, ["one", "uno"]);
    let requests = receiver.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.method == "POST" && r.path == "/hook"),
        "a redirect was followed: {:?}",
        requests
            .iter()
            .map(|r| (&r.method, &r.path, r.status))
            .collect::<Vec<_>>()
    );
    assert!(
        list_dead_letters(&client, "hookmoved")
            .await
            .unwrap()
            .is_empty()
    );
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

/// The receiver answers 503 for 60 s, then 200: delivery waits (per lane), every event arrives
/// exactly once and in per-key order, and the dead-letter stream stays empty (events used to
/// be dead-lettered after 8 attempts, while later changes of their keys were delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_pauses_delivery_without_dead_letters_or_reordering() {
    let mut setup = Setup::start(
        "hookdown",
        "CREATE TABLE t (id int PRIMARY KEY, note text)",
        "public.t",
    )
    .await;
    let receiver = WebhookReceiver::start().unwrap();
    receiver.set_fallback_response(503, &[]);
    let mut options = WebhookOptions::new(format!("{}/hook", receiver.url()));
    options.retry.max = Duration::from_secs(2);
    let client = setup.client().await;
    let mut runner = Runner::new(
        client.clone(),
        WebhookSink::new(options).unwrap(),
        RunnerOptions::new("hookdown", ["public.t"]),
    );
    let metrics = runner.metrics();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    // 4 keys, each inserted then updated 4 times, interleaved across transactions.
    let mut statements = Vec::new();
    for id in 1..=4 {
        statements.push(format!("INSERT INTO t VALUES ({id}, 'v0')"));
    }
    for v in 1..=4 {
        for id in 1..=4 {
            statements.push(format!("UPDATE t SET note = 'v{v}' WHERE id = {id}"));
        }
    }
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    setup.exec(&statements).await;
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(60) {
        assert!(
            list_dead_letters(&client, "hookdown")
                .await
                .unwrap()
                .is_empty(),
            "dead-lettered during the outage"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(delivered(&receiver).is_empty());
    assert!(metrics.target_waits_total() > 0);
    receiver.clear_fallback_response();
    let got = wait_delivered(&receiver, 20).await;
    let ids: HashSet<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(
        ids.len(),
        got.len(),
        "an event was delivered twice: {got:?}"
    );
    for id in 1..=4 {
        let notes: Vec<&str> = got
            .iter()
            .filter(|(_, key, _)| *key == id)
            .map(|(_, _, note)| note.as_str())
            .collect();
        assert_eq!(notes, ["v0", "v1", "v2", "v3", "v4"], "key {id}: {got:?}");
    }
    assert!(
        list_dead_letters(&client, "hookdown")
            .await
            .unwrap()
            .is_empty()
    );
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}
