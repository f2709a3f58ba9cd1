//! Planning the net/http client probes for one Go binary, and attaching
//! them.
//!
//! - start: the entry of `net/http.(*Transport).roundTrip(req)` (RBX = req),
//!   at the cheapest site where RBX still holds the request. Every request
//!   a `Client` sends through a `Transport`, HTTP/1 or HTTP/2 (the bundled
//!   HTTP/2 client is reached from there), passes through it once per
//!   attempt on its caller's goroutine.
//! - end: each `RET` of the same function, where RAX holds the
//!   `*Response` and RBX:RCX the `error`. Single-stepped by the kernel
//!   (about 9 us each), but the only place with the results: uretprobes
//!   would break Go's moving stacks.

use agent_common::http_client::{HttpClientConfig, HttpClientOffsets};
use iced_x86::Register;

use crate::{
    binary::{BuiltinProbe, GoBinary, OffsetError, ProbeSite, SiteError},
    http_server::SitePolicy,
    probes::{LinkHandle, ProbeError, Probes},
    target::Target,
};

/// The function probed at its entry and its returns.
pub const FUNCTION: &str = "net/http.(*Transport).roundTrip";

/// The probes of this family, with what they read: for `agent inspect`.
pub const PROBES: &[BuiltinProbe] = &[BuiltinProbe {
    name: "http.client.request",
    function: FUNCTION,
    // The request in RBX at the entry; the results at each RET.
    preserve: &[Register::RBX],
    fields: &[
        ("runtime.g", "goid"),
        ("net/http.Request", "Method"),
        ("net/http.Request", "URL"),
        ("net/url.URL", "Scheme"),
        ("net/url.URL", "Host"),
        ("net/url.URL", "Path"),
        ("net/url.URL", "RawQuery"),
        ("net/http.Response", "StatusCode"),
        ("net/http.Response", "ProtoMajor"),
        ("net/http.Response", "ProtoMinor"),
    ],
}];

/// `runtime.itab._type` (Go 1.22+: `internal/abi.ITab.Type`): the second
/// word of every itab on every release, which the compiler itself relies
/// on (a type switch loads the dynamic type from there).
const ITAB_TYPE_OFFSET: u64 = 8;

/// Why the probes cannot be planned for a binary.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the program sends no HTTP requests with net/http ({function} not found)")]
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
    #[error("no RET instruction in {function}")]
    NoReturn { function: &'static str },
}

/// Where and how to probe one binary.
#[derive(Clone, Debug)]
pub struct HttpClientPlan {
    pub offsets: HttpClientOffsets,
    pub start: ProbeSite,
    pub returns: Vec<ProbeSite>,
    /// Optional fields this binary lacks (logged, not fatal).
    pub missing: Vec<String>,
}

type Field = (&'static str, &'static str);

const REQUIRED: [Field; 7] = [
    ("runtime.g", "goid"),
    ("net/http.Request", "Method"),
    ("net/http.Request", "URL"),
    ("net/url.URL", "Scheme"),
    ("net/url.URL", "Host"),
    ("net/url.URL", "Path"),
    ("net/http.Response", "StatusCode"),
];

/// Resolves the function, its sites and the offsets.
pub fn plan(bin: &GoBinary, policy: SitePolicy) -> Result<HttpClientPlan, PlanError> {
    let func = bin
        .function(FUNCTION)
        .ok_or(PlanError::NoFunction { function: FUNCTION })?;
    let required = |(type_name, field): Field| {
        bin.struct_field_offset(type_name, field)
            .map(|f| f.offset)
            .map_err(|source| PlanError::Offset {
                type_name,
                field,
                source,
            })
    };
    let [goid, method, url, scheme, host, path, status] = REQUIRED;
    let mut offsets = HttpClientOffsets {
        g_goid: required(goid)?,
        request_method: required(method)?,
        request_url: required(url)?,
        url_scheme: required(scheme)?,
        url_host: required(host)?,
        url_path: required(path)?,
        response_status: required(status)?,
        itab_type: ITAB_TYPE_OFFSET,
        ..HttpClientOffsets::ABSENT
    };
    let mut missing = Vec::new();
    let mut optional =
        |(type_name, field): Field| bin.optional_field_offset(type_name, field, &mut missing);
    offsets.url_raw_query = optional(("net/url.URL", "RawQuery"));
    offsets.response_proto_major = optional(("net/http.Response", "ProtoMajor"));
    offsets.response_proto_minor = optional(("net/http.Response", "ProtoMinor"));

    let start = match policy {
        SitePolicy::Cheapest => bin.entry_site(&func, &[Register::RBX]),
        SitePolicy::FunctionStart => bin.first_instruction_site(&func),
    }
    .map_err(|source| PlanError::Site {
        function: FUNCTION,
        source,
    })?;
    let returns = bin.return_sites(&func).map_err(|source| PlanError::Site {
        function: FUNCTION,
        source,
    })?;
    if returns.is_empty() {
        return Err(PlanError::NoReturn { function: FUNCTION });
    }
    Ok(HttpClientPlan {
        offsets,
        start,
        returns,
        missing,
    })
}

/// Site index of the entry in the attach cookie's low half; the returns
/// follow it.
pub const SITE_START: u32 = 0;

/// The per-target configuration array of the client programs.
pub const CONFIG_MAP: &str = "HTTP_CLIENT_CONFIG";

/// Writes the target's configuration and attaches the probes. On error,
/// what was attached is detached.
pub fn attach(
    probes: &mut Probes,
    target: &Target,
    slot: u32,
    plan: &HttpClientPlan,
) -> Result<Vec<LinkHandle>, ProbeError> {
    probes.set_array(
        CONFIG_MAP,
        slot,
        HttpClientConfig {
            active: 1,
            _pad: 0,
            offsets: plan.offsets,
        },
    )?;
    let sites = std::iter::once(("http_client_start", plan.start.file_offset)).chain(
        plan.returns
            .iter()
            .map(|site| ("http_client_end", site.file_offset)),
    );
    let sites = (SITE_START..)
        .zip(sites)
        .map(|(site, (program, offset))| (program, offset, site));
    probes.attach_sites(super::NAME, &target.exe_path, target.pid, slot, sites)
}
