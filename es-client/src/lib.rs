//! Walbrook sink for Elasticsearch / OpenSearch: `_bulk` requests (NDJSON) over plain JSON
//! REST.
//!
//! * One document per row, its `_id` the primary-key value (several key columns: a JSON
//!   array of their values), in the index named by a template per table (default
//!   `{database}.{schema}.{table}`, lowercased, characters indices may not hold replaced by
//!   `_`).
//! * Inserts, updates and snapshot rows `index` the whole row; deletes `delete`; a key change
//!   deletes the old document and indexes the new one; a truncate deletes every document of
//!   the index (a versioned delete of each, found by a scroll after a refresh).
//! * **External versioning** from the commit position: version = commit LSN,
//!   `version_type=external_gte` (see [`version`]), so a replayed or reordered change of an
//!   older transaction never overwrites a newer document (the engine answers 409, which
//!   counts as applied), whatever the database's WAL position.
//! * Per-item failures: 429 and 5xx items are retried (the whole batch again; versions make
//!   that harmless); other refused items (a mapping conflict…) go to the dead-letter subject
//!   one by one.
//! * Optional index creation with a mapping derived from the table's columns.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use walbrook_client::runner::{Applied, Ordering, Position, Sink, SinkError};
use walbrook_client::{ChangeEvent, Column, Op, PgValue, Row, value_to_json};
use walbrook_pgtype_avro::PgType;

/// Options of the search sink.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Base URL of the engine (`http://127.0.0.1:9200`).
    pub url: String,
    /// Index name template: `{database}`, `{schema}` and `{table}` are replaced.
    pub index_template: String,
    /// Create missing indices with a mapping derived from the columns.
    pub create_mapping: bool,
    /// HTTP timeout.
    pub timeout: Duration,
    /// Basic authentication.
    pub basic_auth: Option<(String, String)>,
}

impl SearchOptions {
    /// Options for the engine at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> SearchOptions {
        SearchOptions {
            url: url.into().trim_end_matches('/').to_owned(),
            index_template: "{database}.{schema}.{table}".into(),
            create_mapping: false,
            timeout: Duration::from_secs(30),
            basic_auth: None,
        }
    }

    /// The index of a table: the template filled in, lowercased, with characters an index
    /// name cannot hold (`\ / * ? " < > | , #`, space, a leading `-_+`) replaced by `_`.
    pub fn index(&self, database: &str, schema: &str, table: &str) -> String {
        let name = self
            .index_template
            .replace("{database}", database)
            .replace("{schema}", schema)
            .replace("{table}", table)
            .to_lowercase();
        let mut out: String = name
            .chars()
            .map(|c| if "\\/*?\"<>|,# :".contains(c) { '_' } else { c })
            .collect();
        if out.starts_with(['-', '_', '+']) {
            out.insert(0, 'i');
        }
        if out == "." || out == ".." {
            out = format!("i{out}");
        }
        out
    }
}

/// The external version of an event: its commit LSN, written with
/// `version_type=external_gte`.
///
/// Commit LSNs are strictly increasing from one transaction to the next, so a document's
/// versions grow with every transaction that changes it, for every LSN up to 2^63 − 1 (the
/// engines' largest version: 8 EiB of WAL). Changes of one transaction share its version;
/// `external_gte` applies them in stream order, which the runner keeps (it skips copies of
/// events it has applied, and a restart replays a transaction's events in order), and a
/// change of an older transaction is refused (409). A commit LSN past 2^63 − 1 has no
/// version: the batch fails and nothing is acknowledged, instead of writing a version that
/// would make later changes look old.
pub fn version(position: Position) -> Result<i64, SinkError> {
    i64::try_from(position.commit_lsn.0).map_err(|_| {
        SinkError::fatal(format!(
            "commit LSN {} is past the largest external version of Elasticsearch/OpenSearch \
             (2^63 - 1): this sink cannot version it",
            position.commit_lsn
        ))
    })
}

