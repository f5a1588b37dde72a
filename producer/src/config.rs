//! The producer's configuration: a raw form read from TOML and `WALBROOK_*` variables,
//! validated into [`ProducerConfig`], whose every error names the field.
//!
//! This crate never reads files or the environment itself: the `walbrook` binary
//! passes the file's text and the variables in ([`RawConfig::from_toml`],
//! [`RawConfig::apply_env`]). Secrets are [`Secret`]s and never appear in `Debug`
//! output or logs; [`redact_url`] hides passwords inside URLs.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A secret value; `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// The field, as written in the TOML file (e.g. `nats.max_inflight`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

fn invalid(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// The configuration as read, before validation. Every field is optional here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Subject root.
    pub root: Option<String>,
    /// Publication name.
    pub publication: Option<String>,
    /// Replication slot name.
    pub slot: Option<String>,
    /// Tables to publish, `schema.table`.
    pub tables: Option<Vec<String>>,
    /// Address for `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: Option<String>,
    /// Interval of heartbeat messages written to the WAL, e.g. `10s`.
    pub heartbeat_interval: Option<String>,
    /// How long a stop (SIGTERM) waits for outstanding acknowledgements, e.g. `30s`.
    pub shutdown_timeout: Option<String>,
    /// PostgreSQL settings.
    #[serde(default)]
    pub postgres: RawPostgres,
    /// NATS settings.
    #[serde(default)]
    pub nats: RawNats,
    /// JetStream stream settings.
    #[serde(default)]
    pub stream: RawStream,
    /// Snapshot settings.
    #[serde(default)]
    pub snapshot: RawSnapshot,
    /// Change-message settings.
    #[serde(default)]
    pub publish: RawPublish,
}

/// `[publish]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublish {
    /// The most events one change message carries (docs/protocol.md §3.6); 1 sends every
    /// event as a message of its own.
    pub batch_events: Option<usize>,
}

/// `[snapshot]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshot {
    /// Snapshots one producer runs at the same time.
    pub max_concurrent: Option<usize>,
    /// Default rows per chunk.
    pub chunk_size: Option<usize>,
    /// How long snapshot data is kept (`max_age` of the snapshot stream), e.g. `7d`.
    pub retention: Option<String>,
}

/// `[postgres]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// Connection URL (a password in it is redacted in logs).
    pub url: Option<Secret>,
}

/// `[nats]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    /// Server URL(s), comma-separated.
    pub url: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Token.
    pub token: Option<Secret>,
    /// Path of a `.creds` file.
    pub creds_file: Option<PathBuf>,
    /// NKey seed.
    pub nkey_seed: Option<Secret>,
    /// CA certificate (PEM) for TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub tls_key: Option<PathBuf>,
    /// Maximum un-acked publishes.
    pub max_inflight: Option<usize>,
    /// How long one publish ack may take before the window is re-sent, e.g. `5s`.
    pub ack_timeout: Option<String>,
}

/// `[stream]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// Replicas (1, 3 or 5).
    pub replicas: Option<usize>,
    /// `file` or `memory`.
    pub storage: Option<String>,
    /// Maximum message age, `0s` for unlimited.
    pub max_age: Option<String>,
    /// JetStream duplicate window, e.g. `2m`.
    pub duplicate_window: Option<String>,
}

