//! Pure mapping between PostgreSQL types/values and Avro schemas/values.
//!
//! **Status: in progress** (issue #3).
