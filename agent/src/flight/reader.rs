//! Two threads off the async runtime: one drains `FLIGHT_RING` and
//! reassembles dumps (at a raised priority, so the ring never waits on a
//! decode nor on the target's own busy threads), one saves each dump and decodes it into spans at the lowest CPU
//! priority (nice 19): decoding a 10 MiB dump takes about 300 ms of CPU,
//! which the traced program should not have to share.

use std::{
    io,
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
};

use crate::gotrace::SpanBatch;
use aya::maps::{MapData, RingBuf};

use super::{
    CaptureOptions, CompletedDump, DumpSpanOptions, FlightAttachment, FlightCapture, handle_dump,
};
use crate::clock::WallClock;

/// How long the thread sleeps in poll(2) at most (the kernel wakes it at the
/// end of every dump, and when a backlog builds up).
const POLL_MS: i32 = 100;
/// How often dumps with no end are expired.
const EXPIRE_EVERY_NS: u64 = 1_000_000_000;
/// Reassembled dumps waiting for the decoder at most; beyond, the reader
/// waits (and the ring buffers what arrives meanwhile).
const PENDING_DUMPS: usize = 2;

/// What the reader thread does with dumps.
#[derive(Clone, Debug, Default)]
pub struct ReaderConfig {
    pub capture: CaptureOptions,
    pub spans: DumpSpanOptions,
    /// `--save-dumps DIR`.
    pub save_dir: Option<PathBuf>,
}

/// Counters of the reader thread, returned by [`FlightReader::stop`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    pub dumps: u64,
    pub complete: u64,
    pub incomplete: u64,
    pub spans: u64,
    pub saved: u64,
    /// Dumps that failed to save or decode (logged).
    pub errors: u64,
    pub bad_records: u64,
    pub dropped_dumps: u64,
}

enum Command {
    /// An attachment without its links: what the capture needs.
    Watch(Box<FlightAttachment>),
    Unwatch(u32),
}

/// The running reader thread.
#[derive(Debug)]
pub struct FlightReader {
    stop: Arc<AtomicBool>,
    commands: mpsc::Sender<Command>,
    handle: Option<thread::JoinHandle<ReaderStats>>,
    decoder: Option<thread::JoinHandle<ReaderStats>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Watch(_) => f.write_str("Watch"),
            Command::Unwatch(slot) => write!(f, "Unwatch({slot})"),
        }
    }
}

impl FlightReader {
    /// Starts the thread over `ring` ([`super::take_ring_buffer`]). Every
    /// span goes to `sink` (e.g. `move |batch| sender.send_chunk_blocking(batch.into_chunk())`).
    pub fn spawn(
        ring: RingBuf<MapData>,
        config: ReaderConfig,
        sink: impl FnMut(SpanBatch) + Send + 'static,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (commands, rx) = mpsc::channel();
        let (dumps, pending) = mpsc::sync_channel(PENDING_DUMPS);
        let capture = config.capture;
        let decoder = thread::Builder::new()
            .name("flight-decode".to_owned())
            .spawn(move || decode(pending, config, sink))?;
        let thread_stop = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("flight-reader".to_owned())
            .spawn(move || run(ring, capture, dumps, rx, &thread_stop))?;
        Ok(Self {
            stop,
            commands,
            handle: Some(handle),
            decoder: Some(decoder),
        })
    }

    /// Makes dumps of `attachment`'s process known (pid, writer types).
    /// Call after [`super::attach`]; dumps of an unwatched slot still arrive,
    /// with pid 0.
    pub fn watch(&self, attachment: &FlightAttachment) {
        let info = Box::new(attachment.shallow_clone());
        let _ = self.commands.send(Command::Watch(info));
    }

    /// Forgets a target slot (after detaching it).
    pub fn unwatch(&self, slot: u32) {
        let _ = self.commands.send(Command::Unwatch(slot));
    }

