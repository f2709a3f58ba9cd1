//! Writing records to the ring buffer without a wakeup per record.

use agent_common::{
    event::EventHeader,
    http::{HttpHeaderValue, HttpServerEnd, HttpServerStart, MAX_RECORD},
    runtime::GoroutineCreated,
    stats,
    usdt::UsdtRecord,
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    maps::{Array, PerCpuArray, ring_buf::RingBufEntry},
    programs::ProbeContext,
};

use crate::maps::{EVENTS, LAST_WAKEUP_CHECK, count};

/// The ring buffer's fill (as a right shift of its size: a quarter) past
/// which records wake the agent up. Below it the agent drains on its own
/// timer, so most records cost no wakeup.
const WAKEUP_FILL_SHIFT: u64 = 2;

/// Shortest time between two looks at the backlog, and so between two forced
/// wakeups, from one CPU.
const WAKEUP_INTERVAL_NS: u64 = 100_000;

/// Reserves a record of type `T` of kind `kind`, counting a full ring buffer
/// (also by kind). It is not
/// zeroed: its bytes are whatever the ring held there before (zeros at
/// creation, then older records), so the writer sets every field the agent
/// reads, and string areas only up to the length it records. Zeroing cost a
/// helper call and a copy of the whole record per event.
#[inline(always)]
pub fn reserve<T: 'static>(kind: u32) -> Option<RingBufEntry<T>> {
    const { assert!(core::mem::size_of::<T>() <= MAX_RECORD) };
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_lost(kind);
    }
    entry
}

/// A record of `kind` the ring buffer had no room for.
#[inline(always)]
pub fn count_lost(kind: u32) {
    count(stats::RINGBUF_FULL);
    count(stats::lost_by_kind(kind));
}

/// A record type the programs fill in place, in the ring buffer.
///
/// # Safety
///
/// Only for agent-common's record types: `#[repr(C)]`, integers and integer
/// arrays only, so that whatever bytes the ring holds are a valid value.
pub unsafe trait InPlace {}

// SAFETY: agent-common record types, `#[repr(C)]` integers and integer
// arrays without implicit padding (sizes asserted where they are defined).
unsafe impl InPlace for HttpServerStart {}
// SAFETY: as above.
unsafe impl InPlace for HttpServerEnd {}
// SAFETY: as above.
unsafe impl InPlace for UsdtRecord {}
// SAFETY: as above.
unsafe impl InPlace for GoroutineCreated {}
// SAFETY: as above.
unsafe impl InPlace for agent_common::sql::SqlStart {}
// SAFETY: as above.
unsafe impl InPlace for agent_common::sql::SqlEnd {}
// SAFETY: as above, for every capacity.
unsafe impl<const CAP: usize> InPlace for HttpHeaderValue<CAP> {}

/// The reserved record, to fill field by field (see [`reserve`] for what it
/// holds until then).
#[inline(always)]
pub fn fields<T: InPlace>(entry: &mut RingBufEntry<T>) -> &mut T {
    // SAFETY: the entry holds size_of::<T>() initialized bytes (ring memory
    // is zeroed at creation, then holds older records), and `T: InPlace`
    // makes any of them a valid `T`.
    unsafe { &mut *entry.as_mut_ptr() }
}

/// The probe's attach cookie: the target slot in the high 32 bits, the
/// site index in the low ones. A program reads it once (a helper call) and
/// passes it on.
#[inline(always)]
pub fn cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: bpf_get_attach_cookie takes the program's context.
    unsafe { generated::bpf_get_attach_cookie(ctx.regs.cast()) }
}

/// The header common to every record, for a probe with attach cookie
/// `cookie`.
#[inline(always)]
pub fn header(cookie: u64, kind: u32, goid: u64) -> EventHeader {
    EventHeader {
        kind,
        target: target_slot(cookie),
        tid: bpf_get_current_pid_tgid() as u32,
        site: cookie as u32,
        goid,
        // SAFETY: no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// The target slot a probe with attach cookie `cookie` was attached for.
#[inline(always)]
pub fn target_slot(cookie: u64) -> u32 {
    (cookie >> 32) as u32
}

/// Submits a record without waking the agent, unless a backlog has built up
/// (see [`wakeup_flags`]). `now` is the record's own `ktime_ns`.
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>, now: u64) {
    entry.submit(wakeup_flags(now));
    count(stats::EVENTS_WRITTEN);
}

/// A record built in per-CPU memory before it is copied into the ring
/// buffer, with the sequence number that tells a run whether another one
/// wrote the same memory meanwhile.
///
/// Building a record in the ring itself costs a cache miss for each of its
/// lines that the program reads back (the helpers that copy from the target
/// write there, and the program then reads what they copied): ring memory
/// is a first touch every time, per-CPU memory stays in the cache. A record
/// another run on this CPU may have mixed up is dropped and counted (see
/// [`RunSeq`]).
#[repr(C)]
pub struct Scratch<T> {
    seq: RunSeq,
    rec: T,
}

/// The sequence number of a program's per-CPU working memory. Programs on
/// uprobes can be preempted (on kernels with full preemption), and another
/// task's run on the same CPU then writes the same memory: each run bumps
/// the number when it starts and checks it before it uses what it wrote
/// there, and drops its result if another run started meanwhile.
#[repr(transparent)]
pub struct RunSeq(u64);

impl RunSeq {
    /// Bumps the number; returns this run's.
    #[inline(always)]
    pub fn begin(&mut self) -> u64 {
        let seq = load(&self.0).wrapping_add(1);
        store(&mut self.0, seq);
        seq
    }

    /// Whether no other run began since the one [`begin`](Self::begin) gave
    /// `seq`.
    #[inline(always)]
    pub fn undisturbed(&self, seq: u64) -> bool {
        load(&self.0) == seq
    }
}

/// A record being built in this CPU's [`Scratch`].
pub struct Building<T: 'static> {
    seq_now: &'static RunSeq,
    seq: u64,
    pub rec: &'static mut T,
}

