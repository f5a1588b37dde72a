//! The runner checks the durable consumer's delivery sequence: a delivery that never reaches
//! it (here: taken by another client pulling from the same durable consumer, which is what a
//! pull response lost on the way looks like to the runner) is detected as a gap, counted, and
//! recovered by recreating the consumer after the last applied event — nothing is lost.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ROOT, Setup};
use tokio_util::sync::CancellationToken;
use walbrook_client::runner::{Applied, Position, Runner, RunnerOptions, Sink, SinkError};
use walbrook_client::{ChangeEvent, Op};

/// An idempotent in-memory target: id → note.
#[derive(Clone, Default)]
struct MapSink {
    rows: Arc<Mutex<BTreeMap<i64, String>>>,
}

impl Sink for MapSink {
    fn name(&self) -> &str {
        "map"
    }

    async fn checkpoint(&self, _consumer: &str) -> Result<Option<Position>, SinkError> {
        Ok(None)
    }

    async fn apply(&self, _consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        let mut rows = self.rows.lock().unwrap();
        for event in events {
            let image = |row: Option<&walbrook_client::Row>| {
                let json = row.expect("a row image").to_json();
                (
                    json["id"].as_i64().unwrap(),
                    json["note"].as_str().unwrap_or_default().to_owned(),
                )
            };
            match event.op() {
                Op::Insert | Op::Update | Op::Read => {
                    let (id, note) = image(event.after());
                    rows.insert(id, note);
                }
                Op::Delete => {
                    rows.remove(&image(event.before()).0);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        Ok(Applied::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_taken_from_the_consumer_is_detected_and_applied_anyway() {
    let setup = Setup::start(
        "rungaps",
        "CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)",
        "public.t",
    )
    .await;
    let client = setup.client().await;
    let sink = MapSink::default();
    let mut options = RunnerOptions::new("gaps", ["public.t"]);
    options.max_batch_events = 10;
    let mut runner = Runner::new(client, sink.clone(), options);
    let metrics = runner.metrics();
    let shutdown = CancellationToken::new();
    let run = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { runner.run(shutdown).await })
    };

    // A thief pulls single messages from the same durable consumer and never acknowledges
    // them: each one it gets is a delivery the runner never sees.
    let nats = async_nats::connect(setup.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream_name = format!("{ROOT}_{}_WAL", setup.db.name());
    let stop_thief = CancellationToken::new();
    let thief = {
        let stop = stop_thief.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut stolen = Vec::new();
            while !stop.is_cancelled() && stolen.len() < 5 {
                let consumer = match js.get_stream(&stream_name).await {
                    Ok(s) => s
                        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("gaps")
                        .await
                        .ok(),
                    Err(_) => None,
                };
                let Some(consumer) = consumer else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let Ok(mut batch) = consumer
                    .fetch()
                    .max_messages(1)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await
                else {
                    continue;
                };
                let mut got = false;
                while let Some(Ok(message)) = batch.next().await {
                    stolen.push(message.info().unwrap().stream_sequence);
                    got = true;
                }
                if got {
                    // Spread the thefts over the run: several holes, several recreations.
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
            }
            stolen
        })
    };

    const ROWS: i64 = 400;
    for id in 0..ROWS {
        setup
            .sql
            .execute("INSERT INTO t VALUES ($1, 'v0')", &[&id])
            .await
            .unwrap();
        if id % 3 == 0 {
            setup
                .sql
                .execute("UPDATE t SET note = 'v1' WHERE id = $1", &[&(id / 2)])
                .await
                .unwrap();
        }
        if id % 7 == 0 {
            setup
                .sql
                .execute("DELETE FROM t WHERE id = $1", &[&(id / 3)])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_thief.cancel();
    let stolen = thief.await.unwrap();
    assert!(
        !stolen.is_empty(),
        "the thief never got a delivery: the test provoked no gap"
    );

    let expected: BTreeMap<i64, String> = setup
        .sql
        .query("SELECT id, note FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Well within the consumer's ack_wait (5 min): the stolen deliveries are not simply
    // redelivered by JetStream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sink.rows.lock().unwrap().clone();
        if rows == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the target differs after stealing stream sequences {stolen:?}: {} rows, source {}; \
             missing {:?}; gaps detected: {}",
            rows.len(),
            expected.len(),
            expected
                .iter()
                .filter(|(k, v)| rows.get(*k) != Some(*v))
                .take(10)
                .collect::<Vec<_>>(),
            metrics.delivery_gaps_total()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "stolen stream sequences {stolen:?}; gaps detected {}",
        metrics.delivery_gaps_total()
    );
    assert!(
        metrics.delivery_gaps_total() >= 1,
        "{} deliveries stolen, no gap counted",
        stolen.len()
    );
    assert!(
        metrics
            .render()
            .contains("walbrook_sink_delivery_gaps_total"),
        "{}",
        metrics.render()
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the runner stops")
        .unwrap()
        .unwrap();
}

/// Every event a sink was given, by id, in order (duplicates kept).
#[derive(Clone, Default)]
struct LogSink {
    ids: Arc<Mutex<Vec<i64>>>,
}

impl LogSink {
    fn ids(&self) -> Vec<i64> {
        self.ids.lock().unwrap().clone()
    }
}

impl Sink for LogSink {
    fn name(&self) -> &str {
        "log"
    }

    async fn checkpoint(&self, _consumer: &str) -> Result<Option<Position>, SinkError> {
        Ok(None)
    }

    async fn apply(&self, _consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        let mut ids = self.ids.lock().unwrap();
        for event in events {
            ids.push(event.after().unwrap().to_json()["id"].as_i64().unwrap());
        }
        Ok(Applied::default())
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The runner recreates its durable consumer (delete, then create) at every start. When the
/// creation fails — here a NATS user may delete consumers but not create them; a process
/// killed between the two steps leaves the same state — the next start finds no consumer. It
/// must resume after the acknowledged events anyway, not fall back to its `start` (with
/// `beginning` that replayed everything; with `new` it skipped what came meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_lost_while_being_recreated_resumes_where_it_was() {
    let nats = walbrook_harness::NatsServer::start_with_config(
        r#"
authorization {
  users: [
    { user: all, password: all }
    { user: nocreate, password: nocreate, permissions: {
        publish: { allow: [">"], deny: ["$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>"] }
        subscribe: { allow: [">"] } } }
  ]
}
no_auth_user: all
"#,
    )
    .unwrap();
    let setup = Setup::start_with_nats(
        "runresume",
        "CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)",
        "public.t",
        nats,
    )
    .await;
    setup
        .exec(&["INSERT INTO t SELECT g, 'before' FROM generate_series(1, 5) g"])
        .await;
    let consumer = "resumed";
    let run = |options: walbrook_client::ClientOptions, sink: LogSink| async move {
        let client = walbrook_client::Client::connect(options).await.unwrap();
        let mut runner = Runner::new(client, sink, RunnerOptions::new(consumer, ["public.t"]));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { runner.run(stop).await });
        (shutdown, task)
    };

    // 1. Applies and acknowledges rows 1-5.
    let first = LogSink::default();
    let (stop, task) = run(setup.options(), first.clone()).await;
    wait_for("rows 1-5 applied", async || first.ids().len() == 5).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    // 2. A start whose consumer creation fails after the delete.
    let mut limited = setup.options();
    limited.credentials = walbrook_client::Credentials::UserPassword {
        user: "nocreate".into(),
        password: "nocreate".into(),
    };
    let (stop, task) = run(limited, LogSink::default()).await;
    let js = async_nats::jetstream::new(async_nats::connect(setup.nats.url()).await.unwrap());
    let stream = js
        .get_stream(format!("{ROOT}_{}_WAL", setup.db.name()))
        .await
        .unwrap();
    wait_for("the consumer deleted", async || {
        stream.consumer_info(consumer).await.is_err()
    })
    .await;
    stop.cancel();
    let _ = task.await.unwrap();

    // 3. The next start (any start option) goes on after row 5.
    setup
        .exec(&["INSERT INTO t SELECT g, 'after' FROM generate_series(6, 8) g"])
        .await;
    let next = LogSink::default();
    let (stop, task) = run(setup.options(), next.clone()).await;
    wait_for("rows 6-8 applied", async || next.ids().len() >= 3).await;
    // Nothing else follows (row 9 is the marker that the runner moved past them).
    setup.exec(&["INSERT INTO t VALUES (9, 'marker')"]).await;
    wait_for("the marker applied", async || next.ids().contains(&9)).await;
    assert_eq!(next.ids(), [6, 7, 8, 9], "rows 1-5 were delivered again");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A sink whose applies wait until the gate opens.
#[derive(Clone)]
struct GateSink {
    open: tokio::sync::watch::Receiver<bool>,
    entered: Arc<std::sync::atomic::AtomicBool>,
    applied: Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink for GateSink {
    fn name(&self) -> &str {
        "gate"
    }

    async fn checkpoint(&self, _consumer: &str) -> Result<Option<Position>, SinkError> {
        Ok(None)
    }

    async fn apply(&self, _consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        self.entered
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        self.applied
            .fetch_add(events.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(Applied::default())
    }
}

/// `walbrook_sink_lag_seconds` as exported.
fn exported_lag(metrics: &walbrook_client::runner::RunnerMetrics) -> f64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with("walbrook_sink_lag_seconds{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the lag gauge is exported")
}

/// The lag gauge rises while a batch is stuck and falls to 0 once everything received is
/// applied (it kept the last batch's value, so an alert stayed red on an idle pipeline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_rises_while_stuck_and_is_zero_when_caught_up() {
    let setup = Setup::start(
        "runlag",
        "CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)",
        "public.t",
    )
    .await;
    let (gate, open) = tokio::sync::watch::channel(false);
    let sink = GateSink {
        open,
        entered: Arc::default(),
        applied: Arc::default(),
    };
    let mut runner = Runner::new(
        setup.client().await,
        sink.clone(),
        RunnerOptions::new("lag", ["public.t"]),
    );
    let metrics = runner.metrics();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await });
    assert_eq!(exported_lag(&metrics), 0.0, "nothing received yet");
    setup.exec(&["INSERT INTO t VALUES (1, 'stuck')"]).await;
    wait_for("the sink is given the event", async || {
        sink.entered.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    wait_for("the lag of a stuck batch passes 1.5 s", async || {
        exported_lag(&metrics) > 1.5
    })
    .await;
    gate.send(true).unwrap();
    wait_for("the event applied", async || {
        sink.applied.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    wait_for("the lag back to 0 while idle", async || {
        exported_lag(&metrics) == 0.0
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
