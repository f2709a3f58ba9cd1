//! What the propagation family probes in a Go binary:
//!
//! - HTTP/1: the start of `net/http.(*Request).write`, on the goroutine
//!   that writes the request's bytes (HTTP/1's connection writer, not the
//!   caller);
//! - gRPC (plaintext HTTP/2): grpc-go's `(*http2Client).createHeaderFields`
//!   (entry and `ret` sites, on the caller's goroutine) and
//!   `(*loopyWriter).writeHeader` (entry, on the connection's writer
//!   goroutine), with the offsets of `http2Client.localAddr`/`.remoteAddr`
//!   and `net.TCPAddr.Port` (`agent-ebpf/src/propagate_h2.rs` says why);
//! - h2c (net/http's own HTTP/2 without TLS): the entries of
//!   `(*http2clientStream).encodeAndWriteHeaders`,
//!   `(*http2ClientConn).writeHeader` and `(*http2ClientConn).writeHeaders`,
//!   on the goroutine that writes the request's HEADERS.

use iced_x86::Register;

use crate::binary::{BuiltinProbe, GoBinary, OffsetError, ProbeSite, SiteError, error_chain};

/// The function probed at its entry: RAX holds the request.
pub const FUNCTION: &str = "net/http.(*Request).write";
/// RAX: the transport; returns the fields (RAX).
pub const CREATE_HEADER_FIELDS: &str =
    "google.golang.org/grpc/internal/transport.(*http2Client).createHeaderFields";
/// RBX: the stream id; RDI:RSI: the fields.
pub const WRITE_HEADER: &str =
    "google.golang.org/grpc/internal/transport.(*loopyWriter).writeHeader";
/// RBX: the request.
pub const H2C_ENCODE: &str = "net/http.(*http2clientStream).encodeAndWriteHeaders";
/// RBX:RCX: a field's name.
pub const H2C_FIELD: &str = "net/http.(*http2ClientConn).writeHeader";
/// RBX: the stream id.
pub const H2C_WRITE: &str = "net/http.(*http2ClientConn).writeHeaders";
const HTTP2_CLIENT: &str = "google.golang.org/grpc/internal/transport.http2Client";
const TCP_ADDR: &str = "net.TCPAddr";

/// The probes, for `agent inspect`.
pub const PROBES: &[BuiltinProbe] = &[
    BuiltinProbe {
        name: "http.client.write",
        function: FUNCTION,
        preserve: &[Register::RAX],
        fields: &[],
    },
    BuiltinProbe {
        name: "grpc.client.header_fields",
        function: CREATE_HEADER_FIELDS,
        preserve: &[Register::RAX],
        fields: &[
            ("runtime.g", "goid"),
            (HTTP2_CLIENT, "localAddr"),
            (HTTP2_CLIENT, "remoteAddr"),
            (TCP_ADDR, "Port"),
        ],
    },
    BuiltinProbe {
        name: "grpc.client.write_header",
        function: WRITE_HEADER,
        preserve: &[Register::RBX, Register::RDI, Register::RSI],
        fields: &[],
    },
    BuiltinProbe {
        name: "http2.client.encode",
        function: H2C_ENCODE,
        preserve: &[Register::RBX],
        fields: &[("runtime.g", "goid")],
    },
    BuiltinProbe {
        name: "http2.client.field",
        function: H2C_FIELD,
        preserve: &[Register::RBX, Register::RCX],
        fields: &[],
    },
    BuiltinProbe {
        name: "http2.client.write_headers",
        function: H2C_WRITE,
        preserve: &[Register::RBX],
        fields: &[],
    },
];

