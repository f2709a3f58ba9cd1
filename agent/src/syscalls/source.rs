//! The source line of a system call's user-space caller (`--source`).
//!
//! The kernel sends the user stack with each call
//! ([`SyscallSourceRecord`]): the frame-pointer walk and the top words of
//! the stack. Here each address is mapped to its object (`/proc/PID/maps`;
//! for a process already gone, its executable when that is not
//! position-independent) and symbolized: Go executables from `.gopclntab`'s
//! line tables, other ELF objects from their DWARF line tables and symbol
//! table. Results are cached by object and address, so a call site costs
//! one lookup after its first.
//!
//! Which frame is "the caller" (the first frame that is not the runtime's
//! or libc's own):
//! - Go: the first frame whose function belongs to the main package or to
//!   a module listed in the build info: the standard library (`runtime`,
//!   `syscall`, `internal/...`, `os`, ...) is skipped, so a handler's
//!   `f.Sync()` reports the handler's line.
//! - C, C++, Rust: the first frame with a DWARF line outside `libc.so`,
//!   `ld-linux` and `libpthread`. In a static executable libc's wrappers
//!   have no line table (Debian's `libc.a` carries no DWARF), so the first
//!   frame with one is the caller.
//!
//! A libc wrapper usually keeps no frame pointer, so the kernel's walk goes
//! from the wrapper straight to its caller's caller. The wrapper's own
//! return address is found with its `.eh_frame` CFI, from the stack words
//! the kernel copied.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::syscalls::SyscallSourceRecord;
use gimli::{
    BaseAddresses, CfaRule, EhFrame, RegisterRule, UnwindContext, UnwindSection as _, X86_64,
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use crate::binary::GoBinary;

/// Where a call came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub file: String,
    pub line: u32,
    pub function: String,
}

/// One frame, symbolized.
#[derive(Debug)]
struct Frame {
    caller: Arc<Caller>,
    /// Whether it is user code (not the runtime's or libc's own).
    user: bool,
}

/// An executable mapping of a process.
#[derive(Clone, Debug)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: PathBuf,
}

/// Symbolizes callers, with every cache it needs.
#[derive(Debug, Default)]
pub struct Symbolizer {
    /// Executable mappings by process (empty: unreadable, e.g. gone).
    maps: HashMap<u32, Vec<Mapping>>,
    /// Objects by path (`None`: could not be read or parsed).
    objects: HashMap<PathBuf, Option<Arc<Module>>>,
    /// The executable of the traced processes, when not PIE: addresses of
    /// a process whose maps are gone are its link-time addresses.
    fixed_exe: Option<PathBuf>,
    /// Frames by object and link-time address.
    frames: HashMap<(PathBuf, u64), Option<Arc<Frame>>>,
    /// Where a wrapper's return address sits, in stack words from the
    /// stack pointer, by object and address.
    return_slots: HashMap<(PathBuf, u64), Option<u64>>,
    unresolved: u64,
}

impl Symbolizer {
    /// A symbolizer for processes running `exe` (the launched program's
    /// path, or the attached process's executable).
    pub fn new(exe: Option<PathBuf>) -> Self {
        let fixed_exe = exe.filter(|path| {
            std::fs::read(path).ok().is_some_and(|bytes| {
                object::File::parse(&*bytes)
                    .is_ok_and(|f| f.kind() == object::ObjectKind::Executable)
            })
        });
        Self {
            fixed_exe,
            ..Self::default()
        }
    }

    /// Calls whose stack had no user frame the agent could symbolize.
    pub fn unresolved(&self) -> u64 {
        self.unresolved
    }

    /// The caller of the call in `rec`, or `None` (counted) when no frame of
    /// its stack is user code with a source line.
    pub fn caller(&mut self, rec: &SyscallSourceRecord) -> Option<Arc<Caller>> {
        let found = self.find_caller(rec);
        if found.is_none() {
            self.unresolved += 1;
        }
        found
    }

    fn find_caller(&mut self, rec: &SyscallSourceRecord) -> Option<Arc<Caller>> {
        let tgid = rec.call.tgid;
        let walked = rec.frames.get(..rec.frames_len as usize).unwrap_or(&[]);
        let (&ip, rest) = walked.split_first()?;
        // Frame 0's return address from its CFI, when the walk skipped it.
        let mut pcs = vec![(ip, false)];
        if let Some(ret) = self.return_address(tgid, ip, rec)
            && rest.first() != Some(&ret)
        {
            pcs.push((ret, true));
        }
        pcs.extend(rest.iter().map(|&pc| (pc, true)));
        for (pc, is_return) in pcs {
            if pc == 0 {
                break;
            }
            // A return address is after its call: look up the call.
            let at = if is_return { pc - 1 } else { pc };
            if let Some(frame) = self.frame(tgid, at)
                && frame.user
            {
                return Some(Arc::clone(&frame.caller));
            }
        }
        None
    }

