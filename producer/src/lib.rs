//! The Walbrook producer appliance.
//!
//! **Status: not built yet** (issue #4). This crate will read PostgreSQL logical
//! replication (pgoutput), encode every change as Avro and publish it to NATS
//! JetStream, confirming an LSN to PostgreSQL only after JetStream acknowledged
//! every change up to it. Nothing here is usable yet.
