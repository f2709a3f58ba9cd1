//! Decodes a Go execution trace and reads every event (the Rust side of
//! `scripts/bench-trace.sh`): prints the event count, the bytes read and the
//! time taken. Like the Go side (`tracedump -count`), it touches each event's
//! kind and timestamp and nothing else.
//!
//!     cargo run --release -p agent --example decode_bench -- FILE

use std::fs::File;
use std::time::Instant;

use agent::gotrace::Reader;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: decode_bench FILE"))?;
    let start = Instant::now();
    let mut r = Reader::new(File::open(&path)?)?;
    let mut events: u64 = 0;
    let mut checksum: i64 = 0;
    while let Some(e) = r.read_event()? {
        events += 1;
        checksum = checksum.wrapping_add(e.time() ^ e.kind() as i64);
    }
    let elapsed = start.elapsed();
    let bytes = r.stats().bytes;
    println!(
        "events={events} bytes={bytes} seconds={:.6} checksum={checksum}",
        elapsed.as_secs_f64()
    );
    Ok(())
}
