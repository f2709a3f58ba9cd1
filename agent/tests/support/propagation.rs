//! What the `--propagate` tests (HTTP/1.1, gRPC, h2c) share: an agent per
//! service, its exit line and counts, the `traceparent` values the callees
//! saw, and the spans the receivers got.

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use super::{
    agent::{AGENT_EXIT, Agent, command},
    otlp::{FlatSpan, Receiver, hex},
};

/// An agent on `pid` exporting to `receiver` over OTLP gRPC (with
/// `--propagate` when `propagate`, and `extra` arguments), attached.
pub fn attach(pid: u32, receiver: &Receiver, propagate: bool, extra: &[&str]) -> Agent {
    let mut cmd = command();
    cmd.args(extra);
    cmd.args(["--pid", &pid.to_string()]).args([
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "grpc",
    ]);
    if propagate {
        cmd.arg("--propagate");
    }
    // The trees asserted here are the request and call spans; the
    // connection set-up spans (tested in net_spans) depend on which calls
    // open connections.
    cmd.args(["--no-instrument", "tls,dns,net"]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    agent
}

/// Stops an agent and returns its exit line.
pub fn stop(agent: &mut Agent) -> String {
    agent.signal(nix::sys::signal::Signal::SIGINT);
    let status = agent.wait(AGENT_EXIT);
    assert!(
        status.success(),
        "agent failed: {status}: {:#?}",
        agent.stderr_lines()
    );
    agent
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("spans exported"))
        .expect("exit line")
}

/// The number right before `phrase` in `line` (an exit line's count).
pub fn number_before(line: &str, phrase: &str) -> u64 {
    let at = line
        .find(phrase)
        .unwrap_or_else(|| panic!("{phrase:?} not in {line}"));
    let head = &line[..at];
    let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    head[head.len() - digits..]
        .parse()
        .unwrap_or_else(|_| panic!("no number before {phrase:?} in {line}"))
}

/// A `traceparent` value's (trace id, parent id), checked sampled.
pub fn context(value: &str) -> (String, String) {
    let parts: Vec<_> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

pub fn id(span: &FlatSpan) -> String {
    hex(&span.span.span_id)
}

pub fn parent(span: &FlatSpan) -> String {
    hex(&span.span.parent_span_id)
}

/// The one span of `kind` in `trace` whose `attr` is `value`.
pub fn find<'a>(
    spans: &'a [FlatSpan],
    trace: &str,
    kind: SpanKind,
    attr: &str,
    value: &str,
) -> &'a FlatSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| {
            hex(&s.span.trace_id) == trace
                && s.span.kind == kind as i32
                && s.attr(attr) == Some(value)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind:?} span with {attr}={value} in trace {trace}: {spans:#?}"
    );
    found[0]
}

/// The value of the `key: value` line of a fixture's answer `body` (panics
/// naming the key when there is none).
pub fn answer_field(body: &str, key: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {key} in {body:?}"))
        .to_owned()
}
