//! Planning the `google.golang.org/grpc` probes for one Go binary: which
//! functions, which sites, which struct offsets; and attaching them.
//!
//! - server start: `grpc.(*Server).handleStream(t, stream)`, reads the
//!   stream (RDI) and its method name;
//! - server end: every `ret` of `handleStream` (the call ran on that
//!   goroutine: `processUnaryRPC`/`processStreamingRPC` return before it);
//! - server headers: `transport.(*http2Server).operateHeaders`, searches
//!   the decoded header fields of a HEADERS frame for `traceparent` (the
//!   frame in RDI from v1.60, RBX before), with the stream id;
//! - server status: `transport.(*http2Server).writeStatus(s, st)` (v1.68+;
//!   `WriteStatus` before), reads `st.s.Code` (RCX);
//! - client start: `grpc.(*ClientConn).Invoke(ctx, method, ...)` and
//!   `(*ClientConn).NewStream(ctx, desc, method, ...)`, read the method and
//!   `ClientConn.target`;
//! - client end: every `ret` of both, reads the returned error's code
//!   through its itab (a `*status.Error`) and data.
//!
//! Struct offsets come from DWARF, else from the module table
//! (`binary/module_offsets_table.json`), by the versions of grpc, x/net and
//! genproto in the binary's build info. A version the table does not cover
//! turns the family off, with the version named; nothing is guessed.

use agent_common::{
    grpc::{
        GrpcConfig, GrpcOffsets, SITE_INVOKE_END, SITE_INVOKE_START, SITE_OPERATE_HEADERS,
        SITE_SERVER_END, SITE_SERVER_START, SITE_SERVER_STATUS, SITE_STREAM_END, SITE_STREAM_START,
    },
    target::OFFSET_ABSENT,
};
use iced_x86::Register;

use crate::{
    binary::{BuiltinProbe, GoBinary, ModuleLookupError, OffsetError, ProbeSite, SiteError},
    probes::{LinkHandle, ProbeError, Probes},
    target::{Target, maps},
};

/// The module path the family traces.
pub const MODULE: &str = "google.golang.org/grpc";

pub const SERVER_START: &str = "google.golang.org/grpc.(*Server).handleStream";
/// v1.68+ (the status is written through the stream's transport).
pub const SERVER_STATUS: &str =
    "google.golang.org/grpc/internal/transport.(*http2Server).writeStatus";
/// Before v1.68 (`ServerTransport.WriteStatus(s *Stream, st)`).
pub const SERVER_STATUS_OLD: &str =
    "google.golang.org/grpc/internal/transport.(*http2Server).WriteStatus";
pub const INVOKE: &str = "google.golang.org/grpc.(*ClientConn).Invoke";
pub const NEW_STREAM: &str = "google.golang.org/grpc.(*ClientConn).NewStream";
/// The itab of the error every client call returns on failure.
pub const STATUS_ERROR_ITAB: &str = "go:itab.*google.golang.org/grpc/internal/status.Error,error";

const SERVER_STREAM: &str = "google.golang.org/grpc/internal/transport.ServerStream";
const STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
const STATUS: &str = "google.golang.org/grpc/internal/status.Status";
const STATUS_ERROR: &str = "google.golang.org/grpc/internal/status.Error";
const PROTO_STATUS: &str = "google.golang.org/genproto/googleapis/rpc/status.Status";
const CLIENT_CONN: &str = "google.golang.org/grpc.ClientConn";
pub const OPERATE_HEADERS: &str =
    "google.golang.org/grpc/internal/transport.(*http2Server).operateHeaders";
const META_HEADERS_FRAME: &str = "golang.org/x/net/http2.MetaHeadersFrame";
const HEADERS_FRAME: &str = "golang.org/x/net/http2.HeadersFrame";
const FRAME_HEADER: &str = "golang.org/x/net/http2.FrameHeader";

