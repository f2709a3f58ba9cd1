//! End to end, as root: launch mode (`agent [options] -- CMD`) and the
//! system-call family. A C program with known system calls
//! (`tests/fixtures/syscalls/calls.c`, built static by the test with gcc, so
//! no dynamic loader adds calls of its own) is started by the agent; the
//! spans it exports reach an OTLP/gRPC receiver and are asserted exactly:
//! names, kinds, parents, attributes, status. The `-c` table's counts are
//! compared with what `strace -c` reports for the same program.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::{
    agent::{AGENT_EXIT, Agent, command},
    otlp::{FlatSpan, Receiver, hex},
};

/// One agent at a time: two cores, and each test counts its own spans.
static SERIAL: Mutex<()> = Mutex::new(());

/// The fixture, built once.
fn calls() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("syscalls");
        std::fs::create_dir_all(&out).expect("out dir");
        let exe = out.join("calls");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/syscalls/calls.c");
        let status = Command::new("gcc")
            .args(["-O1", "-g", "-static", "-o"])
            .arg(&exe)
            .arg(&source)
            .status()
            .expect("running gcc (apt-get install gcc)");
        assert!(status.success(), "gcc failed for {}", source.display());
        exe
    })
}

/// Runs the agent on `calls ARGS` with `options`, exporting to a gRPC
/// receiver; returns its exit status, its spans and its stderr.
fn launch(options: &[&str], args: &[&str]) -> (ExitStatus, Vec<FlatSpan>, Vec<String>) {
    let receiver = Receiver::grpc();
    let mut cmd = command();
    cmd.args(options)
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ])
        .arg("--")
        .arg(calls())
        .args(args);
    let mut agent = Agent::start(cmd);
    let status = agent.wait(AGENT_EXIT);
    // The agent exports before it exits: everything has arrived.
    let spans = receiver.spans();
    (status, spans, agent.stderr_lines())
}

fn by_name<'a>(spans: &'a [FlatSpan], name: &str) -> Vec<&'a FlatSpan> {
    spans.iter().filter(|s| s.span.name == name).collect()
}

fn only<'a>(spans: &'a [FlatSpan], name: &str) -> &'a FlatSpan {
    let found = by_name(spans, name);
    assert_eq!(found.len(), 1, "one {name:?} span in {spans:#?}");
    found[0]
}

/// The attributes of `span` without the ones whose values vary from run to
/// run (pids, thread ids, durations), which the tests check separately.
fn stable_attributes(span: &FlatSpan) -> BTreeMap<&str, &str> {
    span.attributes
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "process.pid" | "thread.id" | "syscall.duration_us"
            )
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn assert_child_of(child: &FlatSpan, parent: &FlatSpan) {
    assert_eq!(child.span.trace_id, parent.span.trace_id, "one trace");
    assert_eq!(
        hex(&child.span.parent_span_id),
        hex(&parent.span.span_id),
        "{:?} under {:?}",
        child.span.name,
        parent.span.name
    );
    assert!(
        child.span.start_time_unix_nano >= parent.span.start_time_unix_nano
            && child.span.end_time_unix_nano <= parent.span.end_time_unix_nano,
        "{:?} inside {:?}",
        child.span.name,
        parent.span.name
    );
}

