//! Walbrook sink for HTTP webhooks: POSTs change events as JSON, signed, with stable ids.
//!
//! * One event per request (default) or a batch per request (a JSON array).
//! * Headers: `Walbrook-Event-Id` (one event: `<database>/<commit LSN as 16 hex
//!   digits>-<ordinal>`, the same on every redelivery; a batch: the ids of its first and last
//!   events joined by `..`), `Idempotency-Key` (the same value), `Walbrook-Signature`
//!   (`sha256=<hex HMAC-SHA256 of the body with the configured secret>`), `Content-Type:
//!   application/json`.
//! * 2xx is delivered. 5xx, 429, timeouts and connection errors are retried with exponential
//!   backoff, honouring `Retry-After` (seconds or an HTTP-date); after `max_attempts` the event goes to the
//!   dead-letter subject. Any other status (400, 404, 422…) is a refusal: dead letter at once.
//! * Delivery is at least once: a redelivery after a crash carries the same id, so receivers
//!   deduplicate on `Walbrook-Event-Id`. Events of one key are delivered in order (the runner
//!   splits batches into per-key lanes; see docs/sinks.md).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use walbrook_client::ChangeEvent;
use walbrook_client::runner::{Applied, Ordering, Position, RetryPolicy, Sink, SinkError};

/// The id of an event: `<database>/<commit LSN as 16 hex digits>-<ordinal>`.
pub fn event_id(event: &ChangeEvent) -> String {
    format!(
        "{}/{:016X}-{}",
        event.source().database,
        event.commit_lsn().0,
        event.ordinal()
    )
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
    /// Attempts per request before dead-lettering (default 8).
    pub max_attempts: u32,
    /// Backoff between attempts when the receiver gives no `Retry-After`.
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
            max_attempts: 8,
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
}

enum Outcome {
    Delivered,
    Refused(String),
}

impl WebhookSink {
    /// A sink for `options`.
    pub fn new(options: WebhookOptions) -> Result<WebhookSink, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| SinkError::fatal(format!("building the HTTP client: {e}")))?;
        Ok(WebhookSink { http, options })
    }

    /// POSTs `body` until it is delivered, refused, or out of attempts.
    async fn post(&self, id: &str, body: Vec<u8>) -> Outcome {
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
                    let status = response.status();
                    if status.is_success() {
                        return Outcome::Delivered;
                    }
                    let retry_after = response
                        .headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry_after(v, std::time::SystemTime::now()));
                    if !(status.is_server_error()
                        || status.as_u16() == 429
                        || status.as_u16() == 408)
                    {
                        return Outcome::Refused(format!("the receiver answered {status}"));
                    }
                    (retry_after, format!("the receiver answered {status}"))
                }
                Err(e) => (None, format!("request failed: {e}")),
            };
            if attempt >= self.options.max_attempts {
                return Outcome::Refused(format!("gave up after {attempt} attempts: {failure}"));
            }
            let delay = retry_after
                .map(|d| d.min(self.options.max_retry_after))
                .unwrap_or_else(|| self.options.retry.delay(attempt));
            tracing::warn!(%id, attempt, ?delay, "webhook delivery failed, retrying: {failure}");
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

    async fn apply(&self, _consumer: &str, events: &[ChangeEvent]) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        if self.options.batch {
            let body: Vec<serde_json::Value> =
                events.iter().map(event_json).collect::<Result<_, _>>()?;
            let id = format!(
                "{}..{}",
                event_id(&events[0]),
                event_id(&events[events.len() - 1])
            );
            let body = serde_json::to_vec(&body)
                .map_err(|e| SinkError::fatal(format!("serialising a batch: {e}")))?;
            if let Outcome::Refused(reason) = self.post(&id, body).await {
                applied.rejected = (0..events.len()).map(|i| (i, reason.clone())).collect();
            }
            return Ok(applied);
        }
        for (i, event) in events.iter().enumerate() {
            let body = serde_json::to_vec(&event_json(event)?)
                .map_err(|e| SinkError::fatal(format!("serialising an event: {e}")))?;
            if let Outcome::Refused(reason) = self.post(&event_id(event), body).await {
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
