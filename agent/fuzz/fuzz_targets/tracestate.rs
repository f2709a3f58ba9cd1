//! Fuzzes the W3C `tracestate` parser (`spans::tracestate::parse`): it
//! reads a request header of the traced program (network input). The first
//! input byte is how many bytes the probe cut off (0: the rest is the whole
//! value), the rest is the kept prefix.
//!
//! What it keeps must be propagatable: at most 32 list-members, each a
//! valid key and value of the specification, no longer than the input,
//! and exactly the members of the input (up to the last whole one when the
//! value was cut), with the optional whitespace and empty members dropped.
//! Parsing its own output gives it back.
#![no_main]

use agent::spans::tracestate::parse;
use libfuzzer_sys::fuzz_target;

const MAX_MEMBERS: usize = 32;

fn key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// `key = simple-key / multi-tenant-key` (W3C Trace Context, 3.3.1.3.1).
fn valid_key(key: &str) -> bool {
    let k = key.as_bytes();
    match key.split_once('@') {
        None => {
            !k.is_empty()
                && k.len() <= 256
                && k[0].is_ascii_lowercase()
                && k.iter().copied().all(key_char)
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            (1..=241).contains(&t.len())
                && (t[0].is_ascii_lowercase() || t[0].is_ascii_digit())
                && t.iter().copied().all(key_char)
                && (1..=14).contains(&s.len())
                && s[0].is_ascii_lowercase()
                && s.iter().copied().all(key_char)
        }
    }
}

/// `value = 0*255(chr) nblk-chr` (3.3.1.3.2).
fn valid_value(value: &str) -> bool {
    let v = value.as_bytes();
    let chr = |b: &u8| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=';
    (1..=256).contains(&v.len()) && v.iter().all(chr) && v.last() != Some(&b' ')
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, head)) = data.split_first() else {
        return;
    };
    let len = head.len() + usize::from(cut);
    let Some(kept) = parse(head, len) else {
        return;
    };
    assert!(!kept.is_empty());
    assert!(kept.len() <= head.len(), "{kept:?} longer than the input");
    let members: Vec<&str> = kept.split(',').collect();
    assert!(members.len() <= MAX_MEMBERS, "{} members", members.len());
    for member in &members {
        let (key, value) = member
            .split_once('=')
            .unwrap_or_else(|| panic!("member {member:?} without '='"));
        assert!(valid_key(key), "key {key:?} in {kept:?}");
        assert!(valid_value(value), "value {value:?} in {kept:?}");
    }
    // The members are the input's own, in order.
    let whole = if len > head.len() {
        let end = head
            .iter()
            .rposition(|&b| b == b',')
            .expect("a cut value kept a member");
        &head[..end]
    } else {
        head
    };
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let input: Vec<&[u8]> = whole
        .split(|&b| b == b',')
        .map(|m| {
            let start = m.iter().position(|b| !ows(b)).unwrap_or(m.len());
            let end = m.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
            &m[start..end]
        })
        .filter(|m| !m.is_empty())
        .collect();
    let members: Vec<&[u8]> = members.iter().map(|m| m.as_bytes()).collect();
    let shown = String::from_utf8_lossy(whole);
    assert_eq!(members.len(), input.len().min(MAX_MEMBERS), "{shown:?}");
    assert_eq!(members, input[..members.len()], "{shown:?}");
    // Normalized already.
    assert_eq!(
        parse(kept.as_bytes(), kept.len()).as_deref(),
        Some(&kept[..])
    );
});
