//! Reading one generation: batches, string and stack tables, CPU samples,
//! sync data and experimental batches (a port of `generation.go` and
//! `batch.go`).

use std::io::Read;

use super::source::{EOF_MSG, OVERFLOW_MSG, Source, SourceError, read_msg};
use super::spec::{self, Version, ev};
use super::{IdMap, NO_GOROUTINE, freq_mul};
use crate::cursor::{Cursor, ReadError};

/// A malformed-input error with the byte offset it was found at.
#[derive(Debug)]
pub(crate) struct GenError {
    pub offset: u64,
    pub msg: String,
    pub io: Option<std::io::Error>,
}

impl GenError {
    pub(crate) fn new(offset: u64, msg: impl Into<String>) -> Self {
        GenError {
            offset,
            msg: msg.into(),
            io: None,
        }
    }
}

impl From<SourceError> for GenError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Io { offset, source } => GenError {
                offset,
                msg: "read error".into(),
                io: Some(source),
            },
            SourceError::Eof { offset } => GenError::new(offset, EOF_MSG),
            SourceError::Overflow { offset } => GenError::new(offset, OVERFLOW_MSG),
        }
    }
}

/// An event batch: its base time, its data, and where the data was in the
/// input.
#[derive(Debug)]
pub(crate) struct Batch {
    pub time: u64,
    /// The data, or empty if it is to be read from the file when needed.
    pub data: Box<[u8]>,
    /// Length of the data.
    pub len: usize,
    /// Byte offset of the data in the input.
    pub offset: u64,
}

/// A string reference into the string arena.
#[derive(Debug, Clone, Copy, Default)]
struct Str {
    start: usize,
    len: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct StackRef {
    start: usize,
    len: usize,
}

/// One frame as recorded in the stack table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameRec {
    pub pc: u64,
    pub func: u64,
    pub file: u64,
    pub line: u64,
}

/// An ID-keyed table with Go's `dataTable` semantics: ID 0 is always present
/// (the zero value), inserting an existing ID is an error.
#[derive(Debug)]
struct DataTable<T: Copy + Default> {
    dense: Vec<Option<T>>,
    sparse: IdMap<u64, T>,
}

impl<T: Copy + Default> Default for DataTable<T> {
    fn default() -> Self {
        DataTable {
            dense: Vec::new(),
            sparse: IdMap::default(),
        }
    }
}

impl<T: Copy + Default> DataTable<T> {
    fn insert(&mut self, id: u64, v: T) -> bool {
        if self.get(id).is_some() {
            return false;
        }
        self.sparse.insert(id, v);
        true
    }

    fn compactify(&mut self) {
        let Some(max) = self.sparse.keys().copied().max() else {
            return;
        };
        let n = self.sparse.len() as u64;
        if max > 2 * n + 1024 {
            return;
        }
        let mut dense = vec![None; max as usize + 1];
        for (k, v) in self.sparse.drain() {
            dense[k as usize] = Some(v);
        }
        self.dense = dense;
    }

    #[inline(always)]
    fn get(&self, id: u64) -> Option<T> {
        if id == 0 {
            return Some(T::default());
        }
        if let Some(v) = self.dense.get(id as usize) {
            return *v;
        }
        self.sparse.get(&id).copied()
    }
}

/// A CPU sample (Go's `cpuSample`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    pub m: i64,
    pub p: i64,
    pub g: i64,
    pub time: i64,
    pub stack: u64,
    /// Byte offset of the sample in the input.
    pub offset: u64,
}

/// An experimental batch: the raw data of one thread for one experiment.
#[derive(Debug, Clone)]
pub struct ExperimentalBatch {
    pub experiment: u8,
    pub thread: i64,
    pub data: Vec<u8>,
}

