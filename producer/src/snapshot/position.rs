//! The consistent position P of a snapshot, and the wait that makes every later read see
//! every transaction committed before it.
//!
//! ```text
//!  1. P  = pg_current_wal_insert_lsn()                       (statement 1)
//!  2. X  = pg_current_xact_id(), S0 = pg_current_snapshot()  (statement 2, after 1)
//!     W  = xip(S0) ∪ [xmax(S0), X)    transactions that may still be finishing
//!  3. wait until every xid of W is visible in a fresh pg_current_snapshot()
//!  4. read (chunks, each its own statement / the one cursor transaction)
//! ```
//!
//! Why it holds. WAL space is reserved under one lock, so a commit record starts below P
//! exactly when it was inserted before step 1. Such a transaction T is, at step 2, either
//! finished in the ProcArray (then every later snapshot sees it) or still running; a
//! running transaction with an xid is listed in `xip(S0)` unless its xid is at or above
//! `xmax(S0)` (= latest completed xid + 1), and its xid is below X, which was assigned
//! after T's. So T ∈ W or T is already finished. Step 3 waits until each member of W has
//! left the ProcArray: from then on every snapshot sees every transaction whose commit
//! LSN is below P (committed ones as visible; aborted ones have no effect). Polling
//! snapshots, not `pg_xact_status`, matters: the commit log says "committed" before the
//! ProcArray entry is cleared.
//!
//! Each chunk therefore reflects the table as of some moment after P: every change
//! committed below P, plus possibly some committed at or after P. Change events carry
//! full row images (deletes carry the key), so applying the snapshot rows and then every
//! change event whose commit LSN is **at or after P**, in order, as idempotent upserts and
//! deletes by key, yields exactly the source table. Events below P are already in the
//! rows and must not be replayed (a stale image could resurrect a deleted row).

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::lsn::Lsn;

/// P and the transactions to wait for.
#[derive(Debug, Clone)]
pub struct ConsistentPoint {
    /// The snapshot's position.
    pub position: Lsn,
    /// S0 in `pg_snapshot` text form.
    snapshot: String,
    /// X, the xid assigned after S0 (exclusive upper end of the range to wait for).
    xid: i64,
}

/// Takes P, S0 and X (steps 1 and 2). `sql` must be in autocommit mode.
pub async fn take(sql: &Client) -> Result<ConsistentPoint, tokio_postgres::Error> {
    let position: String = sql
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let row = sql
        .query_one(
            "SELECT pg_current_snapshot()::text, pg_current_xact_id()::text::bigint",
            &[],
        )
        .await?;
    Ok(ConsistentPoint {
        position: position.parse().unwrap_or(Lsn::ZERO),
        snapshot: row.get(0),
        xid: row.get(1),
    })
}

/// How many transactions of W are still running.
async fn still_running(
    sql: &Client,
    point: &ConsistentPoint,
) -> Result<i64, tokio_postgres::Error> {
    Ok(sql
        .query_one(
            "WITH s0 AS (SELECT $1::text::pg_snapshot AS s)
             SELECT count(*) FROM (
                 SELECT pg_snapshot_xip(s) AS x FROM s0
                 UNION ALL
                 SELECT g::text::xid8
                   FROM s0, generate_series(pg_snapshot_xmax(s)::text::bigint, $2::bigint - 1) g
             ) w
             WHERE NOT pg_visible_in_snapshot(w.x, pg_current_snapshot())",
            &[&point.snapshot, &point.xid],
        )
        .await?
        .get(0))
}

/// Step 3: waits until every transaction of W has finished. Returns `Ok(false)` if
/// cancelled first. Transactions that stay open (an idle session holding an xid) delay the
/// snapshot's start; the wait is logged every 30 s.
pub async fn wait_visible(
    sql: &Client,
    point: &ConsistentPoint,
    cancel: &CancellationToken,
) -> Result<bool, tokio_postgres::Error> {
    let started = Instant::now();
    let mut logged = started;
    let mut delay = Duration::from_millis(5);
    loop {
        let running = still_running(sql, point).await?;
        if running == 0 {
            return Ok(true);
        }
        if logged.elapsed() >= Duration::from_secs(30) {
            tracing::warn!(
                transactions = running,
                waited = ?started.elapsed(),
                "snapshot waits for transactions that were open when it was requested"
            );
            logged = Instant::now();
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(false),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}
