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
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn time_of_day(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = unix_ns % 1_000_000_000 / 1_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        day / 3600,
        day / 60 % 60,
        day % 60
    )
}

fn value(v: &AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(a)) => format!(
            "[{}]",
            a.values.iter().map(value).collect::<Vec<_>>().join(",")
        ),
        Some(Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> String {
    kvs.iter()
        .map(|kv| {
            format!(
                "{}={}",
                kv.key,
                kv.value.as_ref().map(value).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

const KINDS: [&str; 6] = [
    "Unspecified",
    "Internal",
    "Server",
    "Client",
    "Producer",
    "Consumer",
];

fn write_span(out: &mut String, span: &Span, depth: usize) {
    let indent = "  ".repeat(depth);
    let duration_ms = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1e6;
    let kind = usize::try_from(span.kind)
        .ok()
        .and_then(|k| KINDS.get(k))
        .unwrap_or(&"Unspecified");
    let status = match &span.status {
        Some(s) if s.code == 2 && s.message.is_empty() => " ERROR".to_owned(),
        Some(s) if s.code == 2 => format!(" ERROR({})", s.message),
        Some(s) if s.code == 1 => " OK".to_owned(),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{indent}{} {kind} {} +{duration_ms:.3}ms span={}{status}",
        span.name,
        time_of_day(span.start_time_unix_nano),
        hex(&span.span_id),
    );
    if !span.attributes.is_empty() {
        let _ = writeln!(out, "{indent}    {}", attrs(&span.attributes));
    }
    for event in &span.events {
        let _ = writeln!(
            out,
            "{indent}    * {} {} {}",
            time_of_day(event.time_unix_nano),
            event.name,
            attrs(&event.attributes)
        );
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
