//! SQL text as a span may carry it: every literal replaced by `?`, and the
//! operation and collection the statement names, when it is simple enough
//! to tell.
//!
//! The text comes from the traced program (untrusted, possibly cut short by
//! the probe's capacity). The tokenizer knows what all common SQL dialects
//! agree on:
//!
//! - string literals `'...'` (a doubled `''` inside) become `?`; one with a
//!   backslash inside is refused, because dialects disagree on whether the
//!   backslash escapes the quote (MySQL) or not (standard SQL), and guessing
//!   wrong could leave part of a literal outside the quotes;
//! - numbers (`42`, `3.14`, `.5`, `1e-3`, `0x1F`) become `?`; a list of them
//!   keeps one `?` each (`IN (1, 2, 3)` becomes `IN (?, ?, ?)`: the text
//!   keeps the statement's shape, and nothing of the values);
//! - `"..."` is an identifier in standard SQL but a string in MySQL: it is
//!   kept only where a table name is expected (after `FROM`, `INTO`,
//!   `UPDATE`, `JOIN`, `TABLE`, `EXISTS`, or a `.`), else it becomes `?`;
//! - `` `...` `` is an identifier (kept);
//! - comments (`-- ...`, `# ...`, `/* ... */`) are dropped (a space stands
//!   in for each): they may hold anything;
//! - placeholders (`?`, `$1`, `:name`, `@p1`), words, operators and
//!   whitespace are kept as they are.
//!
//! Text that cannot be tokenized (a byte outside ASCII or a control
//! character outside quotes, an unterminated literal or comment in a text
//! that was not cut short, a `$` that is no placeholder, a backslash in a
//! literal) is cut to its first word (`SELECT`), never exported raw. A text
//! the probe cut short loses its unterminated tail literal to a `?`.

use std::ops::Range;

/// What [`sanitize`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sanitized {
    /// The text for `db.query.text`; `None` when nothing safe is left.
    pub text: Option<String>,
    /// `db.operation.name` (upper case: `SELECT`, `CREATE TABLE`).
    pub operation: Option<String>,
    /// `db.collection.name`, when the statement names exactly one.
    pub collection: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    /// A word: keyword or unquoted identifier.
    Word,
    /// `` `name` ``.
    Backquoted,
    /// `"name"` or, in MySQL, a string.
    DoubleQuoted,
    String,
    Number,
    /// `?`, `$1`, `:name`, `@name`.
    Placeholder,
    Punct,
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    range: Range<usize>,
}

