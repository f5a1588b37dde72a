//! The schema cache and the change-event decoder.
//!
//! A message's fingerprint (docs/protocol.md §3.1) is resolved through the lookup RPC
//! (`<root>.<db>.rpc.schema`, §5.2) once per fingerprint and process-lifetime client; the
//! resulting [`EventSchema`] decodes every later message of that table version without I/O.
//! Concurrent lookups of one fingerprint share one request. The cache is also fed by the
//! schema announcements (`<root>.<db>.schema.>`, §5.1) the client receives while connected:
//! the producer announces a new table version before its first event, so that event's
//! schema is already known and needs no lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::RequestErrorKind;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde_json::Value as Json;
use walbrook_pgtype_avro::fingerprint::{parsing_canonical_form, split_single_object};
use walbrook_pgtype_avro::{Fingerprint, TableSchema};

use crate::error::{Error, ErrorKind};
use crate::event::{ChangeEvent, Column, Op, Row, Source};
use walbrook_protocol::{Lsn, OP_SYMBOLS};

/// One envelope schema version as the registry announced it (docs/protocol.md §5.1).
#[derive(Debug)]
pub struct EventSchema {
    fingerprint: Fingerprint,
    schema_json: String,
    database: String,
    table: String,
    before: TableSchema,
    after: TableSchema,
    before_columns: Arc<[Column]>,
    after_columns: Arc<[Column]>,
}

/// The decoded envelope of one message, before the stream metadata is attached.
pub(crate) struct Decoded {
    pub(crate) op: Op,
    pub(crate) source: Source,
    pub(crate) before: Option<Row>,
    pub(crate) after: Option<Row>,
}

fn decode_err(detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::Decode, detail)
}

fn columns(schema: &TableSchema) -> Arc<[Column]> {
    schema
        .columns()
        .map(|c| Column {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            oid: c.pg_type.oid(),
            is_key: c.is_key,
            not_null: c.not_null,
            backfill: c.backfill.clone(),
            pg_type: c.pg_type.clone(),
        })
        .collect()
}

