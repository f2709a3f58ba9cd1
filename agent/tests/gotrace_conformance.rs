//! Conformance of the Go execution-trace decoder with Go's own reader.
//!
//! The reference is Go's parser: `agent/tests/fixtures/tracedump` reads a
//! trace with `golang.org/x/exp/trace` (a copy of the standard library's
//! `internal/trace`) and prints the events in the same stable text form as
//! `gotrace::dump_events`. Every test compares the two outputs line by line
//! on the same bytes: Go's own test traces (`src/internal/trace/testdata`,
//! including the ones that must fail), traces that small Go programs under
//! `agent/tests/fixtures/traces/` write (with the installed Go and with older
//! toolchains fetched through the module proxy, one per wire version), Go's
//! fuzz corpus, and corrupted variants.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use agent::gotrace::{self, DecodeError};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn goroot() -> PathBuf {
    let out = Command::new("go")
        .args(["env", "GOROOT"])
        .output()
        .expect("running `go env GOROOT`");
    assert!(out.status.success(), "go env GOROOT failed");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 GOROOT").trim())
}

fn work_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Builds the reference dumper once per test binary.
fn tracedump() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = work_dir().join("tracedump");
        let st = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(fixtures_dir().join("tracedump"))
            .status()
            .expect("running go build for tracedump");
        assert!(st.success(), "building tracedump failed");
        bin
    })
}

/// Go's reader's output: the event lines, and the error if it failed.
struct GoDump {
    lines: Vec<String>,
    error: Option<String>,
    /// Go's reader panicked (it does on some corrupt inputs).
    panicked: bool,
}

fn go_dump(trace: &[u8], name: &str) -> GoDump {
    let path = work_dir().join(format!("{name}.bin"));
    std::fs::write(&path, trace).expect("writing trace");
    let out = Command::new(tracedump())
        .arg(&path)
        .output()
        .expect("running tracedump");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (events, error) = match text.find("ERROR: ") {
        Some(i) => (&text[..i], Some(text[i + 7..].trim_end().to_string())),
        None => (&text[..], None),
    };
    let code = out.status.code();
    assert!(
        matches!(code, Some(0..=2)),
        "tracedump on {name} died: {:?}",
        out.status
    );
    if code == Some(1) {
        assert!(
            error.is_some(),
            "tracedump failed without an error line on {name}"
        );
    }
    GoDump {
        lines: events.lines().map(str::to_string).collect(),
        error,
        panicked: code == Some(2),
    }
}

/// Our output: the event lines, and the error if decoding failed.
fn our_dump(trace: &[u8]) -> (Vec<String>, Result<gotrace::DumpSummary, DecodeError>) {
    let mut out = Vec::new();
    let res = gotrace::dump_events(trace, &mut out);
    let text = String::from_utf8(out).expect("dump is UTF-8");
    (text.lines().map(str::to_string).collect(), res)
}

/// Our output in file mode (`Reader::from_file`, batches read when needed),
/// on the file `go_dump` wrote for `name`.
fn our_file_dump(name: &str) -> (Vec<String>, Result<gotrace::DumpSummary, DecodeError>) {
    let path = work_dir().join(format!("{name}.bin"));
    let file = std::fs::File::open(&path).expect("opening trace file");
    let mut out = Vec::new();
    let res = gotrace::Reader::from_file(file).and_then(|r| gotrace::dump_reader(r, &mut out));
    let text = String::from_utf8(out).expect("dump is UTF-8");
    (text.lines().map(str::to_string).collect(), res)
}

fn first_difference(a: &[String], b: &[String]) -> String {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            return format!("line {}:\n ours: {x}\n   go: {y}", i + 1);
        }
    }
    format!(
        "lengths differ: ours {} lines, go {} lines",
        a.len(),
        b.len()
    )
}

/// Asserts our event stream equals Go's and both succeed.
fn assert_same_as_go(trace: &[u8], name: &str) -> usize {
    let go = go_dump(trace, name);
    let (ours, res) = our_dump(trace);
    assert!(!go.panicked, "Go's reader panicked on {name}");
    assert_eq!(go.error, None, "Go's reader failed on {name}");
    let summary = res.unwrap_or_else(|e| panic!("our decoder failed on {name}: {e}"));
    assert!(
        ours == go.lines,
        "{name}: event streams differ: {}",
        first_difference(&ours, &go.lines)
    );
    assert_eq!(summary.events as usize, ours.len());
    let (from_file, res) = our_file_dump(name);
    res.unwrap_or_else(|e| panic!("file mode failed on {name}: {e}"));
    assert!(
        from_file == ours,
        "{name}: file mode differs: {}",
        first_difference(&from_file, &ours)
    );
    ours.len()
}

