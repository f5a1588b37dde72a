//! Subscriptions: JetStream consumers on the change stream, decoded into [`ChangeEvent`]s.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream as JsStream};
use async_nats::jetstream::{self, Message};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use walbrook_pgtype_avro::fingerprint::split_single_object;

use crate::error::{Error, ErrorKind, UndecodedMessage};
use crate::event::{AckHandle, ChangeEvent};
use crate::large_payload::PayloadObjects;
use crate::names::{Lsn, Names, TablePattern};
use crate::schema::SchemaCache;

/// Where a new subscription starts reading. An existing durable consumer always resumes where
/// it left off, whatever its subscription says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every event still in the stream.
    Beginning,
    /// Only events stored after the subscription is created.
    New,
    /// Events JetStream stored at or after this time.
    Time(DateTime<Utc>),
    /// Events whose commit LSN is at or after this position (a position saved from
    /// [`ChangeEvent::commit_lsn`]; to continue *after* a fully processed transaction, pass
    /// its commit LSN + 1). Found by a binary search over the stream, whose commit LSNs never
    /// decrease (docs/protocol.md §3.4).
    CommitPosition(Lsn),
    /// Events from this JetStream stream sequence on (the consumer runner resumes its durable
    /// consumer from the sequence after the last one it acknowledged).
    Sequence(u64),
}

/// What to read and how: built with [`Subscription::table`], [`Subscription::tables`] or
/// [`Subscription::all`], then adjusted.
///
/// ```
/// use walbrook_client::{Start, Subscription};
///
/// let sub = Subscription::tables(["public.orders", "audit.*"])
///     .start(Start::Beginning)
///     .durable("billing");
/// assert_eq!(sub.patterns(), ["public.orders", "audit.*"]);
/// ```
#[derive(Debug, Clone)]
pub struct Subscription {
    patterns: Vec<String>,
    exact: Vec<TablePattern>,
    start: Start,
    durable: Option<String>,
    prefetch: usize,
    ack_wait: Duration,
    max_ack_pending: Option<usize>,
    dead_letter: Option<String>,
    decode_ahead: usize,
}

impl Subscription {
    /// One table (`schema.table`), every table of a schema (`schema.*`), or every table (`*`).
    pub fn table(pattern: impl Into<String>) -> Subscription {
        Subscription::tables([pattern.into()])
    }

