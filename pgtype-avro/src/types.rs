//! Resolved PostgreSQL type descriptions, supplied by the caller (the producer reads the
//! catalogs; this crate does no I/O).

/// How a built-in scalar type is represented; see `docs/type-mapping.md`.
macro_rules! builtins {
    ($( $variant:ident = $oid:literal, $name:literal, $array_oid:literal; )*) => {
        /// The built-in PostgreSQL scalar types this crate knows by OID.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        #[allow(missing_docs)]
        pub enum Builtin {
            $( $variant, )*
        }

        impl Builtin {
            /// All known built-in scalar types.
            pub const ALL: &'static [Builtin] = &[ $( Builtin::$variant, )* ];

            /// The type's OID.
            pub fn oid(self) -> u32 {
                match self { $( Builtin::$variant => $oid, )* }
            }

            /// The type's `pg_type.typname`.
            pub fn name(self) -> &'static str {
                match self { $( Builtin::$variant => $name, )* }
            }

            /// The OID of the type's array type.
            pub fn array_oid(self) -> u32 {
                match self { $( Builtin::$variant => $array_oid, )* }
            }

            /// The built-in type with this OID.
            pub fn from_oid(oid: u32) -> Option<Builtin> {
                match oid { $( $oid => Some(Builtin::$variant), )* _ => None }
            }

            /// The built-in type whose array type has this OID.
            pub fn from_array_oid(oid: u32) -> Option<Builtin> {
                match oid { $( $array_oid => Some(Builtin::$variant), )* _ => None }
            }
        }
    };
}

builtins! {
    Bool = 16, "bool", 1000;
    Bytea = 17, "bytea", 1001;
    Char = 18, "char", 1002;
    Name = 19, "name", 1003;
    Int8 = 20, "int8", 1016;
    Int2 = 21, "int2", 1005;
    Int2Vector = 22, "int2vector", 1006;
    Int4 = 23, "int4", 1007;
    Regproc = 24, "regproc", 1008;
    Text = 25, "text", 1009;
    Oid = 26, "oid", 1028;
    Tid = 27, "tid", 1010;
    Xid = 28, "xid", 1011;
    Cid = 29, "cid", 1012;
    OidVector = 30, "oidvector", 1013;
    Json = 114, "json", 199;
    Xml = 142, "xml", 143;
    Point = 600, "point", 1017;
    Lseg = 601, "lseg", 1018;
    Path = 602, "path", 1019;
    Box = 603, "box", 1020;
    Polygon = 604, "polygon", 1027;
    Line = 628, "line", 629;
    Cidr = 650, "cidr", 651;
    Float4 = 700, "float4", 1021;
    Float8 = 701, "float8", 1022;
    Circle = 718, "circle", 719;
    Macaddr8 = 774, "macaddr8", 775;
    Money = 790, "money", 791;
    Macaddr = 829, "macaddr", 1040;
    Inet = 869, "inet", 1041;
    Aclitem = 1033, "aclitem", 1034;
    Bpchar = 1042, "bpchar", 1014;
    Varchar = 1043, "varchar", 1015;
    Date = 1082, "date", 1182;
    Time = 1083, "time", 1183;
    Timestamp = 1114, "timestamp", 1115;
    TimestampTz = 1184, "timestamptz", 1185;
    Interval = 1186, "interval", 1187;
    TimeTz = 1266, "timetz", 1270;
    Bit = 1560, "bit", 1561;
    Varbit = 1562, "varbit", 1563;
    Numeric = 1700, "numeric", 1231;
    Refcursor = 1790, "refcursor", 2201;
    Regprocedure = 2202, "regprocedure", 2207;
    Regoper = 2203, "regoper", 2208;
    Regoperator = 2204, "regoperator", 2209;
    Regclass = 2205, "regclass", 2210;
    Regtype = 2206, "regtype", 2211;
    Uuid = 2950, "uuid", 2951;
    TxidSnapshot = 2970, "txid_snapshot", 2949;
    PgLsn = 3220, "pg_lsn", 3221;
    Tsvector = 3614, "tsvector", 3643;
    Tsquery = 3615, "tsquery", 3645;
    Regconfig = 3734, "regconfig", 3735;
    Regdictionary = 3769, "regdictionary", 3770;
    Jsonb = 3802, "jsonb", 3807;
    Jsonpath = 4072, "jsonpath", 4073;
    Regnamespace = 4089, "regnamespace", 4090;
    Regrole = 4096, "regrole", 4097;
    Regcollation = 4191, "regcollation", 4192;
    PgSnapshot = 5038, "pg_snapshot", 5039;
    Xid8 = 5069, "xid8", 271;
}

