//! Host mode as a service, as root: the configuration file (its values
//! apply, flags override them, a wrong key or a missing file is one line),
//! the `--port` and `--go` selectors, the systemd unit (`systemd-analyze
//! verify`) and its capability set: the agent as an unprivileged user with
//! exactly those capabilities traces a Go server, and without each one it
//! says which is missing, in one line.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use support::{
    agent::{AGENT_EXIT, Agent, command},
    fixture::{self, Running},
    http_client::Connection,
    otlp::{FlatSpan, Receiver},
};

/// The httpserver fixture under a name of this test's own (15 bytes at
/// most, the kernel's `comm`), so that no other program matches `--exe`.
fn renamed_fixture(tag: &str) -> (PathBuf, String) {
    let name = format!("hv{tag}{}", std::process::id());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host_service");
    std::fs::create_dir_all(&dir).expect("create dir");
    let path = dir.join(&name);
    std::fs::copy(fixture::build("httpserver", &[]), &path).expect("copy fixture");
    (path, name)
}

fn otlp_args(receiver: &Receiver) -> [String; 4] {
    [
        "--otlp-endpoint".into(),
        receiver.url(),
        "--otlp-protocol".into(),
        "grpc".into(),
    ]
}

/// Sends `n` requests to `addr`, each to a path naming `round`.
fn send(addr: SocketAddr, round: &str, n: usize) -> Vec<String> {
    let mut conn = Connection::open(addr);
    (0..n)
        .map(|i| {
            let path = format!("/items/{round}-{i}");
            let (status, _) = conn.request("GET", &path, b"");
            assert_eq!(status, 200, "{path}");
            path
        })
        .collect()
}

/// The spans of processes `pids` (other processes on the machine may be
/// traced too, with `--go`), once there are `n` of them.
fn spans_of(receiver: &Receiver, pids: &[u32], n: usize) -> Vec<FlatSpan> {
    let pids: BTreeSet<String> = pids.iter().map(u32::to_string).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ours: Vec<FlatSpan> = receiver
            .spans()
            .into_iter()
            .filter(|s| {
                s.resource
                    .get("process.pid")
                    .is_some_and(|p| pids.contains(p))
            })
            .collect();
        if ours.len() >= n || Instant::now() > deadline {
            assert_eq!(ours.len(), n, "spans of {pids:?}");
            return ours;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// url.path to process.pid.
fn paths_by_pid(spans: &[FlatSpan]) -> BTreeMap<String, String> {
    spans
        .iter()
        .map(|s| {
            (
                s.attr("url.path").expect("url.path").to_owned(),
                s.resource.get("process.pid").expect("process.pid").clone(),
            )
        })
        .collect()
}

fn expect_paths(paths: &[String], pid: u32) -> impl Iterator<Item = (String, String)> + '_ {
    paths.iter().map(move |p| (p.clone(), pid.to_string()))
}

/// Stops the agent (SIGINT) and returns its stderr.
fn stop(mut agent: Agent) -> Vec<String> {
    agent.signal(Signal::SIGINT);
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    agent.stderr_lines()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs the agent to its exit (killed, and the test failed, after 30 s);
/// (exit code, stderr lines).
fn run_to_exit(mut cmd: Command) -> (Option<i32>, Vec<String>) {
    cmd.stdin(Stdio::null());
    let mut agent = Agent::start(cmd);
    let status = agent.wait(Duration::from_secs(30));
    (status.code(), agent.stderr_lines())
}

#[test]
fn the_config_file_applies_and_flags_override_it() {
    let (binary, name) = renamed_fixture("c");
    let receiver = Receiver::grpc();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    // The exporter and the service name come from the file; its `exe` is
    // overridden by the flag.
    std::fs::write(
        &config,
        format!(
            "# a test's\nexe = [\"no-such-program\"]\notlp-endpoint = \"{}\"\notlp-protocol = \"grpc\"\nservice-name-map = [\"{name}=from-the-file\"]\nspan-ttl = 60\n",
            receiver.url()
        ),
    )
    .expect("write config");
    let mut cmd = command();
    cmd.arg("--config").arg(&config).args(["--exe", &name]);
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));
    let (mut server, addr) = fixture::start_httpserver(&binary);
    agent.wait_for_stderr(
        &format!("attached to PID {}", server.pid()),
        Duration::from_secs(30),
    );
    let paths = send(addr, "c", 3);
    let spans = spans_of(&receiver, &[server.pid()], 3);
    assert_eq!(
        paths_by_pid(&spans),
        expect_paths(&paths, server.pid()).collect()
    );
    for span in &spans {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("from-the-file")
        );
    }
    server.terminate();
    let lines = stop(agent);
    let exit = lines
        .iter()
        .find(|l| l.starts_with("agent: "))
        .expect("exit line");
    assert!(
        exit.starts_with("agent: 3 spans exported from 1 processes;"),
        "{exit}"
    );
}

