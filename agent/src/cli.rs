//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Turns what Go programs do into OpenTelemetry traces, without touching them.
///
/// `agent --pid N` attaches to a running Go program and exports one span per
/// HTTP request it serves. Spans go to an OTLP collector when an endpoint is
/// configured (flags or the standard OTEL_EXPORTER_OTLP_* variables), else to
/// the console.
#[derive(Debug, Parser)]
#[command(name = "agent", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(flatten)]
    pub export: ExportArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode Go execution-trace files into spans.
    Decode(DecodeArgs),
    /// Watch a directory and decode each new *.trace file once it is complete.
    Watch(WatchArgs),
    /// Show what the agent finds in a Go binary: version, modules, probe sites.
    Inspect(InspectArgs),
    /// List the USDT probes of a process or file.
    Probes(ProbesArgs),
}

/// Tracing a live process.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// PID of the process to trace (a Go program serving HTTP with net/http,
    /// or any program with USDT probes a mapping names). Repeatable (also
    /// AGENT_PID, comma-separated, when no --pid is given); one --pid alone exits with its process,
    /// any other selection runs until SIGINT or SIGTERM.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Trace every process whose executable matches: a glob on its path
    /// when PATTERN has a `/`, else on its file name (`httpserver`,
    /// `api-*`). Repeatable (also AGENT_EXE, comma-separated, when no --exe is given). Processes
    /// running at start are found in /proc, later ones as they exec; the
    /// agent runs until SIGINT or SIGTERM.
    #[arg(long, value_name = "PATTERN", conflicts_with = "command")]
    pub exe: Vec<String>,

    /// Trace every process listening on TCP port N: those listening at
    /// start, found in /proc, and later ones as they call listen().
    /// Repeatable (also AGENT_PORT, comma-separated); runs until stopped.
    #[arg(long, value_name = "N", conflicts_with = "command")]
    pub port: Vec<u16>,

    /// Trace every Go process with something to trace (Go build info, and
    /// a library the agent instruments). Also AGENT_GO=1; runs until
    /// stopped.
    #[arg(long, conflicts_with = "command")]
    pub go: bool,

    /// service.name of the targets whose executable is EXE (a file name, or
    /// a whole path): `--service-name-map api=checkout`. Repeatable.
    /// Without one, a target's service.name is its executable's name.
    #[arg(long, value_name = "EXE=NAME")]
    pub service_name_map: Vec<String>,

    /// Do not stop new processes `--exe NAME` names (a plain file name) at
    /// exec until the agent has attached. By default they are stopped
    /// (SIGSTOP from the kernel, SIGCONT once attached, usually well under
    /// a second) so that even a short-lived one is traced from its start.
    #[arg(long)]
    pub no_hold: bool,

    /// Host mode: give each process an eBPF object, ring buffer and export
    /// pipeline of its own, as before the shared object (for comparing; a
    /// process whose families cannot share one gets its own anyway).
    #[arg(long, hide = true)]
    pub object_per_target: bool,

    /// Ring-buffer size in bytes (rounded up to a power of two).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub ring_buffer_size: u32,

    /// Seconds a request may stay open before its span is exported as expired.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub span_ttl: u64,

    /// Open requests tracked at most; the oldest is exported as evicted beyond.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub max_open_spans: usize,

    /// Spans queued for export at most; more are dropped and counted.
    #[arg(
        long,
        value_name = "N",
        env = "OTEL_BSP_MAX_QUEUE_SIZE",
        default_value_t = 8192
    )]
    pub export_queue: usize,

    /// Where entry probes sit: `cheapest` (an instruction the kernel emulates,
    /// where the arguments are still in their registers) or `function-start`
    /// (each function's first instruction, single-stepped: for comparison).
    #[arg(long, value_name = "POLICY", default_value = "cheapest", value_parser = ["cheapest", "function-start"])]
    pub entry_site: String,

    /// What URL attributes (`url.full`, `url.query`) keep of query values:
    /// `redact` (every value becomes `REDACTED`) or `keep` (values kept,
    /// except signatures OpenTelemetry says to redact).
    #[arg(long, value_name = "POLICY", default_value = "redact", value_parser = ["redact", "keep"])]
    pub url_query: String,

    /// How HTTP server spans are named: `route` (`{method} {http.route}`,
    /// or `{method}` when no route is known, as OpenTelemetry's HTTP
    /// conventions say) or `path` (`{method} {url.path}`, the raw path).
    #[arg(long, value_name = "NAMING", default_value = "route", value_parser = ["route", "path"])]
    pub span_name: String,

    /// Send W3C trace context (`traceparent`) in the plaintext HTTP/1.1
    /// requests a traced program makes under a server span, naming the
    /// CLIENT span, so that a traced callee continues the trace. Off by
    /// default: it changes the bytes the program sends. Nothing is written
    /// in the program's memory: a socket program inserts the header line.
    #[arg(long, env = "AGENT_PROPAGATE")]
    pub propagate: bool,

    /// Save each captured flight-recorder dump to this directory (for `go tool trace`).
    #[arg(long, value_name = "DIR")]
    pub save_dumps: Option<std::path::PathBuf>,

    /// Do not capture runtime/trace flight-recorder dumps.
    #[arg(long)]
    pub no_flight_recorder: bool,

    /// In a captured dump, a traced request's goroutine periods (blocked,
    /// runnable, in a system call) at least this long become spans; shorter
    /// ones are only summed on its `goroutine time` span.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration)]
    pub period_min: std::time::Duration,

    /// When a traced request (a server span) takes at least this long, ask
    /// the program to write its flight recorder (with --dump-signal or
    /// --dump-url); the dump is captured like any other. Off by default.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dump_on_slow: Option<std::time::Duration>,

    /// With --dump-on-slow: the signal the program writes its flight
    /// recorder on (it must handle it: the default action of SIGUSR1 ends a
    /// program that does not), e.g. SIGUSR1.
    #[arg(
        long,
        value_name = "SIGNAL",
        requires = "dump_on_slow",
        conflicts_with = "dump_url"
    )]
    pub dump_signal: Option<String>,

    /// With --dump-on-slow: an http:// URL the agent GETs for a dump (an
    /// endpoint of the program that calls WriteTo).
    #[arg(long, value_name = "URL", requires = "dump_on_slow")]
    pub dump_url: Option<String>,

    /// With --dump-on-slow: at most one dump asked for per interval; slow
    /// requests within it are counted.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub dump_interval: std::time::Duration,

    /// Also write the exit summary as key=value lines to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_file: Option<std::path::PathBuf>,

    /// USDT mapping file (TOML): which probe pairs become spans, merged with
    /// the built-in mappings (see the README's "USDT probes" section).
    #[arg(long, value_name = "FILE", conflicts_with = "no_usdt")]
    pub usdt_config: Option<PathBuf>,

    /// Do not attach to the target's USDT probes.
    #[arg(long)]
    pub no_usdt: bool,

    /// Serve metrics for Prometheus at http://ADDR/metrics (e.g.
    /// 0.0.0.0:9464); also `OTEL_METRICS_EXPORTER=prometheus`, with
    /// OTEL_EXPORTER_PROMETHEUS_HOST/PORT.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// SQL literals in `db.query.text`: `sanitize` (each becomes `?`) or
    /// `keep` (the statement as the program sent it).
    #[arg(long, value_name = "MODE", default_value = "sanitize", value_parser = ["sanitize", "keep"])]
    pub sql_literals: String,

    /// Which traces are exported, as OTEL_TRACES_SAMPLER says (which this
    /// overrides): always_on, always_off, traceidratio,
    /// parentbased_always_on (the default), parentbased_always_off,
    /// parentbased_traceidratio. A parentbased_* sampler follows the
    /// `sampled` flag of an incoming traceparent. Decided once per trace:
    /// a trace is exported whole or not at all; the rest is counted as
    /// sampled_out.
    #[arg(long, value_name = "SAMPLER")]
    pub sampler: Option<String>,

    /// The ratio of traces the *traceidratio samplers keep, from 0 to 1
    /// (default 1.0; overrides OTEL_TRACES_SAMPLER_ARG).
    #[arg(long, value_name = "RATIO")]
    pub sampler_arg: Option<String>,

    /// Only these categories (default: all; also AGENT_INSTRUMENT),
    /// comma-separated: http (net/http server, its routes, and client),
    /// grpc, sql (database/sql), tls (TLS handshake spans), dns (DNS lookup
    /// spans), net (connect spans), usdt, flight (flight-recorder dumps). A
    /// category that is off attaches no probes.
    #[arg(long, value_name = "LIST")]
    pub instrument: Option<String>,

    /// Not these categories (as --instrument; also AGENT_NO_INSTRUMENT).
    #[arg(long, value_name = "LIST")]
    pub no_instrument: Option<String>,

    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// Launch mode and system calls (see the README's "Launch mode and system
