//! The ordering state machine: a port of `internal/trace/order.go`.
//!
//! It emulates the scheduler state (goroutines, procs, threads, GC, tasks and
//! regions) to validate events and to decide whether the next event of a
//! thread may be emitted yet. The structure and the error messages follow
//! Go's reader closely on purpose: Go's reader is the specification.

use super::generation::Tables;
use super::spec::{SPECS, Version, ev, gostatus, procstatus};
use super::{IdMap, NO_GOROUTINE, NO_PROC, NO_TASK, NO_THREAD, goroutine_state, proc_state};

/// The scheduling resources associated with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchedCtx {
    pub g: i64,
    pub p: i64,
    pub m: i64,
}

/// An unprocessed event (Go's `baseEvent`): type, time in ns and up to four
/// arguments (the timestamp delta is not an argument).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BaseEvent {
    pub typ: u8,
    /// For ordered events: false for Sync events that carry no generation
    /// (Go's nil table). Kept here rather than in [`OrderedEvent`] so that
    /// the latter has no tail padding (copies of it are on the hot path).
    pub has_table: bool,
    pub time: i64,
    pub args: [u64; 4],
}

/// An ordered event (Go's `Event` minus the table pointer; the table is
/// always the reader's current generation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OrderedEvent {
    pub base: BaseEvent,
    pub ctx: SchedCtx,
    /// Byte offset in the input of the wire event this came from.
    pub offset: u64,
}

const _: () = assert!(std::mem::size_of::<OrderedEvent>() == 80);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seq {
    gnum: u64,
    seq: u64,
}

impl Seq {
    fn new(gnum: u64, seq: u64) -> Self {
        Seq { gnum, seq }
    }
    fn succeeds(self, b: Seq) -> bool {
        self.gnum == b.gnum && self.seq == b.seq.wrapping_add(1)
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (gen={})", self.seq, self.gnum)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RangeType {
    typ: u8,
    desc: u64,
}

fn make_range_type(typ: u8, desc: u64) -> RangeType {
    let s = SPECS[typ as usize].start_ev;
    RangeType {
        typ: if s != ev::NONE { s } else { typ },
        desc,
    }
}

#[derive(Debug, Default)]
struct RangeState {
    in_flight: Vec<RangeType>,
}

impl RangeState {
    fn begin_range(&mut self, typ: RangeType) -> Result<(), String> {
        if self.in_flight.contains(&typ) {
            return Err(format!(
                "discovered event already in-flight for when starting event {}",
                SPECS[typ.typ as usize].name
            ));
        }
        self.in_flight.push(typ);
        Ok(())
    }

    fn active_range(&mut self, typ: RangeType, initial_gen: bool) -> Result<(), String> {
        if initial_gen {
            if self.in_flight.contains(&typ) {
                return Err(format!(
                    "found named active range already in first gen: {:?}",
                    typ
                ));
            }
            self.in_flight.push(typ);
        } else if !self.in_flight.contains(&typ) {
            return Err(format!(
                "resource is missing active range: {} {:?}",
                SPECS[typ.typ as usize].name, self.in_flight
            ));
        }
        Ok(())
    }

    fn end_range(&mut self, typ: u8) -> Result<u64, String> {
        let st = SPECS[typ as usize].start_ev;
        let Some(idx) = self.in_flight.iter().position(|r| r.typ == st) else {
            return Err(format!(
                "tried to end event {}, but not in-flight",
                SPECS[st as usize].name
            ));
        };
        let desc = self.in_flight[idx].desc;
        self.in_flight.swap_remove(idx);
        Ok(desc)
    }
}

#[derive(Debug)]
struct GState {
    id: i64,
    status: u64,
    seq: Seq,
    /// Active regions: (task, interned name).
    regions: Vec<(u64, u32)>,
    ranges: RangeState,
}

impl GState {
    fn new(id: i64, status: u64, seq: Seq) -> Self {
        GState {
            id,
            status,
            seq,
            regions: Vec::new(),
            ranges: RangeState::default(),
        }
    }