/// Environment variables the producer reads (each overrides its TOML field).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("WALBROOK_PG_URL", "postgres.url"),
    ("WALBROOK_NATS_URL", "nats.url"),
    ("WALBROOK_NATS_USER", "nats.user"),
    ("WALBROOK_NATS_PASSWORD", "nats.password"),
    ("WALBROOK_NATS_TOKEN", "nats.token"),
    ("WALBROOK_NATS_CREDS", "nats.creds_file"),
    ("WALBROOK_NATS_NKEY", "nats.nkey_seed"),
    ("WALBROOK_NATS_TLS_CA", "nats.tls_ca"),
    ("WALBROOK_NATS_TLS_CERT", "nats.tls_cert"),
    ("WALBROOK_NATS_TLS_KEY", "nats.tls_key"),
    ("WALBROOK_MAX_INFLIGHT", "nats.max_inflight"),
    ("WALBROOK_ACK_TIMEOUT", "nats.ack_timeout"),
    ("WALBROOK_PUBLICATION", "publication"),
    ("WALBROOK_SLOT", "slot"),
    ("WALBROOK_TABLES", "tables"),
    ("WALBROOK_ROOT", "root"),
    ("WALBROOK_METRICS_ADDR", "metrics_addr"),
    ("WALBROOK_HEARTBEAT_INTERVAL", "heartbeat_interval"),
    ("WALBROOK_SHUTDOWN_TIMEOUT", "shutdown_timeout"),
    ("WALBROOK_STREAM_REPLICAS", "stream.replicas"),
    ("WALBROOK_STREAM_STORAGE", "stream.storage"),
    ("WALBROOK_STREAM_MAX_AGE", "stream.max_age"),
    ("WALBROOK_DUPLICATE_WINDOW", "stream.duplicate_window"),
    (
        "WALBROOK_SNAPSHOT_MAX_CONCURRENT",
        "snapshot.max_concurrent",
    ),
    ("WALBROOK_SNAPSHOT_CHUNK_SIZE", "snapshot.chunk_size"),
    ("WALBROOK_SNAPSHOT_RETENTION", "snapshot.retention"),
    ("WALBROOK_BATCH_EVENTS", "publish.batch_events"),
];

