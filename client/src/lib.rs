//! The Walbrook client SDK: read PostgreSQL changes that `walbrook produce` publishes to NATS
//! JetStream, as typed events.
//!
//! * [`Client::connect`] opens **one** NATS connection, shared by every subscription and
//!   schema lookup of the client (clone the client freely).
//! * [`Client::subscribe`] reads one table, several, or a wildcard ([`Subscription`]), from
//!   the beginning, from new events, from a time or from a commit position ([`Start`]), as an
//!   ephemeral ordered consumer or a durable named one whose acknowledged events are not
//!   delivered again after a restart. The result is an async [`Stream`](futures::Stream) of
//!   `Result<ChangeEvent, Error>`, with [`ChangeStream::next_batch`] for batches; at most
//!   [`Subscription::prefetch`] messages are buffered ahead of the caller.
//! * Every message is decoded with its writer schema, looked up by fingerprint through the
//!   producer's schema RPC once and cached (concurrent lookups of one fingerprint share one
//!   request), or taken from the schema announcements received while connected (a new
//!   table version is announced before its first event). [`ChangeEvent`] carries the op, the source metadata and the `before`/`after`
//!   rows as typed [`PgValue`]s with name-based access; unchanged TOAST values are
//!   [`PgValue::Unchanged`]. Events serialise with serde (JSON: see [`value_to_json`]).
//! * Nothing is skipped: a message that cannot be decoded is an [`Error`] of kind
//!   [`ErrorKind::Decode`] (or [`ErrorKind::SchemaNotFound`]…) carrying the message and its
//!   stream sequence, and the stream continues after it.
//!
//! `docs/client.md` has the guide; `docs/protocol.md` the wire contract.
//!
//! ```no_run
//! use futures::StreamExt;
//! use walbrook_client::{Client, ClientOptions, PgValue, Start, Subscription};
//!
//! # async fn run() -> Result<(), walbrook_client::Error> {
//! let client = Client::connect(ClientOptions::new("nats://127.0.0.1:4222", "shop")).await?;
//! let mut events = client
//!     .subscribe(Subscription::table("public.orders").start(Start::New).durable("billing"))
//!     .await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Ok(event) => {
//!             if let Some(PgValue::Int8(id)) = event.after().and_then(|row| row.get("id")) {
//!                 println!("{} order {id} at {}", event.op(), event.commit_lsn());
//!             }
//!             event.ack().await?;
//!         }
//!         // An undecodable message: it is in the error, with its stream sequence.
//!         Err(error) if error.message().is_some() => {
//!             eprintln!("skipping after inspection: {error}");
//!             if let Some(message) = error.message() {
//!                 message.term().await?;
//!             }
//!         }
//!         Err(error) if error.is_retryable() => eprintln!("transient: {error}"),
//!         Err(error) => return Err(error),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod error;
mod event;
mod large_payload;
mod names;
mod options;
pub mod runner;
mod schema;
mod snapshot;
mod subscribe;

use std::sync::Arc;

use async_nats::ConnectErrorKind;
use async_nats::jetstream;

pub use error::{Error, ErrorKind, UndecodedMessage};
pub use event::{ChangeEvent, Column, Op, Row, Source, value_to_json};
pub use names::{Lsn, TablePattern, escape_token};
pub use options::{ClientOptions, Credentials};
pub use schema::EventSchema;
pub use snapshot::{FilterOp, RowFilter, Snapshot, SnapshotInfo, SnapshotRequest, SnapshotStatus};
pub use subscribe::{ChangeStream, Start, Subscription};
pub use walbrook_pgtype_avro::{
    Fingerprint, PgArray, PgDate, PgInterval, PgNumeric, PgRange, PgTimestamp, PgValue, RangeBound,
};
pub use walbrook_protocol::MessageId;