/// The document id of a row: its key value (text form of the JSON value), or a JSON array of
/// the key values when the key has several columns. `None` when the row has no key columns.
pub fn document_id(row: &Row) -> Option<String> {
    let keys: Vec<serde_json::Value> = row
        .iter()
        .filter(|(c, _)| c.is_key)
        .map(|(_, v)| value_to_json(v))
        .collect();
    match keys.as_slice() {
        [] => None,
        [serde_json::Value::String(s)] => Some(s.clone()),
        [one] => Some(one.to_string()),
        many => Some(serde_json::Value::Array(many.to_vec()).to_string()),
    }
}

fn mapping_type(column: &Column) -> serde_json::Value {
    use serde_json::json;
    let builtin = match &column.pg_type {
        PgType::Builtin(b) => Some(*b),
        PgType::Domain { base, .. } => match base.as_ref() {
            PgType::Builtin(b) => Some(*b),
            _ => None,
        },
        _ => None,
    };
    match builtin.map(|b| b.name()) {
        Some("bool") => json!({"type": "boolean"}),
        Some("int2" | "int4") => json!({"type": "integer"}),
        Some("int8" | "oid") => json!({"type": "long"}),
        Some("float4" | "float8") => json!({"type": "double"}),
        // Exact digits: numerics are strings in the documents.
        Some("numeric") => json!({"type": "keyword"}),
        Some("date") => {
            json!({"type": "date", "format": "strict_date||epoch_millis", "ignore_malformed": true})
        }
        Some("timestamp" | "timestamptz") => {
            json!({"type": "date", "format": "strict_date_optional_time_nanos", "ignore_malformed": true})
        }
        Some("uuid" | "bpchar" | "name") => json!({"type": "keyword"}),
        Some("text" | "varchar") => {
            json!({"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}})
        }
        // Everything else (json text, arrays, ranges…) is kept but not indexed.
        _ => json!({"type": "object", "enabled": false}),
    }
}

/// The index mapping derived from a table's columns.
pub fn mapping(columns: &[Column]) -> serde_json::Value {
    let properties: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .map(|c| (c.name.clone(), mapping_type(c)))
        .collect();
    serde_json::json!({"mappings": {"dynamic": true, "properties": properties}})
}

/// The search sink. See the [crate docs](crate).
#[derive(Debug)]
pub struct SearchSink {
    http: reqwest::Client,
    options: SearchOptions,
    created: Mutex<HashSet<String>>,
}

/// The bulk actions of one batch event: (action line, source line if any).
struct Action {
    event: usize,
    lines: Vec<(serde_json::Value, Option<serde_json::Value>)>,
}

impl SearchSink {
    /// A sink for `options`.
    pub fn new(options: SearchOptions) -> Result<SearchSink, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| SinkError::fatal(format!("building the HTTP client: {e}")))?;
        Ok(SearchSink {
            http,
            options,
            created: Mutex::new(HashSet::new()),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}/{path}", self.options.url));
        match &self.options.basic_auth {
            Some((user, password)) => r.basic_auth(user, Some(password)),
            None => r,
        }
    }

    async fn ensure_index(&self, index: &str, columns: &[Column]) -> Result<(), SinkError> {
        if !self.options.create_mapping
            || self
                .created
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(index)
        {
            return Ok(());
        }
        let response = self
            .request(reqwest::Method::PUT, &encode_path(index))
            .json(&mapping(columns))
            .send()
            .await
            .map_err(|e| SinkError::transient(format!("creating index {index}: {e}")))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() && !body.contains("resource_already_exists_exception") {
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                SinkError::transient(format!("creating index {index}: {status} {body}"))
            } else {
                SinkError::fatal(format!("creating index {index}: {status} {body}"))
            });
        }
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index.to_owned());
        Ok(())
    }

    /// Deletes every document of `index` with the truncate's version (documents already
    /// newer are left alone): refresh, then scroll over the ids and bulk-delete each page.
    async fn truncate(&self, index: &str, version: i64) -> Result<(), SinkError> {
        let path = encode_path(index);
        let transient = |e: String| SinkError::transient(format!("truncating {index}: {e}"));
        let refresh = self
            .request(reqwest::Method::POST, &format!("{path}/_refresh"))
            .send()
            .await
            .map_err(|e| transient(e.to_string()))?;
        if refresh.status().as_u16() == 404 {
            return Ok(());
        }
        let mut page: serde_json::Value = self
            .request(reqwest::Method::POST, &format!("{path}/_search?scroll=1m"))
            .json(&serde_json::json!({"size": 1000, "_source": false, "query": {"match_all": {}}}))
            .send()
            .await
            .map_err(|e| transient(e.to_string()))?
            .json()
            .await
            .map_err(|e| transient(e.to_string()))?;
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            let lines = hits
                .iter()
                .map(|hit| {
                    (
                        serde_json::json!({"delete": {"_index": index, "_id": hit["_id"],
                            "version": version, "version_type": "external_gte"}}),
                        None,
                    )
                })
                .collect();
            self.bulk(&[Action { event: 0, lines }]).await?;
            let Some(scroll_id) = page["_scroll_id"].as_str().map(str::to_owned) else {
                break;
            };
            page = self
                .request(reqwest::Method::POST, "_search/scroll")
                .json(&serde_json::json!({"scroll": "1m", "scroll_id": scroll_id}))
                .send()
                .await
                .map_err(|e| transient(e.to_string()))?
                .json()
                .await
                .map_err(|e| transient(e.to_string()))?;
        }
        Ok(())
    }

    async fn bulk(&self, actions: &[Action]) -> Result<Vec<(usize, String)>, SinkError> {
        let mut body = Vec::new();
        let mut item_event = Vec::new();
        for action in actions {
            for (line, source) in &action.lines {
                for l in std::iter::once(line).chain(source) {
                    serde_json::to_writer(&mut body, l)
                        .map_err(|e| SinkError::fatal(format!("serialising: {e}")))?;
                    body.push(b'\n');
                }
                // Every action line gets one item in the answer.
                item_event.push(action.event);
            }
        }
        if body.is_empty() {
            return Ok(Vec::new());
        }
        let response = self
            .request(reqwest::Method::POST, "_bulk")
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::transient(format!("bulk request: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| SinkError::transient(format!("reading the bulk answer: {e}")))?;
        if !status.is_success() {
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                SinkError::transient(format!("bulk request: {status}"))
            } else {
                SinkError::fatal(format!("bulk request refused: {status} {text}"))
            });
        }
        let answer: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| SinkError::transient(format!("bulk answer is not JSON: {e}")))?;
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        if items.len() != item_event.len() {
            return Err(SinkError::transient(format!(
                "bulk answer has {} items for {} actions",
                items.len(),
                item_event.len()
            )));
        }
        let mut rejected = Vec::new();
        let mut retry = None;
        for (item, event) in items.iter().zip(item_event) {
            let result = item
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or_default();
            let status = result["status"].as_u64().unwrap_or(0);
            match status {
                200..=299 => {}
                // A newer version is there already, or the document to delete is gone.
                409 | 404 => {}
                429 | 500..=599 => retry = Some(format!("item {status}: {}", result["error"])),
                _ => rejected.push((event, format!("refused ({status}): {}", result["error"]))),
            }
        }
        if let Some(reason) = retry {
            return Err(SinkError::transient(reason));
        }
        Ok(rejected)
    }
}

