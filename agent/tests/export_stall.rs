//! As root: the agent traces the Go HTTP server fixture and exports to a
//! collector that hangs (accepts connections, never answers) or refuses
//! them. The user must hear about it within 5 s of the first span, with the
//! cause, and hear when it recovers.

mod support;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use support::{
    agent::{Agent, command},
    fixture,
    http_client::Connection,
    otlp::{Listen, Receiver},
};

/// The bound the issue sets: a stall is reported within 5 s.
const REPORT_WITHIN: Duration = Duration::from_secs(5);

/// A collector that accepts connections and never answers (it reads
/// nothing and writes nothing, and keeps every connection open).
struct HungCollector {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl HungCollector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let keep = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                keep.lock().expect("connections").push(stream);
            }
        });
        Self { addr, accepted }
    }
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Attaches the agent to `pid`, exporting to `endpoint` with `protocol`.
fn attach(pid: u32, endpoint: &str, protocol: &str) -> Agent {
    let mut cmd = command();
    cmd.args(["--pid", &pid.to_string()]).args([
        "--otlp-endpoint",
        endpoint,
        "--otlp-protocol",
        protocol,
    ]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    agent
}

/// Sends one request and returns when it was answered (the span ends then).
fn request(addr: SocketAddr) -> Instant {
    let (status, _) = Connection::open(addr).request("GET", "/hello", b"");
    assert_eq!(status, 200);
    Instant::now()
}

/// Waits for the stall warning and checks its timing and cause.
fn expect_warning(agent: &mut Agent, span_at: Instant, cause: &str, what: &str) -> String {
    let line = agent.wait_for_stderr("stalled", REPORT_WITHIN + Duration::from_secs(5));
    let after = span_at.elapsed();
    assert!(
        after <= REPORT_WITHIN,
        "{what}: the warning came {after:?} after the span: {line}"
    );
    assert!(
        line.contains(cause),
        "{what}: the cause {cause:?} in {line}"
    );
    assert!(line.contains("WARN"), "{what}: {line}");
    line
}

#[test]
fn a_hung_collector_is_reported_within_5_s() {
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    for protocol in ["grpc", "http/protobuf"] {
        let collector = HungCollector::start();
        let endpoint = format!("http://{}", collector.addr);
        let mut agent = attach(server.pid(), &endpoint, protocol);
        let span_at = request(addr);
        let line = expect_warning(&mut agent, span_at, "timed out", protocol);
        assert!(
            line.contains(&endpoint),
            "{protocol}: names the endpoint: {line}"
        );
        assert!(
            !collector.accepted.lock().expect("connections").is_empty(),
            "{protocol}: the agent did connect"
        );
    }
}

#[test]
fn a_refusing_collector_is_reported_within_5_s_and_its_recovery_too() {
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    for protocol in ["grpc", "http/protobuf"] {
        let port = closed_port();
        let endpoint = format!("http://{port}");
        let mut agent = attach(server.pid(), &endpoint, protocol);
        let span_at = request(addr);
        expect_warning(&mut agent, span_at, "connection refused", protocol);

        // The collector comes up on that port: the export still being
        // retried gets through, and the agent says so.
        let listen = Listen {
            addr: Some(port),
            ..Listen::default()
        };
        let receiver = match protocol {
            "grpc" => Receiver::grpc_with(&listen),
            _ => Receiver::http_with(&listen),
        };
        let line = agent.wait_for_stderr("recovered", Duration::from_secs(15));
        assert!(line.contains(&endpoint), "{protocol}: {line}");
        let spans = receiver.wait_for_spans(1, Duration::from_secs(10));
        assert_eq!(spans[0].attr("url.path"), Some("/hello"), "{protocol}");
    }
}
