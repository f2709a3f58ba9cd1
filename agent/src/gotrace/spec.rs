//! The wire-format event table of the Go 1.22+ execution trace
//! (a port of `internal/trace/tracev2/events.go` and `version/version.go`).

/// Event type bytes, as Go's `tracev2.EventType`.
pub mod ev {
    pub const NONE: u8 = 0;
    pub const EVENT_BATCH: u8 = 1;
    pub const STACKS: u8 = 2;
    pub const STACK: u8 = 3;
    pub const STRINGS: u8 = 4;
    pub const STRING: u8 = 5;
    pub const CPU_SAMPLES: u8 = 6;
    pub const CPU_SAMPLE: u8 = 7;
    pub const FREQUENCY: u8 = 8;
    pub const PROCS_CHANGE: u8 = 9;
    pub const PROC_START: u8 = 10;
    pub const PROC_STOP: u8 = 11;
    pub const PROC_STEAL: u8 = 12;
    pub const PROC_STATUS: u8 = 13;
    pub const GO_CREATE: u8 = 14;
    pub const GO_CREATE_SYSCALL: u8 = 15;
    pub const GO_START: u8 = 16;
    pub const GO_DESTROY: u8 = 17;
    pub const GO_DESTROY_SYSCALL: u8 = 18;
    pub const GO_STOP: u8 = 19;
    pub const GO_BLOCK: u8 = 20;
    pub const GO_UNBLOCK: u8 = 21;
    pub const GO_SYSCALL_BEGIN: u8 = 22;
    pub const GO_SYSCALL_END: u8 = 23;
    pub const GO_SYSCALL_END_BLOCKED: u8 = 24;
    pub const GO_STATUS: u8 = 25;
    pub const STW_BEGIN: u8 = 26;
    pub const STW_END: u8 = 27;
    pub const GC_ACTIVE: u8 = 28;
    pub const GC_BEGIN: u8 = 29;
    pub const GC_END: u8 = 30;
    pub const GC_SWEEP_ACTIVE: u8 = 31;
    pub const GC_SWEEP_BEGIN: u8 = 32;
    pub const GC_SWEEP_END: u8 = 33;
    pub const GC_MARK_ASSIST_ACTIVE: u8 = 34;
    pub const GC_MARK_ASSIST_BEGIN: u8 = 35;
    pub const GC_MARK_ASSIST_END: u8 = 36;
    pub const HEAP_ALLOC: u8 = 37;
    pub const HEAP_GOAL: u8 = 38;
    pub const GO_LABEL: u8 = 39;
    pub const USER_TASK_BEGIN: u8 = 40;
    pub const USER_TASK_END: u8 = 41;
    pub const USER_REGION_BEGIN: u8 = 42;
    pub const USER_REGION_END: u8 = 43;
    pub const USER_LOG: u8 = 44;
    pub const GO_SWITCH: u8 = 45;
    pub const GO_SWITCH_DESTROY: u8 = 46;
    pub const GO_CREATE_BLOCKED: u8 = 47;
    pub const GO_STATUS_STACK: u8 = 48;
    pub const EXPERIMENTAL_BATCH: u8 = 49;
    pub const SYNC: u8 = 50;
    pub const CLOCK_SNAPSHOT: u8 = 51;
    pub const END_OF_GENERATION: u8 = 52;
    pub const NUM_EVENTS: u8 = 53;

    pub const MAX_EVENT: u8 = 127;
    pub const SPAN: u8 = 128;
    pub const SPAN_ALLOC: u8 = 129;
    pub const SPAN_FREE: u8 = 130;
    pub const HEAP_OBJECT: u8 = 131;
    pub const HEAP_OBJECT_ALLOC: u8 = 132;
    pub const HEAP_OBJECT_FREE: u8 = 133;
    pub const GOROUTINE_STACK: u8 = 134;
    pub const GOROUTINE_STACK_ALLOC: u8 = 135;
    pub const GOROUTINE_STACK_FREE: u8 = 136;
    pub const MAX_EXPERIMENTAL_EVENT: u8 = 137;

    /// Not a wire type: the reader's synthesised Sync event (Go's `evSync`).
    pub const SYNC_EVENT: u8 = 255;
}

/// Experiment IDs.
pub const NO_EXPERIMENT: u8 = 0;
pub const EXPERIMENT_ALLOC_FREE: u8 = 1;

