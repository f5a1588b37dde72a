//! Running one accepted snapshot: `begin`, the wait for P, the rows, then `end` — or a
//! `failed` message, never a silently short snapshot.
//!
//! ```text
//!  reader task (own SQL connection)         runner (owns the lock connection)
//!  COPY (chunk query) ──► channel(1) ──►  encode (op READ) ──► Publisher (bounded window)
//!  binary, or text when a column type
//!  has no binary reader
//!                                          progress to _walbrook.snapshots as acks arrive
//! ```
//! Memory is bounded by three chunks (one being read, one queued, one being published)
//! plus the publisher's window.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_postgres::{Client, CopyOutStream};
use tokio_util::sync::CancellationToken;
use walbrook_protocol::headers;
use walbrook_protocol::snapshot::{SnapshotEnd, SnapshotInfo, SnapshotStatus, batch, control};

use crate::event::{Op, Source};
use crate::large_payload::LargePayloads;
use crate::lsn::Lsn;
use crate::metrics::{KindLabels, Metrics, TableLabels};
use crate::pgoutput::ColumnValue;
use crate::publish::{OutMessage, Publisher, RetryPolicy, context_for};

use super::position::{self, ConsistentPoint};
use super::store;
use super::table::{FilterSql, SnapshotTable};
use super::{copy_binary, copy_text};

/// Everything an accepted snapshot needs.
pub(super) struct Run {
    pub info: SnapshotInfo,
    pub table: Arc<SnapshotTable>,
    pub filter: FilterSql,
    pub point: ConsistentPoint,
    /// The connection holding the ownership lock.
    pub sql: Client,
    pub pg_url: String,
    pub nats: async_nats::Client,
    /// Where rows larger than the server's `max_payload` go.
    pub large: LargePayloads,
    pub max_inflight: usize,
    pub ack_timeout: Duration,
    pub metrics: Metrics,
    pub cancel: CancellationToken,
    pub started_micros: i64,
    pub permit: OwnedSemaphorePermit,
}

impl Run {
    /// Runs to the end; every outcome is recorded and published.
    pub async fn execute(self) {
        let Run {
            info,
            table,
            filter,
            point,
            sql,
            pg_url,
            nats,
            mut large,
            max_inflight,
            ack_timeout,
            metrics,
            cancel,
            started_micros,
            permit,
        } = self;
        metrics.snapshots_running.inc();
        // The window counts messages, and row batches are large: bound it in bytes too.
        let window = max_inflight.min(BATCH_WINDOW);
        let js = context_for(nats.clone(), window, ack_timeout);
        let mut publisher = Publisher::new(
            js.clone(),
            window,
            RetryPolicy {
                give_up_after: Some(Duration::from_secs(60)),
                ..RetryPolicy::default()
            },
        );
        let mut progress = Progress {
            acked: 0,
            table: table.name(),
            metrics: metrics.clone(),
        };
        let outcome = publish_all(
            &info,
            &table,
            &filter,
            &point,
            &sql,
            &pg_url,
            &mut publisher,
            &mut large,
            &mut progress,
            &cancel,
            started_micros,
        )
        .await;
        let kind = match outcome {
            Ok(rows) => {
                if let Err(e) =
                    store::finish(&sql, &info.id, SnapshotStatus::Done, rows, None).await
                {
                    tracing::warn!(snapshot = %info.id, error = %e, "cannot record the end of a snapshot");
                }
                tracing::info!(snapshot = %info.id, table = %progress.table, rows, "snapshot done");
                "done"
            }
            Err(reason) => {
                let rows = progress.acked;
                tracing::warn!(snapshot = %info.id, table = %progress.table, rows, error = %reason, "snapshot failed");
                if let Err(e) =
                    store::finish(&sql, &info.id, SnapshotStatus::Failed, rows, Some(&reason)).await
                {
                    tracing::warn!(snapshot = %info.id, error = %e, "cannot record a snapshot failure");
                }
                publish_failed(&nats, &info, rows, &reason).await;
                "failed"
            }
        };
        metrics
            .snapshots
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
        metrics.snapshots_running.dec();
        drop(sql); // releases the ownership lock
        drop(permit);
    }
}

/// Counts acked rows into the metrics.
struct Progress {
    acked: u64,
    table: String,
    metrics: Metrics,
}

