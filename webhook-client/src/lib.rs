//! Walbrook sink for HTTP webhooks.
//!
//! **Status: not built yet** (issue #7).
