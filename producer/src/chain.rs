//! Per-subject continuity of the change stream (docs/protocol.md §3.7): every change message
//! names, in `Walbrook-Previous`, the change message published before it on the same
//! subject, so that a consumer can tell a message it never received (expired by the
//! stream's limits or purged before it got there) from one that never existed.
//!
//! The producer remembers the last id it pushed per subject; a subject it has not published
//! on since it started is looked up in the stream once ([`streams::previous_on_subject`]).
//! Replays after a restart repeat the same header: the first message pushed after the
//! newest stored one names that one.

use std::collections::HashMap;

use async_nats::jetstream::stream;
use walbrook_protocol::{MessageId, Previous};

use crate::streams::{self, StreamError};

/// The last change message pushed per subject.
#[derive(Debug, Default)]
pub struct Chains {
    last: HashMap<String, Previous>,
}

impl Chains {
    /// Nothing known yet: every subject is looked up in the stream on first use.
    pub fn new() -> Chains {
        Chains::default()
    }

    /// What the next message on `subject` names as its predecessor (looked up in `stream`
    /// the first time a subject is used).
    pub async fn previous(
        &mut self,
        stream: &mut stream::Stream,
        subject: &str,
    ) -> Result<Previous, StreamError> {
        if let Some(previous) = self.last.get(subject) {
            return Ok(*previous);
        }
        let previous = streams::previous_on_subject(stream, subject).await?;
        self.last.insert(subject.to_string(), previous);
        Ok(previous)
    }

    /// Message `id` was pushed on `subject`: the next one there names it.
    pub fn pushed(&mut self, subject: &str, id: MessageId) {
        match self.last.get_mut(subject) {
            Some(previous) => *previous = Previous::Id(id),
            None => {
                self.last.insert(subject.to_string(), Previous::Id(id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walbrook_protocol::Lsn;

    #[test]
    fn a_pushed_message_is_the_next_ones_previous_per_subject() {
        let mut chains = Chains::new();
        let a = MessageId::new(Lsn(10), 0);
        let b = MessageId::new(Lsn(20), 3);
        chains.pushed("r.d.wal.public.a", a);
        chains.pushed("r.d.wal.public.b", b);
        assert_eq!(chains.last["r.d.wal.public.a"], Previous::Id(a));
        let c = MessageId::new(Lsn(30), 0);
        chains.pushed("r.d.wal.public.a", c);
        assert_eq!(chains.last["r.d.wal.public.a"], Previous::Id(c));
        assert_eq!(chains.last["r.d.wal.public.b"], Previous::Id(b));
    }
}
