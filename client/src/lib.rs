//! The Walbrook client SDK.
//!
//! **Status: not built yet** (issue #6). This crate will stream, decode and resume
//! Walbrook change events from NATS JetStream, and host the shared consumer runner
//! used by the ready-made sinks (issue #7). Nothing here is usable yet.