    fn end_region(&mut self, task: u64, name: u32, names: &Names) -> Result<(), String> {
        let Some(last) = self.regions.last() else {
            // Regions that began before tracing started are unknown.
            return Ok(());
        };
        if last.0 != task || last.1 != name {
            return Err(format!(
                "misuse of region in goroutine {}: region end {{{} {}}} when the inner-most active region start event is {{{} {}}}",
                self.id,
                task,
                String::from_utf8_lossy(names.get(name)),
                last.0,
                String::from_utf8_lossy(names.get(last.1))
            ));
        }
        self.regions.pop();
        Ok(())
    }
}

#[derive(Debug)]
struct PState {
    status: u64,
    seq: Seq,
    ranges: RangeState,
}

#[derive(Debug, Clone, Copy)]
struct MState {
    g: i64,
    p: i64,
}

#[derive(Debug)]
struct TaskState {
    /// Interned name.
    name: u32,
    parent: u64,
}

/// Task and region names, interned: Go compares them by value across
/// generations (whose string IDs differ), and interning spares an allocation
/// per task and region. Grows with the number of distinct names.
#[derive(Debug, Default)]
pub(crate) struct Names {
    ids: std::collections::HashMap<Box<[u8]>, u32>,
    list: Vec<Box<[u8]>>,
    /// This generation's string ID -> name.
    by_sid: IdMap<u64, u32>,
    /// Name -> this generation's extra-string ID.
    extra: IdMap<u32, u64>,
}

impl Names {
    fn intern(&mut self, sid: u64, tables: &Tables) -> Option<u32> {
        if let Some(&n) = self.by_sid.get(&sid) {
            return Some(n);
        }
        let bytes = tables.string(sid)?;
        let n = match self.ids.get(bytes) {
            Some(&n) => n,
            None => {
                let n = self.list.len() as u32;
                self.list.push(bytes.into());
                self.ids.insert(bytes.into(), n);
                n
            }
        };
        self.by_sid.insert(sid, n);
        Some(n)
    }

    fn get(&self, n: u32) -> &[u8] {
        self.list.get(n as usize).map(|b| &**b).unwrap_or(&[])
    }

    fn extra_string(&mut self, n: u32, tables: &mut Tables) -> u64 {
        if let Some(&id) = self.extra.get(&n) {
            return id;
        }
        let id = tables.add_extra_string(self.list.get(n as usize).map(|b| &**b).unwrap_or(&[]));
        self.extra.insert(n, id);
        id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GcState {
    Undetermined,
    NotRunning,
    Running,
}

/// Whether a resource must be absent, may be anything, or must be present.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Constraint {
    Absent,
    Any,
    Present,
}
use Constraint::*;

#[derive(Clone, Copy)]
struct Reqs {
    m: Constraint,
    p: Constraint,
    g: Constraint,
}

const USER_GO_REQS: Reqs = Reqs {
    m: Present,
    p: Present,
    g: Present,
};

fn validate_ctx(ctx: SchedCtx, r: Reqs) -> Result<(), String> {
    fn check(have: bool, c: Constraint, what: &str) -> Result<(), String> {
        if c == Present && !have {
            return Err(format!("expected a {what} but didn't have one"));
        }
        if c == Absent && have {
            return Err(format!("expected no {what} but had one"));
        }
        Ok(())
    }
    check(ctx.m != NO_THREAD, r.m, "thread")?;
    check(ctx.p != NO_PROC, r.p, "proc")?;
    check(ctx.g != NO_GOROUTINE, r.g, "goroutine")?;
    Ok(())
}

/// Index of the "extra" argument space of an event (Go's `baseEvent.extra`).
fn extra(typ: u8) -> usize {
    SPECS[typ as usize].args.len().saturating_sub(1)
}

fn set_extra(e: &mut BaseEvent, i: usize, v: u64) {
    let idx = extra(e.typ) + i;
    if let Some(slot) = e.args.get_mut(idx) {
        *slot = v;
    }
}

fn go_status_name(s: u64) -> &'static str {
    super::spec::go_status_name(s)
}

type Adv = Result<(SchedCtx, bool), String>;

pub(crate) struct Ordering {
    ver: Version,
    g_states: IdMap<i64, GState>,
    p_states: IdMap<i64, PState>,
    /// Thread states, by slot; `None` until the thread's first event (Go
    /// creates the state lazily and some checks depend on its existence).
    m_slots: Vec<(i64, Option<MState>)>,
    m_index: IdMap<i64, u32>,
    active_tasks: IdMap<u64, TaskState>,
    names: Names,
    gc_seq: u64,
    gc_state: GcState,
    initial_gen: u64,
    /// Events ready to be emitted, from `queue_head` on. The reader drains
    /// it before advancing again, so a plain vector suffices.
    queue: Vec<OrderedEvent>,
    queue_head: usize,
    /// Offset of the event being advanced, stamped on everything queued.
    cur_offset: u64,
}

impl Ordering {
    pub(crate) fn new(ver: Version) -> Self {
        Ordering {
            ver,
            g_states: IdMap::default(),
            p_states: IdMap::default(),
            m_slots: Vec::new(),
            m_index: IdMap::default(),
            active_tasks: IdMap::default(),
            names: Names::default(),
            gc_seq: 0,
            gc_state: GcState::Undetermined,
            initial_gen: 0,
            queue: Vec::with_capacity(8),
            queue_head: 0,
            cur_offset: 0,
        }
    }

