//! The consumer runner: applies the change stream to a [`Sink`] with a durable JetStream
//! consumer, batching, checkpoints, retries, dead letters and metrics. The sinks of
//! `walbrook sink postgres|webhook|elasticsearch` are built on it; docs/sinks.md describes the
//! contract and the guarantees.
//!
//! The run loop, in short:
//!
//! 1. Ask the sink for its checkpoint (the position stored in the target, if any).
//! 2. (Re)create the durable consumer `consumer` at the resume point: the checkpoint's commit
//!    LSN when there is one, else the sequence after the consumer's acknowledged floor, else
//!    [`RunnerOptions::start`]. Recreating it (rather than resuming it) makes JetStream
//!    deliver in stream order again: a resumed durable consumer would deliver newer messages
//!    before the unacknowledged older ones it redelivers after `ack_wait`.
//! 3. Collect a batch (up to [`RunnerOptions::max_batch_events`] events or
//!    [`RunnerOptions::max_batch_bytes`] bytes, waiting at most
//!    [`RunnerOptions::max_batch_wait`] once the first event is there), drop events at or
//!    below the checkpoint or already applied in this run (acknowledging them), and hand the
//!    rest to [`Sink::apply`] — whole, or split into per-key lanes for sinks whose writes to
//!    different keys commute ([`Ordering::PerKey`]). The next batch is collected (not
//!    processed) while the sink applies this one.
//! 4. Acknowledge the batch only after `apply` returned (the sink's write is durable).
//!    Transient failures are retried with backoff and jitter ([`RetryPolicy`]); rejected
//!    events and undecodable messages go to the dead-letter subject before being
//!    acknowledged; a fatal error stops the runner with nothing acknowledged.

mod batch;
mod continuity;
pub(crate) mod dead_letter;
mod delivery;
mod metrics;
pub mod partition;
mod resume;
mod retry;
mod sink;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind};
use crate::event::ChangeEvent;
use crate::subscribe::{ChangeStream, Start, Subscription};
use crate::{Client, Lsn};
use walbrook_protocol::MessageId;

pub use dead_letter::{
    DeadLetter, StoredDeadLetter, headers as dead_letter_headers, list as list_dead_letters,
    remove_dead_letters,
};
pub use metrics::RunnerMetrics;
pub use retry::RetryPolicy;
pub use sink::{Applied, Binding, Ordering, Position, Sink, SinkError, SinkErrorKind};

/// What a runner reads and how it batches.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// The consumer name: the durable JetStream consumer, the checkpoint row, the dead-letter
    /// subject (`<root>.<db>.dlq.<consumer>`). Letters, digits, `_` and `-`.
    pub consumer: String,
    /// Table patterns (`schema.table`, `schema.*`, `*`), as [`Subscription::tables`] takes.
    pub tables: Vec<String>,
    /// Where a consumer without checkpoint nor acknowledged position starts (default
    /// [`Start::Beginning`]).
    pub start: Start,
    /// The most events in a batch (default 500).
    pub max_batch_events: usize,
    /// The most payload bytes in a batch (default 4 MiB); a single larger event is a batch.
    pub max_batch_bytes: usize,
    /// How long to wait for more events once a batch has its first (default 50 ms).
    pub max_batch_wait: Duration,
    /// For [`Ordering::Stream`] sinks batches end only between source transactions: how long
    /// to wait for the rest of a transaction whose last event has not arrived (its remaining
    /// events may be of tables this consumer does not read) before ending the batch anyway
    /// (default 1 s). A transaction larger than [`RunnerOptions::max_transaction_events`]
    /// is split.
    pub transaction_wait: Duration,
    /// For [`Ordering::Stream`] sinks: a source transaction is kept in one batch (one target
    /// transaction) up to this many events, or 16 times `max_batch_bytes`; a larger one is
    /// split across batches, with a warning (default 32,000; never less than
    /// `max_batch_events`). It bounds the decoded events a runner holds, independently of
    /// the batch size.
    pub max_transaction_events: usize,
    /// Concurrent lanes for [`Ordering::PerKey`] sinks (default 4).
    pub lanes: usize,
    /// How transient failures are retried.
    pub retry: RetryPolicy,
    /// JetStream's redelivery timeout for the durable consumer (default 5 min; the runner
    /// applies and acknowledges well within it, and recreates the consumer on restart).
    pub ack_wait: Duration,
}

