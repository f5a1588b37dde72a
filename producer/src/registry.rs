//! The schema registry: every envelope schema version is persisted in the source
//! database (`_walbrook.schemas`), announced on the schema subject, and served by the
//! lookup RPC (docs/protocol.md §5).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use walbrook_pgtype_avro::Fingerprint;

use crate::snapshot::RpcFailure;

/// A schema document: what the schema subject carries and the lookup RPC returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDoc {
    /// Fingerprint text (16 lowercase hex digits).
    pub fingerprint: String,
    /// The Avro schema JSON text.
    pub schema: String,
    /// Source database.
    pub database: String,
    /// `schema.table` (unquoted).
    pub table: String,
    /// When the version was first seen, RFC 3339.
    pub created_at: String,
}

/// SQL that creates the registry table (idempotent).
pub const SETUP_SQL: &str = "
    CREATE SCHEMA IF NOT EXISTS _walbrook;
    CREATE TABLE IF NOT EXISTS _walbrook.schemas (
        fingerprint text PRIMARY KEY,
        schema_name text NOT NULL,
        table_name  text NOT NULL,
        schema_json text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    );";

/// Schemas known to this producer, shared with the RPC responder.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    known: Arc<RwLock<HashMap<Fingerprint, SchemaDoc>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Whether a fingerprint is already known (persisted and announced).
    pub fn contains(&self, fingerprint: Fingerprint) -> bool {
        self.read().contains_key(&fingerprint)
    }

    /// Remembers a schema.
    pub fn insert(&self, fingerprint: Fingerprint, doc: SchemaDoc) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fingerprint, doc);
    }

    /// Looks a fingerprint up in memory.
    pub fn get(&self, fingerprint: Fingerprint) -> Option<SchemaDoc> {
        self.read().get(&fingerprint).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Fingerprint, SchemaDoc>> {
        self.known.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Persists a schema version (no-op if it exists) and returns the stored document.
pub async fn persist(
    client: &Client,
    database: &str,
    schema_name: &str,
    table_name: &str,
    fingerprint: Fingerprint,
    schema_json: &str,
) -> Result<SchemaDoc, tokio_postgres::Error> {
    let fp = fingerprint.to_string();
    client
        .execute(
            "INSERT INTO _walbrook.schemas (fingerprint, schema_name, table_name, schema_json)
             VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING",
            &[&fp, &schema_name, &table_name, &schema_json],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
               FROM _walbrook.schemas WHERE fingerprint = $1",
            &[&fp],
        )
        .await?;
    Ok(SchemaDoc {
        fingerprint: fp,
        schema: schema_json.to_string(),
        database: database.to_string(),
        table: format!("{schema_name}.{table_name}"),
        created_at: row.get(0),
    })
}

/// Loads a persisted schema version.
pub async fn load(
    client: &Client,
    database: &str,
    fingerprint: Fingerprint,
) -> Result<Option<SchemaDoc>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT schema_name, table_name, schema_json,
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
               FROM _walbrook.schemas WHERE fingerprint = $1",
            &[&fingerprint.to_string()],
        )
        .await?;
    Ok(row.map(|r| SchemaDoc {
        fingerprint: fingerprint.to_string(),
        schema: r.get(2),
        database: database.to_string(),
        table: format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)),
        created_at: r.get(3),
    }))
}

/// The longest error message an RPC answer carries (bytes); longer ones are cut.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// An RPC error answer: NATS service error headers plus a JSON body. The message is cut to
/// [`MAX_ERROR_MESSAGE`] bytes (it may quote a huge request), and in the header line breaks
/// become spaces (a NATS header value cannot hold them; the body keeps them).
pub fn error_reply(code: u16, message: &str) -> (async_nats::HeaderMap, bytes::Bytes) {
    let message = if message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &message[..end])
    } else {
        message.to_string()
    };
    let header: String = message
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Service-Error", header.as_str());
    headers.insert("Nats-Service-Error-Code", code.to_string().as_str());
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    (headers, body.into())
}

/// Answers schema lookups on `subject` (queue group `walbrook`) until the subscription
/// ends. Every request with a reply subject gets an answer: the document, or an error
/// (400 malformed, 404 unknown, 500 internal) at once.
pub async fn serve_lookups(
    nats: async_nats::Client,
    subject: String,
    registry: Registry,
    pg_url: String,
    database: String,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = nats.queue_subscribe(subject, "walbrook".into()).await?;
    let mut store = StoreConnection {
        pg_url,
        client: None,
        failed_at: None,
    };
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply.clone() else {
            tracing::debug!("schema lookup without a reply subject ignored");
            continue;
        };
        let answer = answer_lookup(&request.payload, &registry, &mut store, &database).await;
        let (headers, body) = match answer {
            Ok(doc) => (
                async_nats::HeaderMap::new(),
                serde_json::to_vec(&doc).unwrap_or_default().into(),
            ),
            Err((code, message)) => error_reply(code, &message),
        };
        if let Err(e) = nats.publish_with_headers(reply, headers, body).await {
            tracing::warn!(error = %e, "could not answer a schema lookup");
        }
    }
    Ok(())
}

