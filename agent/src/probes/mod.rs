//! The one seam for privileged operations: loading the eBPF object, filling
//! its maps, installing tail calls, attaching uprobes scoped to one process
//! and detaching them.
//!
//! Families ask, [`Probes`] does it and keeps the books: every attached
//! uprobe is listed with the family that asked for it ([`Probes::attached`]),
//! detached on request ([`Probes::detach`], [`Probes::detach_family`]) and in
//! any case when [`Probes`] is dropped, so no exit path leaves a probe in the
//! target. One error type, [`ProbeError`], for all of it.

pub mod preflight;
mod ref_ctr;
mod removal;
mod sockets;
mod stats;

use std::{io, num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        Program, ProgramError, RawTracePoint, UProbe,
        raw_trace_point::RawTracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
};

pub use preflight::{PreflightError, preflight};
pub use removal::{Attaching, attaching, remove_then};
pub use stats::{KernelStats, StatsReader};

/// The compiled eBPF object, built by build.rs.
#[cfg(feature = "ebpf")]
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));
/// Built without the `ebpf` feature (the fuzz targets): no object, so
/// [`Probes::load`] fails with [`ProbeError::NoObject`].
#[cfg(not(feature = "ebpf"))]
static EBPF_OBJECT: &[u8] = &[];

/// The shared ring buffer every family's records go to.
pub const EVENTS_MAP: &str = "EVENTS";
/// The shared per-CPU counters (`agent_common::stats`).
pub const STATS_MAP: &str = "STATS";