/// Everything needed to interpret the events of one generation (Go's
/// `evTable`).
#[derive(Debug, Default)]
pub(crate) struct Tables {
    /// Nanoseconds per timestamp unit; 0 if no frequency was seen.
    pub freq: f64,
    pub has_clock_snapshot: bool,
    pub snap_time: u64,
    pub snap_mono: u64,
    pub snap_sec: i64,
    pub snap_nsec: i64,
    str_arena: Vec<u8>,
    strings: DataTable<Str>,
    pc_arena: Vec<u64>,
    stacks: DataTable<StackRef>,
    pcs: IdMap<u64, FrameRec>,
    extra_strings: Vec<Box<[u8]>>,
    extra_ids: std::collections::HashMap<Box<[u8]>, u64>,
    pub exp_batches: Vec<ExperimentalBatch>,
}

impl Tables {
    /// A string by ID (ID 0 is the empty string).
    #[inline]
    pub(crate) fn string(&self, id: u64) -> Option<&[u8]> {
        let s = self.strings.get(id)?;
        self.str_arena.get(s.start..s.start + s.len)
    }

    #[inline]
    pub(crate) fn has_string(&self, id: u64) -> bool {
        self.strings.get(id).is_some()
    }

    #[inline]
    pub(crate) fn has_stack(&self, id: u64) -> bool {
        self.stacks.get(id).is_some()
    }

    /// The PCs of a stack, `None` if the ID is unknown.
    pub(crate) fn stack_pcs(&self, id: u64) -> Option<&[u64]> {
        let s = self.stacks.get(id)?;
        self.pc_arena.get(s.start..s.start + s.len)
    }

    pub(crate) fn frame(&self, pc: u64) -> Option<&FrameRec> {
        self.pcs.get(&pc)
    }

    pub(crate) fn add_extra_string(&mut self, s: &[u8]) -> u64 {
        if s.is_empty() {
            return 0;
        }
        if let Some(id) = self.extra_ids.get(s) {
            return *id;
        }
        self.extra_strings.push(s.into());
        let id = self.extra_strings.len() as u64;
        self.extra_ids.insert(s.into(), id);
        id
    }

    pub(crate) fn extra_string(&self, id: u64) -> &[u8] {
        if id == 0 {
            return &[];
        }
        self.extra_strings
            .get(id as usize - 1)
            .map(|b| &**b)
            .unwrap_or(&[])
    }
}

/// One generation's data.
#[derive(Debug, Default)]
pub(crate) struct Generation {
    pub gnum: u64,
    pub batches: Vec<Batch>,
    /// Event batches per thread, threads in order of first appearance.
    pub per_m: Vec<(i64, Vec<u32>)>,
    m_index: IdMap<i64, usize>,
    pub cpu_samples: Vec<CpuSample>,
    pub min_ts: u64,
    pub tables: Tables,
}

/// A batch read but not yet filed, with the arena it was read into.
pub(crate) struct RawBatch {
    pub gnum: u64,
    pub m: i64,
    pub time: u64,
    pub exp: u8,
    pub data: Vec<u8>,
    /// Length of the batch data; longer than `data` if the data was skipped
    /// to be read from the file later.
    pub len: usize,
    pub offset: u64,
    pub end_of_generation: bool,
}

pub(crate) enum ReadBatch {
    Eof,
    Batch(RawBatch),
}

/// Whether a batch whose data starts with `first` holds events (as opposed to
/// the structural batches the generation reader keeps in memory).
fn is_event_batch(first: u8, ver: Version) -> bool {
    match first {
        ev::STRINGS | ev::STACKS | ev::CPU_SAMPLES | ev::END_OF_GENERATION => false,
        ev::FREQUENCY => ver >= Version::GO125,
        ev::SYNC => ver < Version::GO125,
        _ => true,
    }
}

