//! Running the agent binary as a separate process.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// How long a test lets a stopping agent take to exit. Closing each uprobe
/// waits for an RCU grace period under the kernel's `event_mutex`, one
/// probe after another (about 0.1 s each on this kernel): an agent with 60
/// probes attached needs 6-8 s to exit, more on a loaded machine. A bound,
/// not a measurement: `cargo xtask bench` measures.
pub const AGENT_EXIT: Duration = Duration::from_secs(60);

/// The agent under test.
#[derive(Debug)]
pub struct Agent {
    child: std::process::Child,
    stderr: Arc<(Mutex<Vec<String>>, Condvar)>,
    stdout: Arc<(Mutex<Vec<String>>, Condvar)>,
    status: Option<ExitStatus>,
}

/// A command for the agent binary with a clean OTEL environment.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("AGENT_LOG");
    cmd
}

fn collect(
    reader: impl std::io::Read + Send + 'static,
    echo: &'static str,
) -> Arc<(Mutex<Vec<String>>, Condvar)> {
    let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            eprintln!("[agent {echo}] {line}");
            let (lock, cv) = &*sink;
            lock.lock().expect("lines").push(line);
            cv.notify_all();
        }
    });
    lines
}

impl Agent {
    /// Starts the agent with `args`.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let stderr = collect(child.stderr.take().expect("stderr"), "stderr");
        let stdout = collect(child.stdout.take().expect("stdout"), "stdout");
        Self {
            child,
            stderr,
            stdout,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`; panics after `timeout` or
    /// if the agent exits first.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let (lock, cv) = &*self.stderr;
                let lines = lock.lock().expect("lines");
                if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                    return line.clone();
                }
                let _ = cv
                    .wait_timeout(lines, Duration::from_millis(50))
                    .expect("wait");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader thread a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let lines = self.stderr_lines();
                if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                    return line.clone();
                }
                panic!(
                    "agent exited ({status}) before printing {needle:?}:\n{}",
                    lines.join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent did not print {needle:?} within {timeout:?}:\n{}",
                self.stderr_lines().join("\n")
            );
        }
    }

    /// Waits until the agent has attached.
    pub fn wait_attached(&mut self) {
        self.wait_for_stderr("attached to PID", Duration::from_secs(60));
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.0.lock().expect("lines").clone()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.0.lock().expect("lines").clone()
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal agent");
    }

    /// Waits for the agent to exit (panics after `timeout`, killing it).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads collect the final lines.
                std::thread::sleep(Duration::from_millis(100));
                self.status = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "agent still running after {timeout:?}:\n{}",
                    self.stderr_lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the agent on `pid`, exporting over gRPC to `receiver`, and waits
/// until it has attached.
pub fn attach_grpc(pid: u32, receiver: &super::otlp::Receiver) -> Agent {
    let mut cmd = command();
    cmd.args(["--pid", &pid.to_string()]).args([
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "grpc",
    ]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    agent
}
