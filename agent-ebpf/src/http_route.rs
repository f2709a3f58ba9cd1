//! Router probes of the net/http server family: where gin, chi,
//! gorilla/mux or echo has matched a route and holds its pattern, one
//! record with the pattern and the goroutine. The agent gives it to the
//! server span open on that goroutine.
//!
//! Every probe sits on an instruction the kernel emulates: a `call` whose
//! callee's arguments are in their registers, or a `ret` whose results are.

use agent_common::{
    http_route::{
        HttpRoute, HttpRouteConfig, KIND_HTTP_ROUTE, ROUTER_CHI, ROUTER_ECHO, ROUTER_GIN,
        ROUTER_MUX,
    },
    stats,
    target::MAX_TARGETS,
};
use aya_ebpf::{
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
};

use crate::{
    go::{Reg, copy_string, goid, read_field, reg},
    maps::count,
    record::{InPlace, cookie, fields, header, reserve, slot_config, submit},
};

// SAFETY: an agent-common record type, `#[repr(C)]` integers and integer
// arrays without implicit padding (its size is asserted where it is defined).
unsafe impl InPlace for HttpRoute {}

/// Per-target configuration, indexed by the target slot in the attach cookie.
#[map]
pub static HTTP_ROUTE_CONFIG: Array<HttpRouteConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// gin: the `call (*Context).Next` in `(*Engine).handleHTTPRequest`, right
/// after `c.fullPath = value.fullPath`: RAX = c.
#[uprobe]
pub fn http_route_gin(ctx: ProbeContext) -> u32 {
    let _ = route(&ctx, ROUTER_GIN, |off| {
        read_field::<[u64; 2]>(reg(&ctx, Reg::Rax), off.gin_full_path)
    });
    0
}

/// chi: each `ret` of `(*Context).RoutePattern`, which `(*Mux).routeHTTP`
/// calls once it has found the route: RAX:RBX = the pattern.
#[uprobe]
pub fn http_route_chi(ctx: ProbeContext) -> u32 {
    let _ = route(&ctx, ROUTER_CHI, |_| {
        Some([reg(&ctx, Reg::Rax), reg(&ctx, Reg::Rbx)])
    });
    0
}

/// gorilla/mux: the `call requestWithRoute(req, route)` in
/// `(*Router).ServeHTTP`, once `Match` found it: RBX = route; the template
/// is `route.regexp.path.template`.
#[uprobe]
pub fn http_route_mux(ctx: ProbeContext) -> u32 {
    let _ = route(&ctx, ROUTER_MUX, |off| {
        let regexp = read_field::<u64>(reg(&ctx, Reg::Rbx), off.mux_path_regexp)?;
        read_field::<[u64; 2]>(regexp, off.mux_template)
    });
    0
}

/// echo: the `call (*sync.Pool).Put(c)` in `(*Echo).ServeHTTP`, after the
/// handler ran with the context `Find` filled: RBX:RCX = c (an `any`).
#[uprobe]
pub fn http_route_echo(ctx: ProbeContext) -> u32 {
    let _ = route(&ctx, ROUTER_ECHO, |off| {
        read_field::<[u64; 2]>(reg(&ctx, Reg::Rcx), off.echo_path)
    });
    0
}

/// Writes a route record with the Go string `find` locates (data, len);
/// every failure is counted. An empty route (no match) writes nothing.
#[inline(always)]
fn route(
    ctx: &ProbeContext,
    router: u32,
    find: impl FnOnce(&agent_common::http_route::HttpRouteOffsets) -> Option<[u64; 2]>,
) -> Option<()> {
    let cookie = cookie(ctx);
    let off = &slot_config(&HTTP_ROUTE_CONFIG, cookie)?.offsets;
    let (Some(goid), Some([data, len])) = (goid(ctx, off.g_goid), find(off)) else {
        count(stats::READ_FAILED);
        return None;
    };
    if len == 0 {
        return None;
    }
    let mut entry = reserve::<HttpRoute>(KIND_HTTP_ROUTE)?;
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_HTTP_ROUTE, goid);
    rec.router = router;
    match copy_string(data, len, &mut rec.route) {
        Some(n) => rec.len = n,
        None => {
            count(stats::READ_FAILED);
            rec.len = 0;
        }
    }
    let now = rec.header.ktime_ns;
    submit(entry, now);
    Some(())
}
