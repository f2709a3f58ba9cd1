//! Reassembling dumps from the `FLIGHT_RING` records.

use std::collections::{BTreeMap, HashMap};

use agent_common::{
    event::EventHeader,
    flight::{
        CHUNK_READ_FAILED, FlightChunkHeader, FlightEnd, FlightStart, KIND_FLIGHT_CHUNK,
        KIND_FLIGHT_END, KIND_FLIGHT_START, VARIANT_X_EXP,
    },
};

use super::{FlightAttachment, TypeNames};
use crate::ringbuf::record::read;

/// Limits of a [`FlightCapture`].
#[derive(Clone, Copy, Debug)]
pub struct CaptureOptions {
    /// Bytes kept per dump; past it the dump is reported incomplete.
    pub max_dump_bytes: usize,
    /// Dumps in progress at once; more are dropped and counted.
    pub max_open_dumps: usize,
    /// A dump with no record for this long is reported incomplete by
    /// [`FlightCapture::expire`].
    pub idle_timeout_ns: u64,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            max_dump_bytes: 256 << 20,
            max_open_dumps: 16,
            idle_timeout_ns: 30_000_000_000,
        }
    }
}

/// One dump, as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedDump {
    /// Target slot (from the attach cookie).
    pub slot: u32,
    /// Process id (0 when the slot was not registered).
    pub pid: u32,
    /// Identifies the dump within the process (the kernel time of entry).
    pub dump_id: u64,
    /// `"<pid>-<dump_id as hex>"`: the `flight_recorder.dump.id` attribute.
    pub id: String,
    /// `"runtime/trace"` or `"golang.org/x/exp/trace"`.
    pub recorder: &'static str,
    pub goid: u64,
    /// Thread that entered WriteTo.
    pub tid: u32,
    /// `bpf_ktime_get_ns` at entry and at return (0 when not seen).
    pub start_ktime_ns: u64,
    pub end_ktime_ns: u64,
    /// The concrete writer type (`*os.File`), when known.
    pub writer: Option<String>,
    /// The writer's itab and data pointer.
    pub writer_itab: u64,
    pub writer_data: u64,
    /// The dump: the bytes the writer accepted (WriteTo's `n`), in order.
    pub bytes: Vec<u8>,
    /// WriteTo's `n` (-1 when the return was not seen).
    pub returned: i64,
    /// Bytes handed to `w.Write` calls.
    pub offered: u64,
    pub writes: u32,
    pub chunks: u32,
    /// WriteTo returned an error (the writer failed).
    pub write_error: bool,
    /// Every byte of `bytes` was captured, nothing lost or out of order.
    pub complete: bool,
    /// Why not complete.
    pub problems: Vec<String>,
}

#[derive(Debug, Default)]
struct Open {
    slot: u32,
    goid: u64,
    tid: u32,
    variant: u32,
    start: Option<FlightStart>,
    bytes: Vec<u8>,
    next_seq: u32,
    chunks: u32,
    problems: Vec<String>,
    overflow: bool,
    last_ktime: u64,
}

#[derive(Debug, Clone, Default)]
struct TargetInfo {
    pid: u32,
    writer_itabs: BTreeMap<u64, String>,
    types: TypeNames,
}

/// Reassembles dumps from the ring buffer's records.
#[derive(Debug, Default)]
pub struct FlightCapture {
    options: CaptureOptions,
    targets: HashMap<u32, TargetInfo>,
    open: HashMap<(u32, u64), Open>,
    /// Records that could not be decoded.
    pub bad_records: u64,
    /// Dumps not followed because too many were open.
    pub dropped_dumps: u64,
}

impl FlightCapture {
    pub fn new(options: CaptureOptions) -> Self {
        Self {
            options,
            ..Self::default()
        }
    }

    /// Makes the dumps of `attachment`'s process known by pid and writer
    /// type.
    pub fn watch(&mut self, attachment: &FlightAttachment) {
        self.targets.insert(
            attachment.slot,
            TargetInfo {
                pid: attachment.pid,
                writer_itabs: attachment.writer_itabs.clone(),
                types: attachment.types.clone(),
            },
        );
    }

