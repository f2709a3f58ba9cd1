//! Catching flight-recorder dumps as they happen.
//!
//! A Go program that keeps a `runtime/trace.FlightRecorder` (Go 1.25+, or
//! `golang.org/x/exp/trace`'s) running and calls `WriteTo` when something
//! goes wrong has the dump captured by the agent, whatever the destination
//! is, and turned into spans:
//!
//! 1. [`plan`] finds, in the binary, WriteTo's entry site (an instruction
//!    the kernel emulates), its return sites, and the `w.Write` call sites
//!    in its body (and closures) where the bytes can be read.
//! 2. [`attach`] fills the per-target config and attaches the three
//!    programs (`flight_start`, `flight_write`, `flight_end`) to one process.
//! 3. The programs write the dump's bytes, in sequence-numbered chunks, to
//!    the dedicated `FLIGHT_RING` ring buffer ([`take_ring_buffer`]).
//!    [`FlightCapture`] reassembles them and hands back a [`CompletedDump`]
//!    when WriteTo returns, complete or marked incomplete with the reasons.
//! 4. [`dump_to_spans`] decodes it through [`crate::gotrace`] into spans
//!    carrying the dump's identity; [`save_dump`] keeps the exact bytes for
//!    `go tool trace`; [`handle_dump`] does both (`--save-dumps DIR`).
//! 5. [`FlightReader`] runs 3 and 4 on a thread of its own, woken by the
//!    ring buffer, handing every span to a sink.
//!
//! Wiring into a session (after [`crate::probes::Probes::load`]):
//!
//! ```text
//! let plan = flight::plan(&go_binary)?;                // None: no flight recorder
//! let att = flight::attach(probes.ebpf_mut(), &target, slot, &plan)?;
//! let ring = flight::take_ring_buffer(probes.ebpf_mut())?;   // once per object
//! let reader = FlightReader::spawn(ring, ReaderConfig { save_dir, ..Default::default() },
//!                                  move |span| sender.send_blocking(span))?;
//! reader.watch(&att);
//! // at exit: att.detach(probes.ebpf_mut())?; let stats = reader.stop();
//! ```
//!
//! Capturing at the `w.Write` call sites (instead of the write syscalls)
//! yields the dump's own bytes for any writer: a file, a pipe, a socket, an
//! HTTP response (no chunked framing or headers mixed in), a gzip or TLS
//! writer, a `bufio.Writer` that has not flushed yet.

mod capture;
mod reader;
mod sites;
mod spans;

use std::{
    collections::BTreeMap,
    fs,
    num::NonZeroU32,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use agent_common::{
    flight::{FlightConfig, VARIANT_RUNTIME, VARIANT_X_EXP},
    target::MAX_TARGETS,
};
use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, RingBuf},
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use iced_x86::Register;
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::{
    binary::{Function, GoBinary, OffsetError, ProbeSite, SiteError},
    gotrace::DecodeError,
    target::Target,
};

pub use capture::{CaptureOptions, CompletedDump, FlightCapture};
pub use reader::{FlightReader, ReaderConfig, ReaderStats};
pub use sites::interface_calls;
pub use spans::{
    DumpOutcome, DumpSpanOptions, dump_attributes, dump_file_name, dump_to_spans, handle_dump,
    save_dump,
};

/// `runtime/trace`'s flight recorder (Go 1.25+).
pub const RUNTIME_WRITE_TO: &str = "runtime/trace.(*FlightRecorder).WriteTo";
/// `golang.org/x/exp/trace`'s flight recorder.
pub const X_EXP_WRITE_TO: &str = "golang.org/x/exp/trace.(*FlightRecorder).WriteTo";

/// The entry-site program.
pub const START_PROGRAM: &str = "flight_start";
/// The `w.Write` call-site program.
pub const WRITE_PROGRAM: &str = "flight_write";
/// The return-site program.
pub const END_PROGRAM: &str = "flight_end";
/// The dedicated ring buffer of dump records.
pub const RING_MAP: &str = "FLIGHT_RING";
/// Per-target configuration, by target slot.
pub const CONFIG_MAP: &str = "FLIGHT_CONFIG";

