//! net/http server probes: one record when a request reaches
//! `serverHandler.ServeHTTP`, one when `(*response).finishRequest` starts
//! (HTTP/1) or `(*http2responseWriter).handlerDone` does (HTTP/2). The agent
//! pairs them by the response object into a SERVER span. Between the two, a
//! request that carries W3C trace context gets a record of its `Traceparent`
//! and then of its `Tracestate`, from programs the start tail-calls.
//!
//! Both probes sit on an instruction the kernel emulates (the `JBE` after the
//! stack check, or a `PUSHQ BP`), where the argument registers still hold the
//! call's arguments.

mod headers;

use agent_common::{
    http::{
        END_FIELD_PATTERN, END_FIELD_STATUS, END_FIELD_WRITTEN, FIELD_CONTENT_LENGTH, FIELD_HOST,
        FIELD_METHOD, FIELD_METHOD_IN_URI, FIELD_PROTO, FIELD_REMOTE, FIELD_TLS, FIELD_TLS_KNOWN,
        FIELD_URI, HttpConfig, HttpOffsets, HttpServerEnd, HttpServerStart, HttpTraceparent,
        HttpTracestate, KIND_HTTP_SERVER_END, KIND_HTTP_SERVER_START, KIND_HTTP_TRACEPARENT,
        KIND_HTTP_TRACESTATE, MAP_LAYOUT_NONE, PATTERN_CAP, TAIL_SLOTS, TAIL_TRACEPARENT,
        TAIL_TRACESTATE, TRACEPARENT_CAP, URI_CAP,
    },
    propagate::{KIND_SERVER_IDS, TRACEPARENT_ADOPTED},
    stats,
    target::{MAX_TARGETS, OFFSET_ABSENT},
};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::ProbeContext,
};

use self::headers::{SCRATCH_LEN, Scan, Search, TRACEPARENT_KEY, TRACESTATE_KEY, find_header};
use crate::{
    go::{Reg, Window, clamp_len, copy_string, goid, read_field, read_string, reg},
    maps::count,
    record::{RunSeq, cookie, fields, header, reserve, slot_config, submit},
};

/// Per-target configuration, indexed by the target slot in the attach cookie.
#[map]
pub static HTTP_CONFIG: Array<HttpConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// The header searches the HTTP start program chains to, in the slots
/// `agent_common::http::TAIL_*` name.
#[map]
pub static HTTP_TAIL: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);

/// The working memory of the header searches (`http_server_traceparent`,
/// then `http_server_tracestate`), per CPU: the loop state, a group or
/// bucket of the header map, the `traceparent` value found.
#[repr(C)]
pub struct HeaderSearch {
    /// Bumped by each run; a run whose number changed under it was
    /// interleaved with another and drops its result.
    pub seq: RunSeq,
    pub value: [u8; TRACEPARENT_CAP],
    pub scan: Scan,
    pub scratch: [u8; SCRATCH_LEN],
}

/// One [`HeaderSearch`] per CPU.
#[map]
pub static HTTP_HEADERS: PerCpuArray<HeaderSearch> = PerCpuArray::with_max_entries(1, 0);

/// HTTP/2 requests in flight whose end cannot reach their `*http.Request`
/// (Go 1.27's `net/http/internal/http2` keeps a request value of its own):
/// the pointer the start saw, by (process, ResponseWriter data pointer),
/// taken back at the end for the ServeMux pattern. LRU: an end that never
/// comes (a handler that never returns) only ages its entry out.
#[map]
pub static HTTP2_REQUESTS: LruHashMap<[u64; 2], u64> = LruHashMap::with_max_entries(4096, 0);

/// Whether HTTP/2 requests of this target keep their request pointer in
/// [`HTTP2_REQUESTS`].
#[inline(always)]
fn h2_request_at_start(off: &HttpOffsets) -> bool {
    off.h2_writer_rws != OFFSET_ABSENT
        && off.h2_state_req == OFFSET_ABSENT
        && off.request_pattern != OFFSET_ABSENT
}

#[inline(always)]
fn h2_request_key(response: u64) -> [u64; 2] {
    [bpf_get_current_pid_tgid() >> 32, response]
}

/// Entry site of `net/http.serverHandler.ServeHTTP`.
#[uprobe]
pub fn http_server_start(ctx: ProbeContext) -> u32 {
    start(&ctx);
    0
}