/// Reads the next batch (Go's `readBatch`). With `lazy`, the data of event
/// batches is skipped (only its first byte is kept): the reader reads it from
/// the file when it gets there.
pub(crate) fn read_batch<R: Read>(
    src: &mut Source<R>,
    lazy: Option<Version>,
) -> Result<ReadBatch, GenError> {
    let start = src.offset();
    let Some(b) = src.read_byte_opt()? else {
        return Ok(ReadBatch::Eof);
    };
    if b == ev::END_OF_GENERATION {
        return Ok(ReadBatch::Batch(RawBatch {
            gnum: 0,
            m: super::NO_THREAD,
            time: 0,
            exp: 0,
            data: vec![b],
            len: 1,
            offset: start,
            end_of_generation: true,
        }));
    }
    if b != ev::EVENT_BATCH && b != ev::EXPERIMENTAL_BATCH {
        return Err(GenError::new(
            start,
            format!("expected batch event, got event {b}"),
        ));
    }
    let mut exp = spec::NO_EXPERIMENT;
    if b == ev::EXPERIMENTAL_BATCH {
        exp = src.read_byte()?;
    }
    let ctx = |what: &'static str| {
        move |e: SourceError| {
            let mut g = GenError::from(e);
            g.msg = format!("error reading batch {what}: {}", g.msg);
            g
        }
    };
    let gnum = src.read_uvarint().map_err(ctx("gen"))?;
    let m = src.read_uvarint().map_err(ctx("M ID"))?;
    let ts = src.read_uvarint().map_err(ctx("timestamp"))?;
    let size_off = src.offset();
    let size = src.read_uvarint().map_err(ctx("size"))?;
    if size > spec::MAX_BATCH_SIZE {
        return Err(GenError::new(
            size_off,
            format!(
                "invalid batch size {size}, maximum is {}",
                spec::MAX_BATCH_SIZE
            ),
        ));
    }
    let offset = src.offset();
    let mut data = Vec::new();
    let n = match lazy {
        Some(ver) if exp == spec::NO_EXPERIMENT && size > 0 => {
            let n = src.read_into(&mut data, 1)?;
            if data.first().is_some_and(|&f| is_event_batch(f, ver)) {
                n + src.skip(size as usize - 1)?
            } else {
                data.reserve_exact(size as usize - n);
                n + src.read_into(&mut data, size as usize - n)?
            }
        }
        _ => {
            data.reserve_exact(size as usize);
            src.read_into(&mut data, size as usize)?
        }
    };
    if n != size as usize {
        return Err(GenError::new(
            src.offset(),
            format!("failed to read full batch: read {n} but wanted {size}"),
        ));
    }
    Ok(ReadBatch::Batch(RawBatch {
        gnum,
        m: m as i64,
        time: ts,
        exp,
        data,
        len: size as usize,
        offset,
        end_of_generation: false,
    }))
}

impl RawBatch {
    fn first(&self) -> Option<u8> {
        if self.exp != spec::NO_EXPERIMENT {
            return None;
        }
        self.data.first().copied()
    }
}

/// Outcome of reading a generation.
pub(crate) struct GenRead {
    pub gnum: Option<Generation>,
    pub spill: Option<RawBatch>,
    pub spill_err: Option<GenError>,
}

/// Reads a Go 1.26+ generation, delimited by EndOfGeneration (Go's
/// `readGeneration`). `Ok(None)` at a clean end of input.
pub(crate) fn read_generation<R: Read>(
    src: &mut Source<R>,
    ver: Version,
    lazy: bool,
) -> Result<Option<Generation>, GenError> {
    let mut g = Generation::default();
    loop {
        let b = match read_batch(src, lazy.then_some(ver))? {
            ReadBatch::Eof => {
                if !g.per_m.is_empty() {
                    return Err(GenError::new(
                        src.offset(),
                        "incomplete generation found; trace likely truncated",
                    ));
                }
                return Ok(None);
            }
            ReadBatch::Batch(b) => b,
        };
        if g.gnum == 0 {
            g.gnum = b.gnum;
        }
        if b.end_of_generation {
            break;
        }
        if b.gnum == 0 {
            return Err(GenError::new(
                b.offset,
                format!("invalid generation number {}", b.gnum),
            ));
        }
        if b.gnum != g.gnum {
            return Err(GenError::new(
                b.offset,
                "broken trace: missing end-of-generation event, or generations are interleaved",
            ));
        }
        if g.min_ts == 0 || b.time < g.min_ts {
            g.min_ts = b.time;
        }
        process_batch(&mut g, b, ver)?;
    }
    finish_generation(&mut g, ver, src.offset())?;
    Ok(Some(g))
}

