//! The sink conformance suite (docs/sinks.md, "The sink contract"): one set of checks every
//! sink passes, against a real producer. A sink's test crate includes this file with
//! `#[path = "../../client/tests/sink_conformance/mod.rs"] mod sink_conformance;` next to the
//! client's `tests/common` (as `mod common;`), and gives a way to observe its target.
//!
//! The source table is `conf (id int PRIMARY KEY, note text)`; a target is observed as the map
//! id → note it holds.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use walbrook_client::runner::{
    Applied, Binding, Ordering, Position, Runner, RunnerMetrics, RunnerOptions, Sink, SinkError,
    list_dead_letters,
};
use walbrook_client::{ChangeEvent, Client, PgValue, Start, Subscription};

use crate::common::Setup;

/// The source table of the suite.
pub const DDL: &str = "CREATE TABLE conf (id int PRIMARY KEY, note text)";
/// Its pattern.
pub const TABLE: &str = "public.conf";

/// What a target holds: id → note.
pub type State = BTreeMap<i64, String>;

/// How the suite reads a sink's target.
pub trait Observe {
    /// The rows (documents, folded deliveries…) the target holds now.
    fn state(&self) -> impl std::future::Future<Output = State> + Send;
}

/// A sink wrapper that fails the first `transient` apply calls with a transient error and
/// rejects every event whose note is `poison`.
pub struct Faulty<S> {
    pub inner: S,
    pub transient: usize,
    pub calls: Arc<AtomicUsize>,
}

