//! The seed corpora of the RPC targets (`schema_lookup`, `snapshot_rpc`): a table of
//! requests with the answer each must get. `committed_rpc_seeds_match` checks that
//! `fuzz/corpus/{schema_lookup,snapshot_rpc}` hold exactly these seeds and that the parsers
//! still answer them so; `cargo test -- --ignored regenerate_rpc_seeds` rewrites the folders.

use std::path::PathBuf;

use walbrook_producer::registry::parse_lookup;
use walbrook_producer::snapshot::table::filter_value_text;
use walbrook_producer::snapshot::{parse_listing, parse_request};

/// Accepted (`true`) or refused with a 400 (`false`).
type Seed = (&'static str, &'static [u8], bool);

const LOOKUPS: &[Seed] = &[
    ("valid", b"0123456789abcdef", true),
    ("valid-whitespace", b"  0123456789abcdef\n", true),
    ("all-f", b"ffffffffffffffff", true),
    ("uppercase", b"0123456789ABCDEF", false),
    ("short", b"0123456789abcde", false),
    ("long", b"0123456789abcdef0", false),
    ("empty", b"", false),
    ("not-hex", b"0123456789abcdeg", false),
    ("json", b"{\"fingerprint\":\"0123456789abcdef\"}", false),
    ("sql", b"'; DROP TABLE _walbrook.schemas; --", false),
    ("nul", b"0123456789abcde\0", false),
    ("not-utf8", b"\xff\xfe0123456789abcd", false),
    ("unicode", b"0123456789abcd\xc3\xa9", false),
    ("newline-inside", b"01234567\n89abcdef", false),
    ("prefixed", b"0x0123456789abcdef", false),
    ("negative", b"-123456789abcdef", false),
];

