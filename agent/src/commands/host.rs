//! Host mode: `agent --exe PATTERN` (and any selection other than one
//! `--pid`). Processes already running are found once in `/proc`, later
//! ones as they exec ([`agent::discovery::ExecWatch`]); each match gets a
//! session of its own (its probes, ring buffer, families, export pipeline
//! and resource), all in this one runtime. A target that exits is
//! detached and flushed by its session; a restarted one is a new exec and
//! is attached again. Runs until SIGINT or SIGTERM.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use agent::{
    discovery::{self, Exec, ExecWatch, Selectors, scan, selector::ServiceNames},
    export::ExportConfig,
    family::Counter,
    probes,
    resource::{self, ResourceOptions},
    session::{Outcome, Session, SessionError, SessionOptions},
    target::TargetError,
};
use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::{JoinSet, LocalSet},
};

use crate::cli::{ExportArgs, TraceArgs};

/// Time the sessions get to detach, flush and export after a signal (each
/// exports within its own 1.5 s budget).
const STOP_BUDGET: Duration = Duration::from_secs(5);

pub async fn run(
    selectors: Selectors,
    args: &TraceArgs,
    export: &ExportArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.launch.syscalls.is_none() && !args.launch.summary,
        "--syscalls and --summary trace one process: give one --pid, or -- CMD"
    );
    anyhow::ensure!(
        args.metrics_listen.is_none(),
        "--metrics-listen is not available yet with --exe or several --pid"
    );
    probes::preflight()?;
    let host = Host {
        options: super::trace::options(args)?,
        export: super::export_config(export)?,
        names: ServiceNames::parse(&args.service_name_map)?,
        service_name: export.service_name.clone(),
        single_pid: selectors.exes.is_empty() && selectors.pids.len() == 1,
        hold: !args.no_hold,
        selectors,
    };
    let totals = LocalSet::new().run_until(host.supervise()).await?;
    eprintln!(
        "agent: {} spans exported from {} processes; {} records from the kernel; losses: {}",
        totals.get("spans_exported"),
        totals.targets,
        totals.get("records"),
        totals.describe()
    );
    if let Some(path) = &args.summary_file {
        std::fs::write(path, totals.summary_file())
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What every target's session is given.
struct Host {
    selectors: Selectors,
    options: SessionOptions,
    export: ExportConfig,
    names: ServiceNames,
    /// `--service-name`: for every target (a user who gives it with a
    /// pattern asked for one name).
    service_name: Option<String>,
    /// `OTEL_SERVICE_NAME` names the target only when there can be one.
    single_pid: bool,
    /// Stop programs `--exe NAME` names at exec until attached.
    hold: bool,
}

/// How one target's session ended.
struct Ended {
    pid: u32,
    exe: PathBuf,
    result: Result<Outcome, SessionError>,
}

impl Host {
    async fn supervise(self) -> anyhow::Result<Totals> {
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        // Execs are watched before /proc is read: a process that starts
        // meanwhile is found by one or the other (or both: `traced` keeps
        // it to one session).
        let hold = if self.hold {
            self.selectors.plain_names()
        } else {
            Vec::new()
        };
        let mut execs = ExecWatch::start(&hold)?;
        let (stopping, stop_rx) = watch::channel(false);
        let mut sessions: JoinSet<Ended> = JoinSet::new();
        let mut traced: HashSet<u32> = HashSet::new();
        let start = |pid: u32,
                     exe: PathBuf,
                     held: bool,
                     traced: &mut HashSet<u32>,
                     sessions: &mut JoinSet<Ended>| {
            if traced.insert(pid) {
                log::info!("PID {pid} ({}) matches: attaching", exe.display());
                sessions.spawn_local(self.trace(pid, exe, held, stop_rx.clone()));
            } else if held {
                discovery::resume(pid);
            }
        };
        let running = scan::processes().context("cannot list processes in /proc")?;
        for pid in &self.selectors.pids {
            if !running.iter().any(|(p, _)| p == pid) {
                log::warn!("PID {pid}: no such process (it is attached if it execs)");
            }
        }
        for (pid, exe) in running {
            if pid != std::process::id() && self.selectors.matches(pid, &exe) {
                start(pid, exe, false, &mut traced, &mut sessions);
            }
        }
        log::info!("watching for new processes");
        let mut totals = Totals::default();
        let signal = loop {
            tokio::select! {
                _ = sigint.recv() => break "SIGINT",
                _ = sigterm.recv() => break "SIGTERM",
                pids = execs.next() => {
                    for Exec { pid, held } in pids {
                        log::trace!("exec: PID {pid}{}", if held { " (held)" } else { "" });
                        match scan::executable(pid) {
                            Some(exe) if self.selectors.matches(pid, &exe) => {
                                start(pid, exe, held, &mut traced, &mut sessions);
                            }
                            // Its name is held but its path is not
                            // selected (or it is gone already).
                            _ if held => discovery::resume(pid),
                            _ => {}
                        }
                    }
                }
                Some(joined) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Ok(ended) = joined {
                        traced.remove(&ended.pid);
                        totals.add(ended);
                    }
                }
            }
        };
        log::info!("{signal}: detaching from {} processes", sessions.len());
        // Sessions already tracing saw the signal themselves; those still
        // being planned stop before they attach.
        let _ = stopping.send(true);
        let deadline = tokio::time::Instant::now() + STOP_BUDGET;
        while !sessions.is_empty() {
            match tokio::time::timeout_at(deadline, sessions.join_next()).await {
                Ok(Some(Ok(ended))) => totals.add(ended),
                Ok(Some(Err(err))) => log::warn!("a session failed: {err}"),
                Ok(None) => break,
                Err(_) => {
                    log::warn!("{} sessions did not stop in time", sessions.len());
                    sessions.abort_all();
                    break;
                }
            }
        }
        if execs.bad_records > 0 {
            log::warn!("{} unreadable discovery records", execs.bad_records);
        }
        Ok(totals)
    }

    /// One target: plans, attaches and traces until it exits or a signal.
    fn trace(
        &self,
        pid: u32,
        exe: PathBuf,
        held: bool,
        stopping: watch::Receiver<bool>,
    ) -> impl Future<Output = Ended> + 'static {
        let options = self.options.clone();
        let export = self.export.clone();
        let mut resource_options = ResourceOptions::from_env(
            self.names
                .lookup(&exe)
                .map(str::to_owned)
                .or_else(|| self.service_name.clone()),
        );
        if !self.single_pid {
            resource_options.env_service_name = None;
        }
        async move {
            // A held target runs on once attached, or once it is clear it
            // will not be.
            let released = std::cell::Cell::new(!held);
            let result = async {
                let session = Session::plan(pid, options)?;
                if *stopping.borrow() {
                    return Err(TargetError::Exited { pid }.into());
                }
                let (resource, warnings) =
                    resource::build(Some(session.process()), &resource_options);
                for warning in warnings {
                    log::warn!("PID {pid}: {warning}");
                }
                session
                    .run_released(&export, &resource, || {
                        if !released.replace(true) {
                            discovery::resume(pid);
                        }
                        Ok(())
                    })
                    .await
            }
            .await;
            if !released.get() {
                discovery::resume(pid);
            }
            Ended { pid, exe, result }
        }
    }
}

