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
    /// `net/http.Request.Header` (a `map[string][]string`).
    pub request_header: u64,
    /// How this binary lays out maps: `MAP_LAYOUT_*` (not an offset).
    pub map_layout: u64,
    /// Element count of a map: `runtime.hmap.count` or
    /// `internal/runtime/maps.Map.used`.
    pub map_count: u64,
    /// `hmap.buckets`, or `Map.dirPtr` (a group, or the table directory).
    pub map_data: u64,
    /// `hmap.B` (one byte: log2 of the bucket count), or `Map.dirLen`.
    pub map_size: u64,
    /// `hmap.oldbuckets` (set while the map grows); absent for swiss maps.
    pub map_old: u64,
    /// Within `internal/runtime/maps.table`: `groups.data`.
    pub table_groups: u64,
    /// Within `internal/runtime/maps.table`: `groups.lengthMask`.
    pub table_groups_mask: u64,
}

/// `GoOffsets::map_layout`: no map reading (the fields were not found).
pub const MAP_LAYOUT_NONE: u64 = 0;
/// Go 1.17-1.23 (and `GOEXPERIMENT=noswissmap`): `runtime.hmap` with
/// buckets of 8 slots.
pub const MAP_LAYOUT_BUCKETS: u64 = 1;
/// Go 1.24+: swiss tables (`internal/runtime/maps`), groups of 8 slots.
pub const MAP_LAYOUT_SWISS: u64 = 2;

/// A `map[string][]string` bucket (`runtime.bmap`): 8 tophash bytes, 8 keys
/// (16 bytes each), 8 values (24 each), the overflow pointer.
pub const BUCKET_SIZE: u64 = 8 + 8 * 16 + 8 * 24 + 8;
/// Where a bucket's keys, values and overflow pointer start.
pub const BUCKET_KEYS: usize = 8;
pub const BUCKET_VALUES: usize = 8 + 8 * 16;
pub const BUCKET_OVERFLOW: usize = 8 + 8 * 16 + 8 * 24;
/// Lowest tophash of a full bucket slot (below: empty or evacuated).
pub const BUCKET_MIN_TOPHASH: u8 = 5;
/// A `map[string][]string` swiss group: an 8-byte control word, then 8
/// slots of key (16 bytes) and value (24 bytes).
pub const GROUP_SIZE: u64 = 8 + 8 * 40;
pub const GROUP_SLOT_SIZE: usize = 40;
/// A control byte with this bit set marks an empty or deleted slot.
pub const GROUP_CTRL_EMPTY_BIT: u8 = 0x80;

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
        request_header: OFFSET_ABSENT,
        map_layout: MAP_LAYOUT_NONE,
        map_count: OFFSET_ABSENT,
        map_data: OFFSET_ABSENT,
        map_size: OFFSET_ABSENT,
        map_old: OFFSET_ABSENT,
        table_groups: OFFSET_ABSENT,
        table_groups_mask: OFFSET_ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<GoOffsets>() == 25 * 8);

/// One entry of the `TARGETS` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    pub offsets: GoOffsets,
}

const _: () = assert!(core::mem::size_of::<TargetConfig>() == 8 + 25 * 8);
