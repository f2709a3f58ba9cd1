//! USDT semaphores: a probe guarded by one fires only while its `u16`
//! counter in the target's memory is non-zero. The agent attaches a guarded
//! probe with the semaphore as the uprobe's reference counter
//! (`Probes::attach_uprobe_counted`), so the kernel raises and lowers it; a
//! killed agent leaves nothing raised. This module finds a semaphore in a
//! running process and reads it, to show and test that.

use std::{os::unix::fs::MetadataExt, path::PathBuf};

use super::UsdtProbe;
use crate::target::{maps, memory::Memory};

/// Errors finding or reading a semaphore.
#[derive(Debug, thiserror::Error)]
pub enum SemaphoreError {
    #[error("probe {provider}:{name} has no semaphore")]
    NoSemaphore { provider: String, name: String },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pid {pid}: no mapping of {path} covers the semaphore at file offset {file_offset:#x}")]
    NotMapped {
        pid: u32,
        path: PathBuf,
        file_offset: u64,
    },
}

/// Reads the current value of `probe`'s semaphore in process `pid`.
pub fn read_semaphore(pid: u32, probe: &UsdtProbe) -> Result<u16, SemaphoreError> {
    let address = runtime_address(pid, probe)?;
    let io = |source| SemaphoreError::Io {
        path: PathBuf::from(format!("/proc/{pid}/mem")),
        source,
    };
    Memory::open(pid).map_err(io)?.read_u16(address).map_err(io)
}

/// Where `probe`'s semaphore is in process `pid`: the mapping of the probe's
/// file (same inode) that covers the semaphore's file offset.
pub fn runtime_address(pid: u32, probe: &UsdtProbe) -> Result<u64, SemaphoreError> {
    let Some(sema) = probe.semaphore else {
        return Err(SemaphoreError::NoSemaphore {
            provider: probe.provider.clone(),
            name: probe.name.clone(),
        });
    };
    let meta = std::fs::metadata(&probe.path).map_err(|source| SemaphoreError::Io {
        path: probe.path.clone(),
        source,
    })?;
    let maps = maps::read_maps(pid).map_err(|err| SemaphoreError::Io {
        path: err.path,
        source: err.source,
    })?;
    maps.iter()
        .find(|m| m.inode == meta.ino() && m.covers_file_offset(sema.file_offset))
        .map(|m| m.start.wrapping_add(sema.file_offset - m.offset))
        .ok_or(SemaphoreError::NotMapped {
            pid,
            path: probe.path.clone(),
            file_offset: sema.file_offset,
        })
}
