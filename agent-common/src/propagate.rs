//! W3C trace context into outgoing requests (`--propagate`): the ids the
//! kernel makes for the spans whose context it sends, and the counters of
//! the socket programs that write it into the request's bytes.
//!
//! With propagation on, the ids of an HTTP server span and of an HTTP
//! client span are made by the probes (the kernel must know them when the
//! request's bytes are written, before the agent has read any record); a
//! [`SpanIds`] record follows the span's start record and the agent exports
//! exactly those ids.

use crate::event::EventHeader;

/// `EventHeader::kind` of a [`SpanIds`] record for an HTTP server span
/// (`key`: the `*http.response` of its start record).
pub const KIND_SERVER_IDS: u32 = 46;
/// `EventHeader::kind` of a [`SpanIds`] record for an HTTP client span
/// (`key`: the `*http.Request` of its start record).
pub const KIND_CLIENT_IDS: u32 = 47;
/// `EventHeader::kind` of a [`SpanIds`] record for a gRPC server span
/// (`key`: the stream of its start record; `parent_id`: the caller's span
/// when the kernel adopted the call's `traceparent`).
pub const KIND_GRPC_SERVER_IDS: u32 = 56;
/// `EventHeader::kind` of a [`SpanIds`] record for a gRPC client span
/// (`key`: the `*ClientConn` of its start record).
pub const KIND_GRPC_CLIENT_IDS: u32 = 57;

/// The ids the kernel made for the span whose start record precedes this
/// one (same goroutine, same `ktime_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanIds {
    pub header: EventHeader,
    /// What pairs the record with its span (see the kinds).
    pub key: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The parent span (a client span's server span); zero: none here (a
    /// server span's parent comes with its `traceparent` record).
    pub parent_id: [u8; 8],
    /// W3C trace flags.
    pub flags: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<SpanIds>() == 32 + 8 + 16 + 8 + 8 + 8);

/// `HttpTraceparent::_pad` when the kernel took the record's trace id for
/// the server span's context (the value is valid): the agent takes the
/// caller as parent only then, so that the ids it exports are the ones the
/// kernel sent on.
pub const TRACEPARENT_ADOPTED: u32 = 1;

/// The context the kernel keeps for a goroutine with a server span open (or
/// one inherited from its creator), and for a request on its way out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    /// Goroutine creations it was inherited through (0: its own).
    pub depth: u8,
    /// 1 when the trace id is the caller's (a valid incoming `traceparent`).
    pub adopted: u8,
    pub _pad: [u8; 5],
    /// `bpf_ktime_get_ns` when it was set or inherited.
    pub since_ns: u64,
    /// The key of the caller's `tracestate` in the `TRACESTATE` map (the
    /// server span's id); 0: none to send.
    pub state_key: u64,
}

const _: () = assert!(core::mem::size_of::<SpanContext>() == 48);

/// Bytes of an incoming `tracestate` value sent on at most (a longer one is
/// not sent, and counted).
pub const TRACESTATE_MAX: usize = 256;

/// A server span's incoming `tracestate`, to send on with its requests.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceState {
    pub len: u32,
    pub _pad: u32,
    pub value: [u8; TRACESTATE_MAX],
}

const _: () = assert!(core::mem::size_of::<TraceState>() == 8 + TRACESTATE_MAX);

/// How many goroutine creations a context is inherited through at most (as
/// the agent's goroutine table).
pub const MAX_DEPTH: u8 = 4;
/// How long an inherited context stays usable (as the agent's goroutine
/// table).
pub const INHERIT_TTL_NS: u64 = 30_000_000_000;

/// Per-target configuration: the `PROPAGATE_CONFIG` array by target slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PropagateConfig {
    /// Non-zero: the probes make ids and keep contexts for this target.
    pub active: u32,
    /// Non-zero: an adopted `traceparent`'s sampled flag decides
    /// (`parentbased_*` samplers); otherwise the trace id does.
    pub parent_based: u32,
    /// The sampler's rule on a trace id, as the agent applies it
    /// (`spans::sampling`): sampled when the id's last 8 bytes, read
    /// big-endian and shifted right by one, are below this (`1 << 63`:
    /// always; 0: never).
    pub sample_bound: u64,
    /// `runtime.g.goid`, for the HTTP/2 probes.
    pub g_goid: u64,
    /// grpc's `transport.http2Client.localAddr` and `.remoteAddr` (each a
    /// `net.Addr`), and `net.TCPAddr.Port`: the connection a client stream
    /// goes out on, as the sk_msg program sees it (its ports).
    pub client_local_addr: u64,
    pub client_remote_addr: u64,
    pub tcp_addr_port: u64,
}

