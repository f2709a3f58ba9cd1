//! The process to trace, through `/proc/N`: finding its executable (also
//! when it lives in another mount namespace), what it has mapped
//! ([`maps`]), its memory ([`memory`]), and noticing when it exits
//! ([`ExitWatch`]).

mod exit;
pub mod launch;
pub mod maps;
pub mod memory;

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

pub use exit::{ExitWatch, ExitWatchError};

/// Why a PID cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {pid}")]
    NoSuchProcess { pid: u32 },
    #[error("PID {pid} is a kernel thread or has no executable")]
    NoExecutable { pid: u32 },
    #[error("not allowed to inspect PID {pid}: run the agent as root (or with CAP_SYS_PTRACE)")]
    PermissionDenied { pid: u32 },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A running process and its executable.
#[derive(Clone, Debug)]
pub struct Target {
    pub pid: u32,
    /// The executable's path as the target sees it (from `/proc/N/exe`).
    pub exe_in_target: PathBuf,
    /// A path to the same file that works from the agent's mount namespace:
    /// `/proc/N/root/<exe>` when that is the same file, else `/proc/N/exe`.
    pub exe_path: PathBuf,
}

impl Target {
    /// Looks up PID `pid`.
    pub fn open(pid: u32) -> Result<Self, TargetError> {
        Self::open_in(Path::new("/proc"), pid)
    }

    /// A process the agent started held ([`launch::Launched`]), before it
    /// runs `exe`: `/proc/N/exe` still names the agent, so the executable is
    /// the path it will run, in the agent's own mount namespace.
    pub fn launched(pid: u32, exe: &Path) -> Self {
        Self {
            pid,
            exe_in_target: exe.to_path_buf(),
            exe_path: exe.to_path_buf(),
        }
    }

    fn open_in(proc_root: &Path, pid: u32) -> Result<Self, TargetError> {
        if pid == 0 {
            return Err(TargetError::NoSuchProcess { pid });
        }
        let dir = proc_root.join(pid.to_string());
        let exe_link = dir.join("exe");
        match fs::symlink_metadata(&dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TargetError::NoSuchProcess { pid });
            }
            Err(source) => return Err(TargetError::Io { path: dir, source }),
        }
        let exe_in_target = match fs::read_link(&exe_link) {
            Ok(path) => path,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A process that vanished between the two calls, or a kernel thread.
                return Err(if dir.exists() {
                    TargetError::NoExecutable { pid }
                } else {
                    TargetError::NoSuchProcess { pid }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(TargetError::PermissionDenied { pid });
            }
            Err(source) => {
                return Err(TargetError::Io {
                    path: exe_link,
                    source,
                });
            }
        };
        let exe_meta = match fs::metadata(&exe_link) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(TargetError::PermissionDenied { pid });
            }
            Err(source) => {
                return Err(TargetError::Io {
                    path: exe_link,
                    source,
                });
            }
        };
        // Prefer the path through the target's root: it names the file in the
        // target's mount namespace and survives in uprobe listings. Fall back
        // to the magic link when that path is gone or is another file (the
        // binary was replaced on disk after the process started).
        let through_root = dir
            .join("root")
            .join(exe_in_target.strip_prefix("/").unwrap_or(&exe_in_target));
        let exe_path = match fs::metadata(&through_root) {
            Ok(meta) if meta.dev() == exe_meta.dev() && meta.ino() == exe_meta.ino() => {
                through_root
            }
            _ => exe_link,
        };
        Ok(Self {
            pid,
            exe_in_target,
            exe_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_executable() {
        let pid = std::process::id();
        let target = Target::open(pid).expect("own process");
        let own = std::env::current_exe().expect("current exe");
        assert_eq!(target.exe_in_target, own);
        assert_eq!(
            fs::metadata(&target.exe_path).expect("exe").ino(),
            fs::metadata(&own).expect("own").ino()
        );
    }

    #[test]
    fn missing_pid_is_reported() {
        // PIDs are below 2^22 on Linux.
        let err = Target::open(4_194_999).expect_err("no such pid");
        assert!(matches!(err, TargetError::NoSuchProcess { pid: 4_194_999 }));
        assert!(matches!(
            Target::open(0),
            Err(TargetError::NoSuchProcess { pid: 0 })
        ));
    }

    #[test]
    fn kernel_thread_has_no_executable() {
        // PID 2 is kthreadd in the root PID namespace.
        if let Ok(comm) = fs::read_to_string("/proc/2/comm")
            && comm.trim() == "kthreadd"
        {
            assert!(matches!(
                Target::open(2),
                Err(TargetError::NoExecutable { pid: 2 })
            ));
        }
    }
}
