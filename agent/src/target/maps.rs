//! The files a process has mapped (`/proc/N/maps`), how to read each one
//! from outside the process's mount namespace, and where its executable was
//! loaded.

use std::{
    io,
    path::{Path, PathBuf},
};

/// `/proc/N/maps` could not be read (the process is gone, or not ours).
#[derive(Debug, thiserror::Error)]
#[error("reading {path}")]
pub struct MapsError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// One line of `/proc/N/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    /// `major:minor` as the kernel prints it (hex).
    pub dev: String,
    pub inode: u64,
    /// The path as the process sees it; empty for anonymous mappings.
    pub path: String,
}

impl Mapping {
    pub fn executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }

    /// Mapped from a file that no longer has a name: `memfd:` files and
    /// deleted files.
    pub fn unnamed_file(&self) -> bool {
        self.path.starts_with("/memfd:") || self.path.ends_with(" (deleted)")
    }

    /// A path through which this process's file can be opened from here:
    /// through `/proc/N/root` for named files (the process may live in
    /// another mount namespace), through `/proc/N/map_files` for unnamed ones.
    pub fn readable_path(&self, pid: u32) -> PathBuf {
        if self.unnamed_file() {
            PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                self.start, self.end
            ))
        } else {
            let rel = self.path.trim_start_matches('/');
            Path::new(&format!("/proc/{pid}/root")).join(rel)
        }
    }

    /// Whether the mapping covers `file_offset` of its file.
    pub fn covers_file_offset(&self, file_offset: u64) -> bool {
        file_offset >= self.offset && file_offset - self.offset < self.end - self.start
    }
}

/// Parses the text of `/proc/N/maps`.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field().to_owned();
    let offset = u64::from_str_radix(field(), 16).ok()?;
    let dev = field().to_owned();
    let inode = field().parse().ok()?;
    let path = rest.trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

/// Reads and parses `/proc/N/maps`.
pub fn read_maps(pid: u32) -> Result<Vec<Mapping>, MapsError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = std::fs::read_to_string(&path).map_err(|source| MapsError { path, source })?;
    Ok(parse_maps(&text))
}

/// Where the mapping of `exe` (as the process names it) at file offset 0
/// starts: the load bias of a position-independent executable (Go PIE
/// binaries link at 0). `None` when it is not mapped (or the maps cannot be
/// read).
pub fn load_bias(pid: u32, exe: &Path) -> Option<u64> {
    let maps = read_maps(pid).ok()?;
    let exe = exe.to_string_lossy();
    maps.iter()
        .find(|m| m.path == exe && m.offset == 0)
        .map(|m| m.start)
}

/// The distinct files mapped executable into the process, one mapping each
/// (the first one seen), keyed by device and inode.
pub fn executable_files(maps: &[Mapping]) -> Vec<&Mapping> {
    let mut seen: Vec<(&str, u64)> = Vec::new();
    let mut files = Vec::new();
    for map in maps {
        if map.inode == 0 || !map.path.starts_with('/') || !map.executable() {
            continue;
        }
        let key = (map.dev.as_str(), map.inode);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        files.push(map);
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_and_memfd_mappings() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234   /usr/bin/my prog
55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1234   /usr/bin/my prog
7f0000000000-7f0000001000 r-xp 00002000 00:01 99     /memfd:lib (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].path, "/usr/bin/my prog");
        assert_eq!(maps[1].offset, 0x1000);
        let files = executable_files(&maps);
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[0].readable_path(7),
            PathBuf::from("/proc/7/root/usr/bin/my prog")
        );
        assert_eq!(
            files[1].readable_path(7),
            PathBuf::from("/proc/7/map_files/7f0000000000-7f0000001000")
        );
        assert!(files[1].covers_file_offset(0x2fff));
        assert!(!files[1].covers_file_offset(0x3000));
    }
}
