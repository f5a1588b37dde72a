//! Typed change events.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use walbrook_pgtype_avro::{
    ArrayDim, Fingerprint, PgDate, PgRange, PgTimestamp, PgValue, RangeBound,
};

use crate::error::{Error, ErrorKind};
use walbrook_protocol::Lsn;

pub use walbrook_protocol::Op;

/// Where and when a change happened (the envelope's `source` record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// Source database name.
    pub database: String,
    /// Schema (namespace) of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The 64-bit transaction id (`xid8`: epoch and xid), as `pg_current_xact_id()`
    /// reports it inside the source transaction.
    pub xid: i64,
    /// LSN of the transaction's commit: the event's position.
    pub commit_lsn: Lsn,
    /// The change's own WAL position.
    pub lsn: Lsn,
    /// Commit time.
    pub commit_time: DateTime<Utc>,
    /// 0-based index of the event in its transaction.
    pub ordinal: u64,
    /// Whether this is the transaction's last event.
    pub last: bool,
    /// When the producer encoded the event.
    pub sent_at: DateTime<Utc>,
}

/// A column of a decoded row: its PostgreSQL name and type as the schema describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type as PostgreSQL's `format_type` prints it (`numeric(10,2)`, the enum's name…).
    pub type_name: String,
    /// Type OID.
    pub oid: u32,
    /// Part of the replica identity (the primary key by default).
    pub is_key: bool,
    /// Declared `NOT NULL`.
    pub not_null: bool,
    /// What rows that existed before the column was added hold in it (PostgreSQL gives them
    /// the default without a change event): the schema's `pgMissing` / `pgMissingPerRow`.
    pub backfill: walbrook_pgtype_avro::Backfill,
    /// The type as the schema's `pgType` properties describe it (renders values back to
    /// PostgreSQL's text form with [`walbrook_pgtype_avro::render_text`]).
    pub pg_type: walbrook_pgtype_avro::PgType,
}

/// A decoded row (`before` or `after`): typed values in column order, with name-based access.
///
/// An unchanged TOASTed value (the column kept its old value, which the event does not carry)
/// is [`PgValue::Unchanged`], distinct from [`PgValue::Null`].
#[derive(Clone, PartialEq)]
pub struct Row {
    columns: Arc<[Column]>,
    values: Vec<PgValue>,
}

impl Row {
    pub(crate) fn new(columns: Arc<[Column]>, values: Vec<PgValue>) -> Row {
        Row { columns, values }
    }

    /// The value of column `name`, or `None` if the row has no such column.
    pub fn get(&self, name: &str) -> Option<&PgValue> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .map(|i| &self.values[i])
    }

    /// Whether column `name` is present and its value is the unchanged-TOAST marker.
    pub fn is_unchanged(&self, name: &str) -> bool {
        matches!(self.get(name), Some(PgValue::Unchanged))
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[PgValue] {
        &self.values
    }

    /// (column, value) pairs in column order.
    pub fn iter(&self) -> impl Iterator<Item = (&Column, &PgValue)> {
        self.columns.iter().zip(&self.values)
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The row as a JSON object (column name → [`value_to_json`]), in column order.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.iter()
                .map(|(c, v)| (c.name.clone(), value_to_json(v)))
                .collect(),
        )
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(c, v)| (&c.name, v)))
            .finish()
    }
}

impl Serialize for Row {
    /// A map from column name to value in column order, values as [`value_to_json`] shows.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (c, v) in self.iter() {
            map.serialize_entry(&c.name, &ValueSer(v))?;
        }
        map.end()
    }
}

/// The acknowledgement capability of a delivered message (durable consumers only), shared
/// by the events of a message that carries several (docs/protocol.md §3.6): each event's
/// [`AckHandle::ack`] is recorded, and the message is acknowledged on the server once all
/// its events are.
#[derive(Clone, Default)]
pub(crate) struct AckHandle {
    shared: Option<Arc<SharedAck>>,
    /// The event's index within its message.
    index: usize,
}

