//! `walbrook_pgtype_avro::parse_text` on arbitrary text for the type chosen by the first
//! input byte (see `walbrook_fuzz::text::types`). It must never panic, and a value it accepts
//! must survive the round trip: `render_text` succeeds, and parsing its output gives the same
//! value again. The same bytes are also read as the type's binary form
//! (`walbrook_pgtype_avro::parse_binary`, for the types that have a binary reader), which
//! must never panic either.
//!
//! The body is `walbrook_fuzz::targets::text_parsers::run`, which the crate's tests also run on every
//! committed seed and crash reproducer (`tests/targets.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walbrook_fuzz::targets::text_parsers::run(data));