    /// Several patterns, as for [`Subscription::table`].
    pub fn tables<I, S>(patterns: I) -> Subscription
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Subscription {
            patterns: patterns.into_iter().map(Into::into).collect(),
            exact: Vec::new(),
            start: Start::Beginning,
            durable: None,
            prefetch: 256,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: None,
            dead_letter: None,
            decode_ahead: 0,
        }
    }

    /// Every published table.
    pub fn all() -> Subscription {
        Subscription::table("*")
    }

    /// Adds an already parsed pattern (for names containing `.`: [`TablePattern::table`]).
    pub fn pattern(mut self, pattern: TablePattern) -> Subscription {
        self.exact.push(pattern);
        self
    }

    /// Where to start (default [`Start::Beginning`]).
    pub fn start(mut self, start: Start) -> Subscription {
        self.start = start;
        self
    }

    /// Makes it a durable named consumer: explicit acknowledgements
    /// ([`ChangeEvent::ack`]), and a later subscription with the same name (after a restart)
    /// resumes after the last acknowledged events. Without it the subscription is an ephemeral
    /// ordered consumer that keeps no state on the server.
    pub fn durable(mut self, name: impl Into<String>) -> Subscription {
        self.durable = Some(name.into());
        self
    }

    /// How many messages may be fetched ahead of the caller (default 256): the pull batch
    /// size, and so the bound on what the SDK buffers (an ephemeral subscription pulls at most
    /// 500 at a time whatever this says). A durable subscription also pulls at most 16 MiB
    /// (or four of the server's largest messages) at a time.
    pub fn prefetch(mut self, messages: usize) -> Subscription {
        self.prefetch = messages.max(1);
        self
    }

    /// How long a durable consumer waits for an acknowledgement before delivering an event
    /// again (default 30 s). Used when the consumer is created.
    pub fn ack_wait(mut self, wait: Duration) -> Subscription {
        self.ack_wait = wait;
        self
    }

    /// How many delivered events a durable consumer may have unacknowledged before the
    /// server stops delivering (default: the server's, 1,000). A caller that acknowledges
    /// only after gathering more events than that (a whole large transaction) must raise
    /// it, or it waits for events the server holds back. Used when the consumer is created.
    pub fn max_ack_pending(mut self, events: usize) -> Subscription {
        self.max_ack_pending = Some(events.max(1));
        self
    }

    /// Sends messages that cannot be decoded to a dead-letter subject instead of returning
    /// them as errors (the default, without this option).
    ///
    /// A message whose error is definite ([`ErrorKind::Decode`],
    /// [`ErrorKind::SchemaNotFound`], [`ErrorKind::Protocol`]: not [`Error::is_retryable`]) is
    /// published unchanged, byte for byte with its original headers, to
    /// `<root>.<db>.dlq.<name>` in the stream `<root>_<db>_DLQ` (created when missing; the
    /// consumer runner's dead letters, docs/protocol.md §2), with the headers of
    /// [`runner::dead_letter_headers`](crate::runner::dead_letter_headers): `Walbrook-Dlq-Error`
    /// (the error), `Walbrook-Dlq-Sink` (`decode`), `Walbrook-Dlq-Consumer` (`name`),
    /// `Walbrook-Dlq-Subject` (the original subject), `Walbrook-Dlq-Sequence` (its stream
    /// sequence) and `Walbrook-Dlq-Time`. Only once JetStream has stored the dead letter is
    /// the original acknowledged (durable subscriptions), and the subscription goes on with
    /// the next message. If the dead letter cannot be stored, the stream yields a retryable
    /// [`ErrorKind::Nats`] error that carries the message (a durable consumer delivers it
    /// again after `ack_wait`). Retryable errors (a schema lookup timing out…) are still
    /// returned. `walbrook dlq list --consumer <name>` shows the dead letters. `name`: letters, digits,
    /// `_` and `-`.
    pub fn dead_letter(mut self, name: impl Into<String>) -> Subscription {
        self.dead_letter = Some(name.into());
        self
    }

    /// Decodes up to `events` events ahead of the caller, in a task of its own (default 0:
    /// messages are decoded when the caller asks for the next event). A caller that spends
    /// its time waiting on something else between events (a sink writing a batch to its
    /// target) then finds the next events decoded: decoding and the caller's work overlap.
    /// The task ends when the [`ChangeStream`] is dropped.
    pub fn decode_ahead(mut self, events: usize) -> Subscription {
        self.decode_ahead = events;
        self
    }

    /// The textual patterns given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    fn parsed(&self) -> Result<Vec<TablePattern>, Error> {
        let mut out = self
            .patterns
            .iter()
            .map(|p| p.parse())
            .collect::<Result<Vec<TablePattern>, Error>>()?;
        out.extend(self.exact.iter().cloned());
        if out.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "a subscription needs a table",
            ));
        }
        // JetStream rejects overlapping filters: keep the widest.
        if out.contains(&TablePattern::All) {
            return Ok(vec![TablePattern::All]);
        }
        let schemas: Vec<String> = out
            .iter()
            .filter_map(|p| match p {
                TablePattern::Schema(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        out.retain(
            |p| !matches!(p, TablePattern::Table { schema, .. } if schemas.contains(schema)),
        );
        out.sort_by_key(|p| p.to_string());
        out.dedup();
        Ok(out)
    }
}

fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

type Messages = Pin<Box<dyn Stream<Item = Result<Message, Error>> + Send>>;
type Events = Pin<Box<dyn Stream<Item = Result<ChangeEvent, Error>> + Send>>;

/// The events of a subscription, in stream order: an async stream of
/// `Result<ChangeEvent, Error>`.
///
/// A message that cannot be decoded is an `Err` (with [`Error::message`] and
/// [`Error::stream_sequence`]) in its place, and the stream continues with the next message.
/// NATS errors (a pull that missed heartbeats…) are `Err`s too; the stream ends only when the
/// consumer cannot continue.
///
/// At most [`Subscription::prefetch`] messages are buffered ahead of the caller.
pub struct ChangeStream {
    events: Events,
    consumer: String,
    durable: bool,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("consumer", &self.consumer)
            .field("durable", &self.durable)
            .finish()
    }
}

