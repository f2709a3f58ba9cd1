//! W3C trace context into outgoing HTTP/1.1 requests, without writing the
//! target's memory (this works under kernel lockdown, which refuses
//! `bpf_probe_write_user`).
//!
//! The ids travel through the kernel, never through the agent:
//!
//! 1. the HTTP server start probe makes the server span's ids
//!    ([`server_start`]) and keeps them as its goroutine's context in
//!    `GO_CONTEXT`; a valid incoming `traceparent` gives it the caller's trace
//!    ([`adopt_traceparent`]); its end removes it ([`server_end`]); a
//!    goroutine created meanwhile inherits it ([`inherit`]);
//! 2. the HTTP client start probe on a goroutine with a context makes the
//!    client span's id and keeps the context to send under the request
//!    (`REQUEST_CONTEXT`, [`client_start`]);
//! 3. net/http writes a request's bytes on its connection's writer
//!    goroutine: the probe on `(*Request).write` ([`request_write`]) moves
//!    the request's context to the writing thread (`THREAD_CONTEXT`);
//! 4. the sockops program puts the traced process's outgoing TCP connections
//!    in `PROPAGATE_SOCKETS` ([`propagate_sockops`]), and the sk_msg program
//!    on that map ([`propagate_msg`]) inserts `traceparent: ...\r\n` after
//!    the request line of the thread's next request, and the server span's
//!    incoming `tracestate` after it (HTTP/2: `propagate_h2`).
//!
//! Each start probe writes the ids it made in a `SpanIds` record right after
//! its start record: the agent exports exactly those. What cannot be sent
//! safely leaves the request untouched and is counted by reason in
//! `PROPAGATE_STATS`.

use agent_common::{
    event::EventHeader,
    http::TRACESTATE_CAP,
    propagate::{
        INHERIT_TTL_NS, MAX_DEPTH, PropagateConfig, SCAN_BYTES, STAT_COUNT, STAT_INJECTED,
        STAT_MAP_FULL, STAT_NOT_SEEN, STAT_PRESENT, STAT_PUSH_FAILED, STAT_TLS, STAT_TOO_LONG,
        STAT_TRACESTATE, STAT_TRACESTATE_SKIPPED, STAT_UNKNOWN_LAYOUT, SpanContext, SpanIds,
        TRACESTATE_MAX, TraceState,
    },
    target::MAX_TARGETS,
};
use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB, sk_action,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{
            bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_msg_pull_data, bpf_probe_read_kernel,
        },
    },
    macros::{map, sk_msg, sock_ops, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{ProbeContext, SkMsgContext, SockOpsContext},
};

use crate::{
    go::{Reg, reg},
    record::{InPlace, fields, reserve, submit, target_slot},
};

// SAFETY: an agent-common record: `#[repr(C)]` integers and byte arrays
// without implicit padding (size asserted where it is defined).
unsafe impl InPlace for SpanIds {}

/// Per-target switch, by target slot: the probes make ids only when set.
#[map]
pub static PROPAGATE_CONFIG: Array<PropagateConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// The traced processes (tgid -> target slot): the sockops program takes
/// only their connections.
#[map]
pub static PROPAGATE_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// A goroutine of a traced process, in the root PID namespace.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
}

/// The context of each goroutine with a server span open (or inherited).
/// LRU: an inherited context whose goroutine ended ages out.
#[map]
pub static GO_CONTEXT: LruHashMap<GoKey, SpanContext> = LruHashMap::with_max_entries(16384, 0);

/// The context to send with each request (tgid, `*http.Request`), from its
/// client start to its write (a retry writes it again).
#[map]
pub static REQUEST_CONTEXT: LruHashMap<GoKey, SpanContext> = LruHashMap::with_max_entries(8192, 0);

/// The context the thread writing a request is to send, from the start of
/// `(*Request).write` to its first bytes on the socket.
#[map]
pub static THREAD_CONTEXT: LruHashMap<u64, SpanContext> = LruHashMap::with_max_entries(8192, 0);

