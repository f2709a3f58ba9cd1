//! Where routers hold the route they matched, for the server span's name
//! and `http.route`: one probe per router the binary uses, each at an
//! instruction the kernel emulates where the route is in reach
//! (`agent-ebpf/src/http_route.rs`).
//!
//! | router | probe site | reads |
//! |---|---|---|
//! | gin | `call (*Context).Next` in `(*Engine).handleHTTPRequest` | `c.fullPath` (RAX = c) |
//! | chi | each `ret` of `(*Context).RoutePattern` (called by `routeHTTP`) | the result (RAX:RBX) |
//! | gorilla/mux | `call requestWithRoute` in `(*Router).ServeHTTP` | `route.regexp.path.template` (RBX = route) |
//! | echo | `call (*sync.Pool).Put` in `(*Echo).ServeHTTP` | `c.path` (RCX = c) |
//!
//! A router's struct offsets ([`LIBRARY_FIELDS`]) come from DWARF, or in a
//! stripped binary from its own type descriptors (the per-release table
//! knows the standard library only). Where neither has them, its routes are
//! unavailable, said in one line, and spans keep their method-only names.
//!
//! [`LIBRARY_FIELDS`]: crate::binary::LIBRARY_FIELDS

use agent_common::{
    http_route::{
        HttpRouteConfig, HttpRouteOffsets, ROUTER_CHI, ROUTER_ECHO, ROUTER_GIN, ROUTER_MUX,
    },
    target::OFFSET_ABSENT,
};

use crate::{
    binary::{GoBinary, ProbeSite, error_chain},
    probes::{LinkHandle, ProbeError, Probes},
    target::Target,
};

/// The per-target configuration array of the router programs.
pub const CONFIG_MAP: &str = "HTTP_ROUTE_CONFIG";

/// One router probe, planned.
#[derive(Clone, Debug)]
pub struct RouterSite {
    /// `gin`, `chi`, `gorilla/mux`, `echo`.
    pub router: &'static str,
    /// Its program in `agent-ebpf/src/http_route.rs`.
    pub program: &'static str,
    /// Its `ROUTER_*` constant (the attach cookie's site index).
    pub kind: u32,
    pub site: ProbeSite,
}

/// The router probes of one binary.
#[derive(Clone, Debug)]
pub struct RoutesPlan {
    pub offsets: HttpRouteOffsets,
    pub sites: Vec<RouterSite>,
    /// Routers the binary uses whose routes are unavailable, and why.
    pub unavailable: Vec<String>,
}

/// How one router is found: the function that holds the route, and what
/// about it is probed.
struct Router {
    name: &'static str,
    program: &'static str,
    kind: u32,
    function: &'static str,
    /// The callee whose call sites in `function` are probed; `None`: its
    /// return sites are.
    callee: Option<&'static str>,
}

const ROUTERS: [Router; 4] = [
    Router {
        name: "gin",
        program: "http_route_gin",
        kind: ROUTER_GIN,
        function: "github.com/gin-gonic/gin.(*Engine).handleHTTPRequest",
        callee: Some("github.com/gin-gonic/gin.(*Context).Next"),
    },
    Router {
        name: "chi",
        program: "http_route_chi",
        kind: ROUTER_CHI,
        function: "github.com/go-chi/chi/v5.(*Context).RoutePattern",
        callee: None,
    },
    Router {
        name: "gorilla/mux",
        program: "http_route_mux",
        kind: ROUTER_MUX,
        function: "github.com/gorilla/mux.(*Router).ServeHTTP",
        callee: Some("github.com/gorilla/mux.requestWithRoute"),
    },
    Router {
        name: "echo",
        program: "http_route_echo",
        kind: ROUTER_ECHO,
        function: "github.com/labstack/echo/v4.(*Echo).ServeHTTP",
        callee: Some("sync.(*Pool).Put"),
    },
];

/// The offsets one router reads, into `offsets`; the first that is
/// missing, as an error.
fn router_offsets(bin: &GoBinary, kind: u32, offsets: &mut HttpRouteOffsets) -> Result<(), String> {
    let field = |type_name: &str, field: &str| {
        bin.struct_field_offset(type_name, field)
            .map(|f| f.offset)
            .map_err(|e| format!("{type_name}.{field}: {}", error_chain(&e)))
    };
    match kind {
        ROUTER_GIN => {
            offsets.gin_full_path = field("github.com/gin-gonic/gin.Context", "fullPath")?
        }
        ROUTER_MUX => {
            offsets.mux_path_regexp = field("github.com/gorilla/mux.Route", "routeConf")?
                + field("github.com/gorilla/mux.routeConf", "regexp")?
                + field("github.com/gorilla/mux.routeRegexpGroup", "path")?;
            offsets.mux_template = field("github.com/gorilla/mux.routeRegexp", "template")?;
        }
        ROUTER_ECHO => offsets.echo_path = field("github.com/labstack/echo/v4.context", "path")?,
        _ => {}
    }
    Ok(())
}

/// The router probes for `bin`: every router it uses whose sites and
/// offsets are found. `g_goid` is the goroutine id's offset.
pub fn plan(bin: &GoBinary, g_goid: u64) -> RoutesPlan {
    let mut plan = RoutesPlan {
        offsets: HttpRouteOffsets {
            g_goid,
            ..HttpRouteOffsets::ABSENT
        },
        sites: Vec::new(),
        unavailable: Vec::new(),
    };
    for router in &ROUTERS {
        let Some(func) = bin.function(router.function) else {
            continue;
        };
        let sites = match router.callee {
            Some(callee) => match bin.function(callee) {
                Some(callee) => bin.call_sites(&func, callee.address),
                None => Ok(Vec::new()),
            },
            None => bin.return_sites(&func),
        };
        let sites = match sites {
            Ok(sites) if !sites.is_empty() => sites,
            Ok(_) => {
                plan.unavailable.push(format!(
                    "{}: no probe site in {} (the call is inlined?)",
                    router.name, router.function
                ));
                continue;
            }
            Err(err) => {
                plan.unavailable
                    .push(format!("{}: {}", router.name, error_chain(&err)));
                continue;
            }
        };
        let mut offsets = plan.offsets;
        if let Err(why) = router_offsets(bin, router.kind, &mut offsets) {
            plan.unavailable.push(format!("{}: {why}", router.name));
            continue;
        }
        plan.offsets = offsets;
        plan.sites.extend(sites.into_iter().map(|site| RouterSite {
            router: router.name,
            program: router.program,
            kind: router.kind,
            site,
        }));
    }
    plan
}

/// Writes the target's router configuration and attaches the router
/// probes. On error, what was attached is detached.
pub fn attach(
    probes: &mut Probes,
    target: &Target,
    slot: u32,
    plan: &RoutesPlan,
) -> Result<Vec<LinkHandle>, ProbeError> {
    if plan.sites.is_empty() {
        return Ok(Vec::new());
    }
    debug_assert_ne!(plan.offsets.g_goid, OFFSET_ABSENT);
    probes.set_array(
        CONFIG_MAP,
        slot,
        HttpRouteConfig {
            active: 1,
            _pad: 0,
            offsets: plan.offsets,
        },
    )?;
    probes.attach_sites(
        super::NAME,
        &target.exe_path,
        target.pid,
        slot,
        plan.sites
            .iter()
            .map(|s| (s.program, s.site.file_offset, s.kind)),
    )
}
