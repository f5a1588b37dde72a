//! NATS subjects and JetStream stream names (docs/protocol.md §1–2).
//!
//! Every PostgreSQL name placed in a subject is escaped into exactly one NATS token by
//! a reversible rule: ASCII letters, digits, `_` and `-` stand for themselves; every
//! other byte of the UTF-8 encoding (including `~`) becomes `~XX` with two uppercase
//! hex digits. A `.`, `*`, `>` or space in a table name can therefore never change the
//! subject structure, and the escaped form is also a valid stream name.

use std::fmt::Write;

/// Escapes a name into one NATS subject token.
pub fn escape_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "~{byte:02X}");
        }
    }
    out
}

/// Why a token is not the escaped form of a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{token:?} is not an escaped name: {reason}")]
pub struct UnescapeError {
    token: String,
    reason: &'static str,
}

/// Reverses [`escape_token`].
pub fn unescape_token(token: &str) -> Result<String, UnescapeError> {
    let error = |reason| UnescapeError {
        token: token.to_string(),
        reason,
    };
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'~' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| error("'~' must be followed by two hex digits"))?;
                let hex = std::str::from_utf8(hex).map_err(|_| error("bad escape"))?;
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return Err(error("escapes use uppercase hex digits"));
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| error("bad escape"))?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return Err(error("contains a character that escaping never produces")),
        }
    }
    String::from_utf8(out).map_err(|_| error("escapes do not form UTF-8"))
}

/// The subject and stream names of one source database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    root: String,
    db: String,
}

/// The kinds of JetStream stream Walbrook keeps per database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Change events.
    Wal,
    /// Schema announcements.
    Schema,
    /// Snapshot data.
    Snap,
}

impl StreamKind {
    fn subject_word(self) -> &'static str {
        match self {
            StreamKind::Wal => "wal",
            StreamKind::Schema => "schema",
            StreamKind::Snap => "snap",
        }
    }

    fn stream_word(self) -> &'static str {
        match self {
            StreamKind::Wal => "WAL",
            StreamKind::Schema => "SCHEMA",
            StreamKind::Snap => "SNAP",
        }
    }
}

impl Subjects {
    /// Names for database `database` under subject root `root`.
    pub fn new(root: &str, database: &str) -> Subjects {
        Subjects {
            root: root.to_string(),
            db: escape_token(database),
        }
    }

    /// `<root>.<db>.wal.<schema>.<table>`
    pub fn change(&self, schema: &str, table: &str) -> String {
        self.table_subject(StreamKind::Wal, schema, table)
    }

    /// `<root>.<db>.wal.<schema>.*`: the change events of every table of a schema.
    pub fn changes_of_schema(&self, schema: &str) -> String {
        format!(
            "{}.{}.{}.{}.*",
            self.root,
            self.db,
            StreamKind::Wal.subject_word(),
            escape_token(schema)
        )
    }

    /// `<root>.<db>.schema.<schema>.<table>`
    pub fn schema_announcement(&self, schema: &str, table: &str) -> String {
        self.table_subject(StreamKind::Schema, schema, table)
    }

    /// `<root>.<db>.rpc.schema`
    pub fn schema_rpc(&self) -> String {
        format!("{}.{}.rpc.schema", self.root, self.db)
    }

    /// `<root>.<db>.snap.<schema>.<table>.<snapshot id>`: one snapshot's data. The id is a
    /// valid NATS token (letters, digits, `-`), used as is.
    pub fn snapshot(&self, schema: &str, table: &str, id: &str) -> String {
        format!(
            "{}.{}",
            self.table_subject(StreamKind::Snap, schema, table),
            id
        )
    }

    /// `<root>.<db>.rpc.snapshot`: the snapshot request RPC.
    pub fn snapshot_rpc(&self) -> String {
        format!("{}.{}.rpc.snapshot", self.root, self.db)
    }

    /// `<root>.<db>.rpc.snapshots`: the snapshot listing RPC.
    pub fn snapshots_rpc(&self) -> String {
        format!("{}.{}.rpc.snapshots", self.root, self.db)
    }

    /// The wildcard a kind's stream captures: `<root>.<db>.<kind>.>`.
    pub fn stream_subjects(&self, kind: StreamKind) -> String {
        format!("{}.{}.{}.>", self.root, self.db, kind.subject_word())
    }

    /// The stream name: `<root>_<db>_<KIND>`.
    pub fn stream_name(&self, kind: StreamKind) -> String {
        format!(
            "{}_{}_{}",
            self.root.replace('.', "_"),
            self.db,
            kind.stream_word()
        )
    }

    /// The JetStream object store bucket for payloads larger than the server's
    /// `max_payload` (docs/protocol.md §3.5): `<root>_<db>_LARGE`. Bucket names allow
    /// only `A-Z a-z 0-9 _ -`, so any other character (a `.` in the root, a `~` of an
    /// escaped database name) becomes `_`, and a hash of the exact names is appended
    /// then, so two databases never share a bucket. Readers take the bucket from the
    /// `Walbrook-Payload-Object` header and never need to derive it.
    pub fn large_payload_bucket(&self) -> String {
        self.bucket("LARGE")
    }

