//! Records of the net/http server probes.

use crate::event::EventHeader;

/// Bytes of the request method kept (longer methods are truncated).
pub const METHOD_CAP: usize = 16;
/// Bytes of the request target (`Request.RequestURI`) kept, and of the
/// method before it when both come from one read.
pub const URI_CAP: usize = 256;
/// Bytes of the Host header kept.
pub const HOST_CAP: usize = 128;
/// Bytes of the peer address kept (`ip:port`).
pub const REMOTE_CAP: usize = 64;
/// Bytes of an incoming W3C `traceparent` header kept: version 00's
/// `00-<32 hex>-<16 hex>-<2 hex>` is 55; later versions may add more.
pub const TRACEPARENT_CAP: usize = 56;
/// Bytes of an incoming W3C `tracestate` header kept: the specification
/// asks vendors to propagate at least 512 characters of it.
pub const TRACESTATE_CAP: usize = 512;
/// `HTTP_TAIL` slot of the program that searches the request's headers for
/// `Traceparent` (tail-called by the start probe).
pub const TAIL_TRACEPARENT: u32 = 0;
/// `HTTP_TAIL` slot of the program that searches them for `Tracestate`
/// (tail-called by the `Traceparent` search when it found one).
pub const TAIL_TRACESTATE: u32 = 1;
/// Slots of `HTTP_TAIL`.
pub const TAIL_SLOTS: u32 = 2;
/// Bytes of the matched ServeMux pattern kept (Go 1.23+).
pub const PATTERN_CAP: usize = 128;

/// A request reached `net/http.serverHandler.ServeHTTP`.
///
/// Each string field holds the first `min(len, CAP)` bytes; `*_len` is the
/// full length in the target, so the reader can tell a truncated string.
///
/// net/http parses the request line `GET /path?q HTTP/1.1` into substrings of
/// one string, so the method and the request target usually lie a few bytes
/// apart in the target's memory: the probe then copies both with one read into
/// `uri`, sets [`FIELD_METHOD_IN_URI`] and `uri_at` (the target's offset in
/// `uri`), and leaves `method` unused. Otherwise (HTTP/2, where they are
/// separate header values) each has its own area and `uri_at` is 0.
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
    pub proto_major: u8,
    pub proto_minor: u8,
    /// Where the request target starts in `uri`.
    pub uri_at: u16,
    /// Bit set of `FIELD_*`: which fields could be read.
    pub fields: u32,
    pub method_len: u32,
    /// Length of `Request.RequestURI`: path, then `?` and the query if any.
    pub uri_len: u32,
    pub host_len: u32,
    pub remote_len: u32,
    pub method: [u8; METHOD_CAP],
    pub uri: [u8; URI_CAP],
    pub host: [u8; HOST_CAP],
    pub remote: [u8; REMOTE_CAP],
}

/// `HttpServerStart::fields`: the method was read.
pub const FIELD_METHOD: u32 = 1 << 0;
/// The request target (`RequestURI`) was read.
pub const FIELD_URI: u32 = 1 << 1;
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
/// The method is the first `method_len` bytes of `uri` (one read copied
/// both); `method` is unused.
pub const FIELD_METHOD_IN_URI: u32 = 1 << 8;

const _: () = assert!(
    core::mem::size_of::<HttpServerStart>()
        == 32 + 8 * 3 + 2 + 2 + 4 * 5 + METHOD_CAP + URI_CAP + HOST_CAP + REMOTE_CAP
);

/// One header value of a request, in a record of its own. Pairs with the
/// start by `response`; the header's `goid` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpHeaderValue<const CAP: usize> {
    pub header: EventHeader,
    /// `*http.response` / `*http2responseWriter`, as in the start record.
    pub response: u64,
    /// The header value's full length; its first `min(len, CAP)` bytes are
    /// in `value`.
    pub len: u32,
    pub _pad: u32,
    pub value: [u8; CAP],
}

/// A request's `Traceparent` header, found right after its start record
/// (by a program the start probe tail-calls when the request has a header
/// map).
pub type HttpTraceparent = HttpHeaderValue<TRACEPARENT_CAP>;

/// A request's `Tracestate` header, found after its `Traceparent` (by a
/// program the `Traceparent` search tail-calls when it found one).
pub type HttpTracestate = HttpHeaderValue<TRACESTATE_CAP>;

const _: () = assert!(core::mem::size_of::<HttpTraceparent>() == 32 + 8 + 8 + TRACEPARENT_CAP);
const _: () = assert!(core::mem::size_of::<HttpTracestate>() == 32 + 8 + 8 + TRACESTATE_CAP);

/// The request's response is being finished (`net/http.(*response).finishRequest`,
/// or `(*http2responseWriter).handlerDone`). Its header's `goid` is 0: the
/// end pairs with its start by `response` alone, which saves the probe a read.
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

/// The largest record of any kind, for sizing reads.
pub const MAX_RECORD: usize = {
    let start = core::mem::size_of::<HttpServerStart>();
    let tracestate = core::mem::size_of::<HttpTracestate>();
    if start > tracestate {
        start
    } else {
        tracestate
    }
};
