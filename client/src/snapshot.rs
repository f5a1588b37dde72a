//! Snapshots (docs/protocol.md §8): request one, list them, read one again.
//!
//! A [`Snapshot`] is an async stream of `Result<ChangeEvent, Error>` whose events have op
//! [`Op::Read`](crate::Op::Read). It ends (`None`) only after the producer's `end` message,
//! once the number of rows received equals the count that message carries. A `failed`
//! message, a row count mismatch or no message for [`SnapshotRequest::stall_timeout`]
//! is an `Err` as the stream's last item: a snapshot is never silently short.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::RequestErrorKind;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, Message};
use futures::{Stream, StreamExt};
use walbrook_pgtype_avro::fingerprint::split_single_object;
use walbrook_protocol::headers;
use walbrook_protocol::snapshot::{ListReply, ListRequest, SnapshotEnd, batch, control};

pub use walbrook_protocol::snapshot::{FilterOp, RowFilter, SnapshotInfo, SnapshotStatus};

use crate::error::{Error, ErrorKind, UndecodedMessage};
use crate::event::{AckHandle, ChangeEvent};
use crate::large_payload::PayloadObjects;
use crate::names::{Lsn, Names, TablePattern};
use crate::schema::SchemaCache;
use crate::subscribe::{decode_message, delivery};

/// Default for [`SnapshotRequest::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What to snapshot: built with [`SnapshotRequest::table`], then adjusted.
///
/// ```
/// use walbrook_client::{FilterOp, RowFilter, SnapshotRequest};
///
/// let request = SnapshotRequest::table("public.orders")
///     .filter(RowFilter { column: "region".into(), op: FilterOp::Eq, value: Some("eu".into()) })
///     .chunk_size(5_000);
/// assert_eq!(request.table_name(), "public.orders");
/// ```
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    table: String,
    exact: Option<(String, String)>,
    filter: Option<RowFilter>,
    chunk_size: Option<u32>,
    stall_timeout: Duration,
}

impl SnapshotRequest {
    /// A snapshot of `schema.table`; the first `.` separates schema and table (use
    /// [`SnapshotRequest::exact`] for names containing dots).
    pub fn table(table: impl Into<String>) -> SnapshotRequest {
        SnapshotRequest {
            table: table.into(),
            exact: None,
            filter: None,
            chunk_size: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }

    /// A snapshot of the table with these exact names.
    pub fn exact(schema: impl Into<String>, table: impl Into<String>) -> SnapshotRequest {
        let (schema, table) = (schema.into(), table.into());
        SnapshotRequest {
            exact: Some((schema.clone(), table.clone())),
            ..SnapshotRequest::table(format!("{schema}.{table}"))
        }
    }

    /// Only rows matching `filter`.
    pub fn filter(mut self, filter: RowFilter) -> SnapshotRequest {
        self.filter = Some(filter);
        self
    }

    /// Rows per chunk (1 to 100,000; the producer's default otherwise).
    pub fn chunk_size(mut self, rows: u32) -> SnapshotRequest {
        self.chunk_size = Some(rows);
        self
    }

    /// How long the reader waits for the next message before failing with
    /// [`ErrorKind::Timeout`] (default 60 s). The producer waits for transactions open at
    /// the request before the first row, so allow for your longest transaction.
    pub fn stall_timeout(mut self, timeout: Duration) -> SnapshotRequest {
        self.stall_timeout = timeout;
        self
    }

    /// The table as given.
    pub fn table_name(&self) -> &str {
        &self.table
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<Message, Error>> + Send>>;

/// A snapshot being read: its description and an async stream of its rows.
pub struct Snapshot {
    info: SnapshotInfo,
    rows: Rows,
    received: Arc<AtomicU64>,
}

type Rows = Pin<Box<dyn Stream<Item = Result<ChangeEvent, Error>> + Send>>;

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("info", &self.info)
            .field("received", &self.rows_received())
            .finish()
    }
}

impl Snapshot {
    /// The snapshot's description (as accepted, or as listed).
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// The snapshot id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The consistent position P: apply the rows, then every change event whose commit LSN
    /// is at or after P (subscribe with [`Start::CommitPosition`](crate::Start)).
    pub fn position(&self) -> Result<Lsn, Error> {
        self.info
            .position
            .parse()
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "the snapshot's position", e))
    }

    /// Rows received so far.
    pub fn rows_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Rows the producer estimated when it started (`None` if unknown).
    pub fn approx_rows(&self) -> Option<i64> {
        self.info.approx_rows
    }
}

/// The reader's state between messages.
struct Reader {
    messages: Messages,
    cache: Arc<SchemaCache>,
    /// Rows larger than the server's max_payload are in the object store (protocol §3.5).
    objects: Arc<PayloadObjects>,
    stall: Duration,
    id: String,
    received: Arc<AtomicU64>,
    finished: bool,
    /// Decoded rows of a row batch not handed out yet.
    pending: VecDeque<ChangeEvent>,
}

