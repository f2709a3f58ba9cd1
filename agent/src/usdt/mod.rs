//! USDT (`sys/sdt.h`) probes: discovery, argument specs, semaphores,
//! attaching the `usdt_probe` program, decoding its records, and the mapping
//! from probe pairs to spans.
//!
//! - [`probes_in_file`], [`probes_in_process`]: the `.note.stapsdt` notes of
//!   an ELF file, or of a process's executable and every file it has mapped
//!   executable (shared libraries, and `memfd:` or deleted files such as
//!   libstapsdt's run-time probes, read through `/proc/N/map_files`).
//! - [`args`]: the x86-64 argument specs and their kernel-side encoding.
//! - [`semaphore`]: where a probe's semaphore is in a process, and its value
//!   (the kernel raises it while the probe is attached).
//! - [`attach`]: filling `USDT_SPECS`, attaching with cookies, decoding
//!   records.
//! - [`mapping`]: the TOML mapping from start/end probes to spans.
//! - [`spans`]: pairing start and end events into spans.
//! - [`family`]: the family in a session: attaching what the mapping names,
//!   libraries mapped later, records to spans, counters.

pub mod args;
pub mod attach;
mod elf;
pub mod family;
pub mod mapping;
pub mod semaphore;
pub mod spans;

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

pub use args::{ArgLocation, ArgSpec, ArgSpecError, Register};
pub use attach::{
    StringArg, StringArgs, StringMode, USDT_PROGRAM, USDT_SPEC_MAP, UsdtArg, UsdtAttachError,
    UsdtAttachment, UsdtDecodeError, UsdtEvent, UsdtSite, UsdtSites, attach_usdt,
    decode_usdt_record,
};
pub use family::{FAMILY, UsdtSession};
pub use semaphore::SemaphoreError;
pub use spans::{UsdtSpanBuilder, UsdtStats};

use crate::target::maps;

/// A probe's semaphore: a `u16` the program tests before firing the probe
/// (`PROVIDER_NAME_ENABLED()`); tracers increment it while attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Semaphore {
    /// Link-time virtual address.
    pub vaddr: u64,
    /// Offset in the file.
    pub file_offset: u64,
}

/// One USDT probe site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtProbe {
    pub provider: String,
    pub name: String,
    /// The file as we can open it (for a process: through `/proc/N/root` or
    /// `/proc/N/map_files`); the uprobe is attached to this path.
    pub path: PathBuf,
    /// The file as the target names it: its `/proc/N/maps` path (such as
    /// `/memfd:name (deleted)`) for a process's probes, else `path`.
    pub module: String,
    /// Offset of the probe's instruction in the file: where the uprobe goes.
    pub file_offset: u64,
    /// Link-time virtual address of the probe (after the `.stapsdt.base`
    /// adjustment).
    pub vaddr: u64,
    pub semaphore: Option<Semaphore>,
    /// The argument string as found in the note.
    pub arg_text: String,
    /// The parsed arguments (empty when `args_error` is set).
    pub args: Vec<ArgSpec>,
    /// Why the argument string could not be parsed; such a probe is listed
    /// but cannot be attached.
    pub args_error: Option<ArgSpecError>,
}

/// Errors of USDT discovery.
#[derive(Debug, thiserror::Error)]
pub enum UsdtError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing ELF file {path}")]
    Elf {
        path: PathBuf,
        #[source]
        source: object::read::Error,
    },
    #[error("{path}: not a little-endian x86-64 ELF file")]
    UnsupportedElf { path: PathBuf },
    #[error("{path}: bad USDT note at file offset {offset:#x}: {reason}")]
    Note {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
}

/// The USDT probes of one ELF file. Only its headers, notes and (for
/// `symbol(%rip)` arguments) symbol tables are read, not the whole file: a
/// process's libraries can be hundreds of megabytes. The file is read, not
/// mapped: a memory file the target still writes to could be truncated
/// under a mapping, and reading the lost pages would kill the agent.
pub fn probes_in_file(path: impl AsRef<Path>) -> Result<Vec<UsdtProbe>, UsdtError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|source| UsdtError::Io {
        path: path.to_owned(),
        source,
    })?;
    let cache = object::ReadCache::new(file);
    elf::probes_in_image(path, &cache)
}

/// The USDT probes of an ELF image already in memory; `path` is recorded in
/// the probes (and used for attaching).
pub fn probes_in_elf(path: impl AsRef<Path>, data: &[u8]) -> Result<Vec<UsdtProbe>, UsdtError> {
    elf::probes_in_image(path.as_ref(), data)
}

/// The USDT probes of a process: its executable and every file it has
/// mapped executable. Files that are not x86-64 ELF (or cannot be read) other
/// than the executable are skipped.
pub fn probes_in_process(pid: u32) -> Result<Vec<UsdtProbe>, UsdtError> {
    ScannedFiles::default().scan(pid)
}

