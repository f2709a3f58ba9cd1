//! What `http_bench` and `usdt_bench` share: their arguments, export bodies
//! assembled as the exporter does, and the median over runs.

use std::time::Duration;

use agent::export::{EncodedSpan, recycle_span_buffer, wire};

/// Spans per export body, as the exporter batches them.
const BATCH: usize = 512;

/// `[PAIRS] [RUNS]` from the command line.
pub fn args() -> (usize, usize) {
    let mut args = std::env::args().skip(1);
    let pairs = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let runs = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    (pairs, runs)
}

/// Collects spans into export bodies of [`BATCH`] spans.
pub struct Bodies {
    batch: Vec<EncodedSpan>,
    /// Bytes of the bodies assembled, so the work cannot be optimized away.
    pub bytes: usize,
}

impl Bodies {
    pub fn new() -> Self {
        Self {
            batch: Vec::with_capacity(BATCH),
            bytes: 0,
        }
    }

    pub fn push(&mut self, span: EncodedSpan) {
        self.batch.push(span);
        if self.batch.len() == BATCH {
            let spans: Vec<&[u8]> = self.batch.iter().map(|s| s.bytes.as_slice()).collect();
            self.bytes += wire::request(&[], &[(&self.batch[0].scope, &spans)]).len();
            // As the export batcher does.
            for span in self.batch.drain(..) {
                recycle_span_buffer(span.bytes);
            }
        }
    }
}

/// Runs `run` (which returns its time and the body bytes it made) `runs`
/// times and prints the median, min and max time per span.
pub fn report(pairs: usize, runs: usize, mut run: impl FnMut() -> (Duration, usize)) {
    let mut per_span: Vec<f64> = (0..runs)
        .map(|_| {
            let (took, bytes) = run();
            assert!(bytes > 0);
            took.as_nanos() as f64 / pairs as f64
        })
        .collect();
    per_span.sort_by(f64::total_cmp);
    println!(
        "{pairs} spans x {runs} runs: median {:.0} ns per span (min {:.0}, max {:.0})",
        per_span[runs / 2],
        per_span[0],
        per_span[runs - 1]
    );
}