/// Connections of traced processes being set up (socket cookie), from
/// `connect` (which runs on the process's thread) to their establishment
/// (which may not).
#[map]
pub static PROPAGATE_CONNECTING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(8192, 0);

/// The traced processes' outgoing TCP connections, by socket cookie: the
/// sk_msg program runs on every message they send.
#[map]
pub static PROPAGATE_SOCKETS: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// The incoming `tracestate` of each server span (HTTP or gRPC) that has
/// one, by the span's id (`SpanContext::state_key`), from its start to its
/// end: every request made under the span sends it on (HTTP/1.1 here,
/// HTTP/2 in `propagate_h2`).
#[map]
pub static TRACESTATE: LruHashMap<u64, TraceState> = LruHashMap::with_max_entries(4096, 0);

/// Where a `tracestate` is put together before it goes into `TRACESTATE`.
#[map]
pub static TRACESTATE_SCRATCH: PerCpuArray<TraceState> = PerCpuArray::with_max_entries(1, 0);

/// Counters by `agent_common::propagate::STAT_*`.
#[map]
pub static PROPAGATE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Length of the inserted header line: `traceparent: ` (13), the value
/// (55), CRLF.
const LINE_LEN: usize = 70;
const SCAN_MASK: usize = SCAN_BYTES - 1;
/// Bytes the header scan takes at a time.
const SCAN_CHUNK: u32 = 64;
/// `tracestate: ` and CRLF around the value.
const STATE_LINE_CAP: usize = 512;
const STATE_LINE_MASK: usize = STATE_LINE_CAP - 1;
const STATE_PREFIX: &[u8; 12] = b"tracestate: ";
const _: () = assert!(STATE_PREFIX.len() + TRACESTATE_MAX + 2 <= STATE_LINE_CAP);
const _: () = assert!(SCAN_BYTES.is_power_of_two());

/// The sk_msg program's working memory, per CPU.
#[repr(C)]
pub struct MsgScratch {
    pub bytes: [u8; SCAN_BYTES],
    pub line: [u8; LINE_LEN],
    pub _pad: [u8; 2],
    /// The `tracestate` line, padded with spaces to one of a few lengths.
    pub state_line: [u8; STATE_LINE_CAP],
    /// Results of the scans, stored and read back so that the verifier does
    /// not follow every exit of a loop apart.
    pub verdict: u32,
    pub line_end: u32,
    /// The bytes scanned.
    pub n: u32,
    pub _pad2: u32,
}

#[map]
pub static PROPAGATE_SCRATCH: PerCpuArray<MsgScratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn stat(index: u32) {
    if let Some(counter) = PROPAGATE_STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's value, from the lookup; per-CPU values are never
        // touched concurrently.
        unsafe { *counter += 1 };
    }
}

/// Whether propagation is on for the target of the probe with `cookie`.
#[inline(always)]
pub fn enabled(cookie: u64) -> bool {
    config(cookie).is_some()
}

/// The target's configuration, when propagation is on for it.
#[inline(always)]
pub(crate) fn config(cookie: u64) -> Option<&'static PropagateConfig> {
    PROPAGATE_CONFIG
        .get(target_slot(cookie))
        .filter(|c| c.active != 0)
}

/// The W3C `sampled` flag the agent's sampler gives `trace` (the same rule
/// as `Sampler::should_sample` without a remote parent), so the flags sent
/// on say what the agent exports.
#[inline(always)]
pub(crate) fn sampled(config: &PropagateConfig, trace: &[u8; 16]) -> u8 {
    let low = u64::from_be_bytes([
        trace[8], trace[9], trace[10], trace[11], trace[12], trace[13], trace[14], trace[15],
    ]);
    u8::from((low >> 1) < config.sample_bound)
}

