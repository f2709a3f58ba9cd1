//! The system-call family (`--syscalls`, `-c`): every system call of the
//! traced process (and, with `--follow-forks`, of the processes it forks),
//! from the `sys_enter`/`sys_exit` raw tracepoints
//! (`agent-ebpf/src/syscalls.rs`), filtered in the kernel by process and by
//! system call. Any program: it needs nothing from the binary.
//!
//! - [`filter`]: strace's `-e trace=` forms, over [`table`] (x86_64 names
//!   and classes);
//! - [`records`]: decoding its records in place;
//! - [`spans`]: a `process: NAME` span per process, a `syscall: NAME` span
//!   per call under it;
//! - [`summary`]: the `strace -c` table;
//! - [`source`]: the source line of each call's user-space caller
//!   (`--source`), from the user stack the kernel took.

pub mod filter;
pub mod records;
pub mod source;
pub mod spans;
pub mod summary;
mod table;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use agent_common::syscalls::{MAX_SYSCALLS, OUT_RECORDS, OUT_TOTALS, SyscallConfig};

pub use filter::{FilterError, SyscallFilter};
use records::SyscallEvent;
pub use summary::Summary;

use crate::{
    clock::WallClock,
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    probes::{KernelStats, Probes},
    target::Target,
};

/// The family's name.
pub const NAME: &str = "syscalls";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: &[],
    plan: plan_family,
    categories: &[],
};

/// Where the `-c` table's `--summary-file` lines are handed back to the
/// command once the session is over.
pub type SummaryOut = Arc<Mutex<String>>;

/// What `--syscalls`, `-c` and their companions asked for.
#[derive(Clone, Debug, Default)]
pub struct SyscallOptions {
    /// The system calls traced.
    pub filter: SyscallFilter,
    /// A span per call (`--syscalls`); without, only the summary.
    pub spans: bool,
    /// Calls shorter than this are counted but make no span.
    pub min_duration: Duration,
    /// Trace the processes the target forks.
    pub follow_forks: bool,
    /// Each call's span carries its caller's source line (`--source`).
    pub source: bool,
    /// Print the `strace -c` table at exit (`-c`), and hand its lines here.
    pub summary: Option<SummaryOut>,
    /// The command line of a program the agent started (before its
    /// `execve`, `/proc/N/cmdline` still shows the agent's).
    pub command: Option<Vec<String>>,
}

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    let Some(options) = &ctx.options.syscalls else {
        return Plan::Nothing;
    };
    let pid = ctx.target.pid;
    let command = options
        .command
        .clone()
        .unwrap_or_else(|| spans::read_cmdline(pid).unwrap_or_default());
    // A Go target's calls are parented by goroutine: the goroutine id's
    // offset in `runtime.g`.
    let g_goid = ctx
        .go
        .ok()
        .and_then(|bin| bin.struct_field_offset("runtime.g", "goid").ok())
        .map_or(0, |field| field.offset);
    Plan::Ready(Box::new(Syscalls {
        g_goid,
        options: options.clone(),
        spans: spans::ProcessSpans::new(ctx.clock, options.min_duration, options.spans)
            .with_sampler(ctx.options.sampler),
        root: pid,
        command,
        summary: Summary::default(),
        symbolizer: if options.source {
            source::Symbolizer::new(executable(options.command.as_deref(), pid))
        } else {
            source::Symbolizer::default()
        },
        records: 0,
        forks: 0,
    }))
}

/// The traced program's executable: the launched command's (before its
/// `execve`, `/proc/N/exe` is still the agent's), else the process's.
fn executable(command: Option<&[String]>, pid: u32) -> Option<std::path::PathBuf> {
    let Some(first) = command.and_then(|c| c.first()) else {
        return std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    };
    if first.contains('/') {
        return Some(first.into());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(first))
            .find(|p| p.is_file())
    })
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct Syscalls {
    options: SyscallOptions,
    /// `runtime.g.goid` of a Go target; 0 when not Go.
    g_goid: u64,
    spans: spans::ProcessSpans,
    /// The traced process.
    root: u32,
    /// Its command line.
    command: Vec<String>,
    summary: Summary,
    /// Callers' source lines, cached by address.
    symbolizer: source::Symbolizer,
    /// System-call records seen.
    records: u64,
    /// Processes forked and traced.
    forks: u64,
}

