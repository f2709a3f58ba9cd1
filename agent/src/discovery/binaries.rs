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

impl BinaryCache {
    /// The binary at `path`, analysed now or before; the caller hands the
    /// key back with [`Self::release`] once its target is done.
    pub fn open(&mut self, path: &Path) -> Result<(Arc<GoBinary>, FileKey), BinaryError> {
        let meta = std::fs::metadata(path).map_err(|source| BinaryError::Io {
            path: path.to_owned(),
            source,
        })?;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        };
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
