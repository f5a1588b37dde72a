//! Per-subject continuity of what the runner received (docs/protocol.md §3.7): every change
//! message names the change message before it on its subject (`Walbrook-Previous`). A
//! message whose predecessor the target neither holds nor received in this run means the
//! stream lost messages before they were delivered (expired by the stream's limits, or
//! purged): a gap, which stops the runner instead of being skipped.
//!
//! What the target holds without this run is the [`Floor`], fixed when the runner first
//! subscribes: the sink's checkpoint; for a sink without one, the durable consumer's
//! acknowledged floor (complete when nothing after it left the stream, lost otherwise);
//! nothing for a new consumer reading from the beginning; anything for a consumer that
//! chose to start later (`new`, a sequence, a time).

use std::collections::HashMap;
use std::sync::Arc;

use walbrook_protocol::{MessageId, Previous};

/// What the target holds of the stream without this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floor {
    /// Everything up to this message (a checkpoint, or the message at the durable consumer's
    /// acknowledged floor).
    At(MessageId),
    /// Everything the stream held before the durable consumer's resume point, which the
    /// stream still holds whole from there: a message named by the first one of a subject
    /// was received before.
    Complete,
    /// Messages after the durable consumer's acknowledged floor left the stream before it got
    /// them: a first message of a subject that names one it has not received may name a lost
    /// one.
    Lost,
    /// Nothing: a new consumer reading the stream from its beginning.
    Nothing,
    /// The consumer chose where to start (`new`, a sequence, a time): what came before is
    /// not its to hold.
    Chosen,
}

/// What one message means for continuity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It follows what was received (or repeats it).
    Continues,
    /// The producer could not name its predecessor (`unknown`): continuity is not verified.
    Unverified,
    /// It names a predecessor that was neither received nor held by the target.
    Gap {
        /// The message that never arrived.
        missing: MessageId,
    },
}

/// The last message received per subject in this run, and the floor.
#[derive(Debug)]
pub(crate) struct Chains {
    floor: Floor,
    last: HashMap<Arc<str>, MessageId>,
}

impl Chains {
    /// No message received yet; what the target holds is `floor`.
    pub(crate) fn new(floor: Floor) -> Chains {
        Chains {
            floor,
            last: HashMap::new(),
        }
    }

    /// The floor this run checks against.
    pub(crate) fn floor(&self) -> Floor {
        self.floor
    }

