//! `cargo xtask bench ...`: benchmarks whose figures go to BENCHMARKS.md.
//!
//! Every figure is a median over alternating rounds, next to a baseline
//! measured in the same run: these machines are noisy.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::{
    demo::{start_agent, terminate},
    util::root,
};

mod hops;
mod http;
mod outputs;
mod propagate;
mod sampling;
mod syscalls;

#[derive(Debug, Subcommand)]
pub enum Which {
    /// Throughput of the Go HTTP fixture under wrk, untraced vs traced; the
    /// agent's CPU per 1,000 spans and peak RSS.
    Http {
        /// Alternating rounds per configuration.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 16)]
        connections: u32,
    },
    /// The HTTP fixture at saturation, traced with each output: OTLP/HTTP
    /// to a local sink, JSONL to /dev/null, the console to /dev/null; the
    /// agent's CPU per 1,000 spans and what was lost.
    Outputs {
        /// Alternating rounds per configuration.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 16)]
        connections: u32,
    },
    /// A request with one HTTP client call and two SQL queries, and each
    /// hop alone: untraced, empty uprobes at the agent's sites, traced.
    Hops {
        /// Alternating rounds per configuration and request.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 16)]
        connections: u32,
        /// Microseconds of CPU work in the combined request's handler.
        #[arg(long, default_value_t = 50)]
        work_us: u32,
    },
    /// The HTTP fixture under wrk, traced with `--sampler always_on`,
    /// `always_off` and `traceidratio 0.25`: the agent's CPU per 1,000
    /// requests, whatever it exports.
    Sampling {
        /// Alternating rounds per configuration.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 16)]
        connections: u32,
    },
    /// `/client` of the hops fixture (one HTTP/1.1 call), or with
    /// `--protocol grpc` `/front-plain` of the grpcprop fixture (one gRPC
    /// call over plaintext HTTP/2): untraced, traced, traced with
    /// `--propagate` (what sending trace context costs).
    Propagate {
        /// `http1` or `grpc`.
        #[arg(long, default_value = "http1")]
        protocol: String,
        /// Alternating rounds per configuration.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 16)]
        connections: u32,
    },
    /// A program making 1 M small writes, and the Go HTTP fixture under
    /// wrk: untraced, under the agent with `--syscalls` (spans to a local
    /// sink), under `strace -f`.
    Syscalls {
        /// Alternating rounds per configuration.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Writes per run.
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        /// Seconds per wrk run against the HTTP server.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 16)]
        connections: u32,
        /// Which workloads: `writes`, `http` or `all`.
        #[arg(long, default_value = "all", value_parser = ["writes", "http", "all"])]
        workload: String,
    },
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Http {
            rounds,
            seconds,
            connections,
        } => http::http(rounds, seconds, connections),
        Which::Outputs {
            rounds,
            seconds,
            connections,
        } => outputs::outputs(rounds, seconds, connections),
        Which::Hops {
            rounds,
            seconds,
            connections,
            work_us,
        } => hops::hops(&hops::HopsOptions {
            rounds,
            seconds,
            connections,
            work_us,
        }),
        Which::Syscalls {
            rounds,
            calls,
            seconds,
            connections,
            workload,
        } => {
            if workload != "http" {
                syscalls::syscalls(rounds, calls)?;
            }
            if workload != "writes" {
                syscalls::syscalls_http(rounds, seconds, connections)?;
            }
            Ok(())
        }
        Which::Sampling {
            rounds,
            seconds,
            connections,
        } => sampling::sampling(rounds, seconds, connections),
        Which::Propagate {
            protocol,
            rounds,
            seconds,
            connections,
        } => propagate::propagate(&protocol, rounds, seconds, connections),
    }
}

/// An OTLP/HTTP sink that accepts and discards every export.
fn start_sink() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || accept_sink(&listener));
    Ok(addr)
}

fn accept_sink(listener: &TcpListener) {
    for stream in listener.incoming().map_while(Result::ok) {
        std::thread::spawn(move || serve_sink(stream));
    }
}

/// `cargo xtask sink`: the same sink in the foreground. Prints
/// `listening on ADDR` once bound.
pub fn serve_sink_forever(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    accept_sink(&listener);
    Ok(())
}

