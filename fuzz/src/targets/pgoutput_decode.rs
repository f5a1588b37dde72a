//! `walbrook_producer::pgoutput::decode` on arbitrary bytes: it must never panic, and
//! whatever it accepts must re-encode to a message of the same length that decodes to the
//! same value (so no field is skipped, misread or invented).

use crate::pgoutput::encode;
use bytes::Bytes;
use walbrook_producer::pgoutput::decode;

/// One fuzz input (see the module docs for what must hold).
pub fn run(data: &[u8]) {
    let Ok(message) = decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = encode(&message);
    assert_eq!(
        again.len(),
        data.len(),
        "re-encoding {message:?} changed the length"
    );
    assert_eq!(
        decode(Bytes::from(again)).as_ref(),
        Ok(&message),
        "the re-encoded message decodes differently"
    );
}
