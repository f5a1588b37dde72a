//! Snapshot RPC documents and control-message bodies (docs/protocol.md §8), shared by the
//! producer that answers and publishes them and the client that sends and reads them.

use serde::{Deserialize, Serialize};

/// Control message kinds (header [`crate::headers::SNAPSHOT_CONTROL`]).
pub mod control {
    /// First message of a snapshot; body: [`super::SnapshotInfo`].
    pub const BEGIN: &str = "begin";
    /// Last message of a complete snapshot; body: [`super::SnapshotEnd`].
    pub const END: &str = "end";
    /// Last message of an aborted snapshot; body: [`super::SnapshotEnd`] with `error`.
    pub const FAILED: &str = "failed";
}

/// Framing of a snapshot row batch (docs/protocol.md §8.2): the same framing as batched
/// change messages, [`crate::batch`].
pub use crate::batch;

/// A request on `<root>.<db>.rpc.snapshot`. Unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Schema of the table (exact, case-sensitive name).
    pub schema: String,
    /// Table name (exact, case-sensitive name).
    pub table: String,
    /// Only rows matching this condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<RowFilter>,
    /// Rows per chunk (1 to 100,000); the producer's `snapshot.chunk_size` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
}

/// A row condition `<column> <op> <value>`, never spliced as SQL: the column must exist,
/// the operator is one of [`FilterOp`], and the value is passed as a typed literal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFilter {
    /// Column name (exact).
    pub column: String,
    /// Comparison.
    pub op: FilterOp,
    /// The value in PostgreSQL's text input form for the column's type (a JSON string,
    /// number or boolean); absent for `is_null` / `is_not_null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

/// Filter operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterOp {
    /// `=`
    #[serde(rename = "=")]
    Eq,
    /// `<>`
    #[serde(rename = "<>", alias = "!=")]
    Ne,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `IS NULL`
    #[serde(rename = "is_null")]
    IsNull,
    /// `IS NOT NULL`
    #[serde(rename = "is_not_null")]
    IsNotNull,
}

impl FilterOp {
    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            FilterOp::Eq => "=",
            FilterOp::Ne => "<>",
            FilterOp::Lt => "<",
            FilterOp::Le => "<=",
            FilterOp::Gt => ">",
            FilterOp::Ge => ">=",
            FilterOp::IsNull => "IS NULL",
            FilterOp::IsNotNull => "IS NOT NULL",
        }
    }

    /// Whether the operator takes a value.
    pub fn takes_value(self) -> bool {
        !matches!(self, FilterOp::IsNull | FilterOp::IsNotNull)
    }
}

/// State of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// Rows are being published.
    Running,
    /// Every row was published and the `end` message stored.
    Done,
    /// Aborted; the `failed` message says why.
    Failed,
}

impl SnapshotStatus {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotStatus::Running => "running",
            SnapshotStatus::Done => "done",
            SnapshotStatus::Failed => "failed",
        }
    }

    /// Parses the lower-case name.
    pub fn parse(text: &str) -> Option<SnapshotStatus> {
        Some(match text {
            "running" => SnapshotStatus::Running,
            "done" => SnapshotStatus::Done,
            "failed" => SnapshotStatus::Failed,
            _ => return None,
        })
    }
}

/// A snapshot's description: the accepted answer of the snapshot RPC, the body of the
/// `begin` message, and an entry of the listing RPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Snapshot id (a NATS token: letters, digits, `-`).
    pub id: String,
    /// Source database.
    pub database: String,
    /// Schema of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The subject carrying the snapshot's messages.
    pub subject: String,
    /// The JetStream stream holding them.
    pub stream: String,
    /// The consistent position P (`X/X`): applying the rows, then every change event whose
    /// commit LSN is at or after P, reproduces the table.
    pub position: String,
    /// Fingerprint of the rows' writer schema (the table's change-event schema).
    pub fingerprint: String,
    /// PostgreSQL's row estimate when the snapshot started (`None` if never analysed).
    pub approx_rows: Option<i64>,
    /// Rows per chunk.
    pub chunk_size: u32,
    /// The row filter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<RowFilter>,
    /// `true`: read in key-ordered chunks, each in its own short transaction; `false`: the
    /// table has no primary key or replica identity index and is read in one transaction.
    pub keyed: bool,
    /// State when this document was made.
    pub status: SnapshotStatus,
    /// Rows published so far (all rows once `done`).
    pub rows: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// End time, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
}

