//! The header that starts every ring-buffer record.

/// `EventHeader::kind` of an [`crate::http::HttpServerStart`] record.
pub const KIND_HTTP_SERVER_START: u32 = 1;
/// `EventHeader::kind` of an [`crate::http::HttpServerEnd`] record.
pub const KIND_HTTP_SERVER_END: u32 = 2;
/// `EventHeader::kind` of a [`crate::usdt::UsdtRecord`].
pub const KIND_USDT: u32 = 3;
/// `EventHeader::kind` of a [`crate::flight::FlightStart`] record.
pub const KIND_FLIGHT_START: u32 = 4;
/// `EventHeader::kind` of a [`crate::flight::FlightChunk`] record.
pub const KIND_FLIGHT_CHUNK: u32 = 5;
/// `EventHeader::kind` of a [`crate::flight::FlightEnd`] record.
pub const KIND_FLIGHT_END: u32 = 6;
/// `EventHeader::kind` of an [`crate::http::HttpTraceparent`] record.
pub const KIND_HTTP_TRACEPARENT: u32 = 7;
/// `EventHeader::kind` of an [`crate::http::HttpTracestate`] record.
pub const KIND_HTTP_TRACESTATE: u32 = 8;

/// Fixed header of every record the eBPF programs write to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// What follows the header: one of the `KIND_*` constants.
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