    /// Forgets a target slot (after detaching).
    pub fn unwatch(&mut self, slot: u32) {
        self.targets.remove(&slot);
        self.open.retain(|(s, _), _| *s != slot);
    }

    /// Dumps in progress.
    pub fn open_dumps(&self) -> usize {
        self.open.len()
    }

    /// Handles one record drained from `FLIGHT_RING`. Returns the dump it
    /// completed, if any.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Option<CompletedDump> {
        let Some(header) = read::<EventHeader>(bytes, 0).ok() else {
            self.bad_records += 1;
            return None;
        };
        self.on_record(&header, bytes)
    }

    /// As [`Self::on_bytes`], with the header already decoded.
    pub fn on_record(&mut self, header: &EventHeader, bytes: &[u8]) -> Option<CompletedDump> {
        match header.kind {
            KIND_FLIGHT_START => {
                let Some(start) = read::<FlightStart>(bytes, KIND_FLIGHT_START).ok() else {
                    self.bad_records += 1;
                    return None;
                };
                self.on_start(start);
                None
            }
            KIND_FLIGHT_CHUNK => {
                let Some(head) = read::<FlightChunkHeader>(bytes, KIND_FLIGHT_CHUNK).ok() else {
                    self.bad_records += 1;
                    return None;
                };
                let data_at = size_of::<FlightChunkHeader>();
                let len = head.len as usize;
                let Some(data) = bytes.get(data_at..data_at + len) else {
                    self.bad_records += 1;
                    return None;
                };
                self.on_chunk(&head, data);
                None
            }
            KIND_FLIGHT_END => {
                let Some(end) = read::<FlightEnd>(bytes, KIND_FLIGHT_END).ok() else {
                    self.bad_records += 1;
                    return None;
                };
                Some(self.on_end(&end))
            }
            _ => None,
        }
    }

    fn open_entry(&mut self, header: &EventHeader, dump_id: u64) -> Option<&mut Open> {
        let key = (header.target, dump_id);
        if !self.open.contains_key(&key) && self.open.len() >= self.options.max_open_dumps {
            self.dropped_dumps += 1;
            return None;
        }
        let max = self.options.max_dump_bytes;
        let open = self.open.entry(key).or_insert_with(|| Open {
            slot: header.target,
            goid: header.goid,
            tid: header.tid,
            variant: header.site,
            // Address space for the largest dump kept, not memory: pages
            // are only backed as the bytes arrive. A buffer grown by
            // doubling instead stopped the reader for the copy and the
            // page faults of each doubling (tens of ms at 32 MiB) while
            // the target went on writing: a 64 MiB dump overflowed the
            // 16 MiB ring under load.
            bytes: Vec::with_capacity(max),
            ..Open::default()
        });
        open.last_ktime = header.ktime_ns;
        Some(open)
    }

    fn on_start(&mut self, start: FlightStart) {
        if let Some(open) = self.open_entry(&start.header, start.dump_id) {
            open.start = Some(start);
        }
    }

    fn on_chunk(&mut self, head: &FlightChunkHeader, data: &[u8]) {
        let max = self.options.max_dump_bytes;
        let Some(open) = self.open_entry(&head.header, head.dump_id) else {
            return;
        };
        open.chunks += 1;
        if head.seq != open.next_seq {
            open.problems.push(format!(
                "chunk {} arrived when {} was expected ({} chunks missing)",
                head.seq,
                open.next_seq,
                head.seq.wrapping_sub(open.next_seq)
            ));
        }
        open.next_seq = head.seq.wrapping_add(1);
        if head.flags & CHUNK_READ_FAILED != 0 {
            open.problems.push(format!(
                "chunk {} ({} bytes at offset {}): reading the target's memory failed",
                head.seq, head.len, head.offset
            ));
        }
        let offset = head.offset as usize;
        if offset != open.bytes.len() {
            open.problems.push(format!(
                "chunk {} is at offset {}, but {} bytes were captured before it",
                head.seq,
                head.offset,
                open.bytes.len()
            ));
        }
        if open.overflow {
            return;
        }
        if offset.saturating_add(data.len()) > max {
            open.overflow = true;
            open.problems.push(format!(
                "the dump is larger than the {max}-byte capture limit"
            ));
            return;
        }
        // Keep the offsets right even after a gap: zeroes stand in.
        if open.bytes.len() < offset {
            open.bytes.resize(offset, 0);
        }
        open.bytes.truncate(offset);
        open.bytes.extend_from_slice(data);
    }

    fn on_end(&mut self, end: &FlightEnd) -> CompletedDump {
        let key = (end.header.target, end.dump_id);
        let mut open = self.open.remove(&key).unwrap_or_else(|| Open {
            slot: end.header.target,
            goid: end.header.goid,
            tid: end.header.tid,
            variant: end.header.site,
            ..Open::default()
        });
        if end.lost_chunks > 0 || end.lost_bytes > 0 {
            open.problems.push(format!(
                "{} chunks ({} bytes) lost in the kernel (ring buffer full or a write over the per-write limit)",
                end.lost_chunks, end.lost_bytes
            ));
        }
        if end.failed_chunks > 0 && !open.problems.iter().any(|p| p.contains("memory failed")) {
            open.problems.push(format!(
                "{} chunks could not be read from the target",
                end.failed_chunks
            ));
        }
        let received = open.chunks;
        let expected = end.chunks.saturating_sub(end.lost_chunks);
        if received != expected {
            open.problems.push(format!(
                "{received} chunks received, the kernel wrote {expected}"
            ));
        }
        if open.bytes.len() as u64 != end.offered && !open.overflow {
            open.problems.push(format!(
                "{} bytes captured, the writes were handed {}",
                open.bytes.len(),
                end.offered
            ));
        }
        if end.returned < 0 || end.returned as u64 > end.offered {
            open.problems.push(format!(
                "WriteTo returned n={} for {} bytes written",
                end.returned, end.offered
            ));
        } else {
            open.bytes.truncate(end.returned as usize);
        }
        self.finish(open, Some(end))
    }

    fn finish(&self, mut open: Open, end: Option<&FlightEnd>) -> CompletedDump {
        let info = self.targets.get(&open.slot).cloned().unwrap_or_default();
        let dump_id = open
            .start
            .map(|s| s.dump_id)
            .or(end.map(|e| e.dump_id))
            .unwrap_or(0);
        if open.start.is_none() {
            open.problems.push(
                "the start of the dump was not seen (record lost, or attached mid-dump)".to_owned(),
            );
        }
        if end.is_none() {
            open.problems
                .push("WriteTo's return was not seen".to_owned());
        }
        let (writer_itab, writer_data, writer_type) = open
            .start
            .map_or((0, 0, 0), |s| (s.writer_itab, s.writer_data, s.writer_type));
        let writer = info
            .writer_itabs
            .get(&writer_itab)
            .cloned()
            .or_else(|| info.types.name(writer_type));
        CompletedDump {
            slot: open.slot,
            pid: info.pid,
            dump_id,
            id: format!("{}-{dump_id:x}", info.pid),
            recorder: if open.variant == VARIANT_X_EXP {
                "golang.org/x/exp/trace"
            } else {
                "runtime/trace"
            },
            goid: open.goid,
            tid: open.tid,
            start_ktime_ns: open.start.map_or(0, |s| s.header.ktime_ns),
            end_ktime_ns: end.map_or(0, |e| e.header.ktime_ns),
            writer,
            writer_itab,
            writer_data,
            returned: end.map_or(-1, |e| e.returned),
            offered: end.map_or(open.bytes.len() as u64, |e| e.offered),
            writes: end.map_or(0, |e| e.writes),
            chunks: open.chunks,
            write_error: end.is_some_and(|e| e.err_itab != 0),
            complete: open.problems.is_empty(),
            problems: open.problems,
            bytes: {
                let mut bytes = open.bytes;
                // The address space left over goes back (a large buffer is
                // its own mapping: shrinking it moves nothing).
                bytes.shrink_to_fit();
                bytes
            },
        }
    }

    /// Reports dumps with no record since `idle_timeout_ns` before
    /// `now_ktime_ns` (WriteTo panicked, or its end record was lost) as
    /// incomplete, and forgets them.
    pub fn expire(&mut self, now_ktime_ns: u64) -> Vec<CompletedDump> {
        let timeout = self.options.idle_timeout_ns;
        let stale: Vec<(u32, u64)> = self
            .open
            .iter()
            .filter(|(_, o)| now_ktime_ns.saturating_sub(o.last_ktime) > timeout)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for key in stale {
            if let Some(open) = self.open.remove(&key) {
                out.push(self.finish(open, None));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use agent_common::flight::VARIANT_RUNTIME;

    use super::*;

    fn bytes_of<T: Copy>(t: &T) -> Vec<u8> {
        // SAFETY: the flight records are #[repr(C)] integers with no padding
        // (sizes asserted in agent-common): every byte is initialised.
        unsafe { std::slice::from_raw_parts((t as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: u32, ktime: u64) -> EventHeader {
        EventHeader {
            kind,
            target: 3,
            tid: 100,
            site: VARIANT_RUNTIME,
            goid: 42,
            ktime_ns: ktime,
        }
    }

    const ID: u64 = 0x1234;

    fn start() -> Vec<u8> {
        bytes_of(&FlightStart {
            header: header(KIND_FLIGHT_START, 1_000),
            dump_id: ID,
            recorder: 0xc000,
            writer_itab: 0x77,
            writer_data: 0xc100,
            writer_type: 0,
        })
    }

    fn chunk(seq: u32, offset: u64, data: &[u8], pad_to: usize) -> Vec<u8> {
        let mut out = bytes_of(&FlightChunkHeader {
            header: header(KIND_FLIGHT_CHUNK, 2_000),
            dump_id: ID,
            offset,
            seq,
            len: data.len() as u32,
            write_index: seq,
            flags: 0,
        });
        out.extend_from_slice(data);
        out.resize(64 + pad_to, 0);
        out
    }

    fn end(returned: i64, offered: u64, chunks: u32, lost: u32, err: bool) -> Vec<u8> {
        bytes_of(&FlightEnd {
            header: header(KIND_FLIGHT_END, 3_000),
            dump_id: ID,
            returned,
            err_itab: u64::from(err),
            err_data: 0,
            offered,
            lost_bytes: u64::from(lost) * 4,
            chunks,
            writes: chunks,
            lost_chunks: lost,
            failed_chunks: 0,
        })
    }

    fn capture() -> FlightCapture {
        let mut c = FlightCapture::new(CaptureOptions::default());
        c.targets.insert(
            3,
            TargetInfo {
                pid: 77,
                writer_itabs: [(0x77, "*os.File".to_owned())].into(),
                types: TypeNames::default(),
            },
        );
        c
    }

    #[test]
    fn whole_dump_in_order_is_complete() {
        let mut c = capture();
        assert!(c.on_bytes(&start()).is_none());
        assert!(c.on_bytes(&chunk(0, 0, b"go 1.26 ", 256)).is_none());
        assert!(c.on_bytes(&chunk(1, 8, b"trace", 256)).is_none());
        let d = c.on_bytes(&end(13, 13, 2, 0, false)).expect("dump");
        assert!(d.complete, "{:?}", d.problems);
        assert_eq!(d.bytes, b"go 1.26 trace");
        assert_eq!((d.pid, d.goid, d.tid, d.slot), (77, 42, 100, 3));
        assert_eq!(d.id, "77-1234");
        assert_eq!(d.writer.as_deref(), Some("*os.File"));
        assert_eq!((d.start_ktime_ns, d.end_ktime_ns), (1_000, 3_000));
        assert_eq!(c.open_dumps(), 0);
    }

    #[test]
    fn a_missing_chunk_is_reported_never_silently_partial() {
        let mut c = capture();
        c.on_bytes(&start());
        c.on_bytes(&chunk(0, 0, b"abcd", 256));
        c.on_bytes(&chunk(2, 8, b"ijkl", 256));
        let d = c.on_bytes(&end(12, 12, 3, 0, false)).expect("dump");
        assert!(!d.complete);
        assert!(
            d.problems.iter().any(|p| p.contains("1 chunks missing")),
            "{:?}",
            d.problems
        );
        assert!(
            d.problems
                .iter()
                .any(|p| p.contains("2 chunks received, the kernel wrote 3"))
        );
        // The offsets stay right: zeroes stand in for the gap.
        assert_eq!(d.bytes, b"abcd\0\0\0\0ijkl");
    }

    #[test]
    fn kernel_side_losses_and_a_lost_start_are_reported() {
        let mut c = capture();
        c.on_bytes(&chunk(0, 0, b"abcd", 256));
        let d = c.on_bytes(&end(8, 8, 2, 1, false)).expect("dump");
        assert!(!d.complete);
        assert!(
            d.problems.iter().any(|p| p.contains("lost in the kernel")),
            "{:?}",
            d.problems
        );
        assert!(
            d.problems
                .iter()
                .any(|p| p.contains("start of the dump was not seen"))
        );
    }

    #[test]
    fn a_failed_write_keeps_what_the_writer_accepted() {
        let mut c = capture();
        c.on_bytes(&start());
        c.on_bytes(&chunk(0, 0, b"abcdefgh", 256));
        let d = c.on_bytes(&end(5, 8, 1, 0, true)).expect("dump");
        assert!(d.complete, "{:?}", d.problems);
        assert!(d.write_error);
        assert_eq!(d.bytes, b"abcde");
    }

    #[test]
    fn a_dump_without_an_end_expires_incomplete() {
        let mut c = capture();
        c.on_bytes(&start());
        c.on_bytes(&chunk(0, 0, b"abcd", 256));
        assert!(c.expire(2_000 + 1_000_000_000).is_empty());
        let expired = c.expire(2_000 + 31_000_000_000);
        assert_eq!(expired.len(), 1);
        assert!(!expired[0].complete);
        assert_eq!(expired[0].returned, -1);
        assert!(
            expired[0]
                .problems
                .iter()
                .any(|p| p.contains("return was not seen"))
        );
        assert_eq!(c.open_dumps(), 0);
    }

    #[test]
    fn truncated_and_foreign_records_are_counted_not_trusted() {
        let mut c = capture();
        assert!(c.on_bytes(&[1, 2, 3]).is_none());
        let mut short = chunk(0, 0, b"abcd", 256);
        short.truncate(66);
        assert!(c.on_bytes(&short).is_none());
        assert_eq!(c.bad_records, 2);
        // Another family's record is ignored.
        let other = bytes_of(&header(1, 5));
        assert!(c.on_bytes(&other).is_none());
        assert_eq!(c.bad_records, 2);
    }

    #[test]
    fn too_many_open_dumps_are_dropped_and_counted() {
        let mut c = FlightCapture::new(CaptureOptions {
            max_open_dumps: 1,
            ..CaptureOptions::default()
        });
        c.on_bytes(&start());
        let mut other = FlightStart {
            header: header(KIND_FLIGHT_START, 1_500),
            dump_id: ID + 1,
            ..FlightStart::default()
        };
        other.header.goid = 43;
        c.on_bytes(&bytes_of(&other));
        assert_eq!(c.dropped_dumps, 1);
        assert_eq!(c.open_dumps(), 1);
    }

    #[test]
    fn a_dump_over_the_byte_limit_is_incomplete() {
        let mut c = FlightCapture::new(CaptureOptions {
            max_dump_bytes: 6,
            ..CaptureOptions::default()
        });
        c.on_bytes(&start());
        c.on_bytes(&chunk(0, 0, b"abcd", 256));
        c.on_bytes(&chunk(1, 4, b"efgh", 256));
        let d = c.on_bytes(&end(8, 8, 2, 0, false)).expect("dump");
        assert!(!d.complete);
        assert!(
            d.problems.iter().any(|p| p.contains("capture limit")),
            "{:?}",
            d.problems
        );
    }
}
