//! The streaming reader: a port of `internal/trace/reader.go` and
//! `batchcursor.go`. It holds one generation at a time.

use std::fs::File;
use std::io::Read;

use super::DecodeError;
use super::event::Event;
use super::generation::{
    Batch, GenError, Generation, RawBatch, read_generation, read_generation_with_spill,
};
use super::order::{BaseEvent, OrderedEvent, Ordering, SchedCtx};
use super::source::Source;
use super::spec::{NUM_SPECS, SPECS, Version, ev};
use super::{NO_GOROUTINE, NO_PROC, NO_THREAD, freq_mul};
use crate::cursor::uvarint;

/// Number of arguments (excluding the timestamp) of each timed event type,
/// or `u8::MAX` if the type is not a valid timed event.
static TIMED_NARGS: [u8; 256] = {
    let mut t = [u8::MAX; 256];
    let mut i = 0;
    while i < NUM_SPECS {
        let s = &SPECS[i];
        if s.is_timed && !s.args.is_empty() {
            t[i] = (s.args.len() - 1) as u8;
        }
        i += 1;
    }
    t
};

/// Reads one timed event from `b` into `e` (Go's `readTimedBaseEvent`);
/// returns the encoded length and the raw timestamp delta.
#[inline]
fn read_timed_base_event(b: &[u8], e: &mut BaseEvent) -> Result<(usize, u64), String> {
    let typ = *b.first().ok_or("empty event")?;
    if typ as usize >= NUM_SPECS {
        return Err(format!("found invalid event type: {typ}"));
    }
    let nargs = TIMED_NARGS[typ as usize];
    if nargs == u8::MAX {
        return Err(format!("found event without a timestamp: type={typ}"));
    }
    e.typ = typ;
    let mut n = 1;
    let (ts, nb) = uvarint(&b[n..]).map_err(|_| "found invalid uvarint for timestamp")?;
    n += nb;
    for i in 0..nargs as usize {
        let (arg, nb) = uvarint(&b[n..]).map_err(|_| "found invalid uvarint")?;
        if let Some(slot) = e.args.get_mut(i) {
            *slot = arg;
        }
        n += nb;
    }
    Ok((n, ts))
}

#[derive(Debug, Clone)]
struct BatchCursor {
    /// Data of the current batch when it is read from the file lazily.
    buf: Vec<u8>,
    /// Which batch (index into `Generation::batches`) `buf` holds.
    buf_batch: Option<u32>,
    m: i64,
    /// The thread's slot in the ordering.
    m_slot: u32,
    /// Index into `Generation::per_m`.
    mi: usize,
    last_ts: i64,
    idx: usize,
    data_off: usize,
    ev: BaseEvent,
    ev_offset: u64,
}

impl BatchCursor {
    #[inline]
    fn next_event(&mut self, g: &Generation, file: Option<&File>) -> Result<bool, GenError> {
        let Some((_, list)) = g.per_m.get(self.mi) else {
            return Ok(false);
        };
        let (bi, b) = loop {
            let Some(&bi) = list.get(self.idx) else {
                return Ok(false);
            };
            let b = &g.batches[bi as usize];
            if b.len != self.data_off {
                break (bi, b);
            }
            self.idx += 1;
            self.data_off = 0;
            self.last_ts = 0;
        };
        let freq = g.tables.freq;
        if self.last_ts == 0 {
            self.last_ts = freq_mul(freq, b.time);
        }
        let all: &[u8] = if b.data.len() == b.len {
            &b.data
        } else {
            if self.buf_batch != Some(bi) {
                load_batch(&mut self.buf, file, b)?;
                self.buf_batch = Some(bi);
            }
            &self.buf
        };
        let data = all.get(self.data_off..).unwrap_or(&[]);
        let off = b.offset + self.data_off as u64;
        let (n, tsdiff) =
            read_timed_base_event(data, &mut self.ev).map_err(|m| GenError::new(off, m))?;
        self.ev.time = freq_mul(freq, tsdiff).wrapping_add(self.last_ts);
        self.last_ts = self.ev.time;
        self.data_off += n;
        self.ev_offset = off;
        Ok(true)
    }
}

