//! The agent's user-space cost per USDT span, without the kernel: decodes
//! synthetic `request_start`/`request_end` records (string ids `f-<i>`, as
//! the USDT fixture's flood fires them), pairs them with the built-in
//! mapping, encodes each span as OTLP protobuf and assembles export bodies
//! of 512 spans. Prints the median over runs of the time per span.
//!
//!     cargo run --release -p agent --example usdt_bench -- [PAIRS] [RUNS]
//!
//! For comparing builds of the span path; the end-to-end figures (with the
//! kernel, the ring buffer and the exporter) come from
//! `scripts/bench-usdt.sh`.

mod span_bench;

use std::time::{Duration, Instant};

use span_bench::Bodies;

use agent::{
    clock::WallClock,
    usdt::{UsdtSpanBuilder, decode_usdt_record, mapping::MappingConfig},
};
use agent_common::{
    event::EventHeader,
    usdt::{KIND_USDT, USDT_BODY, USDT_MAX_ARGS, USDT_RECORD_HEAD, UsdtRecord},
};

/// A record as `usdt_probe` writes it for a probe with one string argument:
/// the head, the argument's value (0 for a string), the string's bytes.
fn record(site: u32, tid: u32, t: u64, id: &str) -> Vec<u8> {
    let mut str_len = [0u8; USDT_MAX_ARGS];
    str_len[0] = id.len() as u8;
    let rec = UsdtRecord {
        header: EventHeader {
            kind: KIND_USDT,
            target: 0,
            tid,
            site,
            goid: 0,
            ktime_ns: t,
        },
        arg_count: 1,
        str_used: id.len() as u16,
        failed: 0,
        truncated: 0,
        str_mask: 1,
        _pad: 0,
        str_len,
        body: [0; USDT_BODY / 8],
    };
    let ptr = (&raw const rec).cast::<u8>();
    // SAFETY: `UsdtRecord` is `repr(C)` plain data without padding (its size
    // is asserted in agent-common), so all its bytes are initialized.
    let mut bytes = unsafe { std::slice::from_raw_parts(ptr, USDT_RECORD_HEAD + 8) }.to_vec();
    bytes.extend_from_slice(id.as_bytes());
    bytes
}

/// Not inlined, so `valgrind --tool=callgrind --toggle-collect=*::run` counts
/// the instructions of the span path alone (a measure free of the noise of
/// timing on a shared machine).
#[inline(never)]
fn run(records: &[(bool, Vec<u8>)]) -> (Duration, usize) {
    let mut builder = UsdtSpanBuilder::new(
        MappingConfig::builtin(),
        WallClock::with_offset_ns(0),
        65_536,
        Duration::from_secs(30),
    );
    let start = builder
        .resolve("fixture", "request_start")
        .expect("built-in mapping");
    let end = builder
        .resolve("fixture", "request_end")
        .expect("built-in mapping");
    let mut bodies = Bodies::new();
    let t0 = Instant::now();
    for (is_start, bytes) in records {
        let event = decode_usdt_record(bytes).expect("well-formed record");
        let role = if *is_start { start } else { end };
        builder.on_event(role, event, &mut |span| bodies.push(span));
    }
    (t0.elapsed(), bodies.bytes)
}

fn main() {
    let (pairs, runs) = span_bench::args();
    let mut records = Vec::with_capacity(2 * pairs);
    for i in 0..pairs {
        let id = format!("f-{i}");
        let t = 1_000 * i as u64;
        records.push((true, record(0, 7, t, &id)));
        records.push((false, record(1, 7, t + 500, &id)));
    }
    span_bench::report(pairs, runs, || run(&records));
}