/// Tail-called by `http_server_start` for a request with headers: finds its
/// `Traceparent`. Never attached.
#[uprobe]
pub fn http_server_traceparent(ctx: ProbeContext) -> u32 {
    traceparent(&ctx);
    0
}

/// Tail-called by `http_server_traceparent` when it found one: finds the
/// request's `Tracestate`. Never attached.
#[uprobe]
pub fn http_server_tracestate(ctx: ProbeContext) -> u32 {
    tracestate(&ctx);
    0
}

/// Entry site of `net/http.(*response).finishRequest`.
#[uprobe]
pub fn http_server_end(ctx: ProbeContext) -> u32 {
    end(&ctx);
    0
}

/// Entry site of `net/http.(*http2responseWriter).handlerDone`.
#[uprobe]
pub fn http2_server_end(ctx: ProbeContext) -> u32 {
    end_h2(&ctx);
    0
}

#[inline(always)]
fn config(cookie: u64) -> Option<&'static HttpConfig> {
    slot_config(&HTTP_CONFIG, cookie)
}

/// Bytes of `http.Request` read in one helper call: every field the start
/// needs lies in them on every release since Go 1.17 (Method 0,
/// Header 56, ProtoMajor/Minor 40/48, ContentLength 88, Host 128, RemoteAddr 176,
/// RequestURI 192, TLS 208).
const REQUEST_WINDOW: usize = 216;

/// Bytes of `http.response` read in one helper call: `req` 8, `written`
/// 104, `status` 120 on every release since Go 1.17.
const RESPONSE_WINDOW: usize = 128;

/// Most bytes between the start of the method and the start of the request
/// target for the two to be copied with one read.
const METHOD_GAP_MAX: u64 = 64;

/// `func (sh serverHandler) ServeHTTP(rw ResponseWriter, req *Request)`:
/// RAX = sh.srv, RBX:RCX = rw (itab, data), RDI = req.
///
/// The record is not zeroed (a copy of 544 bytes per request): every scalar
/// is set, and each string area is read only up to the length set with it.
/// The request's fields come from one read of its first bytes, made into
/// the URI area before the request target is copied there; the method and
/// the target come with one more read when they are neighbours in one string
/// (HTTP/1's request line), so a request costs five reads in all.
pub fn start(ctx: &ProbeContext) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let Some(goid) = goid(ctx, off.g_goid) else {
        count(stats::READ_FAILED);
        return;
    };
    let request = reg(ctx, Reg::Rdi);
    let response = reg(ctx, Reg::Rcx);
    let Some(mut entry) = reserve::<HttpServerStart>(KIND_HTTP_SERVER_START) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_HTTP_SERVER_START, goid);
    rec.request = request;
    rec.response = response;
    rec.content_length = 0;
    rec.proto_major = 0;
    rec.proto_minor = 0;
    rec.uri_at = 0;
    rec.method_len = 0;
    rec.uri_len = 0;
    rec.host_len = 0;
    rec.remote_len = 0;

    let window = Window::<URI_CAP, REQUEST_WINDOW>::read(request, &mut rec.uri);
    let method = window.string(off.request_method);
    let uri = window.string(off.request_uri);
    let host = window.string(off.request_host);
    let remote = window.string(off.request_remote_addr);
    let content_length = window.word(off.request_content_length);
    let proto = window
        .word(off.request_proto_major)
        .zip(window.word(off.request_proto_minor));
    let tls = window.word(off.request_tls);
    let headers = window.word(off.request_header);

    let mut fields = 0;
    let mut failed = false;
    match (method, uri) {
        (Some((method, method_len)), Some((uri, uri_len)))
            if uri >= method && uri - method <= METHOD_GAP_MAX && method_len <= uri - method =>
        {
            let at = uri - method;
            match copy_string(method, at + uri_len, &mut rec.uri) {
                Some(_) => {
                    rec.uri_at = at as u16;
                    rec.method_len = method_len as u32;
                    rec.uri_len = clamp_len(uri_len);
                    fields |= FIELD_METHOD | FIELD_URI | FIELD_METHOD_IN_URI;
                }
                None => failed = true,
            }
        }
        (method, uri) => {
            match method.and_then(|(data, len)| copy_string(data, len, &mut rec.method)) {
                Some(len) => {
                    rec.method_len = len;
                    fields |= FIELD_METHOD;
                }
                None => failed = true,
            }
            match uri.and_then(|(data, len)| copy_string(data, len, &mut rec.uri)) {
                Some(len) => {
                    rec.uri_len = len;
                    fields |= FIELD_URI;
                }
                None => failed = true,
            }
        }
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
        rec.proto_major = major.min(u8::MAX as u64) as u8;
        rec.proto_minor = minor.min(u8::MAX as u64) as u8;
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
    let h2 = rec.proto_major == 2;
    let hdr = rec.header;
    submit(entry, hdr.ktime_ns);
    if h2 && h2_request_at_start(off) {
        // A full map evicts the oldest entry: that request's span only
        // lacks its route.
        let _ = HTTP2_REQUESTS.insert(&h2_request_key(response), &request, 0);
    }
    crate::propagate::server_start(cookie, &hdr, response, KIND_SERVER_IDS);
    // A request with a header map may carry a trace context: search for it
    // in a program of its own, so the verifier checks the search apart from
    // this one. The callee reads the request and response pointers from the
    // same registers: nothing is handed over in shared memory, which another
    // task could overwrite if this one were preempted in between.
    if off.map_layout != MAP_LAYOUT_NONE && headers.is_some_and(|map| map != 0) {
        // SAFETY: the callee is a program of the same type; when the call
        // fails (no program in the slot), this one just returns.
        unsafe { HTTP_TAIL.tail_call(ctx, TAIL_TRACEPARENT) };
    }
}