struct SharedAck {
    message: async_nats::jetstream::Message,
    state: std::sync::Mutex<AckState>,
    /// Whether the server has the message's final answer (ack, nak or term); held while
    /// that answer is sent so two events completing at once send it once.
    answered: tokio::sync::Mutex<bool>,
}

struct AckState {
    acked: Vec<bool>,
    remaining: usize,
    /// A nak or term was sent: the message comes again (nak) or never (term); later acks of
    /// its events are not sent.
    abandoned: bool,
}

impl AckHandle {
    /// The handle of a message holding one event (or of a message as a whole).
    pub(crate) fn durable(message: async_nats::jetstream::Message) -> AckHandle {
        AckHandle::durable_events(message, 1)
    }

    /// The handle of a message holding `events` events, for its first event; the others'
    /// come from [`AckHandle::for_event`].
    pub(crate) fn durable_events(
        message: async_nats::jetstream::Message,
        events: usize,
    ) -> AckHandle {
        let events = events.max(1);
        AckHandle {
            shared: Some(Arc::new(SharedAck {
                message,
                state: std::sync::Mutex::new(AckState {
                    acked: vec![false; events],
                    remaining: events,
                    abandoned: false,
                }),
                answered: tokio::sync::Mutex::new(false),
            })),
            index: 0,
        }
    }

    /// The handle of event `index` of the same message.
    pub(crate) fn for_event(&self, index: usize) -> AckHandle {
        AckHandle {
            shared: self.shared.clone(),
            index,
        }
    }

    pub(crate) fn none() -> AckHandle {
        AckHandle::default()
    }

    /// Records the event as acknowledged without sending anything: `true` when its message
    /// has no unacknowledged event left (and was not abandoned), i.e. when [`AckHandle::ack`]
    /// would send the message's acknowledgement. A caller acknowledging many events marks
    /// them all and awaits `ack` only for those.
    pub(crate) fn mark(&self) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.abandoned {
            return false;
        }
        if let Some(done) = state.acked.get_mut(self.index)
            && !*done
        {
            *done = true;
            state.remaining -= 1;
        }
        state.remaining == 0
    }

    pub(crate) async fn ack(&self) -> Result<(), Error> {
        if !self.mark() {
            return Ok(());
        }
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let mut answered = shared.answered.lock().await;
        if *answered {
            return Ok(());
        }
        shared
            .message
            .double_ack()
            .await
            .map_err(|e| ack_error("ack", &*e))?;
        *answered = true;
        Ok(())
    }

    async fn abandon(&self, kind: async_nats::jetstream::AckKind, what: &str) -> Result<(), Error> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let mut answered = shared.answered.lock().await;
        if *answered {
            return Ok(());
        }
        shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abandoned = true;
        shared
            .message
            .ack_with(kind)
            .await
            .map_err(|e| ack_error(what, &*e))?;
        *answered = true;
        Ok(())
    }

    pub(crate) async fn nak(&self) -> Result<(), Error> {
        self.abandon(async_nats::jetstream::AckKind::Nak(None), "nak")
            .await
    }

    pub(crate) async fn term(&self) -> Result<(), Error> {
        self.abandon(async_nats::jetstream::AckKind::Term, "term")
            .await
    }
}

fn ack_error(what: &str, e: &(dyn std::error::Error + Send + Sync)) -> Error {
    Error::new(ErrorKind::Nats, format!("{what} failed: {e}"))
}

/// One change of one row (or a truncate), decoded and typed.
#[derive(Clone)]
pub struct ChangeEvent {
    pub(crate) op: Op,
    pub(crate) source: Source,
    pub(crate) before: Option<Row>,
    pub(crate) after: Option<Row>,
    pub(crate) fingerprint: Fingerprint,
    /// Shared by the events of one message.
    pub(crate) subject: std::sync::Arc<str>,
    pub(crate) stream_sequence: u64,
    /// The consumer's delivery sequence (0 when not delivered by a consumer).
    pub(crate) consumer_sequence: u64,
    pub(crate) delivered: u64,
    pub(crate) ack: AckHandle,
    /// 0-based index of the event within its stream message.
    pub(crate) message_index: u32,
    /// How many events its stream message carries (1 unless the message is shared,
    /// docs/protocol.md §3.6).
    pub(crate) message_events: u32,
    /// The event as stored (for dead letters): the single-object message.
    pub(crate) payload: bytes::Bytes,
    /// Shared by the events of one message.
    pub(crate) headers: Option<std::sync::Arc<async_nats::HeaderMap>>,
}

