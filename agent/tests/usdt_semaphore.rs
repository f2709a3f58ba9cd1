//! USDT semaphores are the kernel's to raise: a guarded probe is attached
//! with its semaphore as the uprobe's reference counter, so the fixture's
//! own reading of `fixture_guarded_semaphore` is 1 while at least one
//! attachment of the probe exists (the kernel counts per probe site and
//! process, not per attachment) and 0 once the last is gone, and an agent
//! killed with SIGKILL, which runs no clean-up at all, leaves it at 0.

mod support;
mod usdt_support;

use std::time::{Duration, Instant};

use agent::{
    probes::{LoadOptions, Probes},
    usdt::{UsdtSites, attach::StringArgs, attach_usdt, probes_in_process, semaphore},
};
use nix::sys::signal::Signal;
use support::agent::{AGENT_EXIT, Agent, command};
use usdt_support::{Running, fixture};

const GUARDED_TOML: &str = r#"
[[span]]
name = "guarded"
start = "fixture:guarded"
end = "fixture:guarded_end"
request_id = "v"
[span.start_args]
v = { index = 0, type = "i64" }
[span.end_args]
v = { index = 0, type = "i64" }
"#;

fn load() -> Probes {
    Probes::load(LoadOptions {
        ring_buffer_bytes: 1 << 16,
        ..LoadOptions::default()
    })
    .expect("loading the eBPF object (run as root)")
}

#[test]
fn attachments_raise_and_lower_the_semaphore() {
    let fx = fixture("semaphore");
    let mut target = Running::start(fx);
    let probes = probes_in_process(target.pid).expect("discovering probes");
    let guarded: Vec<_> = probes
        .iter()
        .filter(|p| p.provider == "fixture" && p.name == "guarded")
        .cloned()
        .collect();
    assert_eq!(guarded.len(), 1, "{probes:#?}");
    assert_eq!(target.semaphore(), 0);
    assert_eq!(
        semaphore::read_semaphore(target.pid, &guarded[0]).expect("reading"),
        0
    );
    // The fixture is not PIE: the run-time address is the link-time one.
    let address = semaphore::runtime_address(target.pid, &guarded[0]).expect("address");
    assert_eq!(address, guarded[0].semaphore.expect("semaphore").vaddr);

    let mut first_probes = load();
    let mut first_sites = UsdtSites::new();
    let first = attach_usdt(
        &mut first_probes,
        &mut first_sites,
        0,
        target.pid,
        &guarded,
        &StringArgs::new(),
    )
    .expect("attaching");
    assert_eq!(target.semaphore(), 1, "visible to the target");
    assert_eq!(
        semaphore::read_semaphore(target.pid, &guarded[0]).expect("reading"),
        1
    );

    // A second, independent attachment (another agent) shares the kernel's
    // probe: still raised once, and still raised when the first goes.
    let mut second_probes = load();
    let mut second_sites = UsdtSites::new();
    let second = attach_usdt(
        &mut second_probes,
        &mut second_sites,
        0,
        target.pid,
        &guarded,
        &StringArgs::new(),
    )
    .expect("attaching again");
    assert_eq!(target.semaphore(), 1, "one probe site, raised once");

    first
        .detach(&mut first_probes, &mut first_sites)
        .expect("detaching");
    assert_eq!(target.semaphore(), 1, "the second attachment holds it");
    // Dropping the probes without detaching: the kernel still lowers it.
    drop(second);
    drop(second_probes);
    assert_eq!(target.semaphore(), 0, "lowered when the probes go");
}

#[test]
fn an_agent_killed_with_sigkill_leaves_the_semaphore_lowered() {
    let fx = fixture("semaphore");
    let mut target = Running::start(fx);
    assert_eq!(target.semaphore(), 0);
    // A mapping that uses the guarded probe, so the agent attaches it.
    let config = std::env::temp_dir().join(format!("usdt-semaphore-{}.toml", std::process::id()));
    std::fs::write(&config, GUARDED_TOML).expect("writing the mapping");
    let mut cmd = command();
    cmd.args(["--pid", &target.pid.to_string(), "--output", "console"])
        .arg("--usdt-config")
        .arg(&config);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let line = agent.wait_for_stderr("semaphore-guarded", Duration::from_secs(5));
    assert!(line.contains("(1 semaphore-guarded)"), "{line}");
    assert_eq!(target.semaphore(), 1, "raised while the agent is attached");

    agent.signal(Signal::SIGKILL);
    let status = agent.wait(AGENT_EXIT);
    assert!(!status.success(), "{status:?}");
    // The kernel unregisters the probes when it closes the dead agent's
    // descriptors; give it a second.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut value = target.semaphore();
    while value != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        value = target.semaphore();
    }
    assert_eq!(value, 0, "the semaphore stayed raised after SIGKILL");
}

#[test]
fn probes_without_a_semaphore_have_none_to_read() {
    let fx = fixture("semaphore");
    let target = Running::start(fx);
    let probes = probes_in_process(target.pid).expect("discovering probes");
    let plain = probes
        .iter()
        .find(|p| p.name == "constants")
        .expect("fixture:constants");
    let err = semaphore::read_semaphore(target.pid, plain).expect_err("no semaphore");
    assert!(
        matches!(err, agent::usdt::SemaphoreError::NoSemaphore { .. }),
        "{err}"
    );
}

/// A mapping that reads `fixture:constants`' first argument (the constant 5)
/// as a string: the kernel's read fails on every firing.
const UNREADABLE_TOML: &str = r#"
[[span]]
name = "unreadable"
start = "fixture:constants"
end = "fixture:regs"
request_id = "v"
[span.start_args]
v = { index = 0, type = "str" }
[span.end_args]
v = { index = 0, type = "str" }
"#;

#[test]
fn the_programs_diagnostics_reach_the_log_at_verbose() {
    let fx = fixture("semaphore");
    let mut target = Running::start(fx);
    let config = std::env::temp_dir().join(format!("usdt-unreadable-{}.toml", std::process::id()));
    std::fs::write(&config, UNREADABLE_TOML).expect("writing the mapping");
    let mut cmd = command();
    cmd.args([
        "--pid",
        &target.pid.to_string(),
        "--output",
        "console",
        "-v",
    ])
    .arg("--usdt-config")
    .arg(&config);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    target.fire();
    // Written by aya-log-ebpf in the USDT program's failed-read branch,
    // read by the agent's housekeeping within a second.
    let line = agent.wait_for_stderr("argument reads failed", Duration::from_secs(5));
    assert!(line.contains("USDT site"), "{line}");
    assert!(line.contains("mask 1"), "{line}");
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    let _ = std::fs::remove_file(&config);
}
