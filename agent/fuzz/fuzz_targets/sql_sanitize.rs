//! Fuzzes the SQL sanitizer (`sql::sanitize`): it reads statements the
//! traced program sends, which may be anything, possibly cut short by the
//! probe. The first byte picks `truncated`; the rest is the statement.
//!
//! Never a panic; what it exports is its own sanitized form (sanitizing it
//! again changes nothing: no literal is left to replace, no comment to
//! drop); the operation is upper case.
#![no_main]

use agent::sql::sanitize::sanitize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let truncated = flags & 1 != 0;
    let out = sanitize(raw, truncated, false);
    if let Some(op) = &out.operation {
        assert_eq!(op, &op.to_ascii_uppercase(), "operation {op:?}");
    }
    let Some(text) = out.text else {
        return;
    };
    let again = sanitize(text.as_bytes(), false, false);
    assert_eq!(
        again.text.as_deref(),
        Some(text.as_str()),
        "not stable: {raw:?}"
    );
});
