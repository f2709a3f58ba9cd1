//! Planning the connection set-up probes for one Go binary, and attaching
//! them.
//!
//! Each operation is probed at its function's entry (the cheapest site the
//! kernel emulates where the arguments are still in their registers) and at
//! each of its `RET`s (single-stepped, about 10 us each: the only place
//! that has the results, since uretprobes break Go's moving stacks). These
//! functions run once per connection or lookup, not per request, so the
//! cost stays small.
//!
//! The operations are planned one by one: a function the program does not
//! have is skipped without a word, and one whose layout or probe site is
//! unknown is turned off with one line, leaving the others on.

use agent_common::net::{NetConfig, NetOffsets};
use iced_x86::Register;

use crate::{
    binary::{BuiltinProbe, GoBinary, OffsetError, ProbeSite, SiteError},
    http_server::SitePolicy,
    probes::{LinkHandle, ProbeError, Probes},
    target::Target,
};

/// A TLS client handshake, once per connection.
pub const TLS_CLIENT: &str = "crypto/tls.(*Conn).clientHandshake";
/// A TLS server handshake.
pub const TLS_SERVER: &str = "crypto/tls.(*Conn).serverHandshake";
/// A lookup of a host's addresses (every dial by name, `LookupIP`,
/// `LookupIPAddr`, `LookupNetIP`).
pub const DNS: &str = "net.(*Resolver).lookupIPAddr";
/// A dial (`net.Dial`, `net.DialTimeout`, `Dialer.Dial`, net/http's
/// transport, `tls.Dial`).
pub const DIAL: &str = "net.(*Dialer).DialContext";

/// The fields the TLS probes read.
const TLS_FIELDS: [(&str, &str); 6] = [
    ("crypto/tls.Conn", "config"),
    ("crypto/tls.Conn", "vers"),
    ("crypto/tls.Conn", "cipherSuite"),
    ("crypto/tls.Conn", "didResume"),
    ("crypto/tls.Conn", "serverName"),
    ("crypto/tls.Config", "ServerName"),
];

/// Registers the DNS and dial probes read at their entry: network and
/// host (or address), two strings.
const NAMED: &[Register] = &[Register::RDI, Register::RSI, Register::R8, Register::R9];

/// The probes of this family, with what they read: for `agent inspect`.
pub const PROBES: &[BuiltinProbe] = &[
    BuiltinProbe {
        name: "tls.client.handshake",
        function: TLS_CLIENT,
        preserve: &[Register::RAX],
        fields: &[
            ("runtime.g", "goid"),
            TLS_FIELDS[0],
            TLS_FIELDS[1],
            TLS_FIELDS[2],
            TLS_FIELDS[3],
            TLS_FIELDS[5],
        ],
    },
    BuiltinProbe {
        name: "tls.server.handshake",
        function: TLS_SERVER,
        preserve: &[Register::RAX],
        fields: &[
            ("runtime.g", "goid"),
            TLS_FIELDS[1],
            TLS_FIELDS[2],
            TLS_FIELDS[3],
            TLS_FIELDS[4],
        ],
    },
    BuiltinProbe {
        name: "dns.lookup",
        function: DNS,
        preserve: NAMED,
        fields: &[("runtime.g", "goid")],
    },
    BuiltinProbe {
        name: "net.dial",
        function: DIAL,
        preserve: NAMED,
        fields: &[("runtime.g", "goid")],
    },
];

/// `runtime.itab._type` (Go 1.22+: `internal/abi.ITab.Type`): the second
/// word of every itab on every release.
const ITAB_TYPE_OFFSET: u64 = 8;

/// Why the probes, or one operation's, cannot be planned for a binary.
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
    #[error("no RET instruction in {function}")]
    NoReturn { function: &'static str },
}

/// One probed function.
#[derive(Clone, Debug)]
pub struct Operation {
    pub function: &'static str,
    /// The programs at its entry and at its returns.
    pub start_program: &'static str,
    pub end_program: &'static str,
    pub start: ProbeSite,
    pub returns: Vec<ProbeSite>,
}

/// Where and how to probe one binary.
#[derive(Clone, Debug)]
pub struct NetPlan {
    pub offsets: NetOffsets,
    pub operations: Vec<Operation>,
    /// Operations turned off, each with why (one line each).
    pub off: Vec<String>,
}

/// What one operation probes.
struct Spec {
    function: &'static str,
    start_program: &'static str,
    end_program: &'static str,
    preserve: &'static [Register],
}

const TLS_SPECS: [Spec; 2] = [
    Spec {
        function: TLS_CLIENT,
        start_program: "net_tls_client_start",
        end_program: "net_tls_client_end",
        preserve: &[Register::RAX],
    },
    Spec {
        function: TLS_SERVER,
        start_program: "net_tls_server_start",
        end_program: "net_tls_server_end",
        preserve: &[Register::RAX],
    },
];