impl ChangeEvent {
    /// The operation.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Where and when.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The old row: the identity columns for `UpdateKey`/`Delete` (the whole old row for
    /// `Update`/`UpdateKey`/`Delete` under REPLICA IDENTITY FULL), else `None`.
    pub fn before(&self) -> Option<&Row> {
        self.before.as_ref()
    }

    /// The new row for `Insert`, `Update`, `UpdateKey` and `Read`, else `None`.
    pub fn after(&self) -> Option<&Row> {
        self.after.as_ref()
    }

    /// The commit LSN: the event's position (with [`ChangeEvent::ordinal`] it identifies the
    /// event).
    pub fn commit_lsn(&self) -> Lsn {
        self.source.commit_lsn
    }

    /// Index of the event in its transaction.
    pub fn ordinal(&self) -> u64 {
        self.source.ordinal
    }

    /// The writer schema's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The NATS subject the event was stored under.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The JetStream stream sequence.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// The JetStream consumer's delivery sequence of this delivery: it grows by one with
    /// every message the consumer delivers (redeliveries included), so a jump means a
    /// delivery never reached this subscriber. 0 for an event not delivered by a consumer (a
    /// replayed dead letter).
    pub fn consumer_sequence(&self) -> u64 {
        self.consumer_sequence
    }

    /// How many times JetStream delivered this message (1 the first time; more after a
    /// redelivery on a durable consumer).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The size of the event's payload in bytes.
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// The event's payload: its Avro single-object message (for an event of a message that
    /// carries several, its part of the body, without the framing).
    pub fn payload(&self) -> &bytes::Bytes {
        &self.payload
    }

    /// The stored message's headers (for an event of a message carrying several, the
    /// message's, including `Walbrook-Events`; see [`ChangeEvent::event_headers`]).
    pub fn headers(&self) -> Option<&async_nats::HeaderMap> {
        self.headers.as_deref()
    }

    /// The headers the event would have had as a message of its own (docs/protocol.md §3.3):
    /// for an event of a message carrying several, the message's headers without
    /// `Walbrook-Events` (and `Walbrook-Previous`, which names the message's predecessor),
    /// with the event's own `Walbrook-Ordinal` and `Nats-Msg-Id`, and
    /// `Walbrook-Last` only on the transaction's last event. Dead letters of single events
    /// carry these.
    pub fn event_headers(&self) -> Option<async_nats::HeaderMap> {
        use walbrook_protocol::headers as h;
        let original = self.headers.as_deref()?;
        if self.message_events <= 1 {
            return Some(original.clone());
        }
        let mut out = async_nats::HeaderMap::new();
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            if [
                h::EVENTS,
                h::ORDINAL,
                h::LAST,
                "Nats-Msg-Id",
                "Nats-Expected-Last-Msg-Id",
                h::PREVIOUS,
            ]
            .contains(&name)
            {
                continue;
            }
            for value in values {
                out.append(name, value.as_str());
            }
        }
        let ordinal = self.source.ordinal;
        out.insert(
            "Nats-Msg-Id",
            walbrook_protocol::MessageId::new(self.source.commit_lsn, ordinal)
                .to_string()
                .as_str(),
        );
        out.insert(h::ORDINAL, ordinal.to_string().as_str());
        if self.source.last {
            out.insert(h::LAST, "true");
        }
        Some(out)
    }

    /// 0-based index of the event within its stream message (0 unless the message carries
    /// several events, docs/protocol.md §3.6). The events of one message share its
    /// [`ChangeEvent::stream_sequence`].
    pub fn message_index(&self) -> u32 {
        self.message_index
    }

    /// How many events the event's stream message carries (1 for a message of its own).
    pub fn message_events(&self) -> u32 {
        self.message_events
    }

    /// Whether this is its stream message's final event: once it (and those before it) are
    /// processed, the whole message is.
    pub fn ends_message(&self) -> bool {
        self.message_index + 1 >= self.message_events
    }

    /// Acknowledges the event on a durable consumer and waits for the server to confirm it, so
    /// a consumer resumed later starts after it. A no-op on an ephemeral subscription.
    ///
    /// Acknowledgements are per stream message: for an event of a message carrying several
    /// (docs/protocol.md §3.6) the call is recorded, and the message is acknowledged on the
    /// server when its last unacknowledged event is (that call waits for the server's
    /// confirmation; the others return at once). A consumer resumed after a partly
    /// acknowledged message gets all its events again: dedupe by
    /// ([`ChangeEvent::commit_lsn`], [`ChangeEvent::ordinal`]).
    ///
    /// # Cancel safety
    /// Not cancel safe: if cancelled, the acknowledgement may or may not have been recorded
    /// (an unrecorded one means the event is delivered again).
    pub async fn ack(&self) -> Result<(), Error> {
        self.ack.ack().await
    }

    /// Asks a durable consumer to deliver the event again (negative acknowledgement). A no-op
    /// on an ephemeral subscription. For an event of a message carrying several, the whole
    /// message (every event of it) comes again, and acknowledgements of its other events
    /// after this are not sent.
    ///
    /// # Cancel safety
    /// Not cancel safe: if cancelled, the request may or may not have reached the server.
    pub async fn nak(&self) -> Result<(), Error> {
        self.ack.nak().await
    }
}

