//! Records of the net/http client probes: one when a request enters
//! `net/http.(*Transport).roundTrip`, one when it returns. The agent pairs
//! them by goroutine (the call runs on its caller's goroutine, start to end).

use crate::{event::EventHeader, target::OFFSET_ABSENT};

/// `EventHeader::kind` of an [`HttpClientStart`] record.
pub const KIND_HTTP_CLIENT_START: u32 = 9;
/// `EventHeader::kind` of an [`HttpClientEnd`] record.
pub const KIND_HTTP_CLIENT_END: u32 = 10;

/// Bytes of the request method kept.
pub const CLIENT_METHOD_CAP: usize = 16;
/// Bytes of `URL.Scheme` kept.
pub const CLIENT_SCHEME_CAP: usize = 8;
/// Bytes of `URL.Host` kept (`host:port`).
pub const CLIENT_HOST_CAP: usize = 96;
/// Bytes of `URL.Path` kept.
pub const CLIENT_PATH_CAP: usize = 192;
/// Bytes of `URL.RawQuery` kept.
pub const CLIENT_QUERY_CAP: usize = 176;

/// A request entered `net/http.(*Transport).roundTrip`.
///
/// Each string area holds the first `min(len, CAP)` bytes; `*_len` is the
/// full length in the target. The URL's user information is never read.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpClientStart {
    pub header: EventHeader,
    /// `*http.Request`.
    pub request: u64,
    /// Bit set of `CLIENT_FIELD_*`.
    pub fields: u32,
    pub method_len: u32,
    pub scheme_len: u32,
    pub host_len: u32,
    pub path_len: u32,
    pub query_len: u32,
    pub method: [u8; CLIENT_METHOD_CAP],
    pub scheme: [u8; CLIENT_SCHEME_CAP],
    pub host: [u8; CLIENT_HOST_CAP],
    pub path: [u8; CLIENT_PATH_CAP],
    pub query: [u8; CLIENT_QUERY_CAP],
}

/// `HttpClientStart::fields`: the method was read.
pub const CLIENT_FIELD_METHOD: u32 = 1 << 0;
/// The URL's scheme was read.
pub const CLIENT_FIELD_SCHEME: u32 = 1 << 1;
/// The URL's host was read.
pub const CLIENT_FIELD_HOST: u32 = 1 << 2;
/// The URL's path was read.
pub const CLIENT_FIELD_PATH: u32 = 1 << 3;
/// The URL's raw query was read.
pub const CLIENT_FIELD_QUERY: u32 = 1 << 4;

const _: () = assert!(
    core::mem::size_of::<HttpClientStart>()
        == 32
            + 8
            + 4 * 6
            + CLIENT_METHOD_CAP
            + CLIENT_SCHEME_CAP
            + CLIENT_HOST_CAP
            + CLIENT_PATH_CAP
            + CLIENT_QUERY_CAP
);
const _: () = assert!(core::mem::size_of::<HttpClientStart>() <= crate::http::MAX_RECORD);

/// `roundTrip` returned (a probe on each of its `RET` instructions):
/// `(*Response, error)` in RAX and RBX:RCX.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpClientEnd {
    pub header: EventHeader,
    /// `*http.Response`; 0 when the call failed.
    pub response: u64,
    /// `Response.StatusCode`.
    pub status: i64,
    /// The error's itab (0: no error).
    pub err_itab: u64,
    /// The error's dynamic type (`itab._type`), a run-time address.
    pub err_type: u64,
    pub proto_major: u8,
    pub proto_minor: u8,
    pub _pad: u16,
    /// Bit set of `CLIENT_END_*`.
    pub fields: u32,
}

/// `HttpClientEnd::fields`: the status was read.
pub const CLIENT_END_STATUS: u32 = 1 << 0;
/// The response's protocol version was read.
pub const CLIENT_END_PROTO: u32 = 1 << 1;
/// The error's dynamic type was read.
pub const CLIENT_END_ERR_TYPE: u32 = 1 << 2;

const _: () = assert!(core::mem::size_of::<HttpClientEnd>() == 32 + 8 * 4 + 8);

/// Byte offsets the client probes read, from DWARF or the per-release
/// table. `OFFSET_ABSENT` where a binary lacks a field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpClientOffsets {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `net/http.Request.Method` (string).
    pub request_method: u64,
    /// `net/http.Request.URL` (*url.URL).
    pub request_url: u64,
    /// `net/url.URL.Scheme` (string).
    pub url_scheme: u64,
    /// `net/url.URL.Host` (string).
    pub url_host: u64,
    /// `net/url.URL.Path` (string).
    pub url_path: u64,
    /// `net/url.URL.RawQuery` (string).
    pub url_raw_query: u64,
    /// `net/http.Response.StatusCode` (int).
    pub response_status: u64,
    /// `net/http.Response.ProtoMajor` (int).
    pub response_proto_major: u64,
    /// `net/http.Response.ProtoMinor` (int).
    pub response_proto_minor: u64,
    /// `runtime.itab._type` (*_type).
    pub itab_type: u64,
}

impl HttpClientOffsets {
    /// Every offset absent.
    pub const ABSENT: Self = Self {
        g_goid: OFFSET_ABSENT,
        request_method: OFFSET_ABSENT,
        request_url: OFFSET_ABSENT,
        url_scheme: OFFSET_ABSENT,
        url_host: OFFSET_ABSENT,
        url_path: OFFSET_ABSENT,
        url_raw_query: OFFSET_ABSENT,
        response_status: OFFSET_ABSENT,
        response_proto_major: OFFSET_ABSENT,
        response_proto_minor: OFFSET_ABSENT,
        itab_type: OFFSET_ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<HttpClientOffsets>() == 11 * 8);

/// One entry of the `HTTP_CLIENT_CONFIG` array map, by target slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpClientConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    pub offsets: HttpClientOffsets,
}

const _: () = assert!(core::mem::size_of::<HttpClientConfig>() == 8 + 11 * 8);
