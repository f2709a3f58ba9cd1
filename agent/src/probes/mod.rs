//! Loading the eBPF programs and attaching them to a target.
//!
//! Every privileged operation of the agent goes through here: loading the
//! object, filling its maps, attaching uprobes scoped to one PID. Dropping
//! [`Probes`] detaches everything.

pub mod http_server;
mod preflight;
mod stats;

use std::{io, path::Path};

use agent_common::{
    http,
    target::{MAX_TARGETS, TargetConfig},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};

pub use preflight::{PreflightError, preflight};
pub use stats::{KernelStats, StatsReader};

/// The compiled eBPF object, built by build.rs.
#[cfg(feature = "ebpf")]
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));
/// Built without the `ebpf` feature (the fuzz targets): no object, so
/// [`Probes::load`] fails with [`ProbeError::NoObject`].
#[cfg(not(feature = "ebpf"))]
static EBPF_OBJECT: &[u8] = &[];

/// Every uprobe program in the object.
pub const PROGRAMS: [&str; 5] = [
    "http_server_start",
    "http_server_end",
    "http2_server_end",
    "http_server_traceparent",
    "http_server_tracestate",
];

/// Failure to load or attach.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the kernel refused to load the eBPF programs: permission denied (run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE)"
    )]
    Permission(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel rejected eBPF program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    #[error("this agent was built without its eBPF programs (cargo feature `ebpf` off)")]
    NoObject,
    #[error("eBPF map {map} is unusable")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching {program} to {path} at file offset {offset:#x} failed")]
    Attach {
        program: &'static str,
        path: String,
        offset: u64,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("target slot {0} is out of range (at most {MAX_TARGETS} targets)")]
    Slot(u32),
}

/// Whether an error chain bottoms out in EPERM/EACCES.
fn is_permission_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Load options.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Ring-buffer size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Size of the flight-recorder dump ring (`FLIGHT_RING`): 16 MiB holds a
    /// default-size dump; one page when there is no flight recorder to catch.
    pub flight_ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 4 << 20,
            flight_ring_bytes: 16 << 20,
        }
    }
}

/// One attached uprobe.
#[derive(Debug)]
pub struct AttachedSite {
    pub program: &'static str,
    pub offset: u64,
    link: UProbeLinkId,
}

/// The loaded programs and their attachments.
pub struct Probes {
    ebpf: Ebpf,
    attached: Vec<AttachedSite>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Probes {
    /// Loads the object and every program into the kernel (verifying them all
    /// before anything is attached).
    pub fn load(options: LoadOptions) -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        raise_memlock_limit();
        let size = options.ring_buffer_bytes.max(4096).next_power_of_two();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", size)
            .map_max_entries(
                "FLIGHT_RING",
                options.flight_ring_bytes.max(4096).next_power_of_two(),
            )
            .load(EBPF_OBJECT)
            .map_err(|e| {
                if is_permission_error(&e) {
                    ProbeError::Permission(Box::new(e))
                } else {
                    ProbeError::Load(Box::new(e))
                }
            })?;
        for name in PROGRAMS {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or(ProbeError::Missing(name))?
                .try_into()
                .map_err(|source| ProbeError::Program {
                    program: name,
                    source: Box::new(source),
                })?;
            program.load().map_err(|source| {
                if is_permission_error(&source) {
                    ProbeError::Permission(Box::new(source))
                } else {
                    ProbeError::Program {
                        program: name,
                        source: Box::new(source),
                    }
                }
            })?;
        }
        install_tail_calls(&mut ebpf)?;
        Ok(Self {
            ebpf,
            attached: Vec::new(),
        })
    }

    /// Writes target slot `slot`'s configuration.
    pub fn set_target(&mut self, slot: u32, config: &TargetConfig) -> Result<(), ProbeError> {
        if slot >= MAX_TARGETS {
            return Err(ProbeError::Slot(slot));
        }
        let map = self
            .ebpf
            .map_mut("TARGETS")
            .ok_or(ProbeError::Missing("TARGETS"))?;
        let mut targets: Array<&mut MapData, TargetConfig> =
            Array::try_from(map).map_err(|source| ProbeError::Map {
                map: "TARGETS",
                source: Box::new(source),
            })?;
        targets
            .set(slot, config, 0)
            .map_err(|source| ProbeError::Map {
                map: "TARGETS",
                source: Box::new(source),
            })
    }

