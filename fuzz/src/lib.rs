//! Shared pieces of Walbrook's cargo-fuzz targets (`fuzz_targets/`), kept in a library so the
//! corpus tests (`tests/corpus.rs`) use exactly what the targets use.
//!
//! * [`pgoutput::encode`]: the inverse of `walbrook_producer::pgoutput::decode`, for the
//!   `pgoutput_decode` target's re-encoding property.
//! * [`schemas`]: the fixed tables the `single_object` target decodes against.
//! * [`text`]: the type chosen by the first byte of a `text_parsers` input.
//! * [`same`]: value equality that treats NaN as equal to itself.
//! * [`rpc`]: what the RPC targets (`schema_lookup`, `snapshot_rpc`) check of an answer.
//! * [`targets`]: the bodies of the fuzz targets themselves.

pub mod targets;

use walbrook_pgtype_avro::PgValue;

/// Whether two values are the same: structural equality, except that floating-point values
/// compare by their exact printed form (so `NaN` equals `NaN` and `-0` differs from `0`).
pub fn same(a: &PgValue, b: &PgValue) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Whether two decoded rows are the same (see [`same`]).
pub fn same_row(a: &[(String, PgValue)], b: &[(String, PgValue)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, va), (nb, vb))| na == nb && same(va, vb))
}

pub mod pgoutput {
    //! An encoder for decoded pgoutput messages.

    use walbrook_producer::pgoutput::{
        ColumnValue, Message, OldKind, OldTuple, ReplicaIdentity, Tuple,
    };

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn count16(out: &mut Vec<u8>, n: usize) {
        out.extend_from_slice(&(n as i16).to_be_bytes());
    }