/// Name of an experiment, as Go's `tracev2.Experiments()`.
pub fn experiment_name(id: u8) -> Option<&'static str> {
    match id {
        0 => Some("None"),
        1 => Some("AllocFree"),
        _ => None,
    }
}

/// Largest batch the runtime writes (bytes).
pub const MAX_BATCH_SIZE: u64 = 64 << 10;
/// Largest number of frames in one stack.
pub const MAX_FRAMES_PER_STACK: u64 = 128;
/// Largest string or other trailer data (bytes).
pub const MAX_EVENT_TRAILER_DATA_SIZE: u64 = 1 << 10;

/// A specification of one wire event type.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub args: &'static [&'static str],
    /// Indices into `args` (counting the timestamp) of string IDs.
    pub string_ids: &'static [usize],
    /// Indices into `args` (counting the timestamp) of stack IDs; the first is
    /// the main stack of the event's execution context.
    pub stack_ids: &'static [usize],
    pub start_ev: u8,
    pub is_timed: bool,
    pub has_data: bool,
    pub is_stack: bool,
    pub experiment: u8,
}

const EMPTY: Spec = Spec {
    name: "",
    args: &[],
    string_ids: &[],
    stack_ids: &[],
    start_ev: 0,
    is_timed: false,
    has_data: false,
    is_stack: false,
    experiment: 0,
};

