//! Host mode: `agent --exe PATTERN`, `--port N`, `--go` (and any selection
//! other than one `--pid`). Processes already running are found once in
//! `/proc`, later ones as they exec, or, for `--port`, as they start
//! listening ([`agent::discovery::ExecWatch`]); each match gets a
//! session of its own (its probes, ring buffer, families, export pipeline
//! and resource), all in this one runtime. A target that exits is
//! detached and flushed by its session; a restarted one is a new exec and
//! is attached again. Runs until SIGINT or SIGTERM.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent::{
    discovery::{
        self, Exec, ExecWatch, Selectors,
        binaries::{BinaryCache, FileKey, GoFiles},
        ports::Listeners,
        scan,
        selector::ServiceNames,
    },
    export::ExportConfig,
    family::Counter,
    probes::{
        self,
        preflight::{NEEDS_DAC_READ_SEARCH, NEEDS_KILL, NEEDS_SYS_ADMIN, NEEDS_SYS_PTRACE},
    },
    resource::{self, ResourceOptions},
    session::{
        Counters, Outcome, Session, SessionError, SessionOptions,
        shared::{self, Job, SharedHandle, SharedObject},
    },
    target::TargetError,
};
use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::cli::{ExportArgs, TraceArgs};

/// Time the sessions get to detach, flush and export after a signal (each
/// exports within its own 1.5 s budget). Detaching is the slow part: the
/// kernel removes uprobes one at a time, about 0.1 s each, and a Go
/// service can have 60 (systemd's default stop timeout is 90 s).
const STOP_BUDGET: Duration = Duration::from_secs(45);

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
    // The capabilities the service needs, each named when missing (as
    // root they are all there unless taken away).
    let hold = !args.no_hold && !selectors.plain_names().is_empty();
    let mut needed = vec![NEEDS_SYS_ADMIN, NEEDS_SYS_PTRACE];
    if !selectors.ports.is_empty() {
        needed.push(NEEDS_DAC_READ_SEARCH);
    }
    if hold {
        needed.push(NEEDS_KILL);
    }
    probes::preflight::capabilities(&needed)?;
    probes::preflight()?;
    let options = super::trace::options(args)?;
    let export_config = super::export_config(export)?;
    // One object, ring and event loop for every target whose families can
    // share it (a second to load, once). With --propagate none can (its
    // programs hold per-object state): each gets its own, as before.
    let shared = if args.object_per_target || options.families.propagate {
        None
    } else {
        Some(SharedObject::start(&options, &export_config)?)
    };
    let host = Host {
        shared: shared.as_ref().map(SharedObject::handle),
        options,
        export: export_config,
        names: ServiceNames::parse(&args.service_name_map)?,
        service_name: export.service_name.clone(),
        single_pid: selectors.single_pid().is_some(),
        hold: !args.no_hold,
        binaries: Arc::default(),
        selectors,
    };
    let totals = host.supervise(shared).await?;
    // Sessions that did not stop in time reported nothing: say so rather
    // than let their spans look unexported.
    let unfinished = if totals.unfinished > 0 {
        format!(
            " ({} more sessions did not stop in time: not counted here)",
            totals.unfinished
        )
    } else {
        String::new()
    };
    eprintln!(
        "agent: {} spans exported from {} processes{unfinished}; {} records from the kernel; losses: {}",
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
    /// The shared object's door; `None` with `--object-per-target`.
    shared: Option<SharedHandle>,
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
    /// One analysis per executable file.
    binaries: Arc<Mutex<BinaryCache>>,
}

/// Why a process is traced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Selected {
    /// Named: by `--pid`, `--exe` or `--port`.
    Named,
    /// Only as a Go process (`--go`): one with nothing to trace is no news.
    Go,
}

/// How one target's session ended.
struct Ended {
    pid: u32,
    exe: PathBuf,
    /// Its counters, or what to log instead.
    result: Result<Counters, (log::Level, String)>,
}