#[inline(always)]
pub(crate) fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn random_bytes<const N: usize>(out: &mut [u8; N]) {
    let mut i = 0;
    while i + 4 <= N {
        // SAFETY: no preconditions.
        let r = unsafe { bpf_get_prandom_u32() }.to_le_bytes();
        out[i] = r[0];
        out[i + 1] = r[1];
        out[i + 2] = r[2];
        out[i + 3] = r[3];
        i += 4;
    }
}

/// Random non-zero ids (W3C: all zeros is invalid).
#[inline(always)]
pub(crate) fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    random_bytes(&mut id);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

#[inline(always)]
pub(crate) fn write_ids(
    header: &EventHeader,
    kind: u32,
    key: u64,
    ctx: &SpanContext,
    parent: [u8; 8],
) {
    let Some(mut entry) = reserve::<SpanIds>(kind) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = *header;
    rec.header.kind = kind;
    rec.key = key;
    rec.trace_id = ctx.trace_id;
    rec.span_id = ctx.span_id;
    rec.parent_id = parent;
    rec.flags = ctx.flags;
    rec._pad = [0; 7];
    let now = rec.header.ktime_ns;
    submit(entry, now);
}

/// A new trace's context: random ids, flags by the sampler.
#[inline(always)]
pub(crate) fn new_context(config: &PropagateConfig, now_ns: u64) -> SpanContext {
    let mut ctx = SpanContext {
        trace_id: [0; 16],
        span_id: new_span_id(),
        flags: 1,
        depth: 0,
        adopted: 0,
        _pad: [0; 5],
        since_ns: now_ns,
        state_key: 0,
    };
    random_bytes(&mut ctx.trace_id);
    if ctx.trace_id == [0; 16] {
        ctx.trace_id[15] = 1;
    }
    ctx.flags = sampled(config, &ctx.trace_id);
    ctx
}

/// A server span started on `header.goid` (its start record already
/// written, with `header`): makes its ids, keeps them as the goroutine's
/// context and writes them for the agent (`key`: the response).
#[inline(always)]
pub fn server_start(cookie: u64, header: &EventHeader, key: u64, kind: u32) {
    let Some(config) = config(cookie) else {
        return;
    };
    let ctx = new_context(config, header.ktime_ns);
    let go = GoKey {
        tgid: tgid(),
        _pad: 0,
        goid: header.goid,
    };
    if GO_CONTEXT.insert(&go, &ctx, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
    }
    write_ids(header, kind, key, &ctx, [0; 8]);
}

#[inline(always)]
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[inline(always)]
pub(crate) fn hex_byte(v: &[u8; 56], at: usize) -> Option<u8> {
    Some(hex_digit(v[at])? << 4 | hex_digit(v[at + 1])?)
}

/// The trace id and flags of a valid `traceparent` value (`len`: its full
/// length; `v`: its first bytes), by the rules the agent's parser follows
/// (`spans::traceparent::parse`).
#[inline(always)]
pub(crate) fn parse_traceparent(v: &[u8; 56], len: u32) -> Option<([u8; 16], u8)> {
    if len < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(v, 0)?;
    if version == 0xff || (version == 0 && len != 55) || (version != 0 && len > 55 && v[55] != b'-')
    {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        trace[i] = hex_byte(v, 3 + 2 * i)?;
        i += 1;
    }
    let mut nonzero = 0u8;
    let mut i = 0;
    while i < 8 {
        nonzero |= hex_byte(v, 36 + 2 * i)?;
        i += 1;
    }
    let flags = hex_byte(v, 53)?;
    if trace == [0; 16] || nonzero == 0 {
        return None;
    }
    Some((trace, flags))
}