/// Parses a schema lookup request (the payload of `<root>.<db>.rpc.schema`): a fingerprint
/// as 16 lowercase hex digits, surrounding whitespace allowed. Anything else is a 400
/// failure whose message quotes at most the first 40 characters of the request.
pub fn parse_lookup(payload: &[u8]) -> Result<Fingerprint, RpcFailure> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| {
            RpcFailure::new(
                400,
                "the request must be a fingerprint: 16 lowercase hex digits",
            )
        })?
        .trim();
    if text.len() != 16
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(RpcFailure::new(
            400,
            format!(
                "malformed fingerprint {:?}: expected 16 lowercase hex digits",
                text.chars().take(40).collect::<String>()
            ),
        ));
    }
    text.parse()
        .map_err(|_| RpcFailure::new(400, format!("malformed fingerprint {text:?}")))
}

/// The schema store's connection for lookups the registry cannot answer: opened on the
/// first miss, reopened when closed, and while PostgreSQL is unreachable tried at most
/// once per [`StoreConnection::RETRY_AFTER`], so lookups wait neither for a connection
/// they do not need nor for one attempt per request.
struct StoreConnection {
    pg_url: String,
    client: Option<Arc<Client>>,
    failed_at: Option<std::time::Instant>,
}

impl StoreConnection {
    const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
    /// A lookup waits at most this long for a connection to an unresponsive server.
    const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    async fn get(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            if self
                .failed_at
                .is_some_and(|at| at.elapsed() < Self::RETRY_AFTER)
            {
                return None;
            }
            let attempt = tokio::time::timeout(
                Self::CONNECT_TIMEOUT,
                crate::pipeline::connect_sql(&self.pg_url),
            )
            .await
            .unwrap_or_else(|_| {
                Err(crate::pipeline::ProducerError::Postgres {
                    context: "connecting",
                    detail: format!("no answer within {:?}", Self::CONNECT_TIMEOUT),
                })
            });
            match attempt {
                Ok(client) => {
                    self.client = Some(Arc::new(client));
                    self.failed_at = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "schema lookups: cannot connect to PostgreSQL");
                    self.failed_at = Some(std::time::Instant::now());
                }
            }
        }
        self.client.as_deref()
    }
}

async fn answer_lookup(
    payload: &[u8],
    registry: &Registry,
    store: &mut StoreConnection,
    database: &str,
) -> Result<SchemaDoc, (u16, String)> {
    let fingerprint = parse_lookup(payload).map_err(|f| (f.code, f.message))?;
    if let Some(doc) = registry.get(fingerprint) {
        return Ok(doc);
    }
    let Some(db) = store.get().await else {
        return Err((
            500,
            "schema store unavailable: cannot connect to PostgreSQL".into(),
        ));
    };
    match load(db, database, fingerprint).await {
        Ok(Some(doc)) => {
            registry.insert(fingerprint, doc.clone());
            Ok(doc)
        }
        Ok(None) => Err((404, format!("unknown fingerprint {fingerprint}"))),
        Err(e) => Err((500, format!("schema store unavailable: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_survive_line_breaks_and_huge_messages() {
        let (headers, body) = error_reply(400, "unknown field `a\r\nb`");
        assert_eq!(
            headers.get("Nats-Service-Error").unwrap().as_str(),
            "unknown field `a  b`"
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["error"]["message"], "unknown field `a\r\nb`");
        let huge = "é".repeat(10_000);
        let (headers, body) = error_reply(404, &huge);
        let header = headers.get("Nats-Service-Error").unwrap().as_str();
        assert!(header.len() <= MAX_ERROR_MESSAGE + 3 && header.ends_with('…'));
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["error"]["message"].as_str(), Some(header));
    }

    #[test]
    fn lookups_parse_fingerprints_only() {
        assert_eq!(
            parse_lookup(b" 0123456789abcdef\n").unwrap().to_string(),
            "0123456789abcdef"
        );
        for bad in [
            &b""[..],
            b"0123456789ABCDEF",
            b"0123456789abcde",
            b"\xff",
            b"'; DROP",
        ] {
            assert_eq!(parse_lookup(bad).unwrap_err().code, 400);
        }
    }
}