/// The probes of this family, with what they read: for `agent inspect`.
pub const PROBES: &[BuiltinProbe] = &[
    BuiltinProbe {
        name: "grpc.server.start",
        function: SERVER_START,
        preserve: &[Register::RDI],
        fields: &[
            ("runtime.g", "goid"),
            (SERVER_STREAM, "Stream"),
            (STREAM, "method"),
            (STREAM, "id"),
        ],
    },
    BuiltinProbe {
        name: "grpc.server.headers",
        function: OPERATE_HEADERS,
        preserve: &[Register::RAX, Register::RDI],
        fields: &[
            (META_HEADERS_FRAME, "Fields"),
            (META_HEADERS_FRAME, "HeadersFrame"),
            (HEADERS_FRAME, "FrameHeader"),
            (FRAME_HEADER, "StreamID"),
        ],
    },
    BuiltinProbe {
        name: "grpc.server.status",
        function: SERVER_STATUS,
        preserve: &[Register::RBX, Register::RCX],
        fields: &[(STATUS, "s"), (PROTO_STATUS, "Code")],
    },
    BuiltinProbe {
        name: "grpc.client.unary.start",
        function: INVOKE,
        preserve: &[Register::RAX, Register::RDI, Register::RSI],
        fields: &[(CLIENT_CONN, "target")],
    },
    BuiltinProbe {
        name: "grpc.client.stream.start",
        function: NEW_STREAM,
        preserve: &[Register::RAX, Register::RSI, Register::R8],
        fields: &[(CLIENT_CONN, "target")],
    },
];

/// Why the probes cannot be planned for a binary.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
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
    #[error("{function} has no return instruction")]
    NoReturn { function: &'static str },
    #[error("none of the functions it probes is in the binary")]
    NoFunction,
}

/// One uprobe: the program, the site, its cookie's site index.
#[derive(Clone, Debug)]
pub struct Site {
    pub program: &'static str,
    pub site: ProbeSite,
    pub index: u32,
}

/// Where and how to probe one binary.
#[derive(Clone, Debug)]
pub struct GrpcPlan {
    /// The module version the binary was built with.
    pub version: String,
    pub offsets: GrpcOffsets,
    /// The link-time address of [`STATUS_ERROR_ITAB`], when known.
    pub status_error_itab: Option<u64>,
    pub pie: bool,
    /// The link-time address of the file's first page.
    pub link_base: u64,
    pub sites: Vec<Site>,
    /// Whether SERVER / CLIENT spans are planned.
    pub server: bool,
    pub client: bool,
    /// What is missing (logged).
    pub missing: Vec<String>,
}

/// The grpc module version in the binary's build info, if it has it.
pub fn module_version(bin: &GoBinary) -> Option<String> {
    let dep = bin.build_info().dep(MODULE)?;
    Some(match &dep.replace {
        Some(with) if !with.version.is_empty() => format!("{} (=> {})", dep.version, with.version),
        _ => dep.version.clone(),
    })
}

fn offset(bin: &GoBinary, type_name: &'static str, field: &'static str) -> Result<u64, PlanError> {
    bin.struct_field_offset(type_name, field)
        .map(|f| f.offset)
        .map_err(|source| PlanError::Offset {
            type_name,
            field,
            source,
        })
}

/// A field's offset in what `handleStream` gets: a `*transport.ServerStream`
/// embedding `transport.Stream` (v1.68+), or a `*transport.Stream`.
fn stream_field(bin: &GoBinary, field: &'static str) -> Result<u64, PlanError> {
    let method = offset(bin, STREAM, field)?;
    match bin.struct_field_offset(SERVER_STREAM, "Stream") {
        Ok(embedded) => Ok(embedded.offset + method),
        // Before v1.68 (DWARF, or the table measured on that version).
        Err(OffsetError::NoSuchStruct { .. }) => Ok(method),
        Err(OffsetError::Module { source, .. })
            if matches!(*source, ModuleLookupError::NoSuchStruct { .. }) =>
        {
            Ok(method)
        }
        Err(source) => Err(PlanError::Offset {
            type_name: SERVER_STREAM,
            field: "Stream",
            source,
        }),
    }
}

