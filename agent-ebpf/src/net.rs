//! Connection set-up probes: `crypto/tls` handshakes, name lookups through
//! Go's resolver and `net.Dialer` dials. One record at each function's
//! entry (a site the kernel emulates, where the arguments are still in
//! their registers), one at each of its `RET`s with the results in theirs
//! (single-stepped; these operations are rare next to requests).
//!
//! - `crypto/tls.(*Conn).clientHandshake(ctx) error` and
//!   `serverHandshake(ctx) error`: RAX = the `*Conn`. Called once per
//!   handshake (unlike `handshakeContext`, which every `Read` and `Write`
//!   goes through). The `RET` has only the error, so the entry keeps the
//!   `*Conn` per goroutine in [`TLS_CONNS`] for the end to read what was
//!   negotiated.
//! - `net.(*Resolver).lookupIPAddr(ctx, network, host string)
//!   ([]IPAddr, error)`: RDI:RSI = network, R8:R9 = host; at a `RET`,
//!   RBX = the number of addresses, RDI = the error's itab.
//! - `net.(*Dialer).DialContext(ctx, network, address string) (Conn,
//!   error)`: RDI:RSI = network, R8:R9 = address; at a `RET`, RCX = the
//!   error's itab.

use agent_common::{
    net::{
        KIND_DIAL_END, KIND_DIAL_START, KIND_DNS_END, KIND_DNS_START, KIND_TLS_END, KIND_TLS_START,
        NET_END_ANSWERS, NET_END_ERR_TYPE, NET_END_NAME, NET_END_TLS_STATE, NET_START_NAME,
        NET_START_NETWORK, NetConfig, NetEnd, NetOffsets, NetStart, TLS_IN_FLIGHT, TLS_SIDE_CLIENT,
        TLS_SIDE_SERVER,
    },
    stats,
    target::MAX_TARGETS,
};
use aya_ebpf::{
    macros::{map, uprobe},
    maps::{Array, LruHashMap},
    programs::ProbeContext,
};

use crate::{
    go::{copy_string, goid, read_field, read_string},
    maps::count,
    record::{InPlace, cookie, fields, header, reserve, slot_config, submit, target_slot},
};

// SAFETY: agent-common record types, `#[repr(C)]` integers and integer
// arrays without implicit padding (sizes asserted where they are defined).
unsafe impl InPlace for NetStart {}
// SAFETY: as above.
unsafe impl InPlace for NetEnd {}

/// Per-target configuration, indexed by the target slot in the attach cookie.
#[map]
pub static NET_CONFIG: Array<NetConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// The `*tls.Conn` of each handshake in flight, by (target slot,
/// goroutine id), from its entry to its end. LRU: a handshake whose end
/// never came (the goroutine panicked) ages out instead of filling the map.
#[map]
pub static TLS_CONNS: LruHashMap<[u64; 2], u64> = LruHashMap::with_max_entries(TLS_IN_FLIGHT, 0);

/// The probed thread's registers Go's ABI passes these values in.
#[derive(Clone, Copy)]
enum R {
    Rax,
    Rbx,
    Rcx,
    Rdi,
    Rsi,
    R8,
    R9,
}

#[inline(always)]
fn reg(ctx: &ProbeContext, r: R) -> u64 {
    // SAFETY: `ctx.regs` points at the probed thread's saved registers,
    // which the kernel hands to the program and the verifier lets it read.
    let regs = unsafe { &*ctx.regs };
    match r {
        R::Rax => regs.rax,
        R::Rbx => regs.rbx,
        R::Rcx => regs.rcx,
        R::Rdi => regs.rdi,
        R::Rsi => regs.rsi,
        R::R8 => regs.r8,
        R::R9 => regs.r9,
    }
}

#[inline(always)]
fn config(cookie: u64) -> Option<&'static NetConfig> {
    slot_config(&NET_CONFIG, cookie)
}

/// Entry site of `crypto/tls.(*Conn).clientHandshake`.
#[uprobe]
pub fn net_tls_client_start(ctx: ProbeContext) -> u32 {
    tls_start(&ctx, TLS_SIDE_CLIENT);
    0
}

