//! The sink contract (docs/sinks.md): what a target must provide for the runner to apply the
//! change stream to it exactly once (or idempotently) and in order.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::metrics::RunnerMetrics;

use crate::event::ChangeEvent;
use walbrook_protocol::Lsn;

/// The position of a change: its transaction's commit LSN and its ordinal in that transaction
/// (docs/protocol.md §3.4). Positions are totally ordered along the change stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Commit LSN of the transaction.
    pub commit_lsn: Lsn,
    /// 0-based index of the event within its transaction.
    pub ordinal: u64,
}

impl Position {
    /// The position of an event.
    pub fn of(event: &ChangeEvent) -> Position {
        Position {
            commit_lsn: event.commit_lsn(),
            ordinal: event.ordinal(),
        }
    }

    /// The position just before every event of commit LSN `lsn`: what a target holds after a
    /// snapshot taken at `lsn`, whose changes are read from `Start::CommitPosition(lsn)` on.
    pub fn before(lsn: Lsn) -> Position {
        Position {
            commit_lsn: Lsn(lsn.0.saturating_sub(1)),
            // The largest ordinal a target storing `bigint` can hold.
            ordinal: i64::MAX as u64,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.commit_lsn, self.ordinal)
    }
}

/// How a failed [`Sink::apply`] should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// The target is temporarily unable (connection lost, timeout, 5xx, 429, deadlock…):
    /// nothing of the batch is durable; the runner retries the same batch with backoff.
    Transient,
    /// One event can never be applied (a constraint the target enforces, a document the
    /// target refuses…): nothing of the batch is durable; the runner dead-letters the event
    /// at [`SinkError::index`] and applies the rest again.
    Rejected,
    /// The sink cannot go on (bad configuration, lost permissions): the runner stops with
    /// this error; nothing is acknowledged.
    Fatal,
}

/// A failed [`Sink::apply`] or [`Sink::checkpoint`].
#[derive(Debug, Clone)]
pub struct SinkError {
    kind: SinkErrorKind,
    message: String,
    index: Option<usize>,
}

impl SinkError {
    /// A transient failure: retried with backoff.
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            kind: SinkErrorKind::Transient,
            message: message.into(),
            index: None,
        }
    }

    /// Event `index` of the batch can never be applied; nothing of the batch was applied.
    pub fn rejected(index: usize, message: impl Into<String>) -> SinkError {
        SinkError {
            kind: SinkErrorKind::Rejected,
            message: message.into(),
            index: Some(index),
        }
    }

    /// The sink cannot go on.
    pub fn fatal(message: impl Into<String>) -> SinkError {
        SinkError {
            kind: SinkErrorKind::Fatal,
            message: message.into(),
            index: None,
        }
    }

    /// The kind.
    pub fn kind(&self) -> SinkErrorKind {
        self.kind
    }

    /// The rejected event's index in the batch (kind [`SinkErrorKind::Rejected`]).
    pub fn index(&self) -> Option<usize> {
        self.index
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SinkErrorKind::Transient => "transient",
            SinkErrorKind::Rejected => "rejected",
            SinkErrorKind::Fatal => "fatal",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for SinkError {}

/// What a successful [`Sink::apply`] made durable.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Events the target refused one by one while the others of the batch were applied and are
    /// durable (for example per-item failures of a bulk request): `(index in the batch,
    /// reason)`. The runner dead-letters them before acknowledging the batch.
    pub rejected: Vec<(usize, String)>,
}

/// Whether the order of a sink's writes matters beyond one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// The sink applies a batch as given, in stream order (for example in one transaction):
    /// the runner hands it whole batches.
    Stream,
    /// Writes to different keys commute: the runner may split a batch into lanes by key and
    /// apply the lanes concurrently; order within a key is kept.
    PerKey,
}

/// What [`Sink::bind`] tells a sink about the runner it is given to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Binding {
    /// The source database whose change stream the runner consumes.
    pub source_database: String,
    /// The runner's metrics.
    pub metrics: Arc<RunnerMetrics>,
}

impl Binding {
    /// A binding to `source_database` with `metrics` (what [`Runner::new`](super::Runner::new)
    /// gives; for a sink used without a runner).
    pub fn new(source_database: impl Into<String>, metrics: Arc<RunnerMetrics>) -> Binding {
        Binding {
            source_database: source_database.into(),
            metrics,
        }
    }
}

/// A target the runner applies change events to. The contract, which the conformance suite
/// (`walbrook_client::runner::conformance`) checks for every sink, is in docs/sinks.md:
///
/// 1. `apply` returns `Ok` only once every event of the batch (except those it reports in
///    [`Applied::rejected`]) is durable in the target; the runner acknowledges nothing before.
/// 2. Applying an event again (a redelivery after a crash between the write and the
///    acknowledgement) leaves the target as applying it once did: either the sink stores its
///    position with the write ([`Sink::checkpoint`]) or its writes are idempotent.
/// 3. Events of one key are applied in the order given.
/// 4. A failure reports what is durable: `Err` means nothing of the batch is.
/// 5. `apply` may be cancelled (dropped) at any await point when the runner stops; whatever
///    it had written must then be either not durable (a rolled-back transaction) or safe to
///    write again (rule 2), since nothing of the batch is acknowledged.
pub trait Sink: Send + Sync {
    /// A short name for logs, metrics and dead-letter headers (`postgres`, `webhook`…).
    fn name(&self) -> &str;

    /// How the runner may split batches.
    fn ordering(&self) -> Ordering {
        Ordering::Stream
    }

    /// The position of the last event applied for `consumer`, if the sink stores it in the
    /// target (the runner then skips events at or below it). `None` for sinks that rely on
    /// idempotent writes.
    fn checkpoint(
        &self,
        consumer: &str,
    ) -> impl Future<Output = Result<Option<Position>, SinkError>> + Send;

    /// Stores `position` as the checkpoint of `consumer` (after a snapshot was applied).
    /// Sinks without checkpoints do nothing.
    fn store_checkpoint(
        &self,
        consumer: &str,
        position: Position,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = (consumer, position);
        async { Ok(()) }
    }

    /// Called once by [`Runner::new`](super::Runner::new) with what the runner knows of its
    /// place: the source database (a sink storing checkpoints keys them by it and the
    /// consumer, so two sources sharing a consumer name on one target never skip each
    /// other's events) and the runner's metrics (a sink that waits on its target itself,
    /// sending one request again instead of failing the batch, reports it with
    /// [`RunnerMetrics::target_waiting`]). Default: nothing.
    fn bind(&mut self, binding: &Binding) {
        let _ = binding;
    }

    /// Applies `events` (in stream order, non-empty) durably; see the trait's contract.
    fn apply(
        &self,
        consumer: &str,
        events: &[ChangeEvent],
    ) -> impl Future<Output = Result<Applied, SinkError>> + Send;
}
