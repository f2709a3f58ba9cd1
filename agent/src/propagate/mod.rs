//! Trace context into outgoing requests (`--propagate`): every plaintext
//! HTTP/1.1 request, every gRPC call over plaintext HTTP/2 and every h2c
//! request a traced Go program sends while a server span (HTTP or gRPC) is
//! open on the sending goroutine (or inherited by it) carries a
//! `traceparent` naming its CLIENT span, so that the callee's spans join
//! the caller's trace, and the `tracestate` the server span received with
//! its caller's `traceparent`. Nothing in the
//! target's memory is written (kernel lockdown refuses that): the header
//! line, or the HPACK field, goes into the bytes on their way to the socket
//! (`agent-ebpf/src/propagate.rs` and `propagate_h2.rs` say how).
//!
//! - [`plan`]: the probe on `net/http.(*Request).write`, and grpc-go's
//!   `createHeaderFields` and `writeHeader`;
//! - [`cgroup`]: the cgroup2 hierarchy the sockops program is attached to,
//!   and the kernel's lockdown mode for the start line.
//!
//! The server and client families export the ids the kernel made (their
//! `SpanIds` records); this family attaches the socket programs, switches
//! the probes on for the target and counts what was sent and what was not.

pub mod cgroup;
pub mod plan;

use agent_common::{
    propagate::{
        PropagateConfig, STAT_COUNT, STAT_H2_CONTINUATION, STAT_H2_INJECTED, STAT_H2_NO_ROOM,
        STAT_H2C_INJECTED, STAT_INJECTED, STAT_MAP_FULL, STAT_NOT_SEEN, STAT_PRESENT,
        STAT_PUSH_FAILED, STAT_TLS, STAT_TOO_LONG, STAT_TRACESTATE, STAT_TRACESTATE_SKIPPED,
        STAT_UNKNOWN_LAYOUT,
    },
    target::OFFSET_ABSENT,
};

use crate::{
    binary::error_chain,
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
    // It carries the context of HTTP and gRPC spans into HTTP requests and
    // gRPC calls.
    categories: &[Category::Http, Category::Grpc],
    plan: plan_family,
};

const CONFIG_MAP: &str = "PROPAGATE_CONFIG";
const PIDS_MAP: &str = "PROPAGATE_PIDS";
const SOCKETS_MAP: &str = "PROPAGATE_SOCKETS";
const STATS_MAP: &str = "PROPAGATE_STATS";
const H2_TAIL_MAP: &str = "H2_TAIL";

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    if !ctx.options.propagate {
        return Plan::Nothing;
    }
    let Ok(bin) = ctx.go else {
        return Plan::Nothing;
    };
    let plan = plan::plan(bin);
    if !plan.any() {
        let grpc = match &plan.grpc {
            Some(Err(why)) => format!("; gRPC: {why}"),
            _ => String::new(),
        };
        return Plan::Absent {
            why: format!(
                "--propagate: PID {} sends no trace context: {}{grpc}",
                ctx.target.pid,
                plan.http1.as_ref().err().map_or("", String::as_str),
            ),
            level: log::Level::Warn,
        };
    }
    Plan::Ready(Box::new(Propagation {
        plan,
        sampler: ctx.options.sampler,
        links: Vec::new(),
        counts: Counts::default(),
        attached: false,
    }))
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
    plan: plan::PropagatePlan,
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