/// The built-in range types: (range OID, name, subtype, range-array OID,
/// multirange OID, multirange name, multirange-array OID).
pub const BUILTIN_RANGES: &[(u32, &str, Builtin, u32, u32, &str, u32)] = &[
    (
        3904,
        "int4range",
        Builtin::Int4,
        3905,
        4451,
        "int4multirange",
        6150,
    ),
    (
        3906,
        "numrange",
        Builtin::Numeric,
        3907,
        4532,
        "nummultirange",
        6151,
    ),
    (
        3908,
        "tsrange",
        Builtin::Timestamp,
        3909,
        4533,
        "tsmultirange",
        6152,
    ),
    (
        3910,
        "tstzrange",
        Builtin::TimestampTz,
        3911,
        4534,
        "tstzmultirange",
        6153,
    ),
    (
        3912,
        "daterange",
        Builtin::Date,
        3913,
        4535,
        "datemultirange",
        6155,
    ),
    (
        3926,
        "int8range",
        Builtin::Int8,
        3927,
        4536,
        "int8multirange",
        6157,
    ),
];

/// A resolved PostgreSQL type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PgType {
    /// A built-in scalar type.
    Builtin(Builtin),
    /// An array type (any number of dimensions).
    Array {
        /// The array type's OID (0 if unknown).
        oid: u32,
        /// The element type.
        element: Box<PgType>,
    },
    /// An enum type.
    Enum {
        /// The type OID.
        oid: u32,
        /// The type name (schema-qualified if not on the search path).
        name: String,
        /// The labels in sort order.
        labels: Vec<String>,
    },
    /// A domain over another type.
    Domain {
        /// The type OID.
        oid: u32,
        /// The domain name.
        name: String,
        /// The base type.
        base: Box<PgType>,
        /// The base type's type modifier (`pg_type.typtypmod`), -1 if none.
        base_typmod: i32,
    },
    /// A composite (row) type.
    Composite {
        /// The type OID.
        oid: u32,
        /// The type name.
        name: String,
        /// The attributes in order.
        fields: Vec<CompositeField>,
    },
    /// A range type.
    Range {
        /// The type OID.
        oid: u32,
        /// The type name.
        name: String,
        /// The subtype.
        subtype: Box<PgType>,
    },
    /// A multirange type.
    Multirange {
        /// The type OID.
        oid: u32,
        /// The type name.
        name: String,
        /// The range type (a [`PgType::Range`]).
        range: Box<PgType>,
    },
    /// Any other type (extension types such as hstore, ltree, vector, citext…): carried as its
    /// text form with its real name.
    Other {
        /// The type OID.
        oid: u32,
        /// The type name.
        name: String,
    },
}

/// One attribute of a composite type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompositeField {
    /// Attribute name.
    pub name: String,
    /// Attribute type.
    pub pg_type: PgType,
    /// Attribute type modifier (-1 if none).
    pub typmod: i32,
}

impl PgType {
    /// Resolves a built-in type OID: scalars, their arrays, the built-in ranges and
    /// multiranges and their arrays. Returns `None` for other OIDs (enums, domains, composites,
    /// extension types), which the caller describes from the catalogs.
    pub fn from_builtin_oid(oid: u32) -> Option<PgType> {
        if let Some(b) = Builtin::from_oid(oid) {
            return Some(PgType::Builtin(b));
        }
        if let Some(b) = Builtin::from_array_oid(oid) {
            return Some(PgType::Array {
                oid,
                element: Box::new(PgType::Builtin(b)),
            });
        }
        for &(roid, rname, sub, rarr, moid, mname, marr) in BUILTIN_RANGES {
            let range = PgType::Range {
                oid: roid,
                name: rname.to_owned(),
                subtype: Box::new(PgType::Builtin(sub)),
            };
            let multi = PgType::Multirange {
                oid: moid,
                name: mname.to_owned(),
                range: Box::new(range.clone()),
            };
            if oid == roid {
                return Some(range);
            } else if oid == moid {
                return Some(multi);
            } else if oid == rarr {
                return Some(PgType::Array {
                    oid,
                    element: Box::new(range),
                });
            } else if oid == marr {
                return Some(PgType::Array {
                    oid,
                    element: Box::new(multi),
                });
            }
        }
        None
    }

    /// The type OID (0 for an array whose OID was not given).
    pub fn oid(&self) -> u32 {
        match self {
            PgType::Builtin(b) => b.oid(),
            PgType::Array { oid, .. }
            | PgType::Enum { oid, .. }
            | PgType::Domain { oid, .. }
            | PgType::Composite { oid, .. }
            | PgType::Range { oid, .. }
            | PgType::Multirange { oid, .. }
            | PgType::Other { oid, .. } => *oid,
        }
    }