/// Go's `.test` expectations are unanchored regular expressions; those in
/// Go's test data are literal text between optional `.*`.
fn pattern_matches(pattern: &str, msg: &str) -> bool {
    let p = pattern.trim_start_matches(".*").trim_end_matches(".*");
    msg.contains(p)
}

#[test]
fn go_testdata_traces_match_go_reader() {
    let dir = goroot().join("src/internal/trace/testdata/tests");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("reading Go's trace test data")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "expected Go's trace tests in {dir:?}");
    let (mut ok, mut failing) = (0, 0);
    for path in &names {
        let name = path.file_stem().and_then(|s| s.to_str()).expect("name");
        let text = std::fs::read_to_string(path).expect("reading test");
        let tc = gotrace::text::parse_test_file(&text)
            .unwrap_or_else(|e| panic!("converting {name}: {e}"));
        match &tc.expect_failure {
            None => {
                assert_same_as_go(&tc.trace, name);
                ok += 1;
            }
            Some(pattern) => {
                let go = go_dump(&tc.trace, name);
                let (ours, res) = our_dump(&tc.trace);
                let go_err = go.error.unwrap_or_else(|| panic!("Go accepted {name}"));
                assert!(
                    pattern_matches(pattern, &go_err),
                    "{name}: Go said {go_err}"
                );
                let err = res.expect_err(&format!("{name} must fail"));
                assert!(
                    pattern_matches(pattern, &err.to_string()),
                    "{name}: our error {err} does not match {pattern:?}"
                );
                assert!(err.offset().is_some(), "{name}: error without offset");
                assert!(
                    ours == go.lines,
                    "{name}: events before the error differ: {}",
                    first_difference(&ours, &go.lines)
                );
                failing += 1;
            }
        }
    }
    assert_eq!(ok + failing, names.len());
    assert!(failing >= 2, "Go's test data has failing cases");
}

#[test]
fn pre_go122_traces_are_refused() {
    let dir = goroot().join("src/internal/trace/internal/tracev1/testdata");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("reading v1 test data") {
        let path = e.expect("dir entry").path();
        let data = std::fs::read(&path).expect("reading v1 trace");
        match gotrace::Reader::new(&data[..]) {
            Err(DecodeError::PreGo122 { version }) => {
                assert!((11..=21).contains(&version), "{path:?}: version {version}");
                let msg = DecodeError::PreGo122 { version }.to_string();
                assert!(msg.contains("pre-1.22"), "{msg}");
            }
            other => panic!("{path:?}: expected PreGo122, got {other:?}"),
        }
        n += 1;
    }
    assert!(n >= 10, "expected Go's v1 test traces");
}

#[test]
fn unknown_versions_and_garbage_are_refused() {
    assert!(matches!(
        gotrace::Reader::new(&b"go 1.27 trace\0\0\0"[..]),
        Err(DecodeError::UnsupportedVersion { version: 27 })
    ));
    assert!(matches!(
        gotrace::Reader::new(&b"not a trace at all"[..]),
        Err(DecodeError::NotATrace)
    ));
    assert!(matches!(
        gotrace::Reader::new(&b""[..]),
        Err(DecodeError::NotATrace)
    ));
}

/// Runs a fixture program with a toolchain (`None`: the installed Go) and
/// returns the trace it wrote.
fn generate(program: &str, toolchain: Option<&str>) -> Vec<u8> {
    generate_with(program, toolchain, None)
}

/// Like [`generate`], with an optional `GODEBUG` setting.
fn generate_with(program: &str, toolchain: Option<&str>, godebug: Option<&str>) -> Vec<u8> {
    let path = support::fixture::generate_trace(work_dir(), program, toolchain, godebug);
    std::fs::read(path).expect("reading generated trace")
}