/// The start line: what carries context on this host (and for this
/// program: `http1`, `grpc`), and why not the rest.
pub fn start_line(
    cgroup: &std::path::Path,
    lockdown: Option<&str>,
    http1: Result<(), &str>,
    grpc: Result<(), &str>,
    h2c: Result<(), &str>,
) -> String {
    let tls = match lockdown {
        Some(mode) if mode != "none" => format!(
            "TLS: no (kernel lockdown={mode} refuses memory writes, and a socket program sees TLS bytes encrypted)"
        ),
        Some(_) => "TLS: no (memory writes are not done; a socket program sees TLS bytes encrypted)"
            .to_owned(),
        None => "TLS: no (lockdown unknown; memory writes are not done; a socket program sees TLS bytes encrypted)"
            .to_owned(),
    };
    let http1 = match http1 {
        Ok(()) => {
            "plaintext HTTP/1.1 requests (traceparent, and the caller's tracestate)".to_owned()
        }
        Err(why) => format!("HTTP/1.1: no ({why})"),
    };
    let grpc = match grpc {
        Ok(()) => "gRPC calls over plaintext HTTP/2 (traceparent, and the caller's tracestate, appended to the HEADERS frame)".to_owned(),
        Err(why) => format!("gRPC: no ({why})"),
    };
    let h2c = match h2c {
        Ok(()) => "net/http HTTP/2 requests without TLS (h2c; traceparent, and the caller's tracestate, appended to the HEADERS frame)".to_owned(),
        Err(why) => format!("h2c: no ({why})"),
    };
    format!(
        "propagation: trace context goes into {http1}; {grpc}; {h2c} (sk_msg, sockops on {}); {tls}",
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
        // The HTTP/2 part chains to it for the caller's `tracestate`.
        probes.set_tail_call(H2_TAIL_MAP, 0, "propagate_h2_state")?;
        probes.attach_sk_msg(NAME, "propagate_msg", SOCKETS_MAP)?;
        let mut sites = Vec::new();
        if let Ok(site) = &self.plan.http1 {
            sites.push(("propagate_request_write", site.file_offset, 0));
            log::debug!(
                "{NAME}: request writes at {:#x}: {}",
                site.address,
                site.instruction
            );
        }
        let grpc = match &self.plan.grpc {
            Some(Ok(g)) => Some(g),
            _ => None,
        };
        if let Some(g) = grpc {
            sites.push(("propagate_grpc_fields_start", g.fields_start.file_offset, 1));
            for ret in &g.fields_ends {
                sites.push(("propagate_grpc_fields_end", ret.file_offset, 2));
            }
            sites.push(("propagate_grpc_write_header", g.write_header.file_offset, 3));
        }
        if let Ok(h) = &self.plan.h2c {
            sites.push(("propagate_h2c_encode", h.encode.file_offset, 4));
            sites.push(("propagate_h2c_field", h.field.file_offset, 5));
            sites.push(("propagate_h2c_write", h.write.file_offset, 6));
        }
        let (parent_based, sample_bound) = self.sampler.kernel_rule();
        probes.set_array(
            CONFIG_MAP,
            0,
            PropagateConfig {
                active: 1,
                parent_based: u32::from(parent_based),
                sample_bound,
                g_goid: self.plan.g_goid.unwrap_or(OFFSET_ABSENT),
                client_local_addr: grpc.map_or(OFFSET_ABSENT, |g| g.local_addr),
                client_remote_addr: grpc.map_or(OFFSET_ABSENT, |g| g.remote_addr),
                tcp_addr_port: grpc.map_or(OFFSET_ABSENT, |g| g.tcp_port),
            },
        )?;
        self.links = probes.attach_sites(NAME, &target.exe_path, target.pid, 0, sites)?;
        self.attached = true;
        let grpc_state = match &self.plan.grpc {
            Some(Ok(_)) => Ok(()),
            Some(Err(why)) => Err(why.as_str()),
            None => Err("the program makes no grpc-go client calls"),
        };
        log::info!(
            "{}",
            start_line(
                &root,
                cgroup::lockdown().as_deref(),
                self.plan.http1.as_ref().map(|_| ()).map_err(String::as_str),
                grpc_state,
                self.plan.h2c.as_ref().map(|_| ()).map_err(String::as_str),
            )
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
            Counter::count("propagated_grpc", c.get(STAT_H2_INJECTED)),
            Counter::count("propagated_h2c", c.get(STAT_H2C_INJECTED)),
            Counter::count(
                "propagation_skipped_h2_continuation",
                c.get(STAT_H2_CONTINUATION),
            ),
            Counter::count("propagation_skipped_h2_no_room", c.get(STAT_H2_NO_ROOM)),
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
            "trace context sent in {} HTTP/1.1 requests, {} gRPC calls and {} h2c requests ({} with the caller's tracestate, {} tracestates not sent); left untouched: {} HTTP/2 requests whose headers needed CONTINUATION frames, {} whose HEADERS frame had no room, {} over TLS, {} with a traceparent already, {} with headers too long to check, {} refused by the kernel, {} not seen on a traced connection, {} of unknown layout, {} contexts not kept (map full)",
            c.get(STAT_INJECTED),
            c.get(STAT_H2_INJECTED),
            c.get(STAT_H2C_INJECTED),
            c.get(STAT_TRACESTATE),
            c.get(STAT_TRACESTATE_SKIPPED),
            c.get(STAT_H2_CONTINUATION),
            c.get(STAT_H2_NO_ROOM),
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