fn serve_sink(stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut first = true;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let response =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Requests per second of `wrk -t1` against `url`.
fn wrk(url: &str, seconds: u64, connections: u32) -> anyhow::Result<f64> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

/// utime + stime of `pid`, in milliseconds.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat; after the comm, state is index 0 (field 3).
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    let ticks = 100.0; // USER_HZ on Linux
    Ok((utime + stime) * 1000.0 / ticks)
}

fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    Ok(kb / 1024.0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

struct TracedRound {
    rps: f64,
    cpu_per_1000: f64,
    rss_mb: f64,
    spans: u64,
    /// The agent's CPU time over the run (utime+stime), ms.
    cpu_ms: f64,
    /// Spans the sampler left out (`sampled_out`).
    sampled_out: u64,
    /// Records the kernel could not write (ring buffer full, preempted).
    lost_records: u64,
    /// Spans lost after the kernel: export queue, export, ends without start.
    lost_spans: u64,
    /// Requests that carried trace context out (`--propagate`): HTTP/1.1,
    /// gRPC.
    propagated: u64,
    propagated_grpc: u64,
    /// Requests whose context was never seen on a traced connection.
    propagation_not_seen: u64,
}

fn traced_round(
    agent: &Path,
    pid: u32,
    url: &str,
    sink: SocketAddr,
    extra: &[&str],
    seconds: u64,
    connections: u32,
) -> anyhow::Result<TracedRound> {
    let summary_file = tempfile_path("agent-bench-summary");
    let mut args = vec![
        "--pid".to_owned(),
        pid.to_string(),
        "--summary-file".to_owned(),
        summary_file.display().to_string(),
    ];
    // OTLP to the sink unless the configuration names its own output.
    if !extra.contains(&"--output") {
        args.extend([
            "--otlp-endpoint".to_owned(),
            format!("http://{sink}"),
            "--otlp-protocol".to_owned(),
            "http/protobuf".to_owned(),
        ]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    // Console output, when asked for, goes nowhere: it is measured, not read.
    // Spans are what is measured: metrics only where a configuration asks
    // for them (an OTLP endpoint would turn OTLP metrics on by default).
    let envs: &[(&str, &str)] = if extra.contains(&"--metrics-listen") {
        &[]
    } else {
        &[("OTEL_METRICS_EXPORTER", "none")]
    };
    let guard = start_agent(agent, &args, Stdio::null(), envs)?;
    let agent_pid = guard.0.id();
    let cpu_before = cpu_ms(agent_pid)?;
    let rps = wrk(url, seconds, connections)?;
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_ms(agent_pid)? - cpu_before;
    let rss_mb = peak_rss_mb(agent_pid)?;
    let status = terminate(guard)?;
    if !status.success() {
        bail!("agent exited with {status}");
    }
    let summary = std::fs::read_to_string(&summary_file).context("agent summary file")?;
    let _ = std::fs::remove_file(&summary_file);
    let value = |key: &str| -> u64 {
        summary
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let spans = value("spans_exported");
    let sampled_out = value("sampled_out");
    if spans + sampled_out == 0 {
        bail!("the agent exported no spans and sampled none out");
    }
    Ok(TracedRound {
        rps,
        cpu_per_1000: cpu / spans as f64 * 1000.0,
        rss_mb,
        spans,
        cpu_ms: cpu,
        sampled_out,
        lost_records: value("ringbuf_full") + value("interleaved"),
        lost_spans: value("dropped_queue_full")
            + value("dropped_export_failed")
            + value("unmatched_ends"),
        propagated: value("propagated"),
        propagated_grpc: value("propagated_grpc"),
        propagation_not_seen: value("propagation_skipped_not_seen"),
    })
}

/// Median and range of per-round ratios `values[i] / base[i]`.
fn ratio_summary(values: &[f64], base: &[f64]) -> String {
    let mut ratios: Vec<f64> = values.iter().zip(base).map(|(v, b)| v / b).collect();
    let med = median(&mut ratios);
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
    format!("{med:.2}x ({lo:.2}-{hi:.2})")
}

fn tempfile_path(prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()))
}

/// Replaces (or appends) the marked section `name` of BENCHMARKS.md.
pub fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
    let path = root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let block = format!("{start}\n{body}{end}\n");
    let new = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!(
                "{}{block}{}",
                &text[..s],
                &text[e + end.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{block}", text.trim_end()),
    };
    std::fs::write(&path, new)?;
    eprintln!("bench: wrote the {name} section of {}", path.display());
    Ok(())
}