fn check_fixtures(toolchain: Option<&str>, wire: &str, programs: &[&str]) {
    for program in programs {
        let trace = generate(program, toolchain);
        assert!(
            trace.starts_with(format!("go 1.{wire} trace").as_bytes()),
            "{program}: unexpected header {:?}",
            String::from_utf8_lossy(&trace[..16.min(trace.len())])
        );
        let n = assert_same_as_go(&trace, &format!("{program}-{wire}"));
        assert!(n > 10, "{program}: only {n} events");
        // The kinds of events each program is about must be there.
        let (lines, _) = our_dump(&trace);
        let has = |kind: &str| lines.iter().any(|l| l.contains(kind));
        match *program {
            "nested" | "crossgoroutine" => {
                assert!(has(" TaskBegin ") && has(" RegionBegin ") && has(" Log "))
            }
            "cpusamples" => assert!(has(" StackSample "), "no CPU samples"),
            "manygoroutines" => assert!(lines.len() > 10_000, "{}", lines.len()),
            "flightrecorder" => assert!(has(" TaskBegin ") && has(" TaskEnd ")),
            _ => {}
        }
    }
}

const PROGRAMS: &[&str] = &["nested", "crossgoroutine", "cpusamples", "manygoroutines"];

#[test]
fn generated_traces_match_go_reader_installed_go() {
    let mut programs = PROGRAMS.to_vec();
    programs.push("flightrecorder");
    check_fixtures(None, "26", &programs);
}

#[test]
fn generated_traces_match_go_reader_go1_22_wire_format() {
    check_fixtures(Some("go1.22.12"), "22", PROGRAMS);
}

#[test]
fn generated_traces_match_go_reader_go1_23_wire_format() {
    check_fixtures(Some("go1.23.12"), "23", PROGRAMS);
}

#[test]
fn generated_traces_match_go_reader_go1_25_wire_format() {
    let mut programs = PROGRAMS.to_vec();
    programs.push("flightrecorder");
    check_fixtures(Some("go1.25.5"), "25", &programs);
}

/// The alloc/free experiment (`GODEBUG=traceallocfree=1`, Go 1.23+):
/// experimental batches in the Sync events and experimental events.
#[test]
fn experimental_events_match_go_reader() {
    for (tc, wire) in [(None, "26"), (Some("go1.23.12"), "23")] {
        let trace = generate_with("nested", tc, Some("traceallocfree=1"));
        assert!(trace.starts_with(format!("go 1.{wire} trace").as_bytes()));
        assert_same_as_go(&trace, &format!("allocfree-{wire}"));
        let (lines, _) = our_dump(&trace);
        assert!(lines.iter().any(|l| l.contains(" ExpBatches=[AllocFree:")));
        assert!(lines.iter().any(|l| l.contains(" Experimental Name=")));
    }
}

/// Decodes Go's own fuzz corpus for its trace reader: same events, and an
/// error exactly where Go fails.
#[test]
fn go_fuzz_corpus_matches_go_reader() {
    let dir = goroot().join("src/internal/trace/testdata/fuzz/FuzzReader");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("reading Go's fuzz corpus") {
        let path = e.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("reading corpus file");
        let data = go_fuzz_bytes(&text).unwrap_or_else(|| panic!("parsing {path:?}"));
        let name = format!(
            "fuzz-{}",
            path.file_name().and_then(|s| s.to_str()).unwrap_or("x")
        );
        compare_outcomes(&data, &name);
        n += 1;
    }
    assert!(n >= 10);
}

/// Parses Go's `go test fuzz v1` corpus file holding one `[]byte("...")`.
fn go_fuzz_bytes(text: &str) -> Option<Vec<u8>> {
    let line = text.lines().nth(1)?;
    let lit = line.strip_prefix("[]byte(")?.strip_suffix(')')?;
    gotrace::text::go_unquote(lit)
}

