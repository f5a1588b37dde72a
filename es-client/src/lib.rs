//! Walbrook sink for Elasticsearch and OpenSearch.
//!
//! **Status: not built yet** (issue #7).