const fn timed(name: &'static str, args: &'static [&'static str]) -> Spec {
    Spec {
        name,
        args,
        is_timed: true,
        ..EMPTY
    }
}

const fn structural(name: &'static str, args: &'static [&'static str]) -> Spec {
    Spec {
        name,
        args,
        ..EMPTY
    }
}

const fn stacks(mut s: Spec, ids: &'static [usize]) -> Spec {
    s.stack_ids = ids;
    s
}

const fn strings(mut s: Spec, ids: &'static [usize]) -> Spec {
    s.string_ids = ids;
    s
}

const fn start(mut s: Spec, ev: u8) -> Spec {
    s.start_ev = ev;
    s
}

const fn exp(mut s: Spec) -> Spec {
    s.experiment = EXPERIMENT_ALLOC_FREE;
    s
}

const fn build() -> [Spec; 256] {
    use ev::*;
    let mut t = [EMPTY; 256];
    t[EVENT_BATCH as usize] = structural("EventBatch", &["gen", "m", "time", "size"]);
    t[STACKS as usize] = structural("Stacks", &[]);
    let mut s = structural("Stack", &["id", "nframes"]);
    s.is_stack = true;
    t[STACK as usize] = s;
    t[STRINGS as usize] = structural("Strings", &[]);
    let mut s = structural("String", &["id"]);
    s.has_data = true;
    t[STRING as usize] = s;
    t[CPU_SAMPLES as usize] = structural("CPUSamples", &[]);
    t[CPU_SAMPLE as usize] = stacks(
        structural("CPUSample", &["time", "m", "p", "g", "stack"]),
        &[4],
    );
    t[FREQUENCY as usize] = structural("Frequency", &["freq"]);
    let mut s = structural("ExperimentalBatch", &["exp", "gen", "m", "time"]);
    s.has_data = true;
    t[EXPERIMENTAL_BATCH as usize] = s;
    t[SYNC as usize] = structural("Sync", &[]);
    t[END_OF_GENERATION as usize] = structural("EndOfGeneration", &[]);

    t[PROCS_CHANGE as usize] = stacks(timed("ProcsChange", &["dt", "procs_value", "stack"]), &[2]);
    t[PROC_START as usize] = timed("ProcStart", &["dt", "p", "p_seq"]);
    t[PROC_STOP as usize] = timed("ProcStop", &["dt"]);
    t[PROC_STEAL as usize] = timed("ProcSteal", &["dt", "p", "p_seq", "m"]);
    t[PROC_STATUS as usize] = timed("ProcStatus", &["dt", "p", "pstatus"]);
    t[GO_CREATE as usize] = stacks(
        timed("GoCreate", &["dt", "new_g", "new_stack", "stack"]),
        &[3, 2],
    );
    t[GO_CREATE_SYSCALL as usize] = timed("GoCreateSyscall", &["dt", "new_g"]);
    t[GO_START as usize] = timed("GoStart", &["dt", "g", "g_seq"]);
    t[GO_DESTROY as usize] = timed("GoDestroy", &["dt"]);
    t[GO_DESTROY_SYSCALL as usize] = timed("GoDestroySyscall", &["dt"]);
    t[GO_STOP as usize] = strings(
        stacks(timed("GoStop", &["dt", "reason_string", "stack"]), &[2]),
        &[1],
    );
    t[GO_BLOCK as usize] = strings(
        stacks(timed("GoBlock", &["dt", "reason_string", "stack"]), &[2]),
        &[1],
    );
    t[GO_UNBLOCK as usize] = stacks(timed("GoUnblock", &["dt", "g", "g_seq", "stack"]), &[3]);
    t[GO_SYSCALL_BEGIN as usize] = stacks(timed("GoSyscallBegin", &["dt", "p_seq", "stack"]), &[2]);
    t[GO_SYSCALL_END as usize] = start(timed("GoSyscallEnd", &["dt"]), GO_SYSCALL_BEGIN);
    t[GO_SYSCALL_END_BLOCKED as usize] =
        start(timed("GoSyscallEndBlocked", &["dt"]), GO_SYSCALL_BEGIN);
    t[GO_STATUS as usize] = timed("GoStatus", &["dt", "g", "m", "gstatus"]);
    t[STW_BEGIN as usize] = strings(
        stacks(timed("STWBegin", &["dt", "kind_string", "stack"]), &[2]),
        &[1],
    );
    t[STW_END as usize] = start(timed("STWEnd", &["dt"]), STW_BEGIN);
    t[GC_ACTIVE as usize] = start(timed("GCActive", &["dt", "gc_seq"]), GC_BEGIN);
    t[GC_BEGIN as usize] = stacks(timed("GCBegin", &["dt", "gc_seq", "stack"]), &[2]);
    t[GC_END as usize] = start(timed("GCEnd", &["dt", "gc_seq"]), GC_BEGIN);
    t[GC_SWEEP_ACTIVE as usize] = start(timed("GCSweepActive", &["dt", "p"]), GC_SWEEP_BEGIN);
    t[GC_SWEEP_BEGIN as usize] = stacks(timed("GCSweepBegin", &["dt", "stack"]), &[1]);
    t[GC_SWEEP_END as usize] = start(
        timed("GCSweepEnd", &["dt", "swept_value", "reclaimed_value"]),
        GC_SWEEP_BEGIN,
    );
    t[GC_MARK_ASSIST_ACTIVE as usize] = start(
        timed("GCMarkAssistActive", &["dt", "g"]),
        GC_MARK_ASSIST_BEGIN,
    );
    t[GC_MARK_ASSIST_BEGIN as usize] = stacks(timed("GCMarkAssistBegin", &["dt", "stack"]), &[1]);
    t[GC_MARK_ASSIST_END as usize] = start(timed("GCMarkAssistEnd", &["dt"]), GC_MARK_ASSIST_BEGIN);
    t[HEAP_ALLOC as usize] = timed("HeapAlloc", &["dt", "heapalloc_value"]);
    t[HEAP_GOAL as usize] = timed("HeapGoal", &["dt", "heapgoal_value"]);
    t[GO_LABEL as usize] = strings(timed("GoLabel", &["dt", "label_string"]), &[1]);
    t[USER_TASK_BEGIN as usize] = strings(
        stacks(
            timed(
                "UserTaskBegin",
                &["dt", "task", "parent_task", "name_string", "stack"],
            ),
            &[4],
        ),
        &[3],
    );
    t[USER_TASK_END as usize] = stacks(timed("UserTaskEnd", &["dt", "task", "stack"]), &[2]);
    t[USER_REGION_BEGIN as usize] = strings(
        stacks(
            timed("UserRegionBegin", &["dt", "task", "name_string", "stack"]),
            &[3],
        ),
        &[2],
    );
    t[USER_REGION_END as usize] = start(
        strings(
            stacks(
                timed("UserRegionEnd", &["dt", "task", "name_string", "stack"]),
                &[3],
            ),
            &[2],
        ),
        USER_REGION_BEGIN,
    );
    t[USER_LOG as usize] = strings(
        stacks(
            timed(
                "UserLog",
                &["dt", "task", "key_string", "value_string", "stack"],
            ),
            &[4],
        ),
        &[2, 3],
    );
    t[GO_SWITCH as usize] = timed("GoSwitch", &["dt", "g", "g_seq"]);
    t[GO_SWITCH_DESTROY as usize] = timed("GoSwitchDestroy", &["dt", "g", "g_seq"]);
    t[GO_CREATE_BLOCKED as usize] = stacks(
        timed("GoCreateBlocked", &["dt", "new_g", "new_stack", "stack"]),
        &[3, 2],
    );
    t[GO_STATUS_STACK as usize] = stacks(
        timed("GoStatusStack", &["dt", "g", "m", "gstatus", "stack"]),
        &[4],
    );
    t[CLOCK_SNAPSHOT as usize] = timed("ClockSnapshot", &["dt", "mono", "sec", "nsec"]);

    t[SPAN as usize] = exp(timed("Span", &["dt", "id", "npages_value", "kindclass"]));
    t[SPAN_ALLOC as usize] = exp(timed(
        "SpanAlloc",
        &["dt", "id", "npages_value", "kindclass"],
    ));
    t[SPAN_FREE as usize] = exp(timed("SpanFree", &["dt", "id"]));
    t[HEAP_OBJECT as usize] = exp(timed("HeapObject", &["dt", "id", "type"]));
    t[HEAP_OBJECT_ALLOC as usize] = exp(timed("HeapObjectAlloc", &["dt", "id", "type"]));
    t[HEAP_OBJECT_FREE as usize] = exp(timed("HeapObjectFree", &["dt", "id"]));
    t[GOROUTINE_STACK as usize] = exp(timed("GoroutineStack", &["dt", "id", "order"]));
    t[GOROUTINE_STACK_ALLOC as usize] = exp(timed("GoroutineStackAlloc", &["dt", "id", "order"]));
    t[GOROUTINE_STACK_FREE as usize] = exp(timed("GoroutineStackFree", &["dt", "id"]));
    t
}

/// All specs, indexed by event type byte. Entries past Go's table are empty.
pub static SPECS: [Spec; 256] = build();

/// Number of entries in Go's `tracev2.Specs()` (event types at or past this are
/// invalid on the wire).
pub const NUM_SPECS: usize = ev::MAX_EXPERIMENTAL_EVENT as usize;

/// A trace format version (the `N` of `go 1.N trace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32);

impl Version {
    pub const GO122: Version = Version(22);
    pub const GO123: Version = Version(23);
    pub const GO125: Version = Version(25);
    pub const GO126: Version = Version(26);

    /// Whether this is one of the Go 1.22+ wire versions this decoder reads.
    pub fn is_supported(self) -> bool {
        matches!(self.0, 22 | 23 | 25 | 26)
    }

    /// Whether this is a pre-1.22 (v1 format) version Go knows.
    pub fn is_v1(self) -> bool {
        matches!(self.0, 11 | 19 | 21)
    }

    /// Number of event types defined for this version (`len(v.Specs())`).
    pub fn num_specs(self) -> usize {
        match self.0 {
            22 => ev::USER_LOG as usize + 1,
            23 => ev::EXPERIMENTAL_BATCH as usize + 1,
            25 => ev::CLOCK_SNAPSHOT as usize + 1,
            26 => NUM_SPECS,
            _ => 0,
        }
    }

    /// The spec for `typ` if this version defines it.
    pub fn spec(self, typ: u8) -> Option<&'static Spec> {
        let s = &SPECS[typ as usize];
        if (typ as usize) < self.num_specs() && !s.name.is_empty() {
            Some(s)
        } else {
            None
        }
    }
}

/// Goroutine status on the wire (`tracev2.GoStatus`).
pub mod gostatus {
    pub const BAD: u64 = 0;
    pub const RUNNABLE: u64 = 1;
    pub const RUNNING: u64 = 2;
    pub const SYSCALL: u64 = 3;
    pub const WAITING: u64 = 4;
}

/// Proc status on the wire (`tracev2.ProcStatus`).
pub mod procstatus {
    pub const BAD: u64 = 0;
    pub const RUNNING: u64 = 1;
    pub const IDLE: u64 = 2;
    pub const SYSCALL: u64 = 3;
    pub const SYSCALL_ABANDONED: u64 = 4;
}

pub fn go_status_name(s: u64) -> &'static str {
    match s {
        gostatus::RUNNABLE => "Runnable",
        gostatus::RUNNING => "Running",
        gostatus::SYSCALL => "Syscall",
        gostatus::WAITING => "Waiting",
        _ => "Bad",
    }
}

pub fn proc_status_name(s: u64) -> &'static str {
    match s {
        procstatus::RUNNING => "Running",
        procstatus::IDLE => "Idle",
        procstatus::SYSCALL => "Syscall",
        _ => "Bad",
    }
}