#[test]
fn launched_program_calls_are_spans_under_its_process_span() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exe = calls().display().to_string();
    let (status, spans, _) = launch(&["--syscalls=openat,write,exit_group"], &["5"]);
    assert_eq!(status.code(), Some(5), "the program's exit code");
    assert_eq!(spans.len(), 5, "{spans:#?}");

    let process = only(&spans, "process: calls");
    assert_eq!(process.span.kind, SpanKind::Server as i32);
    assert!(process.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(process.scope, "agent/syscalls");
    let pid = process.attr("process.pid").expect("process.pid").to_owned();
    assert_eq!(
        stable_attributes(process),
        BTreeMap::from([
            ("process.command", exe.as_str()),
            ("process.command_args", format!("[{exe},5]").as_str()),
            ("process.exit_code", "5"),
        ])
    );
    let status = process.span.status.as_ref().expect("status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "exit code 5");

    let openat = only(&spans, "syscall: openat");
    assert_eq!(openat.span.kind, SpanKind::Internal as i32);
    assert_eq!(
        stable_attributes(openat),
        BTreeMap::from([
            ("syscall.name", "openat"),
            ("syscall.result", "-2"),
            ("syscall.errno", "ENOENT"),
        ])
    );
    let status = openat.span.status.as_ref().expect("status");
    assert_eq!(
        (status.code, status.message.as_str()),
        (StatusCode::Error as i32, "ENOENT")
    );

    let writes = by_name(&spans, "syscall: write");
    assert_eq!(writes.len(), 2);
    for write in &writes {
        assert_eq!(
            stable_attributes(write),
            BTreeMap::from([("syscall.name", "write"), ("syscall.result", "4")])
        );
        assert!(write.span.status.as_ref().is_none_or(|s| s.code == 0));
    }
    let exit = only(&spans, "syscall: exit_group");
    assert_eq!(
        stable_attributes(exit),
        BTreeMap::from([("syscall.name", "exit_group")]),
        "a call that never returns has no result"
    );
    for (call, returns) in [
        (openat, true),
        (writes[0], true),
        (writes[1], true),
        (exit, false),
    ] {
        assert_child_of(call, process);
        assert_eq!(call.attr("process.pid"), Some(pid.as_str()));
        assert_eq!(call.attr("thread.id"), Some(pid.as_str()));
        assert_eq!(call.attr("syscall.duration_us").is_some(), returns);
    }
    // In the order the program made them.
    assert!(openat.span.end_time_unix_nano <= writes[0].span.start_time_unix_nano);
}

#[test]
fn forked_child_is_a_process_span_under_its_parents() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (status, spans, _) = launch(&["--syscalls=write,exit_group", "-f"], &["fork"]);
    assert_eq!(status.code(), Some(0), "the parent saw its child exit 3");
    assert_eq!(spans.len(), 7, "{spans:#?}");
    let processes = by_name(&spans, "process: calls");
    assert_eq!(processes.len(), 2);
    let (parent, child): (Vec<&FlatSpan>, Vec<&FlatSpan>) = processes
        .iter()
        .partition(|p| p.span.parent_span_id.is_empty());
    let (parent, child) = (parent[0], child[0]);
    assert_child_of(child, parent);
    assert_eq!(parent.attr("process.exit_code"), Some("0"));
    assert!(parent.span.status.as_ref().is_none_or(|s| s.code == 0));
    assert_eq!(child.attr("process.exit_code"), Some("3"));
    assert_eq!(
        child.span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_ne!(child.attr("process.pid"), parent.attr("process.pid"));

    let under = |process: &FlatSpan| -> Vec<(String, String)> {
        let mut calls: Vec<(String, String)> = spans
            .iter()
            .filter(|s| s.span.parent_span_id == process.span.span_id)
            .filter(|s| s.span.name.starts_with("syscall: "))
            .map(|s| {
                assert_child_of(s, process);
                assert_eq!(s.attr("process.pid"), process.attr("process.pid"));
                (
                    s.span.name.clone(),
                    s.attr("syscall.result").unwrap_or("").to_owned(),
                )
            })
            .collect();
        calls.sort();
        calls
    };
    let pair = |name: &str, result: &str| (name.to_owned(), result.to_owned());
    assert_eq!(
        under(parent),
        vec![
            pair("syscall: exit_group", ""),
            pair("syscall: write", "4"),
            pair("syscall: write", "4"),
        ]
    );
    assert_eq!(
        under(child),
        vec![pair("syscall: exit_group", ""), pair("syscall: write", "6")]
    );
}

#[test]
fn exit_codes_and_signals_pass_through() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (status, spans, _) = launch(&["-c"], &["7"]);
    assert_eq!(status.code(), Some(7));
    assert!(spans.is_empty(), "-c alone exports no spans: {spans:#?}");

    let (status, spans, _) = launch(&["--syscalls=exit_group"], &["kill"]);
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "SIGKILL as a shell reports it"
    );
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let process = only(&spans, "process: calls");
    assert_eq!(process.attr("process.exit_code"), None);
    let status = process.span.status.as_ref().expect("status");
    assert_eq!(
        (status.code, status.message.as_str()),
        (StatusCode::Error as i32, "killed by signal SIGKILL")
    );
}

