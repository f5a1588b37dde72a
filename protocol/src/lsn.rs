//! PostgreSQL WAL positions and transaction ids.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL log sequence number: a byte position in the write-ahead log.
///
/// Displays and parses in PostgreSQL's own form, `X/X` in uppercase hex without
/// padding (`0/16B3F20`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position `0/0`.
    pub const ZERO: Lsn = Lsn(0);

    /// The position as 16 uppercase hex digits, for identifiers that must sort.
    pub fn to_fixed_hex(self) -> String {
        format!("{:016X}", self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a text is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hex numbers separated by '/', e.g. 0/16B3F20")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseLsnError(text.to_string());
        let (high, low) = text.split_once('/').ok_or_else(error)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            u32::from_str_radix(p, 16).map_err(|_| error())
        };
        Ok(Lsn((u64::from(part(high)?) << 32) | u64::from(part(low)?)))
    }
}

/// A PostgreSQL transaction id as carried by pgoutput (32 bits, no epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Xid {
    /// The 64-bit transaction id with these low 32 bits that lies nearest to `anchor`
    /// (within ±2³¹). PostgreSQL keeps every transaction a replication stream can still
    /// deliver within 2³¹ ids of the newest one (wraparound protection), so widening each
    /// `Begin`'s xid against the previous transaction's full id — the first one against
    /// `pg_snapshot_xmax(pg_current_snapshot())` — yields PostgreSQL's own `xid8`, the
    /// value `pg_current_xact_id()` returned inside that transaction.
    pub fn widen(self, anchor: FullXid) -> FullXid {
        let delta = i64::from(self.0.wrapping_sub(anchor.0 as u32) as i32);
        FullXid(anchor.0.wrapping_add_signed(delta))
    }
}

/// A 64-bit transaction id (`xid8`): epoch in the high 32 bits, xid in the low 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FullXid(pub u64);

impl FullXid {
    /// The wraparound epoch.
    pub fn epoch(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The 32-bit xid pgoutput carries.
    pub fn xid(self) -> Xid {
        Xid(self.0 as u32)
    }
}

impl fmt::Display for FullXid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::{FullXid, Xid};

    #[test]
    fn xids_widen_to_the_nearest_full_id() {
        // Same epoch, behind and ahead of the anchor.
        assert_eq!(Xid(100).widen(FullXid(150)), FullXid(100));
        assert_eq!(Xid(200).widen(FullXid(150)), FullXid(200));
        // Epoch 3, anchor just after the wrap, xid just before it: previous epoch.
        let anchor = FullXid((3 << 32) | 5);
        assert_eq!(
            Xid(u32::MAX - 2).widen(anchor),
            FullXid((2 << 32) | u64::from(u32::MAX - 2))
        );
        // Anchor just before the wrap, xid just after it: next epoch.
        let anchor = FullXid((3 << 32) | u64::from(u32::MAX - 1));
        assert_eq!(Xid(7).widen(anchor), FullXid((4 << 32) | 7));
        assert_eq!(Xid(7).widen(anchor).epoch(), 4);
        assert_eq!(Xid(7).widen(anchor).xid(), Xid(7));
        // A chain of widenings across several wraps stays exact.
        let mut anchor = FullXid(10);
        let mut truth: u64 = 10;
        for _ in 0..20 {
            truth += 1_500_000_000;
            anchor = Xid(truth as u32).widen(anchor);
            assert_eq!(anchor, FullXid(truth));
        }
    }

    use super::*;

    #[test]
    fn formats_like_postgresql() {
        assert_eq!(Lsn(0x16B_3F20).to_string(), "0/16B3F20");
        assert_eq!(Lsn(0x0000_0054_D821_3EB8).to_string(), "54/D8213EB8");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0x16B_3F20).to_fixed_hex(), "00000000016B3F20");
    }

    #[test]
    fn parses_what_it_formats() {
        for value in [0, 1, 0x16B_3F20, 0x54_D821_3EB8, u64::MAX] {
            assert_eq!(Lsn(value).to_string().parse::<Lsn>(), Ok(Lsn(value)));
        }
        assert_eq!("54/d8213eb8".parse::<Lsn>(), Ok(Lsn(0x54_D821_3EB8)));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "0/0/0",
            "G/0",
            "123456789/0",
            "0/-1",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} must be rejected");
        }
    }
}