/// Failures planning, attaching or decoding.
#[derive(Debug, thiserror::Error)]
pub enum FlightError {
    #[error("the offset of runtime.g.goid is not known for this binary")]
    GoidOffset(#[source] OffsetError),
    #[error("no probe site in {function}")]
    Site {
        function: String,
        #[source]
        source: SiteError,
    },
    #[error("{function} has no w.Write call site that could be recognised")]
    NoWriteCalls { function: String },
    #[error("{function} has no return instruction")]
    NoReturns { function: String },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("eBPF program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching {program} to {path} at file offset {offset:#x}")]
    Attach {
        program: &'static str,
        path: String,
        offset: u64,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("target slot {0} is out of range (at most {MAX_TARGETS} targets)")]
    Slot(u32),
    #[error("pid 0 is not a process")]
    InvalidPid,
    #[error("decoding the dump failed")]
    Decode(#[source] DecodeError),
    #[error("saving the dump to {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The probe sites of one WriteTo implementation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightVariant {
    /// `VARIANT_RUNTIME` or `VARIANT_X_EXP` (the site in the records).
    pub variant: u32,
    pub function: Function,
    pub entry: ProbeSite,
    /// `w.Write` call sites, in WriteTo and its closures.
    pub writes: Vec<ProbeSite>,
    pub returns: Vec<ProbeSite>,
}

/// What to attach for one binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightPlan {
    pub variants: Vec<FlightVariant>,
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// Link-time addresses of the binary's `io.Writer` itabs, to the
    /// concrete type (`*os.File`), from `.symtab`.
    pub writer_itabs: BTreeMap<u64, String>,
    /// Names of the types of writers whose itab was built at run time.
    pub types: TypeNames,
    pub pie: bool,
}

/// Finds the flight recorders' WriteTo functions in `bin` and their probe
/// sites. `Ok(None)`: the binary has no flight recorder.
pub fn plan(bin: &GoBinary) -> Result<Option<FlightPlan>, FlightError> {
    let mut variants = Vec::new();
    for (variant, name) in [
        (VARIANT_RUNTIME, RUNTIME_WRITE_TO),
        (VARIANT_X_EXP, X_EXP_WRITE_TO),
    ] {
        let Some(function) = bin.function(name) else {
            continue;
        };
        variants.push(plan_variant(bin, variant, function)?);
    }
    if variants.is_empty() {
        return Ok(None);
    }
    let g_goid = bin
        .struct_field_offset("runtime.g", "goid")
        .map_err(FlightError::GoidOffset)?
        .offset;
    let (writer_itabs, types) = type_symbols(bin.path());
    Ok(Some(FlightPlan {
        variants,
        g_goid,
        writer_itabs,
        types,
        pie: bin.is_pie(),
    }))
}

fn plan_variant(
    bin: &GoBinary,
    variant: u32,
    function: Function,
) -> Result<FlightVariant, FlightError> {
    let site_err = |f: &Function| {
        let function = f.name.clone();
        move |source| FlightError::Site { function, source }
    };
    // The entry sees the receiver and the writer: RAX, RBX:RCX.
    let entry = bin
        .entry_site(&function, &[Register::RAX, Register::RBX, Register::RCX])
        .map_err(site_err(&function))?;
    let returns = bin.return_sites(&function).map_err(site_err(&function))?;
    if returns.is_empty() {
        return Err(FlightError::NoReturns {
            function: function.name,
        });
    }
    let closure_prefix = format!("{}.func", function.name);
    let mut bodies = vec![function.clone()];
    bodies.extend(
        bin.functions()
            .filter(|f| f.name.starts_with(&closure_prefix)),
    );
    let mut writes = Vec::new();
    for body in &bodies {
        let code = read_code(bin, body)?;
        for offset in sites::interface_calls(&code, body.address) {
            let address = body.address + offset;
            let Some(file_offset) = bin.file_offset(address) else {
                continue;
            };
            writes.push(ProbeSite {
                address,
                file_offset,
                instruction: "call (io.Writer.Write)".to_owned(),
                emulated: false,
                reason: format!(
                    "w.Write call in {}: the slice is in RBX, RCX (single-stepped, once per write)",
                    body.name
                ),
            });
        }
    }
    if writes.is_empty() {
        return Err(FlightError::NoWriteCalls {
            function: function.name,
        });
    }
    Ok(FlightVariant {
        variant,
        function,
        entry,
        writes,
        returns,
    })
}

/// Largest function body read for the call-site scan.
const MAX_BODY: u64 = 1 << 20;

fn read_code(bin: &GoBinary, f: &Function) -> Result<Vec<u8>, FlightError> {
    let io = |source| FlightError::Io {
        path: bin.path().to_owned(),
        source,
    };
    let offset = bin
        .file_offset(f.address)
        .ok_or_else(|| FlightError::Site {
            function: f.name.clone(),
            source: SiteError::NotMapped {
                name: f.name.clone(),
                address: f.address,
            },
        })?;
    let file = fs::File::open(bin.path()).map_err(io)?;
    let len = f.size.min(MAX_BODY) as usize;
    let mut code = vec![0; len];
    file.read_exact_at(&mut code, offset).map_err(io)?;
    Ok(code)
}

