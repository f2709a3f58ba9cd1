//! Types shared by the eBPF programs (`agent-ebpf`) and the agent (`agent`).
//!
//! Every type that crosses the kernel/user boundary follows the same rules:
//! `#[repr(C)]`, no invalid bit patterns (kinds are `u32` with named
//! constants, never Rust enums or `bool`), no implicit padding (explicit
//! `_pad` fields, and a compile-time size assertion next to each type).
//!
//! One module per probe family (`http`, `usdt`, `flight`, `runtime`): its record kinds,
//! records, per-target configuration and map constants. [`event`] holds the
//! header every record starts with, [`stats`] the kernel-side counters,
//! [`target`] what all per-target configurations share.
#![no_std]

pub mod discovery;
pub mod event;
pub mod flight;
pub mod grpc;
pub mod http;
pub mod http_client;
pub mod http_route;
pub mod net;
pub mod propagate;
pub mod runtime;
pub mod sql;
pub mod stats;
pub mod syscalls;
pub mod target;
pub mod usdt;

/// Implements `aya::Pod` for the listed shared types on the user-space side.
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: the type is `#[repr(C)]`, made of integers and integer
            // arrays only (every bit pattern is valid) and has no implicit
            // padding; its size is asserted where it is defined.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}

#[cfg(feature = "user")]
impl_pod!(
    event::EventHeader,
    http::HttpServerStart,
    http::HttpServerEnd,
    http::HttpTraceparent,
    http::HttpTracestate,
    http::HttpConfig,
    http::HttpOffsets,
    http_route::HttpRoute,
    http_route::HttpRouteConfig,
    http_route::HttpRouteOffsets,
    usdt::UsdtSpec,
    usdt::UsdtArgSpec,
    flight::FlightStart,
    flight::FlightChunkHeader,
    flight::FlightEnd,
    flight::FlightConfig,
    flight::FlightKey,
    flight::FlightState,
    runtime::GoroutineCreated,
    runtime::RuntimeConfig,
    sql::SqlStart,
    sql::SqlEnd,
    sql::SqlConfig,
    sql::SqlOffsets,
    grpc::GrpcServerStart,
    grpc::GrpcServerEnd,
    grpc::GrpcServerStatus,
    grpc::GrpcClientStart,
    grpc::GrpcClientEnd,
    grpc::GrpcTraceparent,
    grpc::GrpcTracestate,
    grpc::GrpcOffsets,
    grpc::GrpcConfig,
    http_client::HttpClientStart,
    http_client::HttpClientEnd,
    http_client::HttpClientConfig,
    http_client::HttpClientOffsets,
    syscalls::SyscallRecord,
    syscalls::SyscallSourceRecord,
    syscalls::ProcessForked,
    syscalls::ProcessExited,
    syscalls::SyscallConfig,
    syscalls::InFlight,
    syscalls::SyscallTotals,
    propagate::SpanIds,
    propagate::SpanContext,
    propagate::PropagateConfig,
    net::NetStart,
    net::NetEnd,
    net::NetConfig,
    net::NetOffsets,
);
