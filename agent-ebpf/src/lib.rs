//! Empty host-side library: lets the agent's build script depend on this crate
//! so that cargo rebuilds the agent when the eBPF programs change. The
//! programs themselves are the `agent` binary target (`src/main.rs`), built for
//! `bpfel-unknown-none` by aya-build.
#![no_std]
