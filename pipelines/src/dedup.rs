//! Deduplication where the log is read.
//!
//! A gateway drops a resent event whose seq it has already made durable,
//! but two gateways appending to one log cannot see each other's appends
//! in flight: a fridge that moves from one to the other in the middle of a
//! batch may leave the same event in the log twice. The rule is applied
//! again, in log order, where the log is read: an accepted event of a
//! source counts only if its `(incarnation, seq)` is above every earlier
//! one of that source in the log; a later copy, or an event of an older
//! incarnation, is dropped. A log with one writer had the rule applied as
//! it was written, and its views leave this step out
//! ([`crate::views::ViewConfig::deduplicate`]).
//!
//! The rule keeps every event because a gateway appends only seqs above
//! the highest durable one, in order, and a fridge resends everything
//! above the highest durable seq it is welcomed with: a copy can overtake
//! its original, but never an event of the source that is not yet in
//! the log.
//!
//! The state is one position per source, kept by the per-source operator
//! of [`crate::operators`] (so it is checkpointed with the views), and the
//! outcome depends only on the log's order: a replay, on any number of
//! workers or processes, keeps the same copy of every event.

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::operators::{FridgeState, OperatorHooks, by_fridge_in_time_order};
use crate::{Event, Time};

/// The operator's id in checkpoints.
pub const OPERATOR: &str = "dedup";

/// The key a source's position is kept under: fridges and back-office
/// clients are separate spaces, as at the gateway.
pub fn source_key(event: &Event) -> String {
    let space = if event.kind().is_back_office() { 'b' } else { 'f' };
    format!("{space}:{}", event.source_id)
}

/// The highest `(incarnation, seq)` of one source read so far.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Position {
    incarnation: u64,
    seq: u64,
}

impl Position {
    /// Whether `event`, read next, counts; if so, it is the new position.
    fn admits(&mut self, event: &Event) -> bool {
        if (event.incarnation, event.seq) <= (self.incarnation, self.seq) {
            return false;
        }
        (self.incarnation, self.seq) = (event.incarnation, event.seq);
        true
    }
}

/// The same rule outside a dataflow, for a reader that reads the log in
/// order on one thread (the archiver): every source's position.
#[derive(Debug, Default)]
pub struct Positions(std::collections::HashMap<String, Position>);

impl Positions {
    /// Whether `event`, read next, counts.
    pub fn admits(&mut self, event: &Event) -> bool {
        self.0.entry(source_key(event)).or_default().admits(event)
    }
}

impl FridgeState for Position {
    /// An event with its log offset, so that the events of one logical
    /// time are judged in log order.
    type Input = (u64, Event);
    type Output = Event;
    type Shared = ();

    fn apply(
        &mut self,
        _source: &str,
        _time: Time,
        inputs: &[((u64, Event), isize)],
        _shared: &(),
        out: &mut Vec<(Event, isize)>,
    ) {
        for ((_, event), diff) in inputs {
            if *diff > 0 && self.admits(event) {
                out.push((event.clone(), 1));
            }
        }
    }

    fn held(&self) -> usize {
        1
    }
}

/// The events of `records` (each with its log offset) without the copies
/// and stale events the rule above drops.
pub fn deduplicated<'s>(
    records: VecCollection<'s, Time, (u64, Event)>,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, Event> {
    let keyed = records.map(|(offset, event)| (source_key(&event), (offset, event)));
    by_fridge_in_time_order(keyed, OPERATOR, Position::default, hooks)
}

#[cfg(test)]
mod tests {
    use differential_dataflow::input::Input;

    use super::*;
    use crate::Payload;

    fn event(source: &str, incarnation: u64, seq: u64) -> Event {
        Event {
            source_id: source.to_owned(),
            incarnation,
            seq,
            event_time: seq as i64,
            payload: Payload::DoorOpened { session_id: format!("s{seq}") },
        }
    }

    /// Runs the operator over `(time, offset, event)` and returns what it
    /// keeps, as `(time, source, incarnation, seq)`, sorted.
    fn kept(records: Vec<(Time, u64, Event)>) -> Vec<(Time, String, u64, u64)> {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&out);
        timely::execute_directly(move |worker| {
            let mut input = worker.dataflow::<Time, _, _>(|scope| {
                let (input, records) = scope.new_collection::<(u64, Event), isize>();
                let sink = std::sync::Arc::clone(&sink);
                deduplicated(records, &OperatorHooks::default()).inspect(move |(event, time, diff)| {
                    assert_eq!(*diff, 1);
                    sink.lock().unwrap().push((*time, event.source_id.clone(), event.incarnation, event.seq));
                });
                input
            });
            for (time, offset, event) in records {
                input.advance_to(time);
                input.insert((offset, event));
            }
        });
        let mut kept = out.lock().unwrap().clone();
        kept.sort();
        kept
    }

    #[test]
    fn a_copy_later_in_the_log_is_dropped_whatever_its_time_and_the_first_copy_is_kept() {
        // Gateway A wrote seqs 1–3; the fridge moved to B and resent 2–4,
        // while A's copy of 3 was still in flight and landed after B's.
        let records = vec![
            (10, 0, event("f1", 0, 1)),
            (10, 1, event("f1", 0, 2)),
            (12, 2, event("f1", 0, 2)),
            (12, 3, event("f1", 0, 3)),
            (12, 4, event("f1", 0, 4)),
            (12, 5, event("f1", 0, 3)),
            (13, 6, event("f1", 0, 5)),
        ];
        let kept = kept(records);
        let seqs: Vec<(Time, u64)> = kept.iter().map(|(time, _, _, seq)| (*time, *seq)).collect();
        assert_eq!(seqs, vec![(10, 1), (10, 2), (12, 3), (12, 4), (13, 5)]);
    }

    #[test]
    fn sources_are_judged_apart_and_a_new_incarnation_starts_again_while_an_old_one_is_dropped() {
        let back_office = Event {
            payload: Payload::PriceChanged { sku: "cola".into(), price_cents: 150, fridge_id: None },
            ..event("f1", 0, 1)
        };
        let records = vec![
            (10, 0, event("f1", 0, 5)),
            (10, 1, event("f2", 0, 1)),
            (10, 2, back_office),
            (11, 3, event("f1", 1, 1)),
            (11, 4, event("f1", 0, 6)),
            (12, 5, event("f2", 0, 1)),
        ];
        assert_eq!(
            kept(records),
            vec![
                (10, "f1".to_owned(), 0, 1),
                (10, "f1".to_owned(), 0, 5),
                (10, "f2".to_owned(), 0, 1),
                (11, "f1".to_owned(), 1, 1),
            ]
        );
    }
}
