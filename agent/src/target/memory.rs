//! A process's memory through `/proc/N/mem`: the one place the agent reads
//! or writes a target's memory from user space (USDT semaphores; eBPF
//! programs read through `bpf_probe_read_user` instead).

use std::{
    fs::{File, OpenOptions},
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

    /// Opens process `pid`'s memory for reading and writing.
    pub fn open_writable(pid: u32) -> io::Result<Self> {
        let path = Self::path_of(pid);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok(Self { path, file })
    }

    fn path_of(pid: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/mem"))
    }

    /// The file it reads (for errors).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The little-endian `u16` at `address`.
    pub fn read_u16(&self, address: u64) -> io::Result<u16> {
        let mut buf = [0; 2];
        self.file.read_exact_at(&mut buf, address)?;
        Ok(u16::from_le_bytes(buf))
    }

    /// Writes `value` at `address`, little-endian.
    pub fn write_u16(&self, address: u64, value: u16) -> io::Result<()> {
        self.file.write_all_at(&value.to_le_bytes(), address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_own_memory() {
        let cell = Box::new(0x1234_u16);
        let address = std::ptr::from_ref::<u16>(&cell) as u64;
        let mem = Memory::open_writable(std::process::id()).expect("own /proc/self/mem");
        assert_eq!(mem.read_u16(address).expect("read"), 0x1234);
        mem.write_u16(address, 0x4321).expect("write");
        // SAFETY: `cell` is a live, aligned u16 that /proc/self/mem wrote.
        let now = unsafe { std::ptr::read_volatile(&raw const *cell) };
        assert_eq!(now, 0x4321);
        assert!(Memory::open(4_194_999).is_err(), "no such process");
    }
}
