//! Snapshots on request (docs/protocol.md §8): a table's current rows on
//! `<root>.<db>.snap.<schema>.<table>.<id>`, consistent with the change stream at a
//! position P.
//!
//! * [`Service::start`] creates `_walbrook.snapshots` and the `<root>_<db>_SNAP` stream,
//!   fails snapshots whose producer died, and answers `rpc.snapshot` and `rpc.snapshots`
//!   (queue group `walbrook`). Every request gets an answer at once.
//! * An accepted snapshot runs in its own task ([`run`]), limited by a semaphore
//!   (`snapshot.max_concurrent`); its rows are read in key-ordered chunks without a long
//!   transaction ([`position`] explains why the result is consistent), encoded with the
//!   table's change-event schema (op `READ`) and published through a bounded window.
//! * A snapshot ends with an `end` message carrying the row count, or with a `failed`
//!   message: on errors, on shutdown, and — published by a surviving or restarted
//!   producer — when its producer was killed.

mod copy_binary;
mod copy_text;
pub mod position;
mod run;
pub mod store;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use walbrook_protocol::snapshot::{ListReply, ListRequest, SnapshotRequest};
use walbrook_protocol::{StreamKind, Subjects};

use crate::config::{ProducerConfig, StreamConfig};
use crate::event::TableEncoder;
use crate::large_payload::LargePayloads;
use crate::metrics::{KindLabels, Metrics};
use crate::pipeline::{ProducerError, connect_sql};
use crate::registry::{self, Registry};
use crate::streams::{self, headers};

/// How often orphaned snapshots are looked for and expired ones removed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Session settings of the connections that read rows: the output formats pgoutput's
/// text values have with a default server configuration.
const SESSION_SQL: &str = "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';
    SET extra_float_digits = 1; SET bytea_output = 'hex'; SET TimeZone = 'UTC'";

/// An RPC error answer: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFailure {
    /// 400, 403, 404, 429, 500 or 503.
    pub code: u16,
    /// What is wrong.
    pub message: String,
}

impl RpcFailure {
    /// A failure with a code.
    pub fn new(code: u16, message: impl Into<String>) -> RpcFailure {
        RpcFailure {
            code,
            message: message.into(),
        }
    }

    /// An internal error (500).
    pub fn internal(message: impl Into<String>) -> RpcFailure {
        RpcFailure::new(500, message)
    }
}

/// What the service needs from the producer.
#[derive(Debug, Clone)]
struct Shared {
    nats: async_nats::Client,
    js: jetstream::Context,
    pg_url: String,
    publication: String,
    database: String,
    subjects: Subjects,
    registry: Registry,
    metrics: Metrics,
    default_chunk: u32,
    retention: Duration,
    max_inflight: usize,
    ack_timeout: Duration,
    /// Settings of the large payload bucket (shared with the change stream).
    large_settings: StreamConfig,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    cancel: CancellationToken,
}

/// The running snapshot service; [`Service::stop`] ends it.
#[derive(Debug)]
pub struct Service {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Prepares the state table and the snapshot stream, fails orphaned snapshots, and
    /// starts answering the snapshot RPCs.
    pub async fn start(
        config: &ProducerConfig,
        nats: async_nats::Client,
        database: &str,
        registry: Registry,
        metrics: Metrics,
    ) -> Result<Service, ProducerError> {
        let pg_url = config.pg_url.expose().to_string();
        let sql = connect_sql(&pg_url).await?;
        sql.batch_execute(store::SETUP_SQL)
            .await
            .map_err(|e| ProducerError::Postgres {
                context: "creating _walbrook.snapshots",
                detail: e.to_string(),
            })?;
        let subjects = Subjects::new(&config.root, database);
        let js = jetstream::new(nats.clone());
        let settings = StreamConfig {
            max_age: config.snapshot.retention,
            ..config.stream.clone()
        };
        streams::ensure_stream(
            &js,
            &subjects.stream_name(StreamKind::Snap),
            &subjects.stream_subjects(StreamKind::Snap),
            &format!("Walbrook snapshots of database {database}"),
            &settings,
        )
        .await?;
        let shared = Arc::new(Shared {
            nats: nats.clone(),
            js,
            pg_url,
            publication: config.publication.clone(),
            database: database.to_string(),
            subjects: subjects.clone(),
            registry,
            metrics,
            default_chunk: config.snapshot.chunk_size,
            retention: config.snapshot.retention,
            max_inflight: config.nats.max_inflight,
            ack_timeout: config.nats.ack_timeout,
            large_settings: config.stream.clone(),
            permits: Arc::new(Semaphore::new(config.snapshot.max_concurrent)),
            max_concurrent: config.snapshot.max_concurrent,
            cancel: CancellationToken::new(),
        });
        sweep(&shared, &sql).await;
        let nats_err = |e: async_nats::SubscribeError| ProducerError::Nats(e.to_string());
        let requests = nats
            .queue_subscribe(subjects.snapshot_rpc(), "walbrook".into())
            .await
            .map_err(nats_err)?;
        let listings = nats
            .queue_subscribe(subjects.snapshots_rpc(), "walbrook".into())
            .await
            .map_err(nats_err)?;
        let task = tokio::spawn(serve(Arc::clone(&shared), sql, requests, listings));
        Ok(Service { shared, task })
    }

