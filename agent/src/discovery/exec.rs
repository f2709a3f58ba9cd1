//! New processes, as they exec: the `process_exec` program on the raw
//! tracepoint `sched_process_exec` writes one record per exec into a ring
//! buffer of its own (an instance of the agent's object that attaches
//! nothing else), and [`ExecWatch::next`] hands over their PIDs. With
//! `--port`, the `process_listen` program on the raw tracepoint
//! `inet_sock_set_state` writes one into the same ring when a process
//! starts listening on one of the ports.

use agent_common::discovery::{EXEC_HELD, EXEC_LISTENING, KIND_PROCESS_EXEC};

use crate::{
    probes::{EVENTS_MAP, LoadOptions, ProbeError, Probes},
    ringbuf::{RingBufReader, record},
};

/// The discovery ring: execs are rare, and the reader wakes on each.
const RING_BYTES: u32 = 256 << 10;
/// Names held at exec.
const HOLD_MAP: &str = "DISCOVERY_HOLD";
/// Ports whose listeners are reported.
const PORTS_MAP: &str = "DISCOVERY_PORTS";

/// Why exec discovery cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ExecWatchError {
    #[error("cannot watch for new processes")]
    Probe(#[from] ProbeError),
    #[error("cannot watch the discovery ring buffer")]
    Ring(#[source] std::io::Error),
}

/// One exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exec {
    pub pid: u32,
    /// The kernel stopped it (its name is held): whoever takes it must
    /// continue it ([`resume`]).
    pub held: bool,
    /// Not an exec: the process began listening on this TCP port (one
    /// `--port` names).
    pub listening: Option<u16>,
}

/// Lets a held process run on.
pub fn resume(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if let Err(err) = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGCONT,
    ) {
        log::debug!("PID {pid}: cannot continue it: {err}");
    }
}

/// The `DISCOVERY_HOLD` key of a program name: its first 15 bytes, as the
/// kernel keeps them in `comm`, zero-padded.
fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    for (slot, byte) in key.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    key
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
    /// Loads and attaches the discovery program, holding the programs
    /// named in `hold` (file names) at exec. From here on no exec is missed
    /// (short of a full ring, which the kernel counts). With `ports`, a
    /// process that starts listening on one of them is reported too.
    pub fn start(hold: &[String], ports: &[u16]) -> Result<Self, ExecWatchError> {
        let mut probes = Probes::load(LoadOptions {
            ring_buffer_bytes: RING_BYTES,
            flight_ring_bytes: 4096,
        })?;
        for name in hold {
            probes.set_hash(HOLD_MAP, comm_key(name), 1u32)?;
        }
        probes.attach_raw_tracepoint("discovery", "process_exec", "sched_process_exec")?;
        if !ports.is_empty() {
            for &port in ports {
                probes.set_hash(PORTS_MAP, port, 1u32)?;
            }
            probes.attach_raw_tracepoint("discovery", "process_listen", "inet_sock_set_state")?;
        }
        let reader = RingBufReader::new(probes.take_ring_buffer(EVENTS_MAP)?)
            .map_err(ExecWatchError::Ring)?;
        Ok(Self {
            _probes: probes,
            reader,
            bad_records: 0,
        })
    }

    /// The execs since the last call, waiting for at least one.
    pub async fn next(&mut self) -> Vec<Exec> {
        loop {
            let mut pids = Vec::new();
            let bad = &mut self.bad_records;
            self.reader.drain(|bytes| match record::header(bytes) {
                Ok(h) if h.kind == KIND_PROCESS_EXEC => pids.push(Exec {
                    pid: h.tid,
                    held: h.site == EXEC_HELD,
                    listening: (h.site == EXEC_LISTENING).then_some(h.goid as u16),
                }),
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
