//! Flight-recorder capture benchmark (`scripts/bench-flight.sh` runs it).
//!
//! Usage (root): `flight_bench <flightrec binary> [dumps] [min-dump-bytes]`
//!
//! Starts the flightrec fixture (`-load 2`, a 10 MiB / 120 s window), keeps
//! one client sending `/work` requests on a keep-alive connection, waits
//! until a dump is at least `min-dump-bytes`, then, in the same run:
//!
//! 1. without the agent: `dumps` dumps to a file, 400 ms apart;
//! 2. with the flight probes attached and a reader thread (woken by the
//!    ring buffer, as the live agent is) capturing and decoding every dump
//!    into spans: the same number of dumps.
//!
//! It prints the request latency medians (outside dumps / overlapping a
//! dump) for both phases, and for phase 2 the time from WriteTo's return
//! (the kernel timestamp of the return-site probe) to the last span
//! produced, plus the dump sizes, as a Markdown table.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use agent::{
    binary::GoBinary,
    clock::WallClock,
    flight::{self, CaptureOptions, DumpSpanOptions, FlightCapture},
    probes::{LoadOptions, Probes},
    target::Target,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let binary =
        PathBuf::from(args.next().ok_or_else(|| {
            anyhow::anyhow!("usage: flight_bench <flightrec> [dumps] [min-bytes]")
        })?);
    let dumps: usize = args.next().map_or(Ok(10), |s| s.parse())?;
    let min_bytes: usize = args.next().map_or(Ok(10 << 20), |s| s.parse())?;

    let mut child = Command::new(&binary)
        .args(["-load", "2", "-min-age", "120s", "-max-bytes", "10485760"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("fixture exited"))??;
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.parse()?;
        }
    };
    thread::spawn(move || for _ in lines {});
    let result = run(pid, addr, dumps, min_bytes);
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// One request: start and end, monotonic.
type Sample = (Instant, Instant);

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn request(
    conn: &mut BufReader<TcpStream>,
    addr: SocketAddr,
    target: &str,
) -> anyhow::Result<Vec<u8>> {
    // One write per request, and no Nagle: no delayed-ACK stalls.
    let head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    conn.get_mut().write_all(head.as_bytes())?;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok(body)
}

