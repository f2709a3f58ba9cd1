//! A target whose executable exists only in its own mount namespace, as in a
//! container sharing the PID namespace: the agent must reach the binary
//! through `/proc/N/root` and still trace every request.

mod support;
use support::agent::AGENT_EXIT;

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use support::{
    agent::attach_grpc,
    fixture::{self, Running},
    http_client::Connection,
    otlp::Receiver,
};

#[test]
fn target_in_another_mount_namespace() {
    let binary = fixture::build("httpserver", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let hidden = dir.path().join("ns-root");
    std::fs::create_dir_all(&hidden).expect("mkdir");
    // In a new mount namespace: a tmpfs over `hidden`, the server copied into
    // it and started from there. The agent's namespace sees an empty dir.
    let script = format!(
        "mount -t tmpfs tmpfs {dir} && cp {bin} {dir}/server && exec {dir}/server",
        dir = hidden.display(),
        bin = binary.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("GODEBUG", "httpmuxgo121=0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines.next().expect("server started").expect("read");
    let addr: SocketAddr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected output {line:?}"))
        .parse()
        .expect("address");
    let server = Running { child };
    let in_target = hidden.join("server");
    assert!(
        !Path::new(&in_target).exists(),
        "the binary must not be visible from the agent's mount namespace"
    );

    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(server.pid(), &receiver);
    let mut conn = Connection::open(addr);
    assert_eq!(conn.request("GET", "/hello", b"").0, 200);
    assert_eq!(conn.request("POST", "/items/ns", b"abc").0, 201);
    let spans = receiver.wait_for_spans(2, Duration::from_secs(20));
    let mut names: Vec<_> = spans.iter().map(|s| s.span.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["GET /hello", "POST /items/"]);
    // The resource names the executable as the target sees it.
    assert_eq!(
        spans[0]
            .resource
            .get("process.executable.path")
            .map(String::as_str),
        in_target.to_str()
    );
    assert_eq!(
        spans[0].resource.get("service.name").map(String::as_str),
        Some("server")
    );
    drop(server);
    assert!(agent.wait(AGENT_EXIT).success());
}
