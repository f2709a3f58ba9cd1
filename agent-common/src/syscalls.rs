//! The system-call family: one record per system call a traced process
//! made, from the `sys_enter`/`sys_exit` raw tracepoints, one per process
//! a traced process forked (with `--follow-forks`) and one per traced
//! process that exited.

use crate::event::EventHeader;

/// `EventHeader::kind` of a [`SyscallRecord`].
pub const KIND_SYSCALL: u32 = 41;
/// `EventHeader::kind` of a [`ProcessForked`].
pub const KIND_PROCESS_FORKED: u32 = 42;
/// `EventHeader::kind` of a [`ProcessExited`].
pub const KIND_PROCESS_EXITED: u32 = 43;
/// `EventHeader::kind` of a [`SyscallSourceRecord`] (`--source`).
pub const KIND_SYSCALL_SOURCE: u32 = 45;

/// User frames a [`SyscallSourceRecord`] holds at most (frame-pointer walk).
pub const SOURCE_FRAMES: usize = 16;
/// Words of the user stack from the stack pointer a [`SyscallSourceRecord`]
/// copies: enough to unwind a libc wrapper's frame with its CFI when the
/// wrapper keeps no frame pointer.
pub const SOURCE_STACK_WORDS: usize = 16;

/// System-call numbers the bitmap of [`SyscallConfig`] covers (x86_64 has
/// fewer than 512).
pub const MAX_SYSCALLS: u32 = 512;

/// The call never returned (`exit`, `exit_group`, or an `execve` that
/// replaced the thread): [`SyscallRecord::ret`] means nothing, and
/// `header.ktime_ns` is the entry time.
pub const FLAG_NO_RETURN: u32 = 1;

/// Traced processes kept at most (`SYSCALL_TRACED`).
pub const MAX_PROCESSES: u32 = 4096;
/// Threads in a system call at once, at most (`SYSCALL_IN_FLIGHT`).
pub const MAX_IN_FLIGHT: u32 = 16384;

/// A system call one thread of a traced process made and (unless
/// [`FLAG_NO_RETURN`]) returned from. `header.tid` is the thread,
/// `header.ktime_ns` the return; `header.goid` the goroutine that made it
/// (Go targets), else 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRecord {
    pub header: EventHeader,
    /// The process (thread group) the thread belongs to.
    pub tgid: u32,
    /// The system call's number.
    pub nr: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// When it entered the kernel (`bpf_ktime_get_ns`).
    pub enter_ns: u64,
    /// Its return value (a negative errno on failure).
    pub ret: i64,
    /// Its first argument (the status of `exit_group`).
    pub arg0: u64,
}

const _: () = assert!(core::mem::size_of::<SyscallRecord>() == 72);

/// A [`SyscallRecord`] with the user stack it was made from (`--source`):
/// the kernel's frame-pointer walk (`bpf_get_stack` with
/// `BPF_F_USER_STACK`) and the top of the stack, for the agent to
/// symbolize.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallSourceRecord {
    pub call: SyscallRecord,
    /// Valid entries of `frames` (0: the walk failed).
    pub frames_len: u32,
    /// Valid words of `stack` (0: the copy failed).
    pub stack_len: u32,
    /// The user stack pointer at the call.
    pub sp: u64,
    /// `frames[0]` is the user instruction pointer at the call, the others
    /// return addresses, innermost first.
    pub frames: [u64; SOURCE_FRAMES],
    /// The words at `sp`, `sp + 8`, ...
    pub stack: [u64; SOURCE_STACK_WORDS],
}

const _: () = assert!(core::mem::size_of::<SyscallSourceRecord>() == 344);

/// A traced process forked a new process (not a thread), seen on the child's
/// return from the fork. `header.tid` is the child, `header.ktime_ns` that
/// return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessForked {
    pub header: EventHeader,
    /// The parent process (thread group).
    pub parent_tgid: u32,
    /// The child process.
    pub child_tgid: u32,
}

const _: () = assert!(core::mem::size_of::<ProcessForked>() == 40);

/// The main thread of a traced process exited (`sched_process_exit`):
/// `header.tid` is the process, `header.ktime_ns` its exit. The process is
/// no longer traced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessExited {
    pub header: EventHeader,
}

const _: () = assert!(core::mem::size_of::<ProcessExited>() == 32);

/// [`SyscallConfig::outputs`]: a [`SyscallRecord`] per returned call (for
/// spans). `exit`/`exit_group` records and the process records are always
/// written.
pub const OUT_RECORDS: u32 = 1;
/// [`SyscallConfig::outputs`]: per-CPU [`SyscallTotals`] by number
/// (`SYSCALL_TOTALS`, for `-c`): exact however fast the calls come.
pub const OUT_TOTALS: u32 = 2;

/// Returned calls of one system call on one CPU (`SYSCALL_TOTALS`, indexed
/// by number).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallTotals {
    pub calls: u64,
    /// Calls that returned `-4095..=-1`.
    pub errors: u64,
    /// Time inside them, summed.
    pub total_ns: u64,
}

const _: () = assert!(core::mem::size_of::<SyscallTotals>() == 24);

/// The one entry of the `SYSCALL_CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallConfig {
    /// Non-zero once the agent has filled it.
    pub active: u32,
    /// Non-zero: processes a traced process forks are traced too.
    pub follow_forks: u32,
    /// `OUT_*` bits: what each returned call becomes.
    pub outputs: u32,
    /// Non-zero (`--source`): records carry the user stack
    /// ([`SyscallSourceRecord`]).
    pub source: u32,
    /// `runtime.g.goid` of a Go target, whose goroutine (R14 at the
    /// `SYSCALL` of `internal/runtime/syscall/linux.Syscall6`) goes into
    /// `header.goid`; 0: not Go, no goroutine read.
    pub g_goid: u64,
    /// Bit `nr` set: system call `nr` is traced.
    pub wanted: [u64; (MAX_SYSCALLS / 64) as usize],
}

const _: () = assert!(core::mem::size_of::<SyscallConfig>() == 88);

impl SyscallConfig {
    /// Whether system call `nr` is traced.
    #[inline(always)]
    pub fn wants(&self, nr: u64) -> bool {
        let word = (nr / 64) as usize;
        match self.wanted.get(word) {
            Some(bits) => bits & (1 << (nr % 64)) != 0,
            None => false,
        }
    }
}

/// The state of a thread inside a traced system call
/// (`SYSCALL_IN_FLIGHT`, by thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub enter_ns: u64,
    pub arg0: u64,
    /// The goroutine that made the call (0: unknown, or not Go).
    pub goid: u64,
    pub nr: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<InFlight>() == 32);