/// Entry site of `crypto/tls.(*Conn).serverHandshake`.
#[uprobe]
pub fn net_tls_server_start(ctx: ProbeContext) -> u32 {
    tls_start(&ctx, TLS_SIDE_SERVER);
    0
}

/// A `RET` of `clientHandshake`.
#[uprobe]
pub fn net_tls_client_end(ctx: ProbeContext) -> u32 {
    tls_end(&ctx, TLS_SIDE_CLIENT);
    0
}

/// A `RET` of `serverHandshake`.
#[uprobe]
pub fn net_tls_server_end(ctx: ProbeContext) -> u32 {
    tls_end(&ctx, TLS_SIDE_SERVER);
    0
}

/// Entry site of `net.(*Resolver).lookupIPAddr`.
#[uprobe]
pub fn net_dns_start(ctx: ProbeContext) -> u32 {
    named_start(&ctx, KIND_DNS_START);
    0
}

/// A `RET` of `lookupIPAddr`: RBX = len([]IPAddr), RDI = error itab.
#[uprobe]
pub fn net_dns_end(ctx: ProbeContext) -> u32 {
    let answers = reg(&ctx, R::Rbx);
    let itab = reg(&ctx, R::Rdi);
    simple_end(&ctx, KIND_DNS_END, itab, Some(answers));
    0
}

/// Entry site of `net.(*Dialer).DialContext`.
#[uprobe]
pub fn net_dial_start(ctx: ProbeContext) -> u32 {
    named_start(&ctx, KIND_DIAL_START);
    0
}

/// A `RET` of `DialContext`: RAX:RBX = Conn, RCX = error itab.
#[uprobe]
pub fn net_dial_end(ctx: ProbeContext) -> u32 {
    let itab = reg(&ctx, R::Rcx);
    simple_end(&ctx, KIND_DIAL_END, itab, None);
    0
}

/// Reserves a start record and fills its header; `None` (counted) when the
/// ring is full.
#[inline(always)]
fn begin_start(cookie: u64, kind: u32, goid: u64) -> Option<StartEntry> {
    let mut entry = reserve::<NetStart>(kind)?;
    let rec = fields(&mut entry);
    rec.header = header(cookie, kind, goid);
    rec.object = 0;
    rec.side = 0;
    rec.fields = 0;
    rec.name_len = 0;
    rec.network_len = 0;
    Some(entry)
}

type StartEntry = aya_ebpf::maps::ring_buf::RingBufEntry<NetStart>;

#[inline(always)]
fn goroutine(ctx: &ProbeContext, off: &NetOffsets) -> Option<u64> {
    let goid = goid(ctx, off.g_goid);
    if goid.is_none() {
        count(stats::READ_FAILED);
    }
    goid
}

/// `lookupIPAddr` and `DialContext`: RDI:RSI = network, R8:R9 = the host
/// or address.
#[inline(always)]
fn named_start(ctx: &ProbeContext, kind: u32) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let Some(goid) = goroutine(ctx, off) else {
        return;
    };
    let (network, network_len) = (reg(ctx, R::Rdi), reg(ctx, R::Rsi));
    let (name, name_len) = (reg(ctx, R::R8), reg(ctx, R::R9));
    let Some(mut entry) = begin_start(cookie, kind, goid) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.object = name;
    let mut fields = 0;
    let mut failed = false;
    match copy_string(name, name_len, &mut rec.name) {
        Some(len) => {
            rec.name_len = len;
            fields |= NET_START_NAME;
        }
        None => failed = true,
    }
    match copy_string(network, network_len, &mut rec.network) {
        Some(len) => {
            rec.network_len = len;
            fields |= NET_START_NETWORK;
        }
        None => failed = true,
    }
    rec.fields = fields;
    if failed {
        count(stats::READ_FAILED);
    }
    let now = rec.header.ktime_ns;
    submit(entry, now);
}

