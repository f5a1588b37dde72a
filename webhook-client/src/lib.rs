//! Walbrook sink for HTTP webhooks: POSTs change events as JSON, signed, with stable ids.
//!
//! * One event per request (default) or a batch per request (a JSON array).
//! * Headers: `Walbrook-Event-Id` (one event: [`event_id`], the same on every redelivery
//!   and unique across tables, operations and snapshots; a batch: the ids of its first and
//!   last events joined by `..`, each event of the array carrying its own `id`), `Idempotency-Key` (the same value), `Walbrook-Signature`
//!   (`sha256=<hex HMAC-SHA256 of the body with the configured secret>`), `Content-Type:
//!   application/json`.
//! * What an answer means ([`verdict`]; docs/sinks.md has the table):
//!   * 2xx: delivered.
//!   * 400, 413, 422: the receiver refuses *this event's* request: the event goes to the
//!     dead-letter subject, and so does every later event of the same key in this run
//!     (*held*), so a receiver never sees a key's changes out of order.
//!   * Anything else — connection refused or reset, timeouts, 408, 429, 5xx, 401, 403, 404, a
//!     redirect (never followed: a 3xx names its `Location` in the log) and any other status —
//!     says nothing about the event: the same request is sent again, for ever, with
//!     exponential backoff (or the `Retry-After` the receiver asks for), each attempt logged
//!     and counted (`walbrook_sink_target_waits_total`). Delivery of that lane waits;
//!     nothing is dead-lettered, nothing is skipped.
//! * Delivery is at least once: a redelivery after a crash carries the same id, so receivers
//!   deduplicate on `Walbrook-Event-Id`. Events of one key are delivered in order (the runner
//!   splits batches into per-key lanes; see docs/sinks.md).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use walbrook_client::runner::{
    Applied, Binding, Ordering, Position, RetryPolicy, RunnerMetrics, Sink, SinkError, partition,
};
use walbrook_client::{ChangeEvent, Lsn, MessageId, Op, escape_token};

/// The id of an event, unique across the tables, operations and snapshots of a source:
///
/// * a change: `<database>/<commit LSN as 16 hex digits>-<ordinal>` (a commit LSN names one
///   transaction of the database, the ordinal one event in it);
/// * a snapshot row: `<database>/<schema>.<table>/snapshot-<snapshot position as 16 hex
///   digits>-<row ordinal>` (a snapshot row's position can equal a change's commit LSN, and
///   two tables' snapshots can share one).
///
/// Names are escaped as in subject tokens (docs/protocol.md §1.1: letters, digits, `_` and
/// `-` stay, every other byte is `~XX`), so no name can make two ids equal.
pub fn event_id(event: &ChangeEvent) -> String {
    let source = event.source();
    event_id_of(
        &source.database,
        (event.op() == Op::Read).then_some((source.schema.as_str(), source.table.as_str())),
        event.commit_lsn().0,
        event.ordinal(),
    )
}

