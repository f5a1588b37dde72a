//! Walbrook sink for PostgreSQL.
//!
//! **Status: not built yet** (issue #7).