impl Progress {
    fn update(&mut self, confirmed: Lsn) {
        if confirmed.0 > self.acked {
            self.metrics
                .snapshot_rows
                .get_or_create(&TableLabels {
                    table: self.table.clone(),
                })
                .inc_by(confirmed.0 - self.acked);
            self.acked = confirmed.0;
        }
    }
}

fn control_headers(info: &SnapshotInfo, kind: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("snap-{}-{kind}", info.id).as_str());
    headers.insert(headers::SNAPSHOT_CONTROL, kind);
    headers.insert(headers::SNAPSHOT_ID, info.id.as_str());
    headers.insert(headers::FINGERPRINT, info.fingerprint.as_str());
    headers
}

#[allow(clippy::too_many_arguments)]
async fn publish_all(
    info: &SnapshotInfo,
    table: &Arc<SnapshotTable>,
    filter: &FilterSql,
    point: &ConsistentPoint,
    sql: &Client,
    pg_url: &str,
    publisher: &mut Publisher,
    large: &mut LargePayloads,
    progress: &mut Progress,
    cancel: &CancellationToken,
    started_micros: i64,
) -> Result<u64, String> {
    let publish_err = |e: crate::publish::PublishFailure| format!("publishing to NATS: {e}");
    publisher
        .push(OutMessage {
            subject: info.subject.clone(),
            headers: control_headers(info, control::BEGIN),
            payload: serde_json::to_vec(info).expect("info serializes").into(),
            chained: false,
        })
        .await
        .map_err(publish_err)?;
    match position::wait_visible(sql, point, cancel).await {
        Ok(true) => {}
        Ok(false) => return Err("the producer shut down".into()),
        Err(e) => return Err(format!("waiting for open transactions: {e}")),
    }
    let reader_sql = crate::pipeline::connect_sql(pg_url)
        .await
        .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
    reader_sql
        .batch_execute(super::SESSION_SQL)
        .await
        .map_err(|e| format!("preparing the session: {e}"))?;
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, String>>(1);
    // Chunk buffers go back to the reader once published: allocating a fresh 4 MiB
    // buffer per chunk cost page faults on new memory (up to 16% of the producer's CPU).
    let (recycle, recycled) = mpsc::channel::<BytesMut>(RECYCLED_BUFFERS);
    let reader = tokio::spawn(read_rows(
        reader_sql,
        Arc::clone(table),
        filter.clone(),
        info.chunk_size,
        tx,
        recycled,
    ));
    let _abort_reader = AbortOnDrop(reader);
    let desc = table.encoder.desc();
    let columns = desc.columns.len();
    let binary = table.binary();
    let mut batch = RowBatch {
        subject: info.subject.clone(),
        snapshot: info.id.clone(),
        fingerprint: table.encoder.fingerprint().to_string(),
        body: Vec::new(),
        rows: 0,
        first: 1,
    };
    let mut source = Source {
        database: info.database.clone(),
        schema: desc.schema.clone(),
        table: desc.table.clone(),
        xid: 0,
        commit_lsn: point.position,
        lsn: point.position,
        commit_ts_micros: started_micros,
        ordinal: 0,
        last: false,
        sent_at_micros: 0,
    };
    // Every row's source differs only from its ordinal on.
    let prefix = table.encoder.source_prefix(Op::Read, &source);
    let mut scratch = Vec::with_capacity(1024);
    let mut rows: u64 = 0;
    let mut timing = Timing::default();
    let mut last_recorded = std::time::Instant::now();
    loop {
        let waited = std::time::Instant::now();
        let chunk = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err("the producer shut down".into()),
            chunk = rx.recv() => chunk,
        };
        timing.reading += waited.elapsed();
        let Some(chunk) = chunk else { break };
        let started = std::time::Instant::now();
        // Parsed here, row by row, rather than by the reader.
        let chunk = chunk?;
        let mut rows_of = RowsOf::new(&chunk, binary, columns);
        let published_before = timing.publishing;
        let limit = large.max_body().min(BATCH_BYTES);
        let sent_at = now_micros();
        loop {
            source.ordinal = rows;
            source.sent_at_micros = sent_at;
            scratch.clear();
            if !rows_of.encode_next(&table.encoder, &prefix, &source, &mut scratch)? {
                break;
            }
            rows += 1;
            let framed = batch::framed_len(scratch.len());
            if batch.rows > 0 && batch.body.len() + framed > limit {
                let pushed = std::time::Instant::now();
                batch.publish(publisher).await.map_err(publish_err)?;
                timing.publishing += pushed.elapsed();
            }
            if framed > limit {
                // Too large to share a message: on its own, claim-checked if it exceeds
                // max_payload (protocol §3.5).
                publish_single(&batch, rows, scratch.clone(), publisher, large).await?;
                batch.first = rows + 1;
                continue;
            }
            if batch.rows == 0 {
                batch.first = rows;
                batch.body.reserve(limit);
            }
            batch::push(&mut batch.body, &scratch);
            batch.rows += 1;
        }
        if batch.rows > 0 {
            let pushed = std::time::Instant::now();
            batch.publish(publisher).await.map_err(publish_err)?;
            timing.publishing += pushed.elapsed();
        }
        timing.encoding += started.elapsed() - (timing.publishing - published_before);
        drop(rows_of);
        if let Ok(buffer) = chunk.try_into_mut() {
            // Full means the reader has spares; this one is freed.
            let _ = recycle.try_send(buffer);
        }
        // Rows are counted as acked in order: a confirm marker per chunk.
        publisher.push_confirm(Lsn(rows));
        progress.update(publisher.confirmed());
        // The stored progress is for listings (`rows` of a running snapshot): written at
        // most every PROGRESS_EVERY, as each write is a commit on the source.
        if last_recorded.elapsed() >= PROGRESS_EVERY {
            let recorded = std::time::Instant::now();
            store::progress(sql, &info.id, progress.acked)
                .await
                .map_err(|e| format!("recording progress: {e}"))?;
            timing.recording += recorded.elapsed();
            last_recorded = std::time::Instant::now();
        }
    }
    tracing::debug!(
        snapshot = %info.id,
        rows,
        waiting_for_rows_ms = timing.reading.as_millis(),
        encoding_ms = timing.encoding.as_millis(),
        waiting_for_the_window_ms = timing.publishing.as_millis(),
        recording_progress_ms = timing.recording.as_millis(),
        "snapshot rows published"
    );
    let subject = batch.subject.clone();
    publisher.flush().await.map_err(publish_err)?;
    progress.update(publisher.confirmed());
    let end = SnapshotEnd {
        id: info.id.clone(),
        rows,
        error: None,
    };
    publisher
        .push(OutMessage {
            subject: subject.clone(),
            headers: control_headers(info, control::END),
            payload: serde_json::to_vec(&end).expect("end serializes").into(),
            chained: false,
        })
        .await
        .map_err(publish_err)?;
    publisher.flush().await.map_err(publish_err)?;
    Ok(rows)
}

