//! `cargo xtask bench http`: the HTTP server fixture under wrk.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::{TracedRound, median, ratio_summary, start_sink, traced_round, write_section, wrk};
use crate::{
    demo::{build_all, start_fixture},
    util::is_root,
};

/// File offsets of the entry sites the agent picks for the HTTP/1 start and
/// end probes in `fixture` (from `agent inspect --json`).
fn agent_sites(agent: &Path, fixture: &Path) -> anyhow::Result<Vec<u64>> {
    let out = Command::new(agent)
        .args(["inspect", "--json"])
        .arg(fixture)
        .output()
        .context("running agent inspect")?;
    if !out.status.success() {
        bail!(
            "agent inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ["http.server.request.start", "http.server.request.end"]
        .iter()
        .map(|name| {
            report["probes"]
                .as_array()
                .and_then(|probes| probes.iter().find(|p| p["name"] == *name))
                .and_then(|p| p["entry"]["file_offset"].as_u64())
                .with_context(|| format!("no entry site for {name} in agent inspect"))
        })
        .collect()
}

/// wrk against the fixture with empty uprobes at the agent's sites.
fn floor_round(
    fixture: &Path,
    sites: &[u64],
    pid: u32,
    url: &str,
    seconds: u64,
    connections: u32,
) -> anyhow::Result<f64> {
    let probes = crate::uprobe_floor::attach(fixture, sites, pid)?;
    let rps = wrk(url, seconds, connections);
    drop(probes);
    rps
}

pub fn http(rounds: usize, seconds: u64, connections: u32) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs: run it as root (sudo -E cargo xtask bench http)");
    }
    crate::setup::run()?;
    let (agent, fixture) = build_all()?;
    let sink = start_sink()?;
    // GOMAXPROCS stays at the machine's 2 cores; wrk uses one thread.
    let (server, addr) = start_fixture(&fixture, &[])?;
    let pid = server.0.id();
    let sites = agent_sites(&agent, &fixture)?;
    let url = format!("http://{addr}/hello");
    let configs: [(&str, &[&str]); 3] = [
        ("traced, emulated entry sites (default)", &[]),
        (
            "traced, probes on each function's first instruction (single-stepped)",
            &["--entry-site", "function-start"],
        ),
        // Against the first row: what request and agent metrics cost.
        (
            "traced, default sites, metrics on (`--metrics-listen`)",
            &["--metrics-listen", "127.0.0.1:0"],
        ),
    ];
    let mut untraced = Vec::new();
    let mut floor = Vec::new();
    let mut traced: Vec<Vec<TracedRound>> = configs.iter().map(|_| Vec::new()).collect();
    // Warm up the server and the page cache.
    wrk(&url, 1, connections)?;
    for round in 0..rounds {
        let rps = wrk(&url, seconds, connections)?;
        eprintln!("bench: round {round}: untraced {rps:.0} req/s");
        untraced.push(rps);
        let rps = floor_round(&fixture, &sites, pid, &url, seconds, connections)?;
        eprintln!("bench: round {round}: empty uprobes at the agent's sites: {rps:.0} req/s");
        floor.push(rps);
        for (i, (name, extra)) in configs.iter().enumerate() {
            let r = traced_round(&agent, pid, &url, sink, extra, seconds, connections)?;
            eprintln!(
                "bench: round {round}: {name}: {:.0} req/s, {} spans, {:.3} ms CPU / 1000 spans, {:.1} MB peak RSS",
                r.rps, r.spans, r.cpu_per_1000, r.rss_mb
            );
            traced[i].push(r);
        }
    }
    drop(server);
    let base = median(&mut untraced.clone());
    let mut table = String::new();
    table.push_str("| configuration | req/s (median) | vs untraced (median of per-round ratios, range) | agent CPU per 1,000 spans (median) | agent peak RSS (median) |\n");
    table.push_str("|---|---:|---:|---:|---:|\n");
    table.push_str(&format!("| untraced | {base:.0} | 1.00x | - | - |\n"));
    table.push_str(&format!(
        "| floor: empty uprobes at the agent's two sites, no agent | {:.0} | {} | - | - |\n",
        median(&mut floor.clone()),
        ratio_summary(&floor, &untraced)
    ));
    for ((name, _), rounds) in configs.iter().zip(&traced) {
        let rps: Vec<f64> = rounds.iter().map(|r| r.rps).collect();
        let cpu = median(&mut rounds.iter().map(|r| r.cpu_per_1000).collect::<Vec<_>>());
        let rss = median(&mut rounds.iter().map(|r| r.rss_mb).collect::<Vec<_>>());
        table.push_str(&format!(
            "| {name} | {:.0} | {} | {cpu:.2} ms | {rss:.1} MB |\n",
            median(&mut rps.clone()),
            ratio_summary(&rps, &untraced)
        ));
    }
    let section = format!(
        "## HTTP server tracing\n\n\
         Command: `sudo -E cargo xtask bench http --rounds {rounds} --seconds {seconds} --connections {connections}`\n\n\
         The Go HTTP fixture (`agent/tests/fixtures/httpserver`, GET /hello) under `wrk -t1 -c{connections}` on loopback, \
         {rounds} alternating rounds of {seconds} s per configuration in one run; the traced runs export every span \
         over OTLP/HTTP to a local sink. The floor row attaches a BPF program that does nothing at the same two \
         sites (`xtask/src/uprobe_floor.rs`): the trap and the kernel's uprobe dispatch, which any uprobe tracer pays. \
         Agent CPU is utime+stime of the agent process over the run divided by the spans \
         it exported; peak RSS is its VmHWM.\n\n{table}"
    );
    print!("{section}");
    write_section("http", &section)
}
