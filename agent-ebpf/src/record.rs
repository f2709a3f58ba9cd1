//! Writing records to the ring buffer without a wakeup per record.

use agent_common::{event::EventHeader, http::MAX_RECORD, stats};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    maps::ring_buf::RingBufEntry,
    programs::ProbeContext,
};

use crate::maps::{EVENTS, LAST_WAKEUP, count};

/// Unread bytes in the ring buffer past which records wake the agent up.
/// Below it the agent drains on its own timer, so most records cost no wakeup.
const WAKEUP_THRESHOLD: u64 = 1024 * 1024;

/// Shortest time between two forced wakeups from one CPU.
const WAKEUP_INTERVAL_NS: u64 = 100_000;

/// Reserves a record of type `T`, counting a full ring buffer. It is not
/// zeroed: its bytes are whatever the ring held there before (zeros at
/// creation, then older records), so the writer sets every field the agent
/// reads, and string areas only up to the length it records. Zeroing cost a
/// helper call and a copy of the whole record per event.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    const { assert!(core::mem::size_of::<T>() <= MAX_RECORD) };
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(stats::RINGBUF_FULL);
    }
    entry
}

/// Fills in the header common to every record.
#[inline(always)]
pub fn header(ctx: &ProbeContext, kind: u32, goid: u64) -> EventHeader {
    // SAFETY: bpf_get_attach_cookie takes the program's context.
    let cookie = unsafe { generated::bpf_get_attach_cookie(ctx.regs.cast()) };
    header_from_cookie(cookie, kind, goid)
}

/// [`header`] for a program that already read its attach cookie.
#[inline(always)]
pub fn header_from_cookie(cookie: u64, kind: u32, goid: u64) -> EventHeader {
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

/// The target slot this probe was attached for.
#[inline(always)]
pub fn target_slot(ctx: &ProbeContext) -> u32 {
    // SAFETY: as in `header`.
    (unsafe { generated::bpf_get_attach_cookie(ctx.regs.cast()) } >> 32) as u32
}

/// Submits a record without waking the agent, unless a backlog has built up:
/// then at most one forced wakeup per CPU every `WAKEUP_INTERVAL_NS`, so a
/// flood costs a few thousand wakeups a second, not one per record, and the
/// agent never sleeps through a filling buffer (below the threshold its 10 ms
/// timer drains).
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>) {
    let mut flags = BPF_RB_NO_WAKEUP;
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_THRESHOLD
        && let Some(last) = LAST_WAKEUP.get_ptr_mut(0)
    {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: the pointer is this CPU's map value, which nothing else
        // touches while this program runs.
        let last = unsafe { &mut *last };
        if now.wrapping_sub(*last) >= WAKEUP_INTERVAL_NS {
            *last = now;
            flags = BPF_RB_FORCE_WAKEUP;
        }
    }
    entry.submit(flags as u64);
    count(stats::EVENTS_WRITTEN);
}
