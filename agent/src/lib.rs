//! The agent library: everything `agent` does, one module per concern.
//!
//! Families, one folder per instrumented library (see [`family`]):
//! - [`http_server`]: net/http server requests.
//! - [`http_client`]: net/http client calls.
//! - [`usdt`]: USDT probes of any program, mapped to spans.
//! - [`flight`]: flight-recorder dumps, caught as they are written.
//! - [`runtime`]: goroutine creation, for in-process parents.
//! - [`syscalls`]: system calls of any program, and their `strace -c` table.
//!
//! What the families share, knowing none of them by name:
//! - [`family`]: the contract a family fulfils and the list that registers
//!   them.
//! - [`session`]: one traced process: planning, attaching, the event loop,
//!   shutdown, the counters.
//! - [`target`]: the process, through `/proc/N` (executable, maps, exit).
//! - [`binary`]: Go binary analysis: build info, functions, struct offsets,
//!   probe sites.
//! - [`probes`]: the one seam for privileged operations: loading the eBPF
//!   object, filling maps, attaching and detaching.
//! - [`ringbuf`]: draining the ring buffer, record headers.
//! - [`spans`]: the open-span table, ids, W3C trace context, sampling.
//! - [`instrument`]: the categories `--instrument` turns on and off.
//! - [`export`]: the export pipeline (OTLP gRPC/HTTP, console, JSONL).
//! - [`metrics`]: request metrics derived from spans, the agent's own,
//!   over OTLP and for Prometheus.
//! - [`gotrace`]: the Go execution-trace decoder and its span mapping.
//! - [`clock`], [`resource`]: wall-clock conversion and resource attributes.
//! - [`cursor`]: reading untrusted bytes: one bounds-checked cursor and one
//!   uvarint decoder, errors carrying the byte offset.

pub mod binary;
pub mod clock;
pub mod cursor;
pub mod discovery;
pub mod export;
pub mod family;
pub mod flight;
pub mod gotrace;
pub mod grpc;
pub mod http_client;
pub mod http_server;
pub mod instrument;
pub mod metrics;
pub mod net;
pub mod probes;
pub mod propagate;
pub mod resource;
pub mod ringbuf;
pub mod runtime;
pub mod session;
pub mod spans;
pub mod sql;
pub mod syscalls;
pub mod target;
pub mod usdt;
