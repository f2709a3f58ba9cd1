//! W3C trace context into outgoing gRPC calls (grpc-go over plaintext
//! HTTP/2), without writing the target's memory: an HPACK field appended to
//! the call's HEADERS frame on its way to the socket.
//!
//! grpc-go writes a stream's HEADERS frame on its connection's writer
//! goroutine (the "loopy writer"), not on the caller's, so the context
//! travels by what each side sees:
//!
//! 1. the gRPC client start probe on a goroutine with a context (a server
//!    span, HTTP or gRPC, open or inherited) makes the client span's id and
//!    keeps the context for the call (`GRPC_CALLS`, [`client_start`]);
//! 2. `(*http2Client).createHeaderFields` on the caller's goroutine: its
//!    entry reads the connection's ports (`http2Client.localAddr`,
//!    `.remoteAddr`), its `ret` sites the header-field slice it made for
//!    the stream; the context goes under that slice (`GRPC_HEADERS`);
//! 3. `(*loopyWriter).writeHeader(streamID, endStream, hf, ...)` on the
//!    writer goroutine finds it by the slice, checks the fields carry no
//!    `traceparent` already, and keeps it under (process, ports, stream
//!    id) in `H2_STREAMS`;
//! 4. the sk_msg program walks the HTTP/2 frames of each message on a
//!    connection with a stream waiting, and appends `traceparent` (a
//!    literal field without indexing, new name, no Huffman: the decoder's
//!    dynamic table is not touched) to the end of that stream's header
//!    block, fixing the frame's length; when the context has a
//!    `tracestate` (`state_key`), the program it tail-calls
//!    ([`propagate_h2_state`]) inserts it right after, when the frame has
//!    room (a field of the same kind, its value as it came: HTTP/2 allows
//!    no padding, so the write's length is the value's).
//!
//! net/http's own HTTP/2 without TLS (h2c) writes a request's HEADERS on
//! one goroutine and flushes them at once: the probe on
//! `(*http2clientStream).encodeAndWriteHeaders(req)` takes the request's
//! context (from the HTTP client start), the one on
//! `(*http2ClientConn).writeHeader(name, value)` sees every field it
//! encodes (a `traceparent` of its own leaves the request alone), and the
//! one on `(*http2ClientConn).writeHeaders(streamID, ...)` hands the
//! context and the stream id to the thread (`H2C_THREAD`), whose next
//! message the sk_msg program walks for that stream's HEADERS frame.
//!
//! A gRPC server span makes its ids like an HTTP one ([`server_start`]),
//! adopting the call's `traceparent` (read by the grpc family's probe on
//! the server's HEADERS, kept in `GRPC_INCOMING` until the call starts)
//! and its `tracestate` (kept beside it in `GRPC_INCOMING_STATE`, then in
//! `TRACESTATE` under the span's id, as `propagate::keep_tracestate` does
//! for HTTP; `propagate::server_end` removes it).

use agent_common::{
    event::EventHeader,
    grpc::{HEADER_FIELD_SIZE, MAX_HEADER_FIELDS},
    http::TRACESTATE_CAP,
    propagate::{
        H2_FIELD_LEN, H2_MIN_MAX_FRAME, KIND_GRPC_CLIENT_IDS, KIND_GRPC_SERVER_IDS,
        STAT_H2_CONTINUATION, STAT_H2_INJECTED, STAT_H2_NO_ROOM, STAT_H2C_INJECTED, STAT_MAP_FULL,
        STAT_NOT_SEEN, STAT_PRESENT, STAT_PUSH_FAILED, STAT_TOO_LONG, STAT_TRACESTATE,
        STAT_TRACESTATE_SKIPPED, STAT_UNKNOWN_LAYOUT, SpanContext, StreamKey, TRACESTATE_MAX,
        TraceState,
    },
    target::OFFSET_ABSENT,
};
use aya_ebpf::{
    bindings::BPF_ANY,
    bindings::sk_action,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_msg_pop_data, bpf_msg_pull_data},
    },
    macros::{map, sk_msg, uprobe},
    maps::{LruHashMap, PerCpuArray, ProgramArray},
    programs::{ProbeContext, SkMsgContext},
};

use crate::{
    go::{Reg, goid, read_field, reg},
    propagate::{
        GO_CONTEXT, GoKey, HEX, REQUEST_CONTEXT, TRACESTATE, config, fresh, hex_byte, new_context,
        new_span_id, parse_traceparent, sampled, staged_tracestate, stat, tgid, write_ids,
    },
    record::cookie,
};

/// A gRPC client call open on a goroutine, with a context to send.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GrpcCall {
    pub ctx: SpanContext,
    /// The connection of its current attempt (0: not known yet).
    pub local_port: u32,
    pub remote_port: u32,
    /// The header fields its current attempt made (`GRPC_HEADERS`' key).
    pub fields: u64,
}

/// A stream's header fields on their way to the writer goroutine.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingHeaders {
    pub ctx: SpanContext,
    pub local_port: u32,
    pub remote_port: u32,
    pub stream_id: u32,
    /// Non-zero once the writer took them (`stream_id` is then set).
    pub written: u32,
}

/// A server call's incoming `traceparent`, from its HEADERS frame (read on
/// the transport's reader goroutine) to its start (on another).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IncomingKey {
    pub tgid: u32,
    pub stream_id: u32,
    pub transport: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    pub _pad: [u8; 7],
}

