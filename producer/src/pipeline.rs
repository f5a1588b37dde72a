//! The producer's main loop: replication → encode → publish → confirm.
//!
//! ```text
//!  PostgreSQL walsender                         NATS JetStream
//!        │ pgoutput (pgwire-replication worker: answers keepalives on its own)
//!        ▼
//!  ReplicationStream ──► handle(): Begin/Relation/Insert/…/Commit
//!        ▲                  │ TableEncoder (Avro envelope, single-object)
//!        │ confirm(lsn)     ▼
//!        └────────────── Publisher (bounded window, in-order acks, Confirm markers)
//! ```
//!
//! Rules this loop keeps:
//! * **Durable means acked.** A transaction's commit `end_lsn` is pushed into the
//!   publisher's window as a confirm marker after its events; the flush position sent
//!   to PostgreSQL is the publisher's confirmed LSN, never more.
//! * **Bounded memory.** Events are published as they are decoded (a 1M-row
//!   transaction never sits in memory); only one event is held back, so that the
//!   transaction's last event can carry `last = true`, plus the open shared message.
//! * **Several events per message, cut by the events alone.** Consecutive events of one
//!   transaction, table, operation and table version share a change message
//!   (docs/protocol.md §3.6) up to `publish.batch_events` events or 256 KiB; the message
//!   is closed at the commit or when the next event does not belong in it or fit. The
//!   cut never depends on timing, so a replay of the same WAL cuts the same messages
//!   with the same `Nats-Msg-Id`s; PostgreSQL sends a committed transaction's changes
//!   back to back, so this adds no latency.
//! * **Deterministic identities.** `Nats-Msg-Id` = commit LSN + ordinal. After a
//!   reconnect or restart, events at or below the newest stored (or pushed) position
//!   are skipped, and JetStream's duplicate window covers the rest.
//! * **Stop, don't drop.** A change that cannot be encoded ends the run with an error
//!   naming table, column and type; its LSN is never confirmed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use walbrook_pgtype_avro::Fingerprint;

use crate::catalog::Catalog;
use crate::chain::Chains;
use crate::config::{NatsAuth, NatsConfig, ProducerConfig, redact_url};
use crate::event::{EncodeError, Op, Source, TableEncoder};
use crate::large_payload::{LargePayloadError, LargePayloads};
use crate::lsn::{FullXid, Lsn};
use crate::metrics::{Metrics, now_micros};
use crate::pgoutput::{self, Message, Oid, Tuple};
use crate::postgres::PgSettings;
use crate::publish::{OutMessage, PublishFailure, Publisher, RetryPolicy, context_for};
use crate::registry::{self, Registry};
use crate::replication::{ConnectionTarget, ReplicationError, ReplicationStream, StreamItem};
use crate::setup;
use crate::streams::{self, StreamError, headers};
use crate::subject::{StreamKind, Subjects};
use crate::tables;
use walbrook_protocol::{MessageId, batch};

/// How often a standby producer tries to take the slot over.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Prefix of the heartbeat messages the producer writes into the WAL.
pub const HEARTBEAT_PREFIX: &str = "walbrook.heartbeat";

/// Why the producer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// Prerequisites are not met (each problem with its fix).
    #[error("prerequisites not met:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Setup(Vec<setup::SetupProblem>),
    /// A SQL connection or query failed.
    #[error("PostgreSQL ({context}): {detail}")]
    Postgres {
        /// What the producer was doing.
        context: &'static str,
        /// The error.
        detail: String,
    },
    /// Connecting to NATS failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// A stream could not be set up.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Publishing failed definitely.
    #[error(transparent)]
    Publish(#[from] PublishFailure),
    /// A change could not be encoded.
    #[error("cannot encode a change, stopping without confirming it: {0}")]
    Encode(#[from] EncodeError),
    /// The replication stream failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// An oversized payload could not be stored in the object store (retryable: the
    /// producer resumes from the slot and tries again).
    #[error(transparent)]
    LargePayload(#[from] LargePayloadError),
    /// pgoutput broke an invariant (e.g. a change outside a transaction).
    #[error("unexpected replication message: {0}")]
    Protocol(String),
    /// A stop waited `shutdown_timeout` for acknowledgements that did not come (JetStream
    /// unreachable or refusing): those changes are not confirmed, and a restart publishes
    /// them again from the slot.
    #[error(
        "stopped after waiting {waited:?} for JetStream to acknowledge {unacknowledged} \
         message(s); the slot is confirmed up to {confirmed} only, so the changes after it \
         are published again at the next start (shutdown_timeout)"
    )]
    ShutdownTimeout {
        /// How long the stop waited.
        waited: Duration,
        /// Messages still unacknowledged.
        unacknowledged: usize,
        /// What the slot was confirmed to.
        confirmed: Lsn,
    },
}

impl ProducerError {
    /// Whether running again may succeed without operator action (transient network or
    /// server trouble).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProducerError::Replication(e) => e.is_retryable(),
            ProducerError::Postgres { .. }
            | ProducerError::Nats(_)
            | ProducerError::LargePayload(_) => true,
            ProducerError::Publish(e) => !e.is_definite(),
            ProducerError::Stream(e) => e.is_retryable(),
            _ => false,
        }
    }
}