const SNAPSHOTS: &[Seed] = &[
    ("valid", br#"{"schema":"public","table":"orders"}"#, true),
    ("valid-chunk", br#"{"schema":"public","table":"orders","chunk_size":500}"#, true),
    ("valid-filter-number", br#"{"schema":"public","table":"t","filter":{"column":"id","op":">=","value":10}}"#, true),
    ("valid-filter-string", br#"{"schema":"public","table":"t","filter":{"column":"name","op":"=","value":"it's a \\ test"}}"#, true),
    ("valid-filter-bool", br#"{"schema":"public","table":"t","filter":{"column":"ok","op":"!=","value":true}}"#, true),
    ("valid-is-null", br#"{"schema":"public","table":"t","filter":{"column":"c","op":"is_null"}}"#, true),
    ("hostile-names", br#"{"schema":"a\"; DROP TABLE t; --","table":"x.y *>~ \u00e9\n"}"#, true),
    ("nul-in-name", br#"{"schema":"s","table":"t\u0000"}"#, false),
    ("long-name", br#"{"schema":"s","table":"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"}"#, false),
    ("hostile-value", br#"{"schema":"s","table":"t","filter":{"column":"c\"--","op":"=","value":"'); DROP TABLE t; --"}}"#, true),
    ("max-chunk", br#"{"schema":"s","table":"t","chunk_size":100000}"#, true),
    ("chunk-zero", br#"{"schema":"s","table":"t","chunk_size":0}"#, false),
    ("chunk-too-big", br#"{"schema":"s","table":"t","chunk_size":100001}"#, false),
    ("chunk-negative", br#"{"schema":"s","table":"t","chunk_size":-1}"#, false),
    ("chunk-huge", br#"{"schema":"s","table":"t","chunk_size":99999999999999999999999}"#, false),
    ("chunk-float", br#"{"schema":"s","table":"t","chunk_size":1.5}"#, false),
    ("chunk-string", br#"{"schema":"s","table":"t","chunk_size":"10"}"#, false),
    ("empty-schema", br#"{"schema":"","table":"t"}"#, false),
    ("missing-table", br#"{"schema":"s"}"#, false),
    ("unknown-field", br#"{"schema":"s","table":"t","where":"1=1"}"#, false),
    ("wrong-type", br#"{"schema":1,"table":["t"]}"#, false),
    ("array", br#"[{"schema":"s","table":"t"}]"#, false),
    ("empty", b"", false),
    ("truncated", br#"{"schema":"s","tab"#, false),
    ("bad-op", br#"{"schema":"s","table":"t","filter":{"column":"c","op":"LIKE","value":"%"}}"#, false),
    ("op-newline", b"{\"schema\":\"s\",\"table\":\"t\",\"filter\":{\"column\":\"c\",\"op\":\"=\\n\"}}", false),
    ("filter-object-value", br#"{"schema":"s","table":"t","filter":{"column":"c","op":"=","value":{"a":1}}}"#, false),
    ("filter-null-value", br#"{"schema":"s","table":"t","filter":{"column":"c","op":"=","value":null}}"#, false),
    ("filter-no-value", br#"{"schema":"s","table":"t","filter":{"column":"c","op":"<"}}"#, false),
    ("filter-value-for-is-null", br#"{"schema":"s","table":"t","filter":{"column":"c","op":"is_null","value":1}}"#, false),
    ("filter-nul-value", br#"{"schema":"s","table":"t","filter":{"column":"c","op":"=","value":"a\u0000b"}}"#, false),
    ("filter-unknown-field", br#"{"schema":"s","table":"t","filter":{"column":"c","op":"=","value":1,"raw":"1=1"}}"#, false),
    ("not-utf8", b"{\"schema\":\"\xff\",\"table\":\"t\"}", false),
];

const LISTINGS: &[Seed] = &[
    ("all-empty", b"", true),
    ("all-whitespace", b" \n\t", true),
    ("all-object", b"{}", true),
    ("by-id", br#"{"id":"0192abcd-0000"}"#, true),
    ("by-table", br#"{"schema":"public","table":"orders"}"#, true),
    (
        "hostile",
        br#"{"schema":"'; DROP TABLE _walbrook.snapshots; --","table":"\"\n"}"#,
        true,
    ),
    ("nul", br#"{"id":"\u0000"}"#, false),
    ("table-without-schema", br#"{"table":"orders"}"#, false),
    ("unknown-field", br#"{"status":"running"}"#, false),
    ("unknown-field-newline", b"{\"a\\nb\":1}", false),
    ("wrong-type", br#"{"id":7}"#, false),
    ("null", b"null", false),
    ("garbage", b"\x00\x01\x02", false),
];

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// Every seed file: (target, file name, bytes, accepted). Snapshot seeds start with 0 (the
/// `rpc.snapshot` selector), listing seeds with 1.
fn seeds() -> Vec<(&'static str, String, Vec<u8>, bool)> {
    let mut out = Vec::new();
    for (name, payload, ok) in LOOKUPS {
        out.push(("schema_lookup", format!("{name}"), payload.to_vec(), *ok));
    }
    for (selector, prefix, table) in [(0u8, "snapshot", SNAPSHOTS), (1u8, "list", LISTINGS)] {
        for (name, payload, ok) in table {
            let mut bytes = vec![selector];
            bytes.extend_from_slice(payload);
            out.push(("snapshot_rpc", format!("{prefix}-{name}"), bytes, *ok));
        }
    }
    out
}

/// Whether the target's parser accepts the seed (a refusal must be a 400).
fn accepted(target: &str, bytes: &[u8]) -> bool {
    let result = match target {
        "schema_lookup" => parse_lookup(bytes).map(|_| ()),
        _ => match bytes.split_first() {
            Some((0, payload)) => parse_request(payload, 1000).and_then(|(r, _)| {
                r.filter
                    .as_ref()
                    .map_or(Ok(()), |f| filter_value_text(f).map(|_| ()))
            }),
            Some((_, payload)) => parse_listing(payload).map(|_| ()),
            None => unreachable!("seeds are not empty"),
        },
    };
    match result {
        Ok(()) => true,
        Err(failure) => {
            assert_eq!(failure.code, 400, "{failure:?}");
            false
        }
    }
}

#[test]
fn committed_rpc_seeds_match() {
    let all = seeds();
    for target in ["schema_lookup", "snapshot_rpc"] {
        let mut on_disk: Vec<String> = std::fs::read_dir(dir(target))
            .unwrap_or_else(|e| panic!("{target} corpus: {e}"))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut expected: Vec<String> = all
            .iter()
            .filter(|s| s.0 == target)
            .map(|s| s.1.clone())
            .collect();
        expected.sort();
        assert_eq!(on_disk, expected, "{target}: run regenerate_rpc_seeds");
    }
    for (target, name, bytes, ok) in &all {
        let committed = std::fs::read(dir(target).join(name)).unwrap();
        assert_eq!(
            &committed, bytes,
            "{target}/{name} differs: run regenerate_rpc_seeds"
        );
        assert_eq!(accepted(target, bytes), *ok, "{target}/{name}");
    }
}

#[test]
#[ignore = "rewrites fuzz/corpus/{schema_lookup,snapshot_rpc}; run by hand"]
fn regenerate_rpc_seeds() {
    for target in ["schema_lookup", "snapshot_rpc"] {
        let d = dir(target);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
    }
    for (target, name, bytes, _) in seeds() {
        std::fs::write(dir(target).join(name), bytes).unwrap();
    }
}