#[map]
pub static GRPC_CALLS: LruHashMap<GoKey, GrpcCall> = LruHashMap::with_max_entries(8192, 0);

/// By (tgid, header-field slice).
#[map]
pub static GRPC_HEADERS: LruHashMap<GoKey, PendingHeaders> = LruHashMap::with_max_entries(8192, 0);

/// Streams whose HEADERS frame is to carry a context.
#[map]
pub static H2_STREAMS: LruHashMap<StreamKey, SpanContext> = LruHashMap::with_max_entries(8192, 0);

/// Connections (a `StreamKey` with stream id 0) that have carried a stream
/// with a context: the only ones whose messages the sk_msg program walks.
#[map]
pub static H2_CONNS: LruHashMap<StreamKey, u32> = LruHashMap::with_max_entries(8192, 0);

#[map]
pub static GRPC_INCOMING: LruHashMap<IncomingKey, Incoming> = LruHashMap::with_max_entries(4096, 0);

/// The `tracestate` beside a kept incoming `traceparent`, by the same key,
/// until the call's server span adopts both.
#[map]
pub static GRPC_INCOMING_STATE: LruHashMap<IncomingKey, TraceState> =
    LruHashMap::with_max_entries(4096, 0);

/// An h2c request's context, from `encodeAndWriteHeaders` to
/// `writeHeaders` on its goroutine.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct H2cRequest {
    pub ctx: SpanContext,
    /// Non-zero: one of its fields is `traceparent`.
    pub present: u32,
    pub _pad: u32,
}

/// An h2c stream whose HEADERS frame the thread is about to send.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadStream {
    pub ctx: SpanContext,
    pub stream_id: u32,
    pub _pad: u32,
}

/// By goroutine.
#[map]
pub static H2C_REQUESTS: LruHashMap<GoKey, H2cRequest> = LruHashMap::with_max_entries(8192, 0);

/// By thread (`bpf_get_current_pid_tgid`).
#[map]
pub static H2C_THREAD: LruHashMap<u64, ThreadStream> = LruHashMap::with_max_entries(8192, 0);

/// The HPACK field being appended, per CPU.
#[repr(C)]
pub struct FieldScratch {
    pub bytes: [u8; 72],
    /// The context to send in the frame being changed.
    pub ctx: SpanContext,
    /// The h2c stream's context, and its stream id (0: none).
    pub want_ctx: SpanContext,
    pub want: u32,
    /// Whether the connection has gRPC streams waiting; whether the h2c
    /// stream's frame was found.
    pub waiting: u32,
    pub found: u32,
    /// The walk's offset in the message, and the message's size.
    pub off: u32,
    pub size: u32,
    /// The length of the `tracestate` field in `state`.
    pub state_len: u32,
    /// The `tracestate` HPACK field being appended after `traceparent`.
    pub state: [u8; STATE_FIELD_CAP],
    /// The `tracestate` fields the walk left for [`propagate_h2_state`]
    /// (in message order), and how many.
    pub pending: [PendingState; MAX_PENDING_STATES],
    pub pending_count: u32,
    pub _pad2: u32,
}

/// A `tracestate` field to insert after a `traceparent` the walk appended.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingState {
    /// The HEADERS frame's offset in the message (its length is fixed
    /// again), and where the field goes (right after `traceparent`).
    pub frame: u32,
    pub at: u32,
    /// The caller's value in `TRACESTATE`.
    pub key: u64,
}

/// `tracestate` fields inserted in one message at most (one per HEADERS
/// frame that carries a context).
const MAX_PENDING_STATES: usize = 4;
const _: () = assert!(MAX_PENDING_STATES.is_power_of_two());

/// The program [`msg`] chains to when it left `tracestate` fields to
/// insert: in a program of its own, so that the kernel verifies the
/// variable-length write once, not on every path through the walk.
#[map]
pub static H2_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Bytes of the `tracestate` HPACK field at most: `0x00`, the name's
/// length (10), `tracestate`, the value's length (an HPACK integer with a
/// 7-bit prefix: 3 bytes at most for [`TRACESTATE_MAX`]), the value.
const STATE_FIELD_MAX: usize = 1 + 1 + 10 + 3 + TRACESTATE_MAX;
/// Its buffer: a power of two, so that a masked index stays inside it.
const STATE_FIELD_CAP: usize = 512;
const STATE_FIELD_MASK: usize = STATE_FIELD_CAP - 1;
const _: () = assert!(STATE_FIELD_MAX <= STATE_FIELD_CAP);
const TRACESTATE_NAME: [u8; 10] = *b"tracestate";

#[map]
pub static H2_SCRATCH: PerCpuArray<FieldScratch> = PerCpuArray::with_max_entries(1, 0);

/// HTTP/2 frame types and flags (RFC 9113).
const FRAME_HEADERS: u8 = 1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FRAME_HEADER_LEN: u32 = 9;
/// The client connection preface, which starts a connection's first
/// message: skipped.
const PREFACE_LEN: u32 = 24;
/// Frames walked in one message at most. grpc-go's writer goroutine
/// coalesces the frames of many streams into one write: with 16 concurrent
/// callers on one connection, a walk of 16 frames missed about a fifth of
/// the HEADERS frames (`cargo xtask bench propagate --protocol grpc`), 64
/// missed 5 in 98,931.
const MAX_FRAMES: u32 = 64;

