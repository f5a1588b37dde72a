//! Prometheus metrics and the health endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Metrics never carry row values: labels are table names and operations only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the per-table event counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `schema.table`.
    pub table: String,
    /// Operation (`insert`, `update`, …).
    pub op: String,
}

/// Labels naming a table.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `schema.table`.
    pub table: String,
}

/// Labels naming what a counter is about.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `postgres`, `nats`, or an error kind.
    pub kind: String,
}

/// The producer's metrics (cheap to clone: shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Events published, by table and operation.
    pub events: Family<EventLabels, Counter>,
    /// Change messages published, by table (one carries one or several events,
    /// docs/protocol.md §3.6).
    pub messages: Family<TableLabels, Counter>,
    /// Seconds from a publish to its JetStream ack.
    pub ack_latency: Histogram,
    /// Un-acked publishes.
    pub in_flight: Gauge,
    /// The confirmed (flushed) LSN, as a number.
    pub confirmed_lsn: Gauge<f64, AtomicU64>,
    /// Bytes of WAL the server has sent beyond the confirmed LSN.
    pub lag_bytes: Gauge<f64, AtomicU64>,
    /// Seconds between the source time of the last WAL record decoded (a commit, or a
    /// heartbeat: the producer's own timestamped logical message) and its decoding; once no
    /// record came for two heartbeat intervals, the time since that record's source time
    /// (computed when scraped: it rises while the producer is stuck). Set through
    /// [`Metrics::decoded`].
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// Source and receipt times of the last decoded record, and the stall threshold.
    progress: Arc<Progress>,
    /// Reconnects, by `kind` (`postgres`, `nats`).
    pub reconnects: Family<KindLabels, Counter>,
    /// Errors, by kind.
    pub errors: Family<KindLabels, Counter>,
    /// Publishes re-sent after a failed or missing ack.
    pub resends: Counter,
    /// Events whose payload went to the object store (larger than `max_payload`).
    pub large_payloads: Counter,
    /// Snapshots running now.
    pub snapshots_running: Gauge,
    /// Snapshot rows published (acknowledged), by table.
    pub snapshot_rows: Family<TableLabels, Counter>,
    /// Snapshots finished, by outcome (`done`, `failed`).
    pub snapshots: Family<KindLabels, Counter>,
    /// WAL the slot holds back (from its `restart_lsn`), read on a side connection with
    /// every heartbeat, also while replication is down.
    pub slot_retained_wal_bytes: Gauge<f64, AtomicU64>,
    /// The slot's `safe_wal_size`: WAL that may still be written before it is invalidated;
    /// -1 when `max_slot_wal_keep_size` is unlimited.
    pub slot_safe_wal_bytes: Gauge<f64, AtomicU64>,
    /// 1 when the slot is invalidated (`wal_status = 'lost'`), else 0.
    pub slot_lost: Gauge,
    /// Configured tables that no longer exist (dropped or renamed after their changes were
    /// published); the others stream.
    pub dropped_tables: Gauge,
    ready: Arc<AtomicBool>,
    /// When JetStream started refusing or not answering publishes (µs since the epoch; 0:
    /// it acknowledges), for `/readyz`.
    publish_failing_since: Arc<std::sync::atomic::AtomicI64>,
    /// An RPC service that stopped answering (its name), for `/readyz`.
    dead_service: Arc<std::sync::Mutex<Option<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("walbrook_producer");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Change events published, by table and operation",
            events.clone(),
        );
        let messages = Family::<TableLabels, Counter>::default();
        registry.register(
            "messages",
            "Change messages published, by table (a message carries one or several events)",
            messages.clone(),
        );
        let ack_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "publish_ack_seconds",
            "Seconds from publishing an event to its JetStream acknowledgement",
            ack_latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_acks",
            "Publishes not yet acknowledged",
            in_flight.clone(),
        );
        let confirmed_lsn = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "confirmed_lsn",
            "The LSN confirmed to PostgreSQL (everything before it is stored in JetStream)",
            confirmed_lsn.clone(),
        );
        let lag_bytes = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "replication_lag_bytes",
            "WAL bytes sent by the server beyond the confirmed LSN",
            lag_bytes.clone(),
        );
        let slot_retained_wal_bytes = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "slot_retained_wal_bytes",
            "WAL bytes the replication slot holds back (current WAL position minus its \
             restart_lsn), read with every heartbeat",
            slot_retained_wal_bytes.clone(),
        );
        let slot_safe_wal_bytes = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "slot_safe_wal_bytes",
            "WAL bytes that may still be written before the slot is invalidated \
             (safe_wal_size; -1 when max_slot_wal_keep_size is unlimited)",
            slot_safe_wal_bytes.clone(),
        );
        let slot_lost = Gauge::default();
        registry.register(
            "slot_lost",
            "1 when the replication slot is invalidated (wal_status lost): a gap, refused at \
             the next start",
            slot_lost.clone(),
        );
        let dropped_tables = Gauge::default();
        registry.register(
            "dropped_tables",
            "Configured tables that no longer exist (dropped or renamed after their changes were \
             published): the producer streams the others",
            dropped_tables.clone(),
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "replication_lag_seconds",
            "Seconds between the latest transaction's commit and its decoding",
            lag_seconds.clone(),
        );
        let reconnects = Family::<KindLabels, Counter>::default();
        registry.register("reconnects", "Reconnects, by server", reconnects.clone());
        let errors = Family::<KindLabels, Counter>::default();
        registry.register("errors", "Errors, by kind", errors.clone());
        let resends = Counter::default();
        registry.register(
            "resends",
            "Publishes re-sent after a failed or missing acknowledgement",
            resends.clone(),
        );
        let large_payloads = Counter::default();
        registry.register(
            "large_payloads",
            "Events larger than the server's max_payload, stored in the object store",
            large_payloads.clone(),
        );
        let snapshots_running = Gauge::default();
        registry.register(
            "snapshots_running",
            "Snapshots being published",
            snapshots_running.clone(),
        );
        let snapshot_rows = Family::<TableLabels, Counter>::default();
        registry.register(
            "snapshot_rows",
            "Snapshot rows published and acknowledged, by table",
            snapshot_rows.clone(),
        );
        let snapshots = Family::<KindLabels, Counter>::default();
        registry.register(
            "snapshots",
            "Snapshots finished, by outcome (done, failed)",
            snapshots.clone(),
        );
        Metrics {
            snapshots_running,
            snapshot_rows,
            snapshots,
            registry: Arc::new(registry),
            events,
            messages,
            ack_latency,
            in_flight,
            confirmed_lsn,
            lag_bytes,
            slot_retained_wal_bytes,
            slot_safe_wal_bytes,
            slot_lost,
            dropped_tables,
            lag_seconds,
            reconnects,
            errors,
            resends,
            large_payloads,
            ready: Arc::new(AtomicBool::new(false)),
            publish_failing_since: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            dead_service: Arc::new(std::sync::Mutex::new(None)),
            progress: Arc::new(Progress::default()),
        }
    }

    /// A WAL record whose source time is `source_micros` (µs since the Unix epoch: a
    /// commit's timestamp, a heartbeat's write time) was decoded now.
    pub fn decoded(&self, source_micros: i64) {
        let now = now_micros();
        self.progress
            .source_micros
            .store(source_micros, Ordering::Relaxed);
        self.progress.receipt_micros.store(now, Ordering::Relaxed);
        self.lag_seconds
            .set((now - source_micros).max(0) as f64 / 1e6);
    }

    /// How long without a decoded record counts as stuck (twice the heartbeat interval);
    /// zero: never (heartbeats off).
    pub fn set_stall_after(&self, after: std::time::Duration) {
        let micros = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
        self.progress
            .stall_after_micros
            .store(micros, Ordering::Relaxed);
    }

    /// The replication lag in seconds as exported (see [`Metrics::lag_seconds`]).
    pub fn replication_lag_seconds(&self) -> f64 {
        let p = &self.progress;
        let (source, receipt) = (
            p.source_micros.load(Ordering::Relaxed),
            p.receipt_micros.load(Ordering::Relaxed),
        );
        let stall_after = p.stall_after_micros.load(Ordering::Relaxed);
        let now = now_micros();
        if receipt > 0 && stall_after > 0 && now - receipt > stall_after {
            (now - source).max(0) as f64 / 1e6
        } else {
            self.lag_seconds.get()
        }
    }

    /// Marks the producer ready (streaming) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Publishing fails (`true`, from the first failure on) or works again (`false`).
    pub fn publish_failing(&self, failing: bool) {
        let since = &self.publish_failing_since;
        if !failing {
            since.store(0, Ordering::SeqCst);
        } else if since.load(Ordering::SeqCst) == 0 {
            since.store(now_micros(), Ordering::SeqCst);
        }
    }

    /// An RPC service (`name`) stopped: the producer is not ready any more.
    pub fn service_stopped(&self, name: &str) {
        *self.dead_service.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.to_string());
    }

    /// Why the producer is not ready, `None` when it is: not streaming, JetStream failing
    /// for longer than [`NOT_READY_AFTER`], or an RPC service stopped.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(service) = self
            .dead_service
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(format!("the {service} service stopped"));
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Some("not streaming".into());
        }
        let since = self.publish_failing_since.load(Ordering::SeqCst);
        if since > 0 && now_micros() - since > NOT_READY_AFTER.as_micros() as i64 {
            return Some(format!(
                "JetStream has not acknowledged a publish for {} s (the producer retries; \
                 nothing after the last acknowledged change is confirmed)",
                (now_micros() - since) / 1_000_000
            ));
        }
        None
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.lag_seconds.set(self.replication_lag_seconds());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }
}