    /// Called when a new generation (with new string IDs) is installed.
    pub(crate) fn new_generation(&mut self) {
        self.names.by_sid.clear();
        self.names.extra.clear();
    }

    /// The slot of thread `m`, created (without state) if new.
    pub(crate) fn m_slot(&mut self, m: i64) -> u32 {
        if let Some(&i) = self.m_index.get(&m) {
            return i;
        }
        self.m_slots.push((m, None));
        let i = (self.m_slots.len() - 1) as u32;
        self.m_index.insert(m, i);
        i
    }

    fn m_get(&self, m: i64) -> Option<&MState> {
        let i = *self.m_index.get(&m)?;
        self.m_slots.get(i as usize)?.1.as_ref()
    }

    fn m_get_mut(&mut self, m: i64) -> Option<&mut MState> {
        let i = *self.m_index.get(&m)?;
        self.m_slots.get_mut(i as usize)?.1.as_mut()
    }

    fn m_insert(&mut self, m: i64, st: MState) {
        let i = self.m_slot(m) as usize;
        if let Some(slot) = self.m_slots.get_mut(i) {
            slot.1 = Some(st);
        }
    }

    #[inline]
    pub(crate) fn next(&mut self) -> Option<OrderedEvent> {
        match self.queue.get(self.queue_head) {
            Some(e) => {
                let e = *e;
                self.queue_head += 1;
                Some(e)
            }
            None => {
                self.queue.clear();
                self.queue_head = 0;
                None
            }
        }
    }

    fn ev_name(&self, typ: u8) -> String {
        match self.ver.spec(typ) {
            Some(s) => s.name.to_string(),
            None => format!("Invalid({typ})"),
        }
    }

    fn push(&mut self, mut base: BaseEvent, ctx: SchedCtx) {
        base.has_table = true;
        self.queue.push(OrderedEvent {
            base,
            ctx,
            offset: self.cur_offset,
        });
    }

    /// Checks whether `ev`, the next event of thread `m`, may be emitted now.
    /// `Ok(false)` means "not yet, try another thread"; an error means the
    /// trace is broken.
    pub(crate) fn advance(
        &mut self,
        e: &mut BaseEvent,
        tables: &mut Tables,
        m: i64,
        m_slot: u32,
        gnum: u64,
        offset: u64,
    ) -> Result<bool, String> {
        if self.initial_gen == 0 {
            self.initial_gen = gnum;
        }
        self.cur_offset = offset;
        let mut cur = SchedCtx { g: 0, p: 0, m };
        if m == NO_THREAD {
            cur.p = NO_PROC;
            cur.g = NO_GOROUTINE;
        } else {
            let slot = match self.m_slots.get_mut(m_slot as usize) {
                Some(s) if s.0 == m => s,
                _ => {
                    let i = self.m_slot(m) as usize;
                    &mut self.m_slots[i]
                }
            };
            let ms = slot.1.get_or_insert(MState {
                g: NO_GOROUTINE,
                p: NO_PROC,
            });
            cur.p = ms.p;
            cur.g = ms.g;
        }
        use ev::*;
        let (new_ctx, ok) = match e.typ {
            PROCS_CHANGE | GO_LABEL | USER_LOG => self.advance_annotation(e, cur)?,
            PROC_START => self.advance_proc_start(e, gnum, cur)?,
            PROC_STOP => self.advance_proc_stop(e, cur)?,
            PROC_STEAL => self.advance_proc_steal(e, gnum, cur)?,
            PROC_STATUS => self.advance_proc_status(e, gnum, cur)?,
            GO_CREATE | GO_CREATE_BLOCKED => self.advance_go_create(e, gnum, cur)?,
            GO_CREATE_SYSCALL => self.advance_go_create_syscall(e, gnum, cur)?,
            GO_START => self.advance_go_start(e, gnum, cur)?,
            GO_DESTROY | GO_STOP | GO_BLOCK => self.advance_go_stop_exec(e, cur)?,
            GO_DESTROY_SYSCALL => self.advance_go_destroy_syscall(e, cur)?,
            GO_UNBLOCK => self.advance_go_unblock(e, gnum, cur)?,
            GO_SYSCALL_BEGIN => self.advance_go_syscall_begin(e, gnum, cur)?,
            GO_SYSCALL_END => self.advance_go_syscall_end(e, cur)?,
            GO_SYSCALL_END_BLOCKED => self.advance_go_syscall_end_blocked(e, cur)?,
            GO_STATUS | GO_STATUS_STACK => self.advance_go_status(e, gnum, cur)?,
            STW_BEGIN | GC_MARK_ASSIST_BEGIN => self.advance_go_range_begin(e, cur)?,
            STW_END | GC_MARK_ASSIST_END => self.advance_go_range_end(e, cur)?,
            GC_ACTIVE => self.advance_gc_active(e, gnum, cur)?,
            GC_BEGIN => self.advance_gc_begin(e, cur)?,
            GC_END => self.advance_gc_end(e, cur)?,
            GC_SWEEP_ACTIVE => self.advance_gc_sweep_active(e, gnum, cur)?,
            GC_SWEEP_BEGIN => self.advance_gc_sweep_begin(e, cur)?,
            GC_SWEEP_END => self.advance_gc_sweep_end(e, cur)?,
            GC_MARK_ASSIST_ACTIVE => self.advance_go_range_active(e, gnum, cur)?,
            HEAP_ALLOC | HEAP_GOAL => self.advance_heap_metric(e, cur)?,
            USER_TASK_BEGIN => self.advance_user_task_begin(e, tables, cur)?,
            USER_TASK_END => self.advance_user_task_end(e, tables, cur)?,
            USER_REGION_BEGIN => self.advance_user_region_begin(e, tables, cur)?,
            USER_REGION_END => self.advance_user_region_end(e, tables, cur)?,
            GO_SWITCH | GO_SWITCH_DESTROY => self.advance_go_switch(e, gnum, cur)?,
            SPAN..=GOROUTINE_STACK_FREE => self.advance_alloc_free(e, cur)?,
            t => return Err(format!("bad event type found while ordering: {t}")),
        };
        if ok
            && m != NO_THREAD
            && let Some(ms) = self.m_get_mut(m)
        {
            ms.p = new_ctx.p;
            ms.g = new_ctx.g;
        }
        Ok(ok)
    }