    /// The object holding runtime address `pc` of process `tgid`, and
    /// `pc` as that object's link-time address.
    fn locate(&mut self, tgid: u32, pc: u64) -> Option<(PathBuf, u64)> {
        let maps = self.maps.entry(tgid).or_insert_with(|| read_maps(tgid));
        let mut hit = maps.iter().find(|m| m.start <= pc && pc < m.end).cloned();
        if hit.is_none() && !maps.is_empty() {
            // Mapped since (dlopen): read again once.
            *maps = read_maps(tgid);
            hit = maps.iter().find(|m| m.start <= pc && pc < m.end).cloned();
        }
        if let Some(m) = hit {
            let module = self.module(&m.path)?;
            let file_offset = pc - m.start + m.offset;
            let vaddr = module.vaddr_of_offset(file_offset)?;
            return Some((m.path, vaddr));
        }
        // The process is gone: a non-PIE executable's addresses are fixed.
        let exe = self.fixed_exe.clone()?;
        let module = self.module(&exe)?;
        module.holds_vaddr(pc).then_some((exe, pc))
    }

    fn module(&mut self, path: &Path) -> Option<Arc<Module>> {
        self.objects
            .entry(path.to_owned())
            .or_insert_with(|| match Module::load(path) {
                Ok(m) => Some(Arc::new(m)),
                Err(err) => {
                    log::debug!("syscalls: no symbols from {}: {err}", path.display());
                    None
                }
            })
            .clone()
    }

    fn frame(&mut self, tgid: u32, pc: u64) -> Option<Arc<Frame>> {
        let (path, vaddr) = self.locate(tgid, pc)?;
        let key = (path, vaddr);
        if let Some(cached) = self.frames.get(&key) {
            return cached.clone();
        }
        let frame = self
            .module(&key.0)
            .and_then(|m| m.frame(vaddr))
            .map(Arc::new);
        self.frames.insert(key, frame.clone());
        frame
    }

    /// The return address of frame 0 (at `ip`) from its CFI and the stack
    /// words the kernel copied.
    fn return_address(&mut self, tgid: u32, ip: u64, rec: &SyscallSourceRecord) -> Option<u64> {
        let (path, vaddr) = self.locate(tgid, ip)?;
        let key = (path, vaddr);
        let slot = match self.return_slots.get(&key) {
            Some(slot) => *slot,
            None => {
                let slot = self.module(&key.0).and_then(|m| m.return_slot(vaddr));
                self.return_slots.insert(key, slot);
                slot
            }
        }?;
        let words = rec.stack.get(..rec.stack_len as usize)?;
        words.get(usize::try_from(slot).ok()?).copied()
    }
}

/// The executable mappings of process `tgid` (empty when unreadable).
fn read_maps(tgid: u32) -> Vec<Mapping> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let _dev = fields.next()?;
            let _inode = fields.next()?;
            let path = fields.next()?;
            if !perms.contains('x') || !path.starts_with('/') {
                return None;
            }
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: PathBuf::from(format!("/proc/{tgid}/root{path}")),
            })
        })
        .collect()
}

/// Why an object gives no symbols.
#[derive(Debug, thiserror::Error)]
enum ModuleError {
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    #[error("not an ELF object")]
    Parse(#[source] object::Error),
    #[error("its DWARF line tables are malformed")]
    Dwarf(#[source] gimli::Error),
}

/// One object's symbols.
#[derive(Debug)]
struct Module {
    /// PT_LOAD segments: (vaddr, file offset, file size).
    segments: Vec<(u64, u64, u64)>,
    kind: ModuleKind,
}

#[derive(Debug)]
enum ModuleKind {
    Go(Box<GoBinary>, Vec<String>),
    Elf(ElfSymbols),
}

impl Module {
    fn load(path: &Path) -> Result<Module, ModuleError> {
        let bytes = std::fs::read(path).map_err(ModuleError::Read)?;
        let file = object::File::parse(&*bytes).map_err(ModuleError::Parse)?;
        let segments = file
            .segments()
            .filter_map(|s| {
                let (offset, size) = s.file_range();
                (size > 0).then_some((s.address(), offset, size))
            })
            .collect();
        let is_go = file.section_by_name(".gopclntab").is_some()
            || file.section_by_name(".go.buildinfo").is_some();
        if is_go && let Ok(go) = GoBinary::open(path) {
            let info = go.build_info();
            let mut modules = vec![info.main.path.clone()];
            modules.extend(info.deps.iter().map(|m| m.path.clone()));
            modules.retain(|m| !m.is_empty());
            return Ok(Module {
                segments,
                kind: ModuleKind::Go(Box::new(go), modules),
            });
        }
        let system = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.starts_with("libc.so")
                || n.starts_with("libc-")
                || n.starts_with("ld-linux")
                || n.starts_with("libpthread")
        });
        Ok(Module {
            segments,
            kind: ModuleKind::Elf(ElfSymbols::load(&file, system)?),
        })
    }

    fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(_, off, size)| *off <= offset && offset - off < *size)
            .map(|(vaddr, off, _)| vaddr + (offset - off))
    }

    fn holds_vaddr(&self, vaddr: u64) -> bool {
        self.segments
            .iter()
            .any(|(start, _, size)| *start <= vaddr && vaddr - start < *size)
    }

    fn frame(&self, vaddr: u64) -> Option<Frame> {
        match &self.kind {
            ModuleKind::Go(go, modules) => {
                let line = go.line_at(vaddr)?;
                let function = String::from_utf8_lossy(line.function).into_owned();
                let user = go_user_function(&function, modules);
                Some(Frame {
                    caller: Arc::new(Caller {
                        file: String::from_utf8_lossy(line.file).into_owned(),
                        line: line.line,
                        function,
                    }),
                    user,
                })
            }
            ModuleKind::Elf(elf) => elf.frame(vaddr),
        }
    }

    fn return_slot(&self, vaddr: u64) -> Option<u64> {
        match &self.kind {
            ModuleKind::Go(..) => None,
            ModuleKind::Elf(elf) => elf.return_slot(vaddr),
        }
    }
}

/// Whether Go function `name` is user code: in package `main` or in a
/// module of the build info (not the standard library or the runtime).
fn go_user_function(name: &str, modules: &[String]) -> bool {
    if name.starts_with("main.") {
        return true;
    }
    modules.iter().any(|m| {
        name.strip_prefix(m.as_str())
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('/'))
    })
}

/// A line-table row: from `address` on, `file:line` (`line` 0: the end of
/// a sequence, no line).
#[derive(Debug)]
struct Row {
    address: u64,
    file: u32,
    line: u32,
}

/// Lines, function names and CFI of a non-Go ELF object.
#[derive(Debug)]
struct ElfSymbols {
    /// Sorted by address.
    rows: Vec<Row>,
    files: Vec<String>,
    /// (address, size, name), sorted by address.
    functions: Vec<(u64, u64, String)>,
    /// `.eh_frame`: its bytes and address; `.text`'s address.
    eh_frame: Option<(Vec<u8>, u64, u64)>,
    /// libc or the dynamic loader: never the caller.
    system: bool,
}

impl ElfSymbols {
    fn load(file: &object::File<'_>, system: bool) -> Result<ElfSymbols, ModuleError> {
        let mut functions: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_owned())))
            .collect();
        functions.sort_by_key(|f| f.0);
        let eh_frame = file.section_by_name(".eh_frame").and_then(|s| {
            let text = file.section_by_name(".text").map_or(0, |t| t.address());
            Some((s.data().ok()?.to_vec(), s.address(), text))
        });
        let (rows, files) = if system {
            (Vec::new(), Vec::new())
        } else {
            line_rows(file)?
        };
        Ok(ElfSymbols {
            rows,
            files,
            functions,
            eh_frame,
            system,
        })
    }

    fn frame(&self, vaddr: u64) -> Option<Frame> {
        let function = self
            .functions
            .iter()
            .rev()
            .find(|(start, size, _)| *start <= vaddr && (vaddr - start < *size || *size == 0))
            .map(|(_, _, name)| name.clone())
            .unwrap_or_default();
        let i = self.rows.partition_point(|r| r.address <= vaddr);
        let row = i.checked_sub(1).and_then(|i| self.rows.get(i));
        let Some(row) = row.filter(|r| r.line != 0) else {
            // No line: libc's or another object without DWARF.
            return Some(Frame {
                caller: Arc::new(Caller {
                    file: String::new(),
                    line: 0,
                    function,
                }),
                user: false,
            });
        };
        Some(Frame {
            caller: Arc::new(Caller {
                file: self
                    .files
                    .get(row.file as usize)
                    .cloned()
                    .unwrap_or_default(),
                line: row.line,
                function,
            }),
            user: !self.system,
        })
    }

    /// The stack slot (in words from the stack pointer) that holds the
    /// return address at `vaddr`, from the CFI: CFA = RSP + n, RA at CFA - 8.
    fn return_slot(&self, vaddr: u64) -> Option<u64> {
        let (data, eh_addr, text_addr) = self.eh_frame.as_ref()?;
        let eh = EhFrame::new(data, gimli::LittleEndian);
        let bases = BaseAddresses::default()
            .set_eh_frame(*eh_addr)
            .set_text(*text_addr);
        let mut ctx = UnwindContext::new();
        let row = eh
            .unwind_info_for_address(&bases, &mut ctx, vaddr, EhFrame::cie_from_offset)
            .ok()?;
        let CfaRule::RegisterAndOffset { register, offset } = row.cfa() else {
            return None;
        };
        if *register != X86_64::RSP {
            return None;
        }
        let Some(RegisterRule::Offset(ra)) = row.register(X86_64::RA) else {
            return None;
        };
        let at = offset.checked_add(ra)?;
        u64::try_from(at)
            .ok()
            .filter(|at| at % 8 == 0)
            .map(|at| at / 8)
    }
}

