//! The bodies of the cargo-fuzz targets (`fuzz_targets/<name>.rs` call `<name>::run`), in
//! the library so that `tests/targets.rs` runs every committed seed and crash reproducer
//! through exactly the code the fuzzer runs, without building the fuzzer.

pub mod pgoutput_decode;
pub mod schema_lookup;
pub mod single_object;
pub mod snapshot_rpc;
pub mod text_parsers;
