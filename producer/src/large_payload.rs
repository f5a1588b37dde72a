//! Events larger than the NATS server's `max_payload` (docs/protocol.md §3.5).
//!
//! Such an event's Avro payload is stored in a JetStream object store bucket (the
//! "claim check" pattern) under the event's `Nats-Msg-Id`; the change stream then gets
//! a message with the usual headers, an empty body and `Walbrook-Payload-Object:
//! <bucket>/<object>`. The object is stored (every chunk acked) before the message
//! that names it is published, so a reader never sees a reference to a missing
//! object, and the stream keeps its order and its exactly-once identity. Nothing is
//! truncated or split across stream messages.
//!
//! Replays are idempotent: an object that already exists under the event's id is kept
//! (it was stored for the same change; only `sent_at` could differ), and the stream
//! message is deduplicated by its `Nats-Msg-Id` as usual.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, object_store};
use bytes::Bytes;

use crate::config::{Storage, StreamConfig};

/// Room left for what the publisher adds later (`Nats-Expected-Last-Msg-Id`) and for
/// the header block's framing.
const HEADER_MARGIN: usize = 256;

/// How long storing one object may keep failing before the producer treats NATS as
/// unavailable (it then resumes from the slot and tries again).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// Why a large payload could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("storing a {size}-byte payload as {bucket}/{object} failed: {detail}")]
pub struct LargePayloadError {
    /// The bucket.
    pub bucket: String,
    /// The object name (the event's `Nats-Msg-Id`).
    pub object: String,
    /// The payload size.
    pub size: usize,
    /// What NATS said.
    pub detail: String,
}

/// Stores oversized payloads; see the module docs.
pub struct LargePayloads {
    nats: async_nats::Client,
    js: jetstream::Context,
    bucket: String,
    settings: StreamConfig,
    store: Option<object_store::ObjectStore>,
    /// The server's `max_payload` and when it was read (the client hands out a copy of
    /// the whole server info, too costly per event; a reconnect may reach a server with
    /// another limit, so it is re-read every few seconds).
    max_payload: std::cell::Cell<(usize, Option<std::time::Instant>)>,
}

impl std::fmt::Debug for LargePayloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargePayloads")
            .field("bucket", &self.bucket)
            .field("open", &self.store.is_some())
            .finish()
    }
}

impl LargePayloads {
    /// Large payloads of this producer go to `bucket` (created on first use with the
    /// stream `settings`: storage, replicas, max age).
    pub fn new(
        nats: async_nats::Client,
        js: jetstream::Context,
        bucket: String,
        settings: StreamConfig,
    ) -> LargePayloads {
        LargePayloads {
            nats,
            js,
            bucket,
            settings,
            store: None,
            max_payload: std::cell::Cell::new((0, None)),
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Whether a message with these headers and a body of `body_len` bytes fits the
    /// connected server's `max_payload` (which counts headers and body).
    pub fn fits(&self, headers: &HeaderMap, body_len: usize) -> bool {
        let header_len =
            walbrook_protocol::headers::block_len(headers.iter().flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (AsRef::<str>::as_ref(name), v.as_str()))
            }));
        body_len + header_len + HEADER_MARGIN <= self.max_payload()
    }

    /// The largest body a message with a few short headers (under 1 KiB) may carry on the
    /// connected server.
    pub fn max_body(&self) -> usize {
        self.max_payload().saturating_sub(1024 + HEADER_MARGIN)
    }

    fn max_payload(&self) -> usize {
        let (max, read_at) = self.max_payload.get();
        if read_at.is_some_and(|at| at.elapsed() < Duration::from_secs(5)) {
            return max;
        }
        let max = self.nats.server_info().max_payload;
        self.max_payload.set((max, Some(std::time::Instant::now())));
        max
    }

    /// Stores `payload` as object `name` (unless it is already there) and returns the
    /// `Walbrook-Payload-Object` header value. Retries for a while on NATS errors.
    pub async fn store(&mut self, name: &str, payload: Bytes) -> Result<String, LargePayloadError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_store(name, &payload).await {
                Ok(()) => return Ok(format!("{}/{name}", self.bucket)),
                Err(detail) if started.elapsed() >= GIVE_UP_AFTER => {
                    return Err(LargePayloadError {
                        bucket: self.bucket.clone(),
                        object: name.to_string(),
                        size: payload.len(),
                        detail,
                    });
                }
                Err(detail) => {
                    tracing::warn!(bucket = %self.bucket, object = name, error = %detail, "storing a large payload failed; retrying");
                    self.store = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_store(&mut self, name: &str, payload: &Bytes) -> Result<(), String> {
        let store = self.object_store().await?;
        if let Ok(info) = store.info(name).await
            && !info.deleted
        {
            return Ok(());
        }
        // Chunks must fit the server's max_payload too (the library's default is 128 KiB).
        let meta = object_store::ObjectMetadata {
            name: name.to_string(),
            chunk_size: Some(walbrook_protocol::object_chunk_size(self.max_payload())),
            ..Default::default()
        };
        let mut reader: &[u8] = payload.as_ref();
        store
            .put(meta, &mut reader)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn object_store(&mut self) -> Result<object_store::ObjectStore, String> {
        if let Some(store) = &self.store {
            return Ok(store.clone());
        }
        let store = match self.js.get_object_store(&self.bucket).await {
            Ok(store) => store,
            Err(_) => {
                tracing::info!(bucket = %self.bucket, "creating the object store bucket for large payloads");
                self.js
                    .create_object_store(object_store::Config {
                        bucket: self.bucket.clone(),
                        description: Some(
                            "Walbrook: payloads larger than the server's max_payload".into(),
                        ),
                        max_age: self.settings.max_age,
                        storage: match self.settings.storage {
                            Storage::File => jetstream::stream::StorageType::File,
                            Storage::Memory => jetstream::stream::StorageType::Memory,
                        },
                        num_replicas: self.settings.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("creating bucket {}: {e}", self.bucket))?
            }
        };
        self.store = Some(store.clone());
        Ok(store)
    }
}
