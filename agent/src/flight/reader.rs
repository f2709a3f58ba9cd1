//! A thread that drains `FLIGHT_RING`: reassembles dumps, saves them and
//! decodes them into spans, off the async runtime (decoding a 10 MiB dump
//! takes about a second of CPU).

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

use aya::maps::{MapData, RingBuf};
use opentelemetry_sdk::trace::SpanData;

use super::{
    CaptureOptions, CompletedDump, DumpSpanOptions, FlightAttachment, FlightCapture, handle_dump,
};
use crate::clock::WallClock;

/// How long the thread sleeps in poll(2) at most (the kernel wakes it at the
/// end of every dump, and when a backlog builds up).
const POLL_MS: i32 = 100;
/// How often dumps with no end are expired.
const EXPIRE_EVERY_NS: u64 = 1_000_000_000;

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
    /// span goes to `sink` (e.g. `move |s| sender.send_blocking(s)`).
    pub fn spawn(
        ring: RingBuf<MapData>,
        config: ReaderConfig,
        sink: impl FnMut(SpanData) + Send + 'static,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (commands, rx) = mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("flight-reader".to_owned())
            .spawn(move || run(ring, config, sink, rx, &thread_stop))?;
        Ok(Self {
            stop,
            commands,
            handle: Some(handle),
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
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
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
    sink: &mut dyn FnMut(SpanData),
    stats: &mut ReaderStats,
) {
    stats.dumps += 1;
    if dump.complete {
        stats.complete += 1;
    } else {
        stats.incomplete += 1;
    }
    let mut spans = 0;
    let mut count = |s: SpanData| {
        spans += 1;
        sink(s);
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

fn run(
    mut ring: RingBuf<MapData>,
    config: ReaderConfig,
    mut sink: impl FnMut(SpanData),
    commands: mpsc::Receiver<Command>,
    stop: &AtomicBool,
) -> ReaderStats {
    let mut capture = FlightCapture::new(config.capture);
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
        for dump in &done {
            handle(dump, &config, &mut sink, &mut stats);
        }
        let now = WallClock::monotonic_now_ns();
        if now.saturating_sub(last_expire) >= EXPIRE_EVERY_NS {
            last_expire = now;
            for dump in capture.expire(now) {
                handle(&dump, &config, &mut sink, &mut stats);
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
