//! Launch mode: starting a program held before its first instruction, so
//! that probes are attached before it runs.
//!
//! The agent forks; the child blocks reading a pipe, then calls `execve`
//! directly (the path is resolved beforehand, so a PATH search leaves no
//! failed `execve` calls behind). After the `read` that holds it, the child
//! makes no other system call than the `execve`: what the target does is
//! traced from its `execve` on. [`Launched::release`] lets it go; dropping a
//! [`Launched`] that was never released kills the child and reaps it.

use std::{
    ffi::{CString, OsStr},
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, fork, pipe2},
};

/// Exit status of a child that could not run the program (as a shell's).
const CANNOT_EXEC: i32 = 127;

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command to run")]
    Empty,
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: an argument holds a NUL byte")]
    Nul(String),
    #[error("cannot start {command}")]
    Fork {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for PID {pid}")]
    Wait {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// How a launched program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl Ended {
    /// The agent's own exit code for it: the program's, or 128+N for a
    /// signal, as a shell reports it.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Exited(code) => (code & 0xff) as u8,
            Self::Signaled(signal) => (128 + signal).clamp(0, 255) as u8,
        }
    }
}

/// A program started held: it runs once released.
#[derive(Debug)]
pub struct Launched {
    pid: u32,
    /// The executable it will run (absolute).
    pub exe: PathBuf,
    /// The command line as given.
    pub argv: Vec<String>,
    /// The write end of the pipe the child waits on; `None` once released.
    hold: Option<OwnedFd>,
    /// Set once it was reaped.
    ended: Option<Ended>,
}

/// The executable `command` names: itself when it holds a `/`, else the
/// first executable file of that name in `PATH`.
pub fn resolve(command: &str) -> Result<PathBuf, LaunchError> {
    use std::os::unix::fs::PermissionsExt as _;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let path = PathBuf::from(command);
        let path = std::path::absolute(&path).unwrap_or(path);
        return if is_exec(&path) {
            Ok(path)
        } else {
            Err(LaunchError::NotFound(command.to_owned()))
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(command))
        .find(|p| is_exec(p))
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .ok_or_else(|| LaunchError::NotFound(command.to_owned()))
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, LaunchError> {
    CString::new(bytes).map_err(|_| LaunchError::Nul(what.to_owned()))
}

impl Launched {
    /// Forks a child that waits to run `argv` (resolved with [`resolve`]),
    /// with the agent's environment.
    pub fn spawn(argv: &[String]) -> Result<Self, LaunchError> {
        let command = argv.first().ok_or(LaunchError::Empty)?;
        let exe = resolve(command)?;
        // Everything the child needs is built before the fork: after it, the
        // child only calls async-signal-safe functions.
        let path = cstring(exe.as_os_str().as_bytes(), command)?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| cstring(a.as_bytes(), command))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv, command)
            })
            .collect::<Result<_, _>>()?;
        let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        arg_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        let fork_error = |source: io::Error| LaunchError::Fork {
            command: command.clone(),
            source,
        };
        let (read_end, write_end) =
            pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fork_error(e.into()))?;
        // SAFETY: the child only calls async-signal-safe functions (read,
        // execve, write, _exit) on memory prepared before the fork.
        match unsafe { fork() }.map_err(|e| fork_error(e.into()))? {
            ForkResult::Child => {
                drop(write_end);
                // Rust ignores SIGPIPE in the agent, and an ignored signal
                // stays ignored across execve: give the program the default
                // back, as std's Command does.
                // SAFETY: signal(2) is async-signal-safe.
                unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
                let mut byte = 0u8;
                // SAFETY: reads one byte into a live local.
                let n = unsafe { libc::read(read_end.as_raw_fd(), (&raw mut byte).cast(), 1) };
                if n == 1 {
                    // SAFETY: NUL-terminated strings and NULL-terminated
                    // pointer arrays that live until execve replaces the image.
                    unsafe { libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr()) };
                    let msg = b"agent: cannot execute the program\n";
                    // SAFETY: writes a static buffer to stderr.
                    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
                }
                // SAFETY: ends the child without running the parent's
                // destructors or atexit handlers.
                unsafe { libc::_exit(CANNOT_EXEC) }
            }
            ForkResult::Parent { child } => {
                drop(read_end);
                Ok(Self {
                    pid: child.as_raw() as u32,
                    exe,
                    argv: argv.to_vec(),
                    hold: Some(write_end),
                    ended: None,
                })
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command's name as the process span names it (the executable's
    /// file name).
    pub fn name(&self) -> &OsStr {
        self.exe.file_name().unwrap_or(self.exe.as_os_str())
    }

    /// Lets the child run the program.
    pub fn release(&mut self) -> io::Result<()> {
        if let Some(fd) = self.hold.take() {
            let n = nix::unistd::write(&fd, &[1u8]).map_err(io::Error::from)?;
            if n != 1 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
        }
        Ok(())
    }

    /// Sends `signal` to the program.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid as i32), signal);
    }

    /// Waits for the program to end and reaps it (blocking).
    pub fn wait(&mut self) -> Result<Ended, LaunchError> {
        if let Some(ended) = self.ended {
            return Ok(ended);
        }
        // A child still held would wait forever: closing the pipe ends it.
        self.hold = None;
        loop {
            match waitpid(Pid::from_raw(self.pid as i32), None) {
                Ok(WaitStatus::Exited(_, code)) => {
                    self.ended = Some(Ended::Exited(code));
                    break;
                }
                Ok(WaitStatus::Signaled(_, signal, _)) => {
                    self.ended = Some(Ended::Signaled(signal as i32));
                    break;
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(err) => {
                    return Err(LaunchError::Wait {
                        pid: self.pid,
                        source: err.into(),
                    });
                }
            }
        }
        Ok(self.ended.unwrap_or(Ended::Exited(0)))
    }

    /// Whether it has ended, without reaping it (the exit status stays for
    /// [`Self::wait`]).
    pub fn has_ended(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        matches!(
            nix::sys::wait::waitid(
                nix::sys::wait::Id::Pid(Pid::from_raw(self.pid as i32)),
                flags
            ),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
        )
    }
}

