//! The agent's own metrics, read from the session's one list of counters
//! ([`crate::session::Counters::list`]): the session publishes a snapshot
//! of it once a second and once more at the end, and observable
//! instruments read the last snapshot when the SDK collects. The values are
//! the exit summary's by construction: the same list, the final snapshot
//! exported at shutdown.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `agent.records` | counter | records read from the kernel (`records`) |
//! | `agent.spans.exported` | counter | spans every sink delivered (`spans_exported`) |
//! | `agent.spans.sampled_out` | counter | spans the sampler left out (`sampled_out`) |
//! | `agent.export.failures` | counter | spans a collector refused after retries (`dropped_export_failed`) |
//! | `agent.losses` | counter, `agent.loss.reason` | every loss counter, by its `--summary-file` key |
//! | `agent.counts` | counter, `agent.count.name` | every other counter, by its key |
//! | `agent.export.queue.size` / `.capacity` | gauge | spans waiting in the export queue, and its capacity |
//! | `agent.probes.attached` | gauge, `agent.family` | uprobes attached per family |
//! | `agent.targets.attached` | gauge | processes traced |

use std::sync::{Arc, Mutex};

use opentelemetry::{KeyValue, metrics::Meter};

use crate::{family::Counter, session::Counters};

/// One counter as published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Published {
    key: &'static str,
    value: u64,
    loss: bool,
}

/// What the session last published.
#[derive(Debug, Default)]
pub struct Snapshot {
    counters: Vec<Published>,
    queue: Option<QueueFill>,
    probes: Vec<(&'static str, u64)>,
    targets: u64,
}

/// The export queue: spans waiting, and how many it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFill {
    pub waiting: u64,
    pub capacity: u64,
}

/// The probes and targets a session attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attached {
    /// Uprobes per family name.
    pub probes: Vec<(&'static str, u64)>,
    pub targets: u64,
}

impl Attached {
    /// What `probes` holds now, per registered family, for one target.
    pub fn of(probes: &crate::probes::Probes) -> Self {
        Self {
            probes: crate::family::FAMILIES
                .iter()
                .map(|entry| (entry.name, probes.attached_by(entry.name) as u64))
                .collect(),
            targets: 1,
        }
    }
}

/// Shared between the session (which publishes) and the callbacks.
pub type Shared = Arc<Mutex<Snapshot>>;

impl Snapshot {
    pub fn set_counters(&mut self, counters: &Counters, queue: Option<QueueFill>) {
        self.counters.clear();
        self.counters
            .extend(counters.list().iter().map(|c: &Counter| Published {
                key: c.key,
                value: c.value,
                loss: c.loss,
            }));
        if queue.is_some() {
            self.queue = queue;
        }
    }

    pub fn set_attached(&mut self, attached: Attached) {
        self.probes = attached.probes;
        self.targets = attached.targets;
    }

    fn value(&self, key: &str) -> Option<u64> {
        self.counters.iter().find(|c| c.key == key).map(|c| c.value)
    }
}

/// Registers the observable instruments on `meter`, reading `shared`.
pub fn register(meter: &Meter, shared: &Shared) {
    let named = |name: &'static str, key: &'static str, description: &'static str| {
        let shared = shared.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                if let Ok(s) = shared.lock()
                    && let Some(value) = s.value(key)
                {
                    observer.observe(value, &[]);
                }
            })
            .build();
    };
    named(
        "agent.records",
        "records",
        "Records read from the kernel's ring buffer.",
    );
    named(
        "agent.spans.exported",
        "spans_exported",
        "Spans every sink delivered.",
    );
    named(
        "agent.spans.sampled_out",
        "sampled_out",
        "Spans the sampler left out (OTEL_TRACES_SAMPLER): not exported, not lost.",
    );
    named(
        "agent.export.failures",
        "dropped_export_failed",
        "Spans a collector refused or could not take, after retries.",
    );
    let by_key = |name: &'static str, attribute: &'static str, loss: bool, description| {
        let shared = shared.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                if let Ok(s) = shared.lock() {
                    for c in s.counters.iter().filter(|c| c.loss == loss) {
                        observer.observe(c.value, &[KeyValue::new(attribute, c.key)]);
                    }
                }
            })
            .build();
    };
    by_key(
        "agent.losses",
        "agent.loss.reason",
        true,
        "What the agent lost, by reason (the --summary-file keys).",
    );
    by_key(
        "agent.counts",
        "agent.count.name",
        false,
        "What the agent counted beside losses (the --summary-file keys).",
    );
    let queue = |name: &'static str, pick: fn(&QueueFill) -> u64, description| {
        let shared = shared.clone();
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                if let Ok(s) = shared.lock()
                    && let Some(q) = &s.queue
                {
                    observer.observe(pick(q), &[]);
                }
            })
            .build();
    };
    queue(
        "agent.export.queue.size",
        |q| q.waiting,
        "Spans waiting in the export queue.",
    );
    queue(
        "agent.export.queue.capacity",
        |q| q.capacity,
        "Spans the export queue holds at most.",
    );
    let probes = shared.clone();
    meter
        .u64_observable_gauge("agent.probes.attached")
        .with_description("Uprobes attached, per family.")
        .with_callback(move |observer| {
            if let Ok(s) = probes.lock() {
                for (family, n) in &s.probes {
                    observer.observe(*n, &[KeyValue::new("agent.family", *family)]);
                }
            }
        })
        .build();
    let targets = shared.clone();
    meter
        .u64_observable_gauge("agent.targets.attached")
        .with_description("Processes the agent traces.")
        .with_callback(move |observer| {
            if let Ok(s) = targets.lock() {
                observer.observe(s.targets, &[]);
            }
        })
        .build();
}
