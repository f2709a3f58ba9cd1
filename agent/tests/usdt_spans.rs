//! End to end, as root: the USDT fixture (Go + cgo with `<sys/sdt.h>`, no
//! net/http) and a plain C program, the agent attached with `--pid` as a
//! separate process, spans received by an OTLP/gRPC receiver. The fixture
//! emits its events on command, after the agent has attached, and the exact
//! spans are asserted: the seed's four nested pairs from the built-in
//! mappings, a custom TOML mapping, an unended start exported as expired, an
//! end without a start counted, and the semaphore-guarded probe firing only
//! while the agent holds its semaphore.

mod support;
use support::agent::AGENT_EXIT;
mod usdt_support;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::{
    agent::{Agent, command},
    otlp::{FlatSpan, Receiver},
};
use usdt_support::{Running, fixture};

/// One agent at a time: two cores, and each test counts its own spans.
static SERIAL: Mutex<()> = Mutex::new(());

/// The custom mapping: a job pair with an integer id, the guarded probe
/// paired with an unguarded end, and a short timeout for unended starts.
const CUSTOM_TOML: &str = r#"
open_span_timeout_ms = 300

[[span]]
name = "job {kind}"
kind = "consumer"
start = "fixture:job_begin"
end = "fixture:job_end"
request_id = "id"
status = { arg = "rc", error_if = "nonzero" }
[span.start_args]
id = { index = 0, type = "u64", attribute = "job.id" }
kind = { index = 1, type = "str", cap = 32, attribute = "job.kind" }
[span.end_args]
id = { index = 0, type = "u64" }
rc = { index = 1, type = "i64", attribute = "job.rc" }

[[span]]
name = "guarded"
start = "fixture:guarded"
end = "fixture:guarded_end"
request_id = "v"
[span.start_args]
v = { index = 0, type = "i64", attribute = "guarded.value" }
[span.end_args]
v = { index = 0, type = "i64" }
"#;

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("usdt-spans");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a temp file");
    path
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn by_name<'a>(spans: &'a [FlatSpan], name: &str) -> &'a FlatSpan {
    let found: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.span.name == name && s.attr("agent.span.incomplete").is_none())
        .collect();
    assert_eq!(found.len(), 1, "exactly one span {name:?}: {spans:#?}");
    found[0]
}

/// The span's attributes without the thread id (asserted separately).
fn attrs(span: &FlatSpan) -> BTreeMap<String, String> {
    span.attributes
        .iter()
        .filter(|(k, _)| k.as_str() != "thread.id")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn summary(path: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .expect("summary file")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("number")))
        .collect()
}

/// `agent --pid PID`, exporting to `receiver` over gRPC, its summary in
/// `summary`.
fn agent_command(pid: u32, receiver: &Receiver, summary: &Path) -> Command {
    let mut cmd = command();
    cmd.args(["--pid", &pid.to_string()])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ])
        .arg("--summary-file")
        .arg(summary);
    cmd
}

