//! Flight-recorder dumps captured from a live Go program, as root, on the
//! real kernel: the fixture (`fixtures/flightrec`) runs a
//! `runtime/trace.FlightRecorder` over an HTTP workload with tasks, regions
//! and logs, and dumps on request to a file, a pipe, a TCP socket and an
//! HTTP response. The captured bytes must be byte-identical to what the
//! program wrote, and the spans must match what Go's own parser reads from
//! the same bytes.

mod support;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use agent::{
    binary::GoBinary,
    flight::{self, CaptureOptions, CompletedDump, DumpSpanOptions, FlightCapture},
    probes::{LoadOptions, Probes},
    target::Target,
};
use agent_common::flight::{VARIANT_RUNTIME, VARIANT_X_EXP};
use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;
use support::fixture::{self, Running};

/// Builds `fixtures/flightrec/xexp`, a module of its own (it needs
/// golang.org/x/exp, from the module cache: no network).
fn build_xexp() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures/flightrec-xexp");
    let res = Command::new(fixture::go())
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(fixture::fixtures_dir().join("flightrec/xexp"))
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .output()
        .expect("go build xexp");
    assert!(
        res.status.success(),
        "go build flightrec/xexp failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

fn start(binary: &Path, args: &[&str]) -> (Running, SocketAddr) {
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start flightrec");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("fixture exited").expect("stdout line");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.parse().expect("address");
        }
    };
    thread::spawn(move || for _ in lines {});
    (Running { child }, addr)
}

/// A raw HTTP/1.0 GET: (status line, body up to EOF).
fn get(addr: SocketAddr, target: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, response[split + 4..].to_vec())
}

/// "n=<n> err=<nil>" from the fixture.
fn written(body: &[u8]) -> i64 {
    let text = String::from_utf8_lossy(body);
    assert!(text.ends_with("err=<nil>"), "dump failed: {text}");
    text.trim_start_matches("n=")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad answer {text:?}"))
}

/// The agent side, in process: probes loaded and attached, and a thread
/// draining the dump ring into a [`FlightCapture`].
struct Capture {
    probes: Probes,
    attachment: Option<flight::FlightAttachment>,
    dumps: mpsc::Receiver<CompletedDump>,
    stop: Arc<AtomicBool>,
    drainer: Option<thread::JoinHandle<FlightCapture>>,
}

impl Capture {
    fn attach(pid: u32) -> (Self, flight::FlightPlan) {
        let target = Target::open(pid).expect("target");
        let bin = GoBinary::open(&target.exe_path).expect("open binary");
        let plan = flight::plan(&bin)
            .expect("plan")
            .expect("the fixture has a flight recorder");
        let mut probes = Probes::load(LoadOptions::default()).expect("load eBPF (run as root)");
        let attachment =
            flight::attach(&mut probes, &target, 0, &plan).expect("attach flight probes");
        let mut ring = flight::take_ring_buffer(&mut probes).expect("ring");
        let mut capture = FlightCapture::new(CaptureOptions::default());
        capture.watch(&attachment);
        let (tx, dumps) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let drainer = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                while let Some(item) = ring.next() {
                    if let Some(dump) = capture.on_bytes(&item) {
                        tx.send(dump).expect("send dump");
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
            capture
        });
        (
            Self {
                probes,
                attachment: Some(attachment),
                dumps,
                stop,
                drainer: Some(drainer),
            },
            plan,
        )
    }

    fn next_dump(&self) -> CompletedDump {
        self.dumps
            .recv_timeout(Duration::from_secs(10))
            .expect("a dump within 10 s")
    }

    fn finish(mut self) -> FlightCapture {
        self.stop.store(true, Ordering::Relaxed);
        let capture = self
            .drainer
            .take()
            .expect("drainer")
            .join()
            .expect("drainer thread");
        if let Some(a) = self.attachment.take() {
            a.detach(&mut self.probes).expect("detach");
        }
        capture
    }
}

fn check_complete(dump: &CompletedDump, expected: &[u8], n: i64, writer: &str) {
    check_complete_from(dump, expected, n, writer, "runtime/trace");
}

