//! net/http client probes: one record when a request enters
//! `net/http.(*Transport).roundTrip` (every attempt of a `Client`, HTTP/1
//! and HTTP/2 alike), one at each of its `RET` instructions with the
//! `(*Response, error)` results still in their registers. The agent pairs
//! them by goroutine into a CLIENT span.
//!
//! The entry probe sits on an instruction the kernel emulates, where RBX
//! still holds the request; the return probes are single-stepped (a `RET`
//! is the only place that keeps the results, and uretprobes would break Go's
//! moving stacks).

use agent_common::{
    http_client::{
        CLIENT_END_ERR_TYPE, CLIENT_END_PROTO, CLIENT_END_STATUS, CLIENT_FIELD_HOST,
        CLIENT_FIELD_METHOD, CLIENT_FIELD_PATH, CLIENT_FIELD_QUERY, CLIENT_FIELD_SCHEME,
        CLIENT_PATH_CAP, CLIENT_QUERY_CAP, HttpClientConfig, HttpClientEnd, HttpClientStart,
        KIND_HTTP_CLIENT_END, KIND_HTTP_CLIENT_START,
    },
    propagate::KIND_CLIENT_IDS,
    stats,
    target::MAX_TARGETS,
};
use aya_ebpf::{
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
};

use crate::{
    go::{Reg, Window, copy_string, goid, read_field, reg},
    maps::count,
    record::{InPlace, cookie, fields, header, reserve, slot_config, submit},
};

// SAFETY: agent-common record types, `#[repr(C)]` integers and integer
// arrays without implicit padding (sizes asserted where they are defined).
unsafe impl InPlace for HttpClientStart {}
// SAFETY: as above.
unsafe impl InPlace for HttpClientEnd {}

/// Per-target configuration, indexed by the target slot in the attach cookie.
#[map]
pub static HTTP_CLIENT_CONFIG: Array<HttpClientConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// Entry site of `net/http.(*Transport).roundTrip`.
#[uprobe]
pub fn http_client_start(ctx: ProbeContext) -> u32 {
    start(&ctx);
    0
}

/// A `RET` of `net/http.(*Transport).roundTrip`.
#[uprobe]
pub fn http_client_end(ctx: ProbeContext) -> u32 {
    end(&ctx);
    0
}

#[inline(always)]
fn config(cookie: u64) -> Option<&'static HttpClientConfig> {
    slot_config(&HTTP_CLIENT_CONFIG, cookie)
}

/// Bytes of `http.Request` read at once: Method 0, URL 16.
const REQUEST_WINDOW: usize = 24;
/// Bytes of `url.URL` read at once: Scheme 0, Host 40, Path 56, RawQuery
/// 96 on every release since Go 1.17 (RawFragment, the last, ends before
/// 144); a field past the window is read on its own.
const URL_WINDOW: usize = 144;

/// `func (t *Transport) roundTrip(req *Request) (*Response, error)`:
/// RAX = t, RBX = req. The URL's user information is never read.
pub fn start(ctx: &ProbeContext) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let Some(goid) = goid(ctx, off.g_goid) else {
        count(stats::READ_FAILED);
        return;
    };
    let request = reg(ctx, Reg::Rbx);
    let Some(mut entry) = reserve::<HttpClientStart>(KIND_HTTP_CLIENT_START) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_HTTP_CLIENT_START, goid);
    rec.request = request;
    rec.method_len = 0;
    rec.scheme_len = 0;
    rec.host_len = 0;
    rec.path_len = 0;
    rec.query_len = 0;

    // The request's fields through the query area, the URL's through the
    // path area: both are overwritten by their strings afterwards.
    let req = Window::<CLIENT_QUERY_CAP, REQUEST_WINDOW>::read(request, &mut rec.query);
    let method = req.string(off.request_method);
    let url = req.word(off.request_url).unwrap_or(0);
    let url = Window::<CLIENT_PATH_CAP, URL_WINDOW>::read(url, &mut rec.path);
    let scheme = url.string(off.url_scheme);
    let host = url.string(off.url_host);
    let path = url.string(off.url_path);
    let query = url.string(off.url_raw_query);

    let mut fields = 0;
    let mut failed = false;
    match method.and_then(|(data, len)| copy_string(data, len, &mut rec.method)) {
        Some(len) => {
            rec.method_len = len;
            fields |= CLIENT_FIELD_METHOD;
        }
        None => failed = true,
    }
    match scheme.and_then(|(data, len)| copy_string(data, len, &mut rec.scheme)) {
        Some(len) => {
            rec.scheme_len = len;
            fields |= CLIENT_FIELD_SCHEME;
        }
        None => failed = true,
    }
    match host.and_then(|(data, len)| copy_string(data, len, &mut rec.host)) {
        Some(len) => {
            rec.host_len = len;
            fields |= CLIENT_FIELD_HOST;
        }
        None => failed = true,
    }
    if let Some(len) = query.and_then(|(data, len)| copy_string(data, len, &mut rec.query)) {
        rec.query_len = len;
        fields |= CLIENT_FIELD_QUERY;
    }
    if let Some(len) = path.and_then(|(data, len)| copy_string(data, len, &mut rec.path)) {
        rec.path_len = len;
        fields |= CLIENT_FIELD_PATH;
    }
    rec.fields = fields;
    if failed {
        count(stats::READ_FAILED);
    }
    let hdr = rec.header;
    let tls = rec.scheme_len == 5 && rec.scheme[..5] == *b"https";
    submit(entry, hdr.ktime_ns);
    crate::propagate::client_start(cookie, &hdr, request, KIND_CLIENT_IDS, tls);
}

/// At a `RET` of `roundTrip`: RAX = *Response, RBX:RCX = error (itab,
/// data); R14 still the goroutine.
pub fn end(ctx: &ProbeContext) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let Some(goid) = goid(ctx, off.g_goid) else {
        count(stats::READ_FAILED);
        return;
    };
    let response = reg(ctx, Reg::Rax);
    let itab = reg(ctx, Reg::Rbx);
    let Some(mut entry) = reserve::<HttpClientEnd>(KIND_HTTP_CLIENT_END) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_HTTP_CLIENT_END, goid);
    rec.response = response;
    rec.status = 0;
    rec.err_itab = itab;
    rec.err_type = 0;
    rec.proto_major = 0;
    rec.proto_minor = 0;
    rec._pad = 0;
    let mut fields = 0;
    if response != 0 {
        match read_field::<u64>(response, off.response_status) {
            Some(status) => {
                rec.status = status as i64;
                fields |= CLIENT_END_STATUS;
            }
            None => count(stats::READ_FAILED),
        }
        if let (Some(major), Some(minor)) = (
            read_field::<u64>(response, off.response_proto_major),
            read_field::<u64>(response, off.response_proto_minor),
        ) {
            rec.proto_major = major.min(u8::MAX as u64) as u8;
            rec.proto_minor = minor.min(u8::MAX as u64) as u8;
            fields |= CLIENT_END_PROTO;
        }
    }
    if itab != 0
        && let Some(ty) = read_field::<u64>(itab, off.itab_type)
    {
        rec.err_type = ty;
        fields |= CLIENT_END_ERR_TYPE;
    }
    rec.fields = fields;
    let now = rec.header.ktime_ns;
    submit(entry, now);
}