impl Host {
    /// Whether process `pid`, running `exe`, is selected, and why.
    fn select(
        &self,
        pid: u32,
        exe: &Path,
        listeners: &mut Listeners<'_>,
        go_files: &mut GoFiles,
    ) -> Option<Selected> {
        if pid == std::process::id() {
            return None;
        }
        if self.selectors.matches(pid, exe) || listeners.listens(pid) {
            return Some(Selected::Named);
        }
        // The file through /proc: the process may see another mount
        // namespace than the agent's.
        (self.selectors.go && go_files.is_go(Path::new(&format!("/proc/{pid}/exe"))))
            .then_some(Selected::Go)
    }

    async fn supervise(self, shared: Option<SharedObject>) -> anyhow::Result<Totals> {
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
        let mut execs = ExecWatch::start(&hold, &self.selectors.ports)?;
        let mut go_files = GoFiles::default();
        let (stopping, stop_rx) = watch::channel(false);
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Ended>();
        // PID to whether the kernel holds it for us.
        let mut traced: HashMap<u32, bool> = HashMap::new();
        let mut started = 0;
        // Traced PIDs that exec'd again.
        let mut reexec: HashSet<u32> = HashSet::new();
        let start = |pid: u32,
                     exe: PathBuf,
                     held: bool,
                     selected: Selected,
                     traced: &mut HashMap<u32, bool>,
                     started: &mut usize| {
            if traced.contains_key(&pid) {
                if held {
                    discovery::resume(pid);
                }
                return;
            }
            let quiet = selected == Selected::Go;
            let level = if quiet {
                log::Level::Debug
            } else {
                log::Level::Info
            };
            log::log!(level, "PID {pid} ({}) matches: attaching", exe.display());
            let job = self.trace(pid, exe, held, quiet, stop_rx.clone(), ended_tx.clone());
            match std::thread::Builder::new()
                .name(format!("pid-{pid}"))
                .spawn(job)
            {
                Ok(_) => {
                    traced.insert(pid, held);
                    *started += 1;
                }
                Err(err) => {
                    log::warn!("PID {pid}: cannot start a thread for it: {err}");
                    if held {
                        discovery::resume(pid);
                    }
                }
            }
        };
        let running = scan::processes().context("cannot list processes in /proc")?;
        for pid in &self.selectors.pids {
            if !running.iter().any(|(p, _)| p == pid) {
                log::warn!("PID {pid}: no such process (it is attached if it execs)");
            }
        }
        let mut listeners = Listeners::new(&self.selectors.ports);
        for (pid, exe) in running {
            if let Some(selected) = self.select(pid, &exe, &mut listeners, &mut go_files) {
                start(pid, exe, false, selected, &mut traced, &mut started);
            }
        }
        log::info!("watching for new processes");
        let mut totals = Totals::default();
        let signal = loop {
            tokio::select! {
                _ = sigint.recv() => break "SIGINT",
                _ = sigterm.recv() => break "SIGTERM",
                pids = execs.next() => {
                    // Sockets as they are now.
                    let mut listeners = Listeners::new(&self.selectors.ports);
                    for Exec { pid, held, listening } in pids {
                        if let Some(port) = listening {
                            // Not an exec: it listens on a selected port.
                            log::debug!("PID {pid} listens on port {port}");
                            if !traced.contains_key(&pid)
                                && let Some(exe) = scan::executable(pid)
                            {
                                start(pid, exe, false, Selected::Named, &mut traced, &mut started);
                            }
                            continue;
                        }
                        log::trace!("exec: PID {pid}{}", if held { " (held)" } else { "" });
                        let exe = scan::executable(pid);
                        let selected = exe
                            .as_deref()
                            .and_then(|exe| self.select(pid, exe, &mut listeners, &mut go_files));
                        match (exe, selected) {
                            // It exec'd again while its session runs (a
                            // launcher that execs the program): planned
                            // again once that session ends, not held
                            // meanwhile (that session may run on).
                            (Some(_), Some(_)) if traced.contains_key(&pid) => {
                                reexec.insert(pid);
                                if held {
                                    discovery::resume(pid);
                                }
                            }
                            (Some(exe), Some(selected)) => {
                                start(pid, exe, held, selected, &mut traced, &mut started);
                            }
                            // Its name is held but its path is not
                            // selected (or it is gone already).
                            _ if held => discovery::resume(pid),
                            _ => {}
                        }
                    }
                }
                Some(ended) = ended_rx.recv() => {
                    let pid = ended.pid;
                    traced.remove(&pid);
                    totals.add(ended);
                    let mut listeners = Listeners::new(&self.selectors.ports);
                    if reexec.remove(&pid)
                        && let Some(exe) = scan::executable(pid)
                        && let Some(selected) =
                            self.select(pid, &exe, &mut listeners, &mut go_files)
                    {
                        start(pid, exe, false, selected, &mut traced, &mut started);
                    }
                }
            }
        };
        log::info!("{signal}: detaching from {} processes", traced.len());
        // Sessions already tracing saw the signal themselves; those still
        // being planned stop before they attach.
        let _ = stopping.send(true);
        // The shared object stops its targets at once, each reporting to
        // `ended` as it is flushed; its own counters come last.
        let object = shared.map(|shared| tokio::spawn(shared.stop(signal)));
        let deadline = tokio::time::Instant::now() + STOP_BUDGET;
        while !traced.is_empty() {
            match tokio::time::timeout_at(deadline, ended_rx.recv()).await {
                Ok(Some(ended)) => {
                    traced.remove(&ended.pid);
                    totals.add(ended);
                }
                Ok(None) => break,
                Err(_) => {
                    log::warn!("{} sessions did not stop in time", traced.len());
                    totals.unfinished = traced.len();
                    // None stays stopped because the agent left.
                    for (&pid, &held) in &traced {
                        if held {
                            discovery::resume(pid);
                        }
                    }
                    break;
                }
            }
        }
        if let Some(object) = object {
            match tokio::time::timeout_at(deadline, object).await {
                Ok(Ok(Some(counters))) => totals.add_object(&counters),
                _ => log::warn!(
                    "the shared eBPF object did not stop in time: its kernel-side counters are not counted"
                ),
            }
        }
        totals.started = started;
        totals.binaries_analysed = self.binaries.lock().map_or(0, |cache| cache.analysed);
        log::info!(
            "{} binaries analysed for {} processes",
            totals.binaries_analysed,
            totals.started
        );
        if execs.bad_records > 0 {
            log::warn!("{} unreadable discovery records", execs.bad_records);
        }
        Ok(totals)
    }

