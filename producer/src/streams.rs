//! JetStream streams: created when missing, never silently overwritten.

use async_nats::jetstream::{self, stream};

use crate::config::{Storage, StreamConfig};
use crate::lsn::Lsn;
use walbrook_protocol::{MessageId, Previous};

pub use walbrook_protocol::headers;

/// An error managing streams.
#[derive(Debug, thiserror::Error)]
#[error("JetStream stream {stream}: {detail}")]
pub struct StreamError {
    stream: String,
    detail: String,
    retryable: bool,
}

impl StreamError {
    /// Whether asking again may succeed: the request timed out or JetStream is not
    /// available yet (a cluster still electing its leader, a restarting server), as
    /// opposed to a stream that exists with the wrong subjects.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// JetStream API errors that go away by themselves (cluster not available yet).
fn transient_api(error: &jetstream::Error) -> bool {
    error.error_code() == jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE || error.code() == 503
}

/// The stream the producer creates: `name` capturing `subjects`, with `settings`.
pub fn wanted_config(
    name: &str,
    subjects: &str,
    description: &str,
    settings: &StreamConfig,
) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        description: Some(description.to_string()),
        subjects: vec![subjects.to_string()],
        storage: match settings.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: settings.replicas,
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    }
}

/// How an existing change or schema stream's settings differ from `wanted` (the producer's
/// configuration, [`wanted_config`]; `wanted.subjects[0]` the subjects it must capture), one
/// line each, with
/// what it means where it can cost changes. The limits that remove messages (`max_msgs`,
/// `max_bytes`, `max_msgs_per_subject`, `max_age`, a discard policy of `new`, a retention
/// policy other than `limits`) are reported whatever the config says, since the config
/// never sets them: a consumer that falls behind them loses changes, which the sinks refuse
/// as a gap (docs/protocol.md §3.7).
pub fn drift(have: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let subjects = wanted.subjects.first().map(String::as_str).unwrap_or("");
    let mut drift = Vec::new();
    if !have.subjects.iter().any(|s| s == subjects || s == ">") {
        drift.push(format!(
            "subjects {:?} do not include {subjects}",
            have.subjects
        ));
    }
    if have.storage != wanted.storage {
        drift.push(format!(
            "storage {:?} (config: {:?})",
            have.storage, wanted.storage
        ));
    }
    if have.num_replicas != wanted.num_replicas {
        drift.push(format!(
            "replicas {} (config: {})",
            have.num_replicas, wanted.num_replicas
        ));
    }
    if have.max_age != wanted.max_age {
        drift.push(format!(
            "max_age {:?} (config: {:?}): older changes are removed, and a consumer further \
             behind stops at the gap",
            have.max_age, wanted.max_age
        ));
    }
    if have.duplicate_window != wanted.duplicate_window {
        drift.push(format!(
            "duplicate_window {:?} (config: {:?})",
            have.duplicate_window, wanted.duplicate_window
        ));
    }
    if have.retention != stream::RetentionPolicy::Limits {
        drift.push(format!(
            "retention {:?} (Walbrook needs limits): messages are removed once consumers \
             acknowledge them, so a consumer added later or reading behind loses changes",
            have.retention
        ));
    }
    if have.discard != stream::DiscardPolicy::Old {
        drift.push(format!(
            "discard {:?} (Walbrook expects old): a full stream refuses new changes, and the \
             producer waits (not ready) until there is room",
            have.discard
        ));
    }
    for (limit, value) in [
        ("max_msgs", have.max_messages),
        ("max_bytes", have.max_bytes),
        ("max_msgs_per_subject", have.max_messages_per_subject),
    ] {
        if value > 0 {
            drift.push(format!(
                "{limit} {value} (config: unlimited): older changes are removed past it, and \
                 a consumer further behind stops at the gap"
            ));
        }
    }
    drift
}

