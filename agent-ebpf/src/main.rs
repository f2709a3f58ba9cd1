//! The agent's eBPF programs: uprobes on Go binaries.
//!
//! One module per probe family (`http_server`, `usdt`, `flight`): its
//! programs, its maps, its record writing. Shared: [`maps`] (the ring buffer
//! and the counters), [`record`] (building and submitting records), [`go`]
//! (reading Go values). Each program is a thin `#[uprobe]` wrapper around a
//! body; every failure is counted in the per-CPU `STATS` map, never silently
//! ignored.
#![no_std]
#![no_main]
// Inline assembly: constant-offset context loads the verifier accepts (see
// `usdt::reg`).
#![feature(asm_experimental_arch)]

mod discovery;
mod flight;
mod go;
mod grpc;
mod http_client;
mod http_route;
mod http_server;
mod maps;
mod net;
mod propagate;
mod propagate_h2;
mod record;
mod runtime;
mod sql;
mod syscalls;
mod usdt;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any reachable path to here, so a panic in a
    // program shows up as a load error, never at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