impl EventSchema {
    /// Builds the decoder of an envelope schema (the `schema` text of a registry document).
    /// Fails with [`ErrorKind::Decode`] when it is not a change-event envelope this SDK can
    /// read.
    pub fn from_json(fingerprint: Fingerprint, schema_json: &str) -> Result<EventSchema, Error> {
        let document: Json = serde_json::from_str(schema_json)
            .map_err(|e| decode_err(format!("schema {fingerprint} is not JSON: {e}")))?;
        let bad = |what: &str| decode_err(format!("schema {fingerprint}: {what}"));
        let fields = document
            .get("fields")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("not a record"))?;
        let names: Vec<&str> = fields
            .iter()
            .map(|f| f.get("name").and_then(Json::as_str).unwrap_or_default())
            .collect();
        if names != ["op", "source", "before", "after"] {
            return Err(bad(&format!(
                "expected the fields op, source, before, after; got {names:?}"
            )));
        }
        let symbols = fields[0]["type"]["symbols"].as_array();
        if symbols.is_none_or(|s| s.iter().map(Json::as_str).ne(OP_SYMBOLS.map(Some))) {
            return Err(bad("op is not the walbrook.Op enum"));
        }
        let pcf = |j: &Json| parsing_canonical_form(j).map_err(|e| bad(&e.to_string()));
        if pcf(&fields[1]["type"])? != pcf(&walbrook_protocol::source_schema())? {
            return Err(bad("source is not the walbrook.Source record"));
        }
        let record = |i: usize| -> Result<TableSchema, Error> {
            let union = fields[i]["type"].as_array();
            let Some([null, record]) = union.map(Vec::as_slice) else {
                return Err(bad(&format!("{} is not [null, record]", names[i])));
            };
            if null != "null" {
                return Err(bad(&format!("{} is not [null, record]", names[i])));
            }
            TableSchema::from_record_json(record, &document).map_err(|e| {
                Error::with_source(
                    ErrorKind::Decode,
                    format!(
                        "schema {fingerprint}: cannot build the {} decoder",
                        names[i]
                    ),
                    e,
                )
            })
        };
        let before = record(2)?;
        let after = record(3)?;
        Ok(EventSchema {
            fingerprint,
            schema_json: schema_json.to_owned(),
            database: String::new(),
            table: format!("{}.{}", after.table_schema(), after.table_name()),
            before_columns: columns(&before),
            after_columns: columns(&after),
            before,
            after,
        })
    }

    /// The fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The envelope schema JSON text, as the producer registered it.
    pub fn schema_json(&self) -> &str {
        &self.schema_json
    }

    /// The source database, as the registry document names it.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// `schema.table`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The columns of the `after` row (all columns).
    pub fn columns(&self) -> &[Column] {
        &self.after_columns
    }

    /// The columns of the `before` row (the replica identity, or all under FULL).
    pub fn before_columns(&self) -> &[Column] {
        &self.before_columns
    }

    /// Decodes a single-object message written with this schema into a [`ChangeEvent`]
    /// outside any subscription (offline decoding, benchmarks): its subject is empty, its
    /// stream sequence 0, and acknowledging it does nothing. Fails with [`ErrorKind::Decode`]
    /// when the message is not this schema's or does not match it.
    pub fn decode_event(&self, payload: &[u8]) -> Result<ChangeEvent, Error> {
        let decoded = self.decode(payload)?;
        Ok(ChangeEvent {
            op: decoded.op,
            source: decoded.source,
            before: decoded.before,
            after: decoded.after,
            fingerprint: self.fingerprint,
            subject: "".into(),
            stream_sequence: 0,
            consumer_sequence: 0,
            delivered: 0,
            ack: crate::event::AckHandle::none(),
            message_index: 0,
            message_events: 1,
            payload: bytes::Bytes::copy_from_slice(payload),
            headers: None,
        })
    }

    /// Decodes a single-object message written with this schema.
    pub(crate) fn decode(&self, payload: &[u8]) -> Result<Decoded, Error> {
        let (fingerprint, body) = split_single_object(payload)
            .map_err(|e| Error::with_source(ErrorKind::Decode, "bad framing", e))?;
        if fingerprint != self.fingerprint {
            return Err(decode_err(format!(
                "fingerprint {fingerprint} is not this schema's {}",
                self.fingerprint
            )));
        }
        let mut r = Body(body);
        let op = Op::from_index(r.long()?).ok_or_else(|| decode_err("op out of range"))?;
        let source = Source {
            database: r.string()?,
            schema: r.string()?,
            table: r.string()?,
            xid: r.long()?,
            commit_lsn: Lsn(r.long()? as u64),
            lsn: Lsn(r.long()? as u64),
            commit_time: micros_time(r.long()?)?,
            ordinal: u64::try_from(r.long()?).map_err(|_| decode_err("negative ordinal"))?,
            last: r.boolean()?,
            sent_at: micros_time(r.long()?)?,
        };
        let before = self.row(&mut r, &self.before, &self.before_columns)?;
        let after = self.row(&mut r, &self.after, &self.after_columns)?;
        if !r.0.is_empty() {
            return Err(decode_err(format!(
                "{} trailing bytes after the event",
                r.0.len()
            )));
        }
        Ok(Decoded {
            op,
            source,
            before,
            after,
        })
    }

    fn row(
        &self,
        r: &mut Body<'_>,
        schema: &TableSchema,
        columns: &Arc<[Column]>,
    ) -> Result<Option<Row>, Error> {
        match r.long()? {
            0 => Ok(None),
            1 => {
                let (values, rest) = schema.decode_body_prefix(r.0).map_err(|e| {
                    Error::with_source(
                        ErrorKind::Decode,
                        format!("{} {} row", self.table, schema.kind().as_str()),
                        e,
                    )
                })?;
                r.0 = rest;
                Ok(Some(Row::new(
                    columns.clone(),
                    values.into_iter().map(|(_, v)| v).collect(),
                )))
            }
            _ => Err(decode_err("row union branch out of range")),
        }
    }
}

