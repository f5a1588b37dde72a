//! Subjects, stream names (docs/protocol.md §1–2), table patterns and LSNs.

use std::fmt;
use std::fmt::Write;
use std::str::FromStr;

use crate::error::{Error, ErrorKind};

/// Escapes a PostgreSQL name into one NATS subject token (docs/protocol.md §1.1): ASCII
/// letters, digits, `_` and `-` stand for themselves, every other byte of the UTF-8 encoding
/// (including `~`) becomes `~XX` in uppercase hex.
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

/// Subject and stream names of one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    root: String,
    db: String,
}

impl Names {
    pub(crate) fn new(root: &str, database: &str) -> Names {
        Names {
            root: root.to_owned(),
            db: escape_token(database),
        }
    }

    /// `<root>_<db>_WAL`
    pub(crate) fn wal_stream(&self) -> String {
        format!("{}_{}_WAL", self.root.replace('.', "_"), self.db)
    }

    /// `<root>.<db>.wal.>`
    pub(crate) fn wal_all(&self) -> String {
        format!("{}.{}.wal.>", self.root, self.db)
    }

    /// `<root>.<db>.rpc.schema`
    pub(crate) fn schema_rpc(&self) -> String {
        format!("{}.{}.rpc.schema", self.root, self.db)
    }

    /// The filter subject of a table pattern.
    pub(crate) fn wal_filter(&self, pattern: &TablePattern) -> String {
        let prefix = format!("{}.{}.wal", self.root, self.db);
        match pattern {
            TablePattern::All => format!("{prefix}.>"),
            TablePattern::Schema(schema) => format!("{prefix}.{}.*", escape_token(schema)),
            TablePattern::Table { schema, table } => {
                format!("{prefix}.{}.{}", escape_token(schema), escape_token(table))
            }
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

/// A PostgreSQL log sequence number (a WAL position). Displays and parses in PostgreSQL's form,
/// `X/X` in uppercase hex (`0/16B3F20`), and serialises as that text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(text: &str) -> Result<Lsn, Error> {
        let bad = || {
            Error::new(
                ErrorKind::Config,
                format!("invalid LSN {text:?}: expected two hex numbers separated by '/'"),
            )
        };
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(part(high)?) << 32) | u64::from(part(low)?)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
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
