//! The processes already running, found once through `/proc`.

use std::path::PathBuf;

/// Every process's PID and executable (as the process sees it), skipping
/// those that exit meanwhile or whose executable cannot be read (kernel
/// threads).
pub fn processes() -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(exe) = executable(pid) {
            found.push((pid, exe));
        }
    }
    Ok(found)
}

/// The executable of `pid`, as the process sees it; `None` when it is gone
/// or has none.
pub fn executable(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}