fn check_complete_from(
    dump: &CompletedDump,
    expected: &[u8],
    n: i64,
    writer: &str,
    recorder: &str,
) {
    assert!(dump.complete, "incomplete capture: {:?}", dump.problems);
    assert!(dump.problems.is_empty());
    assert_eq!(dump.returned, n, "WriteTo's n");
    assert_eq!(dump.bytes.len() as i64, n);
    assert_eq!(dump.offered, n as u64);
    assert!(!dump.write_error);
    assert_eq!(dump.recorder, recorder);
    assert_eq!(dump.writer.as_deref(), Some(writer));
    assert!(dump.goid > 0);
    assert!(dump.end_ktime_ns > dump.start_ktime_ns);
    assert!(
        dump.bytes.starts_with(b"go 1.2") && dump.bytes[8..16] == *b"trace\0\0\0",
        "trace header"
    );
    assert!(
        dump.bytes == expected,
        "captured {} bytes differ from the {} the program wrote (first difference at {:?})",
        dump.bytes.len(),
        expected.len(),
        dump.bytes.iter().zip(expected).position(|(a, b)| a != b)
    );
    // One chunk per piece of every write: the header, then the batches.
    assert!(dump.writes >= 2, "writes {}", dump.writes);
    assert!(dump.chunks >= dump.writes);
}

fn work_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn plan_finds_write_to_sites() {
    let binary = fixture::build("flightrec", &[]);
    let bin = GoBinary::open(&binary).expect("open");
    let plan = flight::plan(&bin).expect("plan").expect("flight recorder");
    assert_eq!(plan.variants.len(), 1);
    let v = &plan.variants[0];
    assert_eq!(v.variant, VARIANT_RUNTIME);
    assert_eq!(v.function.name, flight::RUNTIME_WRITE_TO);
    assert!(v.entry.emulated, "entry site {:?}", v.entry);
    // Go 1.26: the header write and the batch loop's write.
    assert_eq!(v.writes.len(), 2, "{:?}", v.writes);
    assert!(v.returns.len() >= 3, "{:?}", v.returns);
    for s in v.writes.iter().chain(&v.returns) {
        assert!(s.address > v.function.address && s.address < v.function.address + v.function.size);
    }
    assert!(plan.writer_itabs.values().any(|t| t == "*os.File"));
    assert!(plan.g_goid > 0);

    // A Go binary without a flight recorder has no plan.
    let plain = fixture::build("httpserver", &[]);
    let bin = GoBinary::open(&plain).expect("open");
    assert!(flight::plan(&bin).expect("plan").is_none());
}

#[test]
fn dumps_to_file_pipe_tcp_and_http_are_captured_byte_identical() {
    destinations(&fixture::build("flightrec", &[]), b"go 1.26 trace");
}

/// The same with the fixture built as a PIE: Go links it at 0x400000 and
/// the kernel loads it elsewhere, so writer itabs are named only when the
/// load bias subtracts the link base.
#[test]
fn pie_dumps_are_captured_and_name_their_writers() {
    destinations(
        &fixture::build("flightrec", &["-buildmode=pie"]),
        b"go 1.26 trace",
    );
}

/// The same with the fixture built by Go 1.25 (the first release with
/// runtime/trace.FlightRecorder; from the module cache, no network).
#[test]
fn go_1_25_dumps_are_captured_byte_identical() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures/flightrec-go1.25.5");
    let res = Command::new(fixture::go())
        .args(["build", "-o"])
        .arg(&out)
        .arg("./flightrec")
        .current_dir(fixture::fixtures_dir())
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "go1.25.5")
        .env("GOPROXY", "off")
        .output()
        .expect("go build with go1.25.5");
    assert!(
        res.status.success(),
        "go build flightrec with go1.25.5 failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let bin = GoBinary::open(&out).expect("open");
    assert_eq!(bin.build_info().go_version_raw, "go1.25.5");
    destinations(&out, b"go 1.25 trace");
}

