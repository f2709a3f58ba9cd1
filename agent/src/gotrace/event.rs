//! The public view of a decoded event (Go's `trace.Event` and its details).

use std::borrow::Cow;

use super::generation::{ExperimentalBatch, Tables};
use super::order::OrderedEvent;
use super::reader::Core;
use super::spec::{SPECS, ev, procstatus};
use super::{goroutine_state, proc_state};

/// The kind of an event (Go's `trace.EventKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Bad,
    Sync,
    Metric,
    Label,
    StackSample,
    RangeBegin,
    RangeActive,
    RangeEnd,
    TaskBegin,
    TaskEnd,
    RegionBegin,
    RegionEnd,
    Log,
    StateTransition,
    Experimental,
}

impl EventKind {
    /// Go's `EventKind.String()`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Bad => "Bad",
            EventKind::Sync => "Sync",
            EventKind::Metric => "Metric",
            EventKind::Label => "Label",
            EventKind::StackSample => "StackSample",
            EventKind::RangeBegin => "RangeBegin",
            EventKind::RangeActive => "RangeActive",
            EventKind::RangeEnd => "RangeEnd",
            EventKind::TaskBegin => "TaskBegin",
            EventKind::TaskEnd => "TaskEnd",
            EventKind::RegionBegin => "RegionBegin",
            EventKind::RegionEnd => "RegionEnd",
            EventKind::Log => "Log",
            EventKind::StateTransition => "StateTransition",
            EventKind::Experimental => "Experimental",
        }
    }
}

fn kind_of(typ: u8) -> EventKind {
    use EventKind::*;
    use ev::*;
    match typ {
        CPU_SAMPLE => StackSample,
        PROCS_CHANGE | HEAP_ALLOC | HEAP_GOAL => Metric,
        PROC_START
        | PROC_STOP
        | PROC_STEAL
        | PROC_STATUS
        | GO_CREATE
        | GO_CREATE_SYSCALL
        | GO_START
        | GO_DESTROY
        | GO_DESTROY_SYSCALL
        | GO_STOP
        | GO_BLOCK
        | GO_UNBLOCK
        | GO_SYSCALL_BEGIN
        | GO_SYSCALL_END
        | GO_SYSCALL_END_BLOCKED
        | GO_STATUS
        | GO_SWITCH
        | GO_SWITCH_DESTROY
        | GO_CREATE_BLOCKED
        | GO_STATUS_STACK => StateTransition,
        STW_BEGIN | GC_BEGIN | GC_SWEEP_BEGIN | GC_MARK_ASSIST_BEGIN => RangeBegin,
        GC_ACTIVE | GC_SWEEP_ACTIVE | GC_MARK_ASSIST_ACTIVE => RangeActive,
        STW_END | GC_END | GC_SWEEP_END | GC_MARK_ASSIST_END => RangeEnd,
        GO_LABEL => Label,
        USER_TASK_BEGIN => TaskBegin,
        USER_TASK_END => TaskEnd,
        USER_REGION_BEGIN => RegionBegin,
        USER_REGION_END => RegionEnd,
        USER_LOG => Log,
        SPAN..=GOROUTINE_STACK_FREE => Experimental,
        SYNC_EVENT => Sync,
        _ => Bad,
    }
}

/// A resource an event, range or state transition refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    None,
    Goroutine(i64),
    Proc(i64),
    Thread(i64),
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::None => f.write_str("None"),
            Resource::Goroutine(id) => write!(f, "Goroutine({id})"),
            Resource::Proc(id) => write!(f, "Proc({id})"),
            Resource::Thread(id) => write!(f, "Thread({id})"),
        }
    }
}

/// Goroutine state names, indexed by [`goroutine_state`](super::goroutine_state) values.
pub fn go_state_name(s: u8) -> &'static str {
    match s {
        goroutine_state::UNDETERMINED => "Undetermined",
        goroutine_state::NOT_EXIST => "NotExist",
        goroutine_state::RUNNABLE => "Runnable",
        goroutine_state::RUNNING => "Running",
        goroutine_state::WAITING => "Waiting",
        goroutine_state::SYSCALL => "Syscall",
        _ => "Bad",
    }
}

/// Proc state names, indexed by [`proc_state`](super::proc_state) values.
pub fn proc_state_name(s: u8) -> &'static str {
    match s {
        proc_state::UNDETERMINED => "Undetermined",
        proc_state::NOT_EXIST => "NotExist",
        proc_state::RUNNING => "Running",
        proc_state::IDLE => "Idle",
        _ => "Bad",
    }
}

/// One frame of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackFrame<'a> {
    pub pc: u64,
    pub func: &'a [u8],
    pub file: &'a [u8],
    pub line: u64,
}

/// A handle to a stack in the current generation.
#[derive(Debug, Clone, Copy)]
pub struct Stack<'a> {
    tables: Option<&'a Tables>,
    id: u64,
}

