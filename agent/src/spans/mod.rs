//! Turning decoded records into spans.
//!
//! - [`open`]: the bounded table of started-but-not-ended spans that every
//!   pairing (per goroutine, per request id) goes through.
//! - [`http`]: net/http server requests.
//! - [`ids`]: trace and span ids.
//! - [`traceparent`]: the W3C header an incoming request may carry.

pub mod http;
pub mod ids;
pub mod open;
pub mod traceparent;
pub mod usdt;

pub use open::{OpenTable, PairingStats};
