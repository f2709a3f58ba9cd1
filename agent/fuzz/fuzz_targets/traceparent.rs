//! Fuzzes the W3C `traceparent` parser (`spans::traceparent::parse`): it
//! reads a request header of the traced program, so anyone who can send
//! that program a request controls the bytes. The first input byte is how
//! many bytes the probe cut off (0: the rest is the whole value), the rest
//! is the kept prefix.
//!
//! The parser must accept exactly what an independent reading of the
//! specification accepts; an accepted value re-serializes to the lowercase
//! canonical version-00 form of its first 55 bytes, which parses back to
//! the same parent.
#![no_main]

use agent::spans::traceparent::{LEN_V00, RemoteParent, parse};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::{SpanId, TraceId};

fn lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The specification's rules, written out independently of the parser.
fn spec_accepts(head: &[u8], len: usize) -> bool {
    if head.len() < LEN_V00 || len < LEN_V00 {
        return false;
    }
    let v = &head[..LEN_V00];
    let shape = v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && lower_hex(&v[..2])
        && lower_hex(&v[3..35])
        && lower_hex(&v[36..52])
        && lower_hex(&v[53..55]);
    if !shape || &v[..2] == b"ff" {
        return false;
    }
    if v[3..35].iter().all(|&b| b == b'0') || v[36..52].iter().all(|&b| b == b'0') {
        return false;
    }
    if &v[..2] == b"00" {
        return len == LEN_V00;
    }
    // A later version: more than 55 bytes must go on with a '-' (refused
    // when not known: the probe keeps 56 bytes, so it always is).
    len == LEN_V00 || head.get(LEN_V00) == Some(&b'-')
}

fn canonical(p: &RemoteParent) -> String {
    format!("00-{}-{}-{:02x}", p.trace_id, p.span_id, p.flags)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, head)) = data.split_first() else {
        return;
    };
    let len = head.len() + usize::from(cut);
    let parsed = parse(head, len);
    assert_eq!(
        parsed.is_some(),
        spec_accepts(head, len),
        "{:?} (len {len}) parsed as {parsed:?}",
        String::from_utf8_lossy(head)
    );
    let Some(p) = parsed else {
        return;
    };
    assert_ne!(p.trace_id, TraceId::INVALID);
    assert_ne!(p.span_id, SpanId::INVALID);
    let text = canonical(&p);
    assert_eq!(text.len(), LEN_V00);
    // The ids and flags are the input's, in its (lowercase) spelling.
    assert_eq!(text.as_bytes()[2..], head[2..LEN_V00]);
    assert_eq!(parse(text.as_bytes(), text.len()), Some(p), "{text}");
});