impl<'a> Stack<'a> {
    /// Whether this is Go's `NoStack`.
    pub fn is_none(&self) -> bool {
        self.tables.is_none()
    }

    /// The stack ID within its generation (0: empty).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The frames, innermost first.
    pub fn frames(&self) -> impl Iterator<Item = StackFrame<'a>> + 'a {
        let tables = self.tables;
        let pcs: &'a [u64] = match tables {
            Some(t) if self.id != 0 => t.stack_pcs(self.id).unwrap_or(&[]),
            _ => &[],
        };
        pcs.iter().filter_map(move |pc| {
            let t = tables?;
            let f = t.frame(*pc)?;
            Some(StackFrame {
                pc: f.pc,
                func: t.string(f.func).unwrap_or(&[]),
                file: t.string(f.file).unwrap_or(&[]),
                line: f.line,
            })
        })
    }
}

/// A metric sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub value: u64,
}

/// A label applied to a goroutine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label<'a> {
    pub label: &'a [u8],
    pub resource: Resource,
}

/// A special range of time (GC, STW, sweep, mark assist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range<'a> {
    /// The range's name; bytes because an STW reason is a trace string.
    pub name: Cow<'a, [u8]>,
    pub scope: Resource,
}

/// A user task begin or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task<'a> {
    pub id: u64,
    /// [`NO_TASK`](super::NO_TASK) if unknown or none.
    pub parent: u64,
    pub typ: &'a [u8],
}

/// A user region begin or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region<'a> {
    pub task: u64,
    pub typ: &'a [u8],
}

/// A `trace.Log` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log<'a> {
    pub task: u64,
    pub category: &'a [u8],
    pub message: &'a [u8],
}

/// A state transition of a goroutine or proc.
#[derive(Debug, Clone, Copy)]
pub struct StateTransition<'a> {
    pub resource: Resource,
    /// Old and new state: [`goroutine_state`](super::goroutine_state) values for
    /// goroutines, [`proc_state`](super::proc_state) values for procs.
    pub from: u8,
    pub to: u8,
    pub reason: &'a [u8],
    /// The stack of the transitioning resource.
    pub stack: Stack<'a>,
}

/// A clock snapshot (Go 1.25+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSnapshot {
    /// Trace time of the snapshot, ns.
    pub trace: i64,
    /// Monotonic clock, ns.
    pub mono: u64,
    /// Wall clock, seconds and nanoseconds since the Unix epoch.
    pub wall_sec: i64,
    pub wall_nsec: i64,
}

/// Details of a Sync event.
#[derive(Debug, Clone, Copy)]
pub struct Sync<'a> {
    pub n: u64,
    pub clock_snapshot: Option<ClockSnapshot>,
    pub experimental_batches: &'a [ExperimentalBatch],
}

/// A raw experimental event.
#[derive(Debug, Clone, Copy)]
pub struct Experimental {
    pub name: &'static str,
    pub experiment: &'static str,
    pub arg_names: &'static [&'static str],
    pub args: [u64; 4],
}

/// One event of the trace, valid until the next `read_event` call.
///
/// A single reference to the reader's state, so that returning it is cheap.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    core: &'a Core,
}

static EMPTY_BATCHES: [ExperimentalBatch; 0] = [];

impl<'a> Event<'a> {
    pub(crate) fn new(core: &'a Core) -> Self {
        Event { core }
    }