impl fmt::Debug for ChangeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeEvent")
            .field("op", &self.op)
            .field("source", &self.source)
            .field("before", &self.before)
            .field("after", &self.after)
            .field("stream_sequence", &self.stream_sequence)
            .finish()
    }
}

impl Serialize for ChangeEvent {
    /// `{"op", "source", "before", "after", "fingerprint", "subject", "stream_sequence"}`;
    /// rows as maps of [`value_to_json`] values.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ChangeEvent", 7)?;
        s.serialize_field("op", &self.op)?;
        s.serialize_field("source", &self.source)?;
        s.serialize_field("before", &self.before)?;
        s.serialize_field("after", &self.after)?;
        s.serialize_field("fingerprint", &self.fingerprint.to_string())?;
        s.serialize_field("subject", &*self.subject)?;
        s.serialize_field("stream_sequence", &self.stream_sequence)?;
        s.end()
    }
}

/// The JSON form of a typed value, used by the `Serialize` impls:
///
/// | value | JSON |
/// |---|---|
/// | NULL | `null` |
/// | unchanged TOAST | `{"unchanged_toast": true}` |
/// | bool, integers, `oid`, `xid8`/`pg_lsn` (as u64) | boolean / number |
/// | float4/float8 | number; `"NaN"`, `"Infinity"`, `"-Infinity"` as strings |
/// | numeric | string with the exact digits (`"-12.50"`, `"NaN"`) |
/// | text-like, enums, json/jsonb | string (JSON is PostgreSQL's exact text, not re-parsed) |
/// | bytea | string `"\\x…"` (PostgreSQL hex form) |
/// | uuid | string |
/// | date | `"2024-02-29"` (ISO 8601, year 0 = 1 BC), `"infinity"`, `"-infinity"` |
/// | time | `"HH:MM:SS.ffffff"` (`"24:00:00"` kept) |
/// | timetz | `{"micros": …, "offset_seconds": …}` |
/// | timestamp | `"2024-02-29T12:34:56.789012"` |
/// | timestamptz | `"2024-02-29T12:34:56.789012Z"` (UTC) |
/// | interval | `{"months": …, "days": …, "micros": …}` |
/// | array | `{"dims": [{"lower", "length"}…], "elements": [… flat, row-major]}` |
/// | range | `{"empty": true}` or `{"lower": v\|null, "lower_inclusive", "upper", "upper_inclusive"}` (`null` = unbounded) |
/// | multirange | array of ranges |
/// | composite | object of attributes |
pub fn value_to_json(value: &PgValue) -> serde_json::Value {
    serde_json::to_value(ValueSer(value)).unwrap_or(serde_json::Value::Null)
}