fn entry(
    bin: &GoBinary,
    function: &'static str,
    func: &crate::binary::Function,
    preserve: &[Register],
) -> Result<ProbeSite, PlanError> {
    bin.entry_site(func, preserve)
        .map_err(|source| PlanError::Site { function, source })
}

fn returns(
    bin: &GoBinary,
    function: &'static str,
    func: &crate::binary::Function,
) -> Result<Vec<ProbeSite>, PlanError> {
    let sites = bin
        .return_sites(func)
        .map_err(|source| PlanError::Site { function, source })?;
    if sites.is_empty() {
        return Err(PlanError::NoReturn { function });
    }
    Ok(sites)
}

/// The grpc minor version (`v1.60.1` is 60).
fn minor(version: &str) -> Option<u32> {
    let mut parts = version.trim_start_matches('v').split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

/// The probe that reads `traceparent` from the HEADERS frames the server
/// decodes, and the offsets it needs.
fn traceparent_site(
    bin: &GoBinary,
    version: &str,
    offsets: &mut GrpcOffsets,
) -> Result<Site, String> {
    let func = bin
        .function(OPERATE_HEADERS)
        .ok_or_else(|| format!("{OPERATE_HEADERS} not in the binary"))?;
    let field = |t: &'static str, f: &'static str| {
        offset(bin, t, f).map_err(|e| crate::binary::error_chain(&e))
    };
    offsets.stream_id = stream_field(bin, "id").map_err(|e| crate::binary::error_chain(&e))?;
    offsets.frame_fields = field(META_HEADERS_FRAME, "Fields")?;
    offsets.frame_headers = field(META_HEADERS_FRAME, "HeadersFrame")?;
    offsets.frame_stream_id =
        field(HEADERS_FRAME, "FrameHeader")? + field(FRAME_HEADER, "StreamID")?;
    // v1.60 added the context argument before the frame.
    let minor = minor(version).ok_or_else(|| format!("grpc version {version} not understood"))?;
    let (program, frame) = if minor >= 60 {
        ("grpc_operate_headers", Register::RDI)
    } else {
        ("grpc_operate_headers_old", Register::RBX)
    };
    let site = bin
        .entry_site(&func, &[Register::RAX, frame])
        .map_err(|e| crate::binary::error_chain(&e))?;
    Ok(Site {
        program,
        site,
        index: SITE_OPERATE_HEADERS,
    })
}

/// Resolves functions, sites and offsets. `Ok(None)`: the binary does not
/// use grpc.
pub fn plan(bin: &GoBinary) -> Result<Option<GrpcPlan>, PlanError> {
    let Some(version) = module_version(bin) else {
        return Ok(None);
    };
    let server_func = bin.function(SERVER_START);
    let invoke = bin.function(INVOKE);
    let new_stream = bin.function(NEW_STREAM);
    if server_func.is_none() && invoke.is_none() && new_stream.is_none() {
        return Err(PlanError::NoFunction);
    }
    let mut offsets = GrpcOffsets {
        g_goid: offset(bin, "runtime.g", "goid")?,
        ..GrpcOffsets::ABSENT
    };
    let mut missing = Vec::new();
    let mut sites = Vec::new();
    let site = |program, site, index| Site {
        program,
        site,
        index,
    };

    let server = match &server_func {
        Some(func) => {
            offsets.stream_method = stream_field(bin, "method")?;
            sites.push(site(
                "grpc_server_start",
                entry(bin, SERVER_START, func, &[Register::RDI])?,
                SITE_SERVER_START,
            ));
            for ret in returns(bin, SERVER_START, func)? {
                sites.push(site("grpc_server_end", ret, SITE_SERVER_END));
            }
            match traceparent_site(bin, &version, &mut offsets) {
                Ok(found) => sites.push(found),
                Err(why) => missing.push(format!("incoming traceparent not read: {why}")),
            }
            true
        }
        None => false,
    };
    // The status code: optional (spans without it say so).
    let status_offsets =
        offset(bin, STATUS, "s").and_then(|s| Ok((s, offset(bin, PROTO_STATUS, "Code")?)));
    match status_offsets {
        Ok((s, code)) => {
            offsets.status_s = s;
            offsets.proto_code = code;
        }
        Err(err) => missing.push(format!(
            "status codes: {}",
            crate::binary::error_chain(&err)
        )),
    }
    if server && offsets.proto_code != OFFSET_ABSENT {
        let status = [SERVER_STATUS, SERVER_STATUS_OLD]
            .into_iter()
            .find_map(|name| Some((name, bin.function(name)?)));
        match status {
            Some((name, func)) => sites.push(site(
                "grpc_server_status",
                entry(bin, name, &func, &[Register::RBX, Register::RCX])?,
                SITE_SERVER_STATUS,
            )),
            None => missing.push(format!(
                "{SERVER_STATUS}: not in the binary (server spans without status codes)"
            )),
        }
    }

    let client = invoke.is_some() || new_stream.is_some();
    let status_error_itab = bin.data_symbol(STATUS_ERROR_ITAB);
    if client {
        match offset(bin, CLIENT_CONN, "target") {
            Ok(target) => offsets.conn_target = target,
            Err(err) => missing.push(crate::binary::error_chain(&err)),
        }
        match (status_error_itab, offset(bin, STATUS_ERROR, "s")) {
            (Some(_), Ok(s)) => offsets.error_s = s,
            (None, _) => missing.push(format!(
                "{STATUS_ERROR_ITAB}: not in the symbol table (client errors reported as Unknown)"
            )),
            (_, Err(err)) => missing.push(crate::binary::error_chain(&err)),
        }
        for (name, func, (start_program, end_program), start_index, end_index, preserve) in [
            (
                INVOKE,
                &invoke,
                ("grpc_invoke_start", "grpc_invoke_end"),
                SITE_INVOKE_START,
                SITE_INVOKE_END,
                &[Register::RAX, Register::RDI, Register::RSI][..],
            ),
            (
                NEW_STREAM,
                &new_stream,
                ("grpc_stream_start", "grpc_stream_end"),
                SITE_STREAM_START,
                SITE_STREAM_END,
                &[Register::RAX, Register::RSI, Register::R8][..],
            ),
        ] {
            let Some(func) = func else {
                missing.push(format!("{name}: not in the binary"));
                continue;
            };
            sites.push(site(
                start_program,
                entry(bin, name, func, preserve)?,
                start_index,
            ));
            for ret in returns(bin, name, func)? {
                sites.push(site(end_program, ret, end_index));
            }
        }
    }
    Ok(Some(GrpcPlan {
        version,
        offsets,
        status_error_itab: status_error_itab.filter(|_| offsets.error_s != OFFSET_ABSENT),
        pie: bin.is_pie(),
        link_base: bin.link_base(),
        sites,
        server,
        client,
        missing,
    }))
}

/// The per-target configuration array of the grpc programs.
pub const CONFIG_MAP: &str = "GRPC_CONFIG";

/// Writes the target's configuration and attaches the probes. On error,
/// what was attached is detached.
pub fn attach(
    probes: &mut Probes,
    target: &Target,
    slot: u32,
    plan: &GrpcPlan,
) -> Result<Vec<LinkHandle>, ProbeError> {
    // A PIE's bias: where its first page is mapped, less where it was
    // linked (Go links PIE at 0 or at 0x400000).
    let bias = if plan.pie {
        maps::load_bias(target.pid, &target.exe_in_target)
            .map_or(0, |start| start.wrapping_sub(plan.link_base))
    } else {
        0
    };
    probes.set_array(
        CONFIG_MAP,
        slot,
        GrpcConfig {
            active: 1,
            _pad: 0,
            offsets: GrpcOffsets {
                status_error_itab: plan.status_error_itab.map_or(0, |a| a + bias),
                ..plan.offsets
            },
        },
    )?;
    let sites = plan
        .sites
        .iter()
        .map(|s| (s.program, s.site.file_offset, s.index));
    probes.attach_sites(super::NAME, &target.exe_path, target.pid, slot, sites)
}
