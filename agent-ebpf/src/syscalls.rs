//! System calls of the traced processes, on the `sys_enter` and `sys_exit`
//! raw tracepoints (no tracefs needed), filtered in the kernel by process
//! (`SYSCALL_TRACED`) and by system call (`SYSCALL_CONFIG`'s bitmap).
//!
//! `sys_enter` notes the call's number, first argument and time for the
//! thread; `sys_exit` turns that note into one [`SyscallRecord`]. `exit`
//! and `exit_group` never return: they are written at entry.
//!
//! Forks (`--follow-forks`): `sched_process_fork` runs in the parent,
//! before the child can run; when the parent is traced it notes the child's
//! task. The child's first event is its return from the fork (a
//! `sys_exit` with no entry): when its task was noted and it is a new
//! process (not a thread), it becomes traced and a [`ProcessForked`] record
//! says so, before any system call of its own. `sched_process_exit` ends a
//! traced process when its main thread exits.

use agent_common::{
    event::EventHeader,
    syscalls::{
        FLAG_NO_RETURN, InFlight, KIND_PROCESS_EXITED, KIND_PROCESS_FORKED, KIND_SYSCALL,
        KIND_SYSCALL_SOURCE, MAX_IN_FLIGHT, MAX_PROCESSES, MAX_SYSCALLS, OUT_RECORDS, OUT_TOTALS,
        ProcessExited, ProcessForked, SOURCE_FRAMES, SOURCE_STACK_WORDS, SyscallConfig,
        SyscallRecord, SyscallSourceRecord, SyscallTotals,
    },
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, generated,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};

use crate::record::{InPlace, fields, reserve, submit};

/// x86_64 `exit`.
const NR_EXIT: u64 = 60;
/// x86_64 `exit_group`.
const NR_EXIT_GROUP: u64 = 231;

/// What is traced: the system-call bitmap, whether forks are followed.
#[map]
pub static SYSCALL_CONFIG: Array<SyscallConfig> = Array::with_max_entries(1, 0);

/// The traced processes, by thread-group id (the value is unused: 1).
#[map]
pub static SYSCALL_TRACED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// The traced system call each thread is in, by thread id. LRU: a thread
/// that never returns (killed inside a call) ages out.
#[map]
pub static SYSCALL_IN_FLIGHT: LruHashMap<u32, InFlight> =
    LruHashMap::with_max_entries(MAX_IN_FLIGHT, 0);

/// Tasks a traced process just forked, by task address, to their parent's
/// thread-group id; removed on the child's first return.
#[map]
pub static SYSCALL_FORKING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(1024, 0);

/// Returned calls by number, per CPU, for `-c`.
#[map]
pub static SYSCALL_TOTALS: PerCpuArray<SyscallTotals> =
    PerCpuArray::with_max_entries(MAX_SYSCALLS, 0);

// SAFETY: agent-common record types, `#[repr(C)]` integers only, without
// implicit padding (sizes asserted where they are defined).
unsafe impl InPlace for SyscallRecord {}
// SAFETY: as above.
unsafe impl InPlace for SyscallSourceRecord {}
// SAFETY: as above.
unsafe impl InPlace for ProcessForked {}
// SAFETY: as above.
unsafe impl InPlace for ProcessExited {}

#[inline(always)]
fn config() -> Option<&'static SyscallConfig> {
    SYSCALL_CONFIG.get(0).filter(|c| c.active != 0)
}

#[inline(always)]
fn traced(tgid: u32) -> bool {
    // SAFETY: only whether the key exists is read.
    unsafe { SYSCALL_TRACED.get(&tgid) }.is_some()
}

#[inline(always)]
fn header(kind: u32, tid: u32, now: u64) -> EventHeader {
    EventHeader {
        kind,
        target: 0,
        tid,
        site: 0,
        goid: 0,
        ktime_ns: now,
    }
}

