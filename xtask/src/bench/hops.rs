//! `cargo xtask bench hops`: a request that makes the hops the issue-15
//! families trace (one HTTP client call, two SQL queries), and each hop
//! alone, untraced vs empty uprobes at the agent's sites vs traced.
//!
//! The target is `agent/tests/fixtures/sqlapp/hopsbench`: a front service
//! (the traced process) and a back service in a process of its own, so the
//! only probes that fire are the front's.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{TracedRound, median, ratio_summary, start_sink, traced_round, write_section, wrk};
use crate::{
    demo::{Guard, build_agent, build_go, start_fixture_with, terminate},
    util::is_root,
};

/// What one endpoint of the front service does per request.
struct Endpoint {
    path: &'static str,
    what: &'static str,
    /// Spans the traced process makes per request.
    spans: u32,
}

const ENDPOINTS: [Endpoint; 3] = [
    Endpoint {
        path: "/hops",
        what: "~{work} us of work, one HTTP client call, two queries",
        spans: 4,
    },
    Endpoint {
        path: "/client",
        what: "one HTTP client call",
        spans: 2,
    },
    Endpoint {
        path: "/query",
        what: "one query",
        spans: 2,
    },
];

/// The options of one run.
pub struct HopsOptions {
    pub rounds: usize,
    pub seconds: u64,
    pub connections: u32,
    pub work_us: u32,
}

/// The file offsets in `fixture` where the agent attaches its uprobes in
/// process `pid`, from its `-v` log (one line per attached site).
fn attached_sites(
    agent: &Path,
    fixture: &Path,
    pid: u32,
    sink: SocketAddr,
) -> anyhow::Result<Vec<u64>> {
    let mut child = Command::new(agent)
        .args(["-v", "--pid", &pid.to_string()])
        .arg("--otlp-endpoint")
        .arg(format!("http://{sink}"))
        .args(["--otlp-protocol", "http/protobuf"])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    let stderr = child.stderr.take().context("agent stderr")?;
    let guard = Guard(child);
    // `attached at /proc/PID/root/PATH +0xOFFSET`: the path as seen from
    // the target's mount namespace.
    let fixture = fixture.display().to_string();
    let mut sites = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        let site = line
            .split_once(" attached at ")
            .and_then(|(_, at)| at.rsplit_once(" +0x"))
            .filter(|(path, _)| path.ends_with(&fixture));
        if let Some((_, hex)) = site {
            sites
                .push(u64::from_str_radix(hex.trim(), 16).with_context(|| format!("in {line:?}"))?);
        }
        if line.contains("attached to PID") {
            break;
        }
    }
    terminate(guard)?;
    if sites.is_empty() {
        bail!("the agent logged no attached site in {fixture}");
    }
    Ok(sites)
}

/// One endpoint's rounds.
#[derive(Default)]
struct Results {
    untraced: Vec<f64>,
    floor: Vec<f64>,
    traced: Vec<TracedRound>,
}

/// Machine time per request (2 cores busy) in microseconds, at `rps`.
fn us_per_request(rps: f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    cores * 1e6 / rps
}