/// A server span's request carries `traceparent` `value` (`len` bytes in
/// all): when valid, the goroutine's context joins the caller's trace.
/// Returns whether it did (the agent takes the caller as parent only then).
#[inline(always)]
pub fn adopt_traceparent(cookie: u64, goid: u64, value: &[u8; 56], len: u32) -> bool {
    let Some(config) = config(cookie) else {
        return false;
    };
    let go = GoKey {
        tgid: tgid(),
        _pad: 0,
        goid,
    };
    let Some(ctx) = GO_CONTEXT.get_ptr_mut(&go) else {
        return false;
    };
    let Some((trace, flags)) = parse_traceparent(value, len) else {
        return false;
    };
    let flags = if config.parent_based != 0 {
        flags
    } else {
        (flags & !1) | sampled(config, &trace)
    };
    // SAFETY: the map's value, from the lookup; only this goroutine's probes
    // write it, and they run one at a time.
    unsafe {
        (*ctx).trace_id = trace;
        (*ctx).flags = flags;
        (*ctx).adopted = 1;
    }
    true
}

/// An incoming `tracestate` `value` (`len` bytes in all) in this CPU's
/// scratch, to be copied into a map before the program ends; `None` for a
/// value longer than [`TRACESTATE_MAX`] (counted) or an empty one.
#[inline(always)]
pub(crate) fn staged_tracestate(
    value: &[u8; TRACESTATE_CAP],
    len: u32,
) -> Option<&'static mut TraceState> {
    if len == 0 || len as usize > TRACESTATE_MAX {
        stat(STAT_TRACESTATE_SKIPPED);
        return None;
    }
    let state = TRACESTATE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's value; filled and copied into the map before the
    // calling program ends (uprobe programs run with migration off).
    let state = unsafe { &mut *state };
    state.len = len;
    state._pad = 0;
    let mut i = 0;
    while i < TRACESTATE_MAX {
        state.value[i] = value[i];
        i += 1;
    }
    Some(state)
}

/// A server span's request carries `tracestate` `value` (`len` bytes in
/// all) after a `traceparent` the kernel adopted: kept to send on with the
/// requests made under the span. A value longer than [`TRACESTATE_MAX`] is
/// not (counted).
#[inline(always)]
pub fn keep_tracestate(cookie: u64, goid: u64, value: &[u8; TRACESTATE_CAP], len: u32) {
    if !enabled(cookie) {
        return;
    }
    let go = GoKey {
        tgid: tgid(),
        _pad: 0,
        goid,
    };
    let Some(ctx) = GO_CONTEXT.get_ptr_mut(&go) else {
        return;
    };
    // SAFETY: the map's value, from the lookup; only this goroutine's probes
    // write it, and they run one at a time.
    let ctx = unsafe { &mut *ctx };
    if ctx.adopted == 0 || ctx.depth != 0 {
        return;
    }
    let Some(state) = staged_tracestate(value, len) else {
        return;
    };
    let key = u64::from_le_bytes(ctx.span_id);
    if TRACESTATE.insert(&key, state, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
        return;
    }
    ctx.state_key = key;
}

/// The server span open on `goid` ended.
#[inline(always)]
pub fn server_end(cookie: u64, goid: u64) {
    if !enabled(cookie) {
        return;
    }
    let go = GoKey {
        tgid: tgid(),
        _pad: 0,
        goid,
    };
    // SAFETY: copied out at once.
    if let Some(ctx) = (unsafe { GO_CONTEXT.get(&go) }).copied()
        && ctx.state_key != 0
        && ctx.depth == 0
    {
        let _ = TRACESTATE.remove(&ctx.state_key);
    }
    let _ = GO_CONTEXT.remove(&go);
}

