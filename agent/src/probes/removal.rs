//! Removing uprobes without holding up attaching them.
//!
//! The kernel removes a uprobe's perf event under its trace-event mutex and
//! waits there for a grace period, about 0.1 s each, one after another; the
//! perf event of every new uprobe takes the same mutex. A target attaching
//! while another target's uprobes are being removed waits behind each
//! removal in turn: measured with `scripts/bench-host.py --binary`, 10 s to
//! attach 46 uprobes beside removals in flight, 0.13 s alone. Removals are
//! never urgent (a stopped target is already finished, its slot only
//! waits), so in this process they run one at a time, on one thread, and
//! pause while a target is attaching: the attach then waits for one
//! removal at most, the one in flight. (Removing on several threads at once
//! gains little, the kernel serializes them, and each thread would hold
//! one more removal in flight for an attach to wait behind.)

use std::{
    sync::{Condvar, Mutex, OnceLock, PoisonError, mpsc},
    time::{Duration, Instant},
};

use super::DetachedLink;

/// Targets attaching now.
static ATTACHING: Mutex<usize> = Mutex::new(0);
static IDLE: Condvar = Condvar::new();

/// Longest one removal waits for attaches to end before it goes anyway, so
/// that a stream of new targets cannot hold a slot forever.
const MAX_YIELD: Duration = Duration::from_secs(1);

/// A target's attach in progress: removals wait until it is dropped.
#[must_use = "removals wait only while it is held"]
pub struct Attaching(());

/// Marks a target's attach as in progress until the guard is dropped.
pub fn attaching() -> Attaching {
    *ATTACHING.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    Attaching(())
}

impl Drop for Attaching {
    fn drop(&mut self) {
        let mut count = ATTACHING.lock().unwrap_or_else(PoisonError::into_inner);
        *count = count.saturating_sub(1);
        if *count == 0 {
            IDLE.notify_all();
        }
    }
}

/// Links to remove, and what to do once they are gone.
type Job = (Vec<DetachedLink>, Box<dyn FnOnce() + Send>);

/// The removal thread's queue (`None`: no thread could be started).
static WORKER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();

/// Removes `links` on the process's removal thread, after those queued
/// before them, one at a time (the kernel removes each uprobe as its link
/// is dropped), each once no target is attaching or after [`MAX_YIELD`];
/// then calls `done` there. Without a thread, removes them here.
pub fn remove_then(links: Vec<DetachedLink>, done: impl FnOnce() + Send + 'static) {
    let worker = WORKER.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("uprobe-removal".into())
            .spawn(move || {
                for (links, done) in queue {
                    remove(links);
                    done();
                }
            });
        match spawned {
            Ok(_) => Some(jobs),
            Err(err) => {
                log::debug!("no thread for removing uprobes ({err}): removed where they stop");
                None
            }
        }
    });
    let job: Job = (links, Box::new(done));
    let job = match worker {
        Some(jobs) => match jobs.send(job) {
            Ok(()) => return,
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (links, done) = job;
    remove(links);
    done();
}

fn remove(links: Vec<DetachedLink>) {
    for link in links {
        wait_for_no_attach();
        drop(link);
    }
}

fn wait_for_no_attach() {
    let deadline = Instant::now() + MAX_YIELD;
    let mut count = ATTACHING.lock().unwrap_or_else(PoisonError::into_inner);
    while *count > 0 {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        count = IDLE
            .wait_timeout(count, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn a_removal_waits_for_the_attach_in_progress() {
        let guard = attaching();
        let (sent, heard) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            wait_for_no_attach();
            let _ = sent.send(());
        });
        assert!(heard.recv_timeout(Duration::from_millis(200)).is_err());
        drop(guard);
        assert!(heard.recv_timeout(Duration::from_secs(5)).is_ok());
        waiter.join().expect("the waiting thread");
    }
}