/// A gRPC client call started (its start record written, with `header`) on
/// a goroutine: with a context there, makes the client span's id, keeps the
/// context for the call and writes the ids for the agent (`conn`: the
/// `*ClientConn` of its start record).
#[inline(always)]
pub fn client_start(cookie: u64, header: &EventHeader, conn: u64) {
    if config(cookie).is_none() {
        return;
    }
    let go = GoKey {
        tgid: tgid(),
        _pad: 0,
        goid: header.goid,
    };
    // SAFETY: copied out at once.
    let parent = match (unsafe { GO_CONTEXT.get(&go) }).copied() {
        Some(ctx) if fresh(&ctx, header.ktime_ns) => ctx,
        _ => {
            let _ = GRPC_CALLS.remove(&go);
            return;
        }
    };
    let out = SpanContext {
        trace_id: parent.trace_id,
        span_id: new_span_id(),
        flags: parent.flags,
        depth: 0,
        adopted: 0,
        _pad: [0; 5],
        since_ns: header.ktime_ns,
        state_key: parent.state_key,
    };
    write_ids(header, KIND_GRPC_CLIENT_IDS, conn, &out, parent.span_id);
    let call = GrpcCall {
        ctx: out,
        local_port: 0,
        remote_port: 0,
        fields: 0,
    };
    if GRPC_CALLS.insert(&go, &call, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
    }
}

/// A gRPC client call returned on `goid` (`unary`: from `Invoke`, whose
/// HEADERS frame went out before it returned). A unary call's context that
/// the writer took but no HEADERS frame carried past the sk_msg program is
/// counted as not seen; a stream's stays for its frame (`NewStream` may
/// return before the writer runs).
#[inline(always)]
pub fn client_end(cookie: u64, goid: u64, unary: bool) {
    if config(cookie).is_none() {
        return;
    }
    let tgid = tgid();
    let go = GoKey {
        tgid,
        _pad: 0,
        goid,
    };
    // SAFETY: copied out at once.
    let Some(call) = (unsafe { GRPC_CALLS.get(&go) }).copied() else {
        return;
    };
    let _ = GRPC_CALLS.remove(&go);
    if !unary || call.fields == 0 {
        return;
    }
    let key = GoKey {
        tgid,
        _pad: 0,
        goid: call.fields,
    };
    // SAFETY: copied out at once.
    let Some(pending) = (unsafe { GRPC_HEADERS.get(&key) }).copied() else {
        return;
    };
    let _ = GRPC_HEADERS.remove(&key);
    if pending.written != 0 {
        let stream = StreamKey {
            tgid,
            stream_id: pending.stream_id,
            local_port: pending.local_port,
            remote_port: pending.remote_port,
        };
        if H2_STREAMS.remove(&stream).is_ok() {
            stat(STAT_NOT_SEEN);
        }
    }
}

/// The probed goroutine's key, when propagation is on for the target.
#[inline(always)]
fn goroutine(
    ctx: &ProbeContext,
) -> Option<(GoKey, &'static agent_common::propagate::PropagateConfig)> {
    let config = config(cookie(ctx))?;
    if config.g_goid == OFFSET_ABSENT {
        return None;
    }
    let goid = goid(ctx, config.g_goid)?;
    Some((
        GoKey {
            tgid: tgid(),
            _pad: 0,
            goid,
        },
        config,
    ))
}

/// The port of a `net.Addr` field at `offset` in `base` (a `*net.TCPAddr`
/// behind the interface), or 0.
#[inline(always)]
fn addr_port(base: u64, offset: u64, port_offset: u64) -> u32 {
    let Some(addr) = read_field::<u64>(base, offset.wrapping_add(8)) else {
        return 0;
    };
    if addr == 0 {
        return 0;
    }
    match read_field::<u64>(addr, port_offset) {
        Some(port) if port > 0 && port < 65536 => port as u32,
        _ => 0,
    }
}

/// Entry site of `transport.(*http2Client).createHeaderFields` (RAX = the
/// transport), on the calling goroutine: the connection's ports, for the
/// call open there.
#[uprobe]
pub fn propagate_grpc_fields_start(ctx: ProbeContext) -> u32 {
    let Some((go, config)) = goroutine(&ctx) else {
        return 0;
    };
    let Some(call) = GRPC_CALLS.get_ptr_mut(&go) else {
        return 0;
    };
    let t = reg(&ctx, Reg::Rax);
    let local = addr_port(t, config.client_local_addr, config.tcp_addr_port);
    let remote = addr_port(t, config.client_remote_addr, config.tcp_addr_port);
    // SAFETY: the map's value, from the lookup; only this goroutine's probes
    // write it, and they run one at a time.
    unsafe {
        (*call).local_port = local;
        (*call).remote_port = remote;
    }
    0
}

/// `ret` sites of `createHeaderFields` (RAX = the fields' array): the
/// call's context goes under it, for the writer goroutine.
#[uprobe]
pub fn propagate_grpc_fields_end(ctx: ProbeContext) -> u32 {
    let Some((go, _)) = goroutine(&ctx) else {
        return 0;
    };
    let Some(call) = GRPC_CALLS.get_ptr_mut(&go) else {
        return 0;
    };
    // SAFETY: as above.
    let call = unsafe { &mut *call };
    let fields = reg(&ctx, Reg::Rax);
    if fields == 0 || call.local_port == 0 || call.remote_port == 0 {
        return 0;
    }
    call.fields = fields;
    let key = GoKey {
        tgid: go.tgid,
        _pad: 0,
        goid: fields,
    };
    let pending = PendingHeaders {
        ctx: call.ctx,
        local_port: call.local_port,
        remote_port: call.remote_port,
        stream_id: 0,
        written: 0,
    };
    if GRPC_HEADERS.insert(&key, &pending, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
    }
    0
}

