//! Stopping mid-load, as root: the agent is stopped with SIGINT while
//! clients keep the HTTP fixture busy. Detaching the probes takes the
//! kernel seconds (one uprobe at a time) while requests go on; none of
//! that may count as lost. Every request traced is exported once, complete
//! or marked `agent.span.incomplete=shutdown`, and every count agrees.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    agent::{AGENT_EXIT, Agent, command},
    fixture,
    http_client::Connection,
    otlp::Receiver,
};

fn summary(path: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .expect("summary file")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("number")))
        .collect()
}

/// Clients sending `GET /hello` on keep-alive connections until told to
/// stop, a little paced: the test agent is a debug build, and this test is
/// about the stop, not about throughput (`cargo xtask bench` measures
/// that); counts the responses.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut conn = Connection::open(addr);
                    while !stop.load(Ordering::Relaxed) {
                        let (status, _) = conn.request("GET", "/hello", b"");
                        assert_eq!(status, 200);
                        done.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(300));
                    }
                })
            })
            .collect();
        Self {
            stop,
            done,
            threads,
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let done = self.done.clone();
        for t in self.threads {
            t.join().expect("load thread");
        }
        done.load(Ordering::SeqCst)
    }
}

#[test]
fn a_stop_mid_load_loses_nothing_and_counts_nothing_false() {
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let summary_path =
        std::env::temp_dir().join(format!("agent-shutdown-summary-{}.txt", std::process::id()));
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ])
        .arg("--summary-file")
        .arg(&summary_path);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();

    let load = Load::start(addr, 3);
    // Traced load for a while, then the stop while it goes on.
    std::thread::sleep(Duration::from_millis(700));
    let before_stop = load.done();
    agent.signal(Signal::SIGINT);
    let status = agent.wait(AGENT_EXIT);
    let total = load.finish();
    assert!(status.success(), "{status:?}");
    assert!(before_stop > 100, "the load ran: {before_stop} requests");
    assert!(total > before_stop, "the load went on during the stop");

    let counts = summary(&summary_path);
    let count = |key: &str| {
        *counts
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {counts:?}"))
    };
    // Nothing lost, and nothing counted as lost.
    for key in [
        "ringbuf_full",
        "interleaved",
        "bad_records",
        "unmatched_ends",
        "dropped_queue_full",
        "dropped_export_failed",
    ] {
        assert_eq!(count(key), 0, "{key} in {counts:?}");
    }
    assert_eq!(count("expired"), 0, "{counts:?}");
    assert_eq!(count("evicted"), 0, "{counts:?}");

    // Every span exported reached the receiver, once.
    let spans = receiver.spans();
    assert_eq!(spans.len() as u64, count("spans_exported"), "{counts:?}");
    assert_eq!(
        spans.len() as u64,
        count("otlp_spans_written"),
        "{counts:?}"
    );
    assert_eq!(count("otlp_spans_failed"), 0, "{counts:?}");
    let ids: BTreeSet<_> = spans.iter().map(|s| s.span.span_id.clone()).collect();
    assert_eq!(ids.len(), spans.len(), "a span exported twice");
    let incomplete: Vec<_> = spans
        .iter()
        .filter_map(|s| s.attr("agent.span.incomplete"))
        .collect();
    assert!(
        incomplete.iter().all(|why| *why == "shutdown"),
        "{incomplete:?}"
    );
    assert_eq!(incomplete.len() as u64, count("open_at_stop"), "{counts:?}");
    // Every request answered before the stop was traced; requests that
    // began after it were not, and are not counted as lost either.
    let traced = spans.len() as u64;
    assert!(
        traced >= before_stop,
        "{traced} spans for {before_stop} requests answered before the stop"
    );
    assert!(traced <= total, "{traced} spans for {total} requests");
    assert!(
        traced < total,
        "requests began after the stop and were not traced: {counts:?}"
    );
    assert!(count("after_stop") > 0, "{counts:?}");
    let _ = std::fs::remove_file(&summary_path);
}
