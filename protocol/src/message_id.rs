//! The identity of a change message (docs/protocol.md §3.3): its `Nats-Msg-Id`,
//! `<commit LSN as 16 hex digits>-<ordinal of its first event>`, and the per-subject
//! predecessor a change message names in `Walbrook-Previous` (§3.7).

use std::fmt;
use std::str::FromStr;

use crate::lsn::Lsn;

/// A change message's `Nats-Msg-Id`: the commit LSN and the ordinal of its (first) event.
/// Orders as positions do: by commit LSN, then ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// The ordinal of the message's first event in its transaction.
    pub ordinal: u64,
}

impl MessageId {
    /// The id of a message whose (first) event is `ordinal` of the transaction committed at
    /// `commit_lsn`.
    pub fn new(commit_lsn: Lsn, ordinal: u64) -> MessageId {
        MessageId {
            commit_lsn,
            ordinal,
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.commit_lsn.to_fixed_hex(), self.ordinal)
    }
}

/// Why a text is not a change message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid change message id {0:?}: expected <16 hex digits>-<ordinal>")]
pub struct ParseMessageIdError(String);

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseMessageIdError(text.to_string());
        let (lsn, ordinal) = text.split_once('-').ok_or_else(error)?;
        if lsn.len() != 16 || !lsn.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error());
        }
        if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        Ok(MessageId {
            commit_lsn: Lsn(u64::from_str_radix(lsn, 16).map_err(|_| error())?),
            ordinal: ordinal.parse().map_err(|_| error())?,
        })
    }
}

/// What a change message says of the change message before it on its subject
/// (`Walbrook-Previous`, docs/protocol.md §3.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// No header: no change message was published on the subject before (the stream never
    /// lost one when the producer looked).
    First,
    /// The header's value `unknown`: the producer found no earlier message on the subject in
    /// a stream that has lost messages (expired or purged), so it cannot name it.
    Unknown,
    /// The id of the previous change message on the subject.
    Id(MessageId),
}

impl Previous {
    /// The header's value for [`Previous::Unknown`].
    pub const UNKNOWN: &'static str = "unknown";

    /// Reads the header's value (`None`: the header is absent). A value that is neither an
    /// id nor `unknown` is an error.
    pub fn parse(value: Option<&str>) -> Result<Previous, ParseMessageIdError> {
        match value {
            None => Ok(Previous::First),
            Some(Previous::UNKNOWN) => Ok(Previous::Unknown),
            Some(id) => id.parse().map(Previous::Id),
        }
    }

    /// The header's value, `None` for [`Previous::First`] (no header).
    pub fn header_value(&self) -> Option<String> {
        match self {
            Previous::First => None,
            Previous::Unknown => Some(Previous::UNKNOWN.to_string()),
            Previous::Id(id) => Some(id.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_sortably_and_parse_back() {
        let id = MessageId::new(Lsn(0x900_0000_0028), 7);
        assert_eq!(id.to_string(), "0000090000000028-7");
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        let max = MessageId::new(Lsn(u64::MAX), u64::MAX);
        assert_eq!(max.to_string().parse::<MessageId>(), Ok(max));
        assert!(MessageId::new(Lsn(1), 9) < MessageId::new(Lsn(1), 10));
        assert!(MessageId::new(Lsn(1), 10) < MessageId::new(Lsn(2), 0));
    }

    #[test]
    fn other_texts_are_not_ids() {
        for bad in [
            "",
            "-1",
            "16B3F20-1",
            "00000000016B3F20",
            "00000000016B3F20-",
            "00000000016B3F20-x",
            "00000000016B3F2G-1",
            "00000000016B3F20-+1",
            "schema-0123456789abcdef",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn previous_reads_its_three_forms() {
        assert_eq!(Previous::parse(None), Ok(Previous::First));
        assert_eq!(Previous::parse(Some("unknown")), Ok(Previous::Unknown));
        let id = MessageId::new(Lsn(5), 0);
        assert_eq!(Previous::parse(Some(&id.to_string())), Ok(Previous::Id(id)));
        assert!(Previous::parse(Some("soon")).is_err());
        for p in [Previous::First, Previous::Unknown, Previous::Id(id)] {
            assert_eq!(Previous::parse(p.header_value().as_deref()), Ok(p));
        }
    }
}
