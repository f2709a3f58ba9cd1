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
    discovery::{KIND_PROCESS_EXEC, ProcessExec},
    event::EventHeader,
};
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::{
    maps::{EVENTS, count},
    record::{InPlace, count_lost, fields},
};

// SAFETY: an agent-common record type, `#[repr(C)]` integers only, no
// padding (its size is asserted where it is defined).
unsafe impl InPlace for ProcessExec {}

/// Every exec on the host.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
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
        site: 0,
        goid: 0,
        ktime_ns: now,
    };
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    count(agent_common::stats::EVENTS_WRITTEN);
    0
}