const _: () = assert!(core::mem::size_of::<PropagateConfig>() == 48);

/// A client HTTP/2 stream of a traced process, as both the probe on the
/// writer of its HEADERS frame and the sk_msg program see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamKey {
    pub tgid: u32,
    pub stream_id: u32,
    /// The connection's local and remote TCP ports (host order).
    pub local_port: u32,
    pub remote_port: u32,
}

const _: () = assert!(core::mem::size_of::<StreamKey>() == 16);

/// Bytes of the HPACK field the sk_msg program appends to a HEADERS frame:
/// `0x00` (literal without indexing, new name), the name's length (11),
/// `traceparent`, the value's length (55), the value.
pub const H2_FIELD_LEN: usize = 1 + 1 + 11 + 1 + 55;
/// The largest frame payload every HTTP/2 peer accepts
/// (SETTINGS_MAX_FRAME_SIZE's minimum): a HEADERS frame that would grow
/// past it is left as it is.
pub const H2_MIN_MAX_FRAME: u32 = 16_384;

/// Bytes of an outgoing message the sk_msg program looks at for the
/// request line and the header block.
pub const SCAN_BYTES: usize = 2048;

/// The `PROPAGATE_STATS` per-CPU counters, by index.
/// A request carried the context out (the header line was inserted).
pub const STAT_INJECTED: u32 = 0;
/// A request over TLS: its bytes are encrypted before a socket program sees
/// them, and memory writes are refused under lockdown.
pub const STAT_TLS: u32 = 1;
/// A request that already carried a `traceparent` (left as it was).
pub const STAT_PRESENT: u32 = 2;
/// A request whose header block did not end within [`SCAN_BYTES`] of its
/// first write (no room to check it carries no context).
pub const STAT_TOO_LONG: u32 = 3;
/// The kernel refused to insert the bytes (`bpf_msg_push_data` or
/// `bpf_msg_pull_data` failed).
pub const STAT_PUSH_FAILED: u32 = 4;
/// A request with a context whose bytes never passed the socket program on
/// the thread that started writing it: a connection opened before the agent
/// attached, or the writing goroutine moved to another thread.
pub const STAT_NOT_SEEN: u32 = 5;
/// The bytes a request's writer sent first did not start with a request
/// line (an unknown layout).
pub const STAT_UNKNOWN_LAYOUT: u32 = 6;
/// A kernel map refused an update (a context not kept).
pub const STAT_MAP_FULL: u32 = 7;
/// A request carried the caller's `tracestate` on (after its `traceparent`:
/// a header line for HTTP/1.1, an HPACK field for HTTP/2).
pub const STAT_TRACESTATE: u32 = 8;
/// A caller's `tracestate` not sent on: longer than [`TRACESTATE_MAX`]
/// (counted once, when it arrives, over HTTP or gRPC), or, for one request,
/// gone (its server span ended), refused by the kernel, or, over HTTP/2,
/// without room in the HEADERS frame (its `traceparent` went out).
pub const STAT_TRACESTATE_SKIPPED: u32 = 9;
/// An HTTP/2 request (a gRPC call) carried the context out (the HPACK
/// field was appended to its HEADERS frame).
pub const STAT_H2_INJECTED: u32 = 10;
/// An HTTP/2 request made with net/http over plaintext HTTP/2 (h2c)
/// carried the context out.
pub const STAT_H2C_INJECTED: u32 = 13;
/// An HTTP/2 request whose header block did not fit one HEADERS frame
/// (END_HEADERS not set: CONTINUATION frames follow).
pub const STAT_H2_CONTINUATION: u32 = 11;
/// An HTTP/2 request whose HEADERS frame would grow past
/// [`H2_MIN_MAX_FRAME`], or that a message holds only in part.
pub const STAT_H2_NO_ROOM: u32 = 12;
/// Number of counters.
pub const STAT_COUNT: u32 = 14;
