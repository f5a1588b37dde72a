//! Dead letters: events a sink refused, or messages that cannot be decoded, stored on
//! `<root>.<db>.dlq.<consumer>` in the stream `<root>_<db>_DLQ` (docs/protocol.md §2) with
//! the original payload and diagnostic headers, never dropped.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, object_store, stream};
use bytes::Bytes;
use serde::Serialize;

use crate::Client;
use crate::error::{Error, ErrorKind};
use crate::event::ChangeEvent;
use crate::large_payload::PayloadObjects;
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
    /// A dead letter for an event the sink refused, with the event's whole body (also when
    /// the change stream had it in the object store, protocol §3.5: [`publish`] decides how
    /// the dead letter stores it).
    pub fn of_event(event: &ChangeEvent, sink: &str, error: impl Into<String>) -> DeadLetter {
        DeadLetter {
            subject: event.subject().to_owned(),
            stream_sequence: event.stream_sequence(),
            // An event of a shared message goes alone, with its own headers (protocol §3.6).
            headers: event.event_headers(),
            payload: event.payload().clone(),
            error: error.into(),
            sink: sink.to_owned(),
        }
    }
}

/// Room left in a dead letter's size check for the framing NATS adds and rounding.
const HEADER_MARGIN: usize = 256;

/// Creates the DLQ stream when missing.
pub(crate) async fn ensure_stream(client: &Client) -> Result<(), Error> {
    ensure_stream_on(client.js(), client.names()).await
}

/// The replicas and storage of the change stream: dead letters are kept as durably as the
/// changes they were (NATS's defaults would be one replica).
pub(crate) async fn change_stream_durability(
    js: &jetstream::Context,
    names: &Names,
) -> Result<(usize, stream::StorageType), Error> {
    let name = names.wal_stream();
    let mut wal = js.get_stream(&name).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Nats,
            format!("reading the change stream {name} (the dead letters take its replicas)"),
            e,
        )
    })?;
    let info = wal.info().await.map_err(|e| {
        Error::with_source(
            ErrorKind::Nats,
            format!("reading the change stream {name}"),
            e,
        )
    })?;
    Ok((info.config.num_replicas.max(1), info.config.storage))
}

/// [`ensure_stream`] with the parts of a client (a subscription has no `Client`).
///
/// The stream gets the change stream's replicas and storage. An existing dead-letter
/// stream with fewer replicas is raised to them; a different storage type cannot be changed
/// in place and is logged.
pub(crate) async fn ensure_stream_on(js: &jetstream::Context, names: &Names) -> Result<(), Error> {
    let (num_replicas, storage) = change_stream_durability(js, names).await?;
    let creating = |e| Error::with_source(ErrorKind::Nats, "creating the dead-letter stream", e);
    let mut dlq = js
        .get_or_create_stream(stream::Config {
            name: names.dlq_stream(),
            subjects: vec![names.dlq_all()],
            description: Some("Walbrook dead letters".into()),
            num_replicas,
            storage,
            ..Default::default()
        })
        .await
        .map_err(creating)?;
    let config = dlq
        .info()
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "reading the dead-letter stream", e))?
        .config
        .clone();
    if config.storage != storage {
        tracing::warn!(
            stream = %config.name,
            "the dead-letter stream's storage is {:?}, the change stream's {storage:?}: \
             JetStream cannot change it in place (recreate the stream when it is empty)",
            config.storage
        );
    }
    if config.num_replicas < num_replicas {
        let name = config.name.clone();
        js.update_stream(stream::Config {
            num_replicas,
            ..config
        })
        .await
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Nats,
                format!("raising the replicas of {name} to the change stream's {num_replicas}"),
                e,
            )
        })?;
    }
    Ok(())
}