impl ChangeStream {
    /// The JetStream consumer's name (the durable name, or the ordered consumer's).
    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// Whether this is a durable consumer (events must be acknowledged).
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Waits for up to `max` items, returning early with what it has once `timeout` has
    /// passed (possibly nothing). Returns an empty batch at once if the stream has ended.
    ///
    /// # Cancel safety
    /// Cancel safe: items not yet returned stay in the stream.
    pub async fn next_batch(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Vec<Result<ChangeEvent, Error>> {
        let mut batch = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(item)) => batch.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        batch
    }
}

impl Stream for ChangeStream {
    type Item = Result<ChangeEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

fn nats_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::Nats, what.to_owned(), e)
}

pub(crate) async fn subscribe(
    js: &jetstream::Context,
    names: &Names,
    cache: Arc<SchemaCache>,
    subscription: Subscription,
) -> Result<ChangeStream, Error> {
    let patterns = subscription.parsed()?;
    let filters: Vec<String> = patterns.iter().map(|p| names.wal_filter(p)).collect();
    if let Some(name) = &subscription.dead_letter
        && !valid_consumer_name(name)
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!("dead-letter name {name:?}: use letters, digits, '_' and '-'"),
        ));
    }
    let stream_name = names.wal_stream();
    let stream = js.get_stream(&stream_name).await.map_err(|e| {
        let not_found = matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
        if not_found {
            Error::new(
                ErrorKind::StreamNotFound,
                format!("stream {stream_name} does not exist (has the producer run?)"),
            )
        } else {
            nats_err(&format!("getting stream {stream_name}"), e)
        }
    })?;
    let (filter_subject, filter_subjects) = if filters.len() == 1 {
        (filters[0].clone(), Vec::new())
    } else {
        (String::new(), filters.clone())
    };
    let (messages, consumer, durable): (Messages, String, bool) = match &subscription.durable {
        Some(name) => {
            if !valid_consumer_name(name) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("durable name {name:?}: use letters, digits, '_' and '-'"),
                ));
            }
            let consumer: jetstream::consumer::Consumer<pull::Config> =
                match stream.consumer_info(name).await {
                    Ok(info) => {
                        let mut existing = info.config.filter_subjects.clone();
                        if !info.config.filter_subject.is_empty() {
                            existing.push(info.config.filter_subject.clone());
                        }
                        existing.sort();
                        let mut wanted = filters.clone();
                        wanted.sort();
                        if existing != wanted || info.config.ack_policy != AckPolicy::Explicit {
                            return Err(Error::new(
                                ErrorKind::Config,
                                format!(
                                    "durable consumer {name:?} exists with filters {existing:?} \
                                     (this subscription wants {wanted:?}); use another name or \
                                     delete it with Client::delete_durable"
                                ),
                            ));
                        }
                        stream.get_consumer(name).await.map_err(|e| {
                            Error::new(ErrorKind::Nats, format!("getting consumer {name}: {e}"))
                        })?
                    }
                    Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                        let deliver_policy =
                            deliver_policy(&stream, names, subscription.start).await?;
                        stream
                            .create_consumer(pull::Config {
                                durable_name: Some(name.clone()),
                                description: Some("walbrook-client durable subscription".into()),
                                deliver_policy,
                                ack_policy: AckPolicy::Explicit,
                                ack_wait: subscription.ack_wait,
                                max_ack_pending: subscription
                                    .max_ack_pending
                                    .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                                filter_subject: filter_subject.clone(),
                                filter_subjects: filter_subjects.clone(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| nats_err(&format!("creating consumer {name}"), e))?
                    }
                    Err(e) => return Err(nats_err(&format!("looking up consumer {name}"), e)),
                };
            let messages = consumer
                .stream()
                .max_messages_per_batch(subscription.prefetch)
                .max_bytes_per_batch(prefetch_bytes(js))
                .messages()
                .await
                .map_err(|e| nats_err("starting to pull", e))?
                .map(|r| r.map_err(|e| nats_err("pulling messages", e)));
            (Box::pin(messages), name.clone(), true)
        }
        None => {
            let deliver_policy = deliver_policy(&stream, names, subscription.start).await?;
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    deliver_policy,
                    // Caps async-nats' ordered pull batch (500) at the prefetch bound.
                    max_batch: i64::try_from(subscription.prefetch).unwrap_or(i64::MAX),
                    filter_subject,
                    filter_subjects,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err("creating an ordered consumer", e))?;
            let name = consumer.cached_info().name.clone();
            let messages = consumer
                .messages()
                .await
                .map_err(|e| nats_err("starting the ordered consumer", e))?
                .map(|r| r.map_err(|e| nats_err("reading the ordered consumer", e)));
            (Box::pin(messages), name, false)
        }
    };
    let objects = Arc::new(PayloadObjects::new(js.clone()));
    let dead_letters = match subscription.dead_letter {
        Some(name) => {
            crate::runner::dead_letter::ensure_stream_on(js, names).await?;
            Some(Arc::new(DeadLetters {
                js: js.clone(),
                names: names.clone(),
                name,
            }))
        }
        None => None,
    };
    // A message yields its events in order (several for a shared message, protocol §3.6),
    // or one error for the whole message.
    let events = messages
        .then(move |item| {
            let cache = cache.clone();
            let objects = objects.clone();
            let dead_letters = dead_letters.clone();
            async move {
                let decoded = match item {
                    Ok(message) => decode_messages(&cache, &objects, message, durable).await,
                    Err(e) => Err(e),
                };
                match (decoded, dead_letters) {
                    (Ok(events), _) => events.into_iter().map(Ok).collect(),
                    (Err(error), Some(dead_letters)) if !error.is_retryable() => {
                        dead_letters.store(error).await.into_iter().collect()
                    }
                    (Err(error), _) => vec![Err(error)],
                }
            }
        })
        .flat_map(futures::stream::iter);
    let events: Events = match subscription.decode_ahead {
        0 => Box::pin(events),
        ahead => decoded_ahead(Box::pin(events), ahead),
    };
    Ok(ChangeStream {
        events,
        consumer,
        durable,
    })
}