pub fn hops(options: &HopsOptions) -> anyhow::Result<()> {
    let HopsOptions {
        rounds,
        seconds,
        connections,
        work_us,
    } = *options;
    if !is_root() {
        bail!("the benchmark loads BPF programs: run it as root (sudo -E cargo xtask bench hops)");
    }
    crate::setup::run()?;
    let agent = build_agent()?;
    let fixture = build_go(Path::new("agent/tests/fixtures/sqlapp"), "hopsbench")?;
    let sink = start_sink()?;
    let (back, back_addr) = start_fixture_with(&fixture, &[], &["-role", "back"])?;
    let (front, addr) = start_fixture_with(
        &fixture,
        &[],
        &[
            "-back",
            &back_addr.to_string(),
            "-work-us",
            &work_us.to_string(),
        ],
    )?;
    let pid = front.0.id();
    let sites = attached_sites(&agent, &fixture, pid, sink)?;
    eprintln!("bench: the agent attaches at {} sites", sites.len());
    let mut results: Vec<Results> = ENDPOINTS.iter().map(|_| Results::default()).collect();
    for (endpoint, result) in ENDPOINTS.iter().zip(&mut results) {
        let url = format!("http://{addr}{}", endpoint.path);
        wrk(&url, 1, connections)?;
        for round in 0..rounds {
            let rps = wrk(&url, seconds, connections)?;
            eprintln!(
                "bench: {} round {round}: untraced {rps:.0} req/s",
                endpoint.path
            );
            result.untraced.push(rps);
            let probes = crate::uprobe_floor::attach(&fixture, &sites, pid)?;
            let rps = wrk(&url, seconds, connections)?;
            drop(probes);
            eprintln!(
                "bench: {} round {round}: empty uprobes {rps:.0} req/s",
                endpoint.path
            );
            result.floor.push(rps);
            let r = traced_round(&agent, pid, &url, sink, &[], seconds, connections)?;
            eprintln!(
                "bench: {} round {round}: traced {:.0} req/s, {} spans, {:.3} ms CPU / 1000 spans",
                endpoint.path, r.rps, r.spans, r.cpu_per_1000
            );
            result.traced.push(r);
        }
    }
    drop(front);
    drop(back);
    let section = report(options, &sites, &results);
    print!("{section}");
    write_section("hops", &section)
}

fn report(options: &HopsOptions, sites: &[u64], results: &[Results]) -> String {
    let HopsOptions {
        rounds,
        seconds,
        connections,
        work_us,
    } = *options;
    let mut table = String::new();
    table.push_str(
        "| request | untraced req/s | empty uprobes vs untraced | traced vs untraced | \
         machine us per request added: floor / traced | agent CPU per 1,000 spans | spans per request |\n",
    );
    table.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (endpoint, r) in ENDPOINTS.iter().zip(results) {
        let untraced = median(&mut r.untraced.clone());
        let floor = median(&mut r.floor.clone());
        let traced_rps: Vec<f64> = r.traced.iter().map(|t| t.rps).collect();
        let traced = median(&mut traced_rps.clone());
        let cpu = median(&mut r.traced.iter().map(|t| t.cpu_per_1000).collect::<Vec<_>>());
        let spans_per_request = median(
            &mut r
                .traced
                .iter()
                .map(|t| t.spans as f64 / (t.rps * seconds as f64))
                .collect::<Vec<_>>(),
        );
        let base = us_per_request(untraced);
        table.push_str(&format!(
            "| `{}`: {} | {untraced:.0} | {} | {} | {:.1} / {:.1} | {cpu:.2} ms | {spans_per_request:.2} (expected {}) |\n",
            endpoint.path,
            endpoint.what.replace("{work}", &work_us.to_string()),
            ratio_summary(&r.floor, &r.untraced),
            ratio_summary(&traced_rps, &r.untraced),
            us_per_request(floor) - base,
            us_per_request(traced) - base,
            endpoint.spans,
        ));
    }
    format!(
        "## Hops inside a service: HTTP client and database/sql\n\n\
         Command: `sudo -E cargo xtask bench hops --rounds {rounds} --seconds {seconds} --connections {connections} --work-us {work_us}`\n\n\
         The front service of `agent/tests/fixtures/sqlapp/hopsbench` (traced) under `wrk -t1 -c{connections}` on \
         loopback; its HTTP client calls a back service in another process (untraced); its queries go through \
         database/sql to SQLite (modernc.org/sqlite, a file database). {rounds} alternating rounds of {seconds} s per \
         configuration and request in one run. \"Empty uprobes\" attaches a BPF program that does nothing at every \
         one of the {} sites the agent attaches in this binary (read from its `-v` log): the traps and the kernel's \
         uprobe dispatch alone. \"Machine us per request added\" is 2 cores / req/s, traced (or floor) minus \
         untraced: what a request costs the machine more, the agent's own CPU included. Agent CPU is utime+stime \
         of the agent over the run divided by the spans it exported over OTLP/HTTP to a local sink.\n\n{table}",
        sites.len()
    )
}