/// The tokens of `text`, and whether all of it could be tokenized (the
/// tokens are the prefix before the first problem otherwise). `truncated`:
/// the text was cut short, so an unterminated literal or comment at its end
/// is expected.
fn tokenize(text: &[u8], truncated: bool) -> (Vec<Token>, bool) {
    let mut tokens = Vec::new();
    let mut i = 0;
    let n = text.len();
    let is_word_start = |b: u8| b.is_ascii_alphabetic() || b == b'_';
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    while i < n {
        let b = text[i];
        let start = i;
        let kind = match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => {
                while i < n && matches!(text[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0c) {
                    i += 1;
                }
                Kind::Space
            }
            b'-' if text.get(i + 1) == Some(&b'-') => {
                while i < n && text[i] != b'\n' {
                    i += 1;
                }
                Kind::Comment
            }
            b'#' => {
                while i < n && text[i] != b'\n' {
                    i += 1;
                }
                Kind::Comment
            }
            b'/' if text.get(i + 1) == Some(&b'*') => {
                match find(&text[i + 2..], b"*/") {
                    Some(end) => i += 2 + end + 2,
                    None if truncated => i = n,
                    None => return (tokens, false),
                }
                Kind::Comment
            }
            b'\'' => {
                i += 1;
                loop {
                    match text.get(i) {
                        None if truncated => break,
                        None | Some(b'\\') => return (tokens, false),
                        Some(b'\'') if text.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                Kind::String
            }
            b'"' | b'`' => {
                let quote = b;
                i += 1;
                let mut cut = false;
                loop {
                    match text.get(i) {
                        None if truncated => {
                            cut = true;
                            break;
                        }
                        None => return (tokens, false),
                        // A backslash could escape the quote in MySQL strings.
                        Some(b'\\') if quote == b'"' => return (tokens, false),
                        Some(&c) if c == quote && text.get(i + 1) == Some(&quote) => i += 2,
                        Some(&c) if c == quote => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                if cut {
                    // Cut short: whatever it was, only a `?` is certain.
                    Kind::String
                } else if quote == b'`' {
                    Kind::Backquoted
                } else {
                    Kind::DoubleQuoted
                }
            }
            b'0'..=b'9' => {
                i = number_end(text, i);
                Kind::Number
            }
            b'.' if text.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = number_end(text, i);
                Kind::Number
            }
            b'$' if text.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while i < n && text[i].is_ascii_digit() {
                    i += 1;
                }
                Kind::Placeholder
            }
            b'?' => {
                i += 1;
                while i < n && text[i].is_ascii_digit() {
                    i += 1;
                }
                Kind::Placeholder
            }
            b':' | b'@' if text.get(i + 1).copied().is_some_and(is_word_start) => {
                i += 1;
                while i < n && is_word(text[i]) {
                    i += 1;
                }
                Kind::Placeholder
            }
            b if is_word_start(b) => {
                while i < n && is_word(text[i]) {
                    i += 1;
                }
                Kind::Word
            }
            b'(' | b')' | b',' | b';' | b'.' | b'=' | b'<' | b'>' | b'!' | b'+' | b'-' | b'*'
            | b'/' | b'%' | b'|' | b'&' | b'^' | b'~' | b':' | b'@' | b'[' | b']' | b'{' | b'}' => {
                i += 1;
                Kind::Punct
            }
            _ => return (tokens, false),
        };
        tokens.push(Token {
            kind,
            range: start..i,
        });
    }
    (tokens, true)
}

/// Where the number starting at `i` ends: digits, a fraction, an exponent,
/// or a hexadecimal number; letters glued to it (`1abc`) belong to it, so
/// nothing of a malformed number is kept.
fn number_end(text: &[u8], mut i: usize) -> usize {
    let n = text.len();
    if text[i] == b'0' && matches!(text.get(i + 1), Some(b'x' | b'X')) {
        i += 2;
    }
    while i < n {
        match text[i] {
            b'e' | b'E' if matches!(text.get(i + 1), Some(b'+' | b'-')) => i += 2,
            c if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' => i += 1,
            _ => break,
        }
    }
    i
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Words after which a `"..."` names a table.
const TABLE_CONTEXT: [&str; 6] = ["FROM", "INTO", "UPDATE", "JOIN", "TABLE", "EXISTS"];

/// Sanitizes `raw` (the first bytes of a statement; `truncated` when the
/// probe could not copy all of it). With `keep_literals`, the text is kept
/// as it is (still cut to its first word when it is not valid text).
pub fn sanitize(raw: &[u8], truncated: bool, keep_literals: bool) -> Sanitized {
    let (tokens, complete) = tokenize(raw, truncated);
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t.kind, Kind::Space | Kind::Comment))
        .collect();
    let (operation, collection) = describe(raw, &significant);
    let first_word = || {
        significant
            .first()
            .filter(|t| t.kind == Kind::Word)
            .map(|t| upper(&raw[t.range.clone()]))
    };
    let text = if !complete {
        first_word()
    } else if keep_literals {
        match std::str::from_utf8(raw) {
            Ok(text) => Some(text.to_owned()),
            Err(_) => first_word(),
        }
    } else {
        Some(render(raw, &tokens))
    };
    Sanitized {
        text: text.filter(|t| !t.trim().is_empty()),
        operation,
        collection,
    }
}

/// The text with literals replaced and comments dropped.
fn render(raw: &[u8], tokens: &[Token]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut prev: Option<&Token> = None;
    for token in tokens {
        let bytes = &raw[token.range.clone()];
        match token.kind {
            Kind::String | Kind::Number => out.push('?'),
            Kind::DoubleQuoted => {
                let names_table = prev.is_some_and(|p| {
                    (p.kind == Kind::Word && is_one_of(&raw[p.range.clone()], &TABLE_CONTEXT))
                        || (p.kind == Kind::Punct && &raw[p.range.clone()] == b".")
                });
                if names_table {
                    out.push_str(&String::from_utf8_lossy(bytes));
                } else {
                    out.push('?');
                }
            }
            Kind::Comment => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            // Everything else is ASCII, or a quoted identifier.
            _ => out.push_str(&String::from_utf8_lossy(bytes)),
        }
        if !matches!(token.kind, Kind::Space | Kind::Comment) {
            prev = Some(token);
        }
    }
    out.trim().to_owned()
}

fn upper(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_ascii_uppercase()
}

fn is_one_of(word: &[u8], set: &[&str]) -> bool {
    set.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(word))
}

