//! Records of the net/http server probes.

use crate::{event::EventHeader, target::OFFSET_ABSENT};

/// `EventHeader::kind` of an [`HttpServerStart`] record.
pub const KIND_HTTP_SERVER_START: u32 = 1;
/// `EventHeader::kind` of an [`HttpServerEnd`] record.
pub const KIND_HTTP_SERVER_END: u32 = 2;
/// `EventHeader::kind` of an [`HttpTraceparent`] record.
pub const KIND_HTTP_TRACEPARENT: u32 = 7;
/// `EventHeader::kind` of an [`HttpTracestate`] record.
pub const KIND_HTTP_TRACESTATE: u32 = 8;

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

/// Byte offsets of struct fields in one Go binary, read from its DWARF or the
/// per-version table. `OFFSET_ABSENT` where the field does not exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpOffsets {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `net/http.Request.Method` (string).
    pub request_method: u64,
    /// `net/http.Request.RequestURI` (string).
    pub request_uri: u64,
    /// `net/http.Request.Host` (string).
    pub request_host: u64,
    /// `net/http.Request.RemoteAddr` (string).
    pub request_remote_addr: u64,
    /// `net/http.Request.ContentLength` (int64).
    pub request_content_length: u64,
    /// `net/http.Request.ProtoMajor` (int).
    pub request_proto_major: u64,
    /// `net/http.Request.ProtoMinor` (int).
    pub request_proto_minor: u64,
    /// `net/http.Request.Pattern` (string, Go 1.23+).
    pub request_pattern: u64,
    /// `net/http.Request.TLS` (*tls.ConnectionState).
    pub request_tls: u64,
    /// `net/http.response.req` (*Request).
    pub response_req: u64,
    /// `net/http.response.status` (int).
    pub response_status: u64,
    /// `net/http.response.written` (int64).
    pub response_written: u64,
    /// `net/http.http2responseWriter.rws` (*http2responseWriterState).
    pub h2_writer_rws: u64,
    /// `net/http.http2responseWriterState.req` (*Request).
    pub h2_state_req: u64,
    /// `net/http.http2responseWriterState.status` (int).
    pub h2_state_status: u64,
    /// `net/http.http2responseWriterState.wroteBytes` (int64).
    pub h2_state_wrote_bytes: u64,
    /// `net/http.Request.Header` (a `map[string][]string`).
    pub request_header: u64,
    /// How this binary lays out maps: `MAP_LAYOUT_*` (not an offset).
    pub map_layout: u64,
    /// Element count of a map: `runtime.hmap.count` or
    /// `internal/runtime/maps.Map.used`.
    pub map_count: u64,
    /// `hmap.buckets`, or `Map.dirPtr` (a group, or the table directory).
    pub map_data: u64,
    /// `hmap.B` (one byte: log2 of the bucket count), or `Map.dirLen`.
    pub map_size: u64,
    /// `hmap.oldbuckets` (set while the map grows); absent for swiss maps.
    pub map_old: u64,
    /// Within `internal/runtime/maps.table`: `groups.data`.
    pub table_groups: u64,
    /// Within `internal/runtime/maps.table`: `groups.lengthMask`.
    pub table_groups_mask: u64,
}

/// `HttpOffsets::map_layout`: no map reading (the fields were not found).
pub const MAP_LAYOUT_NONE: u64 = 0;
/// Go 1.17-1.23 (and `GOEXPERIMENT=noswissmap`): `runtime.hmap` with
/// buckets of 8 slots.
pub const MAP_LAYOUT_BUCKETS: u64 = 1;
/// Go 1.24+: swiss tables (`internal/runtime/maps`), groups of 8 slots.
pub const MAP_LAYOUT_SWISS: u64 = 2;

/// A `map[string][]string` bucket (`runtime.bmap`): 8 tophash bytes, 8 keys
/// (16 bytes each), 8 values (24 each), the overflow pointer.
pub const BUCKET_SIZE: u64 = 8 + 8 * 16 + 8 * 24 + 8;
/// Where a bucket's keys, values and overflow pointer start.
pub const BUCKET_KEYS: usize = 8;
pub const BUCKET_VALUES: usize = 8 + 8 * 16;
pub const BUCKET_OVERFLOW: usize = 8 + 8 * 16 + 8 * 24;
/// Lowest tophash of a full bucket slot (below: empty or evacuated).
pub const BUCKET_MIN_TOPHASH: u8 = 5;
/// A `map[string][]string` swiss group: an 8-byte control word, then 8
/// slots of key (16 bytes) and value (24 bytes).
pub const GROUP_SIZE: u64 = 8 + 8 * 40;
pub const GROUP_SLOT_SIZE: usize = 40;
/// A control byte with this bit set marks an empty or deleted slot.
pub const GROUP_CTRL_EMPTY_BIT: u8 = 0x80;

impl HttpOffsets {
    /// Every offset absent.
    pub const ABSENT: Self = Self {
        g_goid: OFFSET_ABSENT,
        request_method: OFFSET_ABSENT,
        request_uri: OFFSET_ABSENT,
        request_host: OFFSET_ABSENT,
        request_remote_addr: OFFSET_ABSENT,
        request_content_length: OFFSET_ABSENT,
        request_proto_major: OFFSET_ABSENT,
        request_proto_minor: OFFSET_ABSENT,
        request_pattern: OFFSET_ABSENT,
        request_tls: OFFSET_ABSENT,
        response_req: OFFSET_ABSENT,
        response_status: OFFSET_ABSENT,
        response_written: OFFSET_ABSENT,
        h2_writer_rws: OFFSET_ABSENT,
        h2_state_req: OFFSET_ABSENT,
        h2_state_status: OFFSET_ABSENT,
        h2_state_wrote_bytes: OFFSET_ABSENT,
        request_header: OFFSET_ABSENT,
        map_layout: MAP_LAYOUT_NONE,
        map_count: OFFSET_ABSENT,
        map_data: OFFSET_ABSENT,
        map_size: OFFSET_ABSENT,
        map_old: OFFSET_ABSENT,
        table_groups: OFFSET_ABSENT,
        table_groups_mask: OFFSET_ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<HttpOffsets>() == 25 * 8);

/// One entry of the `HTTP_CONFIG` array map, by target slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    pub offsets: HttpOffsets,
}

const _: () = assert!(core::mem::size_of::<HttpConfig>() == 8 + 25 * 8);
