//! The parsers of the snapshot RPCs on arbitrary bytes. The first byte chooses the RPC:
//! even for `rpc.snapshot` (`walbrook_producer::snapshot::parse_request`, then the filter's
//! value through `table::filter_value_text`), odd for the listing `rpc.snapshots`
//! (`parse_listing`); the rest is the payload.
//!
//! Nothing may panic. A refused request must get a well-formed 400 error answer (headers and
//! JSON body, built without panicking). An accepted request must satisfy what the parser
//! promises (names PostgreSQL can have: not empty, at most 63 bytes, no NUL; chunk size in range, a listed table has its schema) and
//! survive a JSON round trip; its filter's value, quoted as the producer splices it into SQL,
//! must read back as exactly that value (no quote or backslash escapes the literal), the
//! filter column quoted as an identifier likewise, and the snapshot's subject must hold the
//! schema and table as one reversible token each.

use crate::rpc::{check_refusal, read_ident, read_literal};
use walbrook_producer::config::{MAX_CHUNK_SIZE, quote_ident};
use walbrook_producer::snapshot::table::{MAX_FILTER_VALUE, filter_value_text, literal};
use walbrook_producer::snapshot::{parse_listing, parse_request};
use walbrook_protocol::Subjects;
use walbrook_protocol::snapshot::{ListRequest, SnapshotRequest};
use walbrook_protocol::subject::unescape_token;

/// The producer's default `snapshot.chunk_size` in this target.
const DEFAULT_CHUNK: u32 = 1000;

/// One fuzz input (see the module docs for what must hold).
pub fn run(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        snapshot(payload);
    } else {
        listing(payload);
    }
}

fn snapshot(payload: &[u8]) {
    let (request, chunk) = match parse_request(payload, DEFAULT_CHUNK) {
        Ok(accepted) => accepted,
        Err(failure) => return check_refusal(&failure),
    };
    for name in [&request.schema, &request.table] {
        assert!(
            !name.is_empty() && name.len() <= 63 && !name.contains('\0'),
            "name {name:?}"
        );
    }
    assert!((1..=MAX_CHUNK_SIZE).contains(&chunk), "chunk size {chunk}");
    assert_eq!(chunk, request.chunk_size.unwrap_or(DEFAULT_CHUNK));
    let json = serde_json::to_vec(&request).expect("a request serializes");
    let again: SnapshotRequest = serde_json::from_slice(&json).expect("a request re-parses");
    assert_eq!(again, request, "the request changed in a JSON round trip");

    let subject = Subjects::new("walbrook", "db").snapshot(&request.schema, &request.table, "id1");
    let tokens: Vec<&str> = subject.split('.').collect();
    assert_eq!(
        tokens.len(),
        6,
        "subject {subject:?} has the wrong token count"
    );
    assert_eq!(
        unescape_token(tokens[3]).as_deref(),
        Ok(request.schema.as_str())
    );
    assert_eq!(
        unescape_token(tokens[4]).as_deref(),
        Ok(request.table.as_str())
    );
    assert!(
        subject
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'),
        "subject {subject:?} has a space, a wildcard or a non-ASCII byte"
    );

    let Some(filter) = &request.filter else {
        return;
    };
    let column = quote_ident(&filter.column);
    assert_eq!(read_ident(&column).as_deref(), Some(filter.column.as_str()));
    match filter_value_text(filter) {
        Ok(None) => assert!(!filter.op.takes_value() && filter.value.is_none()),
        Ok(Some(text)) => {
            assert!(filter.op.takes_value());
            assert!(!text.contains('\0'), "a NUL byte reaches SQL");
            assert!(
                text.len() <= MAX_FILTER_VALUE,
                "a {} byte value",
                text.len()
            );
            let quoted = literal(&text);
            assert_eq!(
                read_literal(&quoted).as_deref(),
                Some(text.as_str()),
                "the literal {quoted:?} does not read back as its value"
            );
        }
        Err(failure) => check_refusal(&failure),
    }
}

fn listing(payload: &[u8]) {
    let wanted = match parse_listing(payload) {
        Ok(wanted) => wanted,
        Err(failure) => return check_refusal(&failure),
    };
    assert!(wanted.table.is_none() || wanted.schema.is_some());
    for text in [&wanted.id, &wanted.schema, &wanted.table]
        .into_iter()
        .flatten()
    {
        assert!(
            !text.contains('\0'),
            "a NUL character reaches the snapshot store"
        );
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        assert_eq!(wanted, ListRequest::default());
    }
    let json = serde_json::to_vec(&wanted).expect("a listing request serializes");
    let again: ListRequest = serde_json::from_slice(&json).expect("a listing request re-parses");
    assert_eq!(
        again, wanted,
        "the listing request changed in a JSON round trip"
    );
}
