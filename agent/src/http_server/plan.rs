//! Planning the net/http server probes for one Go binary: which functions,
//! which sites, which struct offsets; and attaching them.
//!
//! - start: `net/http.serverHandler.ServeHTTP(rw, req)`, reads `req` (RDI)
//!   and the ResponseWriter's data pointer (RCX);
//! - end: `net/http.(*response).finishRequest()`, reads the receiver (RAX);
//! - HTTP/2 end: `net/http.(*http2responseWriter).handlerDone()` (Go 1.27+:
//!   `net/http/internal/http2.(*responseWriter).handlerDone()`), reads the
//!   receiver (RAX). HTTP/2 requests reach the same start (the bundled
//!   server calls the Server's handler through `serverHandler.ServeHTTP`, on
//!   the stream's own goroutine, with the `*http2responseWriter` as the
//!   ResponseWriter); their end is where that goroutine hands the stream
//!   back after the handler returned. Optional: a binary without it (or
//!   without its offsets) is traced for HTTP/1 only, and says so.
//!
//! All at the cheapest entry site the binary analysis finds (the `JBE` after
//! the stack check, which the kernel emulates) where those registers still
//! hold the arguments.

use agent_common::{
    http::{
        HttpConfig, HttpOffsets, MAP_LAYOUT_BUCKETS, MAP_LAYOUT_SWISS, TAIL_TRACEPARENT,
        TAIL_TRACESTATE,
    },
    target::OFFSET_ABSENT,
};
use iced_x86::Register;

use crate::{
    binary::{BuiltinProbe, GoBinary, OffsetError, ProbeSite, SiteError},
    probes::{LinkHandle, ProbeError, Probes},
    target::Target,
};

/// The probes of this family, with what they read: for `agent inspect`.
pub const PROBES: &[BuiltinProbe] = &[
    BuiltinProbe {
        name: "http.server.request.start",
        function: "net/http.serverHandler.ServeHTTP",
        // rw (interface: itab in RBX, data in RCX) and req (*Request) in RDI.
        preserve: &[Register::RCX, Register::RDI],
        fields: &[
            ("runtime.g", "goid"),
            ("net/http.Request", "Method"),
            ("net/http.Request", "RequestURI"),
            ("net/http.Request", "Header"),
            ("net/http.Request", "Host"),
            ("net/http.Request", "RemoteAddr"),
            ("net/http.Request", "ContentLength"),
            ("net/http.Request", "ProtoMajor"),
            ("net/http.Request", "ProtoMinor"),
            ("net/http.Request", "TLS"),
        ],
    },
    BuiltinProbe {
        name: "http.server.request.end",
        function: "net/http.(*response).finishRequest",
        // The receiver (*response) in RAX.
        preserve: &[Register::RAX],
        fields: &[
            ("net/http.response", "req"),
            ("net/http.response", "status"),
            ("net/http.response", "written"),
            ("net/http.Request", "Pattern"),
        ],
    },
    BuiltinProbe {
        name: "http2.server.request.end",
        function: "net/http.(*http2responseWriter).handlerDone",
        // The receiver (*http2responseWriter) in RAX.
        preserve: &[Register::RAX],
        fields: &[
            ("net/http.http2responseWriter", "rws"),
            ("net/http.http2responseWriterState", "req"),
            ("net/http.http2responseWriterState", "status"),
            ("net/http.http2responseWriterState", "wroteBytes"),
            ("net/http.Request", "Pattern"),
        ],
    },
    BuiltinProbe {
        name: "http2.server.request.end (Go 1.27+)",
        function: "net/http/internal/http2.(*responseWriter).handlerDone",
        // The receiver (*responseWriter) in RAX.
        preserve: &[Register::RAX],
        fields: &[
            ("net/http/internal/http2.responseWriter", "rws"),
            ("net/http/internal/http2.responseWriterState", "status"),
            ("net/http/internal/http2.responseWriterState", "wroteBytes"),
        ],
    },
];

/// The function whose entry starts a request.
pub const START_FUNCTION: &str = "net/http.serverHandler.ServeHTTP";
/// The function whose entry ends it.
pub const END_FUNCTION: &str = "net/http.(*response).finishRequest";
/// Where a release keeps its HTTP/2 server: the function whose entry ends
/// an HTTP/2 request, and the two structs its receiver leads to.
#[derive(Clone, Copy, Debug)]
pub struct H2Server {
    pub end_function: &'static str,
    pub writer: &'static str,
    pub state: &'static str,
    /// Whether the state holds the `*http.Request` (`req`), for its
    /// ServeMux pattern. Go 1.27's internal server holds its own request
    /// value instead: the pattern is then found through the pointer the
    /// start saw (`HTTP2_REQUESTS` in the kernel).
    pub state_has_request: bool,
}