/// `traceparent`, as grpc-go hands metadata names to HPACK (lowercase).
const TRACEPARENT: [u8; 11] = *b"traceparent";

/// Whether the header fields (`data`, `len` of them) hold `traceparent`;
/// `None` when there are more than can be searched.
#[inline(always)]
fn carries_traceparent(data: u64, len: u64) -> Option<bool> {
    if len > u64::from(MAX_HEADER_FIELDS) {
        return None;
    }
    for i in 0..MAX_HEADER_FIELDS {
        if u64::from(i) >= len {
            break;
        }
        let [name, name_len] = read_field::<[u64; 2]>(data, u64::from(i) * HEADER_FIELD_SIZE)?;
        if name_len != TRACEPARENT.len() as u64 {
            continue;
        }
        if read_field::<[u8; 11]>(name, 0)? == TRACEPARENT {
            return Some(true);
        }
    }
    Some(false)
}

/// Entry site of `transport.(*loopyWriter).writeHeader(streamID, endStream,
/// hf, onWrite)` (RBX = the stream id, RDI:RSI = the fields), on the
/// connection's writer goroutine: a stream of a call with a context waits
/// for its HEADERS frame in `H2_STREAMS`.
#[uprobe]
pub fn propagate_grpc_write_header(ctx: ProbeContext) -> u32 {
    if config(cookie(&ctx)).is_none() {
        return 0;
    }
    let tgid = tgid();
    let fields = reg(&ctx, Reg::Rdi);
    let key = GoKey {
        tgid,
        _pad: 0,
        goid: fields,
    };
    let Some(pending) = GRPC_HEADERS.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: the map's value, from the lookup; the writer goroutine is the
    // only one writing it now (the caller waits for its answer).
    let pending = unsafe { &mut *pending };
    if pending.written != 0 {
        return 0;
    }
    let stream_id = reg(&ctx, Reg::Rbx) as u32;
    pending.written = 1;
    pending.stream_id = stream_id;
    // SAFETY: `ctx.regs` points at the probed thread's saved registers.
    let count = unsafe { (*ctx.regs).rsi };
    match carries_traceparent(fields, count) {
        Some(false) => {}
        Some(true) => {
            stat(STAT_PRESENT);
            pending.stream_id = 0;
            return 0;
        }
        None => {
            stat(STAT_TOO_LONG);
            pending.stream_id = 0;
            return 0;
        }
    }
    let stream = StreamKey {
        tgid,
        stream_id,
        local_port: pending.local_port,
        remote_port: pending.remote_port,
    };
    if H2_STREAMS
        .insert(&stream, &pending.ctx, BPF_ANY as u64)
        .is_err()
    {
        stat(STAT_MAP_FULL);
        return 0;
    }
    let conn = StreamKey {
        stream_id: 0,
        ..stream
    };
    if H2_CONNS.insert(&conn, &1, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
    }
    0
}

/// Entry site of `net/http.(*http2clientStream).encodeAndWriteHeaders(req)`
/// (RBX = the request): its context, if any, for the fields and the write
/// that follow on this goroutine.
#[uprobe]
pub fn propagate_h2c_encode(ctx: ProbeContext) -> u32 {
    let Some((go, _)) = goroutine(&ctx) else {
        return 0;
    };
    let req = GoKey {
        tgid: go.tgid,
        _pad: 0,
        goid: reg(&ctx, Reg::Rbx),
    };
    // SAFETY: copied out at once.
    match (unsafe { REQUEST_CONTEXT.get(&req) }).copied() {
        Some(out) => {
            let pending = H2cRequest {
                ctx: out,
                present: 0,
                _pad: 0,
            };
            if H2C_REQUESTS.insert(&go, &pending, BPF_ANY as u64).is_err() {
                stat(STAT_MAP_FULL);
            }
        }
        None => {
            let _ = H2C_REQUESTS.remove(&go);
        }
    }
    0
}

/// Entry site of `net/http.(*http2ClientConn).writeHeader(name, value)`
/// (RBX:RCX = the name, lower case): a request that sends `traceparent`
/// of its own is left as it is.
#[uprobe]
pub fn propagate_h2c_field(ctx: ProbeContext) -> u32 {
    let Some((go, _)) = goroutine(&ctx) else {
        return 0;
    };
    let Some(pending) = H2C_REQUESTS.get_ptr_mut(&go) else {
        return 0;
    };
    if reg(&ctx, Reg::Rcx) != TRACEPARENT.len() as u64 {
        return 0;
    }
    if read_field::<[u8; 11]>(reg(&ctx, Reg::Rbx), 0) == Some(TRACEPARENT) {
        // SAFETY: the map's value, from the lookup; only this goroutine's
        // probes write it, and they run one at a time.
        unsafe { (*pending).present = 1 };
    }
    0
}

