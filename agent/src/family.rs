//! The contract every instrumented library (a *family*) fulfils, and the
//! one list that registers them.
//!
//! A family owns one folder of `agent/src` (named after what it traces), one
//! module of `agent-common` (its record kinds, records and per-target
//! configuration) and one of `agent-ebpf` (its programs and maps). Here it
//! offers:
//!
//! - a [`FamilyEntry`]: its name and its `plan` function, which reads what
//!   the family needs from the target (functions, struct field offsets,
//!   probe sites of the Go binary; USDT notes; ...) and answers with a ready
//!   [`Family`] or why there is nothing for it in this process;
//! - a [`Family`]: attaching its programs through [`Probes`] (the one seam
//!   for privileged operations), decoding the records of its kinds into
//!   spans, its periodic work, its shutdown, and the counters it owns.
//!
//! The session ([`crate::session`]), the ring-buffer reader
//! ([`crate::ringbuf`]), the open-span table ([`crate::spans`]) and the
//! exporter ([`crate::export`]) know no family by name: they go through
//! [`FAMILIES`] and this trait.

use std::{error::Error, path::PathBuf, time::Duration};

use crate::{
    binary::{BuiltinProbe, GoBinary},
    clock::WallClock,
    export::{EncodedSpan, SpanSender},
    flight, grpc, http_client, http_server,
    instrument::{Categories, Category},
    net,
    probes::{KernelStats, LoadOptions, Probes},
    propagate, runtime,
    spans::{Goroutines, Sampler},
    sql, syscalls,
    target::Target,
    usdt::{self, mapping::MappingConfig},
};

/// Every family, in the order they are planned, attached and reported.
/// Adding a library to trace is one line here.
pub const FAMILIES: &[FamilyEntry] = &[
    http_server::FAMILY,
    usdt::FAMILY,
    flight::FAMILY,
    http_client::FAMILY,
    sql::FAMILY,
    grpc::FAMILY,
    runtime::FAMILY,
    syscalls::FAMILY,
    propagate::FAMILY,
    net::FAMILY,
];