/// The tail of [`start`] for a request with headers: finds `Traceparent`
/// and, when there is one, writes it in a record of its own.
///
/// Its working memory is this CPU's `HTTP_HEADERS` value. Programs on
/// uprobes can be preempted (on kernels with full preemption), and another
/// task's run on this CPU would then write the same memory: each run bumps
/// the value's sequence number first and checks it last, after copying the
/// header into its record, and drops what an interleaved run may have
/// mixed up rather than attribute one request's header to another.
pub fn traceparent(ctx: &ProbeContext) {
    let Some(run) = HeaderRun::begin(ctx) else {
        return;
    };
    let len = match find_header(
        run.off,
        run.map,
        &TRACEPARENT_KEY,
        &mut run.search.scan,
        &mut run.search.scratch,
        &mut run.search.value,
    ) {
        Search::Found(len) => len,
        Search::Absent if run.undisturbed() => return,
        Search::Absent | Search::Incomplete => {
            count(stats::HEADERS_INCOMPLETE);
            return;
        }
    };
    let Some(mut entry) = reserve::<HttpTraceparent>(KIND_HTTP_TRACEPARENT) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(run.cookie, KIND_HTTP_TRACEPARENT, 0);
    rec.response = run.response;
    rec.len = len;
    rec._pad = 0;
    rec.value = run.search.value;
    if let Some(goid) = goid(ctx, run.off.g_goid)
        && crate::propagate::adopt_traceparent(run.cookie, goid, &rec.value, len)
    {
        rec._pad = TRACEPARENT_ADOPTED;
    }
    if run.undisturbed() {
        let now = rec.header.ktime_ns;
        submit(entry, now);
    } else {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        count(stats::HEADERS_INCOMPLETE);
        return;
    }
    // A trace context may come with vendor state: search for it in a
    // program of its own too (a request without `Traceparent` has none
    // worth keeping, so most requests never get here).
    // SAFETY: as in `start`.
    unsafe { HTTP_TAIL.tail_call(ctx, TAIL_TRACESTATE) };
}

/// What a header search starts from, the same for each of them: the probe's
/// configuration, the response (which pairs its record with the start), the
/// request's header map, and this CPU's working memory with the sequence
/// number this run set in it (see [`traceparent`]).
struct HeaderRun {
    cookie: u64,
    off: &'static HttpOffsets,
    response: u64,
    map: u64,
    search: &'static mut HeaderSearch,
    seq: u64,
}

