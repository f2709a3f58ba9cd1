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

use agent_common::sql::{START_QUERY, START_QUERY_UNREAD, SqlStart};
pub use plan::{PlanError, SqlPlan};
use records::SqlRecord;
pub use spans::{SqlSpanBuilder, SqlSpanOptions};

use crate::{
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    instrument::Category,
    probes::{KernelStats, LinkHandle, Probes},
    target::{Target, maps, memory::Memory},
};

/// The family's name.
pub const NAME: &str = "database/sql";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: plan::PROBES,
    plan: plan_family,
    categories: &[Category::Sql],
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
                )
                .with_sampler(ctx.options.sampler),
                types: Some(types),
                link_base,
                links: Vec::new(),
                pid: ctx.target.pid,
                memory: None,
                queries_read_by_agent: 0,
                queries_unread: 0,
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
    /// The target, whose memory holds SQL text the kernel could not read.
    pid: u32,
    memory: Option<Memory>,
    /// SQL texts the agent read because the kernel could not, and those
    /// it could not read either.
    queries_read_by_agent: u64,
    queries_unread: u64,
}

impl Sql {
    /// The record with its SQL text read from the target's memory, when the
    /// kernel could not read it (a uprobe cannot fault a page in: a constant
    /// on a page the program has not touched yet). The call is still
    /// running, so the text is where the record says.
    fn with_query_read(&mut self, start: &SqlStart) -> Option<SqlStart> {
        if start.flags & START_QUERY_UNREAD == 0 {
            return None;
        }
        if self.memory.is_none() {
            self.memory = Memory::open(self.pid).ok();
        }
        let read = self.memory.as_ref().and_then(|m| query_from(m, start).ok());
        match read {
            Some(rec) => {
                self.queries_read_by_agent += 1;
                Some(rec)
            }
            None => {
                self.queries_unread += 1;
                Some(*start)
            }
        }
    }
}

/// `start` with the first `QUERY_CAP` bytes of its SQL text read from
/// `memory` at `query_ptr`.
fn query_from(memory: &Memory, start: &SqlStart) -> std::io::Result<SqlStart> {
    let mut rec = *start;
    let n = (rec.query_len as usize).min(rec.query.len());
    memory.read_into(rec.query_ptr, &mut rec.query[..n])?;
    rec.flags = (rec.flags | START_QUERY) & !START_QUERY_UNREAD;
    Ok(rec)
}

impl Family for Sql {
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
        self.links = plan::attach(probes, target, target.slot, &self.plan)?;
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
            SqlRecord::Start(start) => match self.with_query_read(start) {
                Some(read) => self.builder.on_start(g, &read, cx.spans),
                None => self.builder.on_start(g, start, cx.spans),
            },
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

    fn sampled_out(&self) -> u64 {
        self.builder.sampled_out()
    }

    fn counters(&self, kernel: &KernelStats, out: &mut Vec<Counter>) {
        let pairing = self.builder.pairing();
        let stats = self.builder.stats();
        out.extend([
            Counter::count("sql_calls", pairing.started),
            Counter::count("sql_queries_read_by_agent", self.queries_read_by_agent),
            Counter::count("sql_queries_unread", self.queries_unread),
            Counter::count("sql_unparented", stats.unparented),
            Counter::count("sql_tx_done", stats.tx_done),
            Counter::count("sql_duplicates", stats.duplicates),
            Counter::loss(
                "sql_unmatched_ends",
                "SQL ends without start",
                "",
                pairing.unmatched_ends,
            ),
            Counter::loss(
                "sql_calls_lost",
                "SQL calls lost to a full ring buffer",
                " spans",
                kernel.lost(agent_common::sql::KIND_SQL_START),
            ),
            Counter::incomplete("sql_expired", "SQL expired", pairing.expired),
            Counter::incomplete("sql_evicted", "SQL evicted", pairing.evicted),
            Counter::incomplete("sql_replaced", "SQL replaced", pairing.replaced),
            Counter::incomplete("sql_open_at_stop", "SQL open at stop", pairing.open_at_stop),
            Counter::count("sql_after_stop", pairing.after_stop),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_reads_a_query_the_kernel_could_not() {
        let text = b"SELECT * FROM items WHERE id = ?".to_vec();
        // SAFETY: an all-integer #[repr(C)] record; zero is a valid value.
        let mut start: SqlStart = unsafe { std::mem::zeroed() };
        start.flags = START_QUERY_UNREAD;
        start.query_ptr = text.as_ptr() as u64;
        start.query_len = text.len() as u32;
        let memory = Memory::open(std::process::id()).expect("own memory");
        let read = query_from(&memory, &start).expect("reading");
        assert_eq!(&read.query[..text.len()], &text[..]);
        assert_eq!(read.flags, START_QUERY);
        start.query_ptr = 8;
        assert!(query_from(&memory, &start).is_err(), "an unmapped address");
    }
}