/// How the session finds a family.
#[derive(Clone, Copy)]
pub struct FamilyEntry {
    /// How the log and the exit line name it (`net/http`, `USDT`).
    pub name: &'static str,
    /// The probes it places on Go functions and the struct fields they
    /// read, for `agent inspect`.
    pub probes: &'static [BuiltinProbe],
    /// Looks at the target and answers with what to attach, or why not.
    pub plan: fn(&PlanContext<'_>) -> Plan,
    /// The `--instrument` categories it serves: when all are off it is not
    /// planned (nothing attached). Empty: planned whatever the categories
    /// (goroutine creation, system calls: turned on by their own flags). A
    /// family serving several checks `options.categories` for each.
    pub categories: &'static [Category],
}

impl std::fmt::Debug for FamilyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FamilyEntry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a family is planned against.
#[derive(Debug)]
pub struct PlanContext<'a> {
    pub target: &'a Target,
    /// The executable, analysed once as a Go binary for every family, or
    /// why it cannot be traced as one (not Go, too old).
    pub go: Result<&'a GoBinary, &'a (dyn Error + Send + Sync + 'static)>,
    pub options: &'a FamilyOptions,
    pub clock: WallClock,
}

impl PlanContext<'_> {
    /// A family that cannot trace this process (a struct layout or a probe
    /// site it cannot find): `{what} in PID N (exe, go1.x) cannot be traced:
    /// {the error and its causes}`, at `level`.
    pub fn cannot_trace(&self, what: &str, err: &(dyn Error + 'static), level: log::Level) -> Plan {
        let go = match self.go {
            Ok(bin) => format!(", {}", bin.build_info().go_version_raw),
            Err(_) => String::new(),
        };
        Plan::Absent {
            why: format!(
                "{what} in PID {} ({}{go}) cannot be traced: {}",
                self.target.pid,
                self.target.exe_in_target.display(),
                crate::binary::error_chain(err)
            ),
            level,
        }
    }
}

/// The families' settings, from the command line.
#[derive(Clone, Debug)]
pub struct FamilyOptions {
    /// Where the net/http entry probes go.
    pub entry_site: http_server::SitePolicy,
    /// The USDT mapping; `None`: USDT probes are off.
    pub usdt_mapping: Option<MappingConfig>,
    /// The user gave a mapping of their own (then missing USDT probes are
    /// worth a warning).
    pub usdt_mapping_given: bool,
    /// Catch flight-recorder dumps.
    pub flight_recorder: bool,
    /// Where dumps are kept, byte for byte.
    pub save_dumps: Option<PathBuf>,
    /// Joined requests' goroutine periods at least this long become spans.
    pub period_min: Duration,
    /// `--dump-on-slow`: ask the program for a flight-recorder dump when a
    /// request is slow.
    pub slow_dumps: Option<crate::flight::slow::SlowDumpOptions>,
    /// Open spans kept at most, per family.
    pub max_open_spans: usize,
    /// How long a span may stay open before it is exported as expired.
    pub span_ttl: Duration,
    /// Keep the literals of SQL statements in `db.query.text`.
    pub sql_keep_literals: bool,
    /// What URL attributes keep of query values.
    pub url_query: crate::spans::url::QueryPolicy,
    /// How HTTP server spans are named.
    pub span_naming: http_server::SpanNaming,
    /// System calls (`--syscalls`, `-c`); `None`: not traced.
    pub syscalls: Option<syscalls::SyscallOptions>,
    /// Which traces are exported (`--sampler`, `OTEL_TRACES_SAMPLER`).
    pub sampler: Sampler,
    /// The categories traced (`--instrument`, `--no-instrument`).
    pub categories: Categories,
    /// Send W3C trace context in outgoing requests (`--propagate`).
    pub propagate: bool,
}

/// A family's answer to planning.
pub enum Plan {
    /// Something to trace in this process.
    Ready(Box<dyn Family>),
    /// Nothing to attach now, but the family watches the process for more
    /// (a library mapped later): attached and kept, but it does not make a
    /// process traceable on its own. `why` and `level` as for `Absent`.
    Idle {
        family: Box<dyn Family>,
        why: String,
        level: log::Level,
    },
    /// Nothing for this family here: why, and how loudly to say so when
    /// another family traces the process (when none does, every reason goes
    /// into the error).
    Absent { why: String, level: log::Level },
    /// Nothing for this family here, and nothing worth saying about it (a
    /// feature the binary does not have, or one the user turned off).
    Nothing,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(family) => f.debug_tuple("Ready").field(&family.name()).finish(),
            Self::Idle { family, why, level } => f
                .debug_struct("Idle")
                .field("family", &family.name())
                .field("why", why)
                .field("level", level)
                .finish(),
            Self::Absent { why, level } => f
                .debug_struct("Absent")
                .field("why", why)
                .field("level", level)
                .finish(),
            Self::Nothing => f.write_str("Nothing"),
        }
    }
}

/// A failure to attach or start, with its causes.
pub type FamilyError = Box<dyn Error + Send + Sync>;

/// A record a family could not decode (counted as a bad record; allocated
/// only then).
pub type BadRecord = Box<dyn Error + Send + Sync>;

/// Where spans go: the export pipeline's queue.
pub type SpanSink<'a> = &'a mut dyn FnMut(EncodedSpan);

/// What handling a record reaches beyond the family's own state.
pub struct RecordContext<'a> {
    /// Where finished spans go.
    pub spans: SpanSink<'a>,
    /// The spans open on each goroutine, shared by every family: a span
    /// that starts where another family's is open becomes its child.
    pub goroutines: &'a mut Goroutines,
}

impl std::fmt::Debug for RecordContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordContext")
            .field("goroutines", &self.goroutines)
            .finish_non_exhaustive()
    }
}

/// One instrumented library, planned for one process. `Send`: host mode
/// plans a target on a thread of its own and traces it on the shared
/// object's ([`crate::session::shared`]).
pub trait Family: Send {
    /// The name of its [`FamilyEntry`].
    fn name(&self) -> &'static str;