/// Goroutine `child` was created by `creator`: it inherits the creator's
/// context (as the agent's goroutine table hands it the creator's span).
#[inline(always)]
pub fn inherit(cookie: u64, creator: u64, child: u64) {
    if !enabled(cookie) {
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let tgid = tgid();
    let from = GoKey {
        tgid,
        _pad: 0,
        goid: creator,
    };
    // SAFETY: copied out at once.
    let Some(mut ctx) = (unsafe { GO_CONTEXT.get(&from) }).copied() else {
        return;
    };
    if !fresh(&ctx, now) || ctx.depth >= MAX_DEPTH {
        return;
    }
    ctx.depth += 1;
    ctx.since_ns = now;
    let to = GoKey {
        tgid,
        _pad: 0,
        goid: child,
    };
    if GO_CONTEXT.insert(&to, &ctx, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
    }
}

#[inline(always)]
pub(crate) fn fresh(ctx: &SpanContext, now: u64) -> bool {
    ctx.depth == 0 || now.saturating_sub(ctx.since_ns) <= INHERIT_TTL_NS
}

/// A client call started (its start record written, with `header`) on a
/// goroutine: with a context there, makes the client span's id, keeps the
/// context to send with `request`, and writes the ids for the agent. A
/// request over TLS is counted and left alone.
#[inline(always)]
pub fn client_start(cookie: u64, header: &EventHeader, request: u64, kind: u32, tls: bool) {
    if !enabled(cookie) {
        return;
    }
    let tgid = tgid();
    let go = GoKey {
        tgid,
        _pad: 0,
        goid: header.goid,
    };
    let req = GoKey {
        tgid,
        _pad: 0,
        goid: request,
    };
    // SAFETY: copied out at once.
    let parent = match (unsafe { GO_CONTEXT.get(&go) }).copied() {
        Some(ctx) if fresh(&ctx, header.ktime_ns) => ctx,
        _ => {
            // Not under a span: nothing to send (an older entry for a
            // request at this address is not this request's).
            let _ = REQUEST_CONTEXT.remove(&req);
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
    write_ids(header, kind, request, &out, parent.span_id);
    if tls {
        stat(STAT_TLS);
        let _ = REQUEST_CONTEXT.remove(&req);
        return;
    }
    if REQUEST_CONTEXT.insert(&req, &out, BPF_ANY as u64).is_err() {
        stat(STAT_MAP_FULL);
    }
}

/// Entry site of `net/http.(*Request).write` (on the connection's writer
/// goroutine): RAX = the request. Its context, if any, goes to this
/// thread for the sk_msg program.
#[uprobe]
pub fn propagate_request_write(ctx: ProbeContext) -> u32 {
    let request = reg(&ctx, Reg::Rax);
    let pid_tgid = bpf_get_current_pid_tgid();
    let req = GoKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        goid: request,
    };
    // A context still here was never seen on a socket.
    if THREAD_CONTEXT.remove(&pid_tgid).is_ok() {
        stat(STAT_NOT_SEEN);
    }
    // SAFETY: copied out at once.
    if let Some(out) = (unsafe { REQUEST_CONTEXT.get(&req) }).copied()
        && THREAD_CONTEXT
            .insert(&pid_tgid, &out, BPF_ANY as u64)
            .is_err()
    {
        stat(STAT_MAP_FULL);
    }
    0
}

/// On the cgroup2 root: a traced process's outgoing TCP connection goes
/// into `PROPAGATE_SOCKETS` once established. `connect` runs on the
/// process's thread (so the process is known there); establishment may run
/// on another task's (a softirq), so the socket's cookie links the two.
#[sock_ops]
pub fn propagate_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // SAFETY: no preconditions.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // SAFETY: a lookup whose value is not used.
        if unsafe { PROPAGATE_PIDS.get(&tgid) }.is_some() {
            // SAFETY: the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            if PROPAGATE_CONNECTING
                .insert(&cookie, &tgid, BPF_ANY as u64)
                .is_err()
            {
                stat(STAT_MAP_FULL);
            }
        }
    } else if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        // SAFETY: the program's own context.
        let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        // SAFETY: a lookup whose value is not used.
        if unsafe { PROPAGATE_CONNECTING.get(&cookie) }.is_some() {
            let _ = PROPAGATE_CONNECTING.remove(&cookie);
            // SAFETY: `ctx.ops` is the program's context.
            let ops = unsafe { &mut *ctx.ops };
            if PROPAGATE_SOCKETS
                .update(&mut cookie, ops, BPF_ANY as u64)
                .is_err()
            {
                stat(STAT_MAP_FULL);
            }
        }
    }
    1
}

