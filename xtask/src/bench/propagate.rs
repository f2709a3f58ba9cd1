//! `cargo xtask bench propagate`: what sending W3C trace context costs per
//! outgoing request, beside the client span alone.
//!
//! The target is `agent/tests/fixtures/sqlapp/hopsbench`'s `/client`: a
//! front service (traced) whose handler makes one HTTP/1.1 call to a back
//! service in a process of its own (untraced); with `--protocol grpc`,
//! `agent/tests/fixtures/grpcprop`'s `/front-plain`, one gRPC call over
//! plaintext HTTP/2 to its back (untraced). Three configurations in
//! alternating rounds: untraced, traced (the server and client spans), and
//! traced with `--propagate` (the same spans, the ids made in the kernel,
//! the `traceparent` line or HPACK field inserted by the sk_msg program).

use std::{path::Path, process::Command};

use anyhow::bail;

use super::{TracedRound, median, ratio_summary, start_sink, traced_round, write_section, wrk};
use crate::{
    demo::{build_agent, build_go, start_fixture_with},
    util::{exec, is_root, root},
};

/// What one protocol's benchmark runs.
struct Workload {
    fixture: std::path::PathBuf,
    back_args: &'static [&'static str],
    /// The front's arguments before `-back ADDR`.
    front_args: &'static [&'static str],
    path: &'static str,
    what: &'static str,
    inserted: &'static str,
    grpc: bool,
}

fn workload(protocol: &str) -> anyhow::Result<Workload> {
    match protocol {
        "http1" => Ok(Workload {
            fixture: build_go(Path::new("agent/tests/fixtures/sqlapp"), "hopsbench")?,
            back_args: &["-role", "back"],
            front_args: &["-work-us", "0"],
            path: "/client",
            what: "`/client` of `agent/tests/fixtures/sqlapp/hopsbench` (traced) under `wrk -t1 -c{connections}` on loopback: one HTTP/1.1 call",
            inserted: "the probe on `(*Request).write`, the sk_msg program on every message of the front's outgoing connections and the inserted line",
            grpc: false,
        }),
        "grpc" => {
            let out = root().join("target/xtask/grpcprop");
            exec(
                Command::new("go")
                    .current_dir(root().join("agent/tests/fixtures/grpcprop"))
                    .args(["build", "-o"])
                    .arg(&out)
                    .arg("."),
            )?;
            Ok(Workload {
                fixture: out,
                back_args: &["-role", "back"],
                front_args: &["-role", "front"],
                path: "/front-plain",
                what: "`/front-plain` of `agent/tests/fixtures/grpcprop` (traced) under `wrk -t1 -c{connections}` on loopback: one gRPC call over plaintext HTTP/2 (grpc-go, one connection)",
                inserted: "the probes on `createHeaderFields` (entry and returns) and `writeHeader`, the sk_msg program walking the frames of every message on the front's connection and the appended HPACK field",
                grpc: true,
            })
        }
        other => bail!("--protocol {other}: http1 or grpc"),
    }
}

/// Machine time per request (all cores busy) in microseconds, at `rps`.
fn us_per_request(rps: f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    cores * 1e6 / rps
}

pub fn propagate(
    protocol: &str,
    rounds: usize,
    seconds: u64,
    connections: u32,
) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the benchmark loads BPF programs: run it as root (sudo -E cargo xtask bench propagate)"
        );
    }
    crate::setup::run()?;
    let agent = build_agent()?;
    let work = workload(protocol)?;
    let fixture = &work.fixture;
    let sink = start_sink()?;
    let (back, back_addr) = start_fixture_with(fixture, &[], work.back_args)?;
    let back_arg = back_addr.to_string();
    let mut front_args = work.front_args.to_vec();
    front_args.extend(["-back", &back_arg]);
    // A fresh front for every run: its connections to the back are then
    // all opened while the agent is attached (a connection opened before
    // is not in the sk_msg program's map, and carries no context).
    let front = || start_fixture_with(fixture, &[], &front_args);
    let mut untraced = Vec::new();
    let mut traced: Vec<TracedRound> = Vec::new();
    let mut propagating: Vec<TracedRound> = Vec::new();
    for round in 0..rounds {
        let (guard, addr) = front()?;
        let url = format!("http://{addr}{}", work.path);
        let rps = wrk(&url, seconds, connections)?;
        drop(guard);
        eprintln!("bench: round {round}: untraced {rps:.0} req/s");
        untraced.push(rps);
        let (guard, addr) = front()?;
        let url = format!("http://{addr}{}", work.path);
        let r = traced_round(&agent, guard.0.id(), &url, sink, &[], seconds, connections)?;
        drop(guard);
        eprintln!(
            "bench: round {round}: traced {:.0} req/s, {} spans",
            r.rps, r.spans
        );
        traced.push(r);
        let (guard, addr) = front()?;
        let url = format!("http://{addr}{}", work.path);
        let r = traced_round(
            &agent,
            guard.0.id(),
            &url,
            sink,
            &["--propagate"],
            seconds,
            connections,
        )?;
        drop(guard);
        eprintln!(
            "bench: round {round}: traced --propagate {:.0} req/s, {} spans, {} requests with context, {} not seen",
            r.rps,
            r.spans,
            if work.grpc {
                r.propagated_grpc
            } else {
                r.propagated
            },
            r.propagation_not_seen
        );
        propagating.push(r);
    }
    drop(back);
    let section = report(
        &work,
        rounds,
        seconds,
        connections,
        &untraced,
        &traced,
        &propagating,
    );
    print!("{section}");
    write_section(
        if work.grpc {
            "propagate-grpc"
        } else {
            "propagate"
        },
        &section,
    )
}

