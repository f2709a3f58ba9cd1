//! Records of the connection set-up probes: `crypto/tls` handshakes (client
//! and server), lookups through Go's resolver, and `net.Dialer` dials. Each
//! operation has a start record (at its function's entry) and an end record
//! (at each of its `RET`s); the agent pairs them by goroutine (each runs on
//! its caller's goroutine, start to end).
//!
//! The three operations share one start and one end layout
//! ([`NetStart`], [`NetEnd`]); the kind says which operation it is.

use crate::{event::EventHeader, target::OFFSET_ABSENT};

/// `EventHeader::kind` of a [`NetStart`]: a TLS handshake began.
pub const KIND_TLS_START: u32 = 50;
/// A [`NetEnd`]: a TLS handshake returned.
pub const KIND_TLS_END: u32 = 51;
/// A [`NetStart`]: a name lookup began.
pub const KIND_DNS_START: u32 = 52;
/// A [`NetEnd`]: a name lookup returned.
pub const KIND_DNS_END: u32 = 53;
/// A [`NetStart`]: a dial began.
pub const KIND_DIAL_START: u32 = 54;
/// A [`NetEnd`]: a dial returned.
pub const KIND_DIAL_END: u32 = 55;

/// Bytes kept of a name: the TLS server name, the host looked up, the
/// address dialed.
pub const NET_NAME_CAP: usize = 128;
/// Bytes kept of a network (`tcp`, `tcp4`, `udp`, `unix`, `ip`, ...).
pub const NET_NETWORK_CAP: usize = 16;

/// `NetStart::side` of a TLS handshake: the client's.
pub const TLS_SIDE_CLIENT: u32 = 1;
/// The server's.
pub const TLS_SIDE_SERVER: u32 = 2;

/// An operation began.
///
/// - TLS (`crypto/tls.(*Conn).clientHandshake`, `serverHandshake`):
///   `object` is the `*tls.Conn`, `side` says which, `name` the client's
///   `Config.ServerName` (the server learns the name at the end).
/// - DNS (`net.(*Resolver).lookupIPAddr`): `name` is the host, `network`
///   `ip`, `ip4` or `ip6`; `object` the host's data pointer.
/// - Dial (`net.(*Dialer).DialContext`): `name` is the address
///   (`host:port`), `network` as given (`tcp`, `udp4`, `unix`, ...);
///   `object` the address's data pointer.
///
/// `object` tells a restarted entry (the probe fires again when the
/// goroutine's stack grows) from a new operation. Each string area holds
/// the first `min(len, CAP)` bytes; `*_len` is the full length.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetStart {
    pub header: EventHeader,
    pub object: u64,
    /// `TLS_SIDE_*` for a handshake, 0 otherwise.
    pub side: u32,
    /// Bit set of `NET_START_*`.
    pub fields: u32,
    pub name_len: u32,
    pub network_len: u32,
    pub name: [u8; NET_NAME_CAP],
    pub network: [u8; NET_NETWORK_CAP],
}

/// `NetStart::fields`: the name was read.
pub const NET_START_NAME: u32 = 1 << 0;
/// The network was read.
pub const NET_START_NETWORK: u32 = 1 << 1;

const _: () =
    assert!(core::mem::size_of::<NetStart>() == 32 + 8 + 4 * 4 + NET_NAME_CAP + NET_NETWORK_CAP);

/// An operation returned (a probe on each `RET` of its function), with its
/// `error` result (itab and the itab's dynamic type; 0: no error).
///
/// - TLS: the negotiated version, cipher suite and whether the session was
///   resumed (read from the `*tls.Conn` the start saw), and for the server
///   the name the client asked for (SNI) in `name`.
/// - DNS: `answers` is the number of addresses returned.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEnd {
    pub header: EventHeader,
    pub err_itab: u64,
    pub err_type: u64,
    pub answers: u64,
    /// `tls.Conn.vers` (`0x0304`: TLS 1.3).
    pub tls_version: u16,
    /// `tls.Conn.cipherSuite` (an IANA cipher suite id).
    pub tls_cipher: u16,
    /// `tls.Conn.didResume`.
    pub tls_resumed: u8,
    pub _pad: [u8; 3],
    /// Bit set of `NET_END_*`.
    pub fields: u32,
    pub name_len: u32,
    pub name: [u8; NET_NAME_CAP],
}

/// `NetEnd::fields`: the error's dynamic type was read.
pub const NET_END_ERR_TYPE: u32 = 1 << 0;
/// The TLS version, cipher suite and resumption were read.
pub const NET_END_TLS_STATE: u32 = 1 << 1;
/// The server's name (SNI) was read.
pub const NET_END_NAME: u32 = 1 << 2;
/// The answer count was read.
pub const NET_END_ANSWERS: u32 = 1 << 3;

const _: () = assert!(core::mem::size_of::<NetEnd>() == 32 + 8 * 3 + 8 + 4 + 4 + NET_NAME_CAP);

/// Byte offsets the probes read, from DWARF or the per-release table.
/// `OFFSET_ABSENT` where a binary lacks a field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOffsets {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `crypto/tls.Conn.config` (*Config).
    pub conn_config: u64,
    /// `crypto/tls.Conn.vers` (uint16).
    pub conn_vers: u64,
    /// `crypto/tls.Conn.cipherSuite` (uint16).
    pub conn_cipher_suite: u64,
    /// `crypto/tls.Conn.didResume` (bool).
    pub conn_did_resume: u64,
    /// `crypto/tls.Conn.serverName` (string).
    pub conn_server_name: u64,
    /// `crypto/tls.Config.ServerName` (string).
    pub config_server_name: u64,
    /// `runtime.itab._type` (*_type).
    pub itab_type: u64,
}

impl NetOffsets {
    /// Every offset absent.
    pub const ABSENT: Self = Self {
        g_goid: OFFSET_ABSENT,
        conn_config: OFFSET_ABSENT,
        conn_vers: OFFSET_ABSENT,
        conn_cipher_suite: OFFSET_ABSENT,
        conn_did_resume: OFFSET_ABSENT,
        conn_server_name: OFFSET_ABSENT,
        config_server_name: OFFSET_ABSENT,
        itab_type: OFFSET_ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<NetOffsets>() == 8 * 8);

/// One entry of the `NET_CONFIG` array map, by target slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    pub offsets: NetOffsets,
}

const _: () = assert!(core::mem::size_of::<NetConfig>() == 8 + 8 * 8);

/// Handshakes in flight kept at most (the `*tls.Conn` of each, by
/// goroutine, from its start to its end).
pub const TLS_IN_FLIGHT: u32 = 4096;