impl RawConfig {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            // Name the field when the parser can: unknown fields are listed in the message.
            invalid("config file", message)
        })
    }

    /// Applies `WALBROOK_*` variables over the file's values. Unknown `WALBROOK_*`
    /// names are an error (a typo must not be ignored silently).
    pub fn apply_env<I, K, V>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        for (key, value) in vars {
            let key = key.as_ref();
            if !key.starts_with("WALBROOK_") {
                continue;
            }
            let value: String = value.into();
            let number = |field: &str| {
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| invalid(field, format!("{key}={value:?} is not a number")))
            };
            match key {
                "WALBROOK_PG_URL" => self.postgres.url = Some(Secret(value)),
                "WALBROOK_NATS_URL" => self.nats.url = Some(value),
                "WALBROOK_NATS_USER" => self.nats.user = Some(value),
                "WALBROOK_NATS_PASSWORD" => self.nats.password = Some(Secret(value)),
                "WALBROOK_NATS_TOKEN" => self.nats.token = Some(Secret(value)),
                "WALBROOK_NATS_CREDS" => self.nats.creds_file = Some(value.into()),
                "WALBROOK_NATS_NKEY" => self.nats.nkey_seed = Some(Secret(value)),
                "WALBROOK_NATS_TLS_CA" => self.nats.tls_ca = Some(value.into()),
                "WALBROOK_NATS_TLS_CERT" => self.nats.tls_cert = Some(value.into()),
                "WALBROOK_NATS_TLS_KEY" => self.nats.tls_key = Some(value.into()),
                "WALBROOK_MAX_INFLIGHT" => {
                    self.nats.max_inflight = Some(number("nats.max_inflight")?)
                }
                "WALBROOK_ACK_TIMEOUT" => self.nats.ack_timeout = Some(value),
                "WALBROOK_PUBLICATION" => self.publication = Some(value),
                "WALBROOK_SLOT" => self.slot = Some(value),
                "WALBROOK_TABLES" => {
                    self.tables = Some(split_table_list(&value).map_err(|p| invalid("tables", p))?)
                }
                "WALBROOK_ROOT" => self.root = Some(value),
                "WALBROOK_METRICS_ADDR" => self.metrics_addr = Some(value),
                "WALBROOK_HEARTBEAT_INTERVAL" => self.heartbeat_interval = Some(value),
                "WALBROOK_SHUTDOWN_TIMEOUT" => self.shutdown_timeout = Some(value),
                "WALBROOK_STREAM_REPLICAS" => {
                    self.stream.replicas = Some(number("stream.replicas")?)
                }
                "WALBROOK_STREAM_STORAGE" => self.stream.storage = Some(value),
                "WALBROOK_STREAM_MAX_AGE" => self.stream.max_age = Some(value),
                "WALBROOK_DUPLICATE_WINDOW" => self.stream.duplicate_window = Some(value),
                "WALBROOK_SNAPSHOT_MAX_CONCURRENT" => {
                    self.snapshot.max_concurrent = Some(number("snapshot.max_concurrent")?)
                }
                "WALBROOK_SNAPSHOT_CHUNK_SIZE" => {
                    self.snapshot.chunk_size = Some(number("snapshot.chunk_size")?)
                }
                "WALBROOK_SNAPSHOT_RETENTION" => self.snapshot.retention = Some(value),
                "WALBROOK_BATCH_EVENTS" => {
                    self.publish.batch_events = Some(number("publish.batch_events")?)
                }
                // Variables of the other Walbrook commands (the sinks, logging).
                _ if key.starts_with("WALBROOK_SINK_") || key.starts_with("WALBROOK_LOG") => {}
                _ => {
                    let known: Vec<&str> = ENV_VARS.iter().map(|(name, _)| *name).collect();
                    return Err(invalid(
                        key,
                        format!(
                            "unknown WALBROOK_* variable (the producer reads {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Validates into a typed configuration.
    pub fn validate(self) -> Result<ProducerConfig, ConfigError> {
        let pg_url = self
            .postgres
            .url
            .ok_or_else(|| invalid("postgres.url", "required (or set WALBROOK_PG_URL)"))?;
        if !(pg_url.0.starts_with("postgres://") || pg_url.0.starts_with("postgresql://")) {
            return Err(invalid(
                "postgres.url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        // TLS parameters (sslmode, sslrootcert, …) are checked now, not at first connect.
        crate::postgres::PgSettings::parse(&pg_url.0).map_err(|e| invalid("postgres.url", &e))?;
        let nats_url = self
            .nats
            .url
            .ok_or_else(|| invalid("nats.url", "required (or set WALBROOK_NATS_URL)"))?;
        let nats_servers: Vec<String> = nats_url
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if nats_servers.is_empty() {
            return Err(invalid("nats.url", "names no server"));
        }
        let root = self.root.unwrap_or_else(|| "WALBROOK".to_string());
        validate_root(&root)?;
        let publication = self.publication.unwrap_or_else(|| "walbrook".into());
        validate_pg_name("publication", &publication)?;
        let slot = self.slot.unwrap_or_else(|| "walbrook".into());
        validate_slot(&slot)?;
        let tables = self
            .tables
            .ok_or_else(|| {
                invalid(
                    "tables",
                    "required: list the tables to publish as schema.table (or set WALBROOK_TABLES)",
                )
            })?
            .iter()
            .map(|t| TableName::parse(t).map_err(|p| invalid("tables", format!("{t:?}: {p}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if tables.is_empty() {
            return Err(invalid("tables", "must name at least one table"));
        }
        let metrics_addr = self
            .metrics_addr
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "metrics_addr",
                        format!("{a:?} is not an address like 127.0.0.1:9187"),
                    )
                })
            })
            .transpose()?;
        let auth = match (
            self.nats.user,
            self.nats.password,
            self.nats.token,
            self.nats.creds_file,
            self.nats.nkey_seed,
        ) {
            (None, None, None, None, None) => NatsAuth::None,
            (Some(user), Some(password), None, None, None) => {
                NatsAuth::UserPassword { user, password }
            }
            (None, None, Some(token), None, None) => NatsAuth::Token(token),
            (None, None, None, Some(path), None) => NatsAuth::CredsFile(path),
            (None, None, None, None, Some(seed)) => NatsAuth::NKey(seed),
            (Some(_), None, ..) | (None, Some(_), ..) => {
                return Err(invalid(
                    "nats.user",
                    "user and password must be given together",
                ));
            }
            _ => {
                return Err(invalid(
                    "nats",
                    "choose one authentication method: user+password, token, creds_file or nkey_seed",
                ));
            }
        };
        if self.nats.tls_cert.is_some() != self.nats.tls_key.is_some() {
            return Err(invalid(
                "nats.tls_cert",
                "tls_cert and tls_key must be given together",
            ));
        }
        let max_inflight = self.nats.max_inflight.unwrap_or(1024);
        if !(1..=100_000).contains(&max_inflight) {
            return Err(invalid("nats.max_inflight", "must be between 1 and 100000"));
        }
        let ack_timeout = duration("nats.ack_timeout", self.nats.ack_timeout.as_deref(), "5s")?;
        if ack_timeout.is_zero() {
            return Err(invalid("nats.ack_timeout", "must be > 0"));
        }
        let heartbeat_interval = duration(
            "heartbeat_interval",
            self.heartbeat_interval.as_deref(),
            "10s",
        )?;
        let shutdown_timeout =
            duration("shutdown_timeout", self.shutdown_timeout.as_deref(), "30s")?;
        if shutdown_timeout.is_zero() {
            return Err(invalid("shutdown_timeout", "must be > 0"));
        }
        let replicas = self.stream.replicas.unwrap_or(1);
        if ![1, 3, 5].contains(&replicas) {
            return Err(invalid("stream.replicas", "must be 1, 3 or 5"));
        }
        let storage = match self.stream.storage.as_deref().unwrap_or("file") {
            "file" => Storage::File,
            "memory" => Storage::Memory,
            other => {
                return Err(invalid(
                    "stream.storage",
                    format!("{other:?}: must be file or memory"),
                ));
            }
        };
        let max_age = duration("stream.max_age", self.stream.max_age.as_deref(), "0s")?;
        let duplicate_window = duration(
            "stream.duplicate_window",
            self.stream.duplicate_window.as_deref(),
            "2m",
        )?;
        if duplicate_window < Duration::from_secs(1) {
            return Err(invalid("stream.duplicate_window", "must be at least 1s"));
        }
        let max_concurrent = self.snapshot.max_concurrent.unwrap_or(4);
        if !(1..=64).contains(&max_concurrent) {
            return Err(invalid(
                "snapshot.max_concurrent",
                "must be between 1 and 64",
            ));
        }
        let chunk_size = match self.snapshot.chunk_size {
            None => DEFAULT_CHUNK_SIZE,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_CHUNK_SIZE).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "snapshot.chunk_size",
                        format!("must be between 1 and {MAX_CHUNK_SIZE}"),
                    )
                })?,
        };
        let retention = duration(
            "snapshot.retention",
            self.snapshot.retention.as_deref(),
            "7d",
        )?;
        let batch_events = self.publish.batch_events.unwrap_or(DEFAULT_BATCH_EVENTS);
        if !(1..=MAX_BATCH_EVENTS).contains(&batch_events) {
            return Err(invalid(
                "publish.batch_events",
                format!("must be between 1 and {MAX_BATCH_EVENTS}"),
            ));
        }
        Ok(ProducerConfig {
            batch_events,
            accept_gap: false,
            snapshot: SnapshotConfig {
                max_concurrent,
                chunk_size,
                retention,
            },
            pg_url,
            nats: NatsConfig {
                servers: nats_servers,
                auth,
                tls_ca: self.nats.tls_ca,
                tls_client: self.nats.tls_cert.zip(self.nats.tls_key),
                max_inflight,
                ack_timeout,
            },
            root,
            publication,
            slot,
            tables,
            metrics_addr,
            heartbeat_interval,
            shutdown_timeout,
            stream: StreamConfig {
                replicas,
                storage,
                max_age,
                duplicate_window,
            },
        })
    }
}

/// The validated producer configuration.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// PostgreSQL URL (secret: may hold a password).
    pub pg_url: Secret,
    /// NATS connection.
    pub nats: NatsConfig,
    /// Subject root.
    pub root: String,
    /// Publication name.
    pub publication: String,
    /// Slot name.
    pub slot: String,
    /// Published tables.
    pub tables: Vec<TableName>,
    /// Metrics/health listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Heartbeat interval (zero disables heartbeats).
    pub heartbeat_interval: Duration,
    /// How long a stop waits for outstanding acknowledgements before exiting with an error
    /// that says what was not acknowledged (nothing unacknowledged is ever confirmed).
    pub shutdown_timeout: Duration,
    /// Stream settings.
    pub stream: StreamConfig,
    /// Snapshot settings.
    pub snapshot: SnapshotConfig,
    /// The most events one change message carries (docs/protocol.md §3.6; 1: one event per
    /// message).
    pub batch_events: usize,
    /// Start across a gap the producer found (a missing or invalidated slot while the change
    /// stream holds events): create the slot and publish gap markers (docs/protocol.md §3.8)
    /// instead of refusing. Only from `walbrook produce --accept-gap`, never from a file or
    /// the environment: it acknowledges one gap, it is not a standing setting.
    pub accept_gap: bool,
}

