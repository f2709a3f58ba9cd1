//! Reports a collector that stops taking exports: within seconds of the
//! first export that did not finish, with the cause (refused, timed out,
//! TLS, an HTTP or gRPC status); again every [`REPEAT_EVERY`] while it
//! lasts; and once when an export gets through again.
//!
//! Retries and timeouts keep a single export busy for up to
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, so waiting for its result would report a
//! hung collector only after that; this watches the attempts as they fail
//! and the age of the exports in flight instead.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use super::transport::{AttemptObserver, SendError};

/// How long an export may go without an answer, or a failure without a
/// success after it, before it is reported.
pub const REPORT_AFTER: Duration = Duration::from_secs(2);

/// How often a problem that lasts is reported again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    /// The first failed attempt since the last success.
    failing_since: Option<Instant>,
    /// What the last failed attempt said.
    last_failure: Option<String>,
    /// When the problem was first reported, and last reported.
    reported: Option<(Instant, Instant)>,
    /// Whether an attempt failed since the last report.
    failed_since_report: bool,
}

/// The liveness of one OTLP sink.
#[derive(Debug)]
pub struct StallMonitor {
    sink: String,
    /// How long one export is retried before its spans are dropped.
    deadline: Duration,
    state: Mutex<State>,
}

impl StallMonitor {
    pub fn new(sink: String, deadline: Duration) -> Self {
        Self {
            sink,
            deadline,
            state: Mutex::default(),
        }
    }

    /// Logs what is due at `now`, given the start of the oldest export in
    /// flight; returns the line logged, if any.
    pub fn check(&self, oldest_in_flight: Option<Instant>, now: Instant) -> Option<String> {
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        let waiting = oldest_in_flight.map(|t| now.saturating_duration_since(t));
        let since = match (state.failing_since, oldest_in_flight) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        let cause = match (&state.last_failure, waiting) {
            (Some(failure), _) => failure.clone(),
            (None, Some(waiting)) => {
                format!("timed out: no answer for {:.1} s", waiting.as_secs_f64())
            }
            (None, None) => return None,
        };
        let line = match state.reported {
            None if now.saturating_duration_since(since) >= REPORT_AFTER => format!(
                "export to {} stalled: {cause}; each export is retried for up to {:.0} s, then its spans are dropped and counted",
                self.sink,
                self.deadline.as_secs_f64()
            ),
            Some((first, last))
                if now.saturating_duration_since(last) >= REPEAT_EVERY
                    && (state.failed_since_report || oldest_in_flight.is_some()) =>
            {
                format!(
                    "export to {} still failing after {:.0} s: {cause}",
                    self.sink,
                    now.saturating_duration_since(first).as_secs_f64()
                )
            }
            _ => return None,
        };
        log::warn!("{line}");
        let first = state.reported.map_or(now, |(first, _)| first);
        state.reported = Some((first, now));
        state.failed_since_report = false;
        Some(line)
    }
}

impl AttemptObserver for StallMonitor {
    fn failed(&self, err: &SendError) {
        if let Ok(mut state) = self.state.lock() {
            state.failing_since.get_or_insert_with(Instant::now);
            state.last_failure = Some(err.message.clone());
            state.failed_since_report = true;
        }
    }

    fn succeeded(&self) {
        if let Ok(mut state) = self.state.lock() {
            if let Some((first, _)) = state.reported {
                log::info!(
                    "export to {} recovered after {:.1} s",
                    self.sink,
                    first.elapsed().as_secs_f64()
                );
            }
            *state = State::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::transport::Cause;

    fn refused() -> SendError {
        SendError {
            message: "connection refused (tcp connect error)".into(),
            retryable: true,
            cause: Cause::Refused,
        }
    }

    #[test]
    fn a_hung_export_is_reported_after_the_threshold_then_rate_limited() {
        let monitor = StallMonitor::new("OTLP x".into(), Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(
            monitor.check(Some(start), start + Duration::from_secs(1)),
            None
        );
        let line = monitor
            .check(Some(start), start + REPORT_AFTER)
            .expect("reported");
        assert!(line.contains("timed out: no answer for 2.0 s"), "{line}");
        assert_eq!(
            monitor.check(Some(start), start + Duration::from_secs(10)),
            None
        );
        let again = monitor
            .check(Some(start), start + REPORT_AFTER + REPEAT_EVERY)
            .expect("repeated");
        assert!(again.contains("still failing after 30 s"), "{again}");
    }

    #[test]
    fn a_failed_attempt_gives_its_cause_and_a_success_ends_it() {
        let monitor = StallMonitor::new("OTLP x".into(), Duration::from_secs(10));
        monitor.failed(&refused());
        let later = Instant::now() + REPORT_AFTER;
        let line = monitor.check(None, later).expect("reported");
        assert!(line.contains("connection refused"), "{line}");
        monitor.succeeded();
        assert_eq!(monitor.check(None, later + REPEAT_EVERY), None);
    }

    #[test]
    fn an_idle_sink_is_not_reported_again() {
        let monitor = StallMonitor::new("OTLP x".into(), Duration::from_secs(10));
        monitor.failed(&refused());
        let later = Instant::now() + REPORT_AFTER;
        assert!(monitor.check(None, later).is_some());
        // Nothing in flight and nothing failed since: nothing to say.
        assert_eq!(monitor.check(None, later + REPEAT_EVERY * 2), None);
    }
}
