//! Per-target configuration the agent writes into the `TARGETS` map before
//! attaching: where the fields the probes read live in this binary's structs.

/// Maximum number of targets one agent traces at once (size of `TARGETS`).
pub const MAX_TARGETS: u32 = 64;

/// Sentinel for an offset this binary does not have. Probes skip the field
/// instead of reading at a silent zero.
pub const OFFSET_ABSENT: u64 = u64::MAX;

/// Byte offsets of struct fields in one Go binary, read from its DWARF or the
/// per-version table. `OFFSET_ABSENT` where the field does not exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoOffsets {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `net/http.Request.Method` (string).
    pub request_method: u64,
    /// `net/http.Request.RequestURI` (string).
    pub request_uri: u64,
    /// `net/http.Request.Host` (string).
    pub request_host: u64,
    /// `net/http.Request.RemoteAddr` (string).
    pub request_remote_addr: u64,
    /// `net/http.Request.ContentLength` (int64).
    pub request_content_length: u64,
    /// `net/http.Request.ProtoMajor` (int).
    pub request_proto_major: u64,
    /// `net/http.Request.ProtoMinor` (int).
    pub request_proto_minor: u64,
    /// `net/http.Request.Pattern` (string, Go 1.23+).
    pub request_pattern: u64,
    /// `net/http.Request.TLS` (*tls.ConnectionState).
    pub request_tls: u64,
    /// `net/http.response.req` (*Request).
    pub response_req: u64,
    /// `net/http.response.status` (int).
    pub response_status: u64,
    /// `net/http.response.written` (int64).
    pub response_written: u64,
    /// `net/http.http2responseWriter.rws` (*http2responseWriterState).
    pub h2_writer_rws: u64,
    /// `net/http.http2responseWriterState.req` (*Request).
    pub h2_state_req: u64,
    /// `net/http.http2responseWriterState.status` (int).
    pub h2_state_status: u64,
    /// `net/http.http2responseWriterState.wroteBytes` (int64).
    pub h2_state_wrote_bytes: u64,
}

impl GoOffsets {
    /// Every offset absent.
    pub const ABSENT: Self = Self {
        g_goid: OFFSET_ABSENT,
        request_method: OFFSET_ABSENT,
        request_uri: OFFSET_ABSENT,
        request_host: OFFSET_ABSENT,
        request_remote_addr: OFFSET_ABSENT,
        request_content_length: OFFSET_ABSENT,
        request_proto_major: OFFSET_ABSENT,
        request_proto_minor: OFFSET_ABSENT,
        request_pattern: OFFSET_ABSENT,
        request_tls: OFFSET_ABSENT,
        response_req: OFFSET_ABSENT,
        response_status: OFFSET_ABSENT,
        response_written: OFFSET_ABSENT,
        h2_writer_rws: OFFSET_ABSENT,
        h2_state_req: OFFSET_ABSENT,
        h2_state_status: OFFSET_ABSENT,
        h2_state_wrote_bytes: OFFSET_ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<GoOffsets>() == 17 * 8);

/// One entry of the `TARGETS` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    pub offsets: GoOffsets,
}

const _: () = assert!(core::mem::size_of::<TargetConfig>() == 8 + 17 * 8);
