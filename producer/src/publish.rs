//! Pipelined JetStream publishing with in-order completion and lossless retry.
//!
//! ```text
//!  push(msg) ──► send_publish ──► window (VecDeque, bounded) ──► complete_front()
//!                                   │  Publish{msg, ack future}      │ await ack in order
//!                                   │  Confirm(lsn)                  │ Confirm: lsn is durable
//! ```
//!
//! The window holds at most `max_inflight` un-acked publishes. Acks are awaited in
//! publication order, so when a [`Entry::Confirm`] marker reaches the front, every
//! message pushed before it has been stored by JetStream: that is the only place the
//! confirmed LSN moves ([`Publisher::confirmed`]).
//!
//! When an ack fails (timeout, connection loss, server error that may be transient),
//! the publisher re-sends **that message and every message after it**, in order, with
//! the same `Nats-Msg-Id`s, and keeps doing so with backoff until JetStream acks them
//! or a definite error ([`PublishFailure::is_definite`]) stops it. Re-sent copies
//! that JetStream already stored are dropped by its duplicate window, so the stream
//! keeps the original order with no gap and no duplicate. While any message in the
//! window is unsent or failed, new messages are queued but not sent, so nothing can be
//! stored ahead of an earlier message. The re-send schedule is publisher state, so
//! cancelling a [`Publisher::complete_one`] (the producer's select loop does) never
//! postpones it.
//!
//! Client libraries buffer messages while reconnecting, so a message written to a dying
//! connection can be lost while a later one, buffered, is stored after the reconnect.
//! Chained messages (the change stream) therefore carry `Nats-Expected-Last-Msg-Id`
//! naming their predecessor in this session: JetStream refuses a message whose
//! predecessor is missing, the refusal triggers the in-order re-send, and the stream
//! never holds a later change before an earlier one. (JetStream recognises duplicates
//! before it checks the expectation, so re-sending already stored messages is safe;
//! `producer/tests/jetstream_semantics.rs` checks both facts against the server.)
//!
//! The window never holds more than `async_nats`' own ack permits (the context is
//! built with permits for two windows, see [`context_for`]), which avoids the
//! ack-window deadlock.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::HeaderMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

use crate::lsn::Lsn;
use crate::metrics::Metrics;

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// The subject.
    pub subject: String,
    /// Headers, including `Nats-Msg-Id`.
    pub headers: HeaderMap,
    /// The payload.
    pub payload: Bytes,
    /// Whether the message belongs to the publisher's ordered chain (the change
    /// stream): it then carries `Nats-Expected-Last-Msg-Id` naming the previous chained
    /// message, so JetStream refuses it until that one is stored.
    pub chained: bool,
}

/// Header JetStream uses to refuse a message whose predecessor is not the stream's last.
const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";

/// How long a "wrong last message id" may persist before the publisher gives up: it
/// then means someone else writes into the stream.
const WRONG_LAST_LIMIT: Duration = Duration::from_secs(60);

/// A pending JetStream acknowledgement, kept in the window until it resolves.
type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

enum Entry {
    Publish {
        message: OutMessage,
        ack: Option<AckFuture>,
        sent_at: std::time::Instant,
    },
    Confirm(Lsn),
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Publish { message, ack, .. } => f
                .debug_struct("Publish")
                .field("subject", &message.subject)
                .field("sent", &ack.is_some())
                .finish(),
            Entry::Confirm(lsn) => f.debug_tuple("Confirm").field(lsn).finish(),
        }
    }
}

/// Why publishing stopped.
#[derive(Debug, thiserror::Error)]
#[error("publishing to {subject} failed: {detail}")]
pub struct PublishFailure {
    /// The subject of the message that could not be stored.
    pub subject: String,
    /// What JetStream or the client said.
    pub detail: String,
    definite: bool,
    wrong_last: bool,
}

impl PublishFailure {
    /// A definite failure will not go away by retrying (e.g. a message larger than the
    /// server accepts, or a subject no stream captures); the producer must stop.
    pub fn is_definite(&self) -> bool {
        self.definite
    }
}

/// Retry policy for failed publishes.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First backoff.
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Give up (as a transient failure) after this long without progress; `None`
    /// retries forever.
    pub give_up_after: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            give_up_after: None,
        }
    }
}

