//! Decodes a Go execution trace and reads every event (the Rust side of
//! `scripts/bench-trace.sh`): prints the event count, the bytes read and the
//! time taken. Like the Go side (`tracedump -count`), it touches each event's
//! kind and timestamp and nothing else.
//!
//!     cargo run --release -p agent --example decode_bench -- [--stream] FILE
//!
//! By default the file is read with `Reader::from_file` (event batches read
//! from the file when needed); `--stream` reads it as a plain `io::Read`
//! stream with `Reader::new` (one generation held in memory). `--spans`
//! maps the trace to spans (`reader_to_spans`, default options, file mode)
//! and prints the span count instead of the checksum.
//!
//! `--map [--join SPANS.jsonl] [--runs N]` is the flight-recorder path:
//! the whole file in memory (as a captured dump is), mapped to spans (joined
//! to the live spans of `--join`, as `agent decode --join` reads them) and
//! each span encoded as the export pipeline takes it, N times; prints the
//! median and minimum time per run (the join index is built once, outside
//! the timing, as the live agent builds it before mapping).

use std::fs::File;
use std::io::Read;
use std::time::Instant;

use opentelemetry::KeyValue;

use agent::gotrace::{LiveSpans, Reader, SpanOptions, reader_to_spans, trace_to_spans};

fn read_all<R: Read>(mut r: Reader<R>) -> anyhow::Result<(u64, i64, u64)> {
    let mut events: u64 = 0;
    let mut checksum: i64 = 0;
    while let Some(e) = r.read_event()? {
        events += 1;
        checksum = checksum.wrapping_add(e.time() ^ e.kind() as i64);
    }
    Ok((events, checksum, r.stats().bytes))
}

/// `--map`: maps `path` in memory `runs` times; prints the times per run.
fn map(path: &str, join: Option<&str>, runs: usize) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)?;
    let join = match join {
        Some(spans) => {
            let live = LiveSpans::read_jsonl(std::io::BufReader::new(File::open(spans)?))?;
            let pid = *live
                .pids()
                .first()
                .ok_or_else(|| anyhow::anyhow!("{spans}: no spans with a process"))?;
            Some(std::sync::Arc::new(live.index_for(pid)))
        }
        None => None,
    };
    // What every span of a captured dump carries (`flight::dump_attributes`).
    let extra_attributes = vec![
        KeyValue::new("flight_recorder.dump.id", "363-b97e1f62b4"),
        KeyValue::new("flight_recorder.dump.time", "2026-12-06T07:11:10.329Z"),
        KeyValue::new("flight_recorder.dump.size", bytes.len() as i64),
        KeyValue::new("flight_recorder.dump.complete", true),
        KeyValue::new("flight_recorder.dump.goroutine", 1234_i64),
        KeyValue::new("flight_recorder.recorder", "runtime/trace.FlightRecorder"),
        KeyValue::new("process.pid", 363_i64),
        KeyValue::new("flight_recorder.dump.writer", "*os.File"),
    ];
    let opts = SpanOptions {
        join,
        extra_attributes,
        ..SpanOptions::default()
    };
    let mut times = Vec::with_capacity(runs);
    let mut out = (0u64, 0u64, 0u64);
    for _ in 0..runs {
        let start = Instant::now();
        let (mut spans, mut bytes_out) = (0u64, 0u64);
        let summary = trace_to_spans(&bytes[..], &opts, &mut |batch| {
            spans += batch.len() as u64;
            bytes_out += batch.iter().map(|s| s.bytes.len() as u64).sum::<u64>();
        })?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        out = (spans, summary.joined, bytes_out);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "bytes={} spans={} joined={} encoded_bytes={} runs={runs} median_ms={:.1} min_ms={:.1}",
        bytes.len(),
        out.0,
        out.1,
        out.2,
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut stream = false;
    let mut spans = false;
    let mut mapped = false;
    let mut join = None;
    let mut runs = 5;
    let mut path = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--stream" => stream = true,
            "--spans" => spans = true,
            "--map" => mapped = true,
            "--join" => join = args.next(),
            "--runs" => runs = args.next().map_or(Ok(5), |n| n.parse())?,
            _ => path = Some(a),
        }
    }
    let path = path.ok_or_else(|| {
        anyhow::anyhow!(
            "usage: decode_bench [--stream | --spans | --map [--join SPANS.jsonl] [--runs N]] FILE"
        )
    })?;
    if mapped {
        return map(&path, join.as_deref(), runs.max(1));
    }
    let start = Instant::now();
    let file = File::open(&path)?;
    if spans {
        let mut n: u64 = 0;
        let summary = reader_to_spans(
            Reader::from_file(file)?,
            &SpanOptions::default(),
            &mut |batch| n += batch.len() as u64,
        )?;
        let elapsed = start.elapsed();
        println!(
            "events={} spans={n} logs={} seconds={:.6}",
            summary.events,
            summary.logs,
            elapsed.as_secs_f64()
        );
        return Ok(());
    }
    let (events, checksum, bytes) = if stream {
        read_all(Reader::new(file)?)?
    } else {
        read_all(Reader::from_file(file)?)?
    };
    let elapsed = start.elapsed();
    println!(
        "events={events} bytes={bytes} seconds={:.6} checksum={checksum}",
        elapsed.as_secs_f64()
    );
    Ok(())
}
