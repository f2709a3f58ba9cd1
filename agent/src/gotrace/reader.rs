//! The streaming reader: a port of `internal/trace/reader.go` and
//! `batchcursor.go`. It holds one generation at a time.

use std::io::Read;

use super::DecodeError;
use super::cursor::{Source, uvarint};
use super::event::Event;
use super::generation::{
    GenError, Generation, RawBatch, read_generation, read_generation_with_spill,
};
use super::order::{BaseEvent, OrderedEvent, Ordering, SchedCtx};
use super::spec::{NUM_SPECS, SPECS, Version, ev};
use super::{NO_GOROUTINE, NO_PROC, NO_THREAD, freq_mul};

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
    m: i64,
    /// Index into `Generation::per_m`.
    mi: usize,
    last_ts: i64,
    idx: usize,
    data_off: usize,
    ev: BaseEvent,
    ev_offset: u64,
}

impl BatchCursor {
    fn next_event(&mut self, g: &Generation) -> Result<bool, GenError> {
        let Some((_, list)) = g.per_m.get(self.mi) else {
            return Ok(false);
        };
        while let Some(&bi) = list.get(self.idx) {
            if g.batches[bi as usize].len != self.data_off {
                break;
            }
            self.idx += 1;
            self.data_off = 0;
            self.last_ts = 0;
        }
        let Some(&bi) = list.get(self.idx) else {
            return Ok(false);
        };
        let b = &g.batches[bi as usize];
        let freq = g.tables.freq;
        if self.last_ts == 0 {
            self.last_ts = freq_mul(freq, b.time);
        }
        let data = g.batch_data(b).get(self.data_off..).unwrap_or(&[]);
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

fn heap_sift_up(h: &mut [BatchCursor], mut i: usize) -> usize {
    while i > 0 && h[(i - 1) / 2].ev.time > h[i].ev.time {
        h.swap((i - 1) / 2, i);
        i = (i - 1) / 2;
    }
    i
}

fn heap_sift_down(h: &mut [BatchCursor], mut i: usize) -> usize {
    loop {
        let m = min3(h, i, 2 * i + 1, 2 * i + 2);
        if m == i {
            break;
        }
        h.swap(i, m);
        i = m;
    }
    i
}

fn min3(b: &[BatchCursor], i0: usize, i1: usize, i2: usize) -> usize {
    let mut min_idx = i0;
    let mut min_t = i64::MAX;
    if i0 < b.len() {
        min_t = b[i0].ev.time;
    }
    if i1 < b.len() && b[i1].ev.time < min_t {
        min_t = b[i1].ev.time;
        min_idx = i1;
    }
    if i2 < b.len() && b[i2].ev.time < min_t {
        min_idx = i2;
    }
    min_idx
}

fn heap_insert(h: &mut Vec<BatchCursor>, bc: BatchCursor) {
    h.push(bc);
    let n = h.len() - 1;
    heap_sift_up(h, n);
}

fn heap_update(h: &mut [BatchCursor], i: usize) {
    if heap_sift_up(h, i) != i {
        return;
    }
    heap_sift_down(h, i);
}

fn heap_remove(h: &mut Vec<BatchCursor>, mut i: usize) {
    while i > 0 {
        h.swap((i - 1) / 2, i);
        i = (i - 1) / 2;
    }
    let last = h.len() - 1;
    h.swap(0, last);
    h.pop();
    heap_sift_down(h, 0);
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

/// A streaming reader of Go 1.22+ execution traces.
///
/// It yields the same event stream as Go's `internal/trace.Reader` (and
/// `golang.org/x/exp/trace`): the same events, in the same order, with the
/// same timestamps. It holds one generation of the trace in memory at a time.
pub struct Reader<R: Read> {
    src: Source<R>,
    ver: Version,
    last_ts: i64,
    gnum: Option<Generation>,
    frontier: Vec<BatchCursor>,
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
    cur: Option<OrderedEvent>,
    stats: ReadStats,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("version", &self.ver)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

enum Step {
    Event(OrderedEvent),
    Done,
}

impl<R: Read> Reader<R> {
    /// Reads the header and prepares to read events.
    pub fn new(r: R) -> Result<Self, DecodeError> {
        let mut src = Source::new(r);
        let ver = read_header(&mut src)?;
        Ok(Reader {
            src,
            ver,
            last_ts: 0,
            gnum: None,
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
            cur: None,
            stats: ReadStats::default(),
        })
    }

    /// The trace's Go version (the `N` in Go 1.N).
    pub fn go_version(&self) -> u32 {
        self.ver.0
    }

    /// What was read so far.
    pub fn stats(&self) -> ReadStats {
        let mut s = self.stats;
        s.bytes = self.src.offset();
        s
    }

    /// Reads the next event; `Ok(None)` at the end of the trace. After an
    /// error the reader returns that error again.
    pub fn read_event(&mut self) -> Result<Option<Event<'_>>, DecodeError> {
        if let Some(msg) = &self.failed {
            return Err(DecodeError::Fused {
                reason: msg.clone(),
            });
        }
        match self.step() {
            Ok(Step::Done) => {
                self.cur = None;
                Ok(None)
            }
            Ok(Step::Event(mut e)) => {
                if let Err(err) = self.fixup(&mut e) {
                    self.failed = Some(err.to_string());
                    return Err(err);
                }
                self.stats.events += 1;
                self.cur = Some(e);
                let tables = if e.has_table {
                    self.gnum.as_ref().map(|g| &g.tables)
                } else {
                    None
                };
                let gnum = self.gnum.as_ref().map(|g| g.gnum).unwrap_or(0);
                Ok(Some(Event::new(e, tables, gnum, self.ver)))
            }
            Err(err) => {
                self.failed = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Go's deferred fix-up in `ReadEvent`: validate table references and
    /// make timestamps strictly increasing.
    fn fixup(&mut self, e: &mut OrderedEvent) -> Result<(), DecodeError> {
        if e.base.typ != ev::SYNC_EVENT {
            let spec = &SPECS[e.base.typ as usize];
            if let Some(g) = &self.gnum {
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
        }
        if e.base.time <= self.last_ts {
            e.base.time = self.last_ts.wrapping_add(1);
        }
        self.last_ts = e.base.time;
        Ok(())
    }

    fn sync_event(&mut self, has_table: bool, time: i64) -> Step {
        self.syncs += 1;
        Step::Event(OrderedEvent {
            base: BaseEvent {
                typ: ev::SYNC_EVENT,
                time,
                args: [self.syncs, 0, 0, 0],
            },
            ctx: SchedCtx {
                g: NO_GOROUTINE,
                p: NO_PROC,
                m: NO_THREAD,
            },
            offset: self.src.offset(),
            has_table,
        })
    }

    fn step(&mut self) -> Result<Step, DecodeError> {
        if self.done {
            return Ok(Step::Done);
        }
        if let Some(e) = self.order.next() {
            return Ok(Step::Event(e));
        }
        let cpu_left = self
            .gnum
            .as_ref()
            .map(|g| self.cpu_next < g.cpu_samples.len())
            .unwrap_or(false);
        if self.frontier.is_empty() && !cpu_left {
            if self.ver < Version::GO126 {
                return self.next_gen_with_spill();
            }
            if let Some(e) = self.read_gen_err.take() {
                return Err(e.into());
            }
            match read_generation(&mut self.src, self.ver) {
                Err(e) => {
                    self.read_gen_err = Some(e);
                    self.gnum = None;
                    return Ok(self.sync_event(false, self.last_ts));
                }
                Ok(g) => return self.install_gen(g),
            }
        }
        let Some(g) = self.gnum.as_mut() else {
            return Err(DecodeError::invalid(
                self.src.offset(),
                "internal error: no generation",
            ));
        };
        // Inject a CPU sample if it comes next.
        if let Some(s) = g.cpu_samples.get(self.cpu_next)
            && (self.frontier.is_empty() || s.time < self.frontier[0].ev.time)
        {
            let s = *s;
            self.cpu_next += 1;
            return Ok(Step::Event(OrderedEvent {
                base: BaseEvent {
                    typ: ev::CPU_SAMPLE,
                    time: s.time,
                    args: [s.stack, 0, 0, 0],
                },
                ctx: SchedCtx {
                    g: s.g,
                    p: s.p,
                    m: s.m,
                },
                offset: 0,
                has_table: true,
            }));
        }
        if self.frontier.is_empty() {
            return Err(DecodeError::invalid(
                self.src.offset(),
                format!("broken trace: frontier is empty [gen={}]", g.gnum),
            ));
        }
        if !self.try_advance(0)? {
            let frontier = &mut self.frontier;
            super::pdqsort::sort_by(frontier, |a, b| a.ev.time < b.ev.time);
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
            Some(e) => Ok(Step::Event(e)),
            None => Err(DecodeError::invalid(
                self.src.offset(),
                "internal error: advance successful, but queue is empty",
            )),
        }
    }

    fn stuck_error(&self) -> DecodeError {
        use std::fmt::Write;
        let mut s = String::new();
        let gnum = self.gnum.as_ref().map(|g| g.gnum).unwrap_or(0);
        let _ = write!(s, "broken trace: failed to advance: frontier: [gen={gnum}]");
        for bc in &self.frontier {
            let spec = &SPECS[bc.ev.typ as usize];
            let _ = write!(s, " M {} [{} time={}", bc.m, spec.name, bc.ev.time);
            for (i, a) in spec.args.iter().skip(1).enumerate() {
                let _ = write!(s, " {a}={}", bc.ev.args.get(i).copied().unwrap_or(0));
            }
            s.push(']');
        }
        let off = self.frontier.first().map(|b| b.ev_offset).unwrap_or(0);
        DecodeError::invalid(off, s)
    }

    fn try_advance(&mut self, i: usize) -> Result<bool, DecodeError> {
        let Some(g) = self.gnum.as_mut() else {
            return Ok(false);
        };
        let bc = &mut self.frontier[i];
        let ok = self
            .order
            .advance(&mut bc.ev, &mut g.tables, bc.m, g.gnum, bc.ev_offset)
            .map_err(|m| DecodeError::invalid(bc.ev_offset, m))?;
        if !ok {
            return Ok(false);
        }
        if bc.next_event(g)? {
            heap_update(&mut self.frontier, i);
        } else {
            heap_remove(&mut self.frontier, i);
        }
        Ok(true)
    }

    fn next_gen_with_spill(&mut self) -> Result<Step, DecodeError> {
        if self.spill_err.is_some() {
            if self.spill_err_sync {
                let e = self.spill_err.take().map(DecodeError::from);
                return Err(e.unwrap_or_else(|| DecodeError::invalid(0, "internal error")));
            }
            self.spill_err_sync = true;
            return Ok(self.sync_event(false, self.last_ts));
        }
        if self.gnum.is_some() && self.spill.is_none() {
            self.done = true;
            return Ok(self.sync_event(false, self.last_ts));
        }
        let spill = self.spill.take();
        match read_generation_with_spill(&mut self.src, spill, self.ver) {
            Err(e) => {
                self.gnum = None;
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

    fn install_gen(&mut self, g: Option<Generation>) -> Result<Step, DecodeError> {
        let Some(g) = g else {
            self.gnum = None;
            self.done = true;
            return Ok(self.sync_event(false, self.last_ts));
        };
        // Drop the previous generation before building the next frontier.
        self.gnum = Some(g);
        self.stats.generations += 1;
        self.cpu_next = 0;
        let Some(g) = self.gnum.as_ref() else {
            return Ok(Step::Done);
        };
        self.frontier.clear();
        for (mi, (m, _)) in g.per_m.iter().enumerate() {
            let mut bc = BatchCursor {
                m: *m,
                mi,
                last_ts: 0,
                idx: 0,
                data_off: 0,
                ev: BaseEvent::default(),
                ev_offset: 0,
            };
            if !bc.next_event(g)? {
                continue;
            }
            heap_insert(&mut self.frontier, bc);
        }
        let t = freq_mul(g.tables.freq, g.min_ts);
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
