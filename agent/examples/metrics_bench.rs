//! What request metrics add per span, without the kernel: HTTP server spans
//! encoded as the net/http family writes them (every attribute, 4 routes x
//! 3 statuses, the raw path different each time; a pool of 1,024 cycled
//! through, so that they are in cache as a span just written is) go through
//! `metrics::observe_span`, the hook where spans enter the export pipeline,
//! with metrics on (`/metrics` served, so the SDK's histograms are live)
//! and off. Prints the median over runs of the time per span and per 1,000.
//!
//!     cargo run --release -p agent --example metrics_bench -- [SPANS] [RUNS]
//!
//! The end-to-end figure (agent CPU per 1,000 spans, metrics on vs off)
//! comes from `cargo xtask bench http`.

use std::time::{Duration, Instant};

use agent::{
    export::wire::SpanWriter,
    metrics::{self, Metrics, MetricsConfig},
};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::Resource;

/// Distinct spans, cycled through.
const POOL: usize = 1024;

fn spans(n: usize) -> Vec<Vec<u8>> {
    let routes = [
        "/users/{id}",
        "/items/{id}",
        "/static/",
        "/api/v1/orders/{id}",
    ];
    let statuses = [200, 404, 500];
    (0..n)
        .map(|i| {
            let mut bytes = Vec::with_capacity(512);
            let mut w = SpanWriter::new(&mut bytes);
            let route = routes[i % routes.len()];
            let status = statuses[(i / routes.len()) % statuses.len()];
            w.attr_str("http.request.method", "GET")
                .attr_str("url.path", &format!("/users/{i}"))
                .attr_str("url.scheme", "http")
                .attr_str("server.address", "localhost")
                .attr_int("server.port", 8080)
                .attr_str("client.address", "127.0.0.1")
                .attr_int("client.port", 40000 + (i % 1000) as i64)
                .attr_str("network.protocol.name", "http")
                .attr_str("network.protocol.version", "1.1")
                .attr_int("goroutine.id", i as i64)
                .attr_int("thread.id", 4242)
                .ids(
                    TraceId::from(i as u128 + 1),
                    SpanId::from(i as u64 + 1),
                    None,
                )
                .kind(&SpanKind::Server)
                .times(1_000_000 + i as u64, 1_250_000 + i as u64)
                .attr_int("http.response.status_code", status)
                .attr_int("http.response.body.size", 5)
                .attr_str("http.route", route)
                .name(&["GET ", route]);
            if status >= 500 {
                w.attr_str("error.type", &status.to_string())
                    .status_error("");
            }
            bytes
        })
        .collect()
}

/// `n` spans observed, cycling through `pool`: in the agent a span is
/// observed right after it was written, in cache, not streamed from memory.
fn time(pool: &[Vec<u8>], n: usize) -> Duration {
    let start = Instant::now();
    for span in pool.iter().cycle().take(n) {
        metrics::observe_span(std::hint::black_box(span));
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let spans = spans(POOL);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let off = median((0..runs).map(|_| time(&spans, n)).collect());
    let config = MetricsConfig {
        otlp: None,
        prometheus: Some("127.0.0.1:0".parse().expect("addr")),
    };
    let metrics = runtime
        .block_on(Metrics::start(&config, &Resource::builder_empty().build()))
        .expect("metrics")
        .expect("on");
    let on = median((0..runs).map(|_| time(&spans, n)).collect());
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!(
        "{n} spans, median of {runs} runs: metrics off {:.1} ns/span, on {:.1} ns/span: {:.3} ms per 1,000 spans added",
        per(off),
        per(on),
        (per(on) - per(off)) / 1000.0
    );
    let counters = agent::session::Counters::collect(&Default::default(), &[]);
    runtime.block_on(metrics.shutdown(Some(&counters)));
}