/// Reads Go type names from the binary: a type descriptor's `Str` is a
/// name offset from `runtime.types` (the `type:*` symbol).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeNames {
    path: PathBuf,
    /// Link-time address of `type:*`.
    types_base: Option<u64>,
    /// PT_LOAD segments: (vaddr, file offset, file size).
    segments: Vec<(u64, u64, u64)>,
    /// Load bias of the running executable (0 unless PIE).
    bias: u64,
}

/// `abi.Type.Str` (a NameOff, i32).
const TYPE_STR: u64 = 40;
/// `abi.Type.TFlag`.
const TYPE_TFLAG: u64 = 20;
/// `abi.TFlagExtraStar`: the name has a `*` to drop.
const TFLAG_EXTRA_STAR: u8 = 1 << 1;

impl TypeNames {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Option<()> {
        let &(seg_vaddr, offset, size) = self
            .segments
            .iter()
            .find(|(v, _, size)| vaddr >= *v && vaddr - v < *size)?;
        if vaddr - seg_vaddr + buf.len() as u64 > size {
            return None;
        }
        let file = fs::File::open(&self.path).ok()?;
        file.read_exact_at(buf, offset + (vaddr - seg_vaddr)).ok()
    }

    /// The name of the type whose descriptor is at run-time address
    /// `type_addr` (`*net.TCPConn`).
    pub fn name(&self, type_addr: u64) -> Option<String> {
        let base = self.types_base?;
        let addr = type_addr.checked_sub(self.bias)?;
        let mut tflag = [0u8; 1];
        self.read(addr + TYPE_TFLAG, &mut tflag)?;
        let mut off = [0u8; 4];
        self.read(addr + TYPE_STR, &mut off)?;
        let off = i32::from_le_bytes(off);
        let name_at = base.checked_add_signed(i64::from(off))?;
        // flags byte, uvarint length, bytes.
        let mut head = [0u8; 11];
        self.read(name_at, &mut head[..3])?;
        let (mut len, mut shift, mut i) = (0usize, 0, 1);
        loop {
            let b = *head.get(i)?;
            len |= usize::from(b & 0x7f) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if i >= 3 {
                return None;
            }
        }
        if len == 0 || len > 4096 {
            return None;
        }
        let mut name = vec![0u8; len];
        self.read(name_at + i as u64, &mut name)?;
        let mut name = String::from_utf8(name).ok()?;
        if tflag[0] & TFLAG_EXTRA_STAR != 0 && name.starts_with('*') {
            name.remove(0);
        }
        Some(name)
    }
}

/// `go:itab.<type>,io.Writer` symbols (address to type), and what reading
/// type names needs. Empty for a stripped binary (the writer is then
/// reported by its itab address only).
fn type_symbols(path: &Path) -> (BTreeMap<u64, String>, TypeNames) {
    let mut itabs = BTreeMap::new();
    let mut types = TypeNames {
        path: path.to_owned(),
        ..TypeNames::default()
    };
    let Ok(data) = fs::read(path) else {
        return (itabs, types);
    };
    let Ok(file) = object::File::parse(&*data) else {
        return (itabs, types);
    };
    for seg in file.segments() {
        let (offset, size) = seg.file_range();
        types.segments.push((seg.address(), offset, size));
    }
    for sym in file.symbols() {
        let Ok(name) = sym.name() else { continue };
        if let Some(rest) = name.strip_prefix("go:itab.")
            && let Some(ty) = rest.strip_suffix(",io.Writer")
        {
            itabs.insert(sym.address(), ty.to_owned());
        } else if name == "type:*" {
            types.types_base = Some(sym.address());
        }
    }
    (itabs, types)
}