/// A connection to Walbrook's NATS subjects for one source database. Cheap to clone; every
/// clone shares the one NATS connection and the schema cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    js: jetstream::Context,
    names: names::Names,
    cache: Arc<schema::SchemaCache>,
    database: String,
    request_timeout: std::time::Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("database", &self.inner.database)
            .field("names", &self.inner.names)
            .finish()
    }
}

impl Client {
    /// Connects to NATS. Fails with [`ErrorKind::Auth`] on rejected or unreadable credentials,
    /// [`ErrorKind::Config`] on unusable options and [`ErrorKind::Connect`] (retryable) when no
    /// server can be reached. Once connected, the connection reconnects by itself.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled connect leaves nothing behind.
    pub async fn connect(options: ClientOptions) -> Result<Client, Error> {
        if options.servers.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no NATS server given"));
        }
        if options.database.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no database given"));
        }
        // rustls needs a process-wide crypto provider; when an application's dependency
        // graph enables both ring and aws-lc-rs it cannot pick one and TLS connects panic.
        // async-nats uses ring: make it the default unless the application chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut connect = async_nats::ConnectOptions::new()
            .name(&options.name)
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout));
        connect = match &options.credentials {
            Credentials::None => connect,
            Credentials::UserPassword { user, password } => {
                connect.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(token) => connect.token(token.clone()),
            Credentials::NKey(seed) => connect.nkey(seed.clone()),
            Credentials::CredsFile(path) => connect.credentials_file(path).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Auth,
                    format!("reading credentials file {}", path.display()),
                    e,
                )
            })?,
        };
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone());
        }
        if options.require_tls {
            connect = connect.require_tls(true);
        }
        let servers = options
            .servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::with_source(ErrorKind::Config, "invalid server URL", e))?;
        let nats = connect.connect(servers).await.map_err(|e| {
            let kind = match e.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    ErrorKind::Auth
                }
                ConnectErrorKind::ServerParse => ErrorKind::Config,
                _ => ErrorKind::Connect,
            };
            Error::with_source(kind, format!("connecting to {:?}", options.servers), e)
        })?;
        let names = names::Names::new(&options.root, &options.database);
        let cache = Arc::new(schema::SchemaCache::new(
            nats.clone(),
            names.schema_rpc(),
            options.request_timeout,
        ));
        if options.schema_feed {
            let feed = nats.subscribe(names.schema_all()).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Nats,
                    "subscribing to the schema announcements",
                    e,
                )
            })?;
            cache.set_feed(feed);
        }
        Ok(Client {
            inner: Arc::new(Inner {
                js: jetstream::new(nats.clone()),
                nats,
                names,
                cache,
                database: options.database,
                request_timeout: options.request_timeout,
            }),
        })
    }

    /// Starts reading change events.
    ///
    /// Fails with [`ErrorKind::Config`] on an invalid pattern or durable name, or when a
    /// durable consumer of that name exists with other tables; [`ErrorKind::StreamNotFound`]
    /// when the producer has not created the stream yet.
    ///
    /// # Cancel safety
    /// Not cancel safe for a new durable name: if cancelled, the consumer may have been created
    /// on the server (a later subscribe with the same name then resumes it).
    pub async fn subscribe(&self, subscription: Subscription) -> Result<ChangeStream, Error> {
        subscribe::subscribe(
            &self.inner.js,
            &self.inner.names,
            self.inner.cache.clone(),
            subscription,
        )
        .await
    }

    /// The decoder of a schema version, from the cache or the lookup RPC.
    ///
    /// # Cancel safety
    /// Cancel safe: a lookup in flight goes on for the other callers and fills the cache.
    pub async fn schema(&self, fingerprint: Fingerprint) -> Result<Arc<EventSchema>, Error> {
        self.inner.cache.get(fingerprint).await
    }

    /// The decoder of a schema version if it is cached (from an earlier lookup or a schema
    /// announcement received since connecting), without any request.
    pub fn cached_schema(&self, fingerprint: Fingerprint) -> Option<Arc<EventSchema>> {
        self.inner.cache.cached(fingerprint)
    }

    /// Deletes a durable consumer (its position is lost). Returns whether it existed.
    pub async fn delete_durable(&self, name: &str) -> Result<bool, Error> {
        let stream = self
            .inner
            .js
            .get_stream(self.inner.names.wal_stream())
            .await
            .map_err(|e| Error::with_source(ErrorKind::Nats, "getting the stream", e))?;
        match stream.delete_consumer(name).await {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                async_nats::jetstream::stream::ConsumerErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(Error::with_source(
                    ErrorKind::Nats,
                    format!("deleting consumer {name}"),
                    e,
                )),
            },
        }
    }

    /// Requests a snapshot of one table and starts reading it (docs/client.md, Snapshots).
    ///
    /// The request is answered at once: [`ErrorKind::Rejected`] (malformed, unknown or
    /// unpublished table, bad filter), [`ErrorKind::Busy`] (too many snapshots running),
    /// [`ErrorKind::Unavailable`] (no producer). The returned [`Snapshot`] streams the rows
    /// as [`ChangeEvent`]s with op `Read`, and ends with `None` only when every row arrived.
    ///
    /// # Cancel safety
    /// Not cancel safe: once the producer accepted the request, the snapshot runs anyway.
    pub async fn snapshot(&self, request: SnapshotRequest) -> Result<Snapshot, Error> {
        snapshot::request(
            &self.inner.nats,
            &self.inner.js,
            &self.inner.names,
            self.inner.cache.clone(),
            self.inner.request_timeout,
            request,
        )
        .await
    }

    /// Lists the retained snapshots of `schema.table` (all tables for `*`), oldest first.
    pub async fn snapshots(&self, table: &str) -> Result<Vec<SnapshotInfo>, Error> {
        let wanted = match table.parse::<TablePattern>()? {
            TablePattern::All => walbrook_protocol::snapshot::ListRequest::default(),
            TablePattern::Schema(schema) => walbrook_protocol::snapshot::ListRequest {
                schema: Some(schema),
                ..Default::default()
            },
            TablePattern::Table { schema, table } => walbrook_protocol::snapshot::ListRequest {
                schema: Some(schema),
                table: Some(table),
                id: None,
            },
        };
        snapshot::list(
            &self.inner.nats,
            &self.inner.names,
            self.inner.request_timeout,
            wanted,
        )
        .await
    }

    /// Reads an existing snapshot again from its first message ([`ErrorKind::Rejected`] if
    /// no such snapshot is retained). `stall_timeout` as in
    /// [`SnapshotRequest::stall_timeout`].
    pub async fn read_snapshot(
        &self,
        id: &str,
        stall_timeout: std::time::Duration,
    ) -> Result<Snapshot, Error> {
        let found = snapshot::list(
            &self.inner.nats,
            &self.inner.names,
            self.inner.request_timeout,
            walbrook_protocol::snapshot::ListRequest {
                id: Some(id.to_string()),
                ..Default::default()
            },
        )
        .await?;
        let info = found.into_iter().next().ok_or_else(|| {
            Error::new(
                ErrorKind::Rejected,
                format!("no snapshot {id:?} is retained"),
            )
        })?;
        snapshot::read(
            &self.inner.js,
            self.inner.cache.clone(),
            info,
            stall_timeout,
        )
        .await
    }

    /// The underlying NATS connection (shared; do not close it).
    pub fn nats(&self) -> &async_nats::Client {
        &self.inner.nats
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }

    pub(crate) fn names(&self) -> &names::Names {
        &self.inner.names
    }

    pub(crate) fn cache(&self) -> &Arc<schema::SchemaCache> {
        &self.inner.cache
    }

    /// The source database this client reads.
    pub fn database(&self) -> &str {
        &self.inner.database
    }
}