/// Dumps of `binary` (a flightrec build) to a file, a pipe, a TCP socket
/// and an HTTP response, each captured whole and byte-identical.
fn destinations(binary: &Path, header: &[u8]) {
    let (_fixture, addr) = start(binary, &["-load", "2"]);
    let (capture, _plan) = Capture::attach(_fixture.pid());
    let dir = work_dir();
    // Let the workload fill the window with tasks.
    thread::sleep(Duration::from_millis(500));

    // A regular file.
    let path = dir.path().join("file.trace");
    let (status, body) = get(addr, &format!("/dump?to=file&path={}", path.display()));
    assert!(status.contains("200"), "{status}");
    let n = written(&body);
    let dump = capture.next_dump();
    let on_disk = std::fs::read(&path).expect("the program's file");
    assert!(dump.bytes.starts_with(header), "{:?}", &dump.bytes[..16]);
    check_complete(&dump, &on_disk, n, "*os.File");
    assert_eq!(dump.pid, _fixture.pid());
    // --save-dumps: the saved copy is the program's file, byte for byte,
    // and Go's parser reads the same tasks, regions and logs from it as the
    // spans carry.
    let save_dir = dir.path().join("saved");
    let mut spans = 0;
    let outcome = flight::handle_dump(
        &dump,
        &DumpSpanOptions::default(),
        Some(&save_dir),
        &mut |batch| spans += batch.len() as u64,
    )
    .expect("handle dump");
    let saved = outcome.saved.expect("saved");
    assert_eq!(std::fs::read(&saved).expect("saved copy"), on_disk);
    let name = saved.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(
        name.starts_with(&format!("{}-", _fixture.pid()))
            && name.ends_with(&format!("-{:x}.trace", dump.dump_id)),
        "{name}"
    );
    assert_eq!(outcome.summary.map(|s| s.spans), Some(spans));
    let regions = check_spans(&dump, &saved);
    for name in ["parse", "compute", "inner"] {
        assert!(
            regions.get(name).copied().unwrap_or(0) > 0,
            "no {name} regions: {regions:?}"
        );
    }

    // A pipe, read by another goroutine of the program.
    let copy = dir.path().join("pipe.trace");
    let (_, body) = get(addr, &format!("/dump?to=pipe&copy={}", copy.display()));
    let n = written(&body);
    let dump = capture.next_dump();
    check_complete(
        &dump,
        &std::fs::read(&copy).expect("pipe copy"),
        n,
        "*os.File",
    );

    // A TCP socket to this test.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let peer = listener.local_addr().expect("addr");
    let receiver = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut bytes = Vec::new();
        conn.read_to_end(&mut bytes).expect("read socket");
        bytes
    });
    let (_, body) = get(addr, &format!("/dump?to=tcp&addr={peer}"));
    let n = written(&body);
    let dump = capture.next_dump();
    let received = receiver.join().expect("receiver");
    check_complete(&dump, &received, n, "*net.TCPConn");

    // The HTTP response: its body is the dump.
    let (status, body) = get(addr, "/dump?to=http");
    assert!(status.contains("200"), "{status}");
    let dump = capture.next_dump();
    check_complete(&dump, &body, body.len() as i64, "*net/http.response");

    // A peer that hangs up at once: WriteTo fails part-way. The capture is
    // still whole: exactly the n bytes the socket accepted, and the error
    // is reported.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let peer = listener.local_addr().expect("addr");
    let closer = thread::spawn(move || drop(listener.accept().expect("accept")));
    // The program waits until the peer has hung up before writing.
    let (_, body) = get(addr, &format!("/dump?to=tcp&addr={peer}&delay=200ms"));
    closer.join().expect("closer");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        !text.ends_with("err=<nil>"),
        "the write did not fail: {text}"
    );
    let n: i64 = text
        .trim_start_matches("n=")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad answer {text:?}"));
    let dump = capture.next_dump();
    assert!(dump.complete, "{:?}", dump.problems);
    assert!(dump.write_error);
    assert_eq!(dump.returned, n);
    assert_eq!(dump.bytes.len() as i64, n);
    assert!((n as u64) < dump.offered, "n={n} offered={}", dump.offered);
    assert!(dump.bytes.starts_with(header));

    let capture = capture.finish();
    assert_eq!(capture.bad_records, 0);
    assert_eq!(capture.dropped_dumps, 0);
    assert_eq!(capture.open_dumps(), 0);
}

#[test]
fn x_exp_trace_flight_recorder_dumps_are_captured() {
    let binary = build_xexp();
    let bin = GoBinary::open(&binary).expect("open");
    let plan = flight::plan(&bin).expect("plan").expect("flight recorder");
    // Only x/exp's WriteTo is linked; its writeUvarint closure is inlined:
    // header, batch event byte, four varints, batch data.
    assert_eq!(plan.variants.len(), 1);
    assert_eq!(plan.variants[0].variant, VARIANT_X_EXP);
    assert_eq!(plan.variants[0].function.name, flight::X_EXP_WRITE_TO);
    assert_eq!(
        plan.variants[0].writes.len(),
        7,
        "{:?}",
        plan.variants[0].writes
    );

    let (fixture, addr) = start(&binary, &[]);
    let (capture, _) = Capture::attach(fixture.pid());
    thread::sleep(Duration::from_millis(300));
    let dir = work_dir();
    let path = dir.path().join("xexp.trace");
    let (_, body) = get(addr, &format!("/dump?to=file&path={}", path.display()));
    let n = written(&body);
    let dump = capture.next_dump();
    let on_disk = std::fs::read(&path).expect("the program's file");
    check_complete_from(&dump, &on_disk, n, "*os.File", "golang.org/x/exp/trace");
    // Many small writes: six per batch.
    assert!(dump.writes > 6, "{}", dump.writes);
    let regions = check_spans(&dump, &path);
    assert!(
        regions.get("xregion").copied().unwrap_or(0) > 0,
        "{regions:?}"
    );

    let (_, body) = get(addr, "/dump?to=http");
    let dump = capture.next_dump();
    check_complete_from(
        &dump,
        &body,
        body.len() as i64,
        "*net/http.response",
        "golang.org/x/exp/trace",
    );
    capture.finish();
}

