//! W3C Trace Context's `traceparent` header, as an incoming request carries
//! it: `{version}-{trace-id}-{parent-id}-{trace-flags}`, lowercase hex.

use opentelemetry::trace::{SpanId, TraceId};

/// The caller's span, from a valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Length of a version-00 value.
pub const LEN_V00: usize = 55;

fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value whose first bytes are `head` and whose full
/// length is `len` (the probe keeps a bounded prefix). `None` for anything
/// the specification says to ignore: a malformed value, version `ff`,
/// version 00 with trailing data, all-zero ids. A later version is read as
/// version 00 when its first 55 bytes have that shape and a `-` follows.
pub fn parse(head: &[u8], len: usize) -> Option<RemoteParent> {
    if head.len() < LEN_V00 || len < LEN_V00 {
        return None;
    }
    let v = &head[..LEN_V00];
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = hex::<1>(&v[..2])?;
    match version {
        0xff => return None,
        0 if len != LEN_V00 => return None,
        0 => {}
        _ if len > LEN_V00 && head.get(LEN_V00) != Some(&b'-') => return None,
        _ => {}
    }
    let trace_id = TraceId::from_bytes(hex::<16>(&v[3..35])?);
    let span_id = SpanId::from_bytes(hex::<8>(&v[36..52])?);
    let [flags] = hex::<1>(&v[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(RemoteParent {
        trace_id,
        span_id,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn p(s: &str) -> Option<RemoteParent> {
        parse(s.as_bytes(), s.len())
    }

    #[test]
    fn version_00() {
        let parent = p(VALID).expect("valid");
        assert_eq!(
            parent.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            parent.span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert_eq!(parent.flags, 1);
    }

    #[test]
    fn what_the_specification_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_and_a_cut_prefix() {
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(p(future).is_some());
        // The probe keeps 56 bytes of a longer value.
        assert!(parse(&future.as_bytes()[..56], future.len()).is_some());
    }
}
