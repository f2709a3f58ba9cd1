//! The database/sql family: one CLIENT span per query, exec, prepare,
//! begin, commit or rollback a Go program runs through `database/sql`,
//! whatever the driver (the probes sit in database/sql itself), following
//! OpenTelemetry's database client conventions.
//!
//! - [`plan`]: the functions, probe sites and struct offsets of one binary,
//!   and attaching the programs (`agent-ebpf/src/sql.rs`).
//! - [`records`]: decoding the records (`agent_common::sql`).
//! - [`sanitize`]: the SQL text without its literals; the operation and
//!   collection it names.
//! - [`types`]: the driver's and the error's Go type names.
//! - [`spans`]: pairing starts and ends per goroutine into spans.
//!
//! Not reported: `db.response.returned_rows` (known only once the program
//! has iterated the rows) and `db.response.affected_rows` (the
//! `driver.Result` answers it through a method of the driver, which a probe
//! cannot call; reading it would need each driver's result layout).

pub mod plan;
pub mod records;
pub mod sanitize;
pub mod spans;
pub mod types;

pub use plan::{PlanError, SqlPlan};
use records::SqlRecord;
pub use spans::{SqlSpanBuilder, SqlSpanOptions};

use crate::{
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    probes::{KernelStats, LinkHandle, Probes},
    target::{Target, maps},
};

/// The family's name.
pub const NAME: &str = "database/sql";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: plan::PROBES,
    plan: plan_family,
};

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    let Ok(bin) = ctx.go else {
        // Not a Go binary: the net/http family says why.
        return Plan::Nothing;
    };
    match plan::plan(bin) {
        Ok(plan) => {
            for missing in &plan.missing {
                log::debug!("database/sql: unavailable: {missing}");
            }
            let types = types::ItabNames::from_binary(bin);
            let link_base = bin.is_pie().then(|| bin.link_base());
            Plan::Ready(Box::new(Sql {
                plan,
                builder: SqlSpanBuilder::new(
                    ctx.clock,
                    ctx.options.max_open_spans,
                    u64::try_from(ctx.options.span_ttl.as_nanos()).unwrap_or(u64::MAX),
                    SqlSpanOptions {
                        keep_literals: ctx.options.sql_keep_literals,
                    },
                    types.clone(),
                ),
                types: Some(types),
                link_base,
                links: Vec::new(),
            }))
        }
        // A program that does not use database/sql: nothing worth saying.
        Err(PlanError::NoFunction { .. }) => Plan::Nothing,
        Err(err) => ctx.cannot_trace("database/sql calls", &err, log::Level::Warn),
    }
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct Sql {
    plan: SqlPlan,
    builder: SqlSpanBuilder,
    /// The itab names at link-time addresses, until attach knows the bias.
    types: Option<types::ItabNames>,
    /// A PIE's link-time address of its first page (None: not PIE).
    link_base: Option<u64>,
    links: Vec<LinkHandle>,
}

impl Family for Sql {
    fn name(&self) -> &'static str {
        NAME
    }

    fn kinds(&self) -> &'static [u32] {
        records::KINDS
    }

    fn wants_goroutine_parents(&self) -> bool {
        true
    }

    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError> {
        // A PIE's bias: where its first page is mapped, less where it was
        // linked.
        let bias = match self.link_base {
            Some(base) => maps::load_bias(target.pid, &target.exe_in_target)
                .map_or(0, |start| start.wrapping_sub(base)),
            None => 0,
        };
        if let Some(types) = self.types.take() {
            if types.is_empty() {
                log::info!(
                    "database/sql: no itab symbols (stripped binary?): drivers are reported as other_sql, error types as _OTHER"
                );
            }
            self.builder.set_types(types.with_bias(bias));
        }
        self.links = plan::attach(probes, target, 0, &self.plan)?;
        let names: Vec<&str> = self
            .plan
            .functions
            .iter()
            .map(|f| f.name.trim_start_matches("database/sql."))
            .collect();
        log::info!(
            "database/sql: {} probes on {}",
            self.links.len(),
            names.join(", ")
        );
        Ok(())
    }

    #[inline]
    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        let g = &mut *cx.goroutines;
        match records::decode(bytes)? {
            SqlRecord::Start(start) => self.builder.on_start(g, start, cx.spans),
            SqlRecord::End(end) => self.builder.on_end(g, end, cx.spans),
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

    fn counters(&self, _kernel: &KernelStats, out: &mut Vec<Counter>) {
        let pairing = self.builder.pairing();
        let stats = self.builder.stats();
        out.extend([
            Counter::count("sql_calls", pairing.started),
            Counter::count("sql_unparented", stats.unparented),
            Counter::count("sql_tx_done", stats.tx_done),
            Counter::count("sql_duplicates", stats.duplicates),
            Counter::loss(
                "sql_unmatched_ends",
                "SQL ends without start",
                "",
                pairing.unmatched_ends,
            ),
            Counter::incomplete("sql_expired", "SQL expired", pairing.expired),
            Counter::incomplete("sql_evicted", "SQL evicted", pairing.evicted),
            Counter::incomplete("sql_replaced", "SQL replaced", pairing.replaced),
            Counter::incomplete("sql_open_at_stop", "SQL open at stop", pairing.open_at_stop),
            Counter::count("sql_after_stop", pairing.after_stop),
        ]);
    }
}