/// Entry site of `net/http.(*http2ClientConn).writeHeaders(streamID, ...)`
/// (RBX = the stream id): the request's context goes to this thread, which
/// writes and flushes the frames before it returns. A context still there
/// from an earlier request never reached the socket program on it.
#[uprobe]
pub fn propagate_h2c_write(ctx: ProbeContext) -> u32 {
    let Some((go, _)) = goroutine(&ctx) else {
        return 0;
    };
    // SAFETY: copied out at once.
    let Some(pending) = (unsafe { H2C_REQUESTS.get(&go) }).copied() else {
        return 0;
    };
    let _ = H2C_REQUESTS.remove(&go);
    if pending.present != 0 {
        stat(STAT_PRESENT);
        return 0;
    }
    let thread = bpf_get_current_pid_tgid();
    if H2C_THREAD.remove(&thread).is_ok() {
        stat(STAT_NOT_SEEN);
    }
    let stream = ThreadStream {
        ctx: pending.ctx,
        stream_id: reg(&ctx, Reg::Rbx) as u32,
        _pad: 0,
    };
    if H2C_THREAD.insert(&thread, &stream, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
    }
    0
}

/// A gRPC server call's HEADERS frame (decoded on `transport`'s reader)
/// carries `traceparent` `value` (`len` bytes in all): kept, when valid,
/// for the call's start. Returns whether it was kept.
#[inline(always)]
pub fn incoming(cookie: u64, transport: u64, stream_id: u32, value: &[u8; 56], len: u32) -> bool {
    if config(cookie).is_none() {
        return false;
    }
    let Some((trace_id, flags)) = parse_traceparent(value, len) else {
        return false;
    };
    let mut span_id = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        let Some(b) = hex_byte(value, 36 + 2 * i) else {
            return false;
        };
        span_id[i] = b;
        i += 1;
    }
    let key = IncomingKey {
        tgid: tgid(),
        stream_id,
        transport,
    };
    let parent = Incoming {
        trace_id,
        span_id,
        flags,
        _pad: [0; 7],
    };
    // A state left from an earlier call under this key is not this one's.
    let _ = GRPC_INCOMING_STATE.remove(&key);
    if GRPC_INCOMING.insert(&key, &parent, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
        return false;
    }
    true
}

/// The same HEADERS frame carries `tracestate` `value` (`len` bytes in
/// all) beside the `traceparent` [`incoming`] kept: kept too, for the
/// call's server span to send on (as `propagate::keep_tracestate` does for
/// HTTP). A value longer than [`TRACESTATE_MAX`] is not (counted).
#[inline(always)]
pub fn incoming_state(transport: u64, stream_id: u32, value: &[u8; TRACESTATE_CAP], len: u32) {
    let Some(state) = staged_tracestate(value, len) else {
        return;
    };
    let key = IncomingKey {
        tgid: tgid(),
        stream_id,
        transport,
    };
    if GRPC_INCOMING_STATE
        .insert(&key, state, BPF_ANY as u64)
        .is_err()
    {
        stat(STAT_MAP_FULL);
    }
}

/// A gRPC server span started on `header.goid` (its start record written,
/// with `header`): makes its ids, adopting the call's `traceparent` when
/// the kernel kept one, keeps them as the goroutine's context and writes
/// them for the agent (`stream`: its start record's; the parent: the
/// caller's span when adopted).
#[inline(always)]
pub fn server_start(
    cookie: u64,
    header: &EventHeader,
    stream: u64,
    transport: u64,
    stream_id: u32,
) {
    let Some(config) = config(cookie) else {
        return;
    };
    let tgid = tgid();
    let mut ctx = new_context(config, header.ktime_ns);
    let key = IncomingKey {
        tgid,
        stream_id,
        transport,
    };
    let mut parent = [0u8; 8];
    // SAFETY: copied out at once.
    if let Some(incoming) = (unsafe { GRPC_INCOMING.get(&key) }).copied() {
        let _ = GRPC_INCOMING.remove(&key);
        ctx.trace_id = incoming.trace_id;
        ctx.flags = if config.parent_based != 0 {
            incoming.flags
        } else {
            (incoming.flags & !1) | sampled(config, &incoming.trace_id)
        };
        ctx.adopted = 1;
        parent = incoming.span_id;
        adopt_state(&key, &mut ctx);
    }
    let go = GoKey {
        tgid,
        _pad: 0,
        goid: header.goid,
    };
    if GO_CONTEXT.insert(&go, &ctx, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
    }
    write_ids(header, KIND_GRPC_SERVER_IDS, stream, &ctx, parent);
}

/// The call's incoming `tracestate`, if the kernel kept one: it goes into
/// `TRACESTATE` under the server span's id, which the calls made under the
/// span send on (`ctx.state_key`); `propagate::server_end` removes it.
#[inline(always)]
fn adopt_state(key: &IncomingKey, ctx: &mut SpanContext) {
    let Some(state) = GRPC_INCOMING_STATE.get_ptr(key) else {
        return;
    };
    let state_key = u64::from_le_bytes(ctx.span_id);
    // SAFETY: the map's value, from the lookup, read by the helper while
    // this program runs (an LRU value stays valid under RCU until then).
    let inserted = TRACESTATE.insert(&state_key, unsafe { &*state }, BPF_ANY as u64);
    let _ = GRPC_INCOMING_STATE.remove(key);
    if inserted.is_err() {
        stat(STAT_MAP_FULL);
        return;
    }
    ctx.state_key = state_key;
}

