//! Dead letters: events a sink refused, or messages that cannot be decoded, stored on
//! `<root>.<db>.dlq.<consumer>` in the stream `<root>_<db>_DLQ` (docs/protocol.md §2) with
//! the original payload and diagnostic headers, never dropped.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde::Serialize;

use crate::Client;
use crate::error::{Error, ErrorKind};
use crate::event::ChangeEvent;
use crate::names::Names;

/// Header names of a dead letter.
pub mod headers {
    /// Why the event was dead-lettered.
    pub const ERROR: &str = "Walbrook-Dlq-Error";
    /// The sink that refused it (`postgres`, `webhook`, `elasticsearch`, or `decode`).
    pub const SINK: &str = "Walbrook-Dlq-Sink";
    /// The consumer name.
    pub const CONSUMER: &str = "Walbrook-Dlq-Consumer";
    /// The subject the event was stored under in the change stream.
    pub const SUBJECT: &str = "Walbrook-Dlq-Subject";
    /// Its sequence in the change stream.
    pub const SEQUENCE: &str = "Walbrook-Dlq-Sequence";
    /// When it was dead-lettered (RFC 3339).
    pub const TIME: &str = "Walbrook-Dlq-Time";
}

/// One dead letter to store.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Subject in the change stream.
    pub subject: String,
    /// Sequence in the change stream.
    pub stream_sequence: u64,
    /// Original headers.
    pub headers: Option<HeaderMap>,
    /// Original payload.
    pub payload: Bytes,
    /// Why.
    pub error: String,
    /// Which sink (or `decode`).
    pub sink: String,
}

impl DeadLetter {
    /// A dead letter for an event the sink refused. An event whose body is in the object
    /// store (larger than the server's `max_payload`, protocol §3.5) is stored by the same
    /// reference, with an empty payload: its body would not fit a message.
    pub fn of_event(event: &ChangeEvent, sink: &str, error: impl Into<String>) -> DeadLetter {
        // An event of a shared message goes alone, with its own headers (protocol §3.6).
        let headers = event.event_headers();
        let by_reference = headers
            .as_ref()
            .is_some_and(|h| h.get(walbrook_protocol::headers::PAYLOAD_OBJECT).is_some());
        DeadLetter {
            subject: event.subject().to_owned(),
            stream_sequence: event.stream_sequence(),
            headers,
            payload: if by_reference {
                Bytes::new()
            } else {
                event.payload().clone()
            },
            error: error.into(),
            sink: sink.to_owned(),
        }
    }
}

/// Creates the DLQ stream when missing.
pub(crate) async fn ensure_stream(client: &Client) -> Result<(), Error> {
    ensure_stream_on(client.js(), client.names()).await
}

/// [`ensure_stream`] with the parts of a client (a subscription has no `Client`).
pub(crate) async fn ensure_stream_on(js: &jetstream::Context, names: &Names) -> Result<(), Error> {
    js.get_or_create_stream(stream::Config {
        name: names.dlq_stream(),
        subjects: vec![names.dlq_all()],
        description: Some("Walbrook dead letters".into()),
        ..Default::default()
    })
    .await
    .map_err(|e| Error::with_source(ErrorKind::Nats, "creating the dead-letter stream", e))?;
    Ok(())
}

/// Publishes a dead letter and waits for JetStream to store it. Retrying after a failure does
/// not store it twice (its `Nats-Msg-Id` is `<consumer>-<sequence>-<ordinal>`, or
/// `<consumer>-<sequence>` for a message without a `Walbrook-Ordinal`).
pub(crate) async fn publish(
    client: &Client,
    consumer: &str,
    letter: &DeadLetter,
) -> Result<(), Error> {
    publish_on(client.js(), client.names(), consumer, letter).await
}

/// [`publish`] with the parts of a client (a subscription has no `Client`).
pub(crate) async fn publish_on(
    js: &jetstream::Context,
    names: &Names,
    consumer: &str,
    letter: &DeadLetter,
) -> Result<(), Error> {
    let mut headers = HeaderMap::new();
    if let Some(original) = &letter.headers {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            // Keep the Walbrook headers; JetStream's publish controls would be re-interpreted.
            if name.starts_with("Nats-") {
                continue;
            }
            for value in values {
                headers.append(name, value.as_str());
            }
        }
    }
    // Header values are one line.
    let error: String = letter
        .error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(4000)
        .collect();
    headers.insert(headers::ERROR, error.as_str());
    headers.insert(headers::SINK, letter.sink.as_str());
    headers.insert(headers::CONSUMER, consumer);
    headers.insert(headers::SUBJECT, letter.subject.as_str());
    headers.insert(
        headers::SEQUENCE,
        letter.stream_sequence.to_string().as_str(),
    );
    headers.insert(headers::TIME, chrono::Utc::now().to_rfc3339().as_str());
    // Events of one shared message (protocol §3.6) share its sequence: the ordinal tells
    // their dead letters apart.
    let id = match letter
        .headers
        .as_ref()
        .and_then(|h| h.get(walbrook_protocol::headers::ORDINAL))
    {
        Some(ordinal) => format!("{consumer}-{}-{}", letter.stream_sequence, ordinal.as_str()),
        None => format!("{consumer}-{}", letter.stream_sequence),
    };
    headers.insert("Nats-Msg-Id", id.as_str());
    let ack = js
        .publish_with_headers(names.dlq_subject(consumer), headers, letter.payload.clone())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "publishing a dead letter", e))?;
    ack.await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "storing a dead letter", e))?;
    Ok(())
}

