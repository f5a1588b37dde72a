//! `walbrook_producer::registry::parse_lookup`, the parser of the schema lookup RPC
//! (`<root>.<db>.rpc.schema`, payload = fingerprint text), on arbitrary bytes: it must never
//! panic; what it accepts must be exactly 16 lowercase hex digits (surrounding whitespace
//! allowed) that print back as the same text; what it refuses must get a well-formed 400
//! error answer (headers and JSON body, built without panicking) whose message stays short
//! whatever the request's size.
//!
//! The body is `walbrook_fuzz::targets::schema_lookup::run`, which the crate's tests also run on every
//! committed seed and crash reproducer (`tests/targets.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walbrook_fuzz::targets::schema_lookup::run(data));
