//! Span mapping of Go execution traces: exact span trees on traces written
//! by the Go programs under `agent/tests/fixtures/traces/`.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use agent::gotrace::{self, SpanOptions, SpanSummary};
use opentelemetry::trace::SpanId;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

fn work_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

fn generate(program: &str, toolchain: Option<&str>) -> Vec<u8> {
    let path = support::fixture::generate_trace(work_dir(), program, toolchain, None);
    std::fs::read(path).expect("reading trace")
}

fn spans_of(trace: &[u8], opts: &SpanOptions) -> (Vec<SpanData>, SpanSummary) {
    let mut spans = Vec::new();
    let summary = gotrace::trace_to_spans(trace, opts, &mut |batch| {
        spans.extend(
            batch
                .iter()
                .map(|s| s.to_span_data().expect("a valid Span message")),
        );
    })
    .expect("trace_to_spans");
    assert_eq!(summary.spans as usize, spans.len());
    (spans, summary)
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_str(s: &SpanData, key: &str) -> Option<String> {
    attr(s, key).map(|v| v.as_str().into_owned())
}

fn attr_i64(s: &SpanData, key: &str) -> Option<i64> {
    match attr(s, key) {
        Some(Value::I64(v)) => Some(*v),
        _ => None,
    }
}

fn kind(s: &SpanData) -> String {
    attr_str(s, "trace.event.kind").expect("trace.event.kind on every span")
}

fn is_truncated(s: &SpanData) -> bool {
    matches!(attr(s, "go.trace.truncated"), Some(Value::Bool(true)))
}

/// Renders the spans of the given kinds as an indented tree: children
/// sorted by name, truncated spans marked with `~`.
fn tree(spans: &[SpanData], kinds: &[&str]) -> String {
    let keep: Vec<&SpanData> = spans
        .iter()
        .filter(|s| kinds.contains(&kind(s).as_str()))
        .collect();
    let mut children: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
    for s in &keep {
        children.entry(s.parent_span_id).or_default().push(s);
    }
    fn render(
        out: &mut String,
        children: &HashMap<SpanId, Vec<&SpanData>>,
        parent: SpanId,
        depth: usize,
    ) {
        let mut list = children.get(&parent).cloned().unwrap_or_default();
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.start_time.cmp(&b.start_time)));
        for s in list {
            out.push_str(&"  ".repeat(depth));
            out.push_str(&s.name);
            out.push_str(&format!(" [{}]", kind(s)));
            if is_truncated(s) {
                out.push('~');
            }
            out.push('\n');
            render(out, children, s.span_context.span_id(), depth + 1);
        }
    }
    let mut out = String::new();
    render(&mut out, &children, SpanId::INVALID, 0);
    out
}

/// Invariants of every mapping: no dangling parents, one trace per tree,
/// the required attributes, children within their parents' trace.
fn check_invariants(spans: &[SpanData], extra: &KeyValue) {
    let by_id: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    assert_eq!(by_id.len(), spans.len(), "span IDs are unique");
    for s in spans {
        assert!(
            s.start_time <= s.end_time,
            "{}: starts after it ends",
            s.name
        );
        assert!(
            attr_i64(s, "goroutine.id").is_some(),
            "{}: goroutine.id",
            s.name
        );
        let k = kind(s);
        assert!(["task", "region", "range"].contains(&k.as_str()), "{k}");
        assert!(
            s.attributes.contains(extra),
            "{}: extra attribute missing",
            s.name
        );
        if s.parent_span_id != SpanId::INVALID {
            let p = by_id
                .get(&s.parent_span_id)
                .unwrap_or_else(|| panic!("{}: parent not exported", s.name));
            assert_eq!(
                p.span_context.trace_id(),
                s.span_context.trace_id(),
                "{}: parent in another trace",
                s.name
            );
        }
    }
}

fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let all: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(all.len(), 1, "exactly one span named {name}");
    all[0]
}

/// Log events of a span: (category, message).
fn logs(s: &SpanData) -> Vec<(String, String)> {
    events(s)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("goroutine."))
        .collect()
}

