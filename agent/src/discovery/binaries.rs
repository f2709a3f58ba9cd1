//! One analysis per executable file, however many processes run it: ten
//! replicas of a service, or one restarted ten times, are opened and
//! analysed as Go binaries once. Keyed by the file's identity (device,
//! inode, size and modification time: a binary replaced in place by a
//! deploy is a new key).

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path, sync::Arc};

use crate::binary::{BinaryError, GoBinary};

/// Analyses no target uses any more that are kept for the next start.
const KEPT_UNUSED: usize = 8;

/// A file's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

struct Entry {
    binary: Arc<GoBinary>,
    /// Targets planned or traced with it.
    users: usize,
    /// When it was last handed out (a counter), to drop the oldest unused.
    last_used: u64,
}

/// The analyses, and how many were made.
#[derive(Default)]
pub struct BinaryCache {
    entries: HashMap<FileKey, Entry>,
    clock: u64,
    /// Binaries opened and analysed (cache misses).
    pub analysed: u64,
}

impl FileKey {
    /// The identity of the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// `--go`: whether each executable file is a Go program (it has a
/// `.go.buildinfo` section, which even stripped Go binaries keep), looked
/// at once per file: a host execs the same few shells and tools again and
/// again.
#[derive(Default)]
pub struct GoFiles {
    known: HashMap<FileKey, bool>,
}

/// Files remembered at most; past it the memory starts again.
const GO_FILES_KEPT: usize = 4096;

impl GoFiles {
    /// Whether the executable at `path` is a Go program (`false` when it
    /// cannot be read).
    pub fn is_go(&mut self, path: &Path) -> bool {
        let Ok(key) = FileKey::of(path) else {
            return false;
        };
        if let Some(&go) = self.known.get(&key) {
            return go;
        }
        let go = has_go_buildinfo(path);
        if self.known.len() >= GO_FILES_KEPT {
            self.known.clear();
        }
        self.known.insert(key, go);
        go
    }
}

/// Whether the ELF file at `path` has a `.go.buildinfo` section.
fn has_go_buildinfo(path: &Path) -> bool {
    use object::{Object as _, ObjectSection as _};
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: a read-only private mapping of an executable some process
    // runs (such a file cannot be written: ETXTBSY); object's reads are
    // bounds-checked against the mapped length.
    let Ok(map) = (unsafe { memmap2::Mmap::map(&file) }) else {
        return false;
    };
    object::File::parse(&*map).is_ok_and(|elf| {
        elf.sections()
            .any(|section| section.name() == Ok(".go.buildinfo"))
    })
}

impl BinaryCache {
    /// The binary at `path`, analysed now or before; the caller hands the
    /// key back with [`Self::release`] once its target is done.
    pub fn open(&mut self, path: &Path) -> Result<(Arc<GoBinary>, FileKey), BinaryError> {
        let key = FileKey::of(path).map_err(|source| BinaryError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.clock += 1;
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.users += 1;
            entry.last_used = self.clock;
            return Ok((entry.binary.clone(), key));
        }
        let binary = Arc::new(GoBinary::open(path)?);
        self.analysed += 1;
        self.evict();
        self.entries.insert(
            key,
            Entry {
                binary: binary.clone(),
                users: 1,
                last_used: self.clock,
            },
        );
        Ok((binary, key))
    }

    /// A target opened with `key` is done.
    pub fn release(&mut self, key: FileKey) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.users = entry.users.saturating_sub(1);
        }
    }

    /// Drops the oldest unused analyses beyond [`KEPT_UNUSED`].
    fn evict(&mut self) {
        loop {
            let unused: Vec<(FileKey, u64)> = self
                .entries
                .iter()
                .filter(|(_, e)| e.users == 0)
                .map(|(k, e)| (*k, e.last_used))
                .collect();
            if unused.len() < KEPT_UNUSED {
                return;
            }
            if let Some((oldest, _)) = unused.iter().min_by_key(|(_, used)| *used) {
                self.entries.remove(oldest);
            }
        }
    }
}