fn report(
    work: &Workload,
    rounds: usize,
    seconds: u64,
    connections: u32,
    untraced: &[f64],
    traced: &[TracedRound],
    propagating: &[TracedRound],
) -> String {
    let rps = |rs: &[TracedRound]| rs.iter().map(|r| r.rps).collect::<Vec<_>>();
    let (traced_rps, propagating_rps) = (rps(traced), rps(propagating));
    let base = us_per_request(median(&mut untraced.to_vec()));
    let added = |v: &[f64]| us_per_request(median(&mut v.to_vec())) - base;
    let cpu =
        |rs: &[TracedRound]| median(&mut rs.iter().map(|r| r.cpu_per_1000).collect::<Vec<_>>());
    // Client calls made with the agent attached: one per request, two spans
    // per request.
    let carried: f64 = median(
        &mut propagating
            .iter()
            .map(|r| {
                let sent = if work.grpc {
                    r.propagated_grpc
                } else {
                    r.propagated
                };
                sent as f64 / (r.spans as f64 / 2.0)
            })
            .collect::<Vec<_>>(),
    );
    let not_seen: u64 = propagating.iter().map(|r| r.propagation_not_seen).sum();
    // Paired by round (the two traced runs of a round are next to each
    // other): what --propagate added over the client span alone.
    let paired = median(
        &mut propagating
            .iter()
            .zip(traced)
            .map(|(p, t)| us_per_request(p.rps) - us_per_request(t.rps))
            .collect::<Vec<_>>(),
    );
    let (title, flag) = if work.grpc {
        (" into gRPC calls", " --protocol grpc")
    } else {
        ("", "")
    };
    let what = work.what.replace("{connections}", &connections.to_string());
    format!(
        "## Trace context into outgoing requests{title} (`--propagate`)\n\n\
         Command: `sudo -E cargo xtask bench propagate{flag} --rounds {rounds} --seconds {seconds} --connections {connections}`\n\n\
         {what} to a back service in another process (untraced). {rounds} alternating rounds of {seconds} s per \
         configuration in one run. \"Machine us per request added\" is cores / req/s minus the same untraced; the \
         difference between the two traced rows is what propagation costs per outgoing request: the ids made in the \
         kernel, the goroutine and request maps, {inserted}.\n\n\
         | configuration | median req/s | vs untraced | machine us per request added | agent CPU per 1,000 spans |\n\
         |---|---:|---:|---:|---:|\n\
         | untraced | {:.0} | 1.00x | - | - |\n\
         | traced (server and client spans) | {:.0} | {} | {:.1} | {:.2} ms |\n\
         | traced with `--propagate` | {:.0} | {} | {:.1} | {:.2} ms |\n\n\
         Propagation per outgoing request: {paired:.1} us of machine time (median over rounds of traced with \
         `--propagate` minus traced in the same round; {:.1} us between the medians); `--propagate` vs traced, by \
         round: {}. Calls that carried the context: {:.1}% (median of rounds; {not_seen} \
         in all counted as not seen on a traced connection). Each run starts a fresh front, so that its connections \
         to the back are opened while the agent is attached.\n",
        median(&mut untraced.to_vec()),
        median(&mut traced_rps.clone()),
        ratio_summary(&traced_rps, untraced),
        added(&traced_rps),
        cpu(traced),
        median(&mut propagating_rps.clone()),
        ratio_summary(&propagating_rps, untraced),
        added(&propagating_rps),
        cpu(propagating),
        added(&propagating_rps) - added(&traced_rps),
        ratio_summary(&propagating_rps, &traced_rps),
        carried * 100.0,
        inserted = work.inserted,
    )
}