/// The bytes a durable subscription pulls at a time, besides [`Subscription::prefetch`]
/// messages: messages may carry up to 1,000 events each (protocol §3.6), so a count alone
/// let a consumer buffer hundreds of 256 KiB messages. At least four of the server's
/// largest messages, so every message fits a pull.
fn prefetch_bytes(js: &jetstream::Context) -> usize {
    const PREFETCH_BYTES: usize = 16 << 20;
    PREFETCH_BYTES.max(js.client().server_info().max_payload.saturating_mul(4))
}

/// Drives `events` in a task of its own, `ahead` events ahead of the returned stream's
/// reader ([`Subscription::decode_ahead`]). The task ends when the reader is dropped, also
/// while it waits for the next message.
fn decoded_ahead(mut events: Events, ahead: usize) -> Events {
    let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = events.next() => next,
            };
            let Some(item) = next else { return };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Where a subscription with [`Subscription::dead_letter`] sends undecodable messages.
struct DeadLetters {
    js: jetstream::Context,
    names: Names,
    name: String,
}

impl DeadLetters {
    /// Stores the message of a definite error as a dead letter, then acknowledges it:
    /// `None` when done (the caller never sees it); the error otherwise.
    async fn store(&self, error: Error) -> Option<Result<ChangeEvent, Error>> {
        let Some(message) = error.message().cloned() else {
            return Some(Err(error));
        };
        let letter = crate::runner::DeadLetter {
            subject: message.subject.clone(),
            stream_sequence: message.stream_sequence,
            headers: message.headers.clone(),
            payload: message.payload.clone(),
            error: error.to_string(),
            sink: "decode".to_owned(),
        };
        let mut attempt = 0u32;
        let stored = loop {
            match crate::runner::dead_letter::publish_on(&self.js, &self.names, &self.name, &letter)
                .await
            {
                Ok(()) => break Ok(()),
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(attempt, "storing a dead letter failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = stored {
            return Some(Err(Error::new(
                ErrorKind::Nats,
                format!(
                    "could not store message {} as a dead letter ({e}); it was not decoded: {error}",
                    message.stream_sequence
                ),
            )
            .for_message(message)));
        }
        if let Err(e) = message.ack().await {
            // Stored but not acknowledged: it comes again and is stored again under the same
            // Nats-Msg-Id (deduplicated within the stream's duplicate window).
            return Some(Err(e.for_message(message)));
        }
        tracing::warn!(
            subject = %message.subject,
            stream_sequence = message.stream_sequence,
            dead_letter = %self.name,
            "undecodable message sent to the dead-letter subject: {error}"
        );
        None
    }
}

async fn deliver_policy(
    stream: &JsStream,
    names: &Names,
    start: Start,
) -> Result<DeliverPolicy, Error> {
    Ok(match start {
        Start::Beginning => DeliverPolicy::All,
        Start::New => DeliverPolicy::New,
        Start::Time(t) => {
            let nanos = t.timestamp_nanos_opt().ok_or_else(|| {
                Error::new(ErrorKind::Config, format!("start time {t} is out of range"))
            })?;
            let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
                .map_err(|e| Error::with_source(ErrorKind::Config, "start time", e))?;
            DeliverPolicy::ByStartTime { start_time }
        }
        Start::CommitPosition(lsn) => DeliverPolicy::ByStartSequence {
            start_sequence: first_sequence_at(stream, names, lsn).await?,
        },
        Start::Sequence(sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: sequence.max(1),
        },
    })
}

/// The sequence of the first stored event whose commit LSN is at least `lsn` (the sequence
/// after the last message when there is none): a binary search, since commit LSNs never
/// decrease along the stream.
async fn first_sequence_at(stream: &JsStream, names: &Names, lsn: Lsn) -> Result<u64, Error> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| nats_err("reading the stream state", e))?;
    let (mut lo, mut hi) = (
        info.state.first_sequence.max(1),
        info.state.last_sequence + 1,
    );
    let all = names.wal_all();
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let found = stream
            .raw_message_builder()
            .sequence(mid)
            .next_by_subject(all.clone())
            .send()
            .await;
        let message = match found {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                hi = mid;
                continue;
            }
            Err(e) => return Err(nats_err("reading a stream message", e)),
        };
        let commit = message
            .headers
            .get("Walbrook-Commit-Lsn")
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "message {} has no Walbrook-Commit-Lsn header",
                        message.sequence
                    ),
                )
            })?
            .as_str()
            .parse::<Lsn>()
            .map_err(|e| {
                Error::with_source(ErrorKind::Protocol, "Walbrook-Commit-Lsn header", e)
            })?;
        if commit < lsn {
            lo = message.sequence + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Decodes a stored message outside a subscription (a dead letter being replayed): the event
/// cannot be acknowledged.
async fn decode_stored(
    cache: &SchemaCache,
    subject: String,
    stream_sequence: u64,
    headers: Option<async_nats::HeaderMap>,
    payload: bytes::Bytes,
) -> Result<ChangeEvent, Error> {
    let (fingerprint, _) = split_single_object(&payload).map_err(|e| {
        Error::with_source(ErrorKind::Decode, "not an Avro single-object message", e)
    })?;
    let schema = cache.get(fingerprint).await?;
    let decoded = schema.decode(&payload)?;
    Ok(ChangeEvent {
        op: decoded.op,
        source: decoded.source,
        before: decoded.before,
        after: decoded.after,
        fingerprint,
        subject: subject.into(),
        stream_sequence,
        consumer_sequence: 0,
        delivered: 1,
        ack: AckHandle::none(),
        message_index: 0,
        message_events: 1,
        payload,
        headers: headers.map(Arc::new),
    })
}

/// [`decode_stored`] for a stored message of one or several events (a dead letter of a whole
/// shared message, protocol §3.6): its events in order.
pub(crate) async fn decode_stored_events(
    cache: &SchemaCache,
    objects: &PayloadObjects,
    subject: String,
    stream_sequence: u64,
    headers: Option<async_nats::HeaderMap>,
    payload: bytes::Bytes,
) -> Result<Vec<ChangeEvent>, Error> {
    // A dead letter too large for one message has its body in the object store (protocol
    // §2), also when it is a whole shared message: fetch it first.
    let reference = headers
        .as_ref()
        .and_then(|h| h.get(walbrook_protocol::headers::PAYLOAD_OBJECT))
        .map(|v| v.as_str().to_string());
    let (headers, payload) = match reference {
        Some(reference) if payload.is_empty() => {
            let payload = objects.fetch(&reference).await?;
            let headers = headers.map(|h| {
                let mut out = async_nats::HeaderMap::new();
                for (name, values) in h.iter() {
                    if AsRef::<str>::as_ref(name) != walbrook_protocol::headers::PAYLOAD_OBJECT {
                        for value in values {
                            out.append(name.clone(), value.clone());
                        }
                    }
                }
                out
            });
            (headers, payload)
        }
        _ => (headers, payload),
    };
    let Some(count) = shared_count(headers.as_ref()) else {
        return decode_stored(cache, subject, stream_sequence, headers, payload)
            .await
            .map(|event| vec![event]);
    };
    let decoded = decode_shared(cache, &subject, &headers, &payload, &count).await?;
    Ok(shared_events(
        decoded,
        &subject,
        &headers,
        (stream_sequence, 0, 1),
        |_| AckHandle::none(),
    ))
}

/// The events of a decoded shared message, in order: each with its place in the message
/// and `ack(index)` as its acknowledgement.
fn shared_events(
    decoded: Vec<DecodedEvent>,
    subject: &str,
    headers: &Option<async_nats::HeaderMap>,
    (stream_sequence, consumer_sequence, delivered): (u64, u64, u64),
    ack: impl Fn(usize) -> AckHandle,
) -> Vec<ChangeEvent> {
    let events = u32::try_from(decoded.len()).unwrap_or(u32::MAX);
    // The events of one message share its subject and headers.
    let subject: Arc<str> = subject.into();
    let headers = headers.clone().map(Arc::new);
    decoded
        .into_iter()
        .enumerate()
        .map(|(index, (fingerprint, row, d))| ChangeEvent {
            op: d.op,
            source: d.source,
            before: d.before,
            after: d.after,
            fingerprint,
            subject: subject.clone(),
            stream_sequence,
            consumer_sequence,
            delivered,
            ack: ack(index),
            message_index: u32::try_from(index).unwrap_or(u32::MAX),
            message_events: events,
            payload: row,
            headers: headers.clone(),
        })
        .collect()
}

/// The `Walbrook-Events` header of a message carrying several events (protocol §3.6), as
/// sent; `None` for a message of one event.
fn shared_count(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(walbrook_protocol::headers::EVENTS))
        .map(|v| v.as_str().to_owned())
}