/// calls").
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The program to start and trace from its first instruction, after
    /// `--`: the agent exits with its exit code (128+N for signal N).
    #[arg(last = true, value_name = "CMD", conflicts_with = "pid")]
    pub command: Vec<String>,

    /// A span per system call, under a `process: NAME` span. FILTER as
    /// strace's `-e trace=`: names, classes (%file, %network, %process,
    /// %memory, %signal, %desc), a leading `!` for all but those.
    #[arg(long, value_name = "FILTER", num_args = 0..=1, require_equals = true, default_missing_value = "all")]
    pub syscalls: Option<String>,

    /// System calls shorter than this (`500us`, `2ms`) are counted but make
    /// no span.
    #[arg(long, value_name = "DURATION", default_value = "0us", value_parser = parse_duration)]
    pub syscall_min_duration: std::time::Duration,

    /// At exit, a table per system call like `strace -c` (on stderr and in
    /// --summary-file); alone, no spans.
    #[arg(short = 'c', long)]
    pub summary: bool,

    /// Also trace the processes the target forks, each under its parent's
    /// process span.
    #[arg(short = 'f', long)]
    pub follow_forks: bool,

    /// The source line of each system call's user-space caller
    /// (`code.file.path`, `code.line.number`, `code.function.name`), from
    /// the user stack: Go from `.gopclntab`, C/C++/Rust from DWARF.
    #[arg(short = 's', long)]
    pub source: bool,
}