/// The sk_msg program's HTTP/2 part, for a message with no HTTP/1 request
/// to start: from a thread with an h2c stream to send, or on a connection
/// with a gRPC stream waiting, walks its frames and appends `traceparent`
/// to each such stream's HEADERS frame. An h2c stream whose frame is not
/// in the thread's next message is counted as not seen.
#[inline(always)]
pub fn msg(ctx: &SkMsgContext, pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(scratch) = H2_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value; the program runs to its end on this CPU
    // (sk_msg programs run with migration off).
    let s = unsafe { &mut *scratch };
    // The walk's state lives in the map's memory, read back at each step:
    // the verifier then sees every step alike (a value loaded from a map is
    // unknown to it) instead of following each path through the frames
    // apart.
    // SAFETY: copied out at once.
    match (unsafe { H2C_THREAD.get(&pid_tgid) }).copied() {
        Some(t) => {
            let _ = H2C_THREAD.remove(&pid_tgid);
            s.want_ctx = t.ctx;
            put(&mut s.want, t.stream_id);
        }
        None => put(&mut s.want, 0),
    }
    // SAFETY: the program's own context.
    let md = unsafe { &*ctx.msg };
    let local_port = md.local_port;
    // Network order in the field's upper half (or its lower, by kernel).
    let raw = md.remote_port;
    let remote_port = if raw >> 16 != 0 {
        u32::from(u16::from_be((raw >> 16) as u16))
    } else {
        u32::from(u16::from_be(raw as u16))
    };
    let conn = StreamKey {
        tgid,
        stream_id: 0,
        local_port,
        remote_port,
    };
    // SAFETY: a lookup whose value is not used.
    let waiting = unsafe { H2_CONNS.get(&conn) }.is_some();
    put(&mut s.waiting, u32::from(waiting));
    if get(&s.want) == 0 && get(&s.waiting) == 0 {
        return;
    }
    put(&mut s.found, 0);
    put(&mut s.off, 0);
    put(&mut s.size, ctx.size());
    put(&mut s.pending_count, 0);
    for _ in 0..MAX_FRAMES {
        step(ctx, s, conn);
        if get(&s.off) == u32::MAX {
            break;
        }
    }
    if get(&s.want) != 0 && get(&s.found) == 0 {
        stat(STAT_NOT_SEEN);
    }
    let pending = get(&s.pending_count);
    if pending != 0 {
        // SAFETY: the callee is a program of the same type, on the same
        // message; when the call fails (no program in the slot), this one
        // goes on below.
        let _ = unsafe { H2_TAIL.tail_call(ctx, 0) };
        for _ in 0..MAX_PENDING_STATES as u32 {
            let left = get(&s.pending_count);
            if left == 0 {
                break;
            }
            put(&mut s.pending_count, left - 1);
            stat(STAT_TRACESTATE_SKIPPED);
        }
    }
}

/// Chained to by the sk_msg program when its walk appended `traceparent`
/// fields whose context has a `tracestate`: inserts the last one left (the
/// offsets of those before it stay valid), then chains to itself for the
/// next. Always passes the message.
#[sk_msg]
pub fn propagate_h2_state(ctx: SkMsgContext) -> u32 {
    state_tail(&ctx);
    sk_action::SK_PASS
}

#[inline(always)]
fn state_tail(ctx: &SkMsgContext) {
    let Some(scratch) = H2_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value, as the walk left it (a tail call runs on
    // after it, on the same CPU).
    let s = unsafe { &mut *scratch };
    let count = get(&s.pending_count);
    if count == 0 || count as usize > MAX_PENDING_STATES {
        return;
    }
    put(&mut s.pending_count, count - 1);
    let p = s.pending[(count as usize - 1) & (MAX_PENDING_STATES - 1)];
    if append_state(ctx, s, p.frame, p.at, p.key) {
        stat(STAT_TRACESTATE);
    }
    if count > 1 {
        // SAFETY: as in `msg`; a failed call leaves the rest unsent.
        let _ = unsafe { H2_TAIL.tail_call(ctx, 0) };
        let mut left = count - 1;
        while left > 0 && left <= MAX_PENDING_STATES as u32 {
            stat(STAT_TRACESTATE_SKIPPED);
            left -= 1;
        }
        put(&mut s.pending_count, 0);
    }
}

#[inline(always)]
fn put(slot: &mut u32, value: u32) {
    // SAFETY: a plain store to memory the caller owns.
    unsafe { core::ptr::write_volatile(slot, value) }
}

#[inline(always)]
fn get(slot: &u32) -> u32 {
    // SAFETY: a plain load of memory the caller owns.
    unsafe { core::ptr::read_volatile(slot) }
}

/// One frame of the walk: `s.off` is where it starts (`u32::MAX` once the
/// walk is over).
#[inline(always)]
fn step(ctx: &SkMsgContext, s: &mut FieldScratch, conn: StreamKey) {
    let off = get(&s.off);
    let size = get(&s.size);
    if off == u32::MAX || off > size || size - off < FRAME_HEADER_LEN {
        put(&mut s.off, u32::MAX);
        return;
    }
    let Some(h) = pull::<9>(ctx, off) else {
        put(&mut s.off, u32::MAX);
        return;
    };
    if off == 0 && h[..4] == *b"PRI " {
        put(&mut s.off, PREFACE_LEN);
        return;
    }
    let len = (u32::from(h[0]) << 16) | (u32::from(h[1]) << 8) | u32::from(h[2]);
    if h[3] > 9 {
        // Not a frame: not HTTP/2, or a message that starts inside one.
        put(&mut s.off, u32::MAX);
        return;
    }
    let mut next = off + FRAME_HEADER_LEN + len;
    if h[3] == FRAME_HEADERS {
        let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let want = get(&s.want);
        let counter = if want != 0 && stream_id == want {
            put(&mut s.found, 1);
            s.ctx = s.want_ctx;
            Some(STAT_H2C_INJECTED)
        } else if get(&s.waiting) != 0 {
            let key = StreamKey { stream_id, ..conn };
            // SAFETY: copied out at once.
            match (unsafe { H2_STREAMS.get(&key) }).copied() {
                Some(out) => {
                    let _ = H2_STREAMS.remove(&key);
                    s.ctx = out;
                    Some(STAT_H2_INJECTED)
                }
                None => None,
            }
        } else {
            None
        };
        if let Some(counter) = counter {
            let added = append(ctx, s, off, len, h[4], size, counter);
            put(&mut s.size, size + added);
            next += added;
        }
    }
    put(&mut s.off, next);
}

/// The `N` bytes at `off` of the message, or `None`.
#[inline(always)]
fn pull<const N: usize>(ctx: &SkMsgContext, off: u32) -> Option<[u8; N]> {
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(ctx.msg, off, off + N as u32, 0) } != 0 {
        return None;
    }
    let data = ctx.data();
    if data + N > ctx.data_end() {
        return None;
    }
    let mut out = [0u8; N];
    let src = data as *const u8;
    let mut i = 0;
    while i < N {
        // SAFETY: `data + N <= data_end` was checked.
        out[i] = unsafe { *src.add(i) };
        i += 1;
    }
    Some(out)
}

