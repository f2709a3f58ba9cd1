//! Connections set up by `net.(*Dialer).DialContext`: the span's name and
//! attributes. A dial resolves the address and tries its addresses in turn,
//! so it is more than OpenTelemetry's `socket connect` (one socket) and
//! less than `HTTP connection_setup` (no TLS): it is named after what it
//! does, `connect {address}`, kind INTERNAL, with the server and network
//! attributes both share.

use super::spans::OpenOp;
use crate::{export::wire::SpanWriter, http_server::spans::split_host_port};

/// The span's name: `connect {address as dialed}`.
pub fn name(open: &OpenOp) -> String {
    format!("connect {}", open.name.as_deref().unwrap_or_default())
        .trim_end()
        .to_owned()
}

/// `network.transport` and `network.type` of a Go network name.
pub fn transport(network: &str) -> (Option<&'static str>, Option<&'static str>) {
    let (family, version) = match network.as_bytes().last() {
        Some(b'4') => (&network[..network.len() - 1], Some("ipv4")),
        Some(b'6') => (&network[..network.len() - 1], Some("ipv6")),
        _ => (network, None),
    };
    let transport = match family {
        "tcp" => Some("tcp"),
        "udp" => Some("udp"),
        "unix" | "unixgram" | "unixpacket" => Some("unix"),
        _ => None,
    };
    (transport, version.filter(|_| transport.is_some()))
}

/// Writes `server.address` and `server.port` (from the address dialed),
/// `network.transport` and `network.type` (from the network).
pub fn write(w: &mut SpanWriter<'_>, open: &OpenOp) {
    let (transport, version) = transport(open.network.as_deref().unwrap_or_default());
    if let Some(address) = open.name.as_deref().filter(|a| !a.is_empty()) {
        if transport == Some("unix") {
            w.attr_str("server.address", address);
        } else {
            let (host, port) = split_host_port(address);
            if !host.is_empty() {
                w.attr_str("server.address", &host);
            }
            if let Some(port) = port {
                w.attr_int("server.port", port);
            }
        }
    }
    if let Some(transport) = transport {
        w.attr_str("network.transport", transport);
    }
    if let Some(version) = version {
        w.attr_str("network.type", version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_name_their_transport() {
        assert_eq!(transport("tcp"), (Some("tcp"), None));
        assert_eq!(transport("tcp4"), (Some("tcp"), Some("ipv4")));
        assert_eq!(transport("udp6"), (Some("udp"), Some("ipv6")));
        assert_eq!(transport("unixgram"), (Some("unix"), None));
        assert_eq!(transport("ip4:icmp"), (None, None));
        assert_eq!(transport(""), (None, None));
    }
}
