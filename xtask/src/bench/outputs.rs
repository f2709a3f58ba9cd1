//! `cargo xtask bench outputs`: what each output costs the agent and loses
//! at the HTTP fixture's saturation rate.

use anyhow::bail;

use super::{TracedRound, median, ratio_summary, start_sink, traced_round, write_section, wrk};
use crate::{
    demo::{build_all, start_fixture},
    util::is_root,
};

pub fn outputs(rounds: usize, seconds: u64, connections: u32) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the benchmark loads BPF programs: run it as root (sudo -E cargo xtask bench outputs)"
        );
    }
    crate::setup::run()?;
    let (agent, fixture) = build_all()?;
    let sink = start_sink()?;
    let (server, addr) = start_fixture(&fixture, &[])?;
    let pid = server.0.id();
    let url = format!("http://{addr}/hello");
    let configs: [(&str, &[&str]); 5] = [
        ("OTLP/HTTP to a local sink", &[]),
        (
            "OTLP/HTTP, gzip (`--otlp-compression gzip`)",
            &["--otlp-compression", "gzip"],
        ),
        (
            "OTLP/HTTP, request and agent metrics on (`--metrics-listen`)",
            &["--metrics-listen", "127.0.0.1:0"],
        ),
        ("JSONL to /dev/null", &["--output", "jsonl=/dev/null"]),
        ("console to /dev/null", &["--output", "console"]),
    ];
    let mut untraced = Vec::new();
    let mut traced: Vec<Vec<TracedRound>> = configs.iter().map(|_| Vec::new()).collect();
    wrk(&url, 1, connections)?;
    for round in 0..rounds {
        let rps = wrk(&url, seconds, connections)?;
        eprintln!("bench: round {round}: untraced {rps:.0} req/s");
        untraced.push(rps);
        for (i, (name, extra)) in configs.iter().enumerate() {
            let r = traced_round(&agent, pid, &url, sink, extra, seconds, connections)?;
            eprintln!(
                "bench: round {round}: {name}: {:.0} req/s, {} spans, {:.3} ms CPU / 1000 spans, lost {} records {} spans",
                r.rps, r.spans, r.cpu_per_1000, r.lost_records, r.lost_spans
            );
            traced[i].push(r);
        }
    }
    drop(server);
    let otlp_cpu: Vec<f64> = traced[0].iter().map(|r| r.cpu_per_1000).collect();
    let mut table = String::new();
    table.push_str("| output | req/s (median) | vs untraced (median, range) | agent CPU per 1,000 spans (median) | vs OTLP's CPU (median of per-round ratios) | peak RSS (median) | records lost (max) | spans lost (max) |\n");
    table.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    table.push_str(&format!(
        "| untraced | {:.0} | 1.00x | - | - | - | - | - |\n",
        median(&mut untraced.clone())
    ));
    for ((name, _), rounds) in configs.iter().zip(&traced) {
        let rps: Vec<f64> = rounds.iter().map(|r| r.rps).collect();
        let cpu: Vec<f64> = rounds.iter().map(|r| r.cpu_per_1000).collect();
        let rss = median(&mut rounds.iter().map(|r| r.rss_mb).collect::<Vec<_>>());
        let lost_records = rounds.iter().map(|r| r.lost_records).max().unwrap_or(0);
        let lost_spans = rounds.iter().map(|r| r.lost_spans).max().unwrap_or(0);
        table.push_str(&format!(
            "| {name} | {:.0} | {} | {:.2} ms | {} | {rss:.1} MB | {lost_records} | {lost_spans} |\n",
            median(&mut rps.clone()),
            ratio_summary(&rps, &untraced),
            median(&mut cpu.clone()),
            ratio_summary(&cpu, &otlp_cpu),
        ));
    }
    let section = format!(
        "## Outputs at saturation\n\n\
         Command: `sudo -E cargo xtask bench outputs --rounds {rounds} --seconds {seconds} --connections {connections}`\n\n\
         The Go HTTP fixture (`agent/tests/fixtures/httpserver`, GET /hello) under `wrk -t1 -c{connections}` on loopback, \
         {rounds} alternating rounds of {seconds} s per configuration in one run, the agent with its default ring \
         buffer, one output each and metrics off (`OTEL_METRICS_EXPORTER=none`: an OTLP endpoint would turn OTLP metrics on). Agent CPU is utime+stime of the agent over the run divided by the spans it \
         exported; the gzip and metrics rows are OTLP with that one change, against the first row. Records lost: the kernel's ring-buffer-full and preempted counts; spans lost: the export queue, \
         failed exports and ends without start, from the agent's `--summary-file`.\n\n{table}"
    );
    print!("{section}");
    write_section("outputs", &section)
}