/// Every row of every line program in `file`'s DWARF, and the file names
/// the rows index.
fn line_rows(file: &object::File<'_>) -> Result<(Vec<Row>, Vec<String>), ModuleError> {
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'_, [u8]>, gimli::Error> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(std::borrow::Cow::Borrowed(&[])))
    };
    let owned = gimli::DwarfSections::load(load).map_err(ModuleError::Dwarf)?;
    let dwarf = owned.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    let mut rows = Vec::new();
    let mut files: Vec<String> = Vec::new();
    let mut file_ids: HashMap<String, u32> = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(ModuleError::Dwarf)? {
        let unit = dwarf.unit(header).map_err(ModuleError::Dwarf)?;
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let comp_dir = unit
            .comp_dir
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut unit_files: HashMap<u64, u32> = HashMap::new();
        let mut state = program.rows();
        while let Some((header, row)) = state.next_row().map_err(ModuleError::Dwarf)? {
            if row.end_sequence() {
                rows.push(Row {
                    address: row.address(),
                    file: 0,
                    line: 0,
                });
                continue;
            }
            let index = row.file_index();
            let id = match unit_files.get(&index) {
                Some(id) => *id,
                None => {
                    let path = row
                        .file(header)
                        .map(|entry| file_path(&dwarf, &unit, header, entry, &comp_dir))
                        .unwrap_or_default();
                    let next = u32::try_from(files.len()).unwrap_or(u32::MAX);
                    let id = *file_ids.entry(path.clone()).or_insert_with(|| {
                        files.push(path);
                        next
                    });
                    unit_files.insert(index, id);
                    id
                }
            };
            rows.push(Row {
                address: row.address(),
                file: id,
                line: row
                    .line()
                    .map_or(0, |l| u32::try_from(l.get()).unwrap_or(0)),
            });
        }
    }
    // At one address, a sequence's end before the next one's start.
    rows.sort_by_key(|r| (r.address, r.line != 0));
    Ok((rows, files))
}

type Slice<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

fn file_path(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    header: &gimli::LineProgramHeader<Slice<'_>>,
    entry: &gimli::FileEntry<Slice<'_>>,
    comp_dir: &str,
) -> String {
    let text = |attr| {
        dwarf
            .attr_string(unit, attr)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let name = text(entry.path_name());
    if name.starts_with('/') {
        return name;
    }
    let dir = entry.directory(header).map(text).unwrap_or_default();
    let mut path = PathBuf::from(comp_dir);
    path.push(dir);
    path.push(name);
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_user_functions_are_main_and_build_info_modules() {
        let modules = vec!["example.com/app".to_owned(), "github.com/x/y".to_owned()];
        assert!(go_user_function("main.main.func5", &modules));
        assert!(go_user_function(
            "example.com/app/store.(*DB).Put",
            &modules
        ));
        assert!(go_user_function("github.com/x/y.Do", &modules));
        assert!(!go_user_function("os.(*File).Sync", &modules));
        assert!(!go_user_function("internal/poll.(*FD).Fsync", &modules));
        assert!(!go_user_function("example.com/application.F", &modules));
    }
}
