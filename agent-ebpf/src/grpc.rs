//! `google.golang.org/grpc` probes.
//!
//! Server: the entry of `(*Server).handleStream(t, stream)` (RDI = stream)
//! starts a call, its `ret` sites end it on the same goroutine, and the
//! entry of `(*http2Server).writeStatus(s, st)` (RBX = stream, RCX = st)
//! on that goroutine gives its status code.
//!
//! Client: the entries of `(*ClientConn).Invoke(ctx, method, ...)` (RAX =
//! cc, RDI:RSI = method) and `(*ClientConn).NewStream(ctx, desc, method,
//! ...)` (RAX = cc, RSI:R8 = method) start a call; their `ret` sites end
//! it, with the returned error (Invoke: RAX:RBX; NewStream: RCX:RDI).
//! Entries and returns pair by goroutine in the agent. Each function has
//! programs of its own, which read its registers at constant offsets.

use agent_common::{
    grpc::{
        CODE_NOT_STATUS, GrpcClientEnd, GrpcClientStart, GrpcConfig, GrpcOffsets, GrpcServerEnd,
        GrpcServerStart, GrpcServerStatus, GrpcTraceparent, GrpcTracestate, HEADER_FIELD_SIZE,
        KIND_GRPC_CLIENT_END, KIND_GRPC_CLIENT_START, KIND_GRPC_SERVER_END, KIND_GRPC_SERVER_START,
        KIND_GRPC_SERVER_STATUS, KIND_GRPC_TRACEPARENT, KIND_GRPC_TRACESTATE, MAX_HEADER_FIELDS,
        TRACEPARENT_CAP,
    },
    http::TRACESTATE_CAP,
    stats,
    target::MAX_TARGETS,
};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
};

use crate::{
    go::{copy_string, goid, read_field, read_string},
    maps::count,
    record::{InPlace, cookie, fields, header, reserve, slot_config, submit},
};

// SAFETY: agent-common record types, `#[repr(C)]` integers and integer
// arrays without implicit padding (sizes asserted where they are defined).
unsafe impl InPlace for GrpcServerStart {}
// SAFETY: as above.
unsafe impl InPlace for GrpcServerEnd {}
// SAFETY: as above.
unsafe impl InPlace for GrpcServerStatus {}
// SAFETY: as above.
unsafe impl InPlace for GrpcClientStart {}
// SAFETY: as above.
unsafe impl InPlace for GrpcClientEnd {}
// SAFETY: as above.
unsafe impl InPlace for GrpcTraceparent {}
// SAFETY: as above.
unsafe impl InPlace for GrpcTracestate {}

/// Per-target configuration, indexed by the target slot in the attach cookie.
#[map]
pub static GRPC_CONFIG: Array<GrpcConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// The probed thread's registers Go's ABI passes these arguments in.
#[derive(Clone, Copy)]
enum R {
    Rax,
    Rbx,
    Rcx,
    Rdi,
    Rsi,
    R8,
}

#[inline(always)]
fn reg(ctx: &ProbeContext, r: R) -> u64 {
    // SAFETY: `ctx.regs` points at the probed thread's saved registers,
    // which the kernel hands to the program and the verifier lets it read.
    let regs = unsafe { &*ctx.regs };
    match r {
        R::Rax => regs.rax,
        R::Rbx => regs.rbx,
        R::Rcx => regs.rcx,
        R::Rdi => regs.rdi,
        R::Rsi => regs.rsi,
        R::R8 => regs.r8,
    }
}

#[inline(always)]
fn config(cookie: u64) -> Option<&'static GrpcConfig> {
    slot_config(&GRPC_CONFIG, cookie)
}

/// The probe's configuration and the goroutine id, or `None` (counted).
#[inline(always)]
fn begin(ctx: &ProbeContext) -> Option<(u64, &'static GrpcOffsets, u64)> {
    let cookie = cookie(ctx);
    let off = &config(cookie)?.offsets;
    let Some(goid) = goid(ctx, off.g_goid) else {
        count(stats::READ_FAILED);
        return None;
    };
    Some((cookie, off, goid))
}

/// Entry site of `google.golang.org/grpc.(*Server).handleStream`.
#[uprobe]
pub fn grpc_server_start(ctx: ProbeContext) -> u32 {
    server_start(&ctx);
    0
}

/// `ret` sites of `(*Server).handleStream`.
#[uprobe]
pub fn grpc_server_end(ctx: ProbeContext) -> u32 {
    server_end(&ctx);
    0
}

/// Entry site of `(*http2Server).writeStatus` (`WriteStatus` before v1.68).
#[uprobe]
pub fn grpc_server_status(ctx: ProbeContext) -> u32 {
    server_status(&ctx);
    0
}

/// Entry site of `(*http2Server).operateHeaders(ctx, frame, handle)`
/// (v1.60+: the frame in RDI).
#[uprobe]
pub fn grpc_operate_headers(ctx: ProbeContext) -> u32 {
    operate_headers(&ctx, reg(&ctx, R::Rdi));
    0
}

