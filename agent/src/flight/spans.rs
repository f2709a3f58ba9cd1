//! Turning a captured dump into spans, and saving its bytes.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use std::sync::Arc;

use opentelemetry::{KeyValue, StringValue, Value};

use super::{CompletedDump, FlightError};
use crate::{
    clock::WallClock,
    gotrace::{RecentSpans, SpanBatch, SpanOptions, SpanSummary, trace_to_spans},
};

/// Options for [`dump_to_spans`].
#[derive(Clone, Debug)]
pub struct DumpSpanOptions {
    /// Converts the dump's kernel times to wall time.
    pub clock: WallClock,
    /// Frames kept per span (`code.stacktrace.frames`).
    pub max_frames: usize,
    /// Attributes added to every span besides the dump's identity.
    pub extra_attributes: Vec<KeyValue>,
    /// The live agent's recent spans of the process: tasks the dump shows
    /// begun inside one of them become its children (see
    /// [`crate::gotrace::join`]). The dump is decoded once the session has
    /// drained its ring buffer past the dump's end (it is asked to at once),
    /// so that the spans that ended before it are in; [`JOIN_SETTLE`] at
    /// most.
    pub recent: Option<Arc<RecentSpans>>,
    /// A joined request's goroutine periods at least this long become spans
    /// ([`SpanOptions::period_min`]).
    pub period_min: Duration,
}

/// How long a dump waits at most for the live spans that ended before it
/// (the session's drain it asks for; a span is recorded as it enters the
/// export pipeline).
pub const JOIN_SETTLE: Duration = Duration::from_millis(250);

impl Default for DumpSpanOptions {
    fn default() -> Self {
        Self {
            clock: WallClock::measure(),
            max_frames: 16,
            extra_attributes: Vec::new(),
            recent: None,
            period_min: crate::gotrace::PERIOD_MIN_DEFAULT,
        }
    }
}

/// The wall time WriteTo returned (or entered, if the return was not seen).
pub fn dump_time(dump: &CompletedDump, clock: &WallClock) -> SystemTime {
    let ktime = if dump.end_ktime_ns != 0 {
        dump.end_ktime_ns
    } else {
        dump.start_ktime_ns
    };
    clock.to_system_time(ktime)
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map_or_else(|_| String::new(), |ts| ts.to_string())
}

/// A string value that is cheap to clone (one per span of the dump).
fn shared(s: &str) -> Value {
    Value::String(StringValue::from(Arc::<str>::from(s)))
}

/// The attributes every span of `dump` carries.
pub fn dump_attributes(dump: &CompletedDump, clock: &WallClock) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("flight_recorder.dump.id", shared(&dump.id)),
        KeyValue::new(
            "flight_recorder.dump.time",
            shared(&rfc3339(dump_time(dump, clock))),
        ),
        KeyValue::new("flight_recorder.dump.size", dump.bytes.len() as i64),
        KeyValue::new("flight_recorder.dump.complete", dump.complete),
        KeyValue::new("flight_recorder.dump.goroutine", dump.goid as i64),
        KeyValue::new("flight_recorder.recorder", dump.recorder),
        KeyValue::new("process.pid", i64::from(dump.pid)),
    ];
    if let Some(writer) = &dump.writer {
        attrs.push(KeyValue::new("flight_recorder.dump.writer", shared(writer)));
    }
    if dump.write_error {
        attrs.push(KeyValue::new("flight_recorder.dump.write_error", true));
    }
    attrs
}

/// Decodes `dump` and hands its spans (tasks, regions with logs, runtime
/// ranges) to `sink`, each carrying the dump's identity
/// (`flight_recorder.dump.id`, `.time`, `.size`, ...). Traces without a
/// clock snapshot are anchored at the time WriteTo was entered.
pub fn dump_to_spans(
    dump: &CompletedDump,
    options: &DumpSpanOptions,
    sink: &mut dyn FnMut(SpanBatch),
) -> Result<SpanSummary, FlightError> {
    let mut extra = dump_attributes(dump, &options.clock);
    extra.extend(options.extra_attributes.iter().cloned());
    let began = Instant::now();
    let mut waited = Duration::ZERO;
    let join = options.recent.as_ref().map(|recent| {
        let end = dump.end_ktime_ns.max(dump.start_ktime_ns);
        if !recent.wait_drained(end, JOIN_SETTLE) {
            log::debug!(
                "flight-recorder dump {}: the session did not drain within {JOIN_SETTLE:?}; joining the spans it has",
                dump.id
            );
        }
        waited = began.elapsed();
        Arc::new(recent.index())
    });
    let indexed = began.elapsed() - waited;
    let opts = SpanOptions {
        anchor_wall_time: Some(options.clock.to_system_time(dump.start_ktime_ns)),
        max_frames: options.max_frames,
        extra_attributes: extra,
        join,
        period_min: options.period_min,
    };
    let cpu_before = thread_cpu();
    let summary = trace_to_spans(&dump.bytes[..], &opts, sink).map_err(FlightError::Decode)?;
    let mapped = began.elapsed() - waited - indexed;
    let mapped_cpu = thread_cpu().saturating_sub(cpu_before);
    let end = dump.end_ktime_ns.max(dump.start_ktime_ns);
    let after = WallClock::monotonic_now_ns().saturating_sub(end);
    log::info!(
        "flight-recorder dump {}: {} bytes, {} spans ({} joined to the agent's spans, {} periods, {} requests' goroutine time); last span {:.1} ms after WriteTo returned (drain wait {:.1} ms, join index of {} spans {:.1} ms, mapping {:.1} ms, of which {:.1} ms on a CPU)",
        dump.id,
        dump.bytes.len(),
        summary.spans,
        summary.joined,
        summary.periods,
        summary.breakdowns,
        after as f64 / 1e6,
        waited.as_secs_f64() * 1e3,
        opts.join.as_ref().map_or(0, |j| j.len()),
        indexed.as_secs_f64() * 1e3,
        mapped.as_secs_f64() * 1e3,
        mapped_cpu.as_secs_f64() * 1e3,
    );
    Ok(summary)
}

