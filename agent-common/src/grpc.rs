//! Records of the `google.golang.org/grpc` probes: SERVER spans from
//! `(*Server).handleStream`, CLIENT spans from `(*ClientConn).Invoke` and
//! `(*ClientConn).NewStream`.

use crate::{event::EventHeader, http::TRACESTATE_CAP, target::OFFSET_ABSENT};

/// `EventHeader::kind` of a [`GrpcServerStart`] record.
pub const KIND_GRPC_SERVER_START: u32 = 17;
/// `EventHeader::kind` of a [`GrpcServerEnd`] record.
pub const KIND_GRPC_SERVER_END: u32 = 18;
/// `EventHeader::kind` of a [`GrpcServerStatus`] record.
pub const KIND_GRPC_SERVER_STATUS: u32 = 19;
/// `EventHeader::kind` of a [`GrpcClientStart`] record.
pub const KIND_GRPC_CLIENT_START: u32 = 20;
/// `EventHeader::kind` of a [`GrpcClientEnd`] record.
pub const KIND_GRPC_CLIENT_END: u32 = 21;
/// `EventHeader::kind` of a [`GrpcTraceparent`] record.
pub const KIND_GRPC_TRACEPARENT: u32 = 22;
/// `EventHeader::kind` of a [`GrpcTracestate`] record.
pub const KIND_GRPC_TRACESTATE: u32 = 23;

/// Bytes of the full method name (`/pkg.Service/Method`) kept.
pub const METHOD_CAP: usize = 128;
/// Bytes of the client's dial target kept.
pub const TARGET_CAP: usize = 128;
/// Bytes of an incoming `traceparent` kept (version 00 is 55).
pub const TRACEPARENT_CAP: usize = 56;
/// Header fields of a HEADERS frame searched for `traceparent` (and
/// `tracestate`) at most.
pub const MAX_HEADER_FIELDS: u32 = 32;
/// Size of `golang.org/x/net/http2/hpack.HeaderField` (`Name`, `Value`
/// strings, `Sensitive` bool) on 64-bit targets, the same in every release.
pub const HEADER_FIELD_SIZE: u64 = 40;

/// Attach-cookie site indices (the cookie's low half).
pub const SITE_SERVER_START: u32 = 0;
pub const SITE_SERVER_END: u32 = 1;
pub const SITE_SERVER_STATUS: u32 = 2;
pub const SITE_INVOKE_START: u32 = 3;
pub const SITE_INVOKE_END: u32 = 4;
pub const SITE_STREAM_START: u32 = 5;
pub const SITE_STREAM_END: u32 = 6;
pub const SITE_OPERATE_HEADERS: u32 = 7;

/// A call reached `(*Server).handleStream(t, stream)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GrpcServerStart {
    pub header: EventHeader,
    /// The `*transport.ServerStream` (`*transport.Stream` before v1.68).
    pub stream: u64,
    /// The server transport's data pointer (`*http2Server`).
    pub transport: u64,
    /// The method name's full length; 0 when it could not be read.
    pub method_len: u32,
    /// The HTTP/2 stream id; 0 when it could not be read.
    pub stream_id: u32,
    pub method: [u8; METHOD_CAP],
}

const _: () = assert!(core::mem::size_of::<GrpcServerStart>() == 32 + 24 + METHOD_CAP);

/// A HEADERS frame the server decoded (`(*http2Server).operateHeaders`)
/// carries `traceparent`: pairs with its call's start by (transport,
/// stream id). The header's goroutine is the transport's reader.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GrpcTraceparent {
    pub header: EventHeader,
    pub transport: u64,
    pub stream_id: u32,
    /// The value's full length; its first `min(len, CAP)` bytes follow.
    pub len: u32,
    pub value: [u8; TRACEPARENT_CAP],
}

const _: () = assert!(core::mem::size_of::<GrpcTraceparent>() == 32 + 16 + TRACEPARENT_CAP);

/// The same HEADERS frame's first `tracestate` field, right after its
/// [`GrpcTraceparent`] record (written only when there is one): pairs with
/// it by (transport, stream id), as HTTP's `HttpTracestate` does with its
/// request. The header's goroutine is the transport's reader.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GrpcTracestate {
    pub header: EventHeader,
    pub transport: u64,
    pub stream_id: u32,
    /// The value's full length; its first `min(len, CAP)` bytes follow.
    pub len: u32,
    pub value: [u8; TRACESTATE_CAP],
}