/// Reads a batch's data from the file (lazy mode).
fn load_batch(buf: &mut Vec<u8>, file: Option<&File>, b: &Batch) -> Result<(), GenError> {
    use std::os::unix::fs::FileExt;
    let Some(file) = file else {
        return Err(GenError::new(
            b.offset,
            "internal error: batch data not loaded",
        ));
    };
    buf.clear();
    buf.resize(b.len, 0);
    file.read_exact_at(buf, b.offset).map_err(|e| GenError {
        offset: b.offset,
        msg: "reading batch data".into(),
        io: Some(e),
    })
}

/// The frontier: a binary min-heap (by next event time) of indices into the
/// cursors, operated exactly as Go's `heapInsert`/`heapUpdate`/`heapRemove`
/// so that ties resolve the same way.
#[inline]
fn time_of(c: &[BatchCursor], i: u32) -> i64 {
    c[i as usize].ev.time
}

fn heap_sift_up(h: &mut [u32], c: &[BatchCursor], mut i: usize) -> usize {
    while i > 0 && time_of(c, h[(i - 1) / 2]) > time_of(c, h[i]) {
        h.swap((i - 1) / 2, i);
        i = (i - 1) / 2;
    }
    i
}

fn heap_sift_down(h: &mut [u32], c: &[BatchCursor], mut i: usize) -> usize {
    loop {
        let m = min3(h, c, i, 2 * i + 1, 2 * i + 2);
        if m == i {
            break;
        }
        h.swap(i, m);
        i = m;
    }
    i
}

fn min3(h: &[u32], c: &[BatchCursor], i0: usize, i1: usize, i2: usize) -> usize {
    let mut min_idx = i0;
    let mut min_t = i64::MAX;
    if i0 < h.len() {
        min_t = time_of(c, h[i0]);
    }
    if i1 < h.len() && time_of(c, h[i1]) < min_t {
        min_t = time_of(c, h[i1]);
        min_idx = i1;
    }
    if i2 < h.len() && time_of(c, h[i2]) < min_t {
        min_idx = i2;
    }
    min_idx
}

fn heap_insert(h: &mut Vec<u32>, c: &[BatchCursor], bc: u32) {
    h.push(bc);
    let n = h.len() - 1;
    heap_sift_up(h, c, n);
}

fn heap_update(h: &mut [u32], c: &[BatchCursor], i: usize) {
    if heap_sift_up(h, c, i) != i {
        return;
    }
    heap_sift_down(h, c, i);
}

fn heap_remove(h: &mut Vec<u32>, c: &[BatchCursor], mut i: usize) {
    while i > 0 {
        h.swap((i - 1) / 2, i);
        i = (i - 1) / 2;
    }
    let last = h.len() - 1;
    h.swap(0, last);
    h.pop();
    heap_sift_down(h, c, 0);
}

/// Statistics about what was read so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Bytes consumed from the input.
    pub bytes: u64,
    /// Generations read.
    pub generations: u64,
    /// Events returned.
    pub events: u64,
}

/// What an [`Event`] refers to: the current event and its generation.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) cur: OrderedEvent,
    pub(crate) generation: Option<Generation>,
    pub(crate) ver: Version,
}