/// Reads a pre-1.26 generation, whose end is only known by reading the first
/// batch of the next one (Go's `readGenerationWithSpill`).
pub(crate) fn read_generation_with_spill<R: Read>(
    src: &mut Source<R>,
    spill: Option<RawBatch>,
    ver: Version,
    lazy: bool,
) -> Result<GenRead, GenError> {
    let mut g = Generation::default();
    if let Some(s) = spill {
        g.gnum = s.gnum;
        g.min_ts = s.time;
        process_batch(&mut g, s, ver)?;
    }
    let mut spill = None;
    let mut spill_err = None;
    loop {
        let b = match read_batch(src, lazy.then_some(ver)) {
            Ok(ReadBatch::Eof) => break,
            Ok(ReadBatch::Batch(b)) => b,
            Err(e) => {
                if g.gnum != 0 {
                    spill_err = Some(e);
                    break;
                }
                return Err(e);
            }
        };
        if b.gnum == 0 {
            return Err(GenError::new(
                b.offset,
                format!("invalid generation number {}", b.gnum),
            ));
        }
        if g.gnum == 0 {
            g.gnum = b.gnum;
        }
        if b.gnum == g.gnum.wrapping_add(1) {
            spill = Some(b);
            break;
        }
        if b.gnum != g.gnum {
            return Err(GenError::new(b.offset, "generations out of order"));
        }
        if g.min_ts == 0 || b.time < g.min_ts {
            g.min_ts = b.time;
        }
        process_batch(&mut g, b, ver)?;
    }
    finish_generation(&mut g, ver, src.offset())?;
    Ok(GenRead {
        gnum: Some(g),
        spill,
        spill_err,
    })
}

fn finish_generation(g: &mut Generation, ver: Version, offset: u64) -> Result<(), GenError> {
    if g.tables.freq == 0.0 {
        return Err(GenError::new(offset, "no frequency event found"));
    }
    if ver >= Version::GO125 && !g.tables.has_clock_snapshot {
        return Err(GenError::new(offset, "no clock snapshot event found"));
    }
    g.tables.stacks.compactify();
    g.tables.strings.compactify();
    validate_stack_strings(&g.tables, offset)?;
    let freq = g.tables.freq;
    for s in &mut g.cpu_samples {
        s.time = freq_mul(freq, s.time as u64);
    }
    super::pdqsort::sort_by(&mut g.cpu_samples, |a, b| a.time < b.time);
    Ok(())
}

fn validate_stack_strings(t: &Tables, offset: u64) -> Result<(), GenError> {
    let check = |id: u64, pcs: &[u64]| -> Result<(), GenError> {
        for pc in pcs {
            let Some(f) = t.pcs.get(pc) else {
                return Err(GenError::new(
                    offset,
                    format!("found unknown pc {pc:x} for stack {id}"),
                ));
            };
            if !t.has_string(f.func) {
                return Err(GenError::new(
                    offset,
                    format!("found invalid func string ID {} for stack {id}", f.func),
                ));
            }
            if !t.has_string(f.file) {
                return Err(GenError::new(
                    offset,
                    format!("found invalid file string ID {} for stack {id}", f.file),
                ));
            }
        }
        Ok(())
    };
    for (id, s) in t.stacks.dense.iter().enumerate() {
        if let Some(s) = s {
            check(
                id as u64,
                t.pc_arena.get(s.start..s.start + s.len).unwrap_or(&[]),
            )?;
        }
    }
    for (id, s) in t.stacks.sparse.iter() {
        check(*id, t.pc_arena.get(s.start..s.start + s.len).unwrap_or(&[]))?;
    }
    Ok(())
}