fn pg_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> ProducerError {
    move |e| ProducerError::Postgres {
        context,
        detail: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// Opens a SQL connection whose connection task runs in the background.
/// TLS follows the URL's libpq parameters ([`crate::postgres`]).
pub async fn connect_sql(url: &str) -> Result<Client, ProducerError> {
    let settings = PgSettings::parse(url).map_err(|detail| ProducerError::Postgres {
        context: "reading postgres.url",
        detail,
    })?;
    settings
        .connect()
        .await
        .map_err(|detail| ProducerError::Postgres {
            context: "connecting",
            detail,
        })
}

/// Connects to NATS with the configured credentials and TLS.
pub async fn connect_nats(config: &NatsConfig) -> Result<async_nats::Client, ProducerError> {
    // async-nats builds its TLS config with rustls' process-wide provider, which rustls
    // cannot pick by itself when both of its backends are compiled in (pgwire-replication
    // enables aws-lc-rs, async-nats ring). Walbrook uses ring everywhere; installing it
    // is idempotent (an error only means a provider is already installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = match &config.auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(
                user.clone(),
                password.expose().to_string(),
            )
        }
        NatsAuth::Token(token) => {
            async_nats::ConnectOptions::with_token(token.expose().to_string())
        }
        NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| ProducerError::Nats(format!("reading {}: {e}", path.display())))?,
        NatsAuth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.expose().to_string()),
    };
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options
        .name("walbrook-producer")
        .connect(config.servers.as_slice())
        .await
        .map_err(|e| {
            ProducerError::Nats(format!("connecting to {}: {e}", config.servers.join(",")))
        })
}

/// Runs the producer until `shutdown` is cancelled (then drains, confirms and returns
/// `Ok`) or a definite error stops it. Serves metrics on `metrics_addr` if configured.
pub async fn run(config: ProducerConfig, shutdown: CancellationToken) -> Result<(), ProducerError> {
    run_with_metrics(config, shutdown, Metrics::new()).await
}

/// [`run`] with caller-provided metrics (tests read them).
pub async fn run_with_metrics(
    config: ProducerConfig,
    shutdown: CancellationToken,
    metrics: Metrics,
) -> Result<(), ProducerError> {
    metrics.set_stall_after(config.heartbeat_interval.saturating_mul(2));
    let server = config.metrics_addr.map(|addr| {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, metrics).await {
                tracing::error!(%addr, error = %e, "cannot serve metrics");
            }
        })
    });
    if let Some(addr) = config.metrics_addr {
        tracing::info!("metrics on http://{addr}/metrics, health on /healthz and /readyz");
    }
    let result = run_inner(config, shutdown, metrics.clone()).await;
    if let Err(e) = &result {
        metrics.error(error_kind(e));
    }
    if let Some(server) = server {
        server.abort();
    }
    result
}

fn error_kind(error: &ProducerError) -> &'static str {
    match error {
        ProducerError::Setup(_) => "setup",
        ProducerError::Postgres { .. } => "postgres",
        ProducerError::Nats(_) | ProducerError::Stream(_) | ProducerError::LargePayload(_) => {
            "nats"
        }
        ProducerError::Publish(_) => "publish",
        ProducerError::Encode(_) => "encode",
        ProducerError::Replication(_) => "replication",
        ProducerError::Protocol(_) => "protocol",
        ProducerError::ShutdownTimeout { .. } => "shutdown_timeout",
    }
}

