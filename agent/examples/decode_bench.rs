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

use std::fs::File;
use std::io::Read;
use std::time::Instant;

use agent::gotrace::{Reader, SpanOptions, reader_to_spans};

fn read_all<R: Read>(mut r: Reader<R>) -> anyhow::Result<(u64, i64, u64)> {
    let mut events: u64 = 0;
    let mut checksum: i64 = 0;
    while let Some(e) = r.read_event()? {
        events += 1;
        checksum = checksum.wrapping_add(e.time() ^ e.kind() as i64);
    }
    Ok((events, checksum, r.stats().bytes))
}

fn main() -> anyhow::Result<()> {
    let mut stream = false;
    let mut spans = false;
    let mut path = None;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--stream" => stream = true,
            "--spans" => spans = true,
            _ => path = Some(a),
        }
    }
    let path =
        path.ok_or_else(|| anyhow::anyhow!("usage: decode_bench [--stream | --spans] FILE"))?;
    let start = Instant::now();
    let file = File::open(&path)?;
    if spans {
        let mut n: u64 = 0;
        let summary = reader_to_spans(
            Reader::from_file(file)?,
            &SpanOptions::default(),
            &mut |_| n += 1,
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