/// [`event_id`] from its parts: `snapshot_of` is the table of a snapshot row (`None` for a
/// change), `position` the commit LSN (a snapshot row's: the snapshot's position).
pub fn event_id_of(
    database: &str,
    snapshot_of: Option<(&str, &str)>,
    position: u64,
    ordinal: u64,
) -> String {
    let database = escape_token(database);
    let id = MessageId::new(Lsn(position), ordinal);
    match snapshot_of {
        Some((schema, table)) => format!(
            "{database}/{}.{}/snapshot-{id}",
            escape_token(schema),
            escape_token(table),
        ),
        None => format!("{database}/{id}"),
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::from("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Options of the webhook sink.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Where to POST.
    pub url: String,
    /// The HMAC secret (no signature header without one).
    pub secret: Option<Vec<u8>>,
    /// One request per batch (a JSON array) instead of one per event.
    pub batch: bool,
    /// Timeout of one request (default 10 s).
    pub timeout: Duration,
    /// Backoff between attempts when the receiver gives no `Retry-After` (its
    /// `dead_letter_after` is not used: a request is sent until it is answered).
    pub retry: RetryPolicy,
    /// Longest `Retry-After` honoured (default 5 min).
    pub max_retry_after: Duration,
}

impl WebhookOptions {
    /// Options for `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> WebhookOptions {
        WebhookOptions {
            url: url.into(),
            secret: None,
            batch: false,
            timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
                dead_letter_after: None,
            },
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// The webhook sink. See the [crate docs](crate).
#[derive(Debug)]
pub struct WebhookSink {
    http: reqwest::Client,
    options: WebhookOptions,
    metrics: Option<Arc<RunnerMetrics>>,
    /// Keys (partition hashes) with a dead-lettered event in this run: their later events
    /// are dead-lettered too, in order.
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    keys: HashSet<u64>,
    /// Tables with a held key: a truncate of one is held too.
    tables: HashSet<(String, String)>,
    /// Tables whose truncate was dead-lettered: every later event of them is held.
    whole_tables: HashSet<(String, String)>,
}

impl Held {
    fn table(event: &ChangeEvent) -> (String, String) {
        let s = event.source();
        (s.schema.clone(), s.table.clone())
    }

    /// Whether `event` must wait behind a dead-lettered event.
    fn holds(&self, event: &ChangeEvent) -> bool {
        let table = Held::table(event);
        if self.whole_tables.contains(&table) {
            return true;
        }
        if partition::touches_table(event) {
            return self.tables.contains(&table);
        }
        partition::keys(event).iter().any(|k| self.keys.contains(k))
    }

    fn hold(&mut self, event: &ChangeEvent) {
        let table = Held::table(event);
        if partition::touches_table(event) {
            self.whole_tables.insert(table);
            return;
        }
        self.keys.extend(partition::keys(event));
        self.tables.insert(table);
    }
}

/// What the receiver's answer to one request means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// The receiver refuses this request's content (400, 413, 422): dead-letter its events.
    Refused(String),
    /// Nothing about the event (the receiver is down, overloaded, unauthorised, moved…):
    /// send the same request again later.
    Wait(String),
}

/// The verdict on an HTTP answer `status` (`location`: its `Location` header, if any).
pub fn verdict(status: reqwest::StatusCode, location: Option<&str>) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        400 | 413 | 422 => Verdict::Refused(format!("the receiver refused the event: {status}")),
        300..=399 => Verdict::Wait(format!(
            "the receiver answered {status} redirecting to {}: redirects are not followed (a \
             POST would become a GET); set the webhook URL to the final address",
            location.unwrap_or("(no Location)")
        )),
        401 | 403 => Verdict::Wait(format!(
            "the receiver answered {status}: check the endpoint's credentials"
        )),
        404 | 405 | 410 => Verdict::Wait(format!(
            "the receiver answered {status}: check the webhook URL"
        )),
        _ => Verdict::Wait(format!("the receiver answered {status}")),
    }
}

