//! OTLP JSON lines: one `ExportTraceServiceRequest` per line, as the
//! OpenTelemetry Collector's file exporter writes them.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

enum Destination {
    Stdout,
    File(BufWriter<File>),
}

/// Appends OTLP JSON lines to a file or stdout.
pub struct JsonlExporter {
    path: Option<PathBuf>,
    out: Mutex<Destination>,
}

impl std::fmt::Debug for JsonlExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlExporter")
            .field("path", &self.path)
            .finish()
    }
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
        })
    }

    /// Where the lines go, for messages.
    pub fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string())
    }

    /// Writes one encoded request as one line, flushed: transcoded straight
    /// from the protobuf ([`super::otlp_json`]), or through prost and serde
    /// for what the transcoder does not know.
    pub fn export_encoded(&self, request: &[u8]) -> Result<(), String> {
        let mut line = Vec::with_capacity(request.len() * 2);
        if let Err(err) = super::otlp_json::write_request(request, &mut line) {
            log::debug!("{err}; writing JSON through the message types");
            let decoded = ExportTraceServiceRequest::decode(request).map_err(|e| e.to_string())?;
            line.clear();
            serde_json::to_writer(&mut line, &decoded).map_err(|e| e.to_string())?;
        }
        line.push(b'\n');
        self.write_line(&line)
    }

    fn write_line(&self, line: &[u8]) -> Result<(), String> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| "JSONL writer poisoned".to_owned())?;
        let result = match &mut *out {
            Destination::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(line).and_then(|()| stdout.flush())
            }
            Destination::File(file) => file.write_all(line).and_then(|()| file.flush()),
        };
        result.map_err(|e| e.to_string())
    }

    /// Flushes the file.
    pub fn flush(&self) -> Result<(), String> {
        if let Ok(mut out) = self.out.lock()
            && let Destination::File(file) = &mut *out
        {
            file.flush().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
