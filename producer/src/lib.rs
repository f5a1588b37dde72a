//! The Walbrook producer appliance: PostgreSQL logical replication (pgoutput) → Avro →
//! NATS JetStream, with the LSN confirmed only for changes JetStream has stored.
//!
//! The wire contract is `docs/protocol.md`; operating it is in the README. The modules
//! follow the data: [`setup`] and [`tables`] prepare the database, [`replication`]
//! owns the replication connection, [`pgoutput`] decodes it, [`catalog`] and [`event`]
//! turn changes into Avro events, [`registry`] persists, announces and serves schemas,
//! [`publish`] stores events in JetStream in order (bounded window, in-order acks),
//! [`streams`] creates and reads the streams, and [`pipeline`] ties them together.

pub mod catalog;
pub mod chain;
pub mod config;
pub mod event;
pub mod large_payload;
pub use walbrook_protocol::lsn;
pub mod metrics;
pub mod pgoutput;
pub mod pipeline;
pub mod postgres;
pub mod publish;
pub mod registry;
pub mod replication;
pub mod setup;
pub mod slot;
pub mod snapshot;
pub mod streams;
pub mod tables;
pub use walbrook_protocol::subject;

pub use lsn::{FullXid, Lsn, Xid};