    /// Attaches `program` at `offset` in the file at `path`, firing only in
    /// process `pid`. `cookie` reaches the program through
    /// `bpf_get_attach_cookie`: target slot in the high half, site index in
    /// the low half.
    pub fn attach(
        &mut self,
        program: &'static str,
        path: &Path,
        pid: u32,
        offset: u64,
        cookie: u64,
    ) -> Result<(), ProbeError> {
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::Missing(program))?
            .try_into()
            .map_err(|source| ProbeError::Program {
                program,
                source: Box::new(source),
            })?;
        let pid = std::num::NonZeroU32::new(pid).ok_or(ProbeError::Slot(0))?;
        let link = uprobe
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(cookie),
                },
                path,
                UProbeScope::OneProcess(pid),
            )
            .map_err(|source| ProbeError::Attach {
                program,
                path: path.display().to_string(),
                offset,
                source: Box::new(source),
            })?;
        self.attached.push(AttachedSite {
            program,
            offset,
            link,
        });
        Ok(())
    }

    /// Attached sites so far.
    pub fn attached(&self) -> &[AttachedSite] {
        &self.attached
    }

    /// Detaches every uprobe (the programs stay loaded until drop).
    pub fn detach_all(&mut self) {
        for site in self.attached.drain(..) {
            if let Some(program) = self.ebpf.program_mut(site.program)
                && let Ok(uprobe) = <&mut UProbe>::try_from(program)
                && let Err(err) = uprobe.detach(site.link)
            {
                log::warn!("detaching {} failed: {err}", site.program);
            }
        }
    }

    /// Takes the ring buffer for the reader.
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::Missing("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            map: "EVENTS",
            source: Box::new(source),
        })
    }

    /// Takes the per-CPU counters for reporting.
    pub fn take_stats(&mut self) -> Result<StatsReader, ProbeError> {
        let map = self
            .ebpf
            .take_map("STATS")
            .ok_or(ProbeError::Missing("STATS"))?;
        let array: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
                map: "STATS",
                source: Box::new(source),
            })?;
        Ok(StatsReader::new(array))
    }

    /// The loaded object, for probe families that bring their own maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Puts the header searches in the `HTTP_TAIL` slots the HTTP programs
/// tail-call: `http_server_traceparent` (from `http_server_start`) and
/// `http_server_tracestate` (from `http_server_traceparent`).
fn install_tail_calls(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    const MAP: &str = "HTTP_TAIL";
    let map_err = |source| ProbeError::Map {
        map: MAP,
        source: Box::new(source),
    };
    for (slot, program) in [
        (http::TAIL_TRACEPARENT, "http_server_traceparent"),
        (http::TAIL_TRACESTATE, "http_server_tracestate"),
    ] {
        let program_err = |source: ProgramError| ProbeError::Program {
            program,
            source: Box::new(source),
        };
        let fd = ebpf
            .program(program)
            .ok_or(ProbeError::Missing(program))?
            .fd()
            .map_err(program_err)?
            .try_clone()
            .map_err(|source| program_err(source.into()))?;
        let mut slots: ProgramArray<_> = ebpf
            .map_mut(MAP)
            .ok_or(ProbeError::Missing(MAP))?
            .try_into()
            .map_err(map_err)?;
        slots.set(slot, &fd, 0).map_err(map_err)?;
    }
    Ok(())
}

impl Drop for Probes {
    /// Empties the tail-call slots. `http_server_traceparent` sits in
    /// `HTTP_TAIL` and tail-calls through it, so it and the map hold each
    /// other; the kernel breaks that cycle when the last descriptor of the
    /// map closes, but in a deferred work item. Emptying the slots here
    /// unloads the programs as soon as the agent lets go of them.
    fn drop(&mut self) {
        let Some(map) = self.ebpf.map_mut("HTTP_TAIL") else {
            return;
        };
        if let Ok(mut slots) = ProgramArray::<&mut MapData>::try_from(map) {
            for slot in 0..http::TAIL_SLOTS {
                // An empty slot is fine: a failure leaves the kernel's own
                // clean-up to it.
                let _ = slots.clear_index(&slot);
            }
        }
    }
}

/// Tries to lift RLIMIT_MEMLOCK. Kernels since 5.11 charge BPF memory to the
/// cgroup instead, and this machine cannot raise the limit at all, so a
/// failure is only logged.
fn raise_memlock_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(err) = setrlimit(
        Resource::RLIMIT_MEMLOCK,
        libc::RLIM_INFINITY,
        libc::RLIM_INFINITY,
    ) {
        log::debug!("cannot raise RLIMIT_MEMLOCK ({err}); relying on cgroup memory accounting");
    }
}