    fn tuple(out: &mut Vec<u8>, t: &Tuple) {
        count16(out, t.0.len());
        for v in &t.0 {
            match v {
                ColumnValue::Null => out.push(b'n'),
                ColumnValue::UnchangedToast => out.push(b'u'),
                ColumnValue::Text(b) | ColumnValue::Binary(b) => {
                    out.push(if matches!(v, ColumnValue::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    fn old(out: &mut Vec<u8>, o: &OldTuple) {
        out.push(match o.kind {
            OldKind::Key => b'K',
            OldKind::Full => b'O',
        });
        tuple(out, &o.tuple);
    }

    /// Encodes a message in pgoutput's protocol version 1 wire format. Bits that the decoder
    /// does not keep (unused flag bits) are written as zero, so the result has the length of
    /// the decoded input and decodes to the same message.
    pub fn encode(m: &Message) -> Vec<u8> {
        let mut o = Vec::new();
        match m {
            Message::Begin(b) => {
                o.push(b'B');
                o.extend_from_slice(&b.final_lsn.0.to_be_bytes());
                o.extend_from_slice(&b.commit_ts.0.to_be_bytes());
                o.extend_from_slice(&b.xid.0.to_be_bytes());
            }
            Message::Commit(c) => {
                o.push(b'C');
                o.push(c.flags);
                o.extend_from_slice(&c.commit_lsn.0.to_be_bytes());
                o.extend_from_slice(&c.end_lsn.0.to_be_bytes());
                o.extend_from_slice(&c.commit_ts.0.to_be_bytes());
            }
            Message::Origin(x) => {
                o.push(b'O');
                o.extend_from_slice(&x.commit_lsn.0.to_be_bytes());
                string(&mut o, &x.name);
            }
            Message::Relation(r) => {
                o.push(b'R');
                o.extend_from_slice(&r.id.0.to_be_bytes());
                string(&mut o, &r.namespace);
                string(&mut o, &r.name);
                o.push(match r.replica_identity {
                    ReplicaIdentity::Default => b'd',
                    ReplicaIdentity::Nothing => b'n',
                    ReplicaIdentity::Full => b'f',
                    ReplicaIdentity::Index => b'i',
                });
                count16(&mut o, r.columns.len());
                for c in &r.columns {
                    o.push(u8::from(c.is_key));
                    string(&mut o, &c.name);
                    o.extend_from_slice(&c.type_oid.0.to_be_bytes());
                    o.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            Message::Type(t) => {
                o.push(b'Y');
                o.extend_from_slice(&t.oid.0.to_be_bytes());
                string(&mut o, &t.namespace);
                string(&mut o, &t.name);
            }
            Message::Insert(i) => {
                o.push(b'I');
                o.extend_from_slice(&i.relation.0.to_be_bytes());
                o.push(b'N');
                tuple(&mut o, &i.new);
            }
            Message::Update(u) => {
                o.push(b'U');
                o.extend_from_slice(&u.relation.0.to_be_bytes());
                if let Some(x) = &u.old {
                    old(&mut o, x);
                }
                o.push(b'N');
                tuple(&mut o, &u.new);
            }
            Message::Delete(d) => {
                o.push(b'D');
                o.extend_from_slice(&d.relation.0.to_be_bytes());
                old(&mut o, &d.old);
            }
            Message::Truncate(t) => {
                o.push(b'T');
                o.extend_from_slice(&(t.relations.len() as u32).to_be_bytes());
                o.push(u8::from(t.cascade) | (u8::from(t.restart_identity) << 1));
                for r in &t.relations {
                    o.extend_from_slice(&r.0.to_be_bytes());
                }
            }
            Message::LogicalMessage(l) => {
                o.push(b'M');
                o.push(u8::from(l.transactional));
                o.extend_from_slice(&l.lsn.0.to_be_bytes());
                string(&mut o, &l.prefix);
                o.extend_from_slice(&(l.content.len() as i32).to_be_bytes());
                o.extend_from_slice(&l.content);
            }
        }
        o
    }
}

pub mod schemas {
    //! The tables the `single_object` target decodes against: together they use every kind of
    //! value slot (plain, nullable, unions with infinity or NaN branches, the unchanged-TOAST
    //! marker, arrays, ranges, multiranges, composites, domains and enums).

    use walbrook_pgtype_avro::{
        ColumnDesc, CompositeField, PgType, RelationDesc, ReplicaIdentity, TableSchema,
        TableSchemas,
    };

    fn builtin(oid: u32) -> PgType {
        PgType::from_builtin_oid(oid).expect("a built-in OID")
    }

    fn col(name: &str, pg_type: PgType, type_name: &str, typmod: i32) -> ColumnDesc {
        ColumnDesc {
            name: name.into(),
            pg_type,
            type_name: type_name.into(),
            typmod,
            not_null: false,
            is_key: false,
            backfill: Default::default(),
        }
    }

    fn key(mut c: ColumnDesc) -> ColumnDesc {
        c.is_key = true;
        c.not_null = true;
        c
    }

    fn not_null(mut c: ColumnDesc) -> ColumnDesc {
        c.not_null = true;
        c
    }

    /// `numeric(p,s)`'s `atttypmod`.
    pub fn numeric_typmod(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | scale) + 4
    }

    /// The relations, in the order [`all`] uses.
    pub fn relations() -> Vec<RelationDesc> {
        let composite = PgType::Composite {
            oid: 90_001,
            name: "public.pair".into(),
            fields: vec![
                CompositeField {
                    name: "n".into(),
                    pg_type: builtin(23),
                    typmod: -1,
                },
                CompositeField {
                    name: "label".into(),
                    pg_type: builtin(25),
                    typmod: -1,
                },
                CompositeField {
                    name: "days".into(),
                    pg_type: builtin(1182),
                    typmod: -1,
                },
            ],
        };
        let domain = PgType::Domain {
            oid: 90_002,
            name: "public.price".into(),
            base: Box::new(builtin(1700)),
            base_typmod: numeric_typmod(5, 1),
        };
        let mood = PgType::Enum {
            oid: 90_003,
            name: "public.mood".into(),
            labels: vec!["sad".into(), "ok".into(), "happy".into()],
        };
        vec![
            // The brief's mixed table: int8 / text / numeric(10,2) / timestamptz / uuid / int4[].
            RelationDesc {
                schema: "public".into(),
                table: "orders".into(),
                columns: vec![
                    key(col("id", builtin(20), "bigint", -1)),
                    col("name", builtin(25), "text", -1),
                    col(
                        "amount",
                        builtin(1700),
                        "numeric(10,2)",
                        numeric_typmod(10, 2),
                    ),
                    col("at", builtin(1184), "timestamp with time zone", -1),
                    col("uid", builtin(2950), "uuid", -1),
                    col("tags", builtin(1007), "integer[]", -1),
                ],
                replica_identity: ReplicaIdentity::Default,
            },
            // Scalars of every binary shape, REPLICA IDENTITY FULL (every column in `before`).
            RelationDesc {
                schema: "public".into(),
                table: "scalars".into(),
                columns: vec![
                    not_null(col("b", builtin(16), "boolean", -1)),
                    col("i2", builtin(21), "smallint", -1),
                    col("i4", builtin(23), "integer", -1),
                    col("o", builtin(26), "oid", -1),
                    col("x8", builtin(5069), "xid8", -1),
                    col("lsn", builtin(3220), "pg_lsn", -1),
                    col("f4", builtin(700), "real", -1),
                    col("f8", builtin(701), "double precision", -1),
                    col("n", builtin(1700), "numeric", -1),
                    col("ba", builtin(17), "bytea", -1),
                    col("d", builtin(1082), "date", -1),
                    col("t", builtin(1083), "time without time zone", -1),
                    col("tz", builtin(1266), "time with time zone", -1),
                    col("ts", builtin(1114), "timestamp without time zone", -1),
                    col("iv", builtin(1186), "interval", -1),
                    col("j", builtin(3802), "jsonb", -1),
                    col("pt", builtin(600), "point", -1),
                ],
                replica_identity: ReplicaIdentity::Full,
            },
            // Containers, a domain, an enum and a composite; an odd table name; key on a text
            // column through a unique index.
            RelationDesc {
                schema: "Sales Data".into(),
                table: "line-items".into(),
                columns: vec![
                    key(col("sku", builtin(25), "text", -1)),
                    col("r", builtin(3904), "int4range", -1),
                    col("tr", builtin(3910), "tstzrange", -1),
                    col("mr", builtin(4451), "int4multirange", -1),
                    col(
                        "nums",
                        builtin(1231),
                        "numeric(6,3)[]",
                        numeric_typmod(6, 3),
                    ),
                    col("texts", builtin(1009), "text[]", -1),
                    col("price", domain, "public.price", -1),
                    col("mood", mood, "public.mood", -1),
                    col("pair", composite, "public.pair", -1),
                    col("stamps", builtin(1185), "timestamp with time zone[]", -1),
                ],
                replica_identity: ReplicaIdentity::Index,
            },
        ]
    }

    /// One record schema of one of the [`relations`].
    pub struct Record {
        /// E.g. `orders.after`.
        pub label: String,
        /// The record schema.
        pub schema: TableSchema,
        /// The relation's column names, in order (what `encode_values` takes one value for).
        pub relation_columns: Vec<String>,
    }

    /// Every record schema of every relation (`after`, `before` when there is one, `row`).
    pub fn all() -> Vec<Record> {
        let mut out = Vec::new();
        for r in relations() {
            let s = TableSchemas::new(&r).expect("the fixed relations have schemas");
            let relation_columns: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
            let mut push = |t: TableSchema| {
                out.push(Record {
                    label: format!("{}.{}", r.table, t.kind().as_str()),
                    schema: t,
                    relation_columns: relation_columns.clone(),
                });
            };
            push(s.after);
            if let Some(b) = s.before {
                push(b);
            }
            push(s.row);
        }
        out
    }
}

pub mod text {
    //! The types of the `text_parsers` target: an input is one selector byte (taken modulo
    //! the table's length) followed by the value's text.

    use walbrook_pgtype_avro::{CompositeField, PgType};

    use crate::schemas::numeric_typmod;

    /// (name used for seed files, type, typmod), indexed by the selector byte.
    pub fn types() -> Vec<(&'static str, PgType, i32)> {
        let b = |oid: u32| PgType::from_builtin_oid(oid).expect("a built-in OID");
        let composite = PgType::Composite {
            oid: 90_001,
            name: "public.pair".into(),
            fields: vec![
                CompositeField {
                    name: "n".into(),
                    pg_type: b(23),
                    typmod: -1,
                },
                CompositeField {
                    name: "label".into(),
                    pg_type: b(25),
                    typmod: -1,
                },
                CompositeField {
                    name: "when".into(),
                    pg_type: b(3910),
                    typmod: -1,
                },
            ],
        };
        vec![
            ("int4_array", b(1007), -1),
            ("text_array", b(1009), -1),
            ("numeric_array", b(1231), numeric_typmod(10, 2)),
            ("numeric", b(1700), -1),
            ("interval", b(1186), -1),
            ("int4range", b(3904), -1),
            ("tstzrange", b(3910), -1),
            ("int4multirange", b(4451), -1),
            ("point", b(600), -1),
            ("box", b(603), -1),
            ("path", b(602), -1),
            ("polygon", b(604), -1),
            ("circle", b(718), -1),
            ("lseg", b(601), -1),
            ("line", b(628), -1),
            ("timestamptz", b(1184), -1),
            ("date", b(1082), -1),
            ("bit", b(1560), -1),
            ("inet", b(869), -1),
            ("tsvector", b(3614), -1),
            ("timestamp", b(1114), -1),
            ("time", b(1083), -1),
            ("timetz", b(1266), -1),
            ("float4", b(700), -1),
            ("float8", b(701), -1),
            ("bytea", b(17), -1),
            ("int8", b(20), -1),
            ("uuid", b(2950), -1),
            ("pg_lsn", b(3220), -1),
            ("box_array", b(1020), -1),
            ("interval_array", b(1187), -1),
            ("daterange", b(3912), -1),
            ("numrange", b(3906), -1),
            ("tsmultirange", b(4533), -1),
            ("tstzrange_array", b(3911), -1),
            ("int4multirange_array", b(6150), -1),
            ("float8_array", b(1022), -1),
            ("bytea_array", b(1001), -1),
            ("composite", composite, -1),
        ]
    }
}

pub mod rpc {
    //! Checks shared by the RPC request targets: the error answer a refused request gets,
    //! and readers of the SQL quoting the snapshot filter uses.

    use walbrook_producer::registry::error_reply;
    use walbrook_producer::snapshot::RpcFailure;
    use walbrook_protocol::snapshot::RpcErrorBody;

    /// Builds the error answer of `failure` as the producer sends it and checks it: a 400,
    /// the code and message in the `Nats-Service-Error*` headers, and a JSON body that
    /// parses back to the same code and message.
    pub fn check_refusal(failure: &RpcFailure) {
        assert_eq!(
            failure.code, 400,
            "a malformed request is a 400: {failure:?}"
        );
        assert!(!failure.message.is_empty(), "an error without a message");
        let (headers, body) = error_reply(failure.code, &failure.message);
        assert_eq!(
            headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
            Some("400")
        );
        assert!(headers.get("Nats-Service-Error").is_some());
        let parsed: RpcErrorBody = serde_json::from_slice(&body).expect("the error body is JSON");
        assert_eq!(parsed.error.code, failure.code);
        assert_eq!(parsed.error.message, failure.message);
    }

    /// Reads back a literal made by `walbrook_producer::snapshot::table::literal` the way
    /// PostgreSQL reads an `E'…'` string: `None` when it is not exactly one such literal
    /// (an unescaped quote before the end, a backslash escape other than `\\`, text after it).
    pub fn read_literal(sql: &str) -> Option<String> {
        let body = sql.strip_prefix("E'")?;
        let mut out = String::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '\\' => out.push('\\'),
                    _ => return None,
                },
                '\'' => {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                        out.push('\'');
                    } else {
                        return chars.next().is_none().then_some(out);
                    }
                }
                c => out.push(c),
            }
        }
        None
    }

    /// Reads back an identifier quoted by `walbrook_producer::config::quote_ident`: `None`
    /// when it is not exactly one quoted identifier.
    pub fn read_ident(sql: &str) -> Option<String> {
        let body = sql.strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    out.push('"');
                } else {
                    return chars.next().is_none().then_some(out);
                }
            } else {
                out.push(c);
            }
        }
        None
    }
}