/// The rows of one chunk, encoded one at a time.
struct RowsOf<'c> {
    chunk: &'c Bytes,
    /// The chunk as text when it is text and valid UTF-8 (checked once): rows without
    /// escapes are encoded straight from it.
    text: Option<&'c str>,
    binary: bool,
    columns: usize,
    start: usize,
    values: Vec<walbrook_pgtype_avro::ColumnValue<'c>>,
}

impl<'c> RowsOf<'c> {
    fn new(chunk: &'c Bytes, binary: bool, columns: usize) -> RowsOf<'c> {
        RowsOf {
            chunk,
            text: (!binary).then(|| std::str::from_utf8(chunk).ok()).flatten(),
            binary,
            columns,
            start: 0,
            values: Vec::with_capacity(columns),
        }
    }

    /// Encodes the next row as an event of `source` into `out`: `false` at the end. A
    /// binary row's values, and a text row without escapes in a chunk that is valid UTF-8,
    /// are encoded straight from the buffer; other text rows go through a tuple (whose
    /// conversion names the offending column).
    fn encode_next(
        &mut self,
        encoder: &crate::event::TableEncoder,
        prefix: &crate::event::SourcePrefix,
        source: &Source,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let chunk: &'c Bytes = self.chunk;
        if self.start >= chunk.len() {
            return Ok(false);
        }
        let row = source.ordinal + 1;
        let encoded = if self.binary {
            match copy_binary::read(&chunk[self.start..], self.columns, Some(&mut self.values))
                .map_err(|e| e.to_string())?
            {
                copy_binary::Next::Row(len) => self.start += len,
                _ => return Err(copy_binary::CopyBinaryError::Truncated.to_string()),
            }
            encoder.encode_after_text_into(prefix, source, &self.values, out)
        } else {
            let end = memchr::memchr(b'\n', &chunk[self.start..])
                .map(|i| self.start + i)
                .ok_or_else(|| copy_text::CopyTextError::Truncated.to_string())?;
            let line = self.start..end;
            self.start = end + 1;
            let plain = match self.text {
                Some(text) => {
                    copy_text::plain_row(&text[line.clone()], self.columns, &mut self.values)
                        .map_err(|e| e.to_string())?
                }
                None => false,
            };
            if plain {
                encoder.encode_after_text_into(prefix, source, &self.values, out)
            } else {
                let tuple = copy_text::row(chunk, line.start, line.end, self.columns)
                    .map_err(|e| e.to_string())?;
                encoder.encode_into(Op::Read, source, None, Some(&tuple), out)
            }
        };
        encoded.map_err(|e| format!("cannot encode row {row}: {e}"))?;
        Ok(true)
    }
}

/// How often a running snapshot's acked row count is written to `_walbrook.snapshots`.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Where a snapshot's publishing task spent its time (logged at debug level).
#[derive(Default)]
struct Timing {
    reading: Duration,
    encoding: Duration,
    publishing: Duration,
    recording: Duration,
}

/// Chunk buffers waiting for the reader to reuse them.
const RECYCLED_BUFFERS: usize = 2;

/// Upper bound of a row batch's body; the server's `max_payload` may lower it.
const BATCH_BYTES: usize = 256 * 1024;

/// Most row batches awaiting their ack: with [`BATCH_BYTES`], 8 MiB in flight.
const BATCH_WINDOW: usize = 32;

/// Rows waiting to go out as one message (protocol §8.2).
struct RowBatch {
    subject: String,
    snapshot: String,
    fingerprint: String,
    /// Framed rows ([`batch`]).
    body: Vec<u8>,
    rows: u64,
    /// 1-based number of the first row.
    first: u64,
}

impl RowBatch {
    fn headers(&self, first: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("snap-{}-{first}", self.snapshot).as_str(),
        );
        headers.insert(headers::FINGERPRINT, self.fingerprint.as_str());
        headers.insert(headers::OP, Op::Read.as_str());
        headers.insert(headers::SNAPSHOT_ID, self.snapshot.as_str());
        headers.insert(headers::SNAPSHOT_ROW, first.to_string().as_str());
        headers
    }

