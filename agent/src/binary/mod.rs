//! Go binary analysis: what the agent needs to know about a target before
//! attaching probes, read from the executable alone.
//!
//! - [`GoBinary::build_info`]: Go version, modules, build settings
//!   (`.go.buildinfo`, present even in stripped binaries).
//! - [`GoBinary::function`]: a function's address and size, from `.symtab`
//!   or, in stripped binaries, `.gopclntab` (Go 1.16/1.18/1.20 layouts;
//!   found by section, symbol or scan; entry offsets based on `runtime.text`
//!   from the symbol, the moduledata or its PIE relocations, so externally
//!   linked cgo binaries resolve correctly).
//! - [`GoBinary::struct_field_offset`]: DWARF first, else the per-Go-version
//!   table, else an error (never a silent zero).
//! - [`GoBinary::entry_site`] / [`GoBinary::return_sites`]: where to put
//!   uprobes, preferring instructions the kernel emulates.
//! - [`inspect`]: all of the above for the built-in probes (`agent inspect`).
//!
//! The file is memory-mapped once; nothing is copied except DWARF (which
//! must be decompressed), and that only on the first offset query.

/// The `.go.buildinfo` reader (public for the fuzz targets, agent/fuzz).
pub mod buildinfo;
/// The DWARF struct-layout reader (public for the fuzz targets).
pub mod dwarf;
mod goid_code;
mod inspect;
mod module_offsets;
mod offsets;
/// The `.gopclntab` reader (public for the fuzz targets).
pub mod pclntab;
mod sites;
mod typeinfo;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use object::LittleEndian as LE;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};

pub use crate::cursor::ReadError;
pub use buildinfo::{BuildInfo, BuildInfoError, GoVersion, Module};
pub use dwarf::{DwarfError, Member, StructLayout};
pub use goid_code::{GoidError, GoidSite};
pub use inspect::{BuiltinProbe, FieldReport, InspectReport, ProbeReport, inspect};
pub use module_offsets::{
    MODULE_FIELDS, ModuleEntry, ModuleLookupError, ModuleOffsetTable, VERSIONED_MODULE_STRUCTS,
    owner as module_owner, render as render_module_offset_table,
    validate as validate_module_offset_table,
};
pub use offsets::{
    FIXTURE_OPTIONAL_STRUCTS, Implausible, LIBRARY_FIELDS, NEEDED_FIELDS, OffsetTable, TableEntry,
    VERSIONED_STRUCTS, render as render_offset_table,
};
pub use offsets::{TableField, TableStruct};
pub use pclntab::{PclnError, PclnLine, PclnVersion};
pub use sites::kernel_emulates;
pub use typeinfo::TypeInfoError;

type ElfHeader = elf::FileHeader64<LE>;

/// Why a binary cannot be analysed at all.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file")]
    NotElf {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error("{path} is not an x86-64 little-endian ELF executable ({what})")]
    NotX86_64 { path: PathBuf, what: String },
    #[error("{path} is not a Go binary (no Go build info)")]
    NotGo { path: PathBuf },
    #[error("{path}: malformed Go build info at file offset {file_offset:#x}")]
    BuildInfo {
        path: PathBuf,
        file_offset: u64,
        #[source]
        source: BuildInfoError,
    },
}

/// Why a struct field offset is not available.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("struct {type_name} is not in this binary's DWARF (not linked in?)")]
    NoSuchStruct { type_name: String },
    #[error("{type_name} has no field {field:?} in this binary's DWARF")]
    NoSuchField { type_name: String, field: String },
    #[error(
        "no DWARF, and the offset table has no {type_name}.{field} for Go {go_version} (table covers {covered})"
    )]
    NotInTable {
        type_name: String,
        field: String,
        go_version: GoVersion,
        covered: String,
    },
    /// The table was measured on this Go release and the field was not
    /// there: the release does not have it (e.g. `Request.Pattern` < 1.23).
    #[error(
        "{type_name} has no field {field:?} in Go {go_version} (offset table measured on Go {measured})"
    )]
    AbsentInRelease {
        type_name: String,
        field: String,
        go_version: GoVersion,
        measured: String,
    },
    /// A struct of a module other than the standard library (grpc), not
    /// in DWARF and not in the module table for the binary's version.
    #[error("no offset for {type_name}.{field}")]
    Module {
        type_name: String,
        field: String,
        #[source]
        source: Box<ModuleLookupError>,
    },
    /// No DWARF, no table entry, and the binary's own metadata and code did
    /// not give the offset either.
    #[error(transparent)]
    NotInferred(Box<NotInferred>),
    #[error("reading DWARF failed")]
    Dwarf(#[source] Arc<DwarfError>),
    #[error("implausible offset for {type_name}.{field}")]
    Implausible {
        type_name: String,
        field: String,
        #[source]
        source: Implausible,
    },
    #[error("the built-in offset table is malformed")]
    Table(#[source] &'static serde_json::Error),
}

/// No DWARF, no table entry for the release, and inference from the
/// binary's type descriptors and machine code failed: which field, and why.
#[derive(Debug, thiserror::Error)]
#[error(
    "no usable offset for {type_name}.{field}: no DWARF, not in the offset table for Go {go_version} (it covers {covered}), and inference from the binary failed: {why}"
)]
pub struct NotInferred {
    pub type_name: String,
    pub field: String,
    pub go_version: GoVersion,
    pub covered: String,
    pub why: String,
}

/// Why no probe site could be computed.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("function {name} at {address:#x} is not backed by file bytes in any PT_LOAD segment")]
    NotMapped { name: String, address: u64 },
    #[error("function {name} at {address:#x}: the first instruction does not decode")]
    Undecodable { name: String, address: u64 },
    #[error(
        "function {name} at {address:#x} has size {size}, larger than the {MAX_FUNCTION_BYTES}-byte limit"
    )]
    TooLarge {
        name: String,
        address: u64,
        size: u64,
    },
}