/// Verdicts of the header scan.
const SCAN_TOO_LONG: u32 = 0;
const SCAN_END: u32 = 1;
const SCAN_PRESENT: u32 = 2;

/// On every message a traced process sends on an outgoing connection: when
/// the sending thread has a request's context to send and the message
/// starts that request, inserts the `traceparent` line after the request
/// line. Always passes the message.
#[sk_msg]
pub fn propagate_msg(ctx: SkMsgContext) -> u32 {
    msg(&ctx);
    sk_action::SK_PASS
}

#[inline(always)]
fn msg(ctx: &SkMsgContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(out) = (unsafe { THREAD_CONTEXT.get(&pid_tgid) }).copied() else {
        // No HTTP/1 request starts here: HTTP/2 frames may.
        crate::propagate_h2::msg(ctx, pid_tgid);
        return;
    };
    let _ = THREAD_CONTEXT.remove(&pid_tgid);
    let Some(scratch) = PROPAGATE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value; the program runs to its end on this CPU
    // (sk_msg programs run with migration off).
    let s = unsafe { &mut *scratch };
    let size = ctx.size();
    let want = if size as usize > SCAN_BYTES {
        SCAN_BYTES as u32
    } else {
        size
    };
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, want, 0) } != 0 {
        stat(STAT_PUSH_FAILED);
        return;
    }
    let avail = ctx.data_end().saturating_sub(ctx.data());
    let n = if avail > want as usize {
        want as usize
    } else {
        avail
    };
    if !(16..=SCAN_BYTES).contains(&n) {
        stat(STAT_UNKNOWN_LAYOUT);
        return;
    }
    // SAFETY: reads `n` (at most the buffer's size) bytes of the message's
    // linear data into this CPU's buffer.
    if unsafe {
        bpf_probe_read_kernel(
            s.bytes.as_mut_ptr().cast(),
            n as u32,
            ctx.data() as *const core::ffi::c_void,
        )
    } != 0
    {
        stat(STAT_UNKNOWN_LAYOUT);
        return;
    }
    let n = n as u32;
    if !starts_request(&s.bytes) {
        stat(STAT_UNKNOWN_LAYOUT);
        return;
    }
    s.n = n;
    scan(s);
    // The scan's results and `n` are read back from memory: the loop
    // refines what the verifier knows of `n` and of its own results at
    // each exit, and these exits must look alike to be verified once.
    // SAFETY: plain loads of values stored above.
    let (verdict, line_end, n) = unsafe {
        (
            core::ptr::read_volatile(&s.verdict),
            core::ptr::read_volatile(&s.line_end),
            core::ptr::read_volatile(&s.n),
        )
    };
    match verdict {
        SCAN_END => {}
        SCAN_PRESENT => {
            stat(STAT_PRESENT);
            return;
        }
        _ => {
            stat(STAT_TOO_LONG);
            return;
        }
    }
    if line_end == 0 || line_end > n {
        stat(STAT_UNKNOWN_LAYOUT);
        return;
    }
    fill_line(&mut s.line, &out);
    if ctx.push_data(line_end, LINE_LEN as u32, 0).is_err() {
        stat(STAT_PUSH_FAILED);
        return;
    }
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(ctx.msg, line_end, line_end + LINE_LEN as u32, 0) } != 0 {
        stat(STAT_PUSH_FAILED);
        return;
    }
    let data = ctx.data();
    if data + LINE_LEN > ctx.data_end() {
        stat(STAT_PUSH_FAILED);
        return;
    }
    let dst = data as *mut u8;
    let mut i = 0;
    while i < LINE_LEN {
        // SAFETY: `data + LINE_LEN <= data_end` was checked: the message's
        // bytes the program may write.
        unsafe { *dst.add(i) = s.line[i] };
        i += 1;
    }
    stat(STAT_INJECTED);
    if out.state_key != 0 {
        send_tracestate(ctx, s, line_end + LINE_LEN as u32, out.state_key);
    }
}

