//! The Go runtime family: goroutine creation. It makes no spans of its
//! own: it tells the shared goroutine table ([`crate::spans::Goroutines`])
//! which goroutine created which, so that a goroutine started inside a
//! request (`go f()`, an errgroup) inherits the request's span as the
//! parent of the spans it makes. It is attached only when another attached
//! family parents its spans by goroutine.
//!
//! - [`plan`]: `runtime.newproc`'s entry and the `runqput` calls of its
//!   closure, and attaching the programs (`agent-ebpf/src/runtime.rs`).

pub mod plan;

use agent_common::runtime::{GoroutineCreated, KIND_GOROUTINE_CREATED};

pub use plan::{PlanError, RuntimePlan};

use crate::{
    binary::error_chain,
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    probes::{KernelStats, LinkHandle, Probes},
    ringbuf::record::view,
    target::Target,
};

/// The family's name.
pub const NAME: &str = "goroutine-creation";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: &[],
    plan: plan_family,
    categories: &[],
};

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    let Ok(bin) = ctx.go else {
        return Plan::Nothing;
    };
    match plan::plan(bin) {
        Ok(plan) => Plan::Ready(Box::new(Runtime {
            plan,
            links: Vec::new(),
            created: 0,
        })),
        // Spans are still parented on their own goroutine; only spans of
        // goroutines created inside a request lose their parent.
        Err(err) => Plan::Absent {
            why: format!(
                "goroutines created inside a request will not inherit its span: {}",
                error_chain(&err)
            ),
            level: log::Level::Warn,
        },
    }
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct Runtime {
    plan: RuntimePlan,
    links: Vec<LinkHandle>,
    /// Goroutine creations seen.
    created: u64,
}

impl Family for Runtime {
    fn name(&self) -> &'static str {
        NAME
    }

    // Config arrays by target slot; kernel maps keyed by process or slot.
    fn shares_object(&self) -> bool {
        true
    }

    fn kinds(&self) -> &'static [u32] {
        &[KIND_GOROUTINE_CREATED]
    }

    fn provides_goroutine_parents(&self) -> bool {
        true
    }

    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError> {
        self.links = plan::attach(probes, target, target.slot, &self.plan)?;
        log::info!(
            "goroutine creation: {} probes (runtime.newproc at {:#x}: {}, {} runqput calls)",
            self.links.len(),
            self.plan.creator.address,
            self.plan.creator.instruction,
            self.plan.created.len()
        );
        Ok(())
    }

    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        let rec: &GoroutineCreated = view(bytes, KIND_GOROUTINE_CREATED)?;
        let slot = rec.header.target;
        self.created += 1;
        cx.goroutines.spawned(
            (slot, rec.header.goid),
            (slot, rec.child_goid),
            rec.header.ktime_ns,
        );
        Ok(())
    }

    /// Goroutine creations only feed the parent table: nothing to pair.
    fn stop_at(&mut self, _at_ns: u64) {}

    fn stop(&mut self, probes: &mut Probes) {
        probes.release(NAME, &mut self.links);
    }

    fn counters(&self, _kernel: &KernelStats, out: &mut Vec<Counter>) {
        out.push(Counter::count("goroutines_created", self.created));
    }
}
