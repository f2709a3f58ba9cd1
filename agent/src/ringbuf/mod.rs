//! Draining the BPF ring buffer.
//!
//! The eBPF programs submit records without waking the agent unless a
//! backlog builds up, so the reader drains on its own short timer as well as
//! on wakeups (see `agent-ebpf/src/record.rs`).

pub mod record;

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

pub use record::RecordError;

/// Records drained per call at most, so one flood cannot starve the tasks
/// that share the agent's thread: the export batcher takes spans off a queue
/// of 8,192 by default, and a longer drain overflowed it under a USDT flood.
/// A caller that gets this many back yields and drains again.
pub const MAX_PER_DRAIN: usize = 2048;

/// Reads records from the `EVENTS` ring buffer.
pub struct RingBufReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl std::fmt::Debug for RingBufReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBufReader").finish_non_exhaustive()
    }
}

impl RingBufReader {
    /// Wraps the ring buffer. Needs a tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
        // until the RingBuf, owned by this AsyncFd, is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Waits until the kernel signals data (a forced wakeup).
    pub async fn readable(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands the waiting records to `f`, at most [`MAX_PER_DRAIN`]; returns
    /// how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while n < MAX_PER_DRAIN {
            let Some(item) = ring.next() else { break };
            f(&item);
            n += 1;
        }
        n
    }
}
