//! Resolving relations and types from the PostgreSQL catalogs.
//!
//! pgoutput's Relation message gives column names, type OIDs, type modifiers and
//! replica-identity flags. What a consumer needs to rebuild the table (the type name
//! with modifiers, enum labels, domain bases, composite fields, NOT NULL, the primary
//! key) comes from the catalogs, read here on a normal SQL connection.
//!
//! Column identity follows pgoutput (the Relation message is authoritative for what is
//! published); the catalogs only add descriptions. A column or type that no longer
//! exists in the catalogs (dropped after the change was written) is still published:
//! its values arrive as text and are carried as such with the name PostgreSQL reports.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use tokio_postgres::Client;
use walbrook_pgtype_avro::{
    Backfill, ColumnDesc, CompositeField, PgType, RelationDesc, ReplicaIdentity,
};

use crate::pgoutput;

/// An error while reading the catalogs.
#[derive(Debug, thiserror::Error)]
#[error("reading the catalog for {what}: {source}")]
pub struct CatalogError {
    what: String,
    #[source]
    source: tokio_postgres::Error,
}

/// A relation's attributes: NOT NULL, primary-key membership, and what rows that existed
/// before the column was added hold in it ([`Backfill`]):
///
/// * `atthasmissing`: PostgreSQL keeps the value of a constant or stable default evaluated
///   at `ADD COLUMN` time as the column's missing value; its text form is the element of the
///   one-element array `attmissingval` (an `anyarray`, read through `text[]`).
/// * Otherwise, a default that calls a volatile function (found in the default's expression
///   tree by function OID, as PostgreSQL's own `contain_volatile_functions` does) or an
///   identity made PostgreSQL rewrite the table with a value per row. The same catalog state
///   follows a column added without a default whose default was set to a volatile
///   expression before the producer described it; either way the schema says per-row, and a
///   consumer that copies rows refuses rather than guesses.
const ATTRIBUTES: &str = "
    SELECT a.attname::text, a.attnotnull,
           coalesce(a.attnum = ANY(i.indkey), false) AS in_pk,
           CASE WHEN a.atthasmissing
                THEN (SELECT m FROM unnest(a.attmissingval::text::text[]) AS m LIMIT 1)
           END AS missing,
           NOT a.atthasmissing AND (a.attidentity <> '' OR EXISTS (
               SELECT 1 FROM pg_attrdef d
               CROSS JOIN LATERAL regexp_matches(d.adbin::text, ':(?:op)?funcid (\\d+)', 'g') AS f(m)
               JOIN pg_proc p ON p.oid = f.m[1]::oid
               WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND p.provolatile = 'v'
           )) AS per_row
      FROM pg_attribute a
      LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped";

#[derive(Debug, Clone, Default)]
struct Attribute {
    not_null: bool,
    in_pk: bool,
    backfill: Backfill,
}

/// Caches resolved types; one per producer.
#[derive(Debug, Default)]
pub struct Catalog {
    types: HashMap<u32, PgType>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Catalog {
    /// An empty cache.
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Forgets cached types (after DDL, when a Relation message announces a change).
    pub fn invalidate(&mut self) {
        self.types.clear();
    }

    /// Describes a relation announced by pgoutput.
    pub async fn describe(
        &mut self,
        client: &Client,
        relation: &pgoutput::Relation,
    ) -> Result<RelationDesc, CatalogError> {
        let what = || format!("{}.{}", relation.namespace, relation.name);
        let rows = client
            .query(ATTRIBUTES, &[&relation.id.0])
            .await
            .map_err(|source| CatalogError {
                what: what(),
                source,
            })?;
        let attributes: HashMap<String, Attribute> = rows
            .iter()
            .map(|r| {
                let backfill = match (r.get::<_, Option<String>>(3), r.get::<_, bool>(4)) {
                    (Some(value), _) => Backfill::Value(value),
                    (None, true) => Backfill::PerRow,
                    (None, false) => Backfill::Null,
                };
                let attribute = Attribute {
                    not_null: r.get(1),
                    in_pk: r.get(2),
                    backfill,
                };
                (r.get::<_, String>(0), attribute)
            })
            .collect();
        let replica_identity = match relation.replica_identity {
            pgoutput::ReplicaIdentity::Default => ReplicaIdentity::Default,
            pgoutput::ReplicaIdentity::Full => ReplicaIdentity::Full,
            pgoutput::ReplicaIdentity::Index => ReplicaIdentity::Index,
            pgoutput::ReplicaIdentity::Nothing => ReplicaIdentity::Nothing,
        };
        let mut columns = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let Attribute {
                not_null,
                in_pk,
                backfill,
            } = attributes.get(&column.name).cloned().unwrap_or_default();
            let type_name: String = client
                .query_one(
                    "SELECT format_type($1, $2)",
                    &[&column.type_oid.0, &column.type_modifier],
                )
                .await
                .map_err(|source| CatalogError {
                    what: format!("{}.{}.{}", relation.namespace, relation.name, column.name),
                    source,
                })?
                .get(0);
            let pg_type = self.resolve(client, column.type_oid.0).await?;
            columns.push(ColumnDesc {
                name: column.name.clone(),
                pg_type,
                type_name,
                typmod: column.type_modifier,
                not_null,
                // Under REPLICA IDENTITY FULL pgoutput flags every column as key; the
                // key that identifies a row for consumers is then the primary key.
                is_key: if replica_identity == ReplicaIdentity::Full {
                    in_pk
                } else {
                    column.is_key
                },
                backfill,
            });
        }
        Ok(RelationDesc {
            schema: if relation.namespace.is_empty() {
                "pg_catalog".into()
            } else {
                relation.namespace.clone()
            },
            table: relation.name.clone(),
            columns,
            replica_identity,
        })
    }

