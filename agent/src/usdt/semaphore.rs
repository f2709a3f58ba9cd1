//! USDT semaphores: a probe guarded by one fires only while its `u16`
//! counter in the target's memory is non-zero. aya cannot pass the kernel's
//! `ref_ctr_offset` when attaching a uprobe, so the agent does what bpftrace
//! does on kernels without it: increments the counter through
//! `/proc/N/mem` when it attaches and decrements it when it detaches.

use std::{os::unix::fs::MetadataExt, path::PathBuf};

use super::UsdtProbe;
use crate::target::{maps, memory::Memory};

/// Errors activating or deactivating a semaphore.
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
    #[error("pid {pid}: semaphore at {address:#x} is already at {value}, cannot increment")]
    Overflow { pid: u32, address: u64, value: u16 },
}

/// An activated semaphore: the counter was incremented when the guard was
/// made and is decremented when it is dropped (if the process still exists).
#[derive(Debug)]
pub struct SemaphoreGuard {
    pid: u32,
    address: u64,
    mem: Memory,
}

impl SemaphoreGuard {
    /// Increments `probe`'s semaphore in process `pid`.
    pub fn activate(pid: u32, probe: &UsdtProbe) -> Result<Self, SemaphoreError> {
        let address = runtime_address(pid, probe)?;
        Self::activate_at(pid, address)
    }

    /// Increments the semaphore at run-time `address` in process `pid`.
    pub fn activate_at(pid: u32, address: u64) -> Result<Self, SemaphoreError> {
        let io = |source| SemaphoreError::Io {
            path: PathBuf::from(format!("/proc/{pid}/mem")),
            source,
        };
        let mem = Memory::open_writable(pid).map_err(io)?;
        let value = mem.read_u16(address).map_err(io)?;
        let next = value.checked_add(1).ok_or(SemaphoreError::Overflow {
            pid,
            address,
            value,
        })?;
        mem.write_u16(address, next).map_err(io)?;
        Ok(Self { pid, address, mem })
    }

    /// The semaphore's run-time address in the target.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// The target's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for SemaphoreGuard {
    fn drop(&mut self) {
        // The process may have exited: then there is nothing to restore.
        let Ok(value) = self.mem.read_u16(self.address) else {
            return;
        };
        let next = value.saturating_sub(1);
        if let Err(err) = self.mem.write_u16(self.address, next) {
            log::debug!(
                "pid {}: restoring the semaphore at {:#x}: {err}",
                self.pid,
                self.address
            );
        }
    }
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