    /// Stops the thread (after draining what is waiting) and returns its
    /// counters.
    pub fn stop(mut self) -> ReaderStats {
        self.stop.store(true, Ordering::Relaxed);
        // The reader drains what is waiting, hands the last dumps on and
        // closes the channel; the decoder then finishes them.
        let reader = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let decoded = self
            .decoder
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        ReaderStats {
            bad_records: reader.bad_records,
            dropped_dumps: reader.dropped_dumps,
            ..decoded
        }
    }
}

impl Drop for FlightReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn handle(
    dump: &CompletedDump,
    config: &ReaderConfig,
    sink: &mut dyn FnMut(SpanBatch),
    stats: &mut ReaderStats,
) {
    stats.dumps += 1;
    if dump.complete {
        stats.complete += 1;
    } else {
        stats.incomplete += 1;
    }
    let mut spans = 0;
    let mut count = |batch: SpanBatch| {
        spans += batch.len() as u64;
        sink(batch);
    };
    match handle_dump(dump, &config.spans, config.save_dir.as_deref(), &mut count) {
        Ok(outcome) => {
            if let Some(path) = &outcome.saved {
                stats.saved += 1;
                log::info!(
                    "flight-recorder dump {} saved to {}",
                    dump.id,
                    path.display()
                );
            }
        }
        Err(err) => {
            stats.errors += 1;
            log::warn!(
                "flight-recorder dump {} of pid {}: {}",
                dump.id,
                dump.pid,
                crate::binary::error_chain(&err)
            );
        }
    }
    stats.spans += spans;
}

/// Sets this thread's nice value (where the kernel refuses, it stays as
/// it was: said at debug level).
fn set_nice(nice: i32, what: &str) {
    // SAFETY: setpriority on this thread's own id (PRIO_PROCESS with a tid
    // sets one thread's nice value on Linux); no memory is passed.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if ret != 0 {
        log::debug!(
            "cannot set the {what}'s nice value to {nice}: {}",
            io::Error::last_os_error()
        );
    }
}

/// The reader's nice value: a dump is written as fast as the target can
/// copy it, and the ring holds 16 MiB of it; a reader that
/// waits for a CPU behind the target's busy threads lets a large dump
/// overflow the ring (seen with 64 MiB dumps of a target keeping both cores
/// busy). Draining is a copy, cheap next to writing the dump.
const READER_NICE: i32 = -10;

/// The decoder thread: saves and decodes each dump, at the lowest priority.
fn decode(
    pending: mpsc::Receiver<CompletedDump>,
    config: ReaderConfig,
    mut sink: impl FnMut(SpanBatch),
) -> ReaderStats {
    set_nice(19, "dump decoder");
    let mut stats = ReaderStats::default();
    for dump in pending {
        handle(&dump, &config, &mut sink, &mut stats);
    }
    stats
}

/// The reader thread: drains the ring, reassembles, hands dumps on.
fn run(
    mut ring: RingBuf<MapData>,
    options: CaptureOptions,
    dumps: mpsc::SyncSender<CompletedDump>,
    commands: mpsc::Receiver<Command>,
    stop: &AtomicBool,
) -> ReaderStats {
    set_nice(READER_NICE, "flight-recorder reader");
    let mut capture = FlightCapture::new(options);
    let mut stats = ReaderStats::default();
    let mut last_expire = WallClock::monotonic_now_ns();
    let fd = ring.as_raw_fd();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Watch(info) => capture.watch(&info),
                Command::Unwatch(slot) => capture.unwatch(slot),
            }
        }
        let mut done = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(dump) = capture.on_bytes(&item) {
                done.push(dump);
            }
        }
        let now = WallClock::monotonic_now_ns();
        if now.saturating_sub(last_expire) >= EXPIRE_EVERY_NS {
            last_expire = now;
            done.extend(capture.expire(now));
        }
        for dump in done {
            if dumps.send(dump).is_err() {
                // The decoder is gone (it panicked): nothing can take dumps.
                stats.dropped_dumps += 1;
            }
        }
        if stopping {
            break;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives for the duration of the call;
        // the ring buffer (and so its fd) outlives the loop.
        unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
    }
    stats.bad_records = capture.bad_records;
    stats.dropped_dumps = capture.dropped_dumps;
    stats
}