    /// One target, planned on a thread of its own (planning blocks for a
    /// second or more, which must not stall the other targets' draining
    /// and exporting), then handed to the shared object, or, when one of
    /// its families cannot share it (or `--object-per-target`), traced on
    /// that thread with an object, ring and pipeline of its own until the
    /// target exits or a signal. Reports to `ended`.
    fn trace(
        &self,
        pid: u32,
        exe: PathBuf,
        held: bool,
        quiet: bool,
        stopping: watch::Receiver<bool>,
        ended: mpsc::UnboundedSender<Ended>,
    ) -> impl FnOnce() + Send + 'static {
        let options = self.options.clone();
        let export = self.export.clone();
        let binaries = self.binaries.clone();
        let shared = self.shared.clone();
        let mut resource_options = ResourceOptions::from_env(
            self.names
                .lookup(&exe)
                .map(str::to_owned)
                .or_else(|| self.service_name.clone()),
        );
        if !self.single_pid {
            resource_options.env_service_name = None;
        }
        move || {
            // A held target runs on once attached, or once it is clear it
            // will not be.
            let released = Arc::new(AtomicBool::new(!held));
            let mut key = None;
            let planned = Session::plan_with(pid, options, &mut |path| {
                let mut cache = binaries.lock().unwrap_or_else(|e| e.into_inner());
                let (binary, k) = cache.open(path)?;
                key = Some(k);
                Ok(binary)
            })
            .and_then(|session| {
                if *stopping.borrow() {
                    return Err(TargetError::Exited { pid }.into());
                }
                let (resource, warnings) =
                    resource::build(Some(session.process()), &resource_options);
                for warning in warnings {
                    log::warn!("PID {pid}: {warning}");
                }
                Ok((session, resource))
            });
            let finish = Finish {
                pid,
                exe,
                quiet,
                released: released.clone(),
                key,
                binaries,
                ended,
            };
            let (session, resource) = match planned {
                Ok(planned) => planned,
                Err(err) => return finish.finish(Err(err)),
            };
            let resume = move || {
                if !released.swap(true, Ordering::Relaxed) {
                    discovery::resume(pid);
                }
            };
            if let Some(shared) = shared.filter(|_| session.shares_object()) {
                shared.trace(Job {
                    session,
                    resource,
                    release: Box::new(move || {
                        resume();
                        Ok(())
                    }),
                    done: Box::new(move |result| finish.finish(result)),
                });
                return;
            }
            let traced = session.run_released(&export, &resource, || {
                resume();
                // Loading parsed the kernel's BTF and the object on this
                // thread, whose malloc arena would keep that peak (some 30
                // MB) for as long as the target runs.
                shared::trim_heap();
                Ok(())
            });
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(traced),
                Err(err) => Err(SessionError::Family(format!(
                    "cannot start an event loop: {err}"
                ))),
            };
            finish.finish(result);
        }
    }
}

