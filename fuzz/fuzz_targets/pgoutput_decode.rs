//! `walbrook_producer::pgoutput::decode` on arbitrary bytes: it must never panic, and
//! whatever it accepts must re-encode to a message of the same length that decodes to the
//! same value (so no field is skipped, misread or invented).
//!
//! The body is `walbrook_fuzz::targets::pgoutput_decode::run`, which the crate's tests also run on every
//! committed seed and crash reproducer (`tests/targets.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walbrook_fuzz::targets::pgoutput_decode::run(data));