/// All span events: (name, message or block reason).
fn events(s: &SpanData) -> Vec<(String, String)> {
    s.events
        .iter()
        .map(|e| {
            let msg = e
                .attributes
                .iter()
                .find(|kv| {
                    kv.key.as_str() == "go.log.message" || kv.key.as_str() == "go.block.reason"
                })
                .map(|kv| kv.value.as_str().into_owned())
                .unwrap_or_default();
            (e.name.to_string(), msg)
        })
        .collect()
}

fn opts(max_frames: usize, anchor: Option<SystemTime>) -> (SpanOptions, KeyValue) {
    let extra = KeyValue::new("dump.id", "test-dump");
    (
        SpanOptions {
            anchor_wall_time: anchor,
            max_frames,
            extra_attributes: vec![extra.clone()],
            ..SpanOptions::default()
        },
        extra,
    )
}

#[test]
fn nested_tasks_regions_and_logs() {
    let trace = generate("nested", None);
    let (o, extra) = opts(2, None);
    let (spans, summary) = spans_of(&trace, &o);
    check_invariants(&spans, &extra);
    assert_eq!(
        tree(&spans, &["task", "region"]),
        "root [task]\n  child [task]\n    sleepy [region]\n  outer [region]\n    inner [region]\n"
    );
    assert!(!summary.approximate_time);
    assert_eq!(summary.truncated, 0);
    assert_eq!(summary.logs, 4);
    assert_eq!(summary.tasks, 2);
    assert_eq!(summary.regions, 3);

    let root = find(&spans, "root");
    assert_eq!(
        attr_str(root, "code.function.name").as_deref(),
        Some("main.main")
    );
    assert!(
        attr_str(root, "code.file.path")
            .expect("code.file.path")
            .ends_with("traces/nested/main.go")
    );
    assert_eq!(attr_i64(root, "code.line.number"), Some(31));
    match attr(root, "code.stacktrace.frames") {
        Some(Value::Array(opentelemetry::Array::String(f))) => {
            assert!(!f.is_empty() && f.len() <= 2, "{f:?}");
            assert!(f[0].as_str().starts_with("main.main ("), "{f:?}");
        }
        other => panic!("frames: {other:?}"),
    }
    assert_eq!(attr_i64(root, "go.task.id"), Some(1));
    assert_eq!(
        logs(root),
        vec![
            ("phase".to_string(), "start".to_string()),
            ("phase".to_string(), "end".to_string())
        ]
    );
    let inner = find(&spans, "inner");
    assert_eq!(logs(inner), vec![("inner".to_string(), "n=42".to_string())]);
    assert_eq!(
        attr_str(inner, "code.function.name").as_deref(),
        Some("main.main.func1")
    );
    let child = find(&spans, "child");
    assert_eq!(logs(child), vec![("child".to_string(), "done".to_string())]);
    assert_eq!(attr_i64(child, "go.task.parent_id"), Some(1));
    // The child task's goroutine slept (2 ms) while the task was its
    // innermost: the time is on the task, by reason, within the task, and
    // not on the root task.
    let slept = attr_i64(child, "go.block.ns.sleep").expect("go.block.ns.sleep");
    let child_ns = child
        .end_time
        .duration_since(child.start_time)
        .expect("order")
        .as_nanos() as i64;
    assert!(
        (2_000_000..=child_ns).contains(&slept),
        "slept {slept} ns in a {child_ns} ns task"
    );
    let blocked = attr_i64(child, "go.block.ns").expect("go.block.ns");
    assert!(blocked >= slept && blocked <= child_ns, "{blocked}");
    assert_eq!(attr_i64(root, "go.block.ns.sleep"), None);

    // The sleep inside the region: a block with its reason, then the wake-up.
    let sleepy = find(&spans, "sleepy");
    let ev = events(sleepy);
    assert_eq!(
        ev,
        vec![
            ("goroutine.block".to_string(), "sleep".to_string()),
            ("goroutine.unblock".to_string(), "sleep".to_string())
        ]
    );
    assert!(
        sleepy
            .end_time
            .duration_since(sleepy.start_time)
            .expect("order")
            >= Duration::from_millis(2)
    );

    // Nesting in time, all on one goroutine, one trace.
    let g = attr_i64(root, "goroutine.id");
    for s in spans.iter().filter(|s| kind(s) != "range") {
        assert_eq!(attr_i64(s, "goroutine.id"), g, "{}", s.name);
        assert_eq!(s.span_context.trace_id(), root.span_context.trace_id());
        assert!(s.start_time >= root.start_time && s.end_time <= root.end_time);
    }
    // Wall clock from the clock snapshot: recent.
    let age = SystemTime::now()
        .duration_since(root.start_time)
        .expect("root starts in the past");
    assert!(age < Duration::from_secs(3600), "{age:?}");
    // Runtime ranges are there too, as internal spans (trace start STW).
    assert!(
        spans
            .iter()
            .any(|s| kind(s) == "range" && s.name.starts_with("stop-the-world ("))
    );
}