fn micros_time(us: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| decode_err("timestamp out of range"))
}

/// A bounds-checked reader of the envelope's own fields.
struct Body<'a>(&'a [u8]);

impl Body<'_> {
    fn long(&mut self) -> Result<i64, Error> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .0
                .split_first()
                .ok_or_else(|| decode_err("truncated event"))?;
            self.0 = rest;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(decode_err("varint longer than 10 bytes"))
    }

    fn string(&mut self) -> Result<String, Error> {
        let n = usize::try_from(self.long()?).map_err(|_| decode_err("negative length"))?;
        if n > self.0.len() {
            return Err(decode_err("truncated event"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(head.to_vec()).map_err(|_| decode_err("string is not UTF-8"))
    }

    fn boolean(&mut self) -> Result<bool, Error> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or_else(|| decode_err("truncated event"))?;
        self.0 = rest;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(decode_err("boolean byte is not 0 or 1")),
        }
    }
}

type Lookup = Shared<BoxFuture<'static, Result<Arc<EventSchema>, Error>>>;

enum Slot {
    Ready(Arc<EventSchema>),
    InFlight(u64, Lookup),
}

/// Fingerprint → decoder, fed by the lookup RPC and the schema announcements.
pub(crate) struct SchemaCache {
    rpc: Arc<Rpc>,
    slots: Mutex<(u64, HashMap<Fingerprint, Slot>)>,
    /// A core NATS subscription to the schema announcements, drained (without waiting)
    /// before every lookup: an announcement is received before the first event of its
    /// version (the producer publishes it first; one connection delivers in order), so a
    /// new version found in the feed needs no request. Bounded by the subscription's
    /// channel; announcements beyond it are dropped by the client library, and their
    /// schemas are then looked up as before.
    feed: Mutex<Option<async_nats::Subscriber>>,
}

struct Rpc {
    nats: async_nats::Client,
    subject: String,
    timeout: Duration,
}

impl SchemaCache {
    pub(crate) fn new(nats: async_nats::Client, subject: String, timeout: Duration) -> SchemaCache {
        SchemaCache {
            rpc: Arc::new(Rpc {
                nats,
                subject,
                timeout,
            }),
            slots: Mutex::new((0, HashMap::new())),
            feed: Mutex::new(None),
        }
    }

    /// Feeds the cache with the announcements `subscriber` receives.
    pub(crate) fn set_feed(&self, subscriber: async_nats::Subscriber) {
        *self.feed.lock().unwrap_or_else(|p| p.into_inner()) = Some(subscriber);
    }

    /// Takes in every announcement received so far (never waits).
    fn drain_feed(&self) {
        let mut feed = self.feed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(subscriber) = feed.as_mut() else {
            return;
        };
        loop {
            match futures::StreamExt::next(subscriber).now_or_never() {
                None => return,
                Some(None) => {
                    // The connection is closed for good: lookups report it.
                    *feed = None;
                    return;
                }
                Some(Some(message)) => match announced(&message.payload) {
                    Ok(schema) => self.insert(schema),
                    // Not fatal: the RPC still answers for this fingerprint.
                    Err(e) => {
                        tracing::warn!(subject = %message.subject, "ignoring a schema announcement: {e}")
                    }
                },
            }
        }
    }

    /// Adds a schema (from an announcement); a cached one is kept. A lookup in flight for it
    /// still completes for its callers.
    fn insert(&self, schema: Arc<EventSchema>) {
        let mut guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slots = &mut guard.1;
        if !matches!(slots.get(&schema.fingerprint), Some(Slot::Ready(_))) {
            slots.insert(schema.fingerprint, Slot::Ready(schema));
        }
    }

