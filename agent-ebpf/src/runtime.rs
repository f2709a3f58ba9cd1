//! Goroutine creation: which goroutine created which, so that the agent can
//! hand a created goroutine the span open on its creator.
//!
//! `runtime.newproc` (the `go` statement) runs on the creating goroutine:
//! its entry notes the creator's goroutine id for this thread. It then
//! switches to the system stack, where `newproc.func1` makes the goroutine
//! (`newproc1`) and queues it with `runqput(pp, newg, next)`: at that call
//! RBX holds the new `*g`. Between the two the thread runs no other
//! goroutine (the system stack is not preempted), so the thread id pairs
//! them. Both sites are instructions the kernel emulates (the entry's, and
//! a `CALL`).

use agent_common::{
    runtime::{GoroutineCreated, KIND_GOROUTINE_CREATED, RuntimeConfig},
    stats,
    target::MAX_TARGETS,
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::{Array, LruHashMap},
    programs::ProbeContext,
};

use crate::{
    go::{goid, read_field},
    maps::count,
    record::{cookie, fields, header, reserve, slot_config, submit},
};

/// Per-target configuration, by target slot.
#[map]
pub static RUNTIME_CONFIG: Array<RuntimeConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// The creating goroutine's id, by thread, from `newproc`'s entry to the
/// `runqput` call. LRU: an entry whose creation never reached `runqput`
/// ages out instead of filling the map.
#[map]
pub static CREATOR: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn config(cookie: u64) -> Option<&'static RuntimeConfig> {
    slot_config(&RUNTIME_CONFIG, cookie)
}

/// Entry site of `runtime.newproc`: remembers the creator.
#[uprobe]
pub fn goroutine_creator(ctx: ProbeContext) -> u32 {
    let cookie = cookie(&ctx);
    let Some(config) = config(cookie) else {
        return 0;
    };
    let Some(creator) = goid(&ctx, config.g_goid) else {
        count(stats::READ_FAILED);
        return 0;
    };
    let thread = bpf_get_current_pid_tgid();
    if CREATOR.insert(&thread, &creator, 0).is_err() {
        count(stats::READ_FAILED);
    }
    0
}

/// A `CALL runtime.runqput` in `runtime.newproc.func1`: the new goroutine
/// is in RBX.
#[uprobe]
pub fn goroutine_created(ctx: ProbeContext) -> u32 {
    let cookie = cookie(&ctx);
    let Some(config) = config(cookie) else {
        return 0;
    };
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(creator) = (unsafe { CREATOR.get(&thread) }).copied() else {
        // A goroutine made without `newproc` (a coroutine), or a creation
        // whose entry the agent attached too late to see.
        return 0;
    };
    let _ = CREATOR.remove(&thread);
    // SAFETY: `ctx.regs` points at the probed thread's saved registers.
    let new_g = unsafe { (*ctx.regs).rbx };
    let Some(child) = read_field::<u64>(new_g, config.g_goid) else {
        count(stats::READ_FAILED);
        return 0;
    };
    crate::propagate::inherit(cookie, creator, child);
    let Some(mut entry) = reserve::<GoroutineCreated>(KIND_GOROUTINE_CREATED) else {
        return 0;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_GOROUTINE_CREATED, creator);
    rec.child_goid = child;
    let now = rec.header.ktime_ns;
    submit(entry, now);
    0
}