async fn run_inner(
    mut config: ProducerConfig,
    shutdown: CancellationToken,
    metrics: Metrics,
) -> Result<(), ProducerError> {
    let pg_url = config.pg_url.expose().to_string();
    tracing::info!(postgres = %redact_url(&pg_url), nats = %config.nats.servers.join(","), "starting");
    if let Some(warning) = PgSettings::parse(&pg_url)
        .ok()
        .and_then(|settings| settings.tls_warning())
    {
        tracing::warn!("postgres.url: {warning}");
    }
    if let Some(warning) = config.nats.tls_warning() {
        tracing::warn!("nats: {warning}");
    }
    let sql = Arc::new(connect_sql(&pg_url).await?);
    // A configured table dropped since it was published stops nothing: the others stream.
    let dropped = setup::dropped_tables(&sql, &config)
        .await
        .map_err(|p| ProducerError::Setup(vec![p]))?;
    for table in &dropped {
        tracing::warn!(
            %table,
            "a configured table no longer exists (dropped or renamed since its changes were \
             published): streaming the others; remove it from `tables`"
        );
    }
    metrics.dropped_tables.set(dropped.len() as i64);
    config.tables.retain(|t| !dropped.contains(t));
    let problems = setup::check(&sql, &config).await;
    if !problems.is_empty() {
        return Err(ProducerError::Setup(problems));
    }
    // NATS before the slot: a slot created for a producer that cannot publish would
    // only retain WAL.
    let nats = connect_nats(&config.nats).await?;
    // One transaction, serialized by an advisory lock: two producers starting at once
    // (active and standby) must not race on CREATE OR REPLACE FUNCTION.
    sql.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('walbrook.setup'));{}{}",
        registry::SETUP_SQL,
        tables::SQL_API
    ))
    .await
    .map_err(pg_error("creating the _walbrook schema and SQL API"))?;
    let published = tables::published_set(&sql, &config)
        .await
        .map_err(|p| ProducerError::Setup(vec![p]))?;
    let mut problems = Vec::new();
    for table in &published[config.tables.len()..] {
        if let Err(p) = setup::check_table(&sql, table).await {
            problems.push(p);
        }
    }
    if !problems.is_empty() {
        return Err(ProducerError::Setup(problems));
    }
    setup::ensure_publication(&sql, &config, &published)
        .await
        .map_err(|p| ProducerError::Setup(vec![p]))?;
    let database: String = sql
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(pg_error("reading the database name"))?
        .get(0);
    let subjects = Subjects::new(&config.root, &database);

    let js = context_for(
        nats.clone(),
        config.nats.max_inflight,
        config.nats.ack_timeout,
    );
    let mut wal_stream = None;
    for (kind, what) in [
        (StreamKind::Wal, "change events"),
        (StreamKind::Schema, "schema announcements"),
    ] {
        let name = subjects.stream_name(kind);
        let captures = subjects.stream_subjects(kind);
        let description = format!("Walbrook {what} of database {database}");
        let stream = retry_jetstream(&shutdown, || {
            streams::ensure_stream(&js, &name, &captures, &description, &config.stream)
        })
        .await?;
        if kind == StreamKind::Wal {
            wal_stream = Some(stream);
        }
    }
    let wal_stream = wal_stream.expect("the change stream is set up first");
    let wal_stream_name = subjects.stream_name(StreamKind::Wal);
    let resume = retry_jetstream(&shutdown, || {
        let mut stream = wal_stream.clone();
        async move { streams::last_position(&mut stream).await }
    })
    .await?;
    if let Some((lsn, ordinal)) = resume {
        tracing::info!(%lsn, ordinal, "events up to this position are already stored");
    }
    // The slot after the stream: a missing or invalidated slot is a gap when the stream
    // already holds events (slot.rs).
    crate::slot::ensure(&sql, &config, resume, &js, &subjects, &published).await?;

    let registry = Registry::new();
    let rpc = {
        let lookups = registry::serve_lookups(
            nats.clone(),
            subjects.schema_rpc(),
            registry.clone(),
            pg_url.clone(),
            database.clone(),
        );
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let ended = lookups.await;
            tracing::error!(outcome = ?ended, "the schema lookup service stopped");
            metrics.service_stopped("schema lookup");
        })
    };
    let snapshots = crate::snapshot::Service::start(
        &config,
        nats.clone(),
        &database,
        registry.clone(),
        metrics.clone(),
    )
    .await?;
    let heartbeat = (!config.heartbeat_interval.is_zero()).then(|| {
        tokio::spawn(heartbeats(
            pg_url.clone(),
            config.heartbeat_interval,
            config.slot.clone(),
            metrics.clone(),
            shutdown.clone(),
        ))
    });

    let large = LargePayloads::new(
        nats.clone(),
        js.clone(),
        subjects.large_payload_bucket(),
        config.stream.clone(),
    );
    let target = ConnectionTarget::from_url(&config.pg_url)?;
    let mut state = Pipeline {
        config: &config,
        pg_url: pg_url.clone(),
        subjects,
        database,
        sql,
        catalog: Catalog::new(),
        registry,
        large,
        publisher: Publisher::new(js, config.nats.max_inflight, RetryPolicy::default())
            .with_metrics(metrics.clone())
            .with_chain_stream(&wal_stream_name, headers::COMMIT_LSN),
        metrics,
        encoders: HashMap::new(),
        outputs: HashMap::new(),
        tx: None,
        batch: None,
        skip_through: resume,
        last_pushed: resume,
        xid_anchor: FullXid::default(),
        wal_stream,
        chains: Chains::new(),
    };
    let result = state.replicate(&target, &shutdown).await;
    snapshots.stop().await;
    rpc.abort();
    if let Some(heartbeat) = heartbeat {
        heartbeat.abort();
    }
    result
}

/// How long JetStream may stay unavailable at start-up (a cluster electing its
/// leader, a server restarting) before the producer gives up.
const JETSTREAM_STARTUP_PATIENCE: Duration = Duration::from_secs(120);