impl RunnerOptions {
    /// Options for `consumer` reading `tables`, with the defaults.
    pub fn new(
        consumer: impl Into<String>,
        tables: impl IntoIterator<Item = impl Into<String>>,
    ) -> RunnerOptions {
        RunnerOptions {
            consumer: consumer.into(),
            tables: tables.into_iter().map(Into::into).collect(),
            start: Start::Beginning,
            max_batch_events: 500,
            max_batch_bytes: 4 << 20,
            max_batch_wait: Duration::from_millis(50),
            transaction_wait: Duration::from_secs(1),
            max_transaction_events: 32_000,
            lanes: 4,
            retry: RetryPolicy::default(),
            ack_wait: Duration::from_secs(300),
        }
    }
}

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The sink reported a fatal error.
    #[error("sink {sink}: {error}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// Its error.
        error: SinkError,
    },
    /// The client failed in a way retrying cannot fix (bad configuration, auth).
    #[error(transparent)]
    Client(#[from] Error),
    /// The change stream lost messages this consumer had not received (docs/protocol.md
    /// §3.7): the target misses changes. Nothing after the gap was applied.
    #[error(
        "gap in the change stream: message {missing} on {subject} (named as its predecessor \
         by message {named_by}) is no longer in the stream, and the target does not hold it \
         ({floor}); the stream's limits (max_age, max_bytes, max_msgs) removed it before this \
         consumer got it, or the stream was purged. The target misses changes: re-bootstrap \
         it from a snapshot (a new consumer started with --snapshot), see docs/sinks.md"
    )]
    Gap {
        /// The subject (table) of the gap.
        subject: String,
        /// The id of the message that never arrived.
        missing: walbrook_protocol::MessageId,
        /// The id of the message that names it.
        named_by: walbrook_protocol::MessageId,
        /// What the target held without this run.
        floor: String,
    },
}

/// Applies a change stream to one sink. See the [module docs](self).
pub struct Runner<S: Sink> {
    client: Client,
    sink: S,
    options: RunnerOptions,
    metrics: Arc<RunnerMetrics>,
    /// The highest position the target holds (from the sink's checkpoint, then every
    /// applied batch).
    checkpoint: Option<Position>,
    /// Stream sequence of the last event applied, skipped or dead-lettered in this run.
    processed: u64,
    /// Continuity of the current subscription's delivery sequence.
    deliveries: delivery::DeliverySequence,
    /// Continuity of each subject's messages (set when the runner first subscribes).
    chains: Option<continuity::Chains>,
    /// The acknowledgements of the last applied batch, sent while the next one is collected
    /// and applied (its events are durable in the target already); `true` when all worked,
    /// and the batch's vector, emptied, for the next batch.
    acks: Option<tokio::task::JoinHandle<(bool, Vec<ChangeEvent>)>>,
    /// Batch vectors kept empty between batches, with their capacity: a batch of thousands of
    /// events is megabytes, and fresh memory for each one cost page faults (zeroing huge
    /// pages was a tenth of the sink's CPU profile).
    spare_items: Vec<Result<ChangeEvent, Error>>,
    spare_events: Vec<ChangeEvent>,
}

impl<S: Sink> std::fmt::Debug for Runner<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("sink", &self.sink.name())
            .field("options", &self.options)
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}

enum Flow {
    Continue,
    Resubscribe,
    Stop,
}

impl<S: Sink> Runner<S> {
    /// A runner of `sink` for `options` on `client`'s database.
    pub fn new(client: Client, mut sink: S, options: RunnerOptions) -> Runner<S> {
        let metrics = Arc::new(RunnerMetrics::new(sink.name(), &options.consumer));
        sink.bind(&Binding::new(client.database(), metrics.clone()));
        Runner {
            client,
            sink,
            options,
            metrics,
            checkpoint: None,
            processed: 0,
            spare_items: Vec::new(),
            spare_events: Vec::new(),
            acks: None,
            deliveries: delivery::DeliverySequence::default(),
            chains: None,
        }
    }

