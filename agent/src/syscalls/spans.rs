//! The spans of the system-call family: `process: NAME` (SERVER) for each
//! traced process, exported when it ends, and `syscall: NAME` (INTERNAL)
//! for each call, under its process's span. A forked process's span is a
//! child of its parent's; all of them share the root process's trace.

use std::{collections::HashMap, sync::Arc, time::Duration};

use agent_common::syscalls::{FLAG_NO_RETURN, ProcessForked, SyscallRecord};
use opentelemetry::{
    InstrumentationScope,
    trace::{SpanId, SpanKind, TraceId},
};

use super::{filter, summary::is_error};
use crate::{
    clock::WallClock,
    export::{EncodedSpan, encode_scope, wire::SpanWriter},
    family::SpanSink,
    spans::{Goroutines, Sampler, ids::IdGenerator, sampling},
};

/// `execve` on x86_64: a process that returns from it runs a new command.
const NR_EXECVE: u32 = 59;
/// `exit` and `exit_group`: their argument is the exit status.
const NR_EXIT: u32 = 60;
const NR_EXIT_GROUP: u32 = 231;

/// The command line of process `pid`, from `/proc/N/cmdline`.
pub fn read_cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then_some(args)
}

/// A traced process whose span is open.
#[derive(Debug, Clone)]
struct Process {
    span_id: SpanId,
    parent: Option<SpanId>,
    start_ns: u64,
    command: Vec<String>,
    /// The status `exit`/`exit_group` was called with.
    exit_status: Option<i32>,
}

impl Process {
    fn name(&self) -> &str {
        let first = self.command.first().map_or("?", String::as_str);
        first.rsplit('/').next().unwrap_or(first)
    }
}

/// How a process ended, as the span tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It exited (an `exit_group` seen, or its parent's wait status).
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// Its main thread ended without an `exit` call: a fatal signal.
    NoExitCall,
    /// Still running when the agent stopped.
    StillRunning,
}

/// The process spans open and the ids they give their calls.
#[derive(Debug)]
pub struct ProcessSpans {
    clock: WallClock,
    ids: IdGenerator,
    scope: Arc<[u8]>,
    trace_id: TraceId,
    min_duration_ns: u64,
    /// Whether spans are exported at all (not with `-c` alone).
    enabled: bool,
    root: u32,
    /// When the traced process's main thread exited, once it has.
    root_ended: Option<u64>,
    open: HashMap<u32, Process>,
    syscall_spans: u64,
    below_min: u64,
    still_running: u64,
    /// The W3C trace flags of the processes' trace (the sampler's decision
    /// for it).
    flags: u8,
    /// Spans not exported: their trace was sampled out.
    sampled_out: u64,
}

impl ProcessSpans {
    pub fn new(clock: WallClock, min_duration: Duration, enabled: bool) -> Self {
        let mut ids = IdGenerator::default();
        Self {
            clock,
            trace_id: ids.trace_id(),
            ids,
            scope: encode_scope(
                &InstrumentationScope::builder("agent/syscalls")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            ),
            min_duration_ns: u64::try_from(min_duration.as_nanos()).unwrap_or(u64::MAX),
            enabled,
            root: 0,
            root_ended: None,
            open: HashMap::new(),
            syscall_spans: 0,
            below_min: 0,
            still_running: 0,
            flags: Sampler::default().root_flags(TraceId::INVALID, None),
            sampled_out: 0,
        }
    }