/// Default of `publish.batch_events`.
pub const DEFAULT_BATCH_EVENTS: usize = 1_000;
/// Largest accepted `publish.batch_events`.
pub const MAX_BATCH_EVENTS: usize = 100_000;

/// Default rows per snapshot chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 50_000;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: u32 = 100_000;

/// Snapshot settings (docs/protocol.md §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Snapshots one producer runs at the same time; more are refused (429).
    pub max_concurrent: usize,
    /// Rows per chunk when the request names none.
    pub chunk_size: u32,
    /// `max_age` of the snapshot stream (zero = unlimited); finished snapshots older than
    /// this are also removed from `_walbrook.snapshots`.
    pub retention: Duration,
}

/// NATS connection settings.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs.
    pub servers: Vec<String>,
    /// Authentication.
    pub auth: NatsAuth,
    /// CA certificate for TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Maximum un-acked publishes.
    pub max_inflight: usize,
    /// Publish ack timeout.
    pub ack_timeout: Duration,
}

impl NatsConfig {
    /// What an operator should hear when no TLS is configured for NATS (no `nats.tls_ca` and
    /// no `tls://` URL): changes and credentials may travel in plaintext. `None` otherwise.
    pub fn tls_warning(&self) -> Option<String> {
        let tls_url = self.servers.iter().any(|s| s.starts_with("tls://"));
        if self.tls_ca.is_some() || tls_url {
            return None;
        }
        Some(
            "no TLS configured (nats.tls_ca unset, no tls:// URL): changes and credentials \
             travel in plaintext unless the server itself requires TLS; set nats.tls_ca (and \
             nats.tls_cert/tls_key for mutual TLS)"
                .into(),
        )
    }
}