    fn advance_proc_status(&mut self, e: &mut BaseEvent, gnum: u64, mut cur: SchedCtx) -> Adv {
        let pid = e.args[0] as i64;
        let status = e.args[1];
        if status > procstatus::SYSCALL_ABANDONED {
            return Err(format!("invalid status for proc {pid}: {status}"));
        }
        let mut old_state = proc_state::from_status(status);
        let initial = self.initial_gen;
        if let Some(s) = self.p_states.get_mut(&pid) {
            if status == procstatus::SYSCALL_ABANDONED && s.status == procstatus::SYSCALL {
                old_state = proc_state::RUNNING;
                e.args[1] = procstatus::SYSCALL;
            } else if status == procstatus::SYSCALL_ABANDONED
                && s.status == procstatus::SYSCALL_ABANDONED
            {
                old_state = proc_state::IDLE;
                e.args[1] = procstatus::SYSCALL_ABANDONED;
            } else if s.status != status {
                return Err(format!(
                    "inconsistent status for proc {pid}: old {} vs. new {}",
                    super::spec::proc_status_name(s.status),
                    super::spec::proc_status_name(status)
                ));
            }
            s.seq = Seq::new(gnum, 0);
        } else {
            self.p_states.insert(
                pid,
                PState {
                    status,
                    seq: Seq::new(gnum, 0),
                    ranges: RangeState::default(),
                },
            );
            old_state = if gnum == initial {
                proc_state::UNDETERMINED
            } else {
                proc_state::NOT_EXIST
            };
        }
        set_extra(e, 0, old_state as u64);
        let mut new_ctx = cur;
        if status == procstatus::RUNNING || status == procstatus::SYSCALL {
            new_ctx.p = pid;
        }
        if status == procstatus::SYSCALL_ABANDONED && old_state == proc_state::RUNNING {
            // Find the context this P is bound to (Go takes the last match of
            // a map iteration; there is at most one binding).
            let mut found = false;
            for (mid, ms) in self.m_slots.iter() {
                let Some(ms) = ms else { continue };
                if ms.p == pid {
                    cur.m = *mid;
                    cur.p = pid;
                    cur.g = ms.g;
                    found = true;
                }
            }
            if !found {
                return Err(format!(
                    "failed to find sched context for proc {pid} that's about to be stolen"
                ));
            }
        }
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_proc_start(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        let pid = e.args[0] as i64;
        let seq = Seq::new(gnum, e.args[1]);
        match self.p_states.get(&pid) {
            Some(s) if s.status == procstatus::IDLE && seq.succeeds(s.seq) && cur.p == NO_PROC => {}
            _ => return Ok((cur, false)),
        }
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Absent,
                g: Any,
            },
        )?;
        if let Some(s) = self.p_states.get_mut(&pid) {
            s.status = procstatus::RUNNING;
            s.seq = seq;
        }
        let mut new_ctx = cur;
        new_ctx.p = pid;
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_proc_stop(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        let name = self.ev_name(e.typ);
        let Some(state) = self.p_states.get_mut(&cur.p) else {
            return Err(format!(
                "event {name} for proc ({}) that doesn't exist",
                cur.p
            ));
        };
        if state.status != procstatus::RUNNING && state.status != procstatus::SYSCALL {
            return Err(format!(
                "{name} event for proc that's not Running or Syscall"
            ));
        }
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Present,
                g: Any,
            },
        )?;
        state.status = procstatus::IDLE;
        let mut new_ctx = cur;
        new_ctx.p = NO_PROC;
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_proc_steal(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        let pid = e.args[0] as i64;
        let seq = Seq::new(gnum, e.args[1]);
        let old_status = match self.p_states.get(&pid) {
            Some(s)
                if (s.status == procstatus::SYSCALL
                    || s.status == procstatus::SYSCALL_ABANDONED)
                    && seq.succeeds(s.seq) =>
            {
                s.status
            }
            _ => return Ok((cur, false)),
        };
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Any,
                g: Any,
            },
        )?;
        set_extra(e, 0, old_status);
        if let Some(s) = self.p_states.get_mut(&pid) {
            s.status = procstatus::IDLE;
            s.seq = seq;
        }
        if old_status == procstatus::SYSCALL_ABANDONED {
            self.push(*e, cur);
            return Ok((cur, true));
        }
        let mid = e.args[2] as i64;
        let mut new_ctx = cur;
        if mid == cur.m {
            if cur.p != pid {
                return Err(format!(
                    "tried to self-steal proc {pid} (thread {mid}), but got proc {} instead",
                    cur.p
                ));
            }
            new_ctx.p = NO_PROC;
            self.push(*e, cur);
            return Ok((new_ctx, true));
        }
        let Some(ms) = self.m_get_mut(mid) else {
            return Err(format!("stole proc from non-existent thread {mid}"));
        };
        if ms.p != pid {
            return Err(format!(
                "tried to steal proc {pid} from thread {mid}, but got proc {} instead",
                ms.p
            ));
        }
        ms.p = NO_PROC;
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_go_status(&mut self, e: &mut BaseEvent, gnum: u64, mut cur: SchedCtx) -> Adv {
        let gid = e.args[0] as i64;
        let mid = e.args[1] as i64;
        let status = e.args[2];
        if status > gostatus::WAITING {
            return Err(format!("invalid status for goroutine {gid}: {status}"));
        }
        let mut old_state = goroutine_state::from_status(status);
        if let Some(s) = self.g_states.get_mut(&gid) {
            if s.status != status {
                return Err(format!(
                    "inconsistent status for goroutine {gid}: old {} vs. new {}",
                    go_status_name(s.status),
                    go_status_name(status)
                ));
            }
            s.seq = Seq::new(gnum, 0);
        } else if gnum == self.initial_gen {
            self.g_states
                .insert(gid, GState::new(gid, status, Seq::new(gnum, 0)));
            old_state = goroutine_state::UNDETERMINED;
        } else {
            return Err(format!(
                "found goroutine status for new goroutine after the first generation: id={gid} status={}",
                go_status_name(status)
            ));
        }
        e.args[2] = ((old_state as u64) << 32) | status;
        let mut new_ctx = cur;
        if status == gostatus::RUNNING {
            new_ctx.g = gid;
        } else if status == gostatus::SYSCALL {
            if mid == NO_THREAD {
                return Err(format!("found goroutine {gid} in syscall without a thread"));
            }
            if mid == cur.m {
                if gnum != self.initial_gen && cur.g != gid {
                    return Err(format!(
                        "inconsistent thread for syscalling goroutine {gid}: thread has goroutine {}",
                        cur.g
                    ));
                }
                new_ctx.g = gid;
            } else {
                if let Some(ms) = self.m_get(mid) {
                    if ms.g != gid {
                        return Err(format!(
                            "inconsistent thread for syscalling goroutine {gid}: thread has goroutine {}",
                            ms.g
                        ));
                    }
                    cur.g = ms.g;
                } else {
                    self.m_insert(mid, MState { g: gid, p: NO_PROC });
                }
                cur.m = mid;
            }
        }
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_go_create(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Present,
                g: Any,
            },
        )?;
        if let Some(s) = self.g_states.get(&cur.g)
            && s.status != gostatus::RUNNING
        {
            return Err(format!(
                "{} event for goroutine that's not Running",
                self.ev_name(e.typ)
            ));
        }
        let newgid = e.args[0] as i64;
        if self.g_states.contains_key(&newgid) {
            return Err(format!(
                "tried to create goroutine ({newgid}) that already exists"
            ));
        }
        let status = if e.typ == ev::GO_CREATE_BLOCKED {
            gostatus::WAITING
        } else {
            gostatus::RUNNABLE
        };
        self.g_states
            .insert(newgid, GState::new(newgid, status, Seq::new(gnum, 0)));
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn running_g_state(&mut self, typ: u8, g: i64, want: u64) -> Result<&mut GState, String> {
        let name = self.ev_name(typ);
        let Some(state) = self.g_states.get_mut(&g) else {
            return Err(format!(
                "event {name} for goroutine ({g}) that doesn't exist"
            ));
        };
        if state.status != want {
            return Err(format!(
                "{name} event for goroutine that's not {}",
                if want == gostatus::SYSCALL && typ == ev::GO_DESTROY_SYSCALL {
                    "Syscall"
                } else {
                    "Running"
                }
            ));
        }
        Ok(state)
    }

    fn advance_go_stop_exec(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        let typ = e.typ;
        let state = self.running_g_state(typ, cur.g, gostatus::RUNNING)?;
        let mut new_ctx = cur;
        match typ {
            ev::GO_DESTROY => {
                self.g_states.remove(&cur.g);
                new_ctx.g = NO_GOROUTINE;
            }
            ev::GO_STOP => {
                state.status = gostatus::RUNNABLE;
                new_ctx.g = NO_GOROUTINE;
            }
            _ => {
                state.status = gostatus::WAITING;
                new_ctx.g = NO_GOROUTINE;
            }
        }
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_go_start(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        let gid = e.args[0] as i64;
        let seq = Seq::new(gnum, e.args[1]);
        match self.g_states.get(&gid) {
            Some(s) if s.status == gostatus::RUNNABLE && seq.succeeds(s.seq) => {}
            _ => return Ok((cur, false)),
        }
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Present,
                g: Absent,
            },
        )?;
        if let Some(s) = self.g_states.get_mut(&gid) {
            s.status = gostatus::RUNNING;
            s.seq = seq;
        }
        let mut new_ctx = cur;
        new_ctx.g = gid;
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_go_unblock(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        let gid = e.args[0] as i64;
        let seq = Seq::new(gnum, e.args[1]);
        match self.g_states.get_mut(&gid) {
            Some(s) if s.status == gostatus::WAITING && seq.succeeds(s.seq) => {
                s.status = gostatus::RUNNABLE;
                s.seq = seq;
            }
            _ => return Ok((cur, false)),
        }
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_go_switch(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        self.running_g_state(e.typ, cur.g, gostatus::RUNNING)?;
        let nextg = e.args[0] as i64;
        let seq = Seq::new(gnum, e.args[1]);
        match self.g_states.get(&nextg) {
            Some(s) if s.status == gostatus::WAITING && seq.succeeds(s.seq) => {}
            _ => return Ok((cur, false)),
        }
        self.push(*e, cur);
        let mk = |typ: u8, args: &[u64]| {
            let mut b = BaseEvent {
                typ,
                has_table: true,
                time: e.time,
                args: [0; 4],
            };
            b.args[..args.len()].copy_from_slice(args);
            b
        };
        if e.typ == ev::GO_SWITCH {
            if let Some(s) = self.g_states.get_mut(&cur.g) {
                s.status = gostatus::WAITING;
            }
            self.push(mk(ev::GO_BLOCK, &[0, 0]), cur);
        } else {
            self.g_states.remove(&cur.g);
            self.push(mk(ev::GO_DESTROY, &[]), cur);
        }
        if let Some(s) = self.g_states.get_mut(&nextg) {
            s.status = gostatus::RUNNING;
            s.seq = seq;
        }
        let mut new_ctx = cur;
        new_ctx.g = nextg;
        let mut start_ctx = cur;
        start_ctx.g = NO_GOROUTINE;
        self.push(mk(ev::GO_START, &[nextg as u64, e.args[1]]), start_ctx);
        Ok((new_ctx, true))
    }

    fn advance_go_syscall_begin(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        let name = self.ev_name(e.typ);
        let state = self.running_g_state(e.typ, cur.g, gostatus::RUNNING)?;
        state.status = gostatus::SYSCALL;
        let Some(p) = self.p_states.get_mut(&cur.p) else {
            return Err(format!("uninitialized proc {} found during {name}", cur.p));
        };
        p.status = procstatus::SYSCALL;
        let pseq = Seq::new(gnum, e.args[0]);
        if !pseq.succeeds(p.seq) {
            return Err(format!(
                "failed to advance {name}: can't make sequence: {} -> {pseq}",
                p.seq
            ));
        }
        p.seq = pseq;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_go_syscall_end(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        let name = self.ev_name(e.typ);
        let state = self.running_g_state(e.typ, cur.g, gostatus::SYSCALL)?;
        state.status = gostatus::RUNNING;
        let Some(p) = self.p_states.get_mut(&cur.p) else {
            return Err(format!("uninitialized proc {} found during {name}", cur.p));
        };
        if p.status != procstatus::SYSCALL {
            return Err(format!(
                "expected proc {} in state Syscall, but got {} instead",
                cur.p,
                super::spec::proc_status_name(p.status)
            ));
        }
        p.status = procstatus::RUNNING;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_go_syscall_end_blocked(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        if cur.p != NO_PROC {
            let Some(p) = self.p_states.get(&cur.p) else {
                return Err(format!(
                    "uninitialized proc {} found during {}",
                    cur.p,
                    self.ev_name(e.typ)
                ));
            };
            if p.status == procstatus::SYSCALL {
                return Ok((cur, false));
            }
        }
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Any,
                g: Present,
            },
        )?;
        let state = self.running_g_state(e.typ, cur.g, gostatus::SYSCALL)?;
        state.status = gostatus::RUNNABLE;
        let mut new_ctx = cur;
        new_ctx.g = NO_GOROUTINE;
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_go_create_syscall(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Any,
                g: Absent,
            },
        )?;
        let newgid = e.args[0] as i64;
        if self.g_states.contains_key(&newgid) {
            return Err(format!(
                "tried to create goroutine ({newgid}) in syscall that already exists"
            ));
        }
        self.g_states.insert(
            newgid,
            GState::new(newgid, gostatus::SYSCALL, Seq::new(gnum, 0)),
        );
        let mut new_ctx = cur;
        new_ctx.g = newgid;
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_go_destroy_syscall(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Any,
                g: Present,
            },
        )?;
        self.running_g_state(e.typ, cur.g, gostatus::SYSCALL)?;
        self.g_states.remove(&cur.g);
        let mut new_ctx = cur;
        new_ctx.g = NO_GOROUTINE;
        if cur.p != NO_PROC {
            let name = self.ev_name(e.typ);
            let Some(p) = self.p_states.get_mut(&cur.p) else {
                return Err(format!("found invalid proc {} during {name}", cur.p));
            };
            if p.status != procstatus::SYSCALL {
                return Err(format!(
                    "proc {} in unexpected state {} during {name}",
                    cur.p,
                    super::spec::proc_status_name(p.status)
                ));
            }
            p.status = procstatus::SYSCALL_ABANDONED;
            new_ctx.p = NO_PROC;
            let mut extra_ev = BaseEvent {
                typ: ev::PROC_STEAL,
                has_table: true,
                time: e.time,
                args: [cur.p as u64, 0, 0, 0],
            };
            set_extra(&mut extra_ev, 0, procstatus::SYSCALL);
            self.push(extra_ev, cur);
        }
        self.push(*e, cur);
        Ok((new_ctx, true))
    }

    fn advance_user_task_begin(
        &mut self,
        e: &mut BaseEvent,
        tables: &mut Tables,
        cur: SchedCtx,
    ) -> Adv {
        let id = e.args[0];
        if self.active_tasks.contains_key(&id) {
            return Err(format!("task ID conflict: {id}"));
        }
        let mut parent = e.args[1];
        if parent == 0 {
            parent = NO_TASK;
            e.args[1] = NO_TASK;
        }
        let name_id = e.args[2];
        let Some(name) = self.names.intern(name_id, tables) else {
            return Err(format!("invalid string ID {name_id} for {} event", e.typ));
        };
        self.active_tasks.insert(id, TaskState { name, parent });
        validate_ctx(cur, USER_GO_REQS)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_user_task_end(
        &mut self,
        e: &mut BaseEvent,
        tables: &mut Tables,
        cur: SchedCtx,
    ) -> Adv {
        let id = e.args[0];
        if let Some(ts) = self.active_tasks.remove(&id) {
            set_extra(e, 0, ts.parent);
            let sid = self.names.extra_string(ts.name, tables);
            set_extra(e, 1, sid);
        } else {
            set_extra(e, 0, NO_TASK);
            set_extra(e, 1, 0);
        }
        validate_ctx(cur, USER_GO_REQS)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_user_region_begin(
        &mut self,
        e: &mut BaseEvent,
        tables: &mut Tables,
        cur: SchedCtx,
    ) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        let tid = e.args[0];
        let name_id = e.args[1];
        let Some(name) = self.names.intern(name_id, tables) else {
            return Err(format!("invalid string ID {name_id} for {} event", e.typ));
        };
        let Some(g) = self.g_states.get_mut(&cur.g) else {
            return Err(format!(
                "encountered EvUserRegionBegin without known state for current goroutine {}",
                cur.g
            ));
        };
        g.regions.push((tid, name));
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_user_region_end(
        &mut self,
        e: &mut BaseEvent,
        tables: &mut Tables,
        cur: SchedCtx,
    ) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        let tid = e.args[0];
        let name_id = e.args[1];
        let Some(name) = self.names.intern(name_id, tables) else {
            return Err(format!("invalid string ID {name_id} for {} event", e.typ));
        };
        let Some(g) = self.g_states.get_mut(&cur.g) else {
            return Err(format!(
                "encountered EvUserRegionEnd without known state for current goroutine {}",
                cur.g
            ));
        };
        g.end_region(tid, name, &self.names)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_gc_active(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        let seq = e.args[0];
        if gnum == self.initial_gen {
            if self.gc_state != GcState::Undetermined {
                return Err("GCActive in the first generation isn't first GC event".into());
            }
            self.gc_seq = seq;
            self.gc_state = GcState::Running;
            self.push(*e, cur);
            return Ok((cur, true));
        }
        if seq != self.gc_seq.wrapping_add(1) {
            return Ok((cur, false));
        }
        if self.gc_state != GcState::Running {
            return Err("encountered GCActive while GC was not in progress".into());
        }
        self.gc_seq = seq;
        validate_ctx(cur, USER_GO_REQS)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_gc_begin(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        let seq = e.args[0];
        if self.gc_state == GcState::Undetermined {
            self.gc_seq = seq;
            self.gc_state = GcState::Running;
            self.push(*e, cur);
            return Ok((cur, true));
        }
        if seq != self.gc_seq.wrapping_add(1) {
            return Ok((cur, false));
        }
        if self.gc_state == GcState::Running {
            return Err("encountered GCBegin while GC was already in progress".into());
        }
        self.gc_seq = seq;
        self.gc_state = GcState::Running;
        validate_ctx(cur, USER_GO_REQS)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_gc_end(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        let seq = e.args[0];
        if seq != self.gc_seq.wrapping_add(1) {
            return Ok((cur, false));
        }
        if self.gc_state == GcState::NotRunning {
            return Err("encountered GCEnd when GC was not in progress".into());
        }
        if self.gc_state == GcState::Undetermined {
            return Err("encountered GCEnd when GC was in an undetermined state".into());
        }
        self.gc_seq = seq;
        self.gc_state = GcState::NotRunning;
        validate_ctx(cur, USER_GO_REQS)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_annotation(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_heap_metric(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Present,
                g: Any,
            },
        )?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_gc_sweep_begin(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Present,
                g: Any,
            },
        )?;
        let Some(p) = self.p_states.get_mut(&cur.p) else {
            return Err(format!(
                "uninitialized proc {} found during GCSweepBegin",
                cur.p
            ));
        };
        p.ranges.begin_range(make_range_type(e.typ, 0))?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_gc_sweep_active(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        let pid = e.args[0] as i64;
        let initial = gnum == self.initial_gen;
        let Some(p) = self.p_states.get_mut(&pid) else {
            return Err(format!("encountered GCSweepActive for unknown proc {pid}"));
        };
        p.ranges.active_range(make_range_type(e.typ, 0), initial)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_gc_sweep_end(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Present,
                g: Any,
            },
        )?;
        let Some(p) = self.p_states.get_mut(&cur.p) else {
            return Err(format!(
                "uninitialized proc {} found during GCSweepEnd",
                cur.p
            ));
        };
        p.ranges.end_range(e.typ)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_go_range_begin(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        let desc = if e.typ == ev::STW_BEGIN { e.args[0] } else { 0 };
        let Some(g) = self.g_states.get_mut(&cur.g) else {
            return Err(format!(
                "encountered event of type {} without known state for current goroutine {}",
                e.typ, cur.g
            ));
        };
        g.ranges.begin_range(make_range_type(e.typ, desc))?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_go_range_active(&mut self, e: &mut BaseEvent, gnum: u64, cur: SchedCtx) -> Adv {
        let gid = e.args[0] as i64;
        let initial = gnum == self.initial_gen;
        let name = self.ev_name(e.typ);
        let Some(g) = self.g_states.get_mut(&gid) else {
            return Err(format!("uninitialized goroutine {gid} found during {name}"));
        };
        g.ranges.active_range(make_range_type(e.typ, 0), initial)?;
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_go_range_end(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(cur, USER_GO_REQS)?;
        let Some(g) = self.g_states.get_mut(&cur.g) else {
            return Err(format!(
                "encountered event of type {} without known state for current goroutine {}",
                e.typ, cur.g
            ));
        };
        let desc = g.ranges.end_range(e.typ)?;
        if e.typ == ev::STW_END {
            e.args[0] = desc;
        }
        self.push(*e, cur);
        Ok((cur, true))
    }

    fn advance_alloc_free(&mut self, e: &mut BaseEvent, cur: SchedCtx) -> Adv {
        validate_ctx(
            cur,
            Reqs {
                m: Present,
                p: Any,
                g: Any,
            },
        )?;
        self.push(*e, cur);
        Ok((cur, true))
    }
}
