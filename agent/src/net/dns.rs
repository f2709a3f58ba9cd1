//! Name lookups through Go's resolver (`net.(*Resolver).lookupIPAddr`):
//! the span's name and attributes, after OpenTelemetry's DNS attributes and
//! the span its .NET network conventions define for a lookup (`DNS lookup
//! {dns.question.name}`, kind INTERNAL).
//!
//! `lookupIPAddr` also receives IP literals (every dial of `1.2.3.4:80`
//! passes through it) and answers them without a lookup: those are not
//! spans ([`is_literal`]).

use std::net::{IpAddr, Ipv6Addr};

use agent_common::net::{NET_END_ANSWERS, NetEnd};

use super::spans::OpenOp;
use crate::export::wire::SpanWriter;

/// Whether `host` is an IP address (IPv6 with or without a zone), which
/// Go's resolver returns as it is.
pub fn is_literal(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    host.split_once('%')
        .is_some_and(|(addr, zone)| !zone.is_empty() && addr.parse::<Ipv6Addr>().is_ok())
}

/// The span's name: `DNS lookup {host}`.
pub fn name(open: &OpenOp) -> String {
    format!("DNS lookup {}", open.name.as_deref().unwrap_or_default())
        .trim_end()
        .to_owned()
}

/// Writes `dns.question.name` and, for a lookup that succeeded,
/// `dns.answers.count` (the number of addresses returned; the count of
/// OpenTelemetry's `dns.answers` list).
pub fn write(w: &mut SpanWriter<'_>, open: &OpenOp, end: Option<&NetEnd>, failed: bool) {
    if let Some(host) = &open.name {
        w.attr_str("dns.question.name", host);
    }
    if let Some(end) = end
        && !failed
        && end.fields & NET_END_ANSWERS != 0
    {
        w.attr_int(
            "dns.answers.count",
            i64::try_from(end.answers).unwrap_or(i64::MAX),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_are_not_lookups() {
        for literal in ["127.0.0.1", "::1", "fe80::1%eth0", "2001:db8::1"] {
            assert!(is_literal(literal), "{literal}");
        }
        for name in ["localhost", "example.com", "", "fe80::1%", "1.2.3"] {
            assert!(!is_literal(name), "{name}");
        }
    }
}