/// The counters of every session, summed by key, in the order first seen.
#[derive(Default)]
struct Totals {
    targets: usize,
    order: Vec<Counter>,
    index: HashMap<&'static str, usize>,
}

impl Totals {
    fn add(&mut self, ended: Ended) {
        let Ended { pid, exe, result } = ended;
        let exe = exe.display();
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(SessionError::Target(
                TargetError::Exited { .. } | TargetError::NoSuchProcess { .. },
            )) => {
                log::info!("PID {pid} ({exe}) exited before it was traced");
                return;
            }
            Err(err @ SessionError::NothingToTrace { .. }) => {
                log::info!("{err}");
                return;
            }
            Err(err) => {
                log::warn!("PID {pid} ({exe}): {}", anyhow::Error::from(err));
                return;
            }
        };
        let c = &outcome.counters;
        log::info!(
            "PID {pid} ({exe}): {} spans exported; {} records from the kernel; losses: {}",
            c.get("spans_exported").unwrap_or(0),
            c.get("records").unwrap_or(0),
            c.describe()
        );
        self.targets += 1;
        for counter in c.list() {
            match self.index.get(counter.key) {
                Some(&i) => self.order[i].value += counter.value,
                None => {
                    self.index.insert(counter.key, self.order.len());
                    self.order.push(*counter);
                }
            }
        }
    }

    fn get(&self, key: &str) -> u64 {
        self.index.get(key).map_or(0, |&i| self.order[i].value)
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .order
            .iter()
            .filter_map(|c| {
                c.label
                    .map(|(words, unit)| format!("{words}: {}{unit}", c.value))
            })
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    fn summary_file(&self) -> String {
        let mut text = format!("targets={}\n", self.targets);
        for c in &self.order {
            text.push_str(&format!("{}={}\n", c.key, c.value));
        }
        text
    }
}
