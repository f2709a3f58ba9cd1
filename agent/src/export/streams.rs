//! Streams: the spans of one resource in a pipeline several producers
//! share (host mode's targets, each with its own `service.name` and
//! `process.pid`). Each stream is encoded as a `ResourceSpans` of its own
//! in every batch, and counted apart: what it queued, what the full queue
//! dropped, and what each sink delivered and failed of it, so a target's
//! counts are its own and exact while the pipeline runs on.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::{ExportSnapshot, OutputCount, OutputKind};

/// One resource's spans: its encoded `Resource` and its counts.
#[derive(Debug)]
pub(super) struct Stream {
    pub(super) resource: Vec<u8>,
    queued: AtomicU64,
    dropped_queue_full: AtomicU64,
    /// Per sink, in the pipeline's order: its kind, delivered, failed.
    sinks: Box<[(OutputKind, AtomicU64, AtomicU64)]>,
}

impl Stream {
    pub(super) fn new(resource: Vec<u8>, sinks: &[OutputKind]) -> Self {
        Self {
            resource,
            queued: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            sinks: sinks
                .iter()
                .map(|&kind| (kind, AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
        }
    }

    pub(super) fn accepted(&self, accepted: bool, spans: u64) {
        let counter = if accepted {
            &self.queued
        } else {
            &self.dropped_queue_full
        };
        counter.fetch_add(spans, Ordering::Relaxed);
    }

    /// Sink `sink` delivered (or failed) `spans` of this stream.
    pub(super) fn exported(&self, sink: usize, spans: u64, delivered: bool) {
        if let Some((_, ok, failed)) = self.sinks.get(sink) {
            let counter = if delivered { ok } else { failed };
            counter.fetch_add(spans, Ordering::Relaxed);
        }
    }
}

/// What a stream's producer reads of it: its counts, whether every span
/// it queued has been delivered or failed by every sink.
#[derive(Clone, Debug)]
pub struct StreamCounts(pub(super) Arc<Stream>);

impl StreamCounts {
    /// Its counts now, as [`super::Pipeline::snapshot`] counts the
    /// pipeline's.
    pub fn snapshot(&self) -> ExportSnapshot {
        let stream = &self.0;
        let mut outputs = [OutputCount::default(); 3];
        let mut exported = None::<u64>;
        let mut failed_worst = 0;
        for (kind, delivered, failed) in stream.sinks.iter() {
            let (delivered, failed) = (
                delivered.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
            );
            let out = &mut outputs[kind.index()];
            out.configured = true;
            out.written += delivered;
            out.failed += failed;
            exported = Some(exported.map_or(delivered, |e| e.min(delivered)));
            failed_worst = failed_worst.max(failed);
        }
        ExportSnapshot {
            outputs,
            queued: stream.queued.load(Ordering::Relaxed),
            exported: exported.unwrap_or(0),
            dropped_queue_full: stream.dropped_queue_full.load(Ordering::Relaxed),
            dropped_export_failed: failed_worst,
        }
    }

    /// Every span it queued is delivered or failed, by every sink.
    pub fn settled(&self) -> bool {
        let queued = self.0.queued.load(Ordering::Relaxed);
        self.0.sinks.iter().all(|(_, delivered, failed)| {
            delivered.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= queued
        })
    }

    /// After the pipeline has shut down: what a sink was handed and neither
    /// wrote nor dropped is lost now, for that sink.
    pub fn abandon_unsettled(&self) {
        let queued = self.0.queued.load(Ordering::Relaxed);
        for (_, delivered, failed) in self.0.sinks.iter() {
            let accounted = delivered.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
            failed.fetch_add(queued.saturating_sub(accounted), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::KeyValue;
    use opentelemetry_sdk::Resource;

    use crate::export::{
        BatchConfig, EncodedSpan, ExportConfig, Output, Pipeline, config::BatchSettings,
    };

    fn resource(pid: i64) -> Resource {
        Resource::builder_empty()
            .with_attribute(KeyValue::new("process.pid", pid))
            .build()
    }

    /// A pipeline of process 1 writing JSONL to `path` (on the current
    /// runtime).
    fn jsonl_pipeline(path: &std::path::Path, batch: BatchConfig) -> Pipeline {
        let config = ExportConfig {
            outputs: vec![Output::Jsonl(Some(path.to_owned()))],
            batch: BatchSettings::default(),
        };
        Pipeline::start(&config, &resource(1), batch).expect("pipeline")
    }

    #[test]
    fn each_stream_is_a_resource_of_its_own_and_counted_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spans.jsonl");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (a, b, total) = runtime.block_on(async {
            let pipeline = jsonl_pipeline(
                &path,
                BatchConfig {
                    max_delay: Duration::from_millis(10),
                    ..BatchConfig::default()
                },
            );
            let a = pipeline.sender().for_resource(&resource(2));
            let b = pipeline.sender().for_resource(&resource(3));
            let span = || EncodedSpan {
                scope: super::super::encode_scope(
                    &opentelemetry::InstrumentationScope::builder("t").build(),
                ),
                bytes: Vec::new(),
            };
            for _ in 0..3 {
                a.send_encoded(span());
            }
            for _ in 0..2 {
                b.send_encoded(span());
            }
            let counts = (a.counts(), b.counts());
            // Every sender gone: the queue ends.
            drop((a, b));
            let (a, b) = counts;
            let total = pipeline.shutdown(Duration::from_secs(2)).await;
            (a, b, total)
        });
        assert!(a.settled() && b.settled());
        assert_eq!((a.snapshot().queued, a.snapshot().exported), (3, 3));
        assert_eq!((b.snapshot().queued, b.snapshot().exported), (2, 2));
        assert_eq!(total.exported, 5);
        // One request, a ResourceSpans per stream, under its own resource.
        let text = std::fs::read_to_string(&path).expect("jsonl");
        let pids: Vec<(String, usize)> = text
            .lines()
            .flat_map(|line| {
                let request: serde_json::Value = serde_json::from_str(line).expect("json");
                request["resourceSpans"]
                    .as_array()
                    .expect("resourceSpans")
                    .iter()
                    .map(|rs| {
                        let pid = rs["resource"]["attributes"][0]["value"]["intValue"].to_string();
                        let spans = rs["scopeSpans"][0]["spans"].as_array().map_or(0, Vec::len);
                        (pid, spans)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            pids,
            [("\"2\"".to_owned(), 3), ("\"3\"".to_owned(), 2)],
            "{text}"
        );
    }

    #[test]
    fn chunks_are_exported_whole_and_counted_within_the_queue_capacity() {
        use crate::export::{SpanChunk, wire::SpanWriter};

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spans.jsonl");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let scope =
            super::super::encode_scope(&opentelemetry::InstrumentationScope::builder("t").build());
        let chunk = |names: &[String]| {
            let mut c = SpanChunk {
                scope: scope.clone(),
                ..SpanChunk::default()
            };
            for name in names {
                SpanWriter::new(&mut c.bytes).name(&[name]);
                c.ends.push(c.bytes.len() as u32);
            }
            c
        };
        let total = runtime.block_on(async {
            // A queue of 4 spans and batches of 4: chunks of 3 wait for
            // room, and one of 6, larger than either, goes in two parts.
            let pipeline = jsonl_pipeline(
                &path,
                BatchConfig {
                    max_delay: Duration::from_millis(5),
                    queue_capacity: 4,
                    max_batch: 4,
                    ..BatchConfig::default()
                },
            );
            let sender = pipeline.sender();
            let chunks: Vec<SpanChunk> = (0..20)
                .map(|c| {
                    let n = if c == 7 { 6 } else { 3 };
                    chunk(&(0..n).map(|i| format!("{c}.{i}")).collect::<Vec<_>>())
                })
                .collect();
            let producer = std::thread::spawn(move || {
                for c in chunks {
                    sender.send_chunk_blocking(c);
                }
            });
            tokio::task::spawn_blocking(move || producer.join())
                .await
                .expect("join")
                .expect("producer");
            pipeline.shutdown(Duration::from_secs(5)).await
        });
        let spans = 19 * 3 + 6;
        assert_eq!((total.queued, total.exported), (spans, spans));
        assert_eq!(total.dropped(), 0);
        let text = std::fs::read_to_string(&path).expect("jsonl");
        // No request holds more than a batch's 4 spans: chunks are split
        // (the one of 6) and not broken across batches otherwise.
        for line in text.lines() {
            let request: serde_json::Value = serde_json::from_str(line).expect("json");
            let n = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .map_or(0, Vec::len);
            assert!((1..=4).contains(&n), "{n} spans in one request");
        }
        let names: Vec<String> = text
            .lines()
            .flat_map(|line| {
                let request: serde_json::Value = serde_json::from_str(line).expect("json");
                request["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .expect("spans")
                    .iter()
                    .map(|s| s["name"].as_str().expect("name").to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected: Vec<String> = (0..20)
            .flat_map(|c| {
                let n = if c == 7 { 6 } else { 3 };
                (0..n).map(move |i| format!("{c}.{i}"))
            })
            .collect();
        // All of them, in order, each chunk whole.
        assert_eq!(names, expected);
    }
}
