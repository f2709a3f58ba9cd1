//! Everything a session counts, in one list: the exit line, the periodic
//! loss report and `--summary-file` all read [`Counters::list`].

use crate::{
    export::{ExportSnapshot, OutputKind},
    family::{Counter, Family},
    probes::KernelStats,
};

/// The session's own counters; the families add theirs.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionCounts {
    pub kernel: KernelStats,
    pub export: ExportSnapshot,
    /// Records no family could decode (or of a kind none declared).
    pub bad_records: u64,
}

/// The counters of a session and its families at one moment.
#[derive(Debug)]
pub struct Counters {
    list: Vec<Counter>,
    summaries: Vec<String>,
}

impl Counters {
    /// Collects the session's counters, then every family's in registry
    /// order, then the export's.
    pub fn collect(counts: &SessionCounts, families: &[Box<dyn Family>]) -> Self {
        let SessionCounts {
            kernel,
            export,
            bad_records,
        } = counts;
        let mut list = vec![
            Counter::count("spans_exported", export.exported),
            Counter::count("records", kernel.events_written),
            Counter::loss(
                "ringbuf_full",
                "ring buffer full",
                " records",
                kernel.ringbuf_full,
            ),
            Counter::loss(
                "interleaved",
                "records dropped by preempted probes",
                "",
                kernel.interleaved,
            ),
            Counter::loss("bad_records", "unreadable records", "", *bad_records),
        ];
        let mut summaries = Vec::new();
        let mut sampled_out = 0;
        for family in families {
            family.counters(kernel, &mut list);
            summaries.extend(family.summary());
            sampled_out += family.sampled_out();
        }
        // Spans not exported by the sampler's choice: not a loss.
        list.push(Counter::count("sampled_out", sampled_out));
        list.extend([
            Counter::loss(
                "dropped_queue_full",
                "export queue full",
                " spans",
                export.dropped_queue_full,
            ),
            Counter::loss(
                "dropped_export_failed",
                "export failed",
                " spans",
                export.dropped_export_failed,
            ),
        ]);
        // What each kind of output wrote and failed to write; the failures
        // of the worst output are the loss above.
        for kind in OutputKind::ALL {
            let out = export.output(kind);
            if !out.configured {
                continue;
            }
            let (written, failed) = match kind {
                OutputKind::Otlp => ("otlp_spans_written", "otlp_spans_failed"),
                OutputKind::Console => ("console_spans_written", "console_spans_failed"),
                OutputKind::Jsonl => ("jsonl_spans_written", "jsonl_spans_failed"),
            };
            list.extend([
                Counter::count(written, out.written),
                Counter::count(failed, out.failed),
            ]);
        }
        Self { list, summaries }
    }

    /// The counters of an eBPF object several targets share that are its
    /// own, not any one target's: the kernel side's (`kernel`, without the
    /// records written, which each target counts as routed to it), the
    /// records no target took, and of each family's counters the part that
    /// comes from the kernel side (its counters with `kernel`, less its
    /// counters without it: records of its kinds lost to a full ring), and
    /// the records of finished targets written while their uprobes were
    /// being removed (`after_stop`: not a loss, their tracing had stopped).
    /// Added once to the targets' sums, every count stays true.
    pub fn of_object(
        kernel: &KernelStats,
        unrouted: u64,
        after_stop: u64,
        families: &[&dyn Family],
    ) -> Self {
        let kernel = KernelStats {
            events_written: 0,
            ..*kernel
        };
        let mut list = Self::collect(
            &SessionCounts {
                kernel,
                export: ExportSnapshot::default(),
                bad_records: unrouted,
            },
            &[],
        )
        .list;
        list.push(Counter::count("records_after_stop", after_stop));
        for family in families {
            let (mut with, mut without) = (Vec::new(), Vec::new());
            family.counters(&kernel, &mut with);
            family.counters(&KernelStats::default(), &mut without);
            for (counter, base) in with.into_iter().zip(without) {
                list.push(Counter {
                    value: counter.value.saturating_sub(base.value),
                    ..counter
                });
            }
        }
        Self {
            list,
            summaries: Vec::new(),
        }
    }

    /// Adds `note` to what [`Self::describe`] says.
    pub fn with_note(mut self, note: String) -> Self {
        self.summaries.push(note);
        self
    }

    /// Every counter, in order.
    pub fn list(&self) -> &[Counter] {
        &self.list
    }

