//! Fuzzes the Go execution-trace decoder: the reader with Go's ordering, the
//! text dump and the span mapping must never panic, whatever the input, and
//! the two ways of reading (a stream holding a generation in memory, and a
//! file whose event batches are read when needed) must agree.
#![no_main]

use agent::gotrace;

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A scratch file for file mode, one per fuzzing process.
fn scratch() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("gotrace-fuzz-{}.trace", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut stream_out = Vec::new();
    let dumped = gotrace::dump_events(data, &mut stream_out);
    let opts = gotrace::SpanOptions::default();
    let mut spans = 0u64;
    let mapped = gotrace::trace_to_spans(data, &opts, &mut |batch| {
        // Whatever the input, each span is a valid OTLP message.
        assert!(batch.iter().all(|s| s.to_span_data().is_ok()));
        spans += batch.len() as u64;
    });
    // Both walk the same event stream: they fail or succeed together.
    assert_eq!(dumped.is_ok(), mapped.is_ok());
    if let Err(e) = &mapped {
        if let Some(off) = e.offset() {
            assert!(off <= data.len() as u64, "offset {off} past the input");
        }
    }

    // File mode yields the same events and the same outcome.
    let path = scratch();
    let mut f = std::fs::File::create(path).expect("scratch file");
    f.write_all(data).expect("writing scratch file");
    drop(f);
    let file = std::fs::File::open(path).expect("opening scratch file");
    let mut file_out = Vec::new();
    let from_file =
        gotrace::Reader::from_file(file).and_then(|r| gotrace::dump_reader(r, &mut file_out));
    assert_eq!(from_file.is_ok(), dumped.is_ok());
    assert!(file_out == stream_out, "file mode and stream mode differ");
});
