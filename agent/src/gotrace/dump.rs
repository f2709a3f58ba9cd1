//! The stable text form of the event stream, one event per line.
//!
//! The same form is printed by the Go program under
//! `agent/tests/fixtures/tracedump/` from Go's own reader, so the two can be
//! compared line by line. The format:
//!
//! ```text
//! T=<ns> M=<thread> P=<proc> G=<goroutine> <Kind>[ details][ Stack=[frames]]
//! ```
//!
//! Strings are quoted with printable ASCII kept, `\"` and `\\` escaped and
//! every other byte as `\xNN`. Frames are `"func" 0xPC "file":line`,
//! separated by `; `.

use std::io::{self, BufWriter, Read, Write};

use super::event::{Event, EventKind, Resource, Stack, go_state_name, proc_state_name};
use super::{DecodeError, Reader};

/// What [`dump_events`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpSummary {
    /// The trace's Go version (the `N` of Go 1.N).
    pub go_version: u32,
    pub events: u64,
    pub generations: u64,
    pub bytes: u64,
}

/// Decodes a trace and writes every event in the stable text form, one per
/// line. On a decoding error, the events before it have been written.
pub fn dump_events(input: impl Read, out: &mut dyn Write) -> Result<DumpSummary, DecodeError> {
    dump_reader(Reader::new(input)?, out)
}

/// [`dump_events`] over a reader already made (e.g. [`Reader::from_file`]).
pub fn dump_reader<R: Read>(
    mut r: Reader<R>,
    out: &mut dyn Write,
) -> Result<DumpSummary, DecodeError> {
    let mut w = BufWriter::with_capacity(64 << 10, out);
    let mut line = Vec::with_capacity(256);
    let res = loop {
        match r.read_event() {
            Ok(Some(e)) => {
                line.clear();
                write_event(&mut line, &e);
                line.push(b'\n');
                if let Err(e) = w.write_all(&line) {
                    break Err(DecodeError::Output(e));
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let flushed = w.flush().map_err(DecodeError::Output);
    res?;
    flushed?;
    let s = r.stats();
    Ok(DumpSummary {
        go_version: r.go_version(),
        events: s.events,
        generations: s.generations,
        bytes: s.bytes,
    })
}

/// Appends `s` quoted: printable ASCII as is, `"` and `\` escaped, every
/// other byte as `\xNN`.
pub(crate) fn quote(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 15) as usize],
                ]);
            }
        }
    }
    out.push(b'"');
}

fn write_stack(out: &mut Vec<u8>, s: &Stack<'_>) {
    out.push(b'[');
    for (i, f) in s.frames().enumerate() {
        if i != 0 {
            out.extend_from_slice(b"; ");
        }
        quote(out, f.func);
        let _ = write!(out, " {:#x} ", f.pc);
        quote(out, f.file);
        let _ = write!(out, ":{}", f.line);
    }
    out.push(b']');
}

/// Appends the text form of one event (without a newline).
pub fn write_event(out: &mut Vec<u8>, e: &Event<'_>) {
    let _ = write_event_io(out, e);
}

fn write_event_io(out: &mut Vec<u8>, e: &Event<'_>) -> io::Result<()> {
    let kind = e.kind();
    write!(
        out,
        "T={} M={} P={} G={} {}",
        e.time(),
        e.thread(),
        e.proc(),
        e.goroutine(),
        kind.as_str()
    )?;
    match kind {
        EventKind::Sync => {
            if let Some(s) = e.sync() {
                write!(out, " N={}", s.n)?;
                if let Some(c) = s.clock_snapshot {
                    write!(
                        out,
                        " Trace={} Mono={} Wall={}.{:09}",
                        c.trace, c.mono, c.wall_sec, c.wall_nsec
                    )?;
                }
                if !s.experimental_batches.is_empty() {
                    // name -> (count, bytes), sorted by name.
                    let mut per: Vec<(&str, usize, usize)> = Vec::new();
                    for b in s.experimental_batches {
                        let name = super::spec::experiment_name(b.experiment).unwrap_or("Unknown");
                        match per.iter_mut().find(|p| p.0 == name) {
                            Some(p) => {
                                p.1 += 1;
                                p.2 += b.data.len();
                            }
                            None => per.push((name, 1, b.data.len())),
                        }
                    }
                    per.sort();
                    out.extend_from_slice(b" ExpBatches=[");
                    for (i, (n, c, b)) in per.iter().enumerate() {
                        if i != 0 {
                            out.push(b',');
                        }
                        write!(out, "{n}:{c}:{b}")?;
                    }
                    out.push(b']');
                }
            }
        }
        EventKind::Metric => {
            if let Some(m) = e.metric() {
                write!(out, " Name={} Value={}", m.name, m.value)?;
            }
        }
        EventKind::Label => {
            if let Some(l) = e.label() {
                out.extend_from_slice(b" Label=");
                quote(out, l.label);
                write!(out, " Resource={}", l.resource)?;
            }
        }
        EventKind::RangeBegin | EventKind::RangeActive | EventKind::RangeEnd => {
            if let Some(r) = e.range() {
                out.extend_from_slice(b" Name=");
                quote(out, &r.name);
                write!(out, " Scope={}", r.scope)?;
                if kind == EventKind::RangeEnd {
                    out.extend_from_slice(b" Attrs=[");
                    for (i, (n, v)) in e.range_attributes().iter().enumerate() {
                        if i != 0 {
                            out.push(b',');
                        }
                        write!(out, "{n}={v}")?;
                    }
                    out.push(b']');
                }
            }
        }
        EventKind::TaskBegin | EventKind::TaskEnd => {
            if let Some(t) = e.task() {
                write!(out, " ID={} Parent={} Type=", t.id, t.parent)?;
                quote(out, t.typ);
            }
        }
        EventKind::RegionBegin | EventKind::RegionEnd => {
            if let Some(r) = e.region() {
                write!(out, " Task={} Type=", r.task)?;
                quote(out, r.typ);
            }
        }
        EventKind::Log => {
            if let Some(l) = e.log() {
                write!(out, " Task={} Category=", l.task)?;
                quote(out, l.category);
                out.extend_from_slice(b" Message=");
                quote(out, l.message);
            }
        }
        EventKind::StateTransition => {
            if let Some(s) = e.state_transition() {
                match s.resource {
                    Resource::Goroutine(id) => write!(
                        out,
                        " GoID={id} {}->{}",
                        go_state_name(s.from),
                        go_state_name(s.to)
                    )?,
                    Resource::Proc(id) => write!(
                        out,
                        " ProcID={id} {}->{}",
                        proc_state_name(s.from),
                        proc_state_name(s.to)
                    )?,
                    _ => {}
                }
                out.extend_from_slice(b" Reason=");
                quote(out, s.reason);
                if !s.stack.is_none() {
                    out.extend_from_slice(b" TStack=");
                    write_stack(out, &s.stack);
                }
            }
        }
        EventKind::Experimental => {
            if let Some(x) = e.experimental() {
                write!(out, " Name={} Args=[", x.name)?;
                for (i, n) in x.arg_names.iter().enumerate() {
                    if i != 0 {
                        out.push(b',');
                    }
                    write!(out, "{n}={}", x.args.get(i).copied().unwrap_or(0))?;
                }
                out.push(b']');
            }
        }
        EventKind::StackSample | EventKind::Bad => {}
    }
    let st = e.stack();
    if !st.is_none() {
        out.extend_from_slice(b" Stack=");
        write_stack(out, &st);
    }
    Ok(())
}