/// Every system call's entry.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_enter(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !traced(tgid) {
        return 0;
    }
    let Some(config) = config() else {
        return 0;
    };
    let nr: u64 = ctx.arg(1);
    // `exit` and `exit_group` are always written: their status is the
    // process's exit code, whatever the filter.
    let exits = nr == NR_EXIT || nr == NR_EXIT_GROUP;
    if !exits && !config.wants(nr) {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: `regs` is the kernel's saved user registers of this thread;
    // the helper copies them and fails cleanly on a bad address.
    let arg0 = unsafe { bpf_probe_read_kernel(&raw const (*regs).rdi) }.unwrap_or(0);
    let goid = if config.g_goid == 0 {
        0
    } else {
        // SAFETY: as above; R14 holds the goroutine's `*g` in Go's
        // ABIInternal, which `Syscall6` keeps up to its `SYSCALL`. The
        // user read fails cleanly (0) elsewhere.
        let g = unsafe { bpf_probe_read_kernel(&raw const (*regs).r14) }.unwrap_or(0);
        if g == 0 {
            0
        } else {
            // SAFETY: a user-memory copy that fails cleanly.
            unsafe { bpf_probe_read_user((g + config.g_goid) as *const u64) }.unwrap_or(0)
        }
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let tid = pid_tgid as u32;
    if exits {
        write_syscall(
            tid,
            tgid,
            nr as u32,
            FLAG_NO_RETURN,
            now,
            now,
            0,
            arg0,
            goid,
        );
        return 0;
    }
    let state = InFlight {
        enter_ns: now,
        arg0,
        goid,
        nr: nr as u32,
        _pad: 0,
    };
    let _ = SYSCALL_IN_FLIGHT.insert(&tid, &state, 0);
    0
}

/// Every system call's return.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let ret: i64 = ctx.arg(1);
    if traced(tgid) {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(state) = unsafe { SYSCALL_IN_FLIGHT.get(&tid) }.copied() {
            let _ = SYSCALL_IN_FLIGHT.remove(&tid);
            // SAFETY: no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            let (outputs, source) = config().map_or((0, 0), |c| (c.outputs, c.source));
            if outputs & OUT_TOTALS != 0 {
                add_totals(state.nr, ret, now.wrapping_sub(state.enter_ns));
            }
            if outputs & OUT_RECORDS == 0 {
                return 0;
            }
            if source != 0 {
                write_with_source(&ctx, tid, tgid, &state, now, ret);
                return 0;
            }
            write_syscall(
                tid,
                tgid,
                state.nr,
                0,
                state.enter_ns,
                now,
                ret,
                state.arg0,
                state.goid,
            );
            return 0;
        }
    }
    if ret == 0 {
        fork_return(tgid, tid);
    }
    0
}

/// Counts one returned call in this CPU's totals.
#[inline(always)]
fn add_totals(nr: u32, ret: i64, duration_ns: u64) {
    if let Some(totals) = SYSCALL_TOTALS.get_ptr_mut(nr) {
        // SAFETY: this CPU's value of the map; a program preempted here by
        // another on the same CPU could lose one update of a counter.
        let totals = unsafe { &mut *totals };
        totals.calls += 1;
        if (-4095..0).contains(&ret) {
            totals.errors += 1;
        }
        totals.total_ns += duration_ns;
    }
}