/// Compares outcomes on arbitrary (possibly corrupt) input: the same events
/// until the end or the error, and an error exactly when Go fails. One
/// deliberate divergence: Go's reader treats a bare `io.EOF` from a varint
/// cut off at the end of a batch as the clean end of the trace; we report it.
/// Returns whether the outcomes were compared (not for pre-1.22 traces, nor
/// where Go's reader panics).
fn compare_outcomes(data: &[u8], name: &str) -> bool {
    if let (_, Err(DecodeError::PreGo122 { .. })) = our_dump(data) {
        // Go converts v1 traces; we refuse them by design.
        return false;
    }
    let go = go_dump(data, name);
    if go.panicked {
        // Go's reader panics on some corrupt inputs; ours must just not.
        let _ = our_dump(data);
        return false;
    }
    let (ours, res) = our_dump(data);
    assert!(
        ours == go.lines,
        "{name}: events differ: {}",
        first_difference(&ours, &go.lines)
    );
    match (&res, &go.error) {
        (Ok(_), None) | (Err(_), Some(_)) => {}
        (Err(DecodeError::Invalid { reason, .. }), None) if reason == "unexpected EOF" => {}
        (Err(e), None) => panic!("{name}: Go succeeded, we failed: {e}"),
        (Ok(_), Some(e)) => panic!("{name}: Go failed ({e}), we succeeded"),
    }
    if let Err(e) = &res {
        assert!(
            e.offset().is_some_and(|o| o <= data.len() as u64),
            "{name}: error {e} has no offset within the input"
        );
    }
    let (from_file, file_res) = our_file_dump(name);
    assert!(
        from_file == ours && file_res.is_ok() == res.is_ok(),
        "{name}: file mode differs: {}",
        first_difference(&from_file, &ours)
    );
    true
}

/// Corrupts a real trace in many deterministic ways (byte flips, bit
/// flips, deletions, truncations) and compares outcomes with Go's reader.
#[test]
fn corrupted_traces_match_go_reader() {
    let mut sources = vec![generate("nested", None)];
    let text = std::fs::read_to_string(
        goroot().join("src/internal/trace/testdata/tests/go122-annotations.test"),
    )
    .expect("reading go122-annotations.test");
    sources.push(
        gotrace::text::parse_test_file(&text)
            .expect("converting")
            .trace,
    );
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let (mut compared, mut total) = (0, 0);
    for (si, src) in sources.iter().enumerate() {
        for i in 0..120 {
            let mut b = src.clone();
            if i % 10 == 0 {
                b.truncate(16 + next(b.len() - 16));
            } else {
                for _ in 0..1 + next(3) {
                    let pos = 16 + next(b.len() - 16);
                    match next(3) {
                        0 => b[pos] = next(256) as u8,
                        1 => b[pos] ^= 1 << next(8),
                        _ => {
                            let end = (pos + 1 + next(8)).min(b.len());
                            b.drain(pos..end);
                        }
                    }
                }
            }
            total += 1;
            if compare_outcomes(&b, &format!("mut-{si}-{i}")) {
                compared += 1;
            }
        }
    }
    assert!(
        compared * 10 >= total * 9,
        "compared only {compared} of {total}"
    );
}

/// A truncated trace fails with the offset of the truncation point or
/// before it, never a panic.
#[test]
fn truncated_traces_fail_with_offsets() {
    let trace = generate("crossgoroutine", None);
    let mut failures = 0;
    for cut in (17..trace.len()).step_by(97) {
        let (_, res) = our_dump(&trace[..cut]);
        if let Err(e) = res {
            let off = e.offset().expect("offset");
            assert!(off <= cut as u64, "offset {off} past the cut {cut}");
            failures += 1;
        }
    }
    assert!(failures > 0);
}

// ---------------------------------------------------------------------------
// Span mapping against Go's parser: per task, the logs and times we export.
// ---------------------------------------------------------------------------

/// Anchor for traces without clock snapshots (the helper then prints times
/// relative to the first event).
const ANCHOR_SECS: u64 = 1_700_000_000;

/// Go's view (`tracedump -tasks`): the window line, then task and region
/// lines, sorted.
fn go_tasks(trace: &[u8], name: &str) -> (String, Vec<String>) {
    let path = work_dir().join(format!("{name}.tasks.bin"));
    std::fs::write(&path, trace).expect("writing trace");
    let out = Command::new(tracedump())
        .arg("-tasks")
        .arg(&path)
        .output()
        .expect("running tracedump -tasks");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(out.status.success(), "tracedump -tasks on {name}: {text}");
    let mut lines = text.lines().map(str::to_string);
    let window = lines.next().expect("window line");
    let mut rest: Vec<String> = lines.collect();
    rest.sort();
    (window, rest)
}

fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// Our spans in the same text form. A truncated side must sit exactly at
/// the window's edge; it prints as `-`.
fn our_tasks(trace: &[u8], name: &str, window: (i64, i64), offset: i64) -> Vec<String> {
    use opentelemetry::Value;
    use opentelemetry_sdk::trace::SpanData;
    let opts = gotrace::SpanOptions {
        anchor_wall_time: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(ANCHOR_SECS)),
        max_frames: 0,
        extra_attributes: Vec::new(),
        ..gotrace::SpanOptions::default()
    };
    let mut spans: Vec<SpanData> = Vec::new();
    gotrace::trace_to_spans(trace, &opts, &mut |batch| {
        spans.extend(
            batch
                .iter()
                .map(|s| s.to_span_data().expect("a valid Span message")),
        );
    })
    .unwrap_or_else(|e| panic!("{name}: spans: {e}"));
    let ns = |t: std::time::SystemTime| -> i64 {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_nanos() as i64
            - offset
    };
    let attr = |s: &SpanData, k: &str| -> Option<Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.clone())
    };
    let int = |v: Option<Value>| match v {
        Some(Value::I64(i)) => Some(i),
        _ => None,
    };
    let side = |s: &SpanData| attr(s, "go.trace.truncated.side").map(|v| v.as_str().into_owned());
    let times = |s: &SpanData| -> (String, String) {
        let sd = side(s);
        let begin_cut = matches!(sd.as_deref(), Some("begin" | "both"));
        let end_cut = matches!(sd.as_deref(), Some("end" | "both"));
        let (b, e) = (ns(s.start_time), ns(s.end_time));
        if begin_cut {
            assert_eq!(b, window.0, "{name}: {}: cut begin off the window", s.name);
        }
        if end_cut {
            assert_eq!(e, window.1, "{name}: {}: cut end off the window", s.name);
        }
        (
            if begin_cut { "-".into() } else { b.to_string() },
            if end_cut { "-".into() } else { e.to_string() },
        )
    };
    // Logs per task (the event's `go.task.id`), which must be on the task's
    // span or on one of its regions.
    let mut logs: std::collections::BTreeMap<i64, Vec<(i64, String)>> = Default::default();
    for s in &spans {
        let kind = attr(s, "trace.event.kind").map(|v| v.as_str().into_owned());
        if !matches!(kind.as_deref(), Some("task" | "region")) {
            continue;
        }
        let Some(task) = int(attr(s, "go.task.id")) else {
            continue;
        };
        for e in s.events.iter() {
            let get = |k: &str| {
                e.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == k)
                    .map(|kv| kv.value.clone())
            };
            let Some(cat) = get("go.log.category") else {
                continue;
            };
            let msg = get("go.log.message").expect("message");
            let g = int(get("goroutine.id")).expect("goroutine.id");
            let Some(log_task) = int(get("go.task.id")) else {
                continue; // the background task's: not a task
            };
            assert_eq!(log_task, task, "{name}: a log on another task's span");
            let t = ns(e.timestamp);
            logs.entry(task).or_default().push((
                t,
                format!(
                    "{t} {g} {} {}",
                    quoted(&cat.as_str()),
                    quoted(&msg.as_str())
                ),
            ));
        }
    }
    let mut out = Vec::new();
    for s in &spans {
        let kind = attr(s, "trace.event.kind").map(|v| v.as_str().into_owned());
        let task = int(attr(s, "go.task.id"));
        match kind.as_deref() {
            Some("task") => {
                let id = task.expect("task id");
                let parent = int(attr(s, "go.task.parent_id")).map_or(u64::MAX, |p| p as u64);
                let typ = if s.name == format!("task {id}") {
                    ""
                } else {
                    &s.name
                };
                let (b, e) = times(s);
                let mut l = logs.remove(&id).unwrap_or_default();
                l.sort_by_key(|(t, _)| *t);
                let l: Vec<String> = l.into_iter().map(|(_, s)| s).collect();
                out.push(format!(
                    "Task ID={id} Parent={parent} Type={} Begin={b} End={e} Logs=[{}]",
                    quoted(typ),
                    l.join("; ")
                ));
            }
            Some("region") => {
                let g = int(attr(s, "goroutine.id")).expect("goroutine.id");
                let (b, e) = times(s);
                out.push(format!(
                    "Region G={g} Task={} Type={} Begin={b} End={e}",
                    task.expect("region task"),
                    quoted(&s.name)
                ));
            }
            _ => {}
        }
    }
    assert!(
        logs.is_empty(),
        "{name}: logs on spans of tasks not exported: {logs:?}"
    );
    out.sort();
    out
}