/// Larger "functions" are corrupt sizes.
const MAX_FUNCTION_BYTES: u64 = 16 << 20;

/// A function's address range (link-time virtual addresses).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Function {
    pub name: String,
    pub address: u64,
    pub size: u64,
}

/// Where an offset came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum OffsetSource {
    Dwarf,
    /// The checked-in table; `go_version` is the release it was measured on.
    Table {
        go_version: String,
    },
    /// The module table (grpc); `version` is the module version measured.
    ModuleTable {
        module: String,
        version: String,
    },
    /// The binary's own struct type descriptor (`abi.StructType`).
    TypeMetadata,
    /// The runtime's machine code: loads of the field at `sites` (function
    /// and address), all agreeing; `type_metadata` says whether a type
    /// descriptor also has the field (and agrees).
    MachineCode {
        sites: Vec<String>,
        type_metadata: bool,
    },
}

/// Test-only: Go releases (`1.27`, comma-separated minor releases) the
/// offsets table pretends not to know, so that the inference path can be
/// tested on a release the table has. Honoured for nothing else.
pub const HIDE_TABLE_ENV: &str = "AGENT_TEST_HIDE_TABLE_RELEASES";

/// Whether [`HIDE_TABLE_ENV`] hides `version`'s minor release.
fn table_hidden(version: GoVersion) -> bool {
    std::env::var(HIDE_TABLE_ENV).is_ok_and(|v| {
        v.split(',')
            .any(|r| r.trim() == format!("{}.{}", version.major, version.minor))
    })
}

/// What the binary's own metadata and code say about struct layouts
/// (computed once, on the first offset that needs it).
#[derive(Debug)]
struct Inferred {
    /// Every struct of [`NEEDED_FIELDS`], from type descriptors; `Err` for
    /// all when the `types` region was not found.
    structs: Result<BTreeMap<String, Result<StructLayout, TypeInfoError>>, String>,
    /// `runtime.g.goid` from machine code.
    goid: Result<(u64, Vec<GoidSite>), GoidError>,
}

/// A struct field's offset and size, checked for plausibility.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldOffset {
    pub offset: u64,
    /// The field's size in bytes (0 if DWARF did not say).
    pub size: u64,
    pub source: OffsetSource,
}

/// A place to attach a uprobe.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProbeSite {
    /// Link-time virtual address.
    pub address: u64,
    /// Offset in the file (what uprobe attach takes).
    pub file_offset: u64,
    /// Intel syntax, e.g. `jbe 0x622eb4`.
    pub instruction: String,
    /// Whether the kernel emulates the instruction (cheap) instead of
    /// single-stepping it.
    pub emulated: bool,
    /// Why this site was chosen.
    pub reason: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Section {
    pub(crate) name: String,
    addr: u64,
    pub(crate) file: Range<usize>,
    pub(crate) compressed: bool,
    nobits: bool,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
    writable: bool,
    executable: bool,
}

/// An opened Go executable.
pub struct GoBinary {
    path: PathBuf,
    map: memmap2::Mmap,
    pie: bool,
    pub(crate) sections: Vec<Section>,
    segments: Vec<Segment>,
    build_info: BuildInfo,
    has_symtab: bool,
    pclntab: Option<(Range<usize>, pclntab::PclnTab)>,
    pclntab_error: Option<String>,
    dwarf: OnceLock<Result<dwarf::DwarfIndex, Arc<DwarfError>>>,
    relocs: OnceLock<HashMap<u64, u64>>,
    inferred: OnceLock<Inferred>,
}

impl std::fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("path", &self.path)
            .field("go", &self.build_info.go_version_raw)
            .field("pie", &self.pie)
            .finish_non_exhaustive()
    }
}

fn range(offset: u64, size: u64, len: usize) -> Option<Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    (end <= len).then_some(start..end)
}

impl GoBinary {
    /// Maps and checks `path`, and reads its build info and function table
    /// headers. Cheap: no symbol or DWARF walk happens here.
    pub fn open(path: &Path) -> Result<GoBinary, BinaryError> {
        let io = |source| BinaryError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this process. If
        // another process truncates the file while mapped, reads may fault;
        // executables of running processes cannot be written (ETXTBSY), and
        // every read below is bounds-checked against the mapped length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_map(path, map)
    }

    fn from_map(path: &Path, map: memmap2::Mmap) -> Result<GoBinary, BinaryError> {
        let data: &[u8] = &map;
        let not_elf = |source| BinaryError::NotElf {
            path: path.to_owned(),
            source,
        };
        let not_x86 = |what: String| BinaryError::NotX86_64 {
            path: path.to_owned(),
            what,
        };
        if data.len() >= 6 && data.starts_with(b"\x7fELF") {
            if data[4] != elf::ELFCLASS64.0 {
                return Err(not_x86("32-bit ELF".to_owned()));
            }
            if data[5] != elf::ELFDATA2LSB.0 {
                return Err(not_x86("big-endian ELF".to_owned()));
            }
        }
        let header = ElfHeader::parse(data).map_err(not_elf)?;
        let machine = header.e_machine.get(LE);
        if machine != elf::EM_X86_64 {
            return Err(not_x86(format!("e_machine {machine}")));
        }
        let pie = header.e_type.get(LE) == elf::ET_DYN;
        let table = header.sections(LE, data).map_err(not_elf)?;
        let mut sections = Vec::new();
        let mut has_symtab = false;
        for s in table.iter() {
            let name = table.section_name(LE, s).unwrap_or_default();
            let name = String::from_utf8_lossy(name).into_owned();
            let sh_type = s.sh_type(LE);
            if sh_type == elf::SHT_SYMTAB && s.sh_size(LE) > s.sh_entsize(LE) {
                has_symtab = true;
            }
            let nobits = sh_type == elf::SHT_NOBITS;
            let size = if nobits { 0 } else { s.sh_size(LE) };
            let Some(file) = range(s.sh_offset(LE), size, data.len()) else {
                continue;
            };
            sections.push(Section {
                name,
                addr: s.sh_addr(LE),
                file,
                compressed: s.sh_flags(LE).0 & elf::SHF_COMPRESSED.0 != 0,
                nobits,
            });
        }
        let mut segments = Vec::new();
        for p in header.program_headers(LE, data).map_err(not_elf)? {
            if p.p_type(LE) == elf::PT_LOAD {
                segments.push(Segment {
                    vaddr: p.p_vaddr(LE),
                    offset: p.p_offset(LE),
                    filesz: p.p_filesz(LE),
                    writable: p.p_flags(LE).0 & elf::PF_W.0 != 0,
                    executable: p.p_flags(LE).0 & elf::PF_X.0 != 0,
                });
            }
        }
        let mut bin = GoBinary {
            path: path.to_owned(),
            map,
            pie,
            sections,
            segments,
            build_info: BuildInfo {
                go_version: GoVersion::new(0, 0, 0),
                go_version_raw: String::new(),
                main_package: String::new(),
                main: Module::default(),
                deps: Vec::new(),
                settings: Vec::new(),
            },
            has_symtab,
            pclntab: None,
            pclntab_error: None,
            dwarf: OnceLock::new(),
            relocs: OnceLock::new(),
            inferred: OnceLock::new(),
        };
        bin.build_info = bin.read_build_info()?;
        match bin.read_pclntab() {
            Ok(t) => bin.pclntab = t,
            Err(e) => bin.pclntab_error = Some(error_chain(&e)),
        }
        Ok(bin)
    }

