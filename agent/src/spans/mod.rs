//! Turning decoded records into spans.
//!
//! - [`open`]: the bounded table of started-but-not-ended spans that every
//!   pairing (per goroutine, per request id) goes through.
//! - [`Incomplete`]: why a span ended without its end record.
//! - [`goroutines`]: the spans open on each goroutine and inherited by the
//!   goroutines it creates: in-process parents without a context.
//! - [`ids`]: trace and span ids.
//! - [`traceparent`], [`tracestate`]: the W3C headers an incoming request
//!   may carry.
//! - [`sampling`]: which traces are exported (`OTEL_TRACES_SAMPLER`).
//! - [`url`]: URLs and queries sanitized for attributes.

pub mod goroutines;
pub mod ids;
pub mod open;
pub mod sampling;
pub mod traceparent;
pub mod tracestate;
pub mod url;

pub use goroutines::{Goroutines, ParentSpan};
pub use open::{Incomplete, OpenTable, PairingStats};
pub use sampling::Sampler;
