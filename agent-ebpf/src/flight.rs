//! Flight-recorder dumps: `runtime/trace.(*FlightRecorder).WriteTo` (and
//! `golang.org/x/exp/trace`'s) probed at three kinds of sites:
//!
//! - the entry (an emulated instruction after the stack check): RAX = the
//!   recorder, RBX:RCX = the `io.Writer` (itab, data). Starts the dump's
//!   state, keyed by process and goroutine, and writes a `FlightStart`.
//! - every `w.Write(p)` call site in WriteTo (and its closures): RBX, RCX =
//!   `p`'s pointer and length. The bytes are copied into the dedicated
//!   `FLIGHT_RING` in sequence-numbered chunks, whatever the destination is
//!   (file, pipe, socket, HTTP response): they are what the program writes.
//! - every return site: RAX = `n`, RBX:RCX = `err`. Writes a `FlightEnd`
//!   with the counts the agent checks completeness against, and wakes it.
//!
//! Nothing wakes the agent per chunk: only a backlog (`WAKEUP_BACKLOG`) or
//! the end of a dump does.

use agent_common::{
    event::EventHeader,
    flight::{
        CHUNK_LARGE, CHUNK_MEDIUM, CHUNK_READ_FAILED, CHUNK_SMALL, FlightChunk, FlightConfig,
        FlightEnd, FlightKey, FlightStart, FlightState, KIND_FLIGHT_CHUNK, KIND_FLIGHT_END,
        KIND_FLIGHT_START, MAX_CHUNKS_PER_WRITE,
    },
    stats,
    target::{MAX_TARGETS, OFFSET_ABSENT},
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{
            bpf_get_attach_cookie, bpf_probe_read_kernel, bpf_probe_read_user as read_raw,
        },
    },
    macros::{map, uprobe},
    maps::{Array, HashMap, RingBuf},
    programs::ProbeContext,
};

use crate::maps::count;

/// Dump records. 16 MiB holds a default-size (10 MiB) dump even if the
/// agent does not drain while it is written.
#[map]
pub static FLIGHT_RING: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Per-target configuration, by target slot.
#[map]
pub static FLIGHT_CONFIG: Array<FlightConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// Dumps in progress, by process and goroutine.
#[map]
pub static FLIGHT_ACTIVE: HashMap<FlightKey, FlightState> = HashMap::with_max_entries(1024, 0);

/// Zeroes for the unused tail of a chunk record.
#[map]
pub static FLIGHT_ZERO: Array<[u8; CHUNK_LARGE]> = Array::with_max_entries(1, 0);

/// Offset of `_type` in a Go `itab`.
const ITAB_TYPE: u64 = 8;

/// Unread bytes past which a chunk wakes the agent up.
const WAKEUP_BACKLOG: u64 = 1 << 20;

/// Entry site of WriteTo.
#[uprobe]
pub fn flight_start(ctx: ProbeContext) -> u32 {
    try_start(&ctx);
    0
}

/// A `w.Write` call site in WriteTo.
#[uprobe]
pub fn flight_write(ctx: ProbeContext) -> u32 {
    try_write(&ctx);
    0
}

/// A return site of WriteTo.
#[uprobe]
pub fn flight_end(ctx: ProbeContext) -> u32 {
    try_end(&ctx);
    0
}

struct Regs {
    rax: u64,
    rbx: u64,
    rcx: u64,
    r14: u64,
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> Regs {
    // SAFETY: `ctx.regs` points at the probed thread's saved registers,
    // which the kernel hands to the program and the verifier lets it read.
    let r = unsafe { &*ctx.regs };
    Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        r14: r.r14,
    }
}

#[inline(always)]
fn cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: bpf_get_attach_cookie takes the program's context.
    unsafe { bpf_get_attach_cookie(ctx.regs.cast()) }
}