/// What is left to do when a target's tracing ends, wherever it ran.
struct Finish {
    pid: u32,
    exe: PathBuf,
    quiet: bool,
    /// Whether a held target was let go.
    released: Arc<AtomicBool>,
    /// Its executable's entry in the binary cache.
    key: Option<FileKey>,
    binaries: Arc<Mutex<BinaryCache>>,
    ended: mpsc::UnboundedSender<Ended>,
}

impl Finish {
    fn finish(self, result: Result<Outcome, SessionError>) {
        let Self {
            pid,
            exe,
            quiet,
            released,
            key,
            binaries,
            ended,
        } = self;
        if !released.swap(true, Ordering::Relaxed) {
            discovery::resume(pid);
        }
        if let Some(key) = key {
            binaries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(key);
        }
        let result = result
            .map(|outcome| outcome.counters)
            .map_err(|err| match err {
                SessionError::Target(
                    TargetError::Exited { .. } | TargetError::NoSuchProcess { .. },
                ) => (
                    log::Level::Info,
                    format!("PID {pid} ({}) exited before it was traced", exe.display()),
                ),
                err @ SessionError::NothingToTrace { .. } => {
                    let level = if quiet {
                        log::Level::Debug
                    } else {
                        log::Level::Info
                    };
                    (level, err.to_string())
                }
                err => (
                    log::Level::Warn,
                    format!(
                        "PID {pid} ({}): {}",
                        exe.display(),
                        anyhow::Error::from(err)
                    ),
                ),
            });
        // The supervisor is gone only when the agent is exiting.
        let _ = ended.send(Ended { pid, exe, result });
    }
}

/// The counters of every session, summed by key, in the order first seen.
#[derive(Default)]
struct Totals {
    /// Sessions that traced (and ended).
    targets: usize,
    /// Processes that matched.
    started: usize,
    /// Sessions that did not end within [`STOP_BUDGET`] (their counts are
    /// missing).
    unfinished: usize,
    binaries_analysed: u64,
    order: Vec<Counter>,
    index: HashMap<&'static str, usize>,
}

impl Totals {
    fn add(&mut self, ended: Ended) {
        let Ended { pid, exe, result } = ended;
        let exe = exe.display();
        let c = match result {
            Ok(counters) => counters,
            Err((level, message)) => {
                log::log!(level, "{message}");
                return;
            }
        };
        let c = &c;
        log::info!(
            "PID {pid} ({exe}): {} spans exported; {} records from the kernel; losses: {}",
            c.get("spans_exported").unwrap_or(0),
            c.get("records").unwrap_or(0),
            c.describe()
        );
        self.targets += 1;
        self.merge(c);
    }

    /// The shared object's own counters (the kernel's, and records that
    /// named no target): added once, not per target.
    fn add_object(&mut self, counters: &Counters) {
        self.merge(counters);
    }

    fn merge(&mut self, c: &Counters) {
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
        let mut text = format!(
            "targets={}\nbinaries_analysed={}\nsessions_unfinished={}\n",
            self.targets, self.binaries_analysed, self.unfinished
        );
        for c in &self.order {
            text.push_str(&format!("{}={}\n", c.key, c.value));
        }
        text
    }
}
