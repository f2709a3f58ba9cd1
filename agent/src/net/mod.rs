//! The connection set-up family: one span per `crypto/tls` handshake
//! (client and server), per lookup through Go's resolver and per
//! `net.Dialer` dial a Go program makes, each a child of the span open on
//! its goroutine (inside an HTTP client call, its CLIENT span: net/http
//! dials and handshakes on goroutines the call's goroutine creates, which
//! inherit it). No USDT in the program: uprobes on the Go functions.
//!
//! Its categories are `tls` (handshakes), `dns` (lookups) and `net`
//! (dials), for `--instrument`: [`CATEGORIES`] says which operation is in
//! which.
//!
//! - [`plan`]: the functions, probe sites and struct offsets of one binary,
//!   and attaching the programs (`agent-ebpf/src/net.rs`).
//! - [`records`]: decoding the records (`agent_common::net`).
//! - [`spans`]: pairing entries and returns per goroutine into spans;
//!   [`tls`], [`dns`] and [`dial`]: each operation's name and attributes.

pub mod dial;
pub mod dns;
pub mod plan;
pub mod records;
pub mod spans;
pub mod tls;

pub use plan::{NetPlan, PlanError};
use records::NetRecord;
pub use spans::NetSpanBuilder;

use crate::{
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    http_client::ErrorTypes,
    instrument::Category,
    probes::{KernelStats, LinkHandle, Probes},
    target::{Target, maps::load_bias},
};

/// The family's name.
pub const NAME: &str = "net";

/// The `--instrument` categories of this family, by probed function.
pub const CATEGORIES: &[(Category, &str)] = &[
    (Category::Tls, plan::TLS_CLIENT),
    (Category::Tls, plan::TLS_SERVER),
    (Category::Dns, plan::DNS),
    (Category::Net, plan::DIAL),
];

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: plan::PROBES,
    categories: &[Category::Tls, Category::Dns, Category::Net],
    plan: plan_family,
};

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    // Not Go: the server family says so already.
    let Ok(bin) = ctx.go else {
        return Plan::Nothing;
    };
    let mut plan = match plan::plan(bin, ctx.options.entry_site) {
        Ok(plan) => plan,
        Err(err) => return ctx.cannot_trace("TLS, DNS and dials", &err, log::Level::Warn),
    };
    for why in &plan.off {
        log::warn!("net: {why}");
    }
    // Operations whose category is off attach nothing.
    let categories = ctx.options.categories;
    plan.operations.retain(|op| {
        CATEGORIES
            .iter()
            .filter(|(_, function)| *function == op.function)
            .all(|(category, _)| categories.contains(*category))
    });
    if plan.operations.is_empty() {
        // A program without crypto/tls or net: nothing to say.
        return Plan::Nothing;
    }
    let mapped_at = if bin.is_pie() {
        load_bias(ctx.target.pid, &ctx.target.exe_in_target)
    } else {
        None
    };
    Plan::Ready(Box::new(Net {
        plan,
        builder: NetSpanBuilder::new(
            ctx.clock,
            ctx.options.max_open_spans,
            u64::try_from(ctx.options.span_ttl.as_nanos()).unwrap_or(u64::MAX),
            ErrorTypes::new(ctx.target.exe_path.clone(), mapped_at),
        )
        .with_sampler(ctx.options.sampler),
        links: Vec::new(),
    }))
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct Net {
    plan: NetPlan,
    builder: NetSpanBuilder,
    links: Vec<LinkHandle>,
}

impl Family for Net {
    fn name(&self) -> &'static str {
        NAME
    }

    // Config arrays by target slot; kernel maps keyed by process or slot.
    fn shares_object(&self) -> bool {
        true
    }

    fn kinds(&self) -> &'static [u32] {
        records::KINDS
    }

    fn wants_goroutine_parents(&self) -> bool {
        true
    }

    fn sampled_out(&self) -> u64 {
        self.builder.sampled_out()
    }

    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError> {
        self.links = plan::attach(probes, target, target.slot, &self.plan)?;
        let functions: Vec<String> = self
            .plan
            .operations
            .iter()
            .map(|op| {
                format!(
                    "{} (start at {:#x}: {}, {} returns)",
                    op.function,
                    op.start.address,
                    op.start.instruction,
                    op.returns.len()
                )
            })
            .collect();
        log::info!(
            "net: {} probes on {}",
            self.links.len(),
            functions.join(", ")
        );
        Ok(())
    }

    #[inline]
    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        let g = &mut *cx.goroutines;
        match records::decode(bytes)? {
            NetRecord::Start(op, start) => self.builder.on_start(g, op, start, cx.spans),
            NetRecord::End(op, end) => self.builder.on_end(g, op, end, cx.spans),
        }
        Ok(())
    }

    fn housekeeping(&mut self, _probes: &mut Probes, now_ns: u64, cx: &mut RecordContext<'_>) {
        self.builder.expire(cx.goroutines, now_ns, cx.spans);
    }

    fn stop_at(&mut self, at_ns: u64) {
        self.builder.stop_at(at_ns);
    }

    fn stop(&mut self, probes: &mut Probes) {
        probes.release(NAME, &mut self.links);
    }

    fn finish(&mut self, now_ns: u64, cx: &mut RecordContext<'_>) {
        self.builder.finish(cx.goroutines, now_ns, cx.spans);
    }

    fn counters(&self, kernel: &KernelStats, out: &mut Vec<Counter>) {
        use agent_common::net::{KIND_DIAL_START, KIND_DNS_START, KIND_TLS_START};
        let pairing = self.builder.pairing();
        let stats = self.builder.stats();
        let starts_lost = [KIND_TLS_START, KIND_DNS_START, KIND_DIAL_START]
            .into_iter()
            .map(|kind| kernel.lost(kind))
            .sum();
        out.extend([
            // Records, not spans: the kernel cannot tell a lookup of an IP
            // literal (no span) from a lookup.
            Counter::loss(
                "net_starts_lost",
                "TLS, DNS and dial starts lost to a full ring buffer",
                " records",
                starts_lost,
            ),
            Counter::loss(
                "net_unmatched_ends",
                "TLS, DNS and dial returns without start",
                "",
                pairing.unmatched_ends,
            ),
            Counter::incomplete("net_expired", "TLS, DNS and dials expired", pairing.expired),
            Counter::incomplete("net_evicted", "TLS, DNS and dials evicted", pairing.evicted),
            Counter::incomplete(
                "net_replaced",
                "TLS, DNS and dials replaced",
                pairing.replaced,
            ),
            Counter::incomplete(
                "net_open_at_stop",
                "TLS, DNS and dials open at stop",
                pairing.open_at_stop,
            ),
            Counter::count("net_after_stop", pairing.after_stop),
            Counter::count("net_unparented", stats.unparented),
            Counter::count("net_ip_literal_lookups", stats.literals),
            Counter::count("net_tls_state_unread", stats.tls_state_unread),
        ]);
    }
}