/// Statements whose first word is their operation.
const OPERATIONS: [&str; 30] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "MERGE",
    "UPSERT",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "START",
    "SAVEPOINT",
    "RELEASE",
    "WITH",
    "PRAGMA",
    "SET",
    "SHOW",
    "EXPLAIN",
    "CALL",
    "EXEC",
    "EXECUTE",
    "VALUES",
    "GRANT",
    "REVOKE",
    "ANALYZE",
    "VACUUM",
];

/// Clauses that end a `SELECT`'s table list.
const AFTER_TABLES: [&str; 12] = [
    "WHERE",
    "GROUP",
    "ORDER",
    "LIMIT",
    "HAVING",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "OFFSET",
    "FETCH",
    "WINDOW",
    "RETURNING",
];

/// The operation and the one collection of a statement.
fn describe(raw: &[u8], tokens: &[&Token]) -> (Option<String>, Option<String>) {
    let word = |i: usize| {
        tokens
            .get(i)
            .filter(|t| t.kind == Kind::Word)
            .map(|t| &raw[t.range.clone()])
    };
    let is = |i: usize, w: &str| word(i).is_some_and(|b| b.eq_ignore_ascii_case(w.as_bytes()));
    let Some(first) = word(0) else {
        return (None, None);
    };
    if !is_one_of(first, &OPERATIONS) {
        return (None, None);
    }
    let op = upper(first);
    // The index of the table name, and the operation's name.
    let (op, table_at) = match op.as_str() {
        "SELECT" => {
            let mut depth = 0i32;
            let mut from = None;
            for (i, t) in tokens.iter().enumerate() {
                match (t.kind, &raw[t.range.clone()]) {
                    (Kind::Punct, b"(") => depth += 1,
                    (Kind::Punct, b")") => depth -= 1,
                    (Kind::Word, w) if depth == 0 && w.eq_ignore_ascii_case(b"FROM") => {
                        from = Some(i + 1);
                        break;
                    }
                    _ => {}
                }
            }
            (op, from)
        }
        "INSERT" | "REPLACE" if is(1, "INTO") => (op, Some(2)),
        "UPDATE" => (op, Some(1)),
        "DELETE" if is(1, "FROM") => (op, Some(2)),
        "CREATE" | "DROP" | "ALTER" => {
            let mut i = 1;
            while is(i, "TEMP") || is(i, "TEMPORARY") {
                i += 1;
            }
            if is(i, "TABLE") {
                i += 1;
                // IF [NOT] EXISTS
                if is(i, "IF") {
                    i += 1;
                    if is(i, "NOT") {
                        i += 1;
                    }
                    if is(i, "EXISTS") {
                        i += 1;
                    }
                }
                (format!("{op} TABLE"), Some(i))
            } else {
                (op, None)
            }
        }
        _ => (op, None),
    };
    let collection = table_at.and_then(|at| {
        let (name, next) = table_name(raw, tokens, at)?;
        // A SELECT from more than one table names no single collection.
        if op == "SELECT" {
            let mut depth = 0i32;
            for t in &tokens[next..] {
                let text = &raw[t.range.clone()];
                match t.kind {
                    Kind::Punct if text == b"(" => depth += 1,
                    Kind::Punct if text == b")" => depth -= 1,
                    Kind::Punct if depth == 0 && text == b"," => return None,
                    Kind::Word if depth == 0 && text.eq_ignore_ascii_case(b"JOIN") => {
                        return None;
                    }
                    Kind::Word if depth == 0 && is_one_of(text, &AFTER_TABLES) => break,
                    _ => {}
                }
            }
        }
        Some(name)
    });
    (Some(op), collection)
}