fn dump(addr: SocketAddr, path: &str) -> anyhow::Result<(Instant, Instant, usize)> {
    let mut conn = BufReader::new(connect(addr)?);
    let start = Instant::now();
    let body = request(&mut conn, addr, &format!("/dump?to=file&path={path}"))?;
    let end = Instant::now();
    let text = String::from_utf8_lossy(&body);
    let n = text
        .strip_prefix("n=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("dump failed: {text}"))?;
    Ok((start, end, n))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians (ms) of requests outside any dump (100 ms margin) and of those
/// overlapping one, with their counts.
fn split(samples: &[Sample], dumps: &[(Instant, Instant)]) -> (f64, usize, f64, usize) {
    let margin = Duration::from_millis(100);
    let (mut normal, mut during) = (Vec::new(), Vec::new());
    for &(s, e) in samples {
        let ms = (e - s).as_secs_f64() * 1e3;
        if dumps.iter().any(|&(ds, de)| s < de && e > ds) {
            during.push(ms);
        } else if dumps
            .iter()
            .all(|&(ds, de)| e + margin < ds || s > de + margin)
        {
            normal.push(ms);
        }
    }
    let (nn, nd) = (normal.len(), during.len());
    (median(normal), nn, median(during), nd)
}

fn run(pid: u32, addr: SocketAddr, dumps: usize, min_bytes: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dump.trace");
    let path = path.to_string_lossy().into_owned();

    // The latency client.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let samples = Arc::clone(&samples);
        let stop = Arc::clone(&stop);
        thread::spawn(move || -> anyhow::Result<()> {
            let mut conn = BufReader::new(connect(addr)?);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                request(&mut conn, addr, &format!("/work?spin=20000&id=c{i}"))?;
                let e = Instant::now();
                if let Ok(mut v) = samples.lock() {
                    v.push((s, e));
                }
                i += 1;
                thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })
    };

    // Fill the window.
    let fill_start = Instant::now();
    loop {
        let (_, _, n) = dump(addr, &path)?;
        if n >= min_bytes {
            eprintln!(
                "window reached {n} bytes after {:.1} s",
                fill_start.elapsed().as_secs_f64()
            );
            break;
        }
        anyhow::ensure!(
            fill_start.elapsed() < Duration::from_secs(180),
            "window stuck at {n} bytes"
        );
        thread::sleep(Duration::from_secs(2));
    }

    // Phase 1: no agent.
    let phase1_start = Instant::now();
    let mut plain = Vec::new();
    let mut sizes_plain = Vec::new();
    for _ in 0..dumps {
        thread::sleep(Duration::from_millis(400));
        let (s, e, n) = dump(addr, &path)?;
        plain.push((s, e));
        sizes_plain.push(n as f64);
    }
    thread::sleep(Duration::from_millis(400));
    let phase1_end = Instant::now();

    // Phase 2: the agent attached.
    let target = Target::open(pid)?;
    let bin = GoBinary::open(&target.exe_path)?;
    let plan = flight::plan(&bin)?.ok_or_else(|| anyhow::anyhow!("no flight recorder"))?;
    let mut probes = Probes::load(LoadOptions::default())?;
    let attachment = flight::attach(&mut probes, &target, 0, &plan)?;
    let mut ring = flight::take_ring_buffer(&mut probes)?;
    let mut capture = FlightCapture::new(CaptureOptions::default());
    capture.watch(&attachment);
    let (tx, rx) = mpsc::channel();
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&reader_stop);
        thread::spawn(move || {
            // As the agent's decoder thread: the lowest CPU priority, so the
            // traced program does not share its cores with the decoding.
            // SAFETY: setpriority on this thread's own id; no memory passed.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
            let opts = DumpSpanOptions::default();
            let fd = ring.as_raw_fd();
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, 50) };
                while let Some(item) = ring.next() {
                    let Some(dump) = capture.on_bytes(&item) else {
                        continue;
                    };
                    let captured = WallClock::monotonic_now_ns();
                    let mut spans = 0u64;
                    let res = flight::dump_to_spans(&dump, &opts, &mut |b| spans += b.len() as u64);
                    let done = WallClock::monotonic_now_ns();
                    let _ = tx.send((
                        captured,
                        dump.complete,
                        dump.bytes.len(),
                        dump.end_ktime_ns,
                        done,
                        spans,
                        res.is_ok(),
                    ));
                }
            }
        })
    };
    let phase2_start = Instant::now();
    let mut traced = Vec::new();
    let mut lag = Vec::new();
    let mut capture_lag = Vec::new();
    let mut decode = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..dumps {
        thread::sleep(Duration::from_millis(400));
        let (s, e, n) = dump(addr, &path)?;
        traced.push((s, e));
        let (captured_ns, complete, len, end_ns, done_ns, spans, ok) =
            rx.recv_timeout(Duration::from_secs(30))?;
        anyhow::ensure!(
            complete && ok && len == n && spans > 0,
            "dump not captured whole: complete={complete} decoded={ok} {len}/{n} bytes, {spans} spans"
        );
        lag.push(done_ns.saturating_sub(end_ns) as f64 / 1e6);
        capture_lag.push(captured_ns.saturating_sub(end_ns) as f64 / 1e6);
        decode.push(done_ns.saturating_sub(captured_ns) as f64 / 1e6);
        sizes.push(len as f64);
    }
    thread::sleep(Duration::from_millis(400));
    let phase2_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    reader_stop.store(true, Ordering::Relaxed);
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    attachment.detach(&mut probes)?;

    let samples = samples
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let in_phase = |a: Instant, b: Instant| -> Vec<Sample> {
        samples
            .iter()
            .copied()
            .filter(|&(s, e)| s >= a && e <= b)
            .collect()
    };
    let (n1, c1n, d1, c1d) = split(&in_phase(phase1_start, phase1_end), &plain);
    let (n2, c2n, d2, c2d) = split(&in_phase(phase2_start, phase2_end), &traced);
    let dump_ms = |v: &[(Instant, Instant)]| {
        median(
            v.iter()
                .map(|(s, e)| (*e - *s).as_secs_f64() * 1e3)
                .collect(),
        )
    };
    println!(
        "| phase | dumps | dump size (median) | /dump request (median) | request latency outside dumps (median, n) | during a dump (median, n) | during / outside |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| no agent | {dumps} | {:.2} MiB | {:.1} ms | {n1:.3} ms ({c1n}) | {d1:.3} ms ({c1d}) | {:.2}x |",
        median(sizes_plain) / 1048576.0,
        dump_ms(&plain),
        d1 / n1
    );
    println!(
        "| flight probes attached, capturing + decoding | {dumps} | {:.2} MiB | {:.1} ms | {n2:.3} ms ({c2n}) | {d2:.3} ms ({c2d}) | {:.2}x |",
        median(sizes.clone()) / 1048576.0,
        dump_ms(&traced),
        d2 / n2
    );
    println!();
    let max_lag = lag.iter().copied().fold(0.0, f64::max);
    println!(
        "End of WriteTo (return-site probe) to the last span produced: median {:.1} ms, max {:.1} ms over {dumps} dumps of {:.2} MiB (median); every dump complete and byte-for-byte the size WriteTo returned.",
        median(lag),
        max_lag,
        median(sizes) / 1048576.0
    );
    println!(
        "Of which: WriteTo's return to the dump reassembled (its end record drained) median {:.1} ms; decoding it into spans median {:.1} ms.",
        median(capture_lag),
        median(decode)
    );
    println!();
    println!(
        "Request latency during a dump with the agent vs without: {:+.1}% (medians); outside dumps: {:+.1}%.",
        (d2 / d1 - 1.0) * 100.0,
        (n2 / n1 - 1.0) * 100.0
    );
    Ok(())
}