/// Failure to load, fill, attach or detach.
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
        program: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("the eBPF object has no {0}")]
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
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("detaching {program} failed")]
    Detach {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to the {tracepoint} tracepoint failed")]
    AttachTracepoint {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map {map} refused an update")]
    MapUpdate {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("pid 0 is not a process")]
    InvalidPid,
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

/// The attach cookie of a probe site, which the program reads through
/// `bpf_get_attach_cookie`: the target slot in the high half (it indexes the
/// family's config array), the site in the low half.
pub const fn cookie(slot: u32, site: u32) -> u64 {
    ((slot as u64) << 32) | site as u64
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
    /// The family that asked for it.
    pub family: &'static str,
    pub program: &'static str,
    /// Its file offset.
    pub offset: u64,
    handle: LinkHandle,
    link: Option<SiteLink>,
}

/// How an uprobe is attached: through aya, or with a reference counter
/// through [`ref_ctr`] (detached by dropping it).
#[derive(Debug)]
enum SiteLink {
    Aya(UProbeLinkId),
    Counted(ref_ctr::CountedUprobe),
}

/// An uprobe taken out of the object: the kernel removes it when this is
/// dropped, wherever that is ([`Probes::detach_elsewhere`]).
#[derive(Debug)]
#[allow(dead_code, reason = "held for what dropping it does")]
pub struct DetachedLink(DetachedKind);

#[derive(Debug)]
#[allow(dead_code, reason = "held for what dropping it does")]
enum DetachedKind {
    Aya(UProbeLink),
    Counted(ref_ctr::CountedUprobe),
}

/// Where [`Probes::detach_elsewhere`] sends the uprobes it takes out.
pub type DetachSink = Box<dyn FnMut(DetachedLink)>;

/// Names one attached uprobe, for detaching it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkHandle(u64);

/// One attached raw tracepoint (these fire in every process: the
/// program filters).
#[derive(Debug)]
struct AttachedTracepoint {
    family: &'static str,
    program: &'static str,
    link: RawTracePointLinkId,
}

/// The loaded programs and their attachments.
pub struct Probes {
    ebpf: Ebpf,
    attached: Vec<AttachedSite>,
    tracepoints: Vec<AttachedTracepoint>,
    next_handle: u64,
    /// Program-array slots filled, emptied on drop.
    tail_slots: Vec<(&'static str, u32)>,
    /// The programs' aya-log diagnostics, when the log level shows them.
    ebpf_logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Where detached uprobes go, when not removed here.
    detach_sink: Option<DetachSink>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

fn program_error(program: &'static str) -> impl Fn(ProgramError) -> ProbeError {
    move |source| ProbeError::Program {
        program: program.to_owned(),
        source: Box::new(source),
    }
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map {
        map,
        source: Box::new(source),
    }
}

impl Probes {
    /// Loads the object and verifies every program in it, before anything
    /// is attached: a program the kernel rejects fails here, not halfway
    /// through attaching.
    pub fn load(options: LoadOptions) -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        raise_memlock_limit();
        let size = options.ring_buffer_bytes.max(4096).next_power_of_two();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, size)
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
        for (name, program) in ebpf.programs_mut() {
            let name = name.to_owned();
            let loaded = match program {
                Program::RawTracePoint(program) => program.load(),
                Program::SockOps(program) => program.load(),
                Program::SkMsg(program) => program.load(),
                program => <&mut UProbe>::try_from(program).and_then(|p| p.load()),
            };
            loaded.map_err(|source| {
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
        // The programs' own diagnostics (aya-log-ebpf, in rare branches
        // only) are read when they would be shown: at -v and beyond.
        let ebpf_logs = if log::log_enabled!(target: "agent_ebpf", log::Level::Debug) {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => Some(logger),
                Err(err) => {
                    log::debug!("the eBPF programs' diagnostics are off: {err}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            ebpf,
            attached: Vec::new(),
            tracepoints: Vec::new(),
            next_handle: 0,
            tail_slots: Vec::new(),
            ebpf_logs,
            detach_sink: None,
        })
    }

    /// Logs what the eBPF programs wrote with aya-log since the last call
    /// (at -v and beyond; nothing otherwise).
    pub fn flush_ebpf_logs(&mut self) {
        let Some(logger) = &mut self.ebpf_logs else {
            return;
        };
        // aya-log panics on a record it cannot parse; a diagnostic must not
        // take the agent down.
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush()));
        if flushed.is_err() {
            log::warn!("unreadable eBPF diagnostics; they are off from here");
            self.ebpf_logs = None;
        }
    }

    fn uprobe(&mut self, program: &'static str) -> Result<&mut UProbe, ProbeError> {
        self.ebpf
            .program_mut(program)
            .ok_or(ProbeError::Missing(program))?
            .try_into()
            .map_err(program_error(program))
    }

    /// Writes `value` at `index` of the array map `map` (a family's
    /// per-target configuration, a site's spec).
    pub fn set_array<T: Pod>(
        &mut self,
        map: &'static str,
        index: u32,
        value: T,
    ) -> Result<(), ProbeError> {
        let data = self.ebpf.map_mut(map).ok_or(ProbeError::Missing(map))?;
        let mut array: Array<&mut MapData, T> = Array::try_from(data).map_err(map_error(map))?;
        array.set(index, value, 0).map_err(map_error(map))
    }

    /// Puts `program` in slot `slot` of the program array `map`, for tail
    /// calls. The slot is emptied when `self` is dropped.
    pub fn set_tail_call(
        &mut self,
        map: &'static str,
        slot: u32,
        program: &'static str,
    ) -> Result<(), ProbeError> {
        let to_program = program_error(program);
        let fd = self
            .ebpf
            .program(program)
            .ok_or(ProbeError::Missing(program))?
            .fd()
            .map_err(&to_program)?
            .try_clone()
            .map_err(|source| to_program(source.into()))?;
        let mut slots: ProgramArray<_> = self
            .ebpf
            .map_mut(map)
            .ok_or(ProbeError::Missing(map))?
            .try_into()
            .map_err(map_error(map))?;
        slots.set(slot, &fd, 0).map_err(map_error(map))?;
        self.tail_slots.push((map, slot));
        Ok(())
    }

    /// Attaches `program` at `offset` in the file at `path`, firing only in
    /// process `pid`, on behalf of `family`. `cookie` reaches the program
    /// through `bpf_get_attach_cookie`: the target slot in the high half, the
    /// site in the low half.
    pub fn attach_uprobe(
        &mut self,
        family: &'static str,
        program: &'static str,
        path: &Path,
        pid: u32,
        offset: u64,
        cookie: u64,
    ) -> Result<LinkHandle, ProbeError> {
        let pid = NonZeroU32::new(pid).ok_or(ProbeError::InvalidPid)?;
        let link = self
            .uprobe(program)?
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
        log::debug!(
            "{family}: {program} attached at {} +{offset:#x}",
            path.display()
        );
        Ok(self.record(family, program, offset, SiteLink::Aya(link)))
    }

    /// Like [`Self::attach_uprobe`], with the `u16` at file offset
    /// `ref_ctr_offset` of the same file as the probe's reference counter (a
    /// USDT semaphore): the kernel raises it in the target while the probe
    /// is attached and lowers it when the probe goes, also when the agent
    /// dies without detaching.
    #[allow(clippy::too_many_arguments)]
    pub fn attach_uprobe_counted(
        &mut self,
        family: &'static str,
        program: &'static str,
        path: &Path,
        pid: u32,
        offset: u64,
        ref_ctr_offset: u64,
        cookie: u64,
    ) -> Result<LinkHandle, ProbeError> {
        if pid == 0 {
            return Err(ProbeError::InvalidPid);
        }
        let prog = self.uprobe(program)?.fd().map_err(program_error(program))?;
        let counted =
            ref_ctr::attach(prog, path, pid, offset, ref_ctr_offset, cookie).map_err(|source| {
                ProbeError::Attach {
                    program,
                    path: path.display().to_string(),
                    offset,
                    source: Box::new(source),
                }
            })?;
        log::debug!(
            "{family}: {program} attached at {} +{offset:#x} (reference counter at +{ref_ctr_offset:#x})",
            path.display()
        );
        Ok(self.record(family, program, offset, SiteLink::Counted(counted)))
    }

    fn record(
        &mut self,
        family: &'static str,
        program: &'static str,
        offset: u64,
        link: SiteLink,
    ) -> LinkHandle {
        let handle = LinkHandle(self.next_handle);
        self.next_handle += 1;
        self.attached.push(AttachedSite {
            family,
            program,
            offset,
            handle,
            link: Some(link),
        });
        handle
    }

    /// Attaches `program` at each `(program, file offset, site)` of `sites`
    /// in the file at `path`, firing only in process `pid`, for target slot
    /// `slot` ([`cookie`]): all or nothing, what was attached is detached
    /// when one fails.
    pub fn attach_sites(
        &mut self,
        family: &'static str,
        path: &Path,
        pid: u32,
        slot: u32,
        sites: impl IntoIterator<Item = (&'static str, u64, u32)>,
    ) -> Result<Vec<LinkHandle>, ProbeError> {
        let mut links = Vec::new();
        for (program, offset, site) in sites {
            match self.attach_uprobe(family, program, path, pid, offset, cookie(slot, site)) {
                Ok(link) => links.push(link),
                Err(err) => {
                    if let Err(undo) = self.detach(&links) {
                        log::warn!(
                            "{family}: undoing a failed attach: {}",
                            crate::binary::error_chain(&undo)
                        );
                    }
                    return Err(err);
                }
            }
        }
        Ok(links)
    }

    /// Every uprobe attached and not yet detached.
    pub fn attached(&self) -> &[AttachedSite] {
        &self.attached
    }

    /// How many uprobes and tracepoints `family` has attached.
    pub fn attached_by(&self, family: &str) -> usize {
        self.attached.iter().filter(|s| s.family == family).count()
            + self
                .tracepoints
                .iter()
                .filter(|t| t.family == family)
                .count()
    }

    /// Attaches `program` to the raw tracepoint `tracepoint` (such as
    /// `sys_enter`: no tracefs needed) on behalf of `family`. It fires in
    /// every process; the program filters. Detached with the family's
    /// uprobes.
    pub fn attach_raw_tracepoint(
        &mut self,
        family: &'static str,
        program: &'static str,
        tracepoint: &'static str,
    ) -> Result<(), ProbeError> {
        let attach_error = |source| ProbeError::AttachTracepoint {
            program,
            tracepoint,
            source: Box::new(source),
        };
        let prog: &mut RawTracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::Missing(program))?
            .try_into()
            .map_err(attach_error)?;
        let link = prog.attach(tracepoint).map_err(attach_error)?;
        log::debug!("{family}: {program} attached to raw tracepoint {tracepoint}");
        self.tracepoints.push(AttachedTracepoint {
            family,
            program,
            link,
        });
        Ok(())
    }

    /// Sets `key` to `value` in the hash map `map` (a traced process).
    pub fn set_hash<K: Pod, V: Pod>(
        &mut self,
        map: &'static str,
        key: K,
        value: V,
    ) -> Result<(), ProbeError> {
        let data = self.ebpf.map_mut(map).ok_or(ProbeError::Missing(map))?;
        let mut hash: aya::maps::HashMap<&mut MapData, K, V> =
            aya::maps::HashMap::try_from(data).map_err(map_error(map))?;
        hash.insert(key, value, 0)
            .map_err(|source| ProbeError::MapUpdate {
                map,
                source: Box::new(source),
            })
    }

    /// The values of entry `index` of the per-CPU array `map`, one per CPU
    /// (a family's in-kernel totals).
    pub fn per_cpu_values<T: Pod>(
        &self,
        map: &'static str,
        index: u32,
    ) -> Result<Vec<T>, ProbeError> {
        let data = self.ebpf.map(map).ok_or(ProbeError::Missing(map))?;
        let array: PerCpuArray<&MapData, T> =
            PerCpuArray::try_from(data).map_err(map_error(map))?;
        let values = array.get(&index, 0).map_err(map_error(map))?;
        Ok(values.iter().copied().collect())
    }

    /// Detaches the raw tracepoints of `family` (all of them when `None`);
    /// failures are logged.
    fn detach_tracepoints(&mut self, family: Option<&str>) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tracepoints)
            .into_iter()
            .partition(|t| family.is_none_or(|f| t.family == f));
        self.tracepoints = kept;
        for tp in gone {
            let Some(program) = self.ebpf.program_mut(tp.program) else {
                continue;
            };
            let result =
                <&mut RawTracePoint>::try_from(program).and_then(|prog| prog.detach(tp.link));
            if let Err(err) = result {
                log::warn!("{}: detaching {}: {err}", tp.family, tp.program);
            }
        }
    }

    /// From now on, a detached uprobe is taken out of the object and handed
    /// to `sink` instead of being removed here: the kernel removes uprobes
    /// one at a time, about 0.1 s each, which an object serving other
    /// targets cannot wait for. Its program stops firing for the target when
    /// the sink drops it.
    pub fn detach_elsewhere(&mut self, sink: DetachSink) {
        self.detach_sink = Some(sink);
    }

    fn detach_site(&mut self, site: AttachedSite) -> Result<(), ProbeError> {
        let link = match site.link {
            None => return Ok(()),
            Some(SiteLink::Counted(counted)) => {
                match &mut self.detach_sink {
                    Some(sink) => sink(DetachedLink(DetachedKind::Counted(counted))),
                    None => drop(counted),
                }
                return Ok(());
            }
            Some(SiteLink::Aya(link)) => link,
        };
        let detach_error = |source| ProbeError::Detach {
            program: site.program,
            source: Box::new(source),
        };
        if self.detach_sink.is_some() {
            let owned = self
                .uprobe(site.program)?
                .take_link(link)
                .map_err(detach_error)?;
            if let Some(sink) = &mut self.detach_sink {
                sink(DetachedLink(DetachedKind::Aya(owned)));
            }
            return Ok(());
        }
        self.uprobe(site.program)?
            .detach(link)
            .map_err(detach_error)
    }

    /// Detaches the uprobes named by `handles`. Every one is tried; the last
    /// failure is returned.
    pub fn detach(&mut self, handles: &[LinkHandle]) -> Result<(), ProbeError> {
        let mut result = Ok(());
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|s| handles.contains(&s.handle));
        self.attached = kept;
        for site in gone {
            if let Err(err) = self.detach_site(site) {
                result = Err(err);
            }
        }
        result
    }

    /// Detaches the uprobes of `links` (emptying it), logging a failure:
    /// for a family's `stop`.
    pub fn release(&mut self, family: &str, links: &mut Vec<LinkHandle>) {
        if let Err(err) = self.detach(&std::mem::take(links)) {
            log::warn!(
                "{family}: detaching its probes: {}",
                crate::binary::error_chain(&err)
            );
        }
    }

    /// Detaches every uprobe and tracepoint `family` attached; failures are
    /// logged.
    pub fn detach_family(&mut self, family: &str) {
        self.detach_tracepoints(Some(family));
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|s| s.family == family);
        self.attached = kept;
        for site in gone {
            if let Err(err) = self.detach_site(site) {
                log::warn!("{family}: {}", crate::binary::error_chain(&err));
            }
        }
    }

    /// Detaches every uprobe and tracepoint (the programs stay loaded until
    /// drop).
    pub fn detach_all(&mut self) {
        self.detach_tracepoints(None);
        for site in std::mem::take(&mut self.attached) {
            let family = site.family;
            if let Err(err) = self.detach_site(site) {
                log::warn!("{family}: {}", crate::binary::error_chain(&err));
            }
        }
    }

    /// Takes the ring buffer `map` out of the object, for a reader.
    pub fn take_ring_buffer(&mut self, map: &'static str) -> Result<RingBuf<MapData>, ProbeError> {
        let data = self.ebpf.take_map(map).ok_or(ProbeError::Missing(map))?;
        RingBuf::try_from(data).map_err(map_error(map))
    }

    /// Takes the shared per-CPU counters for reporting.
    pub fn take_stats(&mut self) -> Result<StatsReader, ProbeError> {
        let data = self
            .ebpf
            .take_map(STATS_MAP)
            .ok_or(ProbeError::Missing(STATS_MAP))?;
        let array: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(data).map_err(map_error(STATS_MAP))?;
        Ok(StatsReader::new(array))
    }
}

impl Drop for Probes {
    /// Detaches what is still attached and empties the tail-call slots. A
    /// program that sits in a program array and tail-calls through it holds
    /// the map and the map holds it; the kernel breaks that cycle when the
    /// last descriptor of the map closes, but in a deferred work item.
    /// Emptying the slots here unloads the programs as soon as the agent
    /// lets go of them.
    fn drop(&mut self) {
        self.detach_all();
        for (map, slot) in std::mem::take(&mut self.tail_slots) {
            let Some(data) = self.ebpf.map_mut(map) else {
                continue;
            };
            if let Ok(mut slots) = ProgramArray::<&mut MapData>::try_from(data) {
                // A failure leaves the kernel's own clean-up to it.
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