    #[inline]
    fn raw(&self) -> &'a OrderedEvent {
        &self.core.cur
    }

    #[inline]
    fn tables(&self) -> Option<&'a Tables> {
        if self.core.cur.base.has_table {
            self.core.generation.as_ref().map(|g| &g.tables)
        } else {
            None
        }
    }

    pub fn kind(&self) -> EventKind {
        kind_of(self.raw().base.typ)
    }

    /// The wire event type this came from (255 for Sync).
    pub fn wire_type(&self) -> u8 {
        self.raw().base.typ
    }

    /// Timestamp in nanoseconds of the trace clock.
    pub fn time(&self) -> i64 {
        self.raw().base.time
    }

    /// Goroutine executing when the event happened ([`NO_GOROUTINE`](super::NO_GOROUTINE) if none).
    pub fn goroutine(&self) -> i64 {
        self.raw().ctx.g
    }

    pub fn proc(&self) -> i64 {
        self.raw().ctx.p
    }

    pub fn thread(&self) -> i64 {
        self.raw().ctx.m
    }

    /// The generation this event belongs to.
    pub fn generation(&self) -> u64 {
        self.core.generation.as_ref().map(|g| g.gnum).unwrap_or(0)
    }

    /// Byte offset in the input of the wire event this came from.
    pub fn offset(&self) -> u64 {
        self.raw().offset
    }

    /// The trace's Go version.
    pub fn go_version(&self) -> u32 {
        self.core.ver.0
    }

    fn arg(&self, i: usize) -> u64 {
        self.raw().base.args.get(i).copied().unwrap_or(0)
    }

    fn extra(&self, i: usize) -> u64 {
        let base = SPECS[self.raw().base.typ as usize]
            .args
            .len()
            .saturating_sub(1);
        self.arg(base + i)
    }

    fn string(&self, id: u64) -> &'a [u8] {
        self.tables().and_then(|t| t.string(id)).unwrap_or(&[])
    }

    fn stack_of(&self, id: u64) -> Stack<'a> {
        if id == 0 {
            return Stack {
                tables: None,
                id: 0,
            };
        }
        Stack {
            tables: self.tables(),
            id,
        }
    }

    /// The stack of the current execution context (Go's `Event.Stack`).
    pub fn stack(&self) -> Stack<'a> {
        let typ = self.raw().base.typ;
        if typ == ev::SYNC_EVENT {
            return Stack {
                tables: None,
                id: 0,
            };
        }
        if typ == ev::CPU_SAMPLE {
            return Stack {
                tables: self.tables(),
                id: self.arg(0),
            };
        }
        match SPECS[typ as usize].stack_ids.first() {
            Some(&i) => self.stack_of(self.arg(i - 1)),
            None => Stack {
                tables: None,
                id: 0,
            },
        }
    }

    pub fn metric(&self) -> Option<Metric> {
        let name = match self.raw().base.typ {
            ev::PROCS_CHANGE => "/sched/gomaxprocs:threads",
            ev::HEAP_ALLOC => "/memory/classes/heap/objects:bytes",
            ev::HEAP_GOAL => "/gc/heap/goal:bytes",
            _ => return None,
        };
        Some(Metric {
            name,
            value: self.arg(0),
        })
    }

    pub fn label(&self) -> Option<Label<'a>> {
        (self.raw().base.typ == ev::GO_LABEL).then(|| Label {
            label: self.string(self.arg(0)),
            resource: Resource::Goroutine(self.raw().ctx.g),
        })
    }

    pub fn range(&self) -> Option<Range<'a>> {
        use ev::*;
        let typ = self.raw().base.typ;
        Some(match typ {
            STW_BEGIN | STW_END => Range {
                name: Cow::Owned(
                    [
                        &b"stop-the-world ("[..],
                        self.string(self.arg(0)),
                        &b")"[..],
                    ]
                    .concat(),
                ),
                scope: Resource::Goroutine(self.raw().ctx.g),
            },
            GC_BEGIN | GC_ACTIVE | GC_END => Range {
                name: Cow::Borrowed(b"GC concurrent mark phase"),
                scope: Resource::None,
            },
            GC_SWEEP_BEGIN | GC_SWEEP_ACTIVE | GC_SWEEP_END => Range {
                name: Cow::Borrowed(b"GC incremental sweep"),
                scope: Resource::Proc(if typ == GC_SWEEP_ACTIVE {
                    self.arg(0) as i64
                } else {
                    self.raw().ctx.p
                }),
            },
            GC_MARK_ASSIST_BEGIN | GC_MARK_ASSIST_ACTIVE | GC_MARK_ASSIST_END => Range {
                name: Cow::Borrowed(b"GC mark assist"),
                scope: Resource::Goroutine(if typ == GC_MARK_ASSIST_ACTIVE {
                    self.arg(0) as i64
                } else {
                    self.raw().ctx.g
                }),
            },
            _ => return None,
        })
    }

    /// Attributes of a completed range (only sweeps have any).
    pub fn range_attributes(&self) -> Vec<(&'static str, u64)> {
        if self.raw().base.typ != ev::GC_SWEEP_END {
            return Vec::new();
        }
        vec![
            ("bytes swept", self.arg(0)),
            ("bytes reclaimed", self.arg(1)),
        ]
    }

    pub fn task(&self) -> Option<Task<'a>> {
        match self.raw().base.typ {
            ev::USER_TASK_BEGIN => Some(Task {
                id: self.arg(0),
                parent: self.arg(1),
                typ: self.string(self.arg(2)),
            }),
            ev::USER_TASK_END => Some(Task {
                id: self.arg(0),
                parent: self.extra(0),
                typ: self
                    .tables()
                    .map(|t| t.extra_string(self.extra(1)))
                    .unwrap_or(&[]),
            }),
            _ => None,
        }
    }

    pub fn region(&self) -> Option<Region<'a>> {
        matches!(
            self.raw().base.typ,
            ev::USER_REGION_BEGIN | ev::USER_REGION_END
        )
        .then(|| Region {
            task: self.arg(0),
            typ: self.string(self.arg(1)),
        })
    }

    pub fn log(&self) -> Option<Log<'a>> {
        (self.raw().base.typ == ev::USER_LOG).then(|| Log {
            task: self.arg(0),
            category: self.string(self.arg(1)),
            message: self.string(self.arg(2)),
        })
    }

    pub fn state_transition(&self) -> Option<StateTransition<'a>> {
        use ev::*;
        use goroutine_state as gs;
        let typ = self.raw().base.typ;
        let ctx = self.raw().ctx;
        let none = Stack {
            tables: None,
            id: 0,
        };
        let go = |id: i64, from: u8, to: u8| StateTransition {
            resource: Resource::Goroutine(id),
            from,
            to,
            reason: &[],
            stack: none,
        };
        let proc = |id: i64, from: u8, to: u8| StateTransition {
            resource: Resource::Proc(id),
            from,
            to,
            reason: &[],
            stack: none,
        };
        Some(match typ {
            PROC_START => proc(self.arg(0) as i64, proc_state::IDLE, proc_state::RUNNING),
            PROC_STOP => proc(ctx.p, proc_state::RUNNING, proc_state::IDLE),
            PROC_STEAL => {
                let before = if self.extra(0) == procstatus::SYSCALL_ABANDONED {
                    proc_state::IDLE
                } else {
                    proc_state::RUNNING
                };
                proc(self.arg(0) as i64, before, proc_state::IDLE)
            }
            PROC_STATUS => proc(
                self.arg(0) as i64,
                self.extra(0) as u8,
                proc_state::from_status(self.arg(1)),
            ),
            GO_CREATE | GO_CREATE_BLOCKED => {
                let to = if typ == GO_CREATE_BLOCKED {
                    gs::WAITING
                } else {
                    gs::RUNNABLE
                };
                let mut s = go(self.arg(0) as i64, gs::NOT_EXIST, to);
                s.stack = Stack {
                    tables: self.tables(),
                    id: self.arg(1),
                };
                s
            }
            GO_CREATE_SYSCALL => go(self.arg(0) as i64, gs::NOT_EXIST, gs::SYSCALL),
            GO_START => go(self.arg(0) as i64, gs::RUNNABLE, gs::RUNNING),
            GO_DESTROY => go(ctx.g, gs::RUNNING, gs::NOT_EXIST),
            GO_DESTROY_SYSCALL => go(ctx.g, gs::SYSCALL, gs::NOT_EXIST),
            GO_STOP | GO_BLOCK => {
                let to = if typ == GO_STOP {
                    gs::RUNNABLE
                } else {
                    gs::WAITING
                };
                let mut s = go(ctx.g, gs::RUNNING, to);
                s.reason = self.string(self.arg(0));
                s.stack = self.stack();
                s
            }
            GO_UNBLOCK | GO_SWITCH | GO_SWITCH_DESTROY => {
                go(self.arg(0) as i64, gs::WAITING, gs::RUNNABLE)
            }
            GO_SYSCALL_BEGIN => {
                let mut s = go(ctx.g, gs::RUNNING, gs::SYSCALL);
                s.stack = self.stack();
                s
            }
            GO_SYSCALL_END => go(ctx.g, gs::SYSCALL, gs::RUNNING),
            GO_SYSCALL_END_BLOCKED => go(ctx.g, gs::SYSCALL, gs::RUNNABLE),
            GO_STATUS | GO_STATUS_STACK => {
                let packed = self.arg(2);
                let from = (packed >> 32) as u8;
                let to = gs::from_status(packed & 0xffff_ffff);
                let mut s = go(self.arg(0) as i64, from, to);
                s.stack = self.stack();
                s
            }
            _ => return None,
        })
    }

    pub fn sync(&self) -> Option<Sync<'a>> {
        if self.raw().base.typ != ev::SYNC_EVENT {
            return None;
        }
        let mut s = Sync {
            n: self.arg(0),
            clock_snapshot: None,
            experimental_batches: &EMPTY_BATCHES,
        };
        if let Some(t) = self.tables() {
            s.experimental_batches = &t.exp_batches;
            if t.has_clock_snapshot {
                s.clock_snapshot = Some(ClockSnapshot {
                    trace: super::freq_mul(t.freq, t.snap_time),
                    mono: t.snap_mono,
                    wall_sec: t.snap_sec,
                    wall_nsec: t.snap_nsec,
                });
            }
        }
        Some(s)
    }

    pub fn experimental(&self) -> Option<Experimental> {
        let typ = self.raw().base.typ;
        if kind_of(typ) != EventKind::Experimental {
            return None;
        }
        let spec = &SPECS[typ as usize];
        Some(Experimental {
            name: spec.name,
            experiment: super::spec::experiment_name(spec.experiment).unwrap_or("Unknown"),
            arg_names: spec.args.get(1..).unwrap_or(&[]),
            args: self.raw().base.args,
        })
    }
}