/// Runs a JetStream set-up step, retrying transient failures with backoff (and a
/// warning each time) for up to [`JETSTREAM_STARTUP_PATIENCE`].
async fn retry_jetstream<T, F, Fut>(
    shutdown: &CancellationToken,
    mut step: F,
) -> Result<T, ProducerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StreamError>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(e)
                if e.is_retryable()
                    && !shutdown.is_cancelled()
                    && started.elapsed() < JETSTREAM_STARTUP_PATIENCE =>
            {
                tracing::warn!(error = %e, ?backoff, "JetStream not available yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes a non-transactional logical message every `interval`, so an idle or
/// filtered database still moves the slot forward (no unbounded WAL retention), and reads
/// the slot's WAL retention into the metrics on the same side connection (so it is known
/// while replication is down).
async fn heartbeats(
    pg_url: String,
    interval: Duration,
    slot: String,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if client.is_none() {
            client = connect_sql(&pg_url).await.ok();
        }
        if let Some(c) = &client {
            let sent = c
                .execute(
                    "SELECT pg_logical_emit_message(false, $1, \
                     (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text)",
                    &[&HEARTBEAT_PREFIX],
                )
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "heartbeat failed; reconnecting");
                client = None;
                continue;
            }
            let retention = c
                .query_opt(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8,
                            coalesce(safe_wal_size, -1)::float8, wal_status = 'lost'
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await;
            if let Ok(Some(row)) = retention {
                let retained: Option<f64> = row.get(0);
                metrics.slot_retained_wal_bytes.set(retained.unwrap_or(0.0));
                metrics.slot_safe_wal_bytes.set(row.get(1));
                metrics
                    .slot_lost
                    .set(i64::from(row.get::<_, Option<bool>>(2).unwrap_or(false)));
            }
        }
    }
}

/// A transaction being decoded.
#[derive(Debug)]
struct Tx {
    xid: FullXid,
    commit_lsn: Lsn,
    commit_ts_micros: i64,
    next_ordinal: u64,
    /// The latest event, held back until we know whether it is the last.
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    encoder: Arc<TableEncoder>,
    op: Op,
    lsn: Lsn,
    ordinal: u64,
    before: Option<Tuple>,
    after: Option<Tuple>,
}

struct Pipeline<'a> {
    config: &'a ProducerConfig,
    pg_url: String,
    subjects: Subjects,
    database: String,
    sql: Arc<Client>,
    catalog: Catalog,
    registry: Registry,
    publisher: Publisher,
    /// Stores payloads larger than the server's `max_payload`.
    large: LargePayloads,
    encoders: HashMap<Oid, Arc<TableEncoder>>,
    /// Per table version: what every event of it repeats (subject, fingerprint text,
    /// its metric counters), computed once instead of per event.
    outputs: HashMap<Fingerprint, TableOut>,
    tx: Option<Tx>,
    /// Encoded events of the current transaction waiting to share a change message.
    batch: Option<Batch>,
    /// Events at or below this (commit LSN, ordinal) are already stored.
    skip_through: Option<(Lsn, u64)>,
    /// The newest event handed to the publisher.
    last_pushed: Option<(Lsn, u64)>,
    /// The full (64-bit) id of the latest transaction seen, against which the next
    /// `Begin`'s 32-bit xid is widened ([`crate::lsn::Xid::widen`]).
    xid_anchor: FullXid,
    /// The change stream, read at every (re)start for the newest stored position.
    wal_stream: async_nats::jetstream::stream::Stream,
    /// The last change message pushed per subject (`Walbrook-Previous`).
    chains: Chains,
    metrics: Metrics,
}

enum Stop {
    Shutdown,
}