/// The probes attached to one process. Detach with [`Self::detach`].
#[derive(Debug)]
pub struct FlightAttachment {
    pub pid: u32,
    pub slot: u32,
    /// Runtime address of an `io.Writer` itab to the concrete type.
    pub writer_itabs: BTreeMap<u64, String>,
    /// Type names of writers whose itab was built at run time.
    pub types: TypeNames,
    links: Vec<(&'static str, UProbeLinkId)>,
}

impl FlightAttachment {
    /// The same target without the links (for the reader thread).
    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            pid: self.pid,
            slot: self.slot,
            writer_itabs: self.writer_itabs.clone(),
            types: self.types.clone(),
            links: Vec::new(),
        }
    }

    /// Number of uprobes attached.
    pub fn probes(&self) -> usize {
        self.links.len()
    }

    /// Detaches every uprobe and clears the target's config.
    pub fn detach(self, ebpf: &mut Ebpf) -> Result<(), FlightError> {
        let mut result = Ok(());
        for (name, link) in self.links {
            match program(ebpf, name) {
                Ok(prog) => {
                    if let Err(source) = prog.detach(link) {
                        result = Err(FlightError::Program {
                            program: name,
                            source: Box::new(source),
                        });
                    }
                }
                Err(err) => result = Err(err),
            }
        }
        if let Err(err) = set_config(ebpf, self.slot, FlightConfig::default()) {
            result = Err(err);
        }
        result
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, FlightError> {
    let prog: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or(FlightError::Missing(name))?
        .try_into()
        .map_err(|source| FlightError::Program {
            program: name,
            source: Box::new(source),
        })?;
    Ok(prog)
}

fn set_config(ebpf: &mut Ebpf, slot: u32, config: FlightConfig) -> Result<(), FlightError> {
    let map_err = |source| FlightError::Map {
        map: CONFIG_MAP,
        source,
    };
    let map = ebpf
        .map_mut(CONFIG_MAP)
        .ok_or(FlightError::Missing(CONFIG_MAP))?;
    let mut configs: Array<_, FlightConfig> = Array::try_from(map).map_err(map_err)?;
    configs.set(slot, config, 0).map_err(map_err)
}

/// Load bias of the target's executable: 0 unless PIE, else where the
/// mapping at file offset 0 starts (Go PIE binaries link at 0).
fn load_bias(target: &Target, pie: bool) -> u64 {
    if !pie {
        return 0;
    }
    let Ok(maps) = fs::read_to_string(format!("/proc/{}/maps", target.pid)) else {
        return 0;
    };
    let exe = target.exe_in_target.to_string_lossy();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = parts.nth(2).unwrap_or("");
        if path == exe
            && u64::from_str_radix(offset, 16) == Ok(0)
            && let Some((start, _)) = range.split_once('-')
            && let Ok(start) = u64::from_str_radix(start, 16)
        {
            return start;
        }
    }
    0
}

/// Attaches the flight programs to `target` (loaded first if needed) in
/// target slot `slot`: the config, then the return and write sites, then
/// the entry sites last, so that no dump starts half-probed.
pub fn attach(
    ebpf: &mut Ebpf,
    target: &Target,
    slot: u32,
    plan: &FlightPlan,
) -> Result<FlightAttachment, FlightError> {
    if slot >= MAX_TARGETS {
        return Err(FlightError::Slot(slot));
    }
    let pid = NonZeroU32::new(target.pid).ok_or(FlightError::InvalidPid)?;
    for name in [START_PROGRAM, WRITE_PROGRAM, END_PROGRAM] {
        let prog = program(ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| FlightError::Program {
                program: name,
                source: Box::new(source),
            })?;
        }
    }
    set_config(
        ebpf,
        slot,
        FlightConfig {
            active: 1,
            _pad: 0,
            g_goid: plan.g_goid,
        },
    )?;
    let bias = load_bias(target, plan.pie);
    let mut attachment = FlightAttachment {
        pid: target.pid,
        slot,
        writer_itabs: plan
            .writer_itabs
            .iter()
            .map(|(addr, ty)| (addr + bias, ty.clone()))
            .collect(),
        types: TypeNames {
            bias,
            ..plan.types.clone()
        },
        links: Vec::new(),
    };
    let mut sites: Vec<(&'static str, u32, &ProbeSite)> = Vec::new();
    for v in &plan.variants {
        sites.extend(v.returns.iter().map(|s| (END_PROGRAM, v.variant, s)));
        sites.extend(v.writes.iter().map(|s| (WRITE_PROGRAM, v.variant, s)));
    }
    for v in &plan.variants {
        sites.push((START_PROGRAM, v.variant, &v.entry));
    }
    for (name, variant, site) in sites {
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(site.file_offset),
            cookie: Some((u64::from(slot) << 32) | u64::from(variant)),
        };
        let res = program(ebpf, name).and_then(|prog| {
            prog.attach(point, &target.exe_path, UProbeScope::OneProcess(pid))
                .map_err(|source| FlightError::Attach {
                    program: name,
                    path: target.exe_path.display().to_string(),
                    offset: site.file_offset,
                    source: Box::new(source),
                })
        });
        match res {
            Ok(link) => attachment.links.push((name, link)),
            Err(err) => {
                if let Err(undo) = attachment.detach(ebpf) {
                    log::warn!("undoing a failed flight-recorder attach: {undo}");
                }
                return Err(err);
            }
        }
    }
    Ok(attachment)
}

/// Takes the dump ring buffer, for a [`crate::ringbuf::RingBufReader`] (or
/// aya's `RingBuf` directly); feed its records to
/// [`FlightCapture::on_bytes`].
pub fn take_ring_buffer(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, FlightError> {
    let map = ebpf
        .take_map(RING_MAP)
        .ok_or(FlightError::Missing(RING_MAP))?;
    RingBuf::try_from(map).map_err(|source| FlightError::Map {
        map: RING_MAP,
        source,
    })
}
