//! Waiting for the target to exit, through a pidfd.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

use tokio::io::unix::AsyncFd;

/// Failure to watch a process.
#[derive(Debug, thiserror::Error)]
pub enum ExitWatchError {
    #[error("pidfd_open({pid}) failed")]
    PidfdOpen {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot register the pidfd with the runtime")]
    Register(#[source] io::Error),
}

trait RegisterReadable: Sized {
    fn with_interest_checked(fd: OwnedFd) -> Result<Self, ExitWatchError>;
}

impl RegisterReadable for AsyncFd<OwnedFd> {
    fn with_interest_checked(fd: OwnedFd) -> Result<Self, ExitWatchError> {
        // SAFETY: `fd` is an OwnedFd: it stays open and refers to the same
        // description until the AsyncFd that owns it is dropped.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| ExitWatchError::Register(e.into()))
    }
}

/// Becomes ready when the process exits.
#[derive(Debug)]
pub struct ExitWatch {
    fd: AsyncFd<OwnedFd>,
}

impl ExitWatch {
    /// Watches `pid`. Needs a tokio runtime.
    pub fn new(pid: u32) -> Result<Self, ExitWatchError> {
        let pid_arg = libc::pid_t::try_from(pid).map_err(|_| ExitWatchError::PidfdOpen {
            pid,
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_arg, 0) };
        if raw < 0 {
            return Err(ExitWatchError::PidfdOpen {
                pid,
                source: io::Error::last_os_error(),
            });
        }
        let raw = i32::try_from(raw).map_err(|_| ExitWatchError::PidfdOpen {
            pid,
            source: io::Error::from(io::ErrorKind::InvalidData),
        })?;
        // SAFETY: `raw` is a freshly opened fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let fd = AsyncFd::with_interest_checked(owned)?;
        Ok(Self { fd })
    }

    /// Resolves once the process has exited.
    pub async fn exited(&self) {
        // A pidfd polls readable once the process exits; errors mean the same.
        let _ = self.fd.readable().await;
    }
}