/// A return without an entry that returned 0: maybe a child's first return
/// from a fork of a traced process.
#[inline(always)]
fn fork_return(tgid: u32, tid: u32) {
    let Some(config) = config() else {
        return;
    };
    if config.follow_forks == 0 {
        return;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(parent) = (unsafe { SYSCALL_FORKING.get(&task) }).copied() else {
        return;
    };
    let _ = SYSCALL_FORKING.remove(&task);
    if tid != tgid {
        // A thread of a traced process: traced already.
        return;
    }
    if SYSCALL_TRACED.insert(&tgid, &1, 0).is_err() {
        return;
    }
    let Some(mut entry) = reserve::<ProcessForked>(KIND_PROCESS_FORKED) else {
        return;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let rec = fields(&mut entry);
    rec.header = header(KIND_PROCESS_FORKED, tid, now);
    rec.parent_tgid = parent;
    rec.child_tgid = tgid;
    submit(entry, now);
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the record's fields")]
fn write_syscall(
    tid: u32,
    tgid: u32,
    nr: u32,
    flags: u32,
    enter_ns: u64,
    now: u64,
    ret: i64,
    arg0: u64,
    goid: u64,
) {
    let Some(mut entry) = reserve::<SyscallRecord>(KIND_SYSCALL) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(KIND_SYSCALL, tid, now);
    rec.header.goid = goid;
    rec.tgid = tgid;
    rec.nr = nr;
    rec.flags = flags;
    rec._pad = 0;
    rec.enter_ns = enter_ns;
    rec.ret = ret;
    rec.arg0 = arg0;
    submit(entry, now);
}

/// A returned call with the user stack it was made from (`--source`). At
/// `sys_exit` the thread's user registers are still those of its
/// `SYSCALL` instruction, so the user stack is the caller's.
#[inline(always)]
fn write_with_source(
    ctx: &RawTracePointContext,
    tid: u32,
    tgid: u32,
    state: &InFlight,
    now: u64,
    ret: i64,
) {
    let Some(mut entry) = reserve::<SyscallSourceRecord>(KIND_SYSCALL_SOURCE) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.call.header = header(KIND_SYSCALL_SOURCE, tid, now);
    rec.call.header.goid = state.goid;
    rec.call.tgid = tgid;
    rec.call.nr = state.nr;
    rec.call.flags = 0;
    rec.call._pad = 0;
    rec.call.enter_ns = state.enter_ns;
    rec.call.ret = ret;
    rec.call.arg0 = state.arg0;
    // SAFETY: the helper writes at most the given size into the record's
    // own array and fails cleanly (a negative result).
    let walked = unsafe {
        generated::bpf_get_stack(
            ctx.as_ptr(),
            rec.frames.as_mut_ptr().cast(),
            (SOURCE_FRAMES * 8) as u32,
            u64::from(BPF_F_USER_STACK),
        )
    };
    rec.frames_len = if walked > 0 { (walked / 8) as u32 } else { 0 };
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: `regs` is the kernel's saved user registers of this thread;
    // the helper copies and fails cleanly on a bad address.
    let sp = unsafe { bpf_probe_read_kernel(&raw const (*regs).rsp) }.unwrap_or(0);
    rec.sp = sp;
    // SAFETY: a user-memory copy into the record's own array, of its size;
    // it fails cleanly (the stack not mapped that far).
    let copied = unsafe {
        generated::bpf_probe_read_user(
            rec.stack.as_mut_ptr().cast(),
            (SOURCE_STACK_WORDS * 8) as u32,
            sp as *const core::ffi::c_void,
        )
    };
    rec.stack_len = if copied == 0 && sp != 0 {
        SOURCE_STACK_WORDS as u32
    } else {
        0
    };
    submit(entry, now);
}

/// Every fork and thread creation, in the parent, before the child runs.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn syscall_fork(ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !traced(tgid) {
        return 0;
    }
    let Some(config) = config() else {
        return 0;
    };
    if config.follow_forks == 0 {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    let _ = SYSCALL_FORKING.insert(&child, &tgid, 0);
    0
}

/// Every thread's exit: a traced process's main thread ends the process.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn syscall_process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 != tgid || !traced(tgid) {
        return 0;
    }
    let _ = SYSCALL_TRACED.remove(&tgid);
    let Some(mut entry) = reserve::<ProcessExited>(KIND_PROCESS_EXITED) else {
        return 0;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let rec = fields(&mut entry);
    rec.header = header(KIND_PROCESS_EXITED, tgid, now);
    submit(entry, now);
    0
}