impl Drop for Launched {
    /// A program never released, or still running when the agent gives up,
    /// is killed and reaped: the agent leaves no process behind it.
    fn drop(&mut self) {
        if self.ended.is_none() {
            if self.hold.is_none() && !self.has_ended() {
                self.signal(Signal::SIGKILL);
            }
            self.hold = None;
            let _ = self.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_path_and_refuses_missing() {
        let sh = resolve("sh").expect("sh in PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert!(matches!(
            resolve("no-such-command-xyz"),
            Err(LaunchError::NotFound(_))
        ));
        assert!(matches!(
            resolve("./no/such/file"),
            Err(LaunchError::NotFound(_))
        ));
    }

    #[test]
    fn exit_codes_as_a_shell_reports_them() {
        assert_eq!(Ended::Exited(3).exit_code(), 3);
        assert_eq!(Ended::Signaled(9).exit_code(), 137);
    }

    #[test]
    fn held_child_runs_only_when_released() {
        let mut child =
            Launched::spawn(&["sh".into(), "-c".into(), "exit 7".into()]).expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!child.has_ended(), "the child ran before its release");
        child.release().expect("release");
        assert_eq!(child.wait().expect("wait"), Ended::Exited(7));
    }

    #[test]
    fn the_program_gets_sigpipe_back() {
        // An ignored SIGPIPE would survive the execve: the shell could not
        // be killed by it.
        let mut child =
            Launched::spawn(&["sh".into(), "-c".into(), "kill -PIPE $$".into()]).expect("spawn");
        child.release().expect("release");
        assert_eq!(child.wait().expect("wait"), Ended::Signaled(libc::SIGPIPE));
    }

    #[test]
    fn unreleased_child_is_killed_on_drop() {
        let child = Launched::spawn(&["sleep".into(), "100".into()]).expect("spawn");
        let pid = child.pid();
        drop(child);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
