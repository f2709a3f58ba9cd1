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
    #[error("PID {pid} exited while the agent was attaching to it")]
    Exited { pid: u32 },
    #[error("not allowed to inspect PID {pid}: run the agent as root (or with CAP_SYS_PTRACE)")]
    PermissionDenied { pid: u32 },
    #[error(
        "not allowed to inspect PID {pid}, even as root: the kernel refuses access to /proc/{pid}/exe (the process holds capabilities this agent lacks, lives in a user namespace the agent is not privileged in, or a security module forbids it)"
    )]
    PermissionDeniedAsRoot { pid: u32 },
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
    /// Its slot in the loaded eBPF object: the attach cookies' high half,
    /// the records' `target`, the index of every family's config array.
    /// 0 for an object of its own; host mode's shared object hands out one
    /// per target ([`crate::session::shared`]).
    pub slot: u32,
    /// How many targets the object its probes go to can hold at once: 1 for
    /// an object of its own, `MAX_TARGETS` for the shared one (a family
    /// with a table per object, such as USDT's sites, takes its share).
    pub slots: u32,
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
            slot: 0,
            slots: 1,
        }
    }

    /// Whether the process runs [`exe_path`](Self::exe_path) already: not
    /// one [`launched`](Self::launched) and still held before its `execve`
    /// (its `/proc/N/exe` is then the agent's).
    pub fn runs_its_executable(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let id = |path: &Path| fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let running = id(&PathBuf::from(format!("/proc/{}/exe", self.pid)));
        running.is_none() || running == id(&self.exe_path)
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
                // A process that vanished between the two calls, one that is
                // exiting (a zombie has no executable), or a kernel thread.
                return Err(if !dir.exists() {
                    TargetError::NoSuchProcess { pid }
                } else if has_exited_in(proc_root, pid) {
                    TargetError::Exited { pid }
                } else {
                    TargetError::NoExecutable { pid }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(permission_denied(pid));
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
                return Err(permission_denied(pid));
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
            slot: 0,
            slots: 1,
        })
    }
}

/// Refused access: as root the advice to run as root would be wrong.
fn permission_denied(pid: u32) -> TargetError {
    if nix::unistd::geteuid().is_root() {
        TargetError::PermissionDeniedAsRoot { pid }
    } else {
        TargetError::PermissionDenied { pid }
    }
}

/// Whether process `pid` is gone or exiting (no `/proc/N`, or a zombie):
/// after a failure to attach, what to tell the user instead of the raw
/// error (`perf_event_open`: no such process).
pub fn has_exited(pid: u32) -> bool {
    has_exited_in(Path::new("/proc"), pid)
}

fn has_exited_in(proc_root: &Path, pid: u32) -> bool {
    match fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| matches!(state, "Z" | "X" | "x")),
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
    fn a_zombie_has_exited() {
        // A child that exited and is not reaped yet: /proc/N is still there.
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !has_exited(pid) {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        assert!(matches!(
            Target::open(pid),
            Err(TargetError::Exited { pid: p }) if p == pid
        ));
        child.wait().expect("reaping");
        assert!(has_exited(pid));
        assert!(!has_exited(std::process::id()));
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
