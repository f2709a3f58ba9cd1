//! Turning decoded records into spans.
//!
//! - [`open`]: the bounded table of started-but-not-ended spans that every
//!   pairing (per goroutine, per request id) goes through.
//! - [`Incomplete`]: why a span ended without its end record.
//! - [`ids`]: trace and span ids.
//! - [`traceparent`], [`tracestate`]: the W3C headers an incoming request
//!   may carry.

pub mod ids;
pub mod open;
pub mod traceparent;
pub mod tracestate;

pub use open::{Incomplete, OpenTable, PairingStats};
