//! Human-readable span output: one block per trace, children indented under
//! their parents, attributes on the line below.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    io::Write as _,
    sync::Mutex,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};

/// Prints spans to standard output (or any writer).
pub struct ConsoleExporter {
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl std::fmt::Debug for ConsoleExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleExporter").finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

fn push_time_of_day(out: &mut String, unix_ns: u64) {
    let secs = unix_ns / 1_000_000_000;
    let micros = unix_ns % 1_000_000_000 / 1_000;
    let day = secs % 86_400;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{micros:06}",
        day / 3600,
        day / 60 % 60,
        day % 60
    );
}

fn push_value(out: &mut String, v: &AnyValue) {
    match &v.value {
        Some(Value::StringValue(s)) => out.push_str(s),
        Some(Value::IntValue(i)) => out.push_str(itoa::Buffer::new().format(*i)),
        Some(Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::DoubleValue(d)) => {
            let _ = write!(out, "{d}");
        }
        Some(Value::ArrayValue(a)) => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, v);
            }
            out.push(']');
        }
        Some(Value::BytesValue(b)) => push_hex(out, b),
        Some(other) => {
            let _ = write!(out, "{other:?}");
        }
        None => {}
    }
}

fn push_attrs(out: &mut String, kvs: &[KeyValue]) {
    for (i, kv) in kvs.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&kv.key);
        out.push('=');
        if let Some(v) = &kv.value {
            push_value(out, v);
        }
    }
}

const KINDS: [&str; 6] = [
    "Unspecified",
    "Internal",
    "Server",
    "Client",
    "Producer",
    "Consumer",
];

fn push_indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn write_span(out: &mut String, span: &Span, depth: usize) {
    let duration_ms = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1e6;
    let kind = usize::try_from(span.kind)
        .ok()
        .and_then(|k| KINDS.get(k))
        .unwrap_or(&"Unspecified");
    push_indent(out, depth);
    out.push_str(&span.name);
    out.push(' ');
    out.push_str(kind);
    out.push(' ');
    push_time_of_day(out, span.start_time_unix_nano);
    let _ = write!(out, " +{duration_ms:.3}ms span=");
    push_hex(out, &span.span_id);
    match &span.status {
        Some(s) if s.code == 2 && s.message.is_empty() => out.push_str(" ERROR"),
        Some(s) if s.code == 2 => {
            out.push_str(" ERROR(");
            out.push_str(&s.message);
            out.push(')');
        }
        Some(s) if s.code == 1 => out.push_str(" OK"),
        _ => {}
    }
    out.push('\n');
    if !span.attributes.is_empty() {
        push_indent(out, depth);
        out.push_str("    ");
        push_attrs(out, &span.attributes);
        out.push('\n');
    }
    for event in &span.events {
        push_indent(out, depth);
        out.push_str("    * ");
        push_time_of_day(out, event.time_unix_nano);
        out.push(' ');
        out.push_str(&event.name);
        out.push(' ');
        push_attrs(out, &event.attributes);
        out.push('\n');
    }
}

/// Renders a request: traces in order of first appearance, each as a tree.
pub fn render(request: &ExportTraceServiceRequest) -> String {
    let spans: Vec<&Span> = request
        .resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .collect();
    let mut out = String::new();
    let mut traces: Vec<&[u8]> = Vec::new();
    let mut by_trace: HashMap<&[u8], Vec<&Span>> = HashMap::new();
    for span in spans {
        by_trace
            .entry(span.trace_id.as_slice())
            .or_insert_with(|| {
                traces.push(span.trace_id.as_slice());
                Vec::new()
            })
            .push(span);
    }
    for trace_id in traces {
        let spans = &by_trace[trace_id];
        let _ = writeln!(out, "trace {}", hex(trace_id));
        let ids: HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
        let mut children: HashMap<&[u8], Vec<&Span>> = HashMap::new();
        let mut roots = Vec::new();
        for span in spans {
            if !span.parent_span_id.is_empty() && ids.contains(span.parent_span_id.as_slice()) {
                children
                    .entry(span.parent_span_id.as_slice())
                    .or_default()
                    .push(span);
            } else {
                roots.push(*span);
            }
        }
        roots.sort_by_key(|s| s.start_time_unix_nano);
        let mut stack: Vec<(&Span, usize)> = roots.into_iter().rev().map(|s| (s, 1)).collect();
        while let Some((span, depth)) = stack.pop() {
            write_span(&mut out, span, depth);
            if let Some(kids) = children.get(span.span_id.as_slice()) {
                let mut kids = kids.clone();
                kids.sort_by_key(|s| s.start_time_unix_nano);
                stack.extend(kids.into_iter().rev().map(|s| (s, depth + 1)));
            }
        }
    }
    out
}

impl ConsoleExporter {
    /// An exporter writing to stdout.
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// An exporter writing to `out`.
    pub fn to_writer(out: Box<dyn std::io::Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    /// Prints one request.
    pub fn export(&self, request: &ExportTraceServiceRequest) -> Result<(), String> {
        let text = render(request);
        let mut out = self
            .out
            .lock()
            .map_err(|_| "console writer poisoned".to_owned())?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::ArrayValue,
        trace::v1::{ResourceSpans, ScopeSpans, Status, span::Event},
    };

    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            key_strindex: 0,
        }
    }

    #[test]
    fn renders_a_tree_with_attributes_events_and_status() {
        let parent = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            name: "GET /users/{id}".into(),
            kind: 2,
            // 01:02:03.000004 on some day.
            start_time_unix_nano: 86_400_000_000_000 * 3 + 3_723_000_004_000,
            end_time_unix_nano: 86_400_000_000_000 * 3 + 3_723_001_504_000,
            attributes: vec![
                kv("http.response.status_code", Value::IntValue(500)),
                kv("ok", Value::BoolValue(false)),
                kv(
                    "list",
                    Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(Value::StringValue("a".into())),
                        }],
                    }),
                ),
            ],
            events: vec![Event {
                time_unix_nano: 86_400_000_000_000 * 3 + 3_723_001_000_000,
                name: "exception".into(),
                attributes: vec![kv("exception.type", Value::StringValue("E".into()))],
                dropped_attributes_count: 0,
            }],
            status: Some(Status {
                message: "boom".into(),
                code: 2,
            }),
            ..Span::default()
        };
        let child = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![1; 8],
            name: "SELECT".into(),
            kind: 3,
            start_time_unix_nano: parent.start_time_unix_nano + 1_000,
            end_time_unix_nano: parent.start_time_unix_nano + 2_000,
            ..Span::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![child, parent],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        assert_eq!(
            render(&request),
            "trace abababababababababababababababab\n\
             \x20 GET /users/{id} Server 01:02:03.000004 +1.500ms span=0101010101010101 ERROR(boom)\n\
             \x20     http.response.status_code=500 ok=false list=[a]\n\
             \x20     * 01:02:03.001000 exception exception.type=E\n\
             \x20   SELECT Client 01:02:03.000005 +0.001ms span=0202020202020202\n"
        );
    }
}
