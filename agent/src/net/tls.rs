//! TLS handshakes (`crypto/tls`, client and server): the span's name and
//! attributes, after OpenTelemetry's TLS attributes and the span names its
//! .NET network conventions give handshakes (`TLS client handshake
//! {server.address}`, `TLS server handshake`; kind INTERNAL): the only
//! conventions that name a handshake span.

use agent_common::net::{NET_END_NAME, NET_END_TLS_STATE, NetEnd, TLS_SIDE_SERVER};

use super::spans::{OpenOp, text};
use crate::export::wire::SpanWriter;

/// The span's name: `TLS client handshake {server name}` (without the name
/// when the client gave none), `TLS server handshake`.
pub fn name(open: &OpenOp) -> String {
    if open.side == TLS_SIDE_SERVER {
        return "TLS server handshake".to_owned();
    }
    match open.name.as_deref().filter(|n| !n.is_empty()) {
        Some(server) => format!("TLS client handshake {server}"),
        None => "TLS client handshake".to_owned(),
    }
}

/// Writes the handshake's attributes: `server.address` (the client's
/// `Config.ServerName`, or on the server the name the client asked for,
/// SNI), and from the end what was negotiated: `tls.protocol.name` and
/// `tls.protocol.version`, `tls.cipher`, `tls.resumed` (a handshake that
/// succeeded), `tls.established`.
pub fn write(w: &mut SpanWriter<'_>, open: &OpenOp, end: Option<&NetEnd>, failed: bool) {
    let server = if open.side == TLS_SIDE_SERVER {
        end.filter(|e| e.fields & NET_END_NAME != 0)
            .map(|e| text(&e.name, e.name_len).into_owned())
    } else {
        open.name.clone()
    };
    if let Some(server) = server.filter(|s| !s.is_empty()) {
        w.attr_str("server.address", &server);
    }
    let Some(end) = end else { return };
    if end.fields & NET_END_TLS_STATE != 0 {
        if let Some((name, version)) = protocol(end.tls_version) {
            w.attr_str("tls.protocol.name", name);
            w.attr_str("tls.protocol.version", version);
        }
        if end.tls_cipher != 0 {
            w.attr_str("tls.cipher", &cipher_name(end.tls_cipher));
        }
        if !failed {
            w.attr_bool("tls.resumed", end.tls_resumed != 0);
        }
    }
    w.attr_bool("tls.established", !failed);
}

/// `tls.protocol.name` and `tls.protocol.version` of a version number on
/// the wire; `None` for 0 (not negotiated) and unknown numbers.
pub fn protocol(version: u16) -> Option<(&'static str, &'static str)> {
    Some(match version {
        0x0300 => ("ssl", "3"),
        0x0301 => ("tls", "1.0"),
        0x0302 => ("tls", "1.1"),
        0x0303 => ("tls", "1.2"),
        0x0304 => ("tls", "1.3"),
        _ => return None,
    })
}

/// The IANA name of a cipher suite, as `crypto/tls.CipherSuiteName` gives
/// it (every suite Go implements), else its id in hex (`0x1234`), as Go
/// does.
pub fn cipher_name(id: u16) -> String {
    let name = match id {
        0x0005 => "TLS_RSA_WITH_RC4_128_SHA",
        0x000a => "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        0x002f => "TLS_RSA_WITH_AES_128_CBC_SHA",
        0x0035 => "TLS_RSA_WITH_AES_256_CBC_SHA",
        0x003c => "TLS_RSA_WITH_AES_128_CBC_SHA256",
        0x009c => "TLS_RSA_WITH_AES_128_GCM_SHA256",
        0x009d => "TLS_RSA_WITH_AES_256_GCM_SHA384",
        0xc007 => "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
        0xc009 => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        0xc00a => "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        0xc011 => "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        0xc012 => "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        0xc013 => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        0xc014 => "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        0xc023 => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        0xc027 => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        0xc02b => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xc02c => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xc02f => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xc030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xcca8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xcca9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0x5600 => "TLS_FALLBACK_SCSV",
        other => return format!("0x{other:04X}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_suites_are_named_as_go_and_opentelemetry_name_them() {
        assert_eq!(protocol(0x0304), Some(("tls", "1.3")));
        assert_eq!(protocol(0x0303), Some(("tls", "1.2")));
        assert_eq!(protocol(0), None);
        assert_eq!(cipher_name(0x1301), "TLS_AES_128_GCM_SHA256");
        assert_eq!(cipher_name(0xc02f), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(cipher_name(0x00ff), "0x00FF");
    }
}