const OTHER_SPECS: [Spec; 2] = [
    Spec {
        function: DNS,
        start_program: "net_dns_start",
        end_program: "net_dns_end",
        preserve: NAMED,
    },
    Spec {
        function: DIAL,
        start_program: "net_dial_start",
        end_program: "net_dial_end",
        preserve: NAMED,
    },
];

/// Resolves the functions the binary has, their sites and the offsets.
/// `Err` only when nothing can be traced at all (no goroutine id).
pub fn plan(bin: &GoBinary, policy: SitePolicy) -> Result<NetPlan, PlanError> {
    let offset = |(type_name, field): (&'static str, &'static str)| {
        bin.struct_field_offset(type_name, field)
            .map(|f| f.offset)
            .map_err(|source| PlanError::Offset {
                type_name,
                field,
                source,
            })
    };
    let mut offsets = NetOffsets {
        g_goid: offset(("runtime.g", "goid"))?,
        itab_type: ITAB_TYPE_OFFSET,
        ..NetOffsets::ABSENT
    };
    let mut operations = Vec::new();
    let mut off = Vec::new();

    let has_tls = TLS_SPECS.iter().any(|s| bin.function(s.function).is_some());
    if has_tls {
        let mut tls = [0u64; TLS_FIELDS.len()];
        let read = tls
            .iter_mut()
            .zip(TLS_FIELDS)
            .try_for_each(|(slot, field)| offset(field).map(|o| *slot = o));
        match read {
            Ok(()) => {
                let [
                    config,
                    vers,
                    cipher,
                    resumed,
                    server_name,
                    config_server_name,
                ] = tls;
                offsets.conn_config = config;
                offsets.conn_vers = vers;
                offsets.conn_cipher_suite = cipher;
                offsets.conn_did_resume = resumed;
                offsets.conn_server_name = server_name;
                offsets.config_server_name = config_server_name;
                for spec in &TLS_SPECS {
                    operation(bin, policy, spec, &mut operations, &mut off);
                }
            }
            Err(err) => off.push(format!(
                "TLS handshakes are not traced: {}",
                crate::binary::error_chain(&err)
            )),
        }
    }
    for spec in &OTHER_SPECS {
        operation(bin, policy, spec, &mut operations, &mut off);
    }
    Ok(NetPlan {
        offsets,
        operations,
        off,
    })
}

/// Plans one operation if the binary has its function; says why not in
/// `off` when its sites cannot be found.
fn operation(
    bin: &GoBinary,
    policy: SitePolicy,
    spec: &Spec,
    operations: &mut Vec<Operation>,
    off: &mut Vec<String>,
) {
    let Some(func) = bin.function(spec.function) else {
        return;
    };
    let function = spec.function;
    let site_error = |source| PlanError::Site { function, source };
    let planned = match policy {
        SitePolicy::Cheapest => bin.entry_site(&func, spec.preserve),
        SitePolicy::FunctionStart => bin.first_instruction_site(&func),
    }
    .map_err(site_error)
    .and_then(|start| {
        let returns = bin.return_sites(&func).map_err(site_error)?;
        if returns.is_empty() {
            return Err(PlanError::NoReturn { function });
        }
        Ok((start, returns))
    });
    match planned {
        Ok((start, returns)) => operations.push(Operation {
            function,
            start_program: spec.start_program,
            end_program: spec.end_program,
            start,
            returns,
        }),
        Err(err) => off.push(format!(
            "{function} is not traced: {}",
            crate::binary::error_chain(&err)
        )),
    }
}

/// The per-target configuration array of the programs.
pub const CONFIG_MAP: &str = "NET_CONFIG";

/// Writes the target's configuration and attaches every operation's
/// probes (site indexes in the attach cookie count up across them). On
/// error, what was attached is detached.
pub fn attach(
    probes: &mut Probes,
    target: &Target,
    slot: u32,
    plan: &NetPlan,
) -> Result<Vec<LinkHandle>, ProbeError> {
    probes.set_array(
        CONFIG_MAP,
        slot,
        NetConfig {
            active: 1,
            _pad: 0,
            offsets: plan.offsets,
        },
    )?;
    let sites = plan.operations.iter().flat_map(|op| {
        std::iter::once((op.start_program, op.start.file_offset)).chain(
            op.returns
                .iter()
                .map(|site| (op.end_program, site.file_offset)),
        )
    });
    let sites = (0..)
        .zip(sites)
        .map(|(site, (program, offset))| (program, offset, site));
    probes.attach_sites(super::NAME, &target.exe_path, target.pid, slot, sites)
}