    /// The cached decoder of `fingerprint`, if any (no request; announcements received so
    /// far are taken in first).
    pub(crate) fn cached(&self, fingerprint: Fingerprint) -> Option<Arc<EventSchema>> {
        self.drain_feed();
        let guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match guard.1.get(&fingerprint) {
            Some(Slot::Ready(schema)) => Some(schema.clone()),
            _ => None,
        }
    }

    /// The decoder for `fingerprint`, looked up once. Concurrent callers for one fingerprint
    /// share one request and its result, success or failure; a failure is not cached (a later
    /// call asks again).
    ///
    /// # Cancel safety
    /// Cancel safe: the lookup goes on for the other callers, and its result is cached for
    /// later ones.
    pub(crate) async fn get(&self, fingerprint: Fingerprint) -> Result<Arc<EventSchema>, Error> {
        {
            let guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(Slot::Ready(schema)) = guard.1.get(&fingerprint) {
                return Ok(schema.clone());
            }
        }
        // Not cached: maybe announced meanwhile.
        self.drain_feed();
        let (id, lookup) = {
            let mut guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let (next_id, slots) = &mut *guard;
            match slots.get(&fingerprint) {
                Some(Slot::Ready(schema)) => return Ok(schema.clone()),
                Some(Slot::InFlight(id, lookup)) => (*id, lookup.clone()),
                None => {
                    *next_id += 1;
                    let rpc = self.rpc.clone();
                    let lookup = async move { rpc.lookup(fingerprint).await }
                        .boxed()
                        .shared();
                    slots.insert(fingerprint, Slot::InFlight(*next_id, lookup.clone()));
                    (*next_id, lookup)
                }
            }
        };
        let result = lookup.await;
        let mut guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slots = &mut guard.1;
        if matches!(slots.get(&fingerprint), Some(Slot::InFlight(current, _)) if *current == id) {
            match &result {
                Ok(schema) => {
                    slots.insert(fingerprint, Slot::Ready(schema.clone()));
                }
                Err(_) => {
                    slots.remove(&fingerprint);
                }
            }
        }
        result
    }
}

/// The schema of an announcement (a registry document, §5.1), checked: its schema must have
/// the fingerprint it names.
fn announced(payload: &[u8]) -> Result<Arc<EventSchema>, Error> {
    let protocol = |what: String| Error::new(ErrorKind::Protocol, what);
    let document: Json = serde_json::from_slice(payload)
        .map_err(|e| protocol(format!("announcement is not JSON: {e}")))?;
    let named: Fingerprint = document["fingerprint"]
        .as_str()
        .ok_or_else(|| protocol("announcement has no fingerprint".into()))?
        .parse()
        .map_err(|e| protocol(format!("announcement fingerprint: {e}")))?;
    let schema_json = document["schema"]
        .as_str()
        .ok_or_else(|| protocol("announcement has no schema".into()))?;
    let actual = Fingerprint::of_json_str(schema_json)
        .map_err(|e| protocol(format!("announced schema does not parse: {e}")))?;
    if actual != named {
        return Err(protocol(format!(
            "announcement names {named} but its schema is {actual}"
        )));
    }
    let mut schema = EventSchema::from_json(named, schema_json)?;
    schema.database = document["database"].as_str().unwrap_or_default().to_owned();
    Ok(Arc::new(schema))
}

impl Rpc {
    async fn lookup(&self, fingerprint: Fingerprint) -> Result<Arc<EventSchema>, Error> {
        let started = std::time::Instant::now();
        let result = self.request(fingerprint).await;
        tracing::debug!(
            %fingerprint,
            ms = started.elapsed().as_secs_f64() * 1e3,
            ok = result.is_ok(),
            "schema lookup"
        );
        result
    }