fn process_batch(g: &mut Generation, b: RawBatch, ver: Version) -> Result<(), GenError> {
    let first = b.first();
    let is_sync = match first {
        Some(ev::FREQUENCY) => ver < Version::GO125,
        Some(ev::SYNC) => ver >= Version::GO125,
        _ => false,
    };
    match first {
        Some(ev::STRINGS) => add_strings(&mut g.tables, &b),
        Some(ev::STACKS) => add_stacks(&mut g.tables, &b),
        Some(ev::CPU_SAMPLES) => add_cpu_samples(&mut g.cpu_samples, &b),
        _ if is_sync => set_sync_batch(&mut g.tables, &b, ver),
        _ if b.exp != spec::NO_EXPERIMENT => {
            g.tables.exp_batches.push(ExperimentalBatch {
                experiment: b.exp,
                thread: b.m,
                data: b.data,
            });
            Ok(())
        }
        Some(ev::END_OF_GENERATION) => Err(GenError::new(
            b.offset,
            "internal error: unexpectedly processing EndOfGeneration; broken trace?",
        )),
        _ => {
            let idx = match g.m_index.get(&b.m) {
                Some(i) => *i,
                None => {
                    g.per_m.push((b.m, Vec::new()));
                    g.m_index.insert(b.m, g.per_m.len() - 1);
                    g.per_m.len() - 1
                }
            };
            let bi = g.batches.len() as u32;
            let data = if b.data.len() == b.len {
                b.data.into_boxed_slice()
            } else {
                Box::default()
            };
            g.batches.push(Batch {
                time: b.time,
                data,
                len: b.len,
                offset: b.offset,
            });
            if let Some((_, list)) = g.per_m.get_mut(idx) {
                list.push(bi);
            }
            Ok(())
        }
    }
}

fn err_at(c: &Cursor<'_>, msg: impl Into<String>) -> GenError {
    GenError::new(c.offset(), msg)
}

/// A failed read at the cursor: Go's message, at the cursor's offset (a
/// failed read does not move it).
fn read_err(c: &Cursor<'_>, e: ReadError) -> GenError {
    err_at(c, read_msg(e))
}

fn add_strings(t: &mut Tables, b: &RawBatch) -> Result<(), GenError> {
    let mut c = Cursor::with_base(&b.data, b.offset);
    c.read_u8()
        .map_err(|_| err_at(&c, "missing strings batch header"))?;
    while !c.is_empty() {
        let at = c.offset();
        let e = c.read_u8().map_err(|_| err_at(&c, EOF_MSG))?;
        if e != ev::STRING {
            return Err(GenError::new(at, format!("expected string event, got {e}")));
        }
        let id = c.read_uvarint().map_err(|e| read_err(&c, e))?;
        let len = c.read_uvarint().map_err(|e| read_err(&c, e))?;
        if len > spec::MAX_EVENT_TRAILER_DATA_SIZE {
            return Err(err_at(
                &c,
                format!(
                    "invalid string size {len}, maximum is {}",
                    spec::MAX_EVENT_TRAILER_DATA_SIZE
                ),
            ));
        }
        let avail = c.remaining();
        let data = c.read_bytes(len as usize).map_err(|_| {
            err_at(
                &c,
                format!("failed to read full string: read {avail} but wanted {len}"),
            )
        })?;
        let s = Str {
            start: t.str_arena.len(),
            len: data.len(),
        };
        if !t.strings.insert(id, s) {
            let existing = t.string(id).unwrap_or(&[]);
            return Err(GenError::new(
                at,
                format!(
                    "multiple strings with the same ID: id={id}, new={}, existing={}",
                    String::from_utf8_lossy(data),
                    String::from_utf8_lossy(existing)
                ),
            ));
        }
        t.str_arena.extend_from_slice(data);
    }
    Ok(())
}

