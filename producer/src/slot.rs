//! The replication slot at start, checked against the change stream (docs/protocol.md §3.8):
//! a slot that is missing or invalidated while the stream already holds events of this
//! database means changes between the stream's newest event and a new slot's start are gone.
//! The producer refuses to stream across that gap, naming both positions and the fix, unless
//! the operator acknowledges it (`walbrook produce --accept-gap`): the slot is then created
//! and a gap marker published on every table's subject before any new event, so that
//! consumers reading across it stop instead of skipping it.

use async_nats::HeaderMap;
use tokio_postgres::Client;
use walbrook_protocol::{MessageId, Subjects, headers};

use crate::config::{ProducerConfig, TableName};
use crate::lsn::Lsn;
use crate::pipeline::ProducerError;
use crate::setup::{self, SetupProblem, SlotState};

/// Makes sure the slot can stream: creates a missing one when the change stream holds no
/// event yet (`stored` is the newest stored position); refuses a gap unless
/// `config.accept_gap`, in which case the slot is (re)created and the gap marked on the
/// subjects of `tables`.
pub async fn ensure(
    sql: &Client,
    config: &ProducerConfig,
    stored: Option<(Lsn, u64)>,
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    tables: &[TableName],
) -> Result<(), ProducerError> {
    let setup_error = |p: SetupProblem| ProducerError::Setup(vec![p]);
    let state = setup::slot_state(sql, config).await.map_err(setup_error)?;
    let why = match (&state, stored) {
        (SlotState::Usable, _) => return Ok(()),
        (SlotState::Missing, None) => {
            setup::create_slot(sql, config).await.map_err(setup_error)?;
            return Ok(());
        }
        (SlotState::Missing, Some(_)) => format!(
            "replication slot {} does not exist (dropped, or not carried over by a failover)",
            config.slot
        ),
        (SlotState::Lost { confirmed }, _) => format!(
            "replication slot {} is invalidated (wal_status lost: PostgreSQL removed WAL it \
             needed, past max_slot_wal_keep_size; it had confirmed up to {confirmed})",
            config.slot
        ),
    };
    let stored_text = stored.map_or("no event".to_string(), |(lsn, ordinal)| {
        format!("events up to {lsn} (ordinal {ordinal})")
    });
    let now: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| ProducerError::Postgres {
            context: "reading the current WAL position",
            detail: e.to_string(),
        })?
        .get(0);
    let stream = subjects.stream_name(walbrook_protocol::StreamKind::Wal);
    if !config.accept_gap {
        return Err(setup_error(SetupProblem {
            problem: format!(
                "{why}, while stream {stream} holds {stored_text}: the changes committed after \
                 those and before a new slot would start (now at {now}) are not in the stream, \
                 and no slot can bring them back"
            ),
            hint: "re-bootstrap every consumer of this database from a snapshot (a new \
                   consumer with --snapshot), then start once with `walbrook produce \
                   --accept-gap`: it creates the slot and marks the gap on every table's \
                   subject, where consumers that read across it stop"
                .into(),
        }));
    }
    if matches!(state, SlotState::Lost { .. }) {
        setup::drop_slot(sql, config).await.map_err(setup_error)?;
    }
    let start = setup::create_slot(sql, config).await.map_err(setup_error)?;
    let start: Lsn = start.parse().map_err(|e| ProducerError::Postgres {
        context: "reading the new slot's position",
        detail: format!("{e}"),
    })?;
    let range = format!(
        "{}..{start}",
        stored.map_or("none".to_string(), |(lsn, _)| lsn.to_string())
    );
    tracing::warn!(
        slot = %config.slot,
        gap = %range,
        "{why}: accepted (--accept-gap); the slot starts at {start} and every table's subject \
         gets a gap marker"
    );
    for table in tables {
        publish_marker(js, subjects, table, start, &range).await?;
    }
    Ok(())
}

/// The gap marker of `table` (docs/protocol.md §3.8): an empty message with `Walbrook-Gap`,
/// positioned at the new slot's start, with the id no event can have there.
async fn publish_marker(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    table: &TableName,
    start: Lsn,
    range: &str,
) -> Result<(), ProducerError> {
    let subject = subjects.change(&table.schema, &table.table);
    let mut marker = HeaderMap::new();
    let id = MessageId::new(start, u64::MAX);
    marker.insert("Nats-Msg-Id", id.to_string().as_str());
    marker.insert(headers::GAP, range);
    marker.insert(headers::COMMIT_LSN, start.to_string().as_str());
    let failed =
        |e: String| ProducerError::Nats(format!("publishing the gap marker on {subject}: {e}"));
    js.publish_with_headers(subject.clone(), marker, bytes::Bytes::new())
        .await
        .map_err(|e| failed(e.to_string()))?
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(())
}