/// The HTTP/2 servers of every release: bundled into net/http up to Go
/// 1.26, `net/http/internal/http2` from Go 1.27.
pub const H2_SERVERS: [H2Server; 2] = [
    H2Server {
        end_function: "net/http/internal/http2.(*responseWriter).handlerDone",
        writer: "net/http/internal/http2.responseWriter",
        state: "net/http/internal/http2.responseWriterState",
        state_has_request: false,
    },
    H2Server {
        end_function: "net/http.(*http2responseWriter).handlerDone",
        writer: "net/http.http2responseWriter",
        state: "net/http.http2responseWriterState",
        state_has_request: true,
    },
];

/// Why the probes cannot be planned for a binary.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the program does not serve HTTP with net/http ({function} not found)")]
    NoFunction { function: &'static str },
    #[error("no usable offset for {type_name}.{field}")]
    Offset {
        type_name: &'static str,
        field: &'static str,
        #[source]
        source: OffsetError,
    },
    #[error("no probe site in {function}")]
    Site {
        function: &'static str,
        #[source]
        source: SiteError,
    },
}

/// Where and how to probe one binary.
#[derive(Clone, Debug)]
pub struct HttpServerPlan {
    pub offsets: HttpOffsets,
    pub start: ProbeSite,
    pub end: ProbeSite,
    /// The HTTP/2 end, when the binary has it and its offsets.
    pub h2_end: Option<ProbeSite>,
    /// Optional fields this binary lacks (logged, not fatal).
    pub missing: Vec<String>,
}

type Field = (&'static str, &'static str);

const REQUIRED: [Field; 4] = [
    ("runtime.g", "goid"),
    ("net/http.Request", "Method"),
    ("net/http.Request", "RequestURI"),
    ("net/http.response", "status"),
];

/// `offsets` with the map fields set for a binary's map layout: swiss
/// tables (Go 1.24+) or buckets (before, or `GOEXPERIMENT=noswissmap`),
/// whichever its DWARF (or the table for its release) describes.
fn with_map_layout(bin: &GoBinary, offsets: HttpOffsets) -> Result<HttpOffsets, String> {
    let field = |type_name: &str, field: &str| {
        bin.struct_field_offset(type_name, field)
            .map(|f| f.offset)
            .map_err(|e| format!("{type_name}.{field}: {e}"))
    };
    // The table was measured on default builds: it cannot describe a
    // release built without swiss maps.
    let no_swiss = bin.build_info().go_version_raw.contains("noswissmap");
    let swiss = || -> Result<HttpOffsets, String> {
        let groups = field("internal/runtime/maps.table", "groups")?;
        Ok(HttpOffsets {
            map_layout: MAP_LAYOUT_SWISS,
            map_count: field("internal/runtime/maps.Map", "used")?,
            map_data: field("internal/runtime/maps.Map", "dirPtr")?,
            map_size: field("internal/runtime/maps.Map", "dirLen")?,
            map_old: OFFSET_ABSENT,
            table_groups: groups + field("internal/runtime/maps.groupsReference", "data")?,
            table_groups_mask: groups
                + field("internal/runtime/maps.groupsReference", "lengthMask")?,
            ..offsets
        })
    };
    let buckets = || -> Result<HttpOffsets, String> {
        Ok(HttpOffsets {
            map_layout: MAP_LAYOUT_BUCKETS,
            map_count: field("runtime.hmap", "count")?,
            map_data: field("runtime.hmap", "buckets")?,
            map_size: field("runtime.hmap", "B")?,
            map_old: field("runtime.hmap", "oldbuckets")?,
            table_groups: OFFSET_ABSENT,
            table_groups_mask: OFFSET_ABSENT,
            ..offsets
        })
    };
    if no_swiss {
        return buckets();
    }
    swiss()
        .or_else(|swiss_err| buckets().map_err(|buckets_err| format!("{swiss_err}; {buckets_err}")))
}

/// Where entry probes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SitePolicy {
    /// The cheapest site where the arguments are still in their registers.
    Cheapest,
    /// The function's first instruction (for comparing costs).
    FunctionStart,
}