#[test]
fn tasks_across_goroutines() {
    let trace = generate("crossgoroutine", None);
    let (o, extra) = opts(16, None);
    let (spans, _) = spans_of(&trace, &o);
    check_invariants(&spans, &extra);
    assert_eq!(
        tree(&spans, &["task", "region"]),
        "background [region]\nrequest [task]\n  async [task]\n  dispatch [region]\n  work [task]\n    compute [region]\n"
    );
    // The task begun on main and ended on the worker is one span that says so.
    let async_task = find(&spans, "async");
    let request = find(&spans, "request");
    let work = find(&spans, "work");
    assert_eq!(
        attr_i64(async_task, "goroutine.id"),
        attr_i64(request, "goroutine.id")
    );
    assert_eq!(
        attr_i64(async_task, "go.task.end.goroutine.id"),
        attr_i64(work, "goroutine.id")
    );
    assert_ne!(
        attr_i64(work, "goroutine.id"),
        attr_i64(request, "goroutine.id")
    );
    assert_eq!(
        logs(request),
        vec![("request".to_string(), "accepted".to_string())]
    );
    assert_eq!(
        logs(find(&spans, "compute")),
        vec![("compute".to_string(), "step".to_string())]
    );
    // The background region sleeps: a block with its reason and the wake-up.
    let bg = find(&spans, "background");
    assert_ne!(bg.span_context.trace_id(), request.span_context.trace_id());
    let ev = events(bg);
    assert!(
        ev.iter()
            .any(|(n, r)| n == "goroutine.block" && r == "sleep")
            && ev
                .iter()
                .any(|(n, r)| n == "goroutine.unblock" && r == "sleep"),
        "{ev:?}"
    );
}

#[test]
fn old_traces_get_approximate_anchored_times() {
    let trace = generate("nested", Some("go1.22.12"));
    let anchor = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let (o, extra) = opts(4, Some(anchor));
    let (spans, summary) = spans_of(&trace, &o);
    check_invariants(&spans, &extra);
    assert!(summary.approximate_time);
    assert_eq!(
        tree(&spans, &["task", "region"]),
        "root [task]\n  child [task]\n    sleepy [region]\n  outer [region]\n    inner [region]\n"
    );
    for s in &spans {
        assert!(
            matches!(
                attr(s, "go.trace.time.approximate"),
                Some(Value::Bool(true))
            ),
            "{}",
            s.name
        );
        assert!(s.start_time >= anchor && s.end_time < anchor + Duration::from_secs(60));
    }
}

#[test]
fn flight_recorder_dump_keeps_truncated_spans() {
    // Go 1.26 (end-of-generation markers) and Go 1.25 (the first with
    // runtime/trace.FlightRecorder).
    for toolchain in [None, Some("go1.25.5")] {
        check_flight_recorder_dump(&generate("flightrecorder", toolchain));
    }
}

