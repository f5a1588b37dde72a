//! Subjects, stream names (docs/protocol.md §1–2), table patterns and LSNs.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind};

pub use walbrook_protocol::{Lsn, escape_token};
use walbrook_protocol::{StreamKind, Subjects};

/// Subject and stream names of one database (the protocol's [`Subjects`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    subjects: Subjects,
    root: String,
    database: String,
}

impl Names {
    pub(crate) fn new(root: &str, database: &str) -> Names {
        Names {
            subjects: Subjects::new(root, database),
            root: root.to_owned(),
            database: database.to_owned(),
        }
    }

    /// `<root>.<db>.dlq.<consumer>`: the dead letters of one consumer (protocol §2).
    pub(crate) fn dlq_subject(&self, consumer: &str) -> String {
        format!(
            "{}.{}.dlq.{}",
            self.root,
            escape_token(&self.database),
            escape_token(consumer)
        )
    }

    /// `<root>.<db>.dlq.>`
    pub(crate) fn dlq_all(&self) -> String {
        format!("{}.{}.dlq.>", self.root, escape_token(&self.database))
    }

    /// `<root>_<db>_DLQ`
    pub(crate) fn dlq_stream(&self) -> String {
        format!(
            "{}_{}_DLQ",
            self.root.replace('.', "_"),
            escape_token(&self.database)
        )
    }

    /// The object store bucket of dead letters too large for one message (protocol §2).
    pub(crate) fn dlq_bucket(&self) -> String {
        self.subjects.dead_letter_bucket()
    }

    /// `<root>_<db>_RESUME`: the runners' resume points while they recreate a consumer.
    pub(crate) fn resume_bucket(&self) -> String {
        self.subjects.resume_bucket()
    }

    /// `<root>_<db>_WAL`
    pub(crate) fn wal_stream(&self) -> String {
        self.subjects.stream_name(StreamKind::Wal)
    }

    /// `<root>.<db>.wal.>`
    pub(crate) fn wal_all(&self) -> String {
        self.subjects.stream_subjects(StreamKind::Wal)
    }

    /// `<root>.<db>.schema.>`: every schema announcement.
    pub(crate) fn schema_all(&self) -> String {
        self.subjects.stream_subjects(StreamKind::Schema)
    }

    /// `<root>.<db>.rpc.schema`
    pub(crate) fn schema_rpc(&self) -> String {
        self.subjects.schema_rpc()
    }

    /// `<root>.<db>.rpc.snapshot`
    pub(crate) fn snapshot_rpc(&self) -> String {
        self.subjects.snapshot_rpc()
    }

    /// `<root>.<db>.rpc.snapshots`
    pub(crate) fn snapshots_rpc(&self) -> String {
        self.subjects.snapshots_rpc()
    }

    /// The filter subject of a table pattern.
    pub(crate) fn wal_filter(&self, pattern: &TablePattern) -> String {
        match pattern {
            TablePattern::All => self.wal_all(),
            TablePattern::Schema(schema) => self.subjects.changes_of_schema(schema),
            TablePattern::Table { schema, table } => self.subjects.change(schema, table),
        }
    }
}

/// Which tables a subscription reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TablePattern {
    /// One table.
    Table {
        /// Schema (namespace) name, as PostgreSQL reports it.
        schema: String,
        /// Table name.
        table: String,
    },
    /// Every table of a schema (`schema.*`).
    Schema(String),
    /// Every published table (`*`).
    All,
}

impl TablePattern {
    /// One table by its exact names (for names that contain `.` or are `*`).
    pub fn table(schema: impl Into<String>, table: impl Into<String>) -> TablePattern {
        TablePattern::Table {
            schema: schema.into(),
            table: table.into(),
        }
    }
}

impl FromStr for TablePattern {
    type Err = Error;

    /// Parses `schema.table`, `schema.*` or `*`. The first `.` separates schema and table
    /// (use [`TablePattern::table`] when a schema name contains a dot).
    fn from_str(text: &str) -> Result<TablePattern, Error> {
        if text == "*" {
            return Ok(TablePattern::All);
        }
        let bad = || {
            Error::new(
                ErrorKind::Config,
                format!("table pattern {text:?}: expected schema.table, schema.* or *"),
            )
        };
        let (schema, table) = text.split_once('.').ok_or_else(bad)?;
        if schema.is_empty() || table.is_empty() || schema == "*" {
            return Err(bad());
        }
        Ok(if table == "*" {
            TablePattern::Schema(schema.to_owned())
        } else {
            TablePattern::table(schema, table)
        })
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TablePattern::Table { schema, table } => write!(f, "{schema}.{table}"),
            TablePattern::Schema(schema) => write!(f, "{schema}.*"),
            TablePattern::All => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_escape_as_the_protocol_examples() {
        assert_eq!(escape_token("orders"), "orders");
        assert_eq!(escape_token("my.table"), "my~2Etable");
        assert_eq!(escape_token("Ünïcode tbl"), "~C3~9Cn~C3~AFcode~20tbl");
        assert_eq!(escape_token("a~b"), "a~7Eb");
    }

    #[test]
    fn filters_cover_one_table_a_schema_or_everything() {
        let names = Names::new("WALBROOK", "shop.db");
        assert_eq!(names.wal_stream(), "WALBROOK_shop~2Edb_WAL");
        let filter = |p: &str| names.wal_filter(&p.parse().unwrap());
        assert_eq!(
            filter("public.orders"),
            "WALBROOK.shop~2Edb.wal.public.orders"
        );
        assert_eq!(
            filter("public.my.table"),
            "WALBROOK.shop~2Edb.wal.public.my~2Etable"
        );
        assert_eq!(filter("sales.*"), "WALBROOK.shop~2Edb.wal.sales.*");
        assert_eq!(filter("*"), "WALBROOK.shop~2Edb.wal.>");
        assert_eq!(
            names.wal_filter(&TablePattern::table("a.b", "*")),
            "WALBROOK.shop~2Edb.wal.a~2Eb.~2A"
        );
        for bad in ["", "orders", ".x", "x.", "*.x"] {
            let error = bad.parse::<TablePattern>().unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Config, "{bad:?}");
        }
    }

    #[test]
    fn lsns_use_postgres_text() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "\"16/B374D848\"");
        for bad in ["", "1", "/1", "1/", "g/1", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }
}