/// Why a protocol's probes cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{function} not found")]
    NoFunction { function: &'static str },
    #[error("no probe site in {function}")]
    Site {
        function: &'static str,
        #[source]
        source: SiteError,
    },
    #[error("{function} has no return instruction")]
    NoReturn { function: &'static str },
    #[error("no usable offset for {type_name}.{field}")]
    Offset {
        type_name: &'static str,
        field: &'static str,
        #[source]
        source: OffsetError,
    },
}

/// The gRPC probes and the offsets they read.
#[derive(Clone, Debug)]
pub struct GrpcSites {
    pub fields_start: ProbeSite,
    pub fields_ends: Vec<ProbeSite>,
    pub write_header: ProbeSite,
    pub local_addr: u64,
    pub remote_addr: u64,
    pub tcp_port: u64,
}

/// The h2c probes.
#[derive(Clone, Debug)]
pub struct H2cSites {
    pub encode: ProbeSite,
    pub field: ProbeSite,
    pub write: ProbeSite,
}

/// What carries context out of one binary.
#[derive(Clone, Debug)]
pub struct PropagatePlan {
    /// `runtime.g.goid`, for the HTTP/2 probes.
    pub g_goid: Option<u64>,
    /// h2c requests (net/http's own HTTP/2 without TLS).
    pub h2c: Result<H2cSites, String>,
    /// HTTP/1 requests: the site of `(*Request).write`.
    pub http1: Result<ProbeSite, String>,
    /// gRPC calls; `None`: the binary has no grpc-go client.
    pub grpc: Option<Result<GrpcSites, String>>,
}

impl PropagatePlan {
    /// Whether anything carries context.
    pub fn any(&self) -> bool {
        self.http1.is_ok() || matches!(self.grpc, Some(Ok(_))) || self.h2c.is_ok()
    }
}

fn function(bin: &GoBinary, function: &'static str) -> Result<crate::binary::Function, PlanError> {
    bin.function(function)
        .ok_or(PlanError::NoFunction { function })
}

fn entry(
    bin: &GoBinary,
    name: &'static str,
    preserve: &[Register],
) -> Result<ProbeSite, PlanError> {
    let func = function(bin, name)?;
    bin.entry_site(&func, preserve)
        .map_err(|source| PlanError::Site {
            function: name,
            source,
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

fn grpc_sites(bin: &GoBinary) -> Result<GrpcSites, PlanError> {
    let fields_start = entry(bin, CREATE_HEADER_FIELDS, &[Register::RAX])?;
    let func = function(bin, CREATE_HEADER_FIELDS)?;
    let fields_ends = bin.return_sites(&func).map_err(|source| PlanError::Site {
        function: CREATE_HEADER_FIELDS,
        source,
    })?;
    if fields_ends.is_empty() {
        return Err(PlanError::NoReturn {
            function: CREATE_HEADER_FIELDS,
        });
    }
    let write_header = entry(
        bin,
        WRITE_HEADER,
        &[Register::RBX, Register::RDI, Register::RSI],
    )?;
    Ok(GrpcSites {
        fields_start,
        fields_ends,
        write_header,
        local_addr: offset(bin, HTTP2_CLIENT, "localAddr")?,
        remote_addr: offset(bin, HTTP2_CLIENT, "remoteAddr")?,
        tcp_port: offset(bin, TCP_ADDR, "Port")?,
    })
}

/// The probe sites of each protocol, or why it carries no context.
pub fn plan(bin: &GoBinary) -> PropagatePlan {
    let http1 = entry(bin, FUNCTION, &[Register::RAX]).map_err(|e| match e {
        PlanError::NoFunction { .. } => {
            format!("the program writes no HTTP/1 requests with net/http ({FUNCTION} not found)")
        }
        e => error_chain(&e),
    });
    // Both HTTP/2 parts key their contexts by goroutine.
    let g_goid = offset(bin, "runtime.g", "goid");
    let grpc = bin.function(CREATE_HEADER_FIELDS).map(|_| {
        g_goid
            .as_ref()
            .map_err(|e| error_chain(e))
            .and_then(|_| grpc_sites(bin).map_err(|e| error_chain(&e)))
    });
    let h2c = match &g_goid {
        Ok(_) => h2c_sites(bin).map_err(|e| match e {
            PlanError::NoFunction { function } => {
                format!("the program makes no HTTP/2 requests with net/http ({function} not found)")
            }
            e => error_chain(&e),
        }),
        Err(e) => Err(error_chain(e)),
    };
    PropagatePlan {
        g_goid: g_goid.ok(),
        http1,
        grpc,
        h2c,
    }
}

fn h2c_sites(bin: &GoBinary) -> Result<H2cSites, PlanError> {
    Ok(H2cSites {
        encode: entry(bin, H2C_ENCODE, &[Register::RBX])?,
        field: entry(bin, H2C_FIELD, &[Register::RBX, Register::RCX])?,
        write: entry(bin, H2C_WRITE, &[Register::RBX])?,
    })
}