    /// Stops answering, fails running snapshots with "the producer shut down" and waits
    /// (up to 10 s) until they have published that.
    pub async fn stop(self) {
        self.shared.cancel.cancel();
        self.task.abort();
        let all = u32::try_from(self.shared.max_concurrent).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.shared.permits.acquire_many(all),
        )
        .await;
    }
}

async fn serve(
    shared: Arc<Shared>,
    mut sql: Client,
    mut requests: async_nats::Subscriber,
    mut listings: async_nats::Subscriber,
) {
    let mut sweeper = tokio::time::interval(SWEEP_INTERVAL);
    sweeper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => return,
            Some(request) = requests.next() => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { answer_snapshot(shared, request).await });
            }
            Some(request) = listings.next() => {
                if sql.is_closed() {
                    match connect_sql(&shared.pg_url).await {
                        Ok(c) => sql = c,
                        Err(e) => tracing::warn!(error = %e, "snapshot listing: no database connection"),
                    }
                }
                answer_listing(&shared, &sql, request).await;
            }
            _ = sweeper.tick() => {
                if sql.is_closed()
                    && let Ok(c) = connect_sql(&shared.pg_url).await
                {
                    sql = c;
                }
                sweep(&shared, &sql).await;
            }
            else => return,
        }
    }
}

