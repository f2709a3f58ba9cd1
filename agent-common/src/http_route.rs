//! Records of the router probes of the net/http server family: the route a
//! router (gin, chi, gorilla/mux, echo) matched for the request served on a
//! goroutine.

use crate::{event::EventHeader, target::OFFSET_ABSENT};

/// `EventHeader::kind` of an [`HttpRoute`] record.
pub const KIND_HTTP_ROUTE: u32 = 40;

/// Bytes of a route kept (a longer one is dropped by the agent, not cut).
pub const ROUTE_CAP: usize = 128;

/// The router a route record comes from: the attach cookie's site index
/// of its probe, and [`HttpRoute::router`].
pub const ROUTER_GIN: u32 = 1;
/// See [`ROUTER_GIN`].
pub const ROUTER_CHI: u32 = 2;
/// See [`ROUTER_GIN`].
pub const ROUTER_MUX: u32 = 3;
/// See [`ROUTER_GIN`].
pub const ROUTER_ECHO: u32 = 4;

/// A router matched a route for the request its goroutine serves.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpRoute {
    pub header: EventHeader,
    /// The route's full length in the target (`route` holds at most
    /// [`ROUTE_CAP`] bytes of it).
    pub len: u32,
    /// One of the `ROUTER_*` constants.
    pub router: u32,
    pub route: [u8; ROUTE_CAP],
}

const _: () = assert!(core::mem::size_of::<HttpRoute>() == 32 + 8 + ROUTE_CAP);

/// Where each router keeps its route, from DWARF; `OFFSET_ABSENT` for a
/// router the binary does not use (or whose offsets are unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRouteOffsets {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `gin.Context.fullPath` (a string).
    pub gin_full_path: u64,
    /// `mux.Route.routeConf` + `routeConf.regexp` + `routeRegexpGroup.path`
    /// (a `*routeRegexp`).
    pub mux_path_regexp: u64,
    /// `mux.routeRegexp.template` (a string).
    pub mux_template: u64,
    /// `echo.context.path` (a string).
    pub echo_path: u64,
}

impl HttpRouteOffsets {
    /// Every offset absent.
    pub const ABSENT: Self = Self {
        g_goid: OFFSET_ABSENT,
        gin_full_path: OFFSET_ABSENT,
        mux_path_regexp: OFFSET_ABSENT,
        mux_template: OFFSET_ABSENT,
        echo_path: OFFSET_ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<HttpRouteOffsets>() == 5 * 8);

/// One entry of the `HTTP_ROUTE_CONFIG` array map, by target slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRouteConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    pub offsets: HttpRouteOffsets,
}

const _: () = assert!(core::mem::size_of::<HttpRouteConfig>() == 8 + 5 * 8);