#[test]
fn config_file_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    let shown = config.display().to_string();
    let cases = [
        (
            "exe = [\"api\"]\n\n# the next one is wrong\nexes = [\"web\"]\n",
            format!(
                "agent: {shown}:4: unknown key \"exes\": the keys are the long flags' names (see agent --help)"
            ),
        ),
        (
            "exe = [\"api\"]\notlp_endpoint = \"http://x:4317\"\n",
            format!(
                "agent: {shown}:2: unknown key \"otlp_endpoint\" (did you mean \"otlp-endpoint\"?)"
            ),
        ),
        (
            "exe = [\"api\"]\nurl-query = \"sometimes\"\n",
            format!(
                "agent: {shown}:2: url-query: invalid value 'sometimes' for '--url-query <POLICY>'"
            ),
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&config, text).expect("write config");
        let mut cmd = command();
        cmd.arg("--config").arg(&config);
        let (code, stderr) = run_to_exit(cmd);
        assert_eq!(code, Some(1), "{stderr:?}");
        assert_eq!(stderr.len(), 1, "{stderr:?}");
        assert!(stderr[0].starts_with(&expected), "{stderr:?} vs {expected}");
    }
    // A file named but missing: by the flag and by the variable.
    let mut cmd = command();
    cmd.args(["--config", "/nonexistent/agent.toml", "--exe", "api"]);
    let (code, stderr) = run_to_exit(cmd);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        [
            "agent: cannot read the configuration file /nonexistent/agent.toml: No such file or directory (os error 2)"
        ]
    );
    let mut cmd = command();
    cmd.env("AGENT_CONFIG", "/nonexistent/env.toml");
    let (code, stderr) = run_to_exit(cmd);
    assert_eq!(code, Some(1));
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(stderr[0].contains("/nonexistent/env.toml"), "{stderr:?}");
}

#[test]
fn port_selects_servers_listening_now_and_later() {
    let binary = fixture::build("httpserver", &[]);
    let receiver = Receiver::grpc();
    let (early_port, late_port, other_port) = (free_port(), free_port(), free_port());
    let listen = |port: u16| {
        fixture::start_httpserver_with(&binary, &["-addr", &format!("127.0.0.1:{port}")])
    };
    // Listening before the agent starts: found in /proc.
    let (mut early, early_addr) = listen(early_port);
    let mut cmd = command();
    cmd.args(["--port", &early_port.to_string()])
        .env("AGENT_PORT", "1") // a flag wins over its variable
        .args(["--port", &late_port.to_string()])
        .args(otlp_args(&receiver));
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr(
        &format!("attached to PID {}", early.pid()),
        Duration::from_secs(60),
    );
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(30));
    // Listening after: found when it calls listen(). Another port: not.
    let (mut other, other_addr) = listen(other_port);
    let (mut late, late_addr) = listen(late_port);
    agent.wait_for_stderr(
        &format!("attached to PID {}", late.pid()),
        Duration::from_secs(30),
    );
    let early_paths = send(early_addr, "early", 3);
    let late_paths = send(late_addr, "late", 3);
    send(other_addr, "other", 2);
    let spans = spans_of(&receiver, &[early.pid(), late.pid(), other.pid()], 6);
    let expected: BTreeMap<String, String> = expect_paths(&early_paths, early.pid())
        .chain(expect_paths(&late_paths, late.pid()))
        .collect();
    assert_eq!(paths_by_pid(&spans), expected);
    for server in [&mut early, &mut late, &mut other] {
        server.terminate();
    }
    let lines = stop(agent);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&format!("PID {}", other.pid()))),
        "the server on another port is not traced: {lines:#?}"
    );
}