    fn data(&self) -> &[u8] {
        &self.map
    }

    fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// `len` bytes the program sees at `vaddr` (file-backed part only).
    fn read_vaddr(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        let off = self.file_offset(vaddr)?;
        let seg = self.segment(vaddr)?;
        let seg_end = seg.offset.checked_add(seg.filesz)?;
        let end = off.checked_add(len)?;
        if end > seg_end {
            return None;
        }
        self.data().get(range(off, len, self.data().len())?)
    }

    fn segment(&self, vaddr: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
    }

    fn read_build_info(&self) -> Result<BuildInfo, BinaryError> {
        let data = self.data();
        // The section, else a 16-byte aligned magic in a writable segment
        // (what Go's debug/buildinfo does when section headers are gone).
        let start = match self.section(".go.buildinfo") {
            Some(s) => Some(s.file.start),
            None => self.segments.iter().filter(|s| s.writable).find_map(|s| {
                let r = range(s.offset, s.filesz, data.len())?;
                Some(r.start + buildinfo::find_magic(&data[r])?)
            }),
        };
        let Some(start) = start else {
            return Err(BinaryError::NotGo {
                path: self.path.clone(),
            });
        };
        let blob = &data[start..];
        if !blob.starts_with(buildinfo::MAGIC) {
            return Err(BinaryError::NotGo {
                path: self.path.clone(),
            });
        }
        let read = |vaddr: u64, len: u64| self.read_vaddr(vaddr, len);
        buildinfo::parse(blob, &read).map_err(|source| BinaryError::BuildInfo {
            path: self.path.clone(),
            file_offset: start as u64,
            source,
        })
    }