/// Makes sure stream `name` exists, capturing `subjects`. A missing stream is created
/// with `settings`; an existing one is left alone, with a warning for every setting
/// that differs from the configuration (an operator may have changed it on purpose).
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
    description: &str,
    settings: &StreamConfig,
) -> Result<stream::Stream, StreamError> {
    let err = |detail: String| StreamError {
        stream: name.to_string(),
        detail,
        retryable: false,
    };
    let transient = |detail: String| StreamError {
        stream: name.to_string(),
        detail,
        retryable: true,
    };
    let wanted = wanted_config(name, subjects, description, settings);
    match js.get_stream(name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| transient(format!("reading its settings: {e}")))?;
            let drift = drift(&info.config, &wanted);
            for item in &drift {
                tracing::warn!(
                    stream = name,
                    "stream setting differs from the config, left as is: {item}"
                );
            }
            if !info
                .config
                .subjects
                .iter()
                .any(|s| s == subjects || s == ">")
            {
                return Err(err(format!(
                    "exists but does not capture {subjects}; fix the stream's subjects"
                )));
            }
            Ok(existing)
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref api)
                    if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(wanted).await.map_err(|e| {
                let retryable = match e.kind() {
                    jetstream::context::CreateStreamErrorKind::TimedOut
                    | jetstream::context::CreateStreamErrorKind::JetStreamUnavailable
                    | jetstream::context::CreateStreamErrorKind::Response => true,
                    jetstream::context::CreateStreamErrorKind::JetStream(ref api) => {
                        transient_api(api)
                    }
                    _ => false,
                };
                StreamError {
                    stream: name.to_string(),
                    detail: format!("cannot create it: {e}"),
                    retryable,
                }
            })
        }
        Err(e) => {
            let retryable = match e.kind() {
                jetstream::context::GetStreamErrorKind::Request => true,
                jetstream::context::GetStreamErrorKind::JetStream(ref api) => transient_api(api),
                _ => false,
            };
            Err(StreamError {
                stream: name.to_string(),
                detail: format!("cannot look it up: {e}"),
                retryable,
            })
        }
    }
}

/// How far back [`last_position`] looks past messages that are not Walbrook events.
const SCAN_BACK: u64 = 1_000;

/// The change message stored last on `subject`, as the next message there names it
/// (`Walbrook-Previous`, docs/protocol.md §3.7): its id; [`Previous::First`] when the subject
/// holds none and the stream never lost a message; [`Previous::Unknown`] when it holds none
/// but messages were removed (expired or purged), so one of them may have been on it.
pub async fn previous_on_subject(
    stream: &mut stream::Stream,
    subject: &str,
) -> Result<Previous, StreamError> {
    let name = stream.cached_info().config.name.clone();
    let transient = |detail: String| StreamError {
        stream: name.clone(),
        detail,
        retryable: true,
    };
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let id = message
                .headers
                .get("Nats-Msg-Id")
                .and_then(|v| v.as_str().parse::<MessageId>().ok());
            // A message on a change subject that is not a change message (someone else
            // published it): the producer cannot name the previous change message.
            Ok(id.map_or(Previous::Unknown, Previous::Id))
        }
        Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
            let info = stream
                .info()
                .await
                .map_err(|e| transient(format!("reading its state: {e}")))?;
            if info.state.first_sequence <= 1 && info.state.deleted_count.unwrap_or(0) == 0 {
                Ok(Previous::First)
            } else {
                Ok(Previous::Unknown)
            }
        }
        Err(e) => Err(transient(format!(
            "reading the last message on {subject}: {e}"
        ))),
    }
}