#[test]
fn seed_pairs_custom_mapping_expiry_and_semaphore() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture("spans");
    let mut target = Running::start(fx);
    let pid = target.pid;

    // Before the agent: the guarded probe's semaphore is off, so the probe
    // does not fire.
    assert_eq!(target.command("gpair"), "gpair sema=0");

    let receiver = Receiver::grpc();
    let config = write_temp("custom.toml", CUSTOM_TOML);
    let summary_path = write_temp("summary-fixture.txt", "");
    let mut cmd = agent_command(pid, &receiver, &summary_path);
    cmd.arg("--usdt-config").arg(&config);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let usdt_line = agent.wait_for_stderr("USDT:", Duration::from_secs(1));
    assert!(
        usdt_line.contains("USDT: 12 probes at 12 sites (1 semaphore-guarded)"),
        "{usdt_line}"
    );
    for name in [
        "fixture:guarded",
        "fixture:job_begin",
        "fixture:request_end",
    ] {
        assert!(usdt_line.contains(name), "{usdt_line}");
    }
    let attached = agent.wait_for_stderr("attached to PID", Duration::from_secs(1));
    assert!(
        attached.contains("0 net/http probes, 12 USDT probes"),
        "{attached}"
    );
    assert_eq!(
        agent
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("attached to PID"))
            .count(),
        1
    );
    assert_eq!(target.semaphore(), 1, "semaphore held while attached");

    assert_eq!(target.command("seq"), "seq");
    assert_eq!(target.command("job"), "job");
    assert_eq!(target.command("gpair"), "gpair sema=1");
    assert_eq!(target.command("start orphan-1"), "start orphan-1");
    assert_eq!(target.command("end ghost-1"), "end ghost-1");

    // 4 seed spans, the job, the guarded pair, and the orphan once expired
    // (300 ms, checked every second).
    let spans = receiver.wait_for_spans(7, Duration::from_secs(10));
    agent.signal(Signal::SIGINT);
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    assert_eq!(target.semaphore(), 0, "semaphore restored after detaching");
    assert_eq!(
        target.command("gpair"),
        "gpair sema=0",
        "the guarded probe is off again"
    );

    let spans_after = receiver.spans();
    assert_eq!(spans_after.len(), 7, "{spans_after:#?}");
    assert_eq!(spans.len(), 7);

    // The seed's sequence: Request > HTTP > net.Dial > TLS Handshake, one
    // trace.
    let request = by_name(&spans, "Request");
    let http = by_name(&spans, "GET");
    let dial = by_name(&spans, "net.Dial");
    let tls = by_name(&spans, "TLS Handshake");
    assert!(request.span.parent_span_id.is_empty(), "Request is a root");
    assert_eq!(hex(&http.span.parent_span_id), hex(&request.span.span_id));
    assert_eq!(hex(&dial.span.parent_span_id), hex(&http.span.span_id));
    assert_eq!(hex(&tls.span.parent_span_id), hex(&dial.span.span_id));
    for s in [http, dial, tls] {
        assert_eq!(s.span.trace_id, request.span.trace_id);
    }
    assert_eq!(request.span.kind, SpanKind::Internal as i32);
    assert_eq!(http.span.kind, SpanKind::Server as i32);
    assert_eq!(dial.span.kind, SpanKind::Client as i32);
    assert_eq!(tls.span.kind, SpanKind::Internal as i32);
    assert_eq!(attrs(request), map(&[("request.id", "req-0004")]));
    assert_eq!(
        attrs(http),
        map(&[
            ("http.request.method", "GET"),
            ("url.path", "/api/users?id=7"),
            ("http.response.status_code", "200"),
        ])
    );
    assert_eq!(
        attrs(dial),
        map(&[("server.address", "db.internal"), ("server.port", "5432")])
    );
    assert_eq!(
        attrs(tls),
        map(&[
            ("server.address", "api.example.com"),
            ("tls.protocol.version", "TLS 1.3"),
        ])
    );
    // One thread fired all four; the spans nest in time too.
    let tid = request.attr("thread.id").expect("thread.id").to_owned();
    assert_ne!(tid, "0");
    for s in [http, dial, tls] {
        assert_eq!(s.attr("thread.id"), Some(tid.as_str()));
        assert!(s.span.start_time_unix_nano > request.span.start_time_unix_nano);
        assert!(s.span.end_time_unix_nano < request.span.end_time_unix_nano);
    }
    assert!(tls.span.start_time_unix_nano > dial.span.start_time_unix_nano);
    assert!(tls.span.end_time_unix_nano < dial.span.end_time_unix_nano);
    for s in [request, http, dial, tls] {
        assert!(s.duration() > Duration::ZERO, "{}", s.span.name);
        assert!(s.duration() < Duration::from_secs(1), "{}", s.span.name);
        let status = s.span.status.clone().unwrap_or_default();
        assert_eq!(status.code, StatusCode::Unset as i32, "{}", s.span.name);
        assert_eq!(s.scope, "agent/usdt");
        assert_eq!(s.resource.get("process.pid"), Some(&pid.to_string()));
    }

    // The custom mapping.
    let job = by_name(&spans, "job resize");
    assert_eq!(job.span.kind, SpanKind::Consumer as i32);
    assert_eq!(
        attrs(job),
        map(&[("job.id", "9"), ("job.kind", "resize"), ("job.rc", "0")])
    );
    assert!(job.span.parent_span_id.is_empty());
    assert!(job.duration() > Duration::ZERO);

    // The guarded probe fired while the semaphore was held.
    let guarded = by_name(&spans, "guarded");
    assert_eq!(attrs(guarded), map(&[("guarded.value", "5")]));
    assert!(guarded.duration() > Duration::ZERO);

    // The start that never ended: exported once its 300 ms were up.
    let expired: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.attr("agent.span.incomplete").is_some())
        .collect();
    assert_eq!(expired.len(), 1, "{spans:#?}");
    assert_eq!(expired[0].span.name, "Request");
    assert_eq!(
        attrs(expired[0]),
        map(&[
            ("request.id", "orphan-1"),
            ("agent.span.incomplete", "expired")
        ])
    );
    assert!(expired[0].duration() >= Duration::from_millis(300));

    // The counts: 7 starts (one expired), 6 completed, one end without a
    // start, nothing lost in the kernel or the export.
    let summary = summary(&summary_path);
    let want = [
        ("spans_exported", 7),
        ("ringbuf_full", 0),
        ("bad_records", 0),
        ("usdt_started", 7),
        ("usdt_completed", 6),
        ("usdt_unmatched_ends", 1),
        ("usdt_expired", 1),
        ("usdt_evicted", 0),
        ("usdt_replaced", 0),
        ("usdt_unreadable_ids", 0),
        ("usdt_unmapped", 0),
        ("dropped_queue_full", 0),
        ("dropped_export_failed", 0),
    ];
    for (key, value) in want {
        assert_eq!(summary.get(key), Some(&value), "{key} in {summary:?}");
    }
    // 2 + 2 + 2 + 2 (seed) + 2 (job) + 2 (guarded pair) + 1 + 1 records.
    assert_eq!(summary.get("records"), Some(&14));
    let line = agent.wait_for_stderr("spans exported", Duration::from_secs(1));
    assert!(line.contains("USDT ends without start: 1"), "{line}");
    assert!(line.contains("USDT expired: 1"), "{line}");
}

