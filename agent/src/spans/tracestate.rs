//! W3C Trace Context's `tracestate` header, as an incoming request carries
//! it next to its `traceparent`: vendor-specific `key=value` list-members,
//! comma-separated.

/// List-members kept at most: the specification's limit.
const MAX_MEMBERS: usize = 32;

fn key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// `key = simple-key / multi-tenant-key`: `simple-key` is a lowercase
/// letter then up to 255 of `[a-z0-9_*/-]`; `multi-tenant-key` is
/// `tenant-id@system-id`, a lowercase letter or digit then up to 240 of
/// them, and a lowercase letter then up to 13.
fn valid_key(key: &[u8]) -> bool {
    let part = |p: &[u8], max: usize, digit_first: bool| {
        p.first()
            .is_some_and(|&b| b.is_ascii_lowercase() || (digit_first && b.is_ascii_digit()))
            && p.len() <= max
            && p.iter().copied().all(key_char)
    };
    match key.iter().position(|&b| b == b'@') {
        None => part(key, 256, false),
        Some(at) => part(&key[..at], 241, true) && part(&key[at + 1..], 14, false),
    }
}

/// `value = 0*255(chr) nblk-chr`: 1 to 256 printable ASCII characters but
/// `,` and `=`, the last not a space.
fn valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ')
}

/// `member` without the optional whitespace (spaces and tabs) around it.
fn trim_ows(member: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = member.iter().position(|b| !ows(b)).unwrap_or(member.len());
    let end = member
        .iter()
        .rposition(|b| !ows(b))
        .map_or(start, |i| i + 1);
    &member[start..end]
}

/// The header value to put on the request's span, from a `tracestate` value
/// whose first bytes are `head` and whose full length is `len` (the probe
/// keeps a bounded prefix), normalized as `key=value` pairs joined by
/// commas. `None` when there is nothing to keep: an empty list, or a value
/// the specification says not to propagate (a malformed list-member).
///
/// A value longer than the probe keeps loses its list-members from the
/// first one cut short on, and one of more than 32 list-members those past
/// the 32nd: the specification lets a vendor drop members from the right
/// when it must shorten the header.
///
/// The list-members are checked here, against the specification's
/// grammar: OpenTelemetry's `TraceState` parser lets through empty values,
/// `k==v` (turned into `k=v`), keys starting with a digit and empty
/// system ids.
pub fn parse(head: &[u8], len: usize) -> Option<String> {
    let whole = if len > head.len() {
        // Only the members that end before the cut.
        let end = head.iter().rposition(|&b| b == b',')?;
        &head[..end]
    } else {
        head
    };
    let mut members: Vec<&[u8]> = Vec::new();
    for member in whole.split(|&b| b == b',') {
        // Optional whitespace around members; empty members are allowed.
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        if members.len() == MAX_MEMBERS {
            break;
        }
        let at = member.iter().position(|&b| b == b'=')?;
        if !valid_key(&member[..at]) || !valid_value(&member[at + 1..]) {
            return None;
        }
        members.push(member);
    }
    if members.is_empty() {
        return None;
    }
    let header = members.join(&b',');
    // Checked above: printable ASCII.
    String::from_utf8(header).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(value: &str) -> Option<String> {
        parse(value.as_bytes(), value.len())
    }

    #[test]
    fn valid_lists_are_kept_normalized() {
        assert_eq!(
            whole("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        // Optional whitespace around members and empty members go.
        assert_eq!(
            whole(" ot=th:8 ,, vendor@sys=x\t").as_deref(),
            Some("ot=th:8,vendor@sys=x")
        );
    }

    #[test]
    fn malformed_or_empty_lists_are_dropped() {
        assert_eq!(whole(""), None);
        assert_eq!(whole(" , "), None);
        assert_eq!(whole("novalue"), None, "a member without '='");
        assert_eq!(whole("Upper=1"), None, "keys are lowercase");
        assert_eq!(whole("ok=1,=2"), None, "an empty key");
        assert_eq!(parse(b"ok=\xff", 4), None, "not ASCII");
        assert_eq!(whole("ok=a\u{1}b"), None, "a control character");
    }

    /// Found by the tracestate fuzz target: OpenTelemetry's parser, used
    /// before, kept these (and turned `k==v` into `k=v`).
    #[test]
    fn what_the_grammar_rejects_and_opentelemetry_kept() {
        assert_eq!(whole("k==v"), None, "'=' in a value");
        assert_eq!(whole("k="), None, "an empty value");
        assert_eq!(whole("k=v ,x= "), None, "a value of a space");
        assert_eq!(whole("1k=v"), None, "a simple key starting with a digit");
        assert_eq!(whole("t@=v"), None, "an empty system id");
        assert_eq!(whole("t@1s=v"), None, "a system id starting with a digit");
        assert_eq!(
            whole("t@abcdefghijklmno=v"),
            None,
            "a 15-character system id"
        );
        assert_eq!(whole("k=a\tb"), None, "a tab inside a value");
        // What it allows.
        assert_eq!(whole("1t@s=v w").as_deref(), Some("1t@s=v w"));
        assert_eq!(whole("k=~!\"#").as_deref(), Some("k=~!\"#"));
    }

    #[test]
    fn more_than_32_members_lose_those_past_the_32nd() {
        let members: Vec<String> = (0..34).map(|i| format!("k{i}=v{i}")).collect();
        // Empty members do not count.
        let value = format!(",,{}", members.join(","));
        assert_eq!(whole(&value), Some(members[..32].join(",")));
    }

    #[test]
    fn a_cut_value_keeps_its_whole_members() {
        let value = "a=1,b=2,ccc=333";
        // The probe kept 10 of its 15 bytes: "a=1,b=2,cc".
        assert_eq!(
            parse(&value.as_bytes()[..10], value.len()).as_deref(),
            Some("a=1,b=2")
        );
        // Not even one whole member.
        assert_eq!(parse(&value.as_bytes()[..2], value.len()), None);
    }
}
