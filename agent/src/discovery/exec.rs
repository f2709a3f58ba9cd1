//! New processes, as they exec: the `process_exec` program on the raw
//! tracepoint `sched_process_exec` writes one record per exec into a ring
//! buffer of its own (an instance of the agent's object that attaches
//! nothing else), and [`ExecWatch::next`] hands over their PIDs.

use agent_common::discovery::KIND_PROCESS_EXEC;

use crate::{
    probes::{EVENTS_MAP, LoadOptions, ProbeError, Probes},
    ringbuf::{RingBufReader, record},
};

/// The discovery ring: execs are rare, and the reader wakes on each.
const RING_BYTES: u32 = 256 << 10;

/// Why exec discovery cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ExecWatchError {
    #[error("cannot watch for new processes")]
    Probe(#[from] ProbeError),
    #[error("cannot watch the discovery ring buffer")]
    Ring(#[source] std::io::Error),
}

/// Execs as the kernel reports them.
pub struct ExecWatch {
    // Keeps the program attached.
    _probes: Probes,
    reader: RingBufReader,
    /// Records of another kind, or too short: none are expected.
    pub bad_records: u64,
}

impl ExecWatch {
    /// Loads and attaches the discovery program. From here on no exec is
    /// missed (short of a full ring, which the kernel counts).
    pub fn start() -> Result<Self, ExecWatchError> {
        let mut probes = Probes::load(LoadOptions {
            ring_buffer_bytes: RING_BYTES,
            flight_ring_bytes: 4096,
        })?;
        probes.attach_raw_tracepoint("discovery", "process_exec", "sched_process_exec")?;
        let reader = RingBufReader::new(probes.take_ring_buffer(EVENTS_MAP)?)
            .map_err(ExecWatchError::Ring)?;
        Ok(Self {
            _probes: probes,
            reader,
            bad_records: 0,
        })
    }

    /// The PIDs that exec'd since the last call, waiting for at least one.
    pub async fn next(&mut self) -> Vec<u32> {
        loop {
            let mut pids = Vec::new();
            let bad = &mut self.bad_records;
            self.reader.drain(|bytes| match record::header(bytes) {
                Ok(h) if h.kind == KIND_PROCESS_EXEC => pids.push(h.tid),
                _ => *bad += 1,
            });
            if !pids.is_empty() {
                return pids;
            }
            if let Err(err) = self.reader.readable().await {
                log::warn!("discovery ring wait failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
