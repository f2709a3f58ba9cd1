//! The agent library: everything `agent` does, one module per concern.
//!
//! - [`target`]: finding and checking the process to trace (`/proc/N`).
//! - [`binary`]: Go binary analysis: build info, functions, struct offsets,
//!   probe sites.
//! - [`probes`]: loading the eBPF programs and attaching them to a target.
//! - [`ringbuf`]: draining the ring buffer and decoding its records.
//! - [`spans`]: turning decoded records into spans (pairing starts and ends).
//! - [`export`]: the export pipeline (OTLP gRPC/HTTP, console, JSONL).
//! - [`gotrace`]: the Go execution-trace decoder and its span mapping.
//! - [`usdt`]: USDT probe discovery and argument specs.
//! - [`clock`], [`resource`]: wall-clock conversion and resource attributes.

pub mod binary;
pub mod clock;
pub mod export;
pub mod flight;
pub mod gotrace;
pub mod probes;
pub mod resource;
pub mod ringbuf;
pub mod spans;
pub mod target;
pub mod usdt;
