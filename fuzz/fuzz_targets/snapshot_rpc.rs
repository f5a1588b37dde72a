//! The parsers of the snapshot RPCs on arbitrary bytes. The first byte chooses the RPC:
//! even for `rpc.snapshot` (`walbrook_producer::snapshot::parse_request`, then the filter's
//! value through `table::filter_value_text`), odd for the listing `rpc.snapshots`
//! (`parse_listing`); the rest is the payload.
//!
//! Nothing may panic. A refused request must get a well-formed 400 error answer (headers and
//! JSON body, built without panicking). An accepted request must satisfy what the parser
//! promises (names PostgreSQL can have: not empty, at most 63 bytes, no NUL; chunk size in range, a listed table has its schema) and
//! survive a JSON round trip; its filter's value, quoted as the producer splices it into SQL,
//! must read back as exactly that value (no quote or backslash escapes the literal), the
//! filter column quoted as an identifier likewise, and the snapshot's subject must hold the
//! schema and table as one reversible token each.
//!
//! The body is `walbrook_fuzz::targets::snapshot_rpc::run`, which the crate's tests also run on every
//! committed seed and crash reproducer (`tests/targets.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walbrook_fuzz::targets::snapshot_rpc::run(data));
