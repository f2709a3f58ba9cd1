//! Trace context into outgoing requests (`--propagate`): every plaintext
//! HTTP/1.1 request a traced Go program sends while a server span is open on
//! the sending goroutine (or inherited by it) carries a `traceparent`
//! naming its CLIENT span, so that the callee's spans join the caller's
//! trace. Nothing in the target's memory is written (kernel lockdown
//! refuses that): the header line goes into the bytes on their way to the
//! socket (`agent-ebpf/src/propagate.rs` says how).
//!
//! - [`plan`]: the probe on `net/http.(*Request).write`;
//! - [`cgroup`]: the cgroup2 hierarchy the sockops program is attached to,
//!   and the kernel's lockdown mode for the start line.
//!
//! The server and client families export the ids the kernel made (their
//! `SpanIds` records); this family attaches the socket programs, switches
//! the probes on for the target and counts what was sent and what was not.

pub mod cgroup;
pub mod plan;

use agent_common::propagate::{
    PropagateConfig, STAT_COUNT, STAT_INJECTED, STAT_MAP_FULL, STAT_NOT_SEEN, STAT_PRESENT,
    STAT_PUSH_FAILED, STAT_TLS, STAT_TOO_LONG, STAT_TRACESTATE, STAT_TRACESTATE_SKIPPED,
    STAT_UNKNOWN_LAYOUT,
};

use crate::{
    binary::{ProbeSite, error_chain},
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    instrument::Category,
    probes::{KernelStats, LinkHandle, Probes},
    spans::Sampler,
    target::Target,
};

/// The family's name.
pub const NAME: &str = "propagation";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: plan::PROBES,
    // It carries the context of HTTP spans into HTTP requests.
    categories: &[Category::Http],
    plan: plan_family,
};

const CONFIG_MAP: &str = "PROPAGATE_CONFIG";
const PIDS_MAP: &str = "PROPAGATE_PIDS";
const SOCKETS_MAP: &str = "PROPAGATE_SOCKETS";
const STATS_MAP: &str = "PROPAGATE_STATS";

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    if !ctx.options.propagate {
        return Plan::Nothing;
    }
    let Ok(bin) = ctx.go else {
        return Plan::Nothing;
    };
    match plan::plan(bin) {
        Ok(site) => Plan::Ready(Box::new(Propagation {
            site,
            sampler: ctx.options.sampler,
            links: Vec::new(),
            counts: Counts::default(),
            attached: false,
        })),
        Err(err) => Plan::Absent {
            why: format!(
                "--propagate: PID {} sends no trace context: {}",
                ctx.target.pid,
                error_chain(&err)
            ),
            level: log::Level::Warn,
        },
    }
}

/// The kernel's counters, summed over CPUs (`STAT_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts([u64; STAT_COUNT as usize]);

