//! `cargo xtask bench sampling`: what a sampled-out request costs the
//! agent, against a sampled one, on the HTTP server fixture under wrk.

use anyhow::bail;

use super::{TracedRound, median, ratio_summary, start_sink, traced_round, write_section, wrk};
use crate::{
    demo::{build_all, start_fixture},
    util::is_root,
};

/// Agent CPU per 1,000 requests (each GET /hello is one span, exported or
/// sampled out).
fn cpu_per_1000_requests(r: &TracedRound) -> f64 {
    r.cpu_ms / (r.spans + r.sampled_out) as f64 * 1000.0
}

pub fn sampling(rounds: usize, seconds: u64, connections: u32) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the benchmark loads BPF programs: run it as root (sudo -E cargo xtask bench sampling)"
        );
    }
    crate::setup::run()?;
    let (agent, fixture) = build_all()?;
    let sink = start_sink()?;
    let (server, addr) = start_fixture(&fixture, &[])?;
    let pid = server.0.id();
    let url = format!("http://{addr}/hello");
    // The baseline first: every row is compared with it, round by round.
    let configs: [(&str, &[&str]); 3] = [
        ("`--sampler always_on`", &["--sampler", "always_on"]),
        ("`--sampler always_off`", &["--sampler", "always_off"]),
        (
            "`--sampler traceidratio --sampler-arg 0.25`",
            &["--sampler", "traceidratio", "--sampler-arg", "0.25"],
        ),
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
                "bench: round {round}: {name}: {:.0} req/s, {} spans exported, {} sampled out, {:.3} ms CPU / 1000 requests",
                r.rps,
                r.spans,
                r.sampled_out,
                cpu_per_1000_requests(&r)
            );
            traced[i].push(r);
        }
    }
    drop(server);
    let base_cpu: Vec<f64> = traced[0].iter().map(cpu_per_1000_requests).collect();
    let mut table = String::new();
    table.push_str("| sampler | req/s (median) | vs untraced (median of per-round ratios, range) | spans exported / sampled out (median per run) | agent CPU per 1,000 requests (median) | vs always_on (median of per-round ratios, range) |\n");
    table.push_str("|---|---:|---:|---:|---:|---:|\n");
    table.push_str(&format!(
        "| untraced | {:.0} | 1.00x | - | - | - |\n",
        median(&mut untraced.clone())
    ));
    for ((name, _), rounds) in configs.iter().zip(&traced) {
        let rps: Vec<f64> = rounds.iter().map(|r| r.rps).collect();
        let cpu: Vec<f64> = rounds.iter().map(cpu_per_1000_requests).collect();
        let exported = median(&mut rounds.iter().map(|r| r.spans as f64).collect::<Vec<_>>());
        let out = median(
            &mut rounds
                .iter()
                .map(|r| r.sampled_out as f64)
                .collect::<Vec<_>>(),
        );
        table.push_str(&format!(
            "| {name} | {:.0} | {} | {exported:.0} / {out:.0} | {:.2} ms | {} |\n",
            median(&mut rps.clone()),
            ratio_summary(&rps, &untraced),
            median(&mut cpu.clone()),
            ratio_summary(&cpu, &base_cpu),
        ));
    }
    let section = format!(
        "## Sampling: what a sampled-out request costs\n\n\
         Command: `sudo -E cargo xtask bench sampling --rounds {rounds} --seconds {seconds} --connections {connections}`\n\n\
         The Go HTTP fixture (`agent/tests/fixtures/httpserver`, GET /hello, one SERVER span per request) under \
         `wrk -t1 -c{connections}` on loopback, {rounds} alternating rounds of {seconds} s per configuration in one \
         run, exporting over OTLP/HTTP to a local sink. Agent CPU is utime+stime of the agent process over the run \
         divided by the requests it saw (spans exported + `sampled_out`). A sampled-out request still costs its \
         uprobes and its records (the decision needs the trace id, made in user space); the agent then neither \
         encodes nor exports its span.\n\n{table}"
    );
    print!("{section}");
    write_section("sampling", &section)
}