/// Entry site of `(*http2Server).operateHeaders(frame, handle, ...)`
/// (before v1.60: the frame in RBX).
#[uprobe]
pub fn grpc_operate_headers_old(ctx: ProbeContext) -> u32 {
    operate_headers(&ctx, reg(&ctx, R::Rbx));
    0
}

/// `traceparent` and `tracestate`, as HPACK hands header names over
/// (lowercase).
const TRACEPARENT: [u8; 11] = *b"traceparent";
const TRACESTATE: [u8; 10] = *b"tracestate";

/// Searches the frame's decoded header fields for `traceparent` and
/// `tracestate` (the first of each) and writes them, with the transport
/// (RAX) and stream id that pair them with their call: `traceparent` in a
/// record, and `tracestate`, when there is one beside it, in a record of
/// its own that follows.
#[inline(always)]
fn operate_headers(ctx: &ProbeContext, frame: u64) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let transport = reg(ctx, R::Rax);
    let Some([data, len]) = read_field::<[u64; 2]>(frame, off.frame_fields) else {
        count(stats::READ_FAILED);
        return;
    };
    let mut found = None;
    let mut state = None;
    for i in 0..MAX_HEADER_FIELDS {
        if u64::from(i) >= len {
            break;
        }
        let Some([name, name_len, value, value_len]) =
            read_field::<[u64; 4]>(data, u64::from(i) * HEADER_FIELD_SIZE)
        else {
            count(stats::READ_FAILED);
            return;
        };
        if name_len == TRACEPARENT.len() as u64 && found.is_none() {
            if read_field::<[u8; 11]>(name, 0) == Some(TRACEPARENT) {
                found = Some((value, value_len));
            }
        } else if name_len == TRACESTATE.len() as u64
            && state.is_none()
            && read_field::<[u8; 10]>(name, 0) == Some(TRACESTATE)
        {
            state = Some((value, value_len));
        }
        if found.is_some() && state.is_some() {
            break;
        }
    }
    let Some((value, value_len)) = found else {
        if len > u64::from(MAX_HEADER_FIELDS) {
            count(stats::HEADERS_INCOMPLETE);
        }
        return;
    };
    let stream_id = read_field::<u64>(frame, off.frame_headers)
        .and_then(|headers| read_field::<u32>(headers, off.frame_stream_id));
    let Some(stream_id) = stream_id else {
        count(stats::READ_FAILED);
        return;
    };
    let Some(mut entry) = reserve::<GrpcTraceparent>(KIND_GRPC_TRACEPARENT) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_GRPC_TRACEPARENT, 0);
    rec.transport = transport;
    rec.stream_id = stream_id;
    rec.len = match copy_string::<TRACEPARENT_CAP>(value, value_len, &mut rec.value) {
        Some(len) => len,
        None => {
            count(stats::READ_FAILED);
            0
        }
    };
    let kept = crate::propagate_h2::incoming(cookie, transport, stream_id, &rec.value, rec.len);
    let now = rec.header.ktime_ns;
    submit(entry, now);
    match state {
        Some((value, value_len)) => {
            tracestate(cookie, transport, stream_id, value, value_len, kept)
        }
        None if len > u64::from(MAX_HEADER_FIELDS) => count(stats::HEADERS_INCOMPLETE),
        None => {}
    }
}

/// The `tracestate` field beside a call's `traceparent`: its record, and
/// (`kept`: the kernel kept the `traceparent` for the call's start) the
/// value kept to send on under the call's server span.
#[inline(always)]
fn tracestate(cookie: u64, transport: u64, stream_id: u32, value: u64, value_len: u64, kept: bool) {
    let Some(mut entry) = reserve::<GrpcTracestate>(KIND_GRPC_TRACESTATE) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_GRPC_TRACESTATE, 0);
    rec.transport = transport;
    rec.stream_id = stream_id;
    rec.len = match copy_string::<TRACESTATE_CAP>(value, value_len, &mut rec.value) {
        Some(len) => len,
        None => {
            count(stats::READ_FAILED);
            entry.discard(BPF_RB_NO_WAKEUP as u64);
            return;
        }
    };
    if kept {
        crate::propagate_h2::incoming_state(transport, stream_id, &rec.value, rec.len);
    }
    let now = rec.header.ktime_ns;
    submit(entry, now);
}

/// Entry site of `(*ClientConn).Invoke`.
#[uprobe]
pub fn grpc_invoke_start(ctx: ProbeContext) -> u32 {
    client_start::<false>(&ctx);
    0
}

/// `ret` sites of `(*ClientConn).Invoke`.
#[uprobe]
pub fn grpc_invoke_end(ctx: ProbeContext) -> u32 {
    client_end::<false>(&ctx);
    0
}

/// Entry site of `(*ClientConn).NewStream`.
#[uprobe]
pub fn grpc_stream_start(ctx: ProbeContext) -> u32 {
    client_start::<true>(&ctx);
    0
}

/// `ret` sites of `(*ClientConn).NewStream`.
#[uprobe]
pub fn grpc_stream_end(ctx: ProbeContext) -> u32 {
    client_end::<true>(&ctx);
    0
}