/// Fails orphaned snapshots (publishing their `failed` message) and removes expired ones.
async fn sweep(shared: &Shared, sql: &Client) {
    match store::fail_orphans(
        sql,
        "the producer running this snapshot stopped before it ended; request it again",
    )
    .await
    {
        Ok(orphans) => {
            for info in orphans {
                tracing::warn!(snapshot = %info.id, rows = info.rows, "snapshot of a stopped producer marked failed");
                shared
                    .metrics
                    .snapshots
                    .get_or_create(&KindLabels {
                        kind: "failed".into(),
                    })
                    .inc();
                run::publish_failed(
                    &shared.nats,
                    &info,
                    info.rows,
                    info.error.as_deref().unwrap_or("producer stopped"),
                )
                .await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "looking for orphaned snapshots"),
    }
    if let Err(e) = store::expire(sql, shared.retention).await {
        tracing::warn!(error = %e, "removing expired snapshots");
    }
}

async fn reply(
    shared: &Shared,
    request: &async_nats::Message,
    answer: Result<Vec<u8>, RpcFailure>,
) {
    let Some(reply) = request.reply.clone() else {
        tracing::debug!(subject = %request.subject, "snapshot RPC without a reply subject ignored");
        return;
    };
    let (headers, body) = match answer {
        Ok(body) => (HeaderMap::new(), body.into()),
        Err(failure) => registry::error_reply(failure.code, &failure.message),
    };
    if let Err(e) = shared.nats.publish_with_headers(reply, headers, body).await {
        tracing::warn!(error = %e, "could not answer a snapshot RPC");
    }
}

/// Room left in a listing answer for headers and protocol framing.
const LISTING_HEADROOM: usize = 1024;

async fn answer_listing(shared: &Shared, sql: &Client, request: async_nats::Message) {
    let answer = async {
        let wanted = parse_listing(&request.payload)?;
        let snapshots = store::list(
            sql,
            wanted.id.as_deref(),
            wanted.schema.as_deref(),
            wanted.table.as_deref(),
        )
        .await
        .map_err(|e| RpcFailure::new(503, format!("snapshot store unavailable: {e}")))?;
        // The answer must fit in one message (else the requester would wait for nothing).
        let limit = shared
            .nats
            .server_info()
            .max_payload
            .saturating_sub(LISTING_HEADROOM);
        let reply = ListReply::within(snapshots, limit);
        if reply.truncated {
            tracing::info!(
                kept = reply.snapshots.len(),
                "a snapshot listing was cut to fit max_payload"
            );
        }
        Ok(serde_json::to_vec(&reply).expect("a listing serializes"))
    }
    .await;
    reply(shared, &request, answer).await;
}

async fn answer_snapshot(shared: Arc<Shared>, request: async_nats::Message) {
    let answer = accept(&shared, &request.payload).await;
    match answer {
        Ok(run) => {
            let body = serde_json::to_vec(&run.info).expect("info serializes");
            tracing::info!(snapshot = %run.info.id, table = %run.table.name(), position = %run.info.position, "snapshot accepted");
            // Answer first: the reply must not wait for the rows.
            reply(&shared, &request, Ok(body)).await;
            tokio::spawn(run.execute());
        }
        Err(failure) => {
            tracing::info!(code = failure.code, error = %failure.message, "snapshot request refused");
            reply(&shared, &request, Err(failure)).await;
        }
    }
}

/// Parses an `rpc.snapshot` request payload (JSON, unknown fields refused) and resolves its
/// chunk size (`default_chunk` when absent). Checks everything that needs no database: the
/// schema and table are not empty, and the chunk size is within 1..=`MAX_CHUNK_SIZE`. Every
/// failure is a 400. (The filter is checked against the table later:
/// [`table::filter_value_text`] for its value, then PostgreSQL for its column and type.)
pub fn parse_request(
    payload: &[u8],
    default_chunk: u32,
) -> Result<(SnapshotRequest, u32), RpcFailure> {
    let request: SnapshotRequest = serde_json::from_slice(payload).map_err(|e| {
        RpcFailure::new(
            400,
            format!(
                "malformed snapshot request ({e}); expected {{\"schema\":…,\"table\":…}} with optional \"filter\" and \"chunk_size\""
            ),
        )
    })?;
    if request.schema.is_empty() || request.table.is_empty() {
        return Err(RpcFailure::new(400, "schema and table must not be empty"));
    }
    for name in [&request.schema, &request.table] {
        check_name(name)?;
    }
    let chunk_size = request.chunk_size.unwrap_or(default_chunk);
    if !(1..=crate::config::MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(RpcFailure::new(
            400,
            format!(
                "chunk_size must be between 1 and {}",
                crate::config::MAX_CHUNK_SIZE
            ),
        ));
    }
    Ok((request, chunk_size))
}

/// Parses an `rpc.snapshots` (listing) request payload: empty or whitespace for every
/// snapshot, else JSON with optional `id`, `schema` and `table` (unknown fields refused; a
/// table needs its schema). Every failure is a 400.
pub fn parse_listing(payload: &[u8]) -> Result<ListRequest, RpcFailure> {
    let wanted: ListRequest = if payload.iter().all(u8::is_ascii_whitespace) {
        ListRequest::default()
    } else {
        serde_json::from_slice(payload)
            .map_err(|e| RpcFailure::new(400, format!("malformed listing request: {e}")))?
    };
    if wanted.table.is_some() && wanted.schema.is_none() {
        return Err(RpcFailure::new(400, "a table needs its schema"));
    }
    for text in [&wanted.id, &wanted.schema, &wanted.table]
        .into_iter()
        .flatten()
    {
        if text.contains('\0') {
            return Err(RpcFailure::new(400, "the request contains a NUL character"));
        }
    }
    Ok(wanted)
}

/// The longest PostgreSQL name, in bytes (`NAMEDATALEN` - 1).
const MAX_NAME_BYTES: usize = 63;

/// Refuses (400) a schema or table name PostgreSQL cannot have: one with a NUL character
/// or longer than 63 bytes (such requests used to reach the catalog query and answer 500).
fn check_name(name: &str) -> Result<(), RpcFailure> {
    if name.contains('\0') {
        return Err(RpcFailure::new(
            400,
            "schema and table names cannot contain a NUL character",
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(RpcFailure::new(
            400,
            format!(
                "{}…: PostgreSQL names are at most {MAX_NAME_BYTES} bytes, this one has {}",
                name.chars().take(20).collect::<String>(),
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Validates a request and prepares the snapshot: the answer is its `Run` or an error.
async fn accept(shared: &Arc<Shared>, payload: &[u8]) -> Result<run::Run, RpcFailure> {
    let (request, chunk_size) = parse_request(payload, shared.default_chunk)?;
    let permit = Arc::clone(&shared.permits)
        .try_acquire_owned()
        .map_err(|_| {
            RpcFailure::new(
                429,
                format!(
                    "too many concurrent snapshots (at most {} per producer); try again later",
                    shared.max_concurrent
                ),
            )
        })?;
    let mut sql = connect_sql(&shared.pg_url)
        .await
        .map_err(|e| RpcFailure::new(503, format!("database unavailable: {e}")))?;
    let pg = |what: &'static str| {
        move |e: tokio_postgres::Error| RpcFailure::new(503, format!("{what}: {e}"))
    };
    sql.batch_execute(SESSION_SQL)
        .await
        .map_err(pg("preparing the session"))?;
    let table = table::lookup(&sql, &shared.publication, &request.schema, &request.table).await?;
    let filter = table.filter_sql(&sql, request.filter.as_ref()).await?;
    announce(shared, &sql, &table.encoder).await?;
    let approx_rows = table.approx_rows(&sql).await?;
    let point = position::take(&sql)
        .await
        .map_err(pg("taking the position"))?;
    let started_micros = now_micros();
    let id = store::new_id(&sql)
        .await
        .map_err(pg("creating the snapshot"))?;
    let info = store::create(
        &mut sql,
        &store::NewSnapshot {
            subject: shared
                .subjects
                .snapshot(&request.schema, &request.table, &id),
            id,
            schema: &request.schema,
            table: &request.table,
            filter: request.filter.as_ref(),
            chunk_size,
            position: point.position,
            fingerprint: table.encoder.fingerprint().to_string(),
            stream: shared.subjects.stream_name(StreamKind::Snap),
            approx_rows,
            keyed: !table.key.is_empty(),
        },
    )
    .await
    .map_err(pg("recording the snapshot"))?;
    Ok(run::Run {
        info,
        table: Arc::new(table),
        filter,
        point,
        sql,
        pg_url: shared.pg_url.clone(),
        nats: shared.nats.clone(),
        large: LargePayloads::new(
            shared.nats.clone(),
            shared.js.clone(),
            shared.subjects.large_payload_bucket(),
            shared.large_settings.clone(),
        ),
        max_inflight: shared.max_inflight,
        ack_timeout: shared.ack_timeout,
        metrics: shared.metrics.clone(),
        cancel: shared.cancel.clone(),
        started_micros,
        permit,
    })
}

/// Persists and announces (acked) the rows' schema version, as the change stream does
/// before the first event that uses it.
async fn announce(shared: &Shared, sql: &Client, encoder: &TableEncoder) -> Result<(), RpcFailure> {
    let fingerprint = encoder.fingerprint();
    if shared.registry.contains(fingerprint) {
        return Ok(());
    }
    let desc = encoder.desc();
    let doc = registry::persist(
        sql,
        &shared.database,
        &desc.schema,
        &desc.table,
        fingerprint,
        encoder.schema_json(),
    )
    .await
    .map_err(|e| RpcFailure::new(503, format!("persisting the schema: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("schema-{fingerprint}").as_str());
    headers.insert(headers::FINGERPRINT, fingerprint.to_string().as_str());
    let payload = serde_json::to_vec(&doc).expect("a schema document serializes");
    let unavailable = |e: String| RpcFailure::new(503, format!("announcing the schema: {e}"));
    shared
        .js
        .publish_with_headers(
            shared
                .subjects
                .schema_announcement(&desc.schema, &desc.table),
            headers,
            payload.into(),
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    shared.registry.insert(fingerprint, doc);
    Ok(())
}

fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}