    /// Observes message `id` on `subject`, which names `previous`.
    pub(crate) fn observe(
        &mut self,
        subject: &Arc<str>,
        id: MessageId,
        previous: Previous,
    ) -> Verdict {
        let verdict = match (self.last.get(subject).copied(), previous) {
            // A repeat (a redelivery): nothing new.
            (Some(last), _) if id <= last => return Verdict::Continues,
            (Some(last), Previous::Id(p)) if p > last => Verdict::Gap { missing: p },
            (Some(_), Previous::Unknown) => Verdict::Unverified,
            (Some(_), _) => Verdict::Continues,
            (None, Previous::First) => Verdict::Continues,
            (None, Previous::Unknown) => match self.floor {
                Floor::Chosen | Floor::Complete => Verdict::Continues,
                _ => Verdict::Unverified,
            },
            (None, Previous::Id(p)) => match self.floor {
                Floor::At(held) if p <= held => Verdict::Continues,
                Floor::Chosen | Floor::Complete => Verdict::Continues,
                Floor::At(_) | Floor::Lost | Floor::Nothing => Verdict::Gap { missing: p },
            },
        };
        if !matches!(verdict, Verdict::Gap { .. }) {
            self.last.insert(Arc::clone(subject), id);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walbrook_protocol::Lsn;

    fn id(lsn: u64, ordinal: u64) -> MessageId {
        MessageId::new(Lsn(lsn), ordinal)
    }

    #[test]
    fn a_chain_that_names_what_came_before_continues() {
        let subject: Arc<str> = "r.d.wal.public.t".into();
        let mut chains = Chains::new(Floor::At(id(100, 0)));
        assert_eq!(
            chains.observe(&subject, id(200, 0), Previous::Id(id(100, 0))),
            Verdict::Continues
        );
        assert_eq!(
            chains.observe(&subject, id(300, 2), Previous::Id(id(200, 0))),
            Verdict::Continues
        );
        // A redelivery of an older message.
        assert_eq!(
            chains.observe(&subject, id(200, 0), Previous::Id(id(100, 0))),
            Verdict::Continues
        );
    }

    #[test]
    fn a_predecessor_past_the_floor_never_received_is_a_gap() {
        let subject: Arc<str> = "r.d.wal.public.t".into();
        let mut chains = Chains::new(Floor::At(id(100, 5)));
        assert_eq!(
            chains.observe(&subject, id(300, 0), Previous::Id(id(200, 0))),
            Verdict::Gap {
                missing: id(200, 0)
            }
        );
        // Still a gap when it comes again: nothing was recorded.
        assert_eq!(
            chains.observe(&subject, id(300, 0), Previous::Id(id(200, 0))),
            Verdict::Gap {
                missing: id(200, 0)
            }
        );
        // Within the run: a message after the last one received that names another.
        let mut chains = Chains::new(Floor::Chosen);
        assert_eq!(
            chains.observe(&subject, id(10, 0), Previous::Id(id(5, 0))),
            Verdict::Continues
        );
        assert_eq!(
            chains.observe(&subject, id(30, 0), Previous::Id(id(20, 0))),
            Verdict::Gap { missing: id(20, 0) }
        );
    }

    #[test]
    fn the_floor_decides_for_a_subjects_first_message() {
        let subject: Arc<str> = "r.d.wal.public.t".into();
        let first = |floor| Chains::new(floor).observe(&subject, id(9, 0), Previous::Id(id(8, 0)));
        assert_eq!(first(Floor::At(id(8, 0))), Verdict::Continues);
        assert_eq!(first(Floor::At(id(8, 1))), Verdict::Continues);
        assert_eq!(
            first(Floor::At(id(7, 9))),
            Verdict::Gap { missing: id(8, 0) }
        );
        assert_eq!(first(Floor::Complete), Verdict::Continues);
        assert_eq!(first(Floor::Chosen), Verdict::Continues);
        assert_eq!(first(Floor::Lost), Verdict::Gap { missing: id(8, 0) });
        assert_eq!(first(Floor::Nothing), Verdict::Gap { missing: id(8, 0) });
        // The subject's first message ever continues whatever the floor.
        for floor in [Floor::At(id(1, 0)), Floor::Lost, Floor::Nothing] {
            assert_eq!(
                Chains::new(floor).observe(&subject, id(9, 0), Previous::First),
                Verdict::Continues
            );
        }
        // `unknown` is reported, never taken for a gap or for continuity.
        assert_eq!(
            Chains::new(Floor::At(id(1, 0))).observe(&subject, id(9, 0), Previous::Unknown),
            Verdict::Unverified
        );
        assert_eq!(
            Chains::new(Floor::Complete).observe(&subject, id(9, 0), Previous::Unknown),
            Verdict::Continues
        );
    }

    #[test]
    fn subjects_are_chained_apart() {
        let a: Arc<str> = "r.d.wal.public.a".into();
        let b: Arc<str> = "r.d.wal.public.b".into();
        let mut chains = Chains::new(Floor::Nothing);
        assert_eq!(
            chains.observe(&a, id(1, 0), Previous::First),
            Verdict::Continues
        );
        assert_eq!(
            chains.observe(&b, id(2, 0), Previous::First),
            Verdict::Continues
        );
        assert_eq!(
            chains.observe(&a, id(3, 0), Previous::Id(id(1, 0))),
            Verdict::Continues
        );
        assert_eq!(
            chains.observe(&b, id(4, 0), Previous::Id(id(2, 0))),
            Verdict::Continues
        );
    }
}