/// Starts building a record in this CPU's value of `map`.
#[inline(always)]
pub fn begin<T: InPlace>(map: &'static PerCpuArray<Scratch<T>>) -> Option<Building<T>> {
    let scratch = map.get_ptr_mut(0)?;
    // SAFETY: this CPU's value of the map; another run on this CPU is
    // detected by the sequence number (see `Scratch`).
    let Scratch { seq: seq_now, rec } = unsafe { &mut *scratch };
    let seq = seq_now.begin();
    Some(Building { seq_now, seq, rec })
}

impl<T: InPlace> Building<T> {
    /// Copies the record's first `len` bytes into the ring buffer (see
    /// [`output`]), unless another run wrote the memory meanwhile, which is
    /// counted (`INTERLEAVED`). `now` is the record's own `ktime_ns`.
    #[inline(always)]
    pub fn send(self, len: usize, now: u64) {
        if len > core::mem::size_of::<T>() {
            return;
        }
        if !self.seq_now.undisturbed(self.seq) {
            count(stats::INTERLEAVED);
            return;
        }
        // SAFETY: the first `len` (checked above) bytes of a `T: InPlace`,
        // all of them initialized.
        let bytes =
            unsafe { core::slice::from_raw_parts(core::ptr::from_ref(self.rec).cast::<u8>(), len) };
        output(bytes, now);
    }
}

/// Copies `record` (built in the program's own memory) into the ring
/// buffer, waking the agent as [`submit`] does. A full ring is counted.
#[inline(always)]
pub fn output(record: &[u8], now: u64) {
    if EVENTS.output::<[u8]>(record, wakeup_flags(now)).is_ok() {
        count(stats::EVENTS_WRITTEN);
    } else {
        // Every record starts with its header, whose first field is the kind.
        let kind = match record.first_chunk::<4>() {
            Some(bytes) => u32::from_ne_bytes(*bytes),
            None => 0,
        };
        count_lost(kind);
    }
}

/// The flags for a record written at `now`: no wakeup, unless a backlog
/// has built up.
///
/// The backlog is looked at, at most once per CPU every
/// `WAKEUP_INTERVAL_NS`, not on every record: the two ring-buffer queries are
/// helper calls, which most records then do without. When the ring is more
/// than a quarter full then, the record wakes the agent. So a flood costs a
/// few thousand wakeups a second, not one per record, and the agent never
/// sleeps through a filling buffer (below the threshold its 100 ms timer
/// drains). One CPU writes about 60 KiB in an interval at the fastest this
/// machine has seen (a USDT flood, a million records a second).
#[inline(always)]
fn wakeup_flags(now: u64) -> u64 {
    let mut flags = BPF_RB_NO_WAKEUP;
    if let Some(last) = LAST_WAKEUP_CHECK.get_ptr_mut(0) {
        // SAFETY: the pointer is this CPU's map value. A program preempted
        // here could race another on this CPU for it: the worst outcome is
        // one check more or less.
        let last = unsafe { &mut *last };
        if now.wrapping_sub(*last) >= WAKEUP_INTERVAL_NS {
            *last = now;
            if EVENTS.query(BPF_RB_AVAIL_DATA as u64)
                >= EVENTS.query(BPF_RB_RING_SIZE as u64) >> WAKEUP_FILL_SHIFT
            {
                flags = BPF_RB_FORCE_WAKEUP;
            }
        }
    }
    flags as u64
}

/// A volatile load of a word of map memory: the verifier sees an unknown
/// number, and the compiler really reloads it (another run may have changed
/// it).
#[inline(always)]
pub fn load(field: &u64) -> u64 {
    // SAFETY: a plain read through a valid reference.
    unsafe { core::ptr::read_volatile(field) }
}

/// A volatile store of a word of map memory; see [`load`].
#[inline(always)]
pub fn store(field: &mut u64, value: u64) {
    // SAFETY: a plain write through a valid reference.
    unsafe { core::ptr::write_volatile(field, value) }
}

/// A family's per-target configuration, which the agent fills before it
/// attaches: one entry of the family's config array per target slot.
pub trait SlotConfig: 'static {
    /// Whether the agent has filled it.
    fn active(&self) -> bool;
}

/// Every family's config has `active: u32`, non-zero once filled.
macro_rules! slot_configs {
    ($($ty:ty),* $(,)?) => {
        $(
            impl SlotConfig for $ty {
                #[inline(always)]
                fn active(&self) -> bool {
                    self.active != 0
                }
            }
        )*
    };
}

slot_configs!(
    agent_common::http::HttpConfig,
    agent_common::http_route::HttpRouteConfig,
    agent_common::http_client::HttpClientConfig,
    agent_common::sql::SqlConfig,
    agent_common::grpc::GrpcConfig,
    agent_common::runtime::RuntimeConfig,
    agent_common::net::NetConfig,
);

/// The configuration of the target slot a probe with attach cookie `cookie`
/// was attached for, from the family's config array `map`; a slot the agent
/// has not filled is counted (`NO_CONFIG`).
#[inline(always)]
pub fn slot_config<T: SlotConfig>(map: &'static Array<T>, cookie: u64) -> Option<&'static T> {
    match map.get(target_slot(cookie)) {
        Some(config) if config.active() => Some(config),
        _ => {
            count(stats::NO_CONFIG);
            None
        }
    }
}
