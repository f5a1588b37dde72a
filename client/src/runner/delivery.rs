//! Continuity of a durable consumer's deliveries within one subscription.
//!
//! JetStream numbers every delivery of a consumer (`consumer_sequence`, 1, 2, …;
//! redeliveries get a new number too). A delivery that never reached the runner — a pull
//! response lost without an error from the client library, or a message taken by another
//! client pulling from the same durable consumer — leaves a hole in that numbering. Without
//! this check the hole would only be redelivered after `ack_wait`, when the runner would skip
//! it as already processed (its stream sequence is below later applied events): a silent
//! loss. The runner instead applies what came before the hole and recreates the consumer
//! after the last applied event.

/// What one delivery says about the continuity of the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Continuity {
    /// The next delivery (or the first of the subscription).
    Next,
    /// A number at or below one already seen (not a gap; nothing was missed).
    Repeat,
    /// Deliveries `expected..got` never arrived.
    Gap {
        /// The delivery sequence that should have come.
        expected: u64,
        /// The one that came.
        got: u64,
    },
}

/// Tracks the consumer sequences of one subscription (a new one starts at 1).
#[derive(Debug, Default, Clone)]
pub(crate) struct DeliverySequence {
    last: u64,
}

impl DeliverySequence {
    /// Forgets everything: a new consumer numbers its deliveries from 1 again.
    pub(crate) fn reset(&mut self) {
        self.last = 0;
    }

    /// Checks a delivery's consumer sequence. `0` means "unknown" (not from a consumer) and
    /// is never a gap. After a gap the tracker does not move: the caller recreates the
    /// consumer and [`DeliverySequence::reset`]s it.
    pub(crate) fn observe(&mut self, consumer_sequence: u64) -> Continuity {
        if consumer_sequence == 0 || consumer_sequence <= self.last {
            return Continuity::Repeat;
        }
        let expected = self.last + 1;
        if consumer_sequence != expected {
            return Continuity::Gap {
                expected,
                got: consumer_sequence,
            };
        }
        self.last = consumer_sequence;
        Continuity::Next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_deliveries_are_continuous() {
        let mut d = DeliverySequence::default();
        for s in 1..=5 {
            assert_eq!(d.observe(s), Continuity::Next);
        }
    }

    #[test]
    fn a_missing_delivery_is_a_gap_and_the_tracker_waits_for_a_reset() {
        let mut d = DeliverySequence::default();
        assert_eq!(d.observe(1), Continuity::Next);
        assert_eq!(d.observe(2), Continuity::Next);
        assert_eq!(
            d.observe(4),
            Continuity::Gap {
                expected: 3,
                got: 4
            }
        );
        // Still a gap for anything after it until the consumer is recreated.
        assert_eq!(
            d.observe(5),
            Continuity::Gap {
                expected: 3,
                got: 5
            }
        );
        d.reset();
        assert_eq!(d.observe(1), Continuity::Next);
    }

    #[test]
    fn the_first_delivery_of_a_subscription_must_be_number_one() {
        let mut d = DeliverySequence::default();
        assert_eq!(
            d.observe(2),
            Continuity::Gap {
                expected: 1,
                got: 2
            }
        );
    }

    #[test]
    fn repeats_and_unknown_numbers_are_not_gaps() {
        let mut d = DeliverySequence::default();
        assert_eq!(d.observe(1), Continuity::Next);
        assert_eq!(d.observe(2), Continuity::Next);
        assert_eq!(d.observe(2), Continuity::Repeat);
        assert_eq!(d.observe(1), Continuity::Repeat);
        assert_eq!(d.observe(0), Continuity::Repeat);
        assert_eq!(d.observe(3), Continuity::Next);
    }
}
