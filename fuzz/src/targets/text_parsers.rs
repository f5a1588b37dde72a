//! `walbrook_pgtype_avro::parse_text` on arbitrary text for the type chosen by the first
//! input byte (see `walbrook_fuzz::text::types`). It must never panic, and a value it accepts
//! must survive the round trip: `render_text` succeeds, and parsing its output gives the same
//! value again. The same bytes are also read as the type's binary form
//! (`walbrook_pgtype_avro::parse_binary`, for the types that have a binary reader), which
//! must never panic either.

use std::sync::LazyLock;

use crate::same;
use walbrook_pgtype_avro::{PgType, parse_binary, parse_text, pg_binary, render_text};

static TYPES: LazyLock<Vec<(&'static str, PgType, i32)>> = LazyLock::new(crate::text::types);

/// One fuzz input (see the module docs for what must hold).
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (name, ty, typmod) = &TYPES[usize::from(selector) % TYPES.len()];
    if pg_binary::reads(ty) {
        let _ = parse_binary(ty, *typmod, rest);
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(value) = parse_text(ty, *typmod, text) else {
        return;
    };
    let rendered = match render_text(ty, &value) {
        Ok(Some(s)) => s,
        other => panic!("{name}: {text:?} parsed as {value:?} but renders as {other:?}"),
    };
    match parse_text(ty, *typmod, &rendered) {
        Ok(again) => assert!(
            same(&again, &value),
            "{name}: {text:?} -> {value:?} -> {rendered:?} -> {again:?}"
        ),
        Err(e) => panic!("{name}: {text:?} -> {value:?} -> {rendered:?} does not parse: {e}"),
    }
}
