//! The agent's user-space cost per HTTP server span, without the kernel:
//! decodes synthetic start/end records shaped as the probes write them for
//! `GET /hello` on a keep-alive connection (method and target from one read,
//! Host, RemoteAddr), pairs them, encodes each span as OTLP protobuf and
//! assembles export bodies of 512 spans. Prints the median over runs of the
//! time per span.
//!
//!     cargo run --release -p agent --example http_bench -- [PAIRS] [RUNS]
//!
//! For comparing builds of the span path; the end-to-end figures come from
//! `cargo xtask bench http`.

mod span_bench;

use std::time::{Duration, Instant};

use span_bench::Bodies;

use agent::{
    clock::WallClock,
    http_server::{
        HttpSpanBuilder,
        records::{HttpRecord, decode},
    },
    spans::Goroutines,
};
use agent_common::{
    event::EventHeader,
    http::{
        END_FIELD_PATTERN, END_FIELD_STATUS, END_FIELD_WRITTEN, FIELD_CONTENT_LENGTH, FIELD_HOST,
        FIELD_METHOD, FIELD_METHOD_IN_URI, FIELD_PROTO, FIELD_REMOTE, FIELD_TLS_KNOWN, FIELD_URI,
        HOST_CAP, HttpServerEnd, HttpServerStart, KIND_HTTP_SERVER_END, KIND_HTTP_SERVER_START,
        METHOD_CAP, PATTERN_CAP, REMOTE_CAP, URI_CAP,
    },
};

fn fill<const N: usize>(s: &str) -> [u8; N] {
    let mut buf = [0u8; N];
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf
}

/// The bytes of a `repr(C)` record.
fn bytes_of<T: Copy>(rec: &T) -> Vec<u8> {
    let ptr = (rec as *const T).cast::<u8>();
    // SAFETY: the records are `repr(C)` plain data without padding (their
    // sizes are asserted in agent-common), so all their bytes are
    // initialized.
    unsafe { std::slice::from_raw_parts(ptr, size_of::<T>()) }.to_vec()
}

fn header(kind: u32, goid: u64, t: u64) -> EventHeader {
    EventHeader {
        kind,
        target: 0,
        tid: 4242,
        site: 0,
        goid,
        ktime_ns: t,
    }
}

fn start(i: u64, t: u64) -> Vec<u8> {
    bytes_of(&HttpServerStart {
        header: header(KIND_HTTP_SERVER_START, 1000 + i % 16, t),
        request: 0xc000_1000 + i * 0x400,
        response: 0xc010_0000 + i * 0x200,
        content_length: 0,
        proto_major: 1,
        proto_minor: 1,
        uri_at: 4,
        fields: FIELD_METHOD
            | FIELD_URI
            | FIELD_METHOD_IN_URI
            | FIELD_HOST
            | FIELD_REMOTE
            | FIELD_CONTENT_LENGTH
            | FIELD_PROTO
            | FIELD_TLS_KNOWN,
        method_len: 3,
        uri_len: 6,
        host_len: 15,
        remote_len: 15,
        method: [0; METHOD_CAP],
        uri: fill::<URI_CAP>("GET /hello"),
        host: fill::<HOST_CAP>("127.0.0.1:40123"),
        remote: fill::<REMOTE_CAP>("127.0.0.1:51234"),
    })
}

fn end(i: u64, t: u64) -> Vec<u8> {
    bytes_of(&HttpServerEnd {
        header: header(KIND_HTTP_SERVER_END, 0, t),
        response: 0xc010_0000 + i * 0x200,
        status: 0,
        written: 5,
        fields: END_FIELD_STATUS | END_FIELD_WRITTEN | END_FIELD_PATTERN,
        pattern_len: 6,
        pattern: fill::<PATTERN_CAP>("/hello"),
    })
}

/// Not inlined, so `valgrind --tool=callgrind --toggle-collect=*::run` counts
/// the instructions of the span path alone (a measure free of the noise of
/// timing on a shared machine).
#[inline(never)]
fn run(records: &[Vec<u8>]) -> (Duration, usize) {
    let mut builder = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 65_536, 30_000_000_000);
    let mut bodies = Bodies::new();
    // Off, as in a session where no family parents its spans in-process.
    let mut goroutines = Goroutines::new(false);
    let t0 = Instant::now();
    for bytes in records {
        let mut out = |span| bodies.push(span);
        match decode(bytes).expect("well-formed record") {
            HttpRecord::Start(rec) => builder.on_start(&mut goroutines, rec, &mut out),
            HttpRecord::End(rec) => builder.on_end(&mut goroutines, rec, &mut out),
            HttpRecord::Traceparent(_)
            | HttpRecord::Tracestate(_)
            | HttpRecord::Route(_)
            | HttpRecord::Ids(_) => {
                unreachable!("only starts and ends are made")
            }
        }
    }
    (t0.elapsed(), bodies.bytes)
}

fn main() {
    let (pairs, runs) = span_bench::args();
    let mut records = Vec::with_capacity(2 * pairs);
    for i in 0..pairs as u64 {
        let t = 1_000 * i;
        records.push(start(i, t));
        records.push(end(i, t + 500));
    }
    span_bench::report(pairs, runs, || run(&records));
}