/// Publishes messages with a bounded window of outstanding acks; see the module docs.
#[derive(Debug)]
pub struct Publisher {
    js: jetstream::Context,
    window: VecDeque<Entry>,
    in_flight: usize,
    max_inflight: usize,
    confirmed: Lsn,
    retry: RetryPolicy,
    acked: u64,
    duplicates: u64,
    retries: u64,
    metrics: Option<Metrics>,
    /// Current retry backoff; grows while acks keep failing, resets on success.
    backoff: Duration,
    /// When the next in-order re-send of the window is due.
    resend_at: Option<tokio::time::Instant>,
    /// Some message in the window is unsent or failed: new messages wait (are not
    /// sent) until the window is re-sent in order.
    broken: bool,
    /// Since when acks keep failing.
    failing_since: Option<tokio::time::Instant>,
    /// `Nats-Msg-Id` of the last chained message pushed in this session.
    chain_last: Option<String>,
    /// The stream chained messages go to, and the header that marks its own messages
    /// (for re-anchoring the chain after a foreign message).
    chain_stream: Option<(String, &'static str)>,
}

/// Builds the JetStream context a [`Publisher`] needs: more ack permits than the window
/// so the window, not the permit semaphore, is what bounds publishing; `ack_timeout` is
/// how long one ack may take before the window is re-sent.
pub fn context_for(
    client: async_nats::Client,
    max_inflight: usize,
    ack_timeout: Duration,
) -> jetstream::Context {
    // A re-send drops the un-acked futures of the window; async-nats hands their permits
    // to a background task that keeps them until the original ack arrives or its own
    // timeout passes (30 s by default). Were that longer than our ack timeout, or the
    // permits fewer than two windows, re-sends during a long outage (a JetStream cluster
    // electing a leader) would find no permit and stall for good: found by the cluster
    // fault test. So: orphaned permits come back after `ack_timeout`, and there are
    // enough for the window in flight plus one window of orphans.
    jetstream::ContextBuilder::new()
        .timeout(ack_timeout)
        .ack_timeout(ack_timeout)
        .max_ack_inflight(2 * max_inflight + 64)
        .backpressure_on_inflight(false)
        .build(client)
}

impl Publisher {
    /// A publisher over `js` (see [`context_for`]) with at most `max_inflight`
    /// un-acked publishes.
    pub fn new(js: jetstream::Context, max_inflight: usize, retry: RetryPolicy) -> Publisher {
        Publisher {
            js,
            window: VecDeque::new(),
            in_flight: 0,
            max_inflight: max_inflight.max(1),
            confirmed: Lsn::ZERO,
            retry,
            acked: 0,
            duplicates: 0,
            retries: 0,
            metrics: None,
            backoff: Duration::ZERO,
            resend_at: None,
            broken: false,
            failing_since: None,
            chain_last: None,
            chain_stream: None,
        }
    }

    /// Names the stream chained messages go to and the header present on every message
    /// this publisher chains. When JetStream refuses the oldest chained message because
    /// the stream's last message is not its predecessor and that last message is not
    /// one of ours (someone published into the stream), the chain is re-anchored on it
    /// instead of stalling.
    pub fn with_chain_stream(mut self, stream: &str, own_header: &'static str) -> Publisher {
        self.chain_stream = Some((stream.to_string(), own_header));
        self
    }

    /// Re-anchors the oldest un-acked chained message on the stream's actual last
    /// message when that one is foreign. Returns whether it did.
    async fn reanchor(&mut self) -> bool {
        let Some((stream_name, own_header)) = self.chain_stream.clone() else {
            return false;
        };
        let Ok(mut stream) = self.js.get_stream(&stream_name).await else {
            return false;
        };
        let Ok(info) = stream.info().await else {
            return false;
        };
        let last = info.state.last_sequence;
        let Ok(message) = stream.get_raw_message(last).await else {
            return false;
        };
        if message.headers.get(own_header).is_some() {
            // Our own message: a predecessor really is missing; re-sending repairs it.
            return false;
        }
        let foreign_id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string());
        let Some(Entry::Publish { message, .. }) = self
            .window
            .iter_mut()
            .find(|e| matches!(e, Entry::Publish { message, .. } if message.chained))
        else {
            return false;
        };
        let mut headers = HeaderMap::new();
        for (name, values) in message.headers.iter() {
            if AsRef::<str>::as_ref(name) != EXPECTED_LAST_MSG_ID {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        if let Some(id) = &foreign_id {
            headers.insert(EXPECTED_LAST_MSG_ID, id.as_str());
        }
        message.headers = headers;
        tracing::warn!(
            stream = %stream_name,
            sequence = last,
            "a message not published by Walbrook is the stream's last; continuing the chain after it"
        );
        true
    }

    /// Records ack latency, in-flight count and re-sends in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Publisher {
        self.metrics = Some(metrics);
        self
    }

