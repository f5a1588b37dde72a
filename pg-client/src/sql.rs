//! SQL text: quoting identifiers and literals.

/// Quotes an identifier for SQL (`"a""b"`), whatever it contains.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `"schema"."table"`.
pub fn quote_qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Quotes a string as a SQL literal (`'it''s'`), as PostgreSQL's `quote_literal` does: a
/// text with a backslash is written `E'…'` with the backslashes doubled, so it reads the
/// same whatever `standard_conforming_strings` is.
pub fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted_like_postgres_quote_literal() {
        assert_eq!(quote_literal("5"), "'5'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'"), r"E'a\\b'''");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_qualified("my.schema", "Robert'); DROP TABLE x;--"),
            "\"my.schema\".\"Robert'); DROP TABLE x;--\""
        );
    }
}