/// The dump key of the current goroutine, with the target slot's config.
#[inline(always)]
fn key(ctx: &ProbeContext, r14: u64) -> Option<(FlightKey, u64)> {
    let slot = (cookie(ctx) >> 32) as u32;
    let config = match FLIGHT_CONFIG.get(slot) {
        Some(c) if c.active != 0 && c.g_goid != OFFSET_ABSENT => c,
        _ => {
            count(stats::NO_CONFIG);
            return None;
        }
    };
    // SAFETY: a bad address makes the helper fail, reported as None.
    let Ok(goid) = (unsafe { bpf_probe_read_user((r14 + config.g_goid) as *const u64) }) else {
        count(stats::READ_FAILED);
        return None;
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    Some((FlightKey { pid, _pad: 0, goid }, goid))
}

#[inline(always)]
fn header(ctx: &ProbeContext, kind: u32, goid: u64) -> EventHeader {
    let cookie = cookie(ctx);
    EventHeader {
        kind,
        target: (cookie >> 32) as u32,
        tid: bpf_get_current_pid_tgid() as u32,
        site: cookie as u32,
        goid,
        // SAFETY: no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    }
}

#[inline(always)]
fn try_start(ctx: &ProbeContext) {
    let r = regs(ctx);
    let Some((key, goid)) = key(ctx, r.r14) else {
        return;
    };
    let head = header(ctx, KIND_FLIGHT_START, goid);
    let state = FlightState {
        dump_id: head.ktime_ns,
        ..FlightState::default()
    };
    // A stale entry (a WriteTo that panicked) is replaced.
    if FLIGHT_ACTIVE.insert(&key, &state, 0).is_err() {
        count(stats::NO_CONFIG);
        return;
    }
    // SAFETY: a bad address makes the helper fail; 0 stands for unknown.
    let writer_type =
        unsafe { bpf_probe_read_user((r.rbx + ITAB_TYPE) as *const u64) }.unwrap_or(0);
    let Some(mut entry) = FLIGHT_RING.reserve::<FlightStart>(0) else {
        count(stats::RINGBUF_FULL);
        return;
    };
    entry.write(FlightStart {
        header: head,
        dump_id: state.dump_id,
        recorder: r.rax,
        writer_itab: r.rbx,
        writer_data: r.rcx,
        writer_type,
    });
    entry.submit(0);
    count(stats::EVENTS_WRITTEN);
}

#[inline(always)]
fn try_write(ctx: &ProbeContext) {
    let r = regs(ctx);
    let Some((key, goid)) = key(ctx, r.r14) else {
        return;
    };
    let Some(state) = FLIGHT_ACTIVE.get_ptr_mut(&key) else {
        // A dump that began before the probes were attached.
        return;
    };
    // SAFETY: the pointer comes from the map lookup; one goroutine runs
    // one WriteTo, so nothing else updates this entry meanwhile.
    let state = unsafe { &mut *state };
    let src = r.rbx;
    let len = r.rcx;
    let write_index = state.writes;
    state.writes += 1;
    // Whole large chunks first (one shape per round keeps the verifier's
    // work linear in the bound), then the rest in the smallest class.
    let mut full = len / CHUNK_LARGE as u64;
    if full > MAX_CHUNKS_PER_WRITE as u64 {
        full = MAX_CHUNKS_PER_WRITE as u64;
    }
    for i in 0..MAX_CHUNKS_PER_WRITE as u64 {
        if i >= full {
            break;
        }
        chunk::<CHUNK_LARGE>(
            ctx,
            state,
            goid,
            write_index,
            src + i * CHUNK_LARGE as u64,
            CHUNK_LARGE as u64,
        );
    }
    let done = full * CHUNK_LARGE as u64;
    let rest = len - done;
    if rest == 0 {
        return;
    }
    if rest > CHUNK_LARGE as u64 {
        // Over the per-write limit: the rest is lost, and said so.
        state.lost_bytes += rest;
        state.offset += rest;
        return;
    }
    let src = src + done;
    if rest <= CHUNK_SMALL as u64 {
        chunk::<CHUNK_SMALL>(ctx, state, goid, write_index, src, rest);
    } else if rest <= CHUNK_MEDIUM as u64 {
        chunk::<CHUNK_MEDIUM>(ctx, state, goid, write_index, src, rest);
    } else {
        chunk::<CHUNK_LARGE>(ctx, state, goid, write_index, src, rest);
    }
}

/// Writes the next chunk: `rest` (<= N) bytes at `src`.
#[inline(always)]
fn chunk<const N: usize>(
    ctx: &ProbeContext,
    state: &mut FlightState,
    goid: u64,
    write_index: u32,
    src: u64,
    rest: u64,
) {
    let n = if rest > N as u64 { N as u64 } else { rest };
    let seq = state.next_seq;
    let offset = state.offset;
    state.next_seq += 1;
    state.offset += n;
    let Some(mut entry) = FLIGHT_RING.reserve::<FlightChunk<N>>(0) else {
        count(stats::RINGBUF_FULL);
        state.lost_chunks += 1;
        state.lost_bytes += n;
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: the entry was reserved for a `FlightChunk<N>`.
    let data = unsafe { core::ptr::addr_of_mut!((*rec).data) }.cast::<u8>();
    let mut flags = 0;
    let len = (n as u32) & (2 * N as u32 - 1);
    if len as usize > N {
        entry.discard(0);
        return;
    }
    if len as usize != N {
        // A partial chunk: zero the whole payload first (a constant size the
        // verifier can check), so no stale byte follows the data.
        zero::<N>(data);
    }
    // SAFETY: `data` has N bytes and len <= N; a bad source address
    // makes the helper fail.
    let read = unsafe { read_raw(data.cast(), len, src as *const _) };
    if read < 0 {
        flags |= CHUNK_READ_FAILED;
        state.failed_chunks += 1;
        count(stats::READ_FAILED);
        zero::<N>(data);
    }
    // SAFETY: as above; the header is plain data.
    unsafe {
        core::ptr::addr_of_mut!((*rec).head).write(agent_common::flight::FlightChunkHeader {
            header: header(ctx, KIND_FLIGHT_CHUNK, goid),
            dump_id: state.dump_id,
            offset,
            seq,
            len,
            write_index,
            flags,
        });
    }
    let wake = if FLIGHT_RING.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BACKLOG {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake as u64);
    count(stats::EVENTS_WRITTEN);
}

/// Zeroes the `N` (<= CHUNK_LARGE) bytes at `dst`, a chunk's payload.
#[inline(always)]
fn zero<const N: usize>(dst: *mut u8) {
    const { assert!(N <= CHUNK_LARGE) };
    let Some(zero) = FLIGHT_ZERO.get_ptr(0) else {
        return;
    };
    // SAFETY: `dst` is the N-byte payload of a reserved record; the source
    // is a CHUNK_LARGE-byte map value.
    unsafe { bpf_probe_read_kernel(dst.cast(), N as u32, zero.cast()) };
}

#[inline(always)]
fn try_end(ctx: &ProbeContext) {
    let r = regs(ctx);
    let Some((key, goid)) = key(ctx, r.r14) else {
        return;
    };
    let Some(state) = FLIGHT_ACTIVE.get_ptr(&key) else {
        return;
    };
    // SAFETY: the pointer comes from the map lookup.
    let state = unsafe { *state };
    let _ = FLIGHT_ACTIVE.remove(&key);
    let Some(mut entry) = FLIGHT_RING.reserve::<FlightEnd>(0) else {
        count(stats::RINGBUF_FULL);
        return;
    };
    entry.write(FlightEnd {
        header: header(ctx, KIND_FLIGHT_END, goid),
        dump_id: state.dump_id,
        returned: r.rax as i64,
        err_itab: r.rbx,
        err_data: r.rcx,
        offered: state.offset,
        lost_bytes: state.lost_bytes,
        chunks: state.next_seq,
        writes: state.writes,
        lost_chunks: state.lost_chunks,
        failed_chunks: state.failed_chunks,
    });
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    count(stats::EVENTS_WRITTEN);
}