/// `500us`, `2ms`, `1.5s`, `100ns`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} needs a unit: ns, us, ms or s"))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return Err(format!("{s:?}: the unit is one of ns, us, ms, s")),
    };
    std::time::Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))
}

/// Where spans go.
#[derive(Debug, Args, Clone, Default)]
pub struct ExportArgs {
    /// OTLP endpoint, e.g. http://localhost:4317 (gRPC) or http://localhost:4318 (HTTP).
    #[arg(long, value_name = "URL", global = true)]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: grpc or http/protobuf (default: grpc on port 4317, else http/protobuf).
    #[arg(long, value_name = "PROTOCOL", global = true)]
    pub otlp_protocol: Option<String>,

    /// Extra OTLP header KEY=VALUE (repeatable), after OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(long = "otlp-header", value_name = "KEY=VALUE", global = true)]
    pub otlp_headers: Vec<String>,

    /// CA certificate (PEM) the collector's certificate must chain to, instead
    /// of the system's roots (OTEL_EXPORTER_OTLP_CERTIFICATE).
    #[arg(long, value_name = "FILE", global = true)]
    pub otlp_certificate: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE).
    #[arg(long, value_name = "FILE", global = true, requires = "otlp_client_key")]
    pub otlp_client_certificate: Option<PathBuf>,

    /// The client certificate's private key (PEM) (OTEL_EXPORTER_OTLP_CLIENT_KEY).
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        requires = "otlp_client_certificate"
    )]
    pub otlp_client_key: Option<PathBuf>,

    /// A scheme-less HOST:PORT endpoint is cleartext, not TLS (OTEL_EXPORTER_OTLP_INSECURE).
    #[arg(long, global = true)]
    pub otlp_insecure: bool,

    /// Compression of export requests: gzip or none (OTEL_EXPORTER_OTLP_COMPRESSION).
    #[arg(long, value_name = "ALGORITHM", global = true)]
    pub otlp_compression: Option<String>,

    /// Also write spans to: console, jsonl (stdout) or jsonl=FILE (OTLP JSON lines). Repeatable.
    #[arg(long, value_name = "OUTPUT", global = true)]
    pub output: Vec<String>,

    /// service.name of the spans (default: OTEL_SERVICE_NAME, else the executable's name).
    #[arg(long, value_name = "NAME", global = true)]
    pub service_name: Option<String>,
}

impl ExportArgs {
    /// The OTLP exporter's flags, which spans and metrics both read.
    pub fn otlp_flags(&self) -> agent::export::config::OtlpFlags {
        agent::export::config::OtlpFlags {
            endpoint: self.otlp_endpoint.clone(),
            protocol: self.otlp_protocol.clone(),
            headers: self.otlp_headers.clone(),
            certificate: self.otlp_certificate.clone(),
            client_certificate: self.otlp_client_certificate.clone(),
            client_key: self.otlp_client_key.clone(),
            insecure: self.otlp_insecure,
            compression: self.otlp_compression.clone(),
        }
    }
}

/// Logging.
#[derive(Debug, Args, Clone, Copy)]
pub struct LogArgs {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Trace files (Go 1.22+ execution traces).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Print the decoded event stream instead of exporting spans.
    #[arg(long, value_name = "WHAT", value_parser = ["events"])]
    pub dump: Option<String>,

    /// Wall-clock time (RFC 3339) of the trace's start, for traces without a clock snapshot.
    #[arg(long, value_name = "TIME")]
    pub anchor_time: Option<String>,

    /// The agent's own spans of the traced process (its `--output jsonl` file): a task begun
    /// on a goroutine while one of them was open on it becomes its child, in its trace. The
    /// process is the one in the file name (`PID-...`, as `--save-dumps` names dumps), else
    /// the only one in SPANS.
    #[arg(long, value_name = "SPANS")]
    pub join: Option<PathBuf>,

    /// With --join: a joined request's goroutine periods (blocked, runnable,
    /// in a system call) at least this long become spans; shorter ones are
    /// only summed on its `goroutine time` span.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration)]
    pub period_min: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Directory to watch for *.trace files.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Go binary.
    #[arg(
        value_name = "BINARY",
        required_unless_present = "pid",
        conflicts_with = "pid"
    )]
    pub binary: Option<PathBuf>,

    /// Inspect the executable of this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProbesArgs {
    /// List probes of this process (executable and mapped libraries).
    #[arg(
        long,
        value_name = "PID",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub pid: Option<u32>,

    /// List probes of this ELF file.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}