/// A delivered message's stream sequence, consumer sequence and delivery count.
pub(crate) fn delivery(message: &Message) -> Result<(u64, u64, u64), Error> {
    let info = message.info().map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("a delivered message has no JetStream metadata: {e}"),
        )
    })?;
    Ok((
        info.stream_sequence,
        info.consumer_sequence,
        u64::try_from(info.delivered).unwrap_or(0),
    ))
}

pub(crate) async fn decode_message(
    cache: &SchemaCache,
    objects: &PayloadObjects,
    message: Message,
    durable: bool,
) -> Result<ChangeEvent, Error> {
    let (stream_sequence, consumer_sequence, delivered) = delivery(&message)?;
    let subject = message.subject.to_string();
    let payload = message.payload.clone();
    let headers = message.headers.clone();
    let ack = if durable {
        AckHandle::durable(message)
    } else {
        AckHandle::none()
    };
    let undecoded = |e: Error| {
        e.for_message(UndecodedMessage {
            subject: subject.clone(),
            stream_sequence,
            consumer_sequence,
            headers: headers.clone(),
            payload: payload.clone(),
            ack: ack.clone(),
        })
    };
    // A gap marker: no event, and nothing after it may be read as if it followed.
    if let Some(range) = headers
        .as_ref()
        .and_then(|h| h.get(walbrook_protocol::headers::GAP))
    {
        return Err(undecoded(Error::new(
            ErrorKind::Gap,
            format!(
                "gap marker on {subject}: the changes committed in {} are not in the stream \
                 (the producer's replication slot was lost and the gap accepted); re-bootstrap \
                 the target from a snapshot taken after it",
                range.as_str()
            ),
        )));
    }
    // An event larger than the server's max_payload: its body is in the object store.
    let reference = headers
        .as_ref()
        .and_then(|h| h.get(walbrook_protocol::headers::PAYLOAD_OBJECT))
        .map(|v| v.as_str().to_string());
    let payload = match reference {
        Some(reference) => objects.fetch(&reference).await.map_err(undecoded)?,
        None => payload.clone(),
    };
    let (fingerprint, _) = split_single_object(&payload).map_err(|e| {
        undecoded(Error::with_source(
            ErrorKind::Decode,
            "not an Avro single-object message",
            e,
        ))
    })?;
    let schema = cache.get(fingerprint).await.map_err(undecoded)?;
    let decoded = schema.decode(&payload).map_err(undecoded)?;
    Ok(ChangeEvent {
        op: decoded.op,
        source: decoded.source,
        before: decoded.before,
        after: decoded.after,
        fingerprint,
        subject: subject.into(),
        stream_sequence,
        consumer_sequence,
        delivered,
        ack,
        message_index: 0,
        message_events: 1,
        payload,
        headers: headers.map(Arc::new),
    })
}

