//! A small HTTP server that records requests, for webhook sink tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;

use crate::{HarnessError, Result};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The status the receiver answered it with.
    pub status: u16,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted response: status and extra headers (e.g. `Retry-After`).
type Scripted = (u16, Vec<(String, String)>);

#[derive(Debug, Default)]
struct State {
    requests: Vec<RecordedRequest>,
    script: VecDeque<Scripted>,
    /// The answer once the script has run out (200 when `None`).
    fallback: Option<Scripted>,
}

/// An HTTP/1.1 server on 127.0.0.1 that records every request and answers 200, or
/// the next scripted response. Runs on its own thread; stops on drop.
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookReceiver {
    /// Starts the receiver on a random port.
    pub fn start() -> Result<WebhookReceiver> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| HarnessError::io("binding the webhook receiver", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("configuring the webhook receiver socket", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the webhook receiver address", e))?;
        let state = Arc::new(Mutex::new(State::default()));
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let handler_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("walbrook-webhook-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the webhook receiver runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("registering the webhook receiver socket");
                    let app = axum::Router::new().fallback(
                        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                            let state = Arc::clone(&handler_state);
                            async move { record(&state, method, uri, headers, body) }
                        },
                    );
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = shutdown_rx.await;
                        })
                        .await;
                });
            })
            .map_err(|e| HarnessError::io("starting the webhook receiver thread", e))?;
        Ok(WebhookReceiver {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a response for the next request that has none (answers are 200 after the
    /// script runs out).
    pub fn push_response(&self, status: u16, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.lock().script.push_back((status, headers));
    }

    /// Answers every request the script does not cover with `status` and `headers` (instead
    /// of 200) until [`WebhookReceiver::clear_fallback_response`].
    pub fn set_fallback_response(&self, status: u16, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.lock().fallback = Some((status, headers));
    }

    /// Back to 200 once the script has run out.
    pub fn clear_fallback_response(&self) {
        self.lock().fallback = None;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// How many distinct values header `name` (case-insensitive) took over the requests so
    /// far: the events a webhook sink delivered, counted by `Walbrook-Event-Id`, retries
    /// once. Cheaper than [`WebhookReceiver::requests`] (no copies).
    pub fn distinct_header_values(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        let state = self.lock();
        state
            .requests
            .iter()
            .filter_map(|r| r.headers.iter().find(|(k, _)| *k == name))
            .map(|(_, v)| v.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Waits until at least `count` requests arrived; returns them, or `None` on timeout.
    pub fn wait_for_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Option<Vec<RecordedRequest>> {
        crate::tools::wait_for(timeout, || {
            let requests = self.requests();
            (requests.len() >= count).then_some(requests)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn record(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse + use<> {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let (status, extra) = state
        .script
        .pop_front()
        .or_else(|| state.fallback.clone())
        .unwrap_or((200, Vec::new()));
    state.requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |pq| pq.to_string()),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        status,
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response_headers = HeaderMap::new();
    for (k, v) in extra {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(k),
            axum::http::HeaderValue::try_from(v),
        ) {
            response_headers.insert(name, value);
        }
    }
    (status, response_headers)
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
