//! The Walbrook producer appliance.
//!
//! **Status: being built** (issue #4). Working and tested so far: the pure pgoutput
//! decoder ([`pgoutput`]) and the WAL position newtypes ([`lsn`]). The replication
//! loop, Avro encoding and JetStream publishing are not built yet; the wire contract
//! they implement is `docs/protocol.md`.

pub mod lsn;
pub mod pgoutput;

pub use lsn::{Lsn, Xid};