/// A possibly qualified table name (`schema.table`, quotes dropped) at
/// token `at`, and the index of the token after it.
fn table_name(raw: &[u8], tokens: &[&Token], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let t = tokens.get(at)?;
        let text = &raw[t.range.clone()];
        match t.kind {
            Kind::Word => name.push_str(std::str::from_utf8(text).ok()?),
            Kind::Backquoted | Kind::DoubleQuoted if text.len() >= 2 => {
                name.push_str(std::str::from_utf8(&text[1..text.len() - 1]).ok()?);
            }
            _ => return None,
        }
        at += 1;
        match tokens.get(at) {
            Some(dot) if dot.kind == Kind::Punct && &raw[dot.range.clone()] == b"." => {
                name.push('.');
                at += 1;
            }
            _ => return Some((name, at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sql: &str) -> Option<String> {
        sanitize(sql.as_bytes(), false, false).text
    }

    fn described(sql: &str) -> (Option<String>, Option<String>) {
        let s = sanitize(sql.as_bytes(), false, false);
        (s.operation, s.collection)
    }

    fn some(op: &str, coll: Option<&str>) -> (Option<String>, Option<String>) {
        (Some(op.to_owned()), coll.map(str::to_owned))
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            text("INSERT INTO items (name, price) VALUES ('secret''s', 42.5)").unwrap(),
            "INSERT INTO items (name, price) VALUES (?, ?)"
        );
        assert_eq!(
            text("SELECT id FROM items WHERE id IN (1, 2, 3) AND x > -1e-3").unwrap(),
            "SELECT id FROM items WHERE id IN (?, ?, ?) AND x > -?"
        );
        assert_eq!(
            text("select .5, 0x1F, 12abc from t").unwrap(),
            "select ?, ?, ? from t"
        );
        assert_eq!(text("SELECT ''").unwrap(), "SELECT ?");
    }

    #[test]
    fn placeholders_and_identifiers_are_kept() {
        assert_eq!(
            text("SELECT a1, `b c`, t.x FROM t WHERE a = ? AND b = $2 AND c = :name AND d = @p1 AND e = ?3").unwrap(),
            "SELECT a1, `b c`, t.x FROM t WHERE a = ? AND b = $2 AND c = :name AND d = @p1 AND e = ?3"
        );
        assert_eq!(
            text("SELECT x::text FROM t").unwrap(),
            "SELECT x::text FROM t"
        );
    }

    #[test]
    fn double_quotes_are_kept_only_as_table_names() {
        assert_eq!(
            text(r#"SELECT "col" FROM "schema"."Items" WHERE name = "secret""#).unwrap(),
            r#"SELECT ? FROM "schema"."Items" WHERE name = ?"#
        );
        assert_eq!(
            described(r#"SELECT * FROM "schema"."Items""#),
            some("SELECT", Some("schema.Items"))
        );
    }

    #[test]
    fn comments_are_dropped() {
        assert_eq!(
            text("SELECT 1 -- password=hunter2\nFROM t /* token */ # more\n").unwrap(),
            "SELECT ? \nFROM t"
        );
    }

    #[test]
    fn untokenizable_text_is_cut_to_its_first_word() {
        for sql in [
            r"SELECT * FROM t WHERE name = 'it\'s secret'",
            r"SELECT * FROM t WHERE name = 'C:\' , 'secret', 'D:\'",
            "SELECT * FROM t WHERE name = 'unterminated secret",
            "SELECT * FROM t /* unterminated secret",
            "SELECT 'é' FROM t WHERE x = 'secret' AND \u{7f}",
            "SELECT $$secret$$",
            "select * from t where x = \"a\\\"secret\"",
            "SELECT * FROM t WHERE x = 'secret' \u{1}",
        ] {
            let s = sanitize(sql.as_bytes(), false, false);
            assert_eq!(s.text.as_deref(), Some("SELECT"), "{sql}");
            assert!(!format!("{s:?}").contains("secret"), "{sql}: {s:?}");
        }
        assert_eq!(text("'secret'; garbage \u{1}"), None);
        assert_eq!(text("   "), None);
        assert_eq!(text(""), None);
        // Still described from what could be read.
        assert_eq!(
            described(r"SELECT * FROM t WHERE name = 'it\'s'"),
            some("SELECT", Some("t"))
        );
    }

    #[test]
    fn non_ascii_inside_quotes_is_fine() {
        assert_eq!(
            text("SELECT * FROM `tablé` WHERE n = 'é'").unwrap(),
            "SELECT * FROM `tablé` WHERE n = ?"
        );
    }

    #[test]
    fn a_text_cut_short_loses_its_tail_literal() {
        let s = sanitize(b"INSERT INTO t VALUES ('secret that goes o", true, false);
        assert_eq!(s.text.as_deref(), Some("INSERT INTO t VALUES (?"));
        let s = sanitize(b"SELECT 1 /* secret", true, false);
        assert_eq!(s.text.as_deref(), Some("SELECT ?"));
        let s = sanitize(b"SELECT 123", true, false);
        assert_eq!(s.text.as_deref(), Some("SELECT ?"));
        // Cut inside a multi-byte character of a literal.
        let s = sanitize(&"SELECT 'é".as_bytes()[..9], true, false);
        assert_eq!(s.text.as_deref(), Some("SELECT ?"));
    }

    #[test]
    fn keep_literals_keeps_valid_text() {
        let s = sanitize(b"SELECT * FROM t WHERE x = 'a'", false, true);
        assert_eq!(s.text.as_deref(), Some("SELECT * FROM t WHERE x = 'a'"));
        let s = sanitize(b"SELECT 'a", false, true);
        assert_eq!(s.text.as_deref(), Some("SELECT"));
    }

    #[test]
    fn operations_and_collections() {
        assert_eq!(
            described("SELECT a FROM items WHERE id IN (1, 2)"),
            some("SELECT", Some("items"))
        );
        assert_eq!(
            described("select a from main.items i where (select 1 from x)"),
            some("SELECT", Some("main.items"))
        );
        assert_eq!(described("SELECT 1"), some("SELECT", None));
        assert_eq!(described("SELECT * FROM a, b"), some("SELECT", None));
        assert_eq!(
            described("SELECT * FROM a JOIN b ON a.id = b.id"),
            some("SELECT", None)
        );
        assert_eq!(
            described("SELECT * FROM a WHERE x IN (SELECT y FROM b, c)"),
            some("SELECT", Some("a"))
        );
        assert_eq!(
            described("SELECT * FROM (SELECT 1) AS s"),
            some("SELECT", None)
        );
        assert_eq!(
            described("SELECT count(*), max(x) FROM t"),
            some("SELECT", Some("t"))
        );
        assert_eq!(
            described("insert into items(name) values (?)"),
            some("INSERT", Some("items"))
        );
        assert_eq!(
            described("UPDATE `items` SET a = 1"),
            some("UPDATE", Some("items"))
        );
        assert_eq!(
            described("DELETE FROM items WHERE 1"),
            some("DELETE", Some("items"))
        );
        assert_eq!(
            described("CREATE TABLE IF NOT EXISTS items (id INTEGER)"),
            some("CREATE TABLE", Some("items"))
        );
        assert_eq!(
            described("create temp table t2 (id int)"),
            some("CREATE TABLE", Some("t2"))
        );
        assert_eq!(
            described("DROP TABLE IF EXISTS items"),
            some("DROP TABLE", Some("items"))
        );
        assert_eq!(
            described("CREATE INDEX i ON items (a)"),
            some("CREATE", None)
        );
        assert_eq!(described("BEGIN"), some("BEGIN", None));
        assert_eq!(described("SELEC * FORM items"), (None, None));
        assert_eq!(described("(SELECT 1)"), (None, None));
        assert_eq!(
            described("-- c\n  select 1 from t"),
            some("SELECT", Some("t"))
        );
    }

    /// A small deterministic generator of SQL-ish byte strings.
    fn random_texts(alphabet: &[u8], count: usize) -> Vec<Vec<u8>> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let len = (next() % 48) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_leave_no_string_literal() {
        let alphabet = b"SELECT FROM 'x\"`()?,.;-/*#\\$:@0123456789e\n\t\x01\xc3\xa9";
        for sql in random_texts(alphabet, 20_000) {
            for truncated in [false, true] {
                for cut in [sql.len(), sql.len() / 2] {
                    let s = sanitize(&sql[..cut], truncated, false);
                    if let Some(text) = &s.text {
                        let (tokens, _) = tokenize(text.as_bytes(), truncated);
                        assert!(
                            tokens
                                .iter()
                                .all(|t| !matches!(t.kind, Kind::String | Kind::Number)),
                            "{sql:?}: {text}"
                        );
                        // The output is its own sanitized form.
                        let again = sanitize(text.as_bytes(), truncated, false);
                        assert_eq!(again.text.as_ref(), Some(text), "{sql:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_literal_after_arbitrary_unquoted_text_never_leaks() {
        let alphabet = b"SELECT FROM x()?,.;-/*#\\$:@0123456789e\n\t\x01\xc3\xa9";
        for mut sql in random_texts(alphabet, 20_000) {
            sql.extend_from_slice(b" 'SECRETVALUE' 987654321 ");
            for truncated in [false, true] {
                let s = sanitize(&sql, truncated, false);
                let all = format!("{s:?}");
                assert!(!all.contains("SECRETVALUE"), "{sql:?}: {all}");
                assert!(!all.contains("987654321"), "{sql:?}: {all}");
            }
        }
    }
}
