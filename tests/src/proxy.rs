//! A TCP fault proxy: forwards connections, and on command severs them, refuses new
//! ones, or delays traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{HarnessError, Result};

#[derive(Debug)]
struct Shared {
    /// While true, new connections are closed at once.
    severed: AtomicBool,
    /// Delay added before forwarding each chunk, in microseconds.
    delay_micros: AtomicU64,
    /// Connections currently forwarded.
    active: AtomicUsize,
    /// Bumped by `sever()`; every connection task closes when it changes.
    generation: watch::Sender<u64>,
}

/// A TCP proxy on 127.0.0.1 in front of one upstream address.
///
/// It runs on its own thread with its own runtime, so it works from synchronous and
/// asynchronous tests alike. Dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream` (for example `127.0.0.1:5432`).
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| HarnessError::io("binding the fault proxy", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("configuring the fault proxy socket", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the fault proxy address", e))?;
        let shared = Arc::new(Shared {
            severed: AtomicBool::new(false),
            delay_micros: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            generation: watch::channel(0).0,
        });
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("walbrook-fault-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the fault proxy runtime");
                runtime.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).expect("registering the proxy socket");
                    tokio::select! {
                        _ = shutdown_rx => {}
                        () = accept_loop(listener, upstream, task_shared) => {}
                    }
                });
            })
            .map_err(|e| HarnessError::io("starting the fault proxy thread", e))?;
        Ok(FaultProxy {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients should connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every forwarded connection and refuses new ones until [`FaultProxy::restore`].
    pub fn sever(&self) {
        self.shared.severed.store(true, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.shared.severed.store(false, Ordering::SeqCst);
    }

    /// Adds `delay` before each forwarded chunk, in both directions (zero removes it).
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_micros.store(micros, Ordering::SeqCst);
    }

    /// Number of connections currently forwarded.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.sever();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.severed.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            shared.active.fetch_add(1, Ordering::SeqCst);
            let mut generation = shared.generation.subscribe();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                // A sever closes both halves of both sockets at once.
                _ = generation.changed() => {}
                () = pump(client_read, server_write, &shared) => {}
                () = pump(server_read, client_write, &shared) => {}
            }
            shared.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Copies one direction until EOF or error, applying the configured delay.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = shared.delay_micros.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