/// A stored dead letter, as `walbrook dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredDeadLetter {
    /// Sequence in the DLQ stream.
    pub dlq_sequence: u64,
    /// Subject in the change stream.
    pub subject: String,
    /// Sequence in the change stream.
    pub stream_sequence: Option<u64>,
    /// Why it was dead-lettered.
    pub error: String,
    /// Which sink refused it.
    pub sink: String,
    /// When.
    pub time: String,
    /// The decoded event (`null` when it does not decode; an array of events for a whole
    /// message that carried several, protocol §3.6).
    pub event: Option<serde_json::Value>,
    /// Why it does not decode.
    pub decode_error: Option<String>,
    #[serde(skip)]
    pub(crate) payload: Bytes,
    #[serde(skip)]
    pub(crate) headers: HeaderMap,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

/// Reads the dead letters of `consumer` (oldest first), decoding each event when it can.
pub async fn list(client: &Client, consumer: &str) -> Result<Vec<StoredDeadLetter>, Error> {
    let names = client.names();
    let js = client.js();
    let stream = match js.get_stream(names.dlq_stream()).await {
        Ok(s) => s,
        Err(e) => {
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
            {
                return Ok(Vec::new());
            }
            return Err(Error::with_source(
                ErrorKind::Nats,
                "getting the DLQ stream",
                e,
            ));
        }
    };
    let subject = names.dlq_subject(consumer);
    let mut out = Vec::new();
    let mut next = 1u64;
    loop {
        let found = stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(subject.clone())
            .send()
            .await;
        let message = match found {
            Ok(m) => m,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(Error::with_source(ErrorKind::Nats, "reading the DLQ", e)),
        };
        next = message.sequence + 1;
        let headers = message.headers.clone();
        let original_subject = header(&headers, headers::SUBJECT);
        let stream_sequence = header(&headers, headers::SEQUENCE).parse().ok();
        let decoded = crate::subscribe::decode_stored_events(
            client.cache(),
            &crate::large_payload::PayloadObjects::new(client.js().clone()),
            original_subject.clone(),
            stream_sequence.unwrap_or(0),
            Some(headers.clone()),
            message.payload.clone(),
        )
        .await;
        let (event, decode_error) = match decoded {
            // A whole shared message (protocol §3.6) shows as the array of its events.
            Ok(events) if events.len() == 1 => (serde_json::to_value(&events[0]).ok(), None),
            Ok(events) => (serde_json::to_value(&events).ok(), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(StoredDeadLetter {
            dlq_sequence: message.sequence,
            subject: original_subject,
            stream_sequence,
            error: header(&headers, headers::ERROR),
            sink: header(&headers, headers::SINK),
            time: header(&headers, headers::TIME),
            event,
            decode_error,
            payload: message.payload,
            headers,
        });
    }
    Ok(out)
}

/// Decodes a stored dead letter back into its event (its events, for a whole message that
/// carried several, protocol §3.6).
pub(crate) async fn decode(
    client: &Client,
    letter: &StoredDeadLetter,
) -> Result<Vec<ChangeEvent>, Error> {
    crate::subscribe::decode_stored_events(
        client.cache(),
        &crate::large_payload::PayloadObjects::new(client.js().clone()),
        letter.subject.clone(),
        letter.stream_sequence.unwrap_or(0),
        Some(letter.headers.clone()),
        letter.payload.clone(),
    )
    .await
}

/// Removes a dead letter from the DLQ stream (after it was replayed).
pub(crate) async fn remove(client: &Client, dlq_sequence: u64) -> Result<(), Error> {
    let stream = client
        .js()
        .get_stream(client.names().dlq_stream())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "getting the DLQ stream", e))?;
    stream
        .delete_message(dlq_sequence)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "deleting a dead letter", e))?;
    Ok(())
}