impl Counts {
    fn get(&self, index: u32) -> u64 {
        self.0[index as usize]
    }
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct Propagation {
    site: ProbeSite,
    /// Whose decisions the flags sent on carry.
    sampler: Sampler,
    links: Vec<LinkHandle>,
    counts: Counts,
    attached: bool,
}

impl Propagation {
    fn read_counts(&mut self, probes: &Probes) {
        let mut counts = Counts::default();
        for index in 0..STAT_COUNT {
            match probes.per_cpu_values::<u64>(STATS_MAP, index) {
                Ok(values) => counts.0[index as usize] = values.iter().sum(),
                Err(err) => {
                    log::debug!("{NAME}: reading its counters: {}", error_chain(&err));
                    return;
                }
            }
        }
        self.counts = counts;
    }
}

/// The start line: what carries context on this host, and why not the rest.
pub fn start_line(cgroup: &std::path::Path, lockdown: Option<&str>) -> String {
    let tls = match lockdown {
        Some(mode) if mode != "none" => format!(
            "TLS: no (kernel lockdown={mode} refuses memory writes, and a socket program sees TLS bytes encrypted)"
        ),
        Some(_) => "TLS: no (memory writes are not done; a socket program sees TLS bytes encrypted)"
            .to_owned(),
        None => "TLS: no (lockdown unknown; memory writes are not done; a socket program sees TLS bytes encrypted)"
            .to_owned(),
    };
    format!(
        "propagation: trace context (traceparent, and the caller's tracestate) goes into plaintext HTTP/1.1 requests (sk_msg, sockops on {}); HTTP/2 and gRPC: no (not done yet); {tls}",
        cgroup.display()
    )
}

impl Family for Propagation {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The kernel hands a goroutine's context to the goroutines it creates
    /// on the runtime family's probe: attach it.
    fn wants_goroutine_parents(&self) -> bool {
        true
    }

    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError> {
        let (root, mounted) = cgroup::cgroup2_root()?;
        if mounted {
            log::debug!(
                "{NAME}: mounted the cgroup2 hierarchy at {}",
                root.display()
            );
        }
        probes.set_hash(PIDS_MAP, target.pid, 0u32)?;
        probes.attach_sock_ops(NAME, "propagate_sockops", &root)?;
        probes.attach_sk_msg(NAME, "propagate_msg", SOCKETS_MAP)?;
        self.links = probes.attach_sites(
            NAME,
            &target.exe_path,
            target.pid,
            0,
            [("propagate_request_write", self.site.file_offset, 0)],
        )?;
        let (parent_based, sample_bound) = self.sampler.kernel_rule();
        probes.set_array(
            CONFIG_MAP,
            0,
            PropagateConfig {
                active: 1,
                parent_based: u32::from(parent_based),
                sample_bound,
            },
        )?;
        self.attached = true;
        log::info!("{}", start_line(&root, cgroup::lockdown().as_deref()));
        log::debug!(
            "{NAME}: request writes at {:#x}: {}",
            self.site.address,
            self.site.instruction
        );
        Ok(())
    }

    fn on_record(&mut self, _bytes: &[u8], _cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        Ok(())
    }

    fn housekeeping(&mut self, probes: &mut Probes, _now_ns: u64, _cx: &mut RecordContext<'_>) {
        self.read_counts(probes);
    }

    fn stop_at(&mut self, _at_ns: u64) {}

    fn stop(&mut self, probes: &mut Probes) {
        if !self.attached {
            return;
        }
        if let Err(err) = probes.set_array(CONFIG_MAP, 0, PropagateConfig::default()) {
            log::warn!("{NAME}: switching it off: {}", error_chain(&err));
        }
        probes.release(NAME, &mut self.links);
        self.read_counts(probes);
        self.attached = false;
    }

    fn counters(&self, _kernel: &KernelStats, out: &mut Vec<Counter>) {
        let c = &self.counts;
        out.extend([
            Counter::count("propagated", c.get(STAT_INJECTED)),
            Counter::count("propagation_skipped_tls", c.get(STAT_TLS)),
            Counter::count("propagation_skipped_present", c.get(STAT_PRESENT)),
            Counter::count("propagation_skipped_headers_too_long", c.get(STAT_TOO_LONG)),
            Counter::count(
                "propagation_skipped_insert_refused",
                c.get(STAT_PUSH_FAILED),
            ),
            Counter::count("propagation_skipped_not_seen", c.get(STAT_NOT_SEEN)),
            Counter::count(
                "propagation_skipped_unknown_layout",
                c.get(STAT_UNKNOWN_LAYOUT),
            ),
            Counter::count("propagation_skipped_map_full", c.get(STAT_MAP_FULL)),
            Counter::count("propagated_tracestate", c.get(STAT_TRACESTATE)),
            Counter::count(
                "propagation_tracestate_skipped",
                c.get(STAT_TRACESTATE_SKIPPED),
            ),
        ]);
    }

    fn summary(&self) -> Option<String> {
        let c = &self.counts;
        Some(format!(
            "trace context sent in {} requests ({} with the caller's tracestate, {} tracestates not sent); left untouched: {} over TLS, {} with a traceparent already, {} with headers too long to check, {} refused by the kernel, {} not seen on a traced connection, {} of unknown layout, {} contexts not kept (map full)",
            c.get(STAT_INJECTED),
            c.get(STAT_TRACESTATE),
            c.get(STAT_TRACESTATE_SKIPPED),
            c.get(STAT_TLS),
            c.get(STAT_PRESENT),
            c.get(STAT_TOO_LONG),
            c.get(STAT_PUSH_FAILED),
            c.get(STAT_NOT_SEEN),
            c.get(STAT_UNKNOWN_LAYOUT),
            c.get(STAT_MAP_FULL),
        ))
    }
}