    /// The kinds of the shared ring buffer's records it decodes.
    fn kinds(&self) -> &'static [u32] {
        &[]
    }

    /// Whether its spans take a parent from the spans open on their
    /// goroutine (then every family tracks its open spans per goroutine;
    /// when no attached family asks, nobody pays for it).
    fn wants_goroutine_parents(&self) -> bool {
        false
    }

    /// Whether it only feeds the goroutine table (goroutine creation): then
    /// it is attached only when another family wants goroutine parents,
    /// and does not make a process traceable on its own.
    fn provides_goroutine_parents(&self) -> bool {
        false
    }

    /// Whether it can go into an eBPF object other targets use too (host
    /// mode's shared object): every map it writes is indexed or keyed by
    /// the target slot or the process, and it takes no map of the object
    /// for itself. A family that cannot (a ring of its own, a program on
    /// every process) gets its target an object of its own.
    fn shares_object(&self) -> bool {
        false
    }

    /// Sizes it needs of maps sized at load time.
    fn configure_load(&self, _options: &mut LoadOptions) {}

    /// Attaches its programs to `target` through `probes` and logs what it
    /// attached. On error, what it attached is detached.
    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError>;

    /// Starts what runs beside the event loop, handing spans to `spans`.
    fn start(&mut self, _probes: &mut Probes, _spans: &SpanSender) -> Result<(), FamilyError> {
        Ok(())
    }

    /// Decodes one record of one of its [`Self::kinds`].
    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord>;

    /// Once a second: expire what stayed open too long, look for new probe
    /// sites.
    fn housekeeping(&mut self, _probes: &mut Probes, _now_ns: u64, _cx: &mut RecordContext<'_>) {}

    /// The agent stops tracing at `at_ns` (kernel monotonic time), before it
    /// detaches anything: a family that pairs starts with ends opens no
    /// start after it, and counts an end after it that finds no start as
    /// not traced rather than lost ([`crate::spans::OpenTable::stop_at`]).
    /// Probes are detached one at a time while the program runs on; without
    /// this cut, requests that begin after a start probe is gone and end
    /// before the end probe is would look like lost starts.
    fn stop_at(&mut self, at_ns: u64);

    /// Detaches its programs and undoes what it changed in the target; stops
    /// what [`Self::start`] started. Records already written are still
    /// drained and handed to [`Self::on_record`] after this.
    fn stop(&mut self, probes: &mut Probes);

    /// After the last drain: exports what is still open.
    fn finish(&mut self, _now_ns: u64, _cx: &mut RecordContext<'_>) {}

    /// Its counters, in the order the exit line and the summary file list
    /// them. `kernel` holds the shared kernel-side counters.
    fn counters(&self, kernel: &KernelStats, out: &mut Vec<Counter>);

    /// A sentence for the exit line beyond its counters.
    fn summary(&self) -> Option<String> {
        None
    }

    /// Spans it made but did not export because their trace was sampled
    /// out (the session sums every family's into `sampled_out`).
    fn sampled_out(&self) -> u64 {
        0
    }
}

/// One counter: its key in `--summary-file`, its words in the exit line
/// (`None`: not shown there) and whether it counts something lost. Spans
/// exported incomplete (`agent.span.incomplete`) are not lost: they are
/// counted by reason with [`Counter::incomplete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    pub key: &'static str,
    pub label: Option<(&'static str, &'static str)>,
    pub value: u64,
    pub loss: bool,
}

impl Counter {
    /// A count of what happened (not a loss), not in the exit line.
    pub const fn count(key: &'static str, value: u64) -> Self {
        Self {
            key,
            label: None,
            value,
            loss: false,
        }
    }

    /// A loss, shown in the exit line as `{words}: {value}{unit}`.
    pub const fn loss(
        key: &'static str,
        words: &'static str,
        unit: &'static str,
        value: u64,
    ) -> Self {
        Self {
            key,
            label: Some((words, unit)),
            value,
            loss: true,
        }
    }

    /// Spans exported marked `agent.span.incomplete` for one reason: shown
    /// in the exit line, not a loss (the span was exported).
    pub const fn incomplete(key: &'static str, words: &'static str, value: u64) -> Self {
        Self {
            key,
            label: Some((words, "")),
            value,
            loss: false,
        }
    }

    /// A loss only the summary file lists (the family's summary sentence
    /// says it in words).
    pub const fn quiet_loss(key: &'static str, value: u64) -> Self {
        Self {
            key,
            label: None,
            value,
            loss: true,
        }
    }
}