impl HeaderRun {
    /// Reads the request and response from the registers (nothing is
    /// handed over from the program that tail-called this one) and bumps
    /// the working memory's sequence number. `None` when there is nothing
    /// to search; a header map that cannot be read is counted.
    #[inline(always)]
    fn begin(ctx: &ProbeContext) -> Option<Self> {
        let cookie = cookie(ctx);
        let off = &config(cookie)?.offsets;
        let request = reg(ctx, Reg::Rdi);
        let response = reg(ctx, Reg::Rcx);
        let Some(map) = read_field::<u64>(request, off.request_header) else {
            count(stats::HEADERS_INCOMPLETE);
            return None;
        };
        let search = HTTP_HEADERS.get_ptr_mut(0)?;
        // SAFETY: this CPU's value of the map; other runs on this CPU are
        // detected by the sequence number (see `traceparent`).
        let search = unsafe { &mut *search };
        let seq = search.seq.begin();
        Some(Self {
            cookie,
            off,
            response,
            map,
            search,
            seq,
        })
    }

    /// Whether no other run wrote the working memory since this one began.
    #[inline(always)]
    fn undisturbed(&self) -> bool {
        self.search.seq.undisturbed(self.seq)
    }
}

/// The tail of [`traceparent`] when it found one: finds `Tracestate` and,
/// when there is one, writes it in a record of its own. Its value is copied
/// straight into the record, which is reserved first and discarded when
/// there is nothing to send; the working memory and the interleaving check
/// are those of [`traceparent`].
pub fn tracestate(ctx: &ProbeContext) {
    let Some(run) = HeaderRun::begin(ctx) else {
        return;
    };
    let Some(mut entry) = reserve::<HttpTracestate>(KIND_HTTP_TRACESTATE) else {
        return;
    };
    let rec = fields(&mut entry);
    let found = find_header(
        run.off,
        run.map,
        &TRACESTATE_KEY,
        &mut run.search.scan,
        &mut run.search.scratch,
        &mut rec.value,
    );
    match found {
        Search::Found(len) if run.undisturbed() => {
            if let Some(goid) = goid(ctx, run.off.g_goid) {
                crate::propagate::keep_tracestate(run.cookie, goid, &rec.value, len);
            }
            rec.header = header(run.cookie, KIND_HTTP_TRACESTATE, 0);
            rec.response = run.response;
            rec.len = len;
            rec._pad = 0;
            let now = rec.header.ktime_ns;
            submit(entry, now);
        }
        Search::Absent if run.undisturbed() => entry.discard(BPF_RB_NO_WAKEUP as u64),
        _ => {
            entry.discard(BPF_RB_NO_WAKEUP as u64);
            count(stats::HEADERS_INCOMPLETE);
        }
    }
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
    read: impl FnOnce(&HttpOffsets, u64, &mut [u8; PATTERN_CAP]) -> EndFields,
) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let response = reg(ctx, Reg::Rax);
    if crate::propagate::enabled(cookie)
        && let Some(goid) = goid(ctx, off.g_goid)
    {
        crate::propagate::server_end(cookie, goid);
    }
    let Some(mut entry) = reserve::<HttpServerEnd>(KIND_HTTP_SERVER_END) else {
        return;
    };
    let rec = fields(&mut entry);
    // No goroutine id: the agent pairs the end by `response`.
    rec.header = header(cookie, KIND_HTTP_SERVER_END, 0);
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
    let now = rec.header.ktime_ns;
    submit(entry, now);
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

/// `func (w *http2responseWriter) handlerDone()` (Go 1.27+: `func (w
/// *responseWriter) handlerDone()` of net/http/internal/http2): RAX = w.
/// Status and body size live in `w.rws` (a `responseWriterState`), still
/// set here.
pub fn end_h2(ctx: &ProbeContext) {
    end_record(ctx, |off, writer, _| {
        let state = read_field::<u64>(writer, off.h2_writer_rws).unwrap_or(0);
        let request = if h2_request_at_start(off) {
            let key = h2_request_key(writer);
            // SAFETY: the value is copied out before the entry is removed.
            let request = unsafe { HTTP2_REQUESTS.get(&key) }.copied();
            let _ = HTTP2_REQUESTS.remove(&key);
            request
        } else {
            read_field::<u64>(state, off.h2_state_req)
        };
        EndFields {
            status: read_field::<u64>(state, off.h2_state_status),
            written: read_field::<u64>(state, off.h2_state_wrote_bytes),
            request,
        }
    });
}
