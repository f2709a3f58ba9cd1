//! A process's memory through `/proc/N/mem`: the one place the agent reads
//! a target's memory from user space (USDT semaphores, for diagnostics;
//! eBPF programs read through `bpf_probe_read_user` instead). The agent
//! never writes to a target's memory: the kernel raises USDT semaphores.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

/// An open `/proc/N/mem`.
#[derive(Debug)]
pub struct Memory {
    path: PathBuf,
    file: File,
}

impl Memory {
    /// Opens process `pid`'s memory for reading.
    pub fn open(pid: u32) -> io::Result<Self> {
        let path = Self::path_of(pid);
        let file = File::open(&path)?;
        Ok(Self { path, file })
    }

    fn path_of(pid: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/mem"))
    }

    /// The file it reads (for errors).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `buf` with the bytes at `address`.
    pub fn read_into(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, address)
    }

    /// The little-endian `u16` at `address`.
    pub fn read_u16(&self, address: u64) -> io::Result<u16> {
        let mut buf = [0; 2];
        self.file.read_exact_at(&mut buf, address)?;
        Ok(u16::from_le_bytes(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let cell = Box::new(0x1234_u16);
        let address = std::ptr::from_ref::<u16>(&cell) as u64;
        let mem = Memory::open(std::process::id()).expect("own /proc/self/mem");
        assert_eq!(mem.read_u16(address).expect("read"), 0x1234);
        assert!(Memory::open(4_194_999).is_err(), "no such process");
    }
}