const _: () = assert!(core::mem::size_of::<GrpcTracestate>() == 32 + 16 + TRACESTATE_CAP);

/// `(*Server).handleStream` returned (one of its `ret` sites) on the
/// goroutine in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GrpcServerEnd {
    pub header: EventHeader,
}

const _: () = assert!(core::mem::size_of::<GrpcServerEnd>() == 32);

/// The server wrote a call's status (`(*http2Server).writeStatus(s, st)`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GrpcServerStatus {
    pub header: EventHeader,
    /// The stream, as in [`GrpcServerStart::stream`].
    pub stream: u64,
    /// `st.s.Code`; -1 when it could not be read.
    pub code: i32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<GrpcServerStatus>() == 32 + 16);

/// A call reached `(*ClientConn).Invoke` or `(*ClientConn).NewStream`
/// (the header's `site` says which).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GrpcClientStart {
    pub header: EventHeader,
    /// The `*ClientConn`.
    pub conn: u64,
    pub method_len: u32,
    /// `ClientConn.target`'s full length; 0 when it could not be read.
    pub target_len: u32,
    pub method: [u8; METHOD_CAP],
    pub target: [u8; TARGET_CAP],
}

const _: () = assert!(core::mem::size_of::<GrpcClientStart>() == 32 + 16 + METHOD_CAP + TARGET_CAP);

/// `Invoke` or `NewStream` returned (the header's `site` says which).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GrpcClientEnd {
    pub header: EventHeader,
    /// The returned error's code: 0 for a nil error, the `*status.Error`'s
    /// code, [`CODE_NOT_STATUS`] for another error type, -1 when it could
    /// not be read.
    pub code: i32,
    pub _pad: u32,
}

/// [`GrpcClientEnd::code`]: a non-nil error that is not a `*status.Error`
/// (status.Code maps it to Unknown).
pub const CODE_NOT_STATUS: i32 = -2;

const _: () = assert!(core::mem::size_of::<GrpcClientEnd>() == 40);

/// Byte offsets in one binary (DWARF, or a table), `OFFSET_ABSENT` where
/// the field does not exist, and the one address the probes compare with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcOffsets {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// The method name (string) in the server stream: `ServerStream.Stream`
    /// + `Stream.method` (v1.68+), or `Stream.method`.
    pub stream_method: u64,
    /// `internal/status.Status.s` (`*spb.Status`).
    pub status_s: u64,
    /// `genproto/googleapis/rpc/status.Status.Code` (int32).
    pub proto_code: u64,
    /// `internal/status.Error.s` (`*Status`).
    pub error_s: u64,
    /// `ClientConn.target` (string).
    pub conn_target: u64,
    /// The runtime address of `go:itab.*internal/status.Error,error`; 0
    /// when unknown (then no returned error's code is read).
    pub status_error_itab: u64,
    /// The HTTP/2 stream id (uint32) in the server stream: `ServerStream.Stream`
    /// + `Stream.id`, or `Stream.id`.
    pub stream_id: u64,
    /// `golang.org/x/net/http2.MetaHeadersFrame.Fields` (a slice).
    pub frame_fields: u64,
    /// `MetaHeadersFrame.HeadersFrame` (a pointer).
    pub frame_headers: u64,
    /// `HeadersFrame.FrameHeader` + `FrameHeader.StreamID` (uint32).
    pub frame_stream_id: u64,
}

impl GrpcOffsets {
    /// Every offset absent.
    pub const ABSENT: Self = Self {
        g_goid: OFFSET_ABSENT,
        stream_method: OFFSET_ABSENT,
        status_s: OFFSET_ABSENT,
        proto_code: OFFSET_ABSENT,
        error_s: OFFSET_ABSENT,
        conn_target: OFFSET_ABSENT,
        status_error_itab: 0,
        stream_id: OFFSET_ABSENT,
        frame_fields: OFFSET_ABSENT,
        frame_headers: OFFSET_ABSENT,
        frame_stream_id: OFFSET_ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<GrpcOffsets>() == 11 * 8);

/// One entry of the `GRPC_CONFIG` array map, by target slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    pub offsets: GrpcOffsets,
}

const _: () = assert!(core::mem::size_of::<GrpcConfig>() == 8 + 11 * 8);