impl Reader {
    /// The next item, and whether the stream ends after it.
    async fn next(&mut self) -> (Option<Result<ChangeEvent, Error>>, bool) {
        let id = &self.id;
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.received.fetch_add(1, Ordering::Relaxed);
                return (Some(Ok(event)), false);
            }
            let received = self.received.load(Ordering::Relaxed);
            let message = match tokio::time::timeout(self.stall, self.messages.next()).await {
                Err(_) => {
                    let e = Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "snapshot {id}: no message for {:?} after {received} rows",
                            self.stall
                        ),
                    );
                    return (Some(Err(e)), true);
                }
                Ok(None) => {
                    let e = Error::new(
                        ErrorKind::Nats,
                        format!("snapshot {id}: the consumer ended after {received} rows"),
                    );
                    return (Some(Err(e)), true);
                }
                Ok(Some(Err(e))) => return (Some(Err(e)), false),
                Ok(Some(Ok(message))) => message,
            };
            let control_kind = message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::SNAPSHOT_CONTROL))
                .map(|v| v.as_str().to_string());
            let batch_rows = message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::SNAPSHOT_ROWS))
                .map(|v| v.as_str().to_string());
            match control_kind.as_deref() {
                None if batch_rows.is_some() => {
                    let count = batch_rows.unwrap_or_default();
                    match decode_batch(&self.cache, message, &count).await {
                        Ok(events) => self.pending = events,
                        Err(e) => return (Some(Err(e)), false),
                    }
                }
                None => {
                    let event = decode_message(&self.cache, &self.objects, message, false).await;
                    if event.is_ok() {
                        self.received.fetch_add(1, Ordering::Relaxed);
                    }
                    return (Some(event), false);
                }
                Some(control::BEGIN) => continue,
                Some(kind @ (control::END | control::FAILED)) => {
                    let end = match serde_json::from_slice::<SnapshotEnd>(&message.payload) {
                        Ok(end) => end,
                        Err(e) => {
                            let e = Error::with_source(
                                ErrorKind::Protocol,
                                format!("snapshot {id}: malformed {kind} message"),
                                e,
                            );
                            return (Some(Err(e)), true);
                        }
                    };
                    if kind == control::FAILED {
                        let e = Error::new(
                            ErrorKind::SnapshotFailed,
                            format!(
                                "snapshot {id} failed after {} rows: {}",
                                end.rows,
                                end.error.unwrap_or_default()
                            ),
                        );
                        return (Some(Err(e)), true);
                    }
                    if end.rows != received {
                        let e = Error::new(
                            ErrorKind::Protocol,
                            format!(
                                "snapshot {id} ended with {} rows but {received} arrived",
                                end.rows
                            ),
                        );
                        return (Some(Err(e)), true);
                    }
                    return (None, true);
                }
                Some(other) => {
                    let e = Error::new(
                        ErrorKind::Protocol,
                        format!("snapshot {id}: unknown control message {other:?}"),
                    );
                    return (Some(Err(e)), true);
                }
            }
        }
    }
}

impl Stream for Snapshot {
    type Item = Result<ChangeEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rows.as_mut().poll_next(cx)
    }
}

/// Decodes the rows of a row batch (protocol §8.2) announced to hold `count` rows. Any
/// fault fails the whole message (its rows are then missing from the count at `end`).
async fn decode_batch(
    cache: &SchemaCache,
    message: Message,
    count: &str,
) -> Result<VecDeque<ChangeEvent>, Error> {
    let subject = message.subject.to_string();
    let (stream_sequence, consumer_sequence, delivered) = delivery(&message)?;
    let payload = message.payload.clone();
    let headers = message.headers.clone();
    // The rows of one message share its subject and headers.
    let shared_subject: std::sync::Arc<str> = subject.as_str().into();
    let shared_headers = headers.clone().map(std::sync::Arc::new);
    let undecoded = |e: Error| {
        e.for_message(UndecodedMessage {
            subject: subject.clone(),
            stream_sequence,
            consumer_sequence,
            headers: headers.clone(),
            payload: payload.clone(),
            ack: AckHandle::none(),
        })
    };
    let count: u64 = count.parse().map_err(|_| {
        undecoded(Error::new(
            ErrorKind::Protocol,
            format!("bad {} header {count:?}", headers::SNAPSHOT_ROWS),
        ))
    })?;
    let ranges = batch::split(&payload, count).map_err(|e| {
        undecoded(Error::with_source(
            ErrorKind::Decode,
            "malformed snapshot row batch",
            e,
        ))
    })?;
    let mut events = VecDeque::with_capacity(ranges.len());
    let mut schema = None;
    for range in ranges {
        let row = payload.slice(range);
        let (fingerprint, _) = split_single_object(&row).map_err(|e| {
            undecoded(Error::with_source(
                ErrorKind::Decode,
                "a batched row is not an Avro single-object message",
                e,
            ))
        })?;
        let schema = match &schema {
            Some(schema) => Arc::clone(schema),
            None => {
                let found = cache.get(fingerprint).await.map_err(undecoded)?;
                schema = Some(Arc::clone(&found));
                found
            }
        };
        // A batch holds one table version; `decode` refuses another fingerprint.
        let decoded = schema.decode(&row).map_err(undecoded)?;
        events.push_back(ChangeEvent {
            op: decoded.op,
            source: decoded.source,
            before: decoded.before,
            after: decoded.after,
            fingerprint,
            subject: shared_subject.clone(),
            stream_sequence,
            consumer_sequence,
            delivered,
            ack: AckHandle::none(),
            message_index: 0,
            message_events: 1,
            payload: row,
            headers: shared_headers.clone(),
        });
    }
    Ok(events)
}

