//! The net/http client family: one CLIENT span per request attempt a Go
//! program sends with `net/http` (HTTP/1 and HTTP/2), following
//! OpenTelemetry's HTTP client conventions, as a child of the span open on
//! the calling goroutine.
//!
//! - [`plan`]: the function, probe sites and struct offsets of one binary,
//!   and attaching the programs (`agent-ebpf/src/http_client.rs`).
//! - [`records`]: decoding the records (`agent_common::http_client`).
//! - [`spans`]: pairing entries and returns per goroutine into spans.

pub mod plan;
pub mod records;
pub mod spans;

pub use plan::{HttpClientPlan, PlanError};
use records::ClientRecord;
pub use spans::{ErrorTypes, HttpClientSpanBuilder};

use crate::{
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    instrument::Category,
    probes::{KernelStats, LinkHandle, Probes},
    target::{Target, maps::load_bias},
};

/// The family's name.
pub const NAME: &str = "net/http client";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: plan::PROBES,
    plan: plan_family,
    categories: &[Category::Http],
};

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    // Not Go: the server family says so already.
    let Ok(bin) = ctx.go else {
        return Plan::Nothing;
    };
    match plan::plan(bin, ctx.options.entry_site) {
        Ok(plan) => {
            for missing in &plan.missing {
                log::debug!("net/http client: optional field unavailable: {missing}");
            }
            let mapped_at = if bin.is_pie() {
                load_bias(ctx.target.pid, &ctx.target.exe_in_target)
            } else {
                None
            };
            Plan::Ready(Box::new(HttpClient {
                plan,
                builder: HttpClientSpanBuilder::new(
                    ctx.clock,
                    ctx.options.max_open_spans,
                    u64::try_from(ctx.options.span_ttl.as_nanos()).unwrap_or(u64::MAX),
                    ctx.options.url_query,
                    ErrorTypes::new(ctx.target.exe_path.clone(), mapped_at),
                )
                .with_sampler(ctx.options.sampler),
                links: Vec::new(),
            }))
        }
        // A program that sends no requests with net/http: nothing to say.
        Err(PlanError::NoFunction { .. }) => Plan::Nothing,
        Err(err) => ctx.cannot_trace("net/http client calls", &err, log::Level::Warn),
    }
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct HttpClient {
    plan: HttpClientPlan,
    builder: HttpClientSpanBuilder,
    links: Vec<LinkHandle>,
}

impl Family for HttpClient {
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

    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError> {
        self.links = plan::attach(probes, target, target.slot, &self.plan)?;
        log::info!(
            "net/http client: {} probes (start at {:#x}: {}, {} returns)",
            self.links.len(),
            self.plan.start.address,
            self.plan.start.instruction,
            self.plan.returns.len(),
        );
        Ok(())
    }

    #[inline]
    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        let g = &mut *cx.goroutines;
        match records::decode(bytes)? {
            ClientRecord::Start(start) => self.builder.on_start(g, start, cx.spans),
            ClientRecord::End(end) => self.builder.on_end(g, end, cx.spans),
            ClientRecord::Ids(ids) => self.builder.on_ids(g, ids),
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

    fn sampled_out(&self) -> u64 {
        self.builder.sampled_out()
    }

    fn counters(&self, kernel: &KernelStats, out: &mut Vec<Counter>) {
        let pairing = self.builder.stats();
        out.extend([
            Counter::loss(
                "http_client_calls_lost",
                "client calls lost to a full ring buffer",
                " spans",
                kernel.lost(agent_common::http_client::KIND_HTTP_CLIENT_START),
            ),
            Counter::loss(
                "http_client_unmatched_ends",
                "client returns without start",
                "",
                pairing.unmatched_ends,
            ),
            Counter::incomplete(
                "http_client_expired",
                "client calls expired",
                pairing.expired,
            ),
            Counter::incomplete(
                "http_client_evicted",
                "client calls evicted",
                pairing.evicted,
            ),
            Counter::incomplete(
                "http_client_replaced",
                "client calls replaced",
                pairing.replaced,
            ),
            Counter::incomplete(
                "http_client_open_at_stop",
                "client calls open at stop",
                pairing.open_at_stop,
            ),
            Counter::count("http_client_after_stop", pairing.after_stop),
            Counter::count("http_client_unparented", self.builder.unparented()),
        ]);
    }
}