impl Pipeline<'_> {
    async fn replicate(
        &mut self,
        target: &ConnectionTarget,
        shutdown: &CancellationToken,
    ) -> Result<(), ProducerError> {
        let mut backoff = Duration::from_millis(200);
        let mut standby_announced = false;
        loop {
            // Anchor xid widening on the server's next transaction id: every
            // transaction the stream delivers lies within 2^31 of it.
            let anchor = match self.sql().await {
                Ok(sql) => next_full_xid(&sql).await,
                Err(e) => Err(e),
            };
            match anchor {
                Ok(anchor) => self.xid_anchor = anchor,
                Err(e) if !shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, ?backoff, "cannot read the next transaction id; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(_) => return Ok(()),
            }
            let started = ReplicationStream::start(
                target,
                &self.config.slot,
                &self.config.publication,
                Duration::from_secs(1),
            )
            .await;
            let mut stream = match started {
                Ok(stream) => stream,
                Err(e) if e.is_slot_in_use() => {
                    if !standby_announced {
                        tracing::info!(slot = %self.config.slot, "standby: another producer holds the slot; taking over when it is released");
                        standby_announced = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(STANDBY_POLL) => {}
                    }
                    continue;
                }
                Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, ?backoff, "cannot start replication; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            tracing::info!(slot = %self.config.slot, "replication started");
            // Another producer may have published until a moment ago (after a takeover,
            // or a restart): never publish again what the stream already holds.
            let stored = match streams::last_position(&mut self.wal_stream).await {
                Ok(stored) => stored,
                // JetStream unavailable for a moment (a cluster electing a leader):
                // retry from the slot rather than stop.
                Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, ?backoff, "cannot read the newest stored event; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            self.skip_through = self.skip_through.max(stored);
            self.metrics.set_ready(true);
            let outcome = self.stream_loop(&mut stream, shutdown).await;
            self.metrics.set_ready(false);
            match outcome {
                Ok(Stop::Shutdown) => {
                    tracing::info!(
                        timeout = ?self.config.shutdown_timeout,
                        "shutting down: waiting for outstanding acks"
                    );
                    let drained =
                        tokio::time::timeout(self.config.shutdown_timeout, self.publisher.flush())
                            .await;
                    match drained {
                        Ok(flushed) => flushed?,
                        Err(_) => {
                            let confirmed = self.publisher.confirmed();
                            stream.confirm(confirmed);
                            let _ = stream.shutdown().await;
                            return Err(ProducerError::ShutdownTimeout {
                                waited: self.config.shutdown_timeout,
                                unacknowledged: self.publisher.in_flight(),
                                confirmed,
                            });
                        }
                    }
                    let confirmed = self.publisher.confirmed();
                    stream.confirm(confirmed);
                    if let Ok(sql) = self.sql().await {
                        wait_for_slot(&sql, &self.config.slot, confirmed).await;
                    }
                    let _ = stream.shutdown().await;
                    tracing::info!(%confirmed, "stopped cleanly");
                    return Ok(());
                }
                Err(ProducerError::Replication(e)) if e.is_slot_in_use() => {
                    tracing::info!(slot = %self.config.slot, "standby: another producer holds the slot; taking over when it is released");
                    self.tx = None;
                    self.batch = None;
                    self.skip_through = self.skip_through.max(self.last_pushed);
                    tokio::time::sleep(STANDBY_POLL).await;
                }
                Err(e) if e.is_retryable() && !matches!(e, ProducerError::Publish(_)) => {
                    tracing::warn!(error = %e, "connection to PostgreSQL lost; resuming from the slot");
                    self.metrics.error("replication");
                    self.metrics
                        .reconnects
                        .get_or_create(&crate::metrics::KindLabels {
                            kind: "postgres".into(),
                        })
                        .inc();
                    // The partial transaction will be sent again from its Begin; what
                    // was already pushed is skipped (the publisher still owns it).
                    self.tx = None;
                    self.batch = None;
                    self.skip_through = self.skip_through.max(self.last_pushed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn stream_loop(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<Stop, ProducerError> {
        let mut reported = Lsn::ZERO;
        loop {
            let confirmed = self.publisher.confirmed();
            if confirmed > reported {
                stream.confirm(confirmed);
                reported = confirmed;
                self.metrics.confirmed_lsn.set(confirmed.0 as f64);
            }
            // An open shared message is closed by the event stream alone (commit, another
            // table/op/version, full), never by timing: the same WAL then always cuts the
            // same messages, so a replay repeats their `Nats-Msg-Id`s (protocol §3.6). A
            // transaction's events follow each other without waiting for anything but
            // decoding, so this costs no latency.
            let has_room = self.publisher.has_room();
            let pending = !self.publisher.is_empty();
            tokio::select! {
                biased;
                // Shutdown first: stop taking new work.
                () = shutdown.cancelled() => return Ok(Stop::Shutdown),
                // Then acks: they move the confirmed position and free window room.
                done = self.publisher.complete_one(), if pending => done?,
                // Then new changes, only while the window has room (backpressure: the
                // transport keeps answering keepalives while we wait).
                item = stream.next(), if has_room => {
                    // Handling a change may wait on JetStream (a schema announcement's ack, a
                    // full window): a stop cuts it short. Nothing of it is confirmed; the
                    // slot replays it at the next start.
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(Stop::Shutdown),
                        handled = self.on_item(item?) => handled?,
                    }
                }
            }
        }
    }

    async fn on_item(&mut self, item: Option<StreamItem>) -> Result<(), ProducerError> {
        match item {
            Some(StreamItem::Message { message, lsn }) => self.handle(message, lsn).await,
            Some(StreamItem::KeepAlive { wal_end }) => {
                let behind = wal_end.0.saturating_sub(self.publisher.confirmed().0);
                self.metrics.lag_bytes.set(behind as f64);
                Ok(())
            }
            None => Err(ProducerError::Replication(ReplicationError::Config(
                "the server ended the replication stream".into(),
            ))),
        }
    }

    async fn handle(&mut self, message: Message, lsn: Lsn) -> Result<(), ProducerError> {
        match message {
            Message::Begin(begin) => {
                let xid = begin.xid.widen(self.xid_anchor);
                self.xid_anchor = xid;
                self.tx = Some(Tx {
                    xid,
                    commit_lsn: begin.final_lsn,
                    commit_ts_micros: begin.commit_ts.unix_micros(),
                    next_ordinal: 0,
                    held: None,
                });
            }
            Message::Relation(relation) => self.relation(&relation).await?,
            Message::Insert(insert) => {
                self.change(insert.relation, lsn, |_| Op::Insert, None, Some(insert.new))
                    .await?;
            }
            Message::Update(update) => {
                let relation = update.relation;
                let before = update.old.as_ref().map(|old| old.tuple.clone());
                let after = Some(update.new.clone());
                self.change(
                    relation,
                    lsn,
                    |encoder| encoder.update_op(&update),
                    before,
                    after,
                )
                .await?;
            }
            Message::Delete(delete) => {
                self.change(
                    delete.relation,
                    lsn,
                    |_| Op::Delete,
                    Some(delete.old.tuple),
                    None,
                )
                .await?;
            }
            Message::Truncate(truncate) => {
                for relation in truncate.relations {
                    self.change(relation, lsn, |_| Op::Truncate, None, None)
                        .await?;
                }
            }
            Message::Commit(commit) => {
                let tx = self.tx.take().ok_or_else(|| {
                    ProducerError::Protocol(format!(
                        "commit at {} without a begin",
                        commit.commit_lsn
                    ))
                })?;
                if let Some(held) = tx.held {
                    self.emit(
                        &tx_meta(tx.xid, tx.commit_lsn, tx.commit_ts_micros),
                        held,
                        true,
                    )
                    .await?;
                }
                // A message never spans two transactions.
                self.close_batch().await?;
                self.publisher.push_confirm(commit.end_lsn);
                self.metrics.decoded(tx.commit_ts_micros);
            }
            Message::LogicalMessage(message) => {
                // A heartbeat outside any transaction: everything before it is either
                // acked or in the window, so its position can be confirmed in order.
                if !message.transactional && self.tx.is_none() {
                    self.publisher.push_confirm(message.lsn);
                    // Its content is the server's clock when it was written: the producer
                    // has read the WAL up to that moment.
                    if message.prefix == HEARTBEAT_PREFIX
                        && let Some(written) = std::str::from_utf8(&message.content)
                            .ok()
                            .and_then(|t| t.parse::<i64>().ok())
                    {
                        self.metrics.decoded(written);
                    }
                }
            }
            Message::Origin(_) | Message::Type(_) => {}
        }
        Ok(())
    }

    /// The SQL connection, reconnected if it was lost.
    async fn sql(&mut self) -> Result<Arc<Client>, ProducerError> {
        if self.sql.is_closed() {
            self.sql = Arc::new(connect_sql(&self.pg_url).await?);
        }
        Ok(Arc::clone(&self.sql))
    }

    async fn relation(&mut self, relation: &pgoutput::Relation) -> Result<(), ProducerError> {
        // A Relation message follows DDL: type definitions may have changed too.
        self.catalog.invalidate();
        let sql = self.sql().await?;
        let desc =
            self.catalog
                .describe(&sql, relation)
                .await
                .map_err(|e| ProducerError::Postgres {
                    context: "describing a relation",
                    detail: e.to_string(),
                })?;
        let encoder = TableEncoder::new(desc)?;
        self.encoders.insert(relation.id, Arc::new(encoder));
        Ok(())
    }

    /// Persists and announces a schema version the first time an event uses it
    /// (pgoutput also describes relations no event is published for, such as the
    /// partitions of a table published through its root).
    async fn announce(&mut self, encoder: &TableEncoder) -> Result<(), ProducerError> {
        let fingerprint = encoder.fingerprint();
        if self.registry.contains(fingerprint) {
            return Ok(());
        }
        let sql = self.sql().await?;
        let desc = encoder.desc();
        let doc = registry::persist(
            &sql,
            &self.database,
            &desc.schema,
            &desc.table,
            fingerprint,
            encoder.schema_json(),
        )
        .await
        .map_err(pg_error("persisting a schema"))?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("schema-{fingerprint}").as_str());
        headers.insert(headers::FINGERPRINT, fingerprint.to_string().as_str());
        let payload = serde_json::to_vec(&doc).expect("a schema document serializes");
        self.publisher
            .push(OutMessage {
                subject: self.subjects.schema_announcement(&desc.schema, &desc.table),
                headers,
                payload: payload.into(),
                chained: false,
            })
            .await?;
        // Acknowledged before the first event that uses it (protocol §5.1): a consumer never
        // reads an event whose announcement JetStream may still refuse. New versions are
        // rare (start, DDL), so waiting for the window here costs nothing that matters.
        self.publisher.flush().await?;
        self.registry.insert(fingerprint, doc);
        tracing::info!(table = %format!("{}.{}", desc.schema, desc.table), %fingerprint, "schema version announced");
        Ok(())
    }

    async fn change(
        &mut self,
        relation: Oid,
        lsn: Lsn,
        op: impl FnOnce(&TableEncoder) -> Op,
        before: Option<Tuple>,
        after: Option<Tuple>,
    ) -> Result<(), ProducerError> {
        let encoder = self.encoders.get(&relation).cloned().ok_or_else(|| {
            ProducerError::Protocol(format!(
                "change for relation {relation} before its description"
            ))
        })?;
        let tx = self.tx.as_mut().ok_or_else(|| {
            ProducerError::Protocol(format!("change at {lsn} outside a transaction"))
        })?;
        let held = Held {
            op: op(&encoder),
            encoder,
            lsn,
            ordinal: tx.next_ordinal,
            before,
            after,
        };
        tx.next_ordinal += 1;
        let meta = tx_meta(tx.xid, tx.commit_lsn, tx.commit_ts_micros);
        if let Some(previous) = tx.held.replace(held) {
            self.emit(&meta, previous, false).await?;
        }
        Ok(())
    }

    async fn emit(&mut self, tx: &TxMeta, held: Held, last: bool) -> Result<(), ProducerError> {
        let position = (tx.commit_lsn, held.ordinal);
        if self.skip_through.is_some_and(|stored| position <= stored) {
            return Ok(());
        }
        let fingerprint = held.encoder.fingerprint();
        let joins = self.batch.as_ref().is_some_and(|b| {
            b.fingerprint == fingerprint
                && b.op == held.op
                && b.commit_lsn == tx.commit_lsn
                && b.next_ordinal() == held.ordinal
                && b.payloads.len() < self.config.batch_events
        });
        if !joins {
            self.close_batch().await?;
        }
        self.announce(&held.encoder).await?;
        let desc = held.encoder.desc();
        let source = Source {
            database: self.database.clone(),
            schema: desc.schema.clone(),
            table: desc.table.clone(),
            xid: i64::try_from(tx.xid.0).unwrap_or(i64::MAX),
            commit_lsn: tx.commit_lsn,
            lsn: held.lsn,
            commit_ts_micros: tx.commit_ts_micros,
            ordinal: held.ordinal,
            last,
            sent_at_micros: now_micros(),
        };
        let payload =
            held.encoder
                .encode(held.op, &source, held.before.as_ref(), held.after.as_ref())?;
        if !self.outputs.contains_key(&fingerprint) {
            let out = TableOut::new(&self.subjects, &self.metrics, &held.encoder);
            self.outputs.insert(fingerprint, out);
        }
        let framed = batch::framed_len(payload.len());
        let limit = self.batch_limit();
        if self.config.batch_events <= 1 || framed > limit {
            // Goes alone: batching is off, or the event is too large to share a message.
            self.close_batch().await?;
            return self
                .publish_single(
                    tx.commit_lsn,
                    held.op,
                    fingerprint,
                    held.ordinal,
                    last,
                    payload,
                )
                .await;
        }
        if self
            .batch
            .as_ref()
            .is_some_and(|b| b.framed + framed > limit)
        {
            self.close_batch().await?;
        }
        let batch = self.batch.get_or_insert_with(|| Batch {
            fingerprint,
            op: held.op,
            commit_lsn: tx.commit_lsn,
            first_ordinal: held.ordinal,
            payloads: Vec::new(),
            framed: 0,
            last: false,
        });
        batch.framed += framed;
        batch.payloads.push(payload);
        batch.last = last;
        if last || batch.payloads.len() >= self.config.batch_events {
            self.close_batch().await?;
        }
        Ok(())
    }

    /// The largest body a shared message may have: 256 KiB, less on a server with a small
    /// `max_payload`.
    fn batch_limit(&self) -> usize {
        batch::MAX_BODY.min(self.large.max_body())
    }

    /// Publishes the open shared message, if any: as a plain single-event message when it
    /// holds one event.
    async fn close_batch(&mut self) -> Result<(), ProducerError> {
        let Some(mut batch) = self.batch.take() else {
            return Ok(());
        };
        if batch.payloads.len() == 1 {
            let payload = batch.payloads.pop().expect("one payload");
            return self
                .publish_single(
                    batch.commit_lsn,
                    batch.op,
                    batch.fingerprint,
                    batch.first_ordinal,
                    batch.last,
                    payload,
                )
                .await;
        }
        let count = batch.payloads.len();
        let mut body = Vec::with_capacity(batch.framed);
        for payload in &batch.payloads {
            batch::push(&mut body, payload);
        }
        let out = &self.outputs[&batch.fingerprint];
        let subject = out.subject.clone();
        let counter = out.events[batch.op.index()].clone();
        let messages = out.messages.clone();
        let mut headers = HeaderMap::new();
        let id = MessageId::new(batch.commit_lsn, batch.first_ordinal);
        headers.insert("Nats-Msg-Id", id.to_string().as_str());
        headers.insert(headers::FINGERPRINT, out.fingerprint.as_str());
        headers.insert(headers::OP, batch.op.as_str());
        headers.insert(headers::COMMIT_LSN, batch.commit_lsn.to_string().as_str());
        headers.insert(headers::ORDINAL, batch.first_ordinal.to_string().as_str());
        headers.insert(headers::EVENTS, count.to_string().as_str());
        if batch.last {
            headers.insert(headers::LAST, "true");
        }
        let previous = self.chains.previous(&mut self.wal_stream, &subject).await?;
        if let Some(previous) = previous.header_value() {
            headers.insert(headers::PREVIOUS, previous.as_str());
        }
        self.chains.pushed(&subject, id);
        self.publisher
            .push(OutMessage {
                subject,
                headers,
                payload: body.into(),
                chained: true,
            })
            .await?;
        self.last_pushed = Some((batch.commit_lsn, batch.next_ordinal() - 1));
        counter.inc_by(count as u64);
        messages.inc();
        Ok(())
    }

    /// Publishes one event as a message of its own (through the object store when it is
    /// larger than the server's `max_payload`, docs/protocol.md §3.5).
    async fn publish_single(
        &mut self,
        commit_lsn: Lsn,
        op: Op,
        fingerprint: Fingerprint,
        ordinal: u64,
        last: bool,
        payload: Vec<u8>,
    ) -> Result<(), ProducerError> {
        let id = MessageId::new(commit_lsn, ordinal);
        let msg_id = id.to_string();
        let out = &self.outputs[&fingerprint];
        let subject = out.subject.clone();
        let counter = out.events[op.index()].clone();
        let messages = out.messages.clone();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert(headers::FINGERPRINT, out.fingerprint.as_str());
        headers.insert(headers::OP, op.as_str());
        headers.insert(headers::COMMIT_LSN, commit_lsn.to_string().as_str());
        headers.insert(headers::ORDINAL, ordinal.to_string().as_str());
        if last {
            headers.insert(headers::LAST, "true");
        }
        let previous = self.chains.previous(&mut self.wal_stream, &subject).await?;
        if let Some(previous) = previous.header_value() {
            headers.insert(headers::PREVIOUS, previous.as_str());
        }
        let payload = if self.large.fits(&headers, payload.len()) {
            payload.into()
        } else {
            let size = payload.len();
            let reference = self.large.store(&msg_id, payload.into()).await?;
            tracing::info!(object = %reference, size, "event larger than max_payload stored in the object store");
            self.metrics.large_payloads.inc();
            headers.insert(headers::PAYLOAD_OBJECT, reference.as_str());
            bytes::Bytes::new()
        };
        self.chains.pushed(&subject, id);
        self.publisher
            .push(OutMessage {
                subject,
                headers,
                payload,
                chained: true,
            })
            .await?;
        self.last_pushed = Some((commit_lsn, ordinal));
        counter.inc();
        messages.inc();
        Ok(())
    }
}

/// Encoded events of one transaction, table version and operation, with consecutive
/// ordinals, waiting to be published as one change message (docs/protocol.md §3.6).
struct Batch {
    fingerprint: Fingerprint,
    op: Op,
    commit_lsn: Lsn,
    first_ordinal: u64,
    payloads: Vec<Vec<u8>>,
    /// The body size once framed.
    framed: usize,
    /// Holds the transaction's last event.
    last: bool,
}

impl Batch {
    fn next_ordinal(&self) -> u64 {
        self.first_ordinal + self.payloads.len() as u64
    }
}

/// The server's next 64-bit transaction id, read without assigning one.
async fn next_full_xid(sql: &Client) -> Result<FullXid, ProducerError> {
    let text: String = sql
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await
        .map_err(pg_error("reading the next transaction id"))?
        .get(0);
    text.parse()
        .map(FullXid)
        .map_err(|e| ProducerError::Postgres {
            context: "reading the next transaction id",
            detail: format!("{text:?}: {e}"),
        })
}

/// Waits (briefly) until the slot shows `lsn` as confirmed, so a clean stop leaves
/// nothing to replay. Not waiting would only cause harmless, deduplicated replays.
async fn wait_for_slot(sql: &Client, slot: &str, lsn: Lsn) {
    for _ in 0..50 {
        let row = sql
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        if let Ok(Some(row)) = row
            && let Some(text) = row.get::<_, Option<String>>(0)
            && text.parse::<Lsn>().is_ok_and(|c| c >= lsn)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What every event of one table version repeats.
struct TableOut {
    subject: String,
    fingerprint: String,
    /// The `events` counter of each operation, by [`Op::index`].
    events: [prometheus_client::metrics::counter::Counter; 6],
    /// The `messages` counter.
    messages: prometheus_client::metrics::counter::Counter,
}

impl TableOut {
    fn new(subjects: &Subjects, metrics: &Metrics, encoder: &TableEncoder) -> TableOut {
        let desc = encoder.desc();
        let table = format!("{}.{}", desc.schema, desc.table);
        let ops = [
            Op::Insert,
            Op::Update,
            Op::UpdateKey,
            Op::Delete,
            Op::Truncate,
            Op::Read,
        ];
        TableOut {
            subject: subjects.change(&desc.schema, &desc.table),
            fingerprint: encoder.fingerprint().to_string(),
            messages: metrics
                .messages
                .get_or_create(&crate::metrics::TableLabels {
                    table: table.clone(),
                })
                .clone(),
            events: ops.map(|op| {
                metrics
                    .events
                    .get_or_create(&crate::metrics::EventLabels {
                        table: table.clone(),
                        op: op.as_str().into(),
                    })
                    .clone()
            }),
        }
    }
}

struct TxMeta {
    xid: FullXid,
    commit_lsn: Lsn,
    commit_ts_micros: i64,
}

fn tx_meta(xid: FullXid, commit_lsn: Lsn, commit_ts_micros: i64) -> TxMeta {
    TxMeta {
        xid,
        commit_lsn,
        commit_ts_micros,
    }
}