#[test]
fn go_selects_go_programs_with_something_to_trace() {
    let (binary, _) = renamed_fixture("g");
    let receiver = Receiver::grpc();
    // Before the agent: a Go server, a Go program with nothing to trace,
    // and a program that is not Go.
    let (mut before, before_addr) = fixture::start_httpserver(&binary);
    let mut nothing = Running {
        child: Command::new(fixture::build("nohttp", &[]))
            .stdout(Stdio::null())
            .spawn()
            .expect("start nohttp"),
    };
    let mut not_go = Running {
        child: Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep"),
    };
    let mut cmd = command();
    cmd.arg("--go").args(otlp_args(&receiver));
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr(
        &format!("attached to PID {}", before.pid()),
        Duration::from_secs(60),
    );
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));
    // After: found as it execs.
    let (mut after, after_addr) = fixture::start_httpserver(&binary);
    agent.wait_for_stderr(
        &format!("attached to PID {}", after.pid()),
        Duration::from_secs(30),
    );
    let before_paths = send(before_addr, "before", 3);
    let after_paths = send(after_addr, "after", 3);
    let spans = spans_of(&receiver, &[before.pid(), after.pid()], 6);
    let expected: BTreeMap<String, String> = expect_paths(&before_paths, before.pid())
        .chain(expect_paths(&after_paths, after.pid()))
        .collect();
    assert_eq!(paths_by_pid(&spans), expected);
    for server in [&mut before, &mut after, &mut nothing, &mut not_go] {
        server.terminate();
    }
    let lines = stop(agent);
    for pid in [nothing.pid(), not_go.pid()] {
        assert!(
            !lines
                .iter()
                .any(|l| l.contains(&format!("attached to PID {pid}"))),
            "PID {pid} is not traced: {lines:#?}"
        );
    }
}

/// The unit's capabilities, as `setpriv` names them.
fn unit_capabilities() -> Vec<String> {
    let unit = include_str!("../../scripts/systemd/agent.service");
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
            .split_whitespace()
            .map(|cap| {
                cap.strip_prefix("CAP_")
                    .expect("CAP_ name")
                    .to_ascii_lowercase()
            })
            .collect::<Vec<_>>()
    };
    let ambient = line("AmbientCapabilities=");
    assert_eq!(
        ambient,
        line("CapabilityBoundingSet="),
        "ambient and bounding sets are the same"
    );
    ambient
}

/// The agent as `nobody` with exactly `caps` (inheritable, ambient and
/// bounding set), as the unit runs it.
fn agent_with_capabilities(caps: &[String]) -> Command {
    let list = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={list}"))
        .arg(format!("--ambient-caps={list}"))
        .arg(format!("--bounding-set={list}"))
        .arg(env!("CARGO_BIN_EXE_agent"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") || key.starts_with("AGENT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    let caps = unit_capabilities();
    let (binary, name) = renamed_fixture("p");
    let receiver = Receiver::grpc();

    // Exactly the unit's set, not root: a server started later is held
    // at exec, attached, continued and traced.
    let mut cmd = agent_with_capabilities(&caps);
    cmd.args(["--exe", &name]).args(otlp_args(&receiver));
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));
    let (mut server, addr) = fixture::start_httpserver(&binary);
    agent.wait_for_stderr(
        &format!("attached to PID {}", server.pid()),
        Duration::from_secs(30),
    );
    let paths = send(addr, "caps", 3);
    let spans = spans_of(&receiver, &[server.pid()], 3);
    assert_eq!(
        paths_by_pid(&spans),
        expect_paths(&paths, server.pid()).collect()
    );
    server.terminate();
    stop(agent);

    // Each one left out: the agent says which, in one line, and exits.
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let mut cmd = agent_with_capabilities(&fewer);
        // Every capability of the set is needed for this selection (a
        // held name, a port).
        cmd.args(["--exe", &name, "--port", &free_port().to_string()]);
        let (code, stderr) = run_to_exit(cmd);
        let expected = format!("agent: CAP_{} is missing: ", dropped.to_ascii_uppercase());
        assert_eq!(code, Some(1), "without {dropped}: {stderr:?}");
        assert_eq!(stderr.len(), 1, "without {dropped}: {stderr:?}");
        assert!(
            stderr[0].starts_with(&expected),
            "without {dropped}: {stderr:?}"
        );
    }
}