struct ValueSer<'a>(&'a PgValue);

fn float<S: Serializer>(v: f64, serializer: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        serializer.serialize_str("NaN")
    } else if v.is_infinite() {
        serializer.serialize_str(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        serializer.serialize_f64(v)
    }
}

fn micros_text(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if frac == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{frac:06}")
    }
}

fn timestamp_text(t: PgTimestamp, utc: bool) -> String {
    match t {
        PgTimestamp::Infinity => "infinity".into(),
        PgTimestamp::NegInfinity => "-infinity".into(),
        PgTimestamp::Micros(us) => match t.to_chrono_naive() {
            Some(n) => {
                let text = n.format("%Y-%m-%dT%H:%M:%S%.f").to_string();
                if utc { format!("{text}Z") } else { text }
            }
            None => us.to_string(),
        },
    }
}

struct RangeSer<'a>(&'a PgRange);

impl Serialize for RangeSer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            PgRange::Empty => {
                let mut m = serializer.serialize_map(Some(1))?;
                m.serialize_entry("empty", &true)?;
                m.end()
            }
            PgRange::Bounds { lower, upper } => {
                fn bound(b: &RangeBound) -> (Option<ValueSer<'_>>, bool) {
                    match b {
                        RangeBound::Unbounded => (None, false),
                        RangeBound::Inclusive(v) => (Some(ValueSer(v)), true),
                        RangeBound::Exclusive(v) => (Some(ValueSer(v)), false),
                    }
                }
                let (lo, lo_inc) = bound(lower);
                let (hi, hi_inc) = bound(upper);
                let mut m = serializer.serialize_map(Some(4))?;
                m.serialize_entry("lower", &lo)?;
                m.serialize_entry("lower_inclusive", &lo_inc)?;
                m.serialize_entry("upper", &hi)?;
                m.serialize_entry("upper_inclusive", &hi_inc)?;
                m.end()
            }
        }
    }
}

struct DimSer<'a>(&'a ArrayDim);

impl Serialize for DimSer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(Some(2))?;
        m.serialize_entry("lower", &self.0.lower)?;
        m.serialize_entry("length", &self.0.length)?;
        m.end()
    }
}