/// A streaming reader of Go 1.22+ execution traces.
///
/// It yields the same event stream as Go's `internal/trace.Reader` (and
/// `golang.org/x/exp/trace`): the same events, in the same order, with the
/// same timestamps. It holds one generation of the trace in memory at a time.
pub struct Reader<R: Read> {
    src: Source<R>,
    core: Core,
    last_ts: i64,
    /// Whether a generation was ever installed (Go's `r.gen != nil` test in
    /// the pre-1.26 path; we drop generations as soon as they are done).
    had_generation: bool,
    cursors: Vec<BatchCursor>,
    frontier: Vec<u32>,
    cpu_next: usize,
    order: Ordering,
    syncs: u64,
    read_gen_err: Option<GenError>,
    done: bool,
    spill: Option<RawBatch>,
    spill_err: Option<GenError>,
    spill_err_sync: bool,
    /// Set once an error was returned: the reader is fused.
    failed: Option<String>,
    stats: ReadStats,
    /// In file mode, a handle to read event batches from when they are
    /// needed, instead of holding a whole generation in memory.
    file: Option<File>,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("version", &self.core.ver)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

const NO_CTX: SchedCtx = SchedCtx {
    g: NO_GOROUTINE,
    p: NO_PROC,
    m: NO_THREAD,
};

impl Reader<File> {
    /// A reader over a trace file that reads each batch of events from the
    /// file when it gets to it (with `pread`), instead of holding the whole
    /// generation in memory: memory stays at the generation's string and
    /// stack tables plus one batch (at most 64 KiB) per thread. The event
    /// stream is the same as with [`Reader::new`].
    ///
    /// A file that is not a regular file (a pipe, a character device) cannot
    /// be read at an offset: it is read as a stream, as by [`Reader::new`].
    pub fn from_file(file: File) -> Result<Self, DecodeError> {
        let io = |source| DecodeError::Io { offset: 0, source };
        let regular = file.metadata().map_err(io)?.is_file();
        let handle = if regular {
            Some(file.try_clone().map_err(io)?)
        } else {
            None
        };
        let mut r = Reader::new(file)?;
        r.file = handle;
        Ok(r)
    }
}

impl<R: Read> Reader<R> {
    /// Reads the header and prepares to read events.
    pub fn new(r: R) -> Result<Self, DecodeError> {
        let mut src = Source::new(r);
        let ver = read_header(&mut src)?;
        Ok(Reader {
            src,
            core: Core {
                cur: OrderedEvent {
                    base: BaseEvent::default(),
                    ctx: NO_CTX,
                    offset: 0,
                },
                generation: None,
                ver,
            },
            last_ts: 0,
            had_generation: false,
            cursors: Vec::new(),
            frontier: Vec::new(),
            cpu_next: 0,
            order: Ordering::new(ver),
            syncs: 0,
            read_gen_err: None,
            done: false,
            spill: None,
            spill_err: None,
            spill_err_sync: false,
            failed: None,
            stats: ReadStats::default(),
            file: None,
        })
    }

    /// The trace's Go version (the `N` in Go 1.N).
    pub fn go_version(&self) -> u32 {
        self.core.ver.0
    }

    /// What was read so far.
    pub fn stats(&self) -> ReadStats {
        let mut s = self.stats;
        s.bytes = self.src.offset();
        s
    }

