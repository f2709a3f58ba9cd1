//! Where the goroutine-creation probes go in one Go binary, and attaching
//! them.

use agent_common::runtime::{RuntimeConfig, SITE_NEWPROC, SITE_RUNQPUT};

use crate::{
    binary::{GoBinary, OffsetError, ProbeSite, SiteError},
    probes::{LinkHandle, ProbeError, Probes},
    target::Target,
};

/// The `go` statement: runs on the creating goroutine.
pub const NEWPROC: &str = "runtime.newproc";
/// `newproc`'s closure on the system stack, which makes and queues the
/// goroutine.
pub const NEWPROC_CLOSURE: &str = "runtime.newproc.func1";
/// Queues the new goroutine: `runqput(pp, newg, next)`.
pub const RUNQPUT: &str = "runtime.runqput";

/// The per-target configuration array.
pub const CONFIG_MAP: &str = "RUNTIME_CONFIG";

/// Why goroutine creation cannot be probed in a binary.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0} is not in the binary")]
    NoFunction(&'static str),
    #[error("no usable offset for runtime.g.goid")]
    Goid(#[source] OffsetError),
    #[error("no probe site in {function}")]
    Site {
        function: &'static str,
        #[source]
        source: SiteError,
    },
    #[error("{NEWPROC_CLOSURE} has no call to {RUNQPUT} (inlined?)")]
    NoQueueCall,
}

/// Where and how to probe one binary.
#[derive(Clone, Debug)]
pub struct RuntimePlan {
    pub g_goid: u64,
    /// `newproc`'s entry site (R14 still the creator).
    pub creator: ProbeSite,
    /// The `CALL runqput` sites in `newproc.func1` (RBX: the new `*g`).
    pub created: Vec<ProbeSite>,
}

/// Resolves functions, sites and the goroutine id's offset.
pub fn plan(bin: &GoBinary) -> Result<RuntimePlan, PlanError> {
    let function = |name| bin.function(name).ok_or(PlanError::NoFunction(name));
    let newproc = function(NEWPROC)?;
    let closure = function(NEWPROC_CLOSURE)?;
    let runqput = function(RUNQPUT)?;
    let g_goid = bin
        .struct_field_offset("runtime.g", "goid")
        .map_err(PlanError::Goid)?
        .offset;
    let creator = bin
        .entry_site(&newproc, &[])
        .map_err(|source| PlanError::Site {
            function: NEWPROC,
            source,
        })?;
    let created = bin
        .call_sites(&closure, runqput.address)
        .map_err(|source| PlanError::Site {
            function: NEWPROC_CLOSURE,
            source,
        })?;
    if created.is_empty() {
        return Err(PlanError::NoQueueCall);
    }
    Ok(RuntimePlan {
        g_goid,
        creator,
        created,
    })
}

/// Writes the target's configuration and attaches the probes: the queue
/// calls first, then the creator's entry, so that no creation is half seen.
/// On error, what was attached is detached.
pub fn attach(
    probes: &mut Probes,
    target: &Target,
    slot: u32,
    plan: &RuntimePlan,
) -> Result<Vec<LinkHandle>, ProbeError> {
    probes.set_array(
        CONFIG_MAP,
        slot,
        RuntimeConfig {
            active: 1,
            _pad: 0,
            g_goid: plan.g_goid,
        },
    )?;
    let sites = plan
        .created
        .iter()
        .map(|s| ("goroutine_created", s.file_offset, SITE_RUNQPUT))
        .chain([("goroutine_creator", plan.creator.file_offset, SITE_NEWPROC)]);
    probes.attach_sites(super::NAME, &target.exe_path, target.pid, slot, sites)
}