/// The reader thread as the live agent runs it: dumps saved, decoded, and
/// every span handed to the sink with the dump's identity.
#[test]
fn reader_thread_saves_and_decodes_dumps() {
    let binary = fixture::build("flightrec", &[]);
    let (fixture, addr) = start(&binary, &["-load", "1"]);
    let target = Target::open(fixture.pid()).expect("target");
    let bin = GoBinary::open(&target.exe_path).expect("open binary");
    let plan = flight::plan(&bin).expect("plan").expect("flight recorder");
    let mut probes = Probes::load(LoadOptions::default()).expect("load eBPF (run as root)");
    let attachment = flight::attach(&mut probes, &target, 5, &plan).expect("attach");
    let ring = flight::take_ring_buffer(&mut probes).expect("ring");
    let dir = work_dir();
    let save_dir = dir.path().join("dumps");
    let (tx, spans) = mpsc::channel();
    let reader = flight::FlightReader::spawn(
        ring,
        flight::ReaderConfig {
            save_dir: Some(save_dir.clone()),
            ..flight::ReaderConfig::default()
        },
        move |batch: agent::gotrace::SpanBatch| {
            for s in batch.iter() {
                let _ = tx.send(s.to_span_data().expect("a valid Span message"));
            }
        },
    )
    .expect("spawn reader");
    reader.watch(&attachment);
    thread::sleep(Duration::from_millis(300));

    let (_, body) = get(addr, "/dump?to=http");
    // Wait for the saved file, then for the spans to stop coming.
    let deadline = Instant::now() + Duration::from_secs(20);
    let saved = loop {
        let files: Vec<PathBuf> = std::fs::read_dir(&save_dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        if let Some(f) = files
            .into_iter()
            .find(|f| f.extension().is_some_and(|e| e == "trace"))
        {
            break f;
        }
        assert!(Instant::now() < deadline, "no dump saved");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(std::fs::read(&saved).expect("saved"), body);
    let mut received = Vec::new();
    while let Ok(s) = spans.recv_timeout(Duration::from_secs(2)) {
        received.push(s);
    }
    let stats = reader.stop();
    assert_eq!(stats.dumps, 1, "{stats:?}");
    assert_eq!(stats.complete, 1);
    assert_eq!(stats.saved, 1);
    assert_eq!(stats.errors, 0);
    assert_eq!(stats.spans as usize, received.len());
    assert!(
        received
            .iter()
            .any(|s| attr_str(s, "trace.event.kind") == "task")
    );
    let id = format!("{}-", fixture.pid());
    assert!(
        received
            .iter()
            .all(|s| attr_str(s, "flight_recorder.dump.id").starts_with(&id))
    );
    assert!(
        received
            .iter()
            .all(|s| attr_str(s, "flight_recorder.dump.writer") == "*net/http.response")
    );
    attachment.detach(&mut probes).expect("detach");
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_str(s: &SpanData, key: &str) -> String {
    attr(s, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}

fn tracedump() -> PathBuf {
    let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures/tracedump-flight");
    let out = Command::new(fixture::go())
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(fixture::fixtures_dir().join("tracedump"))
        .env("CGO_ENABLED", "0")
        .output()
        .expect("go build tracedump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// `Key=value` of a tracedump line (quoted values unquoted, escapes kept).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!(" {key}=");
    let Some(at) = line.find(&pat) else { return "" };
    let rest = &line[at + pat.len()..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"').unwrap_or(quoted.len());
        &quoted[..end]
    } else {
        rest.split(' ').next().unwrap_or_default()
    }
}

/// Spans of the dump against Go's own parser reading the saved copy:
/// the same tasks (by id), the same regions (by type, counting those
/// whose begin fell outside the window), the same logs.
fn check_spans(dump: &CompletedDump, saved: &Path) -> BTreeMap<String, usize> {
    let mut spans = Vec::new();
    let summary = flight::dump_to_spans(dump, &DumpSpanOptions::default(), &mut |batch| {
        spans.extend(
            batch
                .iter()
                .map(|s| s.to_span_data().expect("a valid Span message")),
        );
    })
    .expect("dump decodes");
    assert!(summary.tasks > 0, "{summary:?}");
    for s in &spans {
        assert_eq!(attr_str(s, "flight_recorder.dump.id"), dump.id);
        assert_eq!(
            attr(s, "flight_recorder.dump.size"),
            Some(&Value::I64(dump.bytes.len() as i64))
        );
        assert!(!attr_str(s, "flight_recorder.dump.time").is_empty());
        assert_eq!(
            attr(s, "flight_recorder.dump.complete"),
            Some(&Value::Bool(true))
        );
    }

    let out = Command::new(tracedump())
        .arg(saved)
        .output()
        .expect("run tracedump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut go_tasks = std::collections::BTreeSet::new();
    let mut go_regions: BTreeMap<String, usize> = BTreeMap::new();
    let mut go_logs: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut stacks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let g = field(line, "G").to_owned();
        if line.contains(" TaskBegin ") || line.contains(" TaskEnd ") {
            let id: i64 = field(line, "ID").parse().expect("task id");
            go_tasks.insert(id);
        } else if line.contains(" RegionBegin ") {
            let ty = field(line, "Type").to_owned();
            *go_regions.entry(ty.clone()).or_default() += 1;
            stacks.entry(g).or_default().push(ty);
        } else if line.contains(" RegionEnd ") {
            let ty = field(line, "Type").to_owned();
            let stack = stacks.entry(g).or_default();
            if stack.last() == Some(&ty) {
                stack.pop();
            } else {
                // Begun before the window: a truncated span of its own.
                *go_regions.entry(ty).or_default() += 1;
            }
        } else if line.contains(" Log ") {
            let key = (
                field(line, "Category").to_owned(),
                field(line, "Message").to_owned(),
            );
            *go_logs.entry(key).or_default() += 1;
        }
    }
    assert!(!go_tasks.is_empty());
    let span_tasks: std::collections::BTreeSet<i64> = spans
        .iter()
        .filter(|s| attr_str(s, "trace.event.kind") == "task")
        .filter_map(|s| match attr(s, "go.task.id") {
            Some(Value::I64(id)) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(span_tasks, go_tasks, "task ids");
    let mut span_regions: BTreeMap<String, usize> = BTreeMap::new();
    for s in spans
        .iter()
        .filter(|s| attr_str(s, "trace.event.kind") == "region")
    {
        *span_regions.entry(s.name.to_string()).or_default() += 1;
    }
    assert_eq!(span_regions, go_regions, "regions by type");
    assert!(!span_regions.is_empty());
    let mut span_logs: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in &spans {
        for e in s.events.iter() {
            let cat = e
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "go.log.category");
            let msg = e
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "go.log.message");
            if let (Some(cat), Some(msg)) = (cat, msg) {
                *span_logs
                    .entry((
                        cat.value.as_str().into_owned(),
                        msg.value.as_str().into_owned(),
                    ))
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(summary.unattached_logs, 0);
    assert_eq!(span_logs, go_logs, "logs");
    assert!(go_logs.keys().any(|(c, _)| c == "id"));
    span_regions
}

#[test]
fn save_dump_writes_the_exact_bytes() {
    let dump = CompletedDump {
        slot: 0,
        pid: 4242,
        dump_id: 0xabc,
        id: "4242-abc".to_owned(),
        recorder: "runtime/trace",
        goid: 7,
        tid: 4243,
        start_ktime_ns: 1_000,
        end_ktime_ns: 2_000,
        writer: None,
        writer_itab: 0,
        writer_data: 0,
        bytes: b"go 1.26 trace\0\0\0rest".to_vec(),
        returned: 20,
        offered: 20,
        writes: 2,
        chunks: 2,
        write_error: false,
        complete: true,
        problems: Vec::new(),
    };
    let dir = work_dir();
    let clock = agent::clock::WallClock::with_offset_ns(1_700_000_000_000_000_000);
    let path = flight::save_dump(&dir.path().join("sub"), &dump, &clock).expect("save");
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some("4242-20231114T221320.000Z-abc.trace")
    );
    assert_eq!(std::fs::read(&path).expect("read"), dump.bytes);
    let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    let _ = Instant::now();
}
