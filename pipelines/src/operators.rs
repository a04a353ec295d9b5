//! `by_fridge_in_time_order`: per-fridge state advanced one logical time at
//! a time.
//!
//! Most views are plain differential operators. Three need something they
//! cannot express: the logical time itself as data (the id of a restock
//! order is the time it opened), and state that forgets what lies behind a
//! per-fridge event-time horizon (telemetry runs, 7-day sales), which is
//! what keeps memory bounded however long the pipeline runs. This operator
//! gives each fridge a small state machine: updates are exchanged by
//! fridge, held until the input frontier passes their time, then applied
//! time by time, in time order, consolidated and sorted, so the output
//! changes depend only on the input changes and their times: replaying the
//! log reproduces them exactly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use differential_dataflow::collection::{AsCollection, VecCollection};
use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{Data, ExchangeData};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::Time;

/// A fridge's state in a [`by_fridge_in_time_order`] operator.
pub trait FridgeState: 'static {
    /// What the operator consumes, per fridge.
    type Input: ExchangeData;
    /// The changes it produces.
    type Output: Data;

    /// Applies the consolidated changes of one logical time (sorted by
    /// input) and pushes the resulting output changes.
    fn apply(
        &mut self,
        fridge: &str,
        time: Time,
        inputs: &[(Self::Input, isize)],
        out: &mut Vec<(Self::Output, isize)>,
    );

    /// Records held, for the bounded-state measurements.
    fn held(&self) -> usize;
}

/// A shared count of records held in state, summed over operators and
/// workers. Cloning shares the count.
#[derive(Clone, Debug, Default)]
pub struct HeldRecords(Arc<AtomicI64>);

impl HeldRecords {
    /// The current total.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts, from now on, the records held in every arrangement that
    /// `worker` builds after this call (from differential's own logging:
    /// batches created, merged and dropped).
    pub fn track_arrangements(&self, worker: &mut timely::worker::Worker) {
        use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
        let held = self.clone();
        if let Some(mut registry) = worker.log_register() {
            registry.insert::<DifferentialEventBuilder, _>(
                "differential/arrange",
                move |_time, events: &mut Option<Vec<(std::time::Duration, DifferentialEvent)>>| {
                    for (_, event) in events.iter().flatten() {
                        let delta = match event {
                            DifferentialEvent::Batch(batch) => batch.length as i64,
                            DifferentialEvent::Merge(merge) => merge
                                .complete
                                .map_or(0, |done| done as i64 - merge.length1 as i64 - merge.length2 as i64),
                            DifferentialEvent::Drop(drop) => -(drop.length as i64),
                            _ => 0,
                        };
                        held.add(delta);
                    }
                },
            );
        }
    }

    fn add(&self, delta: i64) {
        if delta != 0 {
            self.0.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

/// The updates of one logical time, held until the frontier passes it.
type Pending<I> = (Capability<Time>, Vec<((String, I), isize)>);

/// Runs `S` per fridge over `input`, whose records are `(fridge_id, input)`.
pub fn by_fridge_in_time_order<'s, S: FridgeState>(
    input: VecCollection<'s, Time, (String, S::Input)>,
    name: &str,
    new_state: impl Fn() -> S + 'static,
    held: HeldRecords,
) -> VecCollection<'s, Time, S::Output> {
    let exchange = Exchange::new(|((fridge, _), _, _): &((String, S::Input), Time, isize)| fridge.hashed());
    input
        .inner
        .unary_frontier(exchange, name, move |_capability, _info| {
            let mut pending: BTreeMap<Time, Pending<S::Input>> = BTreeMap::new();
            let mut fridges: HashMap<String, S> = HashMap::new();
            let mut out = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    for ((fridge, value), time, diff) in data.drain(..) {
                        pending
                            .entry(time)
                            .or_insert_with(|| (capability.delayed(&time, 0), Vec::new()))
                            .1
                            .push(((fridge, value), diff));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (time, (capability, mut updates)) = entry.remove_entry();
                    consolidate(&mut updates);
                    let mut session = output.session(&capability);
                    let mut rest = updates.as_slice();
                    while let Some(((fridge, _), _)) = rest.first() {
                        let len = rest.iter().take_while(|((f, _), _)| f == fridge).count();
                        let inputs: Vec<(S::Input, isize)> =
                            rest[..len].iter().map(|((_, value), diff)| (value.clone(), *diff)).collect();
                        let state = fridges.entry(fridge.clone()).or_insert_with(&new_state);
                        let before = state.held() as i64;
                        state.apply(fridge, time, &inputs, &mut out);
                        held.add(state.held() as i64 - before);
                        for (change, diff) in out.drain(..) {
                            session.give((change, time, diff));
                        }
                        rest = &rest[len..];
                    }
                }
            }
        })
        .as_collection()
}
