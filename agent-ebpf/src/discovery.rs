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
    discovery::{EXEC_HELD, KIND_PROCESS_EXEC, MAX_HOLD_NAMES, ProcessExec},
    event::EventHeader,
};
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
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