fn encode_path(index: &str) -> String {
    let mut out = String::new();
    for b in index.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn document(row: &Row) -> serde_json::Value {
    serde_json::Value::Object(
        row.iter()
            .filter(|(_, v)| !matches!(v, PgValue::Unchanged))
            .map(|(c, v)| (c.name.clone(), value_to_json(v)))
            .collect(),
    )
}

impl Sink for SearchSink {
    fn name(&self) -> &str {
        "elasticsearch"
    }

    fn ordering(&self) -> Ordering {
        Ordering::PerKey
    }

    async fn checkpoint(&self, _consumer: &str) -> Result<Option<Position>, SinkError> {
        Ok(None)
    }

    async fn apply(&self, _consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        let mut actions = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let s = event.source();
            let index = self.options.index(&s.database, &s.schema, &s.table);
            let v = version(Position::of(event))?;
            if event.op() == Op::Truncate {
                // Everything before it first, then the truncate.
                let before = std::mem::take(&mut actions);
                applied.rejected.extend(self.bulk(&before).await?);
                self.truncate(&index, v).await?;
                continue;
            }
            if let Some(after) = event.after() {
                self.ensure_index(&index, after.columns()).await?;
            }
            let mut lines = Vec::new();
            type Lines = Vec<(serde_json::Value, Option<serde_json::Value>)>;
            let delete = |row: &Row, lines: &mut Lines| match document_id(row) {
                Some(id) => {
                    lines.push((
                        serde_json::json!({"delete": {"_index": index, "_id": id,
                            "version": v, "version_type": "external_gte"}}),
                        None,
                    ));
                    Ok(())
                }
                None => Err(format!(
                    "{}.{} has no primary key: documents need one",
                    s.schema, s.table
                )),
            };
            let result = match event.op() {
                Op::Delete => event
                    .before()
                    .ok_or_else(|| "delete without the old key".to_owned())
                    .and_then(|b| delete(b, &mut lines)),
                op => {
                    let after = event.after().ok_or_else(|| "no row".to_owned());
                    after.and_then(|after| {
                        if op == Op::UpdateKey
                            && let Some(before) = event.before()
                        {
                            delete(before, &mut lines)?;
                        }
                        let id = document_id(after).ok_or_else(|| {
                            format!(
                                "{}.{} has no primary key: documents need one",
                                s.schema, s.table
                            )
                        })?;
                        if after
                            .values()
                            .iter()
                            .any(|v| matches!(v, PgValue::Unchanged))
                        {
                            // The row's unchanged TOAST values are not in the event: a partial
                            // update keeps them (not versioned: see the crate docs).
                            lines.push((
                                serde_json::json!({"update": {"_index": index, "_id": id}}),
                                Some(serde_json::json!({"doc": document(after)})),
                            ));
                        } else {
                            lines.push((
                                serde_json::json!({"index": {"_index": index, "_id": id,
                                    "version": v, "version_type": "external_gte"}}),
                                Some(document(after)),
                            ));
                        }
                        Ok(())
                    })
                }
            };
            match result {
                Ok(()) => actions.push(Action { event: i, lines }),
                Err(reason) => applied.rejected.push((i, reason)),
            }
        }
        applied.rejected.extend(self.bulk(&actions).await?);
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walbrook_client::Lsn;

    #[test]
    fn versions_follow_positions() {
        let p = |lsn, ordinal| Position {
            commit_lsn: Lsn(lsn),
            ordinal,
        };
        let v = |lsn, ordinal| version(p(lsn, ordinal)).unwrap();
        // One version per transaction, strictly increasing with the commit LSN.
        assert_eq!(v(100, 0), v(100, 1));
        assert!(v(100, u64::MAX) < v(101, 0));
        // Past 800/0 (2^43: LSN × 2^20 overflowed there) and up to the largest version.
        let high = 0x900_0000_0000;
        assert!(v(high, 7) < v(high + 1, 0));
        assert_eq!(v(i64::MAX as u64, 0), i64::MAX);
        // Beyond it: refused, never saturated.
        let error = version(p(i64::MAX as u64 + 1, 0)).unwrap_err();
        assert!(error.to_string().contains("80000000/0"), "{error}");
    }

    #[test]
    fn index_names_are_valid() {
        let o = SearchOptions::new("http://x/");
        assert_eq!(o.url, "http://x");
        assert_eq!(o.index("Shop", "public", "Orders"), "shop.public.orders");
        assert_eq!(o.index("_db", "a b", "c*d"), "i_db.a_b.c_d");
    }
}