fn check_flight_recorder_dump(trace: &[u8]) {
    let (o, extra) = opts(8, None);
    let (spans, summary) = spans_of(trace, &o);
    check_invariants(&spans, &extra);
    assert!(
        !summary.approximate_time,
        "Go 1.25+ traces have clock snapshots"
    );
    assert!(summary.tasks > 10, "{summary:?}");
    // The held requests were in flight during the dump: their task and
    // handler region are exported, marked truncated at the end.
    let open_at_end: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.name == "handler"
                && is_truncated(s)
                && matches!(
                    attr_str(s, "go.trace.truncated.side").as_deref(),
                    Some("end" | "both")
                )
        })
        .collect();
    assert!(
        open_at_end.len() >= 3,
        "{} held handlers",
        open_at_end.len()
    );
    for h in &open_at_end {
        let parent = spans
            .iter()
            .find(|p| p.span_context.span_id() == h.parent_span_id)
            .expect("handler has a parent");
        assert_eq!(parent.name, "http.request");
        assert!(is_truncated(parent));
    }
    // Complete requests: task -> handler -> render, the log on the task.
    let complete = spans
        .iter()
        .filter(|s| s.name == "http.request" && !is_truncated(s))
        .find(|t| {
            spans.iter().any(|h| {
                h.name == "handler"
                    && h.parent_span_id == t.span_context.span_id()
                    && spans
                        .iter()
                        .any(|r| r.name == "render" && r.parent_span_id == h.span_context.span_id())
            })
        })
        .expect("a complete request");
    assert_eq!(
        logs(complete),
        vec![("http.path".to_string(), "/work".to_string())]
    );
    assert!(summary.truncated >= 3);
}

#[test]
fn runtime_ranges_are_internal_spans() {
    let trace = generate("manygoroutines", None);
    let (o, extra) = opts(4, None);
    let (spans, summary) = spans_of(&trace, &o);
    check_invariants(&spans, &extra);
    assert!(summary.ranges > 0);
    let gc = spans
        .iter()
        .find(|s| s.name == "GC concurrent mark phase")
        .expect("runtime.GC() ran a GC cycle");
    assert_eq!(kind(gc), "range");
    assert_eq!(gc.span_kind, opentelemetry::trace::SpanKind::Internal);
    assert!(spans.iter().any(|s| s.name.starts_with("stop-the-world (")));
    // Sweeps (the fixture allocates right after a GC): one span per sweep
    // range the decoder reports, each on its proc, with its byte counts.
    let sweeps: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "GC incremental sweep")
        .collect();
    let mut dump = Vec::new();
    gotrace::dump_events(&trace[..], &mut dump).expect("dump");
    let sweep_ends = String::from_utf8(dump)
        .expect("utf-8")
        .lines()
        .filter(|l| l.contains(" RangeEnd Name=\"GC incremental sweep\""))
        .count();
    assert!(sweep_ends > 0, "no sweeps in the trace");
    assert_eq!(
        sweeps.iter().filter(|s| !is_truncated(s)).count(),
        sweep_ends
    );
    for s in &sweeps {
        assert!(attr_i64(s, "go.proc.id").is_some());
        assert!(is_truncated(s) || attr_i64(s, "go.gc.bytes_swept").is_some());
    }
    // 2000 goroutines, every tenth with a task and all with a region.
    assert_eq!(spans.iter().filter(|s| s.name == "handle").count(), 2000);
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name.starts_with("worker-"))
            .count(),
        200
    );
}

#[test]
fn corrupt_input_is_an_error_not_a_panic() {
    let trace = generate("nested", None);
    let (o, _) = opts(4, None);
    for cut in [20, trace.len() / 2, trace.len() - 3] {
        let mut n = 0;
        let err = gotrace::trace_to_spans(&trace[..cut], &o, &mut |b| n += b.len())
            .expect_err("truncated trace");
        assert!(err.offset().is_some(), "{err}");
    }
    let err = gotrace::trace_to_spans(&b"go 1.21 trace\0\0\0"[..], &o, &mut |_| {})
        .expect_err("v1 trace");
    assert!(matches!(
        err,
        gotrace::DecodeError::PreGo122 { version: 21 }
    ));
}