fn nats_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::Nats, what.to_owned(), e)
}

/// Sends an RPC and turns an error answer into an [`Error`].
async fn rpc(
    nats: &async_nats::Client,
    subject: String,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<async_nats::Message, Error> {
    let reply =
        match tokio::time::timeout(timeout, nats.request(subject.clone(), body.into())).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{subject}: no answer in {timeout:?}"),
                ));
            }
            Ok(Err(e)) => {
                let kind = match e.kind() {
                    RequestErrorKind::TimedOut => ErrorKind::Timeout,
                    RequestErrorKind::NoResponders => ErrorKind::Unavailable,
                    _ => ErrorKind::Nats,
                };
                return Err(Error::with_source(kind, subject, e));
            }
            Ok(Ok(reply)) => reply,
        };
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        let text = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let kind = match code.as_str() {
            "429" => ErrorKind::Busy,
            "503" => ErrorKind::Unavailable,
            c if c.starts_with('4') => ErrorKind::Rejected,
            _ => ErrorKind::Server,
        };
        return Err(Error::new(kind, format!("{} {text}", code.as_str())));
    }
    Ok(reply)
}

/// Requests a snapshot and starts reading it.
pub(crate) async fn request(
    nats: &async_nats::Client,
    js: &jetstream::Context,
    names: &Names,
    cache: Arc<SchemaCache>,
    timeout: Duration,
    request: SnapshotRequest,
) -> Result<Snapshot, Error> {
    let pattern = match &request.exact {
        Some((schema, table)) => TablePattern::table(schema.clone(), table.clone()),
        None => request.table.parse::<TablePattern>()?,
    };
    let (schema, table) = match pattern {
        TablePattern::Table { schema, table } => (schema, table),
        other => {
            return Err(Error::new(
                ErrorKind::Config,
                format!("a snapshot needs one table (schema.table), not {other}"),
            ));
        }
    };
    let body = serde_json::to_vec(&walbrook_protocol::snapshot::SnapshotRequest {
        schema,
        table,
        filter: request.filter.clone(),
        chunk_size: request.chunk_size,
    })
    .expect("a request serializes");
    let reply = rpc(nats, names.snapshot_rpc(), body, timeout).await?;
    let info: SnapshotInfo = serde_json::from_slice(&reply.payload)
        .map_err(|e| Error::with_source(ErrorKind::Protocol, "the snapshot RPC's answer", e))?;
    read(js, cache, info, request.stall_timeout).await
}

/// Lists snapshots.
pub(crate) async fn list(
    nats: &async_nats::Client,
    names: &Names,
    timeout: Duration,
    wanted: ListRequest,
) -> Result<Vec<SnapshotInfo>, Error> {
    let body = serde_json::to_vec(&wanted).expect("a request serializes");
    let reply = rpc(nats, names.snapshots_rpc(), body, timeout).await?;
    let list: ListReply = serde_json::from_slice(&reply.payload)
        .map_err(|e| Error::with_source(ErrorKind::Protocol, "the snapshot listing's answer", e))?;
    if list.truncated {
        tracing::warn!(
            listed = list.snapshots.len(),
            "more snapshots match than fit in one answer: only the newest are listed"
        );
    }
    Ok(list.snapshots)
}

/// Reads a snapshot's messages from the start of its subject.
pub(crate) async fn read(
    js: &jetstream::Context,
    cache: Arc<SchemaCache>,
    info: SnapshotInfo,
    stall: Duration,
) -> Result<Snapshot, Error> {
    let stream = js.get_stream(&info.stream).await.map_err(|e| {
        let not_found = matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
        if not_found {
            Error::new(
                ErrorKind::StreamNotFound,
                format!("stream {} does not exist", info.stream),
            )
        } else {
            nats_err(&format!("getting stream {}", info.stream), e)
        }
    })?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: info.subject.clone(),
            max_batch: 1_000,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err("creating an ordered consumer", e))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| nats_err("starting the ordered consumer", e))?
        .map(|r| r.map_err(|e| nats_err("reading the snapshot", e)));
    let received = Arc::new(AtomicU64::new(0));
    let reader = Reader {
        messages: Box::pin(messages),
        cache,
        objects: Arc::new(PayloadObjects::new(js.clone())),
        stall,
        id: info.id.clone(),
        received: Arc::clone(&received),
        finished: false,
        pending: VecDeque::new(),
    };
    let rows = futures::stream::unfold(reader, |mut reader| async move {
        if reader.finished {
            return None;
        }
        let (item, finished) = reader.next().await;
        reader.finished = finished;
        item.map(|item| (item, reader))
    });
    Ok(Snapshot {
        info,
        // Fused: polling again after the end keeps answering `None`.
        rows: Box::pin(rows.fuse()),
        received,
    })
}
