//! Shared test harness: builds Go fixtures from source, runs the agent as a
//! separate process, and receives its OTLP exports on real sockets.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

pub mod agent;
pub mod fixture;
pub mod http_client;
pub mod otlp;
pub mod propagation;
pub mod sqlapp;