fn server_start(ctx: &ProbeContext) {
    let Some((cookie, off, goid)) = begin(ctx) else {
        return;
    };
    let stream = reg(ctx, R::Rdi);
    let transport = reg(ctx, R::Rcx);
    let Some(mut entry) = reserve::<GrpcServerStart>(KIND_GRPC_SERVER_START) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_GRPC_SERVER_START, goid);
    rec.stream = stream;
    rec.transport = transport;
    rec.stream_id = read_field::<u32>(stream, off.stream_id).unwrap_or(0);
    rec.method_len = match read_string(stream, off.stream_method, &mut rec.method) {
        Some(len) => len,
        None => {
            count(stats::READ_FAILED);
            0
        }
    };
    let hdr = rec.header;
    let stream_id = rec.stream_id;
    let now = rec.header.ktime_ns;
    submit(entry, now);
    crate::propagate_h2::server_start(cookie, &hdr, stream, transport, stream_id);
}

fn server_end(ctx: &ProbeContext) {
    let Some((cookie, _, goid)) = begin(ctx) else {
        return;
    };
    if crate::propagate::enabled(cookie) {
        crate::propagate::server_end(cookie, goid);
    }
    let Some(mut entry) = reserve::<GrpcServerEnd>(KIND_GRPC_SERVER_END) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_GRPC_SERVER_END, goid);
    let now = rec.header.ktime_ns;
    submit(entry, now);
}

/// The code of a `*spb.Status` (nil: OK); -1 when unreadable.
#[inline(always)]
fn proto_code(off: &GrpcOffsets, proto: u64) -> i32 {
    if proto == 0 {
        return 0;
    }
    match read_field::<i32>(proto, off.proto_code) {
        Some(code) => code,
        None => {
            count(stats::READ_FAILED);
            -1
        }
    }
}

fn server_status(ctx: &ProbeContext) {
    let Some((cookie, off, goid)) = begin(ctx) else {
        return;
    };
    let stream = reg(ctx, R::Rbx);
    let status = reg(ctx, R::Rcx);
    let code = if status == 0 {
        0
    } else {
        match read_field::<u64>(status, off.status_s) {
            Some(proto) => proto_code(off, proto),
            None => {
                count(stats::READ_FAILED);
                -1
            }
        }
    };
    let Some(mut entry) = reserve::<GrpcServerStatus>(KIND_GRPC_SERVER_STATUS) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_GRPC_SERVER_STATUS, goid);
    rec.stream = stream;
    rec.code = code;
    rec._pad = 0;
    let now = rec.header.ktime_ns;
    submit(entry, now);
}

/// One program per function (`STREAM`: `NewStream`), so that each reads
/// its registers at constant offsets (the verifier refuses a context read
/// at an offset chosen at run time).
#[inline(always)]
fn client_start<const STREAM: bool>(ctx: &ProbeContext) {
    let Some((cookie, off, goid)) = begin(ctx) else {
        return;
    };
    let conn = reg(ctx, R::Rax);
    let (method, method_len) = if STREAM {
        (reg(ctx, R::Rsi), reg(ctx, R::R8))
    } else {
        (reg(ctx, R::Rdi), reg(ctx, R::Rsi))
    };
    let Some(mut entry) = reserve::<GrpcClientStart>(KIND_GRPC_CLIENT_START) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_GRPC_CLIENT_START, goid);
    rec.conn = conn;
    rec.method_len = match copy_string(method, method_len, &mut rec.method) {
        Some(len) => len,
        None => {
            count(stats::READ_FAILED);
            0
        }
    };
    rec.target_len = read_string(conn, off.conn_target, &mut rec.target).unwrap_or(0);
    let hdr = rec.header;
    let now = rec.header.ktime_ns;
    submit(entry, now);
    crate::propagate_h2::client_start(cookie, &hdr, conn);
}

#[inline(always)]
fn client_end<const STREAM: bool>(ctx: &ProbeContext) {
    let Some((cookie, off, goid)) = begin(ctx) else {
        return;
    };
    let (itab, data) = if STREAM {
        (reg(ctx, R::Rcx), reg(ctx, R::Rdi))
    } else {
        (reg(ctx, R::Rax), reg(ctx, R::Rbx))
    };
    let code = if itab == 0 {
        0
    } else if off.status_error_itab == 0 || itab != off.status_error_itab {
        CODE_NOT_STATUS
    } else {
        match read_field::<u64>(data, off.error_s)
            .and_then(|status| read_field::<u64>(status, off.status_s))
        {
            Some(proto) => proto_code(off, proto),
            None => {
                count(stats::READ_FAILED);
                -1
            }
        }
    };
    crate::propagate_h2::client_end(cookie, goid, !STREAM);
    let Some(mut entry) = reserve::<GrpcClientEnd>(KIND_GRPC_CLIENT_END) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_GRPC_CLIENT_END, goid);
    rec.code = code;
    rec._pad = 0;
    let now = rec.header.ktime_ns;
    submit(entry, now);
}