/// How to authenticate to NATS.
#[derive(Debug, Clone)]
pub enum NatsAuth {
    /// No credentials (or credentials in the URL).
    None,
    /// User and password.
    UserPassword {
        /// User.
        user: String,
        /// Password.
        password: Secret,
    },
    /// A token.
    Token(Secret),
    /// A `.creds` file (JWT + NKey).
    CredsFile(PathBuf),
    /// An NKey seed.
    NKey(Secret),
}

/// Stream settings (applied when the producer creates a stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Replicas.
    pub replicas: usize,
    /// Storage.
    pub storage: Storage,
    /// Maximum age (zero = unlimited).
    pub max_age: Duration,
    /// Duplicate window.
    pub duplicate_window: Duration,
}

/// JetStream storage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

/// A `schema.table` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
}

impl TableName {
    /// Parses `schema.table`. Either part may be double-quoted (with `""` for a quote)
    /// to contain dots, commas or quotes; names are taken exactly as written, with no
    /// case folding.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let parts = split_identifiers(text.trim(), '.')?;
        match parts.as_slice() {
            [schema, table] if !schema.is_empty() && !table.is_empty() => Ok(TableName {
                schema: schema.clone(),
                table: table.clone(),
            }),
            _ => Err("expected schema.table (quote names that contain dots)".into()),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.table)
        )
    }
}

/// Quotes an identifier for SQL (always quoted, `"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Splits a comma-separated list of `schema.table` names (quotes respected).
fn split_table_list(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => {
                out.push(std::mem::take(&mut current).trim().to_string());
            }
            _ => current.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    out.push(current.trim().to_string());
    Ok(out.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Splits on `separator` outside double quotes and unquotes each part.
fn split_identifiers(text: &str, separator: char) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            c if c == separator && !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    parts.push(current);
    Ok(parts)
}

fn validate_root(root: &str) -> Result<(), ConfigError> {
    let ok = !root.is_empty()
        && root.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "root",
            format!("{root:?}: use dot-separated tokens of letters, digits, '_' and '-'"),
        ))
    }
}

fn validate_pg_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(invalid(field, "must be 1 to 63 bytes"));
    }
    Ok(())
}

fn validate_slot(name: &str) -> Result<(), ConfigError> {
    validate_pg_name("slot", name)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "slot",
            format!("{name:?}: PostgreSQL slot names use only lower-case letters, digits and '_'"),
        ));
    }
    Ok(())
}

fn duration(field: &str, text: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let text = text.unwrap_or(default);
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            field,
            format!("{text:?} is not a duration like 5s or 2m: {e}"),
        )
    })
}