    /// The runner's metrics (shared; serve [`RunnerMetrics::render`] on `/metrics`).
    pub fn metrics(&self) -> Arc<RunnerMetrics> {
        self.metrics.clone()
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Bootstraps the target from a snapshot: applies `rows` (op `Read` events, in batches,
    /// with the same retries and dead letters as live changes), stores the checkpoint just
    /// before `position`, and makes the durable consumer start at
    /// `Start::CommitPosition(position)`, so [`Runner::run`] continues with exactly the
    /// changes after the snapshot: no gap, no double.
    ///
    /// This is the seam for the snapshot SDK call (`client.snapshot(...)`, issue #5): pass its
    /// header's position and its event stream.
    pub async fn bootstrap<R>(
        &mut self,
        rows: R,
        position: Lsn,
        shutdown: &CancellationToken,
    ) -> Result<u64, RunError>
    where
        R: Stream<Item = Result<ChangeEvent, Error>> + Send,
    {
        let (count, stopped) = self.apply_rows(rows, shutdown).await?;
        if stopped {
            return Ok(count);
        }
        let checkpoint = Position::before(position);
        self.retry_sink(shutdown, |sink| {
            let consumer = self.options.consumer.clone();
            async move { sink.store_checkpoint(&consumer, checkpoint).await }
        })
        .await?;
        self.checkpoint = Some(checkpoint);
        self.delete_consumer().await?;
        self.options.start = Start::CommitPosition(position);
        Ok(count)
    }

    /// The tables of the options a consumer that has run has not followed yet: those its
    /// durable consumer does not filter on (added to the table list since). Empty for a
    /// consumer that has never run (that is [`Runner::needs_bootstrap`]) and when the durable
    /// consumer is missing (nothing tells which tables it followed; logged).
    pub async fn unseen_tables(&self) -> Result<Vec<String>, RunError> {
        let Ok(stream) = self
            .client
            .js()
            .get_stream(self.client.names().wal_stream())
            .await
        else {
            return Ok(Vec::new());
        };
        let info = match stream.consumer_info(&self.options.consumer).await {
            Ok(info) => info,
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                tracing::warn!(
                    consumer = %self.options.consumer,
                    "no durable consumer: tables added since it last ran cannot be told apart"
                );
                return Ok(Vec::new());
            }
            Err(e) => {
                return Err(RunError::Client(Error::with_source(
                    ErrorKind::Nats,
                    "reading the consumer",
                    e,
                )));
            }
        };
        let mut followed = info.config.filter_subjects.clone();
        if !info.config.filter_subject.is_empty() {
            followed.push(info.config.filter_subject.clone());
        }
        let mut unseen = Vec::new();
        for table in &self.options.tables {
            let pattern: crate::TablePattern = table.parse().map_err(RunError::Client)?;
            if !followed.contains(&self.client.names().wal_filter(&pattern)) {
                unseen.push(table.clone());
            }
        }
        Ok(unseen)
    }

    /// Applies the snapshot rows of tables added to a consumer that has run
    /// ([`Runner::unseen_tables`]), leaving its checkpoint and resume point as they are: the
    /// changes of those tables between the checkpoint and each snapshot's position are then
    /// applied again over rows that already reflect them (after images, deletes by key),
    /// which converges to the source; the other tables lose nothing.
    pub async fn bootstrap_tables<R>(
        &mut self,
        rows: R,
        shutdown: &CancellationToken,
    ) -> Result<u64, RunError>
    where
        R: Stream<Item = Result<ChangeEvent, Error>> + Send,
    {
        Ok(self.apply_rows(rows, shutdown).await?.0)
    }

    /// Applies snapshot rows in batches (with the retries and dead letters of live changes,
    /// no acknowledgement, no checkpoint): how many, and whether a stop cut it short.
    async fn apply_rows<R>(
        &mut self,
        rows: R,
        shutdown: &CancellationToken,
    ) -> Result<(u64, bool), RunError>
    where
        R: Stream<Item = Result<ChangeEvent, Error>> + Send,
    {
        let mut rows = std::pin::pin!(rows);
        let mut count = 0u64;
        let mut batch = Vec::new();
        loop {
            let next = rows.next().await;
            let done = next.is_none();
            if let Some(item) = next {
                batch.push(item.map_err(RunError::Client)?);
            }
            if batch.len() >= self.options.max_batch_events || (done && !batch.is_empty()) {
                count += batch.len() as u64;
                let events = std::mem::take(&mut batch);
                if matches!(self.apply_batch(events, shutdown, false).await?, Flow::Stop) {
                    return Ok((count, true));
                }
            }
            if done {
                return Ok((count, false));
            }
        }
    }

    /// Replays the dead letters of this runner's consumer through the sink (oldest first),
    /// removing each one the sink applied. Returns how many were replayed. A letter that does
    /// not decode, or that the sink rejects again, stays.
    pub async fn replay_dead_letters(&mut self) -> Result<(u64, u64), RunError> {
        let letters = dead_letter::list(&self.client, &self.options.consumer).await?;
        let (mut replayed, mut left) = (0, 0);
        for letter in letters {
            let events = match dead_letter::decode(&self.client, &letter).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(dlq_sequence = letter.dlq_sequence, "cannot replay: {e}");
                    left += 1;
                    continue;
                }
            };
            match self.sink.apply(&self.options.consumer, &events).await {
                Ok(applied) if applied.rejected.is_empty() => {
                    dead_letter::remove(&self.client, letter.dlq_sequence, &letter.headers).await?;
                    replayed += 1;
                }
                Ok(applied) => {
                    tracing::warn!(
                        dlq_sequence = letter.dlq_sequence,
                        "rejected again: {:?}",
                        applied.rejected
                    );
                    left += 1;
                }
                Err(e) if e.kind() == SinkErrorKind::Fatal => {
                    return Err(RunError::Sink {
                        sink: self.sink.name().to_owned(),
                        error: e,
                    });
                }
                Err(e) => {
                    tracing::warn!(dlq_sequence = letter.dlq_sequence, "not replayed: {e}");
                    left += 1;
                }
            }
        }
        Ok((replayed, left))
    }

    /// Whether this consumer has never run: no checkpoint in the target and no durable
    /// consumer in JetStream. Bootstrapping from a snapshot is for that case only; a
    /// consumer that has run resumes where it stopped.
    pub async fn needs_bootstrap(&self) -> Result<bool, RunError> {
        let checkpoint = self
            .sink
            .checkpoint(&self.options.consumer)
            .await
            .map_err(|error| RunError::Sink {
                sink: self.sink.name().to_string(),
                error,
            })?;
        if checkpoint.is_some() {
            return Ok(false);
        }
        Ok(self.resume_existing().await?.is_none())
    }

    async fn delete_consumer(&self) -> Result<(), RunError> {
        match self.client.delete_durable(&self.options.consumer).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::StreamNotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Where an existing durable consumer would resume: after its acknowledged floor, or where
    /// it was created to start when nothing was acknowledged yet.
    async fn resume_existing(&self) -> Result<Option<Start>, Error> {
        let stream = match self
            .client
            .js()
            .get_stream(self.client.names().wal_stream())
            .await
        {
            Ok(s) => s,
            Err(_) => return Ok(None),
        };
        match stream.consumer_info(&self.options.consumer).await {
            Ok(info) if info.ack_floor.stream_sequence > 0 => {
                Ok(Some(Start::Sequence(info.ack_floor.stream_sequence + 1)))
            }
            Ok(info) => Ok(match info.config.deliver_policy {
                async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence,
                } => Some(Start::Sequence(start_sequence)),
                _ => None,
            }),
            // No consumer: a recreation may have stopped between deleting the old one and
            // creating the new one; it saved where to resume first.
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                let saved = resume::load(
                    self.client.js(),
                    self.client.names(),
                    &self.options.consumer,
                )
                .await?;
                if let Some(start) = &saved {
                    tracing::warn!(
                        consumer = %self.options.consumer,
                        ?start,
                        "the durable consumer is missing: resuming where its recreation left off"
                    );
                }
                Ok(saved)
            }
            Err(e) => Err(Error::with_source(
                ErrorKind::Nats,
                "reading the consumer",
                e,
            )),
        }
    }

    /// What the target holds when the runner starts at `start` without a checkpoint
    /// (`resumed`: where the durable consumer stopped, else where the options say): after a
    /// durable consumer's acknowledged floor, everything before it if the stream still holds
    /// every message from there, else a loss; nothing from the beginning; whatever the
    /// consumer chose otherwise.
    async fn floor_of(&self, start: &Start, resumed: bool) -> Result<continuity::Floor, Error> {
        use continuity::Floor;
        Ok(match start {
            Start::Sequence(next) if resumed => {
                if *next >= self.stream_state().await?.first_sequence {
                    Floor::Complete
                } else {
                    Floor::Lost
                }
            }
            Start::Beginning => Floor::Nothing,
            _ => Floor::Chosen,
        })
    }

    /// The change stream's state (first and last sequences).
    async fn stream_state(&self) -> Result<async_nats::jetstream::stream::State, Error> {
        let mut stream = self
            .client
            .js()
            .get_stream(self.client.names().wal_stream())
            .await
            .map_err(|e| {
                use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind};
                let missing = matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND);
                let kind = if missing {
                    ErrorKind::StreamNotFound
                } else {
                    ErrorKind::Nats
                };
                Error::with_source(kind, "getting the change stream (has the producer run?)", e)
            })?;
        let info = stream
            .info()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Nats, "reading the change stream", e))?;
        Ok(info.state.clone())
    }

    async fn subscribe(&mut self, first: bool) -> Result<ChangeStream, Error> {
        use continuity::Floor;
        let (start, floor) = if self.processed > 0 {
            (Start::Sequence(self.processed + 1), None)
        } else if let Some(checkpoint) = self.checkpoint.filter(|_| first) {
            let held = MessageId::new(checkpoint.commit_lsn, checkpoint.ordinal);
            (
                Start::CommitPosition(checkpoint.commit_lsn),
                Some(Floor::At(held)),
            )
        } else if let Some(start) = self.resume_existing().await? {
            let floor = self.floor_of(&start, true).await?;
            (start, Some(floor))
        } else {
            let start = self.options.start;
            (start, Some(self.floor_of(&start, false).await?))
        };
        if self.chains.is_none()
            && let Some(floor) = floor
        {
            tracing::debug!(consumer = %self.options.consumer, ?floor, "continuity floor");
            self.chains = Some(continuity::Chains::new(floor));
        }
        // `New` is pinned to a sequence, so that a consumer recreated before it delivered
        // anything (a delivery gap, a NATS error) resumes there instead of at a later "new".
        let start = match start {
            Start::New => Start::Sequence(self.stream_state().await?.last_sequence + 1),
            other => other,
        };
        // Where to resume is saved before the consumer that knows it is deleted, and
        // forgotten only once the new consumer exists (resume.rs).
        let (js, names, consumer) = (
            self.client.js(),
            self.client.names(),
            &self.options.consumer,
        );
        resume::save(js, names, consumer, &start).await?;
        match self.client.delete_durable(consumer).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::StreamNotFound => {}
            Err(e) => return Err(e),
        }
        tracing::info!(consumer = %self.options.consumer, ?start, "subscribing");
        let stream = self
            .client
            .subscribe(
                Subscription::tables(self.options.tables.clone())
                    .durable(self.options.consumer.clone())
                    .start(start)
                    .prefetch(self.options.max_batch_events.max(1))
                    // The next two batches are decoded while the sink writes this one.
                    .decode_ahead(self.options.max_batch_events.saturating_mul(2).max(1))
                    .ack_wait(self.options.ack_wait)
                    // A batch may hold up to `max_transaction_events` unacknowledged
                    // events (one large source transaction), plus the next batch being
                    // collected and what is decoded ahead: with the server's default of
                    // 1,000 such a batch waited `transaction_wait` for every 1,000 events.
                    .max_ack_pending(
                        batch::transaction_events(&self.options)
                            .saturating_add(self.options.max_batch_events.saturating_mul(3))
                            .max(1_000),
                    ),
            )
            .await?;
        resume::clear(
            self.client.js(),
            self.client.names(),
            &self.options.consumer,
        )
        .await?;
        Ok(stream)
    }

    /// Runs until `shutdown` is cancelled (returns `Ok`) or a fatal error. Transient NATS
    /// and sink errors are retried; nothing is acknowledged before the sink made it durable.
    pub async fn run(&mut self, shutdown: CancellationToken) -> Result<(), RunError> {
        let result = self.run_subscribed(&shutdown).await;
        // What was applied is acknowledged before returning (a durable consumer would
        // deliver it again, to be skipped).
        self.settle_acks().await;
        result
    }

    /// Waits for the acknowledgements in flight; false when one failed.
    async fn settle_acks(&mut self) -> bool {
        match self.acks.take() {
            Some(acks) => match acks.await {
                Ok((acked, spare)) => {
                    if spare.capacity() > self.spare_events.capacity() {
                        self.spare_events = spare;
                    }
                    acked
                }
                Err(_) => false,
            },
            None => true,
        }
    }

    async fn run_subscribed(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let shutdown = shutdown.clone();
        self.checkpoint = self
            .retry_sink(&shutdown, |sink| {
                let consumer = self.options.consumer.clone();
                async move { sink.checkpoint(&consumer).await }
            })
            .await?
            .flatten()
            .max(self.checkpoint);
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut attempt = 0u32;
        let mut first = true;
        loop {
            // A recreated consumer starts after the acknowledged floor (without checkpoint).
            self.settle_acks().await;
            let subscribed = match dead_letter::ensure_stream(&self.client).await {
                Ok(()) => self.subscribe(first).await,
                Err(e) => Err(e),
            };
            let mut stream = match subscribed {
                Ok(s) => s,
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    self.metrics.set_healthy(false);
                    tracing::warn!("subscribing failed, retrying: {e}");
                    if sleep_or_stop(self.options.retry.delay(attempt), &shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            tracing::debug!(consumer = %self.options.consumer, "subscribed");
            first = false;
            attempt = 0;
            self.deliveries.reset();
            self.metrics.set_healthy(true);
            let mut collector = batch::Collector::new(&self.options, self.sink.ordering());
            self.metrics.caught_up();
            let mut items = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                items = collector.collect(&mut stream, std::mem::take(&mut self.spare_items)) => items,
            };
            loop {
                // The next batch is collected while this one is applied (the sink waits for
                // its target most of that time); it is processed only after this one.
                let next = collector.collect(&mut stream, std::mem::take(&mut self.spare_items));
                let mut next = std::pin::pin!(next);
                let mut collected = None;
                if let Some(oldest) = items.iter().find_map(|i| i.as_ref().ok()) {
                    self.metrics.behind_since(oldest.source().commit_time);
                }
                let flow = {
                    let process = self.process(items, &shutdown);
                    let mut process = std::pin::pin!(process);
                    loop {
                        tokio::select! {
                            biased;
                            flow = &mut process => break flow?,
                            batch = &mut next, if collected.is_none() => collected = Some(batch),
                        }
                    }
                };
                match flow {
                    Flow::Continue => {}
                    // The batch being collected is dropped unacknowledged: delivered again.
                    Flow::Resubscribe => break,
                    Flow::Stop => return Ok(()),
                }
                items = match collected {
                    Some(items) => items,
                    None => {
                        // Everything received is applied: waiting for new events.
                        self.metrics.caught_up();
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            items = &mut next => items,
                        }
                    }
                };
            }
            self.metrics.set_healthy(false);
            if sleep_or_stop(self.options.retry.delay(1), &shutdown).await {
                return Ok(());
            }
        }
    }

    async fn process(
        &mut self,
        mut items: Vec<Result<ChangeEvent, Error>>,
        shutdown: &CancellationToken,
    ) -> Result<Flow, RunError> {
        // Sized for the whole collection: growing it moved every event (336 bytes) again.
        let mut pending = std::mem::take(&mut self.spare_events);
        pending.clear();
        pending.reserve(items.len());
        tracing::debug!(items = items.len(), "collected");
        for item in items.drain(..) {
            let delivery = match &item {
                Ok(event) => event.consumer_sequence(),
                Err(error) => error.message().map_or(0, |m| m.consumer_sequence()),
            };
            if let delivery::Continuity::Gap { expected, got } = self.deliveries.observe(delivery) {
                // Deliveries went missing: apply what came before them, then recreate the
                // consumer after the last applied event, so the missing ones come again.
                if let Some(flow) = self.apply_pending(&mut pending, shutdown).await? {
                    return Ok(flow);
                }
                self.metrics.delivery_gap();
                tracing::warn!(
                    consumer = %self.options.consumer,
                    expected,
                    got,
                    after_stream_sequence = self.processed,
                    "consumer deliveries {expected}..{got} never arrived: recreating the \
                     consumer after the last applied event"
                );
                return Ok(Flow::Resubscribe);
            }
            match item {
                Ok(event) => {
                    if let Some(gap) = self.continuity(&event) {
                        // What came before the gap is applied; nothing after it.
                        if let Some(flow) = self.apply_pending(&mut pending, shutdown).await? {
                            return Ok(flow);
                        }
                        return Err(gap);
                    }
                    if event.stream_sequence() <= self.processed
                        || self.checkpoint.is_some_and(|c| Position::of(&event) <= c)
                    {
                        // Already in the target: acknowledge, do not apply again.
                        if let Err(e) = event.ack().await {
                            tracing::warn!("acknowledging a skipped event: {e}");
                        }
                        self.processed = self.processed.max(processed_through(&event));
                        self.metrics.skipped(1);
                        continue;
                    }
                    pending.push(event);
                }
                Err(error) => {
                    if let Some(flow) = self.apply_pending(&mut pending, shutdown).await? {
                        return Ok(flow);
                    }
                    let Some(message) = error.message() else {
                        tracing::warn!("subscription error, resubscribing: {error}");
                        return Ok(Flow::Resubscribe);
                    };
                    if message.stream_sequence <= self.processed {
                        let _ = message.ack().await;
                        continue;
                    }
                    if error.kind() == ErrorKind::Gap {
                        // A target rebuilt from a snapshot taken after the gap holds what
                        // the marker says is missing; any other stops here.
                        let at = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(walbrook_protocol::headers::COMMIT_LSN))
                            .and_then(|v| v.as_str().parse::<Lsn>().ok());
                        if at.is_some_and(|at| self.checkpoint.is_some_and(|c| c.commit_lsn >= at))
                        {
                            let _ = message.ack().await;
                            self.processed = message.stream_sequence;
                            continue;
                        }
                        return Err(RunError::Client(error));
                    }
                    if error.is_retryable() {
                        // A schema lookup that may work later: read again from this message.
                        tracing::warn!(
                            sequence = message.stream_sequence,
                            "cannot decode yet, retrying: {error}"
                        );
                        return Ok(Flow::Resubscribe);
                    }
                    let letter = DeadLetter {
                        subject: message.subject.clone(),
                        stream_sequence: message.stream_sequence,
                        headers: message.headers.clone(),
                        payload: message.payload.clone(),
                        error: error.to_string(),
                        sink: "decode".into(),
                    };
                    if !self.dead_letter(&letter, shutdown).await {
                        return Ok(Flow::Stop);
                    }
                    if let Err(e) = message.ack().await {
                        tracing::warn!("acknowledging a dead-lettered message: {e}");
                    }
                    self.processed = message.stream_sequence;
                }
            }
        }
        self.spare_items = items;
        if pending.is_empty() {
            self.spare_events = pending;
            return Ok(Flow::Continue);
        }
        tracing::debug!(
            events = pending.len(),
            first = %Position::of(&pending[0]),
            last = %Position::of(&pending[pending.len() - 1]),
            "applying a batch"
        );
        self.apply_batch(pending, shutdown, true).await
    }

    /// Applies the events collected so far before something that must not join them (a
    /// delivery hole, a gap, a message that did not decode); `Some` when the run must not go
    /// on as is ([`Flow::Resubscribe`] or [`Flow::Stop`]).
    async fn apply_pending(
        &mut self,
        pending: &mut Vec<ChangeEvent>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Flow>, RunError> {
        if pending.is_empty() {
            return Ok(None);
        }
        match self
            .apply_batch(std::mem::take(pending), shutdown, true)
            .await?
        {
            Flow::Continue => Ok(None),
            other => Ok(Some(other)),
        }
    }

    /// Checks the first event of each delivered message against its subject's chain
    /// (docs/protocol.md §3.7): the gap error when the message names a predecessor that
    /// never arrived; an unverifiable one is counted and logged.
    fn continuity(&mut self, event: &ChangeEvent) -> Option<RunError> {
        if event.message_index() != 0 || event.consumer_sequence() == 0 {
            return None;
        }
        let chains = self.chains.as_mut()?;
        let headers = event.headers()?;
        let id: MessageId = headers.get("Nats-Msg-Id")?.as_str().parse().ok()?;
        let previous = walbrook_protocol::Previous::parse(
            headers
                .get(walbrook_protocol::headers::PREVIOUS)
                .map(|v| v.as_str()),
        )
        .unwrap_or(walbrook_protocol::Previous::Unknown);
        match chains.observe(&event.subject, id, previous) {
            continuity::Verdict::Continues => None,
            continuity::Verdict::Unverified => {
                self.metrics.unverified_continuity();
                tracing::warn!(
                    subject = %event.subject(),
                    message = %id,
                    "the producer could not name this message's predecessor (every earlier \
                     message of the table had left the stream when it restarted): whether a \
                     change was lost before it is not known"
                );
                None
            }
            continuity::Verdict::Gap { missing } => Some(RunError::Gap {
                subject: event.subject().to_string(),
                missing,
                named_by: id,
                floor: match chains.floor() {
                    continuity::Floor::At(held) => format!("it holds messages up to {held}"),
                    continuity::Floor::Lost => "messages after the durable consumer's \
                        acknowledged floor left the stream before it got them"
                        .to_string(),
                    continuity::Floor::Nothing => {
                        "a new consumer reading the stream from its beginning".to_string()
                    }
                    continuity::Floor::Complete | continuity::Floor::Chosen => {
                        "it was received in this run".to_string()
                    }
                },
            }),
        }
    }

    /// Stores a dead letter, retrying until it is stored; `false` if shut down first.
    async fn dead_letter(&self, letter: &DeadLetter, shutdown: &CancellationToken) -> bool {
        let mut attempt = 0;
        loop {
            match dead_letter::publish(&self.client, &self.options.consumer, letter).await {
                Ok(()) => {
                    self.metrics.dead_lettered();
                    tracing::warn!(
                        subject = %letter.subject,
                        sequence = letter.stream_sequence,
                        "dead-lettered: {}",
                        letter.error
                    );
                    return true;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!("storing a dead letter failed, retrying: {e}");
                    if sleep_or_stop(self.options.retry.delay(attempt), shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn retry_sink<'a, T, F, Fut>(
        &'a self,
        shutdown: &CancellationToken,
        mut call: F,
    ) -> Result<Option<T>, RunError>
    where
        F: FnMut(&'a S) -> Fut,
        Fut: Future<Output = Result<T, SinkError>>,
    {
        let mut attempt = 0;
        loop {
            match call(&self.sink).await {
                Ok(v) => return Ok(Some(v)),
                Err(e) if e.kind() == SinkErrorKind::Fatal => {
                    return Err(RunError::Sink {
                        sink: self.sink.name().to_owned(),
                        error: e,
                    });
                }
                Err(e) => {
                    attempt += 1;
                    self.metrics.retried();
                    tracing::warn!(sink = self.sink.name(), attempt, "retrying: {e}");
                    if sleep_or_stop(self.options.retry.delay(attempt), shutdown).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Applies `events` (retrying, dead-lettering rejected ones), then acknowledges them.
    async fn apply_batch(
        &mut self,
        mut events: Vec<ChangeEvent>,
        shutdown: &CancellationToken,
        ack: bool,
    ) -> Result<Flow, RunError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let consumer = self.options.consumer.clone();
        loop {
            if events.is_empty() {
                return Ok(Flow::Continue);
            }
            // A stop cancels the apply in flight: nothing of the batch is acknowledged, so it
            // is delivered again (the contract makes a cancelled apply safe: see Sink).
            let apply = async {
                match self.sink.ordering() {
                    Ordering::Stream => self.sink.apply(&consumer, &events).await,
                    Ordering::PerKey => self.apply_lanes(&consumer, &events).await,
                }
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Flow::Stop),
                result = apply => result,
            };
            match result {
                Ok(applied) => {
                    let mut rejected = applied.rejected;
                    rejected.sort_by_key(|(i, _)| *i);
                    rejected.dedup_by_key(|(i, _)| *i);
                    for (index, reason) in &rejected {
                        let Some(event) = events.get(*index) else {
                            continue;
                        };
                        let letter = DeadLetter::of_event(event, self.sink.name(), reason.clone());
                        if !self.dead_letter(&letter, shutdown).await {
                            return Ok(Flow::Stop);
                        }
                    }
                    self.metrics.set_healthy(true);
                    return Ok(self.finish(events, rejected.len(), started, ack).await);
                }
                Err(e) => match e.kind() {
                    SinkErrorKind::Fatal => {
                        return Err(RunError::Sink {
                            sink: self.sink.name().to_owned(),
                            error: e,
                        });
                    }
                    SinkErrorKind::Rejected => {
                        let index = e.index().unwrap_or(0).min(events.len() - 1);
                        let letter =
                            DeadLetter::of_event(&events[index], self.sink.name(), e.message());
                        if !self.dead_letter(&letter, shutdown).await {
                            return Ok(Flow::Stop);
                        }
                        let event = events.remove(index);
                        if ack && let Err(err) = event.ack().await {
                            tracing::warn!("acknowledging a dead-lettered event: {err}");
                        }
                    }
                    SinkErrorKind::Transient => {
                        attempt += 1;
                        self.metrics.retried();
                        self.metrics.set_healthy(false);
                        if self
                            .options
                            .retry
                            .dead_letter_after
                            .is_some_and(|max| attempt >= max)
                        {
                            for event in &events {
                                let letter = DeadLetter::of_event(
                                    event,
                                    self.sink.name(),
                                    format!("gave up after {attempt} attempts: {}", e.message()),
                                );
                                if !self.dead_letter(&letter, shutdown).await {
                                    return Ok(Flow::Stop);
                                }
                            }
                            let n = events.len();
                            return Ok(self.finish(events, n, started, ack).await);
                        }
                        tracing::warn!(
                            sink = self.sink.name(),
                            attempt,
                            "batch failed, retrying: {e}"
                        );
                        if sleep_or_stop(self.options.retry.delay(attempt), shutdown).await {
                            return Ok(Flow::Stop);
                        }
                    }
                },
            }
        }
    }

    /// Applies a batch as per-key lanes (segments in order, lanes of a segment concurrently).
    async fn apply_lanes(
        &self,
        consumer: &str,
        events: &[ChangeEvent],
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        for segment in partition::lanes(events, self.options.lanes) {
            let lanes: Vec<Vec<ChangeEvent>> = segment
                .iter()
                .map(|lane| lane.iter().map(|i| events[*i].clone()).collect())
                .collect();
            let results =
                futures::future::join_all(lanes.iter().map(|lane| self.sink.apply(consumer, lane)))
                    .await;
            // The first failure wins; lanes that succeeded are durable and idempotent, so the
            // retry of the whole batch rewrites them harmlessly (PerKey sinks are idempotent).
            for (lane, result) in segment.iter().zip(results) {
                match result {
                    Ok(a) => applied
                        .rejected
                        .extend(a.rejected.into_iter().map(|(i, r)| (lane[i], r))),
                    Err(e) => {
                        return Err(match e.index() {
                            Some(i) if e.kind() == SinkErrorKind::Rejected => {
                                SinkError::rejected(lane[i], e.message())
                            }
                            _ => e,
                        });
                    }
                }
            }
        }
        Ok(applied)
    }

    /// Records and acknowledges an applied batch.
    async fn finish(
        &mut self,
        events: Vec<ChangeEvent>,
        dead: usize,
        started: Instant,
        ack: bool,
    ) -> Flow {
        let last = events
            .last()
            .map(|e| (Position::of(e), processed_through(e)));
        let mut flow = Flow::Continue;
        if let Some((position, sequence)) = last {
            // Snapshot rows (and bootstrap batches) are not positions of the change stream.
            if ack && events.iter().all(|e| e.op() != crate::Op::Read) {
                self.checkpoint = Some(self.checkpoint.map_or(position, |c| c.max(position)));
                self.processed = self.processed.max(sequence);
            }
            self.metrics
                .applied((events.len() - dead) as u64, position.commit_lsn.0);
        }
        self.metrics.batch(started.elapsed());
        if ack {
            // One batch's acknowledgements in flight at a time: the previous batch's are
            // settled before this one's are sent.
            if !self.settle_acks().await {
                flow = Flow::Resubscribe;
            }
            // Every event is marked here (cheap, no future per event); only the messages
            // they complete are acknowledged on the server, by the task.
            let complete: Vec<crate::event::AckHandle> = events
                .iter()
                .filter(|e| e.ack.mark())
                .map(|e| e.ack.clone())
                .collect();
            self.acks = Some(tokio::spawn(async move {
                let mut events = events;
                let acks = futures::future::join_all(complete.iter().map(|a| a.ack())).await;
                events.clear();
                match acks.into_iter().find_map(Result::err) {
                    Some(e) => {
                        // Durable in the target already: a redelivery is skipped or
                        // idempotent.
                        tracing::warn!("acknowledging failed, resubscribing: {e}");
                        (false, events)
                    }
                    None => (true, events),
                }
            }));
        }
        flow
    }
}

/// The stream sequence through which every message is processed once `event` (and all
/// before it) are: its own, or the one before when more events of its message (protocol
/// §3.6) follow; those must not be taken for done.
fn processed_through(event: &ChangeEvent) -> u64 {
    if event.ends_message() {
        event.stream_sequence()
    } else {
        event.stream_sequence().saturating_sub(1)
    }
}

/// Sleeps, returning `true` if `shutdown` was cancelled first.
async fn sleep_or_stop(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}