fn note(event: &ChangeEvent) -> Option<String> {
    match event.after().and_then(|r| r.get("note")) {
        Some(PgValue::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

impl<S: Sink> Sink for Faulty<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn ordering(&self) -> Ordering {
        self.inner.ordering()
    }

    fn bind(&mut self, binding: &Binding) {
        self.inner.bind(binding);
    }

    async fn checkpoint(&self, consumer: &str) -> Result<Option<Position>, SinkError> {
        self.inner.checkpoint(consumer).await
    }

    async fn store_checkpoint(&self, consumer: &str, position: Position) -> Result<(), SinkError> {
        self.inner.store_checkpoint(consumer, position).await
    }

    async fn apply(&self, consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        let call = self.calls.fetch_add(1, AtomicOrdering::SeqCst);
        if call < self.transient {
            return Err(SinkError::transient(format!("injected failure {call}")));
        }
        if let Some(i) = events
            .iter()
            .position(|e| note(e).as_deref() == Some("poison"))
        {
            return Err(SinkError::rejected(i, "injected rejection: poison"));
        }
        self.inner.apply(consumer, events).await
    }
}

async fn wait_state<O: Observe>(target: &O, expected: &State, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = target.state().await;
        if &state == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: target holds {state:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state(pairs: &[(i64, &str)]) -> State {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Reads `n` events of the suite's table from the beginning (no consumer state).
async fn read_events(client: &Client, n: usize) -> Vec<ChangeEvent> {
    let mut stream = client
        .subscribe(Subscription::table(TABLE).start(Start::Beginning))
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("events within 20 s")
            .expect("the stream goes on")
            .expect("events decode");
        out.push(event);
    }
    out
}

/// Runs every check of the contract against `sink` (a fresh target for the suite's table).
/// `setup` is a producer publishing `public.conf` (created with [`DDL`]).
pub async fn run<S, O, F>(setup: &Setup, make_sink: impl Fn() -> F, target: &O)
where
    S: Sink + 'static,
    O: Observe,
    F: std::future::Future<Output = S>,
{
    let client = setup.client().await;
    setup
        .exec(&[
            "INSERT INTO conf SELECT g, 'a' FROM generate_series(1, 5) g",
            "BEGIN; UPDATE conf SET note = 'b' WHERE id = 1; UPDATE conf SET note = 'c' WHERE id = 1; \
             DELETE FROM conf WHERE id = 2; UPDATE conf SET id = 30 WHERE id = 3; COMMIT",
            "BEGIN; INSERT INTO conf VALUES (6, 'x'); UPDATE conf SET note = 'y' WHERE id = 6; \
             DELETE FROM conf WHERE id = 6; INSERT INTO conf VALUES (6, 'z'); COMMIT",
        ])
        .await;
    let expected = state(&[(1, "c"), (4, "a"), (5, "a"), (6, "z"), (30, "a")]);
    let events = read_events(&client, 5 + 4 + 4).await;

    // 1. Per-key order: the events applied in stream order, one batch per transaction, give
    //    the source's rows (several changes of one key in one batch, a key change, a key
    //    deleted and inserted again).
    // Bound as a runner binds it (the source database keys a stored checkpoint).
    let mut sink = make_sink().await;
    sink.bind(&Binding::new(
        setup.db.name(),
        Arc::new(RunnerMetrics::new(sink.name(), "conformance")),
    ));
    for batch in [&events[0..5], &events[5..9], &events[9..13]] {
        let applied = sink.apply("conformance", batch).await.unwrap();
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    }
    wait_state(target, &expected, "in-order apply").await;

    // 2. Idempotent under redelivery: everything again (a crash between the write and the
    //    acknowledgement), as one batch, changes nothing; or the sink's checkpoint already
    //    covers it and the runner would skip it.
    let covered = sink
        .checkpoint("conformance")
        .await
        .unwrap()
        .is_some_and(|c| c >= Position::of(&events[12]));
    if !covered {
        sink.apply("conformance", &events).await.unwrap();
        // Partial redelivery: the second half again.
        sink.apply("conformance", &events[5..]).await.unwrap();
    }
    wait_state(target, &expected, "redelivery").await;

    // 3. Acknowledged only once durable: the runner's first applies fail; meanwhile nothing
    //    is acknowledged and the change is not in the target; then it is, and it is acked.
    let calls = Arc::new(AtomicUsize::new(0));
    let faulty = Faulty {
        inner: make_sink().await,
        transient: 3,
        calls: calls.clone(),
    };
    let mut options = RunnerOptions::new("conformance_runner", [TABLE]);
    options.start = Start::CommitPosition(walbrook_client::Lsn(events[12].commit_lsn().0 + 1));
    options.retry.initial = Duration::from_millis(300);
    options.retry.max = Duration::from_millis(300);
    let mut runner = Runner::new(client.clone(), faulty, options);
    let metrics = runner.metrics();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    setup
        .exec(&["UPDATE conf SET note = 'd' WHERE id = 1"])
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while calls.load(AtomicOrdering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let baseline = events[12].stream_sequence();
    let floor = setup.js_consumer_ack_floor("conformance_runner").await;
    assert!(
        floor <= baseline,
        "nothing acknowledged while the sink fails ({floor})"
    );
    assert_eq!(
        target.state().await,
        expected,
        "nothing applied while failing"
    );
    let mut expected = expected;
    expected.insert(1, "d".into());
    wait_state(target, &expected, "after the retries").await;
    assert!(metrics.retries_total() >= 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while setup.js_consumer_ack_floor("conformance_runner").await <= baseline {
        assert!(tokio::time::Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 4. Partial failure: a rejected event goes to the dead-letter subject with its
    //    diagnostics; the other events of its batch (and after) are applied.
    setup
        .exec(&[
            "BEGIN; INSERT INTO conf VALUES (7, 'ok'); INSERT INTO conf VALUES (8, 'poison'); \
                 INSERT INTO conf VALUES (9, 'ok'); COMMIT",
        ])
        .await;
    expected.insert(7, "ok".into());
    expected.insert(9, "ok".into());
    wait_state(target, &expected, "around a rejected event").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let letters = list_dead_letters(&client, "conformance_runner")
            .await
            .unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert!(letter.error.contains("poison"), "{}", letter.error);
    assert_eq!(letter.subject, setup.wal_subject("public", "conf"));
    assert!(letter.stream_sequence.is_some());
    assert_eq!(
        letter.event.as_ref().unwrap()["after"]["note"].as_str(),
        Some("poison")
    );
    assert_eq!(metrics.dead_letters_total(), 1);
    shutdown.cancel();
    task.await.unwrap();

    // 5. Re-drive: replaying the dead letters through a working sink applies them and
    //    empties the dead-letter subject.
    let mut replayer = Runner::new(
        client.clone(),
        make_sink().await,
        RunnerOptions::new("conformance_runner", [TABLE]),
    );
    assert_eq!(replayer.replay_dead_letters().await.unwrap(), (1, 0));
    expected.insert(8, "poison".into());
    wait_state(target, &expected, "after the replay").await;
    assert!(
        list_dead_letters(&client, "conformance_runner")
            .await
            .unwrap()
            .is_empty()
    );
}