/// `url` with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!("{user}:***@{}", &authority[at + 1..]),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let rest = &url[authority_end..];
    let query_redacted = match rest.split_once('?') {
        None => rest.to_string(),
        Some((path, query)) => {
            let query = query
                .split('&')
                .map(|part| {
                    if part.starts_with("password=") {
                        "password=***".to_string()
                    } else {
                        part.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("&");
            format!("{path}?{query}")
        }
    };
    format!("{}{authority}{query_redacted}", &url[..scheme_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> RawConfig {
        let mut raw = RawConfig::default();
        raw.apply_env([
            ("WALBROOK_PG_URL", "postgresql://u:pw@h/db"),
            ("WALBROOK_NATS_URL", "nats://127.0.0.1:4222"),
            ("WALBROOK_TABLES", "public.orders, \"odd.schema\".\"a,b\""),
        ])
        .unwrap();
        raw
    }

    #[test]
    fn nats_without_tls_is_warned_about() {
        let plain = minimal().validate().unwrap();
        assert!(plain.nats.tls_warning().unwrap().contains("plaintext"));
        let mut tls_url = minimal();
        tls_url
            .apply_env([("WALBROOK_NATS_URL", "tls://nats.example:4222")])
            .unwrap();
        assert_eq!(tls_url.validate().unwrap().nats.tls_warning(), None);
        let mut with_ca = minimal().validate().unwrap();
        with_ca.nats.tls_ca = Some("/ca.pem".into());
        assert_eq!(with_ca.nats.tls_warning(), None);
    }

    #[test]
    fn env_and_defaults_give_a_valid_config() {
        let config = minimal().validate().unwrap();
        assert_eq!(config.root, "WALBROOK");
        assert_eq!(config.slot, "walbrook");
        assert_eq!(
            config.tables,
            [
                TableName {
                    schema: "public".into(),
                    table: "orders".into()
                },
                TableName {
                    schema: "odd.schema".into(),
                    table: "a,b".into()
                },
            ]
        );
        assert_eq!(config.nats.max_inflight, 1024);
        assert_eq!(config.stream.duplicate_window, Duration::from_secs(120));
        assert_eq!(config.batch_events, DEFAULT_BATCH_EVENTS);
    }

    #[test]
    fn batch_events_come_from_the_file_or_env_within_bounds() {
        let mut raw = RawConfig::from_toml(
            "tables = [\"public.a\"]\n[nats]\nurl = \"nats://x:1\"\n[postgres]\nurl = \"postgres://h/db\"\n\
             [publish]\nbatch_events = 7\n",
        )
        .unwrap();
        assert_eq!(raw.clone().validate().unwrap().batch_events, 7);
        raw.apply_env([("WALBROOK_BATCH_EVENTS", "1")]).unwrap();
        assert_eq!(raw.validate().unwrap().batch_events, 1);
        for bad in ["0", "100001", "lots"] {
            let mut raw = minimal();
            let field = match raw.apply_env([("WALBROOK_BATCH_EVENTS", bad)]) {
                Ok(()) => raw.validate().unwrap_err().field,
                Err(e) => e.field,
            };
            assert_eq!(field, "publish.batch_events", "{bad}");
        }
    }

    #[test]
    fn snapshot_settings_have_defaults_and_bounds() {
        let config = minimal().validate().unwrap();
        assert_eq!(
            config.snapshot,
            SnapshotConfig {
                max_concurrent: 4,
                chunk_size: DEFAULT_CHUNK_SIZE,
                retention: Duration::from_secs(7 * 86_400),
            }
        );
        let mut raw = RawConfig::from_toml(
            "[snapshot]\nmax_concurrent = 2\nchunk_size = 500\nretention = \"1h\"\n",
        )
        .unwrap();
        raw.apply_env([
            ("WALBROOK_PG_URL", "postgresql://h/db"),
            ("WALBROOK_NATS_URL", "nats://h:1"),
            ("WALBROOK_TABLES", "public.a"),
            ("WALBROOK_SNAPSHOT_CHUNK_SIZE", "700"),
        ])
        .unwrap();
        let config = raw.validate().unwrap();
        assert_eq!(
            (config.snapshot.max_concurrent, config.snapshot.chunk_size),
            (2, 700)
        );
        assert_eq!(config.snapshot.retention, Duration::from_secs(3600));
        for (var, value, field) in [
            ("WALBROOK_SNAPSHOT_CHUNK_SIZE", "0", "snapshot.chunk_size"),
            (
                "WALBROOK_SNAPSHOT_CHUNK_SIZE",
                "100001",
                "snapshot.chunk_size",
            ),
            (
                "WALBROOK_SNAPSHOT_MAX_CONCURRENT",
                "0",
                "snapshot.max_concurrent",
            ),
            ("WALBROOK_SNAPSHOT_RETENTION", "soon", "snapshot.retention"),
        ] {
            let mut raw = minimal();
            raw.apply_env([(var, value)]).unwrap();
            assert_eq!(raw.validate().unwrap_err().field, field, "{var}={value}");
        }
    }

    #[test]
    fn env_overrides_the_file() {
        let mut raw = RawConfig::from_toml(
            "root = \"FROMFILE\"\ntables = [\"public.a\"]\n[nats]\nurl = \"nats://x:1\"\nmax_inflight = 10\n\
             [postgres]\nurl = \"postgres://h/db\"\n",
        )
        .unwrap();
        raw.apply_env([("WALBROOK_ROOT", "FROMENV")]).unwrap();
        let config = raw.validate().unwrap();
        assert_eq!(config.root, "FROMENV");
        assert_eq!(config.nats.max_inflight, 10);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("WALBROOK_MAX_INFLIGHT", "0")], "nats.max_inflight"),
            (vec![("WALBROOK_MAX_INFLIGHT", "many")], "nats.max_inflight"),
            (vec![("WALBROOK_ROOT", "a..b")], "root"),
            (vec![("WALBROOK_ROOT", "a b")], "root"),
            (vec![("WALBROOK_SLOT", "Bad-Slot")], "slot"),
            (vec![("WALBROOK_TABLES", "noschema")], "tables"),
            (vec![("WALBROOK_TABLES", "\"open.x")], "tables"),
            (vec![("WALBROOK_METRICS_ADDR", "nowhere")], "metrics_addr"),
            (vec![("WALBROOK_ACK_TIMEOUT", "soon")], "nats.ack_timeout"),
            (vec![("WALBROOK_STREAM_REPLICAS", "2")], "stream.replicas"),
            (vec![("WALBROOK_STREAM_STORAGE", "tape")], "stream.storage"),
            (vec![("WALBROOK_NATS_USER", "alice")], "nats.user"),
            (
                vec![("WALBROOK_NATS_TOKEN", "t"), ("WALBROOK_NATS_CREDS", "/c")],
                "nats",
            ),
            (vec![("WALBROOK_PG_URL", "mysql://x")], "postgres.url"),
            (vec![("WALBROOK_TABLESS", "x")], "WALBROOK_TABLESS"),
        ];
        for (vars, field) in cases {
            let mut raw = minimal();
            let error = raw
                .apply_env(vars.clone())
                .and_then(|()| raw.validate().map(|_| ()))
                .unwrap_err();
            assert_eq!(error.field, field, "{vars:?}: {error}");
        }
        let missing = RawConfig::default().validate().unwrap_err();
        assert_eq!(missing.field, "postgres.url");
        // The producer knows nothing of the test harness: none of its names is special.
        let mut raw = minimal();
        let error = raw
            .apply_env([("WALBROOK_CHAOS_CYCLES", "30")])
            .unwrap_err();
        assert_eq!(error.field, "WALBROOK_CHAOS_CYCLES");
        assert!(error.problem.contains("WALBROOK_PG_URL"), "{error}");
        // The other commands' variables are theirs to check.
        minimal()
            .apply_env([
                ("WALBROOK_SINK_CONSUMER", "c"),
                ("WALBROOK_LOG_FORMAT", "json"),
            ])
            .unwrap();
        let unknown = RawConfig::from_toml("nope = 1").unwrap_err();
        assert!(unknown.problem.contains("nope"), "{unknown}");
    }

    #[test]
    fn secrets_never_print() {
        let mut raw = minimal();
        raw.apply_env([
            ("WALBROOK_NATS_USER", "alice"),
            ("WALBROOK_NATS_PASSWORD", "hunter2"),
        ])
        .unwrap();
        let config = raw.validate().unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("pw@"),
            "{shown}"
        );
        assert_eq!(
            redact_url("postgresql://u:pw@h:5/db?password=x&sslmode=disable"),
            "postgresql://u:***@h:5/db?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            redact_url("postgres://h/db?password=x"),
            "postgres://h/db?password=***"
        );
    }

    #[test]
    fn table_names_round_trip_through_display() {
        let name = TableName::parse("\"we\"\"ird.s\".t").unwrap();
        assert_eq!(name.schema, "we\"ird.s");
        assert_eq!(name.to_string(), "\"we\"\"ird.s\".\"t\"");
        assert_eq!(TableName::parse(&name.to_string()).unwrap(), name);
    }
}