    async fn request(&self, fingerprint: Fingerprint) -> Result<Arc<EventSchema>, Error> {
        let request = self
            .nats
            .request(self.subject.clone(), fingerprint.to_string().into());
        let reply = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "schema lookup of {fingerprint} got no answer in {:?}",
                        self.timeout
                    ),
                ));
            }
            Ok(Err(e)) => {
                let kind = match e.kind() {
                    RequestErrorKind::TimedOut => ErrorKind::Timeout,
                    RequestErrorKind::NoResponders => ErrorKind::Unavailable,
                    _ => ErrorKind::Nats,
                };
                return Err(Error::with_source(
                    kind,
                    format!("schema lookup of {fingerprint} on {}", self.subject),
                    e,
                ));
            }
            Ok(Ok(reply)) => reply,
        };
        if let Some(code) = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
        {
            let text = reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let kind = match code.as_str() {
                "404" => ErrorKind::SchemaNotFound,
                "400" => ErrorKind::Protocol,
                _ => ErrorKind::Server,
            };
            return Err(Error::new(
                kind,
                format!("schema lookup of {fingerprint}: {} {text}", code.as_str()),
            ));
        }
        let protocol = |what: String| Error::new(ErrorKind::Protocol, what);
        let document: Json = serde_json::from_slice(&reply.payload).map_err(|e| {
            protocol(format!(
                "schema lookup of {fingerprint}: reply is not JSON: {e}"
            ))
        })?;
        let schema_json = document["schema"].as_str().ok_or_else(|| {
            protocol(format!(
                "schema lookup of {fingerprint}: reply has no schema"
            ))
        })?;
        let actual = Fingerprint::of_json_str(schema_json).map_err(|e| {
            protocol(format!(
                "schema lookup of {fingerprint}: the schema does not parse: {e}"
            ))
        })?;
        if actual != fingerprint {
            return Err(protocol(format!(
                "schema lookup of {fingerprint} answered the schema of {actual}"
            )));
        }
        let mut schema = EventSchema::from_json(fingerprint, schema_json)?;
        schema.database = document["database"].as_str().unwrap_or_default().to_owned();
        Ok(Arc::new(schema))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;
    use walbrook_pgtype_avro::{ColumnDesc, PgNumeric, PgValue, RelationDesc, ReplicaIdentity};
    use walbrook_producer::event::{Op as WireOp, Source as WireSource, TableEncoder};
    use walbrook_producer::lsn::Lsn as WireLsn;
    use walbrook_producer::pgoutput::{ColumnValue, Tuple};

    use super::*;

    fn encoder() -> TableEncoder {
        let mut id = ColumnDesc::builtin("id", 20, -1).unwrap();
        id.is_key = true;
        id.not_null = true;
        let mut amount = ColumnDesc::builtin("amount", 1700, (5 << 16 | 1) + 4).unwrap();
        amount.type_name = "numeric(5,1)".into();
        TableEncoder::new(RelationDesc {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![id, ColumnDesc::builtin("name", 25, -1).unwrap(), amount],
            replica_identity: ReplicaIdentity::Default,
        })
        .unwrap()
    }

    fn text(s: &'static str) -> ColumnValue {
        ColumnValue::Text(Bytes::from_static(s.as_bytes()))
    }

    fn message(encoder: &TableEncoder) -> Vec<u8> {
        let source = WireSource {
            database: "shop".into(),
            schema: "public".into(),
            table: "t".into(),
            xid: 7,
            commit_lsn: WireLsn(0x16B_3F20),
            lsn: WireLsn(0x16B_3F00),
            commit_ts_micros: 1_700_000_000_000_000,
            ordinal: 3,
            last: true,
            sent_at_micros: 1_700_000_000_000_100,
        };
        let old = Tuple(vec![text("41"), ColumnValue::Null, ColumnValue::Null]);
        let new = Tuple(vec![text("42"), ColumnValue::UnchangedToast, text("-1.5")]);
        encoder
            .encode(WireOp::UpdateKey, &source, Some(&old), Some(&new))
            .unwrap()
    }

    #[test]
    fn producer_envelopes_decode_to_typed_events() {
        let encoder = encoder();
        let schema = EventSchema::from_json(encoder.fingerprint(), encoder.schema_json()).unwrap();
        assert_eq!(schema.table(), "public.t");
        assert_eq!(schema.before_columns().len(), 1);
        let decoded = schema.decode(&message(&encoder)).unwrap();
        assert_eq!(decoded.op, Op::UpdateKey);
        let s = &decoded.source;
        assert_eq!(
            (s.database.as_str(), s.table.as_str(), s.xid),
            ("shop", "t", 7)
        );
        assert_eq!(s.commit_lsn.to_string(), "0/16B3F20");
        assert_eq!(s.lsn, Lsn(0x16B_3F00));
        assert_eq!((s.ordinal, s.last), (3, true));
        assert_eq!(s.commit_time.timestamp_micros(), 1_700_000_000_000_000);
        assert_eq!(s.sent_at.timestamp_micros(), 1_700_000_000_000_100);
        let before = decoded.before.unwrap();
        assert_eq!(before.get("id"), Some(&PgValue::Int8(41)));
        assert_eq!(before.get("name"), None);
        let after = decoded.after.unwrap();
        assert_eq!(after.get("id"), Some(&PgValue::Int8(42)));
        assert!(after.is_unchanged("name"));
        assert_eq!(
            after.get("amount"),
            Some(&PgValue::Numeric(PgNumeric::Finite("-1.5".into())))
        );
        assert_eq!(after.columns()[2].type_name, "numeric(5,1)");
    }

    #[test]
    fn damaged_messages_are_decode_errors_never_panics() {
        let encoder = encoder();
        let schema = EventSchema::from_json(encoder.fingerprint(), encoder.schema_json()).unwrap();
        let message = message(&encoder);
        for end in 0..message.len() {
            let error = schema.decode(&message[..end]).err().unwrap();
            assert_eq!(error.kind(), ErrorKind::Decode, "prefix of {end} bytes");
        }
        let mut longer = message.clone();
        longer.push(0);
        assert_eq!(
            schema.decode(&longer).err().unwrap().kind(),
            ErrorKind::Decode
        );
        // Every single-byte corruption of the body either decodes or is a Decode error.
        for i in 10..message.len() {
            let mut bad = message.clone();
            bad[i] ^= 0xFF;
            if let Err(error) = schema.decode(&bad) {
                assert_eq!(error.kind(), ErrorKind::Decode);
            }
        }
        // A message of another schema.
        let mut other = message.clone();
        other[2] ^= 1;
        assert_eq!(
            schema.decode(&other).err().unwrap().kind(),
            ErrorKind::Decode
        );
    }

    #[test]
    fn schemas_that_are_not_change_envelopes_are_decode_errors() {
        let fp = Fingerprint(1);
        let envelope: Json = serde_json::from_str(encoder().schema_json()).unwrap();
        let mut renamed = envelope.clone();
        renamed["fields"][0]["name"] = json!("operation");
        let mut ops = envelope.clone();
        ops["fields"][0]["type"]["symbols"][0] = json!("CREATE");
        let mut source = envelope.clone();
        source["fields"][1]["type"]["fields"][3]["type"] = json!("int");
        let mut after = envelope.clone();
        after["fields"][3]["type"] = json!(["null", "string"]);
        for (what, text) in [
            ("not JSON", "{".to_owned()),
            ("a primitive", "\"int\"".to_owned()),
            ("renamed field", renamed.to_string()),
            ("other op symbols", ops.to_string()),
            ("other source", source.to_string()),
            ("after not a table record", after.to_string()),
        ] {
            let error = EventSchema::from_json(fp, &text).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Decode, "{what}: {error}");
        }
    }
}