/// `clientHandshake`/`serverHandshake` entry: RAX = the `*tls.Conn`.
#[inline(always)]
fn tls_start(ctx: &ProbeContext, side: u32) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let Some(goid) = goroutine(ctx, off) else {
        return;
    };
    let conn = reg(ctx, R::Rax);
    let key = [u64::from(target_slot(cookie)), goid];
    if TLS_CONNS.insert(&key, &conn, 0).is_err() {
        count(stats::READ_FAILED);
    }
    let Some(mut entry) = begin_start(cookie, KIND_TLS_START, goid) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.object = conn;
    rec.side = side;
    if side == TLS_SIDE_CLIENT {
        let config = read_field::<u64>(conn, off.conn_config).unwrap_or(0);
        match read_string(config, off.config_server_name, &mut rec.name) {
            Some(len) => {
                rec.name_len = len;
                rec.fields = NET_START_NAME;
            }
            None => count(stats::READ_FAILED),
        }
    }
    let now = rec.header.ktime_ns;
    submit(entry, now);
}

/// Reserves an end record and fills what every end has: the header and
/// the error.
#[inline(always)]
fn begin_end(
    cookie: u64,
    kind: u32,
    off: &NetOffsets,
    goid: u64,
    itab: u64,
) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<NetEnd>> {
    let mut entry = reserve::<NetEnd>(kind)?;
    let rec = fields(&mut entry);
    rec.header = header(cookie, kind, goid);
    rec.err_itab = itab;
    rec.err_type = 0;
    rec.answers = 0;
    rec.tls_version = 0;
    rec.tls_cipher = 0;
    rec.tls_resumed = 0;
    rec._pad = [0; 3];
    rec.fields = 0;
    rec.name_len = 0;
    if itab != 0 {
        match read_field::<u64>(itab, off.itab_type) {
            Some(ty) => {
                rec.err_type = ty;
                rec.fields = NET_END_ERR_TYPE;
            }
            None => count(stats::READ_FAILED),
        }
    }
    Some(entry)
}

/// A `RET` of `lookupIPAddr` or `DialContext`.
#[inline(always)]
fn simple_end(ctx: &ProbeContext, kind: u32, itab: u64, answers: Option<u64>) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let Some(goid) = goroutine(ctx, off) else {
        return;
    };
    let Some(mut entry) = begin_end(cookie, kind, off, goid, itab) else {
        return;
    };
    let rec = fields(&mut entry);
    if let Some(answers) = answers {
        rec.answers = answers;
        rec.fields |= NET_END_ANSWERS;
    }
    let now = rec.header.ktime_ns;
    submit(entry, now);
}

/// A `RET` of a handshake: RAX = the error's itab. What was negotiated is
/// read from the `*tls.Conn` its entry kept.
#[inline(always)]
fn tls_end(ctx: &ProbeContext, side: u32) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let Some(goid) = goroutine(ctx, off) else {
        return;
    };
    let itab = reg(ctx, R::Rax);
    let key = [u64::from(target_slot(cookie)), goid];
    // SAFETY: the value is copied out before the entry is removed.
    let conn = unsafe { TLS_CONNS.get(&key) }.copied();
    let _ = TLS_CONNS.remove(&key);
    let Some(mut entry) = begin_end(cookie, KIND_TLS_END, off, goid, itab) else {
        return;
    };
    let rec = fields(&mut entry);
    if let Some(conn) = conn {
        if let (Some(vers), Some(cipher), Some(resumed)) = (
            read_field::<u16>(conn, off.conn_vers),
            read_field::<u16>(conn, off.conn_cipher_suite),
            read_field::<u8>(conn, off.conn_did_resume),
        ) {
            rec.tls_version = vers;
            rec.tls_cipher = cipher;
            rec.tls_resumed = resumed;
            rec.fields |= NET_END_TLS_STATE;
        } else {
            count(stats::READ_FAILED);
        }
        if side == TLS_SIDE_SERVER
            && let Some(len) = read_string(conn, off.conn_server_name, &mut rec.name)
        {
            rec.name_len = len;
            rec.fields |= NET_END_NAME;
        }
    }
    let now = rec.header.ktime_ns;
    submit(entry, now);
}
