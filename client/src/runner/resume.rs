//! The resume point of a durable consumer while the runner recreates it.
//!
//! JetStream cannot move a consumer's start in place, so the runner deletes its durable
//! consumer and creates a new one at the resume point. A process that dies (or a creation
//! that fails) between the two steps would leave no consumer, and the next start would fall
//! back to `--start`: a silent gap with `new`, a full replay with `beginning`. So the resume
//! point is written to the key-value bucket `<root>_<db>_RESUME` (docs/protocol.md §2) before
//! the delete, read at start when the consumer is missing, and removed once the replacement
//! exists.

use std::fmt::Write;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use crate::error::{Error, ErrorKind};
use crate::names::Names;
use crate::subscribe::Start;

/// The key of `consumer` (KV keys take `[-/_=.a-zA-Z0-9]`; consumer names take more).
fn key(consumer: &str) -> String {
    let mut out = String::from("c-");
    for b in consumer.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The stored text of a start.
fn encode(start: &Start) -> String {
    match start {
        Start::Beginning => "beginning".to_owned(),
        Start::New => "new".to_owned(),
        Start::Sequence(n) => format!("sequence {n}"),
        Start::CommitPosition(lsn) => format!("commit {lsn}"),
        Start::Time(t) => format!("time {}", t.to_rfc3339()),
    }
}

/// A start from its stored text.
fn decode(text: &str) -> Option<Start> {
    let (kind, value) = text.split_once(' ').unwrap_or((text, ""));
    match kind {
        "beginning" => Some(Start::Beginning),
        "new" => Some(Start::New),
        "sequence" => value.parse().ok().map(Start::Sequence),
        "commit" => value.parse().ok().map(Start::CommitPosition),
        "time" => chrono::DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|t| Start::Time(t.with_timezone(&chrono::Utc))),
        _ => None,
    }
}

fn nats(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Nats, format!("{what}: {e}"))
}

async fn bucket(js: &jetstream::Context, names: &Names) -> Result<kv::Store, Error> {
    let name = names.resume_bucket();
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    let (num_replicas, storage) = super::dead_letter::change_stream_durability(js, names).await?;
    js.create_key_value(kv::Config {
        bucket: name.clone(),
        description: "Walbrook: consumer runners' resume points while a consumer is recreated"
            .into(),
        history: 1,
        num_replicas,
        storage,
        ..Default::default()
    })
    .await
    .map_err(|e| nats(&format!("creating the resume bucket {name}"), e))
}

/// Records `start` as where `consumer` resumes, before its consumer is deleted.
pub(crate) async fn save(
    js: &jetstream::Context,
    names: &Names,
    consumer: &str,
    start: &Start,
) -> Result<(), Error> {
    bucket(js, names)
        .await?
        .put(key(consumer), Bytes::from(encode(start)))
        .await
        .map_err(|e| nats("saving the resume point", e))?;
    Ok(())
}

/// The resume point saved for `consumer` (its consumer is missing: a recreation did not
/// finish), if any.
pub(crate) async fn load(
    js: &jetstream::Context,
    names: &Names,
    consumer: &str,
) -> Result<Option<Start>, Error> {
    let Ok(store) = js.get_key_value(names.resume_bucket()).await else {
        return Ok(None);
    };
    let value = store
        .get(key(consumer))
        .await
        .map_err(|e| nats("reading the resume point", e))?;
    match value {
        None => Ok(None),
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            decode(&text).map(Some).ok_or_else(|| {
                Error::new(
                    ErrorKind::Nats,
                    format!(
                        "the resume point of consumer {consumer:?} in {} is {text:?}, not a start",
                        names.resume_bucket()
                    ),
                )
            })
        }
    }
}

/// Forgets the resume point of `consumer` once its new consumer exists.
pub(crate) async fn clear(
    js: &jetstream::Context,
    names: &Names,
    consumer: &str,
) -> Result<(), Error> {
    let Ok(store) = js.get_key_value(names.resume_bucket()).await else {
        return Ok(());
    };
    store
        .purge(key(consumer))
        .await
        .map_err(|e| nats("clearing the resume point", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_survive_their_stored_form() {
        let time = chrono::DateTime::parse_from_rfc3339("2026-12-03T17:00:00.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        for start in [
            Start::Beginning,
            Start::New,
            Start::Sequence(42),
            Start::CommitPosition(crate::Lsn(0x900_0000_1234)),
            Start::Time(time),
        ] {
            let text = encode(&start);
            assert_eq!(
                format!("{:?}", decode(&text)),
                format!("{:?}", Some(start)),
                "{text}"
            );
        }
        assert!(decode("sequence x").is_none());
        assert!(decode("later").is_none());
        assert_eq!(key("a.b c"), "c-612e622063");
    }
}
