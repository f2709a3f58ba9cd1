//! The `google.golang.org/grpc` family: a SERVER span per call a Go
//! program serves with grpc-go (unary and streaming), a CLIENT span per
//! call it makes (`Invoke`, and `NewStream` for the creation of a stream),
//! following OpenTelemetry's RPC conventions.
//!
//! - [`plan`]: the functions, probe sites and struct offsets of one binary,
//!   and attaching the programs (`agent-ebpf/src/grpc.rs`).
//! - [`records`]: decoding the records (`agent_common::grpc`).
//! - [`spans`]: pairing starts and ends per goroutine into spans.
//!
//! CLIENT spans are children of the span open on the calling goroutine
//! (the net/http SERVER span of a handler that makes the call); SERVER
//! spans register on their goroutine, so that spans of the handler's work
//! nest under them. A SERVER span continues the caller's trace when the
//! call's metadata carries a valid `traceparent` (read from the HEADERS
//! frame the server decoded); otherwise it starts a trace.

pub mod plan;
pub mod records;
pub mod spans;

use records::GrpcRecord;
pub use spans::GrpcSpanBuilder;

use crate::{
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    instrument::Category,
    probes::{KernelStats, LinkHandle, Probes},
    target::Target,
};

/// The family's name.
pub const NAME: &str = "grpc";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: plan::PROBES,
    plan: plan_family,
    categories: &[Category::Grpc],
};

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    let Ok(bin) = ctx.go else {
        // The Go families say why a process is not a Go program.
        return Plan::Nothing;
    };
    match plan::plan(bin) {
        Ok(None) => Plan::Nothing,
        Ok(Some(plan)) => {
            for missing in &plan.missing {
                log::debug!("grpc: {missing}");
            }
            Plan::Ready(Box::new(Grpc {
                builder: GrpcSpanBuilder::new(
                    ctx.clock,
                    ctx.options.max_open_spans,
                    u64::try_from(ctx.options.span_ttl.as_nanos()).unwrap_or(u64::MAX),
                )
                .with_sampler(ctx.options.sampler),
                plan,
                links: Vec::new(),
            }))
        }
        Err(err) => ctx.cannot_trace(
            &format!("grpc {}", plan::module_version(bin).unwrap_or_default()),
            &err,
            log::Level::Warn,
        ),
    }
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct Grpc {
    plan: plan::GrpcPlan,
    builder: GrpcSpanBuilder,
    links: Vec<LinkHandle>,
}

impl Family for Grpc {
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
        let single_stepped = self.plan.sites.iter().filter(|s| !s.site.emulated).count();
        log::info!(
            "grpc {}: {} probes ({}{}{}), {} single-stepped",
            self.plan.version,
            self.links.len(),
            if self.plan.server { "server" } else { "" },
            if self.plan.server && self.plan.client {
                " and "
            } else {
                ""
            },
            if self.plan.client { "client" } else { "" },
            single_stepped,
        );
        Ok(())
    }

    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        let g = &mut *cx.goroutines;
        match records::decode(bytes)? {
            GrpcRecord::ServerStart(rec) => self.builder.on_server_start(g, rec, cx.spans),
            GrpcRecord::ServerStatus(rec) => self.builder.on_server_status(rec),
            GrpcRecord::ServerEnd(rec) => self.builder.on_server_end(g, rec, cx.spans),
            GrpcRecord::ClientStart(rec) => self.builder.on_client_start(g, rec, cx.spans),
            GrpcRecord::ClientEnd(rec) => self.builder.on_client_end(rec, cx.spans),
            GrpcRecord::Traceparent(rec) => self.builder.on_traceparent(rec),
            GrpcRecord::Tracestate(rec) => self.builder.on_tracestate(rec),
            GrpcRecord::ServerIds(rec) => self.builder.on_server_ids(g, rec),
            GrpcRecord::ClientIds(rec) => self.builder.on_client_ids(rec),
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
        let stats = self.builder.stats();
        out.extend([
            Counter::count("grpc_server_calls", stats.server.completed),
            Counter::count("grpc_client_calls", stats.client.completed),
            Counter::loss(
                "grpc_unmatched_ends",
                "grpc ends without start",
                "",
                stats.server.unmatched_ends + stats.client.unmatched_ends,
            ),
            Counter::loss(
                "grpc_calls_lost",
                "grpc calls lost to a full ring buffer",
                " spans",
                kernel.lost(agent_common::grpc::KIND_GRPC_SERVER_START)
                    + kernel.lost(agent_common::grpc::KIND_GRPC_CLIENT_START),
            ),
            Counter::incomplete(
                "grpc_expired",
                "grpc expired",
                stats.server.expired + stats.client.expired,
            ),
            Counter::incomplete(
                "grpc_evicted",
                "grpc evicted",
                stats.server.evicted + stats.client.evicted,
            ),
            Counter::incomplete(
                "grpc_replaced",
                "grpc replaced",
                stats.server.replaced + stats.client.replaced,
            ),
            Counter::incomplete(
                "grpc_open_at_stop",
                "grpc open at stop",
                stats.server.open_at_stop + stats.client.open_at_stop,
            ),
            Counter::count(
                "grpc_after_stop",
                stats.server.after_stop + stats.client.after_stop,
            ),
            Counter::count("grpc_unparented", stats.unparented),
            Counter::count("grpc_traceparents", stats.traceparents),
            Counter::count("grpc_duplicate_starts", stats.duplicates),
        ]);
    }
}