    /// The builder with `sampler` deciding for the processes' trace
    /// (default: `parentbased_always_on`); a call made under a request
    /// follows the request's trace.
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.flags = sampler.root_flags(self.trace_id, None);
        self
    }

    /// Spans not exported because their trace was sampled out.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out
    }

    /// Opens the span of the traced process `pid`, at `now_ns`.
    pub fn start_root(&mut self, pid: u32, command: &[String], now_ns: u64) {
        self.root = pid;
        let span_id = self.ids.span_id();
        self.open.insert(
            pid,
            Process {
                span_id,
                parent: None,
                start_ns: now_ns,
                command: command.to_vec(),
                exit_status: None,
            },
        );
    }

    /// Spans made for calls.
    pub fn syscall_spans(&self) -> u64 {
        self.syscall_spans
    }

    /// Process spans exported while their process still ran.
    pub fn still_running(&self) -> u64 {
        self.still_running
    }

    /// Calls counted that were shorter than `--syscall-min-duration`.
    pub fn below_min(&self) -> u64 {
        self.below_min
    }

    /// A forked process: its span opens under its parent's.
    pub fn forked(&mut self, rec: &ProcessForked) {
        let (parent, command) = match self.open.get(&rec.parent_tgid) {
            Some(p) => (Some(p.span_id), p.command.clone()),
            None => (self.open.get(&self.root).map(|p| p.span_id), Vec::new()),
        };
        let span_id = self.ids.span_id();
        self.open.insert(
            rec.child_tgid,
            Process {
                span_id,
                parent,
                start_ns: rec.header.ktime_ns,
                command,
                exit_status: None,
            },
        );
    }

    /// One call: a span when `span` (wanted and traced) and long enough.
    /// A call made on a goroutine with a span open (`goroutines`) is that
    /// span's child, in its trace.
    pub fn syscall(
        &mut self,
        rec: &SyscallRecord,
        caller: Option<&super::source::Caller>,
        span: bool,
        goroutines: &mut Goroutines,
        out: SpanSink<'_>,
    ) {
        let returned = rec.flags & FLAG_NO_RETURN == 0;
        if let Some(process) = self.open.get_mut(&rec.tgid) {
            if !returned && (rec.nr == NR_EXIT_GROUP || rec.nr == NR_EXIT) {
                // The low byte is what the parent's wait sees.
                process.exit_status = Some((rec.arg0 & 0xff) as i32);
            }
            if returned
                && rec.nr == NR_EXECVE
                && rec.ret == 0
                && let Some(command) = read_cmdline(rec.tgid)
            {
                process.command = command;
            }
        }
        if !span {
            return;
        }
        let duration = rec.header.ktime_ns.saturating_sub(rec.enter_ns);
        if returned && duration < self.min_duration_ns {
            self.below_min += 1;
            return;
        }
        let goid = rec.header.goid;
        let request = if goid != 0 && goroutines.enabled() {
            goroutines.parent((rec.header.target, goid), rec.enter_ns)
        } else {
            None
        };
        let (trace_id, parent, flags) = match request {
            Some(request) => (
                request.trace_id,
                Some(request.span_id),
                Sampler::child_flags(request.flags),
            ),
            None => (
                self.trace_id,
                self.open
                    .get(&rec.tgid)
                    .or_else(|| self.open.get(&self.root))
                    .map(|p| p.span_id),
                self.flags,
            ),
        };
        if !sampling::is_sampled(flags) {
            self.sampled_out += 1;
            return;
        }
        let flags = u32::from(flags);
        let name = filter::name(rec.nr);
        let mut bytes = crate::export::span_buffer(256);
        let mut w = SpanWriter::new(&mut bytes);
        w.ids(trace_id, self.ids.span_id(), parent)
            .name(&["syscall: ", &name])
            .kind(&SpanKind::Internal)
            .times(
                self.clock.to_unix_ns(rec.enter_ns),
                self.clock.to_unix_ns(rec.header.ktime_ns.max(rec.enter_ns)),
            )
            .attr_str("syscall.name", &name);
        if returned {
            w.attr_int("syscall.result", rec.ret)
                .attr_int("syscall.duration_us", (duration / 1000) as i64);
        }
        w.attr_int("thread.id", i64::from(rec.header.tid))
            .attr_int("process.pid", i64::from(rec.tgid));
        if goid != 0 {
            w.attr_int("goroutine.id", i64::try_from(goid).unwrap_or(i64::MAX));
        }
        if let Some(caller) = caller {
            w.attr_str("code.file.path", &caller.file)
                .attr_int("code.line.number", i64::from(caller.line))
                .attr_str("code.function.name", &caller.function);
        }
        if returned && is_error(rec.ret) {
            let errno = errno_name(-rec.ret);
            w.attr_str("syscall.errno", &errno).status_error(&errno);
        }
        // A request's call keeps the request's trace flags.
        w.flags(flags);
        self.syscall_spans += 1;
        out(EncodedSpan {
            scope: Arc::clone(&self.scope),
            bytes,
        });
    }

    /// Process `pid` ended at `ktime_ns`. The traced process's own span
    /// waits for [`Self::finish`], where its exit status is known.
    pub fn exited(&mut self, pid: u32, ktime_ns: u64, out: SpanSink<'_>) {
        if pid == self.root {
            self.root_ended = Some(ktime_ns);
            return;
        }
        if let Some(process) = self.open.remove(&pid) {
            let ending = process
                .exit_status
                .map_or(Ending::NoExitCall, Ending::Exited);
            self.export(pid, &process, ktime_ns, ending, out);
        }
    }

    /// Exports every span still open: the traced process's with how it
    /// ended (its wait status when the agent is its parent), the others as
    /// still running.
    pub fn finish(&mut self, now_ns: u64, out: SpanSink<'_>) {
        let mut open: Vec<(u32, Process)> = self.open.drain().collect();
        // Children before their parents, the traced process last.
        open.sort_by_key(|(pid, p)| (*pid == self.root, std::cmp::Reverse(p.start_ns)));
        for (pid, process) in open {
            let mut end_ns = now_ns;
            let ending = if pid == self.root {
                let exited = self.root_ended.is_some()
                    || !std::path::Path::new(&format!("/proc/{pid}")).exists();
                end_ns = self.root_ended.unwrap_or(now_ns);
                match wait_status(pid) {
                    Some(ending) => ending,
                    None if exited => process
                        .exit_status
                        .map_or(Ending::NoExitCall, Ending::Exited),
                    None => Ending::StillRunning,
                }
            } else {
                Ending::StillRunning
            };
            self.export(pid, &process, end_ns, ending, out);
        }
    }

    fn export(
        &mut self,
        pid: u32,
        process: &Process,
        end_ns: u64,
        ending: Ending,
        out: SpanSink<'_>,
    ) {
        if !self.enabled {
            return;
        }
        if !sampling::is_sampled(self.flags) {
            if matches!(ending, Ending::StillRunning) {
                self.still_running += 1;
            }
            self.sampled_out += 1;
            return;
        }
        let name = process.name().to_owned();
        let mut bytes = crate::export::span_buffer(256);
        let mut w = SpanWriter::new(&mut bytes);
        w.ids(self.trace_id, process.span_id, process.parent)
            .name(&["process: ", &name])
            .kind(&SpanKind::Server)
            .times(
                self.clock.to_unix_ns(process.start_ns),
                self.clock.to_unix_ns(end_ns.max(process.start_ns)),
            )
            .attr_int("process.pid", i64::from(pid));
        if let Some(command) = process.command.first() {
            w.attr_str("process.command", command);
            let args: Vec<&str> = process.command.iter().map(String::as_str).collect();
            w.attr_str_array("process.command_args", &args);
        }
        match ending {
            Ending::Exited(code) => {
                w.attr_int("process.exit_code", i64::from(code));
                if code != 0 {
                    w.status_error(&format!("exit code {code}"));
                }
            }
            Ending::Signaled(signal) => {
                w.status_error(&format!("killed by signal {}", signal_name(signal)));
            }
            Ending::NoExitCall => {
                w.status_error("ended without an exit call (a fatal signal)");
            }
            Ending::StillRunning => {
                self.still_running += 1;
                w.attr_str("agent.span.incomplete", "still running");
            }
        }
        w.flags(u32::from(self.flags));
        out(EncodedSpan {
            scope: Arc::clone(&self.scope),
            bytes,
        });
    }
}

