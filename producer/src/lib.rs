//! The Walbrook producer appliance.
//!
//! **Status: being built** (issue #4). Working and tested so far: the pure pgoutput
//! decoder ([`pgoutput`]), the WAL position newtypes ([`lsn`]), subject and stream
//! naming with reversible escaping ([`subject`]), and the pipelined, in-order,
//! lossless JetStream publisher ([`publish`]). The replication
//! loop, Avro encoding and JetStream publishing are not built yet; the wire contract
//! they implement is `docs/protocol.md`.

pub mod catalog;
pub mod config;
pub mod event;
pub use walbrook_protocol::lsn;
pub mod metrics;
pub mod pgoutput;
pub mod pipeline;
pub mod publish;
pub mod registry;
pub mod replication;
pub mod setup;
pub mod snapshot;
pub mod streams;
pub use walbrook_protocol::subject;

pub use lsn::{Lsn, Xid};