/// Publishes a dead letter and waits for JetStream to store it. Retrying after a failure does
/// not store it twice (its `Nats-Msg-Id` is `<consumer>-<sequence>-<ordinal>`, or
/// `<consumer>-<sequence>` for a message without a `Walbrook-Ordinal`).
///
/// A body that does not fit one message together with the dead letter's headers (the
/// server's `max_payload` counts both) goes to the dead-letter bucket under that id, and the
/// message names it in `Walbrook-Payload-Object` with an empty body (protocol §2). A letter
/// that arrives by reference to the producer's large-payload bucket, whose objects expire
/// with the change stream, is copied the same way; a reference to an object that is gone
/// is kept as it came (the body is lost already, the letter says where it was).
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
    let mut reference: Option<String> = None;
    if let Some(original) = &letter.headers {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            // Keep the Walbrook headers; JetStream's publish controls would be re-interpreted.
            // Where the body is, is decided below.
            if name.starts_with("Nats-") {
                continue;
            }
            if name == walbrook_protocol::headers::PAYLOAD_OBJECT {
                reference = values.first().map(|v| v.as_str().to_owned());
                continue;
            }
            for value in values {
                headers.append(name, value.as_str());
            }
        }
    }
    // A body at hand makes any reference moot; an empty one with a reference is fetched.
    let mut body = letter.payload.clone();
    let mut gone = None;
    if let Some(from) = reference.filter(|_| body.is_empty()) {
        match PayloadObjects::new(js.clone()).fetch(&from).await {
            Ok(fetched) => body = fetched,
            Err(e) if e.kind() == ErrorKind::Decode => {
                tracing::warn!(reference = %from, "dead letter of a message whose payload object is gone: {e}");
                gone = Some(from);
            }
            Err(e) => return Err(e),
        }
    }
    headers.insert(headers::ERROR, error_header(&letter.error).as_str());
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
    let header_len =
        walbrook_protocol::headers::block_len(headers.iter().flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (AsRef::<str>::as_ref(name), v.as_str()))
        }));
    let max_payload = js.client().server_info().max_payload;
    if let Some(gone) = gone {
        headers.insert(walbrook_protocol::headers::PAYLOAD_OBJECT, gone.as_str());
    } else if body.len() + header_len + HEADER_MARGIN > max_payload {
        let stored = store_body(js, names, &id, &body, max_payload).await?;
        headers.insert(walbrook_protocol::headers::PAYLOAD_OBJECT, stored.as_str());
        body = Bytes::new();
    }
    let ack = js
        .publish_with_headers(names.dlq_subject(consumer), headers, body)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "publishing a dead letter", e))?;
    ack.await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "storing a dead letter", e))?;
    Ok(())
}

/// The `Walbrook-Dlq-Error` value: one line, at most [`ERROR_CHARS`] characters. A longer
/// text keeps its beginning and its end (where the sinks put codes such as the SQLSTATE).
fn error_header(error: &str) -> String {
    let line: Vec<char> = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() <= ERROR_CHARS {
        return line.into_iter().collect();
    }
    const TAIL: usize = 1000;
    const CUT: &str = " … ";
    let head = ERROR_CHARS - TAIL - CUT.chars().count();
    let mut out: String = line[..head].iter().collect();
    out.push_str(CUT);
    out.extend(&line[line.len() - TAIL..]);
    out
}

/// The longest `Walbrook-Dlq-Error` value, in characters.
const ERROR_CHARS: usize = 4000;

