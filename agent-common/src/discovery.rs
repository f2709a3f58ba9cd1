//! Process discovery: the record the `sched_process_exec` program writes
//! for every exec on the host, so that a host-mode agent finds new targets
//! as they start instead of rescanning `/proc` on a timer.

/// `EventHeader::kind` of a [`ProcessExec`]: `header.tid` is the process
/// (thread-group id, root PID namespace) that just exec'd, `header.ktime_ns`
/// when. Written by a program attached only in the agent's discovery
/// instance, never by a target's session.
pub const KIND_PROCESS_EXEC: u32 = 44;

/// `EventHeader::site` of a [`ProcessExec`] whose program was stopped
/// (SIGSTOP) because its name is in `DISCOVERY_HOLD`: the agent attaches,
/// then lets it run on (SIGCONT), so that not even a short-lived program's
/// first requests are missed.
pub const EXEC_HELD: u32 = 1;

/// `EventHeader::site` of a [`ProcessExec`] that is not an exec: the
/// process (`header.tid`) began listening on a TCP port `DISCOVERY_PORTS`
/// names (`header.goid`), reported by the program on the raw tracepoint
/// `inet_sock_set_state` (`--port N`: a server found when it listens).
pub const EXEC_LISTENING: u32 = 2;

/// Entries of `DISCOVERY_PORTS`: the TCP ports `--port` selects.
pub const MAX_PORTS: u32 = 64;

/// Entries of `DISCOVERY_HOLD`: names (`comm`, 15 bytes at most,
/// zero-padded) whose execs are held.
pub const MAX_HOLD_NAMES: u32 = 64;

/// A process exec'd (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessExec {
    pub header: crate::event::EventHeader,
}

const _: () = assert!(core::mem::size_of::<ProcessExec>() == 32);