    fn read_pclntab(&self) -> Result<Option<(Range<usize>, pclntab::PclnTab)>, PclnError> {
        // `.data.rel.ro.gopclntab`: PIE builds before Go 1.26.
        let section = self
            .section(".gopclntab")
            .or_else(|| self.section(".data.rel.ro.gopclntab"));
        if let Some(section) = section {
            let data = &self.data()[section.file.clone()];
            let tab = pclntab::PclnTab::parse(data, |names| self.text_start(section.addr, names))?;
            return Ok(Some((section.file.clone(), tab)));
        }
        // No section header: the symbol if there is one, else a scan of
        // the data segments for a header whose functions land in code.
        let mut candidates: Vec<Range<usize>> = Vec::new();
        if let Some(start) = self
            .symbol_any("runtime.pclntab")
            .and_then(|s| self.file_offset(s.address))
            && let Some(seg_end) = self.segment_file_end(start)
        {
            candidates.push(start as usize..seg_end);
        }
        for seg in self.segments.iter().filter(|s| !s.executable) {
            let Some(r) = range(seg.offset, seg.filesz, self.data().len()) else {
                continue;
            };
            let base = r.start;
            candidates.extend(
                pclntab::header_candidates(&self.data()[r.clone()]).map(|at| base + at..r.end),
            );
        }
        let mut first_error = None;
        for r in candidates {
            let data = &self.data()[r.clone()];
            let Some(vaddr) = self.vaddr_of_file_offset(r.start as u64) else {
                continue;
            };
            match pclntab::PclnTab::parse(data, |names| self.text_start(vaddr, names)) {
                Ok(tab) if self.plausible_pclntab(data, &tab) => return Ok(Some((r, tab))),
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Where Go code starts (`runtime.text`), for pclntabs that store
    /// entries as offsets from it: the symbol; else `moduledata.text`;
    /// else the start of `.text` (right for the Go linker's internal
    /// linking, where `.text` begins with `runtime.text`; with external
    /// linking C start-up code may come first, which is why moduledata is
    /// tried before).
    fn text_start(&self, pclntab_vaddr: u64, funcnametab_offset: usize) -> Option<u64> {
        if let Some(f) = self.symbol("runtime.text") {
            return Some(f.address);
        }
        let funcnametab = pclntab_vaddr.checked_add(funcnametab_offset as u64)?;
        self.moduledata_text(pclntab_vaddr, funcnametab)
            .or_else(|| self.section(".text").map(|s| s.addr))
    }

    /// `runtime.firstmoduledata.text`. The moduledata starts with
    /// `pcHeader *pcHeader` (the pclntab address) and the `funcnametab`
    /// slice; `text` is the 23rd word (Go 1.16 to 1.26). In PIE the words
    /// are zero in the file and filled by `R_X86_64_RELATIVE` relocations,
    /// whose addends are read instead.
    fn moduledata_text(&self, pclntab_vaddr: u64, funcnametab: u64) -> Option<u64> {
        const TEXT_WORD: u64 = 22;
        let is_code = |text: u64| self.segment(text).is_some_and(|s| s.executable);
        for seg in self.segments.iter().filter(|s| !s.executable) {
            let Some(r) = range(seg.offset, seg.filesz, self.data().len()) else {
                continue;
            };
            let words = &self.data()[r];
            let word = |i: usize| -> Option<u64> {
                let b = words.get(i * 8..i * 8 + 8)?;
                Some(u64::from_le_bytes(b.try_into().ok()?))
            };
            for i in 0..words.len() / 8 {
                if word(i) == Some(pclntab_vaddr)
                    && word(i + 1) == Some(funcnametab)
                    && let Some(text) = word(i + TEXT_WORD as usize)
                    && is_code(text)
                {
                    return Some(text);
                }
            }
        }
        // PIE: find the relocation that writes the pclntab address, check
        // the next word gets funcnametab, and take the addend for `text`.
        let relocs = self.relative_relocations();
        let md = relocs.iter().find_map(|&(at, addend)| {
            let next = at.checked_add(8)?;
            (addend == pclntab_vaddr && relocs.iter().any(|&(o, a)| o == next && a == funcnametab))
                .then_some(at)
        })?;
        let text_at = md.checked_add(TEXT_WORD * 8)?;
        relocs
            .iter()
            .find(|&&(o, _)| o == text_at)
            .map(|&(_, addend)| addend)
            .filter(|&t| is_code(t))
    }

    /// Every `R_X86_64_RELATIVE` relocation (target address, addend) in the
    /// `SHT_RELA` sections.
    fn relative_relocations(&self) -> Vec<(u64, u64)> {
        const R_X86_64_RELATIVE: u64 = 8;
        let data = self.data();
        let Ok(header) = ElfHeader::parse(data) else {
            return Vec::new();
        };
        let Ok(table) = header.sections(LE, data) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in table.iter().filter(|s| s.sh_type(LE) == elf::SHT_RELA) {
            let Some(r) = range(s.sh_offset(LE), s.sh_size(LE), data.len()) else {
                continue;
            };
            for rela in data[r].chunks_exact(24) {
                let mut c = crate::cursor::Cursor::new(rela);
                let (Ok(offset), Ok(info), Ok(addend)) = (c.read_u64(), c.read_u64(), c.read_u64())
                else {
                    continue;
                };
                if info & 0xffff_ffff == R_X86_64_RELATIVE {
                    out.push((offset, addend));
                }
            }
        }
        out
    }

    /// The link-time address of a file offset (inverse of [`Self::file_offset`]).
    fn vaddr_of_file_offset(&self, off: u64) -> Option<u64> {
        let seg = self
            .segments
            .iter()
            .find(|s| off >= s.offset && off - s.offset < s.filesz)?;
        seg.vaddr.checked_add(off - seg.offset)
    }

    /// A table found by scanning must describe real code: a function at
    /// the start, the middle and the end, each in an executable segment.
    fn plausible_pclntab(&self, data: &[u8], tab: &pclntab::PclnTab) -> bool {
        if tab.is_empty() {
            return false;
        }
        [0, tab.len() / 2, tab.len() - 1].iter().all(|&i| {
            tab.func(data, i).is_ok_and(|f| {
                f.entry < f.end
                    && !f.name.is_empty()
                    && self.segment(f.entry).is_some_and(|s| s.executable)
            })
        })
    }

    /// End (file offset) of the segment containing file offset `off`.
    fn segment_file_end(&self, off: u64) -> Option<usize> {
        let seg = self
            .segments
            .iter()
            .find(|s| off >= s.offset && off - s.offset < s.filesz)?;
        usize::try_from(seg.offset.checked_add(seg.filesz)?)
            .ok()
            .filter(|&end| end <= self.data().len())
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file, as mapped: every family that reads more of the
    /// binary reads it here rather than opening the file again.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn build_info(&self) -> &BuildInfo {
        &self.build_info
    }

    /// Position-independent (ET_DYN): addresses are relative to the load base.
    pub fn is_pie(&self) -> bool {
        self.pie
    }

    /// The link-time address of the file's first page (the segment at file
    /// offset 0): a PIE's load bias is where its mapping at offset 0 starts
    /// minus this. Go links PIE executables at 0x400000 as often as at 0.
    pub fn link_base(&self) -> u64 {
        self.vaddr_of_file_offset(0).map_or(0, |v| v & !0xfff)
    }

    /// Whether `.symtab` is present (not `-ldflags=-s`).
    pub fn has_symtab(&self) -> bool {
        self.has_symtab
    }

    /// Whether `.debug_info` is present (not `-ldflags=-w`).
    pub fn has_dwarf(&self) -> bool {
        self.section(".debug_info")
            .or_else(|| self.section(".zdebug_info"))
            .is_some_and(|s| !s.nobits && !s.file.is_empty())
    }

    /// The pclntab layout, if the table was found and parsed.
    pub fn pclntab_version(&self) -> Option<PclnVersion> {
        self.pclntab.as_ref().map(|(_, t)| t.version)
    }

    /// Why the pclntab could not be used, if it could not.
    pub fn pclntab_error(&self) -> Option<&str> {
        self.pclntab_error.as_deref()
    }

    /// Number of functions in the pclntab.
    pub fn pclntab_len(&self) -> usize {
        self.pclntab.as_ref().map_or(0, |(_, t)| t.len())
    }

    /// A function symbol (`STT_FUNC`, or `STT_NOTYPE` for assembly
    /// markers such as `runtime.text`).
    fn symbol(&self, name: &str) -> Option<Function> {
        self.find_symbol(name, |t| t == elf::STT_FUNC || t == elf::STT_NOTYPE)
    }

    /// The link-time address of a data symbol (an itab such as
    /// `go:itab.*pkg.T,error`), from `.symtab`; `None` in stripped binaries.
    pub fn data_symbol(&self, name: &str) -> Option<u64> {
        self.symbol_any(name)
            .map(|s| s.address)
            .filter(|&address| address != 0)
    }

    /// A symbol of any type (`runtime.pclntab` is data).
    fn symbol_any(&self, name: &str) -> Option<Function> {
        self.find_symbol(name, |_| true)
    }

    fn find_symbol(&self, name: &str, want: impl Fn(elf::SymbolType) -> bool) -> Option<Function> {
        if !self.has_symtab {
            return None;
        }
        let data = self.data();
        let header = ElfHeader::parse(data).ok()?;
        let table = header.sections(LE, data).ok()?;
        let symbols = table.symbols(LE, data, elf::SHT_SYMTAB).ok()?;
        let strings = symbols.strings();
        symbols.iter().find_map(|sym| {
            if !want(sym.st_type()) {
                return None;
            }
            (sym.name(LE, strings).ok()? == name.as_bytes()).then(|| Function {
                name: name.to_owned(),
                address: sym.st_value(LE),
                size: sym.st_size(LE),
            })
        })
    }

    fn pcln_function(&self, name: &str) -> Option<Function> {
        let (r, tab) = self.pclntab.as_ref()?;
        let data = self.data().get(r.clone())?;
        let f = tab.find(data, name).ok()??;
        Some(Function {
            name: name.to_owned(),
            address: f.entry,
            size: f.end.saturating_sub(f.entry),
        })
    }

    /// A function by its Go symbol name (`net/http.(*response).finishRequest`):
    /// `.symtab` when present, else `.gopclntab`. Sizes from the pclntab
    /// run to the next function (they include alignment padding).
    pub fn function(&self, name: &str) -> Option<Function> {
        if self.has_symtab
            && let Some(mut f) = self.symbol(name).filter(|f| f.address != 0)
        {
            if f.size == 0
                && let Some(p) = self.pcln_function(name)
            {
                f.size = p.size;
            }
            return Some(f);
        }
        self.pcln_function(name)
    }

    /// Every function in the pclntab, in address order (stops at the first
    /// malformed record).
    pub fn functions(&self) -> impl Iterator<Item = Function> + '_ {
        let table = self
            .pclntab
            .as_ref()
            .and_then(|(r, tab)| Some((self.data().get(r.clone())?, tab)));
        let n = table.map_or(0, |(_, tab)| tab.len());
        (0..n).map_while(move |i| {
            let (data, tab) = table?;
            let f = tab.func(data, i).ok()?;
            Some(Function {
                name: String::from_utf8_lossy(f.name).into_owned(),
                address: f.entry,
                size: f.end.saturating_sub(f.entry),
            })
        })
    }

    /// The function containing `address` (pclntab only).
    pub fn function_at(&self, address: u64) -> Option<Function> {
        let (r, tab) = self.pclntab.as_ref()?;
        let data = self.data().get(r.clone())?;
        let f = tab.lookup(data, address).ok()??;
        Some(Function {
            name: String::from_utf8_lossy(f.name).into_owned(),
            address: f.entry,
            size: f.end.saturating_sub(f.entry),
        })
    }

    /// The function, file and line of `address` (a link-time virtual
    /// address), from the pclntab's line tables.
    pub fn line_at(&self, address: u64) -> Option<PclnLine<'_>> {
        let (r, tab) = self.pclntab.as_ref()?;
        let data = self.data().get(r.clone())?;
        tab.line_at(data, address).ok()?
    }

    /// File offset of a link-time virtual address, via the PT_LOAD segment
    /// that maps it (works the same for PIE and non-PIE executables).
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let seg = self.segment(vaddr)?;
        seg.offset.checked_add(vaddr - seg.vaddr)
    }

