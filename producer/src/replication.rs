//! The replication transport: one owner task per replication connection.
//!
//! Walbrook uses [`pgwire_replication`] for the wire (START_REPLICATION over the
//! streaming protocol, TLS, SCRAM) and its own pure decoder ([`crate::pgoutput`]) for
//! the pgoutput payloads. The transport was chosen over `pg_walstream` because its
//! worker keeps answering keepalives and sending standby status updates while our
//! pipeline is back-pressured by NATS (the bounded event channel is full), so a slow
//! JetStream never makes the walsender time out; and because it hands over the raw
//! pgoutput bytes, so unchanged-TOAST markers and every other detail stay visible to
//! our decoder instead of being flattened by a higher-level row API.
//!
//! The flush position reported to PostgreSQL only moves through
//! [`ReplicationStream::confirm`], which the pipeline calls with the publisher's
//! confirmed LSN (every event up to it acked by JetStream).

use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

use crate::config::Secret;
use crate::lsn::{Lsn, Xid};
use crate::pgoutput::{self, Begin, Commit, LogicalMessage, Message, PgTimestamp};
use crate::postgres::PgSettings;

/// Session settings pinned on the replication connection, so that pgoutput's text
/// values have one documented format whatever the server's defaults are.
pub const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres \
                                   -c extra_float_digits=3 -c bytea_output=hex";

/// An error from the replication stream.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection URL could not be used.
    #[error("postgres.url: {0}")]
    Config(String),
    /// The transport failed (network, server, authentication).
    #[error("replication connection: {0}")]
    Transport(#[from] pgwire_replication::PgWireError),
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] pgoutput::DecodeError),
}

impl ReplicationError {
    /// Whether the slot is in use by another consumer (another producer holds it):
    /// the producer then waits as a standby and takes over once it is released.
    pub fn is_slot_in_use(&self) -> bool {
        matches!(self, ReplicationError::Transport(pgwire_replication::PgWireError::Server(m))
            if m.contains("is active for PID"))
    }

    /// Whether reconnecting may help (network trouble, server restart), as opposed to
    /// a definite problem (bad credentials, missing slot, undecodable data).
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicationError::Transport(pgwire_replication::PgWireError::Server(message)) => {
                sqlstate(message).is_some_and(server_error_is_transient)
            }
            ReplicationError::Transport(e) => e.is_transient() || e.is_io(),
            ReplicationError::Config(_) | ReplicationError::Decode(_) => false,
        }
    }
}

/// The SQLSTATE at the end of a server error's text (`… (SQLSTATE 57P01)`, the form
/// pgwire-replication gives).
fn sqlstate(message: &str) -> Option<&str> {
    let code = message
        .trim_end()
        .strip_suffix(')')?
        .rsplit_once("(SQLSTATE ")?
        .1;
    (code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(code)
}

/// Server errors after which connecting again may succeed: the connection was lost or
/// refused for now (class 08), the server is short of resources (53), an operator or the
/// server ended the session — `pg_terminate_backend` (57P01), a shutdown or crash
/// recovery (57P02/57P03) — (57), or a system error outside PostgreSQL (58). Everything else
/// (authentication, a missing slot, a privilege) needs the operator.
fn server_error_is_transient(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "58"))
}

/// Where to connect, taken from a `postgresql://` URL.
#[derive(Debug, Clone)]
pub struct ConnectionTarget {
    host: String,
    port: u16,
    user: String,
    password: Secret,
    database: String,
    tls: TlsConfig,
}

impl ConnectionTarget {
    /// Parses a PostgreSQL URL (or key=value string) with tokio-postgres' parser.
    pub fn from_url(url: &Secret) -> Result<ConnectionTarget, ReplicationError> {
        let settings = PgSettings::parse(url.expose()).map_err(ReplicationError::Config)?;
        let config = &settings.config;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .ok_or_else(|| ReplicationError::Config("no user given".into()))?
            .to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        // TLS as the URL's libpq parameters say (crate::postgres); never a silent
        // fallback to plain text.
        let tls = crate::postgres::replication_tls(&settings);
        Ok(ConnectionTarget {
            host,
            port,
            user,
            password: Secret::new(password),
            database,
            tls,
        })
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.database
    }
}

/// What the replication stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A decoded pgoutput message and the WAL position it was sent at (for a change:
    /// the change's own LSN).
    Message {
        /// The message.
        message: Message,
        /// Its WAL position.
        lsn: Lsn,
    },
    /// The server's WAL end at a keepalive (for lag metrics).
    KeepAlive {
        /// Server WAL end.
        wal_end: Lsn,
    },
}