impl Serialize for ValueSer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            PgValue::Null => serializer.serialize_none(),
            PgValue::Unchanged => {
                let mut m = serializer.serialize_map(Some(1))?;
                m.serialize_entry("unchanged_toast", &true)?;
                m.end()
            }
            PgValue::Bool(b) => serializer.serialize_bool(*b),
            PgValue::Int2(v) => serializer.serialize_i16(*v),
            PgValue::Int4(v) => serializer.serialize_i32(*v),
            PgValue::Int8(v) => serializer.serialize_i64(*v),
            PgValue::Oid(v) => serializer.serialize_u32(*v),
            PgValue::U64(v) => serializer.serialize_u64(*v),
            PgValue::Float4(v) => float(f64::from(*v), serializer),
            PgValue::Float8(v) => float(*v, serializer),
            PgValue::Numeric(n) => serializer.collect_str(n),
            PgValue::Text(t) | PgValue::Json(t) => serializer.serialize_str(t),
            PgValue::Bytes(b) => {
                let mut text = String::with_capacity(2 + 2 * b.len());
                text.push_str("\\x");
                for byte in b {
                    text.push_str(&format!("{byte:02x}"));
                }
                serializer.serialize_str(&text)
            }
            PgValue::Uuid(u) => serializer.collect_str(u),
            PgValue::Date(d) => match d {
                PgDate::Infinity => serializer.serialize_str("infinity"),
                PgDate::NegInfinity => serializer.serialize_str("-infinity"),
                PgDate::Days(days) => match d.to_chrono() {
                    Some(date) => serializer.collect_str(&date.format("%Y-%m-%d")),
                    None => serializer.serialize_i32(*days),
                },
            },
            PgValue::Time(us) => serializer.serialize_str(&micros_text(*us)),
            PgValue::TimeTz {
                micros,
                offset_seconds,
            } => {
                let mut m = serializer.serialize_map(Some(2))?;
                m.serialize_entry("micros", micros)?;
                m.serialize_entry("offset_seconds", offset_seconds)?;
                m.end()
            }
            PgValue::Timestamp(t) => serializer.serialize_str(&timestamp_text(*t, false)),
            PgValue::TimestampTz(t) => serializer.serialize_str(&timestamp_text(*t, true)),
            PgValue::Interval(i) => {
                let mut m = serializer.serialize_map(Some(3))?;
                m.serialize_entry("months", &i.months)?;
                m.serialize_entry("days", &i.days)?;
                m.serialize_entry("micros", &i.micros)?;
                m.end()
            }
            PgValue::Array(a) => {
                let mut m = serializer.serialize_map(Some(2))?;
                m.serialize_entry("dims", &a.dims.iter().map(DimSer).collect::<Vec<_>>())?;
                m.serialize_entry(
                    "elements",
                    &a.elements.iter().map(ValueSer).collect::<Vec<_>>(),
                )?;
                m.end()
            }
            PgValue::Range(r) => RangeSer(r).serialize(serializer),
            PgValue::Multirange(rs) => {
                let mut s = serializer.serialize_seq(Some(rs.len()))?;
                for r in rs {
                    s.serialize_element(&RangeSer(r))?;
                }
                s.end()
            }
            PgValue::Composite(fields) => {
                let mut m = serializer.serialize_map(Some(fields.len()))?;
                for (name, v) in fields {
                    m.serialize_entry(name, &ValueSer(v))?;
                }
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use walbrook_pgtype_avro::{PgArray, PgInterval, PgNumeric};

    #[test]
    fn values_have_a_lossless_json_form() {
        let cases = [
            (PgValue::Null, json!(null)),
            (PgValue::Unchanged, json!({"unchanged_toast": true})),
            (PgValue::Int8(-5), json!(-5)),
            (PgValue::U64(u64::MAX), json!(u64::MAX)),
            (PgValue::Float8(f64::NAN), json!("NaN")),
            (PgValue::Float4(f32::NEG_INFINITY), json!("-Infinity")),
            (PgValue::Float8(1.5), json!(1.5)),
            (
                PgValue::Numeric(PgNumeric::Finite("-12.50".into())),
                json!("-12.50"),
            ),
            (PgValue::Json("{\"a\": 1}".into()), json!("{\"a\": 1}")),
            (PgValue::Bytes(vec![0xde, 0xad]), json!("\\xdead")),
            (PgValue::Date(PgDate::Days(0)), json!("1970-01-01")),
            (PgValue::Date(PgDate::NegInfinity), json!("-infinity")),
            (PgValue::Time(86_400_000_000), json!("24:00:00")),
            (PgValue::Time(3_723_000_001), json!("01:02:03.000001")),
            (
                PgValue::TimestampTz(PgTimestamp::Micros(1_500_000)),
                json!("1970-01-01T00:00:01.500Z"),
            ),
            (PgValue::Timestamp(PgTimestamp::Infinity), json!("infinity")),
            (
                PgValue::Interval(PgInterval {
                    months: 1,
                    days: -2,
                    micros: 3,
                }),
                json!({"months": 1, "days": -2, "micros": 3}),
            ),
            (
                PgValue::Array(PgArray {
                    dims: vec![ArrayDim {
                        lower: 0,
                        length: 2,
                    }],
                    elements: vec![PgValue::Int4(1), PgValue::Null],
                }),
                json!({"dims": [{"lower": 0, "length": 2}], "elements": [1, null]}),
            ),
            (
                PgValue::Range(PgRange::Bounds {
                    lower: RangeBound::Inclusive(Box::new(PgValue::Int4(1))),
                    upper: RangeBound::Unbounded,
                }),
                json!({"lower": 1, "lower_inclusive": true, "upper": null, "upper_inclusive": false}),
            ),
            (
                PgValue::Multirange(vec![PgRange::Empty]),
                json!([{"empty": true}]),
            ),
            (
                PgValue::Composite(vec![("a b".into(), PgValue::Bool(true))]),
                json!({"a b": true}),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(value_to_json(&value), expected, "{value:?}");
        }
    }
}