/// Appends the `traceparent` field to the HEADERS frame at `off` (payload
/// `len` bytes, `flags`) of a message of `size` bytes, and leaves the
/// caller's `tracestate` after it to [`propagate_h2_state`] when the
/// context has one; returns the bytes added (0 when it was left as it is,
/// counted by reason).
#[inline(always)]
fn append(
    ctx: &SkMsgContext,
    s: &mut FieldScratch,
    off: u32,
    len: u32,
    flags: u8,
    size: u32,
    counter: u32,
) -> u32 {
    if flags & FLAG_END_HEADERS == 0 {
        stat(STAT_H2_CONTINUATION);
        return 0;
    }
    let new_len = len + H2_FIELD_LEN as u32;
    let end = off + FRAME_HEADER_LEN + len;
    if new_len > H2_MIN_MAX_FRAME || end > size {
        stat(STAT_H2_NO_ROOM);
        return 0;
    }
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let Some([p]) = pull::<1>(ctx, off + FRAME_HEADER_LEN) else {
            stat(STAT_PUSH_FAILED);
            return 0;
        };
        pad = u32::from(p);
        if pad + 1 > len {
            stat(STAT_UNKNOWN_LAYOUT);
            return 0;
        }
    }
    // The header block ends where the padding starts.
    let at = end - pad;
    let out = s.ctx;
    let field = &mut s.bytes;
    fill_field(field, &out);
    if ctx.push_data(at, H2_FIELD_LEN as u32, 0).is_err() {
        stat(STAT_PUSH_FAILED);
        return 0;
    }
    if !write::<H2_FIELD_LEN>(ctx, at, field) {
        stat(STAT_PUSH_FAILED);
        return H2_FIELD_LEN as u32;
    }
    if !write_frame_len(ctx, off, new_len) {
        stat(STAT_PUSH_FAILED);
        return H2_FIELD_LEN as u32;
    }
    stat(counter);
    if out.state_key != 0 {
        let n = get(&s.pending_count);
        if (n as usize) < MAX_PENDING_STATES {
            s.pending[n as usize & (MAX_PENDING_STATES - 1)] = PendingState {
                frame: off,
                at: at + H2_FIELD_LEN as u32,
                key: out.state_key,
            };
            put(&mut s.pending_count, n + 1);
        } else {
            stat(STAT_TRACESTATE_SKIPPED);
        }
    }
    H2_FIELD_LEN as u32
}

/// Inserts the `tracestate` field at `at` (right after `traceparent`, in
/// the HEADERS frame at `frame`), the caller's value kept under `key`, and
/// fixes the frame's length; returns whether it did (counted when not:
/// gone, its server span ended; no room in the frame; refused by the
/// kernel). The value goes as it is, with no padding (a field value has no
/// optional whitespace in HTTP/2), so the write's length is known only
/// here: byte by byte, each checked.
#[inline(always)]
fn append_state(ctx: &SkMsgContext, s: &mut FieldScratch, frame: u32, at: u32, key: u64) -> bool {
    fill_state(s, key);
    // Read back from memory: every path through the fill reaches the write
    // alike.
    let n = get(&s.state_len);
    if n == 0 {
        stat(STAT_TRACESTATE_SKIPPED);
        return false;
    }
    let Some(h) = pull::<3>(ctx, frame) else {
        stat(STAT_TRACESTATE_SKIPPED);
        return false;
    };
    let len = (u32::from(h[0]) << 16) | (u32::from(h[1]) << 8) | u32::from(h[2]);
    let new_len = len + n;
    if new_len > H2_MIN_MAX_FRAME
        || at < frame + FRAME_HEADER_LEN
        || at > frame + FRAME_HEADER_LEN + len
    {
        stat(STAT_TRACESTATE_SKIPPED);
        return false;
    }
    if ctx.push_data(at, n, 0).is_err() {
        stat(STAT_TRACESTATE_SKIPPED);
        return false;
    }
    if !write_state(ctx, at, s) {
        // The pushed bytes are not the field's: taken out again.
        // SAFETY: the program's own context.
        if unsafe { bpf_msg_pop_data(ctx.msg, at, n, 0) } != 0 {
            stat(STAT_PUSH_FAILED);
        } else {
            stat(STAT_TRACESTATE_SKIPPED);
        }
        return false;
    }
    if !write_frame_len(ctx, frame, new_len) {
        stat(STAT_PUSH_FAILED);
        return false;
    }
    true
}