/// Decodes a delivered change message into its events: one, or the N of a message carrying
/// several (`Walbrook-Events`, protocol §3.6). Any fault of a shared message (a bad count,
/// framing, an event that does not decode or does not belong) fails the whole message with
/// one error that carries it unchanged, so it is returned or dead-lettered as stored.
pub(crate) async fn decode_messages(
    cache: &SchemaCache,
    objects: &PayloadObjects,
    message: Message,
    durable: bool,
) -> Result<Vec<ChangeEvent>, Error> {
    let Some(count) = shared_count(message.headers.as_ref()) else {
        return decode_message(cache, objects, message, durable)
            .await
            .map(|event| vec![event]);
    };
    let (stream_sequence, consumer_sequence, delivered) = delivery(&message)?;
    let subject = message.subject.to_string();
    let payload = message.payload.clone();
    let headers = message.headers.clone();
    match decode_shared(cache, &subject, &headers, &payload, &count).await {
        Ok(decoded) => {
            let ack = if durable {
                AckHandle::durable_events(message, decoded.len())
            } else {
                AckHandle::none()
            };
            Ok(shared_events(
                decoded,
                &subject,
                &headers,
                (stream_sequence, consumer_sequence, delivered),
                |index| ack.for_event(index),
            ))
        }
        Err(e) => Err(e.for_message(UndecodedMessage {
            subject,
            stream_sequence,
            consumer_sequence,
            headers,
            payload,
            ack: if durable {
                AckHandle::durable(message)
            } else {
                AckHandle::none()
            },
        })),
    }
}