/// The CPU time this thread has used (zero where the clock cannot be read):
/// the mapping's own cost, apart from the time it waited for a CPU (the
/// reader runs at the lowest priority) or for room in the export queue.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// The file name `dump` is saved under: `<pid>-<time>-<id>.trace`, time as
/// `YYYYMMDDTHHMMSS.mmmZ` (UTC), `id` the dump id in hex;
/// `.incomplete.trace` for an incomplete capture.
pub fn dump_file_name(dump: &CompletedDump, clock: &WallClock) -> String {
    let time = jiff::Timestamp::try_from(dump_time(dump, clock))
        .map(|ts| ts.strftime("%Y%m%dT%H%M%S%.3fZ").to_string())
        .unwrap_or_else(|_| "unknown".to_owned());
    let suffix = if dump.complete {
        "trace"
    } else {
        "incomplete.trace"
    };
    format!("{}-{time}-{:x}.{suffix}", dump.pid, dump.dump_id)
}

/// Saves the exact bytes of `dump` in `dir` (created if missing), for `go
/// tool trace`: written to a temporary name, then renamed, so a watcher
/// never sees a partial file. Returns the path.
pub fn save_dump(
    dir: &Path,
    dump: &CompletedDump,
    clock: &WallClock,
) -> Result<PathBuf, FlightError> {
    let name = dump_file_name(dump, clock);
    let path = dir.join(&name);
    let save_err = |source| FlightError::Save {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(save_err)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(save_err)?;
    file.write_all(&dump.bytes).map_err(save_err)?;
    file.sync_all().map_err(save_err)?;
    drop(file);
    fs::rename(&tmp, &path).map_err(save_err)?;
    Ok(path)
}

/// What [`handle_dump`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpOutcome {
    /// Where the bytes were saved, if a directory was given.
    pub saved: Option<PathBuf>,
    /// The spans produced; `None` for an incomplete capture (not decoded).
    pub summary: Option<SpanSummary>,
}

/// Everything the agent does with a dump WriteTo finished: saves its exact
/// bytes to `save_dir` (`--save-dumps DIR`, incomplete captures too, named
/// `.incomplete.trace`), then, when the capture is complete, decodes it into
/// spans for `sink`. An incomplete capture is logged with its problems and
/// not decoded (its gaps would decode into nonsense or fail).
pub fn handle_dump(
    dump: &CompletedDump,
    options: &DumpSpanOptions,
    save_dir: Option<&Path>,
    sink: &mut dyn FnMut(SpanBatch),
) -> Result<DumpOutcome, FlightError> {
    let saved = match save_dir {
        Some(dir) => Some(save_dump(dir, dump, &options.clock)?),
        None => None,
    };
    if !dump.complete {
        log::warn!(
            "flight-recorder dump {} of pid {} ({} bytes) was not captured whole, not decoded: {}",
            dump.id,
            dump.pid,
            dump.bytes.len(),
            dump.problems.join("; ")
        );
        return Ok(DumpOutcome {
            saved,
            summary: None,
        });
    }
    let summary = dump_to_spans(dump, options, sink)?;
    Ok(DumpOutcome {
        saved,
        summary: Some(summary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_say_pid_time_id_and_completeness() {
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        let mut dump = CompletedDump {
            slot: 0,
            pid: 9,
            dump_id: 0xff,
            id: "9-ff".to_owned(),
            recorder: "runtime/trace",
            goid: 1,
            tid: 9,
            start_ktime_ns: 1_000_000,
            end_ktime_ns: 2_000_000,
            writer: Some("*os.File".to_owned()),
            writer_itab: 1,
            writer_data: 2,
            bytes: Vec::new(),
            returned: 0,
            offered: 0,
            writes: 1,
            chunks: 1,
            write_error: false,
            complete: true,
            problems: Vec::new(),
        };
        assert_eq!(
            dump_file_name(&dump, &clock),
            "9-20231114T221320.002Z-ff.trace"
        );
        dump.complete = false;
        assert_eq!(
            dump_file_name(&dump, &clock),
            "9-20231114T221320.002Z-ff.incomplete.trace"
        );
        let attrs = dump_attributes(&dump, &clock);
        let get = |k: &str| {
            attrs
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(get("flight_recorder.dump.id"), Some("9-ff".into()));
        assert_eq!(
            get("flight_recorder.dump.time"),
            Some("2023-11-14T22:13:20.002Z".into())
        );
        assert_eq!(get("flight_recorder.dump.size"), Some(0i64.into()));
        assert_eq!(get("flight_recorder.dump.complete"), Some(false.into()));
        assert_eq!(get("flight_recorder.dump.writer"), Some("*os.File".into()));
        // Not a trace: an error, not a panic.
        assert!(matches!(
            dump_to_spans(&dump, &DumpSpanOptions::default(), &mut |_| {}),
            Err(FlightError::Decode(_))
        ));
        // An incomplete capture is saved but not decoded.
        let dir = std::env::temp_dir().join(format!("flight-handle-{}", std::process::id()));
        let opts = DumpSpanOptions {
            clock,
            ..DumpSpanOptions::default()
        };
        let outcome = handle_dump(&dump, &opts, Some(&dir), &mut |_| {}).expect("handled");
        assert_eq!(outcome.summary, None);
        let saved = outcome.saved.expect("saved");
        assert!(saved.ends_with("9-20231114T221320.002Z-ff.incomplete.trace"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
