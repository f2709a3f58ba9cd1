//! Records of the net/http server probes.

use crate::event::EventHeader;

/// Bytes of the request method kept (longer methods are truncated).
pub const METHOD_CAP: usize = 16;
/// Bytes of the URL path kept.
pub const PATH_CAP: usize = 256;
/// Bytes of the Host header kept.
pub const HOST_CAP: usize = 128;
/// Bytes of the peer address kept (`ip:port`).
pub const REMOTE_CAP: usize = 64;
/// Bytes of the matched ServeMux pattern kept (Go 1.23+).
pub const PATTERN_CAP: usize = 128;

/// A request reached `net/http.serverHandler.ServeHTTP`.
///
/// Each string field holds the first `min(len, CAP)` bytes; `*_len` is the
/// full length in the target, so the reader can tell a truncated string.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpServerStart {
    pub header: EventHeader,
    /// `*http.Request`.
    pub request: u64,
    /// `*http.response` (the ResponseWriter's data pointer).
    pub response: u64,
    /// `Request.ContentLength`; -1 when unknown.
    pub content_length: i64,
    pub proto_major: u16,
    pub proto_minor: u16,
    /// Bit set of `FIELD_*`: which fields could be read.
    pub fields: u32,
    pub method_len: u32,
    pub path_len: u32,
    pub host_len: u32,
    pub remote_len: u32,
    pub method: [u8; METHOD_CAP],
    pub path: [u8; PATH_CAP],
    pub host: [u8; HOST_CAP],
    pub remote: [u8; REMOTE_CAP],
}

/// `HttpServerStart::fields`: the method was read.
pub const FIELD_METHOD: u32 = 1 << 0;
/// The URL path was read.
pub const FIELD_PATH: u32 = 1 << 1;
/// The Host header was read.
pub const FIELD_HOST: u32 = 1 << 2;
/// The peer address was read.
pub const FIELD_REMOTE: u32 = 1 << 3;
/// The content length was read.
pub const FIELD_CONTENT_LENGTH: u32 = 1 << 4;
/// The protocol version was read.
pub const FIELD_PROTO: u32 = 1 << 5;
/// `Request.TLS` was read (so the scheme is known).
pub const FIELD_TLS_KNOWN: u32 = 1 << 6;
/// `Request.TLS` is set: the request came over TLS (`https`).
pub const FIELD_TLS: u32 = 1 << 7;

const _: () = assert!(
    core::mem::size_of::<HttpServerStart>()
        == 32 + 8 * 3 + 2 * 2 + 4 * 5 + METHOD_CAP + PATH_CAP + HOST_CAP + REMOTE_CAP
);

/// The request's response is being finished (`net/http.(*response).finishRequest`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpServerEnd {
    pub header: EventHeader,
    /// `*http.response`, pairs with [`HttpServerStart::response`].
    pub response: u64,
    /// `response.status`; 0 when the handler wrote nothing (net/http then sends 200).
    pub status: i64,
    /// `response.written`: body bytes the handler wrote.
    pub written: i64,
    /// Bit set of `END_FIELD_*`.
    pub fields: u32,
    pub pattern_len: u32,
    pub pattern: [u8; PATTERN_CAP],
}

/// `HttpServerEnd::fields`: the status was read.
pub const END_FIELD_STATUS: u32 = 1 << 0;
/// The written byte count was read.
pub const END_FIELD_WRITTEN: u32 = 1 << 1;
/// The ServeMux pattern was read.
pub const END_FIELD_PATTERN: u32 = 1 << 2;

const _: () = assert!(core::mem::size_of::<HttpServerEnd>() == 32 + 8 * 3 + 4 * 2 + PATTERN_CAP);

/// A record of either kind, for sizing reads.
pub const MAX_RECORD: usize = core::mem::size_of::<HttpServerStart>();
