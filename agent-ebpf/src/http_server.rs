//! net/http server probes: one record when a request reaches
//! `serverHandler.ServeHTTP`, one when `(*response).finishRequest` starts
//! (HTTP/1) or `(*http2responseWriter).handlerDone` does (HTTP/2). The agent
//! pairs them per goroutine into a SERVER span.
//!
//! Both probes sit on an instruction the kernel emulates (the `JBE` after the
//! stack check, or a `PUSHQ BP`), where the argument registers still hold the
//! call's arguments.

use agent_common::{
    event::{KIND_HTTP_SERVER_END, KIND_HTTP_SERVER_START},
    http::{
        END_FIELD_PATTERN, END_FIELD_STATUS, END_FIELD_WRITTEN, FIELD_CONTENT_LENGTH, FIELD_HOST,
        FIELD_METHOD, FIELD_PATH, FIELD_PROTO, FIELD_REMOTE, FIELD_TLS, FIELD_TLS_KNOWN,
        HttpServerEnd, HttpServerStart, PATH_CAP, PATTERN_CAP,
    },
    stats,
    target::{GoOffsets, TargetConfig},
};
use aya_ebpf::programs::ProbeContext;

use crate::{
    go::{Reg, Window, copy_string, goid, read_field, read_string, reg},
    maps::{TARGETS, count},
    record::{header, reserve, submit, target_slot},
};

#[inline(always)]
fn config(ctx: &ProbeContext) -> Option<&'static TargetConfig> {
    match TARGETS.get(target_slot(ctx)) {
        Some(config) if config.active != 0 => Some(config),
        _ => {
            count(stats::NO_CONFIG);
            None
        }
    }
}

/// Bytes of `http.Request` read in one helper call: every field the start
/// needs lies in them on every release since Go 1.17 (Method 0, URL 16,
/// ProtoMajor/Minor 40/48, ContentLength 88, Host 128, RemoteAddr 176,
/// TLS 208).
const REQUEST_WINDOW: usize = 216;

/// Bytes of `http.response` read in one helper call: `req` 8, `written`
/// 104, `status` 120 on every release since Go 1.17.
const RESPONSE_WINDOW: usize = 128;

/// `func (sh serverHandler) ServeHTTP(rw ResponseWriter, req *Request)`:
/// RAX = sh.srv, RBX:RCX = rw (itab, data), RDI = req.
///
/// The record is not zeroed (a copy of 544 bytes per request): every scalar
/// is set, and each string area is read only up to the length set with it.
/// The request's fields come from one read of its first bytes, made into
/// the path area before the path itself is copied there.
pub fn start(ctx: &ProbeContext) {
    let Some(config) = config(ctx) else { return };
    let off = &config.offsets;
    let Some(goid) = goid(ctx, off.g_goid) else {
        count(stats::READ_FAILED);
        return;
    };
    let request = reg(ctx, Reg::Rdi);
    let response = reg(ctx, Reg::Rcx);
    let Some(mut entry) = reserve::<HttpServerStart>() else {
        return;
    };
    let rec: &mut HttpServerStart = {
        let ptr = entry.as_mut_ptr();
        // SAFETY: the entry holds size_of::<HttpServerStart>() initialized
        // bytes (ring memory is zeroed at creation, then holds older
        // records), and every bit pattern is a valid `HttpServerStart`.
        unsafe { &mut *ptr }
    };
    rec.header = header(ctx, KIND_HTTP_SERVER_START, goid);
    rec.request = request;
    rec.response = response;
    rec.content_length = 0;
    rec.proto_major = 0;
    rec.proto_minor = 0;
    rec.method_len = 0;
    rec.path_len = 0;
    rec.host_len = 0;
    rec.remote_len = 0;

    let window = Window::<PATH_CAP, REQUEST_WINDOW>::read(request, &mut rec.path);
    let method = window.string(off.request_method);
    let url = window.word(off.request_url);
    let host = window.string(off.request_host);
    let remote = window.string(off.request_remote_addr);
    let content_length = window.word(off.request_content_length);
    let proto = window
        .word(off.request_proto_major)
        .zip(window.word(off.request_proto_minor));
    let tls = window.word(off.request_tls);

    let mut fields = 0;
    let mut failed = false;
    match method.and_then(|(data, len)| copy_string(data, len, &mut rec.method)) {
        Some(len) => {
            rec.method_len = len;
            fields |= FIELD_METHOD;
        }
        None => failed = true,
    }
    match url.and_then(|url| read_string(url, off.url_path, &mut rec.path)) {
        Some(len) => {
            rec.path_len = len;
            fields |= FIELD_PATH;
        }
        None => failed = true,
    }
    if let Some(len) = host.and_then(|(data, len)| copy_string(data, len, &mut rec.host)) {
        rec.host_len = len;
        fields |= FIELD_HOST;
    }
    if let Some(len) = remote.and_then(|(data, len)| copy_string(data, len, &mut rec.remote)) {
        rec.remote_len = len;
        fields |= FIELD_REMOTE;
    }
    if let Some(length) = content_length {
        rec.content_length = length as i64;
        fields |= FIELD_CONTENT_LENGTH;
    }
    if let Some((major, minor)) = proto {
        rec.proto_major = major as u16;
        rec.proto_minor = minor as u16;
        fields |= FIELD_PROTO;
    }
    if let Some(tls) = tls {
        fields |= FIELD_TLS_KNOWN;
        if tls != 0 {
            fields |= FIELD_TLS;
        }
    }
    rec.fields = fields;
    if failed {
        count(stats::READ_FAILED);
    }
    submit(entry);
}

