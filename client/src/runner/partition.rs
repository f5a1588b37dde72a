//! Keys and partitions: which events must keep their relative order, and which tables an
//! instance of a scaled-out sink owns.
//!
//! An event's *key* is its table plus the values of its replica-identity columns: taken from
//! `after` for inserts, updates and snapshot rows and from `before` for deletes. An update
//! that changes the key (`UpdateKey`) touches two keys (the old from `before`, the new from
//! `after`), and must stay ordered with the events of both: the runner treats it as a barrier
//! when the two keys fall in different lanes, as it does a `Truncate` (which touches every key
//! of its table). A table without a primary key (REPLICA IDENTITY FULL) has no stable key, so
//! all its events share one key: the table.

use crate::event::{ChangeEvent, Op, Row};
use crate::value_to_json;

/// FNV-1a, 64 bit: a stable hash (the same in every process and version).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn table_bytes(event: &ChangeEvent) -> Vec<u8> {
    let s = event.source();
    let mut out = Vec::with_capacity(s.schema.len() + s.table.len() + 2);
    out.extend_from_slice(s.schema.as_bytes());
    out.push(0);
    out.extend_from_slice(s.table.as_bytes());
    out.push(0);
    out
}

fn row_key(event: &ChangeEvent, row: &Row) -> u64 {
    let mut bytes = table_bytes(event);
    let mut any = false;
    for (column, value) in row.iter() {
        if column.is_key {
            any = true;
            bytes.extend_from_slice(column.name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(value_to_json(value).to_string().as_bytes());
            bytes.push(0);
        }
    }
    if !any {
        // No identity to tell rows apart: the table is the key.
        return stable_hash(&table_bytes(event));
    }
    stable_hash(&bytes)
}

/// The keys an event touches, as stable hashes: one for most events, two for a key-changing
/// update, none for a truncate (it touches the whole table: see [`touches_table`]).
pub fn keys(event: &ChangeEvent) -> Vec<u64> {
    match event.op() {
        Op::Truncate => Vec::new(),
        Op::Delete => event
            .before()
            .map(|r| vec![row_key(event, r)])
            .unwrap_or_else(|| vec![stable_hash(&table_bytes(event))]),
        Op::UpdateKey => {
            let mut out = Vec::new();
            if let Some(b) = event.before() {
                out.push(row_key(event, b));
            }
            if let Some(a) = event.after() {
                out.push(row_key(event, a));
            }
            out.dedup();
            out
        }
        _ => event
            .after()
            .map(|r| vec![row_key(event, r)])
            .unwrap_or_else(|| vec![stable_hash(&table_bytes(event))]),
    }
}

/// Whether the event affects every row of its table (a truncate).
pub fn touches_table(event: &ChangeEvent) -> bool {
    event.op() == Op::Truncate
}

/// Splits a batch into *segments* applied one after the other; each segment is a set of
/// *lanes* (lists of batch indices, in order) that can be applied concurrently: events of one
/// key always share a lane. An event that touches keys in two lanes (a key change) or a whole
/// table (a truncate) ends the segment and forms a segment of its own.
pub fn lanes(events: &[ChangeEvent], lanes: usize) -> Vec<Vec<Vec<usize>>> {
    let lanes = lanes.max(1);
    let mut segments = Vec::new();
    let mut current: Vec<Vec<usize>> = vec![Vec::new(); lanes];
    let flush = |current: &mut Vec<Vec<usize>>, segments: &mut Vec<Vec<Vec<usize>>>| {
        let segment: Vec<Vec<usize>> = std::mem::replace(current, vec![Vec::new(); lanes])
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect();
        if !segment.is_empty() {
            segments.push(segment);
        }
    };
    for (i, event) in events.iter().enumerate() {
        let keys = keys(event);
        let mut targets: Vec<usize> = keys.iter().map(|k| (*k % lanes as u64) as usize).collect();
        targets.dedup();
        if touches_table(event) || targets.len() != 1 {
            flush(&mut current, &mut segments);
            segments.push(vec![vec![i]]);
        } else {
            current[targets[0]].push(i);
        }
    }
    flush(&mut current, &mut segments);
    segments
}

/// Whether the instance `instance` (0-based) of `instances` owns table `schema.table`: tables
/// are assigned by a stable hash of their name, so every instance computes the same split
/// and each table (hence each key) is applied by exactly one instance, in order.
pub fn owns_table(schema: &str, table: &str, instance: usize, instances: usize) -> bool {
    let mut bytes = schema.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(table.as_bytes());
    instances <= 1 || (stable_hash(&bytes) % instances as u64) as usize == instance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn every_table_has_exactly_one_owner() {
        for name in ["orders", "customers", "a.b", "x", "Ünïcode"] {
            for n in 1..5 {
                let owners = (0..n).filter(|i| owns_table("public", name, *i, n)).count();
                assert_eq!(owners, 1, "{name} of {n}");
            }
        }
    }
}

#[cfg(test)]
mod lane_tests {
    use std::sync::Arc;

    use chrono::Utc;
    use walbrook_pgtype_avro::{Builtin, PgType, PgValue};

    use super::*;
    use crate::event::{AckHandle, Column, Source};
    use walbrook_protocol::Lsn;

    fn event(op: Op, before: Option<i32>, after: Option<i32>, ordinal: u64) -> ChangeEvent {
        let columns: Arc<[Column]> = vec![Column {
            name: "id".into(),
            type_name: "integer".into(),
            oid: 23,
            is_key: true,
            not_null: true,
            backfill: Default::default(),
            pg_type: PgType::Builtin(Builtin::from_oid(23).unwrap()),
        }]
        .into();
        let row = |v: Option<i32>| v.map(|v| Row::new(columns.clone(), vec![PgValue::Int4(v)]));
        ChangeEvent {
            op,
            source: Source {
                database: "db".into(),
                schema: "public".into(),
                table: "t".into(),
                xid: 1,
                commit_lsn: Lsn(100),
                lsn: Lsn(100),
                commit_time: Utc::now(),
                ordinal,
                last: false,
                sent_at: Utc::now(),
            },
            before: row(before),
            after: row(after),
            fingerprint: walbrook_pgtype_avro::Fingerprint::from_bytes([0; 8]),
            subject: "s".into(),
            stream_sequence: ordinal + 1,
            consumer_sequence: ordinal + 1,
            delivered: 1,
            ack: AckHandle::none(),
            message_index: 0,
            message_events: 1,
            payload: bytes::Bytes::new(),
            headers: None,
        }
    }

    #[test]
    fn one_key_stays_in_one_lane_and_key_changes_and_truncates_are_barriers() {
        let lanes_of = |k: i32| {
            let e = event(Op::Insert, None, Some(k), 0);
            (keys(&e)[0] % 4) as usize
        };
        // Two keys in different lanes.
        let (a, b) = (1..100)
            .flat_map(|a| (1..100).map(move |b| (a, b)))
            .find(|(a, b)| lanes_of(*a) != lanes_of(*b))
            .unwrap();
        let events = vec![
            event(Op::Insert, None, Some(a), 0),
            event(Op::Insert, None, Some(b), 1),
            event(Op::Update, None, Some(a), 2),
            // a → b changes lanes: a barrier.
            event(Op::UpdateKey, Some(a), Some(b), 3),
            event(Op::Delete, Some(b), None, 4),
            event(Op::Truncate, None, None, 5),
            event(Op::Insert, None, Some(a), 6),
        ];
        let segments = lanes(&events, 4);
        assert_eq!(segments.len(), 5, "{segments:?}");
        // First segment: a's two events in one lane, in order; b in another.
        let mut first = segments[0].clone();
        first.sort();
        assert_eq!(first, vec![vec![0, 2], vec![1]]);
        assert_eq!(segments[1], vec![vec![3]]);
        assert_eq!(segments[2], vec![vec![4]]);
        assert_eq!(segments[3], vec![vec![5]]);
        assert_eq!(segments[4], vec![vec![6]]);
        // A key change within one lane is no barrier.
        let same = vec![
            event(Op::Insert, None, Some(a), 0),
            event(Op::UpdateKey, Some(a), Some(a), 1),
        ];
        assert_eq!(lanes(&same, 4), vec![vec![vec![0, 1]]]);
    }
}