    /// The value of the counter `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.list.iter().find(|c| c.key == key).map(|c| c.value)
    }

    /// The losses, for the log and the exit line.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .list
            .iter()
            .filter_map(|c| {
                c.label
                    .map(|(words, unit)| format!("{words}: {}{unit}", c.value))
            })
            .collect();
        parts.extend(self.summaries.iter().cloned());
        parts.join(", ")
    }

    /// ` (OTLP 5, JSONL 5)`: what each kind of output wrote, when more than
    /// one is configured or the one is not OTLP; empty otherwise.
    pub fn per_output(&self) -> String {
        let parts: Vec<String> = [
            ("OTLP", "otlp_spans_written"),
            ("console", "console_spans_written"),
            ("JSONL", "jsonl_spans_written"),
        ]
        .iter()
        .filter_map(|(name, key)| self.get(key).map(|n| format!("{name} {n}")))
        .collect();
        if parts.is_empty() || (parts.len() == 1 && parts[0].starts_with("OTLP")) {
            return String::new();
        }
        format!(" ({})", parts.join(", "))
    }

    /// Everything lost, summed.
    pub fn lost(&self) -> u64 {
        self.list.iter().filter(|c| c.loss).map(|c| c.value).sum()
    }

    /// The `--summary-file` text: one `key=value` line per counter.
    pub fn summary_file(&self) -> String {
        self.list
            .iter()
            .map(|c| format!("{}={}\n", c.key, c.value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::OutputCount;

    #[test]
    fn the_exit_line_and_the_summary_file_read_one_list() {
        let counts = SessionCounts {
            kernel: KernelStats {
                ringbuf_full: 3,
                events_written: 10,
                ..KernelStats::default()
            },
            export: ExportSnapshot {
                exported: 7,
                dropped_queue_full: 1,
                ..ExportSnapshot::default()
            },
            bad_records: 2,
        };
        let counters = Counters::collect(&counts, &[]);
        assert_eq!(counters.lost(), 3 + 2 + 1);
        assert_eq!(counters.get("spans_exported"), Some(7));
        let line = counters.describe();
        assert!(line.contains("ring buffer full: 3 records"), "{line}");
        assert!(line.contains("export queue full: 1 spans"), "{line}");
        assert!(!line.contains("spans_exported"), "{line}");
        let file = counters.summary_file();
        assert!(file.starts_with("spans_exported=7\nrecords=10\n"), "{file}");
        assert!(file.contains("bad_records=2\n"), "{file}");
        assert!(
            !file.contains("_spans_written"),
            "no outputs configured: {file}"
        );
    }

    /// A family whose one loss is its own (3) plus what the kernel lost of
    /// its records (kind 5).
    struct Lossy;

    impl Family for Lossy {
        fn name(&self) -> &'static str {
            "lossy"
        }
        fn attach(
            &mut self,
            _: &mut crate::probes::Probes,
            _: &crate::target::Target,
        ) -> Result<(), crate::family::FamilyError> {
            Ok(())
        }
        fn on_record(
            &mut self,
            _: &[u8],
            _: &mut crate::family::RecordContext<'_>,
        ) -> Result<(), crate::family::BadRecord> {
            Ok(())
        }
        fn stop_at(&mut self, _: u64) {}
        fn stop(&mut self, _: &mut crate::probes::Probes) {}
        fn counters(&self, kernel: &KernelStats, out: &mut Vec<Counter>) {
            out.push(Counter::loss("lossy_lost", "lost", "", 3 + kernel.lost(5)));
        }
    }

    #[test]
    fn an_objects_counters_are_the_kernels_part_once() {
        let mut kernel = KernelStats {
            ringbuf_full: 4,
            events_written: 100,
            ..KernelStats::default()
        };
        kernel.lost_by_kind[5] = 4;
        let object = Counters::of_object(&kernel, 2, 7, &[&Lossy]);
        // Records are counted by the targets, as routed to them.
        assert_eq!(object.get("records"), Some(0));
        assert_eq!(object.get("ringbuf_full"), Some(4));
        assert_eq!(object.get("bad_records"), Some(2));
        assert_eq!(object.get("records_after_stop"), Some(7));
        // The family's own 3 are each target's; the kernel's 4 the object's.
        assert_eq!(object.get("lossy_lost"), Some(4));
        assert_eq!(object.lost(), 4 + 2 + 4);
        let note = Counters::collect(&SessionCounts::default(), &[]).with_note("n".to_owned());
        assert!(note.describe().ends_with(", n"), "{}", note.describe());
    }

    #[test]
    fn each_output_says_what_it_wrote() {
        let mut export = ExportSnapshot {
            exported: 4,
            dropped_export_failed: 2,
            ..ExportSnapshot::default()
        };
        export.outputs[0] = OutputCount {
            configured: true,
            written: 4,
            failed: 2,
        };
        export.outputs[2] = OutputCount {
            configured: true,
            written: 6,
            failed: 0,
        };
        let counts = SessionCounts {
            export,
            ..SessionCounts::default()
        };
        let counters = Counters::collect(&counts, &[]);
        assert_eq!(counters.get("otlp_spans_written"), Some(4));
        assert_eq!(counters.get("otlp_spans_failed"), Some(2));
        assert_eq!(counters.get("jsonl_spans_written"), Some(6));
        assert_eq!(counters.get("console_spans_written"), None);
        // The worst output's failures are the loss, once.
        assert_eq!(counters.lost(), 2);
        assert_eq!(counters.per_output(), " (OTLP 4, JSONL 6)");
    }
}
