//! The flight-recorder family in a session: planned on the Go binary,
//! attached through [`Probes`], its dumps read from their own ring buffer on
//! a thread of their own ([`FlightReader`]) and exported with the session's
//! spans. It owns no kind of the shared ring buffer.

use super::{
    DumpSpanOptions, FlightAttachment, FlightPlan, FlightReader, ReaderConfig, ReaderStats,
};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    binary::error_chain,
    export::SpanSender,
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    gotrace::SpanBatch,
    instrument::Category,
    probes::{KernelStats, LoadOptions, Probes},
    spans::Sampler,
    target::Target,
};

/// The family's name.
pub const NAME: &str = "flight-recorder";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: &[],
    plan: plan_family,
    categories: &[Category::Flight],
};

/// The dump ring's size when the family is attached: 16 MiB holds a
/// default-size (10 MiB) dump even if it is not drained while written.
const RING_BYTES: u32 = 16 << 20;

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    if !ctx.options.flight_recorder {
        return Plan::Nothing;
    }
    let Ok(bin) = ctx.go else {
        return Plan::Nothing;
    };
    match super::plan(bin) {
        Ok(Some(plan)) => Plan::Ready(Box::new(Flight {
            plan,
            save_dumps: ctx.options.save_dumps.clone(),
            period_min: ctx.options.period_min,
            slow_options: ctx.options.slow_dumps.clone(),
            slow: None,
            pid: 0,
            attachment: None,
            reader: None,
            stats: None,
            sampler: ctx.options.sampler,
            sampled_out: Arc::default(),
        })),
        Ok(None) => Plan::Nothing,
        Err(err) => Plan::Absent {
            why: format!(
                "flight-recorder dumps will not be captured: {}",
                error_chain(&err)
            ),
            level: log::Level::Warn,
        },
    }
}

/// The family, planned for one process.
#[derive(Debug)]
pub struct Flight {
    plan: FlightPlan,
    save_dumps: Option<std::path::PathBuf>,
    period_min: std::time::Duration,
    /// `--dump-on-slow`, and its watch once started.
    slow_options: Option<super::slow::SlowDumpOptions>,
    slow: Option<Arc<super::slow::SlowDumps>>,
    /// The target's PID, once attached.
    pid: u32,
    attachment: Option<FlightAttachment>,
    reader: Option<FlightReader>,
    /// The reader's counters, once it has stopped.
    stats: Option<ReaderStats>,
    /// Which traces are exported: a dump's spans carry trace ids of their
    /// own (no remote parent), each decided by its trace id alone, so a
    /// trace of a dump is exported whole or not at all.
    sampler: Sampler,
    /// Spans of dumps not exported because their trace was sampled out
    /// (counted on the reader's thread).
    sampled_out: Arc<AtomicU64>,
}

impl Family for Flight {
    fn name(&self) -> &'static str {
        NAME
    }

    fn configure_load(&self, options: &mut LoadOptions) {
        options.flight_ring_bytes = RING_BYTES;
    }

    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError> {
        let attachment = super::attach(probes, target, target.slot, &self.plan).map_err(|err| {
            FamilyError::from(format!(
                "cannot attach to the flight recorder of PID {}: {}",
                target.pid,
                error_chain(&err)
            ))
        })?;
        log::info!(
            "flight recorder: {} probes on WriteTo and its writes",
            attachment.probes()
        );
        self.attachment = Some(attachment);
        self.pid = target.pid;
        Ok(())
    }

    /// Dumps are reassembled and decoded on a thread of their own: decoding
    /// a 10 MiB dump takes about a second and must not hold the event loop.
    fn start(&mut self, probes: &mut Probes, spans: &SpanSender) -> Result<(), FamilyError> {
        let ring = super::take_ring_buffer(probes)?;
        let sender = spans.clone();
        let (sampler, sampled_out) = (self.sampler, Arc::clone(&self.sampled_out));
        let reader = FlightReader::spawn(
            ring,
            ReaderConfig {
                save_dir: self.save_dumps.clone(),
                spans: DumpSpanOptions {
                    recent: Some(spans.keep_recent()),
                    period_min: self.period_min,
                    ..DumpSpanOptions::default()
                },
                ..ReaderConfig::default()
            },
            move |mut batch: SpanBatch| {
                let before = batch.len();
                batch.retain(|trace_id| sampler.should_sample(trace_id, None));
                sampled_out.fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
                sender.send_chunk_blocking(batch.into_chunk());
            },
        )
        .map_err(|err| format!("cannot start the flight-recorder reader: {err}"))?;
        if let Some(attachment) = &self.attachment {
            reader.watch(attachment);
        }
        self.reader = Some(reader);
        if let Some(options) = self.slow_options.clone() {
            let slow = Arc::new(super::slow::SlowDumps::new(options, self.pid));
            let watcher = Arc::clone(&slow);
            if spans.watch(crate::export::SpanWatch(Arc::new(move |bytes| {
                watcher.observe(bytes)
            }))) {
                self.slow = Some(slow);
            } else {
                log::warn!("--dump-on-slow: the pipeline is watched already; not armed");
            }
        }
        Ok(())
    }

    fn on_record(&mut self, _bytes: &[u8], _cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        Err("flight-recorder records travel in their own ring buffer".into())
    }

    /// Dumps are captured whole or counted: nothing to pair.
    fn stop_at(&mut self, _at_ns: u64) {}

    fn stop(&mut self, probes: &mut Probes) {
        if let Some(attachment) = self.attachment.take()
            && let Err(err) = attachment.detach(probes)
        {
            log::warn!(
                "detaching the flight-recorder probes: {}",
                error_chain(&err)
            );
        }
        if let Some(reader) = self.reader.take() {
            self.stats = Some(reader.stop());
        }
    }

    fn sampled_out(&self) -> u64 {
        self.sampled_out.load(Ordering::Relaxed)
    }

    fn counters(&self, _kernel: &KernelStats, out: &mut Vec<Counter>) {
        let f = self.stats.unwrap_or_default();
        out.extend([
            Counter::count("flight_dumps", f.dumps),
            Counter::count("flight_dumps_complete", f.complete),
            Counter::quiet_loss("flight_dumps_incomplete", f.incomplete),
            Counter::quiet_loss("flight_dumps_dropped", f.dropped_dumps),
            Counter::quiet_loss("flight_dumps_failed", f.errors),
            Counter::count("flight_spans", f.spans),
        ]);
        if let Some(slow) = &self.slow {
            slow.counters(out);
        }
    }

    fn summary(&self) -> Option<String> {
        let f = self.stats?;
        let mut line = format!(
            "flight-recorder dumps: {} ({} complete, {} incomplete, {} dropped, {} failed to decode or save)",
            f.dumps, f.complete, f.incomplete, f.dropped_dumps, f.errors
        );
        if let Some(slow) = &self.slow {
            line.push_str(", ");
            line.push_str(&slow.summary());
        }
        Some(line)
    }
}
