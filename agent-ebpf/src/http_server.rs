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
        FIELD_METHOD, FIELD_PATH, FIELD_PROTO, FIELD_REMOTE, HttpServerEnd, HttpServerStart,
    },
    stats,
    target::TargetConfig,
};
use aya_ebpf::programs::ProbeContext;

use crate::{
    go::{Reg, goid, read_field, read_string, reg},
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

/// `func (sh serverHandler) ServeHTTP(rw ResponseWriter, req *Request)`:
/// RAX = sh.srv, RBX:RCX = rw (itab, data), RDI = req.
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
        // SAFETY: `reserve` zeroed the whole record, and every bit pattern is
        // a valid `HttpServerStart`.
        unsafe { &mut *ptr }
    };
    rec.header = header(ctx, KIND_HTTP_SERVER_START, goid);
    rec.request = request;
    rec.response = response;

    let mut fields = 0;
    let mut failed = false;
    match read_string(request, off.request_method, &mut rec.method) {
        Some(len) => {
            rec.method_len = len;
            fields |= FIELD_METHOD;
        }
        None => failed = true,
    }
    if let Some(url) = read_field::<u64>(request, off.request_url) {
        match read_string(url, off.url_path, &mut rec.path) {
            Some(len) => {
                rec.path_len = len;
                fields |= FIELD_PATH;
            }
            None => failed = true,
        }
    }
    if let Some(len) = read_string(request, off.request_host, &mut rec.host) {
        rec.host_len = len;
        fields |= FIELD_HOST;
    }
    if let Some(len) = read_string(request, off.request_remote_addr, &mut rec.remote) {
        rec.remote_len = len;
        fields |= FIELD_REMOTE;
    }
    if let Some(length) = read_field::<i64>(request, off.request_content_length) {
        rec.content_length = length;
        fields |= FIELD_CONTENT_LENGTH;
    }
    if let (Some(major), Some(minor)) = (
        read_field::<i64>(request, off.request_proto_major),
        read_field::<i64>(request, off.request_proto_minor),
    ) {
        rec.proto_major = major as u16;
        rec.proto_minor = minor as u16;
        fields |= FIELD_PROTO;
    }
    rec.fields = fields;
    if failed {
        count(stats::READ_FAILED);
    }
    submit(entry);
}

/// `func (w *response) finishRequest()`: RAX = w.
pub fn end(ctx: &ProbeContext) {
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
    let mut fields = 0;
    match read_field::<i64>(response, off.response_status) {
        Some(status) => {
            rec.status = status;
            fields |= END_FIELD_STATUS;
        }
        None => count(stats::READ_FAILED),
    }
    if let Some(written) = read_field::<i64>(response, off.response_written) {
        rec.written = written;
        fields |= END_FIELD_WRITTEN;
    }
    if let Some(request) = read_field::<u64>(response, off.response_req)
        && let Some(len) = read_string(request, off.request_pattern, &mut rec.pattern)
    {
        rec.pattern_len = len;
        fields |= END_FIELD_PATTERN;
    }
    rec.fields = fields;
    submit(entry);
}

/// `func (w *http2responseWriter) handlerDone()`: RAX = w, the same pointer
/// the start saw as the ResponseWriter's data. Status and body size live in
/// `w.rws` (an `http2responseWriterState`), which is still set here.
pub fn end_h2(ctx: &ProbeContext) {
    let Some(config) = config(ctx) else { return };
    let off = &config.offsets;
    let Some(goid) = goid(ctx, off.g_goid) else {
        count(stats::READ_FAILED);
        return;
    };
    let writer = reg(ctx, Reg::Rax);
    let Some(mut entry) = reserve::<HttpServerEnd>() else {
        return;
    };
    let rec: &mut HttpServerEnd = {
        let ptr = entry.as_mut_ptr();
        // SAFETY: as in `start`.
        unsafe { &mut *ptr }
    };
    rec.header = header(ctx, KIND_HTTP_SERVER_END, goid);
    rec.response = writer;
    let mut fields = 0;
    let state = read_field::<u64>(writer, off.h2_writer_rws).unwrap_or(0);
    match read_field::<i64>(state, off.h2_state_status) {
        Some(status) => {
            rec.status = status;
            fields |= END_FIELD_STATUS;
        }
        None => count(stats::READ_FAILED),
    }
    if let Some(written) = read_field::<i64>(state, off.h2_state_wrote_bytes) {
        rec.written = written;
        fields |= END_FIELD_WRITTEN;
    }
    if let Some(request) = read_field::<u64>(state, off.h2_state_req)
        && let Some(len) = read_string(request, off.request_pattern, &mut rec.pattern)
    {
        rec.pattern_len = len;
        fields |= END_FIELD_PATTERN;
    }
    rec.fields = fields;
    submit(entry);
}