#[test]
fn probes_of_a_library_loaded_after_attaching() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture("spans");
    let mut target = Running::start(fx);
    let pid = target.pid;

    let receiver = Receiver::grpc();
    let summary_path = write_temp("summary-runtime.txt", "");
    let mut agent = Agent::start(agent_command(pid, &receiver, &summary_path));
    agent.wait_attached();
    let usdt_line = agent.wait_for_stderr("USDT:", Duration::from_secs(1));
    assert!(!usdt_line.contains("runtime:"), "{usdt_line}");

    // The library appears after the agent attached, in a memory file, as
    // libstapsdt creates them; the agent looks at the mappings every second.
    let load = format!("loadlib {}", fx.runtime_lib.display());
    assert_eq!(target.command(&load), "loaded");
    let found = agent.wait_for_stderr("new probes", Duration::from_secs(5));
    assert!(
        found.contains("USDT: 2 new probes at 2 sites in /memfd:usdt-runtime"),
        "{found}"
    );
    assert!(
        found.contains("runtime:request_end, runtime:request_start"),
        "{found}"
    );
    assert_eq!(target.command("rtpair rt-7"), "rtpair rt-7");

    let spans = receiver.wait_for_spans(1, Duration::from_secs(10));
    agent.signal(Signal::SIGINT);
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    assert_eq!(receiver.spans().len(), 1, "{spans:#?}");
    let request = by_name(&spans, "Request");
    assert_eq!(attrs(request), map(&[("request.id", "rt-7")]));
    assert!(request.duration() > Duration::ZERO);
    assert_eq!(
        agent
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("new probes"))
            .count(),
        1,
        "the library is read once"
    );
    let summary = summary(&summary_path);
    for (key, value) in [
        ("usdt_started", 1),
        ("usdt_completed", 1),
        ("records", 2),
        ("bad_records", 0),
    ] {
        assert_eq!(summary.get(key), Some(&value), "{key} in {summary:?}");
    }
}

