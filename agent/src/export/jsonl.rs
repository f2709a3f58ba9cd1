//! OTLP JSON lines: one `ExportTraceServiceRequest` per line, as the
//! OpenTelemetry Collector's file exporter writes them.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};

enum Destination {
    Stdout,
    File(BufWriter<File>),
}

/// Appends OTLP JSON lines to a file or stdout.
pub struct JsonlExporter {
    path: Option<PathBuf>,
    out: Mutex<Destination>,
    resource: ResourceAttributesWithSchema,
}

impl std::fmt::Debug for JsonlExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlExporter")
            .field("path", &self.path)
            .finish()
    }
}

/// Encodes one batch as one OTLP JSON line (without the newline).
pub fn spans_to_json_line(
    batch: Vec<SpanData>,
    resource: &ResourceAttributesWithSchema,
) -> Result<String, serde_json::Error> {
    let request = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(batch, resource),
    };
    serde_json::to_string(&request)
}

impl JsonlExporter {
    /// Opens `path` for appending (created if missing); stdout when `None`.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let out = match path {
            None => Destination::Stdout,
            Some(path) => Destination::File(BufWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        };
        Ok(Self {
            path: path.map(Path::to_path_buf),
            out: Mutex::new(out),
            resource: ResourceAttributesWithSchema::from(&Resource::builder_empty().build()),
        })
    }

    /// Where the lines go, for messages.
    pub fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string())
    }
}

impl SpanExporter for JsonlExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut line = spans_to_json_line(batch, &self.resource)
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        line.push('\n');
        let mut out = self
            .out
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("JSONL writer poisoned".into()))?;
        let result = match &mut *out {
            Destination::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(line.as_bytes())
                    .and_then(|()| stdout.flush())
            }
            Destination::File(file) => file.write_all(line.as_bytes()).and_then(|()| file.flush()),
        };
        result.map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        if let Ok(mut out) = self.out.lock()
            && let Destination::File(file) = &mut *out
        {
            file.flush()
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = ResourceAttributesWithSchema::from(resource);
    }
}
