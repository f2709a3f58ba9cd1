//! The agent's eBPF programs: uprobes on Go binaries.
//!
//! Each program is a thin `#[uprobe]` wrapper around a `try_*` body; every
//! failure is counted in the per-CPU `STATS` map, never silently ignored.
#![no_std]
#![no_main]
// Inline assembly: constant-offset context loads the verifier accepts (see
// `usdt::reg`).
#![feature(asm_experimental_arch)]

mod flight;
mod go;
mod headers;
mod http_server;
mod maps;
mod record;
mod usdt;

use aya_ebpf::{macros::uprobe, programs::ProbeContext};

/// Entry site of `net/http.serverHandler.ServeHTTP`.
#[uprobe]
pub fn http_server_start(ctx: ProbeContext) -> u32 {
    http_server::start(&ctx);
    0
}

/// Tail-called by `http_server_start` for a request with headers: finds its
/// `Traceparent`. Never attached.
#[uprobe]
pub fn http_server_traceparent(ctx: ProbeContext) -> u32 {
    http_server::traceparent(&ctx);
    0
}

/// Tail-called by `http_server_traceparent` when it found one: finds the
/// request's `Tracestate`. Never attached.
#[uprobe]
pub fn http_server_tracestate(ctx: ProbeContext) -> u32 {
    http_server::tracestate(&ctx);
    0
}

/// Entry site of `net/http.(*response).finishRequest`.
#[uprobe]
pub fn http_server_end(ctx: ProbeContext) -> u32 {
    http_server::end(&ctx);
    0
}

/// Entry site of `net/http.(*http2responseWriter).handlerDone`.
#[uprobe]
pub fn http2_server_end(ctx: ProbeContext) -> u32 {
    http_server::end_h2(&ctx);
    0
}

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