/// Resolves functions, sites and offsets.
pub fn plan(bin: &GoBinary, policy: SitePolicy) -> Result<HttpServerPlan, PlanError> {
    // A program without the functions does not serve HTTP with net/http:
    // say that before any offset is looked up.
    let start_func = bin.function(START_FUNCTION).ok_or(PlanError::NoFunction {
        function: START_FUNCTION,
    })?;
    let end_func = bin.function(END_FUNCTION).ok_or(PlanError::NoFunction {
        function: END_FUNCTION,
    })?;
    let mut missing = Vec::new();
    let required = |(type_name, field): Field| {
        bin.struct_field_offset(type_name, field)
            .map(|f| f.offset)
            .map_err(|source| PlanError::Offset {
                type_name,
                field,
                source,
            })
    };
    let [goid, method, uri, status] = REQUIRED;
    let mut offsets = HttpOffsets {
        g_goid: required(goid)?,
        request_method: required(method)?,
        request_uri: required(uri)?,
        response_status: required(status)?,
        ..HttpOffsets::ABSENT
    };
    let mut optional =
        |(type_name, field): Field| bin.optional_field_offset(type_name, field, &mut missing);
    offsets.request_host = optional(("net/http.Request", "Host"));
    offsets.request_remote_addr = optional(("net/http.Request", "RemoteAddr"));
    offsets.request_content_length = optional(("net/http.Request", "ContentLength"));
    offsets.request_proto_major = optional(("net/http.Request", "ProtoMajor"));
    offsets.request_proto_minor = optional(("net/http.Request", "ProtoMinor"));
    offsets.request_tls = optional(("net/http.Request", "TLS"));
    offsets.response_req = optional(("net/http.response", "req"));
    offsets.response_written = optional(("net/http.response", "written"));
    // Request.Pattern exists from Go 1.23 on.
    offsets.request_pattern =
        if bin.build_info().go_version.minor >= 23 || bin.build_info().go_version.major > 1 {
            optional(("net/http.Request", "Pattern"))
        } else {
            OFFSET_ABSENT
        };

    offsets.request_header = optional(("net/http.Request", "Header"));
    let mut layout_missing = None;
    if offsets.request_header != OFFSET_ABSENT {
        match with_map_layout(bin, offsets) {
            Ok(with_layout) => offsets = with_layout,
            Err(why) => {
                layout_missing = Some(format!("map layout (no Traceparent propagation): {why}"));
            }
        }
    }

    let site = |function: &'static str, func: &crate::binary::Function, preserve: &[Register]| {
        match policy {
            SitePolicy::Cheapest => bin
                .entry_site(func, preserve)
                .map_err(|source| PlanError::Site { function, source }),
            SitePolicy::FunctionStart => bin
                .first_instruction_site(func)
                .map_err(|source| PlanError::Site { function, source }),
        }
    };
    let start = site(START_FUNCTION, &start_func, &[Register::RCX, Register::RDI])?;
    let end = site(END_FUNCTION, &end_func, &[Register::RAX])?;
    let h2_end = match H2_SERVERS
        .iter()
        .find_map(|server| Some((server, bin.function(server.end_function)?)))
    {
        None => {
            missing.push(format!(
                "{}: not in the binary (no HTTP/2 spans)",
                H2_SERVERS[1].end_function
            ));
            None
        }
        Some((server, func)) => {
            let h2_offsets =
                [(server.writer, "rws"), (server.state, "status")].map(|(type_name, field)| {
                    bin.struct_field_offset(type_name, field)
                        .map(|f| f.offset)
                        .map_err(|err| format!("{type_name}.{field}: {err} (no HTTP/2 spans)"))
                });
            match (
                h2_offsets,
                site(server.end_function, &func, &[Register::RAX]),
            ) {
                ([Ok(rws), Ok(status)], Ok(h2_site)) => {
                    offsets.h2_writer_rws = rws;
                    offsets.h2_state_status = status;
                    offsets.h2_state_req = if server.state_has_request {
                        optional((server.state, "req"))
                    } else {
                        OFFSET_ABSENT
                    };
                    offsets.h2_state_wrote_bytes = optional((server.state, "wroteBytes"));
                    Some(h2_site)
                }
                ([rws, status], h2_site) => {
                    missing.extend(rws.err());
                    missing.extend(status.err());
                    if let Err(err) = h2_site {
                        missing.push(format!("{err} (no HTTP/2 spans)"));
                    }
                    None
                }
            }
        }
    };
    missing.extend(layout_missing);
    Ok(HttpServerPlan {
        offsets,
        start,
        end,
        h2_end,
        missing,
    })
}

/// Site indices in the attach cookie's low half.
pub const SITE_START: u32 = 0;
/// See [`SITE_START`].
pub const SITE_END: u32 = 1;
/// See [`SITE_START`].
pub const SITE_H2_END: u32 = 2;

/// The per-target configuration array of the HTTP programs.
pub const CONFIG_MAP: &str = "HTTP_CONFIG";
/// The program array the start program tail-calls the header searches
/// through.
pub const TAIL_MAP: &str = "HTTP_TAIL";

/// Writes the target's configuration, installs the header searches the
/// start program tail-calls, and attaches the probes. On error, what was
/// attached is detached.
pub fn attach(
    probes: &mut Probes,
    target: &Target,
    slot: u32,
    plan: &HttpServerPlan,
) -> Result<Vec<LinkHandle>, ProbeError> {
    probes.set_array(
        CONFIG_MAP,
        slot,
        HttpConfig {
            active: 1,
            _pad: 0,
            offsets: plan.offsets,
        },
    )?;
    for (tail, program) in [
        (TAIL_TRACEPARENT, "http_server_traceparent"),
        (TAIL_TRACESTATE, "http_server_tracestate"),
    ] {
        probes.set_tail_call(TAIL_MAP, tail, program)?;
    }
    let mut sites = vec![
        ("http_server_start", plan.start.file_offset, SITE_START),
        ("http_server_end", plan.end.file_offset, SITE_END),
    ];
    if let Some(h2_end) = &plan.h2_end {
        sites.push(("http2_server_end", h2_end.file_offset, SITE_H2_END));
    }
    probes.attach_sites(super::NAME, &target.exe_path, target.pid, slot, sites)
}