    fn dwarf(&self) -> Option<Result<&dwarf::DwarfIndex, Arc<DwarfError>>> {
        if !self.has_dwarf() {
            return None;
        }
        let loaded = self.dwarf.get_or_init(|| {
            dwarf::DwarfIndex::load(|name| {
                let zname = name.replacen(".debug_", ".zdebug_", 1);
                let Some(s) = self.section(name).or_else(|| self.section(&zname)) else {
                    return Ok(Arc::from(&[][..]));
                };
                dwarf::section_bytes(&dwarf::RawSection {
                    name: &s.name,
                    data: &self.data()[s.file.clone()],
                    compressed: s.compressed,
                })
            })
            .map_err(Arc::new)
        });
        Some(loaded.as_ref().map_err(Arc::clone))
    }

    /// The layout of a struct from DWARF (`fields` empty: all members).
    /// `None` if the binary has no DWARF.
    pub fn dwarf_struct(
        &self,
        type_name: &str,
        fields: &[&str],
    ) -> Option<Result<Option<StructLayout>, OffsetError>> {
        let index = match self.dwarf()? {
            Ok(index) => index,
            Err(e) => return Some(Err(OffsetError::Dwarf(e))),
        };
        Some(
            index
                .layout(type_name, fields)
                .map_err(|e| OffsetError::Dwarf(Arc::new(e))),
        )
    }