/// What an end probe found about the response.
struct EndFields {
    status: Option<u64>,
    written: Option<u64>,
    /// The `*http.Request`, for its ServeMux pattern.
    request: Option<u64>,
}

/// The end record common to both protocols: `response` (RAX, the pointer
/// the start saw as the ResponseWriter's data) pairs it with its start;
/// `read` finds the fields, and may use the pattern area as scratch space
/// (the pattern is copied there afterwards).
#[inline(always)]
fn end_record(
    ctx: &ProbeContext,
    read: impl FnOnce(&GoOffsets, u64, &mut [u8; PATTERN_CAP]) -> EndFields,
) {
    let Some(config) = config(ctx) else { return };
    let off = &config.offsets;
    let Some(goid) = goid(ctx, off.g_goid) else {
        count(stats::READ_FAILED);
        return;
    };
    let response = reg(ctx, Reg::Rax);
    let Some(mut entry) = reserve::<HttpServerEnd>() else {
        return;
    };
    let rec: &mut HttpServerEnd = {
        let ptr = entry.as_mut_ptr();
        // SAFETY: as in `start`.
        unsafe { &mut *ptr }
    };
    rec.header = header(ctx, KIND_HTTP_SERVER_END, goid);
    rec.response = response;
    rec.status = 0;
    rec.written = 0;
    rec.pattern_len = 0;
    let found = read(off, response, &mut rec.pattern);
    let mut fields = 0;
    match found.status {
        Some(status) => {
            rec.status = status as i64;
            fields |= END_FIELD_STATUS;
        }
        None => count(stats::READ_FAILED),
    }
    if let Some(written) = found.written {
        rec.written = written as i64;
        fields |= END_FIELD_WRITTEN;
    }
    if let Some(request) = found.request
        && let Some(len) = read_string(request, off.request_pattern, &mut rec.pattern)
    {
        rec.pattern_len = len;
        fields |= END_FIELD_PATTERN;
    }
    rec.fields = fields;
    submit(entry);
}

/// `func (w *response) finishRequest()`: RAX = w. The response's fields
/// come from one read of its first bytes, into the pattern area.
pub fn end(ctx: &ProbeContext) {
    end_record(ctx, |off, response, scratch| {
        let window = Window::<PATTERN_CAP, RESPONSE_WINDOW>::read(response, scratch);
        EndFields {
            status: window.word(off.response_status),
            written: window.word(off.response_written),
            request: window.word(off.response_req),
        }
    });
}

/// `func (w *http2responseWriter) handlerDone()`: RAX = w. Status and body
/// size live in `w.rws` (an `http2responseWriterState`), still set here.
pub fn end_h2(ctx: &ProbeContext) {
    end_record(ctx, |off, writer, _| {
        let state = read_field::<u64>(writer, off.h2_writer_rws).unwrap_or(0);
        EndFields {
            status: read_field::<u64>(state, off.h2_state_status),
            written: read_field::<u64>(state, off.h2_state_wrote_bytes),
            request: read_field::<u64>(state, off.h2_state_req),
        }
    });
}