    /// A display name (`int4`, `numeric[]`, the enum's or domain's own name…).
    pub fn name(&self) -> String {
        match self {
            PgType::Builtin(b) => b.name().to_owned(),
            PgType::Array { element, .. } => format!("{}[]", element.name()),
            PgType::Enum { name, .. }
            | PgType::Domain { name, .. }
            | PgType::Composite { name, .. }
            | PgType::Range { name, .. }
            | PgType::Multirange { name, .. }
            | PgType::Other { name, .. } => name.clone(),
        }
    }

    /// The array element delimiter PostgreSQL uses for this type (`;` for `box`, `,` otherwise).
    pub fn array_delimiter(&self) -> u8 {
        match self {
            PgType::Builtin(Builtin::Box) => b';',
            PgType::Domain { base, .. } => base.array_delimiter(),
            _ => b',',
        }
    }

    /// Whether the type is variable-length (`typlen = -1`), i.e. values can be TOASTed and
    /// pgoutput can report them as "unchanged". Unknown types are assumed to be.
    pub fn is_varlena(&self) -> bool {
        use Builtin::*;
        match self {
            PgType::Builtin(b) => !matches!(
                b,
                Bool | Char
                    | Name
                    | Int8
                    | Int2
                    | Int4
                    | Regproc
                    | Oid
                    | Tid
                    | Xid
                    | Cid
                    | Point
                    | Lseg
                    | Box
                    | Line
                    | Float4
                    | Float8
                    | Circle
                    | Macaddr8
                    | Money
                    | Macaddr
                    | Aclitem
                    | Date
                    | Time
                    | Timestamp
                    | TimestampTz
                    | Interval
                    | TimeTz
                    | Regprocedure
                    | Regoper
                    | Regoperator
                    | Regclass
                    | Regtype
                    | Uuid
                    | PgLsn
                    | Regconfig
                    | Regdictionary
                    | Regnamespace
                    | Regrole
                    | Regcollation
                    | Xid8
            ),
            PgType::Enum { .. } => false,
            PgType::Domain { base, .. } => base.is_varlena(),
            _ => true,
        }
    }
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDesc {
    /// Column name (`pg_attribute.attname`).
    pub name: String,
    /// Column type.
    pub pg_type: PgType,
    /// The type as `format_type(atttypid, atttypmod)` prints it, e.g. `numeric(10,5)`.
    pub type_name: String,
    /// `pg_attribute.atttypmod` (-1 if none).
    pub typmod: i32,
    /// `pg_attribute.attnotnull`.
    pub not_null: bool,
    /// Whether the column is part of the replica identity (pgoutput's key flag).
    pub is_key: bool,
    /// What rows that existed before the column was added hold in it (no change event
    /// carries it): schema property `pgMissing` / `pgMissingPerRow`.
    pub backfill: Backfill,
}

/// What the rows a table held when a column was added (`ALTER TABLE … ADD COLUMN`) hold in
/// that column. PostgreSQL gives them the column's default without writing a change for
/// any of them, so a consumer that copies rows learns it only from the schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backfill {
    /// NULL (the column had no default when added, or came with the table).
    #[default]
    Null,
    /// This value, in PostgreSQL's text form: a constant or stable default, evaluated once
    /// and kept by PostgreSQL as the column's missing value (`pg_attribute.attmissingval`).
    /// Schema property `pgMissing`.
    Value(String),
    /// A value per row that no event carries: the default is volatile (`random()`,
    /// `clock_timestamp()`, a sequence, an identity), so PostgreSQL rewrote the table
    /// computing it for each row. Schema property `pgMissingPerRow: true`.
    PerRow,
}

impl ColumnDesc {
    /// A column of a built-in type, with `type_name` derived from the OID's name.
    ///
    /// Prefer filling `type_name` from `format_type()`; this is a convenience for tests.
    pub fn builtin(name: &str, oid: u32, typmod: i32) -> Option<ColumnDesc> {
        let pg_type = PgType::from_builtin_oid(oid)?;
        Some(ColumnDesc {
            name: name.to_owned(),
            type_name: pg_type.name(),
            pg_type,
            typmod,
            not_null: false,
            is_key: false,
            backfill: Backfill::Null,
        })
    }
}

/// `pg_class.relreplident`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `f`: the whole old row.
    Full,
    /// `i`: a unique index.
    Index,
    /// `n`: nothing.
    Nothing,
}

impl ReplicaIdentity {
    /// From `relreplident` / pgoutput's replica identity byte.
    pub fn from_byte(b: u8) -> Option<ReplicaIdentity> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            b'n' => Some(ReplicaIdentity::Nothing),
            _ => None,
        }
    }

    /// The `relreplident` byte.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
            ReplicaIdentity::Nothing => b'n',
        }
    }
}

/// A relation (table) as the producer resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationDesc {
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Columns in attribute order (dropped and generated-only columns excluded by the caller).
    pub columns: Vec<ColumnDesc>,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
}