    /// Offset of `field` in `type_name` (`runtime.g`, `net/http.Request`,
    /// `net/url.URL`): DWARF when the binary has it, else the table for
    /// this Go release, else an error. Every offset is plausibility-checked.
    pub fn struct_field_offset(
        &self,
        type_name: &str,
        field: &str,
    ) -> Result<FieldOffset, OffsetError> {
        let implausible = |source| OffsetError::Implausible {
            type_name: type_name.to_owned(),
            field: field.to_owned(),
            source,
        };
        // Unreadable DWARF falls back to the table; if the table has
        // nothing either, the DWARF error is the one reported.
        let mut dwarf_error = None;
        match self.dwarf_struct(type_name, &[field]) {
            Some(Err(OffsetError::Dwarf(e))) => dwarf_error = Some(e),
            None => {}
            Some(layout) => {
                let layout = layout?.ok_or_else(|| OffsetError::NoSuchStruct {
                    type_name: type_name.to_owned(),
                })?;
                let (_, m) = layout
                    .members
                    .iter()
                    .find(|(name, _)| name == field)
                    .ok_or_else(|| OffsetError::NoSuchField {
                        type_name: type_name.to_owned(),
                        field: field.to_owned(),
                    })?;
                offsets::check(m.offset, m.size, m.align, layout.size).map_err(implausible)?;
                return Ok(FieldOffset {
                    offset: m.offset,
                    size: m.size,
                    source: OffsetSource::Dwarf,
                });
            }
        }
        if module_offsets::is_module_struct(type_name) {
            let table = ModuleOffsetTable::builtin().map_err(OffsetError::Table)?;
            return match table.lookup(&self.build_info, type_name, field) {
                Ok(f) => {
                    offsets::check(f.offset, f.size, f.align, f.struct_size)
                        .map_err(implausible)?;
                    Ok(FieldOffset {
                        offset: f.offset,
                        size: f.size,
                        source: OffsetSource::ModuleTable {
                            module: f.module,
                            version: f.measured,
                        },
                    })
                }
                Err(_) if dwarf_error.is_some() => {
                    Err(OffsetError::Dwarf(dwarf_error.expect("checked")))
                }
                Err(source) => Err(OffsetError::Module {
                    type_name: type_name.to_owned(),
                    field: field.to_owned(),
                    source: Box::new(source),
                }),
            };
        }
        let table = OffsetTable::builtin().map_err(OffsetError::Table)?;
        let version = self.build_info.go_version;
        let hidden = table_hidden(version);
        let found = table.entry(version).filter(|_| !hidden).and_then(|e| {
            let s = e.structs.get(type_name)?;
            let f = s.fields.get(field)?;
            Some((e, s, f))
        });
        let Some((entry, s, f)) = found else {
            // A field the generator looks for, missing from an entry that
            // has its struct (or a struct only some releases have, missing
            // from the entry): this release does not have the field.
            let wanted = NEEDED_FIELDS
                .iter()
                .any(|(t, fields)| *t == type_name && fields.contains(&field));
            if let Some(entry) = table.entry(version).filter(|_| !hidden)
                && wanted
                && (entry.structs.contains_key(type_name)
                    || offsets::VERSIONED_STRUCTS.contains(&type_name))
            {
                if let Some(e) = dwarf_error {
                    return Err(OffsetError::Dwarf(e));
                }
                return Err(OffsetError::AbsentInRelease {
                    type_name: type_name.to_owned(),
                    field: field.to_owned(),
                    go_version: version,
                    measured: entry.go.clone(),
                });
            }
            // No table entry for this release: the binary itself.
            return match self.inferred_field_offset(type_name, field) {
                Ok(f) => Ok(f),
                Err(_) if dwarf_error.is_some() => {
                    Err(OffsetError::Dwarf(dwarf_error.expect("checked")))
                }
                Err(why) => Err(OffsetError::NotInferred(Box::new(NotInferred {
                    type_name: type_name.to_owned(),
                    field: field.to_owned(),
                    go_version: version,
                    covered: if hidden {
                        format!(
                            "{}, but {HIDE_TABLE_ENV} hides Go {}.{}",
                            table.versions().join(", "),
                            version.major,
                            version.minor
                        )
                    } else {
                        table.versions().join(", ")
                    },
                    why,
                }))),
            };
        };
        offsets::check(f.offset, f.size, f.align, s.size).map_err(implausible)?;
        Ok(FieldOffset {
            offset: f.offset,
            size: f.size,
            source: OffsetSource::Table {
                go_version: entry.go.clone(),
            },
        })
    }

    /// The offset of `field` in `type_name` from the binary's own contents
    /// alone (never DWARF or the table): its struct type descriptor, and
    /// for `runtime.g.goid` the runtime's machine code, at least two
    /// functions agreeing (and agreeing with the descriptor when there is
    /// one). `Err` says why not. Used when DWARF and the table have
    /// nothing, and by the tests that check it against DWARF.
    pub fn inferred_field_offset(
        &self,
        type_name: &str,
        field: &str,
    ) -> Result<FieldOffset, String> {
        let inferred = self.inferred();
        let described = match &inferred.structs {
            Ok(structs) => match structs.get(type_name) {
                Some(Ok(layout)) => match layout.members.iter().find(|(n, _)| n == field) {
                    Some((_, m)) => {
                        offsets::check(m.offset, m.size, m.align, layout.size)
                            .map_err(|e| format!("type metadata: {e}"))?;
                        Ok(m.clone())
                    }
                    None => Err(format!(
                        "the type descriptor of {type_name} has no field {field:?}"
                    )),
                },
                Some(Err(e)) => Err(e.to_string()),
                None => Err(format!("{type_name} is not a struct the agent infers")),
            },
            Err(e) => Err(e.clone()),
        };
        if (type_name, field) != ("runtime.g", "goid") {
            return described.map(|m| FieldOffset {
                offset: m.offset,
                size: m.size,
                source: OffsetSource::TypeMetadata,
            });
        }
        let (offset, sites) = inferred
            .goid
            .as_ref()
            .map_err(|e| format!("machine code: {e}"))?;
        if let Ok(m) = &described
            && m.offset != *offset
        {
            return Err(format!(
                "machine code says {offset:#x} but the type descriptor says {:#x}",
                m.offset
            ));
        }
        Ok(FieldOffset {
            offset: *offset,
            size: 8,
            source: OffsetSource::MachineCode {
                sites: sites
                    .iter()
                    .map(|s| format!("{} at {:#x}", s.function, s.address))
                    .collect(),
                type_metadata: described.is_ok(),
            },
        })
    }

