//! The net/http server family: one SERVER span per request a Go program
//! serves with `net/http` (HTTP/1 and HTTP/2), following OpenTelemetry's
//! HTTP server conventions and continuing an incoming W3C trace context.
//!
//! - [`plan`]: the functions, probe sites and struct offsets of one binary,
//!   and attaching the programs (`agent-ebpf/src/http_server.rs`).
//! - [`records`]: decoding the records (`agent_common::http`).
//! - [`routes`]: the router probes (gin, chi, gorilla/mux, echo) whose
//!   routes name the spans.
//! - [`spans`]: pairing starts and ends per response object into spans.

pub mod plan;
pub mod records;
pub mod routes;
pub mod spans;

use agent_common::target::MAX_TARGETS;

pub use plan::{HttpServerPlan, PlanError, SitePolicy};
use records::HttpRecord;
pub use spans::{HttpSpanBuilder, SpanNaming};

use crate::{
    binary::{GoVersion, error_chain},
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    instrument::Category,
    probes::{KernelStats, LinkHandle, Probes},
    target::Target,
};

/// The family's name.
pub const NAME: &str = "net/http";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: plan::PROBES,
    plan: plan_family,
    categories: &[Category::Http],
};

/// The oldest Go with the register-based calling convention the probes read.
pub const MIN_GO: GoVersion = GoVersion {
    major: 1,
    minor: 17,
    patch: 0,
};

const _: () = assert!(MAX_TARGETS > 0);

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    let absent = |why: String| Plan::Absent {
        why,
        level: log::Level::Info,
    };
    let bin = match ctx.go {
        Ok(bin) => bin,
        Err(err) => return absent(error_chain(err)),
    };
    match plan::plan(bin, ctx.options.entry_site) {
        Ok(plan) => {
            for missing in &plan.missing {
                log::debug!("optional field unavailable: {missing}");
            }
            log::debug!("struct offsets: {:?}", plan.offsets);
            let routes = routes::plan(bin, plan.offsets.g_goid);
            for why in &routes.unavailable {
                log::info!("net/http: router routes unavailable, spans named by method: {why}");
            }
            Plan::Ready(Box::new(HttpServer {
                plan,
                routes,
                builder: HttpSpanBuilder::new(
                    ctx.clock,
                    ctx.options.max_open_spans,
                    u64::try_from(ctx.options.span_ttl.as_nanos()).unwrap_or(u64::MAX),
                )
                .with_query_policy(ctx.options.url_query)
                .with_naming(ctx.options.span_naming)
                .with_sampler(ctx.options.sampler),
                links: Vec::new(),
                traceparents: 0,
            }))
        }
        Err(err) => ctx.cannot_trace("net/http server requests", &err, log::Level::Info),
    }
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct HttpServer {
    plan: HttpServerPlan,
    routes: routes::RoutesPlan,
    builder: HttpSpanBuilder,
    links: Vec<LinkHandle>,
    /// Requests that continued a caller's trace (a valid `traceparent`).
    traceparents: u64,
}

impl Family for HttpServer {
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

    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError> {
        self.links = plan::attach(probes, target, target.slot, &self.plan)?;
        match routes::attach(probes, target, target.slot, &self.routes) {
            Ok(links) => self.links.extend(links),
            Err(err) => {
                probes.release(NAME, &mut self.links);
                return Err(err.into());
            }
        }
        for s in &self.routes.sites {
            log::info!(
                "net/http: {} routes at {:#x}: {}",
                s.router,
                s.site.address,
                s.site.instruction
            );
        }
        let plan = &self.plan;
        log::info!(
            "net/http: {} probes (start at {:#x}: {}, end at {:#x}: {}, HTTP/2 end {})",
            self.links.len(),
            plan.start.address,
            plan.start.instruction,
            plan.end.address,
            plan.end.instruction,
            plan.h2_end
                .as_ref()
                .map_or("not attached".to_owned(), |s| format!(
                    "at {:#x}: {}",
                    s.address, s.instruction
                )),
        );
        Ok(())
    }

    #[inline]
    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        let g = &mut *cx.goroutines;
        match records::decode(bytes)? {
            HttpRecord::Start(start) => self.builder.on_start(g, start, cx.spans),
            HttpRecord::End(end) => self.builder.on_end(g, end, cx.spans),
            HttpRecord::Traceparent(rec) => {
                if self.builder.on_traceparent(g, rec) {
                    self.traceparents += 1;
                }
            }
            HttpRecord::Tracestate(rec) => self.builder.on_tracestate(g, rec),
            HttpRecord::Route(rec) => self.builder.on_route(rec),
            HttpRecord::Ids(rec) => self.builder.on_ids(g, rec),
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
                "unmatched_ends",
                "ends without start",
                "",
                pairing.unmatched_ends,
            ),
            Counter::loss(
                "requests_lost",
                "requests lost to a full ring buffer",
                " spans",
                kernel.lost(agent_common::http::KIND_HTTP_SERVER_START),
            ),
            Counter::incomplete("expired", "expired", pairing.expired),
            Counter::incomplete("evicted", "evicted", pairing.evicted),
            Counter::incomplete("replaced", "replaced", pairing.replaced),
            Counter::incomplete("open_at_stop", "open at stop", pairing.open_at_stop),
            Counter::count("after_stop", pairing.after_stop),
            Counter::count("http_traceparents", self.traceparents),
            Counter::count("http_routes_unmatched", self.builder.routes_unmatched()),
            Counter::count("http_headers_unsearched", kernel.headers_incomplete),
        ]);
    }
}