/// The exit status of `pid` when it is the agent's own child and has
/// ended, without reaping it (its parent still waits for it).
fn wait_status(pid: u32) -> Option<Ending> {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(
        Id::Pid(nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?)),
        flags,
    ) {
        Ok(WaitStatus::Exited(_, code)) => Some(Ending::Exited(code)),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(Ending::Signaled(signal as i32)),
        _ => None,
    }
}

/// `ENOENT` for 2; `E{n}` for a number without a name.
pub fn errno_name(errno: i64) -> String {
    let name = i32::try_from(errno)
        .ok()
        .map(|e| format!("{:?}", nix::errno::Errno::from_raw(e)));
    match name {
        Some(name) if name.starts_with('E') => name,
        _ => match errno {
            512 => "ERESTARTSYS".to_owned(),
            513 => "ERESTARTNOINTR".to_owned(),
            514 => "ERESTARTNOHAND".to_owned(),
            516 => "ERESTART_RESTARTBLOCK".to_owned(),
            _ => format!("E{errno}"),
        },
    }
}

/// `SIGKILL` for 9.
fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| signal.to_string(), |s| s.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_signal_names() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(13), "EACCES");
        assert_eq!(errno_name(512), "ERESTARTSYS");
        assert_eq!(errno_name(4000), "E4000");
        assert_eq!(signal_name(9), "SIGKILL");
    }
}