    fn gauge_in_flight(&self) {
        if let Some(m) = &self.metrics {
            m.in_flight
                .set(i64::try_from(self.in_flight).unwrap_or(i64::MAX));
        }
    }

    /// Queues a message; waits for the oldest acks first when the window is full.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call may leave the message unsent. The producer
    /// only cancels it on shutdown, when un-confirmed work is replayed anyway.
    pub async fn push(&mut self, mut message: OutMessage) -> Result<(), PublishFailure> {
        while self.in_flight >= self.max_inflight {
            self.complete_front().await?;
        }
        if message.chained {
            let id = message
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_string());
            if let Some(previous) = &self.chain_last {
                message
                    .headers
                    .insert(EXPECTED_LAST_MSG_ID, previous.as_str());
            }
            self.chain_last = id;
        }
        // Never send past an unsent or failed message: the stream must keep the order.
        let ack = if self.broken {
            None
        } else {
            send(&self.js, &message).await.ok()
        };
        if ack.is_none() {
            self.broken = true;
        }
        self.window.push_back(Entry::Publish {
            message,
            ack,
            sent_at: std::time::Instant::now(),
        });
        self.in_flight += 1;
        self.gauge_in_flight();
        Ok(())
    }

    /// Marks `lsn` as durable once every message pushed so far is acked.
    pub fn push_confirm(&mut self, lsn: Lsn) {
        if self.window.is_empty() {
            self.confirmed = self.confirmed.max(lsn);
        } else {
            self.window.push_back(Entry::Confirm(lsn));
        }
    }

    /// Waits until every pushed message is acked (and every confirm marker applied).
    pub async fn flush(&mut self) -> Result<(), PublishFailure> {
        while !self.window.is_empty() {
            self.complete_front().await?;
        }
        Ok(())
    }

