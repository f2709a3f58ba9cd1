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
//!    programs (`flight_start`, `flight_write`, `flight_end`) to one process,
//!    through [`crate::probes::Probes`].
//! 3. The programs write the dump's bytes, in sequence-numbered chunks, to
//!    the dedicated `FLIGHT_RING` ring buffer ([`take_ring_buffer`]).
//!    [`FlightCapture`] reassembles them and hands back a [`CompletedDump`]
//!    when WriteTo returns, complete or marked incomplete with the reasons.
//! 4. [`dump_to_spans`] decodes it through [`crate::gotrace`] into spans
//!    carrying the dump's identity; [`save_dump`] keeps the exact bytes for
//!    `go tool trace`; [`handle_dump`] does both (`--save-dumps DIR`).
//! 5. [`FlightReader`] runs 3 and 4 on a thread of its own, woken by the
//!    ring buffer, handing every span to a sink.
//! 6. [`family`]: all of it as a family of a session.
//!
//! Wiring into a session (after [`crate::probes::Probes::load`]):
//!
//! ```text
//! let plan = flight::plan(&go_binary)?;                // None: no flight recorder
//! let att = flight::attach(&mut probes, &target, slot, &plan)?;
//! let ring = flight::take_ring_buffer(&mut probes)?;   // once per object
//! let reader = FlightReader::spawn(ring, ReaderConfig { save_dir, ..Default::default() },
//!                                  move |batch| sender.send_chunk_blocking(batch.into_chunk()))?;
//! reader.watch(&att);
//! // at exit: att.detach(&mut probes)?; let stats = reader.stop();
//! ```
//!
//! Capturing at the `w.Write` call sites (instead of the write syscalls)
//! yields the dump's own bytes for any writer: a file, a pipe, a socket, an
//! HTTP response (no chunked framing or headers mixed in), a gzip or TLS
//! writer, a `bufio.Writer` that has not flushed yet.

mod capture;
pub mod family;
mod reader;
mod sites;
pub mod slow;
mod spans;

use std::{collections::BTreeMap, fs, os::unix::fs::FileExt as _, path::PathBuf};

use agent_common::{
    flight::{FlightConfig, VARIANT_RUNTIME, VARIANT_X_EXP},
    target::MAX_TARGETS,
};
use aya::maps::{MapData, RingBuf};
use iced_x86::Register;
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::{
    binary::{Function, GoBinary, OffsetError, ProbeSite, SiteError},
    gotrace::DecodeError,
    probes::{LinkHandle, ProbeError, Probes},
    target::{Target, maps},
};

pub use capture::{CaptureOptions, CompletedDump, FlightCapture};
pub use family::FAMILY;
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
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("target slot {0} is out of range (at most {MAX_TARGETS} targets)")]
    Slot(u32),
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
    /// Where a PIE links its first page ([`GoBinary::link_base`]); `None`
    /// for a fixed-address executable.
    pub pie_link_base: Option<u64>,
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
    let (writer_itabs, types) = type_symbols(bin);
    Ok(Some(FlightPlan {
        variants,
        g_goid,
        writer_itabs,
        types,
        pie_link_base: bin.is_pie().then(|| bin.link_base()),
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
        for offset in sites::interface_calls(code, body.address) {
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

/// The first [`MAX_BODY`] bytes of `f`'s code, from the binary's mapping.
fn read_code<'a>(bin: &'a GoBinary, f: &Function) -> Result<&'a [u8], FlightError> {
    let offset = bin
        .file_offset(f.address)
        .ok_or_else(|| FlightError::Site {
            function: f.name.clone(),
            source: SiteError::NotMapped {
                name: f.name.clone(),
                address: f.address,
            },
        })?;
    let len = f.size.min(MAX_BODY);
    usize::try_from(offset)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(start, len)| bin.bytes().get(start..start.checked_add(len)?))
        .ok_or_else(|| FlightError::Io {
            path: bin.path().to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} lies past the end of the file", f.name),
            ),
        })
}

