//! The runner's metrics (Prometheus text format): applied events, lag, batch latency,
//! retries, dead letters; and the health flag behind `/healthz`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Counters of one runner. Cheap to update from the run loop; [`RunnerMetrics::render`]
/// gives the Prometheus text exposition.
#[derive(Debug)]
pub struct RunnerMetrics {
    registry: Registry,
    applied: Counter,
    skipped: Counter,
    dead_letters: Counter,
    retries: Counter,
    batches: Counter,
    delivery_gaps: Counter,
    unverified: Counter,
    batch_seconds: Histogram,
    lag_seconds: Gauge<f64, AtomicU64>,
    position: Gauge,
    healthy: AtomicBool,
    applied_total: AtomicU64,
    dead_letters_total: AtomicU64,
    retries_total: AtomicU64,
    delivery_gaps_total: AtomicU64,
    target_waits: Counter,
    target_waits_total: AtomicU64,
    /// Commit time (µs since the epoch) of the oldest received, unapplied event; 0: none.
    behind_since_micros: std::sync::atomic::AtomicI64,
}

impl RunnerMetrics {
    /// Metrics labelled with the sink and consumer names.
    pub fn new(sink: &str, consumer: &str) -> RunnerMetrics {
        let mut registry = Registry::with_prefix_and_labels(
            "walbrook_sink",
            [
                ("sink".into(), sink.to_owned().into()),
                ("consumer".into(), consumer.to_owned().into()),
            ]
            .into_iter(),
        );
        let applied = Counter::default();
        let skipped = Counter::default();
        let dead_letters = Counter::default();
        let retries = Counter::default();
        let batches = Counter::default();
        let delivery_gaps = Counter::default();
        let unverified = Counter::default();
        let target_waits = Counter::default();
        let batch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        let position = Gauge::default();
        registry.register(
            "applied_events",
            "Events applied to the target",
            applied.clone(),
        );
        registry.register(
            "skipped_events",
            "Redelivered events skipped because the target already holds them",
            skipped.clone(),
        );
        registry.register(
            "dead_letters",
            "Events sent to the dead-letter subject",
            dead_letters.clone(),
        );
        registry.register("retries", "Retried batch attempts", retries.clone());
        registry.register("batches", "Batches applied", batches.clone());
        registry.register(
            "delivery_gaps",
            "Holes in the durable consumer's delivery sequence (the consumer was recreated after \
             the last applied event)",
            delivery_gaps.clone(),
        );
        registry.register(
            "unverified_continuity",
            "Change messages whose predecessor on their subject the producer could not name \
             (`Walbrook-Previous: unknown`, after every earlier message of the table left the \
             stream): whether a message was lost before them is not known",
            unverified.clone(),
        );
        registry.register(
            "target_waits",
            "Requests a sink sent again because its target refused them for a reason that is \
             not the event's (unreachable, overloaded, redirecting, unauthorised): delivery \
             waits, nothing is dead-lettered",
            target_waits.clone(),
        );
        registry.register(
            "batch_seconds",
            "Time to apply a batch durably, retries included",
            batch_seconds.clone(),
        );
        registry.register(
            "lag_seconds",
            "Seconds since the commit of the oldest event received and not yet applied (0 when \
             everything received is applied)",
            lag_seconds.clone(),
        );
        registry.register(
            "commit_lsn",
            "Commit LSN of the last applied event",
            position.clone(),
        );
        RunnerMetrics {
            registry,
            applied,
            skipped,
            dead_letters,
            retries,
            batches,
            delivery_gaps,
            unverified,
            batch_seconds,
            lag_seconds,
            position,
            healthy: AtomicBool::new(false),
            applied_total: AtomicU64::new(0),
            dead_letters_total: AtomicU64::new(0),
            retries_total: AtomicU64::new(0),
            delivery_gaps_total: AtomicU64::new(0),
            target_waits,
            target_waits_total: AtomicU64::new(0),
            behind_since_micros: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// A sink sent a request again because its target refused it for a reason that is not
    /// the event's (see [`Sink::bind`](super::Sink::bind)): counts it and
    /// marks the runner unhealthy until the batch is applied.
    pub fn target_waiting(&self) {
        self.target_waits.inc();
        self.target_waits_total.fetch_add(1, Ordering::Relaxed);
        self.set_healthy(false);
    }

    /// Requests sent again by the sink while its target refused or was unreachable.
    pub fn target_waits_total(&self) -> u64 {
        self.target_waits_total.load(Ordering::Relaxed)
    }

    pub(crate) fn applied(&self, n: u64, commit_lsn: u64) {
        self.applied.inc_by(n);
        self.applied_total.fetch_add(n, Ordering::Relaxed);
        self.position
            .set(i64::try_from(commit_lsn).unwrap_or(i64::MAX));
    }

    pub(crate) fn skipped(&self, n: u64) {
        self.skipped.inc_by(n);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_letters.inc();
        self.dead_letters_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.retries.inc();
        self.retries_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delivery_gap(&self) {
        self.delivery_gaps.inc();
        self.delivery_gaps_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unverified_continuity(&self) {
        self.unverified.inc();
    }

    pub(crate) fn batch(&self, took: Duration) {
        self.batches.inc();
        self.batch_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether the runner is subscribed and its last apply succeeded (`/healthz`).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Events applied so far.
    pub fn applied_total(&self) -> u64 {
        self.applied_total.load(Ordering::Relaxed)
    }

    /// Events dead-lettered so far.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters_total.load(Ordering::Relaxed)
    }

    /// Retried attempts so far.
    pub fn retries_total(&self) -> u64 {
        self.retries_total.load(Ordering::Relaxed)
    }

    /// Delivery-sequence gaps detected so far (each made the runner recreate its consumer).
    pub fn delivery_gaps_total(&self) -> u64 {
        self.delivery_gaps_total.load(Ordering::Relaxed)
    }

    /// The runner works on events whose oldest was committed at `commit_time` (microseconds
    /// since the Unix epoch): the lag is the time since then, growing while they are not
    /// applied.
    pub(crate) fn behind_since(&self, commit_time: chrono::DateTime<chrono::Utc>) {
        self.behind_since_micros
            .store(commit_time.timestamp_micros().max(1), Ordering::Relaxed);
    }

    /// The runner has applied everything it received and waits for more: no lag.
    pub(crate) fn caught_up(&self) {
        self.behind_since_micros.store(0, Ordering::Relaxed);
    }

    /// Seconds between now and the commit of the oldest event the runner has received but
    /// not applied; 0 while it waits for new events.
    pub fn lag_seconds(&self) -> f64 {
        match self.behind_since_micros.load(Ordering::Relaxed) {
            0 => 0.0,
            since => {
                let now = chrono::Utc::now().timestamp_micros();
                (now - since).max(0) as f64 / 1e6
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        // The lag is computed when scraped: it keeps growing while a batch is stuck, and is 0
        // once everything received is applied.
        self.lag_seconds.set(self.lag_seconds());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
