//! Human-readable span output: one block per trace, children indented under
//! their parents.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry::trace::{SpanId, Status};
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};

/// Prints spans to standard output.
pub struct ConsoleExporter {
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl std::fmt::Debug for ConsoleExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleExporter").finish_non_exhaustive()
    }
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
}

fn time_of_day(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_micros()
    )
}

fn write_span(out: &mut String, span: &SpanData, depth: usize) {
    let indent = "  ".repeat(depth);
    let duration = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    let status = match &span.status {
        Status::Unset => String::new(),
        Status::Ok => " OK".to_owned(),
        Status::Error { description } if description.is_empty() => " ERROR".to_owned(),
        Status::Error { description } => format!(" ERROR({description})"),
    };
    let _ = writeln!(
        out,
        "{indent}{} {:?} {} +{:.3}ms span={}{status}",
        span.name,
        span.span_kind,
        time_of_day(span.start_time),
        duration.as_secs_f64() * 1e3,
        span.span_context.span_id(),
    );
    if !span.attributes.is_empty() {
        let attrs: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        let _ = writeln!(out, "{indent}    {}", attrs.join(" "));
    }
    for event in span.events.iter() {
        let attrs: Vec<String> = event
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        let _ = writeln!(
            out,
            "{indent}    * {} {} {}",
            time_of_day(event.timestamp),
            event.name,
            attrs.join(" ")
        );
    }
}

/// Renders a batch: traces in order of first appearance, each as a tree.
pub fn render(batch: &[SpanData]) -> String {
    let mut out = String::new();
    let mut traces: Vec<_> = Vec::new();
    let mut by_trace: HashMap<_, Vec<&SpanData>> = HashMap::new();
    for span in batch {
        let trace_id = span.span_context.trace_id();
        by_trace
            .entry(trace_id)
            .or_insert_with(|| {
                traces.push(trace_id);
                Vec::new()
            })
            .push(span);
    }
    for trace_id in traces {
        let spans = &by_trace[&trace_id];
        let _ = writeln!(out, "trace {trace_id}");
        let ids: std::collections::HashSet<SpanId> =
            spans.iter().map(|s| s.span_context.span_id()).collect();
        let mut children: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
        let mut roots = Vec::new();
        for span in spans {
            if span.parent_span_id != SpanId::INVALID && ids.contains(&span.parent_span_id) {
                children.entry(span.parent_span_id).or_default().push(span);
            } else {
                roots.push(*span);
            }
        }
        let mut stack: Vec<(&SpanData, usize)> = roots.into_iter().rev().map(|s| (s, 1)).collect();
        while let Some((span, depth)) = stack.pop() {
            write_span(&mut out, span, depth);
            if let Some(kids) = children.get(&span.span_context.span_id()) {
                let mut kids = kids.clone();
                kids.sort_by_key(|s| s.start_time);
                stack.extend(kids.into_iter().rev().map(|s| (s, depth + 1)));
            }
        }
    }
    out
}

impl SpanExporter for ConsoleExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let text = render(&batch);
        let mut out = self
            .out
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("console writer poisoned".into()))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
    }
}