    /// The JetStream object store bucket for dead letters too large for one message
    /// (docs/protocol.md §2): `<root>_<db>_DLQ_BODIES`, made valid as
    /// [`Subjects::large_payload_bucket`]. Its objects do not expire: a dead letter stays
    /// until it is replayed.
    pub fn dead_letter_bucket(&self) -> String {
        self.bucket("DLQ_BODIES")
    }

    /// The JetStream key-value bucket where a consumer runner keeps its resume point while
    /// it recreates its durable consumer (docs/protocol.md §2): `<root>_<db>_RESUME`, made
    /// valid as [`Subjects::large_payload_bucket`].
    pub fn resume_bucket(&self) -> String {
        self.bucket("RESUME")
    }

    /// `<root>_<db>_<suffix>` as a valid bucket name (see [`Subjects::large_payload_bucket`]).
    /// No suffix ends with `_` and another suffix, so two databases' buckets never meet.
    fn bucket(&self, suffix: &str) -> String {
        let plain = format!("{}_{}_{suffix}", self.root, self.db);
        if plain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return plain;
        }
        // FNV-1a (64 bit): stable across versions and platforms, unlike std's hasher.
        let hash = plain.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let safe: String = plain
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{safe}_{hash:016x}")
    }

    fn table_subject(&self, kind: StreamKind, schema: &str, table: &str) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.root,
            self.db,
            kind.subject_word(),
            escape_token(schema),
            escape_token(table)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_documented() {
        assert_eq!(escape_token("orders"), "orders");
        assert_eq!(escape_token("my.table"), "my~2Etable");
        assert_eq!(escape_token("Ünïcode tbl"), "~C3~9Cn~C3~AFcode~20tbl");
        assert_eq!(escape_token("a~b"), "a~7Eb");
        assert_eq!(escape_token("*>"), "~2A~3E");
    }

    #[test]
    fn large_payload_buckets_are_valid_and_distinct() {
        assert_eq!(
            Subjects::new("WALBROOK", "shop").large_payload_bucket(),
            "WALBROOK_shop_LARGE"
        );
        let names = ["a.b", "a_b", "a b", "a~b", "Ünï"];
        let buckets: Vec<String> = names
            .iter()
            .map(|db| Subjects::new("W.X", db).large_payload_bucket())
            .collect();
        assert_valid_and_distinct(buckets, names.len());
    }

    /// Every bucket name is valid (`A-Z a-z 0-9 _ -`) and none repeats.
    fn assert_valid_and_distinct(mut buckets: Vec<String>, expected: usize) {
        for bucket in &buckets {
            assert!(
                bucket
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{bucket}"
            );
        }
        buckets.sort();
        buckets.dedup();
        assert_eq!(buckets.len(), expected, "{buckets:?}");
    }

    #[test]
    fn dead_letter_buckets_are_valid_and_never_another_databases_bucket() {
        assert_eq!(
            Subjects::new("WALBROOK", "shop").dead_letter_bucket(),
            "WALBROOK_shop_DLQ_BODIES"
        );
        // Every bucket of these databases, of both kinds: a database named like another's
        // bucket suffix ("shop_DLQ", "shop_DLQ_BODIES") must not land on its bucket.
        let names = [
            "shop",
            "shop_DLQ",
            "shop_DLQ_BODIES",
            "shop_LARGE",
            "shop_RESUME",
            "a.b",
            "a_b",
        ];
        let buckets: Vec<String> = names
            .iter()
            .flat_map(|db| {
                let subjects = Subjects::new("WALBROOK", db);
                [
                    subjects.large_payload_bucket(),
                    subjects.dead_letter_bucket(),
                    subjects.resume_bucket(),
                ]
            })
            .collect();
        assert_valid_and_distinct(buckets, 3 * names.len());
    }

    #[test]
    fn unescape_reverses_escape() {
        for name in [
            "",
            "orders",
            "my.table",
            "Ünïcode tbl",
            "a~b",
            "~7E",
            "x\0y",
            "日本",
        ] {
            assert_eq!(unescape_token(&escape_token(name)).unwrap(), name);
        }
    }

    #[test]
    fn unescape_rejects_what_escape_never_produces() {
        for bad in ["a.b", "~", "~4", "~zz", "~2e", "~FF", "a b"] {
            assert!(unescape_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_names_stay_one_token() {
        let subjects = Subjects::new("WALBROOK", "shop.db");
        let subject = subjects.change("public", "x.> *");
        assert_eq!(subject, "WALBROOK.shop~2Edb.wal.public.x~2E~3E~20~2A");
        assert_eq!(subject.split('.').count(), 5);
        assert_eq!(
            subjects.stream_name(StreamKind::Wal),
            "WALBROOK_shop~2Edb_WAL"
        );
        assert_eq!(
            subjects.stream_subjects(StreamKind::Wal),
            "WALBROOK.shop~2Edb.wal.>"
        );
        assert_eq!(subjects.schema_rpc(), "WALBROOK.shop~2Edb.rpc.schema");
    }
}