/// Reads Go type names from the binary: a type descriptor's `Str` is a
/// name offset from `runtime.types` (the `type:*` symbol).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeNames {
    path: PathBuf,
    /// Link-time address of `runtime.types` (`moduledata.types`).
    types_base: Option<u64>,
    /// PT_LOAD segments: (vaddr, file offset, file size).
    segments: Vec<(u64, u64, u64)>,
    /// Load bias of the running executable (0 unless PIE).
    bias: u64,
}

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
        let addr = type_addr.checked_sub(self.bias)?;
        crate::binary::type_descriptor_name(self.types_base?, addr, 4096, |at, buf| {
            self.read(at, buf)
        })
    }
}

/// `go:itab.<type>,io.Writer` symbols (address to type), and what reading
/// type names needs. Empty for a stripped binary (the writer is then
/// reported by its itab address only).
fn type_symbols(bin: &GoBinary) -> (BTreeMap<u64, String>, TypeNames) {
    let mut itabs = BTreeMap::new();
    let mut types = TypeNames {
        path: bin.path().to_owned(),
        ..TypeNames::default()
    };
    let Ok(file) = object::File::parse(bin.bytes()) else {
        return (itabs, types);
    };
    for seg in file.segments() {
        let (offset, size) = seg.file_range();
        types.segments.push((seg.address(), offset, size));
    }
    let mut runtime_types = None;
    for sym in file.symbols() {
        let Ok(name) = sym.name() else { continue };
        if let Some(rest) = name.strip_prefix("go:itab.")
            && let Some(ty) = rest.strip_suffix(",io.Writer")
        {
            itabs.insert(sym.address(), ty.to_owned());
        } else if name == "runtime.types" {
            runtime_types = Some(sym.address());
        } else if name == "type:*" {
            types.types_base = Some(sym.address());
        }
    }
    // Name offsets count from `moduledata.types`, which is `runtime.types`;
    // `type:*` is the same address except in a PIE, where it comes 8 bytes
    // later.
    types.types_base = runtime_types.or(types.types_base);
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
    links: Vec<LinkHandle>,
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
    pub fn detach(self, probes: &mut Probes) -> Result<(), FlightError> {
        let detached = probes.detach(&self.links);
        probes.set_array(CONFIG_MAP, self.slot, FlightConfig::default())?;
        Ok(detached?)
    }
}

/// Attaches the flight programs to `target` in target slot `slot`: the
/// config, then the return and write sites, then the entry sites last, so
/// that no dump starts half-probed.
pub fn attach(
    probes: &mut Probes,
    target: &Target,
    slot: u32,
    plan: &FlightPlan,
) -> Result<FlightAttachment, FlightError> {
    if slot >= MAX_TARGETS {
        return Err(FlightError::Slot(slot));
    }
    probes.set_array(
        CONFIG_MAP,
        slot,
        FlightConfig {
            active: 1,
            _pad: 0,
            g_goid: plan.g_goid,
        },
    )?;
    // A PIE's bias is where its mapping at file offset 0 starts, minus the
    // address it was linked at there (0, or 0x400000 as Go often links).
    let bias = match plan.pie_link_base {
        Some(link_base) => maps::load_bias(target.pid, &target.exe_in_target)
            .map_or(0, |start| start.wrapping_sub(link_base)),
        None => 0,
    };
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
        let res = probes.attach_uprobe(
            family::NAME,
            name,
            &target.exe_path,
            target.pid,
            site.file_offset,
            (u64::from(slot) << 32) | u64::from(variant),
        );
        match res {
            Ok(link) => attachment.links.push(link),
            Err(err) => {
                if let Err(undo) = attachment.detach(probes) {
                    log::warn!("undoing a failed flight-recorder attach: {undo}");
                }
                return Err(err.into());
            }
        }
    }
    Ok(attachment)
}

/// Takes the dump ring buffer, for a [`crate::ringbuf::RingBufReader`] (or
/// aya's `RingBuf` directly); feed its records to
/// [`FlightCapture::on_bytes`].
pub fn take_ring_buffer(probes: &mut Probes) -> Result<RingBuf<MapData>, FlightError> {
    Ok(probes.take_ring_buffer(RING_MAP)?)
}
