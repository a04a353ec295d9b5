//! A sampled batch's path through the server, as spans: the gateway
//! receives it (`gateway.batch`), the log writer commits it
//! (`log.commit`), it waits until every view has passed its time
//! (`views.pending`), and each webhook derived from its changes waits in
//! the outbox (`webhook.pending`) and is attempted (`webhook.attempt`).
//!
//! The stages run on different threads and meet only through the log's
//! logical time (a commit's ingest time), so the spans are handed on by
//! that time: the writer leaves a batch's `views.pending` span here at its
//! time, the webhook sink finds it there when it derives messages of that
//! time, and the view sink closes it once the frontier has passed. Only
//! sampled batches have spans, and what waits here is bounded, so tracing
//! costs nothing for the batches it does not follow. The spans are plain
//! `tracing` spans with the target [`TARGET`]; the binary exports them
//! over OTLP when `[tracing] otlp_endpoint` is set.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::Time;

/// The target of every span of a batch's path.
pub const TARGET: &str = "coldstream::trace";

/// Times whose spans wait for the views, at most; older ones are closed.
const MAX_WAITING: usize = 10_000;

/// The sampling decision and the spans that wait for the views. Cheap to
/// clone; the default follows no batch.
#[derive(Clone, Default)]
pub struct Traces {
    sampling: Option<Arc<Sampling>>,
}

struct Sampling {
    ratio: f64,
    /// `views.pending` spans by the time whose views they wait for.
    pending: Mutex<BTreeMap<Time, Vec<tracing::Span>>>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sampling {
            Some(sampling) => write!(f, "Traces(ratio {})", sampling.ratio),
            None => write!(f, "Traces(off)"),
        }
    }
}

impl Traces {
    /// Follows a share `ratio` (0 to 1) of the batches.
    pub fn sampled(ratio: f64) -> Traces {
        if ratio <= 0.0 {
            return Traces::default();
        }
        Traces { sampling: Some(Arc::new(Sampling { ratio: ratio.min(1.0), pending: Mutex::default() })) }
    }

    /// Whether to follow the next batch.
    pub fn sample(&self) -> bool {
        self.sampling.as_ref().is_some_and(|s| s.ratio >= 1.0 || rand::random::<f64>() < s.ratio)
    }

    fn pending(&self) -> Option<std::sync::MutexGuard<'_, BTreeMap<Time, Vec<tracing::Span>>>> {
        let sampling = self.sampling.as_ref()?;
        Some(sampling.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A committed batch's `views.pending` span waits for the views to pass `time`.
    pub fn committed(&self, time: Time, span: tracing::Span) {
        let Some(mut pending) = self.pending() else { return };
        pending.entry(time).or_default().push(span);
        while pending.len() > MAX_WAITING {
            pending.pop_first();
        }
    }

    /// The spans waiting for the views at `time` (to start a child span of).
    pub fn waiting_at(&self, time: Time) -> Vec<tracing::Span> {
        self.pending().and_then(|pending| pending.get(&time).cloned()).unwrap_or_default()
    }

    /// Every sink has the changes before `frontier`: their spans end.
    pub fn views_passed(&self, frontier: Time) {
        let Some(mut pending) = self.pending() else { return };
        let later = pending.split_off(&frontier);
        let passed = std::mem::replace(&mut *pending, later);
        drop(pending);
        drop(passed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Traces {
        fn enabled(&self) -> bool {
            self.sampling.is_some()
        }

        fn waits_at(&self, time: Time) -> bool {
            !self.waiting_at(time).is_empty()
        }
    }

    #[test]
    fn spans_wait_by_time_until_the_views_pass_and_off_keeps_nothing() {
        let traces = Traces::sampled(1.0);
        assert!(traces.sample());
        traces.committed(10, tracing::Span::none());
        traces.committed(20, tracing::Span::none());
        assert!(traces.waits_at(10) && traces.waits_at(20));
        traces.views_passed(11);
        assert!(!traces.waits_at(10) && traces.waits_at(20));
        let off = Traces::default();
        assert!(!off.sample() && !off.enabled());
        off.committed(10, tracing::Span::none());
        assert!(!off.waits_at(10));
        assert!(!Traces::sampled(0.0).enabled());
    }
}