/// Inserts `tracestate: {value}` at `at` (after the `traceparent` line),
/// the caller's value kept under `key`. The line is padded with spaces to
/// 64, 128 or 270 bytes (optional whitespace, which HTTP strips from a
/// field's value): a write of a fixed length is one the verifier can check.
#[inline(always)]
fn send_tracestate(ctx: &SkMsgContext, s: &mut MsgScratch, at: u32, key: u64) {
    // SAFETY: a lookup whose value is read at once.
    let Some(state) = (unsafe { TRACESTATE.get(&key) }) else {
        stat(STAT_TRACESTATE_SKIPPED);
        return;
    };
    let len = state.len as u64;
    if len == 0 || len > TRACESTATE_MAX as u64 {
        stat(STAT_TRACESTATE_SKIPPED);
        return;
    }
    let mut i = 0;
    while i < STATE_PREFIX.len() {
        s.state_line[i] = STATE_PREFIX[i];
        i += 1;
    }
    // The value, then spaces (without a branch per byte).
    let mut i = 0;
    while i < TRACESTATE_MAX {
        let keep = (opaque_sub(i as u64, len) >> 63) & 1;
        let byte = state.value[i] as u64 * keep + b' ' as u64 * (1 - keep);
        s.state_line[(STATE_PREFIX.len() + i) & STATE_LINE_MASK] = byte as u8;
        i += 1;
    }
    let need = STATE_PREFIX.len() as u64 + len + 2;
    let sent = if need <= 64 {
        write_line::<64>(ctx, s, at)
    } else if need <= 128 {
        write_line::<128>(ctx, s, at)
    } else {
        write_line::<{ STATE_PREFIX.len() + TRACESTATE_MAX + 2 }>(ctx, s, at)
    };
    stat(if sent {
        STAT_TRACESTATE
    } else {
        STAT_TRACESTATE_SKIPPED
    });
}

/// Inserts the first `N - 2` bytes of `s.state_line` and CRLF at `at`.
#[inline(always)]
fn write_line<const N: usize>(ctx: &SkMsgContext, s: &mut MsgScratch, at: u32) -> bool {
    s.state_line[(N - 2) & STATE_LINE_MASK] = b'\r';
    s.state_line[(N - 1) & STATE_LINE_MASK] = b'\n';
    if ctx.push_data(at, N as u32, 0).is_err() {
        return false;
    }
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
        unsafe { *dst.add(i) = s.state_line[i & STATE_LINE_MASK] };
        i += 1;
    }
    true
}

/// Whether the message starts with a request line: an upper-case token of
/// 3 to 7 letters and a space.
#[inline(always)]
fn starts_request(b: &[u8; SCAN_BYTES]) -> bool {
    let mut i = 0;
    while i < 8 {
        let c = b[i];
        if c == b' ' {
            return i >= 3;
        }
        if !c.is_ascii_uppercase() {
            return false;
        }
        i += 1;
    }
    false
}

/// 1 when `x` is 0, else 0, without a branch (the verifier follows every
/// branch of a loop's body apart; a scan of a few thousand bytes with a
/// branch per byte would be too much for it).
#[inline(always)]
fn is_zero(x: u64) -> u64 {
    // x = 0 wraps to all ones; any x below 2^63 stays below it.
    (opaque_sub(x, 1) >> 63) & ((!x) >> 63)
}

