//! Semaphore activation is visible in the target's memory: the fixture's
//! own reading of `fixture_guarded_semaphore` goes 0 -> 1 -> 2 -> 1 -> 0 as
//! guards are made and dropped, and the guarded probe only fires meanwhile
//! (checked with BPF in usdt_attach).

mod usdt_support;

use agent::usdt::{SemaphoreGuard, probes_in_process, semaphore};
use usdt_support::{Running, fixture};

#[test]
fn guard_increments_and_restores_the_semaphore() {
    let fx = fixture("semaphore");
    let mut target = Running::start(fx);
    let probes = probes_in_process(target.pid).expect("discovering probes");
    let guarded = probes
        .iter()
        .find(|p| p.provider == "fixture" && p.name == "guarded")
        .expect("fixture:guarded");
    assert!(guarded.semaphore.is_some());
    assert_eq!(target.semaphore(), 0);
    assert_eq!(
        semaphore::read_semaphore(target.pid, guarded).expect("reading"),
        0
    );

    let first = SemaphoreGuard::activate(target.pid, guarded).expect("activating");
    assert_eq!(target.semaphore(), 1, "visible to the target");
    assert_eq!(
        semaphore::read_semaphore(target.pid, guarded).expect("reading"),
        1
    );
    let address = semaphore::runtime_address(target.pid, guarded).expect("address");
    assert_eq!(first.address(), address);
    // The fixture is not PIE: the run-time address is the link-time one.
    assert_eq!(address, guarded.semaphore.expect("semaphore").vaddr);

    let second = SemaphoreGuard::activate(target.pid, guarded).expect("activating again");
    assert_eq!(target.semaphore(), 2, "reference counted");
    drop(first);
    assert_eq!(target.semaphore(), 1);
    drop(second);
    assert_eq!(target.semaphore(), 0, "restored at detach");
}

#[test]
fn probes_without_a_semaphore_are_refused() {
    let fx = fixture("semaphore");
    let target = Running::start(fx);
    let probes = probes_in_process(target.pid).expect("discovering probes");
    let plain = probes
        .iter()
        .find(|p| p.name == "constants")
        .expect("fixture:constants");
    let err = SemaphoreGuard::activate(target.pid, plain).expect_err("no semaphore");
    assert!(
        matches!(err, agent::usdt::SemaphoreError::NoSemaphore { .. }),
        "{err}"
    );
}

#[test]
fn guard_of_an_exited_process_drops_quietly() {
    let fx = fixture("semaphore");
    let target = Running::start(fx);
    let pid = target.pid;
    let probes = probes_in_process(pid).expect("discovering probes");
    let guarded = probes
        .iter()
        .find(|p| p.name == "guarded")
        .expect("fixture:guarded")
        .clone();
    let guard = SemaphoreGuard::activate(pid, &guarded).expect("activating");
    drop(target);
    drop(guard);
}
