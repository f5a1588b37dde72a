//! Reversible mapping between PostgreSQL identifiers and Avro names.
//!
//! Avro names must match `[A-Za-z_][A-Za-z0-9_]*`; PostgreSQL identifiers can hold any
//! character except NUL. The rule ([`encode_name`]):
//!
//! * ASCII letters, digits and `_` are kept as they are, except:
//! * a leading digit, every other character, and an `_` that is followed by `x` are written as
//!   `_x<hex>_`, where `<hex>` is the lowercase hexadecimal Unicode scalar value
//!   (`my-col` → `my_x2d_col`, `1st` → `_x31_st`, `a_x` → `a_x5f_x`);
//! * the empty name is written `_x_`.
//!
//! Because a literal `_` is never followed by `x` in the output, every `_x` starts an escape and
//! [`decode_name`] inverts the mapping exactly. Names that are already valid Avro names and do not
//! contain `_x` are unchanged.

use crate::Error;

/// Maps any PostgreSQL identifier to a valid Avro name (see the module docs for the rule).
pub fn encode_name(name: &str) -> String {
    if name.is_empty() {
        return "_x_".to_owned();
    }
    let mut out = String::with_capacity(name.len() + 8);
    let mut chars = name.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        let keep = match c {
            'A'..='Z' | 'a'..='z' => true,
            '0'..='9' => !first,
            '_' => chars.peek() != Some(&'x'),
            _ => false,
        };
        if keep {
            out.push(c);
        } else {
            out.push_str("_x");
            out.push_str(&format!("{:x}", u32::from(c)));
            out.push('_');
        }
        first = false;
    }
    out
}

/// Inverts [`encode_name`]. Fails on text that [`encode_name`] cannot produce.
pub fn decode_name(avro: &str) -> Result<String, Error> {
    if avro == "_x_" {
        return Ok(String::new());
    }
    let bad = || Error::InvalidName(avro.to_owned());
    let mut out = String::with_capacity(avro.len());
    let bytes = avro.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'_' && bytes.get(i + 1) == Some(&b'x') {
            let rest = &avro[i + 2..];
            let end = rest.find('_').ok_or_else(bad)?;
            let hex = &rest[..end];
            if hex.is_empty() || hex.len() > 6 || hex.bytes().any(|h| !h.is_ascii_hexdigit()) {
                return Err(bad());
            }
            let code = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
            out.push(char::from_u32(code).ok_or_else(bad)?);
            i += 2 + end + 1;
        } else if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(char::from(b));
            i += 1;
        } else {
            return Err(bad());
        }
    }
    Ok(out)
}

/// Whether `s` is a valid Avro name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_valid_avro_name(s: &str) -> bool {
    let mut it = s.bytes();
    match it.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    it.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        assert_eq!(encode_name("id"), "id");
        assert_eq!(encode_name("my-col"), "my_x2d_col");
        assert_eq!(encode_name("1st"), "_x31_st");
        assert_eq!(encode_name("a_x"), "a_x5f_x");
        assert_eq!(encode_name("a_b"), "a_b");
        assert_eq!(encode_name("Ä b"), "_xc4__x20_b");
        assert_eq!(encode_name(""), "_x_");
        assert_eq!(encode_name("_"), "_");
        assert_eq!(encode_name("😀"), "_x1f600_");
        for s in [
            "id", "my-col", "1st", "a_x", "", "_x", "x_", "Ä b", "😀", "a.b", "_x2d_",
        ] {
            let e = encode_name(s);
            assert!(is_valid_avro_name(&e), "{e}");
            assert_eq!(decode_name(&e).unwrap(), s);
        }
    }

    #[test]
    fn rejects_garbage() {
        for s in ["a-b", "_xzz_", "_x110000_", "_x41", "é"] {
            assert!(decode_name(s).is_err(), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn reversible(s in "\\PC*") {
            let e = encode_name(&s);
            proptest::prop_assert!(is_valid_avro_name(&e));
            proptest::prop_assert_eq!(decode_name(&e).unwrap(), s);
        }

        #[test]
        fn reversible_ascii_tricky(s in "[_x0-9a-f.\\- ]{0,12}") {
            let e = encode_name(&s);
            proptest::prop_assert!(is_valid_avro_name(&e));
            proptest::prop_assert_eq!(decode_name(&e).unwrap(), s);
        }

        #[test]
        fn injective(a in "[_xa1 -]{0,6}", b in "[_xa1 -]{0,6}") {
            if a != b {
                proptest::prop_assert_ne!(encode_name(&a), encode_name(&b));
            }
        }
    }
}