type DecodedEvent = (
    walbrook_pgtype_avro::Fingerprint,
    bytes::Bytes,
    crate::schema::Decoded,
);

/// Events of a shared message decoded between two yields to the scheduler.
const YIELD_EVERY_EVENTS: usize = 128;

/// Splits and decodes the body of a shared message, checking it against its headers.
async fn decode_shared(
    cache: &SchemaCache,
    subject: &str,
    headers: &Option<async_nats::HeaderMap>,
    payload: &bytes::Bytes,
    count: &str,
) -> Result<Vec<DecodedEvent>, Error> {
    use walbrook_protocol::{batch, headers as h};
    let protocol = |what: String| Error::new(ErrorKind::Protocol, what);
    let header = |name: &str| {
        headers
            .as_ref()
            .and_then(|m| m.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let count = batch::parse_count(count)
        .ok_or_else(|| protocol(format!("bad {} header {count:?}", h::EVENTS)))?;
    if header(h::PAYLOAD_OBJECT).is_some() {
        return Err(protocol(format!(
            "a message in the object store holds one event, but it has {}: {count}",
            h::EVENTS
        )));
    }
    let first: u64 = header(h::ORDINAL)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| protocol(format!("missing or bad {} header", h::ORDINAL)))?;
    let commit: Lsn = header(h::COMMIT_LSN)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| protocol(format!("missing or bad {} header", h::COMMIT_LSN)))?;
    let last = header(h::LAST).is_some_and(|v| v == "true");
    let ranges = batch::split(payload, count).map_err(|e| {
        Error::with_source(
            ErrorKind::Protocol,
            format!("malformed body of a message with {count} events on {subject}"),
            e,
        )
    })?;
    let mut out = Vec::with_capacity(ranges.len());
    let mut schema = None;
    let n = ranges.len();
    for (i, range) in ranges.into_iter().enumerate() {
        if i > 0 && i % YIELD_EVERY_EVENTS == 0 {
            // Decoding a message of 1,000 events takes milliseconds: other tasks of this
            // worker thread (a sink's database connection, say) get a turn between parts.
            tokio::task::yield_now().await;
        }
        let row = payload.slice(range);
        let (fingerprint, _) = split_single_object(&row).map_err(|e| {
            Error::with_source(
                ErrorKind::Decode,
                format!(
                    "event {} of the message is not an Avro single-object message",
                    i + 1
                ),
                e,
            )
        })?;
        let schema = match &schema {
            Some(schema) => Arc::clone(schema),
            None => {
                let found = cache.get(fingerprint).await?;
                schema = Some(Arc::clone(&found));
                found
            }
        };
        // One table version per message: `decode` refuses another fingerprint.
        let decoded = schema.decode(&row)?;
        let expected = first + i as u64;
        let final_event = i + 1 == n;
        if decoded.source.ordinal != expected
            || decoded.source.commit_lsn != commit
            || (decoded.source.last && !final_event)
            || (final_event && decoded.source.last != last)
        {
            return Err(protocol(format!(
                "event {} of the message is ({}, {}, last {}) but the headers say ({commit}, \
                 {expected}, last {})",
                i + 1,
                decoded.source.commit_lsn,
                decoded.source.ordinal,
                decoded.source.last,
                final_event && last
            )));
        }
        out.push((fingerprint, row, decoded));
    }
    Ok(out)
}
