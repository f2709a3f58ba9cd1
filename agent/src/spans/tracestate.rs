//! W3C Trace Context's `tracestate` header, as an incoming request carries
//! it next to its `traceparent`: vendor-specific `key=value` list-members,
//! comma-separated.

use std::str::FromStr as _;

use opentelemetry::trace::TraceState;

/// The header value to put on the request's span, from a `tracestate` value
/// whose first bytes are `head` and whose full length is `len` (the probe
/// keeps a bounded prefix), normalized as `key=value` pairs joined by
/// commas. `None` when there is nothing to keep: an empty list, or a value
/// the specification says not to propagate (a malformed list-member).
///
/// A value longer than the probe keeps loses its list-members from the
/// first one cut short on: the specification lets a vendor drop members
/// from the right when it must shorten the header.
pub fn parse(head: &[u8], len: usize) -> Option<String> {
    let whole = if len > head.len() {
        // Only the members that end before the cut.
        let end = head.iter().rposition(|&b| b == b',')?;
        &head[..end]
    } else {
        head
    };
    // The specification's characters are printable ASCII; OpenTelemetry's
    // parser checks keys and the separators, and lets an empty key by.
    if !whole
        .iter()
        .all(|b| (0x20..=0x7e).contains(b) || *b == b'\t')
    {
        return None;
    }
    let text = std::str::from_utf8(whole).ok()?;
    if text
        .split(',')
        .any(|member| member.trim_matches([' ', '\t']).starts_with('='))
    {
        return None;
    }
    let state = TraceState::from_str(text).ok()?;
    let header = state.header();
    (!header.is_empty()).then_some(header)
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