/// The plain C program with USDT probes, built once.
fn cprog() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("usdt-spans");
            std::fs::create_dir_all(&out).expect("out dir");
            let exe = out.join("cprog");
            let source =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/usdt/cprog/cprog.c");
            let status = Command::new("gcc")
                .args(["-O2", "-g", "-o"])
                .arg(&exe)
                .arg(&source)
                .status()
                .expect("running gcc");
            assert!(status.success(), "gcc failed for cprog/cprog.c");
            exe
        })
        .clone()
}

#[test]
fn a_plain_c_program_with_usdt_probes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exe = cprog();
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting cprog");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready line");
    assert_eq!(line.trim_end(), format!("ready {}", child.id()));

    let receiver = Receiver::grpc();
    let mut cmd = command();
    cmd.args(["--pid", &child.id().to_string()]).args([
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "grpc",
    ]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    for id in ["c-1", "c-2"] {
        writeln!(stdin, "pair {id}").expect("writing to cprog");
        stdin.flush().expect("flush");
        line.clear();
        stdout.read_line(&mut line).expect("answer");
        assert_eq!(line.trim_end(), format!("pair {id}"));
    }
    let spans = receiver.wait_for_spans(2, Duration::from_secs(10));
    // The program exits at end of input: the agent follows.
    drop(stdin);
    assert!(child.wait().expect("cprog exit").success());
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    let mut ids: Vec<&str> = spans.iter().filter_map(|s| s.attr("request.id")).collect();
    ids.sort();
    assert_eq!(ids, ["c-1", "c-2"]);
    for s in &spans {
        assert_eq!(s.span.name, "Request");
        assert!(s.span.parent_span_id.is_empty());
        // usleep(1000) between start and end.
        assert!(s.duration() >= Duration::from_millis(1), "{s:#?}");
        assert!(s.duration() < Duration::from_secs(1), "{s:#?}");
        assert_eq!(
            s.resource
                .get("process.executable.path")
                .map(String::as_str),
            exe.to_str()
        );
    }
    assert_eq!(receiver.spans().len(), 2);
}

#[test]
fn a_launched_program_is_traced_from_its_first_probe() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exe = cprog();
    let receiver = Receiver::grpc();
    // Its input is there from the start: it fires both pairs at once and
    // exits, within milliseconds.
    let mut cmd = command();
    cmd.args([
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "grpc",
        "--",
    ])
    .arg(&exe)
    .stdin(Stdio::piped());
    let mut agent = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let mut stdin = agent.stdin.take().expect("stdin");
    stdin
        .write_all(b"pair l-1\npair l-2\n")
        .expect("writing the program's input");
    drop(stdin);
    let out = agent.wait_with_output().expect("agent exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "agent exit: {:?}\n{stderr}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pair l-2"), "the program ran: {stdout}");
    let spans = receiver.wait_for_spans(2, Duration::from_secs(10));
    let mut ids: Vec<&str> = spans.iter().filter_map(|s| s.attr("request.id")).collect();
    ids.sort();
    assert_eq!(ids, ["l-1", "l-2"], "{stderr}");
    assert_eq!(receiver.spans().len(), 2);
}

#[test]
fn without_usdt_a_non_http_go_program_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture("spans");
    let target = Running::start(fx);
    for extra in [&["--no-usdt"][..], &["--usdt-config", "/nonexistent.toml"]] {
        let output = command()
            .args(["--pid", &target.pid.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        if extra[0] == "--no-usdt" {
            assert!(
                stderr.contains("does not serve HTTP with net/http"),
                "{stderr}"
            );
            assert!(stderr.contains("--no-usdt"), "{stderr}");
        } else {
            assert!(
                stderr.contains("invalid --usdt-config /nonexistent.toml"),
                "{stderr}"
            );
        }
    }
}