    /// Resolves a type OID (recursively for arrays, domains, composites and ranges).
    pub fn resolve<'a>(
        &'a mut self,
        client: &'a Client,
        oid: u32,
    ) -> BoxFuture<'a, Result<PgType, CatalogError>> {
        Box::pin(async move {
            if let Some(known) = PgType::from_builtin_oid(oid) {
                return Ok(known);
            }
            if let Some(cached) = self.types.get(&oid) {
                return Ok(cached.clone());
            }
            let err = |source| CatalogError {
                what: format!("type {oid}"),
                source,
            };
            let row = client
                .query_opt(
                    "SELECT format_type(t.oid, NULL), t.typtype::text, t.typcategory::text,
                            t.typelem, t.typbasetype, t.typtypmod, t.typrelid
                       FROM pg_type t WHERE t.oid = $1",
                    &[&oid],
                )
                .await
                .map_err(err)?;
            let Some(row) = row else {
                // The type was dropped after the change was written: carry the text.
                return Ok(PgType::Other {
                    oid,
                    name: format!("unknown type {oid}"),
                });
            };
            let name: String = row.get(0);
            let typtype: String = row.get(1);
            let category: String = row.get(2);
            let elem: u32 = row.get(3);
            let base: u32 = row.get(4);
            let base_typmod: i32 = row.get(5);
            let relid: u32 = row.get(6);
            let resolved = match (typtype.as_str(), category.as_str()) {
                (_, "A") if elem != 0 => PgType::Array {
                    oid,
                    element: Box::new(self.resolve(client, elem).await?),
                },
                ("e", _) => {
                    let labels = client
                        .query(
                            "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder",
                            &[&oid],
                        )
                        .await
                        .map_err(err)?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    PgType::Enum { oid, name, labels }
                }
                ("d", _) => PgType::Domain {
                    oid,
                    name,
                    base: Box::new(self.resolve(client, base).await?),
                    base_typmod,
                },
                ("c", _) => {
                    let rows = client
                        .query(
                            "SELECT attname::text, atttypid, atttypmod FROM pg_attribute
                              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                              ORDER BY attnum",
                            &[&relid],
                        )
                        .await
                        .map_err(err)?;
                    let mut fields = Vec::with_capacity(rows.len());
                    for r in rows {
                        fields.push(CompositeField {
                            name: r.get(0),
                            pg_type: self.resolve(client, r.get(1)).await?,
                            typmod: r.get(2),
                        });
                    }
                    PgType::Composite { oid, name, fields }
                }
                ("r", _) => {
                    let subtype: u32 = client
                        .query_one(
                            "SELECT rngsubtype FROM pg_range WHERE rngtypid = $1",
                            &[&oid],
                        )
                        .await
                        .map_err(err)?
                        .get(0);
                    PgType::Range {
                        oid,
                        name,
                        subtype: Box::new(self.resolve(client, subtype).await?),
                    }
                }
                ("m", _) => {
                    let range: u32 = client
                        .query_one(
                            "SELECT rngtypid FROM pg_range WHERE rngmultitypid = $1",
                            &[&oid],
                        )
                        .await
                        .map_err(err)?
                        .get(0);
                    PgType::Multirange {
                        oid,
                        name,
                        range: Box::new(self.resolve(client, range).await?),
                    }
                }
                _ => PgType::Other { oid, name },
            };
            self.types.insert(oid, resolved.clone());
            Ok(resolved)
        })
    }
}