/// Compares, task by task and region by region, what we export with what
/// Go's parser says. Returns (tasks, logs) compared, and Go's lines.
fn assert_tasks_as_go(trace: &[u8], name: &str) -> (usize, usize, Vec<String>) {
    let (window, go) = go_tasks(trace, name);
    let field = |k: &str| -> i64 {
        window
            .split(' ')
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {k} in {window}"))
    };
    let wall = window.ends_with("Wall=true");
    let offset = if wall {
        0
    } else {
        (ANCHOR_SECS * 1_000_000_000) as i64
    };
    let ours = our_tasks(trace, name, (field("Start="), field("End=")), offset);
    let diff: Vec<String> = {
        let mut d = Vec::new();
        for l in &go {
            if !ours.contains(l) {
                d.push(format!("  go only: {l}"));
            }
        }
        for l in &ours {
            if !go.contains(l) {
                d.push(format!("ours only: {l}"));
            }
        }
        d
    };
    assert!(
        ours == go,
        "{name}: tasks and regions differ from Go's parser:\n{}",
        diff.join("\n")
    );
    let tasks = go.iter().filter(|l| l.starts_with("Task ")).count();
    let logs = go
        .iter()
        .filter(|l| l.starts_with("Task "))
        .map(|l| l.matches("\" \"").count())
        .sum();
    (tasks, logs, go)
}

#[test]
fn go_testdata_tasks_and_logs_match_go_parser() {
    let dir = goroot().join("src/internal/trace/testdata/tests");
    let (mut tasks, mut logs) = (0, 0);
    for e in std::fs::read_dir(&dir).expect("reading Go's trace test data") {
        let path = e.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "test") {
            continue;
        }
        let name = path.file_stem().and_then(|s| s.to_str()).expect("name");
        let text = std::fs::read_to_string(&path).expect("reading test");
        let tc = gotrace::text::parse_test_file(&text).expect("converting");
        if tc.expect_failure.is_some() {
            continue;
        }
        let (t, l, _) = assert_tasks_as_go(&tc.trace, &format!("tasks-{name}"));
        tasks += t;
        logs += l;
    }
    assert!(tasks >= 10 && logs >= 5, "{tasks} tasks, {logs} logs");
}

#[test]
fn generated_tasks_and_logs_match_go_parser() {
    for (program, tc) in [
        ("nested", None),
        ("crossgoroutine", None),
        ("manygoroutines", None),
        ("flightrecorder", None),
        ("flightrecorder", Some("go1.25.5")),
        ("nested", Some("go1.22.12")),
        ("tasklogs", None),
        ("tasklogs", Some("go1.22.12")),
        ("tasklogs", Some("go1.25.5")),
        ("windowcut", None),
        ("windowcut", Some("go1.25.5")),
    ] {
        let trace = generate(program, tc);
        let (t, _, go) = assert_tasks_as_go(&trace, &format!("tasks-{program}-{tc:?}"));
        assert!(t > 0, "{program}: no tasks");
        // The hard cases each program is about must be there.
        let has = |pred: &dyn Fn(&str) -> bool| go.iter().any(|l| pred(l));
        let cut_begin_with_logs =
            |l: &str| l.starts_with("Task ") && l.contains(" Begin=- ") && !l.ends_with("Logs=[]");
        match program {
            "tasklogs" => {
                assert!(has(&cut_begin_with_logs), "{program}");
                // Known only as a parent, and only by a log.
                assert!(has(&|l| l.contains(" Begin=- End=- Logs=[]")), "{program}");
                assert!(has(
                    &|l| l.contains(" Begin=- End=- Logs=[") && l.contains("the only mention")
                ));
                // Logs after the end, in all 200 rounds.
                let late = go
                    .iter()
                    .filter(|l| l.contains("\"race\" Begin=") && l.contains("\"after the end\""))
                    .count();
                assert_eq!(late, 200, "{program}");
            }
            "windowcut" => {
                assert!(has(&cut_begin_with_logs), "{program}");
                assert!(has(&|l| l.contains("just before the end")), "{program}");
                assert!(
                    has(&|l| l.starts_with("Region ") && l.contains(" Begin=- ")),
                    "{program}"
                );
            }
            _ => {}
        }
    }
}
