//! Process discovery: one record per exec on the host.
//!
//! Attached (to the raw tracepoint `sched_process_exec`, which needs no
//! tracefs) only by the host-mode agent's discovery instance; a target's
//! session loads it with the rest of the object but never attaches it. The
//! tracepoint fires in the process that exec'd, after its new image is in
//! place, so the current thread group is the new program. The record
//! forces a wakeup: the agent must see it at once to attach before the
//! program gets far, and execs are rare next to the records targets write.

use agent_common::{
    discovery::{
        EXEC_HELD, EXEC_LISTENING, KIND_PROCESS_EXEC, MAX_HOLD_NAMES, MAX_PORTS, ProcessExec,
    },
    event::EventHeader,
};
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_send_signal,
    },
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};

use crate::{
    maps::{EVENTS, count},
    record::{InPlace, count_lost, fields},
};

/// `SIGSTOP` on x86_64.
const SIGSTOP: u32 = 19;

/// Program names (`comm`, zero-padded) the agent wants stopped at exec
/// until it has attached.
#[map]
pub static DISCOVERY_HOLD: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_HOLD_NAMES, 0);

// SAFETY: an agent-common record type, `#[repr(C)]` integers only, no
// padding (its size is asserted where it is defined).
unsafe impl InPlace for ProcessExec {}

/// Every exec on the host. A program whose name is in [`DISCOVERY_HOLD`]
/// is stopped here, before its first user instruction, and the record says
/// so: the agent continues it once attached (or once it knows it will not
/// attach). An exec whose record finds the ring full is not held (nobody
/// would continue it), only counted.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(mut entry) = EVENTS.reserve::<ProcessExec>(0) else {
        count_lost(KIND_PROCESS_EXEC);
        return 0;
    };
    // The new program's name is in place by the time the tracepoint fires.
    let held = match bpf_get_current_comm() {
        // SAFETY: a lookup by value; the map holds plain integers.
        Ok(comm) if unsafe { DISCOVERY_HOLD.get(&comm) }.is_some() => {
            // SAFETY: no preconditions: the signal goes to the current
            // process, a user task in the middle of its exec.
            unsafe { bpf_send_signal(SIGSTOP) == 0 }
        }
        _ => false,
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    fields(&mut entry).header = EventHeader {
        kind: KIND_PROCESS_EXEC,
        target: 0,
        tid: tgid,
        site: if held { EXEC_HELD } else { 0 },
        goid: 0,
        ktime_ns: now,
    };
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    count(agent_common::stats::EVENTS_WRITTEN);
    0
}

/// `TCP_LISTEN` in the kernel's TCP states.
const TCP_LISTEN: i32 = 10;
/// Offset of `skc_num` (the local port, host order) in `struct sock`: the
/// first member is `struct sock_common`, whose address pair (8 bytes) and
/// hash (4) come before the port pair (`skc_dport`, `skc_num`). Checked on
/// this kernel's BTF; a layout older than BPF itself.
const SKC_NUM_OFFSET: usize = 14;

/// TCP ports (`--port`) whose listeners the agent wants to hear of.
#[map]
pub static DISCOVERY_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Every TCP state change on the host (`inet_sock_set_state(sk, oldstate,
/// newstate)`); a socket that starts listening on a port in
/// [`DISCOVERY_PORTS`] is reported with the process that called
/// `listen()`, so that `--port` finds a server when it listens, not on a
/// timer. Connections change state far more often than servers start:
/// everything else returns after two comparisons and one map lookup.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn process_listen(ctx: RawTracePointContext) -> i32 {
    let newstate: i32 = ctx.arg(2);
    if newstate != TCP_LISTEN {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: a kernel read the helper checks; `sk` is the tracepoint's
    // socket, and a failed read is a port of 0, which no entry names.
    let port: u16 = unsafe { bpf_probe_read_kernel(sk.wrapping_add(SKC_NUM_OFFSET).cast::<u16>()) }
        .unwrap_or(0);
    // SAFETY: a lookup by value; the map holds plain integers.
    if unsafe { DISCOVERY_PORTS.get(&port) }.is_none() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(mut entry) = EVENTS.reserve::<ProcessExec>(0) else {
        count_lost(KIND_PROCESS_EXEC);
        return 0;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    fields(&mut entry).header = EventHeader {
        kind: KIND_PROCESS_EXEC,
        target: 0,
        tid: tgid,
        site: EXEC_LISTENING,
        goid: u64::from(port),
        ktime_ns: now,
    };
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    count(agent_common::stats::EVENTS_WRITTEN);
    0
}