/// `strace -c`'s counts: `(calls, errors)` by system call.
fn strace_counts(args: &[&str]) -> BTreeMap<String, (u64, u64)> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("syscalls/strace-c.txt");
    let status = Command::new("strace")
        .args(["-c", "-U", "name,calls,errors", "-o"])
        .arg(&out)
        .arg(calls())
        .args(args)
        .status()
        .expect("running strace (apt-get install strace)");
    assert!(status.code().is_some(), "strace ran");
    let text = std::fs::read_to_string(&out).expect("strace output");
    let mut counts = BTreeMap::new();
    for line in text.lines().skip(2) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with('-') || fields.first() == Some(&"total") {
            continue;
        }
        match fields.as_slice() {
            [name, calls] => counts.insert(name.to_string(), (calls.parse().expect("calls"), 0)),
            [name, calls, errors] => counts.insert(
                name.to_string(),
                (
                    calls.parse().expect("calls"),
                    errors.parse().expect("errors"),
                ),
            ),
            _ => panic!("unexpected strace line {line:?}"),
        };
    }
    counts
}

/// The agent's `-c` counts, from `--summary-file`.
fn agent_counts(summary: &str) -> BTreeMap<String, (u64, u64)> {
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in summary.lines() {
        let Some(rest) = line.strip_prefix("syscall.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').expect("key=value");
        let (name, what) = key.rsplit_once('.').expect("syscall.NAME.what");
        let value: u64 = value.parse().expect("a number");
        let entry = counts.entry(name.to_owned()).or_default();
        match what {
            "calls" => entry.0 = value,
            "errors" => entry.1 = value,
            _ => {}
        }
    }
    counts
}

fn summary_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("syscalls")
        .join(name)
}

#[test]
fn summary_counts_equal_strace_for_a_short_program() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let expected = strace_counts(&["3"]);
    assert_eq!(expected.get("openat"), Some(&(1, 1)), "{expected:?}");
    assert_eq!(expected.get("execve"), Some(&(1, 0)), "{expected:?}");
    let file = summary_file("summary-all.txt");
    let started = std::time::Instant::now();
    let (status, spans, stderr) = launch(
        &["-c", "--summary-file", file.to_str().expect("utf-8")],
        &["3"],
    );
    log_elapsed(started);
    assert_eq!(status.code(), Some(3));
    assert!(spans.is_empty());
    let summary = std::fs::read_to_string(&file).expect("summary file");
    // Every call from the execve on: the program is traced whole, though
    // it runs for well under 5 ms.
    assert_eq!(agent_counts(&summary), expected, "{summary}");
    // The table on stderr.
    assert!(
        stderr
            .iter()
            .any(|l| l == "% time     seconds  usecs/call     calls    errors syscall"),
        "{stderr:#?}"
    );
    let openat = stderr
        .iter()
        .find(|l| l.ends_with(" openat"))
        .expect("an openat line");
    let fields: Vec<&str> = openat.split_whitespace().collect();
    assert_eq!(fields[3..], ["1", "1", "openat"], "{openat}");

    // A filter counts only what it names, as strace's -e trace= does.
    let file = summary_file("summary-filtered.txt");
    let (status, _, _) = launch(
        &[
            "-c",
            "--syscalls=%file,write",
            "--summary-file",
            file.to_str().expect("utf-8"),
        ],
        &["fork"],
    );
    assert_eq!(status.code(), Some(0));
    let summary = std::fs::read_to_string(&file).expect("summary file");
    let counts = agent_counts(&summary);
    let names: Vec<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["execve", "openat", "readlink", "write"],
        "{summary}"
    );
    assert_eq!(counts["write"], (2, 0), "the child is not followed");
}

fn log_elapsed(started: std::time::Instant) {
    eprintln!("agent run took {:?}", started.elapsed());
}

#[test]
fn short_calls_are_counted_but_make_no_span() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let file = summary_file("summary-min.txt");
    let (status, spans, _) = launch(
        &[
            "--syscalls=write,nanosleep",
            "--syscall-min-duration=10ms",
            "--summary-file",
            file.to_str().expect("utf-8"),
        ],
        &["sleep"],
    );
    assert_eq!(status.code(), Some(0));
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let sleep = only(&spans, "syscall: nanosleep");
    assert!(
        sleep.duration() >= Duration::from_millis(30),
        "{:?}",
        sleep.duration()
    );
    assert_child_of(sleep, only(&spans, "process: calls"));
    let summary = std::fs::read_to_string(&file).expect("summary file");
    assert!(
        summary
            .lines()
            .any(|l| l == "syscalls_below_min_duration=2"),
        "{summary}"
    );
    assert!(summary.lines().any(|l| l == "syscall_spans=1"), "{summary}");
}