impl WebhookSink {
    /// A sink for `options`.
    pub fn new(options: WebhookOptions) -> Result<WebhookSink, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            // A redirect is answered, never followed: reqwest would turn a 301/302/303 POST
            // into a GET without body, whose 2xx would count as delivered.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SinkError::fatal(format!("building the HTTP client: {e}")))?;
        Ok(WebhookSink {
            http,
            options,
            metrics: None,
            held: Mutex::new(Held::default()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// POSTs `body` until the receiver delivers or refuses it (a [`Verdict::Wait`] is sent
    /// again, for ever: the runner cancels this future when it stops).
    async fn post(&self, id: &str, body: Vec<u8>) -> Result<(), String> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .post(&self.options.url)
                .header("Content-Type", "application/json")
                .header("Walbrook-Event-Id", id)
                .header("Idempotency-Key", id)
                .header("Walbrook-Attempt", attempt.to_string());
            if let Some(secret) = &self.options.secret {
                request = request.header("Walbrook-Signature", signature(secret, &body));
            }
            let (retry_after, failure) = match request.body(body.clone()).send().await {
                Ok(response) => {
                    let header = |name: reqwest::header::HeaderName| {
                        response
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let location = header(reqwest::header::LOCATION);
                    match verdict(response.status(), location.as_deref()) {
                        Verdict::Delivered => return Ok(()),
                        Verdict::Refused(reason) => return Err(reason),
                        Verdict::Wait(reason) => (
                            header(reqwest::header::RETRY_AFTER)
                                .and_then(|v| retry_after(&v, std::time::SystemTime::now())),
                            reason,
                        ),
                    }
                }
                // Without the URL: it may carry a token.
                Err(e) => (None, format!("request failed: {}", e.without_url())),
            };
            if let Some(metrics) = &self.metrics {
                metrics.target_waiting();
            }
            let delay = retry_after
                .map(|d| d.min(self.options.max_retry_after))
                .unwrap_or_else(|| self.options.retry.delay(attempt));
            tracing::warn!(%id, attempt, ?delay, "webhook delivery waits: {failure}");
            tokio::time::sleep(delay).await;
        }
    }
}

/// The wait a `Retry-After` value asks for (RFC 9110 §10.2.3): delay-seconds, or an
/// HTTP-date (a date already past: no wait). `None` for a value that is neither.
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn event_json(event: &ChangeEvent) -> Result<serde_json::Value, SinkError> {
    let mut value = serde_json::to_value(event)
        .map_err(|e| SinkError::fatal(format!("serialising an event: {e}")))?;
    if let Some(object) = value.as_object_mut() {
        object.insert("id".into(), serde_json::Value::String(event_id(event)));
    }
    Ok(value)
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        "webhook"
    }

    fn ordering(&self) -> Ordering {
        Ordering::PerKey
    }

    async fn checkpoint(&self, _consumer: &str) -> Result<Option<Position>, SinkError> {
        Ok(None)
    }

    fn bind(&mut self, binding: &Binding) {
        self.metrics = Some(binding.metrics.clone());
    }

    async fn apply(&self, _consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        let held_reason = "held: an earlier change of this key was dead-lettered; \
                           replay the dead letters in order";
        if self.options.batch {
            // One request for the whole batch: if any event must wait behind a dead letter,
            // the batch goes to the dead letters with it (in order).
            if events.iter().any(|e| self.held().holds(e)) {
                let mut held = self.held();
                events.iter().for_each(|e| held.hold(e));
                applied.rejected = (0..events.len())
                    .map(|i| (i, held_reason.to_owned()))
                    .collect();
                return Ok(applied);
            }
            let body: Vec<serde_json::Value> =
                events.iter().map(event_json).collect::<Result<_, _>>()?;
            let id = format!(
                "{}..{}",
                event_id(&events[0]),
                event_id(&events[events.len() - 1])
            );
            let body = serde_json::to_vec(&body)
                .map_err(|e| SinkError::fatal(format!("serialising a batch: {e}")))?;
            if let Err(reason) = self.post(&id, body).await {
                let mut held = self.held();
                events.iter().for_each(|e| held.hold(e));
                applied.rejected = (0..events.len()).map(|i| (i, reason.clone())).collect();
            }
            return Ok(applied);
        }
        for (i, event) in events.iter().enumerate() {
            if self.held().holds(event) {
                self.held().hold(event);
                applied.rejected.push((i, held_reason.to_owned()));
                continue;
            }
            let body = serde_json::to_vec(&event_json(event)?)
                .map_err(|e| SinkError::fatal(format!("serialising an event: {e}")))?;
            if let Err(reason) = self.post(&event_id(event), body).await {
                self.held().hold(event);
                applied.rejected.push((i, reason));
            }
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
    #[test]
    fn ids_are_unique_across_tables_operations_and_snapshots() {
        let change = event_id_of("shop", None, 0x16B3F20, 0);
        assert_eq!(change, "shop/00000000016B3F20-0");
        // A snapshot row at the same position and ordinal, in two tables.
        let orders = event_id_of("shop", Some(("public", "orders")), 0x16B3F20, 0);
        let items = event_id_of("shop", Some(("public", "items")), 0x16B3F20, 0);
        assert_eq!(orders, "shop/public.orders/snapshot-00000000016B3F20-0");
        assert_ne!(orders, change);
        assert_ne!(orders, items);
        // Names cannot forge the structure: a '.' or '/' in a name is escaped.
        assert_ne!(
            event_id_of("shop", Some(("a.b", "c")), 1, 0),
            event_id_of("shop", Some(("a", "b.c")), 1, 0)
        );
        assert_eq!(event_id_of("x/y", None, 1, 2), "x~2Fy/0000000000000001-2");
    }

    #[test]
    fn only_refusals_of_the_content_dead_letter() {
        use reqwest::StatusCode;
        let v = |code: u16| verdict(StatusCode::from_u16(code).unwrap(), Some("https://new/"));
        assert_eq!(v(200), Verdict::Delivered);
        assert_eq!(v(204), Verdict::Delivered);
        for code in [400, 413, 422] {
            assert!(matches!(v(code), Verdict::Refused(_)), "{code}");
        }
        for code in [
            301, 302, 303, 307, 308, 401, 403, 404, 408, 409, 429, 500, 502, 503,
        ] {
            assert!(matches!(v(code), Verdict::Wait(_)), "{code}");
        }
        let Verdict::Wait(moved) = v(301) else {
            unreachable!()
        };
        assert!(moved.contains("https://new/"), "{moved}");
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        use std::time::UNIX_EPOCH;
        // Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now),
            Some(Duration::from_secs(120))
        );
        // The obsolete forms an HTTP/1.1 recipient must accept too.
        assert_eq!(
            retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after("Sun Nov  6 08:49:57 1994", now),
            Some(Duration::from_secs(20))
        );
        // A date already past: retry at once.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