    /// Reads the next event; `Ok(None)` at the end of the trace. After an
    /// error the reader returns [`DecodeError::Fused`].
    #[inline]
    pub fn read_event(&mut self) -> Result<Option<Event<'_>>, DecodeError> {
        if let Some(msg) = &self.failed {
            return Err(DecodeError::Fused {
                reason: msg.clone(),
            });
        }
        match self.step().and_then(|more| {
            if more {
                self.fixup()?;
            }
            Ok(more)
        }) {
            Ok(false) => Ok(None),
            Ok(true) => {
                self.stats.events += 1;
                Ok(Some(Event::new(&self.core)))
            }
            Err(err) => {
                self.failed = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Go's deferred fix-up in `ReadEvent`: validate table references and
    /// make timestamps strictly increasing.
    #[inline]
    fn fixup(&mut self) -> Result<(), DecodeError> {
        let e = &mut self.core.cur;
        if e.base.typ != ev::SYNC_EVENT
            && let Some(g) = &self.core.generation
        {
            let spec = &SPECS[e.base.typ as usize];
            for &i in spec.stack_ids {
                let id = e.base.args.get(i - 1).copied().unwrap_or(0);
                if !g.tables.has_stack(id) {
                    return Err(DecodeError::invalid(
                        e.offset,
                        format!("found invalid stack ID {id} for event {}", spec.name),
                    ));
                }
            }
            for &i in spec.string_ids {
                let id = e.base.args.get(i - 1).copied().unwrap_or(0);
                if !g.tables.has_string(id) {
                    return Err(DecodeError::invalid(
                        e.offset,
                        format!("found invalid string ID {id} for event {}", spec.name),
                    ));
                }
            }
        }
        if e.base.time <= self.last_ts {
            e.base.time = self.last_ts.wrapping_add(1);
        }
        self.last_ts = e.base.time;
        Ok(())
    }

    fn sync_event(&mut self, has_table: bool, time: i64) -> bool {
        self.syncs += 1;
        self.core.cur = OrderedEvent {
            base: BaseEvent {
                typ: ev::SYNC_EVENT,
                has_table,
                time,
                args: [self.syncs, 0, 0, 0],
            },
            ctx: NO_CTX,
            offset: self.src.offset(),
        };
        true
    }

    /// Produces the next event into `self.core.cur`; false at the end.
    #[inline]
    fn step(&mut self) -> Result<bool, DecodeError> {
        if self.done {
            return Ok(false);
        }
        if let Some(e) = self.order.next() {
            self.core.cur = e;
            return Ok(true);
        }
        let cpu_left = self
            .core
            .generation
            .as_ref()
            .is_some_and(|g| self.cpu_next < g.cpu_samples.len());
        if self.frontier.is_empty() && !cpu_left {
            return self.next_generation();
        }
        let Some(g) = self.core.generation.as_ref() else {
            return Err(DecodeError::invalid(
                self.src.offset(),
                "internal error: no generation",
            ));
        };
        // Inject a CPU sample if it comes next.
        if let Some(s) = g.cpu_samples.get(self.cpu_next)
            && (self.frontier.is_empty() || s.time < time_of(&self.cursors, self.frontier[0]))
        {
            self.cpu_next += 1;
            self.core.cur = OrderedEvent {
                base: BaseEvent {
                    typ: ev::CPU_SAMPLE,
                    has_table: true,
                    time: s.time,
                    args: [s.stack, 0, 0, 0],
                },
                ctx: SchedCtx {
                    g: s.g,
                    p: s.p,
                    m: s.m,
                },
                offset: s.offset,
            };
            return Ok(true);
        }
        if self.frontier.is_empty() {
            return Err(DecodeError::invalid(
                self.src.offset(),
                format!("broken trace: frontier is empty [gen={}]", g.gnum),
            ));
        }
        if !self.try_advance(0)? {
            let cursors = &self.cursors;
            super::pdqsort::sort_by(&mut self.frontier, |a, b| {
                time_of(cursors, *a) < time_of(cursors, *b)
            });
            let mut success = false;
            for i in 1..self.frontier.len() {
                if self.try_advance(i)? {
                    success = true;
                    break;
                }
            }
            if !success {
                return Err(self.stuck_error());
            }
        }
        match self.order.next() {
            Some(e) => {
                self.core.cur = e;
                Ok(true)
            }
            None => Err(DecodeError::invalid(
                self.src.offset(),
                "internal error: advance successful, but queue is empty",
            )),
        }
    }

    fn next_generation(&mut self) -> Result<bool, DecodeError> {
        // The previous generation is done: free it before reading the next.
        self.core.generation = None;
        self.cursors.clear();
        if self.core.ver < Version::GO126 {
            return self.next_gen_with_spill();
        }
        if let Some(e) = self.read_gen_err.take() {
            return Err(e.into());
        }
        match read_generation(&mut self.src, self.core.ver, self.file.is_some()) {
            Err(e) => {
                self.read_gen_err = Some(e);
                Ok(self.sync_event(false, self.last_ts))
            }
            Ok(g) => self.install_gen(g),
        }
    }

    fn stuck_error(&self) -> DecodeError {
        use std::fmt::Write;
        let mut s = String::new();
        let gnum = self.core.generation.as_ref().map(|g| g.gnum).unwrap_or(0);
        let _ = write!(s, "broken trace: failed to advance: frontier: [gen={gnum}]");
        for &ci in &self.frontier {
            let bc = &self.cursors[ci as usize];
            let spec = &SPECS[bc.ev.typ as usize];
            let _ = write!(s, " M {} [{} time={}", bc.m, spec.name, bc.ev.time);
            for (i, a) in spec.args.iter().skip(1).enumerate() {
                let _ = write!(s, " {a}={}", bc.ev.args.get(i).copied().unwrap_or(0));
            }
            s.push(']');
        }
        let off = self
            .frontier
            .first()
            .map(|&ci| self.cursors[ci as usize].ev_offset)
            .unwrap_or(0);
        DecodeError::invalid(off, s)
    }

    #[inline]
    fn try_advance(&mut self, i: usize) -> Result<bool, DecodeError> {
        let Some(g) = self.core.generation.as_mut() else {
            return Ok(false);
        };
        let ci = self.frontier[i] as usize;
        let bc = &mut self.cursors[ci];
        let ok = self
            .order
            .advance(
                &mut bc.ev,
                &mut g.tables,
                bc.m,
                bc.m_slot,
                g.gnum,
                bc.ev_offset,
            )
            .map_err(|m| DecodeError::invalid(bc.ev_offset, m))?;
        if !ok {
            return Ok(false);
        }
        if bc.next_event(g, self.file.as_ref())? {
            heap_update(&mut self.frontier, &self.cursors, i);
        } else {
            heap_remove(&mut self.frontier, &self.cursors, i);
        }
        Ok(true)
    }

    fn next_gen_with_spill(&mut self) -> Result<bool, DecodeError> {
        if self.spill_err.is_some() {
            if self.spill_err_sync {
                let e = self.spill_err.take().map(DecodeError::from);
                return Err(e.unwrap_or_else(|| DecodeError::invalid(0, "internal error")));
            }
            self.spill_err_sync = true;
            return Ok(self.sync_event(false, self.last_ts));
        }
        if self.had_generation && self.spill.is_none() {
            self.done = true;
            return Ok(self.sync_event(false, self.last_ts));
        }
        let spill = self.spill.take();
        match read_generation_with_spill(&mut self.src, spill, self.core.ver, self.file.is_some()) {
            Err(e) => {
                self.spill_err = Some(e);
                self.spill_err_sync = true;
                Ok(self.sync_event(false, self.last_ts))
            }
            Ok(r) => {
                self.spill = r.spill;
                self.spill_err = r.spill_err;
                self.install_gen(r.gnum)
            }
        }
    }

    fn install_gen(&mut self, g: Option<Generation>) -> Result<bool, DecodeError> {
        let Some(g) = g else {
            self.done = true;
            return Ok(self.sync_event(false, self.last_ts));
        };
        self.stats.generations += 1;
        self.had_generation = true;
        self.order.new_generation();
        self.cpu_next = 0;
        self.frontier.clear();
        self.cursors.clear();
        for (mi, (m, _)) in g.per_m.iter().enumerate() {
            let mut bc = BatchCursor {
                buf: Vec::new(),
                buf_batch: None,
                m: *m,
                m_slot: self.order.m_slot(*m),
                mi,
                last_ts: 0,
                idx: 0,
                data_off: 0,
                ev: BaseEvent::default(),
                ev_offset: 0,
            };
            if !bc.next_event(&g, self.file.as_ref())? {
                continue;
            }
            self.cursors.push(bc);
            let ci = (self.cursors.len() - 1) as u32;
            heap_insert(&mut self.frontier, &self.cursors, ci);
        }
        let t = freq_mul(g.tables.freq, g.min_ts);
        self.core.generation = Some(g);
        Ok(self.sync_event(true, t))
    }
}

impl From<GenError> for DecodeError {
    fn from(e: GenError) -> Self {
        match e.io {
            Some(source) => DecodeError::Io {
                offset: e.offset,
                source,
            },
            None => DecodeError::Invalid {
                offset: e.offset,
                reason: e.msg,
            },
        }
    }
}

/// Reads `go 1.N trace\0\0\0` and checks the version.
fn read_header<R: Read>(src: &mut Source<R>) -> Result<Version, DecodeError> {
    let mut v: u32 = 0;
    let prefix = b"go 1.";
    for &want in prefix {
        match src.read_byte_opt() {
            Ok(Some(b)) if b == want => {}
            Ok(_) => return Err(DecodeError::NotATrace),
            Err(e) => return Err(GenError::from(e).into()),
        }
    }
    let mut digits = 0;
    let next = loop {
        match src.read_byte_opt() {
            Ok(Some(b)) if b.is_ascii_digit() && digits < 9 => {
                v = v * 10 + (b - b'0') as u32;
                digits += 1;
            }
            Ok(Some(b)) => break b,
            Ok(None) => return Err(DecodeError::NotATrace),
            Err(e) => return Err(GenError::from(e).into()),
        }
    };
    if digits == 0 || next != b' ' {
        return Err(DecodeError::NotATrace);
    }
    for &want in b"trace\0\0\0" {
        match src.read_byte_opt() {
            Ok(Some(b)) if b == want => {}
            Ok(_) => return Err(DecodeError::NotATrace),
            Err(e) => return Err(GenError::from(e).into()),
        }
    }
    let ver = Version(v);
    if ver.is_v1() || (v < 22 && v > 0) {
        return Err(DecodeError::PreGo122 { version: v });
    }
    if !ver.is_supported() {
        return Err(DecodeError::UnsupportedVersion { version: v });
    }
    Ok(ver)
}
