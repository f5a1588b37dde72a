//! Cutting the change stream into batches: by count, bytes and time, and for
//! [`Ordering::Stream`] sinks only between source transactions.

use futures::StreamExt;

use super::{Ordering, RunnerOptions};
use crate::error::{Error, ErrorKind};
use crate::event::ChangeEvent;
use crate::subscribe::ChangeStream;

/// Cuts one subscription's stream into batches. It owns the item read past the end of a
/// batch (the next transaction's first), so it lives as long as the subscription, and a
/// collection can run while the previous batch is applied.
#[derive(Debug)]
pub(super) struct Collector {
    carry: Option<Result<ChangeEvent, Error>>,
    max_events: usize,
    max_bytes: usize,
    max_wait: std::time::Duration,
    transaction_wait: std::time::Duration,
    transaction_events: usize,
    /// Batches end only between source transactions.
    aligned: bool,
}

impl Collector {
    pub(super) fn new(options: &RunnerOptions, ordering: Ordering) -> Collector {
        Collector {
            carry: None,
            max_events: options.max_batch_events.max(1),
            max_bytes: options.max_batch_bytes.max(1),
            max_wait: options.max_batch_wait,
            transaction_wait: options.transaction_wait,
            transaction_events: transaction_events(options),
            aligned: ordering == Ordering::Stream,
        }
    }

    /// The next batch of items, in `items` (emptied first; its capacity is reused): waits
    /// for a first one, then for more until a limit or `max_batch_wait`. For
    /// [`Ordering::Stream`] sinks the batch ends between two source transactions (see
    /// [`RunnerOptions::transaction_wait`]). Dropping the future loses nothing that is not
    /// delivered again: its items are not acknowledged.
    pub(super) async fn collect(
        &mut self,
        stream: &mut ChangeStream,
        mut items: Vec<Result<ChangeEvent, Error>>,
    ) -> Vec<Result<ChangeEvent, Error>> {
        items.clear();
        items.reserve(self.max_events);
        let first = match self.carry.take() {
            Some(item) => Some(item),
            None => stream.next().await,
        };
        match first {
            Some(item) => items.push(item),
            None => {
                // The consumer ended: let the caller resubscribe.
                items.push(Err(Error::new(ErrorKind::Nats, "the subscription ended")));
                return items;
            }
        }
        let aligned = self.aligned;
        let mut bytes = item_len(&items[0]);
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            let at_boundary = match items.last() {
                Some(Ok(e)) => e.source().last,
                _ => true,
            };
            let soft_full = items.len() >= self.max_events || bytes >= self.max_bytes;
            let hard_full = items.len() >= self.transaction_events
                || bytes >= self.max_bytes.saturating_mul(16);
            if hard_full {
                if aligned && !at_boundary {
                    tracing::warn!(
                        events = items.len(),
                        "a source transaction exceeds the transaction limits (max_transaction_\
                         events, 16 times max_batch_bytes): it is applied in more than one \
                         target transaction"
                    );
                }
                break;
            }
            if soft_full && (at_boundary || !aligned) {
                break;
            }
            let wait_until = if aligned && !at_boundary {
                deadline.max(tokio::time::Instant::now() + self.transaction_wait)
            } else {
                deadline
            };
            match tokio::time::timeout_at(wait_until, stream.next()).await {
                Ok(Some(item)) => {
                    let new_transaction = match (items.last(), &item) {
                        (Some(Ok(prev)), Ok(next)) => prev.commit_lsn() != next.commit_lsn(),
                        _ => true,
                    };
                    if aligned
                        && new_transaction
                        && (soft_full || tokio::time::Instant::now() >= deadline)
                    {
                        self.carry = Some(item);
                        break;
                    }
                    bytes += item_len(&item);
                    items.push(item);
                }
                Ok(None) | Err(_) => break,
            }
        }
        items
    }
}

/// The most events of one batch that ends inside a source transaction.
pub(super) fn transaction_events(options: &RunnerOptions) -> usize {
    options
        .max_transaction_events
        .max(options.max_batch_events)
        .max(1)
}

/// The payload bytes of an item (what the byte limits count).
fn item_len(item: &Result<ChangeEvent, Error>) -> usize {
    match item {
        Ok(e) => e.payload_len(),
        Err(e) => e.message().map_or(0, |m| m.payload.len()),
    }
}
