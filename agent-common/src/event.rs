//! The header that starts every ring-buffer record.
//!
//! Each family declares the `KIND_*` values of its own records in its own
//! module; [`KINDS`] lists them all so that none is handed out twice.

use crate::{
    discovery, flight, grpc, http, http_client, http_route, propagate, runtime, sql, syscalls, usdt,
};

/// Every record kind, by family. A kind is never 0 (zeroed memory is not a
/// record).
pub const KINDS: [u32; 36] = [
    http::KIND_HTTP_SERVER_START,
    http::KIND_HTTP_SERVER_END,
    http::KIND_HTTP_TRACEPARENT,
    http::KIND_HTTP_TRACESTATE,
    usdt::KIND_USDT,
    flight::KIND_FLIGHT_START,
    flight::KIND_FLIGHT_CHUNK,
    flight::KIND_FLIGHT_END,
    runtime::KIND_GOROUTINE_CREATED,
    sql::KIND_SQL_START,
    sql::KIND_SQL_END,
    grpc::KIND_GRPC_SERVER_START,
    grpc::KIND_GRPC_SERVER_END,
    grpc::KIND_GRPC_SERVER_STATUS,
    grpc::KIND_GRPC_CLIENT_START,
    grpc::KIND_GRPC_CLIENT_END,
    grpc::KIND_GRPC_TRACEPARENT,
    grpc::KIND_GRPC_TRACESTATE,
    http_client::KIND_HTTP_CLIENT_START,
    http_client::KIND_HTTP_CLIENT_END,
    http_route::KIND_HTTP_ROUTE,
    syscalls::KIND_SYSCALL,
    syscalls::KIND_PROCESS_FORKED,
    syscalls::KIND_PROCESS_EXITED,
    discovery::KIND_PROCESS_EXEC,
    syscalls::KIND_SYSCALL_SOURCE,
    propagate::KIND_SERVER_IDS,
    propagate::KIND_CLIENT_IDS,
    propagate::KIND_GRPC_SERVER_IDS,
    propagate::KIND_GRPC_CLIENT_IDS,
    crate::net::KIND_TLS_START,
    crate::net::KIND_TLS_END,
    crate::net::KIND_DNS_START,
    crate::net::KIND_DNS_END,
    crate::net::KIND_DIAL_START,
    crate::net::KIND_DIAL_END,
];

/// Kinds are small: the agent dispatches on them through a table this long.
pub const MAX_KIND: u32 = 63;

const _: () = {
    let mut i = 0;
    while i < KINDS.len() {
        assert!(
            KINDS[i] != 0 && KINDS[i] <= MAX_KIND,
            "kinds are 1..=MAX_KIND"
        );
        let mut j = i + 1;
        while j < KINDS.len() {
            assert!(KINDS[i] != KINDS[j], "two families share a record kind");
            j += 1;
        }
        i += 1;
    }
};

/// Fixed header of every record the eBPF programs write to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// What follows the header: one of the families' `KIND_*` constants.
    pub kind: u32,
    /// The target slot the probe was attached for (from the attach cookie).
    pub target: u32,
    /// Kernel thread id (in the root PID namespace) that hit the probe.
    pub tid: u32,
    /// The probe site that fired (index into the agent's attach table).
    pub site: u32,
    /// Go goroutine id (`runtime.g.goid`) of the goroutine that hit the probe.
    pub goid: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the probe fired.
    pub ktime_ns: u64,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);