/// `a - b`, computed where the compiler cannot see it: LLVM would turn
/// `(a - b) >> 63` back into a comparison, a branch the verifier follows
/// apart on every byte.
#[inline(always)]
fn opaque_sub(a: u64, b: u64) -> u64 {
    let mut d = a;
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!(
            "{d} -= {b}",
            d = inout(reg) d,
            b = in(reg) b,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    d
}

/// `\ntraceparent:` in lower case, as the scan's two windows hold it: the
/// first five bytes (in `hi`), the last eight (in `lo`).
const KEY_HI: u64 = u64::from_be_bytes([0, 0, 0, b'\n', b't', b'r', b'a', b'c']);
const KEY_LO: u64 = u64::from_be_bytes(*b"eparent:");
const KEY_HI_MASK: u64 = 0xff_ffff_ffff;
/// `\r\n\r\n`: the end of the header block.
const BLANK_LINE: u64 = 0x0d0a_0d0a;

/// One pass over the first `s.n` bytes (in chunks, without a branch per
/// byte): where the request line ends (after its first `\n`), whether the
/// header block ends (`\r\n\r\n`), and whether a `traceparent` header
/// (any case) comes before that end. Stores the results in `s`.
#[inline(always)]
fn scan(s: &mut MsgScratch) {
    // Read back from memory: every path to here (they differ in what the
    // verifier knows of `n`) then enters the loop alike, and the loop is
    // verified once.
    // SAFETY: a plain load of a value the caller stored.
    let n = unsafe { core::ptr::read_volatile(&s.n) };
    let mut hi: u64 = 0;
    let mut lo: u64 = 0;
    let mut ended: u64 = 0;
    let mut present: u64 = 0;
    let mut line_end: u64 = 0;
    let mut base: u32 = 0;
    // Chunks of SCAN_CHUNK bytes, up to the one holding byte `n - 1`: the
    // loop leaves at one of SCAN_BYTES / SCAN_CHUNK places, each of which
    // the verifier follows apart.
    while base < SCAN_BYTES as u32 {
        if base >= n {
            break;
        }
        let mut k: u32 = 0;
        while k < SCAN_CHUNK {
            let i = base + k;
            k += 1;
            // Bytes past `n` read as 0 (which no pattern holds), without a
            // branch: within a chunk, the verifier walks one path.
            let valid = (opaque_sub(i as u64, n as u64) >> 63) & 1;
            let b = (s.bytes[(i as usize) & SCAN_MASK] as u64) * valid;
            // Letters to lower case: b | 0x20 when b is in A..=Z.
            let upper = (opaque_sub(opaque_sub(b, b'A' as u64) & 0xff, 26) >> 63) & 1;
            let lower = b | (upper << 5);
            hi = ((hi << 8) | (lo >> 56)) & KEY_HI_MASK;
            lo = (lo << 8) | lower;
            let first_newline = is_zero(b ^ b'\n' as u64) & is_zero(line_end);
            line_end += first_newline * (i as u64 + 1);
            let key = is_zero(hi ^ KEY_HI) & is_zero(lo ^ KEY_LO);
            present |= key & (ended ^ 1);
            ended |= is_zero((lo & 0xffff_ffff) ^ BLANK_LINE);
        }
        base += SCAN_CHUNK;
    }
    s.verdict = if present != 0 {
        SCAN_PRESENT
    } else if ended != 0 {
        SCAN_END
    } else {
        SCAN_TOO_LONG
    };
    s.line_end = line_end as u32;
}

pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

/// `traceparent: 00-{trace}-{span}-{flags}\r\n`.
#[inline(always)]
fn fill_line(line: &mut [u8; LINE_LEN], out: &SpanContext) {
    let head = b"traceparent: 00-";
    let mut i = 0;
    while i < head.len() {
        line[i] = head[i];
        i += 1;
    }
    let mut at = head.len();
    let mut k = 0;
    while k < 16 {
        line[at] = HEX[(out.trace_id[k] >> 4) as usize];
        line[at + 1] = HEX[(out.trace_id[k] & 15) as usize];
        at += 2;
        k += 1;
    }
    line[at] = b'-';
    at += 1;
    let mut k = 0;
    while k < 8 {
        line[at] = HEX[(out.span_id[k] >> 4) as usize];
        line[at + 1] = HEX[(out.span_id[k] & 15) as usize];
        at += 2;
        k += 1;
    }
    line[at] = b'-';
    line[at + 1] = HEX[(out.flags >> 4) as usize];
    line[at + 2] = HEX[(out.flags & 15) as usize];
    line[at + 3] = b'\r';
    line[at + 4] = b'\n';
}