/// Stores a dead letter's body as object `object` of the dead-letter bucket (created when
/// missing; its objects do not expire) unless it is there already (a retried publish), and
/// returns the `Walbrook-Payload-Object` value naming it.
async fn store_body(
    js: &jetstream::Context,
    names: &Names,
    object: &str,
    body: &Bytes,
    max_payload: usize,
) -> Result<String, Error> {
    let bucket = names.dlq_bucket();
    let nats = |what: String, e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::Nats, format!("{what}: {e}"))
    };
    let store = match js.get_object_store(&bucket).await {
        Ok(store) => store,
        Err(_) => {
            let (num_replicas, storage) = change_stream_durability(js, names).await?;
            js.create_object_store(object_store::Config {
                bucket: bucket.clone(),
                description: Some(
                    "Walbrook: dead letters too large for one message (docs/sinks.md)".into(),
                ),
                num_replicas,
                storage,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(format!("creating the dead-letter bucket {bucket}"), &e))?
        }
    };
    let exists = store.info(object).await.is_ok_and(|info| !info.deleted);
    if !exists {
        let meta = object_store::ObjectMetadata {
            name: object.to_owned(),
            chunk_size: Some(walbrook_protocol::object_chunk_size(max_payload)),
            ..Default::default()
        };
        let mut reader: &[u8] = body.as_ref();
        store
            .put(meta, &mut reader)
            .await
            .map_err(|e| nats(format!("storing dead letter {bucket}/{object}"), &e))?;
    }
    Ok(format!("{bucket}/{object}"))
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
    let mut out = Vec::new();
    for (dlq_sequence, headers, payload) in stored(client, consumer).await? {
        let original_subject = header(&headers, headers::SUBJECT);
        let stream_sequence = header(&headers, headers::SEQUENCE).parse().ok();
        let decoded = crate::subscribe::decode_stored_events(
            client.cache(),
            &PayloadObjects::new(client.js().clone()),
            original_subject.clone(),
            stream_sequence.unwrap_or(0),
            Some(headers.clone()),
            payload.clone(),
        )
        .await;
        let (event, decode_error) = match decoded {
            // A whole shared message (protocol §3.6) shows as the array of its events.
            Ok(events) if events.len() == 1 => (serde_json::to_value(&events[0]).ok(), None),
            Ok(events) => (serde_json::to_value(&events).ok(), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(StoredDeadLetter {
            dlq_sequence,
            subject: original_subject,
            stream_sequence,
            error: header(&headers, headers::ERROR),
            sink: header(&headers, headers::SINK),
            time: header(&headers, headers::TIME),
            event,
            decode_error,
            payload,
            headers,
        });
    }
    Ok(out)
}

/// The stored messages of `consumer`'s dead letters, oldest first, as they are: DLQ
/// sequence, headers and payload (nothing decoded, no body fetched).
async fn stored(client: &Client, consumer: &str) -> Result<Vec<(u64, HeaderMap, Bytes)>, Error> {
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
        out.push((message.sequence, message.headers, message.payload));
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

/// Removes a dead letter from the DLQ stream (after it was replayed), and then its body from
/// the dead-letter bucket when it is there (a body left behind by a failure here only takes
/// space; removing it first could lose a letter whose removal then fails).
pub(crate) async fn remove(
    client: &Client,
    dlq_sequence: u64,
    headers: &HeaderMap,
) -> Result<(), Error> {
    let stream = client
        .js()
        .get_stream(client.names().dlq_stream())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "getting the DLQ stream", e))?;
    stream
        .delete_message(dlq_sequence)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, "deleting a dead letter", e))?;
    let bucket = client.names().dlq_bucket();
    let object = headers
        .get(walbrook_protocol::headers::PAYLOAD_OBJECT)
        .and_then(|v| {
            v.as_str()
                .strip_prefix(&format!("{bucket}/"))
                .map(str::to_owned)
        });
    if let Some(object) = object {
        let deleted = match client.js().get_object_store(&bucket).await {
            Ok(store) => store.delete(&object).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = deleted {
            tracing::warn!(%bucket, %object, "a replayed dead letter's body was not removed: {e}");
        }
    }
    Ok(())
}

/// Removes dead letters of `consumer`, each with its body in the dead-letter bucket: those
/// whose DLQ sequences are given (`dlq_sequence` of [`list`]), or all of them for `None`.
/// Removes nothing when a given sequence is not one of the consumer's dead letters
/// ([`ErrorKind::Config`]). Returns how many were removed.
pub async fn remove_dead_letters(
    client: &Client,
    consumer: &str,
    sequences: Option<&[u64]>,
) -> Result<usize, Error> {
    // Only the sequences and headers count here: nothing is decoded or fetched.
    let letters = stored(client, consumer).await?;
    let chosen: Vec<&(u64, HeaderMap, Bytes)> = match sequences {
        None => letters.iter().collect(),
        Some(wanted) => {
            if let Some(missing) = wanted
                .iter()
                .find(|s| !letters.iter().any(|(sequence, ..)| sequence == *s))
            {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{consumer} has no dead letter with DLQ sequence {missing}"),
                ));
            }
            letters
                .iter()
                .filter(|(sequence, ..)| wanted.contains(sequence))
                .collect()
        }
    };
    for (sequence, headers, _) in &chosen {
        remove(client, *sequence, headers).await?;
    }
    Ok(chosen.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_headers_are_one_line_and_keep_both_ends_of_a_long_text() {
        assert_eq!(error_header("refused:\nrow 4\r\n"), "refused: row 4  ");
        let long = format!("refused: {} (SQLSTATE 23514)", "é".repeat(10_000));
        let header = error_header(&long);
        assert_eq!(header.chars().count(), ERROR_CHARS);
        assert!(header.starts_with("refused: é"), "{header}");
        assert!(header.contains(" … "), "{header}");
        assert!(header.ends_with("é (SQLSTATE 23514)"), "{header}");
        let exact = "x".repeat(ERROR_CHARS);
        assert_eq!(error_header(&exact), exact);
    }
}