/// The executable files of one process already read for USDT probes, so
/// that a later look at its mappings reads only the files that are new:
/// libraries loaded since (`dlopen`), such as the memory-file libraries
/// libstapsdt creates when a program defines probes at run time.
#[derive(Debug, Default)]
pub struct ScannedFiles {
    /// Device and inode of each file read (or found unreadable), with the
    /// path it was read through.
    files: HashMap<(String, u64), PathBuf>,
    /// Whether the executable itself has been read.
    exe_done: bool,
    /// The executable read before the process ran it ([`scan_launched`]):
    /// its device and inode as `stat` gives them, so that finding it mapped
    /// later does not read it twice.
    ///
    /// [`scan_launched`]: Self::scan_launched
    launched_exe: Option<(u64, u64)>,
}

impl ScannedFiles {
    /// The probes of the files `pid` maps executable that this set has not
    /// seen yet, which it then remembers. The first call reads the
    /// executable too, and fails if it cannot; a library that is not x86-64
    /// ELF or cannot be read is skipped (and not read again).
    pub fn scan(&mut self, pid: u32) -> Result<Vec<UsdtProbe>, UsdtError> {
        let maps = maps::read_maps(pid).map_err(|e| UsdtError::Io {
            path: e.path,
            source: e.source,
        })?;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let exe_meta = if self.exe_done {
            None
        } else {
            Some(std::fs::metadata(&exe).map_err(|source| UsdtError::Io {
                path: exe.clone(),
                source,
            })?)
        };
        let mut probes = Vec::new();
        let mut exe_seen = false;
        for map in maps::executable_files(&maps) {
            let key = (map.dev.clone(), map.inode);
            if self.files.contains_key(&key) {
                continue;
            }
            let path = map.readable_path(pid);
            self.files.insert(key, path.clone());
            if self.launched_exe.is_some() && self.launched_exe == file_id(&path) {
                continue;
            }
            let is_exe = exe_meta.as_ref().is_some_and(|exe| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(&path).is_ok_and(|m| m.ino() == exe.ino() && m.dev() == exe.dev())
            });
            match probes_in_file(&path) {
                Ok(found) => probes.extend(found.into_iter().map(|p| UsdtProbe {
                    module: map.path.clone(),
                    ..p
                })),
                Err(err) if is_exe => return Err(err),
                Err(err) => log::debug!("pid {pid}: skipping {}: {err}", map.path),
            }
            exe_seen |= is_exe;
        }
        if !self.exe_done && !exe_seen {
            // No executable mapping of the executable itself (unusual): read
            // it through the /proc/N/exe link.
            probes.extend(probes_in_file(&exe)?);
        }
        self.exe_done = true;
        Ok(probes)
    }

    /// The probes of `exe`, the executable a process the agent started will
    /// run once it is let go (launch mode): its mappings are still the
    /// agent's, so the file is read directly, and later scans read only the
    /// libraries it maps.
    pub fn scan_launched(&mut self, exe: &Path) -> Result<Vec<UsdtProbe>, UsdtError> {
        let probes = probes_in_file(exe)?;
        self.launched_exe = file_id(exe);
        self.exe_done = true;
        let module = exe.display().to_string();
        Ok(probes
            .into_iter()
            .map(|p| UsdtProbe {
                module: module.clone(),
                ..p
            })
            .collect())
    }

    /// Forgets the file read through `path` (a probe's `path`), so that
    /// the next [`scan`](Self::scan) reads it again (after its probes failed
    /// to attach, say while the library was still being mapped).
    pub fn forget(&mut self, path: &Path) {
        self.files.retain(|_, read_through| read_through != path);
    }
}

/// A file's device and inode, as `stat` gives them.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The `agent probes --pid N` listing: one line per probe with its provider,
/// name, file, address, file offset, semaphore and arguments.
pub fn format_probe_list(probes: &[UsdtProbe]) -> String {
    let mut out = String::new();
    if probes.is_empty() {
        out.push_str("no USDT probes found\n");
        return out;
    }
    let mut current: Option<&Path> = None;
    for probe in probes {
        if current != Some(probe.path.as_path()) {
            if Path::new(&probe.module) == probe.path {
                let _ = writeln!(out, "{}:", probe.module);
            } else {
                let _ = writeln!(out, "{} (read via {}):", probe.module, probe.path.display());
            }
            current = Some(probe.path.as_path());
        }
        let _ = write!(
            out,
            "  {}:{}  addr {:#x}  offset {:#x}",
            probe.provider, probe.name, probe.vaddr, probe.file_offset
        );
        if let Some(sema) = probe.semaphore {
            let _ = write!(out, "  semaphore {:#x}", sema.vaddr);
        }
        match &probe.args_error {
            Some(err) => {
                let _ = write!(out, "  args [unsupported: {}]", err.reason);
            }
            None => {
                let args: Vec<String> = probe.args.iter().map(ToString::to_string).collect();
                let _ = write!(out, "  args [{}]", args.join(" "));
            }
        }
        out.push('\n');
    }
    out
}