#[test]
fn systemd_accepts_the_unit() {
    // The unit as installed, naming the agent binary under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = include_str!("../../scripts/systemd/agent.service")
        .replace("/usr/local/bin/agent", env!("CARGO_BIN_EXE_agent"));
    let path = dir.path().join("agent.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "", "no warnings");
    assert!(Path::new(&path).exists());
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup/unified` beside v1
/// controllers, else `/sys/fs/cgroup`.
fn cgroup2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// Starts the fixture `binary` as PID 1 of its own PID and mount namespaces
/// (its own /proc) in `cgroup`, after `prepare` (shell commands run in the
/// new mount namespace); returns it, its address and its PID as the host
/// sees it, once the agent says it attached.
fn server_in_namespaces(
    agent: &mut Agent,
    binary: &Path,
    cgroup: &Path,
    prepare: &str,
) -> (Running, SocketAddr, u32) {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec unshare --pid --mount --fork --kill-child --mount-proc sh -c '{prepare} exec {} -addr 127.0.0.1:0'",
        cgroup.display(),
        binary.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("GODEBUG", "httpmuxgo121=0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start unshare");
    let stdout = child.stdout.take().expect("stdout");
    let server = Running { child };
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.parse().expect("address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let attached = agent.wait_for_stderr("attached to PID", Duration::from_secs(30));
    let host_pid: u32 = attached
        .split("attached to PID ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .expect("PID in the attach line");
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "the server is PID 1 in its namespace: {status}"
    );
    (server, addr, host_pid)
}

/// Removes `cgroup` once its processes are gone.
fn remove_cgroup(cgroup: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::remove_dir(cgroup).is_err() {
        assert!(
            Instant::now() < deadline,
            "cannot remove {}",
            cgroup.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_target_in_a_pid_namespace_and_a_container_cgroup() {
    let (binary, name) = renamed_fixture("n");
    let receiver = Receiver::grpc();
    // A cgroup named as Docker names a container's.
    let id = format!("{:0>64x}", std::process::id());
    let cgroup = cgroup2_root().join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&cgroup).expect("create cgroup");

    let mut cmd = command();
    cmd.args(["--exe", &name]).args(otlp_args(&receiver));
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));
    let (server, addr, host_pid) = server_in_namespaces(&mut agent, &binary, &cgroup, "");

    let paths = send(addr, "ns", 3);
    let spans = spans_of(&receiver, &[host_pid], 3);
    assert_eq!(
        paths_by_pid(&spans),
        expect_paths(&paths, host_pid).collect()
    );
    for span in &spans {
        assert_eq!(
            span.resource.get("process.vpid").map(String::as_str),
            Some("1")
        );
        assert_eq!(span.resource.get("container.id"), Some(&id));
        assert_eq!(span.resource.get("k8s.pod.uid"), None, "not a pod");
    }
    // unshare ignores SIGTERM while it waits: SIGKILL, and --kill-child
    // takes the server with it.
    drop(server);
    stop(agent);
    remove_cgroup(&cgroup);
}

#[test]
fn a_target_in_a_kubernetes_pod() {
    let (binary, name) = renamed_fixture("k");
    let receiver = Receiver::grpc();
    // The cgroups the kubelet makes with its cgroupfs driver: the QoS
    // class, the pod (named by its UID), the container (by its id).
    let uid = format!("{:0>8x}-0000-4000-8000-{:0>12x}", std::process::id(), 7);
    let id = format!("{:0>64x}", u64::from(std::process::id()) << 8);
    let pod = cgroup2_root().join(format!("kubepods/besteffort/pod{uid}"));
    let cgroup = pod.join(&id);
    std::fs::create_dir_all(&cgroup).expect("create cgroup");

    let mut cmd = command();
    cmd.args(["--exe", &name]).args(otlp_args(&receiver));
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));
    // The service account's namespace file, as the kubelet mounts it into
    // the pod's containers (here only in the server's mount namespace).
    let secrets = "/var/run/secrets/kubernetes.io/serviceaccount";
    let prepare = format!(
        "mount -t tmpfs tmpfs /var/run && mkdir -p {secrets} && echo shop > {secrets}/namespace &&"
    );
    let (server, addr, host_pid) = server_in_namespaces(&mut agent, &binary, &cgroup, &prepare);

    let paths = send(addr, "pod", 2);
    let spans = spans_of(&receiver, &[host_pid], 2);
    assert_eq!(
        paths_by_pid(&spans),
        expect_paths(&paths, host_pid).collect()
    );
    for span in &spans {
        assert_eq!(span.resource.get("k8s.pod.uid"), Some(&uid));
        assert_eq!(
            span.resource.get("k8s.namespace.name").map(String::as_str),
            Some("shop")
        );
        assert_eq!(span.resource.get("container.id"), Some(&id));
    }
    drop(server);
    stop(agent);
    remove_cgroup(&cgroup);
    for dir in [
        pod.as_path(),
        pod.parent().expect("qos"),
        pod.parent().and_then(Path::parent).expect("kubepods"),
    ] {
        let _ = std::fs::remove_dir(dir);
    }
}