/// Puts the `tracestate` field with the value under `key` in `s.state`,
/// and its length in `s.state_len` (0: there is none to send).
#[inline(always)]
fn fill_state(s: &mut FieldScratch, key: u64) {
    put(&mut s.state_len, 0);
    // SAFETY: a lookup whose value is read at once.
    let Some(state) = (unsafe { TRACESTATE.get(&key) }) else {
        return;
    };
    let len = state.len as usize;
    if len == 0 || len > TRACESTATE_MAX {
        return;
    }
    let f = &mut s.state;
    f[0] = 0;
    f[1] = TRACESTATE_NAME.len() as u8;
    let mut i = 0;
    while i < TRACESTATE_NAME.len() {
        f[2 + i] = TRACESTATE_NAME[i];
        i += 1;
    }
    // The value's length: an HPACK integer, 7-bit prefix, no Huffman.
    let head = if len < 127 {
        f[12] = len as u8;
        13
    } else if len - 127 < 128 {
        f[12] = 127;
        f[13] = (len - 127) as u8;
        14
    } else {
        f[12] = 127;
        f[13] = 0x80 | ((len - 127) & 0x7f) as u8;
        f[14] = ((len - 127) >> 7) as u8;
        15
    };
    let mut i = 0;
    while i < TRACESTATE_MAX {
        f[(head + i) & STATE_FIELD_MASK] = state.value[i];
        i += 1;
    }
    put(&mut s.state_len, (head + len) as u32);
}

/// Writes the first `s.state_len` bytes of `s.state` at `at` of the
/// message (pushed there before).
#[inline(always)]
fn write_state(ctx: &SkMsgContext, at: u32, s: &FieldScratch) -> bool {
    let n = get(&s.state_len) as usize;
    if n == 0 || n > STATE_FIELD_MAX {
        return false;
    }
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + n as u32, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    let data_end = ctx.data_end();
    let mut i = 0;
    while i < STATE_FIELD_MAX {
        if i >= n {
            break;
        }
        if data + i + 1 > data_end {
            return false;
        }
        // SAFETY: `data + i + 1 <= data_end` was checked: a byte of the
        // message the program may write.
        unsafe { *((data + i) as *mut u8) = s.state[i & STATE_FIELD_MASK] };
        i += 1;
    }
    true
}

/// Writes `len` as the 24-bit payload length of the frame at `at`.
#[inline(always)]
fn write_frame_len(ctx: &SkMsgContext, at: u32, len: u32) -> bool {
    let mut bytes = [0u8; 72];
    bytes[0] = (len >> 16) as u8;
    bytes[1] = (len >> 8) as u8;
    bytes[2] = len as u8;
    write::<3>(ctx, at, &bytes)
}

/// Writes the first `N` bytes of `bytes` at `at` of the message.
#[inline(always)]
fn write<const N: usize>(ctx: &SkMsgContext, at: u32, bytes: &[u8; 72]) -> bool {
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + N as u32, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + N > ctx.data_end() {
        return false;
    }
    let dst = data as *mut u8;
    let mut i = 0;
    while i < N {
        // SAFETY: `data + N <= data_end` was checked: the message's bytes
        // the program may write.
        unsafe { *dst.add(i) = bytes[i] };
        i += 1;
    }
    true
}

/// `0x00 0x0b traceparent 0x37 00-{trace}-{span}-{flags}`.
#[inline(always)]
fn fill_field(field: &mut [u8; 72], out: &SpanContext) {
    field[0] = 0;
    field[1] = TRACEPARENT.len() as u8;
    let mut i = 0;
    while i < TRACEPARENT.len() {
        field[2 + i] = TRACEPARENT[i];
        i += 1;
    }
    field[13] = 55;
    field[14] = b'0';
    field[15] = b'0';
    field[16] = b'-';
    let mut at = 17;
    let mut k = 0;
    while k < 16 {
        field[at] = HEX[(out.trace_id[k] >> 4) as usize];
        field[at + 1] = HEX[(out.trace_id[k] & 15) as usize];
        at += 2;
        k += 1;
    }
    field[at] = b'-';
    at += 1;
    let mut k = 0;
    while k < 8 {
        field[at] = HEX[(out.span_id[k] >> 4) as usize];
        field[at + 1] = HEX[(out.span_id[k] & 15) as usize];
        at += 2;
        k += 1;
    }
    field[at] = b'-';
    field[at + 1] = HEX[(out.flags >> 4) as usize];
    field[at + 2] = HEX[(out.flags & 15) as usize];
}