    /// Publishes the rows gathered so far as one message and starts a new batch.
    async fn publish(
        &mut self,
        publisher: &mut Publisher,
    ) -> Result<(), crate::publish::PublishFailure> {
        let mut headers = self.headers(self.first);
        headers.insert(headers::SNAPSHOT_ROWS, self.rows.to_string().as_str());
        let body = std::mem::take(&mut self.body);
        self.first += self.rows;
        self.rows = 0;
        publisher
            .push(OutMessage {
                subject: self.subject.clone(),
                headers,
                payload: Bytes::from(body),
                chained: false,
            })
            .await
    }
}

/// Publishes row `row` alone: a plain single-object body, or a reference to the object
/// store when it exceeds the server's `max_payload`.
async fn publish_single(
    batch: &RowBatch,
    row: u64,
    payload: Vec<u8>,
    publisher: &mut Publisher,
    large: &mut LargePayloads,
) -> Result<(), String> {
    let mut headers = batch.headers(row);
    let payload = if large.fits(&headers, payload.len()) {
        Bytes::from(payload)
    } else {
        let object = format!("snap-{}-{row}", batch.snapshot);
        let reference = large
            .store(&object, payload.into())
            .await
            .map_err(|e| e.to_string())?;
        headers.insert(headers::PAYLOAD_OBJECT, reference.as_str());
        Bytes::new()
    };
    publisher
        .push(OutMessage {
            subject: batch.subject.clone(),
            headers,
            payload,
            chained: false,
        })
        .await
        .map_err(|e| format!("publishing to NATS: {e}"))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the rows chunk by chunk into `tx`; an error is sent as the last item.
async fn read_rows(
    sql: Client,
    table: Arc<SnapshotTable>,
    filter: FilterSql,
    chunk_size: u32,
    tx: mpsc::Sender<Result<Bytes, String>>,
    recycled: mpsc::Receiver<BytesMut>,
) {
    let result = if table.key.is_empty() {
        read_unkeyed(&sql, &table, &filter, chunk_size, &tx).await
    } else {
        read_keyed(&sql, &table, &filter, chunk_size, &tx, recycled).await
    };
    if let Err(e) = result {
        let _ = tx.send(Err(format!("reading the table: {e}"))).await;
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// `COPY (query) TO STDOUT`, in binary when `binary` (see [`copy_binary`]), else in
/// text (see [`copy_text`]).
async fn copy_out(sql: &Client, query: &str, binary: bool) -> Result<CopyOutStream, String> {
    let format = if binary { " (FORMAT binary)" } else { "" };
    sql.copy_out(&format!("COPY ({query}) TO STDOUT{format}"))
        .await
        .map_err(|e| db_message(&e))
}

/// One key-ordered chunk as the reader hands it over.
struct Chunk {
    /// The rows: whole text lines, or binary rows without the header and trailer.
    rows: Bytes,
    count: usize,
    /// The last row's key values as text (for the next chunk's query).
    last_key: Vec<String>,
}

/// A text COPY's output as a [`Chunk`]; only the last row is parsed.
fn text_chunk(table: &SnapshotTable, data: Bytes) -> Result<Option<Chunk>, String> {
    let columns = table.encoder.desc().columns.len();
    if data.is_empty() {
        return Ok(None);
    }
    if data.last() != Some(&b'\n') {
        return Err(copy_text::CopyTextError::Truncated.to_string());
    }
    let final_start = memchr::memrchr(b'\n', &data[..data.len() - 1]).map_or(0, |i| i + 1);
    let final_row = copy_text::rows(&data.slice(final_start..), columns)
        .map_err(|e| e.to_string())?
        .pop()
        .expect("one row");
    let mut last_key = Vec::with_capacity(table.key.len());
    for &i in &table.key {
        match &final_row.0[i] {
            ColumnValue::Text(bytes) => {
                last_key.push(String::from_utf8_lossy(bytes).into_owned());
            }
            _ => return Err("a key column is NULL".into()),
        }
    }
    drop(final_row); // its values share the buffer, which the publisher recycles
    Ok(Some(Chunk {
        count: memchr::memchr_iter(b'\n', &data).count(),
        rows: data,
        last_key,
    }))
}

/// A binary COPY's output as a [`Chunk`]: the rows are walked (not decoded) for their
/// count, and the last row's key values are read and rendered as text.
fn binary_chunk(table: &SnapshotTable, data: Bytes) -> Result<Option<Chunk>, String> {
    let desc = table.encoder.desc();
    let truncated = || copy_binary::CopyBinaryError::Truncated.to_string();
    let header = copy_binary::header_len(&data)
        .map_err(|e| e.to_string())?
        .ok_or_else(truncated)?;
    let scan = copy_binary::scan(&data[header..], desc.columns.len()).map_err(|e| e.to_string())?;
    if scan.then != copy_binary::Next::End || header + scan.end + 2 != data.len() {
        return Err(truncated());
    }
    let Some(last_start) = scan.last_start else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(desc.columns.len());
    copy_binary::read(
        &data[header + last_start..],
        desc.columns.len(),
        Some(&mut values),
    )
    .map_err(|e| e.to_string())?;
    let mut last_key = Vec::with_capacity(table.key.len());
    for &i in &table.key {
        let column = &desc.columns[i];
        let walbrook_pgtype_avro::ColumnValue::Binary(bytes) = values[i] else {
            return Err("a key column is NULL".into());
        };
        let text = walbrook_pgtype_avro::parse_binary(&column.pg_type, column.typmod, bytes)
            .and_then(|v| walbrook_pgtype_avro::render_text(&column.pg_type, &v))
            .map_err(|e| format!("reading the key column {:?}: {e}", column.name))?
            .ok_or("a key column is NULL")?;
        last_key.push(text);
    }
    Ok(Some(Chunk {
        rows: data.slice(header..header + scan.end),
        count: scan.rows,
        last_key,
    }))
}

/// Key-ordered chunks, each one `COPY` of one statement (its own short transaction).
/// Only each chunk's last row is parsed here (for the next chunk's key); the publishing
/// task parses the rest while the next chunk is read.
async fn read_keyed(
    sql: &Client,
    table: &SnapshotTable,
    filter: &FilterSql,
    chunk_size: u32,
    tx: &mpsc::Sender<Result<Bytes, String>>,
    mut recycled: mpsc::Receiver<BytesMut>,
) -> Result<(), String> {
    let binary = table.binary();
    let mut last: Option<Vec<String>> = None;
    let (mut copying, mut handing_over) = (Duration::ZERO, Duration::ZERO);
    let report = |copying: Duration, handing_over: Duration| {
        tracing::debug!(
            binary,
            copying_ms = copying.as_millis(),
            waiting_for_the_publisher_ms = handing_over.as_millis(),
            "snapshot rows read"
        );
    };
    // The previous chunk's size plus an eighth: room for the next without regrowing.
    let mut expected = 0usize;
    loop {
        let started = std::time::Instant::now();
        let query = table.chunk_query(filter, last.as_deref(), chunk_size);
        let stream = copy_out(sql, &query, binary).await?;
        futures::pin_mut!(stream);
        let mut data = match recycled.try_recv() {
            Ok(mut buffer) => {
                buffer.clear();
                buffer.reserve(expected);
                buffer
            }
            Err(_) => BytesMut::with_capacity(expected),
        };
        while let Some(part) = stream.next().await {
            data.extend_from_slice(&part.map_err(|e| db_message(&e))?);
        }
        copying += started.elapsed();
        expected = data.len() + data.len() / 8;
        let chunk = if binary {
            binary_chunk(table, data.freeze())?
        } else {
            text_chunk(table, data.freeze())?
        };
        let Some(chunk) = chunk else {
            report(copying, handing_over);
            return Ok(());
        };
        last = Some(chunk.last_key);
        let full = chunk.count == chunk_size as usize;
        let sending = std::time::Instant::now();
        if tx.send(Ok(chunk.rows)).await.is_err() {
            return Ok(());
        }
        handing_over += sending.elapsed();
        if !full {
            report(copying, handing_over);
            return Ok(());
        }
    }
}

/// A table without a usable key: one `COPY` of the whole table (one statement, so one
/// consistent view), cut into chunks of `chunk_size` rows as it streams in. Backpressure
/// holds: the stream is only polled while the channel has room.
async fn read_unkeyed(
    sql: &Client,
    table: &SnapshotTable,
    filter: &FilterSql,
    chunk_size: u32,
    tx: &mpsc::Sender<Result<Bytes, String>>,
) -> Result<(), String> {
    let binary = table.binary();
    let columns = table.encoder.desc().columns.len();
    let stream = copy_out(sql, &table.full_query(filter), binary).await?;
    futures::pin_mut!(stream);
    let mut cutter = if binary {
        Cutter::Binary {
            header_read: false,
            complete: 0,
            ended: false,
        }
    } else {
        Cutter::Text
    };
    let mut data = BytesMut::new();
    let mut rows_in_data = 0usize;
    loop {
        let part = stream
            .next()
            .await
            .transpose()
            .map_err(|e| db_message(&e))?;
        let done = part.is_none();
        let new_from = data.len();
        if let Some(part) = part {
            data.extend_from_slice(&part);
        }
        rows_in_data += cutter.count_new_rows(&mut data, new_from, columns)?;
        while rows_in_data >= chunk_size as usize || (done && rows_in_data > 0) {
            let cut = cutter.end_of_rows(&data, chunk_size as usize, columns)?;
            let chunk = data.split_to(cut.end).freeze();
            rows_in_data -= cut.rows;
            cutter.taken(cut.end);
            if tx.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
        }
        if done {
            return cutter.finish(&data);
        }
    }
}

/// Where [`read_unkeyed`] cuts the streamed COPY data into chunks of whole rows.
enum Cutter {
    /// Rows end with `\n`.
    Text,
    /// Rows are walked field by field; the header goes before the first chunk and the
    /// trailer after the last.
    Binary {
        header_read: bool,
        /// The end of the complete rows counted so far.
        complete: usize,
        /// Whether the trailer was seen.
        ended: bool,
    },
}

/// The first `rows` rows of the data end at `end`.
struct Cut {
    end: usize,
    rows: usize,
}

impl Cutter {
    /// Counts the rows completed by the data appended from `new_from` on (and drops the
    /// binary header).
    fn count_new_rows(
        &mut self,
        data: &mut BytesMut,
        new_from: usize,
        columns: usize,
    ) -> Result<usize, String> {
        match self {
            Cutter::Text => Ok(memchr::memchr_iter(b'\n', &data[new_from..]).count()),
            Cutter::Binary {
                header_read,
                complete,
                ended,
            } => {
                if !*header_read {
                    match copy_binary::header_len(data).map_err(|e| e.to_string())? {
                        Some(len) => {
                            let _ = data.split_to(len);
                            *header_read = true;
                        }
                        None => return Ok(0),
                    }
                }
                if *ended {
                    return Ok(0);
                }
                let scan =
                    copy_binary::scan(&data[*complete..], columns).map_err(|e| e.to_string())?;
                *complete += scan.end;
                *ended = scan.then == copy_binary::Next::End;
                Ok(scan.rows)
            }
        }
    }

    /// Where the first `limit` rows (or all complete rows, if fewer) end.
    fn end_of_rows(&self, data: &[u8], limit: usize, columns: usize) -> Result<Cut, String> {
        match self {
            Cutter::Text => {
                let newlines = memchr::memchr_iter(b'\n', data);
                let (rows, end) = newlines
                    .take(limit)
                    .enumerate()
                    .last()
                    .map_or((0, 0), |(i, at)| (i + 1, at + 1));
                Ok(Cut { end, rows })
            }
            Cutter::Binary { complete, .. } => {
                let mut cut = Cut { end: 0, rows: 0 };
                while cut.rows < limit && cut.end < *complete {
                    match copy_binary::read(&data[cut.end..], columns, None)
                        .map_err(|e| e.to_string())?
                    {
                        copy_binary::Next::Row(len) => {
                            cut.end += len;
                            cut.rows += 1;
                        }
                        _ => break,
                    }
                }
                Ok(cut)
            }
        }
    }

    /// `end` bytes of counted rows were handed over.
    fn taken(&mut self, end: usize) {
        if let Cutter::Binary { complete, .. } = self {
            *complete -= end;
        }
    }

    /// The stream ended: what is left must be nothing (text) or exactly the trailer.
    fn finish(&self, left: &[u8]) -> Result<(), String> {
        let complete = match self {
            Cutter::Text => left.is_empty(),
            Cutter::Binary {
                header_read,
                complete,
                ended,
            } => {
                *header_read
                    && *ended
                    && *complete == 0
                    && left == walbrook_pgtype_avro::pg_binary::COPY_TRAILER
            }
        };
        if complete {
            Ok(())
        } else {
            Err(copy_text::CopyTextError::Truncated.to_string())
        }
    }
}

/// Publishes the `failed` message (a few attempts; its `Nats-Msg-Id` dedupes repeats).
pub(super) async fn publish_failed(
    nats: &async_nats::Client,
    info: &SnapshotInfo,
    rows: u64,
    reason: &str,
) {
    let js = jetstream::new(nats.clone());
    let body = SnapshotEnd {
        id: info.id.clone(),
        rows,
        error: Some(reason.to_string()),
    };
    let payload: Bytes = serde_json::to_vec(&body).expect("end serializes").into();
    for attempt in 1..=5 {
        let sent = js
            .publish_with_headers(
                info.subject.clone(),
                control_headers(info, control::FAILED),
                payload.clone(),
            )
            .await;
        match sent {
            Ok(ack) => match ack.await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(snapshot = %info.id, attempt, error = %e, "publishing a snapshot failure")
                }
            },
            Err(e) => {
                tracing::warn!(snapshot = %info.id, attempt, error = %e, "publishing a snapshot failure")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::error!(snapshot = %info.id, "could not publish the failure of a snapshot; readers time out instead");
}

fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}