impl Family for Syscalls {
    fn name(&self) -> &'static str {
        NAME
    }

    fn kinds(&self) -> &'static [u32] {
        records::KINDS
    }

    /// A Go target's call made on a goroutine with a span open (an HTTP
    /// request's) becomes that span's child.
    fn wants_goroutine_parents(&self) -> bool {
        self.g_goid != 0 && self.options.spans
    }

    fn attach(&mut self, probes: &mut Probes, _target: &Target) -> Result<(), FamilyError> {
        probes.set_array(
            "SYSCALL_CONFIG",
            0,
            SyscallConfig {
                active: 1,
                follow_forks: u32::from(self.options.follow_forks),
                outputs: if self.options.spans { OUT_RECORDS } else { 0 }
                    | if self.options.summary.is_some() {
                        OUT_TOTALS
                    } else {
                        0
                    },
                source: u32::from(self.options.source && self.options.spans),
                g_goid: self.g_goid,
                wanted: self.options.filter.bits(),
            },
        )?;
        probes.set_hash("SYSCALL_TRACED", self.root, 1u32)?;
        let mut programs = vec![
            ("syscall_enter", "sys_enter"),
            ("syscall_exit", "sys_exit"),
            ("syscall_process_exit", "sched_process_exit"),
        ];
        if self.options.follow_forks {
            programs.push(("syscall_fork", "sched_process_fork"));
        }
        for (program, tracepoint) in programs {
            if let Err(err) = probes.attach_raw_tracepoint(NAME, program, tracepoint) {
                probes.detach_family(NAME);
                return Err(err.into());
            }
        }
        let now = WallClock::monotonic_now_ns();
        self.spans.start_root(self.root, &self.command, now);
        log::info!(
            "syscalls: raw tracepoints sys_enter/sys_exit on PID {}{}{}",
            self.root,
            if self.options.follow_forks {
                " and the processes it forks"
            } else {
                ""
            },
            if self.options.spans {
                ""
            } else {
                " (summary only)"
            },
        );
        Ok(())
    }

    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        match records::decode(bytes)? {
            SyscallEvent::Syscall(rec) => {
                self.records += 1;
                let traced = self.options.filter.contains(rec.nr as usize);
                self.spans.syscall(
                    rec,
                    None,
                    self.options.spans && traced,
                    cx.goroutines,
                    cx.spans,
                );
            }
            SyscallEvent::Source(rec) => {
                self.records += 1;
                let traced = self.options.filter.contains(rec.call.nr as usize);
                let span = self.options.spans && traced;
                let caller = if span {
                    self.symbolizer.caller(rec)
                } else {
                    None
                };
                self.spans
                    .syscall(&rec.call, caller.as_deref(), span, cx.goroutines, cx.spans);
            }
            SyscallEvent::Forked(rec) => {
                self.forks += 1;
                self.spans.forked(rec);
            }
            SyscallEvent::Exited(rec) => {
                self.spans
                    .exited(rec.header.tid, rec.header.ktime_ns, cx.spans);
            }
        }
        Ok(())
    }

    /// Calls are not paired across the cut: each record is a whole call.
    fn stop_at(&mut self, _at_ns: u64) {}

    fn stop(&mut self, probes: &mut Probes) {
        probes.detach_family(NAME);
        if self.options.summary.is_some() {
            // Detached: the kernel's totals are final.
            self.read_totals(probes);
        }
    }

    fn finish(&mut self, now_ns: u64, cx: &mut RecordContext<'_>) {
        self.spans.finish(now_ns, cx.spans);
        if let Some(out) = &self.options.summary {
            eprint!("{}", self.summary.table());
            if let Ok(mut lines) = out.lock() {
                *lines = self.summary.summary_lines();
            }
        }
    }

    fn sampled_out(&self) -> u64 {
        self.spans.sampled_out()
    }

    fn counters(&self, kernel: &KernelStats, out: &mut Vec<Counter>) {
        out.push(Counter::count("syscall_records", self.records));
        out.push(Counter::loss(
            "syscalls_lost",
            "syscalls lost to a full ring buffer",
            " spans",
            kernel.lost(agent_common::syscalls::KIND_SYSCALL)
                + kernel.lost(agent_common::syscalls::KIND_SYSCALL_SOURCE),
        ));
        out.push(Counter::count("syscall_spans", self.spans.syscall_spans()));
        out.push(Counter::count(
            "syscalls_below_min_duration",
            self.spans.below_min(),
        ));
        out.push(Counter::count("processes_forked", self.forks));
        if self.options.source {
            out.push(Counter::count(
                "syscall_callers_unresolved",
                self.symbolizer.unresolved(),
            ));
        }
        out.push(Counter::incomplete(
            "syscall_processes_still_running",
            "process spans still running",
            self.spans.still_running(),
        ));
    }
}

impl Syscalls {
    /// The `-c` table from the kernel's per-CPU totals (exact: no record
    /// carries them, so none can be lost).
    fn read_totals(&mut self, probes: &Probes) {
        for nr in 0..MAX_SYSCALLS {
            match probes
                .per_cpu_values::<agent_common::syscalls::SyscallTotals>("SYSCALL_TOTALS", nr)
            {
                Ok(per_cpu) => {
                    let mut sum = summary::SyscallTotals::default();
                    for cpu in per_cpu {
                        sum.calls += cpu.calls;
                        sum.errors += cpu.errors;
                        sum.total_ns = sum.total_ns.saturating_add(cpu.total_ns);
                    }
                    if sum.calls > 0 {
                        self.summary.set(nr, sum);
                    }
                }
                Err(err) => {
                    log::warn!(
                        "syscalls: cannot read the totals: {}",
                        crate::binary::error_chain(&err)
                    );
                    return;
                }
            }
        }
    }
}