/// A running logical replication stream.
pub struct ReplicationStream {
    client: ReplicationClient,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("running", &self.client.is_running())
            .finish()
    }
}

impl ReplicationStream {
    /// Starts streaming `publication` from `slot` (which must exist), resuming at the
    /// slot's confirmed position.
    pub async fn start(
        target: &ConnectionTarget,
        slot: &str,
        publication: &str,
        status_interval: Duration,
    ) -> Result<ReplicationStream, ReplicationError> {
        let config = ReplicationConfig::new(
            target.host.clone(),
            target.user.clone(),
            target.password.expose().to_string(),
            target.database.clone(),
            slot.to_string(),
            publication.to_string(),
        )
        .with_port(target.port)
        .with_tls(target.tls.clone())
        .with_options(SESSION_OPTIONS)
        .with_status_interval(status_interval)
        .with_wakeup_interval(status_interval)
        .with_buffer_size(4096)
        .with_application_name(format!("walbrook:{slot}"));
        let mut client = ReplicationClient::connect(config).await?;
        // Surface START_REPLICATION's answer here (e.g. the slot is in use by another
        // producer) rather than on the first read.
        client.wait_started().await?;
        Ok(ReplicationStream { client })
    }

    /// The next decoded message; `Ok(None)` when the stream ended normally.
    ///
    /// # Cancel safety
    /// Cancel safe: an event not yet returned stays in the transport's channel.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ReplicationError> {
        {
            let Some(event) = self.client.recv().await? else {
                return Ok(None);
            };
            let item = match event {
                ReplicationEvent::XLogData {
                    data, wal_start, ..
                } => StreamItem::Message {
                    message: pgoutput::decode(data)?,
                    lsn: Lsn(wal_start.as_u64()),
                },
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => StreamItem::Message {
                    message: Message::Begin(Begin {
                        final_lsn: Lsn(final_lsn.as_u64()),
                        commit_ts: PgTimestamp(commit_time_micros),
                        xid: Xid(xid),
                    }),
                    lsn: Lsn(final_lsn.as_u64()),
                },
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => StreamItem::Message {
                    message: Message::Commit(Commit {
                        flags: 0,
                        commit_lsn: Lsn(lsn.as_u64()),
                        end_lsn: Lsn(end_lsn.as_u64()),
                        commit_ts: PgTimestamp(commit_time_micros),
                    }),
                    lsn: Lsn(lsn.as_u64()),
                },
                ReplicationEvent::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                } => StreamItem::Message {
                    message: Message::LogicalMessage(LogicalMessage {
                        transactional,
                        lsn: Lsn(lsn.as_u64()),
                        prefix,
                        content,
                    }),
                    lsn: Lsn(lsn.as_u64()),
                },
                ReplicationEvent::KeepAlive { wal_end, .. } => StreamItem::KeepAlive {
                    wal_end: Lsn(wal_end.as_u64()),
                },
                ReplicationEvent::StoppedAt { .. } => return Ok(None),
            };
            Ok(Some(item))
        }
    }

    /// Reports `lsn` as flushed: PostgreSQL may discard WAL before it. Call only with
    /// a position all of whose events JetStream has acknowledged.
    pub fn confirm(&self, lsn: Lsn) {
        self.client
            .update_applied_lsn(pgwire_replication::Lsn::from_u64(lsn.0));
    }

    /// Stops the stream, sending a final status update.
    pub async fn shutdown(mut self) -> Result<(), ReplicationError> {
        self.client.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_terminations_are_retryable_and_definite_errors_are_not() {
        let server = |m: &str| {
            ReplicationError::Transport(pgwire_replication::PgWireError::Server(m.to_owned()))
        };
        for retryable in [
            "terminating connection due to administrator command (SQLSTATE 57P01)",
            "the database system is shutting down (SQLSTATE 57P03)",
            "connection failure (SQLSTATE 08006)",
            "out of memory (SQLSTATE 53200)",
        ] {
            assert!(server(retryable).is_retryable(), "{retryable}");
        }
        for definite in [
            "replication slot \"s\" does not exist (SQLSTATE 42704)",
            "password authentication failed (SQLSTATE 28P01)",
            "no SQLSTATE at all",
            "odd (SQLSTATE 57P0)",
        ] {
            assert!(!server(definite).is_retryable(), "{definite}");
        }
    }
}