fn add_stacks(t: &mut Tables, b: &RawBatch) -> Result<(), GenError> {
    let mut c = Cursor::with_base(&b.data, b.offset);
    c.read_u8()
        .map_err(|_| err_at(&c, "missing stacks batch header"))?;
    while !c.is_empty() {
        let at = c.offset();
        let e = c.read_u8().map_err(|_| err_at(&c, EOF_MSG))?;
        if e != ev::STACK {
            return Err(GenError::new(at, format!("expected stack event, got {e}")));
        }
        let id = c.read_uvarint().map_err(|e| read_err(&c, e))?;
        let nframes = c.read_uvarint().map_err(|e| read_err(&c, e))?;
        if nframes > spec::MAX_FRAMES_PER_STACK {
            return Err(err_at(
                &c,
                format!(
                    "invalid stack size {nframes}, maximum is {}",
                    spec::MAX_FRAMES_PER_STACK
                ),
            ));
        }
        let start = t.pc_arena.len();
        for i in 0..nframes {
            let mut f = [0u64; 4];
            for (k, what) in ["PC", "funcID", "fileID", "line"].iter().enumerate() {
                f[k] = c.read_uvarint().map_err(|e| {
                    err_at(
                        &c,
                        format!(
                            "reading frame {}'s {what} for stack {id}: {}",
                            i + 1,
                            read_msg(e)
                        ),
                    )
                })?;
            }
            t.pc_arena.push(f[0]);
            t.pcs.entry(f[0]).or_insert(FrameRec {
                pc: f[0],
                func: f[1],
                file: f[2],
                line: f[3],
            });
        }
        let r = StackRef {
            start,
            len: t.pc_arena.len() - start,
        };
        if !t.stacks.insert(id, r) {
            return Err(GenError::new(
                at,
                format!("multiple stacks with the same ID: id={id}"),
            ));
        }
    }
    Ok(())
}

fn add_cpu_samples(out: &mut Vec<CpuSample>, b: &RawBatch) -> Result<(), GenError> {
    let mut c = Cursor::with_base(&b.data, b.offset);
    c.read_u8()
        .map_err(|_| err_at(&c, "missing CPU samples batch header"))?;
    while !c.is_empty() {
        let at = c.offset();
        let e = c.read_u8().map_err(|_| err_at(&c, EOF_MSG))?;
        if e != ev::CPU_SAMPLE {
            return Err(GenError::new(
                at,
                format!("expected CPU sample event, got {e}"),
            ));
        }
        let mut v = [0u64; 5];
        for x in &mut v {
            *x = c.read_uvarint().map_err(|e| read_err(&c, e))?;
        }
        out.push(CpuSample {
            time: v[0] as i64,
            m: v[1] as i64,
            p: v[2] as i64,
            g: if v[3] == 0 { NO_GOROUTINE } else { v[3] as i64 },
            stack: v[4],
            offset: at,
        });
    }
    Ok(())
}

fn set_sync_batch(t: &mut Tables, b: &RawBatch, ver: Version) -> Result<(), GenError> {
    let mut c = Cursor::with_base(&b.data, b.offset);
    if ver >= Version::GO125 {
        c.read_u8()
            .map_err(|_| err_at(&c, "missing sync batch header"))?;
    }
    let mut last_ts = b.time;
    while !c.is_empty() {
        let at = c.offset();
        let e = c.read_u8().map_err(|_| err_at(&c, EOF_MSG))?;
        let rd = |c: &mut Cursor<'_>| c.read_uvarint().map_err(|e| read_err(c, e));
        if e == ev::FREQUENCY {
            if t.freq != 0.0 {
                return Err(GenError::new(at, "found multiple frequency events"));
            }
            let f = rd(&mut c)?;
            t.freq = 1.0 / (f as f64 / 1e9);
        } else if e == ev::CLOCK_SNAPSHOT && ver >= Version::GO125 {
            if t.has_clock_snapshot {
                return Err(GenError::new(at, "found multiple clock snapshot events"));
            }
            t.has_clock_snapshot = true;
            let tdiff = rd(&mut c)?;
            last_ts = last_ts.wrapping_add(tdiff);
            t.snap_time = last_ts;
            t.snap_mono = rd(&mut c)?;
            let sec = rd(&mut c)? as i64;
            let nsec = rd(&mut c)? as i64;
            // Normalise as Go's time.Unix does.
            let (mut sec, mut nsec) = (sec, nsec);
            if !(0..1_000_000_000).contains(&nsec) {
                let n = nsec / 1_000_000_000;
                sec = sec.wrapping_add(n);
                nsec -= n * 1_000_000_000;
                if nsec < 0 {
                    nsec += 1_000_000_000;
                    sec = sec.wrapping_sub(1);
                }
            }
            t.snap_sec = sec;
            t.snap_nsec = nsec;
        } else {
            return Err(GenError::new(
                at,
                format!("expected frequency or clock snapshot event, got {e}"),
            ));
        }
    }
    Ok(())
}
