//! Events whose payload is stored in a JetStream object store because it is larger than
//! the server's `max_payload` (docs/protocol.md §3.5): the stream message has an empty
//! body and the header `Walbrook-Payload-Object: <bucket>/<object>`.

use std::collections::HashMap;

use async_nats::jetstream::{self, object_store::ObjectStore};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use crate::error::{Error, ErrorKind};

/// Fetches payload objects, keeping one handle per bucket.
pub(crate) struct PayloadObjects {
    js: jetstream::Context,
    stores: Mutex<HashMap<String, ObjectStore>>,
}

impl PayloadObjects {
    pub(crate) fn new(js: jetstream::Context) -> PayloadObjects {
        PayloadObjects {
            js,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// The payload a `Walbrook-Payload-Object` header value names. A malformed reference
    /// or a missing object is a [`ErrorKind::Decode`] error (the object may have expired
    /// before the event was read); NATS trouble is a retryable [`ErrorKind::Nats`] error.
    pub(crate) async fn fetch(&self, reference: &str) -> Result<Bytes, Error> {
        let Some((bucket, object)) = reference.split_once('/') else {
            return Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "malformed Walbrook-Payload-Object header {reference:?} (want <bucket>/<object>)"
                ),
            ));
        };
        let store = self.store(bucket).await?;
        let mut reader = store.get(object).await.map_err(|e| {
            let kind = match e.kind() {
                jetstream::object_store::GetErrorKind::NotFound
                | jetstream::object_store::GetErrorKind::InvalidName
                | jetstream::object_store::GetErrorKind::BucketLink => ErrorKind::Decode,
                _ => ErrorKind::Nats,
            };
            Error::with_source(
                kind,
                format!("fetching the event's payload object {reference} (has it expired?)"),
                e,
            )
        })?;
        let mut payload = Vec::new();
        reader.read_to_end(&mut payload).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Nats,
                format!("reading the event's payload object {reference}"),
                e,
            )
        })?;
        Ok(payload.into())
    }

    async fn store(&self, bucket: &str) -> Result<ObjectStore, Error> {
        let mut stores = self.stores.lock().await;
        if let Some(store) = stores.get(bucket) {
            return Ok(store.clone());
        }
        let store = self.js.get_object_store(bucket).await.map_err(|e| {
            let kind = match e.kind() {
                jetstream::context::ObjectStoreErrorKind::InvalidBucketName => ErrorKind::Decode,
                _ => ErrorKind::Nats,
            };
            Error::with_source(kind, format!("opening object store bucket {bucket}"), e)
        })?;
        stores.insert(bucket.to_string(), store.clone());
        Ok(store)
    }
}