    /// The highest LSN all of whose messages JetStream has acked.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Number of un-acked publishes.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Counters: (acked, of which duplicates, re-sends).
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.acked, self.duplicates, self.retries)
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// Whether another message can be pushed without waiting for acks.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.max_inflight
    }

    /// Waits for the oldest pending entry to complete (retrying as described in the
    /// module docs); returns at once when nothing is pending.
    ///
    /// # Cancel safety
    /// Cancel safe: an ack being awaited stays in the window, and a retry interrupted
    /// in its backoff resumes on the next call; nothing is lost or reordered.
    pub async fn complete_one(&mut self) -> Result<(), PublishFailure> {
        self.complete_front().await
    }

    async fn complete_front(&mut self) -> Result<(), PublishFailure> {
        loop {
            // A scheduled re-send survives cancellation: it is state, not a local.
            if let Some(at) = self.resend_at {
                tokio::time::sleep_until(at).await;
                self.resend_at = None;
                self.resend_window().await?;
                continue;
            }
            let outcome = match self.window.front_mut() {
                None => return Ok(()),
                Some(Entry::Confirm(lsn)) => {
                    self.confirmed = self.confirmed.max(*lsn);
                    self.window.pop_front();
                    return Ok(());
                }
                Some(Entry::Publish {
                    message,
                    ack,
                    sent_at,
                }) => match ack {
                    Some(future) => {
                        let result = future.as_mut().await;
                        *ack = None;
                        if let (Ok(_), Some(m)) = (&result, &self.metrics) {
                            m.ack_latency.observe(sent_at.elapsed().as_secs_f64());
                        }
                        result.map_err(|e| classify(&message.subject, e.kind(), &e.to_string()))
                    }
                    None => Err(PublishFailure {
                        subject: message.subject.clone(),
                        detail: "not sent (NATS not connected)".into(),
                        definite: false,
                        wrong_last: false,
                    }),
                },
            };
            match outcome {
                Ok(ack) => {
                    self.acked += 1;
                    if ack.duplicate {
                        self.duplicates += 1;
                    }
                    self.window.pop_front();
                    self.in_flight -= 1;
                    self.gauge_in_flight();
                    self.backoff = Duration::ZERO;
                    self.failing_since = None;
                    if let Some(m) = &self.metrics {
                        m.publish_failing(false);
                    }
                    return Ok(());
                }
                Err(failure) if failure.definite => return Err(failure),
                Err(failure) => {
                    let now = tokio::time::Instant::now();
                    let since = *self.failing_since.get_or_insert(now);
                    if let Some(m) = &self.metrics {
                        m.publish_failing(true);
                    }
                    if let Some(limit) = self.retry.give_up_after
                        && now.duration_since(since) >= limit
                    {
                        return Err(failure);
                    }
                    if failure.wrong_last && self.reanchor().await {
                        self.broken = true;
                        self.resend_at = Some(now);
                        continue;
                    }
                    if failure.wrong_last && now.duration_since(since) >= WRONG_LAST_LIMIT {
                        return Err(PublishFailure {
                            detail: format!(
                                "{}; for over {}s: is another publisher writing into this stream?",
                                failure.detail,
                                WRONG_LAST_LIMIT.as_secs()
                            ),
                            definite: true,
                            ..failure
                        });
                    }
                    self.backoff = if self.backoff.is_zero() {
                        self.retry.initial_backoff
                    } else {
                        (self.backoff * 2).min(self.retry.max_backoff)
                    };
                    tracing::warn!(
                        subject = %failure.subject,
                        error = %failure.detail,
                        backoff_ms = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX),
                        in_flight = self.in_flight,
                        "JetStream did not ack; re-sending the window in order"
                    );
                    // Nothing new is sent until the window has been re-sent in order.
                    self.broken = true;
                    self.resend_at = Some(now + self.backoff);
                }
            }
        }
    }

    /// Re-sends every un-acked message in order, replacing their ack futures. Stops at
    /// the first message that cannot be sent (sending later ones would reorder the
    /// stream) and schedules the next attempt.
    async fn resend_window(&mut self) -> Result<(), PublishFailure> {
        let js = self.js.clone();
        self.broken = true;
        for entry in &mut self.window {
            if let Entry::Publish {
                message,
                ack,
                sent_at,
            } = entry
            {
                // Drop the old future first: it holds an ack permit.
                *ack = None;
                *sent_at = std::time::Instant::now();
                self.retries += 1;
                if let Some(m) = &self.metrics {
                    m.resends.inc();
                }
                match send(&js, message).await {
                    Ok(future) => *ack = Some(future),
                    Err(failure) if failure.definite => return Err(failure),
                    Err(failure) => {
                        // Grows like the ack-failure backoff: a server that keeps refusing
                        // is asked less and less often, never silently.
                        self.backoff = (self.backoff.max(self.retry.initial_backoff) * 2)
                            .min(self.retry.max_backoff);
                        tracing::warn!(
                            subject = %failure.subject,
                            error = %failure.detail,
                            backoff_ms = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX),
                            "cannot re-send the window yet; retrying"
                        );
                        self.resend_at = Some(tokio::time::Instant::now() + self.backoff);
                        return Ok(());
                    }
                }
            }
        }
        self.broken = false;
        Ok(())
    }
}

async fn send(js: &jetstream::Context, message: &OutMessage) -> Result<AckFuture, PublishFailure> {
    let publish = PublishMessage::build()
        .payload(message.payload.clone())
        .headers(message.headers.clone());
    js.send_publish(message.subject.clone(), publish)
        .await
        .map(|future| Box::pin(future.into_future()) as AckFuture)
        .map_err(|e| classify(&message.subject, e.kind(), &e.to_string()))
}

/// Decides once whether a publish error is worth retrying.
fn classify(subject: &str, kind: PublishErrorKind, detail: &str) -> PublishFailure {
    let definite = match kind {
        // The message can never fit: retrying would loop forever.
        PublishErrorKind::MaxPayloadExceeded => true,
        // The chain's predecessor is not stored yet (it was lost and is being re-sent):
        // re-sending the window in order repairs it.
        PublishErrorKind::WrongLastMessageId => false,
        PublishErrorKind::WrongLastSequence => true,
        // A stream can be (re)created by an operator; keep trying, loudly.
        PublishErrorKind::StreamNotFound => false,
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => false,
        PublishErrorKind::Other => {
            // JetStream answers stream-limit violations with an API error; those do
            // not resolve themselves.
            detail.contains("maximum messages exceeded")
                || detail.contains("maximum bytes exceeded")
                || detail.contains("message size exceeds maximum")
        }
    };
    PublishFailure {
        subject: subject.to_string(),
        detail: detail.to_string(),
        definite,
        wrong_last: kind == PublishErrorKind::WrongLastMessageId,
    }
}
