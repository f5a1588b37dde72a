//! Avro single-object framing and decoding against fixed table schemas
//! (`walbrook_fuzz::schemas`). Input: one selector byte (which record schema, modulo their
//! number) followed by an Avro body. Properties:
//!
//! * `split_single_object` never panics and splits exactly at the 10-byte header;
//! * the direct reader (`TableSchema::decode_single_object` / `decode_body`) never panics;
//! * the generic apache-avro route (`from_single_object` / `fingerprint::decode_body` +
//!   `decode_value`) accepts exactly the same messages, as the same values;
//! * accepted values that the encoder takes re-encode to a message that decodes to the same
//!   values; rendering them as PostgreSQL text never panics.
//!
//! The body is `walbrook_fuzz::targets::single_object::run`, which the crate's tests also run on every
//! committed seed and crash reproducer (`tests/targets.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walbrook_fuzz::targets::single_object::run(data));
