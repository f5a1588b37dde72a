//! `walbrook_producer::registry::parse_lookup`, the parser of the schema lookup RPC
//! (`<root>.<db>.rpc.schema`, payload = fingerprint text), on arbitrary bytes: it must never
//! panic; what it accepts must be exactly 16 lowercase hex digits (surrounding whitespace
//! allowed) that print back as the same text; what it refuses must get a well-formed 400
//! error answer (headers and JSON body, built without panicking) whose message stays short
//! whatever the request's size.

use crate::rpc::check_refusal;
use walbrook_producer::registry::parse_lookup;

/// One fuzz input (see the module docs for what must hold).
pub fn run(data: &[u8]) {
    match parse_lookup(data) {
        Ok(fingerprint) => {
            let text = std::str::from_utf8(data).expect("accepted a request that is not UTF-8");
            assert_eq!(
                fingerprint.to_string(),
                text.trim(),
                "the fingerprint does not print as the request"
            );
        }
        Err(failure) => {
            check_refusal(&failure);
            assert!(
                failure.message.len() <= 600,
                "the error message grows with the request: {} bytes",
                failure.message.len()
            );
        }
    }
}