#[test]
fn bad_launches_fail_with_one_clear_line() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (args, expected) in [
        (
            vec!["--syscalls=openat,nosuch", "--", "true"],
            "agent: unknown system call \"nosuch\" in the syscall filter",
        ),
        (
            vec!["--syscalls=%ipc", "--", "true"],
            "agent: unknown class \"%ipc\" in the syscall filter (classes: %file, %network, %process, %memory, %signal, %desc)",
        ),
        (
            vec!["--syscalls", "--", "/no/such/program"],
            "agent: /no/such/program: command not found",
        ),
        (
            vec!["--syscall-min-duration=2ms", "--", "true"],
            "agent: --syscall-min-duration needs --syscalls",
        ),
        (
            vec!["--syscalls", "--syscall-min-duration=2", "--", "true"],
            "error: invalid value '2' for '--syscall-min-duration <DURATION>': \"2\" needs a unit: ns, us, ms or s\n\nFor more information, try '--help'.",
        ),
    ] {
        let out = command().args(&args).output().expect("run agent");
        // clap's usage errors exit 2, the agent's own 1.
        let code = if expected.starts_with("error:") { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end(), expected, "{args:?}");
    }
}

#[test]
fn launched_go_program_is_traced_as_with_pid() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = support::fixture::build("httpserver", &[]);
    let receiver = Receiver::grpc();
    let mut cmd = command();
    cmd.args([
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "grpc",
    ])
    .arg("--")
    .arg(&server);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let addr = wait_for_stdout(&agent, "listening on ");
    let addr: std::net::SocketAddr = addr
        .trim_start_matches("listening on ")
        .parse()
        .expect("address");
    let (status, _) = support::http_client::Connection::open(addr).request("GET", "/hello", b"");
    assert_eq!(status, 200);
    receiver.wait_for_spans(1, Duration::from_secs(10));
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait(AGENT_EXIT);
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "the program got the agent's SIGTERM and died of it"
    );
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.span.kind, SpanKind::Server as i32);
    assert_eq!(span.attr("url.path"), Some("/hello"));
    assert_eq!(span.attr("http.response.status_code"), Some("200"));
}

fn wait_for_stdout(agent: &Agent, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = agent
            .stdout_lines()
            .into_iter()
            .find(|l| l.contains(needle))
        {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} on stdout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn attached_with_pid_traces_from_then_on() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut program = Command::new(calls())
        .arg("stdin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start calls");
    let pid = program.id().to_string();
    let receiver = Receiver::grpc();
    let mut cmd = command();
    cmd.args(["--pid", &pid, "--syscalls=openat,write,exit_group,read"])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    {
        use std::io::Write as _;
        let mut stdin = program.stdin.take().expect("stdin");
        stdin.write_all(b"x").expect("wake the program");
    }
    assert_eq!(program.wait().expect("wait").code(), Some(0));
    let status = agent.wait(AGENT_EXIT);
    assert_eq!(status.code(), Some(0), "with --pid the agent exits 0");
    let spans = receiver.spans();
    let mut names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    names.sort_unstable();
    // The read it was blocked in when the agent attached is not a span:
    // only calls that entered the kernel after the attach are.
    assert_eq!(
        names,
        [
            "process: calls",
            "syscall: exit_group",
            "syscall: openat",
            "syscall: write",
            "syscall: write"
        ]
    );
    let process = only(&spans, "process: calls");
    let exe = calls().display().to_string();
    assert_eq!(
        stable_attributes(process),
        BTreeMap::from([
            ("process.command", exe.as_str()),
            ("process.command_args", format!("[{exe},stdin]").as_str()),
            ("process.exit_code", "0"),
        ])
    );
    assert_eq!(process.attr("process.pid"), Some(pid.as_str()));
    for span in &spans {
        if span.span.name != "process: calls" {
            assert_child_of(span, process);
        }
    }
}