    fn inferred(&self) -> &Inferred {
        self.inferred.get_or_init(|| Inferred {
            structs: self.type_metadata_layouts(),
            goid: self.goid_from_code(),
        })
    }

    /// Every `R_X86_64_RELATIVE` relocation, by target (once).
    fn relocs(&self) -> &HashMap<u64, u64> {
        self.relocs
            .get_or_init(|| self.relative_relocations().into_iter().collect())
    }

    /// A pointer-sized word at a link-time address, as the program sees it
    /// after relocation.
    fn word_at(&self, vaddr: u64) -> Option<u64> {
        if let Some(&addend) = self.relocs().get(&vaddr) {
            return Some(addend);
        }
        let b = self.read_vaddr(vaddr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// `runtime.firstmoduledata`'s address: the word that points at the
    /// pclntab followed by the one that points at its `funcnametab`.
    fn moduledata_address(&self) -> Option<u64> {
        let (r, tab) = self.pclntab.as_ref()?;
        let pclntab = self.vaddr_of_file_offset(r.start as u64)?;
        let funcnametab = pclntab.checked_add(tab.funcnametab_offset() as u64)?;
        for seg in self.segments.iter().filter(|s| !s.executable) {
            let Some(fr) = range(seg.offset, seg.filesz, self.data().len()) else {
                continue;
            };
            let words = &self.data()[fr];
            let word = |i: usize| -> Option<u64> {
                let b = words.get(i * 8..i * 8 + 8)?;
                Some(u64::from_le_bytes(b.try_into().ok()?))
            };
            for i in 0..words.len() / 8 {
                if word(i) == Some(pclntab) && word(i + 1) == Some(funcnametab) {
                    return seg.vaddr.checked_add(i as u64 * 8);
                }
            }
        }
        let relocs = self.relocs();
        relocs.iter().find_map(|(&at, &addend)| {
            (addend == pclntab && relocs.get(&at.checked_add(8)?) == Some(&funcnametab))
                .then_some(at)
        })
    }

    /// The layouts of [`NEEDED_FIELDS`]' and [`LIBRARY_FIELDS`]' structs
    /// from the type descriptors in the moduledata's `types` region.
    fn type_metadata_layouts(
        &self,
    ) -> Result<BTreeMap<String, Result<StructLayout, TypeInfoError>>, String> {
        let md = self
            .moduledata_address()
            .ok_or("runtime.firstmoduledata not found (no pclntab, or no word points at it)")?;
        let wanted: Vec<&str> = NEEDED_FIELDS
            .iter()
            .chain(LIBRARY_FIELDS)
            .map(|(t, _)| *t)
            .collect();
        let go = self.build_info.go_version;
        let mut best: Option<BTreeMap<String, Result<StructLayout, TypeInfoError>>> = None;
        for (types_word, etypes_word) in typeinfo::moduledata_layouts(go) {
            let (Some(types), Some(etypes)) = (
                self.word_at(md + types_word * 8),
                self.word_at(md + etypes_word * 8),
            ) else {
                continue;
            };
            if !typeinfo::plausible_region(types, etypes) {
                continue;
            }
            let Some(bytes) = self.read_vaddr(types, etypes - types) else {
                continue;
            };
            let region = typeinfo::Region {
                base: types,
                bytes,
                relocs: self.relocs(),
                shifted_offsets: (go.major, go.minor) < (1, 19),
            };
            let layouts = typeinfo::struct_layouts(&region, &wanted);
            let found = layouts.values().filter(|l| l.is_ok()).count();
            if found
                > best
                    .as_ref()
                    .map_or(0, |b| b.values().filter(|l| l.is_ok()).count())
            {
                best = Some(layouts);
            }
            if found > 0 {
                break;
            }
        }
        best.ok_or_else(|| {
            format!("no struct type descriptor found in the moduledata's types region (moduledata at {md:#x})")
        })
    }

    /// `runtime.g.goid` from the runtime's prints of goroutine ids.
    fn goid_from_code(&self) -> Result<(u64, Vec<GoidSite>), GoidError> {
        let addr = |name: &str| self.function(name).map_or(0, |f| f.address);
        let print = goid_code::PrintFunctions {
            printstring: addr("runtime.printstring"),
            printints: [addr("runtime.printuint"), addr("runtime.printint")],
        };
        if print.printstring == 0 || print.printints == [0, 0] {
            return Err(GoidError::NoPrintFunctions);
        }
        let read = |at: u64, len: u64| self.read_vaddr(at, len).map(<[u8]>::to_vec);
        let mut sites = Vec::new();
        for f in self.functions() {
            if !f.name.starts_with("runtime.") {
                continue;
            }
            let Ok((code, _)) = self.code(&f) else {
                continue;
            };
            sites.extend(goid_code::sites_in(&f.name, code, f.address, print, &read));
        }
        let offset = goid_code::agree(&sites)?;
        Ok((offset, sites))
    }

    /// A table entry for this binary's Go release from its DWARF and, for
    /// structs it does not use, from the DWARF of `also` (other fixtures
    /// built with the same release): the generator behind `cargo xtask
    /// offsets`.
    pub fn offset_table_entry(&self, also: &[&GoBinary]) -> Result<TableEntry, String> {
        let go = self.build_info.go_version.to_string();
        for bin in std::iter::once(self).chain(also.iter().copied()) {
            if !bin.has_dwarf() {
                return Err(format!("{} has no DWARF", bin.path.display()));
            }
            if bin.build_info.go_version.to_string() != go {
                return Err(format!(
                    "{} is built with Go {}, not {go}",
                    bin.path.display(),
                    bin.build_info.go_version
                ));
            }
        }
        offsets::entry_from_layouts(&go, |name, fields| {
            std::iter::once(self)
                .chain(also.iter().copied())
                .find_map(|bin| bin.dwarf_struct(name, fields)?.ok().flatten())
        })
    }

    fn code(&self, func: &Function) -> Result<(&[u8], u64), SiteError> {
        if func.size > MAX_FUNCTION_BYTES {
            return Err(SiteError::TooLarge {
                name: func.name.clone(),
                address: func.address,
                size: func.size,
            });
        }
        let not_mapped = || SiteError::NotMapped {
            name: func.name.clone(),
            address: func.address,
        };
        let seg = self.segment(func.address).ok_or_else(not_mapped)?;
        let start = self.file_offset(func.address).ok_or_else(not_mapped)?;
        // Clamp to the segment's file bytes: a bad size cannot read past it.
        let avail = seg.filesz - (func.address - seg.vaddr);
        let len = func.size.min(avail);
        let bytes = range(start, len, self.data().len())
            .and_then(|r| self.data().get(r))
            .ok_or_else(not_mapped)?;
        Ok((bytes, start))
    }

    /// The cheapest probe site at or after `func`'s entry where the kernel
    /// emulates the instruction and no skipped instruction wrote any of
    /// `preserve` or R14 (the goroutine). Falls back to the entry, with the
    /// reason, when there is none.
    pub fn entry_site(
        &self,
        func: &Function,
        preserve: &[iced_x86::Register],
    ) -> Result<ProbeSite, SiteError> {
        let (code, file_offset) = self.code(func)?;
        let site =
            sites::entry(code, func.address, preserve).ok_or_else(|| SiteError::Undecodable {
                name: func.name.clone(),
                address: func.address,
            })?;
        Ok(ProbeSite {
            address: func.address + site.offset,
            file_offset: file_offset + site.offset,
            instruction: site.instruction,
            emulated: site.emulated,
            reason: site.reason,
        })
    }

    /// `func`'s first instruction as a probe site: single-stepped by the
    /// kernel (~9 us/hit), for comparing costs (`--entry-site
    /// function-start`), never the default.
    pub fn first_instruction_site(&self, func: &Function) -> Result<ProbeSite, SiteError> {
        let file_offset = self
            .file_offset(func.address)
            .ok_or_else(|| SiteError::NotMapped {
                name: func.name.clone(),
                address: func.address,
            })?;
        Ok(ProbeSite {
            address: func.address,
            file_offset,
            instruction: "(first instruction)".to_owned(),
            emulated: false,
            reason: "--entry-site function-start".to_owned(),
        })
    }

    /// The offset of an optional field: `OFFSET_ABSENT` when this binary
    /// has none, with the reason pushed on `missing` (logged by the family,
    /// not fatal).
    pub fn optional_field_offset(
        &self,
        type_name: &str,
        field: &str,
        missing: &mut Vec<String>,
    ) -> u64 {
        match self.struct_field_offset(type_name, field) {
            Ok(f) => f.offset,
            Err(err) => {
                missing.push(format!("{type_name}.{field}: {err}"));
                agent_common::target::OFFSET_ABSENT
            }
        }
    }

    /// Every `ret` in `func`'s body (decoded, so `c3` bytes inside other
    /// instructions do not count).
    /// Every direct call in `func` to the function at `target`.
    pub fn call_sites(&self, func: &Function, target: u64) -> Result<Vec<ProbeSite>, SiteError> {
        let (code, file_offset) = self.code(func)?;
        Ok(sites::calls_to(code, func.address, target)
            .into_iter()
            .map(|s| ProbeSite {
                address: func.address + s.offset,
                file_offset: file_offset + s.offset,
                instruction: s.instruction,
                emulated: s.emulated,
                reason: s.reason,
            })
            .collect())
    }

    pub fn return_sites(&self, func: &Function) -> Result<Vec<ProbeSite>, SiteError> {
        let (code, file_offset) = self.code(func)?;
        Ok(sites::returns(code, func.address)
            .into_iter()
            .map(|s| ProbeSite {
                address: func.address + s.offset,
                file_offset: file_offset + s.offset,
                instruction: s.instruction,
                emulated: s.emulated,
                reason: s.reason,
            })
            .collect())
    }
}

// The agent shares one analysis across tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GoBinary>();
};

/// `abi.Type.TFlag`, the same on every release since Go 1.17.
const TYPE_TFLAG: u64 = 20;
/// `abi.Type.Str` (a NameOff, i32), the same on every release since Go 1.17.
const TYPE_STR: u64 = 40;
/// `abi.TFlagExtraStar`: the name has a `*` to drop.
const TFLAG_EXTRA_STAR: u8 = 1 << 1;

/// The name of the Go type whose descriptor is at link-time address
/// `addr` (`*net.OpError`), as `runtime.(*_type).string` finds it: its
/// `Str` is a name offset from `types_base` (the `type:*` symbol), and a
/// name is a flags byte, a uvarint length and the bytes. `read` copies the
/// binary's bytes at a link-time address; names longer than `max_len` are
/// refused.
pub fn type_descriptor_name(
    types_base: u64,
    addr: u64,
    max_len: u64,
    read: impl Fn(u64, &mut [u8]) -> Option<()>,
) -> Option<String> {
    let mut tflag = [0u8; 1];
    read(addr.checked_add(TYPE_TFLAG)?, &mut tflag)?;
    let mut off = [0u8; 4];
    read(addr.checked_add(TYPE_STR)?, &mut off)?;
    let name_at = types_base.checked_add_signed(i64::from(i32::from_le_bytes(off)))?;
    // The flags byte, then a length of at most two uvarint bytes (16,383).
    let mut head = [0u8; 3];
    read(name_at, &mut head)?;
    let (len, n) = crate::cursor::uvarint(&head[1..]).ok()?;
    if len == 0 || len > max_len {
        return None;
    }
    let mut name = vec![0u8; usize::try_from(len).ok()?];
    read(name_at.checked_add(1 + n as u64)?, &mut name)?;
    let mut name = String::from_utf8(name).ok()?;
    if tflag[0] & TFLAG_EXTRA_STAR != 0 && name.starts_with('*') {
        name.remove(0);
    }
    Some(name)
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