/// The (commit LSN, ordinal) of the newest Walbrook event stored in a change stream,
/// if any. The producer skips events at or below it when it resumes (docs/protocol.md
/// §3.4). Messages without Walbrook headers (published into the stream by someone
/// else) are passed over, up to 1,000 of them.
pub async fn last_position(stream: &mut stream::Stream) -> Result<Option<(Lsn, u64)>, StreamError> {
    let name = stream.cached_info().config.name.clone();
    let info = stream.info().await.map_err(|e| StreamError {
        stream: name.clone(),
        detail: format!("reading its state: {e}"),
        retryable: true,
    })?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    if info.state.messages == 0 || last == 0 {
        return Ok(None);
    }
    let lowest = first.max(last.saturating_sub(SCAN_BACK));
    for sequence in (lowest..=last).rev() {
        let message = match stream.get_raw_message(sequence).await {
            Ok(message) => message,
            // Removed by retention or deleted: look at the one before.
            Err(e)
                if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound)
                    || matches!(e.kind(), stream::RawMessageErrorKind::JetStream(ref api)
                        if api.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND) =>
            {
                continue;
            }
            // Anything else must not be mistaken for "no event here": an older
            // position would make the producer publish again what is stored.
            Err(e) => {
                return Err(StreamError {
                    stream: name.clone(),
                    detail: format!("reading message {sequence}: {e}"),
                    retryable: true,
                });
            }
        };
        // A gap marker (slot.rs) is no event: the newest event is before it.
        if message.headers.get(headers::GAP).is_some() {
            continue;
        }
        if let Some(position) = event_position(&message.headers) {
            return Ok(Some(position));
        }
        tracing::warn!(stream = %name, sequence, "message without Walbrook headers in the change stream");
    }
    Ok(None)
}

/// The (commit LSN, ordinal) of the last event of a change message, from its headers: for
/// a message carrying N events (docs/protocol.md §3.6), `Walbrook-Ordinal` + N − 1.
pub fn event_position(headers: &async_nats::HeaderMap) -> Option<(Lsn, u64)> {
    let lsn = headers
        .get(self::headers::COMMIT_LSN)
        .and_then(|v| v.as_str().parse::<Lsn>().ok())?;
    let ordinal = headers
        .get(self::headers::ORDINAL)
        .and_then(|v| v.as_str().parse::<u64>().ok())?;
    let events = match headers.get(self::headers::EVENTS) {
        None => 1,
        Some(v) => walbrook_protocol::batch::parse_count(v.as_str())?,
    };
    Some((lsn, ordinal.checked_add(events - 1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_message_is_positioned_at_its_last_event() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::COMMIT_LSN, "0/16B3F20");
        h.insert(headers::ORDINAL, "5");
        assert_eq!(event_position(&h), Some((Lsn(0x16B_3F20), 5)));
        h.insert(headers::EVENTS, "3");
        assert_eq!(event_position(&h), Some((Lsn(0x16B_3F20), 7)));
        // A malformed count is no Walbrook position (never a smaller one).
        h.insert(headers::EVENTS, "0");
        assert_eq!(event_position(&h), None);
        h.insert(headers::EVENTS, "x");
        assert_eq!(event_position(&h), None);
    }

    fn settings() -> StreamConfig {
        StreamConfig {
            replicas: 1,
            storage: Storage::File,
            max_age: std::time::Duration::ZERO,
            duplicate_window: std::time::Duration::from_secs(120),
        }
    }

    #[test]
    fn every_limit_that_removes_changes_is_reported() {
        let wanted = wanted_config("R_db_WAL", "R.db.wal.>", "changes", &settings());
        // As the server reports an untouched stream: unlimited is -1.
        let mut same = wanted.clone();
        same.max_messages = -1;
        same.max_bytes = -1;
        same.max_messages_per_subject = -1;
        assert_eq!(drift(&same, &wanted), Vec::<String>::new());

        let mut changed = same.clone();
        changed.max_messages = 1_000;
        changed.max_bytes = 1 << 30;
        changed.max_messages_per_subject = 1;
        changed.discard = stream::DiscardPolicy::New;
        changed.retention = stream::RetentionPolicy::Interest;
        changed.max_age = std::time::Duration::from_secs(3600);
        let found = drift(&changed, &wanted);
        for what in [
            "max_msgs 1000",
            "max_bytes 1073741824",
            "max_msgs_per_subject 1",
            "discard New",
            "retention Interest",
            "max_age 3600s",
        ] {
            assert!(
                found.iter().any(|line| line.starts_with(what)),
                "{what} not in {found:?}"
            );
        }
        assert_eq!(found.len(), 6, "{found:?}");
    }
}
