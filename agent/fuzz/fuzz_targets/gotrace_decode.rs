//! Fuzzes the Go execution-trace decoder: the reader with Go's ordering, the
//! text dump and the span mapping must never panic, whatever the input.
#![no_main]

// The decoder module is compiled on its own (it depends on nothing else in
// the agent), so the fuzz build does not run the agent's eBPF build script.
#[path = "../../src/gotrace/mod.rs"]
#[allow(dead_code, reason = "only the decoding entry points are fuzzed")]
mod gotrace;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = std::io::sink();
    let dumped = gotrace::dump_events(data, &mut out);
    let opts = gotrace::SpanOptions::default();
    let mut spans = 0u64;
    let mapped = gotrace::trace_to_spans(data, &opts, &mut |_| spans += 1);
    // Both walk the same event stream: they fail or succeed together.
    assert_eq!(dumped.is_ok(), mapped.is_ok());
    if let Err(e) = &mapped {
        if let Some(off) = e.offset() {
            assert!(off <= data.len() as u64, "offset {off} past the input");
        }
    }
});