#[test]
fn go_handler_fsync_is_a_child_of_the_request_span() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = support::fixture::build("httpserver", &[]);
    let receiver = Receiver::grpc();
    let mut cmd = command();
    cmd.args(["--syscalls=fsync", "--source"])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ])
        .arg("--")
        .arg(&server);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let addr = wait_for_stdout(&agent, "listening on ");
    let addr: std::net::SocketAddr = addr
        .trim_start_matches("listening on ")
        .parse()
        .expect("address");
    let (status, body) = support::http_client::Connection::open(addr).request("GET", "/fsync", b"");
    assert_eq!((status, body.as_slice()), (200, b"synced".as_slice()));
    receiver.wait_for_spans(2, Duration::from_secs(10));
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait(AGENT_EXIT).code(), Some(128 + 15));
    let spans = receiver.spans();
    let request = spans
        .iter()
        .find(|s| s.attr("url.path") == Some("/fsync"))
        .expect("the request's span");
    assert_eq!(request.span.kind, SpanKind::Server as i32);
    let fsync = only(&spans, "syscall: fsync");
    assert_child_of(fsync, request);
    assert_eq!(fsync.attr("syscall.result"), Some("0"));
    assert!(fsync.attr("goroutine.id").is_some(), "{fsync:#?}");
    // The caller is the handler's `f.Sync()`, past os, internal/poll and
    // syscall.
    let main_go = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/httpserver/main.go");
    assert_eq!(
        fsync.attr("code.file.path"),
        Some(main_go.to_str().expect("utf-8 path")),
        "{fsync:#?}"
    );
    let sync_line = line_of(&main_go, "f.Sync()");
    assert_eq!(
        fsync.attr("code.line.number"),
        Some(sync_line.to_string().as_str())
    );
    let function = fsync
        .attr("code.function.name")
        .expect("code.function.name");
    assert!(function.starts_with("main.main.func"), "{function}");
    // The process span is there too, in its own trace, with nothing under it.
    let process = only(&spans, "process: httpserver");
    assert_ne!(process.span.trace_id, request.span.trace_id);
    assert_eq!(spans.len(), 3, "{spans:#?}");
}

/// The 1-based number of the only line of `path` that contains `needle`.
fn line_of(path: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).expect("source");
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line with {needle:?} in {}",
        path.display()
    );
    lines[0]
}

#[test]
fn source_lines_name_the_calls_in_calls_c() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (status, spans, stderr) = launch(&["--syscalls=openat,write", "-s"], &["0"]);
    assert_eq!(status.code(), Some(0), "{stderr:#?}");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/syscalls/calls.c");
    let file = source.to_str().expect("utf-8 path");

    let openat = only(&spans, "syscall: openat");
    assert_eq!(openat.attr("syscall.errno"), Some("ENOENT"));
    assert_eq!(openat.attr("code.file.path"), Some(file), "{openat:#?}");
    let open_line = line_of(&source, "SYS_openat").to_string();
    assert_eq!(openat.attr("code.line.number"), Some(open_line.as_str()));
    assert_eq!(openat.attr("code.function.name"), Some("main"));

    let writes = by_name(&spans, "syscall: write");
    assert_eq!(writes.len(), 2, "{spans:#?}");
    let mut lines: Vec<&str> = writes
        .iter()
        .map(|w| w.attr("code.line.number").expect("a line"))
        .collect();
    lines.sort_unstable();
    let mut expected = vec![
        line_of(&source, "\"one\\n\"").to_string(),
        line_of(&source, "\"two\\n\"").to_string(),
    ];
    expected.sort_unstable();
    assert_eq!(lines, expected);
    for write in writes {
        assert_eq!(write.attr("code.file.path"), Some(file));
    }
}

/// The pclntab's line tables give a function's file and first line, in a
/// build with DWARF and in a stripped one (`-s -w`: the pclntab only).
#[test]
fn pclntab_lines_match_the_go_source() {
    let main_go = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/httpserver/main.go");
    let main_line = line_of(&main_go, "func main()");
    for flags in [&[][..], &["-ldflags=-s -w"][..]] {
        let exe = support::fixture::build("httpserver", flags);
        let go = agent::binary::GoBinary::open(&exe).expect("the fixture opens");
        let main = go.function("main.main").expect("main.main");
        let line = go.line_at(main.address).expect("a line for main.main");
        assert_eq!(line.function, b"main.main");
        assert_eq!(line.file, main_go.to_str().expect("utf-8").as_bytes());
        assert_eq!(line.line as usize, main_line, "{flags:?}");
        // Past the function's end: another function's line, never main's.
        if let Some(next) = go.line_at(main.address + main.size) {
            assert_ne!(next.function, b"main.main");
        }
    }
}