/// How long JetStream may fail to acknowledge before `/readyz` says not ready.
pub const NOT_READY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `/metrics`, `/healthz` (the process is alive) and `/readyz` (replication is
/// streaming, JetStream acknowledged within [`NOT_READY_AFTER`] when there is work, the RPC
/// services run) on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let for_metrics = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = for_metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let not_ready = metrics.not_ready();
                async move {
                    match not_ready {
                        None => (StatusCode::OK, "ready".to_string()),
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grafana_dashboard_only_uses_metrics_that_exist() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/grafana/walbrook-producer.json"))
                .expect("the dashboard is valid JSON");
        let metrics = Metrics::new();
        // Label families render only once they have a member.
        metrics
            .events
            .get_or_create(&EventLabels {
                table: "t".into(),
                op: "insert".into(),
            })
            .inc();
        metrics.error("x");
        metrics
            .reconnects
            .get_or_create(&KindLabels { kind: "x".into() })
            .inc();
        let rendered = metrics.render();
        let exported: Vec<&str> = rendered
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let mut checked = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if let Some(name) = word.strip_prefix("walbrook_producer_") {
                        let base = name.trim_end_matches("_bucket").trim_end_matches("_total");
                        let full = format!("walbrook_producer_{base}");
                        assert!(
                            exported.contains(&full.as_str()),
                            "{word} is not exported: {exported:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 8, "only {checked} metric references found");
    }

    #[test]
    fn renders_counters_with_labels() {
        let metrics = Metrics::new();
        metrics
            .events
            .get_or_create(&EventLabels {
                table: "public.t".into(),
                op: "insert".into(),
            })
            .inc_by(3);
        metrics.error("encode");
        let text = metrics.render();
        assert!(
            text.contains("walbrook_producer_events_total{table=\"public.t\",op=\"insert\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("walbrook_producer_errors_total{kind=\"encode\"} 1"),
            "{text}"
        );
    }
}

/// See [`Metrics::decoded`].
#[derive(Debug, Default)]
struct Progress {
    source_micros: std::sync::atomic::AtomicI64,
    receipt_micros: std::sync::atomic::AtomicI64,
    stall_after_micros: std::sync::atomic::AtomicI64,
}

pub(crate) fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}
