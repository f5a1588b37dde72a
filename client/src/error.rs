//! The SDK's error type: one struct with a classified [`ErrorKind`].

use std::fmt;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;

/// What went wrong, in categories a caller can act on. New kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Connecting to NATS failed (network, DNS, TLS, server gone). Retryable.
    Connect,
    /// The server rejected the credentials, or they could not be loaded.
    Auth,
    /// The options or the subscription are invalid (bad table pattern, consumer name, an
    /// existing durable consumer with other filters…). Fix the call.
    Config,
    /// The schema lookup RPC answered that the fingerprint is unknown (`404`).
    SchemaNotFound,
    /// A message could not be decoded: not single-object framing, a body that does not match
    /// its schema, or a schema the SDK cannot build a decoder for. The message is attached
    /// ([`Error::message`]).
    Decode,
    /// A peer broke the wire contract (docs/protocol.md): a malformed RPC reply, a schema whose
    /// fingerprint is not the one asked for, a missing header, a `400` answer.
    Protocol,
    /// NATS or JetStream reported an error (a consumer or stream request failed, a pull
    /// stream missed heartbeats…). Retryable.
    Nats,
    /// A schema lookup got no answer in time. Retryable.
    Timeout,
    /// Nobody serves the schema lookup RPC (no producer running for this database). Retryable.
    Unavailable,
    /// The server side of an RPC failed (`500`). Retryable.
    Server,
    /// The JetStream stream of the database does not exist (the producer has not run yet).
    /// Retryable: the producer creates it when it starts.
    StreamNotFound,
    /// An RPC refused the request as invalid (`400` malformed, `403` table not published,
    /// `404` unknown table or snapshot). Fix the call.
    Rejected,
    /// The producer runs as many snapshots as it may (`429`). Retryable.
    Busy,
    /// A snapshot ended with the producer's `failed` message (or was aborted): request a
    /// new one.
    SnapshotFailed,
    /// A gap marker (docs/protocol.md §3.8): the producer's slot was lost and the changes in
    /// the marker's range are not in the stream. The target must be re-bootstrapped from a
    /// snapshot taken after it; the marker is attached ([`Error::message`]).
    Gap,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Auth => "auth",
            ErrorKind::Config => "config",
            ErrorKind::SchemaNotFound => "schema not found",
            ErrorKind::Decode => "decode",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Nats => "nats",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Server => "server",
            ErrorKind::StreamNotFound => "stream not found",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Busy => "busy",
            ErrorKind::SnapshotFailed => "snapshot failed",
            ErrorKind::Gap => "gap",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the Walbrook client.
///
/// Errors about one stream message (it cannot be decoded, its schema is unknown) carry the
/// message ([`Error::message`]): its subject, stream sequence, headers and payload, and for a
/// durable consumer the means to acknowledge or terminate it. The stream goes on after such an
/// error; nothing is skipped silently.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    undecoded: Option<UndecodedMessage>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: None,
                undecoded: None,
            }),
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: Some(Arc::new(source)),
                undecoded: None,
            }),
        }
    }

    /// Attaches the stream message this error is about.
    pub(crate) fn for_message(self, undecoded: UndecodedMessage) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind: self.inner.kind,
                message: self.inner.message.clone(),
                source: self.inner.source.clone(),
                undecoded: Some(undecoded),
            }),
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether trying again later can succeed without changing anything (the network, a
    /// server or the producer may come back). Decode, protocol, configuration and
    /// authentication errors and unknown schemas are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::Connect
                | ErrorKind::Nats
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::Server
                | ErrorKind::StreamNotFound
                | ErrorKind::Busy
        )
    }

    /// The stream message this error is about, when it is about one.
    pub fn message(&self) -> Option<&UndecodedMessage> {
        self.inner.undecoded.as_ref()
    }

    /// The stream sequence of the message this error is about, when it is about one.
    pub fn stream_sequence(&self) -> Option<u64> {
        self.message().map(|m| m.stream_sequence)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)?;
        if let Some(m) = &self.inner.undecoded {
            write!(f, " (message {} on {})", m.stream_sequence, m.subject)?;
        }
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("source", &self.inner.source)
            .field("undecoded", &self.inner.undecoded)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A stream message the SDK could not turn into a [`ChangeEvent`](crate::ChangeEvent).
#[derive(Clone)]
pub struct UndecodedMessage {
    /// The NATS subject it was stored under.
    pub subject: String,
    /// Its JetStream stream sequence.
    pub stream_sequence: u64,
    pub(crate) consumer_sequence: u64,
    /// Its headers.
    pub headers: Option<HeaderMap>,
    /// Its payload, as stored.
    pub payload: Bytes,
    pub(crate) ack: crate::event::AckHandle,
}

impl UndecodedMessage {
    /// The consumer's delivery sequence of this delivery (see
    /// [`ChangeEvent::consumer_sequence`](crate::ChangeEvent::consumer_sequence)).
    pub fn consumer_sequence(&self) -> u64 {
        self.consumer_sequence
    }

    /// Acknowledges the message on a durable consumer, so it is not delivered again (for
    /// example after storing it elsewhere). A no-op on an ephemeral subscription.
    ///
    /// # Cancel safety
    /// Not cancel safe: if cancelled, the acknowledgement may or may not have been recorded.
    pub async fn ack(&self) -> Result<(), Error> {
        self.ack.ack().await
    }

    /// Asks a durable consumer to deliver the message again now (for a retryable error such
    /// as [`ErrorKind::Unavailable`]). A no-op on an ephemeral subscription.
    pub async fn nak(&self) -> Result<(), Error> {
        self.ack.nak().await
    }

    /// Tells a durable consumer never to deliver this message again (JetStream `+TERM`).
    /// A no-op on an ephemeral subscription.
    pub async fn term(&self) -> Result<(), Error> {
        self.ack.term().await
    }
}

impl fmt::Debug for UndecodedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UndecodedMessage")
            .field("subject", &self.subject)
            .field("stream_sequence", &self.stream_sequence)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}
