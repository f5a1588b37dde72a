//! The PostgreSQL type cases of issue #3, shared by the PostgreSQL-oracle round trip
//! (`pgtype-avro/tests/pg_roundtrip.rs`) and the snapshot type test
//! (`client/tests/snapshot_types.rs`, which includes this file by path): `SETUP` creates
//! the extensions and user-defined types, `cases()` lists each SQL type with the value
//! expressions inserted into a column of it.

pub const SETUP: &str = r#"
CREATE EXTENSION citext;
CREATE EXTENSION hstore;
CREATE EXTENSION ltree;
CREATE EXTENSION cube;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'with space', 'Ünïcode "q"');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN amount AS numeric(12,2);
CREATE TYPE pair AS (a int4, "b-text" text, c numeric(5,2)[], d timestamptz, m mood);
CREATE TYPE floatrange AS RANGE (subtype = float8);
"#;

/// (SQL type, value expressions). Each expression is inserted into a column of that type.
pub fn cases() -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("bool", s(&["true", "false", "NULL"])),
        ("int2", s(&["-32768", "32767", "0"])),
        ("int4", s(&["-2147483648", "2147483647"])),
        ("int8", s(&["-9223372036854775808", "9223372036854775807"])),
        (
            "float4",
            s(&[
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "'1.4e-45'",
                "'3.4028235e38'",
                "'-0'",
                "'0.1'",
                "'123.456'",
            ]),
        ),
        (
            "float8",
            s(&[
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "'5e-324'",
                "'1.7976931348623157e308'",
                "'-0'",
                "'0.1'",
                "'3.141592653589793'",
            ]),
        ),
        (
            "numeric",
            s(&[
                "'0'",
                "'-0.000001'",
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "'1.50'",
                "'123456789012345678901234567890123456789.123456789'",
                "repeat('9', 1000)::numeric",
                "('0.' || repeat('0', 16000) || '1')::numeric",
                "'1e-20'",
            ]),
        ),
        (
            "numeric(10,5)",
            s(&["'231.112'", "'-99999.99999'", "'NaN'", "'0'", "'0.00001'"]),
        ),
        (
            "numeric(38,0)",
            s(&["'-99999999999999999999999999999999999999'", "'1'"]),
        ),
        ("numeric(3,5)", s(&["'0.00123'", "'-0.00999'"])),
        ("numeric(2,-3)", s(&["'12000'", "'-99000'"])),
        (
            "money",
            s(&[
                "'12.34'",
                "'-92233720368547758.08'",
                "'92233720368547758.07'",
            ]),
        ),
        (
            "text",
            s(&[
                "''",
                "'hello'",
                "E'multi\\nline\\ttab'",
                "'Unicode ✓ 😀 Ünïcode'",
                "'quote '' \" \\ backslash'",
                "repeat('x', 100000)",
                "'NULL'",
                "NULL",
            ]),
        ),
        ("varchar(5)", s(&["'abc'", "''"])),
        ("varchar", s(&["'unbounded'"])),
        ("char(5)", s(&["'ab'", "'abcde'"])),
        ("\"char\"", s(&["'a'", "'\\377'", "''"])),
        ("name", s(&["'some_name'", "'Ünï'"])),
        ("citext", s(&["'MiXeD Case'"])),
        (
            "bytea",
            s(&["'\\x'", "'\\x00ff10'", "decode(repeat('ab', 5000), 'hex')"]),
        ),
        (
            "uuid",
            s(&[
                "'00000000-0000-0000-0000-000000000000'",
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            ]),
        ),
        (
            "json",
            s(&[
                "'{\"b\": 1, \"a\": [1.000000000000000000001, 2e400]}'",
                "'[]'",
                "'\"str\"'",
                "'null'",
                "'123456789012345678901234567890'",
                "E'{\\n  \"hello\": \"world\"\\n}'",
                "'{\"a\":1,\"a\":2}'",
            ]),
        ),
        (
            "jsonb",
            s(&[
                "'{\"b\": 1, \"a\": [1.000000000000000000001, 2e400]}'",
                "'[]'",
                "'\"str\"'",
                "'null'",
                "'{\"html\": \"<a>&</a>\"}'",
            ]),
        ),
        (
            "date",
            s(&[
                "'2023-01-23'",
                "'infinity'",
                "'-infinity'",
                "'4713-01-01 BC'",
                "'5874897-12-31'",
                "'0001-01-01'",
                "'0001-12-31 BC'",
                "'2000-02-29'",
            ]),
        ),
        (
            "time",
            s(&[
                "'00:00'",
                "'24:00:00'",
                "'12:30:00.123456'",
                "'23:59:59.999999'",
            ]),
        ),
        ("time(2)", s(&["'12:30:00.12'"])),
        (
            "timetz",
            s(&[
                "'12:30:00+05:30'",
                "'00:00:00-15:59'",
                "'24:00:00+00'",
                "'12:00:00.5-00:00:01'",
            ]),
        ),
        (
            "timestamp",
            s(&[
                "'2019-04-12 02:10:31.782068'",
                "'infinity'",
                "'-infinity'",
                "'4713-01-01 00:00:00 BC'",
                "'294246-12-31 23:59:59.999999'",
                "'1970-01-01'",
                "'2000-02-29 12:00:00.000001'",
                "'0044-03-15 12:00:00 BC'",
            ]),
        ),
        ("timestamp(3)", s(&["'2020-01-01 00:00:00.123'"])),
        (
            "timestamptz",
            s(&[
                "'2019-02-23 23:16:46.86455+01'",
                "'infinity'",
                "'-infinity'",
                "'4713-01-01 00:00:00+00 BC'",
                "'294246-12-31 23:59:59.999999+00'",
                "'1900-01-01 00:00:00+00'",
                "now()",
            ]),
        ),
        (
            "interval",
            s(&[
                "'0'",
                "'1 year 2 mons 3 days 04:05:06.789'",
                "'-1 year +2 mons -3 days 04:05:06'",
                "'178956970 years 7 mons 2147483647 days 2562047788:00:54.775807'",
                "'-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807'",
                "'1 microsecond'",
                "'-1 microsecond'",
                "'100 hours'",
                "'-1 day +1 hour'",
            ]),
        ),
        ("interval(0)", s(&["'1 day 00:00:01'"])),
        (
            "inet",
            s(&["'192.168.1.1'", "'::1'", "'10.0.0.0/8'", "'2001:db8::1/64'"]),
        ),
        ("cidr", s(&["'10.0.0.0/8'", "'2001:db8::/32'"])),
        ("macaddr", s(&["'08:00:2b:01:02:03'"])),
        ("macaddr8", s(&["'08:00:2b:01:02:03:04:05'"])),
        ("bit(3)", s(&["B'101'"])),
        ("varbit", s(&["B''", "B'1010101'"])),
        ("xml", s(&["'<a x=\"1\">x &amp; y</a>'", "'text only'"])),
        ("tsvector", s(&["'a fat cat:1A,2B sat'"])),
        ("tsquery", s(&["'fat & (rat | !cat) <-> dog'"])),
        (
            "point",
            s(&["'(1,2)'", "'(1.5e300,-0)'", "'(NaN,Infinity)'"]),
        ),
        ("line", s(&["'{1,2,3}'"])),
        ("lseg", s(&["'[(0,0),(1,1)]'"])),
        ("box", s(&["'(1,1),(0,0)'"])),
        ("path", s(&["'((0,0),(1,1),(2,0))'", "'[(0,0),(1,1)]'"])),
        ("polygon", s(&["'((0,0),(1,1),(1,0))'"])),
        ("circle", s(&["'<(0,0),1.5>'"])),
        (
            "int4range",
            s(&["'empty'", "'[1,10)'", "'(,5]'", "'[3,)'", "'(,)'"]),
        ),
        (
            "int8range",
            s(&["'[-9223372036854775808,9223372036854775807)'"]),
        ),
        (
            "numrange",
            s(&["'[1.5,2.25]'", "'(,)'", "'[-Infinity,Infinity]'"]),
        ),
        (
            "tsrange",
            s(&[
                "'[\"2020-01-01 00:00:00\",infinity)'",
                "'[-infinity,infinity]'",
            ]),
        ),
        (
            "tstzrange",
            s(&["'[\"2020-01-01 00:00:00+00\",\"2021-01-01 00:00:00+00\")'"]),
        ),
        (
            "daterange",
            s(&["'[2020-01-01,2021-01-01)'", "'[-infinity,)'", "'empty'"]),
        ),
        ("floatrange", s(&["'[1.5,Infinity]'", "'(-Infinity,0)'"])),
        ("int4multirange", s(&["'{}'", "'{[1,3),[5,7)}'"])),
        ("int8multirange", s(&["'{[1,3)}'"])),
        ("nummultirange", s(&["'{[1.5,2.5), (3,)}'"])),
        (
            "datemultirange",
            s(&["'{[2020-01-01,2020-02-01),[2021-01-01,infinity)}'"]),
        ),
        (
            "tsmultirange",
            s(&["'{[\"2020-01-01 00:00:00\",\"2020-02-01 00:00:00\")}'"]),
        ),
        ("tstzmultirange", s(&["'{(,\"2020-01-01 00:00:00+00\"]}'"])),
        ("floatmultirange", s(&["'{[1,2]}'"])),
        ("oid", s(&["'0'", "'4294967295'"])),
        ("xid", s(&["'12345'"])),
        ("cid", s(&["'5'"])),
        ("xid8", s(&["'0'", "'18446744073709551615'"])),
        (
            "pg_lsn",
            s(&["'0/0'", "'FFFFFFFF/FFFFFFFF'", "'16/B374D848'"]),
        ),
        ("tid", s(&["'(0,1)'"])),
        ("jsonpath", s(&["'$.a[*] ? (@ > 1)'"])),
        ("txid_snapshot", s(&["'10:20:10,14,15'"])),
        ("pg_snapshot", s(&["'10:20:10,14,15'"])),
        ("regclass", s(&["'pg_class'"])),
        ("hstore", s(&["'a=>1, \"b c\"=>NULL, \"\"=>\"\\\"\"'"])),
        ("ltree", s(&["'Top.Science.Astronomy'", "''"])),
        ("cube", s(&["'(1,2),(3,4)'", "'(1e300)'"])),
        ("ltree[]", s(&["ARRAY['a.b'::ltree, NULL]"])),
        ("mood", s(&["'sad'", "'with space'", "'Ünïcode \"q\"'"])),
        ("posint", s(&["1", "2147483647"])),
        ("amount", s(&["'12.34'", "'NaN'", "'-9999999999.99'"])),
        (
            "pair",
            s(&[
                "ROW(1, 'a \"b\", c', ARRAY[1.5, NULL]::numeric(5,2)[], '2020-01-01 00:00:00+00', 'with space')",
                "ROW(NULL, NULL, NULL, NULL, NULL)",
                "ROW(NULL, '', '{}', 'infinity', 'sad')",
            ]),
        ),
        // Arrays.
        (
            "int4[]",
            s(&[
                "'{}'",
                "'{1,NULL,3}'",
                "'{{1,2},{3,4}}'",
                "'[0:1][-5:-4]={{1,NULL},{3,4}}'",
                "'{{{1},{2}},{{3},{4}}}'",
                "'{NULL}'",
                "'[5:5]={7}'",
            ]),
        ),
        (
            "text[]",
            s(&[
                "'{\"\", \"NULL\", NULL, \"a,b\", \"q\\\"uote\", \"back\\\\slash\", \" sp \", \"ü\", \"{x}\"}'",
                "ARRAY[repeat('y', 10000)]",
            ]),
        ),
        ("numeric(10,5)[]", s(&["'{1.5,NaN,NULL}'"])),
        ("numeric[]", s(&["'{1e-20,NaN,Infinity,-Infinity,12.500}'"])),
        ("float8[]", s(&["'{NaN,Infinity,-0,1e-300}'"])),
        ("float4[]", s(&["'{NaN,-Infinity,0.1}'"])),
        (
            "timestamptz[]",
            s(&["'{infinity,\"2020-01-01 00:00:00+00\",NULL}'"]),
        ),
        ("timestamp[]", s(&["'{-infinity,\"2020-01-01 00:00:00\"}'"])),
        ("date[]", s(&["'{infinity,2020-01-01,-infinity}'"])),
        ("time[]", s(&["'{12:30,13:20}'"])),
        ("timetz[]", s(&["'{12:30+02}'"])),
        ("bytea[]", s(&["ARRAY['\\x00'::bytea, NULL, '\\x']"])),
        (
            "json[]",
            s(&["ARRAY['{\"a\": 1}'::json, NULL, '[1, 2]']", "'{}'"]),
        ),
        ("jsonb[]", s(&["ARRAY['{\"a\": 1}'::jsonb, 'null']"])),
        (
            "uuid[]",
            s(&["'{46145d05-8bc7-403b-8098-1baf99e97b56,NULL}'"]),
        ),
        ("box[]", s(&["'{(1,1),(0,0);(2,2),(1,1)}'"])),
        ("point[]", s(&["'{\"(1,2)\",NULL}'"])),
        ("interval[]", s(&["'{\"1 day\",\"-00:00:01\"}'"])),
        ("mood[]", s(&["'{sad,NULL,\"with space\"}'"])),
        (
            "pair[]",
            s(&["ARRAY[ROW(1, 'x', NULL, NULL, 'ok')::pair, NULL]"]),
        ),
        ("int4range[]", s(&["'{\"[1,2)\",empty}'"])),
        (
            "int4multirange[]",
            s(&["ARRAY['{[1,2)}'::int4multirange, '{}']"]),
        ),
        ("bool[]", s(&["'{t,f,NULL}'"])),
        ("\"char\"[]", s(&["'{a,b}'"])),
        ("char(3)[]", s(&["'{a,bc}'"])),
        ("varchar(4)[]", s(&["'{abcd,\"\"}'"])),
        ("inet[]", s(&["'{10.0.0.1,::1}'"])),
        ("varbit[]", s(&["'{101,\"\"}'"])),
        (
            "int8[]",
            s(&["'{-9223372036854775808,9223372036854775807}'"]),
        ),
        ("int2[]", s(&["'{{1,2,3}}'"])),
        ("money[]", s(&["'{1.00,-2.50}'"])),
        ("posint[]", s(&["'{1,2}'"])),
        ("amount[]", s(&["'{1.5,NaN}'"])),
        ("citext[]", s(&["'{A,b}'"])),
        ("hstore[]", s(&["ARRAY['a=>1'::hstore]"])),
        ("xid8[]", s(&["'{1,18446744073709551615}'"])),
        ("pg_lsn[]", s(&["'{0/1}'"])),
        ("oid[]", s(&["'{1,4294967295}'"])),
        ("macaddr[]", s(&["'{08:00:2b:01:02:03}'"])),
        ("cidr[]", s(&["'{10.0.0.0/8}'"])),
        ("tsvector[]", s(&["ARRAY['a b'::tsvector]"])),
        ("xml[]", s(&["ARRAY['<a/>'::xml]"])),
    ]
}