/// Body of the `end` and `failed` messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEnd {
    /// Snapshot id.
    pub id: String,
    /// Rows published (for `end`: exactly the row messages before it).
    pub rows: u64,
    /// Why the snapshot failed (`failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request on `<root>.<db>.rpc.snapshots`: every field narrows the listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// Only this snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Only tables of this schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Only this table (with `schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// The answer of the listing RPC, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListReply {
    /// Matching snapshots whose data is still retained.
    pub snapshots: Vec<SnapshotInfo>,
    /// More snapshots matched than fit in one NATS message: `snapshots` holds the newest
    /// that fit. Narrow the request (table, id) to see the others.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl ListReply {
    /// The reply for `snapshots` (oldest first), keeping the newest whose JSON fits in
    /// `max_bytes`; `truncated` tells whether any were left out.
    pub fn within(snapshots: Vec<SnapshotInfo>, max_bytes: usize) -> ListReply {
        // `{"snapshots":[...],"truncated":true}`: the envelope, then one comma per entry.
        const ENVELOPE: usize = 40;
        let mut budget = max_bytes.saturating_sub(ENVELOPE);
        let mut keep = 0;
        for info in snapshots.iter().rev() {
            let len = serde_json::to_vec(info).map_or(usize::MAX, |v| v.len()) + 1;
            if len > budget {
                break;
            }
            budget -= len;
            keep += 1;
        }
        let truncated = keep < snapshots.len();
        let mut snapshots = snapshots;
        snapshots.drain(..snapshots.len() - keep);
        ListReply {
            snapshots,
            truncated,
        }
    }
}

/// The body of an RPC error answer (also given as `Nats-Service-Error` headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcErrorBody {
    /// The error.
    pub error: RpcError,
}

/// An RPC error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    /// 400 malformed request, 403 table not published, 404 unknown table, 429 too many
    /// concurrent snapshots, 500 internal, 503 database or NATS unavailable.
    pub code: u16,
    /// What is wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: usize) -> SnapshotInfo {
        SnapshotInfo {
            id: format!("s{id}"),
            database: "db".into(),
            schema: "public".into(),
            table: "t".into(),
            subject: format!("R.db.snap.public.t.s{id}"),
            stream: "R_db_SNAP".into(),
            position: "0/16B3748".into(),
            fingerprint: "0011223344556677".into(),
            approx_rows: Some(1000),
            chunk_size: 10_000,
            filter: None,
            keyed: true,
            status: SnapshotStatus::Done,
            rows: 1000,
            error: None,
            started_at: "2026-11-21T00:00:00Z".into(),
            ended_at: None,
        }
    }

    #[test]
    fn a_listing_keeps_the_newest_snapshots_that_fit() {
        let all: Vec<SnapshotInfo> = (0..100).map(info).collect();
        let whole = ListReply::within(all.clone(), 1 << 20);
        assert!(!whole.truncated);
        assert_eq!(whole.snapshots, all);
        let json = serde_json::to_string(&whole).unwrap();
        assert!(!json.contains("truncated"), "omitted when false: {json}");

        let limit = 4096;
        let cut = ListReply::within(all.clone(), limit);
        assert!(cut.truncated);
        let body = serde_json::to_vec(&cut).unwrap();
        assert!(body.len() <= limit, "{} bytes", body.len());
        let kept = cut.snapshots.len();
        assert!(kept > 5 && kept < 100, "kept {kept}");
        assert_eq!(cut.snapshots, all[100 - kept..], "the newest, oldest first");
        let back: ListReply = serde_json::from_slice(&body).unwrap();
        assert!(back.truncated);
        // One more entry would not have fit.
        let more = ListReply {
            snapshots: all[100 - kept - 1..].to_vec(),
            truncated: true,
        };
        assert!(serde_json::to_vec(&more).unwrap().len() > limit - 40);

        let none = ListReply::within(all, 10);
        assert!(none.truncated && none.snapshots.is_empty());
    }

    #[test]
    fn requests_reject_unknown_fields_and_parse_filters() {
        assert!(
            serde_json::from_str::<SnapshotRequest>(r#"{"schema":"a","table":"b","x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<SnapshotRequest>(r#"{"schema":"a"}"#).is_err());
        let r: SnapshotRequest = serde_json::from_str(
            r#"{"schema":"a","table":"b","filter":{"column":"c","op":">=","value":5},"chunk_size":10}"#,
        )
        .unwrap();
        assert_eq!(r.filter.unwrap().op, FilterOp::Ge);
        assert!(serde_json::from_str::<RowFilter>(r#"{"column":"c","op":"; DROP"}"#).is_err());
    }
}
